// The activation buffer's element type, f32 (the f32 precision, and training at either
// precision): every kernel that touches `act` reads it through `act_in` and writes through
// `act_out`. act_f16.wgsl is the same interface over f16 storage; the host compiles each
// kernel after one or the other.

alias Act = f32;

fn act_in(x: Act) -> f32 {
    return x;
}

fn act_out(v: f32) -> Act {
    return v;
}
