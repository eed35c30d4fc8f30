//! Online scoring with the Open Inference Protocol (KServe v2, what Triton, Seldon and KServe
//! clients speak), over HTTP/JSON and gRPC, requests coalesced by the [`Batcher`], for one model
//! directory or a repository of models with numbered versions ([`Models`]).
//!
//! ```text
//! HTTP  GET  /v2                                     server metadata (name, version, extensions)
//!       GET  /v2/health/live, /v2/health/ready       {"live": true}, {"ready": true}
//!       GET  /v2/models/{name}[/versions/{v}]        metadata (the versions served)
//!       GET  .../ready                               {"name", "ready"}
//!       GET  .../config                              configuration, in Triton's shape
//!       GET  .../stats, /v2/models/stats             statistics, in Triton's fields
//!       POST .../infer                               JSON tensors in (or binary: the binary tensor
//!                                                    data extension), one FP32 tensor per task
//!                                                    out (JSON or binary, as asked); gzip or
//!                                                    deflate bodies, gzip answers when accepted
//!       POST /v2/repository/index                    the models and their state
//!       POST /v2/repository/models/{name}/load       (re)load a model (all of them on SIGHUP)
//!       POST /v2/repository/models/{name}/unload     stop serving it
//!       POST /v2/models/{name}/rows                  new rows for hashed features (safetensors)
//!       POST /v2/models/{name}/expire                drop ids not written for the expiry time
//!       GET  /metrics                                Prometheus text
//! gRPC  inference.GRPCInferenceService: ServerLive, ServerReady, ModelReady, ServerMetadata,
//!       ModelMetadata, ModelInfer, ModelConfig, ModelStatistics, RepositoryIndex,
//!       RepositoryModelLoad, RepositoryModelUnload (proto/inference.proto); gzip accepted
//! ```
//!
//! Both protocols decode into the same request ([`oip::assemble`]), share each model version's
//! batcher and one set of metrics, and answer the same scores bit for bit. Every accepted
//! socket has TCP_NODELAY (no wait for Nagle's algorithm on a small answer); gRPC connections
//! are kept alive with HTTP/2 pings, HTTP/1.1 ones persist between requests.
//!
//! A load builds a new engine for each version beside the old ones and swaps them all at once:
//! a request is scored wholly by the version it started on (its answer's `model_version` says
//! which), and none is dropped (an old batcher finishes what it holds). Expiry of hashed ids
//! runs on a timer (`expire_every`) and on demand.
//!
//! A bad request is a 400 / INVALID_ARGUMENT naming the tensor, element and rule; an unknown
//! model or version a 404 / NOT_FOUND; a full queue a 429 / RESOURCE_EXHAUSTED; a request past
//! the timeout a 504 / DEADLINE_EXCEEDED; a body beyond the size limit a 413 / OUT_OF_RANGE;
//! each counted in `/metrics` by its code. The server stops on SIGINT or SIGTERM after
//! answering the requests it has (graceful shutdown), on both protocols.

// Proving `App: Send + Sync` (once, for `AppRef`) goes through the GPU types' depth.
#![recursion_limit = "256"]

mod config;
pub mod grpc;
mod http;
mod metrics;
pub mod oip;
mod repository;
mod stats;

pub use grpc::proto;
pub use repository::{Models, VersionPolicy, CONFIG_FILE};

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use metrics::Metrics;
use oip::InferRequest;
use pepnet_core::batch::CheckedBatch;
use pepnet_core::batcher::{Batcher, BatcherOptions};
use pepnet_core::cache::unix_now;
use pepnet_core::engine::{Engine, EngineOptions};
use pepnet_core::error::{Error, Result};
use pepnet_core::gpu::GpuContext;
use pepnet_core::model::Model;
use pepnet_core::spec::ModelSpec;
use stats::VersionStats;

/// How [`serve`] runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The model's name in URLs (`/v2/models/{name}`) and gRPC requests, when one model
    /// directory is served ([`Models::Directory`] takes it from here).
    pub name: String,
    /// Where to listen for HTTP (port 0: any free port, reported on start).
    pub http: SocketAddr,
    /// Where to listen for gRPC, if at all.
    pub grpc: Option<SocketAddr>,
    pub batcher: BatcherOptions,
    /// The longest a request may take, queueing included (then 504 / DEADLINE_EXCEEDED). A gRPC
    /// client's own deadline (`grpc-timeout`) shortens it.
    pub timeout: Duration,
    /// The largest request body (HTTP) or message (gRPC) accepted.
    pub max_body_bytes: usize,
    /// How often to drop hashed ids not written for the update policy's expiry time
    /// ([`UpdatePolicy::expire_after_secs`](pepnet_core::cache::UpdatePolicy)); `None`: only on
    /// demand (`POST /v2/models/{name}/expire`).
    pub expire_every: Option<Duration>,
    /// With a repository: how often to look for versions added or removed (Triton's
    /// `--repository-poll-secs`) and load each model whose versions to serve changed, as
    /// the load endpoint does. `None`: only on demand (the load endpoint, SIGHUP).
    pub poll_every: Option<Duration>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            name: "pepnet".into(),
            http: SocketAddr::from(([127, 0, 0, 1], 8000)),
            grpc: None,
            batcher: BatcherOptions::default(),
            timeout: Duration::from_secs(1),
            max_body_bytes: 16 << 20,
            expire_every: None,
            poll_every: None,
        }
    }
}

/// Where a started server listens.
#[derive(Debug, Clone, Copy)]
pub struct Listening {
    pub http: SocketAddr,
    pub grpc: Option<SocketAddr>,
}

/// One version of a model, loaded: a reload or an unload replaces it whole, and requests that
/// hold it finish on it.
struct Served {
    name: String,
    version: String,
    spec: ModelSpec,
    batcher: Batcher,
    stats: Arc<VersionStats>,
}

/// A model's versions served, oldest first (never empty), and the policy that chose them.
struct Loaded {
    policy: VersionPolicy,
    versions: Vec<Arc<Served>>,
}

impl Loaded {
    fn newest(&self) -> &Arc<Served> {
        self.versions.last().expect("a loaded model has a version")
    }

    fn names(&self) -> String {
        let names: Vec<String> = self
            .versions
            .iter()
            .map(|v| format!("'{}'", v.version))
            .collect();
        names.join(", ")
    }
}

/// A model the server knows: served, or not (and why).
#[derive(Clone)]
enum ModelState {
    Ready(Arc<Loaded>),
    Unavailable(String),
}

/// What both protocols' handlers share.
struct App {
    source: Models,
    models: RwLock<BTreeMap<String, ModelState>>,
    /// Held by a load or an unload: one at a time, so two loads of a model never race.
    loading: Mutex<()>,
    /// Loads of a model directory so far (its versions count them).
    directory_loads: AtomicU64,
    /// Each model version's counters, kept across reloads of that version.
    stats: Mutex<HashMap<(String, String), Arc<VersionStats>>>,
    max_body_bytes: usize,
    ctx: Arc<GpuContext>,
    engine_options: EngineOptions,
    batcher_options: BatcherOptions,
    timeout: Duration,
    metrics: Metrics,
}

/// The server's state as its handlers, its [`ServingState`] and its [`GrpcService`] hold it:
/// behind a trait object, so that a crate holding one, or an async block that does, never
/// proves `App: Send + Sync` again through the depth of the GPU types (past rustc's recursion
/// limit); that is proven once, here.
#[derive(Clone)]
struct AppRef(Arc<dyn AsApp>);

trait AsApp: Send + Sync {
    fn app(&self) -> &App;
}

impl AsApp for App {
    fn app(&self) -> &App {
        self
    }
}

impl AppRef {
    fn new(app: App) -> Self {
        Self(Arc::new(app))
    }
}

impl std::ops::Deref for AppRef {
    type Target = App;

    fn deref(&self) -> &App {
        self.0.app()
    }
}

/// Why a request was not scored, in terms both protocols map to their codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    BadRequest,
    UnknownModel,
    Overloaded,
    Timeout,
    /// The embedding store did not answer: the server's fault, maybe passing.
    Unavailable,
    Internal,
}

/// A request that was not scored: why, and the message for the client.
struct Refused(Refusal, String);

/// A request scored: the model version that scored it, the request (its batch given to the
/// batcher), its rows and their scores.
struct Scored {
    served: Arc<Served>,
    request: InferRequest,
    rows: usize,
    scores: Vec<f32>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl App {
    fn new(
        ctx: Arc<GpuContext>,
        source: Models,
        engine_options: EngineOptions,
        options: &ServeOptions,
    ) -> Result<Self> {
        let app = Self {
            source,
            models: RwLock::default(),
            loading: Mutex::default(),
            directory_loads: AtomicU64::new(0),
            stats: Mutex::default(),
            ctx,
            engine_options,
            batcher_options: options.batcher.clone(),
            timeout: options.timeout,
            metrics: Metrics::default(),
            max_body_bytes: options.max_body_bytes,
        };
        // Every model must load at start (as Triton's --exit-on-error).
        for name in app.source.names()? {
            app.load(&name)?;
        }
        Ok(app)
    }

    fn state(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, ModelState>> {
        self.models.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The model version a request names (`version` empty: the newest served).
    fn served(&self, name: &str, version: &str) -> std::result::Result<Arc<Served>, Refused> {
        let models = self.state();
        let unknown = |message| Err(Refused(Refusal::UnknownModel, message));
        let loaded = match models.get(name) {
            Some(ModelState::Ready(loaded)) => loaded,
            Some(ModelState::Unavailable(reason)) => {
                return unknown(format!("model '{name}' is not ready: {reason}"))
            }
            None => {
                let names: Vec<String> = models.keys().map(|n| format!("'{n}'")).collect();
                return unknown(format!(
                    "unknown model '{name}'; this server serves {}",
                    names.join(", ")
                ));
            }
        };
        if version.is_empty() {
            return Ok(loaded.newest().clone());
        }
        match loaded.versions.iter().find(|v| v.version == version) {
            Some(served) => Ok(served.clone()),
            None => unknown(format!(
                "model '{name}' version '{version}' is not served; the versions served: {}",
                loaded.names()
            )),
        }
    }

    /// Whether `name` (and `version`, empty: any) is served.
    fn check_model(&self, name: &str, version: &str) -> std::result::Result<(), Refused> {
        self.served(name, version).map(|_| ())
    }

    /// The versions of a model served, oldest first.
    fn loaded(&self, name: &str) -> std::result::Result<Arc<Loaded>, Refused> {
        self.served(name, "")?;
        match self.state().get(name) {
            Some(ModelState::Ready(loaded)) => Ok(loaded.clone()),
            _ => Err(Refused(
                Refusal::UnknownModel,
                format!("model '{name}' was unloaded"),
            )),
        }
    }

    /// Every version served now, of every model.
    fn all_served(&self) -> Vec<Arc<Served>> {
        self.state()
            .values()
            .filter_map(|m| match m {
                ModelState::Ready(loaded) => Some(loaded.versions.clone()),
                ModelState::Unavailable(_) => None,
            })
            .flatten()
            .collect()
    }

    /// The configuration of model `name` (of `version`, or the newest served).
    fn config(
        &self,
        name: &str,
        version: &str,
    ) -> std::result::Result<proto::ModelConfig, Refused> {
        let served = self.served(name, version)?;
        let loaded = self.loaded(name)?;
        Ok(config::model_config(
            name,
            &served.spec,
            &loaded.policy,
            &self.batcher_options,
        ))
    }

    /// The statistics of every version served of every model (`name` empty), of model
    /// `name`'s (`version` empty) or of one version.
    fn statistics(
        &self,
        name: &str,
        version: &str,
    ) -> std::result::Result<Vec<proto::ModelStatistics>, Refused> {
        let served = match (name.is_empty(), version.is_empty()) {
            (true, _) => self.all_served(),
            (false, true) => self.loaded(name)?.versions.clone(),
            (false, false) => vec![self.served(name, version)?],
        };
        Ok(served
            .iter()
            .map(|s| s.stats.snapshot(&s.name, &s.version))
            .collect())
    }

    /// Decodes a request against the model version it names and scores it through that
    /// version's batcher; the same path for both protocols (each counts its answers by code): `model` is the name and version
    /// asked for (empty: the newest), `deadline` the client's, which caps the server's timeout.
    async fn infer(
        &self,
        model: (&str, &str),
        deadline: Option<Duration>,
        decode: impl FnOnce(&ModelSpec) -> std::result::Result<InferRequest, String>,
    ) -> std::result::Result<Scored, Refused> {
        let start = Instant::now();
        // One model version for the whole request, even if a reload swaps it meanwhile.
        let served = self.served(model.0, model.1);
        let result = match &served {
            Ok(served) => self.infer_on(served.clone(), deadline, decode).await,
            Err(Refused(r, m)) => Err(Refused(*r, m.clone())),
        };
        let took = start.elapsed();
        if let Ok(served) = &served {
            let rows = result.as_ref().map_or(0, |s| s.rows);
            served.stats.answered(result.is_ok(), rows, took);
        }
        match &result {
            Ok(scored) => self.metrics.answered(scored.rows, took),
            Err(Refused(Refusal::Internal, message)) => {
                tracing::warn!(error = %message, "request failed")
            }
            Err(Refused(refusal, message)) => {
                tracing::debug!(?refusal, error = %message, "request refused")
            }
        }
        result
    }

    async fn infer_on(
        &self,
        served: Arc<Served>,
        deadline: Option<Duration>,
        decode: impl FnOnce(&ModelSpec) -> std::result::Result<InferRequest, String>,
    ) -> std::result::Result<Scored, Refused> {
        let mut request = decode(&served.spec).map_err(|m| Refused(Refusal::BadRequest, m))?;
        let timeout = deadline.map_or(self.timeout, |d| d.min(self.timeout));
        // The batch goes to the batcher (not a copy); the answer needs only its outputs.
        let batch = std::mem::take(&mut request.batch);
        let rows = batch.len();
        // The decoder checked every value against this version's spec.
        let batch = CheckedBatch::from_reader(batch, served.batcher.engine().spec_id());
        let pending = served
            .batcher
            .submit_checked(batch, Some(Instant::now() + timeout))
            .map_err(refusal)?;
        let scores = match tokio::time::timeout(timeout, pending).await {
            Ok(scores) => scores.map_err(refusal)?,
            Err(_) => {
                return Err(Refused(
                    Refusal::Timeout,
                    format!("not scored within {} ms", timeout.as_millis()),
                ))
            }
        };
        Ok(Scored {
            served,
            request,
            rows,
            scores,
        })
    }

    /// Loads (or reloads) model `name` from the source: every version its policy chooses gets
    /// a new engine, built beside what is served; then all are swapped in at once. Requests
    /// already given to the old versions finish there. A load that fails leaves what was
    /// served as it was (a model not served yet is marked unavailable, with the reason).
    /// Returns the versions now served.
    fn load(&self, name: &str) -> Result<Vec<String>> {
        let _one_at_a_time = lock(&self.loading);
        let built = self.build(name);
        let mut models = self.models.write().unwrap_or_else(|e| e.into_inner());
        match built {
            Ok(loaded) => {
                let versions: Vec<String> =
                    loaded.versions.iter().map(|v| v.version.clone()).collect();
                models.insert(name.to_string(), ModelState::Ready(Arc::new(loaded)));
                drop(models);
                self.metrics.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(model = %name, versions = ?versions, "model loaded");
                Ok(versions)
            }
            Err(e) => {
                if !matches!(models.get(name), Some(ModelState::Ready(_)))
                    && self.source.knows(name)
                {
                    models.insert(name.to_string(), ModelState::Unavailable(e.to_string()));
                }
                tracing::error!(model = %name, error = %e, "load failed; what was served still is");
                Err(e)
            }
        }
    }

    fn build(&self, name: &str) -> Result<Loaded> {
        let (policy, versions) = self.source.versions(name, || {
            self.directory_loads.fetch_add(1, Ordering::SeqCst) + 1
        })?;
        let versions = versions
            .into_iter()
            .map(|(version, dir)| {
                let version = version.to_string();
                let stats = lock(&self.stats)
                    .entry((name.to_string(), version.clone()))
                    .or_default()
                    .clone();
                load(self, name, version, &dir, stats)
                    .map(Arc::new)
                    .map_err(|e| e.while_doing(format_args!("loading {}", dir.display())))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Loaded { policy, versions })
    }

    /// Stops serving model `name`: requests already queued finish on it.
    fn unload(&self, name: &str) -> std::result::Result<(), Refused> {
        let _one_at_a_time = lock(&self.loading);
        let mut models = self.models.write().unwrap_or_else(|e| e.into_inner());
        if !models.contains_key(name) {
            return Err(Refused(
                Refusal::UnknownModel,
                format!("unknown model '{name}'"),
            ));
        }
        models.insert(name.to_string(), ModelState::Unavailable("unloaded".into()));
        tracing::info!(model = %name, "model unloaded");
        Ok(())
    }

    /// Loads each model of a repository whose versions to serve differ from those served (a
    /// version added or removed, a model added), as [`App::load`]; an unloaded model stays
    /// unloaded. Returns the models loaded; the first error after trying them all.
    fn poll_repository(&self) -> Result<Vec<String>> {
        if !matches!(self.source, Models::Repository(_)) {
            return Ok(Vec::new());
        }
        let (mut loaded, mut first) = (Vec::new(), None);
        for name in self.source.names()? {
            let served: Option<Vec<String>> = match self.state().get(&name) {
                Some(ModelState::Ready(l)) => {
                    Some(l.versions.iter().map(|v| v.version.clone()).collect())
                }
                Some(ModelState::Unavailable(reason)) if reason == "unloaded" => continue,
                _ => None,
            };
            let wanted: Option<Vec<String>> = self
                .source
                .versions(&name, || 0)
                .ok()
                .map(|(_, v)| v.iter().map(|(n, _)| n.to_string()).collect());
            if wanted.is_none() || wanted == served {
                continue;
            }
            match self.load(&name) {
                Ok(_) => loaded.push(name),
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(loaded), Err)
    }

    /// Reloads every model served (SIGHUP): each as [`App::load`]; the first error is returned
    /// after all were tried.
    fn reload_all(&self) -> Result<()> {
        let names: Vec<String> = self
            .state()
            .iter()
            .filter(|(_, m)| matches!(m, ModelState::Ready(_)))
            .map(|(n, _)| n.clone())
            .collect();
        let mut first = None;
        for name in names {
            if let Err(e) = self.load(&name) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// The repository's models: per version served, its name, version and state; per model not
    /// served, its state and why. `ready`: only those served.
    fn index(&self, ready: bool) -> Vec<IndexEntry> {
        let models = self.state();
        let mut out = Vec::new();
        let known = self.source.names().unwrap_or_default();
        let mut names: Vec<&String> = models.keys().chain(&known).collect();
        names.sort();
        names.dedup();
        for name in names {
            match models.get(name) {
                Some(ModelState::Ready(loaded)) => {
                    out.extend(loaded.versions.iter().map(|v| IndexEntry {
                        name: name.clone(),
                        version: v.version.clone(),
                        state: "READY",
                        reason: String::new(),
                    }))
                }
                Some(ModelState::Unavailable(reason)) if !ready => out.push(IndexEntry {
                    name: name.clone(),
                    version: String::new(),
                    state: "UNAVAILABLE",
                    reason: reason.clone(),
                }),
                None if !ready => out.push(IndexEntry {
                    name: name.clone(),
                    version: String::new(),
                    state: "UNAVAILABLE",
                    reason: "not loaded".into(),
                }),
                _ => {}
            }
        }
        out
    }

    /// Drops, in every version served, the hashed ids not written for the update policy's
    /// expiry time; returns how many.
    fn expire(&self) -> Result<usize> {
        let mut expired = 0;
        for served in self.all_served() {
            expired += served.batcher.engine().expire(unix_now())?;
        }
        self.metrics
            .expired
            .fetch_add(expired as u64, Ordering::Relaxed);
        if expired > 0 {
            tracing::info!(expired, "expired ids not written for the expiry time");
        }
        Ok(expired)
    }
}

/// One entry of the repository's index.
struct IndexEntry {
    name: String,
    version: String,
    state: &'static str,
    reason: String,
}

/// The refusal for an error the batcher or engine returned.
fn refusal(e: Error) -> Refused {
    let kind = match &e {
        Error::Overloaded(_) => Refusal::Overloaded,
        Error::DeadlineExceeded(_) => Refusal::Timeout,
        Error::Samples(_) | Error::Batch(_) | Error::Input { .. } => Refusal::BadRequest,
        Error::Store(_) => Refusal::Unavailable,
        _ => Refusal::Internal,
    };
    Refused(kind, e.to_string())
}

fn load(
    app: &App,
    name: &str,
    version: String,
    dir: &std::path::Path,
    stats: Arc<VersionStats>,
) -> Result<Served> {
    let model = Model::load(dir)?;
    let engine = Engine::new(
        app.ctx.clone(),
        &model,
        &EngineOptions {
            batch_invariant: true,
            ..app.engine_options.clone()
        },
    )?;
    Ok(Served {
        name: name.to_string(),
        version,
        spec: model.spec,
        batcher: Batcher::with_stats(
            Arc::new(engine),
            app.batcher_options.clone(),
            stats.batcher.clone(),
        )?,
        stats,
    })
}

/// What pepnet's routes and gRPC service share: the models served (each version's engine and
/// batcher, swapped whole on a reload), the request timeout and the metrics. Build one, then
/// mount [`ServingState::router`] in the host's axum app (under any prefix, beside its own
/// routes) and add [`ServingState::grpc_service`] to its tonic server, on the host's runtime;
/// or run the ready-made [`serve`].
///
/// ```no_run
/// # fn main() -> pepnet_core::Result<()> {
/// # let ctx = pepnet_core::GpuContext::new(None)?;
/// let state = pepnet_serve::ServingState::new(
///     ctx,
///     "examples/kuairand".into(),
///     Default::default(),
///     &Default::default(),
/// )?;
/// let app: axum::Router = axum::Router::new()
///     .route("/healthz", axum::routing::get(|| async { "ok" }))
///     .nest("/ranker", state.router());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ServingState(AppRef);

impl ServingState {
    /// Loads the model directory `model_dir`, served as `options.name`, and builds its engine
    /// (batch-invariant, whatever `engine_options` say: see [`Batcher`]) and batcher on `ctx`.
    /// `options`' name, batcher, timeout and body limit apply; its addresses and expiry timer
    /// are [`serve`]'s.
    pub fn new(
        ctx: Arc<GpuContext>,
        model_dir: PathBuf,
        engine_options: EngineOptions,
        options: &ServeOptions,
    ) -> Result<Self> {
        let models = Models::Directory {
            name: options.name.clone(),
            dir: model_dir,
        };
        Self::with_models(ctx, models, engine_options, options)
    }

    /// Loads every model of `models` (each version its policy chooses gets its own engine and
    /// batcher on `ctx`); fails naming the first that does not load.
    pub fn with_models(
        ctx: Arc<GpuContext>,
        models: Models,
        engine_options: EngineOptions,
        options: &ServeOptions,
    ) -> Result<Self> {
        Ok(Self(AppRef::new(App::new(
            ctx,
            models,
            engine_options,
            options,
        )?)))
    }

    /// The HTTP routes (`/v2/...` and `/metrics`), for the host to serve or nest under a
    /// prefix of its own.
    pub fn router(&self) -> axum::Router {
        http::router(self.0.clone(), self.0.max_body_bytes)
    }

    /// The gRPC service, for the host's tonic server.
    pub fn grpc_service(&self) -> grpc::GrpcService {
        grpc::service(self.0.clone(), self.0.max_body_bytes)
    }

    /// Loads model `name` again (what `POST /v2/repository/models/{name}/load` does): requests
    /// in flight finish on the versions they started on. Returns the versions now served.
    pub fn load(&self, name: &str) -> Result<Vec<String>> {
        self.0.load(name)
    }

    /// Reloads every model served (what SIGHUP does); the first error, after trying them all.
    pub fn reload(&self) -> Result<()> {
        self.0.reload_all()
    }

    /// Drops hashed ids not written for the update policy's expiry time; returns how many.
    pub fn expire(&self) -> Result<usize> {
        self.0.expire()
    }
}

/// Serves `models` on `ctx` until SIGINT or SIGTERM; `on_listening` gets the bound addresses
/// once the server accepts connections. Each engine is built batch-invariant whatever
/// `engine_options` say (see [`Batcher`]). Logs go through `tracing`: install a subscriber to
/// see them.
pub fn serve(
    ctx: Arc<GpuContext>,
    models: Models,
    engine_options: EngineOptions,
    options: ServeOptions,
    on_listening: impl FnOnce(Listening),
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Batch(format!("cannot start the server's runtime: {e}")))?;
    let app = ServingState::with_models(ctx, models, engine_options, &options)?.0;
    runtime.block_on(async move {
        let bind = |addr: SocketAddr| async move {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Error::io(addr.to_string(), e))?;
            let bound = listener
                .local_addr()
                .map_err(|e| Error::io(addr.to_string(), e))?;
            Ok::<_, Error>((listener, bound))
        };
        let (http_listener, http) = bind(options.http).await?;
        let grpc_listener = match options.grpc {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        // Both servers stop on the same signal, each after answering what it holds.
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(async move {
            stop_signal().await;
            tracing::info!("stopping: answering the requests in flight");
            let _ = stop.send(true);
        });
        reload_on_hangup(app.clone());
        if let Some(every) = options.expire_every {
            expire_on_timer(app.clone(), every, stopped.clone());
        }
        if let Some(every) = options.poll_every {
            poll_on_timer(app.clone(), every, stopped.clone());
        }
        let grpc = grpc_listener.as_ref().map(|(_, bound)| *bound);
        let served: Vec<String> = app
            .all_served()
            .iter()
            .map(|s| format!("{}/{}", s.name, s.version))
            .collect();
        tracing::info!(
            models = %served.join(", "),
            http = %format!("http://{http}"),
            grpc = %grpc.map_or("off".into(), |g| format!("grpc://{g}")),
            "listening"
        );
        on_listening(Listening { http, grpc });
        let http_server = http::serve(app.clone(), http_listener, options.max_body_bytes, {
            let stopped = stopped.clone();
            async move { wait_for(stopped).await }
        });
        let grpc_server = async {
            match grpc_listener {
                Some((listener, _)) => {
                    grpc::serve(app.clone(), listener, options.max_body_bytes, async move {
                        wait_for(stopped).await
                    })
                    .await
                }
                None => Ok(()),
            }
        };
        let (h, g) = tokio::join!(http_server, grpc_server);
        h.map_err(|e| Error::io(http.to_string(), e))?;
        g.map_err(|e| Error::Batch(format!("the gRPC server failed: {e}")))?;
        tracing::info!("stopped");
        Ok(())
    })
}

async fn wait_for(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|&s| s).await;
}

/// SIGHUP reloads every model served, as the load endpoint does one.
fn reload_on_hangup(app: AppRef) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            return;
        };
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                let app = app.clone();
                match tokio::task::spawn_blocking(move || app.reload_all()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "reload failed, still serving the old model")
                    }
                    Err(e) => tracing::error!(error = %e, "reload failed"),
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = app;
}

/// Runs expiry every `every` until the server stops.
fn expire_on_timer(app: AppRef, every: Duration, stopped: watch::Receiver<bool>) {
    on_timer(app, every, stopped, "expiry failed", |app| {
        app.expire().map(|_| ())
    });
}

/// Looks at the repository every `every` until the server stops (see
/// [`App::poll_repository`]); a failed load is logged and what was served stays.
fn poll_on_timer(app: AppRef, every: Duration, stopped: watch::Receiver<bool>) {
    on_timer(
        app,
        every,
        stopped,
        "repository poll: a load failed",
        |app| app.poll_repository().map(|_| ()),
    );
}

/// Runs `work` (off the async threads) every `every`, the first one period after the start,
/// until the server stops; a failure is logged as `what`.
fn on_timer(
    app: AppRef,
    every: Duration,
    stopped: watch::Receiver<bool>,
    what: &'static str,
    work: fn(&App) -> Result<()>,
) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate.
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = wait_for(stopped.clone()) => return,
            }
            let worker = app.clone();
            match tokio::task::spawn_blocking(move || work(&worker)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "{what}"),
                Err(e) => tracing::error!(error = %e, "{what}"),
            }
        }
    });
}

async fn stop_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminate = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
