//! `pepnet init`: a model directory with fresh weights for a spec.

use std::path::PathBuf;

use clap::Args;

use pepnet::{Model, ModelSpec, Result};

/// Write a model directory with Xavier-initialised weights for a spec.
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
}

impl Init {
    pub fn run(self) -> Result<()> {
        let spec = ModelSpec::load(&self.spec)?;
        Model::init(spec, self.seed)?.save(&self.out)?;
        eprintln!("wrote {} (seed {})", self.out.display(), self.seed);
        Ok(())
    }
}
