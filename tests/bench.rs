//! The benchmark harness: its JSON validates against `docs/bench.schema.json`, its numbers are
//! sane, and `pepnet bench --preset paper` runs on this machine's adapter and prints the table.

mod common;

use std::time::Duration;

use pepnet::bench::{self, BenchConfig};
use pepnet::Model;

fn schema() -> jsonschema::Validator {
    let text = include_str!("../docs/bench.schema.json");
    jsonschema::validator_for(&serde_json::from_str(text).unwrap()).unwrap()
}

#[test]
fn report_validates_against_the_schema() {
    let ctx = common::gpu();
    let model = Model::init(bench::preset("tiny").unwrap(), 3);
    let config = BenchConfig {
        batch_sizes: vec![1, 7, 300],
        warmup: 1,
        iterations: 3,
        budget: Duration::from_secs(5),
        ..Default::default()
    };
    let mut seen = 0;
    let report = bench::run(&ctx, &model, "tiny", &config, |_| seen += 1).unwrap();
    assert_eq!(seen, 3);
    let value = serde_json::to_value(&report).unwrap();
    let validator = schema();
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    for r in &report.results {
        assert!(r.samples_per_s > 0.0 && r.latency_ms_p50 <= r.latency_ms_p99);
        if let Some(g) = &r.gpu {
            assert_eq!(g.kernels.len(), report.model.dispatches);
            assert_eq!(g.rows, r.batch_size);
            let flops: u64 = g.kernels.iter().map(|k| k.flops).sum();
            assert_eq!(flops, report.model.flops_per_sample * r.batch_size as u64);
        }
    }
    // The schema rejects what it should: a missing field and an unknown one.
    let mut broken = value.clone();
    broken["results"][0]
        .as_object_mut()
        .unwrap()
        .remove("samples_per_s");
    assert!(!validator.is_valid(&broken));
    let mut extra = value;
    extra["model"]["colour"] = serde_json::json!("red");
    assert!(!validator.is_valid(&extra));
}

#[test]
fn bench_command_runs_the_paper_preset_and_writes_json() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("paper.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pepnet"))
        .args([
            "bench",
            "--preset",
            "paper",
            "--batch-sizes",
            "1,8",
            "--iters",
            "1",
            "--warmup",
            "1",
            "--json",
        ])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("samples/s") && stdout.contains("towers.0"),
        "{stdout}"
    );
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(schema().is_valid(&value));
    assert_eq!(value["model"]["flops_per_sample"], 15_547_392);
}

#[test]
fn an_unknown_preset_is_a_clear_error() {
    let err = bench::preset("huge").unwrap_err().to_string();
    assert!(err.contains("huge") && err.contains("paper"), "{err}");
}

#[test]
fn committed_results_follow_the_schema() {
    let validator = schema();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results");
    let mut checked = 0;
    for run in std::fs::read_dir(&dir).unwrap() {
        for file in std::fs::read_dir(run.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            // Bench reports; other JSON there (e.g. an ablation's numbers) has its own shape.
            if name == "pepnet.json" || (name.starts_with("torch-") && name.ends_with(".json")) {
                let value: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                let errors: Vec<String> = validator
                    .iter_errors(&value)
                    .map(|e| e.to_string())
                    .collect();
                assert!(errors.is_empty(), "{}: {errors:?}", path.display());
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "no results under {}", dir.display());
}
