//! The embedding store on a real Redis Cluster (three `redis-server` nodes on loopback ports,
//! started and stopped by the test): rows loaded and read back bit for bit, scores through the
//! cluster equal to the resident model's and the in-memory store's, writes through the store,
//! and a node going down (a named error, or degraded mode counted) and coming back.

mod common;

use std::time::{Duration, Instant};

use common::redis_cluster::RedisCluster;
use common::{gpu, rng};
use pepnet::cache::{CacheCapacity, StoreSource, UpdatePolicy};
use pepnet::store::redis::{self, RedisOptions, RedisStore, RowType};
use pepnet::store::{EmbeddingStore, Fetched, Key, MemoryStore};
use pepnet::tools::cache_bench::{throughput_batches, throughput_models};
use pepnet::{Engine, EngineOptions, Model};
use rand::RngExt;

const USERS: usize = 300;
const ITEMS: usize = 1700;

fn options(cluster: &RedisCluster, namespace: &str) -> RedisOptions {
    let mut o = RedisOptions::from_url(&cluster.url(), "test").unwrap();
    o.namespace = namespace.into();
    o.timeouts.read = Duration::from_millis(500);
    o
}

fn load(cluster: &RedisCluster, namespace: &str, model: &Model, row_type: RowType) {
    load_with(cluster, namespace, model, row_type, UpdatePolicy::default())
}

fn load_with(
    cluster: &RedisCluster,
    namespace: &str,
    model: &Model,
    row_type: RowType,
    policy: UpdatePolicy,
) {
    let mut calls = 0;
    let loaded = redis::load(
        &options(cluster, namespace),
        &model.spec,
        &model.weights,
        row_type,
        &policy,
        257,
        &mut |done, total| {
            calls += 1;
            assert!(done <= total);
        },
    )
    .unwrap();
    assert_eq!(loaded.rows, USERS + ITEMS);
    assert!(calls >= (USERS + ITEMS) / 257);
}

fn engine(model: &Model, store: StoreSource, rows: u64, max_batch: usize) -> Engine {
    let mut o = EngineOptions {
        max_batch,
        ..Default::default()
    };
    o.cache.capacity = CacheCapacity::Rows(rows);
    o.cache.store = store;
    Engine::new(gpu(), model, &o).unwrap()
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn rows_read_back_exactly_and_scores_equal_the_resident_model_bit_for_bit() {
    let cluster = RedisCluster::start(3);
    let (resident, hashed) = throughput_models(USERS, ITEMS, 5).unwrap();
    load(&cluster, "m1", &hashed, RowType::F32);

    // The client's slots agree with the server's.
    for key in ["pepnet:m1:{user_id:7}", "abc", "{x}y", "a{}b"] {
        assert_eq!(
            redis::key_slot(key.as_bytes()),
            cluster.keyslot(key),
            "{key}"
        );
    }

    // Every row, and some unknown ids, read back exactly as the in-memory store has them.
    let mut memory = MemoryStore::from_weights(&hashed.spec, &hashed.weights);
    let mut store = RedisStore::open(options(&cluster, "m1"), &hashed.spec).unwrap();
    assert_eq!(store.len(), USERS + ITEMS);
    let mut keys: Vec<Key> = memory.keys().unwrap();
    keys.sort_unstable();
    keys.extend([(1, 12345), (2, u64::MAX)]);
    let d = 16;
    let (mut got, mut want) = (vec![0.0; keys.len() * d], vec![0.0; keys.len() * d]);
    let (mut got_found, mut want_found) = (
        vec![Fetched::Unavailable; keys.len()],
        vec![Fetched::Unavailable; keys.len()],
    );
    store.get_many(&keys, &mut got, &mut got_found).unwrap();
    memory.get_many(&keys, &mut want, &mut want_found).unwrap();
    assert_eq!(got_found, want_found);
    assert_eq!(got_found.last(), Some(&Fetched::Unknown));
    assert_eq!(bits(&got), bits(&want));

    // Scores through a small cache over the cluster equal the resident model's, bit for bit,
    // and the in-memory store's.
    let batches = throughput_batches(USERS, ITEMS, 1.0, 6, 300, 9);
    let redis_engine = engine(
        &hashed,
        StoreSource::Open(std::sync::Arc::new(options(&cluster, "m1"))),
        700,
        300,
    );
    let memory_engine = engine(&hashed, StoreSource::Model, 700, 300);
    let resident_engine = engine(&resident, StoreSource::Model, 700, 300);
    for (vocab, raw) in &batches {
        let want = resident_engine.score(vocab).unwrap();
        assert_eq!(bits(&redis_engine.score(raw).unwrap()), bits(&want));
        assert_eq!(bits(&memory_engine.score(raw).unwrap()), bits(&want));
    }
    let stats = redis_engine.cache_stats().unwrap().total;
    assert!(stats.insertions > 700 && stats.evictions > 0, "{stats:?}");
    assert_eq!(stats.unavailable, 0);

    // An f16 namespace reads back each row rounded to f16.
    load(&cluster, "m1-f16", &hashed, RowType::F16);
    let mut half = RedisStore::open(options(&cluster, "m1-f16"), &hashed.spec).unwrap();
    assert_eq!(half.row_type(), RowType::F16);
    half.get_many(&keys, &mut got, &mut got_found).unwrap();
    let rounded: Vec<f32> = want
        .iter()
        .map(|&x| half::f16::from_f32(x).to_f32())
        .collect();
    assert_eq!(bits(&got), bits(&rounded));
}

#[test]
fn writes_through_the_store_reach_scores_and_bad_namespaces_are_named() {
    let cluster = RedisCluster::start(3);
    let (_, hashed) = throughput_models(USERS, ITEMS, 6).unwrap();
    load(&cluster, "m2", &hashed, RowType::F32);
    let e = engine(
        &hashed,
        StoreSource::Open(std::sync::Arc::new(options(&cluster, "m2"))),
        500,
        256,
    );
    let (_, raw) = &throughput_batches(USERS, ITEMS, 1.0, 1, 200, 3)[0];
    let before = e.score(raw).unwrap();
    let user = match &raw.columns[1] {
        pepnet::batch::Column::Sparse(ids) => ids[0],
        _ => unreachable!(),
    };
    let mut r = rng(4);
    let row: Vec<f32> = (0..16).map(|_| r.random_range(-1.0..1.0)).collect();
    let outcome = e.update_rows("user_id", &[user], &row, 0).unwrap();
    assert_eq!(outcome.applied, 1);
    let after = e.score(raw).unwrap();
    assert_ne!(
        bits(&before[..2]),
        bits(&after[..2]),
        "sample 0 reads the new row"
    );
    // A fresh engine on the same namespace (another process, in effect) reads the new row.
    let other = engine(
        &hashed,
        StoreSource::Open(std::sync::Arc::new(options(&cluster, "m2"))),
        500,
        256,
    );
    assert_eq!(bits(&other.score(raw).unwrap()), bits(&after));

    let mut gpu_options = EngineOptions::default();
    gpu_options.cache.store =
        StoreSource::Open(std::sync::Arc::new(options(&cluster, "nothing-here")));
    let err = Engine::new(gpu(), &hashed, &gpu_options)
        .err()
        .expect("an empty namespace")
        .to_string();
    assert!(
        err.contains("'nothing-here'") && err.contains("store load"),
        "{err}"
    );
    let mut narrow = hashed.spec.clone();
    narrow.embedding_dim = 8;
    let err = RedisStore::open(options(&cluster, "m2"), &narrow)
        .err()
        .expect("a width mismatch")
        .to_string();
    assert!(err.contains("16 floats") && err.contains("d is 8"), "{err}");
}

#[test]
fn a_node_down_is_named_or_degrades_counted_and_scoring_recovers_when_it_returns() {
    let mut cluster = RedisCluster::start(3);
    let (resident, hashed) = throughput_models(USERS, ITEMS, 8).unwrap();
    load(&cluster, "m3", &hashed, RowType::F32);
    let strict = engine(
        &hashed,
        StoreSource::Open(std::sync::Arc::new(options(&cluster, "m3"))),
        4 * (USERS + ITEMS) as u64,
        512,
    );
    let mut degraded_options = options(&cluster, "m3");
    degraded_options.degraded = true;
    let degraded = engine(
        &hashed,
        StoreSource::Open(std::sync::Arc::new(degraded_options)),
        4 * (USERS + ITEMS) as u64,
        512,
    );
    let resident_engine = engine(&resident, StoreSource::Model, 16, 512);
    let (vocab, raw) = throughput_batches(USERS, ITEMS, 0.0, 1, 500, 77)
        .pop()
        .unwrap();
    let want = resident_engine.score(&vocab).unwrap();

    // A node that accepts connections but answers nothing (frozen): named once the timeout
    // passes.
    cluster.pause_node(1);
    let started = Instant::now();
    let err = strict
        .score(&raw)
        .expect_err("a node is frozen")
        .to_string();
    cluster.resume_node(1);
    let frozen = format!("node 127.0.0.1:{}", cluster.ports[1]);
    assert!(err.contains(&frozen) && err.contains("feature '"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded by the timeouts"
    );
    cluster.wait_until_ok();

    cluster.stop_node(0);
    let down = format!("127.0.0.1:{}", cluster.ports[0]);
    let err = strict.score(&raw).expect_err("a node is down").to_string();
    assert!(
        err.contains(&format!("node {down}")) && err.contains("feature '"),
        "the error names the node and the feature: {err}"
    );
    assert!(err.contains("--degraded"), "{err}");

    let got = degraded.score(&raw).unwrap();
    assert!(got.iter().all(|p| p.is_finite() && *p > 0.0 && *p < 1.0));
    let stats = degraded.cache_stats().unwrap().total;
    assert!(stats.unavailable > 0, "{stats:?}");
    assert_ne!(bits(&got), bits(&want), "some ids read default rows");

    // Back (empty: nothing was saved), reloaded: both engines score as the resident model.
    cluster.start_node(0);
    cluster.wait_until_ok();
    load(&cluster, "m3", &hashed, RowType::F32);
    std::thread::sleep(Duration::from_millis(1100)); // the degraded engine's rest for the node
    assert_eq!(bits(&strict.score(&raw).unwrap()), bits(&want));
    assert_eq!(bits(&degraded.score(&raw).unwrap()), bits(&want));
}

/// Polls `engine` on `batch` until its scores equal `want` (at most `bound`); the time taken.
fn time_until_scores(
    engine: &Engine,
    batch: &pepnet::batch::Batch,
    want: &[f32],
    bound: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        if bits(&engine.score(batch).unwrap()) == bits(want) {
            return start.elapsed();
        }
        assert!(start.elapsed() < bound, "not seen within {bound:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn first_user(batch: &pepnet::batch::Batch) -> u64 {
    match &batch.columns[1] {
        pepnet::batch::Column::Sparse(ids) => ids[0],
        _ => unreachable!("user_id is column 1"),
    }
}

#[test]
fn a_write_reaches_every_engine_within_the_bound_and_the_cap_holds_across_them() {
    let cluster = RedisCluster::start(3);
    let (_, hashed) = throughput_models(USERS, ITEMS, 9).unwrap();
    let policy = UpdatePolicy {
        max_updates: Some(2),
        window_secs: 3600,
        expire_after_secs: None,
    };
    load_with(&cluster, "m4", &hashed, RowType::F32, policy);
    let open = || {
        engine(
            &hashed,
            StoreSource::Open(std::sync::Arc::new(options(&cluster, "m4"))),
            4 * (USERS + ITEMS) as u64,
            256,
        )
    };
    // Two scoring engines (each with its own connections and stream follower, as two
    // processes have) and an updater.
    let (a, b, updater) = (open(), open(), open());
    let (_, raw) = throughput_batches(USERS, ITEMS, 1.0, 1, 200, 21)
        .pop()
        .unwrap();
    let before = a.score(&raw).unwrap();
    assert_eq!(bits(&b.score(&raw).unwrap()), bits(&before));
    let user = first_user(&raw);
    let mut r = rng(10);
    let mut row = || -> Vec<f32> { (0..16).map(|_| r.random_range(-1.0..1.0)).collect() };

    let outcome = updater.update_rows("user_id", &[user], &row(), 0).unwrap();
    assert_eq!((outcome.applied, outcome.capped), (1, 0));
    let want = updater.score(&raw).unwrap();
    assert_ne!(bits(&want), bits(&before));
    let bound = Duration::from_secs(2);
    for (name, e) in [("a", &a), ("b", &b)] {
        let took = time_until_scores(e, &raw, &want, bound);
        eprintln!("engine {name} scored the new row {took:?} after the write returned");
    }
    // The engines' own counters say the stale rows left their caches and were fetched again.
    assert!(a.cache_stats().unwrap().total.insertions > 0);

    // The cap (2 writes per window) holds across processes: a's write is the second, b's the
    // third, refused.
    let second = a.update_rows("user_id", &[user], &row(), 0).unwrap();
    assert_eq!((second.applied, second.capped), (1, 0));
    let want = a.score(&raw).unwrap();
    let third = b.update_rows("user_id", &[user], &row(), 0).unwrap();
    assert_eq!((third.applied, third.capped), (0, 1));
    time_until_scores(&b, &raw, &want, bound);
    time_until_scores(&updater, &raw, &want, bound);
    assert_eq!(b.cache_stats().unwrap().total.capped_updates, 1);
    // An engine given its own policy beside the store's is refused, naming the flags.
    let mut o = EngineOptions::default();
    o.cache.store = StoreSource::Open(std::sync::Arc::new(options(&cluster, "m4")));
    o.cache.updates.max_updates = Some(5);
    let err = Engine::new(gpu(), &hashed, &o)
        .err()
        .expect("two policies")
        .to_string();
    assert!(err.contains("--max-updates"), "{err}");
}

#[test]
fn rows_expire_everywhere_and_expired_ids_score_as_never_seen() {
    let cluster = RedisCluster::start(3);
    let (_, hashed) = throughput_models(USERS, ITEMS, 10).unwrap();
    let policy = UpdatePolicy {
        max_updates: None,
        window_secs: 3600,
        expire_after_secs: Some(2),
    };
    load_with(&cluster, "m5", &hashed, RowType::F32, policy);
    let open = || {
        engine(
            &hashed,
            StoreSource::Open(std::sync::Arc::new(options(&cluster, "m5"))),
            4 * (USERS + ITEMS) as u64,
            256,
        )
    };
    let (a, b) = (open(), open());
    let mut never_seen = hashed.clone();
    for name in ["user_id", "item_id"] {
        let h = never_seen.weights.hashed_mut(name).unwrap();
        h.ids.clear();
        h.rows.clear();
    }
    let unknown = engine(&never_seen, StoreSource::Model, 64, 256);
    let (_, raw) = throughput_batches(USERS, ITEMS, 1.0, 1, 200, 22)
        .pop()
        .unwrap();
    let fresh = a.score(&raw).unwrap();
    assert_eq!(bits(&b.score(&raw).unwrap()), bits(&fresh));
    let gone = unknown.score(&raw).unwrap();
    assert_ne!(bits(&fresh), bits(&gone));
    // Two seconds after the load every row has expired, in Redis and in both caches.
    for e in [&a, &b] {
        time_until_scores(e, &raw, &gone, Duration::from_secs(5));
    }
    let stats = a.cache_stats().unwrap().total;
    assert!(stats.expired > 0, "{stats:?}");
    assert!(stats.unknown > 0, "{stats:?}");
}
