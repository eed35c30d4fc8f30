//! `pepnet gen-input`: random input rows for a model.

use clap::Args;

use pepnet::Result;

use super::{load_spec, RowsOut};

/// Write random input rows for a model, CSV or Parquet by extension (benchmarks, trials).
#[derive(Args)]
pub struct GenInput {
    #[command(flatten)]
    pub to: RowsOut,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl GenInput {
    pub fn run(self) -> Result<()> {
        let spec = load_spec(&self.to.model)?;
        pepnet::synth::write_file(&spec, self.to.rows, self.seed, &self.to.output)?;
        eprintln!(
            "wrote {} rows to {}",
            self.to.rows,
            self.to.output.display()
        );
        Ok(())
    }
}
