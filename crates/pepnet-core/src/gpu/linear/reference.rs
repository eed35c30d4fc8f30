//! f64 references of the linear kernel (`shaders/linear.wgsl`, forward) and its backward
//! (`shaders/linear_backward.wgsl`), on the same flat buffers and problem tables the kernels
//! read; `tests/kernels.rs` and `tests/backward_kernels.rs` compare the GPU against them.

use crate::gpu::act::ActStorage;
use crate::gpu::linear::{Activation, LinearProblem, Precision};

/// Every problem of one linear dispatch, reading `act` as it was before the dispatch and
/// writing each problem's output view (problems without `f32_out`). Weights are laid out
/// by `linear::pack_layer`.
pub fn linear_group(problems: &[LinearProblem], rows: usize, weights: &[f32], act: &mut [f64]) {
    linear_group_at(
        (Precision::F32, ActStorage::F32),
        problems,
        rows,
        weights,
        (act, &mut []),
    )
}

/// [`linear_group`] as the kernels of `precision` compute it over an activation buffer of
/// `storage`: at f16, every A ⊙ G element and every weight (not the bias) is rounded to f16
/// before the products, which are summed exactly here (in f64) and in f32 on the GPU. Over
/// f16 storage each output is rounded to f16 as it is stored. Problems flagged `f32_out`
/// write `scores` instead, unrounded.
pub fn linear_group_at(
    (precision, storage): (Precision, ActStorage),
    problems: &[LinearProblem],
    rows: usize,
    weights: &[f32],
    (act, scores): (&mut [f64], &mut [f64]),
) {
    let round = |x: f64| match precision {
        Precision::F32 => x,
        Precision::F16 => crate::math::round_f16(x),
    };
    let store = |x: f64| match storage {
        ActStorage::F32 => x,
        ActStorage::F16 => crate::math::round_f16(x),
    };
    let before = act.to_vec();
    for p in problems {
        let w_stride = crate::gpu::linear::padded_k(p.k) as usize;
        let at = |v: crate::gpu::linear::View, m: usize, c: usize| {
            v.offset as usize + m * v.stride as usize + c
        };
        for m in 0..rows {
            for n in 0..p.n as usize {
                let mut z = weights[p.bias_offset as usize + n] as f64;
                for k in 0..p.k as usize {
                    // A and G are f32 values in the buffer, and so is their product.
                    let mut a = before[at(p.a, m, k)] as f32;
                    if let Some(g) = p.gate {
                        a *= before[at(g, m, k)] as f32;
                    }
                    let w = weights[p.w_offset as usize + n * w_stride + k] as f64;
                    z += round(a as f64) * round(w);
                }
                let mut y = match p.activation {
                    Activation::None => z,
                    Activation::Relu => z.max(0.0),
                    Activation::Gate => p.gamma as f64 * crate::math::sigmoid(z),
                    Activation::Sigmoid => crate::math::sigmoid(z),
                };
                if let Some(kv) = p.keep {
                    act[at(kv, m, n)] = store(y);
                }
                if let Some(mv) = p.multiplier {
                    y *= before[at(mv, m, n)];
                }
                if p.f32_out {
                    scores[at(p.y, m, n)] = y;
                } else {
                    act[at(p.y, m, n)] = store(y);
                }
            }
        }
    }
}

/// The linear kernel's backward (`linear_backward.wgsl`) over one dispatch's problems:
/// reads the activations `act` (after the forward) and the output gradients in `grad`,
/// writes each input group's A gradient (first `grad_k` columns) and each gated problem's
/// gate gradient into `grad`, and every weight and bias gradient into `wgrad` (laid out as
/// the packed weights). Problems form groups as `linear_backward::input_groups` makes them.
pub fn linear_backward(
    problems: &[LinearProblem],
    rows: usize,
    weights: &[f32],
    act: &[f64],
    grad: &mut [f64],
    wgrad: &mut [f64],
) {
    use crate::gpu::linear::View;
    let at = |v: View, m: usize, c: usize| v.offset as usize + m * v.stride as usize + c;
    let dy = grad.to_vec();
    let dz = |p: &LinearProblem, m: usize, n: usize| -> f64 {
        let mut d = dy[at(p.y, m, n)];
        // The activation's output, before the multiplier.
        let y = p.keep.map_or(act[at(p.y, m, n)], |k| act[at(k, m, n)]);
        match p.activation {
            Activation::Relu if y <= 0.0 => d = 0.0,
            Activation::Gate => d *= y * (1.0 - y / p.gamma as f64),
            _ => {}
        }
        if let Some(mv) = p.multiplier {
            d *= act[at(mv, m, n)];
        }
        d
    };
    let mut first = 0;
    while first < problems.len() {
        let a = problems[first].a;
        let count = problems[first..].iter().take_while(|p| p.a == a).count();
        let group = &problems[first..first + count];
        for m in 0..rows {
            for k in 0..group[0].grad_k as usize {
                let mut total = 0.0;
                for p in group {
                    let stride = crate::gpu::linear::padded_k(p.k) as usize;
                    let acc: f64 = (0..p.n as usize)
                        .map(|n| dz(p, m, n) * weights[p.w_offset as usize + n * stride + k] as f64)
                        .sum();
                    match p.gate {
                        Some(g) => {
                            grad[at(g, m, k)] = acc * act[at(p.a, m, k)];
                            total += acc * act[at(g, m, k)];
                        }
                        None => total += acc,
                    }
                }
                grad[at(a, m, k)] = total;
            }
        }
        first += count;
    }
    for p in problems {
        let stride = crate::gpu::linear::padded_k(p.k) as usize;
        for n in 0..p.n as usize {
            for k in 0..p.k as usize {
                wgrad[p.w_offset as usize + n * stride + k] = (0..rows)
                    .map(|m| {
                        let a = act[at(p.a, m, k)] * p.gate.map_or(1.0, |g| act[at(g, m, k)]);
                        dz(p, m, n) * a
                    })
                    .sum();
            }
            wgrad[p.bias_offset as usize + n] = (0..rows).map(|m| dz(p, m, n)).sum();
        }
    }
}
