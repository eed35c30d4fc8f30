//! f64 references of the MMoE mix (`shaders/mmoe_mix.wgsl`), forward and backward.

use crate::gpu::mmoe_mix::MixParams;

/// The MMoE mix of every sample and task.
pub fn mmoe_mix(p: &MixParams, rows: usize, act: &mut [f64]) {
    mmoe_mix_stored(p, rows, act, &|x| x)
}

/// [`mmoe_mix`], each output passed through `stored` (the activation storage's rounding).
pub fn mmoe_mix_stored(p: &MixParams, rows: usize, act: &mut [f64], stored: &dyn Fn(f64) -> f64) {
    let (k_count, width) = (p.experts as usize, p.width as usize);
    for b in 0..rows {
        for t in 0..p.tasks as usize {
            let logits: Vec<f64> = (0..k_count)
                .map(|k| act[p.logit_off as usize + b * p.logit_stride as usize + t * k_count + k])
                .collect();
            let g = crate::math::softmax(&logits);
            for i in 0..width {
                let x = p.x_off as usize + b * p.x_stride as usize + i;
                let mixed: f64 = (0..k_count).map(|k| g[k] * act[x + k * width]).sum();
                act[p.y_off as usize + b * p.y_stride as usize + t * width + i] = stored(mixed);
            }
        }
    }
}

/// The MMoE mix's backward (`mmoe_mix.wgsl` `backward_*`): from the mixed inputs' gradient
/// (at the output view in `grad`) to the experts' outputs' and the gate logits'.
pub fn mmoe_mix_backward(p: &MixParams, rows: usize, act: &[f64], grad: &mut [f64]) {
    let (k_count, width) = (p.experts as usize, p.width as usize);
    for b in 0..rows {
        let x = |k: usize, i: usize| p.x_off as usize + b * p.x_stride as usize + k * width + i;
        let dh = |t: usize, i: usize| p.y_off as usize + b * p.y_stride as usize + t * width + i;
        let gates: Vec<Vec<f64>> = (0..p.tasks as usize)
            .map(|t| {
                let logit = p.logit_off as usize + b * p.logit_stride as usize + t * k_count;
                crate::math::softmax(&act[logit..logit + k_count])
            })
            .collect();
        for k in 0..k_count {
            for i in 0..width {
                grad[x(k, i)] = (0..p.tasks as usize)
                    .map(|t| gates[t][k] * grad[dh(t, i)])
                    .sum();
            }
        }
        for (t, g) in gates.iter().enumerate() {
            let s: Vec<f64> = (0..k_count)
                .map(|j| (0..width).map(|i| act[x(j, i)] * grad[dh(t, i)]).sum())
                .collect();
            let weighted: f64 = g.iter().zip(&s).map(|(a, b)| a * b).sum();
            for k in 0..k_count {
                let logit = p.logit_off as usize + b * p.logit_stride as usize + t * k_count + k;
                grad[logit] = g[k] * (s[k] - weighted);
            }
        }
    }
}
