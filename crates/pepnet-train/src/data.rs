//! The training loop over a labelled file held in memory: shuffled epochs of batches, a
//! progress bar with the loss and samples/s, and a validation pass after each epoch.

use std::path::Path;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::Trainer;
use crate::metrics::auc;
use pepnet_core::batch::Batch;
use pepnet_core::engine::{Engine, EngineOptions};
use pepnet_core::error::{Error, Result};
use pepnet_core::spec::ModelSpec;
use pepnet_io::{read_number_columns, InputReader};

/// A labelled data file read whole: the features, and per sample one 0/1 label per task.
#[derive(Debug, Clone)]
pub struct LabelledData {
    pub batch: Batch,
    /// `len × T`, row-major.
    pub labels: Vec<f32>,
    pub tasks: usize,
}

impl LabelledData {
    /// Reads `path` (CSV or Parquet): the spec's feature columns, and per task its label column
    /// (`label_columns[t]`), each 0 or 1. Errors name the file, row and column.
    pub fn read(path: &Path, spec: &ModelSpec, label_columns: &[String]) -> Result<Self> {
        let mut batch = Batch::new(Vec::new());
        for part in InputReader::open(path, spec, &[], 65536, None)? {
            batch.append(&part?.batch);
        }
        let columns = read_number_columns(path, label_columns)?;
        let rows = batch.len();
        let t = label_columns.len();
        let mut labels = vec![0.0; rows * t];
        for (k, (column, name)) in columns.iter().zip(label_columns).enumerate() {
            if column.len() != rows {
                return Err(Error::Batch(format!(
                    "{}: column '{name}' has {} values for {rows} rows",
                    path.display(),
                    column.len()
                )));
            }
            for (i, &y) in column.iter().enumerate() {
                if y != 0.0 && y != 1.0 {
                    return Err(Error::Batch(format!(
                        "{}: row {}, column '{name}': a label is 0 or 1, found {y}",
                        path.display(),
                        i + 1
                    )));
                }
                labels[i * t + k] = y;
            }
        }
        if rows == 0 {
            return Err(Error::Batch(format!(
                "{}: no rows to train on",
                path.display()
            )));
        }
        Ok(Self {
            batch,
            labels,
            tasks: t,
        })
    }

    pub fn len(&self) -> usize {
        self.batch.len()
    }

    /// Checks that the data fits `spec`: one label per sample and task, a batch that validates.
    pub fn check(&self, spec: &ModelSpec) -> Result<()> {
        if self.tasks != spec.n_tasks() || self.labels.len() != self.len() * self.tasks {
            return Err(Error::Batch(format!(
                "labelled data: {} labels of {} tasks for {} samples; the model has {} tasks",
                self.labels.len(),
                self.tasks,
                self.len(),
                spec.n_tasks()
            )));
        }
        if self.is_empty() {
            return Err(Error::Batch("labelled data: no samples".into()));
        }
        self.batch.validate(spec, "labelled data", 1)
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// The samples at `indices` and their labels.
    fn take(&self, indices: &[usize]) -> (Batch, Vec<f32>) {
        let t = self.tasks;
        let labels = indices
            .iter()
            .flat_map(|&i| &self.labels[i * t..(i + 1) * t])
            .copied()
            .collect();
        (self.batch.take(indices), labels)
    }
}

/// How `train` runs.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub epochs: usize,
    /// Seeds the shuffle: epoch e (0-based, counted on from a resumed model's) shuffles with
    /// seed + e.
    pub seed: u64,
    pub shuffle: bool,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// The validation metrics after an epoch.
#[derive(Debug, Clone, Serialize)]
pub struct Validation {
    /// Mean over samples of Σ_t w_t · BCE, as the training loss.
    pub loss: f64,
    /// Per task, AUC over the whole file (`None` where one class is absent).
    pub auc: Vec<Option<f64>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EpochReport {
    /// 1-based, counted on from a resumed model's epochs.
    pub epoch: usize,
    pub steps: u64,
    /// Mean of the epoch's batch losses.
    pub train_loss: f64,
    pub seconds: f64,
    pub samples_per_s: f64,
    pub validation: Option<Validation>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub epochs: Vec<EpochReport>,
}

/// Trains for `config.epochs` passes over `data`, validating on `valid` after each.
pub fn train(
    trainer: &mut Trainer,
    data: &LabelledData,
    valid: Option<&LabelledData>,
    config: &TrainOptions,
) -> Result<TrainReport> {
    data.check(trainer.spec())?;
    let batch_size = trainer.options.batch_size;
    let n = data.len();
    let steps_per_epoch = n.div_ceil(batch_size);
    // Epochs are numbered on from a resumed model's, so that its shuffles continue the
    // sequence an uninterrupted run would have used.
    let first_epoch = trainer.steps_done() / steps_per_epoch as u64;
    trainer.losses()?;
    let mut report = TrainReport { epochs: Vec::new() };
    for e in 0..config.epochs {
        let epoch = first_epoch + e as u64;
        let mut order: Vec<usize> = (0..n).collect();
        if config.shuffle {
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(
                config.seed.wrapping_add(epoch),
            ));
        }
        let bar = if config.progress {
            indicatif::ProgressBar::new(steps_per_epoch as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "epoch {prefix} [{bar:30}] {pos}/{len} batches {msg} ({eta} left)",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("{}/{}", e + 1, config.epochs));
        let start = Instant::now();
        let mut losses = Vec::with_capacity(steps_per_epoch);
        for (s, chunk) in order.chunks(batch_size).enumerate() {
            let (batch, labels) = data.take(chunk);
            trainer.step(&batch, &labels)?;
            // Reading the loss waits for the GPU: only now and then.
            if config.progress && (s + 1) % 32 == 0 {
                losses.extend(trainer.losses()?);
                let recent = &losses[losses.len().saturating_sub(32)..];
                let loss = recent.iter().map(|&x| x as f64).sum::<f64>() / recent.len() as f64;
                let rate = ((s + 1) * batch_size) as f64 / start.elapsed().as_secs_f64();
                bar.set_message(format!("loss {loss:.4}, {rate:.0} samples/s"));
            }
            bar.inc(1);
        }
        losses.extend(trainer.losses()?);
        let seconds = start.elapsed().as_secs_f64();
        bar.finish_and_clear();
        if let Some(i) = losses.iter().position(|l| !l.is_finite()) {
            return Err(Error::Gpu(format!(
                "epoch {}, batch {}: the loss is {} (diverged); lower the learning rates",
                epoch + 1,
                i + 1,
                losses[i]
            )));
        }
        let validation = valid.map(|v| validate(trainer, v)).transpose()?;
        report.epochs.push(EpochReport {
            epoch: epoch as usize + 1,
            steps: losses.len() as u64,
            train_loss: losses.iter().map(|&x| x as f64).sum::<f64>() / losses.len().max(1) as f64,
            seconds,
            samples_per_s: n as f64 / seconds,
            validation,
        });
    }
    Ok(report)
}

/// Scores `data` with the model as trained so far and measures its loss and AUCs.
pub fn validate(trainer: &Trainer, data: &LabelledData) -> Result<Validation> {
    data.check(trainer.spec())?;
    let model = trainer.model()?;
    let engine = Engine::new(
        trainer.ctx.clone(),
        &model,
        &EngineOptions {
            max_batch: 4096,
            ..Default::default()
        },
    )?;
    let scores = engine.score(&data.batch)?;
    let t = data.tasks;
    let weights = trainer.task_weights();
    let mut loss = 0.0;
    for (i, (&p, &y)) in scores.iter().zip(&data.labels).enumerate() {
        let p = (p as f64).clamp(1e-7, 1.0 - 1e-7);
        let y = y as f64;
        loss -= weights[i % t] * (y * p.ln() + (1.0 - y) * (1.0 - p).ln());
    }
    let auc = (0..t)
        .map(|k| {
            let s: Vec<f32> = scores.iter().skip(k).step_by(t).copied().collect();
            let l: Vec<bool> = data
                .labels
                .iter()
                .skip(k)
                .step_by(t)
                .map(|&y| y > 0.5)
                .collect();
            auc(&s, &l)
        })
        .collect();
    Ok(Validation {
        loss: loss / data.len() as f64,
        auc,
    })
}
