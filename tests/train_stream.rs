//! The online loop end to end, on a real Redis Cluster: `pepnet gen-data --drift` writes a
//! drifting stream, `pepnet stream-push` feeds it into a Redis stream, `pepnet train-stream`
//! trains on it (scoring each batch before training on it) and publishes every 4 steps (rows to
//! the store, dense weights as a repository version), and two `pepnet serve --store` replicas
//! follow. A trainer killed with SIGKILL resumes from its checkpoint and its stream position
//! and ends with the weights of an uninterrupted run, bit for bit.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cli::{ok, pepnet};
use common::redis_cluster::RedisCluster;
use common::server::{agent, request, send_signal, Server};
use serde_json::Value;

const BATCH: usize = 64;
const PUBLISH_EVERY: usize = 4;
/// Rows per phase of the stream: one publish interval.
const PHASE: usize = BATCH * PUBLISH_EVERY;

/// A drifting stream of `rows` labelled impressions (a quarter turn every phase), as CSV
/// lines: the header, then the rows.
fn drifting(dir: &Path, spec: &str, rows: usize) -> (String, Vec<String>) {
    let path = dir.join("stream.csv");
    let out = pepnet(&[
        "gen-data",
        "--model",
        spec,
        "--rows",
        &rows.to_string(),
        "--drift",
        &(4 * PHASE).to_string(),
        "--seed",
        "3",
        "--output",
        path.to_str().unwrap(),
    ]);
    ok(&out, "gen-data --drift");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines = text.lines().map(String::from);
    let header = lines.next().unwrap();
    (header, lines.collect())
}

/// Writes `header` and `rows` as a CSV file.
fn csv(path: &Path, header: &str, rows: &[String]) -> String {
    let mut text = format!("{header}\n");
    for r in rows {
        text += r;
        text += "\n";
    }
    std::fs::write(path, text).unwrap();
    path.display().to_string()
}

/// Appends `rows` to stream `key`.
fn push(dir: &Path, spec: &str, url: &str, key: &str, header: &str, rows: &[String]) {
    let file = csv(&dir.join(format!("push-{key}.csv")), header, rows);
    let out = pepnet(&[
        "stream-push",
        "--model",
        spec,
        "--input",
        &file,
        "--redis",
        url,
        "--stream",
        key,
    ]);
    let err = ok(&out, "stream-push");
    assert!(
        err.contains(&format!("appended {} entries", rows.len())),
        "{err}"
    );
}

/// Starts `pepnet train-stream` with `args`, its stderr in `log`.
fn start_trainer(args: &[&str], log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pepnet"))
        .arg("train-stream")
        .args(args)
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
        .spawn()
        .expect("the pepnet binary runs")
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits (at most `limit`) for `path` to exist.
fn wait_for(path: &Path, limit: Duration, trainer: &mut Child, log: &Path) {
    let start = Instant::now();
    while !path.exists() {
        if let Ok(Some(status)) = trainer.try_wait() {
            panic!(
                "the trainer ended ({status}) before {} existed:\n{}",
                path.display(),
                log_of(log)
            );
        }
        assert!(
            start.elapsed() < limit,
            "{} not written within {limit:?}:\n{}",
            path.display(),
            log_of(log)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn checkpoint(dir: &Path, step: usize) -> PathBuf {
    dir.join(format!("step-{step:012}"))
}

/// `pepnet score` of `probe` with the model directory `model` (resident rows), as bits per
/// row and task.
fn resident_scores(model: &Path, probe: &str, out: &Path) -> Vec<Vec<u32>> {
    let o = pepnet(&[
        "score",
        "--model",
        model.to_str().unwrap(),
        "--input",
        probe,
        "--output",
        out.to_str().unwrap(),
    ]);
    ok(&o, "score the checkpoint");
    let mut reader = csv::Reader::from_path(out).unwrap();
    reader
        .records()
        .map(|r| {
            r.unwrap()
                .iter()
                .map(|c| c.parse::<f32>().unwrap().to_bits())
                .collect()
        })
        .collect()
}

/// A server's answer to the probe: its model version, and per row and task the score's bits.
fn served(server: &Server, body: &Value) -> (String, Vec<Vec<u32>>) {
    let answer: Value = agent()
        .post(&format!("{}/v2/models/pepnet/infer", server.url))
        .send_json(body.clone())
        .unwrap()
        .into_json()
        .unwrap();
    let outputs = answer["outputs"].as_array().unwrap();
    let rows = outputs[0]["data"].as_array().unwrap().len();
    let scores = (0..rows)
        .map(|i| {
            outputs
                .iter()
                .map(|o| (o["data"][i].as_f64().unwrap() as f32).to_bits())
                .collect()
        })
        .collect();
    (
        answer["model_version"].as_str().unwrap().to_string(),
        scores,
    )
}

/// Waits until both servers answer the probe with `version` and `expected`; returns how long
/// that took.
fn until_served(
    servers: [&Server; 2],
    body: &Value,
    version: &str,
    expected: &[Vec<u32>],
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let answers = servers.map(|s| served(s, body));
        if answers
            .iter()
            .all(|(v, scores)| v == version && scores == expected)
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "the servers did not follow version {version} within {limit:?}: they answer \
             versions {} and {}, scores equal to the checkpoint's: {} and {}",
            answers[0].0,
            answers[1].0,
            answers[0].1 == expected,
            answers[1].1 == expected
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Entries of the group delivered and not acknowledged.
fn pending(cluster: &RedisCluster, key: &str) -> i64 {
    let slot = cluster.keyslot(key);
    let port = cluster.ports[cluster.owner_of(slot)];
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut c = client.get_connection().unwrap();
    let v: redis::Value = redis::cmd("XPENDING")
        .arg(key)
        .arg("pepnet-train")
        .query(&mut c)
        .unwrap();
    match v {
        redis::Value::Array(v) => match v[0] {
            redis::Value::Int(n) => n,
            _ => panic!("{v:?}"),
        },
        other => panic!("{other:?}"),
    }
}

#[test]
fn replicas_follow_the_online_trainer_and_end_on_its_final_checkpoint_bit_for_bit() {
    let cluster = RedisCluster::start(3);
    let url = cluster.url();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = common::cli::hashed_example_spec(d);
    // Three phases of one publish interval each, and a short tail.
    let tail = 40;
    let (header, rows) = drifting(d, &spec, 3 * PHASE + tail);
    let probe_rows: Vec<String> = (0..3)
        .flat_map(|p| rows[p * PHASE..p * PHASE + 12].to_vec())
        .collect();
    let probe = csv(&d.join("probe.csv"), &header, &probe_rows);
    let names: Vec<String> = header.split(',').map(String::from).collect();
    let cells: Vec<Vec<String>> = probe_rows
        .iter()
        .map(|r| r.split(',').map(String::from).collect())
        .collect();

    let checkpoints = d.join("checkpoints");
    let repo = d.join("repository");
    let model_dir = repo.join("pepnet");
    let metrics = d.join("metrics.prom");
    let log = d.join("trainer.log");
    let (c, m, mf) = (
        checkpoints.to_str().unwrap(),
        model_dir.to_str().unwrap(),
        metrics.to_str().unwrap(),
    );
    let publish_every = PUBLISH_EVERY.to_string();
    let batch = BATCH.to_string();
    let window = (2 * BATCH).to_string();
    let mut trainer = start_trainer(
        &[
            "--model",
            &spec,
            "--redis",
            &url,
            "--stream",
            "impressions",
            "--checkpoints",
            c,
            "--keep-checkpoints",
            "10",
            "--publish-every",
            &publish_every,
            "--batch-size",
            &batch,
            "--window",
            &window,
            "--repository",
            m,
            "--store",
            &url,
            "--store-namespace",
            "online",
            "--metrics-file",
            mf,
        ],
        &log,
    );
    // The start state is version 1; the first interval's, version 2.
    wait_for(
        &model_dir.join("1"),
        Duration::from_secs(60),
        &mut trainer,
        &log,
    );
    push(d, &spec, &url, "impressions", &header, &rows[..PHASE]);
    wait_for(
        &model_dir.join("2"),
        Duration::from_secs(120),
        &mut trainer,
        &log,
    );

    let serve_args = [
        "--store",
        url.as_str(),
        "--store-namespace",
        "online",
        "--repository-poll-secs",
        "0.1",
    ];
    let (a, b) = (
        Server::start_repository(&repo, &serve_args),
        Server::start_repository(&repo, &serve_args),
    );
    let metadata: Value = agent()
        .get(&format!("{}/v2/models/pepnet", a.url))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    let body = request(&metadata, &names, &cells);
    let expected = resident_scores(&checkpoint(&checkpoints, 4), &probe, &d.join("s4.csv"));
    until_served([&a, &b], &body, "2", &expected, Duration::from_secs(10));

    // The second interval: the replicas follow within the poll and one load.
    push(
        d,
        &spec,
        &url,
        "impressions",
        &header,
        &rows[PHASE..2 * PHASE],
    );
    wait_for(
        &model_dir.join("3"),
        Duration::from_secs(120),
        &mut trainer,
        &log,
    );
    let expected8 = resident_scores(&checkpoint(&checkpoints, 8), &probe, &d.join("s8.csv"));
    assert_ne!(expected8, expected, "training moved the scores");
    let delay = until_served([&a, &b], &body, "3", &expected8, Duration::from_secs(10));
    eprintln!("replicas followed version 3 in {delay:?} after it was written");

    // The rest, with a short last batch, then SIGTERM: the trainer trains what it holds,
    // checkpoints, acknowledges and publishes before it exits.
    push(d, &spec, &url, "impressions", &header, &rows[2 * PHASE..]);
    let last = checkpoint(&checkpoints, 12);
    wait_for(&last, Duration::from_secs(120), &mut trainer, &log);
    // Once step 12's entries are acknowledged, the tail is all the trainer holds (delivered,
    // not acknowledged): then stop it.
    let start = Instant::now();
    while pending(&cluster, "impressions") != tail as i64 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{}",
            log_of(&log)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    send_signal(trainer.id(), "TERM");
    let status = trainer.wait().unwrap();
    let text = log_of(&log);
    assert!(status.success(), "{status}:\n{text}");
    let final_checkpoint = checkpoint(&checkpoints, 13);
    assert!(final_checkpoint.is_dir(), "{text}");
    assert_eq!(
        pending(&cluster, "impressions"),
        0,
        "every entry acknowledged"
    );
    let position: Value = serde_json::from_str(
        &std::fs::read_to_string(final_checkpoint.join("stream.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(position["samples"], (3 * PHASE + tail) as u64);
    assert!(text.contains("window steps 1-2"), "{text}");
    assert!(text.contains("scored before training"), "{text}");

    // After the stream: both replicas score as the final checkpoint does, resident, bit for bit.
    let expected_final = resident_scores(&final_checkpoint, &probe, &d.join("s13.csv"));
    until_served(
        [&a, &b],
        &body,
        "5",
        &expected_final,
        Duration::from_secs(10),
    );
    let prom = std::fs::read_to_string(&metrics).unwrap();
    for line in [
        "pepnet_train_window_auc{task=\"click\"}",
        // GAUC needs users with both labels in the window: the last one may have none.
        "# TYPE pepnet_train_window_gauc gauge",
        "pepnet_train_steps 13",
        "pepnet_train_published_version 5",
    ] {
        assert!(prom.contains(line), "{line} in:\n{prom}");
    }
}

#[test]
fn a_killed_trainer_resumes_from_its_checkpoint_and_stream_position_bit_for_bit() {
    let cluster = RedisCluster::start(3);
    let url = cluster.url();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = common::cli::hashed_example_spec(d);
    let (header, rows) = drifting(d, &spec, 3 * PHASE + 17);
    let run = |key: &str, checkpoints: &Path, log: &Path| {
        let args = [
            "--model",
            spec.as_str(),
            "--redis",
            url.as_str(),
            "--stream",
            key,
            "--checkpoints",
            checkpoints.to_str().unwrap(),
            "--keep-checkpoints",
            "10",
            "--publish-every",
            "4",
            "--batch-size",
            "64",
            "--working-set",
            "96",
            "--stop-when-idle-secs",
            "3",
        ];
        start_trainer(&args, log)
    };
    // Uninterrupted.
    push(d, &spec, &url, "whole", &header, &rows);
    let whole = d.join("whole");
    let log = d.join("whole.log");
    let status = run("whole", &whole, &log).wait().unwrap();
    assert!(status.success(), "{}", log_of(&log));

    // Killed (SIGKILL) right after its first checkpoint, while it goes on training entries it
    // has not acknowledged; then started again.
    push(d, &spec, &url, "killed", &header, &rows);
    let killed = d.join("killed");
    let log = d.join("killed.log");
    let mut trainer = run("killed", &killed, &log);
    wait_for(
        &checkpoint(&killed, 4),
        Duration::from_secs(120),
        &mut trainer,
        &log,
    );
    send_signal(trainer.id(), "KILL");
    trainer.wait().unwrap();
    // Usually some: delivered after the checkpoint, or before it with their ack not sent.
    eprintln!(
        "killed with {} entries delivered and not acknowledged",
        pending(&cluster, "killed")
    );
    let log2 = d.join("resumed.log");
    let status = run("killed", &killed, &log2).wait().unwrap();
    let text = log_of(&log2);
    assert!(status.success(), "{text}");
    assert!(text.contains("resuming from"), "{text}");
    assert_eq!(pending(&cluster, "killed"), 0);

    let last = checkpoint(&whole, 13);
    assert!(last.is_dir(), "{}", log_of(&d.join("whole.log")));
    same_run(&last, &checkpoint(&killed, 13), "the resumed run");

    // The same impressions arriving as files in a directory (CSV and Parquet, renamed in):
    // the same run, bit for bit, killed after its first checkpoint and resumed as well.
    let watched = d.join("arriving");
    std::fs::create_dir(&watched).unwrap();
    let files = d.join("files");
    let dir_run = |checkpoints: &Path, log: &Path| {
        let args = [
            "--model",
            spec.as_str(),
            "--watch",
            watched.to_str().unwrap(),
            "--checkpoints",
            checkpoints.to_str().unwrap(),
            "--keep-checkpoints",
            "10",
            "--publish-every",
            "4",
            "--batch-size",
            "64",
            "--working-set",
            "96",
            "--stop-when-idle-secs",
            "3",
        ];
        start_trainer(&args, log)
    };
    let cut = [0, 150, 400, rows.len()];
    let stream_parquet = d.join("stream.parquet");
    let out = pepnet(&[
        "gen-data",
        "--model",
        &spec,
        "--rows",
        &rows.len().to_string(),
        "--drift",
        &(4 * PHASE).to_string(),
        "--seed",
        "3",
        "--output",
        stream_parquet.to_str().unwrap(),
    ]);
    ok(&out, "gen-data to Parquet");
    std::fs::create_dir(&files).unwrap();
    for k in 0..3 {
        let part = csv(
            &files.join(format!("part-{k}.csv")),
            &header,
            &rows[cut[k]..cut[k + 1]],
        );
        let name = match k {
            1 => {
                // The middle part as Parquet: the same rows, as gen-data writes them there.
                let parquet = watched.join(".part-1.parquet");
                parquet_rows(&stream_parquet, cut[1], cut[2], &parquet);
                std::fs::rename(&parquet, watched.join("part-1.parquet")).unwrap();
                continue;
            }
            _ => format!("part-{k}.csv"),
        };
        let hidden = watched.join(format!(".{name}"));
        std::fs::copy(&part, &hidden).unwrap();
        std::fs::rename(&hidden, watched.join(&name)).unwrap();
    }
    let from_files = d.join("from-files");
    let log = d.join("files.log");
    let mut trainer = dir_run(&from_files, &log);
    wait_for(
        &checkpoint(&from_files, 4),
        Duration::from_secs(120),
        &mut trainer,
        &log,
    );
    send_signal(trainer.id(), "KILL");
    trainer.wait().unwrap();
    let log2 = d.join("files-resumed.log");
    let status = dir_run(&from_files, &log2).wait().unwrap();
    let text = log_of(&log2);
    assert!(status.success() && text.contains("resuming from"), "{text}");
    same_run(&last, &checkpoint(&from_files, 13), "the run over files");
}

/// Asserts two checkpoints hold the same model, optimizer state and sample count.
fn same_run(a: &Path, b: &Path, what: &str) {
    for file in ["weights.safetensors", "optimizer.safetensors", "model.json"] {
        assert_eq!(
            std::fs::read(a.join(file)).unwrap(),
            std::fs::read(b.join(file)).unwrap(),
            "{file}: {what} differs from the uninterrupted one"
        );
    }
    let samples = |dir: &Path| -> Value {
        let text = std::fs::read_to_string(dir.join("stream.json")).unwrap();
        serde_json::from_str::<Value>(&text).unwrap()["samples"].clone()
    };
    assert_eq!(samples(a), samples(b), "{what}: samples");
}

/// Rows `from..to` of the Parquet file `source` written as the Parquet file `out`.
fn parquet_rows(source: &Path, from: usize, to: usize, out: &Path) {
    let file = std::fs::File::open(source).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut writer = None;
    let mut at = 0;
    for batch in reader {
        let batch = batch.unwrap();
        let (start, end) = (from.max(at), to.min(at + batch.num_rows()));
        if start < end {
            let part = batch.slice(start - at, end - start);
            let w = writer.get_or_insert_with(|| {
                let f = std::fs::File::create(out).unwrap();
                parquet::arrow::ArrowWriter::try_new(f, part.schema(), None).unwrap()
            });
            w.write(&part).unwrap();
        }
        at += batch.num_rows();
    }
    writer.unwrap().close().unwrap();
}

/// A bad entry stops the trainer with an error naming the stream, the entry and the field, and
/// nothing is acknowledged: the entry is still there to be looked at (or deleted) when it is
/// started again.
#[test]
fn a_bad_entry_fails_naming_the_stream_entry_and_field_and_nothing_is_acknowledged() {
    let cluster = RedisCluster::start(3);
    let url = cluster.url();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = common::cli::hashed_example_spec(d);
    let (header, rows) = drifting(d, &spec, 3);
    let names: Vec<String> = header.split(',').map(String::from).collect();
    let options = pepnet::store::redis::RedisOptions::from_url(&url, "test").unwrap();
    let mut stream =
        pepnet::store::redis::ImpressionStream::producer(&options.nodes, "bad", options.timeouts)
            .unwrap();
    let entry =
        |row: &str, drop: Option<&str>, set: Option<(&str, &str)>| -> Vec<(String, String)> {
            names
                .iter()
                .cloned()
                .zip(row.split(',').map(String::from))
                .filter(|(k, _)| Some(k.as_str()) != drop)
                .map(|(k, v)| match set {
                    Some((name, value)) if name == k => (k, value.to_string()),
                    _ => (k, v),
                })
                .collect()
        };
    stream.add(&entry(&rows[0], None, None)).unwrap();
    let missing = stream
        .add(&entry(&rows[1], Some("video_id"), None))
        .unwrap();
    let run = |key: &str| {
        let checkpoints = d.join(format!("checkpoints-{key}"));
        pepnet(&[
            "train-stream",
            "--model",
            &spec,
            "--redis",
            &url,
            "--stream",
            key,
            "--checkpoints",
            checkpoints.to_str().unwrap(),
            "--batch-size",
            "8",
            "--stop-when-idle-secs",
            "1",
        ])
    };
    let out = run("bad");
    let err = common::cli::stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "stream 'bad' (group 'pepnet-train'), entry {missing}: no field 'video_id'"
        )),
        "{err}"
    );
    assert_eq!(pending(&cluster, "bad"), 2, "nothing acknowledged");

    // A label that is not 0 or 1: the entry range, its row and the column.
    let mut other =
        pepnet::store::redis::ImpressionStream::producer(&options.nodes, "label", options.timeouts)
            .unwrap();
    other.add(&entry(&rows[0], None, None)).unwrap();
    other
        .add(&entry(&rows[1], None, Some(("like", "2"))))
        .unwrap();
    let out = run("label");
    let err = common::cli::stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("stream 'label' (group 'pepnet-train'), entries ")
            && err.contains("row 2, column 'like': a label is 0 or 1, found '2'"),
        "{err}"
    );
    assert_eq!(pending(&cluster, "label"), 2, "nothing acknowledged");
}
