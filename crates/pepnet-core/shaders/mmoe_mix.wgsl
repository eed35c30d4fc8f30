// MMoE mix: H_t(0)[i] = Σ_k softmax(logits_t)_k · X_k[i], for every sample, task t and
// column i, in one dispatch. The softmax is fused in: each thread recomputes its task's K-wide
// softmax from the gate logits (K is small), so the probabilities never touch device memory.
//
// Expert k's last-layer output sits at columns k·width of the experts view; task t's logits at
// columns t·K of the logits view; task t's mixed input is written at columns t·width of the
// output view. One thread per (sample, task, column). The activations are `Act` (f32 or f16,
// from act_f32.wgsl or act_f16.wgsl, compiled first); the softmax and the sum are f32.

struct Params {
    experts: u32,   // K
    tasks: u32,     // T
    width: u32,     // width of each expert's output
    x_off: u32,
    x_stride: u32,
    logit_off: u32,
    logit_stride: u32,
    y_off: u32,
    y_stride: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> batch: Batch;
@group(0) @binding(2) var<storage, read_write> act: array<Act>;

@compute @workgroup_size(FLAT_WORKGROUP, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let at = grid_coords(flat_index(gid, nwg), params.tasks, params.width);
    let b = at.x;
    if b >= batch.rows {
        return;
    }
    let t = at.y;
    let i = at.z;

    let logits = params.logit_off + b * params.logit_stride + t * params.experts;
    var max_logit = act_in(act[logits]);
    for (var k = 1u; k < params.experts; k++) {
        max_logit = max(max_logit, act_in(act[logits + k]));
    }
    var total = 0.0;
    var mixed = 0.0;
    let x = params.x_off + b * params.x_stride + i;
    for (var k = 0u; k < params.experts; k++) {
        let e = exp(act_in(act[logits + k]) - max_logit);
        total += e;
        mixed += e * act_in(act[x + k * params.width]);
    }
    act[params.y_off + b * params.y_stride + t * params.width + i] = act_out(mixed / total);
}

// ---- Backward ----------------------------------------------------------------------------
// From the mixed inputs' gradient dH_t (in `grad`, at the output view's offsets) to the experts'
// outputs and the gate logits (at their views' offsets), the softmax's Jacobian fused in:
//   dX_k[i] = Σ_t g_tk · dH_t[i]
//   dz_tk   = g_tk · (s_tk − Σ_j g_tj · s_tj),  with s_tj = Σ_i X_j[i] · dH_t[i].
// Each thread sums in a fixed order: deterministic.

@group(0) @binding(3) var<storage, read_write> grad: array<f32>;

// The softmax of task t's logits for sample b, as the forward computes it: (max, Σ exp(z − max)).
fn softmax_of(b: u32, t: u32) -> vec2<f32> {
    let logits = params.logit_off + b * params.logit_stride + t * params.experts;
    var max_logit = act_in(act[logits]);
    for (var j = 1u; j < params.experts; j++) {
        max_logit = max(max_logit, act_in(act[logits + j]));
    }
    var total = 0.0;
    for (var j = 0u; j < params.experts; j++) {
        total += exp(act_in(act[logits + j]) - max_logit);
    }
    return vec2<f32>(max_logit, total);
}

// g_tk of sample b, from its task's softmax_of.
fn gate_weight(b: u32, t: u32, k: u32, softmax: vec2<f32>) -> f32 {
    let logit = act_in(act[params.logit_off + b * params.logit_stride + t * params.experts + k]);
    return exp(logit - softmax.x) / softmax.y;
}

// One thread per (sample, expert, column).
@compute @workgroup_size(FLAT_WORKGROUP, 1, 1)
fn backward_experts(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let at = grid_coords(flat_index(gid, nwg), params.experts, params.width);
    let b = at.x;
    if b >= batch.rows {
        return;
    }
    let k = at.y;
    let i = at.z;
    var dx = 0.0;
    for (var t = 0u; t < params.tasks; t++) {
        let g = gate_weight(b, t, k, softmax_of(b, t));
        dx += g * grad[params.y_off + b * params.y_stride + t * params.width + i];
    }
    grad[params.x_off + b * params.x_stride + k * params.width + i] = dx;
}

// s_tj of sample b: expert j's output against task t's mixed gradient.
fn mixed_dot(b: u32, t: u32, j: u32) -> f32 {
    let x = params.x_off + b * params.x_stride + j * params.width;
    let dh = params.y_off + b * params.y_stride + t * params.width;
    var s = 0.0;
    for (var i = 0u; i < params.width; i++) {
        s += act_in(act[x + i]) * grad[dh + i];
    }
    return s;
}

// One thread per (sample, task, expert).
@compute @workgroup_size(FLAT_WORKGROUP, 1, 1)
fn backward_logits(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let at = grid_coords(flat_index(gid, nwg), params.tasks, params.experts);
    let b = at.x;
    if b >= batch.rows {
        return;
    }
    let t = at.y;
    let k = at.z;
    let softmax = softmax_of(b, t);
    var weighted = 0.0;
    var own = 0.0;
    for (var j = 0u; j < params.experts; j++) {
        let s = mixed_dot(b, t, j);
        weighted += gate_weight(b, t, j, softmax) * s;
        if j == k {
            own = s;
        }
    }
    let dz = gate_weight(b, t, k, softmax) * (own - weighted);
    grad[params.logit_off + b * params.logit_stride + t * params.experts + k] = dz;
}
