//! The f64 helpers the CPU references share (the model's blocks and the kernels' own
//! references): the logistic, softmax, and f16 rounding as the f16 kernels stage inputs.

/// The logistic σ(z) = 1 / (1 + e^(−z)).
pub fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// The softmax of `z`, shifted by its maximum so that no exponential overflows.
pub fn softmax(z: &[f64]) -> Vec<f64> {
    let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|x| (x - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|x| x / sum).collect()
}

/// `x` rounded to f16 (round to nearest even), as the f16 kernels stage their inputs.
pub fn round_f16(x: f64) -> f64 {
    half::f16::from_f64(x).to_f64()
}
