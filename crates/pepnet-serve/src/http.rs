//! The HTTP/JSON side of the server (axum): the Open Inference Protocol's REST endpoints, the
//! admin endpoints (reload, rows, expiry) and `/metrics`.

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use serde_json::json;

use super::metrics::{render, Protocol};
use super::{oip, App, Refusal, Refused};
use pepnet_core::error::Result;

/// Serves HTTP on `listener` until `stop` completes, then answers what it holds.
pub(super) async fn serve(
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    max_body_bytes: usize,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // TCP_NODELAY: a response goes out as soon as it is written, not after Nagle's wait for
    // the client's acknowledgement of the previous segment.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(app, max_body_bytes))
        .with_graceful_shutdown(stop)
        .await
}

/// The Open Inference Protocol's HTTP routes over `app`, bodies limited to `max_body_bytes`.
pub(super) fn router(app: Arc<App>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route(
            "/v2/health/live",
            get(|| async { Json(json!({"live": true})) }),
        )
        // Ready once serving: the model is loaded before the server listens.
        .route(
            "/v2/health/ready",
            get(|| async { Json(json!({"ready": true})) }),
        )
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready),
        )
        .route("/v2/models/{name}/versions/{version}/infer", post(infer))
        .route("/v2/repository/models/{name}/load", post(reload))
        .route("/v2/models/{name}/rows", post(update_rows))
        .route("/v2/models/{name}/expire", post(expire))
        .route("/v2/models/{name}/cache", get(cache_stats))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            refuse_declared_oversize(max_body_bytes, request, next)
        }))
        .with_state(app)
}

/// Answers 413 from the headers when a request declares a body beyond the limit, before a byte
/// of it is read: the client learns at once instead of uploading it all (or having the connection
/// closed under its upload). Bodies without a length (chunked) meet `DefaultBodyLimit` as they
/// stream.
async fn refuse_declared_oversize(max_body_bytes: usize, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(length) if length > max_body_bytes as u64 => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body declares {length} bytes (Content-Length); \
                 the limit is {max_body_bytes} (--max-body-bytes)"
            ),
        ),
        _ => next.run(request).await,
    }
}

fn status(refusal: Refusal) -> StatusCode {
    match refusal {
        Refusal::BadRequest => StatusCode::BAD_REQUEST,
        Refusal::UnknownModel => StatusCode::NOT_FOUND,
        Refusal::Overloaded => StatusCode::TOO_MANY_REQUESTS,
        Refusal::Timeout => StatusCode::GATEWAY_TIMEOUT,
        Refusal::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn refused(Refused(refusal, message): Refused) -> Response {
    error(status(refusal), message)
}

/// The model a path names: `{name}`, and `{version}` on the versioned paths (absent: the
/// version served).
#[derive(serde::Deserialize)]
struct ModelPath {
    name: String,
    #[serde(default)]
    version: String,
}

/// The server's metadata (`GET /v2`): its name, version and the protocol extensions it has.
async fn server_metadata() -> Response {
    Json(oip::server_metadata()).into_response()
}

async fn model_metadata(State(app): State<Arc<App>>, Path(m): Path<ModelPath>) -> Response {
    if let Err(r) = app.check_model(&m.name, &m.version) {
        return refused(r);
    }
    let served = app.current();
    Json(oip::metadata(&served.spec, &app.name, &served.version)).into_response()
}

async fn model_ready(State(app): State<Arc<App>>, Path(m): Path<ModelPath>) -> Response {
    match app.check_model(&m.name, &m.version) {
        Ok(()) => Json(json!({"name": m.name, "ready": true})).into_response(),
        Err(r) => refused(r),
    }
}

async fn infer(
    State(app): State<Arc<App>>,
    Path(m): Path<ModelPath>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // The binary tensor data extension: a JSON header of this many bytes, then raw tensors.
    let header_length = match headers.get(oip::HEADER_LENGTH) {
        None => None,
        Some(v) => match v.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok()) {
            Some(n) => Some(n),
            None => {
                app.metrics.count(Protocol::Http, Some(Refusal::BadRequest));
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("Inference-Header-Content-Length must be a byte count, found {v:?}"),
                );
            }
        },
    };
    match app
        .infer(Protocol::Http, (&m.name, &m.version), None, |spec| {
            oip::decode_http(&body, header_length, spec)
        })
        .await
    {
        Ok(s) if s.request.binary_outputs.contains(&true) => {
            let (body, header_length) = oip::binary_response(
                &s.served.spec,
                &app.name,
                &s.served.version,
                &s.request,
                &s.scores,
            );
            (
                [
                    (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                    (
                        HeaderName::from_static(oip::HEADER_LENGTH),
                        header_length.to_string(),
                    ),
                ],
                body,
            )
                .into_response()
        }
        Ok(s) => Json(oip::response(
            &s.served.spec,
            &app.name,
            &s.served.version,
            &s.request,
            &s.scores,
        ))
        .into_response(),
        Err(r) => refused(r),
    }
}

/// Runs a blocking admin action off the async workers; its error is the client's (400): a model
/// directory that does not load, rows that do not fit. Whatever failed leaves the model served
/// as it was.
async fn admin<T: serde::Serialize + Send + 'static>(
    app: &Arc<App>,
    name: &str,
    action: impl FnOnce(&App) -> Result<T> + Send + 'static,
) -> Response {
    if let Err(r) = app.check_model(name, "") {
        return refused(r);
    }
    let worker = app.clone();
    match tokio::task::spawn_blocking(move || action(&worker)).await {
        Ok(Ok(answer)) => Json(answer).into_response(),
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn reload(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    admin(&app, &name, |app| {
        let version = app.reload().inspect_err(
            |e| tracing::error!(error = %e, "reload failed, still serving the old model"),
        )?;
        Ok(json!({"model_name": app.name, "model_version": version}))
    })
    .await
}

/// New rows for hashed features, as a safetensors body (`emb.<f>.ids` beside `emb.<f>`, the
/// format `pepnet apply-rows` reads): written to the store and the cache of the model served,
/// under the update policy (a write beyond an id's cap for the window is skipped and counted).
async fn update_rows(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    admin(&app, &name, move |app| {
        let served = app.current();
        let updates = pepnet_core::store::read_rows(&body, "the request body", &served.spec)?;
        let now = pepnet_core::cache::unix_now();
        let (mut rows, mut applied, mut capped) = (0, 0, 0);
        for (f, update) in updates {
            let feature = &served.spec.features[f].name;
            let outcome =
                served
                    .batcher
                    .engine()
                    .update_rows(feature, &update.ids, &update.rows, now)?;
            rows += update.ids.len();
            applied += outcome.applied;
            capped += outcome.capped;
        }
        tracing::info!(rows, applied, capped, "rows updated");
        Ok(json!({"rows": rows, "applied": applied, "capped": capped}))
    })
    .await
}

/// Runs expiry now (it also runs on the server's timer).
async fn expire(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    admin(&app, &name, |app| Ok(json!({"expired": app.expire()?}))).await
}

/// The embedding cache's counters as JSON (`null` for a model without hashed features).
async fn cache_stats(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    admin(&app, &name, |app| {
        Ok(app.current().batcher.engine().cache_stats())
    })
    .await
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(&app),
    )
        .into_response()
}
