//! The benchmark harness: its JSON validates against `docs/bench.schema.json`, its numbers are
//! sane, and `pepnet bench --preset paper` runs on this machine's adapter and prints the table.

mod common;

use std::time::Duration;

use pepnet::tools::bench::{self, BenchOptions};
use pepnet::Model;

fn schema() -> jsonschema::Validator {
    let text = include_str!("../docs/bench.schema.json");
    jsonschema::validator_for(&serde_json::from_str(text).unwrap()).unwrap()
}

#[test]
fn report_validates_against_the_schema() {
    let ctx = common::gpu();
    let model = Model::init(bench::preset("tiny").unwrap(), 3).unwrap();
    let config = BenchOptions {
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

/// Runs `pepnet bench ARGS --json FILE` and returns its table and its schema-valid report.
fn bench_cli(args: &[&str]) -> (String, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pepnet"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    common::cli::ok(&out, "pepnet bench");
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(schema().is_valid(&value));
    (String::from_utf8_lossy(&out.stdout).into_owned(), value)
}

#[test]
fn bench_command_runs_the_paper_preset_and_writes_json() {
    let (stdout, value) = bench_cli(&[
        "--preset",
        "paper",
        "--batch-sizes",
        "1,8",
        "--iters",
        "1",
        "--warmup",
        "1",
    ]);
    assert!(
        stdout.contains("samples/s") && stdout.contains("towers.0"),
        "{stdout}"
    );
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

/// `pepnet bench --precision f16` names the precision and each dispatch's f16 kernel, and its
/// report validates.
#[test]
fn bench_at_f16_names_its_kernels() {
    let (stdout, value) = bench_cli(&[
        "--preset",
        "tiny",
        "--batch-sizes",
        "3,40",
        "--iters",
        "1",
        "--warmup",
        "1",
        "--precision",
        "f16",
        "--peaks",
        "100,1,4",
    ]);
    assert!(
        stdout.contains("precision: f16") && stdout.contains("f16 "),
        "{stdout}"
    );
    assert_eq!(value["precision"], "f16");
    assert_eq!(value["engine"], "pepnet-f16");
    let kernels = value["results"][1]["gpu"]["kernels"].as_array().unwrap();
    let linear: Vec<&str> = kernels
        .iter()
        .filter(|k| k["name"] != "gather")
        .map(|k| k["kernel"].as_str().unwrap())
        .collect();
    assert!(
        !linear.is_empty() && linear.iter().all(|k| k.starts_with("f16 ")),
        "{linear:?}"
    );
    // Every kernel has its floor from the peaks given.
    for k in kernels {
        let floor = k["floor_ms"].as_f64().unwrap();
        let bytes_ms = k["bytes"].as_f64().unwrap() / 100e9 * 1e3;
        assert!(floor >= bytes_ms * 0.999 && floor > 0.0, "{k}");
    }
}

/// A kernel's floor is the larger of its bytes over the bandwidth and its FLOPs over the rate
/// of the units it runs on: tensor cores for the cooperative-matrix kernel.
#[test]
fn floors_take_the_units_each_kernel_runs_on() {
    use pepnet::gpu::linear::Variant;
    let peaks = bench::DevicePeaks {
        bytes_per_s: 1e12,
        f32_flops: 1e15,
        f16_matrix_flops: 1e16,
    };
    let (bytes, flops) = (1_000_000_000, 2_000_000_000_000);
    assert!((peaks.floor_ms(bytes, flops, Some(Variant::Batch)) - 2.0).abs() < 1e-9);
    assert!((peaks.floor_ms(bytes, flops, Some(Variant::HalfBatch)) - 2.0).abs() < 1e-9);
    assert!((peaks.floor_ms(bytes, flops, Some(Variant::Coop)) - 1.0).abs() < 1e-9);
    assert!((peaks.floor_ms(bytes, 0, None) - 1.0).abs() < 1e-9);
    assert!(bench::DevicePeaks::known("NVIDIA H200").is_some());
    assert!(bench::DevicePeaks::known("llvmpipe (LLVM 15.0.6, 256 bits)").is_none());
}

/// The host-only measurement reads and encodes every row at each thread count, through the
/// library and the CLI; thread counts of 0 are refused.
#[test]
fn host_only_bench_reads_and_encodes_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let model = Model::init(bench::preset("tiny").unwrap(), 1).unwrap();
    for name in ["in.csv", "in.parquet"] {
        let input = dir.path().join(name);
        pepnet::synth::write_file(&model.spec, 3000, 2, &input).unwrap();
        let results = pepnet::tools::host_bench::run(&model, &input, 256, &[1, 2, 3]).unwrap();
        assert_eq!(results.len(), 3);
        for r in &results {
            assert_eq!(r.rows, 3000, "{name}, {} threads", r.threads);
            assert!(r.read_rows_per_s > 0.0 && r.host_rows_per_s > 0.0);
        }
    }
    let input = dir.path().join("in.csv");
    let run = |readers: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pepnet"))
            .args([
                "bench",
                "--preset",
                "tiny",
                "--host-only",
                "--readers",
                readers,
            ])
            .arg("--input")
            .arg(&input)
            .output()
            .unwrap()
    };
    let out = run("1,2");
    let stdout = String::from_utf8_lossy(&out.stdout);
    common::cli::ok(&out, "pepnet bench");
    assert!(
        stdout.contains("host rows/s") && stdout.contains("rows/s per core"),
        "{stdout}"
    );
    let out = run("0");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value '0' for '--readers"));
}
