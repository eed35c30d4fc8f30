//! Online scoring with the Open Inference Protocol (KServe v2, what Triton, Seldon and KServe
//! clients speak), over HTTP/JSON and gRPC, requests coalesced by the [`Batcher`].
//!
//! ```text
//! HTTP  GET  /v2                                     server metadata (name, version, extensions)
//!       GET  /v2/health/live, /v2/health/ready       {"live": true}, {"ready": true}
//!       GET  /v2/models/{name}, /v2/models/{name}/ready
//!       POST /v2/models/{name}/infer                  JSON tensors in (or binary: the binary
//!                                                    tensor data extension), one FP32 tensor
//!                                                    per task out (JSON or binary, as asked)
//!            /v2/models/{name}/versions/{v}[/ready|/infer]   the same, for version v (404 if
//!                                                    it is not the one served)
//!       GET  /metrics                                 Prometheus text
//!       POST /v2/repository/models/{name}/load        reload the model directory (also on SIGHUP)
//!       POST /v2/models/{name}/rows                   new rows for hashed features (safetensors)
//!       POST /v2/models/{name}/expire                 drop ids not written for the expiry time
//! gRPC  inference.GRPCInferenceService: ServerLive, ServerReady, ModelReady, ServerMetadata,
//!       ModelMetadata, ModelInfer (proto/inference.proto)
//! ```
//!
//! Both protocols decode into the same request ([`oip::assemble`]), share one batcher and one
//! set of metrics, and answer the same scores bit for bit.
//!
//! A reload builds a new engine beside the old one and swaps them: a request is scored wholly by
//! the old model or wholly by the new one (its answer's `model_version` says which), and none is
//! dropped (the old batcher finishes what it holds). Expiry of hashed ids runs on a timer
//! (`expire_every`) and on demand.
//!
//! A bad request is a 400 / INVALID_ARGUMENT naming the tensor, element and rule; a full queue a
//! 429 / RESOURCE_EXHAUSTED; a request past the timeout a 504 / DEADLINE_EXCEEDED; a body beyond
//! the size limit a 413. The server stops on SIGINT or SIGTERM after answering the requests it
//! has (graceful shutdown), on both protocols.

pub mod grpc;
mod http;
mod metrics;
pub mod oip;

pub use grpc::proto;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use metrics::{Metrics, Protocol};
use oip::InferRequest;
use pepnet_core::batcher::{Batcher, BatcherOptions};
use pepnet_core::cache::unix_now;
use pepnet_core::engine::{Engine, EngineOptions};
use pepnet_core::error::{Error, Result};
use pepnet_core::gpu::GpuContext;
use pepnet_core::model::Model;
use pepnet_core::spec::ModelSpec;

/// How [`serve`] runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The model's name in URLs (`/v2/models/{name}`) and gRPC requests.
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
        }
    }
}

/// Where a started server listens.
#[derive(Debug, Clone, Copy)]
pub struct Listening {
    pub http: SocketAddr,
    pub grpc: Option<SocketAddr>,
}

/// The model being served: a reload replaces it whole.
struct Served {
    spec: ModelSpec,
    batcher: Batcher,
    version: String,
}

/// What both protocols' handlers share.
struct App {
    name: String,
    max_body_bytes: usize,
    model_dir: PathBuf,
    ctx: Arc<GpuContext>,
    engine_options: EngineOptions,
    batcher_options: BatcherOptions,
    served: RwLock<Arc<Served>>,
    reloads: AtomicU64,
    timeout: Duration,
    metrics: Metrics,
}

/// Why a request was not scored, in terms both protocols map to their codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    BadRequest,
    UnknownModel,
    Overloaded,
    Timeout,
    Internal,
}

/// A request that was not scored: why, and the message for the client.
struct Refused(Refusal, String);

/// A request scored: the model that scored it, the request and its scores.
struct Scored {
    served: Arc<Served>,
    request: InferRequest,
    scores: Vec<f32>,
}

impl App {
    fn current(&self) -> Arc<Served> {
        self.served
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether `name` is the model served, and `version` its version (empty: any).
    fn check_model(&self, name: &str, version: &str) -> std::result::Result<(), Refused> {
        if name != self.name {
            return Err(Refused(
                Refusal::UnknownModel,
                format!("unknown model '{name}'; this server serves '{}'", self.name),
            ));
        }
        let served = self.current();
        match version.is_empty() || version == served.version {
            true => Ok(()),
            false => Err(Refused(
                Refusal::UnknownModel,
                format!(
                    "model '{name}' version '{version}' is not served; the version served is '{}'",
                    served.version
                ),
            )),
        }
    }

    /// Decodes a request against the model served now and scores it through the batcher; the
    /// same path for both protocols: `model` is the name and version asked for (empty: any),
    /// `deadline` the client's, which caps the server's timeout.
    async fn infer(
        &self,
        protocol: Protocol,
        model: (&str, &str),
        deadline: Option<Duration>,
        decode: impl FnOnce(&ModelSpec) -> std::result::Result<InferRequest, String>,
    ) -> std::result::Result<Scored, Refused> {
        let start = Instant::now();
        let result = self.infer_timed(model, deadline, decode).await;
        let refusal = result.as_ref().err().map(|Refused(r, _)| *r);
        self.metrics.count(protocol, refusal);
        match &result {
            Ok(scored) => self
                .metrics
                .answered(scored.request.batch.len(), start.elapsed()),
            Err(Refused(Refusal::Internal, message)) => {
                tracing::warn!(?protocol, error = %message, "request failed")
            }
            Err(Refused(refusal, message)) => {
                tracing::debug!(?protocol, ?refusal, error = %message, "request refused")
            }
        }
        result
    }

    async fn infer_timed(
        &self,
        (name, version): (&str, &str),
        deadline: Option<Duration>,
        decode: impl FnOnce(&ModelSpec) -> std::result::Result<InferRequest, String>,
    ) -> std::result::Result<Scored, Refused> {
        self.check_model(name, "")?;
        // One model for the whole request, even if a reload swaps it meanwhile.
        let served = self.current();
        if !version.is_empty() && version != served.version {
            return Err(Refused(
                Refusal::UnknownModel,
                format!(
                    "model '{name}' version '{version}' is not served; the version served is '{}'",
                    served.version
                ),
            ));
        }
        let request = decode(&served.spec).map_err(|m| Refused(Refusal::BadRequest, m))?;
        let timeout = deadline.map_or(self.timeout, |d| d.min(self.timeout));
        let pending = served
            .batcher
            .submit(request.batch.clone(), Some(Instant::now() + timeout))
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
            scores,
        })
    }

    /// Loads the model directory again into a new engine and swaps it in; requests already
    /// given to the old one finish there.
    fn reload(&self) -> Result<String> {
        let version = (self.reloads.fetch_add(1, Ordering::SeqCst) + 2).to_string();
        let served = load(
            &self.ctx,
            &self.model_dir,
            &self.engine_options,
            &self.batcher_options,
            version.clone(),
        )?;
        *self.served.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(served);
        self.metrics.reloads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(version = %version, dir = %self.model_dir.display(), "model reloaded");
        Ok(version)
    }

    /// Drops the hashed ids of the model served that were not written for the update policy's
    /// expiry time; returns how many.
    fn expire(&self) -> Result<usize> {
        let expired = self.current().batcher.engine().expire(unix_now())?;
        self.metrics
            .expired
            .fetch_add(expired as u64, Ordering::Relaxed);
        if expired > 0 {
            tracing::info!(expired, "expired ids not written for the expiry time");
        }
        Ok(expired)
    }
}

/// The refusal for an error the batcher or engine returned.
fn refusal(e: Error) -> Refused {
    let kind = match &e {
        Error::Overloaded(_) => Refusal::Overloaded,
        Error::DeadlineExceeded(_) => Refusal::Timeout,
        Error::Samples(_) | Error::Batch(_) | Error::Input { .. } => Refusal::BadRequest,
        _ => Refusal::Internal,
    };
    Refused(kind, e.to_string())
}

fn load(
    ctx: &Arc<GpuContext>,
    dir: &std::path::Path,
    engine_options: &EngineOptions,
    batcher_options: &BatcherOptions,
    version: String,
) -> Result<Served> {
    let model = Model::load(dir)?;
    let engine = Engine::new(
        ctx.clone(),
        &model,
        &EngineOptions {
            batch_invariant: true,
            ..engine_options.clone()
        },
    )?;
    Ok(Served {
        spec: model.spec,
        batcher: Batcher::new(Arc::new(engine), batcher_options.clone())?,
        version,
    })
}

/// What pepnet's routes and gRPC service share: the served model (its engine and batcher,
/// swapped whole on a reload), its name, the request timeout and the metrics. Build one, then
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
pub struct ServingState(Arc<App>);

impl ServingState {
    /// Loads the model directory `model_dir` and builds its engine (batch-invariant, whatever
    /// `engine_options` say: see [`Batcher`]) and batcher on `ctx`. `options`' name, batcher,
    /// timeout and body limit apply; its addresses and expiry timer are [`serve`]'s.
    pub fn new(
        ctx: Arc<GpuContext>,
        model_dir: PathBuf,
        engine_options: EngineOptions,
        options: &ServeOptions,
    ) -> Result<Self> {
        let served = load(
            &ctx,
            &model_dir,
            &engine_options,
            &options.batcher,
            "1".into(),
        )?;
        Ok(Self(Arc::new(App {
            name: options.name.clone(),
            model_dir,
            ctx,
            engine_options,
            batcher_options: options.batcher.clone(),
            served: RwLock::new(Arc::new(served)),
            reloads: AtomicU64::new(0),
            timeout: options.timeout,
            metrics: Metrics::default(),
            max_body_bytes: options.max_body_bytes,
        })))
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

    /// Reloads the model directory (what `POST /v2/repository/models/{name}/load` and SIGHUP
    /// do): requests in flight finish on the old model. Returns the new version.
    pub fn reload(&self) -> Result<String> {
        self.0.reload()
    }

    /// Drops hashed ids not written for the update policy's expiry time; returns how many.
    pub fn expire(&self) -> Result<usize> {
        self.0.expire()
    }
}

/// Serves the model directory `model_dir` on `ctx` until SIGINT or SIGTERM; `on_listening` gets
/// the bound addresses once the server accepts connections. The engine is built
/// batch-invariant whatever `engine_options` say (see [`Batcher`]). Logs go through `tracing`:
/// install a subscriber to see them.
pub fn serve(
    ctx: Arc<GpuContext>,
    model_dir: PathBuf,
    engine_options: EngineOptions,
    options: ServeOptions,
    on_listening: impl FnOnce(Listening),
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Batch(format!("cannot start the server's runtime: {e}")))?;
    let app = ServingState::new(ctx, model_dir, engine_options, &options)?.0;
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
        let grpc = grpc_listener.as_ref().map(|(_, bound)| *bound);
        tracing::info!(
            model = %app.name,
            version = %app.current().version,
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

/// SIGHUP reloads the model directory, as the load endpoint does.
fn reload_on_hangup(app: Arc<App>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            return;
        };
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                let app = app.clone();
                match tokio::task::spawn_blocking(move || app.reload()).await {
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
fn expire_on_timer(app: Arc<App>, every: Duration, stopped: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; the first expiry comes one period after the start.
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = wait_for(stopped.clone()) => return,
            }
            let worker = app.clone();
            match tokio::task::spawn_blocking(move || worker.expire()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "expiry failed"),
                Err(e) => tracing::error!(error = %e, "expiry failed"),
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
