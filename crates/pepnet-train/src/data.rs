//! The training loop: epochs of batches from any [`TrainingData`] (a labelled file held in
//! memory, or streamed files), driving any [`Learner`], with a progress bar, checkpoints,
//! progressive validation and a validation pass after each epoch.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::checkpoint::{labels_fingerprint, CheckpointOptions, Checkpointer, Progress};
use crate::learner::Learner;
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

    /// Samples from rows of text (a stream's entries, say): `header` names the columns of
    /// every row; the spec's features and the label columns must be among them. Each value is
    /// read as the same cell of a CSV file would be, with the same checks; errors name `name`,
    /// the row (1-based) and the column.
    pub fn from_text_rows(
        name: &str,
        spec: &ModelSpec,
        label_columns: &[String],
        header: &[String],
        rows: &[Vec<String>],
    ) -> Result<Self> {
        let line = |cells: &mut dyn Iterator<Item = &String>, out: &mut String| {
            for (i, cell) in cells.enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if cell.contains([',', '"', '\n', '\r']) {
                    out.push('"');
                    out.push_str(&cell.replace('"', "\"\""));
                    out.push('"');
                } else {
                    out.push_str(cell);
                }
            }
            out.push('\n');
        };
        let mut text = String::new();
        line(&mut header.iter(), &mut text);
        for row in rows {
            line(&mut row.iter(), &mut text);
        }
        let reader = InputReader::from_bytes(
            name,
            text.into_bytes(),
            pepnet_io::Format::Csv,
            spec,
            label_columns,
            rows.len().max(1),
            None,
        )?;
        let mut out = Self {
            batch: Batch::new(Vec::new()),
            labels: Vec::with_capacity(rows.len() * label_columns.len()),
            tasks: label_columns.len(),
        };
        for part in reader {
            out.append(&Self::from_input(&part?, label_columns, name)?);
        }
        Ok(out)
    }

    /// A batch read with the label columns carried (`InputReader` with `carry` =
    /// `label_columns`) as labelled samples; a label that is not 0 or 1 is an error naming
    /// `name`, the row and the column.
    pub fn from_input(
        part: &pepnet_io::InputBatch,
        label_columns: &[String],
        name: &str,
    ) -> Result<Self> {
        let t = label_columns.len();
        let columns: Vec<Vec<String>> = part
            .carried
            .iter()
            .map(|a| {
                let format =
                    arrow_cast::display::ArrayFormatter::try_new(a.as_ref(), &Default::default())
                        .map_err(|e| Error::Batch(format!("{name}: {e}")))?;
                Ok((0..a.len()).map(|i| format.value(i).to_string()).collect())
            })
            .collect::<Result<_>>()?;
        let mut labels = Vec::with_capacity(part.rows.len() * t);
        for (i, &row) in part.rows.iter().enumerate() {
            for (k, column) in columns.iter().enumerate() {
                let y = match column[i].trim() {
                    "0" | "0.0" => 0.0,
                    "1" | "1.0" => 1.0,
                    other => {
                        return Err(Error::Batch(format!(
                            "{name}: row {row}, column '{}': a label is 0 or 1, found '{other}'",
                            label_columns[k]
                        )))
                    }
                };
                labels.push(y);
            }
        }
        Ok(Self {
            batch: part.batch.clone(),
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

    /// The samples at `indices`, with their labels.
    pub(crate) fn take_labelled(&self, indices: &[usize]) -> LabelledData {
        let (batch, labels) = self.take(indices);
        LabelledData {
            batch,
            labels,
            tasks: self.tasks,
        }
    }

    /// The first `n` samples, and the rest.
    pub fn split_at(&self, n: usize) -> (LabelledData, LabelledData) {
        let head: Vec<usize> = (0..n).collect();
        let tail: Vec<usize> = (n..self.len()).collect();
        (self.take_labelled(&head), self.take_labelled(&tail))
    }

    /// Appends `other`'s samples.
    pub fn append(&mut self, other: &LabelledData) {
        self.batch.append(&other.batch);
        self.labels.extend_from_slice(&other.labels);
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
    /// Epochs to run (more, from a resumed model's step), or the run's total when
    /// `epochs_are_total` (resuming a checkpointed run finishes it).
    pub epochs: usize,
    pub epochs_are_total: bool,
    /// Seeds the shuffle: epoch e (0-based, counted on from a resumed model's) shuffles with
    /// seed + e.
    pub seed: u64,
    pub shuffle: bool,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Write checkpoints while training.
    pub checkpoints: Option<CheckpointOptions>,
    /// Progressive validation: score every batch before training on it, and report AUC and
    /// GAUC per task over windows of this many samples.
    pub progressive: Option<Progressive>,
}

/// Progressive validation's window and the feature whose ids group GAUC.
#[derive(Debug, Clone)]
pub struct Progressive {
    pub window: usize,
    /// A sparse feature (spec index), or `None` for AUC only.
    pub user_feature: Option<usize>,
}

/// One window of progressive validation: what the model scored before it trained on it.
#[derive(Debug, Clone, Serialize)]
pub struct WindowReport {
    /// Steps `first_step + 1 ..= last_step` (1-based, counted on from a resumed run's).
    pub first_step: u64,
    pub last_step: u64,
    pub samples: usize,
    /// Per task.
    pub auc: Vec<Option<f64>>,
    pub gauc: Vec<Option<f64>>,
    /// Mean of Σ_t w_t · BCE over the window, as the training loss.
    pub loss: f64,
}

/// A window of progressive validation being gathered: each batch's scores from before the
/// step that trained on it, its labels and (for GAUC) its users.
#[derive(Default)]
pub struct Window {
    first_step: u64,
    scores: Vec<f32>,
    labels: Vec<f32>,
    users: Vec<u64>,
}

impl Window {
    /// An empty window after step `first_step`.
    pub fn after(first_step: u64) -> Self {
        Self {
            first_step,
            ..Default::default()
        }
    }

    /// Adds a batch: its scores (`len × T`) and labels, and its users' ids from the sparse
    /// feature `user_feature` (spec index) when GAUC is wanted.
    pub fn add(&mut self, batch: &Batch, scores: &[f32], labels: &[f32], user: Option<usize>) {
        self.scores.extend_from_slice(scores);
        self.labels.extend_from_slice(labels);
        if let Some(f) = user {
            self.users
                .extend((0..batch.len()).map(|i| batch.columns[f].ids(i)[0]));
        }
    }

    /// Samples gathered, given `tasks` scores per sample.
    pub fn samples(&self, tasks: usize) -> usize {
        self.scores.len() / tasks.max(1)
    }

    /// The window's metrics, ending after step `last_step`.
    pub fn report(&self, last_step: u64, tasks: usize, weights: &[f64]) -> WindowReport {
        let n = self.scores.len() / tasks;
        let per_task = |k: usize| -> (Vec<f32>, Vec<bool>) {
            let s = self.scores.iter().skip(k).step_by(tasks).copied().collect();
            let l = self
                .labels
                .iter()
                .skip(k)
                .step_by(tasks)
                .map(|&y| y > 0.5)
                .collect();
            (s, l)
        };
        let mut loss = 0.0;
        for (i, (&p, &y)) in self.scores.iter().zip(&self.labels).enumerate() {
            let p = (p as f64).clamp(1e-7, 1.0 - 1e-7);
            loss -= weights[i % tasks] * (y as f64 * p.ln() + (1.0 - y as f64) * (1.0 - p).ln());
        }
        WindowReport {
            first_step: self.first_step,
            last_step,
            samples: n,
            auc: (0..tasks)
                .map(|k| {
                    let (s, l) = per_task(k);
                    auc(&s, &l)
                })
                .collect(),
            gauc: (0..tasks)
                .map(|k| {
                    let (s, l) = per_task(k);
                    (!self.users.is_empty())
                        .then(|| crate::metrics::gauc(&self.users, &s, &l).map(|(g, _)| g))
                        .flatten()
                })
                .collect(),
            loss: loss / n.max(1) as f64,
        }
    }
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            epochs: 1,
            epochs_are_total: false,
            seed: 0,
            shuffle: true,
            progress: false,
            checkpoints: None,
            progressive: None,
        }
    }
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
    /// Steps of this epoch run now (fewer than the epoch's when it resumed part-way).
    pub steps: u64,
    /// Mean of those steps' batch losses.
    pub train_loss: f64,
    pub seconds: f64,
    pub samples_per_s: f64,
    /// Host time taking batches from the data (reading, shuffling, cutting).
    pub data_seconds: f64,
    /// Host time in the trainer's `step`: checks, uploads, recording and submitting (and for
    /// hashed features, mapping ids to the working set), with whatever waits on the GPU there.
    pub step_seconds: f64,
    pub validation: Option<Validation>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub epochs: Vec<EpochReport>,
    /// The checkpoints written, oldest first (only the newest `keep` remain on disk).
    pub checkpoints: Vec<PathBuf>,
    /// Progressive validation's windows, in order.
    pub windows: Vec<WindowReport>,
}

/// An epoch's batches with their labels (`len × T`, row-major), in order.
pub type Batches<'a> = Box<dyn Iterator<Item = Result<(Batch, Vec<f32>)>> + 'a>;

/// Where training samples come from: a file held in memory ([`LabelledData`]) or files
/// streamed in windows ([`crate::StreamedData`]).
pub trait TrainingData {
    /// Samples in one epoch.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Labels per sample.
    fn tasks(&self) -> usize;
    /// Identifies the data in a checkpoint, so that a resume with other data is refused.
    fn fingerprint(&self) -> String;
    /// Checks the data fits `spec`.
    fn check(&self, spec: &ModelSpec) -> Result<()>;
    /// Epoch `epoch`'s batches of `batch_size` (the last may be short), from step `first_step`
    /// of the epoch on: the same samples in the same order for the same arguments.
    fn batches<'a>(
        &'a self,
        epoch: u64,
        first_step: usize,
        batch_size: usize,
        seed: u64,
        shuffle: bool,
    ) -> Result<Batches<'a>>;
}

impl TrainingData for LabelledData {
    fn len(&self) -> usize {
        self.batch.len()
    }

    fn tasks(&self) -> usize {
        self.tasks
    }

    fn fingerprint(&self) -> String {
        labels_fingerprint(&self.labels)
    }

    fn is_empty(&self) -> bool {
        LabelledData::is_empty(self)
    }

    fn check(&self, spec: &ModelSpec) -> Result<()> {
        LabelledData::check(self, spec)
    }

    fn batches<'a>(
        &'a self,
        epoch: u64,
        first_step: usize,
        batch_size: usize,
        seed: u64,
        shuffle: bool,
    ) -> Result<Batches<'a>> {
        let order = epoch_order(self.len(), seed, shuffle, epoch);
        let chunks: Vec<Vec<usize>> = order
            .chunks(batch_size)
            .skip(first_step)
            .map(<[usize]>::to_vec)
            .collect();
        Ok(Box::new(chunks.into_iter().map(|c| Ok(self.take(&c)))))
    }
}

/// Epoch `epoch`'s order of the `n` samples.
fn epoch_order(n: usize, seed: u64, shuffle: bool, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed.wrapping_add(epoch)));
    }
    order
}

/// What fixes `data`'s batch sequence under `config`, at `step`.
pub fn progress(data: &dyn TrainingData, trainer: &dyn Learner, config: &TrainOptions) -> Progress {
    Progress {
        step: trainer.steps_done(),
        epochs: config.epochs,
        samples: data.len() as u64,
        data: data.fingerprint(),
        batch_size: trainer.batch_size(),
        seed: config.seed,
        shuffle: config.shuffle,
    }
}

/// Trains over `data`, validating on `valid` after each epoch, from the trainer's step on: to
/// the end of epoch (its epoch + `config.epochs`), or to the end of epoch `config.epochs` when
/// `epochs_are_total`. A trainer resumed part-way through an epoch (from a checkpoint) takes
/// the rest of that epoch's batches, in the same order as the run that wrote the checkpoint.
pub fn train(
    trainer: &mut dyn Learner,
    data: &dyn TrainingData,
    valid: Option<&LabelledData>,
    config: &TrainOptions,
) -> Result<TrainReport> {
    data.check(trainer.spec())?;
    let batch_size = trainer.batch_size();
    let n = data.len();
    let steps_per_epoch = n.div_ceil(batch_size) as u64;
    let start = trainer.steps_done();
    let end = match config.epochs_are_total {
        true => config.epochs as u64 * steps_per_epoch,
        false => (start / steps_per_epoch + config.epochs as u64) * steps_per_epoch,
    };
    let mut checkpointer = config
        .checkpoints
        .clone()
        .map(Checkpointer::new)
        .transpose()?;
    trainer.losses()?;
    let mut report = TrainReport {
        epochs: Vec::new(),
        checkpoints: Vec::new(),
        windows: Vec::new(),
    };
    let tasks = trainer.spec().n_tasks();
    let task_weights = trainer.task_weights();
    let mut window = Window::after(start);
    let mut step = start;
    while step < end {
        let epoch = step / steps_per_epoch;
        let first = (step % steps_per_epoch) as usize;
        let batches = data.batches(epoch, first, batch_size, config.seed, config.shuffle)?;
        let bar = if config.progress {
            indicatif::ProgressBar::new(steps_per_epoch)
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
        bar.set_prefix(format!("{}", epoch + 1));
        bar.set_position(first as u64);
        let begun = Instant::now();
        let mut losses = Vec::with_capacity(steps_per_epoch as usize - first);
        let mut samples = 0;
        let (mut data_time, mut step_time) = (Duration::ZERO, Duration::ZERO);
        let mut batches = batches;
        let mut s = first;
        loop {
            let t0 = Instant::now();
            let Some(next) = batches.next() else { break };
            let (batch, labels) = next?;
            let t1 = Instant::now();
            trainer.step(&batch, &labels)?;
            data_time += t1 - t0;
            step_time += t1.elapsed();
            s += 1;
            step += 1;
            samples += batch.len();
            if let Some(p) = &config.progressive {
                window.add(&batch, &trainer.last_scores()?, &labels, p.user_feature);
                if window.samples(tasks) >= p.window || step == end {
                    let w = window.report(step, tasks, &task_weights);
                    let line = window_line(&w, trainer.spec());
                    bar.suspend(|| eprintln!("{line}"));
                    report.windows.push(w);
                    window = Window::after(step);
                }
            }
            // Reading the loss waits for the GPU: only now and then.
            if config.progress && s.is_multiple_of(32) {
                losses.extend(trainer.losses()?);
                let recent = &losses[losses.len().saturating_sub(32)..];
                let loss = recent.iter().map(|&x| x as f64).sum::<f64>() / recent.len() as f64;
                let rate = samples as f64 / begun.elapsed().as_secs_f64();
                bar.set_message(format!("loss {loss:.4}, {rate:.0} samples/s"));
            }
            bar.inc(1);
            if let Some(c) = checkpointer.as_mut().filter(|c| c.due(step)) {
                let at = progress(data, trainer, config);
                let path = c.write(trainer, &at)?;
                bar.suspend(|| eprintln!("checkpoint {}", path.display()));
                report.checkpoints.push(path);
            }
        }
        losses.extend(trainer.losses()?);
        let seconds = begun.elapsed().as_secs_f64();
        bar.finish_and_clear();
        if let Some(i) = losses.iter().position(|l| !l.is_finite()) {
            return Err(Error::Gpu(format!(
                "epoch {}, batch {}: the loss is {} (diverged); lower the learning rates",
                epoch + 1,
                first + i + 1,
                losses[i]
            )));
        }
        let validation = valid.map(|v| validate(trainer, v)).transpose()?;
        report.epochs.push(EpochReport {
            epoch: epoch as usize + 1,
            steps: losses.len() as u64,
            train_loss: losses.iter().map(|&x| x as f64).sum::<f64>() / losses.len().max(1) as f64,
            seconds,
            samples_per_s: samples as f64 / seconds,
            data_seconds: data_time.as_secs_f64(),
            step_seconds: step_time.as_secs_f64(),
            validation,
        });
    }
    Ok(report)
}

/// A window's log line: steps, samples, loss, then AUC / GAUC per task.
pub fn window_line(w: &WindowReport, spec: &ModelSpec) -> String {
    let mut line = format!(
        "window steps {}-{} ({} samples, scored before training): loss {:.5}",
        w.first_step + 1,
        w.last_step,
        w.samples,
        w.loss
    );
    for (k, task) in spec.tasks.iter().enumerate() {
        let show = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.4}"));
        line += &format!("; {task} AUC {} GAUC {}", show(w.auc[k]), show(w.gauc[k]));
    }
    line
}

/// Scores `data` with the model as trained so far and measures its loss and AUCs.
pub fn validate(trainer: &mut dyn Learner, data: &LabelledData) -> Result<Validation> {
    LabelledData::check(data, trainer.spec())?;
    let model = trainer.trained_model()?;
    let engine = Engine::new(
        trainer.context().clone(),
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
