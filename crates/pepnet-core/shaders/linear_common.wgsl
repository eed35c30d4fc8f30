// What the linear kernel (linear.wgsl) and its backward (linear_backward.wgsl) share: the
// problem table and its flags, the bindings both read, and the loads of A ⊙ G and of W. Each
// kernel's source is this file followed by its own (`act`, binding 4, is declared there: the
// forward writes it, the backward only reads it). Before this file comes the activation
// storage's interface (act_f32.wgsl or act_f16.wgsl).

const ACT_NONE: u32 = 0u;
const ACT_RELU: u32 = 1u;
const ACT_GATE: u32 = 2u;     // γ · σ(z), a Gate NU's output
const ACT_SIGMOID: u32 = 3u;

const FLAG_GATED: u32 = 1u;      // multiply A by G on load
const FLAG_MULTIPLIED: u32 = 2u; // multiply Y by M in the epilogue
const FLAG_KEEP: u32 = 4u;       // also store act(z) before M to K (training: its backward needs it)
const FLAG_F32_OUT: u32 = 8u;    // Y is probabilities, written to `scores` (f32) instead of `act`
// f16 scoring only (see Plan::centered): the PPNet gates δ ∈ (0, γ) are stored as δ − γ/2,
// whose f16 rounding error is at most half of δ's, and far less near γ/2. A gated input is the
// product of two stored values, each rounded to f16, rounded again as the products stage it;
// with δ rounded whole that took the worst probability error on random specs past 2e-3.
const FLAG_G_CENTERED: u32 = 16u; // G is stored as G − γ/2
const FLAG_Y_CENTERED: u32 = 32u; // Y is stored as Y − γ/2 (a Gate NU's output)

struct Problem {
    a_off: u32,
    a_stride: u32,
    g_off: u32,
    g_stride: u32,
    m_off: u32,
    m_stride: u32,
    y_off: u32,
    y_stride: u32,
    w_off: u32,
    bias_off: u32,
    n: u32,
    k: u32,
    act: u32,
    flags: u32,
    gamma: f32,
    first_tile: u32,   // index of this problem's first column tile within the dispatch
    keep_off: u32,
    keep_stride: u32,
    first_wtile: u32,  // backward: index of this problem's first weight-gradient tile
    _pad: u32,
}

struct Span {
    first: u32, // the dispatch's first entry of its table (problems, or input groups)
    count: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> span: Span;
@group(0) @binding(1) var<uniform> batch: Batch;
@group(0) @binding(2) var<storage, read> problems: array<Problem>;
@group(0) @binding(3) var<storage, read> weights: array<vec4<f32>>;

// Element (m, k) of A ⊙ G, or 0 outside the problem.
fn load_a(pr: Problem, m: u32, k: u32) -> f32 {
    if m >= batch.rows || k >= pr.k {
        return 0.0;
    }
    var a = act_in(act[pr.a_off + m * pr.a_stride + k]);
    if (pr.flags & FLAG_GATED) != 0u {
        var g = act_in(act[pr.g_off + m * pr.g_stride + k]);
        if (pr.flags & FLAG_G_CENTERED) != 0u {
            g += 0.5 * pr.gamma;
        }
        a *= g;
    }
    return a;
}

// W[n, k..k+4] (k a multiple of 4), or 0 outside the problem; rows are padded to vec4s.
fn load_w4(pr: Problem, n: u32, k: u32) -> vec4<f32> {
    if n >= pr.n || k >= pr.k {
        return vec4<f32>(0.0);
    }
    let w_stride = (pr.k + 3u) & ~3u;
    return weights[(pr.w_off + n * w_stride + k) / 4u];
}
