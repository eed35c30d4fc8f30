//! The cache benchmark: hit rates of the eviction policies on Zipf-distributed id streams
//! (replayed through the cache's own host state, so the figures are the engine's, and
//! machine-independent), and scoring throughput with the cache against the same model with
//! every row resident.

use std::time::Instant;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::batch::{Batch, Column};
use crate::cache::{CacheCapacity, CacheOptions, CacheState, EvictionPolicy};
use crate::engine::{Engine, EngineOptions};
use crate::error::Result;
use crate::gpu::GpuContext;
use crate::model::Model;
use crate::spec::ModelSpec;
use crate::store::{Key, MemoryStore};

/// Draws ranks 0..n with P(rank k) ∝ 1/(k+1)^s, by binary search in the cumulative weights.
pub struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    pub fn new(n: u64, s: f64) -> Self {
        let mut total = 0.0;
        let cumulative = (0..n)
            .map(|k| {
                total += 1.0 / ((k + 1) as f64).powf(s);
                total
            })
            .collect();
        Self { cumulative }
    }

    pub fn sample(&self, rng: &mut ChaCha8Rng) -> u64 {
        let total = *self.cumulative.last().expect("n ≥ 1");
        let u = rng.random_range(0.0..total);
        self.cumulative.partition_point(|&c| c <= u) as u64
    }
}

/// A rank's raw 64-bit id (splitmix64): hashed ids look nothing like ranks.
pub fn raw_id(rank: u64) -> u64 {
    let mut z = rank.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[derive(Debug, Clone, Serialize)]
pub struct HitRate {
    pub exponent: f64,
    /// Cache size as a share of the distinct ids.
    pub cache_share: f64,
    pub capacity_rows: u64,
    pub policy: String,
    /// Hits over lookups after the warm-up.
    pub hit_rate: f64,
}

/// One hashed sparse feature of width 1: all the hit-rate replay needs of a model.
fn one_feature_spec() -> ModelSpec {
    ModelSpec::from_json(
        r#"{"embedding_dim": 1, "domain_feature": "tab", "tasks": ["click"],
            "features": [
              {"name": "tab", "kind": "sparse", "vocab": 1, "roles": ["domain"]},
              {"name": "id", "kind": "sparse", "hashed": true, "roles": ["general"]}],
            "towers": []}"#,
        "cache benchmark spec",
    )
    .expect("a valid spec")
}

/// Replays `lookups` Zipf(`exponent`) ids over `distinct` ids, in batches of `batch` ids,
/// through a cache of `capacity` rows; the first fifth of the stream warms the cache up.
pub fn replay(
    distinct: u64,
    exponent: f64,
    capacity: u64,
    policy: EvictionPolicy,
    lookups: usize,
    batch: usize,
    seed: u64,
) -> Result<f64> {
    let spec = one_feature_spec();
    let mut store = MemoryStore::new(1);
    for rank in 0..distinct {
        crate::store::EmbeddingStore::put(&mut store, (1, raw_id(rank)), &[rank as f32]);
    }
    let options = CacheOptions {
        capacity: CacheCapacity::Rows(capacity),
        policy,
        now: Some(0),
        ..Default::default()
    };
    let mut cache = CacheState::host_only(&spec, &options, Box::new(store))?;
    let zipf = Zipf::new(distinct, exponent);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let warm_up = lookups / 5;
    let (mut seen, mut seen_at_warm_up, mut hits_at_warm_up) = (0, 0, 0);
    while seen < lookups {
        let keys: Vec<Key> = (0..batch)
            .map(|_| (1, raw_id(zipf.sample(&mut rng))))
            .collect();
        admit_split(&mut cache, &keys);
        seen += batch;
        if seen <= warm_up {
            (seen_at_warm_up, hits_at_warm_up) = (seen, cache.hits_of(1));
        }
    }
    let hits = cache.hits_of(1) - hits_at_warm_up;
    Ok(hits as f64 / (seen - seen_at_warm_up) as f64)
}

/// Admits `keys`, halving the batch as the engine does when it needs more rows than fit.
fn admit_split(cache: &mut CacheState, keys: &[Key]) {
    let resolved = cache.lookup_on_host(keys);
    if cache.admit(keys, &resolved).is_err() {
        let (a, b) = keys.split_at(keys.len() / 2);
        admit_split(cache, a);
        admit_split(cache, b);
    }
}

/// Every (exponent, share, policy) combination.
pub fn hit_rates(
    distinct: u64,
    lookups: usize,
    batch: usize,
    exponents: &[f64],
    shares: &[f64],
    policies: &[EvictionPolicy],
) -> Result<Vec<HitRate>> {
    let mut out = Vec::new();
    for &exponent in exponents {
        for &share in shares {
            let capacity = ((distinct as f64 * share).round() as u64).max(1);
            for &policy in policies {
                let hit_rate = replay(distinct, exponent, capacity, policy, lookups, batch, 1)?;
                out.push(HitRate {
                    exponent,
                    cache_share: share,
                    capacity_rows: capacity,
                    policy: policy.name(),
                    hit_rate,
                });
            }
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// "resident", or the cache's share of the distinct ids.
    pub setup: String,
    pub samples_per_s: f64,
    /// Cache hit rate over the timed batches (1 for resident).
    pub hit_rate: f64,
    /// GPU time of the resolve and gather kernels on one batch, from timestamp queries (when
    /// the adapter has them).
    pub resolve_us: Option<f64>,
    pub gather_us: Option<f64>,
}

/// The resolve and gather kernels' microseconds on `batch`.
fn kernel_times(engine: &Engine, batch: &Batch) -> Result<(Option<f64>, Option<f64>)> {
    let ns = match engine.profile(batch) {
        Ok(Some(ns)) => ns,
        // No timestamp queries, or a cache too small to hold one whole pass's rows.
        Ok(None) | Err(crate::error::Error::Cache(_)) => return Ok((None, None)),
        Err(e) => return Err(e),
    };
    let time = |label: &str| {
        let i = engine.steps().iter().position(|s| s.label() == label)?;
        Some(ns[i] / 1e3)
    };
    Ok((time("resolve"), time("gather")))
}

/// A small PEPNet whose two id features have `users` and `items` ids: either as vocabularies
/// (resident) or hashed, with the same rows in the store.
pub fn throughput_models(users: usize, items: usize, seed: u64) -> Result<(Model, Model)> {
    let text = |hashed: bool| {
        let id = |name: &str, vocab: usize| {
            if hashed {
                format!(
                    r#"{{"name": "{name}", "kind": "sparse", "hashed": true, "roles": ["general", "prior"]}}"#
                )
            } else {
                format!(
                    r#"{{"name": "{name}", "kind": "sparse", "vocab": {vocab}, "roles": ["general", "prior"]}}"#
                )
            }
        };
        format!(
            r#"{{"embedding_dim": 16, "domain_feature": "tab", "tasks": ["click", "like"],
                "features": [
                  {{"name": "tab", "kind": "sparse", "vocab": 3, "roles": ["domain"]}},
                  {}, {},
                  {{"name": "duration", "kind": "dense", "roles": ["general", "domain"]}}],
                "epnet": {{"hidden": 32}}, "ppnet": {{"hidden": 32}}, "towers": [64, 32]}}"#,
            id("user_id", users),
            id("item_id", items)
        )
    };
    let resident_spec = ModelSpec::from_json(&text(false), "--users/--items")?;
    let hashed_spec = ModelSpec::from_json(&text(true), "--users/--items")?;
    let resident = Model::init(resident_spec, seed)?;
    let mut hashed = Model::init(hashed_spec, seed)?;
    let names: Vec<String> = hashed.weights.iter().map(|(n, _)| n.to_string()).collect();
    for name in names {
        let data = resident.weights.get(&name).data.clone();
        hashed.weights.get_mut(&name).expect("same names").data = data;
    }
    for name in ["user_id", "item_id"] {
        let rows = resident.weights.get(&format!("emb.{name}")).data.clone();
        let h = hashed.weights.hashed_mut(name).expect("hashed");
        h.ids = (0..(rows.len() / 16) as u64).map(raw_id).collect();
        h.rows = rows;
    }
    Ok((resident, hashed))
}

/// Batches whose ids follow Zipf(`exponent`): as vocabulary ids and as raw ids.
pub fn throughput_batches(
    users: usize,
    items: usize,
    exponent: f64,
    batches: usize,
    rows: usize,
    seed: u64,
) -> Vec<(Batch, Batch)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (zu, zi) = (
        Zipf::new(users as u64, exponent),
        Zipf::new(items as u64, exponent),
    );
    (0..batches)
        .map(|_| {
            let tab: Vec<u64> = (0..rows).map(|_| rng.random_range(0..3)).collect();
            let user: Vec<u64> = (0..rows).map(|_| zu.sample(&mut rng)).collect();
            let item: Vec<u64> = (0..rows).map(|_| zi.sample(&mut rng)).collect();
            let dur: Vec<f32> = (0..rows).map(|_| rng.random_range(0.0..3.0)).collect();
            let make = |map: fn(u64) -> u64| {
                Batch::new(vec![
                    Column::Sparse(tab.clone()),
                    Column::Sparse(user.iter().map(|&u| map(u)).collect()),
                    Column::Sparse(item.iter().map(|&i| map(i)).collect()),
                    Column::Dense(dur.clone()),
                ])
            };
            (make(|x| x), make(raw_id))
        })
        .collect()
}

/// Samples per second scoring `timed` after scoring `warm_up` (other batches of the same
/// stream, so a cache is warm but has not seen the timed ids), and the cache's hit rate over
/// the timed batches.
pub fn time_engine(engine: &Engine, warm_up: &[Batch], batches: &[Batch]) -> Result<(f64, f64)> {
    for b in warm_up {
        engine.score(b)?;
    }
    let before = engine.cache_stats().map(|s| s.total);
    let start = Instant::now();
    let mut samples = 0;
    for b in batches {
        samples += engine.score(b)?.len() / engine.spec().n_tasks();
    }
    let seconds = start.elapsed().as_secs_f64();
    let hit_rate = match (before, engine.cache_stats().map(|s| s.total)) {
        (Some(a), Some(b)) => {
            let (h, m) = (b.hits - a.hits, b.misses - a.misses);
            h as f64 / (h + m).max(1) as f64
        }
        _ => 1.0,
    };
    Ok((samples as f64 / seconds, hit_rate))
}

/// Throughput of the resident model, then of the hashed one at each cache share.
pub fn throughput(
    ctx: &std::sync::Arc<GpuContext>,
    users: usize,
    items: usize,
    shares: &[f64],
    batches: usize,
    rows: usize,
) -> Result<Vec<Throughput>> {
    let (resident, hashed) = throughput_models(users, items, 7)?;
    let data = throughput_batches(users, items, 1.0, 2 * batches, rows, 11);
    let (vocab, raw): (Vec<Batch>, Vec<Batch>) = data.into_iter().unzip();
    let (vocab_warm, vocab) = vocab.split_at(batches);
    let (raw_warm, raw) = raw.split_at(batches);
    let options = EngineOptions {
        max_batch: rows,
        ..Default::default()
    };
    let engine = Engine::new(ctx.clone(), &resident, &options)?;
    let (rate, _) = time_engine(&engine, vocab_warm, vocab)?;
    let (resolve_us, gather_us) = kernel_times(&engine, &vocab[0])?;
    let mut out = vec![Throughput {
        setup: "resident".into(),
        samples_per_s: rate,
        hit_rate: 1.0,
        resolve_us,
        gather_us,
    }];
    let distinct = (users + items) as f64;
    for &share in shares {
        let mut options = options.clone();
        options.cache.capacity = CacheCapacity::Rows(((distinct * share) as u64).max(2));
        let engine = Engine::new(ctx.clone(), &hashed, &options)?;
        let (rate, hit_rate) = time_engine(&engine, raw_warm, raw)?;
        let (resolve_us, gather_us) = kernel_times(&engine, &raw[0])?;
        out.push(Throughput {
            setup: format!("cache {:.0}%", share * 100.0),
            samples_per_s: rate,
            hit_rate,
            resolve_us,
            gather_us,
        });
    }
    // Every timed id already cached: the hit path alone, against the resident gather.
    let mut options = options.clone();
    options.cache.capacity = CacheCapacity::Rows(distinct as u64);
    let engine = Engine::new(ctx.clone(), &hashed, &options)?;
    let (rate, hit_rate) = time_engine(&engine, raw, raw)?;
    let (resolve_us, gather_us) = kernel_times(&engine, &raw[0])?;
    out.push(Throughput {
        setup: "all hits".into(),
        samples_per_s: rate,
        hit_rate,
        resolve_us,
        gather_us,
    });
    Ok(out)
}
