//! The CPU reference: PEPNet's forward pass in plain f64, one sample at a time. It is written to
//! be obviously right, not fast; every GPU test compares against it. Each block's f64 forward
//! lives with the block (`model::{embedding, epnet, ppnet, mmoe, tower}`), run in order by
//! [`crate::model::sample`], the same pass the gradient walks back; here are the entry point
//! and the scalar functions the references share.

use crate::batch::Batch;
use crate::error::Result;
use crate::gpu::linear::Precision;
use crate::model::{sample, Model};

/// Scores a batch: `B × T` probabilities, row-major (sample-major).
pub fn forward(model: &Model, batch: &Batch) -> Result<Vec<f64>> {
    batch.validate(&model.spec, "batch", 1)?;
    let t = model.spec.n_tasks();
    let mut out = Vec::with_capacity(batch.len() * t);
    for i in 0..batch.len() {
        out.extend(sample::forward(model, batch, i, None, Precision::F32).probs);
    }
    Ok(out)
}

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
