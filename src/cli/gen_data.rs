//! `pepnet gen-data`: a synthetic labelled impression log for a model.

use std::path::PathBuf;

use clap::Args;

use pepnet::Result;

use super::{at_least_one, load_spec};

/// Write a synthetic labelled impression log for a model: features, a 0/1 label per task
/// and the true probabilities `p_<task>` (the process is in docs/data.md).
#[derive(Args)]
pub struct GenData {
    /// Model directory, or a model.json spec file.
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, value_parser = at_least_one())]
    pub rows: usize,
    /// CSV or Parquet, by extension.
    #[arg(long)]
    pub output: PathBuf,
    /// Seeds the hidden process (interests, domain and user effects): keep it for a
    /// validation set of the same behaviour.
    #[arg(long, default_value_t = 0)]
    pub world: u64,
    /// Seeds the sampling of rows and labels.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl GenData {
    pub fn run(self) -> Result<()> {
        let spec = load_spec(&self.model)?;
        pepnet::datagen::write(&spec, self.rows, self.world, self.seed, &self.output)?;
        eprintln!(
            "wrote {} labelled rows to {}",
            self.rows,
            self.output.display()
        );
        Ok(())
    }
}
