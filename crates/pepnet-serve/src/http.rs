//! The HTTP/JSON side of the server (axum): the Open Inference Protocol's REST endpoints, the
//! admin endpoints (reload, rows, expiry) and `/metrics`.

use std::future::Future;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use serde_json::json;
use tower_http::compression::CompressionLayer;
use tower_http::decompression::RequestDecompressionLayer;

use super::metrics::{render, Protocol};
use super::{config, oip, stats, App, AppRef, Refusal, Refused};
use pepnet_core::error::Result;

/// Serves HTTP on `listener` until `stop` completes, then answers what it holds.
pub(super) async fn serve(
    app: AppRef,
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

/// The Open Inference Protocol's HTTP routes over `app`, bodies limited to `max_body_bytes`
/// (after decompression).
pub(super) fn router(app: AppRef, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route(
            "/v2/health/live",
            get(|| async { Json(json!({"live": true})) }),
        )
        // Ready once serving: the models are loaded before the server listens.
        .route(
            "/v2/health/ready",
            get(|| async { Json(json!({"ready": true})) }),
        )
        .route("/v2/models/stats", get(all_statistics))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/config", get(model_config))
        .route("/v2/models/{name}/stats", get(statistics))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready),
        )
        .route(
            "/v2/models/{name}/versions/{version}/config",
            get(model_config),
        )
        .route(
            "/v2/models/{name}/versions/{version}/stats",
            get(statistics),
        )
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{name}/load", post(load))
        .route("/v2/repository/models/{name}/unload", post(unload))
        .route("/v2/models/{name}/rows", post(update_rows))
        .route("/v2/models/{name}/expire", post(expire))
        .route("/v2/models/{name}/cache", get(cache_stats))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        // gzip or deflate bodies in (Content-Encoding), and out when the client accepts them.
        .layer(RequestDecompressionLayer::new())
        .layer(CompressionLayer::new())
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            refuse_declared_oversize(max_body_bytes, request, next)
        }))
        // Outermost: every answer to an inference request is counted by its status, whoever
        // gave it (a handler, the size limits, the decompression layer).
        .layer(middleware::from_fn_with_state(app.clone(), count_status))
        .with_state(app)
}

/// Counts an inference request's answer by its status code.
async fn count_status(State(app): State<AppRef>, request: Request, next: Next) -> Response {
    let inference = request.uri().path().ends_with("/infer");
    let response = next.run(request).await;
    if inference {
        app.metrics
            .count(Protocol::Http, response.status().as_str());
    }
    response
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
        Refusal::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
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

async fn model_metadata(State(app): State<AppRef>, Path(m): Path<ModelPath>) -> Response {
    let (served, loaded) = match app.served(&m.name, &m.version).and_then(|s| {
        let loaded = app.loaded(&m.name)?;
        Ok((s, loaded))
    }) {
        Ok(found) => found,
        Err(r) => return refused(r),
    };
    let versions: Vec<&str> = loaded.versions.iter().map(|v| v.version.as_str()).collect();
    Json(oip::metadata(&served.spec, &served.name, &versions)).into_response()
}

async fn model_ready(State(app): State<AppRef>, Path(m): Path<ModelPath>) -> Response {
    match app.check_model(&m.name, &m.version) {
        Ok(()) => Json(json!({"name": m.name, "ready": true})).into_response(),
        Err(r) => refused(r),
    }
}

/// The model's configuration in Triton's shape (the model configuration extension).
async fn model_config(State(app): State<AppRef>, Path(m): Path<ModelPath>) -> Response {
    match app.config(&m.name, &m.version) {
        Ok(c) => Json(config::to_json(&c)).into_response(),
        Err(r) => refused(r),
    }
}

/// The statistics extension: every model's versions served.
async fn all_statistics(State(app): State<AppRef>) -> Response {
    match app.statistics("", "") {
        Ok(s) => Json(stats::to_json(&s)).into_response(),
        Err(r) => refused(r),
    }
}

/// The statistics extension: a model's versions served, or one version's.
async fn statistics(State(app): State<AppRef>, Path(m): Path<ModelPath>) -> Response {
    match app.statistics(&m.name, &m.version) {
        Ok(s) => Json(stats::to_json(&s)).into_response(),
        Err(r) => refused(r),
    }
}

async fn infer(
    State(app): State<AppRef>,
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
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("Inference-Header-Content-Length must be a byte count, found {v:?}"),
                );
            }
        },
    };
    match app
        .infer((&m.name, &m.version), None, |spec| {
            oip::decode_http(&body, header_length, spec)
        })
        .await
    {
        Ok(s) if s.request.binary_outputs.contains(&true) => {
            let (body, header_length) = oip::binary_response(
                &s.served.spec,
                &s.served.name,
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
            &s.served.name,
            &s.served.version,
            &s.request,
            &s.scores,
        ))
        .into_response(),
        Err(r) => refused(r),
    }
}

/// Runs a blocking admin action off the async workers; its error is the client's (400): a model
/// directory that does not load, rows that do not fit. Whatever failed leaves the models served
/// as they were.
async fn admin<T: serde::Serialize + Send + 'static>(
    app: &AppRef,
    action: impl FnOnce(&App) -> Result<T> + Send + 'static,
) -> Response {
    let worker = app.clone();
    match tokio::task::spawn_blocking(move || action(&worker)).await {
        Ok(Ok(answer)) => Json(answer).into_response(),
        // The store not answering is the server's side, maybe passing: 503, not the client's 400.
        Ok(Err(e @ pepnet_core::Error::Store(_))) => {
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The repository extension's index: `{"ready": true}` in the body lists only the models
/// ready to score.
async fn repository_index(State(app): State<AppRef>, body: Bytes) -> Response {
    let ready = match parse_body(&body) {
        Ok(b) => match b.get("ready") {
            None => false,
            Some(v) => match v.as_bool() {
                Some(r) => r,
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("ready: expected true or false, found {v}"),
                    )
                }
            },
        },
        Err(r) => return *r,
    };
    let index: Vec<serde_json::Value> = app
        .index(ready)
        .into_iter()
        .map(|e| {
            let mut entry = json!({"name": e.name, "state": e.state});
            if !e.version.is_empty() {
                entry["version"] = json!(e.version);
            }
            if !e.reason.is_empty() {
                entry["reason"] = json!(e.reason);
            }
            entry
        })
        .collect();
    Json(index).into_response()
}

/// A repository request's optional JSON body: nothing, or an object whose `parameters` (which
/// Triton uses to override a configuration or files) are refused rather than ignored.
fn parse_body(body: &[u8]) -> std::result::Result<serde_json::Value, Box<Response>> {
    parse_repository_body(body).map_err(|message| Box::new(error(StatusCode::BAD_REQUEST, message)))
}

fn parse_repository_body(body: &[u8]) -> std::result::Result<serde_json::Value, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let Some(object) = value.as_object() else {
        return Err("body: expected a JSON object".into());
    };
    if let Some(p) = object.get("parameters").and_then(|p| p.as_object()) {
        // unload_dependents (what tritonclient sends) concerns ensembles, which pepnet has not.
        if let Some(key) = p.keys().find(|k| *k != "unload_dependents") {
            return Err(format!(
                "parameters.{key}: load and unload parameters are not supported; the \
                 repository's files are what is loaded"
            ));
        }
    }
    Ok(value)
}

/// Loads (or reloads) a model from the repository (the model directory, for `--model`): a new
/// engine per version beside the old, swapped in whole.
async fn load(State(app): State<AppRef>, Path(name): Path<String>, body: Bytes) -> Response {
    if let Err(r) = parse_body(&body) {
        return *r;
    }
    if !app.source.knows(&name) {
        return refused(Refused(
            Refusal::UnknownModel,
            format!("unknown model '{name}': not in the model repository"),
        ));
    }
    admin(&app, move |app| {
        let versions = app.load(&name)?;
        let newest = versions.last().cloned().unwrap_or_default();
        Ok(json!({"model_name": name, "model_version": newest, "versions": versions}))
    })
    .await
}

/// Stops serving a model; requests already queued finish on it.
async fn unload(State(app): State<AppRef>, Path(name): Path<String>, body: Bytes) -> Response {
    if let Err(r) = parse_body(&body) {
        return *r;
    }
    match app.unload(&name) {
        Ok(()) => Json(json!({"model_name": name, "state": "UNAVAILABLE"})).into_response(),
        Err(r) => refused(r),
    }
}

/// New rows for hashed features, as a safetensors body (`emb.<f>.ids` beside `emb.<f>`, the
/// format `pepnet apply-rows` reads): written to the store and the cache of every version of
/// the model served, under the update policy (a write beyond an id's cap for the window is
/// skipped and counted).
async fn update_rows(State(app): State<AppRef>, Path(name): Path<String>, body: Bytes) -> Response {
    let loaded = match app.loaded(&name) {
        Ok(l) => l,
        Err(r) => return refused(r),
    };
    admin(&app, move |_| {
        let (mut rows, mut applied, mut capped) = (0, 0, 0);
        for served in &loaded.versions {
            let updates = pepnet_core::store::read_rows(&body, "the request body", &served.spec)?;
            let now = pepnet_core::cache::unix_now();
            rows = 0;
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
        }
        tracing::info!(model = %name, rows, applied, capped, "rows updated");
        Ok(json!({"rows": rows, "applied": applied, "capped": capped}))
    })
    .await
}

/// Runs expiry now, in every model served (it also runs on the server's timer).
async fn expire(State(app): State<AppRef>, Path(name): Path<String>) -> Response {
    if let Err(r) = app.check_model(&name, "") {
        return refused(r);
    }
    admin(&app, |app| Ok(json!({"expired": app.expire()?}))).await
}

/// The embedding cache's counters of the model's newest version as JSON (`null` for a model
/// without hashed features).
async fn cache_stats(State(app): State<AppRef>, Path(name): Path<String>) -> Response {
    match app.served(&name, "") {
        Ok(served) => Json(served.batcher.engine().cache_stats()).into_response(),
        Err(r) => refused(r),
    }
}

async fn metrics(State(app): State<AppRef>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(&app),
    )
        .into_response()
}
