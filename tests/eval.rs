//! `pepnet eval`: AUC/GAUC per domain × task from labelled data and its scores, and its errors.

mod common;

use std::path::Path;

use pepnet::eval::{evaluate, EvalOptions};
use pepnet::metrics::auc;
use pepnet::{Column, Model, ModelSpec};
use rand::{RngExt, SeedableRng};

const SPEC: &str = r#"{
  "embedding_dim": 4, "domain_feature": "tab", "tasks": ["click", "like"],
  "features": [
    {"name": "tab", "kind": "sparse", "vocab": 3, "roles": ["domain"]},
    {"name": "user_id", "kind": "sparse", "vocab": 40, "roles": ["general", "prior"]},
    {"name": "dur", "kind": "dense", "roles": ["general"]}
  ],
  "epnet": {"hidden": 5}, "ppnet": null, "towers": [6]
}"#;

/// Writes data (features + a 0/1 label per task, drawn from the model's own probabilities) and
/// the reference's scores for it; returns (labels per task, scores per task, domains).
fn fixture(dir: &Path, rows: usize) -> (Vec<Vec<bool>>, Vec<Vec<f32>>, Vec<u64>) {
    let mut spec = ModelSpec::from_json(SPEC, "spec").unwrap();
    // Wide draws, so that the scores spread far from 0.5 and the labels carry signal.
    spec.init = Some(pepnet::InitSpec::unit_uniform(4));
    let model = Model::init(spec, 4).unwrap();
    let batch = pepnet::synth::random_batch(&model.spec, rows, 6);
    let p = pepnet::reference::forward(&model, &batch).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let (tab, user, dur) = match (&batch.columns[0], &batch.columns[1], &batch.columns[2]) {
        (Column::Sparse(a), Column::Sparse(b), Column::Dense(c)) => {
            (a.clone(), b.clone(), c.clone())
        }
        _ => unreachable!(),
    };
    let mut labels = vec![Vec::new(), Vec::new()];
    let mut data = String::from("tab,user_id,dur,click,like_label\n");
    let mut scores = String::from("click,like\n");
    let mut preds = vec![Vec::new(), Vec::new()];
    for i in 0..rows {
        let l: Vec<bool> = (0..2)
            .map(|t| rng.random_range(0.0..1.0) < p[i * 2 + t])
            .collect();
        data += &format!(
            "{},{},{},{},{}\n",
            tab[i], user[i], dur[i], l[0] as u8, l[1] as u8
        );
        scores += &format!("{},{}\n", p[i * 2] as f32, p[i * 2 + 1] as f32);
        for t in 0..2 {
            labels[t].push(l[t]);
            preds[t].push(p[i * 2 + t] as f32);
        }
    }
    std::fs::write(dir.join("data.csv"), data).unwrap();
    std::fs::write(dir.join("scores.csv"), scores).unwrap();
    std::fs::write(dir.join("model.json"), SPEC).unwrap();
    (labels, preds, tab)
}

fn options() -> EvalOptions {
    EvalOptions {
        user_column: "user_id".into(),
        label_columns: vec!["click".into(), "like_label".into()],
    }
}

#[test]
fn report_covers_every_domain_and_task_and_matches_direct_auc() {
    let dir = tempfile::tempdir().unwrap();
    let (labels, preds, tabs) = fixture(dir.path(), 3000);
    let spec = ModelSpec::from_json(SPEC, "spec").unwrap();
    let report = evaluate(
        &spec,
        &dir.path().join("data.csv"),
        &dir.path().join("scores.csv"),
        &options(),
    )
    .unwrap();
    assert_eq!(report.len(), (3 + 1) * 2);
    for (t, task) in ["click", "like"].iter().enumerate() {
        let all = report
            .iter()
            .find(|r| r.domain == "all" && r.task == *task)
            .unwrap();
        assert_eq!(all.impressions, 3000);
        assert_eq!(all.auc, auc(&preds[t], &labels[t]));
        // Labels drawn from the scores rank above chance.
        assert!(all.auc.unwrap() > 0.55, "{all:?}");
        assert!(all.gauc.unwrap() > 0.5 && all.gauc_users > 10, "{all:?}");
        for d in 0..3u64 {
            let rows: Vec<usize> = (0..3000).filter(|&i| tabs[i] == d).collect();
            let r = report
                .iter()
                .find(|r| r.domain == d.to_string() && r.task == *task)
                .unwrap();
            assert_eq!(r.impressions, rows.len());
            let s: Vec<f32> = rows.iter().map(|&i| preds[t][i]).collect();
            let l: Vec<bool> = rows.iter().map(|&i| labels[t][i]).collect();
            assert_eq!(r.auc, auc(&s, &l));
        }
    }
}

#[test]
fn a_bad_label_or_a_short_scores_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), 50);
    let spec = ModelSpec::from_json(SPEC, "spec").unwrap();
    let data = dir.path().join("data.csv");
    let text = std::fs::read_to_string(&data).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[7] = format!("{},yes", lines[7].rsplit_once(',').unwrap().0);
    std::fs::write(dir.path().join("bad.csv"), lines.join("\n") + "\n").unwrap();
    let err = evaluate(
        &spec,
        &dir.path().join("bad.csv"),
        &dir.path().join("scores.csv"),
        &options(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("bad.csv")
            && err.contains("row 7")
            && err.contains("like_label")
            && err.contains("yes"),
        "{err}"
    );

    let scores = std::fs::read_to_string(dir.path().join("scores.csv")).unwrap();
    let short: Vec<&str> = scores.lines().take(20).collect();
    std::fs::write(dir.path().join("short.csv"), short.join("\n") + "\n").unwrap();
    let err = evaluate(&spec, &data, &dir.path().join("short.csv"), &options())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("short.csv") && err.contains("19 rows of scores for 50"),
        "{err}"
    );
}

#[test]
fn eval_command_prints_the_table() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), 400);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pepnet"))
        .arg("eval")
        .arg("--model")
        .arg(dir.path().join("model.json"))
        .arg("--input")
        .arg(dir.path().join("data.csv"))
        .arg("--scores")
        .arg(dir.path().join("scores.csv"))
        .args(["--labels", "like=like_label", "--json"])
        .arg(dir.path().join("eval.json"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    common::cli::ok(&out, "pepnet eval");
    assert!(
        stdout.contains("GAUC") && stdout.contains("all"),
        "{stdout}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("eval.json")).unwrap())
            .unwrap();
    assert_eq!(json.as_array().unwrap().len(), 8);
}
