//! The CPU reference: PEPNet's forward pass in plain f64, one sample at a time. It is written to
//! be obviously right, not fast; every GPU test compares against it. Each block's f64 forward
//! lives with the block (`model::{embedding, epnet, ppnet, mmoe, tower}`), run in order by
//! [`crate::model::sample`], the same pass the gradient walks back; here are the entry point
//! and the scalar functions the references share.

use crate::batch::Batch;
use crate::error::Result;
use crate::gpu::linear::Precision;
use crate::model::{sample, Model};

/// The f64 helpers every reference shares, here too for the tests that compare against them.
pub use crate::math::{round_f16, sigmoid, softmax};

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
