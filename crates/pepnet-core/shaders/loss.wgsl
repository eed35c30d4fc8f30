// The multi-task loss and its gradient, the start of the backward pass.
//
// Loss of a batch of B samples: (1/B) Σ_m Σ_t w_t · BCE(p[m, t], y[m, t]). Its gradient with
// respect to the output layer's pre-activation z (p = σ(z)) is w_t (p − y) / B, written where the
// probabilities are in the gradient buffer (linear_backward.wgsl reads a sigmoid output's
// gradient as dZ). Two entry points:
//   bce  one thread per (sample, task): the gradient, and the sample's weighted BCE term;
//   sum  one thread: the batch's loss, the terms summed in order (deterministic), appended to
//        a log the host reads when it reports progress, not every step.

struct Params {
    tasks: u32,
    out_off: u32,   // the [rows, T] probabilities in the activation buffer
    log_slot: u32,  // where `sum` writes this batch's loss in `loss_log`
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> batch: Batch;
@group(0) @binding(2) var<storage, read> act: array<f32>;
@group(0) @binding(3) var<storage, read> labels: array<f32>;       // [rows, T], 0 or 1
@group(0) @binding(4) var<storage, read> task_weights: array<f32>; // [T]
@group(0) @binding(5) var<storage, read_write> grad: array<f32>;
@group(0) @binding(6) var<storage, read_write> terms: array<f32>;  // [rows, T]
@group(0) @binding(7) var<storage, read_write> loss_log: array<f32>;

// Probabilities are clamped before the logarithm so that a saturated sigmoid costs a large but
// finite loss; the gradient uses p unclamped.
const P_MIN: f32 = 1e-7;

@compute @workgroup_size(FLAT_WORKGROUP, 1, 1)
fn bce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if i >= batch.rows * params.tasks {
        return;
    }
    let t = i % params.tasks;
    let p = act[params.out_off + i];
    let y = labels[i];
    let w = task_weights[t];
    grad[params.out_off + i] = w * (p - y) / f32(batch.rows);
    let q = clamp(p, P_MIN, 1.0 - P_MIN);
    // clamp() may turn a NaN probability (an overflow upstream) into a number; the term stays
    // NaN so that the host sees the loss diverge (tested on the bits, as linear.wgsl does).
    if (bitcast<u32>(p) & 0x7f800000u) == 0x7f800000u {
        terms[i] = p;
        return;
    }
    terms[i] = -w * (y * log(q) + (1.0 - y) * log(1.0 - q));
}

@compute @workgroup_size(1, 1, 1)
fn sum() {
    var total = 0.0;
    for (var i = 0u; i < batch.rows * params.tasks; i++) {
        total += terms[i];
    }
    loss_log[params.log_slot] = total / f32(batch.rows);
}
