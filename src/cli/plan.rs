//! `pepnet plan`: the forward plan of a model, one line per GPU dispatch.

use std::path::PathBuf;

use clap::Args;

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
        let plan = pepnet::plan::Plan::new(&spec, &layout, 1);
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
                step.activation_bytes_per_sample(&spec),
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
            "activation row: {} f32 per sample",
            pepnet::plan::Plan::floats_per_sample(&spec)
        );
        if self.precision == Precision::F16 {
            println!(
                "f16: linear steps run on tensor cores (cooperative matrices) where the device offers \
                 f16 x f16 -> f32 fragments of 8 or 16, on batches of more than {} rows; else on the \
                 f16 SIMT kernels",
                pepnet::gpu::linear::SMALL_MAX_ROWS
            );
        }
        Ok(())
    }
}
