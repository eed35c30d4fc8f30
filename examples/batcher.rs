//! The dynamic batcher as an online service would use it: many threads, each submitting small
//! requests (one user's candidates), coalesced into GPU batches; each caller gets its own
//! scores back, bit-identical to scoring its request alone.
//!
//!     cargo run --release --example batcher [-- MODEL_DIR]

use std::sync::Arc;
use std::time::{Duration, Instant};

use pepnet::{Batcher, BatcherOptions, Engine, EngineOptions, GpuContext, Model};

fn main() -> pepnet::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "examples/kuairand".into());
    let model = Model::load(dir.as_ref())?;
    let ctx = GpuContext::new(None)?;
    println!("adapter: {} ({:?})", ctx.info.name, ctx.info.backend);
    // Batch-invariant: every batch runs on the same kernels, so a request's scores never
    // depend on what it was merged with. One workspace per batch in flight.
    let engine = Arc::new(Engine::new(
        ctx,
        &model,
        &EngineOptions {
            workspaces: 2,
            batch_invariant: true,
            ..Default::default()
        },
    )?);
    let batcher = Arc::new(Batcher::new(
        engine,
        BatcherOptions {
            max_rows: 2048,
            max_delay: Duration::from_millis(2),
            in_flight: 2,
            ..Default::default()
        },
    )?);

    // 16 callers, 25 requests each of 1 to 100 candidates.
    let start = Instant::now();
    let callers: Vec<_> = (0..16u64)
        .map(|caller| {
            let (batcher, spec) = (batcher.clone(), model.spec.clone());
            std::thread::spawn(move || -> pepnet::Result<(usize, Vec<f64>)> {
                let (mut rows, mut latencies) = (0, Vec::new());
                for r in 0..25u64 {
                    let n = 1 + ((caller * 31 + r * 17) % 100) as usize;
                    let request = pepnet::synth::random_batch(&spec, n, caller * 1000 + r);
                    let sent = Instant::now();
                    // A request that waits past its deadline is not scored.
                    let deadline = Some(sent + Duration::from_secs(5));
                    let scores = batcher.score(request, deadline)?;
                    latencies.push(sent.elapsed().as_secs_f64() * 1e3);
                    rows += scores.len() / spec.n_tasks();
                }
                Ok((rows, latencies))
            })
        })
        .collect();
    let (mut rows, mut latencies) = (0, Vec::new());
    for c in callers {
        let (n, l) = c.join().expect("caller thread")?;
        rows += n;
        latencies.extend(l);
    }
    let seconds = start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!(
        "{} requests, {rows} rows in {seconds:.2} s: {:.0} rows/s; latency p50 {:.2} ms, p99 {:.2} ms",
        latencies.len(),
        rows as f64 / seconds,
        at(0.5),
        at(0.99)
    );
    Ok(())
}
