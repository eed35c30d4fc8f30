//! `pepnet kuairand`: a KuaiRand log converted into labelled input data and a spec.

use std::path::PathBuf;

use clap::Args;

use pepnet::Result;

use super::at_least_one;

/// Convert a KuaiRand log (with its user and video side files) into labelled input data and
/// a model spec that fits it.
#[derive(Args)]
pub struct Kuairand {
    /// The interaction log (log_*.csv).
    #[arg(long)]
    pub log: PathBuf,
    /// The user side file (user_features*.csv).
    #[arg(long)]
    pub users: PathBuf,
    /// The video side file (video_features_basic*.csv).
    #[arg(long)]
    pub videos: PathBuf,
    /// The data to write (CSV or Parquet): features, then one 0/1 column per task.
    #[arg(long)]
    pub output: PathBuf,
    /// Where to write the matching spec (model.json format).
    #[arg(long)]
    pub spec_out: PathBuf,
    /// Embedding width of the spec.
    #[arg(long, default_value_t = 16, value_parser = at_least_one())]
    pub dim: usize,
}

impl Kuairand {
    pub fn run(self) -> Result<()> {
        let c = pepnet::tools::kuairand::convert(
            &self.log,
            &self.users,
            &self.videos,
            &self.output,
            self.dim,
        )?;
        pepnet::write_file(&self.spec_out, c.spec.to_json().as_bytes())?;
        eprintln!(
            "wrote {} rows to {} and the spec to {}",
            c.rows,
            self.output.display(),
            self.spec_out.display()
        );
        Ok(())
    }
}
