//! Online scoring over HTTP with the Open Inference Protocol (KServe v2, what Triton, Seldon
//! and KServe clients speak), requests coalesced by the [`Batcher`].
//!
//! ```text
//! GET  /v2/health/live, /v2/health/ready       200 once the model is loaded
//! GET  /v2/models/{name}, /v2/models/{name}/ready
//! POST /v2/models/{name}/infer                  JSON tensors in, one FP32 tensor per task out
//! GET  /metrics                                 Prometheus text
//! POST /v2/repository/models/{name}/load       reload the model directory (also on SIGHUP)
//! POST /v2/models/{name}/rows                   new rows for hashed features (safetensors)
//! ```
//!
//! A reload builds a new engine beside the old one and swaps them: a request is scored wholly by
//! the old model or wholly by the new one (its answer's `model_version` says which), and none is
//! dropped (the old batcher finishes what it holds).
//!
//! A bad request is a 400 naming the tensor, element and rule; a full queue a 429; a request
//! past the timeout a 504; a body beyond the size limit a 413. The server stops on SIGINT or
//! SIGTERM after answering the requests it has (graceful shutdown).

pub mod oip;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::batcher::{Batcher, BatcherOptions, BATCH_ROWS_BUCKETS, QUEUE_MS_BUCKETS};
use crate::engine::{Engine, EngineOptions};
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::model::Model;
use crate::spec::ModelSpec;

/// How [`serve`] runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The model's name in URLs (`/v2/models/{name}`).
    pub name: String,
    /// Where to listen for HTTP (port 0: any free port, printed on start).
    pub http: SocketAddr,
    pub batcher: BatcherOptions,
    /// The longest a request may take, queueing included (then 504).
    pub timeout: Duration,
    /// The largest request body accepted (then 413).
    pub max_body_bytes: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            name: "pepnet".into(),
            http: SocketAddr::from(([127, 0, 0, 1], 8000)),
            batcher: BatcherOptions::default(),
            timeout: Duration::from_secs(1),
            max_body_bytes: 16 << 20,
        }
    }
}

/// The model being served: a reload replaces it whole.
struct Served {
    spec: ModelSpec,
    batcher: Batcher,
    version: String,
}

struct App {
    name: String,
    model_dir: PathBuf,
    ctx: Arc<GpuContext>,
    engine_options: EngineOptions,
    batcher_options: BatcherOptions,
    served: RwLock<Arc<Served>>,
    reloads: AtomicU64,
    timeout: Duration,
    metrics: Metrics,
}

impl App {
    fn current(&self) -> Arc<Served> {
        self.served
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
        Ok(version)
    }
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

#[derive(Default)]
struct Metrics {
    /// Requests answered, by status: 200, 400, 404, 413, 429, 500, 504.
    by_status: [AtomicU64; 7],
    rows: AtomicU64,
    /// Microseconds spent answering successful requests.
    latency_us: AtomicU64,
}

const STATUSES: [u16; 7] = [200, 400, 404, 413, 429, 500, 504];

impl Metrics {
    fn count(&self, status: StatusCode) {
        if let Some(i) = STATUSES.iter().position(|&s| s == status.as_u16()) {
            self.by_status[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Serves the model directory `model_dir` on `ctx` until SIGINT or SIGTERM; `on_listening` gets
/// the bound address once the server accepts connections. The engine is built
/// batch-invariant whatever `engine_options` say (see [`Batcher`]).
pub fn serve(
    ctx: Arc<GpuContext>,
    model_dir: PathBuf,
    engine_options: EngineOptions,
    options: ServeOptions,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Batch(format!("cannot start the server's runtime: {e}")))?;
    let served = load(
        &ctx,
        &model_dir,
        &engine_options,
        &options.batcher,
        "1".into(),
    )?;
    let app = Arc::new(App {
        name: options.name.clone(),
        model_dir,
        ctx,
        engine_options,
        batcher_options: options.batcher.clone(),
        served: RwLock::new(Arc::new(served)),
        reloads: AtomicU64::new(0),
        timeout: options.timeout,
        metrics: Metrics::default(),
    });
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(options.http)
            .await
            .map_err(|e| Error::io(options.http.to_string(), e))?;
        let bound = listener
            .local_addr()
            .map_err(|e| Error::io(options.http.to_string(), e))?;
        reload_on_hangup(app.clone());
        let router = router(app.clone(), options.max_body_bytes);
        on_listening(bound);
        axum::serve(listener, router)
            .with_graceful_shutdown(stop_signal())
            .await
            .map_err(|e| Error::io(bound.to_string(), e))
    })
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
                let result = tokio::task::spawn_blocking(move || app.reload()).await;
                match result {
                    Ok(Ok(version)) => eprintln!("reloaded: model version {version}"),
                    Ok(Err(e)) => eprintln!("reload failed, still serving the old model: {e}"),
                    Err(e) => eprintln!("reload failed: {e}"),
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = app;
}

fn router(app: Arc<App>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(|| async { StatusCode::OK }))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/repository/models/{name}/load", post(reload))
        .route("/v2/models/{name}/rows", post(update_rows))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(app)
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

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn unknown_model(app: &App, name: &str) -> Option<Response> {
    (name != app.name).then(|| {
        error(
            StatusCode::NOT_FOUND,
            format!("unknown model '{name}'; this server serves '{}'", app.name),
        )
    })
}

async fn model_metadata(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    if let Some(r) = unknown_model(&app, &name) {
        return r;
    }
    let served = app.current();
    Json(oip::metadata(&served.spec, &app.name, &served.version)).into_response()
}

async fn reload(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    if let Some(r) = unknown_model(&app, &name) {
        return r;
    }
    let worker = app.clone();
    match tokio::task::spawn_blocking(move || worker.reload()).await {
        Ok(Ok(version)) => {
            Json(json!({"model_name": app.name, "model_version": version})).into_response()
        }
        // A model directory that does not load leaves the old model serving.
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// New rows for hashed features, as a safetensors body (`emb.<f>.ids` beside `emb.<f>`, the
/// format `pepnet apply-rows` reads): written to the store and the cache of the model served.
async fn update_rows(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    if let Some(r) = unknown_model(&app, &name) {
        return r;
    }
    let served = app.current();
    let result = tokio::task::spawn_blocking(move || -> Result<usize> {
        let updates = crate::store::read_rows(&body, "the request body", &served.spec)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut rows = 0;
        for (f, update) in updates {
            let feature = &served.spec.features[f].name;
            served
                .batcher
                .engine()
                .update_rows(feature, &update.ids, &update.rows, now)?;
            rows += update.ids.len();
        }
        Ok(rows)
    })
    .await;
    match result {
        Ok(Ok(rows)) => Json(json!({"rows": rows})).into_response(),
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn model_ready(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    unknown_model(&app, &name).unwrap_or_else(|| StatusCode::OK.into_response())
}

async fn infer(State(app): State<Arc<App>>, Path(name): Path<String>, body: Bytes) -> Response {
    let start = Instant::now();
    let response = answer(&app, &name, &body).await;
    app.metrics.count(response.status());
    if response.status() == StatusCode::OK {
        app.metrics
            .latency_us
            .fetch_add(start.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
    response
}

async fn answer(app: &App, name: &str, body: &[u8]) -> Response {
    if let Some(r) = unknown_model(app, name) {
        return r;
    }
    // One model for the whole request, even if a reload swaps it meanwhile.
    let served = app.current();
    let request = match oip::decode(body, &served.spec) {
        Ok(r) => r,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let rows = request.batch.len();
    let deadline = Instant::now() + app.timeout;
    let pending = match served.batcher.submit(request.batch.clone(), Some(deadline)) {
        Ok(p) => p,
        Err(e) => return refused(e),
    };
    let scores = match tokio::time::timeout(app.timeout, pending).await {
        Ok(Ok(scores)) => scores,
        Ok(Err(e)) => return refused(e),
        Err(_) => {
            return error(
                StatusCode::GATEWAY_TIMEOUT,
                format!("not scored within {} ms", app.timeout.as_millis()),
            )
        }
    };
    app.metrics.rows.fetch_add(rows as u64, Ordering::Relaxed);
    Json(oip::response(
        &served.spec,
        &app.name,
        &served.version,
        &request,
        &scores,
    ))
    .into_response()
}

/// The status for an error the batcher or engine returned.
fn refused(e: Error) -> Response {
    let status = match &e {
        Error::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
        Error::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
        Error::Samples(_) | Error::Batch(_) | Error::Input { .. } => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let m = &app.metrics;
    let served = app.current();
    let mut text = String::from(
        "# HELP pepnet_requests_total Inference requests answered, by HTTP status.\n\
         # TYPE pepnet_requests_total counter\n",
    );
    for (status, count) in STATUSES.iter().zip(&m.by_status) {
        text += &format!(
            "pepnet_requests_total{{code=\"{status}\"}} {}\n",
            count.load(Ordering::Relaxed)
        );
    }
    text += &format!(
        "# HELP pepnet_rows_total Samples scored.\n# TYPE pepnet_rows_total counter\n\
         pepnet_rows_total {}\n\
         # HELP pepnet_request_seconds_total Time spent answering successful requests.\n\
         # TYPE pepnet_request_seconds_total counter\n\
         pepnet_request_seconds_total {}\n\
         # HELP pepnet_queue_rows Samples waiting to be batched.\n# TYPE pepnet_queue_rows gauge\n\
         pepnet_queue_rows {}\n\
         # HELP pepnet_model_info The model served.\n# TYPE pepnet_model_info gauge\n\
         pepnet_model_info{{name=\"{}\",version=\"{}\"}} 1\n",
        m.rows.load(Ordering::Relaxed),
        m.latency_us.load(Ordering::Relaxed) as f64 / 1e6,
        served.batcher.queued_rows(),
        app.name,
        served.version
    );
    let stats = served.batcher.stats();
    for (metric, help, histogram, bounds) in [
        (
            "pepnet_batch_rows",
            "Samples per GPU batch.",
            &stats.batch_rows,
            &BATCH_ROWS_BUCKETS,
        ),
        (
            "pepnet_queue_milliseconds",
            "Time a request waited for its batch.",
            &stats.queue_ms,
            &QUEUE_MS_BUCKETS,
        ),
    ] {
        let (buckets, count, sum) = histogram.snapshot(bounds);
        text += &format!("# HELP {metric} {help}\n# TYPE {metric} histogram\n");
        for (bound, n) in buckets {
            let le = if bound.is_infinite() {
                "+Inf".to_string()
            } else {
                bound.to_string()
            };
            text += &format!("{metric}_bucket{{le=\"{le}\"}} {n}\n");
        }
        text += &format!("{metric}_sum {sum}\n{metric}_count {count}\n");
    }
    text += &format!(
        "# HELP pepnet_scoring_seconds_total Time scoring batches (upload, GPU, readback).\n\
         # TYPE pepnet_scoring_seconds_total counter\npepnet_scoring_seconds_total {}\n",
        stats.scoring_us.load(Ordering::Relaxed) as f64 / 1e6
    );
    if let Some(cache) = served.batcher.engine().cache_stats() {
        text += "# HELP pepnet_cache_hit_ratio Embedding cache hits over lookups, per hashed feature.\n\
                 # TYPE pepnet_cache_hit_ratio gauge\n";
        for f in &cache.features {
            text += &format!(
                "pepnet_cache_hit_ratio{{feature=\"{}\"}} {}\n",
                f.feature,
                f.hit_rate()
            );
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
