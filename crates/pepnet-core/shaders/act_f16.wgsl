// The activation buffer's element type, f16 (scoring at the f16 precision, on devices with f16
// shaders): half the bytes of every activation read and written, which is what bounds the f16
// forward on a large GPU (docs/performance.md). Same interface as act_f32.wgsl; the compiled
// source enables f16 first and includes half.wgsl.
//
// A value is rounded to f16 as it is stored, ties to even (`round_half`, not the device's
// conversion, whose rounding Vulkan leaves open), so the f64 reference can round alike. Beyond
// f16's range it becomes ±inf, which the next layer's overflow check turns into NaN and the
// host refuses with an error. Probabilities are the exception: the linear kernel writes them
// to an f32 buffer of their own (FLAG_F32_OUT), so scores keep f32's resolution.

alias Act = f16;

fn act_in(x: Act) -> f32 {
    return f32(x);
}

fn act_out(v: f32) -> Act {
    return Act(round_half(v));
}
