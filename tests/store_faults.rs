//! The faults a real Redis Cluster has, on a real cluster started by each test (loopback ports,
//! temporary directories, every node stopped by its PID): a frozen node (SIGSTOP), a node
//! killed while rows are written, a node restarted without its data, a bulk load into a
//! namespace engines are scoring from, and a primary failing over to its replica.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis_cluster::RedisCluster;
use common::{gpu, rng};
use pepnet::batch::{Batch, Column};
use pepnet::cache::{CacheCapacity, StoreSource, UpdatePolicy};
use pepnet::store::redis::layout::{bucket_of, bucket_slot, DEFAULT_BUCKETS};
use pepnet::store::redis::{self, RedisOptions, RedisStore, RowType};
use pepnet::store::EmbeddingStore;
use pepnet::tools::cache_bench::{throughput_batches, throughput_models};
use pepnet::{Engine, EngineOptions, Model};
use rand::RngExt;

const USERS: usize = 300;
const ITEMS: usize = 1700;
/// The read deadline of these tests' stores.
const READ: Duration = Duration::from_millis(1000);
/// The probe interval.
const PROBE: Duration = Duration::from_millis(300);

fn options(cluster: &RedisCluster, namespace: &str, degraded: bool) -> RedisOptions {
    let mut o = RedisOptions::from_url(&cluster.url(), "test").unwrap();
    o.namespace = namespace.into();
    o.timeouts.read = READ;
    o.timeouts.connect = Duration::from_millis(300);
    o.probe = PROBE;
    o.degraded = degraded;
    o
}

fn load(cluster: &RedisCluster, namespace: &str, model: &Model) -> redis::Loaded {
    redis::load(
        &options(cluster, namespace, false),
        &model.spec,
        &model.weights,
        RowType::F32,
        &UpdatePolicy::default(),
        512,
        &mut |_, _| {},
    )
    .unwrap()
}

fn engine(model: &Model, store: Option<RedisOptions>) -> pepnet::Result<Engine> {
    let mut o = EngineOptions {
        max_batch: 512,
        ..Default::default()
    };
    o.cache.capacity = CacheCapacity::Rows(4 * (USERS + ITEMS) as u64);
    o.cache.store = match store {
        Some(r) => StoreSource::Open(Arc::new(r)),
        None => StoreSource::Model,
    };
    Engine::new(gpu(), model, &o)
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// The node (index) holding each bucket of `namespace` now.
fn bucket_owners(cluster: &RedisCluster, namespace: &str) -> Vec<usize> {
    let mut by_slot = HashMap::new();
    (0..DEFAULT_BUCKETS)
        .map(|b| {
            let slot = bucket_slot(namespace, b);
            *by_slot
                .entry(slot)
                .or_insert_with(|| cluster.owner_of(slot))
        })
        .collect()
}

/// The hashed ids (user_id, item_id) of `batch`, occurrence by occurrence, with their feature.
fn hashed_ids(batch: &Batch) -> Vec<(&'static str, u64)> {
    let mut out = Vec::new();
    for (column, name) in [(1, "user_id"), (2, "item_id")] {
        match &batch.columns[column] {
            Column::Sparse(ids) => out.extend(ids.iter().map(|&id| (name, id))),
            _ => unreachable!("single ids"),
        }
    }
    out
}

/// How many of `batch`'s id occurrences live on node `node`.
fn occurrences_on(owners: &[usize], batch: &Batch, node: usize) -> u64 {
    hashed_ids(batch)
        .into_iter()
        .filter(|&(f, id)| owners[bucket_of(f, id, DEFAULT_BUCKETS) as usize] == node)
        .count() as u64
}

/// Polls `engine` on `batch` until its scores equal `want` (at most `bound`); the time taken.
fn time_until_scores(engine: &Engine, batch: &Batch, want: &[f32], bound: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if engine.score(batch).is_ok_and(|s| bits(&s) == bits(want)) {
            return start.elapsed();
        }
        assert!(start.elapsed() < bound, "not seen within {bound:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_frozen_node_costs_one_timeout_then_is_skipped_counted_and_exact_once_it_thaws() {
    let cluster = RedisCluster::start(3);
    let (resident, hashed) = throughput_models(USERS, ITEMS, 31).unwrap();
    load(&cluster, "frozen", &hashed);
    let owners = bucket_owners(&cluster, "frozen");
    let resident_engine = engine(&resident, None).unwrap();
    // Uniform ids: every batch touches every node.
    let batches = throughput_batches(USERS, ITEMS, 0.0, 3, 500, 41);
    let wants: Vec<Vec<f32>> = batches
        .iter()
        .map(|(vocab, _)| resident_engine.score(vocab).unwrap())
        .collect();
    // The normal time of opening a store and scoring a cold batch.
    let start = Instant::now();
    let healthy = engine(&hashed, Some(options(&cluster, "frozen", true))).unwrap();
    assert_eq!(
        bits(&healthy.score(&batches[0].1).unwrap()),
        bits(&wants[0])
    );
    let normal = start.elapsed();
    drop(healthy);

    // Node 0 is the first seed node: opening the store meets it first.
    let frozen = 0;
    let frozen_node = format!("node 127.0.0.1:{}", cluster.ports[frozen]);
    cluster.pause_node(frozen);
    let start = Instant::now();
    let degraded = engine(&hashed, Some(options(&cluster, "frozen", true))).unwrap();
    let got = degraded.score(&batches[0].1).unwrap();
    let took = start.elapsed();
    eprintln!("degraded open + score with the first seed frozen: {took:?} (healthy {normal:?})");
    assert!(
        took < normal + READ + READ / 2,
        "one timeout, not one per key or per step: {took:?} against {normal:?} healthy"
    );
    assert_ne!(bits(&got), bits(&wants[0]), "some ids read default rows");
    let expected = occurrences_on(&owners, &batches[0].1, frozen);
    assert!(expected > 0);
    let stats = degraded.cache_stats().unwrap().total;
    assert_eq!(
        stats.unavailable, expected,
        "exactly the frozen node's id occurrences"
    );
    assert_eq!(stats.unknown, 0, "unavailable, not unknown");
    // Counted per node too: the frozen one is down and holds every unavailable lookup.
    let nodes = degraded.cache_stats().unwrap().store_nodes;
    let node = |name: &str| nodes.iter().find(|n| n.node == name).cloned();
    let frozen_health = node(&frozen_node["node ".len()..]).expect("listed");
    assert!(frozen_health.down);
    // The store counts the distinct ids it was asked for, the cache their occurrences.
    let distinct: std::collections::HashSet<_> = hashed_ids(&batches[0].1)
        .into_iter()
        .filter(|&(f, id)| owners[bucket_of(f, id, DEFAULT_BUCKETS) as usize] == frozen)
        .collect();
    assert_eq!(frozen_health.unavailable, distinct.len() as u64);
    assert_eq!(nodes.iter().filter(|n| n.down).count(), 1, "{nodes:?}");
    // The node is skipped at once from now on.
    let start = Instant::now();
    degraded.score(&batches[1].1).unwrap();
    assert!(start.elapsed() < READ / 2, "{:?}", start.elapsed());
    let stats = degraded.cache_stats().unwrap().total;
    assert_eq!(
        stats.unavailable,
        expected + occurrences_on(&owners, &batches[1].1, frozen)
    );

    // Without --degraded: a named failure within one timeout, then at once.
    let start = Instant::now();
    let strict = engine(&hashed, Some(options(&cluster, "frozen", false))).unwrap();
    let err = strict.score(&batches[0].1).unwrap_err().to_string();
    assert!(
        start.elapsed() < normal + READ + READ / 2,
        "{:?}",
        start.elapsed()
    );
    assert!(
        err.contains(&frozen_node) && err.contains("feature '"),
        "{err}"
    );
    let start = Instant::now();
    let err = strict.score(&batches[2].1).unwrap_err().to_string();
    assert!(start.elapsed() < READ / 2, "{:?}", start.elapsed());
    assert!(
        err.contains(&frozen_node) && err.contains("--degraded"),
        "{err}"
    );

    // Thawed: both exact again without a restart, within a few probe intervals.
    cluster.resume_node(frozen);
    for (name, e) in [("degraded", &degraded), ("strict", &strict)] {
        for ((_, raw), want) in batches.iter().zip(&wants) {
            let took = time_until_scores(e, raw, want, 4 * PROBE + READ);
            eprintln!("{name}: exact {took:?} after the node thawed");
        }
    }
}

#[test]
fn a_killed_node_refuses_its_writes_and_engines_agree_once_it_is_back_and_loaded() {
    let mut cluster = RedisCluster::start(3);
    let (_, hashed) = throughput_models(USERS, ITEMS, 32).unwrap();
    load(&cluster, "killed", &hashed);
    let owners = bucket_owners(&cluster, "killed");
    let (_, raw) = throughput_batches(USERS, ITEMS, 0.0, 1, 400, 42)
        .pop()
        .unwrap();
    let (a, b) = (
        engine(&hashed, Some(options(&cluster, "killed", true))).unwrap(),
        engine(&hashed, Some(options(&cluster, "killed", true))).unwrap(),
    );
    let before = a.score(&raw).unwrap();
    assert_eq!(bits(&b.score(&raw).unwrap()), bits(&before));

    // Node 2 dies (it holds rows and update streams of its buckets). A writer writes every
    // user of the batch: writes to node 2's buckets are refused, naming it; the others reach
    // both engines.
    let dead = 2;
    cluster.stop_node(dead);
    let mut writer = RedisStore::open(options(&cluster, "killed", true), &hashed.spec).unwrap();
    let mut r = rng(5);
    let users: Vec<u64> = match &raw.columns[1] {
        Column::Sparse(ids) => ids.clone(),
        _ => unreachable!(),
    };
    let (mut written, mut refused) = (0, 0);
    for &user in users.iter().take(60) {
        let row: Vec<f32> = (0..16).map(|_| r.random_range(-1.0..1.0)).collect();
        let on_dead = owners[bucket_of("user_id", user, DEFAULT_BUCKETS) as usize] == dead;
        match writer.put((1, user), &row) {
            Ok(true) => {
                assert!(!on_dead, "a write to the dead node's bucket succeeded");
                written += 1;
            }
            Err(e) => {
                assert!(on_dead, "{e}");
                let e = e.to_string();
                assert!(
                    e.contains(&format!("127.0.0.1:{}", cluster.ports[dead]))
                        && e.contains("'user_id'")
                        && e.contains("refused"),
                    "{e}"
                );
                refused += 1;
            }
            Ok(false) => unreachable!("no cap"),
        }
    }
    assert!(written > 0 && refused > 0, "{written} {refused}");
    // Both engines converge on the same scores (the dead node's ids read default rows in both).
    let start = Instant::now();
    loop {
        let (sa, sb) = (a.score(&raw).unwrap(), b.score(&raw).unwrap());
        if bits(&sa) == bits(&sb) && bits(&sa) != bits(&before) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(3), "engines disagree");
        std::thread::sleep(Duration::from_millis(10));
    }

    // Back, empty (nothing was saved): its buckets have no metadata, so their ids are
    // unavailable (not unknown), and writes to them are refused.
    cluster.start_node(dead);
    cluster.wait_until_ok();
    std::thread::sleep(PROBE * 3);
    let fresh = engine(&hashed, Some(options(&cluster, "killed", true))).unwrap();
    fresh.score(&raw).unwrap();
    let stats = fresh.cache_stats().unwrap().total;
    assert_eq!(
        stats.unavailable,
        occurrences_on(&owners, &raw, dead),
        "{stats:?}"
    );
    let strict = engine(&hashed, Some(options(&cluster, "killed", false))).unwrap();
    let err = strict.score(&raw).unwrap_err().to_string();
    assert!(err.contains("restarted without its data"), "{err}");
    let on_dead = users
        .iter()
        .copied()
        .find(|&u| owners[bucket_of("user_id", u, DEFAULT_BUCKETS) as usize] == dead)
        .unwrap();
    let err = writer
        .put((1, on_dead), &[0.5; 16])
        .unwrap_err()
        .to_string();
    assert!(err.contains("load the namespace again"), "{err}");

    // Loaded again: every engine drops what it cached, and all score alike, every id.
    load(&cluster, "killed", &hashed);
    let want = fresh_scores(&hashed, &raw);
    for e in [&a, &b, &fresh, &strict] {
        time_until_scores(e, &raw, &want, Duration::from_secs(2));
    }
    assert!(a.cache_stats().unwrap().store_reloads >= 1);
}

/// Scores of `batch` from `model`'s own rows.
fn fresh_scores(model: &Model, batch: &Batch) -> Vec<f32> {
    engine(model, None).unwrap().score(batch).unwrap()
}

#[test]
fn a_load_into_a_live_namespace_reaches_every_engine_within_two_seconds() {
    let cluster = RedisCluster::start(3);
    let (_, old) = throughput_models(USERS, ITEMS, 33).unwrap();
    // The same model with new rows for every id (a retrained embedding table).
    let mut new = old.clone();
    let mut r = rng(7);
    for name in ["user_id", "item_id"] {
        for x in &mut new.weights.hashed_mut(name).unwrap().rows {
            *x = r.random_range(-1.0..1.0);
        }
    }
    // The first load lacks a tenth of the users: engines cache them as unknown.
    let mut partial = old.clone();
    {
        let h = partial.weights.hashed_mut("user_id").unwrap();
        let keep = h.ids.len() * 9 / 10;
        h.ids.truncate(keep);
        h.rows.truncate(keep * 16);
    }
    let first = load(&cluster, "live", &partial);
    let (_, raw) = throughput_batches(USERS, ITEMS, 0.0, 1, 500, 43)
        .pop()
        .unwrap();
    let engines = [
        engine(&new, Some(options(&cluster, "live", false))).unwrap(),
        engine(&new, Some(options(&cluster, "live", true))).unwrap(),
    ];
    let before = fresh_scores(&partial, &raw);
    for e in &engines {
        assert_eq!(bits(&e.score(&raw).unwrap()), bits(&before));
        assert!(e.cache_stats().unwrap().total.unknown > 0);
    }
    let second = load(&cluster, "live", &new);
    assert_eq!(second.generation, first.generation + 1);
    let loaded = Instant::now();
    let want = fresh_scores(&new, &raw);
    assert_ne!(bits(&want), bits(&before));
    for e in &engines {
        let took = time_until_scores(e, &raw, &want, Duration::from_secs(2));
        eprintln!("new rows and formerly unknown ids scored {took:?} after the load");
    }
    assert!(loaded.elapsed() < Duration::from_secs(2));
    let stats = engines[0].cache_stats().unwrap();
    assert_eq!(stats.store_reloads, 1);
    assert!(stats.total.reloaded > 0, "{stats:?}");
}

#[test]
fn a_primary_fails_over_and_scores_and_writes_are_exact_again_without_a_restart() {
    let mut cluster = RedisCluster::start_with(3, 1, 1000);
    let (resident, hashed) = throughput_models(USERS, ITEMS, 35).unwrap();
    load(&cluster, "failover", &hashed);
    cluster.wait_for_replicas(1);
    let owners = bucket_owners(&cluster, "failover");
    let batches = throughput_batches(USERS, ITEMS, 0.0, 2, 400, 44);
    let resident_engine = engine(&resident, None).unwrap();
    let wants: Vec<Vec<f32>> = batches
        .iter()
        .map(|(vocab, _)| resident_engine.score(vocab).unwrap())
        .collect();
    let strict = engine(&hashed, Some(options(&cluster, "failover", false))).unwrap();
    let degraded = engine(&hashed, Some(options(&cluster, "failover", true))).unwrap();
    assert_eq!(bits(&strict.score(&batches[0].1).unwrap()), bits(&wants[0]));

    // Kill the primary of bucket 0 while scoring.
    let victim = owners[0];
    let slot = bucket_slot("failover", 0);
    cluster.stop_node(victim);
    let start = Instant::now();
    let mut answered = 0;
    while start.elapsed() < Duration::from_millis(500) {
        let s = degraded.score(&batches[1].1).unwrap();
        assert!(s.iter().all(|p| p.is_finite() && *p > 0.0 && *p < 1.0));
        answered += 1;
    }
    assert!(answered > 0);
    let promoted = cluster.wait_for_failover(slot, victim);
    eprintln!(
        "node {victim} killed; node {promoted} serves its slots after {:?}",
        start.elapsed()
    );
    // Both engines follow the new topology: exact on every batch, no restart.
    for e in [&strict, &degraded] {
        for ((_, raw), want) in batches.iter().zip(&wants) {
            time_until_scores(e, raw, want, Duration::from_secs(5));
        }
    }
    // A write after the failover (to the promoted node) reaches both engines.
    let user = hashed_ids(&batches[0].1)
        .into_iter()
        .find(|&(f, id)| f == "user_id" && bucket_of(f, id, DEFAULT_BUCKETS) == 0)
        .map(|(_, id)| id);
    let mut writer = RedisStore::open(options(&cluster, "failover", false), &hashed.spec).unwrap();
    if let Some(user) = user {
        let mut r = rng(6);
        let row: Vec<f32> = (0..16).map(|_| r.random_range(-1.0..1.0)).collect();
        assert!(writer.put((1, user), &row).unwrap());
        let mut changed = hashed.clone();
        let h = changed.weights.hashed_mut("user_id").unwrap();
        let at = h.ids.iter().position(|&i| i == user).unwrap();
        h.rows[at * 16..(at + 1) * 16].copy_from_slice(&row);
        let want = fresh_scores(&changed, &batches[0].1);
        for e in [&strict, &degraded] {
            time_until_scores(e, &batches[0].1, &want, Duration::from_secs(2));
        }
    }
}
