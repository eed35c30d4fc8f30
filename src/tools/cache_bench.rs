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
    /// The stream: `zipf <exponent>` or the replayed file.
    pub stream: String,
    /// Cache size as a share of the stream's distinct ids.
    pub cache_share: f64,
    pub capacity_rows: u64,
    /// The policy, or `optimum` (Belady's, offline).
    pub policy: String,
    /// Hits over lookups after the warm-up.
    pub hit_rate: f64,
}

/// An id stream in the engine's batches: (feature, id) keys, batch after batch.
pub struct Stream {
    pub name: String,
    pub batches: Vec<Vec<Key>>,
    /// Features the keys use (indices 1..=features, as in [`replay_spec`]).
    pub features: usize,
}

impl Stream {
    /// `lookups` Zipf(`exponent`) ids over `distinct` ids, in batches of `batch`.
    pub fn zipf(distinct: u64, exponent: f64, lookups: usize, batch: usize, seed: u64) -> Stream {
        let zipf = Zipf::new(distinct, exponent);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let batches = (0..lookups.div_ceil(batch))
            .map(|b| {
                let n = batch.min(lookups - b * batch);
                (0..n).map(|_| (1, raw_id(zipf.sample(&mut rng)))).collect()
            })
            .collect();
        Stream {
            name: format!("zipf {exponent}"),
            batches,
            features: 1,
        }
    }

    /// The hashed features' ids of an input file, read batch by batch as `pepnet score`
    /// reads them (a row that does not fit the spec fails the read, naming it).
    pub fn from_file(path: &std::path::Path, spec: &ModelSpec, batch: usize) -> Result<Stream> {
        let hashed: Vec<usize> = (0..spec.features.len())
            .filter(|&f| spec.features[f].hashed)
            .collect();
        if hashed.is_empty() {
            return Err(crate::error::Error::Cache(format!(
                "the model has no hashed features, so {} has no ids to replay",
                path.display()
            )));
        }
        let reader = crate::io::InputReader::open(path, spec, &[], batch, None)?;
        let mut batches = Vec::new();
        for input in reader {
            let input = input?;
            let mut keys = Vec::new();
            for (i, &f) in hashed.iter().enumerate() {
                if let Column::Sparse(ids) = &input.batch.columns[f] {
                    keys.extend(ids.iter().map(|&id| (i as u32 + 1, id)));
                }
            }
            batches.push(keys);
        }
        Ok(Stream {
            name: path.display().to_string(),
            batches,
            features: hashed.len(),
        })
    }

    pub fn lookups(&self) -> usize {
        self.batches.iter().map(Vec::len).sum()
    }

    pub fn distinct(&self) -> u64 {
        let mut keys: Vec<Key> = self.batches.iter().flatten().copied().collect();
        keys.sort_unstable();
        keys.dedup();
        keys.len() as u64
    }

    /// Batches whose lookups end within the first fifth of the stream warm the cache up.
    fn warm_up_batches(&self) -> usize {
        let warm_up = self.lookups() / 5;
        let mut seen = 0;
        self.batches
            .iter()
            .take_while(|b| {
                seen += b.len();
                seen <= warm_up
            })
            .count()
    }
}

/// `features` hashed sparse features of width 1 (spec indices 1..=features): all the hit-rate
/// replay needs of a model.
pub fn replay_spec(features: usize) -> ModelSpec {
    let ids: Vec<String> = (0..features)
        .map(|i| {
            format!(
                r#"{{"name": "id{i}", "kind": "sparse", "hashed": true, "roles": ["general"]}}"#
            )
        })
        .collect();
    ModelSpec::from_json(
        &format!(
            r#"{{"embedding_dim": 1, "domain_feature": "tab", "tasks": ["click"],
                "features": [{{"name": "tab", "kind": "sparse", "vocab": 1, "roles": ["domain"]}}, {}],
                "towers": []}}"#,
            ids.join(", ")
        ),
        "cache benchmark spec",
    )
    .expect("a valid spec")
}

/// Replays `stream` through the cache's own host state with `capacity` rows and `policy`;
/// every id of the stream is in the store. Returns the hit rate after the warm-up.
pub fn replay(stream: &Stream, capacity: u64, policy: EvictionPolicy) -> Result<f64> {
    let spec = replay_spec(stream.features);
    let mut store = MemoryStore::new(1);
    for &key in stream.batches.iter().flatten() {
        store.insert(key, &[key.1 as f32]);
    }
    let options = CacheOptions {
        capacity: CacheCapacity::Rows(capacity),
        policy,
        now: Some(0),
        ..Default::default()
    };
    let mut cache = CacheState::host_only(&spec, &options, Box::new(store))?;
    let warm_up = stream.warm_up_batches();
    let hits = |c: &CacheState| (1..=stream.features).map(|f| c.hits_of(f)).sum::<u64>();
    let mut hits_at_warm_up = 0;
    for (b, keys) in stream.batches.iter().enumerate() {
        if b == warm_up {
            hits_at_warm_up = hits(&cache);
        }
        admit_split(&mut cache, keys);
    }
    let timed: usize = stream.batches[warm_up..].iter().map(Vec::len).sum();
    Ok((hits(&cache) - hits_at_warm_up) as f64 / timed.max(1) as f64)
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

/// Belady's offline optimum under the engine's batch semantics: a batch's ids are all cached
/// while it is scored (a batch with more distinct ids than rows is halved, as the engine does),
/// and a miss evicts the cached id asked for again furthest in the future. The ceiling no
/// online policy can pass.
pub fn optimum(stream: &Stream, capacity: u64) -> f64 {
    use std::collections::{BTreeSet, HashMap, HashSet};
    // The chunks the cache sees: halved until their distinct ids fit.
    fn split<'a>(keys: &'a [Key], capacity: u64, out: &mut Vec<(usize, &'a [Key])>, batch: usize) {
        let distinct: HashSet<&Key> = keys.iter().collect();
        if distinct.len() as u64 > capacity && keys.len() > 1 {
            let (a, b) = keys.split_at(keys.len() / 2);
            split(a, capacity, out, batch);
            split(b, capacity, out, batch);
        } else {
            out.push((batch, keys));
        }
    }
    let mut chunks = Vec::new();
    for (b, keys) in stream.batches.iter().enumerate() {
        split(keys, capacity, &mut chunks, b);
    }
    // Per chunk, each distinct key's next chunk (usize::MAX: never again).
    let mut next_use: Vec<HashMap<Key, usize>> = vec![HashMap::new(); chunks.len()];
    let mut last: HashMap<Key, usize> = HashMap::new();
    for (c, (_, keys)) in chunks.iter().enumerate().rev() {
        for &k in *keys {
            if let std::collections::hash_map::Entry::Vacant(e) = next_use[c].entry(k) {
                e.insert(last.get(&k).copied().unwrap_or(usize::MAX));
            }
        }
        for &k in *keys {
            last.insert(k, c);
        }
    }
    let warm_up = stream.warm_up_batches();
    let mut cached: HashMap<Key, usize> = HashMap::new(); // key → its next use
    let mut by_next: BTreeSet<(usize, Key)> = BTreeSet::new();
    let (mut hits, mut timed) = (0u64, 0u64);
    for (c, (b, keys)) in chunks.iter().enumerate() {
        let counted = *b >= warm_up;
        if counted {
            timed += keys.len() as u64;
        }
        let mut missed = Vec::new();
        for (&k, &next) in &next_use[c] {
            match cached.get(&k) {
                Some(&old) => {
                    by_next.remove(&(old, k));
                    cached.remove(&k);
                }
                None => missed.push(k),
            }
            let _ = next;
        }
        if counted {
            hits += keys.iter().filter(|k| !missed.contains(k)).count() as u64;
        }
        // This chunk's keys are out of `by_next` (pinned); evict the furthest of the rest.
        let room = capacity as usize - next_use[c].len();
        while cached.len() > room {
            let &(n, k) = by_next.last().expect("more cached than room");
            by_next.remove(&(n, k));
            cached.remove(&k);
        }
        for (&k, &next) in &next_use[c] {
            cached.insert(k, next);
            by_next.insert((next, k));
        }
    }
    hits as f64 / timed.max(1) as f64
}

/// Every (stream, share, policy) combination, with the optimum after each (stream, share)'s
/// policies when `with_optimum`.
pub fn hit_rates(
    streams: &[Stream],
    shares: &[f64],
    policies: &[EvictionPolicy],
    with_optimum: bool,
) -> Result<Vec<HitRate>> {
    let mut out = Vec::new();
    for stream in streams {
        let distinct = stream.distinct();
        for &share in shares {
            let capacity = ((distinct as f64 * share).round() as u64).max(1);
            let row = |policy: String, hit_rate: f64| HitRate {
                stream: stream.name.clone(),
                cache_share: share,
                capacity_rows: capacity,
                policy,
                hit_rate,
            };
            for &policy in policies {
                out.push(row(policy.name(), replay(stream, capacity, policy)?));
            }
            if with_optimum {
                out.push(row("optimum".into(), optimum(stream, capacity)));
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
        let rows = resident
            .weights
            .get(&crate::weights::names::table(name))
            .data
            .clone();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tinylfu_matches_perfect_lfu_beats_the_rest_and_the_optimum_bounds_all() {
        for exponent in [0.8, 1.1] {
            let stream = Stream::zipf(20_000, exponent, 300_000, 1024, 3);
            let capacity = (stream.distinct() as f64 * 0.02) as u64;
            let rate = |p| replay(&stream, capacity, p).unwrap();
            let (tiny, perfect) = (
                rate(EvictionPolicy::TinyLfu),
                rate(EvictionPolicy::PerfectLfu),
            );
            let others = [
                rate(EvictionPolicy::score()),
                rate(EvictionPolicy::Lru),
                rate(EvictionPolicy::Lfu),
            ];
            let best = optimum(&stream, capacity);
            assert!(
                tiny >= perfect - 5e-4,
                "{exponent}: tinylfu {tiny} < perfect lfu {perfect}"
            );
            for o in others {
                assert!(tiny > o, "{exponent}: tinylfu {tiny} ≤ {o}");
            }
            for r in [tiny, perfect].iter().chain(&others) {
                assert!(best >= *r, "{exponent}: optimum {best} below {r}");
            }
        }
    }

    #[test]
    fn the_optimum_misses_only_first_sightings_when_everything_fits_and_evicts_the_furthest() {
        let batches = |ids: &[&[u64]]| Stream {
            name: "hand".into(),
            batches: ids
                .iter()
                .map(|b| b.iter().map(|&i| (1, i)).collect())
                .collect(),
            features: 1,
        };
        // 10 batches of one id; the first 2 (a fifth of 10 lookups) warm up.
        let s = batches(&[&[1], &[2], &[3], &[1], &[2], &[3], &[1], &[2], &[3], &[1]]);
        // Counted: 3's first sighting misses, the 7 later lookups hit.
        assert_eq!(optimum(&s, 3), 0.875);
        // Two rows: each miss evicts the id asked for later. Counted from batch 2: 3 misses
        // (evicts 2), 1 hits, 2 misses (evicts 1), 3 hits, 1 misses (evicts 3), 2 hits, 3
        // misses (evicts 2), 1 hits: 4 of 8.
        assert_eq!(optimum(&s, 2), 0.5);
        // A batch is cached whole while it is scored: three ids need three rows.
        let s = batches(&[&[1, 2, 3], &[1, 2, 3]]);
        assert_eq!(optimum(&s, 3), 0.5);
    }
}
