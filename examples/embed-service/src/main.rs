//! A service of its own that embeds pepnet, on its own tokio runtime:
//! - it opens its own wgpu device (as a renderer or another model would) and hands it to
//!   pepnet (`GpuContext::adopt_from`), so one device holds everybody's buffers;
//! - its own handler, `POST /rank`, scores through the async API (`Engine::score_async`),
//!   which never blocks an executor thread;
//! - pepnet's Open Inference Protocol routes are mounted under `/ranker`, beside its own
//!   (`/ranker/v2/models/pepnet/infer`, `/ranker/v2/health/ready`, `/ranker/metrics`, ...).
//!
//! ```sh
//! cargo run --release -p embed-service -- examples/kuairand 127.0.0.1:8080
//! ```
//!
//! It prints `listening on http://ADDR` once it accepts connections (port 0: any free one).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use pepnet_core::{Engine, EngineOptions, GpuContext, Model, ModelSpec};
use pepnet_serve::{ServeOptions, ServingState};

/// What the service's own handlers share.
#[derive(Clone)]
struct Ranker {
    engine: Arc<Engine>,
    spec: Arc<ModelSpec>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model_dir = args.next().unwrap_or_else(|| "examples/kuairand".into());
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".into());

    // The service's own device, on the adapter it chose, with that adapter's limits.
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        })
        .await?;
    let (device, queue) = adapter
        .request_device(&wgpu::DeviceDescriptor {
            label: Some("embed-service"),
            required_limits: adapter.limits(),
            ..Default::default()
        })
        .await?;
    let ctx = GpuContext::adopt_from(&adapter, device, queue)?;

    // Batch-invariant, as `pepnet score` and `pepnet serve` run: a row's scores do not depend
    // on the batch it is scored in.
    let model = Model::load(model_dir.as_ref())?;
    let options = EngineOptions {
        batch_invariant: true,
        ..Default::default()
    };
    let ranker = Ranker {
        engine: Arc::new(Engine::new(ctx.clone(), &model, &options)?),
        spec: Arc::new(model.spec),
    };
    // pepnet's server, as parts: its routes on the same device and runtime.
    let oip = ServingState::new(ctx, model_dir.into(), options, &ServeOptions::default())?;

    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/rank", post(rank))
        .with_state(ranker)
        .nest("/ranker", oip.router());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

/// Scores an Open Inference Protocol request body (one tensor per feature) and answers
/// `{"scores": [[p_task, ...], ...]}`, a row per sample.
async fn rank(
    State(ranker): State<Ranker>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, (StatusCode, String)> {
    let request =
        pepnet_serve::oip::decode(&body, &ranker.spec).map_err(|e| (StatusCode::BAD_REQUEST, e))?;
    let scores = ranker
        .engine
        .score_async(request.batch)
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let rows: Vec<&[f32]> = scores.chunks_exact(ranker.spec.tasks.len()).collect();
    Ok(Json(json!({ "scores": rows })))
}
