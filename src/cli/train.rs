//! `pepnet train`: a model trained on the GPU from a labelled file, written as a model
//! directory `score` reads, with the optimizer state to resume from.

use std::path::PathBuf;

use clap::Args;

use pepnet::gpu::optimizer::{AdaGradOptions, AdamOptions};
use pepnet::train::{LabelledData, OptimizerState, TrainOptions, Trainer, TrainerOptions};
use pepnet::{Model, ModelSpec, Result};

use super::{at_least_one, Device, Labels, Report};

/// Train a model on the GPU (AdaGrad on embeddings, Adam on dense layers) and write a
/// model directory `score` reads, with the optimizer state to resume from.
#[derive(Args)]
pub struct Train {
    /// A model.json spec (fresh Xavier initialisation from --seed) or a model directory
    /// (resume: its weights, and its optimizer.safetensors when there is one).
    #[arg(long)]
    pub model: PathBuf,
    /// Training data (CSV or Parquet): the features and one 0/1 label column per task.
    #[arg(long)]
    pub train: PathBuf,
    /// Validation data of the same form, measured after each epoch.
    #[arg(long)]
    pub valid: Option<PathBuf>,
    /// Model directory to write (model.json, weights.safetensors, optimizer.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 1, value_parser = at_least_one())]
    pub epochs: usize,
    #[arg(long, default_value_t = 1024, value_parser = at_least_one())]
    pub batch_size: usize,
    /// Adam's learning rate (dense layers).
    #[arg(long, default_value_t = 1e-3)]
    pub adam_lr: f64,
    #[arg(long, default_value_t = 1e-8)]
    pub adam_eps: f64,
    /// AdaGrad's learning rate (embedding rows).
    #[arg(long, default_value_t = 0.05)]
    pub adagrad_lr: f64,
    #[arg(long, default_value_t = 1e-10)]
    pub adagrad_eps: f64,
    /// Per-task loss weights, comma-separated in task order [default: 1 each].
    #[arg(long, value_delimiter = ',')]
    pub task_weights: Vec<f64>,
    #[command(flatten)]
    pub labels: Labels,
    /// Seeds the initialisation (from a spec) and the shuffle.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep the file's order instead of shuffling each epoch.
    #[arg(long)]
    pub no_shuffle: bool,
    #[command(flatten)]
    pub report: Report,
    #[command(flatten)]
    pub device: Device,
}

impl Train {
    pub fn run(self) -> Result<()> {
        let options = TrainerOptions {
            batch_size: self.batch_size,
            adam: AdamOptions {
                lr: self.adam_lr,
                eps: self.adam_eps,
                ..Default::default()
            },
            adagrad: AdaGradOptions {
                lr: self.adagrad_lr,
                eps: self.adagrad_eps,
            },
            task_weights: (!self.task_weights.is_empty()).then_some(self.task_weights.clone()),
            precision: self.device.precision,
        };
        let config = TrainOptions {
            epochs: self.epochs,
            seed: self.seed,
            shuffle: !self.no_shuffle,
            progress: true,
        };
        // A directory resumes; a spec file starts fresh.
        let (model, state) = if self.model.is_dir() {
            let m = Model::load(&self.model)?;
            let state = OptimizerState::load(&self.model, &m.spec)?;
            (m, state)
        } else {
            (
                Model::init(ModelSpec::load(&self.model)?, config.seed)?,
                None,
            )
        };
        let columns = self.labels.columns(&model.spec)?;
        let data = LabelledData::read(&self.train, &model.spec, &columns)?;
        let valid = self
            .valid
            .as_ref()
            .map(|p| LabelledData::read(p, &model.spec, &columns))
            .transpose()?;
        let ctx = self.device.adapter.open()?;
        eprintln!(
            "training on {} ({} samples{}, {} epochs of batches of {})",
            ctx.info.name,
            data.len(),
            match &state {
                Some(s) => format!(", resuming after step {}", s.step),
                None => String::new(),
            },
            config.epochs,
            options.batch_size
        );
        let mut trainer = Trainer::new(ctx, &model, state.as_ref(), &options)?;
        let report = pepnet::train::train(&mut trainer, &data, valid.as_ref(), &config)?;
        for e in &report.epochs {
            let mut line = format!(
                "epoch {}: train loss {:.5}, {:.0} samples/s ({:.1} s)",
                e.epoch, e.train_loss, e.samples_per_s, e.seconds
            );
            if let Some(v) = &e.validation {
                line += &format!("; validation loss {:.5}, AUC", v.loss);
                for (task, auc) in model.spec.tasks.iter().zip(&v.auc) {
                    match auc {
                        Some(a) => line += &format!(" {task} {a:.4}"),
                        None => line += &format!(" {task} -"),
                    }
                }
            }
            eprintln!("{line}");
        }
        // Written only now, all at once: a failed run leaves the output as it was.
        let trained = trainer.model()?;
        let state = trainer.optimizer_state()?;
        self.report.write(&report)?;
        state.save_with(&trained, &self.out)?;
        eprintln!("wrote {} (step {})", self.out.display(), state.step);
        Ok(())
    }
}
