//! `pepnet train-stream`: the online loop. Impressions with labels come from a Redis stream
//! through a consumer group; every batch is scored before it is trained on (progressive
//! validation, per window and task, logged and exported as metrics); every --publish-every
//! steps the run is checkpointed, the stream entries it used are acknowledged, the hashed
//! rows changed since the last publish are written to the row store (the announced writes
//! serving replicas follow) and the dense weights become the next version of a model in a
//! repository that `serve --repository-poll-secs` loads without dropping requests.
//!
//! Order at each publish: checkpoint, acknowledge, rows, version. So an entry is acknowledged
//! only once a checkpoint holds what it taught, and a trainer killed anywhere resumes from its
//! newest checkpoint and the entry after the last one that checkpoint used: the group
//! delivers the unacknowledged entries again, those the checkpoint used are skipped (and
//! acknowledged), and no window is lost or trained twice. What the store and the repository
//! hold never runs ahead of the newest checkpoint; a publish cut short is redone on resume.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::{Deserialize, Serialize};

use pepnet::store::redis::{self as redis_store, EntryId, ImpressionStream, RedisStore, RowType};

mod source;
use pepnet::store::EmbeddingStore;
use pepnet::train::checkpoint::{self, CheckpointOptions, Checkpointer, Progress};
use pepnet::train::{ChangedRows, LabelledData, Learner, OptimizerState, Window, WindowReport};
use pepnet::{Error, Model, ModelSpec, Result};
use source::{Directory, Pos, Source, Stream};

use super::train::OptimizerFlags;
use super::{at_least_one, Device, InitArgs, Labels, Report};

/// The file in each checkpoint of an online run that says where its stream stands.
pub const STREAM_FILE: &str = "stream.json";

/// Train online from a Redis stream of labelled impressions (one entry per impression, a field
/// per feature and label column), score each batch before training on it, and publish to
/// serving every --publish-every steps: changed hashed rows to the row store (--store), the
/// dense weights as a new version in a model repository (--repository DIR/NAME).
#[derive(Args)]
pub struct TrainStream {
    /// A model.json spec (fresh weights) or a model directory to start from; a run with a
    /// checkpoint in --checkpoints goes on from its newest instead.
    #[arg(long)]
    pub model: PathBuf,
    /// The Redis (Cluster) holding the stream: redis://HOST:PORT[,HOST:PORT...].
    #[arg(long, value_parser = parse_redis_url, requires = "stream")]
    pub redis: Option<pepnet::store::redis::RedisOptions>,
    /// The stream's key.
    #[arg(long, requires = "redis", required_unless_present = "watch")]
    pub stream: Option<String>,
    /// Read labelled CSV or Parquet files arriving in this directory instead, in name order
    /// (write each under a hidden name, then rename it in, so that it is never read half
    /// written).
    #[arg(long, conflicts_with_all = ["stream", "redis"])]
    pub watch: Option<PathBuf>,
    /// The consumer group (created, from the stream's start, when missing).
    #[arg(long, default_value = "pepnet-train")]
    pub group: String,
    /// This trainer's name in the group.
    #[arg(long, default_value = "trainer")]
    pub consumer: String,
    /// Checkpoints, and the stream position each holds: the run resumes from the newest.
    #[arg(long)]
    pub checkpoints: PathBuf,
    #[arg(long, default_value_t = 3, value_parser = at_least_one())]
    pub keep_checkpoints: usize,
    /// Checkpoint, acknowledge and publish every this many steps (and at the end).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub publish_every: u64,
    /// Publish the dense weights as numbered versions in this directory (a model of a
    /// repository that `serve --repository` serves: DIR/NAME/VERSION/). Hashed features'
    /// rows live in the store, so a version holds their default rows only.
    #[arg(long)]
    pub repository: Option<PathBuf>,
    /// Versions kept in --repository (the newest).
    #[arg(long, default_value_t = 3, value_parser = at_least_one())]
    pub keep_versions: usize,
    /// Where to write changed rows of hashed features (--store-namespace: the namespace the
    /// servers read; a fresh run creates it and refuses one that holds rows).
    #[command(flatten)]
    pub store: super::StoreFlags,
    /// Progressive validation: AUC and GAUC per task over windows of this many samples.
    #[arg(long, default_value_t = 4096, value_parser = at_least_one())]
    pub window: usize,
    /// The sparse feature whose ids group progressive GAUC [default: user_id, when the spec
    /// has it].
    #[arg(long)]
    pub progressive_user: Option<String>,
    /// Rewrite this file (Prometheus text format) after every window and publish.
    #[arg(long)]
    pub metrics_file: Option<PathBuf>,
    /// End once the stream has had nothing new for this many seconds (the short last batch
    /// is trained, then checkpointed and published); without it the run goes on until
    /// SIGINT or SIGTERM, which end it the same way.
    #[arg(long)]
    pub stop_when_idle_secs: Option<f64>,
    #[command(flatten)]
    pub optimizer: OptimizerFlags,
    #[command(flatten)]
    pub labels: Labels,
    /// Seeds the initialisation and the hashed features' created rows.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub init: InitArgs,
    #[command(flatten)]
    pub report: Report,
    #[command(flatten)]
    pub device: Device,
}

fn parse_redis_url(s: &str) -> std::result::Result<pepnet::store::redis::RedisOptions, String> {
    pepnet::store::redis::RedisOptions::from_url(s, "--redis").map_err(|e| e.to_string())
}

/// Where an online run stands in its source, saved in each checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamPosition {
    /// The source: `stream 'KEY' (group 'G')` or `directory 'DIR'`.
    pub source: String,
    /// The last entry the checkpoint's steps used (none: no entry yet).
    pub last_entry: Option<String>,
    /// Or the last file, and its last data row (1-based), they used.
    pub last_file: Option<String>,
    pub file_row: usize,
    /// Samples trained on so far.
    pub samples: u64,
    /// The step of the last publish completed before this checkpoint was written.
    pub published_step: Option<u64>,
}

/// What the run did, for --json.
#[derive(Serialize, Default)]
struct StreamReport {
    steps: u64,
    samples: u64,
    windows: Vec<WindowReport>,
    publishes: Vec<Published>,
    seconds: f64,
    samples_per_s: f64,
    /// Host time reading and decoding entries, in the trainer's steps, in checkpoints, and in
    /// publishing.
    read_seconds: f64,
    step_seconds: f64,
    checkpoint_seconds: f64,
    publish_seconds: f64,
    /// Waiting for each step's scores (progressive validation): the GPU's share.
    gpu_wait_seconds: f64,
}

#[derive(Serialize, Clone)]
struct Published {
    step: u64,
    version: Option<u64>,
    rows_written: usize,
    rows_removed: usize,
    seconds: f64,
}

impl TrainStream {
    pub fn run(self) -> Result<()> {
        let stop = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(signal, stop.clone())
                .map_err(|e| Error::Batch(format!("cannot watch for signals: {e}")))?;
        }
        let options = self.optimizer.trainer_options(self.device.precision);
        let resume = checkpoint::latest(&self.checkpoints)?;
        let (model, state, position) = match &resume {
            Some(dir) => {
                let m = Model::load(dir)?;
                let state = OptimizerState::load(dir, &m.spec)?;
                let position = read_position(dir)?;
                if position.source != self.source_name() {
                    return Err(Error::Spec {
                        file: dir.join(STREAM_FILE).display().to_string(),
                        message: format!(
                            "the checkpoint's run read {}, this run asks for {}; give another \
                             --checkpoints",
                            position.source,
                            self.source_name()
                        ),
                    });
                }
                let after = match (&position.last_entry, &position.last_file) {
                    (Some(e), _) => format!("entry {e}"),
                    (None, Some(f)) => format!("row {} of {f}", position.file_row),
                    (None, None) => "nothing".into(),
                };
                eprintln!("resuming from {} (after {after})", dir.display());
                (m, state, Some(position))
            }
            None => {
                let (m, s) = self.start_model()?;
                (m, s, None)
            }
        };
        let spec = model.spec.clone();
        let columns = self.labels.columns(&spec)?;
        let user = super::progressive_user(&spec, self.progressive_user.as_deref())?;
        let header: Vec<String> = spec
            .features
            .iter()
            .map(|f| f.name.clone())
            .chain(columns.iter().cloned())
            .collect();
        let mut publisher = self.publisher(&model, resume.is_some())?;
        let ctx = self.device.adapter.open()?;
        let mut trainer = self.optimizer.learner(
            ctx,
            &model,
            state.as_ref(),
            &options,
            self.seed,
            resume.as_deref(),
        )?;
        let mut checkpointer = Checkpointer::new(CheckpointOptions {
            dir: self.checkpoints.clone(),
            every_steps: None,
            every: None,
            keep: self.keep_checkpoints,
        })?;
        let mut position = position.unwrap_or(StreamPosition {
            source: self.source_name(),
            last_entry: None,
            last_file: None,
            file_row: 0,
            samples: 0,
            published_step: None,
        });
        let mut source = self.open_source(&position, header, options.batch_size)?;
        let mut report = StreamReport::default();
        // A publish the newest checkpoint did not see complete (or a fresh run's first state).
        let steps_at_start = trainer.steps_done();
        if position.published_step != Some(steps_at_start) {
            let p = publisher.publish(trainer.as_mut(), position.published_step, true)?;
            position.published_step = Some(steps_at_start);
            report.publishes.push(p);
        }
        eprintln!(
            "reading {}; batches of {}, publishing every {} steps",
            source.describe(),
            options.batch_size,
            self.publish_every
        );

        let tasks = spec.n_tasks();
        let weights = trainer.task_weights();
        let mut window = Window::after(trainer.steps_done());
        // Samples read and not trained on yet, with their positions.
        let mut held = LabelledData {
            batch: pepnet::Batch::new(Vec::new()),
            labels: Vec::new(),
            tasks,
        };
        let mut held_at: Vec<Pos> = Vec::new();
        // Samples trained on and not acknowledged yet, in order.
        let mut unacked: Vec<Pos> = Vec::new();
        let mut idle_since = Instant::now();
        let idle_limit = self.stop_when_idle_secs.map(Duration::from_secs_f64);
        let begun = Instant::now();
        let mut times = [Duration::ZERO; 5];
        loop {
            let stopping = stop.load(Ordering::Relaxed);
            let idle = idle_limit.is_some_and(|l| idle_since.elapsed() >= l);
            let full = held.len() >= options.batch_size;
            if !full && !stopping && !idle {
                let t = Instant::now();
                let wait = Duration::from_millis(200);
                let max = options.batch_size - held.len();
                if let Some((data, at)) = source.read(max, wait, &spec, &columns)? {
                    held.append(&data);
                    held_at.extend(at);
                    idle_since = Instant::now();
                }
                times[0] += t.elapsed();
                continue;
            }
            let ending = (stopping || idle) && !full;
            if !held.is_empty() {
                let take = held.len().min(options.batch_size);
                let (data, rest) = held.split_at(take);
                held = rest;
                let used: Vec<Pos> = held_at.drain(..take).collect();
                let t = Instant::now();
                trainer.step(&data.batch, &data.labels)?;
                times[1] += t.elapsed();
                let t = Instant::now();
                // Waits for the step: on a GPU, this is where the kernels' time shows.
                let scores = trainer.last_scores()?;
                times[4] += t.elapsed();
                // Idle is time spent waiting on an empty stream, not working.
                idle_since = Instant::now();
                window.add(&data.batch, &scores, &data.labels, user);
                let step = trainer.steps_done();
                position.samples += data.len() as u64;
                match used.last() {
                    Some(Pos::Entry(id)) => position.last_entry = Some(id.to_string()),
                    Some(Pos::Row { file, row }) => {
                        position.last_file = Some(file.clone());
                        position.file_row = *row;
                    }
                    None => {}
                }
                unacked.extend(used);
                if window.samples(tasks) >= self.window {
                    let w = window.report(step, tasks, &weights);
                    eprintln!("{}", pepnet::train::window_line(&w, &spec));
                    report.windows.push(w);
                    window = Window::after(step);
                    self.write_metrics(&report, &spec, trainer.steps_done(), &position)?;
                }
                let due = step.is_multiple_of(self.publish_every) || (ending && held.is_empty());
                if !due {
                    continue;
                }
            } else if !ending {
                continue;
            }
            // Checkpoint, then acknowledge what it holds, then publish.
            let step = trainer.steps_done();
            let t = Instant::now();
            let last_published = position.published_step;
            let progress = Progress {
                step,
                epochs: 0,
                samples: position.samples,
                data: position.source.clone(),
                batch_size: options.batch_size,
                seed: self.seed,
                shuffle: false,
            };
            let json = serde_json::to_vec_pretty(&position).expect("position serialises");
            let path =
                checkpointer.write_with(trainer.as_mut(), &progress, &[(STREAM_FILE, json)])?;
            source.ack(&unacked)?;
            unacked.clear();
            times[2] += t.elapsed();
            let t = Instant::now();
            let p = publisher.publish(trainer.as_mut(), last_published, false)?;
            position.published_step = Some(step);
            times[3] += t.elapsed();
            eprintln!(
                "step {step}: checkpoint {}, {} rows published{}",
                path.display(),
                p.rows_written,
                p.version
                    .map_or(String::new(), |v| format!(", dense weights as version {v}"))
            );
            report.publishes.push(p);
            self.write_metrics(&report, &spec, step, &position)?;
            if ending && held.is_empty() {
                break;
            }
            idle_since = Instant::now();
        }
        if window.samples(tasks) > 0 {
            let w = window.report(trainer.steps_done(), tasks, &weights);
            eprintln!("{}", pepnet::train::window_line(&w, &spec));
            report.windows.push(w);
        }
        let seconds = begun.elapsed().as_secs_f64();
        report.steps = trainer.steps_done();
        report.samples = position.samples;
        report.seconds = seconds;
        report.samples_per_s = position.samples as f64 / seconds.max(1e-9);
        [
            report.read_seconds,
            report.step_seconds,
            report.checkpoint_seconds,
            report.publish_seconds,
            report.gpu_wait_seconds,
        ] = times.map(|t| t.as_secs_f64());
        self.write_metrics(&report, &spec, report.steps, &position)?;
        eprintln!(
            "stopped after step {} ({} samples, {:.0} samples/s; host: reading {:.0}%, steps \
             {:.0}%, checkpoints {:.0}%, publishing {:.0}%; waiting for the GPU's scores \
             {:.0}%)",
            report.steps,
            report.samples,
            report.samples_per_s,
            100.0 * report.read_seconds / seconds,
            100.0 * report.step_seconds / seconds,
            100.0 * report.checkpoint_seconds / seconds,
            100.0 * report.publish_seconds / seconds,
            100.0 * report.gpu_wait_seconds / seconds,
        );
        if let Some(h) = trainer.hashed_stats() {
            eprintln!(
                "working sets: {} rows created, {} evicted, {} loaded back, {} expired, {} \
                 occurrences not admitted; {:.1} s mapping ids (within the steps' share)",
                h.created, h.evicted, h.loaded, h.expired, h.not_admitted, h.mapping_seconds
            );
        }
        self.report.write(&report)
    }

    /// The source as a checkpoint names it.
    fn source_name(&self) -> String {
        match (&self.stream, &self.watch) {
            (Some(key), _) => format!("stream '{key}' (group '{}')", self.group),
            (None, Some(dir)) => format!("directory '{}'", dir.display()),
            (None, None) => unreachable!("clap requires --stream or --watch"),
        }
    }

    /// Opens the source, to go on after `position`.
    fn open_source(
        &self,
        position: &StreamPosition,
        header: Vec<String>,
        batch_size: usize,
    ) -> Result<Source> {
        if let Some(dir) = &self.watch {
            if !dir.is_dir() {
                return Err(Error::Spec {
                    file: dir.display().to_string(),
                    message: "--watch: not a directory".into(),
                });
            }
            return Ok(Source::Directory(Box::new(Directory {
                dir: dir.clone(),
                done: None,
                current: None,
                resume: position.last_file.clone().map(|f| (f, position.file_row)),
                batch_size,
            })));
        }
        let (Some(redis), Some(key)) = (&self.redis, &self.stream) else {
            unreachable!("clap requires --redis with --stream");
        };
        let stream = ImpressionStream::open(
            &redis.nodes,
            key,
            &self.group,
            &self.consumer,
            redis.timeouts,
        )?;
        let used = position
            .last_entry
            .as_deref()
            .map(|s| s.parse::<EntryId>().map_err(Error::Store))
            .transpose()?;
        Ok(Source::Redis(Stream {
            stream,
            used,
            header,
        }))
    }

    /// A fresh run's model: from a spec (initialised by --seed and `init`) or a directory.
    fn start_model(&self) -> Result<(Model, Option<OptimizerState>)> {
        if self.model.is_dir() {
            let m = Model::load(&self.model)?;
            let state = OptimizerState::load(&self.model, &m.spec)?;
            return Ok((m, state));
        }
        let spec = self.init.apply(ModelSpec::load(&self.model)?)?;
        Ok((Model::init(spec, self.seed)?, None))
    }

    /// The publisher: the store's namespace (a fresh run loads the start model into it, and
    /// refuses one holding rows) and the repository.
    fn publisher(&self, model: &Model, resuming: bool) -> Result<Publisher> {
        let hashed = model.spec.features.iter().any(|f| f.hashed);
        let store = match self.store.redis() {
            Some(options) => {
                if !resuming {
                    if let Ok(s) = RedisStore::open(options.clone(), &model.spec) {
                        if !s.is_empty() {
                            return Err(Error::Store(format!(
                                "namespace '{}' already holds {} rows, and --checkpoints has \
                                 no checkpoint to go on from: a fresh run publishes into a \
                                 namespace of its own",
                                options.namespace,
                                s.len()
                            )));
                        }
                    }
                    let policy = pepnet::cache::UpdatePolicy::default();
                    redis_store::load(
                        &options,
                        &model.spec,
                        &model.weights,
                        RowType::F32,
                        &policy,
                        2048,
                        &mut |_, _| {},
                    )?;
                }
                Some(RedisStore::open(options, &model.spec)?)
            }
            None if hashed => {
                eprintln!(
                    "note: no --store: the hashed features' trained rows reach serving only \
                     through the checkpoints"
                );
                None
            }
            None => None,
        };
        Ok(Publisher {
            store,
            repository: self.repository.clone(),
            keep: self.keep_versions,
        })
    }

    /// The metrics file, in Prometheus' text format, rewritten whole.
    fn write_metrics(
        &self,
        report: &StreamReport,
        spec: &ModelSpec,
        step: u64,
        position: &StreamPosition,
    ) -> Result<()> {
        let Some(path) = &self.metrics_file else {
            return Ok(());
        };
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, values: Vec<(String, f64)>| {
            out += &format!("# HELP {name} {help}\n# TYPE {name} gauge\n");
            for (labels, v) in values {
                out += &format!("{name}{labels} {v}\n");
            }
        };
        if let Some(w) = report.windows.last() {
            let per_task = |v: &[Option<f64>]| -> Vec<(String, f64)> {
                spec.tasks
                    .iter()
                    .zip(v)
                    .filter_map(|(t, x)| x.map(|x| (format!("{{task=\"{t}\"}}"), x)))
                    .collect()
            };
            gauge(
                "pepnet_train_window_auc",
                "AUC of the last window, each batch scored before it was trained on",
                per_task(&w.auc),
            );
            gauge(
                "pepnet_train_window_gauc",
                "GAUC (by user) of the last window, scored before training",
                per_task(&w.gauc),
            );
            gauge(
                "pepnet_train_window_loss",
                "Mean weighted log loss of the last window, scored before training",
                vec![(String::new(), w.loss)],
            );
        }
        gauge(
            "pepnet_train_steps",
            "Steps taken",
            vec![(String::new(), step as f64)],
        );
        gauge(
            "pepnet_train_samples",
            "Samples trained on",
            vec![(String::new(), position.samples as f64)],
        );
        if let Some(p) = report.publishes.last() {
            gauge(
                "pepnet_train_published_step",
                "The step of the last publish to serving",
                vec![(String::new(), p.step as f64)],
            );
            if let Some(v) = p.version {
                gauge(
                    "pepnet_train_published_version",
                    "The model version last published",
                    vec![(String::new(), v as f64)],
                );
            }
        }
        pepnet::write_file(path, out.as_bytes())
    }
}

/// A checkpoint's stream position.
fn read_position(dir: &Path) -> Result<StreamPosition> {
    let path = dir.join(STREAM_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Spec {
        file: path.display().to_string(),
        message: format!("not an online run's stream position: {e}"),
    })
}

/// Writes what serving reads: changed rows to the store, dense weights to the repository.
struct Publisher {
    store: Option<RedisStore>,
    repository: Option<PathBuf>,
    keep: usize,
}

impl Publisher {
    /// Publishes the trainer's state: the hashed rows changed since step `since` (every row
    /// when `since` is none or `all`), and the dense weights as the repository's next version.
    fn publish(
        &mut self,
        trainer: &mut dyn Learner,
        since: Option<u64>,
        all: bool,
    ) -> Result<Published> {
        let begun = Instant::now();
        let step = trainer.steps_done();
        let (mut written, mut removed) = (0, 0);
        let need_model = self.repository.is_some() || all || since.is_none();
        let model = need_model.then(|| trainer.trained_model()).transpose()?;
        if let Some(store) = self.store.as_mut() {
            let changed: Vec<ChangedRows> = match (&model, since) {
                (Some(m), since) if all || since.is_none() => m
                    .spec
                    .features
                    .iter()
                    .enumerate()
                    .filter_map(|(f, feature)| {
                        let h = m.weights.hashed(&feature.name)?;
                        Some(ChangedRows {
                            feature: f,
                            ids: h.ids.clone(),
                            rows: h.rows.clone(),
                            dropped: Vec::new(),
                        })
                    })
                    .collect(),
                (_, since) => trainer.changed_rows(since.unwrap_or(0))?,
            };
            for ChangedRows {
                feature: f,
                ids,
                rows,
                dropped,
            } in changed
            {
                let keys: Vec<(u32, u64)> = ids.iter().map(|&id| (f as u32, id)).collect();
                let done = store.put_many(&keys, &rows)?;
                if let Some(k) = done.iter().position(|w| !w) {
                    return Err(Error::Store(format!(
                        "the namespace's update cap refused a row of feature '{}' (id {}): an \
                         online trainer's namespace needs no cap",
                        trainer.spec().features[f].name,
                        ids[k]
                    )));
                }
                written += done.len();
                for id in dropped {
                    removed += store.remove((f as u32, id))? as usize;
                }
            }
            if all || since.is_none() {
                // The delta tracking starts over from here.
                trainer.changed_rows(step)?;
            }
        }
        let version = match (&self.repository, model) {
            (Some(dir), Some(mut m)) => {
                for f in m.spec.features.iter().filter(|f| f.hashed) {
                    // Served from the store: a version holds the default row only.
                    if let Some(h) = m.weights.hashed_mut(&f.name) {
                        h.ids.clear();
                        h.rows.clear();
                    }
                }
                Some(write_version(dir, &m, self.keep)?)
            }
            _ => None,
        };
        Ok(Published {
            step,
            version,
            rows_written: written,
            rows_removed: removed,
            seconds: begun.elapsed().as_secs_f64(),
        })
    }
}

/// Writes `model` as the next numbered version of the repository model `dir` (staged under a
/// hidden name, then renamed: a server polling the directory sees it whole or not at all) and
/// removes all but the newest `keep` versions. Returns its number.
fn write_version(dir: &Path, model: &Model, keep: usize) -> Result<u64> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let versions = versions(dir)?;
    let next = versions.last().map_or(1, |(v, _)| v + 1);
    let staged = dir.join(format!(".staging-{next}"));
    let _ = std::fs::remove_dir_all(&staged);
    let done = dir.join(next.to_string());
    let written = model
        .save(&staged)
        .and_then(|()| std::fs::rename(&staged, &done).map_err(|e| Error::io(&done, e)));
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&staged);
        return Err(e);
    }
    let versions = self::versions(dir)?;
    for (_, old) in &versions[..versions.len().saturating_sub(keep)] {
        std::fs::remove_dir_all(old).map_err(|e| Error::io(old, e))?;
    }
    Ok(next)
}

/// The numbered version directories of a repository model, oldest first.
fn versions(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let number = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| !n.starts_with('0'))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(v) = number.filter(|_| path.is_dir()) {
            out.push((v, path));
        }
    }
    out.sort();
    Ok(out)
}
