//! `pepnet serve`: online scoring over HTTP and gRPC (the Open Inference Protocol), requests
//! coalesced by the dynamic batcher, logs through `tracing`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use pepnet::serve::{serve, Models, ServeOptions};
use pepnet::{BatcherOptions, EngineOptions, Result};

use super::{at_least_one, Cache, Device};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One line of text per event.
    Text,
    /// One JSON object per event.
    Json,
}

/// Serve a model, or a repository of models, with the Open Inference Protocol (KServe v2) over
/// HTTP and gRPC: health, metadata, configuration, infer (JSON or binary tensors, gzip),
/// statistics, Prometheus metrics, the repository's index, load and unload (POST
/// /v2/repository/models/NAME/load reloads; so does SIGHUP, for every model), row updates for
/// hashed features (POST /v2/models/NAME/rows) and their expiry (on a timer, or POST
/// /v2/models/NAME/expire); stops on SIGINT or SIGTERM after answering what it has. Logs go to
/// stderr (RUST_LOG sets the level, e.g. RUST_LOG=debug for every refused request).
#[derive(Args)]
#[command(group(clap::ArgGroup::new("models").required(true).args(["model", "repository"])))]
pub struct Serve {
    /// Model directory (model.json + weights.safetensors), served as --name; each reload is
    /// its next version (1, 2, ...).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Model repository: DIR/NAME/VERSION/ holds version VERSION (a number) of model NAME;
    /// DIR/NAME/config.json may set its version_policy (default: the latest version).
    #[arg(long, conflicts_with_all = ["name", "cache_warm_up"])]
    pub repository: Option<PathBuf>,
    /// The model's name in URLs (/v2/models/NAME), with --model.
    #[arg(long, default_value = "pepnet")]
    pub name: String,
    /// Address to listen on for HTTP (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub http: SocketAddr,
    /// Address to listen on for gRPC (inference.GRPCInferenceService), if any.
    #[arg(long)]
    pub grpc: Option<SocketAddr>,
    /// The most samples one GPU batch holds (requests are merged up to it).
    #[arg(long, default_value_t = 4096, value_parser = at_least_one())]
    pub max_batch_rows: usize,
    /// The longest a request waits for others to join its batch, in milliseconds.
    #[arg(long, default_value_t = 2.0)]
    pub max_delay_ms: f64,
    /// The most samples waiting at once; beyond, requests get 429.
    #[arg(long, default_value_t = 65536, value_parser = at_least_one())]
    pub max_queued_rows: usize,
    /// Score every request alone, as it comes (to measure what batching brings).
    #[arg(long)]
    pub no_batching: bool,
    /// Batches scored at once.
    #[arg(long, default_value_t = 2, value_parser = at_least_one())]
    pub in_flight: usize,
    /// The longest a request may take, queueing included, in milliseconds (then 504).
    #[arg(long, default_value_t = 1000, value_parser = at_least_one())]
    pub timeout_ms: usize,
    /// The largest request body accepted, in bytes (then 413).
    #[arg(long, default_value_t = 16 << 20, value_parser = at_least_one())]
    pub max_body_bytes: usize,
    #[command(flatten)]
    pub cache: Cache,
    #[command(flatten)]
    pub updates: super::UpdateFlags,
    /// How often expiry runs, in seconds [default: a tenth of --expire-after-secs, at least 1].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), requires = "expire_after_secs")]
    pub expire_every_secs: Option<u64>,
    /// With --repository: look for new or removed versions every this many seconds and load
    /// the models whose versions changed (Triton's --repository-poll-secs); requests in
    /// flight finish on the versions they started on.
    #[arg(long, requires = "repository")]
    pub repository_poll_secs: Option<f64>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub device: Device,
}

impl Serve {
    pub fn run(self) -> Result<()> {
        init_logs(self.log_format);
        let poll_every = match self.repository_poll_secs {
            Some(s) if !(s.is_finite() && s > 0.0) => {
                return Err(pepnet::Error::Spec {
                    file: "--repository-poll-secs".into(),
                    message: format!("must be a positive number of seconds, found {s}"),
                })
            }
            s => s.map(Duration::from_secs_f64),
        };
        let ctx = self.device.adapter.open()?;
        let models = match (self.model, self.repository) {
            (Some(dir), _) => Models::Directory {
                name: self.name.clone(),
                dir,
            },
            (None, Some(root)) => Models::Repository(root),
            (None, None) => unreachable!("clap requires --model or --repository"),
        };
        // A warm-up list is read against one model's spec (so it goes with --model only).
        let mut cache = self.cache.options(|| match &models {
            Models::Directory { dir, .. } => {
                pepnet::ModelSpec::load(&dir.join(pepnet::model::SPEC_FILE))
            }
            Models::Repository(_) => unreachable!("clap refuses --cache-warm-up with it"),
        })?;
        cache.updates = self.updates.policy();
        let engine_options = EngineOptions {
            max_batch: self.max_batch_rows,
            workspaces: self.in_flight,
            precision: self.device.precision,
            batch_invariant: true,
            cache,
            ..Default::default()
        };
        let options = ServeOptions {
            name: self.name,
            http: self.http,
            grpc: self.grpc,
            // Without batching, one request per batch (a request beyond max_rows is taken
            // alone) and no waiting for others.
            batcher: BatcherOptions {
                max_rows: if self.no_batching {
                    1
                } else {
                    self.max_batch_rows
                },
                max_delay: match self.no_batching {
                    true => Duration::ZERO,
                    false => Duration::from_secs_f64(self.max_delay_ms.max(0.0) / 1e3),
                },
                max_queued_rows: self.max_queued_rows,
                in_flight: self.in_flight,
            },
            timeout: Duration::from_millis(self.timeout_ms as u64),
            max_body_bytes: self.max_body_bytes,
            expire_every: self.updates.expire_after_secs.map(|after| {
                Duration::from_secs(self.expire_every_secs.unwrap_or((after / 10).max(1)))
            }),
            poll_every,
        };
        // The addresses are in the "listening" log event.
        serve(ctx, models, engine_options, options, |_| {})
    }
}

/// Structured logs on stderr: RUST_LOG's filter (default: info for pepnet, warnings for the
/// rest), as text or JSON.
fn init_logs(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,pepnet=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
