//! f64 reference of the loss kernel (`shaders/loss.wgsl`).

/// The loss of a batch of `rows` samples and its output gradient: `grad` gets w_t (p − y) / B
/// where the probabilities are (`out_off` on, `[rows, T]`); returns (1/B) Σ_m Σ_t w_t ·
/// BCE(p, y), the value the kernel logs.
pub fn bce(
    probabilities: &[f32],
    labels: &[f32],
    task_weights: &[f32],
    (rows, out_off): (usize, usize),
    grad: &mut [f64],
) -> f64 {
    let t = task_weights.len();
    let mut loss = 0.0;
    for i in 0..rows * t {
        let (p, y, w) = (
            probabilities[out_off + i] as f64,
            labels[i] as f64,
            task_weights[i % t] as f64,
        );
        grad[out_off + i] = w * (p - y) / rows as f64;
        loss -= w * (y * p.ln() + (1.0 - y) * (1.0 - p).ln());
    }
    loss / rows as f64
}
