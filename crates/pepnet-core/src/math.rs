//! The f64 helpers the CPU references share (the model's blocks and the kernels' own
//! references): the logistic, softmax, and f16 rounding as the f16 kernels stage inputs.

pub fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

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
