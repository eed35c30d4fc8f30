//! `pepnet train-bench`: training samples/s of one model on one adapter, from random batches
//! and labels, with each dispatch's GPU time when the adapter has timestamps, and the step's
//! arithmetic so the rate can be set against the device's FLOP/s.

use std::time::Instant;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::model::Model;
use crate::plan::{PackedWeights, Plan, Step};
use crate::train::{Trainer, TrainerOptions};

#[derive(Debug, Clone, Serialize)]
pub struct TrainBench {
    pub device: String,
    pub batch_size: usize,
    pub steps: usize,
    /// Wall time per step, the host's preparation and the upload included.
    pub step_ms: f64,
    pub samples_per_s: f64,
    /// Multiply-adds ×2 of one sample's step: forward, input and weight gradients.
    pub flops_per_sample: u64,
    pub gflops: f64,
    /// Per dispatch of one step, its label and GPU microseconds (with timestamps).
    pub profile: Option<Vec<(String, f64)>>,
}

/// FLOPs of one sample's training step: each linear problem's forward product, its weight
/// gradient and its input gradient (over the columns that get one).
pub fn flops_per_sample(model: &Model) -> u64 {
    let packed = PackedWeights::new(&model.spec, &model.weights);
    let plan = Plan::for_training(&model.spec, &packed.layout, 1);
    plan.steps
        .iter()
        .map(|s| match s {
            Step::Linear { problems, .. } => problems
                .iter()
                .map(|p| 2 * p.n as u64 * (2 * p.k as u64 + p.grad_k as u64))
                .sum(),
            other => 3 * other.flops_per_sample(),
        })
        .sum()
}

/// Times `steps` training steps (after two untimed ones) at `batch_size` and `precision`.
pub fn run(
    ctx: std::sync::Arc<GpuContext>,
    model: &Model,
    (batch_size, precision): (usize, crate::gpu::linear::Precision),
    steps: usize,
    seed: u64,
) -> Result<TrainBench> {
    let spec = &model.spec;
    if steps == 0 {
        return Err(crate::Error::Batch(
            "train-bench times at least one step".into(),
        ));
    }
    let options = TrainerOptions {
        batch_size,
        precision,
        ..Default::default()
    };
    let mut trainer = Trainer::new(ctx.clone(), model, None, &options)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let t = spec.n_tasks();
    let batches: Vec<_> = (0..4u64)
        .map(|i| {
            let batch = crate::synth::random_batch(spec, batch_size, seed + i);
            let labels: Vec<f32> = (0..batch_size * t)
                .map(|_| rng.random_range(0..2) as f32)
                .collect();
            (batch, labels)
        })
        .collect();
    for (batch, labels) in batches.iter().take(2) {
        trainer.step(batch, labels)?;
    }
    trainer.losses()?;
    let start = Instant::now();
    for i in 0..steps {
        let (batch, labels) = &batches[i % batches.len()];
        trainer.step(batch, labels)?;
    }
    trainer.losses()?;
    let seconds = start.elapsed().as_secs_f64();
    let (batch, labels) = &batches[0];
    let profile = trainer
        .profile(batch, labels)?
        .map(|p| p.into_iter().map(|(label, ns)| (label, ns / 1e3)).collect());
    let samples_per_s = (steps * batch_size) as f64 / seconds;
    let flops = flops_per_sample(model);
    Ok(TrainBench {
        device: ctx.info.name.clone(),
        batch_size,
        steps,
        step_ms: seconds * 1e3 / steps as f64,
        samples_per_s,
        flops_per_sample: flops,
        gflops: samples_per_s * flops as f64 / 1e9,
        profile,
    })
}
