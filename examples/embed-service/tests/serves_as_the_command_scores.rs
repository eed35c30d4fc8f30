//! The service, started as a user would, answers on its own route and on pepnet's mounted ones,
//! and both score the rows as `pepnet score` does, bit for bit.

#[path = "../../embed-minimal/tests/command/mod.rs"]
mod command;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use command::{pepnet, repo};

/// The service, stopped (killed) when dropped.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bits(values: impl IntoIterator<Item = f64>) -> Vec<u32> {
    values.into_iter().map(|v| (v as f32).to_bits()).collect()
}

#[test]
fn its_route_and_the_mounted_ones_score_as_pepnet_score() {
    let model_dir = repo().join("examples/kuairand");
    let model = pepnet_core::Model::load(&model_dir).unwrap();
    let (rows, seed) = (7, 5);

    // What the command writes for these rows.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    pepnet_io::synth::write_file(&model.spec, rows, seed, &input).unwrap();
    let out = dir.path().join("scores.csv");
    let status = Command::new(pepnet(env!("CARGO_BIN_EXE_embed-service")))
        .args(["score", "--quiet", "--model"])
        .arg(&model_dir)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let expected: Vec<u32> = bits(
        std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .skip(1)
            .flat_map(|l| {
                l.split(',')
                    .map(|c| c.parse::<f64>().unwrap())
                    .collect::<Vec<_>>()
            }),
    );
    assert_eq!(expected.len(), rows * model.spec.n_tasks());

    // The service, on any free loopback port.
    let mut child = Command::new(env!("CARGO_BIN_EXE_embed-service"))
        .arg(&model_dir)
        .arg("127.0.0.1:0")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _service = Service(child);
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("the service said {line:?}"))
        .to_string();
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build();
    let get = |path: &str| agent.get(&format!("{base}{path}")).call().unwrap();
    let post = |path: &str, body: &Value| -> Value {
        agent
            .post(&format!("{base}{path}"))
            .send_json(body.clone())
            .unwrap()
            .into_json()
            .unwrap()
    };

    assert_eq!(get("/healthz").into_string().unwrap(), "ok");
    assert_eq!(get("/ranker/v2/health/ready").status(), 200);
    let metadata: Value = get("/ranker/v2/models/pepnet").into_json().unwrap();
    assert_eq!(metadata["name"], "pepnet");

    let batch = pepnet_core::synth::random_batch(&model.spec, rows, seed);
    let request = pepnet_serve::oip::request(&model.spec, &batch, Some("r"));

    // The service's own handler (the async score).
    let own = post("/rank", &request);
    let own = bits(
        own["scores"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|p| p.as_f64().unwrap())),
    );
    assert!(own.iter().any(|&p| p != own[0]), "scores differ");
    assert_eq!(own, expected, "POST /rank");

    // pepnet's infer route, mounted under /ranker: one tensor per task.
    let mounted = post("/ranker/v2/models/pepnet/infer", &request);
    let outputs = mounted["outputs"].as_array().unwrap();
    let mut by_row = vec![0u32; rows * model.spec.n_tasks()];
    for (t, task) in model.spec.tasks.iter().enumerate() {
        let output = outputs.iter().find(|o| o["name"] == *task).unwrap();
        for (i, p) in output["data"].as_array().unwrap().iter().enumerate() {
            by_row[i * model.spec.n_tasks() + t] = (p.as_f64().unwrap() as f32).to_bits();
        }
    }
    assert_eq!(by_row, expected, "POST /ranker/v2/models/pepnet/infer");
}
