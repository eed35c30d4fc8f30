//! `pepnet eval`: AUC and GAUC per domain × task from labelled data and its scores.

use std::path::PathBuf;

use clap::Args;

use pepnet::Result;

use super::{load_spec, Labels, Report};

/// AUC and GAUC per domain × task, from labelled data and the scores written for it.
#[derive(Args)]
pub struct Eval {
    /// Model directory or model.json (for the tasks and the domain feature).
    #[arg(long)]
    pub model: PathBuf,
    /// The labelled data (CSV or Parquet): features, the user column, one 0/1 label per task.
    #[arg(long)]
    pub input: PathBuf,
    /// The scores `pepnet score` wrote for that data, row for row.
    #[arg(long)]
    pub scores: PathBuf,
    /// Column holding the user, for GAUC.
    #[arg(long, default_value = "user_id")]
    pub user_column: String,
    #[command(flatten)]
    pub labels: Labels,
    #[command(flatten)]
    pub report: Report,
}

impl Eval {
    pub fn run(self) -> Result<()> {
        let spec = load_spec(&self.model)?;
        let options = pepnet::eval::EvalOptions {
            user_column: self.user_column.clone(),
            label_columns: self.labels.columns(&spec)?,
        };
        let report = pepnet::eval::evaluate(&spec, &self.input, &self.scores, &options)?;
        print!("{}", pepnet::eval::table(&report));
        self.report.write(&report)
    }
}
