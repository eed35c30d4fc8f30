//! f64 references of the optimizer kernels (`shaders/optimizer.wgsl`): Adam and AdaGrad with
//! PyTorch's semantics.

/// One Adam step (PyTorch's semantics) on every element, in f64.
pub fn adam(
    config: &crate::gpu::optimizer::AdamOptions,
    step: u32,
    grad: &[f32],
    param: &mut [f64],
    m: &mut [f64],
    v: &mut [f64],
) {
    let c1 = 1.0 - config.beta1.powi(step as i32);
    let c2 = 1.0 - config.beta2.powi(step as i32);
    for i in 0..param.len() {
        let g = grad[i] as f64;
        m[i] = config.beta1 * m[i] + (1.0 - config.beta1) * g;
        v[i] = config.beta2 * v[i] + (1.0 - config.beta2) * g * g;
        param[i] -= config.lr * (m[i] / c1) / ((v[i] / c2).sqrt() + config.eps);
    }
}

/// One AdaGrad step on the listed rows (PyTorch's semantics), in f64.
pub fn adagrad_rows(
    config: &crate::gpu::optimizer::AdaGradOptions,
    d: usize,
    touched: &[u32],
    row_grad: &[f32],
    table: &mut [f64],
    sum_sq: &mut [f64],
) {
    for (r, &row) in touched.iter().enumerate() {
        for k in 0..d {
            let (i, g) = (row as usize * d + k, row_grad[r * d + k] as f64);
            sum_sq[i] += g * g;
            table[i] -= config.lr * g / (sum_sq[i].sqrt() + config.eps);
        }
    }
}
