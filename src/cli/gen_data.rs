//! `pepnet gen-data`: a synthetic labelled impression log for a model.

use clap::Args;

use pepnet::Result;

use super::{load_spec, RowsOut};

/// Write a synthetic labelled impression log for a model: features, a 0/1 label per task
/// and the true probabilities `p_<task>` (the process is in docs/data.md).
#[derive(Args)]
pub struct GenData {
    #[command(flatten)]
    pub to: RowsOut,
    /// Seeds the hidden process (interests, domain and user effects): keep it for a
    /// validation set of the same behaviour.
    #[arg(long, default_value_t = 0)]
    pub world: u64,
    /// Seeds the sampling of rows and labels.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A drifting stream: item popularity and user interests move, a full turn of a user's
    /// interest and a quarter of each vocabulary's popular head every this many rows
    /// (docs/data.md).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub drift: Option<u64>,
    /// With --drift: the index of the file's first row in the stream, so that files continue
    /// one stream (give each its own --seed).
    #[arg(long, default_value_t = 0, requires = "drift")]
    pub start: u64,
}

impl GenData {
    pub fn run(self) -> Result<()> {
        let spec = load_spec(&self.to.model)?;
        let drift = self.drift.map(|period| pepnet::datagen::Drift {
            period,
            start: self.start,
        });
        pepnet::datagen::write_drifting(
            &spec,
            self.to.rows,
            self.world,
            self.seed,
            drift,
            &self.to.output,
        )?;
        eprintln!(
            "wrote {} labelled rows to {}",
            self.to.rows,
            self.to.output.display()
        );
        Ok(())
    }
}
