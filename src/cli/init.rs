//! `pepnet init`: a model directory with fresh weights for a spec.

use std::path::PathBuf;

use clap::Args;

use pepnet::{Model, ModelSpec, Result};

use super::InitArgs;

/// Write a model directory with fresh weights for a spec (Xavier-uniform linear weights;
/// embedding rows and biases as the spec's `init` or the flags say, N(0, 0.05²) and zero by
/// default).
#[derive(Args)]
pub struct Init {
    /// The model spec (model.json format).
    #[arg(long)]
    pub spec: PathBuf,
    /// Directory to write.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub init: InitArgs,
}

impl Init {
    pub fn run(self) -> Result<()> {
        let spec = self.init.apply(ModelSpec::load(&self.spec)?)?;
        Model::init(spec, self.seed)?.save(&self.out)?;
        eprintln!("wrote {} (seed {})", self.out.display(), self.seed);
        Ok(())
    }
}
