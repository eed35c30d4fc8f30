//! The `pepnet` command line, one module per subcommand: each an argument struct (clap's
//! `Args`) with a `run`. This module holds what they share: the argument groups for the device
//! and the JSON report, the check of every output before any work, and the spec and label
//! lookups.

mod ablation;
mod apply_rows;
mod bench;
mod cache_bench;
mod eval;
mod gen_data;
mod gen_input;
mod info;
mod init;
mod kuairand;
mod loadgen;
mod plan;
mod score;
mod serve;
mod shards;
mod store;
mod stream_push;
mod train;
mod train_bench;
mod train_stream;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use pepnet::gpu::linear::Precision;
use pepnet::{GpuContext, ModelSpec, Result};

#[derive(Parser)]
#[command(
    name = "pepnet",
    version,
    about = "GPU-native PEPNet scoring engine (WGSL on wgpu)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    Score(score::Score),
    Serve(serve::Serve),
    ApplyRows(apply_rows::ApplyRows),
    Store(store::Store),
    CacheBench(cache_bench::CacheBench),
    Init(init::Init),
    Info(info::Info),
    Bench(bench::Bench),
    Train(train::Train),
    TrainStream(Box<train_stream::TrainStream>),
    StreamPush(stream_push::StreamPush),
    Ablation(ablation::Ablation),
    TrainBench(train_bench::TrainBench),
    Eval(eval::Eval),
    GenData(gen_data::GenData),
    Kuairand(kuairand::Kuairand),
    Loadgen(loadgen::Loadgen),
    GenInput(gen_input::GenInput),
    Plan(plan::Plan),
}

/// What a command writes: files, and directories (made when missing).
#[derive(Default)]
pub struct Outputs<'a> {
    pub files: Vec<&'a Path>,
    pub dirs: Vec<&'a Path>,
}

impl Command {
    /// Whether the command writes files (and so needs an interrupted run's cleanup); a server
    /// handles SIGINT and SIGTERM itself, draining its requests, and so does the online
    /// trainer, which checkpoints and publishes before it stops.
    pub fn writes_files(&self) -> bool {
        !matches!(self, Command::Serve(_) | Command::TrainStream(_))
    }

    /// Whether the command sets up its own logs (a server does).
    pub fn logs_itself(&self) -> bool {
        matches!(self, Command::Serve(_))
    }

    /// Runs the command, after checking every output it will write: a run never fails at its
    /// end for want of a directory (nor loses what it computed).
    pub fn run(self) -> Result<()> {
        let outputs = self.outputs();
        outputs
            .files
            .iter()
            .try_for_each(|p| pepnet::check_output_file(p))?;
        outputs
            .dirs
            .iter()
            .try_for_each(|p| pepnet::check_output_dir(p))?;
        match self {
            Command::Score(c) => c.run(),
            Command::Serve(c) => c.run(),
            Command::ApplyRows(c) => c.run(),
            Command::Store(c) => c.run(),
            Command::CacheBench(c) => c.run(),
            Command::Init(c) => c.run(),
            Command::Info(c) => c.run(),
            Command::Bench(c) => c.run(),
            Command::Train(c) => c.run(),
            Command::TrainStream(c) => (*c).run(),
            Command::StreamPush(c) => c.run(),
            Command::Ablation(c) => c.run(),
            Command::TrainBench(c) => c.run(),
            Command::Eval(c) => c.run(),
            Command::GenData(c) => c.run(),
            Command::Kuairand(c) => c.run(),
            Command::Loadgen(c) => c.run(),
            Command::GenInput(c) => c.run(),
            Command::Plan(c) => c.run(),
        }
    }

    fn outputs(&self) -> Outputs<'_> {
        match self {
            Command::Score(c) if shards::names_many(&c.input) => Outputs {
                dirs: vec![c.output.as_path()],
                ..Outputs::files(&[c.cache_stats.as_ref()])
            },
            Command::Score(c) => {
                Outputs::files(&[Some(&c.output), c.rejects.as_ref(), c.cache_stats.as_ref()])
            }
            Command::ApplyRows(c) if c.store.store.is_some() => Outputs::default(),
            Command::ApplyRows(c) => Outputs::dir(c.out.as_ref().unwrap_or(&c.model)),
            Command::CacheBench(c) => Outputs::files(&[c.report.json.as_ref()]),
            Command::Init(c) => Outputs::dir(&c.out),
            Command::Bench(c) => Outputs::files(&[c.report.json.as_ref()]),
            Command::Train(c) => Outputs {
                dirs: vec![c.out.as_path()],
                ..Outputs::files(&[c.report.json.as_ref()])
            },
            Command::TrainStream(c) => Outputs {
                dirs: [Some(&c.checkpoints), c.repository.as_ref()]
                    .into_iter()
                    .flatten()
                    .map(|p| p.as_path())
                    .collect(),
                ..Outputs::files(&[c.report.json.as_ref(), c.metrics_file.as_ref()])
            },
            Command::Ablation(c) => Outputs::files(&[c.report.json.as_ref()]),
            Command::TrainBench(c) => Outputs::files(&[c.report.json.as_ref()]),
            Command::Eval(c) => Outputs::files(&[c.report.json.as_ref()]),
            Command::GenData(c) => Outputs::files(&[Some(&c.to.output)]),
            Command::Kuairand(c) => Outputs::files(&[Some(&c.output), Some(&c.spec_out)]),
            Command::Loadgen(c) => Outputs::files(&[c.report.json.as_ref()]),
            Command::GenInput(c) => Outputs::files(&[Some(&c.to.output)]),
            Command::Info(_)
            | Command::Plan(_)
            | Command::Serve(_)
            | Command::Store(_)
            | Command::StreamPush(_) => Outputs::default(),
        }
    }
}

impl<'a> Outputs<'a> {
    fn files(paths: &[Option<&'a PathBuf>]) -> Self {
        Self {
            files: paths.iter().flatten().map(|p| p.as_path()).collect(),
            dirs: Vec::new(),
        }
    }

    fn dir(path: &'a Path) -> Self {
        Self {
            files: Vec::new(),
            dirs: vec![path],
        }
    }
}

/// The GPU a command runs on.
#[derive(Args)]
pub struct Adapter {
    /// Adapter name substring (default: $PEPNET_ADAPTER, else the high-performance one).
    #[arg(long)]
    pub adapter: Option<String>,
}

impl Adapter {
    /// Opens the GPU, saying which adapter runs the command, and loudly when it is a slow
    /// fallback.
    pub fn open(&self) -> Result<Arc<GpuContext>> {
        let ctx = GpuContext::new(self.adapter.as_deref())?;
        eprintln!("adapter: {} ({:?})", ctx.info.name, ctx.info.backend);
        if let Some(warning) = ctx.fallback_warning() {
            let loud = ctx.info.backend == wgpu::Backend::Gl;
            eprintln!("{}: {warning}", if loud { "WARNING" } else { "note" });
        }
        Ok(ctx)
    }
}

/// The GPU and the precision of its matrix products.
#[derive(Args)]
pub struct Device {
    #[command(flatten)]
    pub adapter: Adapter,
    /// Precision of the matrix products: f32, or f16 (f16 weights and layer inputs, f32 sums;
    /// tensor cores where the device has them; training keeps f32 gradients and optimizer
    /// state).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
}

/// The embedding cache of hashed features.
#[derive(Args)]
pub struct Cache {
    /// Embedding cache capacity in rows, for hashed features (default 65536).
    #[arg(long, conflicts_with = "cache_bytes")]
    pub cache_rows: Option<u64>,
    /// Embedding cache capacity in bytes of GPU memory: its rows and their index.
    #[arg(long)]
    pub cache_bytes: Option<u64>,
    /// Cache eviction policy: tinylfu (access counts of every id asked for, in a sketch that
    /// slowly forgets), score (decayed access counts of cached rows, the paper's),
    /// score:<decay>, lru, lfu, or perfect-lfu (exact counts of every id: memory grows with
    /// the ids seen).
    #[arg(long, default_value = "tinylfu", value_parser = pepnet::cache::EvictionPolicy::parse)]
    pub cache_policy: pepnet::cache::EvictionPolicy,
    /// Fill the cache before scoring with these ids' rows: a CSV with a `feature,id` header,
    /// hottest first (ids beyond the cache's rows are skipped).
    #[arg(long)]
    pub cache_warm_up: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreFlags,
}

/// The paper's update policy for live rows of hashed features.
#[derive(Args)]
pub struct UpdateFlags {
    /// The most writes of one hashed id's row per window (a write beyond is skipped and
    /// counted); none: no cap.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_updates: Option<u32>,
    /// The window of --max-updates, in seconds.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub update_window_secs: u64,
    /// Hashed ids whose row was not written for this many seconds expire (read as unknown);
    /// none: never.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub expire_after_secs: Option<u64>,
}

impl UpdateFlags {
    pub fn policy(&self) -> pepnet::cache::UpdatePolicy {
        pepnet::cache::UpdatePolicy {
            max_updates: self.max_updates,
            window_secs: self.update_window_secs,
            expire_after_secs: self.expire_after_secs,
        }
    }
}

/// Where hashed features' rows live beyond the GPU cache.
#[derive(Args)]
pub struct StoreFlags {
    /// Read hashed features' rows from a Redis Cluster, redis://HOST:PORT[,HOST:PORT...]
    /// (seed nodes), filled by `pepnet store load` [default: the model directory's rows, in
    /// host memory].
    #[arg(long, value_parser = parse_store_url)]
    pub store: Option<pepnet::store::redis::RedisOptions>,
    /// The namespace in the store (one per model).
    #[arg(long, default_value = "default", requires = "store")]
    pub store_namespace: String,
    /// Milliseconds a batch's row reads may wait on a store node before it counts as down
    /// (its keys then fail at once, or read default rows with --degraded, until it answers a
    /// probe).
    #[arg(long, default_value_t = 500, requires = "store",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub store_timeout_ms: u64,
    /// Milliseconds to wait for a connection to a store node.
    #[arg(long, default_value_t = 250, requires = "store",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub store_connect_timeout_ms: u64,
    /// Milliseconds a row write may wait on its store node.
    #[arg(long, default_value_t = 1000, requires = "store",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub store_write_timeout_ms: u64,
    /// Milliseconds between pings of a store node that is down.
    #[arg(long, default_value_t = 1000, requires = "store",
          value_parser = clap::value_parser!(u64).range(10..))]
    pub store_probe_ms: u64,
    /// When a store node is down or slow, score its ids with their feature's default row
    /// (counted as unavailable in the cache statistics) instead of failing.
    #[arg(long, requires = "store")]
    pub degraded: bool,
}

fn parse_store_url(s: &str) -> std::result::Result<pepnet::store::redis::RedisOptions, String> {
    pepnet::store::redis::RedisOptions::from_url(s, "--store").map_err(|e| e.to_string())
}

impl StoreFlags {
    /// The store's options, if one was given.
    pub fn redis(&self) -> Option<pepnet::store::redis::RedisOptions> {
        self.store.clone().map(|mut r| {
            r.namespace = self.store_namespace.clone();
            let ms = std::time::Duration::from_millis;
            r.timeouts = pepnet::store::redis::Timeouts {
                connect: ms(self.store_connect_timeout_ms),
                read: ms(self.store_timeout_ms),
                write: ms(self.store_write_timeout_ms),
            };
            r.probe = ms(self.store_probe_ms);
            r.degraded = self.degraded;
            r
        })
    }
}

impl Cache {
    /// The cache's options for a model of `spec`, which the warm-up list is read against
    /// (`spec` is asked for only when there is one).
    pub fn options(
        &self,
        spec: impl FnOnce() -> Result<pepnet::ModelSpec>,
    ) -> Result<pepnet::cache::CacheOptions> {
        use pepnet::cache::{CacheCapacity, StoreSource};
        let store = match self.store.redis() {
            Some(redis) => StoreSource::Open(std::sync::Arc::new(redis)),
            None => StoreSource::Model,
        };
        let warm_up = match &self.cache_warm_up {
            Some(path) => pepnet::io::read_warm_up(path, &spec()?)?,
            None => Vec::new(),
        };
        let mut cache = pepnet::cache::CacheOptions {
            policy: self.cache_policy,
            store,
            warm_up,
            ..Default::default()
        };
        if let Some(n) = self.cache_rows {
            cache.capacity = CacheCapacity::Rows(n);
        }
        if let Some(b) = self.cache_bytes {
            cache.capacity = CacheCapacity::Bytes(b);
        }
        Ok(cache)
    }
}

/// A command's report as JSON.
#[derive(Args)]
pub struct Report {
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl Report {
    /// Writes `report` as pretty JSON, atomically, when `--json` was given.
    pub fn write(&self, report: &impl serde::Serialize) -> Result<()> {
        if let Some(path) = &self.json {
            let text = serde_json::to_string_pretty(report).expect("a report always serialises");
            pepnet::write_file(path, text.as_bytes())?;
        }
        Ok(())
    }
}

/// A count or size option: zero is refused by the parser, with the option's name.
pub fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
}

/// A spec from a model directory or a spec file.
pub fn load_spec(path: &Path) -> Result<ModelSpec> {
    if path.is_dir() {
        ModelSpec::load(&path.join(pepnet::model::SPEC_FILE))
    } else {
        ModelSpec::load(path)
    }
}

/// Where the labels are: per task, a column of the data.
#[derive(Args)]
pub struct Labels {
    /// Label columns as TASK=COLUMN, comma-separated (a task not named reads the column
    /// named like the task).
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
}

impl Labels {
    /// Per task, its label column: the task's own name unless `--labels` names another.
    pub fn columns(&self, spec: &ModelSpec) -> Result<Vec<String>> {
        let mut columns = spec.tasks.clone();
        for pair in &self.labels {
            let (task, column) = pair
                .split_once('=')
                .unwrap_or((pair.as_str(), pair.as_str()));
            let t =
                spec.tasks
                    .iter()
                    .position(|x| x == task)
                    .ok_or_else(|| pepnet::Error::Spec {
                        file: "--labels".into(),
                        message: format!(
                            "'{task}' is not a task of the model; the tasks are {:?}",
                            spec.tasks
                        ),
                    })?;
            columns[t] = column.to_string();
        }
        Ok(columns)
    }
}

/// What a data generator writes: rows for a model's features, to a file.
#[derive(Args)]
pub struct RowsOut {
    /// Model directory, or a model.json spec file.
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, value_parser = at_least_one())]
    pub rows: usize,
    /// CSV or Parquet, by extension.
    #[arg(long)]
    pub output: PathBuf,
}

/// How fresh weights are drawn, over the spec's `init` (recorded in the written model.json).
#[derive(Args)]
pub struct InitArgs {
    /// Embedding rows: `normal:STD` or `uniform:BOUND` [default: the spec's, else normal:0.05].
    #[arg(long, value_parser = parse_embedding_init)]
    pub init_embedding: Option<pepnet::EmbeddingInit>,
    /// Biases: `zero` or `fan-in` (uniform in ±1/√fan_in) [default: the spec's, else zero].
    #[arg(long, value_parser = parse_bias_init)]
    pub init_bias: Option<pepnet::BiasInit>,
}

impl InitArgs {
    /// `spec` with these choices over its `init`, checked by the spec's own rules.
    pub fn apply(&self, mut spec: ModelSpec) -> Result<ModelSpec> {
        let mut init = spec.init.unwrap_or_default();
        if let Some(e) = self.init_embedding {
            init.embedding = e;
        }
        if let Some(b) = self.init_bias {
            init.bias = b;
        }
        spec.init = Some(init);
        spec.validate().map_err(|message| pepnet::Error::Spec {
            file: "--init-embedding".into(),
            message,
        })?;
        Ok(spec)
    }
}

fn parse_embedding_init(s: &str) -> std::result::Result<pepnet::EmbeddingInit, String> {
    let (kind, value) = s
        .split_once(':')
        .ok_or_else(|| format!("expected normal:STD or uniform:BOUND, found '{s}'"))?;
    let v: f64 = value
        .parse()
        .map_err(|_| format!("'{value}' is not a number (in '{s}')"))?;
    match kind {
        "normal" => Ok(pepnet::EmbeddingInit::Normal { std: v }),
        "uniform" => Ok(pepnet::EmbeddingInit::Uniform { bound: v }),
        _ => Err(format!(
            "'{kind}' is not a scheme: expected normal:STD or uniform:BOUND"
        )),
    }
}

fn parse_bias_init(s: &str) -> std::result::Result<pepnet::BiasInit, String> {
    match s {
        "zero" => Ok(pepnet::BiasInit::Zero),
        "fan-in" | "fan_in" => Ok(pepnet::BiasInit::FanIn),
        _ => Err(format!("expected zero or fan-in, found '{s}'")),
    }
}

/// The spec index of the sparse feature whose ids group progressive GAUC: `name`
/// (--progressive-user), or user_id when the spec has it as a sparse feature.
pub fn progressive_user(spec: &ModelSpec, name: Option<&str>) -> Result<Option<usize>> {
    let sparse = |f: &pepnet::spec::FeatureSpec| f.kind == pepnet::spec::FeatureKind::Sparse;
    match name {
        None => Ok(spec
            .features
            .iter()
            .position(|f| f.name == "user_id" && sparse(f))),
        Some(name) => match spec.features.iter().position(|f| f.name == name) {
            Some(i) if sparse(&spec.features[i]) => Ok(Some(i)),
            _ => Err(pepnet::Error::Spec {
                file: "--progressive-user".into(),
                message: format!("'{name}' is not a sparse feature of the model"),
            }),
        },
    }
}
