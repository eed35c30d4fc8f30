//! The training loss and every parameter's gradient, in plain f64, one sample at a time: the
//! reference the GPU backward kernels are checked against, as [`crate::reference`] is for the
//! forward pass. Written to be obviously right, not fast. Each sample runs forward through
//! [`crate::model::sample`], which records every block's tape, then back through the blocks'
//! backward functions, which read it: the forward is written once, with the blocks.
//!
//! Loss: the batch mean over samples of `Σ_t w_t · BCE(p_t, y_t)`. The stop-gradients of
//! `docs/model.md` hold: EPNet's gate reads `E_d ⊕ sg(E)`, so its loss reaches E_d's features
//! but not E's through that input; PPNet's gates read `E_p ⊕ sg(O_ep)`, likewise.

use std::collections::BTreeMap;

use crate::batch::Batch;
use crate::error::Result;
use crate::gpu::linear::Precision;
pub use crate::model::gradients::Gradients;
use crate::model::sample::{self, StopGradients};
use crate::model::Model;

/// The values a stop-gradient freezes, per sample: E as EPNet's gate reads it, O_ep as PPNet's
/// gates read it. A finite-difference check perturbs parameters with these held at the
/// unperturbed values, so that it measures the gradient the stop-gradients define.
#[derive(Debug, Clone)]
pub struct Frozen {
    /// Per sample: E (the general features' vectors, concatenated) as EPNet's gate reads it.
    pub e: Vec<Vec<f64>>,
    /// Per sample: O_ep, EPNet's output, as PPNet's gates read it.
    pub o_ep: Vec<Vec<f64>>,
}

impl Frozen {
    fn sample(&self, i: usize) -> StopGradients<'_> {
        StopGradients {
            e: &self.e[i],
            o_ep: &self.o_ep[i],
        }
    }
}

/// Binary cross-entropy of probability `p` against label `y`, computed stably from p.
fn bce(p: f64, y: f64) -> f64 {
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
}

/// The values the stop-gradients freeze, from the model as it is.
pub fn frozen(model: &Model, batch: &Batch) -> Frozen {
    let tapes: Vec<sample::Tape> = (0..batch.len())
        .map(|i| sample::forward(model, batch, i, None, Precision::F32))
        .collect();
    Frozen {
        e: tapes.iter().map(|t| t.e.clone()).collect(),
        o_ep: tapes.iter().map(|t| t.o_ep.clone()).collect(),
    }
}

/// The loss alone (`labels` and the result as in [`loss_and_gradients`]), with the
/// stop-gradient inputs taken from `frozen` when given.
pub fn loss(
    model: &Model,
    batch: &Batch,
    labels: &[f64],
    task_weights: &[f64],
    frozen: Option<&Frozen>,
) -> f64 {
    let t = model.spec.n_tasks();
    (0..batch.len())
        .map(|i| {
            let stop = frozen.map(|f| f.sample(i));
            let tape = sample::forward(model, batch, i, stop, Precision::F32);
            (0..t)
                .map(|k| task_weights[k] * bce(tape.probs[k], labels[i * t + k]))
                .sum::<f64>()
        })
        .sum::<f64>()
        / batch.len().max(1) as f64
}

/// The loss and every parameter's gradient on `batch`; `labels` are `B × T` (0 or 1),
/// `task_weights` one per task.
pub fn loss_and_gradients(
    model: &Model,
    batch: &Batch,
    labels: &[f64],
    task_weights: &[f64],
) -> Result<(f64, Gradients)> {
    loss_and_gradients_at(Precision::F32, model, batch, labels, task_weights)
}

/// [`loss_and_gradients`] as mixed-precision training computes them at `precision`: the
/// forward's linear layers round their inputs and weights as the f16 kernels do; the backward
/// uses the f32 weights and the unrounded inputs.
pub fn loss_and_gradients_at(
    precision: Precision,
    model: &Model,
    batch: &Batch,
    labels: &[f64],
    task_weights: &[f64],
) -> Result<(f64, Gradients)> {
    loss_and_gradients_mixed(
        (precision, Precision::F32),
        model,
        batch,
        labels,
        task_weights,
    )
}

/// [`loss_and_gradients_at`] with the backward's products (input and weight gradients) at
/// `weight_grad` as well: at f16 they round their operands as the tensor-core kernels do.
pub fn loss_and_gradients_mixed(
    (precision, weight_grad): (Precision, Precision),
    model: &Model,
    batch: &Batch,
    labels: &[f64],
    task_weights: &[f64],
) -> Result<(f64, Gradients)> {
    batch.validate(&model.spec, "batch", 1)?;
    let (t_count, n) = (model.spec.n_tasks(), batch.len());
    let mut g = Gradients {
        rows: vec![BTreeMap::new(); model.spec.features.len()],
        ..Default::default()
    };
    let mut total = 0.0;
    for i in 0..n {
        let tape = sample::forward(model, batch, i, None, precision);
        // d loss / d logit_t = w_t (p_t − y_t) / B.
        let d_logits: Vec<f64> = (0..t_count)
            .map(|t| {
                let (p, y) = (tape.probs[t], labels[i * t_count + t]);
                total += task_weights[t] * bce(p, y);
                task_weights[t] * (p - y) / n as f64
            })
            .collect();
        sample::backward(model, batch, i, &tape, &d_logits, &mut g, weight_grad);
    }
    Ok((total / n.max(1) as f64, g))
}
