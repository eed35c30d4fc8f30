//! Gate NU, the gate EPNet and PPNet are made of: `γ · σ(fc2(ReLU(fc1(x))))`, in (0, γ).
//! Its tensors are `<prefix>.fc1` and `<prefix>.fc2`; its f64 forward records what its
//! backward reads.

use super::dense;
use crate::gpu::linear::Precision;
use crate::math::sigmoid;
use crate::model::gradients::Gradients;
use crate::spec::{limits, GateSpec};
use crate::weights::Weights;

/// The two layers of the Gate NU named `prefix`: `prefix.fc1` and `prefix.fc2`.
pub fn layers(prefix: &str) -> [String; 2] {
    [format!("{prefix}.fc1"), format!("{prefix}.fc2")]
}

/// One Gate NU's forward on one sample (its input is kept by the block that owns it).
#[derive(Debug, Clone)]
pub struct Tape {
    /// fc1's output, before the ReLU.
    pre: Vec<f64>,
    /// The ReLU's output, fc2's input.
    hidden: Vec<f64>,
    /// fc2's output, before the scaled sigmoid.
    logits: Vec<f64>,
    /// The gate: γ · σ(logits).
    pub delta: Vec<f64>,
}

/// The gate of Gate NU `prefix` for input `x`, at `precision`.
pub fn forward(w: &Weights, prefix: &str, x: &[f64], gamma: f64, precision: Precision) -> Tape {
    let [fc1, fc2] = layers(prefix);
    let pre = dense::forward(precision, w, &fc1, x);
    let hidden = dense::relu(&pre);
    let logits = dense::forward(precision, w, &fc2, &hidden);
    let delta = logits.iter().map(|&z| gamma * sigmoid(z)).collect();
    Tape {
        pre,
        hidden,
        logits,
        delta,
    }
}

/// Adds the gate's parameter gradients for the gate's gradient `d_delta`; returns the
/// gradient of its input `x`.
pub fn backward(
    w: &Weights,
    g: &mut Gradients,
    prefix: &str,
    (x, tape): (&[f64], &Tape),
    d_delta: &[f64],
    gamma: f64,
    weight_grad: Precision,
) -> Vec<f64> {
    let [fc1, fc2] = layers(prefix);
    let d_logits: Vec<f64> = tape
        .logits
        .iter()
        .zip(d_delta)
        .map(|(&z, &d)| {
            let s = sigmoid(z);
            d * gamma * s * (1.0 - s)
        })
        .collect();
    let d_hidden = dense::backward(w, g, &fc2, &tape.hidden, &d_logits, weight_grad);
    let d_pre = dense::relu_backward(&d_hidden, &tape.pre);
    dense::backward(w, g, &fc1, x, &d_pre, weight_grad)
}

/// A Gate NU's spec key `key` (`epnet` or `ppnet`): its hidden width at least 1.
pub(crate) fn validate(key: &str, gate: Option<GateSpec>) -> Result<(), String> {
    match gate {
        Some(g) if g.hidden == 0 => Err(format!("key '{key}.hidden': must be at least 1, found 0")),
        _ => Ok(()),
    }
}

/// Its hidden width within the limits.
pub(crate) fn validate_sizes(key: &str, gate: Option<GateSpec>) -> Result<(), String> {
    match gate {
        Some(g) => limits::check_width(&format!("{key}.hidden"), g.hidden),
        None => Ok(()),
    }
}
