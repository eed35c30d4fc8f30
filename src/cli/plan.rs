//! `pepnet plan`: the forward plan of a model, one line per GPU dispatch.

use std::path::PathBuf;

use clap::Args;

use pepnet::gpu::act::ActStorage;
use pepnet::gpu::linear::Precision;
use pepnet::Result;

use super::load_spec;

/// Show the forward plan of a model: one line per GPU dispatch, with its work per sample.
#[derive(Args)]
pub struct Plan {
    /// Model directory, or a model.json spec file.
    #[arg(long)]
    pub model: PathBuf,
    /// Precision whose kernels and weight bytes to show: f32 or f16.
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
}

impl Plan {
    pub fn run(self) -> Result<()> {
        // The plan comes from the spec alone: no weights are read or made.
        let spec = load_spec(&self.model)?;
        let layout = pepnet::plan::PackedLayout::new(&spec);
        // At f16 the activations are f16 where the device has f16 shaders (most do).
        let storage = match self.precision {
            Precision::F32 => ActStorage::F32,
            Precision::F16 => ActStorage::F16,
        };
        let plan = pepnet::plan::Plan::new(&spec, &layout, 1, storage);
        // Which linear kernel runs depends on the device and the batch; name the choice.
        let linear_kernel = match self.precision {
            Precision::F32 => "linear f32 simt",
            Precision::F16 => "linear f16 coop|simt",
        };
        println!(
            "{:<14} {:<21} {:>8} {:>14} {:>16} {:>14}",
            "dispatch", "kernel", "problems", "FLOP/sample", "act bytes/sample", "weight bytes"
        );
        let (mut flops, mut act, mut weights) = (0, 0, 0);
        for step in &plan.steps {
            let (f, a, w) = (
                step.flops_per_sample(),
                step.activation_bytes_per_sample(&spec, storage),
                step.weight_bytes_at(self.precision),
            );
            let kernel = match step {
                pepnet::plan::Step::Linear { .. } => linear_kernel,
                other => other.label(),
            };
            println!(
                "{:<14} {:<21} {:>8} {:>14} {:>16} {:>14}",
                step.label(),
                kernel,
                step.problems(),
                f,
                a,
                w
            );
            (flops, act, weights) = (flops + f, act + a, weights + w);
        }
        println!(
            "{:<14} {:<21} {:>8} {:>14} {:>16} {:>14}",
            "total",
            "",
            plan.steps.len(),
            flops,
            act,
            weights
        );
        println!(
            "activation row: {} {} and {} f32 probabilities per sample ({} bytes)",
            plan.row_width,
            storage.name(),
            spec.n_tasks(),
            pepnet::plan::Plan::act_bytes_per_sample(&spec, storage)
        );
        if self.precision == Precision::F16 {
            println!(
                "f16: linear steps run on tensor cores (cooperative matrices) where the device offers \
                 f16 x f16 -> f32 fragments of 8 or 16, on batches of more than {} rows; else on the \
                 f16 SIMT kernels; activations are stored as f16 (on devices without f16 shaders, \
                 as f32)",
                pepnet::gpu::linear::SMALL_MAX_ROWS
            );
        }
        Ok(())
    }
}
