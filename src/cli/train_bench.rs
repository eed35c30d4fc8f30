//! `pepnet train-bench`: training samples/s on random batches, with each dispatch's GPU time.

use std::path::PathBuf;

use clap::Args;

use pepnet::{Model, ModelSpec, Result};

use super::{at_least_one, Device, Report};

/// Training samples/s of a model on random batches, with each dispatch's GPU time.
#[derive(Args)]
pub struct TrainBench {
    /// A built-in model: tiny, paper or paper_mmoe.
    #[arg(long, conflicts_with = "model", default_value = "paper")]
    pub preset: String,
    /// A model directory or spec instead of a preset.
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long, default_value_t = 1024, value_parser = at_least_one())]
    pub batch_size: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 10, value_parser = at_least_one())]
    pub steps: usize,
    #[command(flatten)]
    pub report: Report,
    #[command(flatten)]
    pub device: Device,
}

impl TrainBench {
    pub fn run(self) -> Result<()> {
        let model = match &self.model {
            Some(p) if p.is_dir() => Model::load(p)?,
            Some(p) => Model::init(ModelSpec::load(p)?, 0)?,
            None => Model::init(pepnet::tools::bench::preset(&self.preset)?, 0)?,
        };
        let ctx = self.device.adapter.open()?;
        let r = pepnet::tools::train_bench::run(
            ctx,
            &model,
            (self.batch_size, self.device.precision),
            self.steps,
            0,
        )?;
        println!(
            "{}: batch {}, {} steps: {:.1} ms/step, {:.0} samples/s, {:.1} GFLOP/s \
             ({} FLOPs per sample)",
            r.device,
            r.batch_size,
            r.steps,
            r.step_ms,
            r.samples_per_s,
            r.gflops,
            r.flops_per_sample
        );
        if let Some(profile) = &r.profile {
            let total: f64 = profile.iter().map(|p| p.1).sum();
            for (label, us) in profile {
                println!("  {label:32} {us:10.1} us  {:5.1}%", 100.0 * us / total);
            }
            println!("  {:32} {total:10.1} us", "GPU total");
        }
        self.report.write(&r)
    }
}
