//! `pepnet gen-input`: random input rows for a model.

use std::path::PathBuf;

use clap::Args;

use pepnet::Result;

use super::{at_least_one, load_spec};

/// Write random input rows for a model, CSV or Parquet by extension (benchmarks, trials).
#[derive(Args)]
pub struct GenInput {
    /// Model directory, or a model.json spec file.
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, value_parser = at_least_one())]
    pub rows: usize,
    #[arg(long)]
    pub output: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl GenInput {
    pub fn run(self) -> Result<()> {
        let spec = load_spec(&self.model)?;
        pepnet::synth::write_file(&spec, self.rows, self.seed, &self.output)?;
        eprintln!("wrote {} rows to {}", self.rows, self.output.display());
        Ok(())
    }
}
