//! Online scoring over HTTP with the Open Inference Protocol (KServe v2, what Triton, Seldon
//! and KServe clients speak), requests coalesced by the [`Batcher`].
//!
//! ```text
//! GET  /v2/health/live, /v2/health/ready       200 once the model is loaded
//! GET  /v2/models/{name}, /v2/models/{name}/ready
//! POST /v2/models/{name}/infer                  JSON tensors in, one FP32 tensor per task out
//! GET  /metrics                                 Prometheus text
//! ```
//!
//! A bad request is a 400 naming the tensor, element and rule; a full queue a 429; a request
//! past the timeout a 504; a body beyond the size limit a 413. The server stops on SIGINT or
//! SIGTERM after answering the requests it has (graceful shutdown).

pub mod oip;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::batcher::{Batcher, BatcherOptions};
use crate::engine::Engine;
use crate::error::{Error, Result};
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

/// The model's version in responses and metadata.
const VERSION: &str = "1";

struct App {
    name: String,
    spec: ModelSpec,
    batcher: Batcher,
    timeout: Duration,
    metrics: Metrics,
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

/// Serves `engine` until SIGINT or SIGTERM; `on_listening` gets the bound address once the
/// server accepts connections. The engine must be batch-invariant (see [`Batcher`]).
pub fn serve(
    engine: Arc<Engine>,
    options: ServeOptions,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Batch(format!("cannot start the server's runtime: {e}")))?;
    let spec = engine.spec().clone();
    let app = Arc::new(App {
        name: options.name.clone(),
        spec,
        batcher: Batcher::new(engine, options.batcher.clone())?,
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
        let router = router(app.clone(), options.max_body_bytes);
        on_listening(bound);
        axum::serve(listener, router)
            .with_graceful_shutdown(stop_signal())
            .await
            .map_err(|e| Error::io(bound.to_string(), e))
    })
}

fn router(app: Arc<App>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(|| async { StatusCode::OK }))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
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
    Json(oip::metadata(&app.spec, &app.name, VERSION)).into_response()
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
    let request = match oip::decode(body, &app.spec) {
        Ok(r) => r,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let rows = request.batch.len();
    let deadline = Instant::now() + app.timeout;
    let pending = match app.batcher.submit(request.batch.clone(), Some(deadline)) {
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
        &app.spec, &app.name, VERSION, &request, &scores,
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
         pepnet_model_info{{name=\"{}\",version=\"{VERSION}\"}} 1\n",
        m.rows.load(Ordering::Relaxed),
        m.latency_us.load(Ordering::Relaxed) as f64 / 1e6,
        app.batcher.queued_rows(),
        app.name
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
