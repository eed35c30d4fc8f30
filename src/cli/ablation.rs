//! `pepnet ablation`: the paper's ablation (PEPNet, EPNet only, PPNet only, the plain DNN,
//! MMoE) trained on the GPU and compared by GAUC.

use std::path::PathBuf;

use clap::Args;

use pepnet::tools::ablation;
use pepnet::train::{LabelledData, TrainerOptions};
use pepnet::Result;

use super::{at_least_one, load_spec, Device, Labels, Report};

/// The paper's ablation: PEPNet, EPNet only, PPNet only, the plain DNN and MMoE built from
/// one spec, trained on the GPU with the same data, seeds and optimizers, and their GAUC per
/// domain × task on the validation data (mean over seeds) as a markdown table.
#[derive(Args)]
pub struct Ablation {
    /// The base spec (model.json, or a model directory's): its gates' width and first tower
    /// layer size the variants.
    #[arg(long)]
    pub model: PathBuf,
    /// Training data (CSV or Parquet) with one 0/1 label column per task.
    #[arg(long)]
    pub train: PathBuf,
    /// Validation data of the same form, with the user column for GAUC.
    #[arg(long)]
    pub valid: PathBuf,
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    pub seeds: Vec<u64>,
    #[arg(long, default_value_t = 2, value_parser = at_least_one())]
    pub epochs: usize,
    #[arg(long, default_value_t = 1024, value_parser = at_least_one())]
    pub batch_size: usize,
    #[arg(long, default_value = "user_id")]
    pub user_column: String,
    #[command(flatten)]
    pub labels: Labels,
    #[command(flatten)]
    pub report: Report,
    #[command(flatten)]
    pub device: Device,
}

impl Ablation {
    pub fn run(self) -> Result<()> {
        let spec = load_spec(&self.model)?;
        let columns = self.labels.columns(&spec)?;
        let train_data = LabelledData::read(&self.train, &spec, &columns)?;
        let valid = LabelledData::read(&self.valid, &spec, &columns)?;
        let truth = pepnet::eval::read_eval_data(
            &spec,
            &self.valid,
            &pepnet::eval::EvalOptions {
                user_column: self.user_column.clone(),
                label_columns: columns,
            },
        )?;
        let ctx = self.device.adapter.open()?;
        let (epochs, seeds, precision) = (self.epochs, &self.seeds, self.device.precision);
        let options = TrainerOptions {
            batch_size: self.batch_size,
            precision,
            ..Default::default()
        };
        eprintln!(
            "ablation ({}) on {}: 5 models x {} seeds, {} epochs of {} samples",
            precision.name(),
            ctx.info.name,
            seeds.len(),
            epochs,
            train_data.len()
        );
        let cells = ablation::run(
            &ctx,
            &spec,
            (&train_data, &valid, &truth),
            seeds,
            &options,
            epochs,
            |name, seed| eprintln!("trained {name}, seed {seed}"),
        )?;
        print!("{}", ablation::table(&cells));
        self.report.write(&cells)
    }
}
