//! The Redis Cluster store from the command line, across processes: `pepnet store load` fills a
//! namespace, two `pepnet serve --store` processes score from it, `pepnet apply-rows --store`
//! (a third process) writes a row that both servers then score, and the update cap set at load
//! holds across the servers.

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
    let mut model = Model::init(ModelSpec::from_json(HASHED_SPEC, "spec").unwrap(), 3).unwrap();
    let mut r = rng(3);
    let h = model.weights.hashed_mut("user_id").unwrap();
    h.ids = USERS.to_vec();
    h.rows = (0..4 * USERS.len())
        .map(|_| r.random_range(-1.0..1.0))
        .collect();
    let out = dir.join("model");
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
