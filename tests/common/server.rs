//! A `pepnet serve` process for tests, with HTTP and gRPC on free loopback ports, and the
//! example's rows as requests.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

/// A served model with one hashed feature, `user_id` (d = 4), beside `tab` and `dur`.
pub const HASHED_SPEC: &str = r#"{
  "embedding_dim": 4, "domain_feature": "tab", "tasks": ["click"],
  "features": [
    {"name": "tab", "kind": "sparse", "vocab": 3, "roles": ["domain"]},
    {"name": "user_id", "kind": "sparse", "hashed": true, "roles": ["general", "prior"]},
    {"name": "dur", "kind": "dense", "roles": ["general", "domain"]}
  ],
  "epnet": {"hidden": 5}, "ppnet": {"hidden": 6}, "towers": [5]
}"#;

pub const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/kuairand");

/// A running server, stopped (SIGTERM) when dropped.
pub struct Server {
    pub child: Child,
    /// `http://HOST:PORT`.
    pub url: String,
    /// `http://HOST:PORT` of the gRPC listener.
    pub grpc: String,
}

impl Server {
    pub fn start(extra: &[&str]) -> Self {
        Self::start_model(Path::new(MODEL), extra)
    }

    pub fn start_model(model: &Path, extra: &[&str]) -> Self {
        Self::spawn("--model", model, extra)
    }

    /// Serves the model repository `root`.
    pub fn start_repository(root: &Path, extra: &[&str]) -> Self {
        Self::spawn("--repository", root, extra)
    }

    fn spawn(source: &str, path: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pepnet"))
            .arg("serve")
            .arg(source)
            .arg(path)
            .args(["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("the pepnet binary runs");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        // The "listening" log event: `... http=http://127.0.0.1:PORT grpc=grpc://127.0.0.1:PORT`.
        let address = |line: &str, key: &str| -> Option<String> {
            let rest = line.split(key).nth(1)?;
            Some(
                rest.chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                    .collect(),
            )
        };
        let (url, grpc) = loop {
            let line = lines
                .next()
                .expect("the server says where it listens")
                .unwrap();
            if let (Some(http), Some(grpc)) = (
                address(&line, "http=http://"),
                address(&line, "grpc=grpc://"),
            ) {
                break (format!("http://{http}"), format!("http://{grpc}"));
            }
        };
        // Keep draining stderr so that the server never blocks on it.
        // Its warnings go to the test's output, to read when a test fails.
        std::thread::spawn(move || {
            for line in lines.map_while(|l| l.ok()) {
                if line.contains("WARN") || line.contains("ERROR") {
                    eprintln!("server: {line}");
                }
            }
        });
        Self { child, url, grpc }
    }

    pub fn stop(&mut self) -> std::process::ExitStatus {
        send_signal(self.child.id(), "TERM");
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build()
}

/// POSTs `body`; the status and the JSON answer, whatever the status.
pub fn post(url: &str, body: &Value) -> (u16, Value) {
    match agent().post(url).send_json(body) {
        Ok(r) => (r.status(), r.into_json().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("{url}: {e}"),
    }
}

pub fn get(url: &str) -> (u16, String) {
    match agent().get(url).call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("{url}: {e}"),
    }
}

/// The example's input rows, as text cells by column name.
pub fn rows() -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::Reader::from_path(Path::new(MODEL).join("input.csv")).unwrap();
    let header = reader.headers().unwrap().iter().map(String::from).collect();
    let rows = reader
        .records()
        .map(|r| r.unwrap().iter().map(String::from).collect())
        .collect();
    (header, rows)
}

/// An infer request for `rows`, one tensor per feature as the metadata lists them.
pub fn request(metadata: &Value, header: &[String], rows: &[Vec<String>]) -> Value {
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let mut inputs = Vec::new();
    for input in metadata["inputs"].as_array().unwrap() {
        let name = input["name"].as_str().unwrap();
        let datatype = input["datatype"].as_str().unwrap();
        if let Some(feature) = name.strip_suffix(".lengths") {
            let lengths: Vec<usize> = rows
                .iter()
                .map(|r| r[col(feature)].split('|').filter(|s| !s.is_empty()).count())
                .collect();
            inputs.push(
                json!({"name": name, "datatype": datatype, "shape": [rows.len()], "data": lengths}),
            );
            continue;
        }
        let cells: Vec<&str> = rows.iter().map(|r| r[col(name)].as_str()).collect();
        let list = metadata["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == format!("{name}.lengths"));
        let data: Vec<Value> = if datatype == "FP32" {
            cells
                .iter()
                .map(|c| json!(c.parse::<f32>().unwrap()))
                .collect()
        } else {
            cells
                .iter()
                .flat_map(|c| c.split('|').filter(|s| !s.is_empty()))
                .map(|id| json!(id.parse::<u64>().unwrap()))
                .collect()
        };
        let shape = if list { data.len() } else { rows.len() };
        inputs.push(json!({"name": name, "datatype": datatype, "shape": [shape], "data": data}));
    }
    json!({"id": "t", "inputs": inputs})
}

pub fn score_file(dir: &Path) -> Vec<Vec<f32>> {
    score_with(Path::new(MODEL), dir)
}

/// `pepnet score` of the example's input with `model`, read back.
pub fn score_with(model: &Path, dir: &Path) -> Vec<Vec<f32>> {
    let output = dir.join("scores.csv");
    let out = Command::new(env!("CARGO_BIN_EXE_pepnet"))
        .arg("score")
        .arg("--model")
        .arg(model)
        .arg("--input")
        .arg(Path::new(MODEL).join("input.csv"))
        .arg("--output")
        .arg(&output)
        .output()
        .unwrap();
    super::cli::ok(&out, "pepnet score");
    let mut reader = csv::Reader::from_path(&output).unwrap();
    reader
        .records()
        .map(|r| r.unwrap().iter().map(|c| c.parse().unwrap()).collect())
        .collect()
}

/// A copy of the example model in `dir/model` and a second version of it in `dir/v2` (other
/// weights; with `new_spec`, other tower widths too), with `pepnet score`'s answers for each.
pub fn two_versions(
    dir: &Path,
    new_spec: bool,
) -> (std::path::PathBuf, std::path::PathBuf, [Vec<Vec<f32>>; 2]) {
    let model = dir.join("model");
    std::fs::create_dir(&model).unwrap();
    for f in ["model.json", "weights.safetensors"] {
        std::fs::copy(Path::new(MODEL).join(f), model.join(f)).unwrap();
    }
    let mut spec: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("model.json")).unwrap()).unwrap();
    if new_spec {
        spec["towers"] = json!([24, 7]);
    }
    std::fs::write(dir.join("spec2.json"), spec.to_string()).unwrap();
    let v2 = dir.join("v2");
    let init = Command::new(env!("CARGO_BIN_EXE_pepnet"))
        .args(["init", "--seed", "5", "--spec"])
        .arg(dir.join("spec2.json"))
        .arg("--out")
        .arg(&v2)
        .output()
        .unwrap();
    assert!(init.status.success());
    let expected = [score_with(&model, dir), score_with(&v2, dir)];
    assert_ne!(expected[0][0], expected[1][0]);
    (model, v2, expected)
}

/// Which of two model versions answered the request for rows `at..` (`body` a JSON answer):
/// 0 or 1 by its `model_version` ("1" or "2"), after checking that every score it holds equals,
/// bit for bit, that version's `expected` score of the row: an answer is wholly one version's.
pub fn answered_version(body: &Value, at: usize, expected: &[Vec<Vec<f32>>; 2]) -> usize {
    let v = match body["model_version"].as_str().unwrap() {
        "1" => 0,
        "2" => 1,
        other => panic!("version {other}"),
    };
    for (t, output) in body["outputs"].as_array().unwrap().iter().enumerate() {
        for (k, p) in output["data"].as_array().unwrap().iter().enumerate() {
            assert_eq!(
                (p.as_f64().unwrap() as f32).to_bits(),
                expected[v][at + k][t].to_bits(),
                "row {}: an answer mixing versions (version {})",
                at + k + 1,
                v + 1
            );
        }
    }
    v
}

/// Replaces the model directory's files with `from`'s, each by an atomic rename.
pub fn publish(from: &Path, model: &Path) {
    for f in ["model.json", "weights.safetensors"] {
        std::fs::copy(from.join(f), model.join("publishing")).unwrap();
        std::fs::rename(model.join("publishing"), model.join(f)).unwrap();
    }
}

/// Rows for `user_id`'s ids, as the rows endpoint takes them (safetensors).
pub fn user_rows(ids: &[u64], rows: &[f32]) -> Vec<u8> {
    let ids: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
    let views = [
        (
            "emb.user_id.ids",
            safetensors::tensor::TensorView::new(
                safetensors::Dtype::U64,
                vec![ids.len() / 8],
                &ids,
            )
            .unwrap(),
        ),
        (
            "emb.user_id",
            safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                vec![rows.len() / 4, 4],
                bytemuck::cast_slice(rows),
            )
            .unwrap(),
        ),
    ];
    safetensors::serialize(views, None).unwrap()
}

/// Scores of the hashed model's task for `users` (tab 0 and 1 alternating, dur 0.5), as bits.
pub fn user_scores(base: &str, users: &[u64]) -> Vec<u32> {
    let n = users.len();
    let tabs: Vec<u64> = (0..n as u64).map(|i| i % 2).collect();
    let body = json!({"inputs": [
        {"name": "tab", "datatype": "INT64", "shape": [n], "data": tabs},
        {"name": "user_id", "datatype": "UINT64", "shape": [n], "data": users},
        {"name": "dur", "datatype": "FP32", "shape": [n], "data": vec![0.5; n]}
    ]});
    let (status, answer) = post(&format!("{base}/infer"), &body);
    assert_eq!(status, 200, "{answer}");
    answer["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p.as_f64().unwrap() as f32).to_bits())
        .collect()
}
