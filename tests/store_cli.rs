//! The Redis Cluster store from the command line, across processes: `pepnet store load` fills a
//! namespace, two `pepnet serve --store` processes score from it, `pepnet apply-rows --store`
//! (a third process) writes a row that both servers then score, and the update cap set at load
//! holds across the servers. A frozen node under `score --store` and a loaded `serve --store`,
//! and a bulk load into the namespace servers are using.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::redis_cluster::RedisCluster;
use common::rng;
use common::server::{agent, user_rows, user_scores, Server, HASHED_SPEC};
use pepnet::{Model, ModelSpec};
use rand::RngExt;
use serde_json::Value;

const USERS: [u64; 5] = [7, 8, 9, u64::MAX, 1 << 63];

/// A model whose 5 users have random stored rows.
fn model(dir: &Path) -> PathBuf {
    model_of(dir, "model", &USERS, 3)
}

/// The hashed model (its dense weights from seed 3) whose `users` have random stored rows
/// (from `rows_seed`), saved as `dir/name`.
fn model_of(dir: &Path, name: &str, users: &[u64], rows_seed: u64) -> PathBuf {
    let mut model = Model::init(ModelSpec::from_json(HASHED_SPEC, "spec").unwrap(), 3).unwrap();
    let mut r = rng(rows_seed);
    let h = model.weights.hashed_mut("user_id").unwrap();
    h.ids = users.to_vec();
    h.rows = (0..4 * users.len())
        .map(|_| r.random_range(-1.0..1.0))
        .collect();
    let out = dir.join(name);
    model.save(&out).unwrap();
    out
}

fn pepnet(args: &[&str]) -> String {
    common::cli::ok(&common::cli::pepnet(args), &format!("pepnet {args:?}"))
}

/// The served model's scores of `users`, as bits.
fn scores(server: &Server, users: &[u64]) -> Vec<u32> {
    user_scores(&format!("{}/v2/models/pepnet", server.url), users)
}

fn post_row(server: &Server, id: u64, row: [f32; 4]) -> Value {
    agent()
        .post(&format!("{}/v2/models/pepnet/rows", server.url))
        .send_bytes(&user_rows(&[id], &row))
        .unwrap()
        .into_json()
        .unwrap()
}

#[test]
fn two_servers_score_from_one_store_see_a_third_process_write_and_share_the_cap() {
    let mut cluster = RedisCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let model = model(dir.path());
    let m = model.to_str().unwrap();
    let url = cluster.url();
    let err = pepnet(&[
        "store",
        "load",
        "--model",
        m,
        "--store",
        &url,
        "--store-namespace",
        "cli",
        "--max-updates",
        "2",
        "--quiet",
    ]);
    assert!(
        err.contains("loaded 5 rows (f32) into namespace 'cli'"),
        "{err}"
    );

    let store_args = ["--store", url.as_str(), "--store-namespace", "cli"];
    let (a, b) = (
        Server::start_model(&model, &store_args),
        Server::start_model(&model, &store_args),
    );
    let plain = Server::start_model(&model, &[]);
    let before = scores(&a, &USERS);
    assert_eq!(scores(&b, &USERS), before);
    assert_eq!(
        scores(&plain, &USERS),
        before,
        "the store's rows are the model's"
    );

    // A third process writes user 7's row; both servers score it within the bound.
    let rows = dir.path().join("rows.safetensors");
    std::fs::write(&rows, user_rows(&[7], &[0.9, -0.8, 0.7, -0.6])).unwrap();
    let err = pepnet(&[
        "apply-rows",
        "--model",
        m,
        "--rows",
        rows.to_str().unwrap(),
        "--store",
        &url,
        "--store-namespace",
        "cli",
    ]);
    assert!(err.contains("user_id: 1 rows written"), "{err}");
    let start = Instant::now();
    loop {
        let (sa, sb) = (scores(&a, &USERS), scores(&b, &USERS));
        if sa[0] != before[0] && sb[0] != before[0] {
            assert_eq!(sa, sb);
            assert_eq!(sa[1..], before[1..], "only user 7 changed");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "not seen within 2 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    // The cap of 2 writes per window counts the writes of every process: apply-rows made the
    // first, server a the second, server b's is the third and is refused.
    let second = post_row(&a, 7, [0.1, 0.2, 0.3, 0.4]);
    assert_eq!(
        (second["applied"].as_u64(), second["capped"].as_u64()),
        (Some(1), Some(0))
    );
    let third = post_row(&b, 7, [0.5, 0.5, 0.5, 0.5]);
    assert_eq!(
        (third["applied"].as_u64(), third["capped"].as_u64()),
        (Some(0), Some(1))
    );
    // apply-rows over the cap: the write did not happen, so it fails, naming the feature and id.
    let out = Command::new(env!("CARGO_BIN_EXE_pepnet"))
        .args(["apply-rows", "--model", m, "--rows", rows.to_str().unwrap()])
        .args(["--store", &url, "--store-namespace", "cli"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("0 rows written, 1 refused by the update cap")
            && err.contains("feature 'user_id' (the first: id 7) were not written"),
        "{err}"
    );
    let start = Instant::now();
    while scores(&a, &USERS) != scores(&b, &USERS) {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "servers disagree after 2 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // The policy lives in the store: a server given its own is refused at start, naming it.
    let out = Command::new(env!("CARGO_BIN_EXE_pepnet"))
        .args(["serve", "--model", m, "--http", "127.0.0.1:0"])
        .args(store_args)
        .args(["--max-updates", "9"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--max-updates"),
        "{err}"
    );

    // The store gone: the server's side, so 503 (not the client's 400, nor an anonymous 500),
    // naming a node and the feature whose rows it holds.
    for i in 0..3 {
        cluster.stop_node(i);
    }
    let expect_503 = |response: Result<ureq::Response, ureq::Error>, what: &str| match response {
        Err(ureq::Error::Status(503, r)) => {
            let body: Value = r.into_json().unwrap();
            let message = body["error"].as_str().unwrap().to_string();
            assert!(
                message.contains("node 127.0.0.1:") && message.contains("feature 'user_id'"),
                "{what}: {message}"
            );
            message
        }
        other => panic!("{what}: {:?}", other.map(|r| r.status())),
    };
    let written = agent()
        .post(&format!("{}/v2/models/pepnet/rows", a.url))
        .send_bytes(&user_rows(&[40], &[0.1, 0.2, 0.3, 0.4]));
    expect_503(written, "rows");
    // A user no server has cached, so its row must come from the store.
    let body = serde_json::json!({"inputs": [
        {"name": "tab", "datatype": "INT64", "shape": [1], "data": [0]},
        {"name": "user_id", "datatype": "UINT64", "shape": [1], "data": [123_456_789u64]},
        {"name": "dur", "datatype": "FP32", "shape": [1], "data": [0.5]}
    ]});
    let scored = agent()
        .post(&format!("{}/v2/models/pepnet/infer", a.url))
        .send_json(body);
    expect_503(scored, "infer");
}

/// Runs `pepnet args`; its exit status, stderr and time taken.
fn timed(args: &[&str]) -> (bool, String, Duration) {
    let start = Instant::now();
    let out = common::cli::pepnet(args);
    (
        out.status.success(),
        common::cli::stderr(&out),
        start.elapsed(),
    )
}

/// One request of the load: 6 known users and 2 never seen (so every batch asks the store).
fn mixed_request(users: &[u64], r: &mut impl rand::Rng) -> Value {
    let mut ids: Vec<u64> = (0..6)
        .map(|_| users[r.random_range(0..users.len())])
        .collect();
    ids.extend((0..2).map(|_| r.random::<u64>()));
    serde_json::json!({"inputs": [
        {"name": "tab", "datatype": "INT64", "shape": [8], "data": [0, 1, 2, 0, 1, 2, 0, 1]},
        {"name": "user_id", "datatype": "UINT64", "shape": [8], "data": ids},
        {"name": "dur", "datatype": "FP32", "shape": [8], "data": vec![0.5; 8]}
    ]})
}

/// `clients` closed-loop clients posting to `url` for `length`; (start, latency, status) of
/// every request.
fn closed_loop(
    url: &str,
    users: &[u64],
    clients: u64,
    length: Duration,
) -> Vec<(Instant, Duration, u16)> {
    let until = Instant::now() + length;
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (url, users) = (url.to_string(), users.to_vec());
            std::thread::spawn(move || {
                let mut r = rng(100 + c);
                let agent = agent();
                let mut seen = Vec::new();
                while Instant::now() < until {
                    let body = mixed_request(&users, &mut r);
                    let start = Instant::now();
                    let status = match agent.post(&url).send_json(body) {
                        Ok(r) => r.status(),
                        Err(ureq::Error::Status(code, _)) => code,
                        Err(e) => panic!("{e}"),
                    };
                    seen.push((start, start.elapsed(), status));
                }
                seen
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

#[test]
fn a_frozen_node_costs_score_and_serve_one_timeout_and_a_load_reaches_servers_within_two_seconds() {
    let cluster = RedisCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let users: Vec<u64> = (0..300u64).map(|i| i * 7919 + 1).collect();
    let old = model_of(dir.path(), "old", &users, 3);
    let new = model_of(dir.path(), "new", &users, 4);
    let url = cluster.url();
    let store = ["--store", url.as_str(), "--store-namespace", "live"];
    let load = |model: &Path| {
        let mut args = vec![
            "store",
            "load",
            "--model",
            model.to_str().unwrap(),
            "--quiet",
        ];
        args.extend(store);
        pepnet(&args)
    };
    load(&old);

    // `score --store` with the first seed node frozen: one timeout beyond its normal time.
    let input = dir.path().join("input.csv");
    let mut csv = String::from("tab,user_id,dur\n");
    let mut r = rng(9);
    for i in 0..3000 {
        let user = users[r.random_range(0..users.len())];
        csv += &format!("{},{user},{}\n", i % 3, r.random_range(0.0..2.0f32));
    }
    std::fs::write(&input, csv).unwrap();
    let score = |output: &str, extra: &[&str]| {
        let output = dir.path().join(output);
        let mut args = vec!["score", "--model", old.to_str().unwrap()];
        args.extend(["--input", input.to_str().unwrap()]);
        args.extend(["--output", output.to_str().unwrap()]);
        args.extend(store);
        args.extend(["--store-timeout-ms", "1000"]);
        args.extend(extra);
        timed(&args)
    };
    let (ok, err, healthy) = score("healthy.csv", &["--degraded"]);
    assert!(ok, "{err}");
    cluster.pause_node(0);
    let frozen = format!("127.0.0.1:{}", cluster.ports[0]);
    let (ok, err, degraded) = score("degraded.csv", &["--degraded"]);
    eprintln!(
        "score --store --degraded: {degraded:?} with the first seed frozen, {healthy:?} healthy"
    );
    assert!(ok, "{err}");
    assert!(
        err.contains(&frozen) && err.contains("down"),
        "the warning names the node: {err}"
    );
    assert!(
        degraded < healthy + Duration::from_millis(1500),
        "{degraded:?} against {healthy:?}"
    );
    let (ok, err, strict) = score("strict.csv", &[]);
    assert!(
        !ok && err.contains(&format!("node {frozen}")) && err.contains("'user_id'"),
        "{err}"
    );
    assert!(strict < healthy + Duration::from_millis(1500), "{strict:?}");
    assert!(
        !dir.path().join("strict.csv").exists(),
        "a failed run leaves no output"
    );
    cluster.resume_node(0);

    // `serve --store --degraded` under 16 closed-loop clients, node 1 frozen for 3 s: it keeps
    // answering, and only requests in flight when the node froze pay the timeout (the
    // defaults: 500 ms on a read, probed every second; requests time out at 1 s).
    let mut args = store.to_vec();
    args.push("--degraded");
    let server = Server::start_model(&old, &args);
    let infer = format!("{}/v2/models/pepnet/infer", server.url);
    let baseline = scores(&server, &users[..16]);
    closed_loop(&infer, &users, 16, Duration::from_millis(500));
    let froze = Instant::now();
    cluster.pause_node(1);
    let seen = closed_loop(&infer, &users, 16, Duration::from_secs(3));
    cluster.resume_node(1);
    let failed: Vec<_> = seen
        .iter()
        .filter(|&&(_, _, status)| status != 200)
        .collect();
    assert!(failed.is_empty(), "{failed:?} (freeze at {froze:?})");
    let slow: Vec<_> = seen
        .iter()
        .filter(|(_, latency, _)| *latency > Duration::from_millis(400))
        .collect();
    eprintln!(
        "{} requests in 3 s with a node frozen, {} paid the timeout",
        seen.len(),
        slow.len()
    );
    assert!(slow.len() <= 16, "{} slow requests", slow.len());
    for (start, latency, _) in &slow {
        assert!(
            start.duration_since(froze) < Duration::from_millis(800),
            "a request {:?} after the freeze took {latency:?}",
            start.duration_since(froze)
        );
    }
    // The metrics count the unavailable lookups per feature and per node.
    let (_, metrics) = common::server::get(&format!("{}/metrics", server.url));
    let frozen = format!("node=\"127.0.0.1:{}\"", cluster.ports[1]);
    let per_node = metrics
        .lines()
        .find(|l| l.starts_with("pepnet_store_unavailable_total") && l.contains(&frozen))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(!per_node.ends_with(" 0"), "{per_node}");
    assert!(
        metrics.contains(
            "pepnet_cache_unavailable_total{model=\"pepnet\",version=\"1\",feature=\"user_id\"}"
        ),
        "{metrics}"
    );
    let start = Instant::now();
    while scores(&server, &users[..16]) != baseline {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "not exact after the thaw"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // A load into the namespace the server uses: its new rows served within 2 s of the end.
    let plain = Server::start_model(&new, &[]);
    let want = scores(&plain, &users[..16]);
    assert_ne!(want, baseline);
    let err = load(&new);
    assert!(err.contains("(generation 2)"), "{err}");
    let loaded = Instant::now();
    while scores(&server, &users[..16]) != want {
        assert!(
            loaded.elapsed() < Duration::from_secs(2),
            "not served within 2 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!(
        "the new rows were served {:?} after the load ended",
        loaded.elapsed()
    );
}
