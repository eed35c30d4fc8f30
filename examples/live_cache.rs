//! Hashed ids through the GPU embedding cache, as a serving process would run them: one engine
//! scores requests from a thread while the main thread pushes fresh rows from a "trainer", then
//! expires ids that stopped being updated, and prints the cache's statistics.
//!
//!     cargo run --release --example live_cache

use std::sync::Arc;

use pepnet::cache::{CacheCapacity, CacheOptions, EvictionPolicy, UpdatePolicy};
use pepnet::{Batch, Column, Engine, EngineOptions, GpuContext, Model, ModelSpec};

const SPEC: &str = r#"{
  "embedding_dim": 8, "domain_feature": "tab", "tasks": ["click", "like"],
  "features": [
    {"name": "tab", "kind": "sparse", "vocab": 3, "roles": ["domain"]},
    {"name": "user_id", "kind": "sparse", "hashed": true, "roles": ["general", "prior"]},
    {"name": "video_id", "kind": "sparse", "hashed": true, "roles": ["general", "prior"]},
    {"name": "duration", "kind": "dense", "roles": ["general", "domain"]}
  ],
  "epnet": {"hidden": 16}, "ppnet": {"hidden": 16}, "towers": [32]
}"#;

/// A request of `n` impressions: hashed ids drawn from a few hundred users and videos.
fn request(seed: u64, n: usize) -> Batch {
    let id = |i: u64, salt: u64| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt) % 400 + (1 << 40);
    Batch::new(vec![
        Column::Sparse((0..n as u64).map(|i| (seed + i) % 3).collect()),
        Column::Sparse((0..n as u64).map(|i| id(seed * 31 + i, 1)).collect()),
        Column::Sparse((0..n as u64).map(|i| id(seed * 17 + i * 7, 2)).collect()),
        Column::Dense((0..n).map(|i| i as f32 * 0.1).collect()),
    ])
}

fn main() -> pepnet::Result<()> {
    let spec = ModelSpec::from_json(SPEC, "live_cache spec")?;
    // Fresh dense weights; hashed features start with no stored rows (all ids unknown).
    let model = Model::init(spec, 1).unwrap();
    let options = EngineOptions {
        workspaces: 2,
        cache: CacheOptions {
            capacity: CacheCapacity::Rows(256),
            policy: EvictionPolicy::TinyLfu,
            updates: UpdatePolicy {
                max_updates: Some(3),
                window_secs: 60,
                expire_after_secs: Some(600),
            },
            now: Some(0),
            ..Default::default()
        },
        ..Default::default()
    };
    let engine = Arc::new(Engine::new(GpuContext::new(None)?, &model, &options)?);

    let scorer = {
        let engine = engine.clone();
        std::thread::spawn(move || -> pepnet::Result<f32> {
            let mut last = 0.0;
            for r in 0..50 {
                last = engine.score(&request(r, 64))?[0];
            }
            Ok(last)
        })
    };
    // The "trainer": rows for 300 users, pushed while the other thread scores.
    let ids: Vec<u64> = (0..300).map(|i| i + (1 << 40)).collect();
    let rows: Vec<f32> = (0..300 * 8)
        .map(|i| ((i % 13) as f32 - 6.0) * 0.05)
        .collect();
    let outcome = engine.update_rows("user_id", &ids, &rows, 10)?;
    println!(
        "update: {} rows applied, {} capped",
        outcome.applied, outcome.capped
    );
    let last = scorer.join().expect("the scoring thread")?;
    println!("last click probability: {last:.4}");

    // The trainer rewrites half of them later; ten minutes after the first push, the other
    // half, which nobody rewrote, expire and read the default row again.
    engine.update_rows("user_id", &ids[..150], &rows[..150 * 8], 400)?;
    println!("expired: {}", engine.expire(700)?);
    let stats = engine.cache_stats().expect("the model has hashed features");
    println!(
        "cache ({}): {} of {} rows used, {} rows stored",
        stats.policy, stats.cached_rows, stats.capacity_rows, stats.store_rows
    );
    for s in stats.features.iter().chain([&stats.total]) {
        println!(
            "  {:<9} hits {:>5}  misses {:>5}  hit rate {:>5.1}%  evicted {:>4}  unknown {:>5}",
            s.feature,
            s.hits,
            s.misses,
            100.0 * s.hit_rate(),
            s.evictions,
            s.unknown
        );
    }
    Ok(())
}
