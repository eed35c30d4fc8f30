//! The library API as a service would use it: load a model directory once, build one engine,
//! and score columnar batches from several threads at once.
//!
//!     cargo run --release --example score_batch [-- MODEL_DIR]

use std::sync::Arc;

use pepnet::spec::FeatureKind;
use pepnet::{Batch, Column, Engine, EngineOptions, GpuContext, Model};

fn main() -> pepnet::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "examples/kuairand".into());
    let model = Model::load(dir.as_ref())?;
    // Picks the adapter named by $PEPNET_ADAPTER, else the high-performance one.
    let ctx = GpuContext::new(None)?;
    println!("adapter: {} ({:?})", ctx.info.name, ctx.info.backend);
    let engine = Arc::new(Engine::new(
        ctx,
        &model,
        &EngineOptions {
            workspaces: 2,
            ..Default::default()
        },
    )?);

    // Four "requests", each a batch of 5 impressions, scored concurrently.
    let handles: Vec<_> = (0..4u64)
        .map(|request| {
            let engine = Arc::clone(&engine);
            let batch = make_batch(&model, request, 5);
            std::thread::spawn(move || (request, engine.score(&batch)))
        })
        .collect();
    for handle in handles {
        let (request, scores) = handle.join().expect("scoring thread");
        let scores = scores?;
        let tasks = &model.spec.tasks;
        println!("request {request}:");
        for (i, p) in scores.chunks_exact(tasks.len()).enumerate() {
            let line: Vec<String> = tasks
                .iter()
                .zip(p)
                .map(|(t, p)| format!("{t} {p:.4}"))
                .collect();
            println!("  impression {i}: {}", line.join(", "));
        }
    }
    Ok(())
}

/// A batch with one column per feature, in spec order: ids spread over each vocabulary, lists
/// of varying length, and dense values in a plausible range.
fn make_batch(model: &Model, request: u64, n: usize) -> Batch {
    let columns = model
        .spec
        .features
        .iter()
        .enumerate()
        .map(|(f, feature)| {
            let id = |i: usize| {
                (request * 7919 + i as u64 * 104_729 + f as u64 * 31) % feature.rows() as u64
            };
            match feature.kind {
                FeatureKind::Sparse => Column::Sparse((0..n).map(id).collect()),
                FeatureKind::MultiHot => {
                    let max = feature.max_len.unwrap_or(1);
                    let mut offsets = vec![0];
                    let mut ids = Vec::new();
                    for i in 0..n {
                        ids.extend((0..(i % (max + 1))).map(|j| id(i * 13 + j)));
                        offsets.push(ids.len());
                    }
                    Column::MultiHot { offsets, ids }
                }
                FeatureKind::Dense => Column::Dense(
                    (0..n)
                        .map(|i| 0.1 + 0.05 * ((i + request as usize) % 9) as f32)
                        .collect(),
                ),
            }
        })
        .collect();
    Batch::new(columns)
}
