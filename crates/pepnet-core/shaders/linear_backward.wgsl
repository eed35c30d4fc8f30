// Backward of the grouped, gated, fused linear layer (linear.wgsl), over the same problem table.
//
// Forward, problem p:  Z = (A ⊙ G) · Wᵀ + bias,  Y = act(Z) ⊙ M.
//
// The gradient buffer `grad` has the activation buffer's layout: the gradient of every view sits
// at the view's own offsets. dZ is never stored: both entry points form it as they load it, from
// dY and what the forward stored, so the derivatives are fused as the forward fuses the functions:
//   dZ = dY ⊙ M ⊙ act'(Z), with act' read off the activation's output y (kept apart by the
//   forward where M is applied): ReLU [y > 0]; the Gate NU's γ·σ, y (1 − y/γ); sigmoid: dY is
//   already dZ (a sigmoid is the output layer, whose dZ = w_t (p − y) / B the loss kernel
//   writes); none: 1.
//
// Two entry points:
//   input_grad   per input group (consecutive problems of one dispatch that read the same A):
//                dA_p = dZ_p · W_p for each problem p, its gate's gradient dG_p = dA_p ⊙ A, and
//                A's gradient Σ_p dA_p ⊙ G_p, written (not added) for A's first `grad_k`
//                columns only: beyond them a stop-gradient cuts the path (the gates' inputs).
//                64×64 tiles of (rows, columns of A); the sum runs over each problem's n.
//   weight_grad  per problem: dW = dZᵀ · (A ⊙ G) and db = Σ_m dZ, into `wgrad`, laid out as the
//                packed weights. 64×64 tiles of W; each element is summed by one thread over
//                the rows in order: deterministic, no atomics.
//
// The problem table, the shared bindings and the loads of A and W are in linear_common.wgsl,
// which comes first in the compiled source.

// Problems first .. first + count of `problems` read the same A.
struct InputGroup {
    first: u32,
    count: u32,
    grad_k: u32,      // columns of A that get a gradient
    first_tile: u32,  // this group's first 64-column tile within the dispatch
}

@group(0) @binding(4) var<storage, read> act: array<Act>;
@group(0) @binding(5) var<storage, read_write> grad: array<f32>;
@group(0) @binding(6) var<storage, read> groups: array<InputGroup>;
@group(0) @binding(7) var<storage, read_write> wgrad: array<f32>;

const T: u32 = 64u;           // rows and columns of an output tile
const TR: u32 = 16u;          // reduction depth per step
const TILE_STRIDE: u32 = 17u; // vec4s per reduction row of a tile, one more against bank conflicts

// Column c of a tile row sits in vec4 c % 16, component c / 16, so that thread x holds its
// columns x, x+16, x+32, x+48 in one vec4 and its stores of one row coalesce.
var<workgroup> left: array<vec4<f32>, 272>;  // [TR][TILE_STRIDE]
var<workgroup> right: array<vec4<f32>, 272>; // [TR][TILE_STRIDE]

// dZ[m, n] of problem pr, or 0 outside it. The activation's output is read from K where the
// forward kept it (a problem with M and an activation must: the host checks), else from Y.
fn load_dz(pr: Problem, m: u32, n: u32) -> f32 {
    if m >= batch.rows || n >= pr.n {
        return 0.0;
    }
    var dz = grad[pr.y_off + m * pr.y_stride + n];
    var y = act_in(act[pr.y_off + m * pr.y_stride + n]);
    if (pr.flags & FLAG_KEEP) != 0u {
        y = act_in(act[pr.keep_off + m * pr.keep_stride + n]);
    }
    switch pr.act {
        case ACT_RELU: {
            if y <= 0.0 {
                dz = 0.0;
            }
        }
        case ACT_GATE: {
            dz *= y * (1.0 - y / pr.gamma);
        }
        default: {}
    }
    if (pr.flags & FLAG_MULTIPLIED) != 0u {
        dz *= act_in(act[pr.m_off + m * pr.m_stride + n]);
    }
    return dz;
}

// ---- input_grad --------------------------------------------------------------------------

fn find_group(tile_x: u32) -> InputGroup {
    var g = span.first;
    let last = span.first + span.count - 1u;
    while g < last && groups[g + 1u].first_tile <= tile_x {
        g += 1u;
    }
    return groups[g];
}

@compute @workgroup_size(16, 16, 1)
fn input_grad(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let group = find_group(wg.x);
    let m0 = wg.y * T;
    let k0 = (wg.x - group.first_tile) * T;

    var total: array<vec4<f32>, 4>;
    for (var p = group.first; p < group.first + group.count; p++) {
        let pr = problems[p];
        var acc: array<vec4<f32>, 4>;
        for (var n0 = 0u; n0 < pr.n; n0 += TR) {
            // dZ: 64 rows × 16 n, 4 per thread; consecutive threads read consecutive n.
            for (var j = 0u; j < 4u; j++) {
                let e = li + 256u * j;
                let nn = e % TR;
                let r = e / TR;
                left[nn * TILE_STRIDE + r / 4u][r % 4u] = load_dz(pr, m0 + r, n0 + nn);
            }
            // W: 16 n × 64 k, one vec4 of 4 consecutive k per thread.
            {
                let nn = li / 16u;
                let kq = (li % 16u) * 4u;
                let w = load_w4(pr, n0 + nn, k0 + kq);
                for (var j = 0u; j < 4u; j++) {
                    let c = kq + j;
                    right[nn * TILE_STRIDE + c % 16u][c / 16u] = w[j];
                }
            }
            workgroupBarrier();
            for (var nn = 0u; nn < TR; nn++) {
                let dz = left[nn * TILE_STRIDE + lid.y];
                let w = right[nn * TILE_STRIDE + lid.x];
                acc[0] += dz.x * w;
                acc[1] += dz.y * w;
                acc[2] += dz.z * w;
                acc[3] += dz.w * w;
            }
            workgroupBarrier();
        }
        // Through the gate product A ⊙ G: G's gradient is written here (each problem has its
        // own gate; a gated problem's grad_k is its k), A's is summed over the group.
        if (pr.flags & FLAG_GATED) == 0u {
            for (var i = 0u; i < 4u; i++) {
                total[i] += acc[i];
            }
            continue;
        }
        for (var i = 0u; i < 4u; i++) {
            let m = m0 + lid.y * 4u + i;
            for (var j = 0u; j < 4u; j++) {
                let k = k0 + lid.x + 16u * j;
                if m < batch.rows && k < group.grad_k {
                    let a = act_in(act[pr.a_off + m * pr.a_stride + k]);
                    let g = act_in(act[pr.g_off + m * pr.g_stride + k]);
                    grad[pr.g_off + m * pr.g_stride + k] = acc[i][j] * a;
                    total[i][j] += acc[i][j] * g;
                }
            }
        }
    }
    let first = problems[group.first];
    for (var i = 0u; i < 4u; i++) {
        let m = m0 + lid.y * 4u + i;
        for (var j = 0u; j < 4u; j++) {
            let k = k0 + lid.x + 16u * j;
            if m < batch.rows && k < group.grad_k {
                grad[first.a_off + m * first.a_stride + k] = total[i][j];
            }
        }
    }
}

// ---- weight_grad -------------------------------------------------------------------------

fn find_weight_problem(tile_x: u32) -> Problem {
    var p = span.first;
    let last = span.first + span.count - 1u;
    while p < last && problems[p + 1u].first_wtile <= tile_x {
        p += 1u;
    }
    return problems[p];
}

@compute @workgroup_size(16, 16, 1)
fn weight_grad(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let pr = find_weight_problem(wg.x);
    let local = wg.x - pr.first_wtile;
    let n_tiles = (pr.n + T - 1u) / T;
    let n0 = (local % n_tiles) * T;
    let k0 = (local / n_tiles) * T;
    // The tiles of W's first 64 columns also sum the bias gradient, in thread column 0.
    let sums_bias = k0 == 0u && lid.x == 0u;

    var acc: array<vec4<f32>, 4>;
    var bias = vec4<f32>(0.0);
    for (var m0 = 0u; m0 < batch.rows; m0 += TR) {
        // dZ: 16 rows × 64 n and A ⊙ G: 16 rows × 64 k, 4 each per thread; consecutive
        // threads read consecutive columns of one row.
        for (var j = 0u; j < 4u; j++) {
            let e = li + 256u * j;
            let c = e % T;
            let mm = e / T;
            left[mm * TILE_STRIDE + c / 4u][c % 4u] = load_dz(pr, m0 + mm, n0 + c);
            right[mm * TILE_STRIDE + c % 16u][c / 16u] = load_a(pr, m0 + mm, k0 + c);
        }
        workgroupBarrier();
        for (var mm = 0u; mm < TR; mm++) {
            let dz = left[mm * TILE_STRIDE + lid.y];
            let a = right[mm * TILE_STRIDE + lid.x];
            acc[0] += dz.x * a;
            acc[1] += dz.y * a;
            acc[2] += dz.z * a;
            acc[3] += dz.w * a;
            if sums_bias {
                bias += dz;
            }
        }
        workgroupBarrier();
    }
    let w_stride = (pr.k + 3u) & ~3u;
    for (var i = 0u; i < 4u; i++) {
        let n = n0 + lid.y * 4u + i;
        if n >= pr.n {
            continue;
        }
        for (var j = 0u; j < 4u; j++) {
            let k = k0 + lid.x + 16u * j;
            if k < pr.k {
                wgrad[pr.w_off + n * w_stride + k] = acc[i][j];
            }
        }
        if sums_bias {
            wgrad[pr.bias_off + n] = bias[i];
        }
    }
}
