//! `pepnet train`: a model trained on the GPU from a labelled file, written as a model
//! directory `score` reads, with the optimizer state to resume from.

use std::path::PathBuf;

use clap::Args;

use pepnet::gpu::optimizer::{AdaGradOptions, AdamOptions};
use pepnet::train::checkpoint::{self, CheckpointOptions, Progress};
use pepnet::train::{
    HashedOptions, HashedTrainer, LabelledData, Learner, OptimizerState, Progressive, StreamedData,
    TrainOptions, Trainer, TrainerOptions, TrainingData, RULES_FILE,
};
use pepnet::{Model, ModelSpec, Result};

use super::{at_least_one, shards, Device, InitArgs, Labels, Report};

/// How the trainer learns: batch size, the optimizers' settings, the task weights and the
/// hashed features' working sets and rules (shared by `train` and `train-stream`).
#[derive(Args)]
pub struct OptimizerFlags {
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
    /// Hashed features: GPU rows per feature (the working set); the full table stays on the
    /// host. A batch may read at most this many distinct ids of one feature.
    #[arg(long, default_value_t = 1 << 18, value_parser = at_least_one())]
    pub working_set: usize,
    /// Hashed features: an id gets a row in the batch where its occurrences reach this; until
    /// then it reads the default row.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub admit_after: u32,
    /// Vocabulary tables train through working sets of --working-set rows too, each whole
    /// table on the host: for tables larger than one GPU binding (or the GPU).
    #[arg(long)]
    pub vocab_working_set: bool,
    /// Hashed features: drop a row not read for more than this many steps.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub expire_after: Option<u64>,
}

impl OptimizerFlags {
    pub fn trainer_options(&self, precision: pepnet::Precision) -> TrainerOptions {
        TrainerOptions {
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
            precision,
        }
    }

    /// The trainer for `model`: over working sets when it has hashed features (their rules'
    /// state restored from `rules_from`'s RULES_FILE when it has one), else plain.
    pub fn learner(
        &self,
        ctx: std::sync::Arc<pepnet::GpuContext>,
        model: &Model,
        state: Option<&OptimizerState>,
        options: &TrainerOptions,
        seed: u64,
        rules_from: Option<&std::path::Path>,
    ) -> Result<Box<dyn Learner>> {
        if !model.spec.features.iter().any(|f| f.hashed) && !self.vocab_working_set {
            return Ok(Box::new(Trainer::new(ctx, model, state, options)?));
        }
        let hashed = HashedOptions {
            capacity: self.working_set,
            admit_after: self.admit_after,
            expire_after: self.expire_after,
            seed,
            vocab_tables: self.vocab_working_set,
        };
        let mut t = HashedTrainer::new(ctx, model, state, options, hashed)?;
        if let Some(path) = rules_from
            .map(|d| d.join(RULES_FILE))
            .filter(|p| p.is_file())
        {
            let bytes = std::fs::read(&path).map_err(|e| pepnet::Error::io(&path, e))?;
            t.restore_rules(&bytes, &path.display().to_string())?;
        }
        Ok(Box::new(t))
    }
}

/// Train a model on the GPU (AdaGrad on embeddings, Adam on dense layers) and write a
/// model directory `score` reads, with the optimizer state to resume from.
#[derive(Args)]
pub struct Train {
    /// A model.json spec (fresh weights from --seed, drawn as `init` says) or a model directory
    /// (resume: its weights, and its optimizer.safetensors when there is one).
    #[arg(long)]
    pub model: PathBuf,
    /// Training data (CSV or Parquet): the features and one 0/1 label column per task. A
    /// directory or a pattern (`DIR/part-*.parquet`) names many files, which are streamed.
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
    #[command(flatten)]
    pub optimizer: OptimizerFlags,
    #[command(flatten)]
    pub labels: Labels,
    /// Seeds the initialisation (from a spec) and the shuffle.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep the file's order instead of shuffling each epoch.
    #[arg(long)]
    pub no_shuffle: bool,
    /// Stream the training files instead of reading them whole (always for many files):
    /// each epoch reads them in chunks, shuffling within windows of this many rows, so memory
    /// holds one window [default when streaming: 1048576].
    #[arg(long, value_parser = at_least_one())]
    pub shuffle_window: Option<usize>,
    /// Progressive validation: score every batch before training on it and log AUC and GAUC
    /// per task over windows of this many samples (and in --json's `windows`).
    #[arg(long, value_parser = at_least_one())]
    pub progressive: Option<usize>,
    /// The sparse feature whose ids group progressive GAUC [default: user_id, when the spec
    /// has it].
    #[arg(long)]
    pub progressive_user: Option<String>,
    #[command(flatten)]
    pub init: InitArgs,
    /// Write checkpoints into this directory (`step-<S>/`: model, optimizer state and
    /// progress.json, each whole), every --checkpoint-every steps and/or
    /// --checkpoint-minutes, keeping the newest --keep-checkpoints.
    #[arg(long)]
    pub checkpoints: Option<PathBuf>,
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_every: Option<u64>,
    #[arg(long)]
    pub checkpoint_minutes: Option<f64>,
    #[arg(long, default_value_t = 3, value_parser = at_least_one())]
    pub keep_checkpoints: usize,
    /// Go on from the newest checkpoint in --checkpoints when there is one (else start as
    /// without it), and run until --epochs in all: rerunning an interrupted command with
    /// --resume finishes the same run, bit for bit the weights it would have ended with.
    #[arg(long, requires = "checkpoints")]
    pub resume: bool,
    /// Go on from this checkpoint directory (`step-<S>`), as --resume does from the newest.
    #[arg(long, conflicts_with = "resume")]
    pub resume_from: Option<PathBuf>,
    #[command(flatten)]
    pub report: Report,
    #[command(flatten)]
    pub device: Device,
}

impl Train {
    pub fn run(self) -> Result<()> {
        let options = self.optimizer.trainer_options(self.device.precision);
        let checkpoints = self.checkpoint_options()?;
        let resume_from = match (&self.resume_from, &checkpoints) {
            (Some(dir), _) => Some(dir.clone()),
            (None, Some(c)) if self.resume => checkpoint::latest(&c.dir)?,
            _ => None,
        };
        let progressive = self.progressive.map(|window| Progressive {
            window,
            user_feature: None,
        });
        let mut config = TrainOptions {
            progressive,
            epochs: self.epochs,
            epochs_are_total: self.resume || self.resume_from.is_some(),
            seed: self.seed,
            shuffle: !self.no_shuffle,
            progress: true,
            checkpoints,
        };
        // A checkpoint or a directory resumes; a spec file starts fresh.
        let (model, state) = if let Some(dir) = &resume_from {
            let m = Model::load(dir)?;
            let state = OptimizerState::load(dir, &m.spec)?;
            eprintln!("resuming from {}", dir.display());
            (m, state)
        } else if self.model.is_dir() {
            if self.init.init_embedding.is_some() || self.init.init_bias.is_some() {
                return Err(pepnet::Error::Spec {
                    file: self.model.display().to_string(),
                    message: "--init-embedding / --init-bias draw fresh weights, but --model is a \
                              model directory, which resumes from its weights"
                        .into(),
                });
            }
            let m = Model::load(&self.model)?;
            let state = OptimizerState::load(&self.model, &m.spec)?;
            (m, state)
        } else {
            let spec = self.init.apply(ModelSpec::load(&self.model)?)?;
            (Model::init(spec, config.seed)?, None)
        };
        if let Some(p) = config.progressive.as_mut() {
            p.user_feature =
                super::progressive_user(&model.spec, self.progressive_user.as_deref())?;
        }
        let columns = self.labels.columns(&model.spec)?;
        let data: Box<dyn TrainingData> =
            if shards::names_many(&self.train) || self.shuffle_window.is_some() {
                let files = match shards::names_many(&self.train) {
                    true => shards::input_files(&self.train)?,
                    false => vec![self.train.clone()],
                };
                let window = self.shuffle_window.unwrap_or(1 << 20);
                let streamed = StreamedData::open(files, &model.spec, &columns, window)?;
                eprintln!(
                    "streaming {} files, shuffled in windows of {window} rows",
                    streamed.files().count()
                );
                Box::new(streamed)
            } else {
                Box::new(LabelledData::read(&self.train, &model.spec, &columns)?)
            };
        let valid = self
            .valid
            .as_ref()
            .map(|p| LabelledData::read(p, &model.spec, &columns))
            .transpose()?;
        if let Some(dir) = &resume_from {
            // The same data, batch size, seed and shuffle, or it would not be the same run.
            let saved = checkpoint::read_progress(dir)?;
            let run = Progress {
                step: saved.step,
                epochs: config.epochs,
                samples: data.len() as u64,
                data: data.fingerprint(),
                batch_size: options.batch_size,
                seed: config.seed,
                shuffle: config.shuffle,
            };
            let file = dir.join(checkpoint::PROGRESS_FILE);
            saved.check_resume(&run, &file.display().to_string())?;
        }
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
        // The admission and expiry state of the run resumed, when it kept one.
        let rules_from = resume_from
            .clone()
            .or(self.model.is_dir().then(|| self.model.clone()));
        let mut trainer = self.optimizer.learner(
            ctx,
            &model,
            state.as_ref(),
            &options,
            self.seed,
            rules_from.as_deref(),
        )?;
        let report =
            pepnet::train::train(trainer.as_mut(), data.as_ref(), valid.as_ref(), &config)?;
        for e in &report.epochs {
            let mut line = format!(
                "epoch {}: train loss {:.5}, {:.0} samples/s ({:.1} s; host: data {:.0}%, steps \
                 {:.0}%)",
                e.epoch,
                e.train_loss,
                e.samples_per_s,
                e.seconds,
                100.0 * e.data_seconds / e.seconds,
                100.0 * e.step_seconds / e.seconds
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
        if !report.checkpoints.is_empty() {
            eprintln!(
                "{} checkpoints written, the newest {}",
                report.checkpoints.len(),
                report.checkpoints[report.checkpoints.len() - 1].display()
            );
        }
        let trained = trainer.trained_model()?;
        let state = trainer.resumable_state()?;
        self.report.write(&report)?;
        let extra = trainer.extra_files()?;
        match state {
            Some(state) => state.save_with(&trained, &self.out)?,
            None => {
                trained.save(&self.out)?;
                // An older run's state would not fit these rows.
                let stale = self.out.join(pepnet::train::OPTIMIZER_FILE);
                if stale.exists() {
                    std::fs::remove_file(&stale).map_err(|e| pepnet::Error::io(&stale, e))?;
                }
            }
        }
        // Beside the optimizer state: the hashed rules' state, or no stale one from before.
        let rules = self.out.join(RULES_FILE);
        match extra.iter().find(|(name, _)| *name == RULES_FILE) {
            Some((_, bytes)) => pepnet::write_file(&rules, bytes)?,
            None if rules.exists() => {
                std::fs::remove_file(&rules).map_err(|e| pepnet::Error::io(&rules, e))?
            }
            None => {}
        }
        if let Some(h) = trainer.hashed_stats() {
            eprintln!(
                "working sets: {} rows created, {} evicted, {} loaded back, {} expired, {} \
                 occurrences not admitted; {:.1} s mapping ids",
                h.created, h.evicted, h.loaded, h.expired, h.not_admitted, h.mapping_seconds
            );
        }
        for f in trained.spec.features.iter().filter(|f| f.hashed) {
            let rows = trained.weights.hashed(&f.name).map_or(0, |h| h.ids.len());
            eprintln!("hashed feature '{}': {rows} rows", f.name);
        }
        eprintln!(
            "wrote {} (step {})",
            self.out.display(),
            trainer.steps_done()
        );
        Ok(())
    }
}

impl Train {
    /// --checkpoints with when to write them (every 1000 steps when neither is given).
    fn checkpoint_options(&self) -> Result<Option<CheckpointOptions>> {
        let Some(dir) = &self.checkpoints else {
            if self.checkpoint_every.is_some() || self.checkpoint_minutes.is_some() {
                return Err(pepnet::Error::Spec {
                    file: "--checkpoint-every".into(),
                    message: "needs --checkpoints DIR, where to write them".into(),
                });
            }
            return Ok(None);
        };
        let every = match self.checkpoint_minutes {
            Some(m) if !(m.is_finite() && m > 0.0) => {
                return Err(pepnet::Error::Spec {
                    file: "--checkpoint-minutes".into(),
                    message: format!("must be a positive number of minutes, found {m}"),
                })
            }
            Some(m) => Some(std::time::Duration::from_secs_f64(m * 60.0)),
            None => None,
        };
        let every_steps = match (self.checkpoint_every, every) {
            (None, None) => Some(1000),
            (n, _) => n,
        };
        Ok(Some(CheckpointOptions {
            dir: dir.clone(),
            every_steps,
            every,
            keep: self.keep_checkpoints,
        }))
    }
}
