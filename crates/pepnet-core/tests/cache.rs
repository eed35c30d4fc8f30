//! The embedding cache end to end. Every test builds a "twin": the same random model twice, once
//! with vocabulary features (all rows resident) and once with some of them hashed (rows in the
//! store, ids scrambled to 64-bit values, a share of them unknown to the store). The resident
//! model's rows for unknown ids are set to the hashed feature's default row, so the two must
//! score bit for bit the same: same kernels, same row values, only the row indices differ.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{gpu, random_batch, random_spec, rng, Rng};
use pepnet_core::cache::{CacheCapacity, CacheOptions, EvictionPolicy, UpdatePolicy};
use pepnet_core::spec::{FeatureKind, ModelSpec, Role};
use pepnet_core::{reference, Batch, Column, Engine, EngineOptions, Error, Model};
use rand::RngExt;

/// A feature's vocabulary id as a raw 64-bit id (splitmix64 of id and feature: high bits set).
fn scramble(f: usize, id: u64) -> u64 {
    let mut z = id ^ ((f as u64) << 56) ^ 0x9e37_79b9_7f4a_7c15;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Twin {
    resident: Model,
    hashed: Model,
    /// Spec indices of the hashed features.
    features: Vec<usize>,
    /// Per hashed feature, the vocabulary ids the store does not know.
    unknown: Vec<Vec<u64>>,
}

impl Twin {
    /// The batch the hashed model reads: hashed columns' ids scrambled.
    fn map(&self, batch: &Batch) -> Batch {
        let mut out = batch.clone();
        for &f in &self.features {
            out.columns[f] = match &batch.columns[f] {
                Column::Sparse(v) => Column::Sparse(v.iter().map(|&i| scramble(f, i)).collect()),
                Column::MultiHot { offsets, ids } => Column::MultiHot {
                    offsets: offsets.clone(),
                    ids: ids.iter().map(|&i| scramble(f, i)).collect(),
                },
                Column::Dense(_) => unreachable!("dense features are never hashed"),
            };
        }
        out
    }

    fn d(&self) -> usize {
        self.resident.spec.d()
    }

    /// Stored rows of the hashed model (every hashed feature's known ids).
    fn store_rows(&self) -> usize {
        self.features
            .iter()
            .map(|&f| {
                let name = &self.hashed.spec.features[f].name;
                self.hashed.weights.hashed(name).unwrap().ids.len()
            })
            .sum()
    }

    /// Writes `row` for vocabulary id `id` of hashed feature `f` into both models' weights.
    fn set_row(&mut self, f: usize, id: u64, row: &[f32]) {
        let d = self.d();
        let name = self.resident.spec.features[f].name.clone();
        let table = self
            .resident
            .weights
            .get_mut(&format!("emb.{name}"))
            .unwrap();
        table.data[id as usize * d..(id as usize + 1) * d].copy_from_slice(row);
        let h = self.hashed.weights.hashed_mut(&name).unwrap();
        match h.ids.iter().position(|&x| x == scramble(f, id)) {
            Some(i) => h.rows[i * d..(i + 1) * d].copy_from_slice(row),
            None => {
                h.ids.push(scramble(f, id));
                h.rows.extend_from_slice(row);
            }
        }
    }

    /// The resident model's row for `id` of `f` becomes the default row (the id is unknown).
    fn forget(&mut self, f: usize, id: u64) {
        let d = self.d();
        let name = self.resident.spec.features[f].name.clone();
        let h = self.hashed.weights.hashed_mut(&name).unwrap();
        if let Some(i) = h.ids.iter().position(|&x| x == scramble(f, id)) {
            h.ids.remove(i);
            h.rows.drain(i * d..(i + 1) * d);
        }
        let default = h.default.clone().unwrap_or(vec![0.0; d]);
        let table = self
            .resident
            .weights
            .get_mut(&format!("emb.{name}"))
            .unwrap();
        table.data[id as usize * d..(id as usize + 1) * d].copy_from_slice(&default);
    }
}

/// A twin of a random spec of `variant`, or `None` if the spec has no feature to hash that a
/// kernel reads.
fn twin(r: &mut Rng, variant: u32, unknown_share: f64) -> Option<Twin> {
    let spec = random_spec(r, variant);
    let eligible: Vec<usize> = (0..spec.features.len())
        .filter(|&f| spec.features[f].kind != FeatureKind::Dense && f > 0)
        .collect();
    let read: Vec<usize> = eligible
        .iter()
        .copied()
        .filter(|&f| is_read(&spec, f))
        .collect();
    if read.is_empty() {
        return None;
    }
    // The first hashed feature is one a kernel reads (tests update it); others may not be.
    let first = read[r.random_range(0..read.len())];
    let mut features = vec![first];
    features.extend(
        eligible
            .iter()
            .copied()
            .filter(|&f| f != first && r.random_range(0..2) == 0),
    );
    let mut hspec: ModelSpec = spec.clone();
    for &f in &features {
        hspec.features[f].hashed = true;
        hspec.features[f].vocab = None;
    }
    hspec.validate().unwrap();
    let resident = Model::init(spec.clone(), r.random()).unwrap();
    let mut hashed = Model::init(hspec, 0).unwrap();
    let names: Vec<String> = hashed.weights.iter().map(|(n, _)| n.to_string()).collect();
    for name in names {
        let src = resident.weights.get(&name).data.clone();
        hashed.weights.get_mut(&name).unwrap().data = src;
    }
    let d = spec.d();
    let mut twin = Twin {
        resident,
        hashed,
        features: features.clone(),
        unknown: Vec::new(),
    };
    for &f in &features {
        let name = spec.features[f].name.clone();
        let vocab = spec.features[f].vocab.unwrap() as u64;
        let h = twin.hashed.weights.hashed_mut(&name).unwrap();
        if r.random_range(0..2) == 0 {
            h.default = Some((0..d).map(|_| r.random_range(-1.0..1.0)).collect());
        }
        let table = twin
            .resident
            .weights
            .get(&format!("emb.{name}"))
            .data
            .clone();
        for id in 0..vocab {
            h.ids.push(scramble(f, id));
            h.rows
                .extend_from_slice(&table[id as usize * d..(id as usize + 1) * d]);
        }
        let unknown: Vec<u64> = (0..vocab)
            .filter(|_| r.random_range(0.0..1.0) < unknown_share)
            .collect();
        for &id in &unknown {
            twin.forget(f, id);
        }
        twin.unknown.push(unknown);
    }
    Some(twin)
}

fn twins(seed: u64, count: usize, unknown_share: f64) -> Vec<(u32, Twin)> {
    let mut r = rng(seed);
    let mut out = Vec::new();
    let mut variant = 0;
    while out.len() < count {
        if let Some(t) = twin(&mut r, variant % 8, unknown_share) {
            out.push((variant % 8, t));
            variant += 1;
        }
    }
    out
}

fn options(capacity: u64, policy: EvictionPolicy, max_batch: usize) -> EngineOptions {
    EngineOptions {
        max_batch,
        cache: CacheOptions {
            capacity: CacheCapacity::Rows(capacity),
            policy,
            updates: UpdatePolicy::default(),
            now: Some(0),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Whether some kernel reads feature `f` (a domain feature needs EPNet, a prior PPNet).
fn is_read(spec: &ModelSpec, f: usize) -> bool {
    let feature = &spec.features[f];
    feature.has_role(Role::General)
        || (feature.has_role(Role::Domain) && spec.epnet.is_some())
        || (feature.has_role(Role::Prior) && spec.ppnet.is_some())
}

/// Scores `batch` in a loop on another thread (at least 3 times) until `done` is set; started
/// and given 50 ms before returning, so that what the caller does next lands mid-loop.
fn score_in_background(
    engine: &Arc<Engine>,
    batch: &Batch,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<Vec<Vec<f32>>>) {
    let done = Arc::new(AtomicBool::new(false));
    let (engine, batch, flag) = (engine.clone(), batch.clone(), done.clone());
    let handle = std::thread::spawn(move || {
        let mut results = Vec::new();
        while !flag.load(Ordering::Acquire) || results.len() < 3 {
            results.push(engine.score(&batch).unwrap());
        }
        results
    });
    std::thread::sleep(std::time::Duration::from_millis(50));
    (done, handle)
}

/// Scores of `batch` on a fresh engine of `model` (all rows resident).
fn resident_scores(model: &Model, batch: &Batch) -> Vec<f32> {
    Engine::new(gpu(), model, &Default::default())
        .unwrap()
        .score(batch)
        .unwrap()
}

fn assert_bits(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{what}: score {i}: cached {g}, resident {w}"
        );
    }
}

/// The most distinct hashed rows one sample of `batch` needs.
fn max_rows_per_sample(twin: &Twin, batch: &Batch) -> u64 {
    (0..batch.len())
        .map(|i| {
            twin.features
                .iter()
                .map(|&f| {
                    let mut ids = batch.columns[f].ids(i).to_vec();
                    ids.sort_unstable();
                    ids.dedup();
                    ids.len() as u64
                })
                .sum::<u64>()
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn cached_scores_equal_resident_scores_bit_for_bit_at_every_capacity() {
    let ctx = gpu();
    let policies = [
        EvictionPolicy::TinyLfu,
        EvictionPolicy::score(),
        EvictionPolicy::Lru,
        EvictionPolicy::Lfu,
        EvictionPolicy::PerfectLfu,
    ];
    for (seed, (variant, twin)) in twins(1, 8, 0.1).into_iter().enumerate() {
        let mut r = rng(1000 + seed as u64);
        let spec = &twin.resident.spec;
        let batches: Vec<Batch> = (0..3).map(|_| random_batch(&mut r, spec, 150)).collect();
        let resident =
            Engine::new(ctx.clone(), &twin.resident, &options(1, policies[0], 64)).unwrap();
        let smallest = batches
            .iter()
            .map(|b| max_rows_per_sample(&twin, b))
            .max()
            .unwrap()
            .max(1);
        let all = twin.store_rows() as u64 + 1;
        for (c, capacity) in [smallest, (all / 10).max(smallest), all / 2 + smallest, all]
            .into_iter()
            .enumerate()
        {
            let policy = policies[(seed + c) % 3];
            let what =
                format!("seed {seed}, variant {variant}, capacity {capacity}/{all}, {policy:?}");
            let cached =
                Engine::new(ctx.clone(), &twin.hashed, &options(capacity, policy, 64)).unwrap();
            let mut evictions = 0;
            for (b, batch) in batches.iter().enumerate() {
                let want = resident.score(batch).unwrap();
                let got = cached.score(&twin.map(batch)).unwrap();
                assert_bits(&got, &want, &format!("{what}, batch {b}"));
                let stats = cached.cache_stats().unwrap();
                if c == 0 && b > 0 && stats.total.insertions > capacity {
                    assert!(
                        stats.total.evictions > evictions,
                        "{what}: batch {b} evicted nothing"
                    );
                }
                evictions = stats.total.evictions;
            }
            let stats = cached.cache_stats().unwrap();
            assert!(stats.cached_rows <= capacity);
            // Every id a kernel reads is looked up once (a split chunk's lookups count once).
            let lookups: usize = batches
                .iter()
                .map(|b| {
                    let read = twin.features.iter().filter(|&&f| is_read(spec, f));
                    read.map(|&f| {
                        (0..b.len())
                            .map(|i| b.columns[f].ids(i).len())
                            .sum::<usize>()
                    })
                    .sum::<usize>()
                })
                .sum();
            assert_eq!(
                stats.total.hits + stats.total.misses,
                lookups as u64,
                "{what}"
            );
        }
        // And against the f64 reference on the hashed model itself.
        let cached =
            Engine::new(ctx.clone(), &twin.hashed, &options(all, policies[0], 64)).unwrap();
        let mapped = twin.map(&batches[0]);
        let got = cached.score(&mapped).unwrap();
        let want = reference::forward(&twin.hashed, &mapped).unwrap();
        assert!(
            common::max_abs_diff(&got, &want) <= 1e-5,
            "seed {seed}: vs reference"
        );
    }
}

#[test]
fn unknown_ids_read_the_default_row_and_are_counted() {
    let ctx = gpu();
    for (_, twin) in twins(2, 3, 0.5) {
        let mut r = rng(7);
        let batch = random_batch(&mut r, &twin.resident.spec, 200);
        let resident = Engine::new(ctx.clone(), &twin.resident, &Default::default()).unwrap();
        let cached = Engine::new(
            ctx.clone(),
            &twin.hashed,
            &options(100_000, EvictionPolicy::Lru, 4096),
        )
        .unwrap();
        let got = cached.score(&twin.map(&batch)).unwrap();
        assert_bits(&got, &resident.score(&batch).unwrap(), "unknown ids");
        let stats = cached.cache_stats().unwrap();
        let mut unknown = 0;
        for (k, &f) in twin.features.iter().enumerate() {
            let n: u64 = (0..batch.len())
                .flat_map(|i| batch.columns[f].ids(i).to_vec())
                .filter(|id| twin.unknown[k].contains(id))
                .count() as u64;
            let name = &twin.resident.spec.features[f].name;
            let s = stats.features.iter().find(|s| &s.feature == name).unwrap();
            assert_eq!(s.unknown, n, "feature {name}");
            unknown += n;
        }
        assert_eq!(stats.total.unknown, unknown);
        assert!(unknown > 0, "half the ids are unknown, some must occur");
        // Again: the unknown ids are cached as such, so every id now hits and the store is
        // not asked (no new misses), and the scores are the same.
        let again = cached.score(&twin.map(&batch)).unwrap();
        assert_bits(&again, &got, "unknown ids, cached as such");
        let after = cached.cache_stats().unwrap().total;
        assert_eq!(
            after.misses, stats.total.misses,
            "no id missed the second time"
        );
        assert_eq!(after.unknown, 2 * unknown);
        assert_eq!(
            after.hits,
            stats.total.hits + stats.total.hits + stats.total.misses
        );
    }
}

#[test]
fn concurrent_scoring_threads_all_get_resident_scores() {
    let ctx = gpu();
    let (_, twin) = twins(3, 1, 0.1).pop().unwrap();
    let mut r = rng(9);
    let batches: Vec<Batch> = (0..6)
        .map(|_| random_batch(&mut r, &twin.resident.spec, 120))
        .collect();
    let resident = Engine::new(ctx.clone(), &twin.resident, &Default::default()).unwrap();
    let want: Vec<Vec<f32>> = batches.iter().map(|b| resident.score(b).unwrap()).collect();
    let capacity = batches
        .iter()
        .map(|b| max_rows_per_sample(&twin, b))
        .max()
        .unwrap()
        .max(1)
        * 3;
    let mut opts = options(capacity, EvictionPolicy::score(), 32);
    opts.workspaces = 3;
    let cached = Arc::new(Engine::new(ctx.clone(), &twin.hashed, &opts).unwrap());
    let mapped: Arc<Vec<Batch>> = Arc::new(batches.iter().map(|b| twin.map(b)).collect());
    let want = Arc::new(want);
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let (cached, mapped, want) = (cached.clone(), mapped.clone(), want.clone());
            std::thread::spawn(move || {
                for round in 0..4 {
                    let b = (t + round) % mapped.len();
                    let got = cached.score(&mapped[b]).unwrap();
                    assert_bits(&got, &want[b], &format!("thread {t}, round {round}"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(cached.cache_stats().unwrap().total.evictions > 0);
}

#[test]
fn live_updates_are_seen_by_batches_scored_after_them_and_not_before() {
    let ctx = gpu();
    for (_, mut twin) in twins(4, 3, 0.2) {
        let mut r = rng(11);
        let batch = random_batch(&mut r, &twin.resident.spec, 100);
        let mapped = twin.map(&batch);
        let d = twin.d();
        let capacity = max_rows_per_sample(&twin, &batch).max(1) * 4;
        let cached = Engine::new(
            ctx.clone(),
            &twin.hashed,
            &options(capacity, EvictionPolicy::Lfu, 50),
        )
        .unwrap();
        let before = Engine::new(ctx.clone(), &twin.resident, &Default::default()).unwrap();
        assert_bits(
            &cached.score(&mapped).unwrap(),
            &before.score(&batch).unwrap(),
            "before",
        );

        // New rows for ids of the batch: known ones (some cached now), and unknown ones,
        // which become known.
        let f = twin.features[0];
        let name = twin.resident.spec.features[f].name.clone();
        let mut ids: Vec<u64> = (0..batch.len())
            .flat_map(|i| batch.columns[f].ids(i).to_vec())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.truncate(6);
        ids.extend(twin.unknown[0].first());
        let rows: Vec<f32> = (0..ids.len() * d)
            .map(|_| r.random_range(-2.0..2.0))
            .collect();
        let raw: Vec<u64> = ids.iter().map(|&i| scramble(f, i)).collect();
        let outcome = cached.update_rows(&name, &raw, &rows, 5).unwrap();
        assert_eq!((outcome.applied, outcome.capped), (ids.len(), 0));
        for (k, &id) in ids.iter().enumerate() {
            twin.set_row(f, id, &rows[k * d..(k + 1) * d]);
        }
        let after = Engine::new(ctx.clone(), &twin.resident, &Default::default()).unwrap();
        let want = after.score(&batch).unwrap();
        assert_bits(&cached.score(&mapped).unwrap(), &want, "after the update");
        assert_ne!(
            want,
            before.score(&batch).unwrap(),
            "the update changes some score"
        );
        assert_eq!(
            cached.cache_stats().unwrap().total.updates,
            ids.len() as u64
        );

        // One id twice in one call (it is cached now): the last row wins, whole.
        let twice: Vec<f32> = (0..2 * d).map(|_| r.random_range(-2.0..2.0)).collect();
        cached
            .update_rows(&name, &[raw[0], raw[0]], &twice, 6)
            .unwrap();
        twin.set_row(f, ids[0], &twice[d..]);
        let want = resident_scores(&twin.resident, &batch);
        assert_bits(
            &cached.score(&mapped).unwrap(),
            &want,
            "an id updated twice in one call",
        );
    }
}

/// While one thread scores in a loop, another updates rows: every batch's scores are those of
/// the old rows or of the new ones per sample, and every batch after the update returns sees
/// the new ones.
#[test]
fn updates_between_concurrent_batches_are_atomic_per_sample() {
    let ctx = gpu();
    let (_, mut twin) = twins(5, 1, 0.0).pop().unwrap();
    let mut r = rng(13);
    let batch = random_batch(&mut r, &twin.resident.spec, 64);
    let d = twin.d();
    let old = resident_scores(&twin.resident, &batch);
    let f = twin.features[0];
    let name = twin.resident.spec.features[f].name.clone();
    let ids: Vec<u64> = (0..batch.len())
        .flat_map(|i| batch.columns[f].ids(i).to_vec())
        .collect();
    let rows: Vec<f32> = (0..ids.len() * d)
        .map(|_| r.random_range(-2.0..2.0))
        .collect();
    let mut dedup = std::collections::HashMap::new();
    for (k, &id) in ids.iter().enumerate() {
        dedup.insert(id, k);
    }
    let mut uniq: Vec<(u64, usize)> = dedup.into_iter().collect();
    uniq.sort_unstable();
    let new_ids: Vec<u64> = uniq.iter().map(|&(id, _)| scramble(f, id)).collect();
    let new_rows: Vec<f32> = uniq
        .iter()
        .flat_map(|&(_, k)| rows[k * d..(k + 1) * d].to_vec())
        .collect();
    for (j, &(id, _)) in uniq.iter().enumerate() {
        twin.set_row(f, id, &new_rows[j * d..(j + 1) * d]);
    }
    let new = resident_scores(&twin.resident, &batch);

    let mut opts = options(4096, EvictionPolicy::score(), 16);
    opts.workspaces = 2;
    let cached = Arc::new(Engine::new(ctx.clone(), &twin.hashed, &opts).unwrap());
    let mapped = twin.map(&batch);
    let (done, scorer) = score_in_background(&cached, &mapped);
    cached.update_rows(&name, &new_ids, &new_rows, 1).unwrap();
    let after = cached.score(&mapped).unwrap();
    done.store(true, Ordering::Release);
    assert_bits(&after, &new, "scored after the update returned");
    let t = twin.resident.spec.n_tasks();
    for (k, scores) in scorer.join().unwrap().iter().enumerate() {
        for i in 0..batch.len() {
            let s = &scores[i * t..(i + 1) * t];
            assert!(
                s == &old[i * t..(i + 1) * t] || s == &new[i * t..(i + 1) * t],
                "batch {k}, sample {i}: neither the old nor the new rows' scores"
            );
        }
    }
}

#[test]
fn capped_updates_are_refused_until_the_window_passes() {
    let ctx = gpu();
    let (_, mut twin) = twins(6, 1, 0.0).pop().unwrap();
    let d = twin.d();
    let mut opts = options(1000, EvictionPolicy::Lru, 64);
    opts.cache.updates = UpdatePolicy {
        max_updates: Some(1),
        window_secs: 10,
        expire_after_secs: None,
    };
    let cached = Engine::new(ctx.clone(), &twin.hashed, &opts).unwrap();
    let f = twin.features[0];
    let name = twin.resident.spec.features[f].name.clone();
    let id = *[0u64]
        .iter()
        .find(|i| !twin.unknown[0].contains(i))
        .unwrap();
    let mut r = rng(17);
    let batch = random_batch(&mut r, &twin.resident.spec, 40);
    let rows: Vec<Vec<f32>> = (0..3)
        .map(|_| (0..d).map(|_| r.random_range(-2.0..2.0)).collect())
        .collect();
    let raw = [scramble(f, id)];
    assert_eq!(
        cached
            .update_rows(&name, &raw, &rows[0], 1)
            .unwrap()
            .applied,
        1
    );
    assert_eq!(
        cached.update_rows(&name, &raw, &rows[1], 5).unwrap().capped,
        1
    );
    twin.set_row(f, id, &rows[0]);
    let want = resident_scores(&twin.resident, &batch);
    assert_bits(
        &cached.score(&twin.map(&batch)).unwrap(),
        &want,
        "the capped write is not applied",
    );
    assert_eq!(
        cached
            .update_rows(&name, &raw, &rows[2], 11)
            .unwrap()
            .applied,
        1
    );
    let stats = cached.cache_stats().unwrap();
    assert_eq!((stats.total.updates, stats.total.capped_updates), (2, 1));
    assert!(
        cached.update_rows(&name, &raw, &rows[2][1..], 12).is_err(),
        "a short row"
    );
    assert!(cached.update_rows("no_such", &raw, &rows[2], 12).is_err());
}

#[test]
fn ids_not_written_for_the_expiry_time_are_dropped_from_store_and_cache() {
    let ctx = gpu();
    let (_, mut twin) = twins(7, 1, 0.0).pop().unwrap();
    let d = twin.d();
    let mut opts = options(100_000, EvictionPolicy::score(), 64);
    opts.cache.updates = UpdatePolicy {
        max_updates: None,
        window_secs: 10,
        expire_after_secs: Some(100),
    };
    let cached = Engine::new(ctx.clone(), &twin.hashed, &opts).unwrap();
    let mut r = rng(19);
    let batch = random_batch(&mut r, &twin.resident.spec, 80);
    let mapped = twin.map(&batch);
    cached.score(&mapped).unwrap(); // everything in the batch is cached now
                                    // Rewrite one id of each hashed feature at t = 50; the rest were loaded at t = 0.
    let mut kept = Vec::new();
    for &f in &twin.features.clone() {
        let name = twin.resident.spec.features[f].name.clone();
        let row: Vec<f32> = (0..d).map(|_| r.random_range(-1.0..1.0)).collect();
        cached
            .update_rows(&name, &[scramble(f, 0)], &row, 50)
            .unwrap();
        twin.set_row(f, 0, &row);
        kept.push((f, 0u64));
    }
    assert_eq!(cached.expire(99).unwrap(), 0);
    let stored = twin.store_rows();
    let expired = cached.expire(120).unwrap();
    assert_eq!(expired, stored - kept.len());
    for &f in &twin.features.clone() {
        let vocab = twin.resident.spec.features[f].vocab.unwrap() as u64;
        for id in 1..vocab {
            twin.forget(f, id);
        }
    }
    let want = resident_scores(&twin.resident, &batch);
    assert_bits(
        &cached.score(&mapped).unwrap(),
        &want,
        "expired ids read the default row",
    );
    let stats = cached.cache_stats().unwrap();
    assert_eq!(stats.total.expired, expired as u64);
    assert_eq!(stats.store_rows, kept.len() as u64);
    assert!(stats.cached_rows <= kept.len() as u64);
}

#[test]
fn a_sample_needing_more_rows_than_the_cache_holds_is_a_clear_error() {
    let ctx = gpu();
    let (_, twin) = twins(8, 1, 0.0).pop().unwrap();
    let mut r = rng(23);
    let batch = random_batch(&mut r, &twin.resident.spec, 50);
    let need = max_rows_per_sample(&twin, &batch);
    assert!(need >= 1);
    // One row fewer than the largest sample needs: the batch splits down to that sample and fails.
    if need > 1 {
        let cached = Engine::new(
            ctx.clone(),
            &twin.hashed,
            &options(need - 1, EvictionPolicy::Lru, 64),
        )
        .unwrap();
        let err = cached.score(&twin.map(&batch)).unwrap_err();
        assert!(matches!(err, Error::Samples(_)), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("capacity of") && text.contains("sample"),
            "{text}"
        );
    }
    // Exactly enough: scores, however many distinct ids the whole batch has.
    let cached = Engine::new(
        ctx.clone(),
        &twin.hashed,
        &options(need, EvictionPolicy::Lru, 64),
    )
    .unwrap();
    let want = resident_scores(&twin.resident, &batch);
    assert_bits(
        &cached.score(&twin.map(&batch)).unwrap(),
        &want,
        "capacity of one sample",
    );
    let zero = Engine::new(
        ctx.clone(),
        &twin.hashed,
        &options(0, EvictionPolicy::Lru, 64),
    );
    assert!(matches!(zero, Err(Error::Cache(_))));
}

/// Swapping the dense weights while another thread scores multi-chunk batches: each batch is
/// all old or all new.
#[test]
fn dense_weight_swaps_are_atomic_per_batch() {
    let ctx = gpu();
    let (_, twin) = twins(9, 1, 0.0).pop().unwrap();
    let mut r = rng(29);
    let batch = random_batch(&mut r, &twin.resident.spec, 96);
    let other = Model::init(twin.resident.spec.clone(), 4242).unwrap();
    let mut new_weights = twin.hashed.weights.clone();
    for (name, t) in other.weights.iter() {
        if !name.starts_with("emb.") {
            new_weights.get_mut(name).unwrap().data = t.data.clone();
        }
    }
    let mut new_resident = twin.resident.clone();
    for (name, t) in other.weights.iter() {
        if !name.starts_with("emb.") {
            new_resident.weights.get_mut(name).unwrap().data = t.data.clone();
        }
    }
    let old = resident_scores(&twin.resident, &batch);
    let new = resident_scores(&new_resident, &batch);
    assert_ne!(old, new);
    let mut opts = options(4096, EvictionPolicy::score(), 16);
    opts.workspaces = 2;
    let cached = Arc::new(Engine::new(ctx.clone(), &twin.hashed, &opts).unwrap());
    let mapped = twin.map(&batch);
    let (done, scorer) = score_in_background(&cached, &mapped);
    cached.swap_weights(&new_weights).unwrap();
    assert_bits(&cached.score(&mapped).unwrap(), &new, "after the swap");
    done.store(true, Ordering::Release);
    for (k, scores) in scorer.join().unwrap().iter().enumerate() {
        assert!(
            *scores == old || *scores == new,
            "batch {k} mixes old and new weights"
        );
    }
    let wrong = Model::init(random_spec(&mut r, 7), 1).unwrap();
    assert!(cached.swap_weights(&wrong.weights).is_err());
}

#[test]
fn hashed_models_round_trip_through_a_model_directory() {
    let (_, twin) = twins(10, 1, 0.3).pop().unwrap();
    let dir = std::env::temp_dir().join(format!("pepnet-cache-{}", std::process::id()));
    twin.hashed.save(&dir).unwrap();
    let loaded = Model::load(&dir).unwrap();
    assert_eq!(loaded, twin.hashed);
    // A duplicate id names the tensor.
    let mut dup = twin.hashed.clone();
    let name = dup.spec.features[twin.features[0]].name.clone();
    let h = dup.weights.hashed_mut(&name).unwrap();
    if h.ids.len() >= 2 {
        h.ids[1] = h.ids[0];
        dup.save(&dir).unwrap();
        let err = Model::load(&dir).unwrap_err().to_string();
        assert!(
            err.contains(&format!("emb.{name}.ids")) && err.contains("twice"),
            "{err}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// At f16 the cache stores rows as f16 too: hashed features score bit for bit like the same rows
/// resident at f16, across evictions, and a capacity in bytes holds as many f16 or f32 rows as
/// fit beside their index.
#[test]
fn f16_cached_scores_equal_f16_resident_scores_and_bytes_count_rows_and_index() {
    let ctx = gpu();
    let at_f16 = |mut o: EngineOptions| {
        o.precision = pepnet_core::gpu::linear::Precision::F16;
        o
    };
    for (seed, (variant, twin)) in twins(7, 4, 0.1).into_iter().enumerate() {
        let mut r = rng(7000 + seed as u64);
        let spec = &twin.resident.spec;
        let batches: Vec<Batch> = (0..3).map(|_| random_batch(&mut r, spec, 120)).collect();
        let policy = EvictionPolicy::score();
        let resident =
            Engine::new(ctx.clone(), &twin.resident, &at_f16(options(1, policy, 64))).unwrap();
        let smallest = batches
            .iter()
            .map(|b| max_rows_per_sample(&twin, b))
            .max()
            .unwrap()
            .max(1);
        let cached = Engine::new(
            ctx.clone(),
            &twin.hashed,
            &at_f16(options(smallest, policy, 64)),
        )
        .unwrap();
        for (b, batch) in batches.iter().enumerate() {
            let want = resident.score(batch).unwrap();
            let got = cached.score(&twin.map(batch)).unwrap();
            assert_bits(
                &got,
                &want,
                &format!("seed {seed}, variant {variant}, batch {b}"),
            );
        }
        // Within f16's tolerance of the f64 reference on the hashed model.
        let mapped = twin.map(&batches[0]);
        let got = cached.score(&mapped).unwrap();
        let want = reference::forward(&twin.hashed, &mapped).unwrap();
        assert!(
            common::max_abs_diff(&got, &want) <= 2e-3,
            "seed {seed}: vs reference"
        );

        // Bytes: rows of d f16s padded to a word, against d f32s.
        let d = spec.d() as u64;
        let bytes = 64 * 4 * d;
        let with_bytes = |precision| {
            let mut o = options(1, policy, 64);
            o.cache.capacity = CacheCapacity::Bytes(bytes);
            o.precision = precision;
            Engine::new(ctx.clone(), &twin.hashed, &o)
                .unwrap()
                .cache_stats()
                .unwrap()
                .capacity_rows
        };
        // The index is a hash table of 16-byte entries: the next power of two at least four
        // times the rows (two entries per row, room for as many ids cached as unknown).
        let used =
            |rows: u64, row_bytes: u64| rows * row_bytes + 16 * (4 * rows).next_power_of_two();
        for (precision, row_bytes) in [
            (pepnet_core::gpu::linear::Precision::F32, 4 * d),
            (pepnet_core::gpu::linear::Precision::F16, 4 * d.div_ceil(2)),
        ] {
            let rows = with_bytes(precision);
            assert!(
                used(rows, row_bytes) <= bytes && used(rows + 1, row_bytes) > bytes,
                "seed {seed}: {rows} rows of {row_bytes} bytes with their index in {bytes} bytes"
            );
        }
    }
}
