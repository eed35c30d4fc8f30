//! `pepnet train` end to end: train → score → eval on generated data, resuming from a model
//! directory, and bad training data failing with a message that names the place, leaving no
//! output behind.

mod common;

use std::path::Path;

use common::cli::{ok, pepnet};

use pepnet::train::OptimizerState;
use pepnet::ModelSpec;

fn spec_path() -> String {
    format!(
        "{}/examples/kuairand/model.json",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn gen(dir: &Path, name: &str, rows: usize, seed: u64) -> String {
    let path = dir.join(name).display().to_string();
    let out = pepnet(&[
        "gen-data",
        "--model",
        &spec_path(),
        "--rows",
        &rows.to_string(),
        "--output",
        &path,
        "--seed",
        &seed.to_string(),
    ]);
    ok(&out, "gen-data");
    path
}

#[test]
fn train_then_score_then_eval_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = gen(d, "train.csv", 4000, 1);
    let valid = gen(d, "valid.parquet", 1500, 2);
    let model = d.join("model").display().to_string();
    let report = d.join("report.json").display().to_string();
    let out = pepnet(&[
        "train",
        "--model",
        &spec_path(),
        "--train",
        &train,
        "--valid",
        &valid,
        "--out",
        &model,
        "--epochs",
        "2",
        "--batch-size",
        "256",
        "--json",
        &report,
    ]);
    let err = ok(&out, "train");
    assert!(err.contains("epoch 2: train loss"), "{err}");
    let mut files: Vec<String> = std::fs::read_dir(&model)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["model.json", "optimizer.safetensors", "weights.safetensors"]
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let epochs = json["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 2);
    let loss = |e: usize| epochs[e]["train_loss"].as_f64().unwrap();
    assert!(
        loss(1) < loss(0),
        "the loss fell: {} then {}",
        loss(0),
        loss(1)
    );
    assert_eq!(epochs[1]["steps"].as_u64(), Some(16));

    let scores = d.join("scores.csv").display().to_string();
    ok(
        &pepnet(&[
            "score", "--model", &model, "--input", &valid, "--output", &scores,
        ]),
        "score",
    );
    let eval = d.join("eval.json").display().to_string();
    ok(
        &pepnet(&[
            "eval", "--model", &model, "--input", &valid, "--scores", &scores, "--json", &eval,
        ]),
        "eval",
    );
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&eval).unwrap()).unwrap();
    let click = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["domain"] == "all" && r["task"] == "click")
        .unwrap();
    let auc = click["auc"].as_f64().unwrap();
    assert!(auc > 0.6, "trained click AUC {auc}");

    // One epoch, then one more resumed from it: bit for bit the two-epoch run.
    let half = d.join("half").display().to_string();
    let again = d.join("again").display().to_string();
    let args = |from: &str, to: &str| -> Vec<String> {
        [
            "train",
            "--model",
            from,
            "--train",
            &train,
            "--out",
            to,
            "--epochs",
            "1",
            "--batch-size",
            "256",
        ]
        .map(String::from)
        .to_vec()
    };
    let run = |a: Vec<String>| pepnet(&a.iter().map(String::as_str).collect::<Vec<_>>());
    ok(&run(args(&spec_path(), &half)), "first epoch");
    ok(&run(args(&half, &again)), "second epoch, resumed");
    for file in ["weights.safetensors", "optimizer.safetensors"] {
        assert!(
            std::fs::read(Path::new(&again).join(file)).unwrap()
                == std::fs::read(Path::new(&model).join(file)).unwrap(),
            "{file}: a resumed run differs from an uninterrupted one"
        );
    }

    // Resume from the directory: the step count goes on.
    let resumed = d.join("resumed").display().to_string();
    let err = ok(
        &pepnet(&[
            "train",
            "--model",
            &model,
            "--train",
            &train,
            "--out",
            &resumed,
            "--batch-size",
            "256",
        ]),
        "resumed train",
    );
    assert!(err.contains("resuming after step 32"), "{err}");
    let spec = ModelSpec::load(&Path::new(&resumed).join("model.json")).unwrap();
    let state = OptimizerState::load(Path::new(&resumed), &spec)
        .unwrap()
        .unwrap();
    assert_eq!(state.step, 48);
}

fn fails_naming(args: &[&str], needles: &[&str], out_dir: &Path) {
    let out = pepnet(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail: {args:?}");
    for n in needles {
        assert!(err.contains(n), "error should name '{n}': {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out_dir.exists(), "a failed run left {}", out_dir.display());
}

#[test]
fn bad_training_data_fails_naming_the_place() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = gen(d, "train.csv", 50, 1);
    let out_dir = d.join("model");
    let out = out_dir.display().to_string();
    let spec = spec_path();

    // A label column that is not there.
    fails_naming(
        &[
            "train",
            "--model",
            &spec,
            "--train",
            &train,
            "--out",
            &out,
            "--labels",
            "click=clicked",
        ],
        &["train.csv", "clicked"],
        &out_dir,
    );

    // A label that is not 0 or 1.
    let text = std::fs::read_to_string(&train).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let header: Vec<&str> = lines[0].split(',').collect();
    let like = header.iter().position(|&h| h == "like").unwrap();
    let mut cells: Vec<String> = lines[7].split(',').map(str::to_string).collect();
    cells[like] = "2".into();
    lines[7] = cells.join(",");
    let bad = d.join("bad.csv");
    std::fs::write(&bad, lines.join("\n") + "\n").unwrap();
    let bad = bad.display().to_string();
    fails_naming(
        &["train", "--model", &spec, "--train", &bad, "--out", &out],
        &["bad.csv", "row 7", "'like'", "0 or 1"],
        &out_dir,
    );

    // A batch of nothing.
    fails_naming(
        &[
            "train",
            "--model",
            &spec,
            "--train",
            &train,
            "--out",
            &out,
            "--batch-size",
            "0",
        ],
        &["--batch-size", "0 is not in 1.."],
        &out_dir,
    );

    // Hyperparameters that would poison the weights with NaN.
    fails_naming(
        &[
            "train",
            "--model",
            &spec,
            "--train",
            &train,
            "--out",
            &out,
            "--adam-eps",
            "0",
        ],
        &["Adam's epsilon", "above 0"],
        &out_dir,
    );
    fails_naming(
        &[
            "train",
            "--model",
            &spec,
            "--train",
            &train,
            "--out",
            &out,
            "--task-weights",
            "1,1,-1,1,1,1",
        ],
        &["task 'follow'", "at least 0"],
        &out_dir,
    );

    // Task weights that do not match the tasks.
    fails_naming(
        &[
            "train",
            "--model",
            &spec,
            "--train",
            &train,
            "--out",
            &out,
            "--task-weights",
            "1,2",
        ],
        &["2 task weights", "6 tasks"],
        &out_dir,
    );
}

/// `pepnet ablation` trains the five variants and prints their GAUC table.
#[test]
fn ablation_prints_a_gauc_table_of_the_five_variants() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = gen(d, "train.csv", 1500, 1);
    let valid = gen(d, "valid.csv", 800, 2);
    let json = d.join("ablation.json").display().to_string();
    let out = pepnet(&[
        "ablation",
        "--model",
        &spec_path(),
        "--train",
        &train,
        "--valid",
        &valid,
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--batch-size",
        "256",
        "--json",
        &json,
    ]);
    ok(&out, "ablation");
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        table.starts_with("| domain | task | PEPNet | EPNet | PPNet | DNN | MMoE |"),
        "{table}"
    );
    assert!(table.contains("| all | click | 0."), "{table}");
    let cells: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    // 5 variants × (3 domains + all) × 6 tasks, one seed each.
    assert_eq!(cells.as_array().unwrap().len(), 5 * 4 * 6);
}

/// Hashed features train through a working set smaller than their tables, and the written
/// model directory is served by `score` as it is: scores equal the f64 reference of the
/// loaded model, and they rank the validation labels above chance.
#[test]
fn hashed_features_train_and_the_model_scores_without_conversion() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = gen(d, "train.csv", 4000, 1);
    let valid = gen(d, "valid.csv", 1500, 2);
    let spec = common::cli::hashed_example_spec(d);
    let model = d.join("hashed-model");
    let m = model.display().to_string();
    let err = ok(
        &pepnet(&[
            "train",
            "--model",
            &spec,
            "--train",
            &train,
            "--out",
            &m,
            "--epochs",
            "2",
            "--batch-size",
            "256",
            "--working-set",
            "300",
        ]),
        "hashed train",
    );
    assert!(err.contains("hashed feature 'user_id':"), "{err}");
    let trained = pepnet::Model::load(&model).unwrap();
    let users = trained.weights.hashed("user_id").unwrap();
    assert!(
        users.ids.len() > 300,
        "more users than the working set: {}",
        users.ids.len()
    );

    let scores = d.join("scores.csv").display().to_string();
    ok(
        &pepnet(&[
            "score", "--model", &m, "--input", &valid, "--output", &scores,
        ]),
        "score the hashed model",
    );
    let eval = d.join("eval.json").display().to_string();
    ok(
        &pepnet(&[
            "eval", "--model", &m, "--input", &valid, "--scores", &scores, "--json", &eval,
        ]),
        "eval",
    );
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&eval).unwrap()).unwrap();
    let click = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["domain"] == "all" && r["task"] == "click")
        .unwrap();
    assert!(click["auc"].as_f64().unwrap() > 0.6, "{click}");

    // The first rows' scores against the f64 reference of the loaded model.
    let mut reader =
        pepnet::io::InputReader::open(Path::new(&valid), &trained.spec, &[], 64, None).unwrap();
    let batch = reader.next().unwrap().unwrap().batch;
    let want = pepnet::reference::forward(&trained, &batch).unwrap();
    let text = std::fs::read_to_string(&scores).unwrap();
    let got: Vec<f64> = text
        .lines()
        .skip(1)
        .take(64)
        .flat_map(|l| {
            l.split(',')
                .map(|x| x.parse::<f64>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert!((g - *w).abs() < 1e-5, "score {g} against reference {w}");
    }

    // Checkpoints: resumed from the one after step 20 (of 32), the run ends as it did.
    let ckpt = d.join("ckpt");
    let run = |out: &Path, extra: &[&str]| {
        let mut args: Vec<String> = [
            "train",
            "--model",
            &spec,
            "--train",
            &train,
            "--out",
            out.to_str().unwrap(),
            "--epochs",
            "2",
            "--batch-size",
            "256",
            "--working-set",
            "300",
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        pepnet(&args)
    };
    let full = d.join("full");
    let every = [
        "--checkpoints",
        ckpt.to_str().unwrap(),
        "--checkpoint-every",
        "10",
    ];
    ok(&run(&full, &every), "hashed, with checkpoints");
    assert!(
        std::fs::read(full.join("weights.safetensors")).unwrap()
            == std::fs::read(model.join("weights.safetensors")).unwrap(),
        "checkpointing changed the run"
    );
    let resumed = d.join("resumed");
    let from = ckpt.join(format!("step-{:012}", 20));
    ok(
        &run(&resumed, &["--resume-from", from.to_str().unwrap()]),
        "hashed, resumed",
    );
    for file in ["weights.safetensors", "optimizer.safetensors"] {
        assert!(
            std::fs::read(full.join(file)).unwrap() == std::fs::read(resumed.join(file)).unwrap(),
            "{file}: the resumed hashed run differs"
        );
    }

    // Admission after 2 and expiry after 6 steps: their state is checkpointed too.
    let ckpt2 = d.join("ckpt-rules");
    let rules = |out: &Path, extra: &[&str]| {
        let mut a = vec!["--admit-after", "2", "--expire-after", "6"];
        a.extend_from_slice(extra);
        run(out, &a)
    };
    let full2 = d.join("full-rules");
    let every2 = [
        "--checkpoints",
        ckpt2.to_str().unwrap(),
        "--checkpoint-every",
        "10",
    ];
    ok(&rules(&full2, &every2), "rules, with checkpoints");
    assert!(ckpt2
        .join(format!("step-{:012}", 20))
        .join("hashed_rules.safetensors")
        .is_file());
    let resumed2 = d.join("resumed-rules");
    let from2 = ckpt2.join(format!("step-{:012}", 20));
    ok(
        &rules(&resumed2, &["--resume-from", from2.to_str().unwrap()]),
        "rules, resumed",
    );
    for file in [
        "weights.safetensors",
        "optimizer.safetensors",
        "hashed_rules.safetensors",
    ] {
        assert!(
            std::fs::read(full2.join(file)).unwrap() == std::fs::read(resumed2.join(file)).unwrap(),
            "{file}: the resumed run with admission and expiry differs"
        );
    }
}

/// `--progressive`: every batch is scored before it is trained on; AUC and GAUC per task over
/// windows of samples are logged and in the report, and they rise as the model learns.
#[test]
fn progressive_validation_reports_windows_scored_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = gen(d, "train.csv", 4000, 1);
    let report = d.join("report.json");
    let err = ok(
        &pepnet(&[
            "train",
            "--model",
            &spec_path(),
            "--train",
            &train,
            "--out",
            d.join("m").to_str().unwrap(),
            "--batch-size",
            "256",
            "--epochs",
            "2",
            "--progressive",
            "1000",
            "--json",
            report.to_str().unwrap(),
        ]),
        "progressive",
    );
    assert!(err.contains("scored before training"), "{err}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let windows = json["windows"].as_array().unwrap();
    // 16 steps an epoch (the last of 160 samples), a window closing at 1000 samples or more.
    assert_eq!(windows.len(), 8);
    let samples: u64 = windows.iter().map(|w| w["samples"].as_u64().unwrap()).sum();
    assert_eq!(samples, 8000);
    assert_eq!(windows[0]["first_step"], 0);
    assert_eq!(windows[7]["last_step"], 32);
    let mean = |w: &serde_json::Value, key: &str| {
        let v: Vec<f64> = w[key]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|x| x.as_f64())
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let (first, last) = (mean(&windows[0], "auc"), mean(&windows[7], "auc"));
    assert!(
        last > first + 0.02,
        "AUC before training rose from {first} to {last}"
    );
    assert!(mean(&windows[7], "gauc") > 0.5);
}

/// `--vocab-working-set`: the vocabulary tables train through working sets far smaller than
/// them (each whole table on the host), and the written model and optimizer state are those of
/// training with the tables on the GPU, bit for bit.
#[test]
fn vocabulary_tables_through_working_sets_train_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = gen(d, "train.csv", 1500, 4);
    let spec = spec_path();
    let run = |out: &str, extra: &[&str]| {
        let out = d.join(out).display().to_string();
        let mut args = vec![
            "train",
            "--model",
            &spec,
            "--train",
            &train,
            "--out",
            &out,
            "--batch-size",
            "128",
        ];
        args.extend_from_slice(extra);
        ok(&pepnet(&args), "train");
        out
    };
    let plain = run("plain", &[]);
    let worked = run("worked", &["--vocab-working-set", "--working-set", "300"]);
    for file in ["weights.safetensors", "optimizer.safetensors"] {
        assert_eq!(
            std::fs::read(Path::new(&plain).join(file)).unwrap(),
            std::fs::read(Path::new(&worked).join(file)).unwrap(),
            "{file}"
        );
    }
}
