// Grouped, gated, fused linear layer: every linear layer of PEPNet runs through this kernel.
//
// One dispatch runs a group of independent problems (all tasks of a tower layer, all PPNet
// gates, all experts of a depth plus the MMoE gates). Problem p computes, for rows m < rows and
// columns n < p.n:
//
//   Y[m, n] = act( Σ_k (A[m, k] · G[m, k]) · W[n, k] + bias[n] ) · M[m, n]
//
// (When training, a problem with M may also keep act(...) before the product in a view K: the
// backward pass needs it, and it cannot be recovered from Y where M is 0.)
//
// A, G, M and Y are strided views into one activation buffer; W ([n, k], row-major, PyTorch's
// nn.Linear layout) and bias live in one weights buffer. W starts on a vec4 boundary and each
// of its rows is zero-padded to a multiple of 4 floats, so W is loaded a vec4 at a time. G (the PPNet gate) is applied while A
// is loaded into workgroup memory; bias, the activation and M (EPNet's δ ⊙ E) are applied in
// the epilogue, so no intermediate touches device memory.
//
// Two entry points share the problems, the bindings and the numbering of 64-column tiles, so
// one problem table and one bind group serve both:
//   main       64×64 tiles: 16×16 threads, each 4 rows × 4 columns (16 apart, so that stores
//              coalesce) in registers; K advances 16 at a time through two k-major workgroup
//              tiles read as whole vec4s. For batches.
//   main_small 4×64 tiles: 64 threads, each one column of 4 rows; K advances 32 at a time. For
//              a few samples (online scoring), where a 64-row tile would be mostly padding.
//
// Precision: with the override HALF (the f16 SIMT variants), W is read from `weights_half`
// (the packed weights as f16, same offsets) and each A ⊙ G is rounded to f16 as it is staged,
// so every product is of two f16 values, summed in f32: exactly what the cooperative-matrix
// entry point (linear_coop.wgsl, appended on devices that have it) computes. The bias and the
// epilogue stay f32. The activation buffer holds f32 or f16 (`Act`, from act_f32.wgsl or
// act_f16.wgsl, compiled first); a problem flagged FLAG_F32_OUT (the output layer over f16
// activations) writes its Y, the probabilities, to `scores`, an f32 buffer of their own.
//
// The problem table, the shared bindings and the loads of A and W are in linear_common.wgsl,
// which comes before this file in the compiled source.

override HALF: bool = false;

@group(0) @binding(4) var<storage, read_write> act: array<Act>;
// The packed weights as f16, four to a vec2<u32>; a 1-element dummy when HALF is off.
@group(0) @binding(5) var<storage, read> weights_half: array<vec2<u32>>;
// Probabilities, for problems flagged FLAG_F32_OUT; a 1-element dummy where none is.
@group(0) @binding(6) var<storage, read_write> scores: array<f32>;

// W[n, k..k+4] as four f16 (k a multiple of 4), or 0 outside the problem.
fn load_w_half(pr: Problem, n: u32, k: u32) -> vec2<u32> {
    if n >= pr.n || k >= pr.k {
        return vec2<u32>(0u);
    }
    let w_stride = (pr.k + 3u) & ~3u;
    return weights_half[(pr.w_off + n * w_stride + k) / 4u];
}

// Element (m, k) of A ⊙ G as the variant's products read it.
fn stage_a(pr: Problem, m: u32, k: u32) -> f32 {
    let a = load_a(pr, m, k);
    if HALF {
        return round_half(a);
    }
    return a;
}

// W[n, k..k+4] as the variant's products read it.
fn stage_w4(pr: Problem, n: u32, k: u32) -> vec4<f32> {
    if HALF {
        let w = load_w_half(pr, n, k);
        return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
    }
    return load_w4(pr, n, k);
}

// An overflowed sum (infinite or NaN) leaves every layer as NaN, whatever its activation: a
// ReLU's max or a gate's saturating sigmoid would otherwise turn it into a plausible value,
// and NaN carries on to the probabilities, where the host refuses it. Tested on the bits: a
// compiler may fold `z != z` away under WGSL's finite-math rules, never a mask.
fn activate(z: f32, kind: u32, gamma: f32) -> f32 {
    if (bitcast<u32>(z) & 0x7f800000u) == 0x7f800000u {
        return bitcast<f32>(0x7fc00000u);
    }
    switch kind {
        case ACT_RELU: { return max(z, 0.0); }
        case ACT_GATE: { return gamma / (1.0 + exp(-z)); }
        case ACT_SIGMOID: { return 1.0 / (1.0 + exp(-z)); }
        default: { return z; }
    }
}

// Column tiles of all problems are numbered consecutively along x; the problem owning tile x.
fn find_problem(tile_x: u32) -> Problem {
    var p = span.first;
    let last = span.first + span.count - 1u;
    while p < last && problems[p + 1u].first_tile <= tile_x {
        p += 1u;
    }
    return problems[p];
}

// The epilogue: bias, activation and multiplier applied to the sum z of output (m, n).
fn store(pr: Problem, m: u32, n: u32, z: f32) {
    if m >= batch.rows || n >= pr.n {
        return;
    }
    let b = pr.bias_off + n;
    var y = activate(z + weights[b / 4u][b % 4u], pr.act, pr.gamma);
    if (pr.flags & FLAG_KEEP) != 0u {
        act[pr.keep_off + m * pr.keep_stride + n] = act_out(y);
    }
    if (pr.flags & FLAG_MULTIPLIED) != 0u {
        y *= act_in(act[pr.m_off + m * pr.m_stride + n]);
    }
    let i = pr.y_off + m * pr.y_stride + n;
    if (pr.flags & FLAG_Y_CENTERED) != 0u {
        y -= 0.5 * pr.gamma;
    }
    if (pr.flags & FLAG_F32_OUT) != 0u {
        scores[i] = y;
    } else {
        act[i] = act_out(y);
    }
}

// ---- main: 64×64 tiles -------------------------------------------------------------------

const TM: u32 = 64u;          // rows per workgroup tile
const TN: u32 = 64u;          // output columns per workgroup tile
const TK: u32 = 16u;          // reduction depth per step
const TILE_STRIDE: u32 = 17u; // vec4s per k-row of a tile: 16 plus one, which halves the bank conflicts of the tile stores

var<workgroup> a_tile: array<vec4<f32>, 272>; // [TK][TILE_STRIDE] of 4 rows each
// Column c of a W k-row sits in vec4 c % 16, component c / 16: thread x reads its columns
// x, x+16, x+32, x+48 as one vec4, and its stores of one output row are then consecutive.
var<workgroup> w_tile: array<vec4<f32>, 272>; // [TK][TILE_STRIDE]

@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let pr = find_problem(wg.x);
    let m0 = wg.y * TM;
    let n0 = (wg.x - pr.first_tile) * TN;

    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < pr.k; k0 += TK) {
        // A: each thread loads 4 elements; consecutive threads read consecutive k.
        for (var j = 0u; j < 4u; j++) {
            let e = li + 256u * j;
            let kk = e % TK;
            let r = e / TK;
            a_tile[kk * TILE_STRIDE + r / 4u][r % 4u] = stage_a(pr, m0 + r, k0 + kk);
        }
        // W: each thread loads one vec4 (4 consecutive k of one output column c).
        {
            let c = li / 4u;
            let kk = (li % 4u) * 4u;
            let w = stage_w4(pr, n0 + c, k0 + kk);
            for (var j = 0u; j < 4u; j++) {
                w_tile[(kk + j) * TILE_STRIDE + c % 16u][c / 16u] = w[j];
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let a = a_tile[kk * TILE_STRIDE + lid.y];
            let w = w_tile[kk * TILE_STRIDE + lid.x];
            acc[0] += a.x * w;
            acc[1] += a.y * w;
            acc[2] += a.z * w;
            acc[3] += a.w * w;
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            store(pr, m0 + lid.y * 4u + i, n0 + lid.x + 16u * j, acc[i][j]);
        }
    }
}

// ---- main_small: 4×64 tiles --------------------------------------------------------------

const SMALL_TM: u32 = 4u;
const SMALL_TK: u32 = 32u;
const SMALL_W_STRIDE: u32 = 65u; // floats per k-row of the W tile: 64 plus one against bank conflicts

// 8.8 KB in all, inside the 16 KB of workgroup memory every device offers.
var<workgroup> small_a: array<vec4<f32>, 32>;    // [SMALL_TK] of the tile's 4 rows
var<workgroup> small_w: array<f32, 2080>;        // [SMALL_TK][SMALL_W_STRIDE]

@compute @workgroup_size(64, 1, 1)
fn main_small(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let pr = find_problem(wg.x);
    let m0 = wg.y * SMALL_TM;
    let n0 = (wg.x - pr.first_tile) * TN;

    var acc = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < pr.k; k0 += SMALL_TK) {
        // A: 32 k × 4 rows, two per thread; consecutive threads read consecutive k.
        {
            let kk = li % SMALL_TK;
            let r = (li / SMALL_TK) * 2u;
            small_a[kk][r] = stage_a(pr, m0 + r, k0 + kk);
            small_a[kk][r + 1u] = stage_a(pr, m0 + r + 1u, k0 + kk);
        }
        // W: 64 columns × 32 k as 512 vec4s, 8 per thread; 8 consecutive threads read one
        // 128-byte run of a row.
        for (var i = 0u; i < 8u; i++) {
            let e = li + 64u * i;
            let col = e / 8u;
            let kq = (e % 8u) * 4u;
            let w = stage_w4(pr, n0 + col, k0 + kq);
            for (var q = 0u; q < 4u; q++) {
                small_w[(kq + q) * SMALL_W_STRIDE + col] = w[q];
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < SMALL_TK; kk++) {
            acc += small_a[kk] * small_w[kk * SMALL_W_STRIDE + li];
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        store(pr, m0 + i, n0 + li, acc[i]);
    }
}
