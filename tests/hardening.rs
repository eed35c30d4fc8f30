//! Bad input as a careless user or an attacker gives it, family by family: every run fails with
//! a message naming the place (key, tensor, file, row, column or option), never a panic, an
//! abort or a hang, and leaves no output behind; or, where the input can be split, rejects
//! just the bad rows under `--rejects`.
//!
//! Families: non-finite results (3), adversarial sizes (4), ambiguous names (5), late checks
//! (6), slow validation (7), degenerate options (8), messages (9). Files destroyed and runs
//! interrupted (1, 2) are tested in `cli.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::cli::{ok, pepnet, stderr};

use pepnet::error::Error;
use pepnet::train::OptimizerState;
use pepnet::ModelSpec;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

const SPEC: &str = r#"{
  "embedding_dim": 4,
  "domain_feature": "tab",
  "tasks": ["click", "like"],
  "features": [
    {"name": "tab", "kind": "sparse", "vocab": 3, "roles": ["domain"]},
    {"name": "user_id", "kind": "sparse", "vocab": 20, "roles": ["general", "prior"]},
    {"name": "tags", "kind": "multi_hot", "vocab": 10, "max_len": 3, "pooling": "mean", "roles": ["general"]},
    {"name": "dur", "kind": "dense", "roles": ["general", "domain"]}
  ],
  "epnet": {"hidden": 5},
  "ppnet": {"hidden": 6},
  "towers": [5, 3]
}"#;

const HEADER: &str = "rid,tab,user_id,tags,dur";

/// Failed with exit 1 (not a panic's 101 nor an abort's signal) and every needle in stderr.
fn fails_naming(out: &Output, needles: &[&str], what: &str) -> String {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: expected a clean failure: {err}"
    );
    assert!(!err.contains("panicked"), "{what}: panicked: {err}");
    for n in needles {
        assert!(err.contains(n), "{what}: stderr lacks '{n}': {err}");
    }
    err
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    model: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        Self::with_spec(SPEC)
    }

    fn with_spec(spec: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::fs::write(root.join("spec.json"), spec).unwrap();
        let model = root.join("model");
        ok(
            &pepnet(&[
                "init".as_ref(),
                "--spec".as_ref(),
                root.join("spec.json").as_os_str(),
                "--out".as_ref(),
                model.as_os_str(),
            ]),
            "init",
        );
        Self {
            _dir: dir,
            root,
            model,
        }
    }

    /// Sets tensor `name` of the model's weights.
    fn set_tensor(&self, name: &str, data: Vec<f32>) {
        let mut model = pepnet::Model::load(&self.model).unwrap();
        model.weights.get_mut(name).unwrap().data = data;
        model.save(&self.model).unwrap();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// An input CSV of `rows` valid rows, with `edit` applied to each row's cells.
    fn input(&self, name: &str, rows: usize, edit: impl Fn(usize, &mut Vec<String>)) -> PathBuf {
        let mut text = format!("{HEADER}\n");
        for i in 0..rows {
            let mut cells: Vec<String> = vec![
                format!("r{i}"),
                (i % 3).to_string(),
                (i * 7 % 20).to_string(),
                format!("{}|{}", i % 10, (i + 3) % 10),
                format!("{:.3}", 0.1 + i as f64 * 0.37 % 2.0),
            ];
            edit(i + 1, &mut cells);
            text += &cells.join(",");
            text += "\n";
        }
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn score(&self, input: &Path, output: &Path, extra: &[&str]) -> Output {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "score".as_ref(),
            "--model".as_ref(),
            self.model.as_os_str(),
            "--input".as_ref(),
            input.as_os_str(),
            "--output".as_ref(),
            output.as_os_str(),
            "--carry".as_ref(),
            "rid".as_ref(),
            "--batch-size".as_ref(),
            "4".as_ref(),
            "--quiet".as_ref(),
        ];
        args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
        pepnet(&args)
    }

    /// `spec.json` with `from` replaced by `to`, as a new spec file.
    fn spec_file(&self, name: &str, from: &str, to: &str) -> PathBuf {
        assert!(SPEC.contains(from), "the fixture spec holds '{from}'");
        let path = self.path(name);
        std::fs::write(&path, SPEC.replace(from, to)).unwrap();
        path
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

// ---- Family 3: silent non-finite or wrong results --------------------------------------------

/// A dense value that overflows f32 inside the model (3e38 · v, then summed) fails naming its
/// input row, instead of leaving as NaN or as a confident 0 or 1; the output is not written.
#[test]
fn an_overflow_inside_the_model_fails_naming_the_input_row() {
    let fx = Fixture::new();
    // dur's vector large enough that 3e38 · v is infinite, whatever the other weights.
    fx.set_tensor("emb.dur", vec![1000.0, -1000.0, 1000.0, 500.0]);
    let input = fx.input("in.csv", 10, |row, c| {
        if row == 7 {
            c[4] = "3e38".into();
        }
    });
    let output = fx.path("out.csv");
    for precision in ["f32", "f16"] {
        let out = fx.score(&input, &output, &["--precision", precision]);
        fails_naming(
            &out,
            &["in.csv", "row 7", "NaN", "overflowed"],
            &format!("3e38 at {precision}"),
        );
        assert!(!output.exists(), "a failed run wrote its output");
    }
}

/// At f16 the activations are stored as f16, whose range ends at 65504: a dense value that f32
/// holds (1e6 · v ≈ 1e9) but f16 does not fails naming its row and that range, never leaving as
/// a probability computed from a clipped value; at f32 the same file scores.
#[test]
fn a_value_beyond_f16_fails_at_f16_naming_the_row_and_the_range() {
    let fx = Fixture::new();
    fx.set_tensor("emb.dur", vec![1000.0, -1000.0, 1000.0, 500.0]);
    let input = fx.input("in.csv", 10, |row, c| {
        if row == 4 {
            c[4] = "1e6".into();
        }
    });
    let output = fx.path("out.csv");
    let out = fx.score(&input, &output, &["--precision", "f16"]);
    fails_naming(
        &out,
        &["in.csv", "row 4", "overflowed", "65504"],
        "1e6 at f16",
    );
    assert!(!output.exists(), "a failed run wrote its output");
    let out = fx.score(&input, &output, &["--precision", "f32"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Under `--rejects`, the rows that overflow are rejected with the reason and the others are
/// scored, in order, with finite probabilities.
#[test]
fn rows_that_overflow_are_rejected_under_rejects() {
    let fx = Fixture::new();
    fx.set_tensor("emb.dur", vec![1000.0, -1000.0, 1000.0, 500.0]);
    let input = fx.input("in.csv", 10, |row, c| {
        if row == 3 || row == 8 {
            c[4] = "-3e38".into();
        }
    });
    let (output, rejects) = (fx.path("out.csv"), fx.path("rejects.csv"));
    let err = ok(
        &fx.score(&input, &output, &["--rejects", rejects.to_str().unwrap()]),
        "score with rejects",
    );
    assert!(err.contains("2 rejected"), "{err}");
    let rejected = lines(&rejects);
    assert_eq!(rejected.len(), 3, "{rejected:?}");
    assert!(rejected[1].starts_with("3,click,") && rejected[1].contains("NaN"));
    assert!(rejected[2].starts_with("8,click,"));
    let scored = lines(&output);
    let ids: Vec<&str> = scored[1..]
        .iter()
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(ids, ["r0", "r1", "r3", "r4", "r5", "r6", "r8", "r9"]);
    for line in &scored[1..] {
        for p in line.split(',').skip(1) {
            let p: f64 = p.parse().unwrap();
            assert!(p.is_finite() && (0.0..=1.0).contains(&p), "{line}");
        }
    }
}

/// The library refuses the same batch: `Error::Samples` names the sample and the task.
#[test]
fn the_engine_refuses_a_non_finite_probability() {
    use pepnet::{Batch, Column, Engine, EngineOptions, GpuContext, Model};
    let spec = ModelSpec::from_json(SPEC, "spec").unwrap();
    let mut model = Model::init(spec, 3).unwrap();
    model.weights.get_mut("emb.dur").unwrap().data = vec![1000.0, -1000.0, 1000.0, 500.0];
    let ctx = GpuContext::new(None).expect("a GPU adapter");
    let engine = Engine::new(ctx, &model, &EngineOptions::default()).unwrap();
    let batch = Batch::new(vec![
        Column::Sparse(vec![0, 1, 2]),
        Column::Sparse(vec![4, 5, 6]),
        Column::MultiHot {
            offsets: vec![0, 1, 3, 3],
            ids: vec![1, 2, 3],
        },
        Column::Dense(vec![0.5, 3e38, -0.25]),
    ]);
    match engine.score(&batch) {
        Err(Error::Samples(bad)) => {
            assert_eq!(bad.len(), 1, "{bad:?}");
            assert_eq!(bad[0].sample, 1);
            assert_eq!(bad[0].column, "click");
        }
        other => panic!("expected Error::Samples, got {other:?}"),
    }
    let fine = batch.take(&[0, 2]);
    let p = engine.score(&fine).unwrap();
    assert!(p.iter().all(|x| x.is_finite()));
}

#[test]
fn a_gate_gamma_beyond_the_bound_is_refused() {
    let fx = Fixture::new();
    for gamma in ["1e39", "65", "0", "-2"] {
        let spec = fx.spec_file(
            "gamma.json",
            "\"embedding_dim\": 4,",
            &format!("\"embedding_dim\": 4, \"gate_gamma\": {gamma},"),
        );
        fails_naming(
            &pepnet(&["plan".as_ref(), "--model".as_ref(), spec.as_os_str()]),
            &["gate_gamma", "(0, 64]"],
            gamma,
        );
    }
}

/// Weights of ±3e38 would overflow every sum: refused on load, naming the tensor.
#[test]
fn weights_beyond_the_f16_range_are_refused_naming_the_tensor() {
    let fx = Fixture::new();
    let path = fx.model.join("weights.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let t = tensors
        .iter_mut()
        .find(|t| t.0 == "tower.like.1.weight")
        .unwrap();
    t.2[4..8].copy_from_slice(&(-3e38f32).to_le_bytes());
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), d).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
    let input = fx.input("in.csv", 3, |_, _| {});
    fails_naming(
        &fx.score(&input, &fx.path("out.csv"), &[]),
        &["tower.like.1.weight", "element 1", "65504"],
        "huge weight",
    );
}

#[test]
fn eval_refuses_scores_that_are_not_probabilities() {
    let fx = Fixture::new();
    let data = fx.path("data.csv");
    ok(
        &pepnet(&[
            "gen-data".as_ref(),
            "--model".as_ref(),
            fx.model.as_os_str(),
            "--rows".as_ref(),
            "6".as_ref(),
            "--output".as_ref(),
            data.as_os_str(),
        ]),
        "gen-data",
    );
    for bad in ["NaN", "1.5", "-0.1", "inf"] {
        let scores = fx.path("scores.csv");
        let mut text = String::from("click,like\n");
        for i in 0..6 {
            let click = if i == 4 {
                bad.to_string()
            } else {
                "0.5".into()
            };
            text += &format!("{click},0.25\n");
        }
        std::fs::write(&scores, text).unwrap();
        fails_naming(
            &pepnet(&[
                "eval".as_ref(),
                "--model".as_ref(),
                fx.model.as_os_str(),
                "--input".as_ref(),
                data.as_os_str(),
                "--scores".as_ref(),
                scores.as_os_str(),
            ]),
            &["scores.csv", "row 5", "'click'", "not a probability"],
            bad,
        );
    }
}

// ---- Family 4: adversarial sizes ---------------------------------------------------------------

#[test]
fn huge_sizes_are_refused_naming_the_key() {
    let fx = Fixture::new();
    let cases = [
        (
            "\"embedding_dim\": 4",
            "\"embedding_dim\": 1000000000000",
            "embedding_dim",
        ),
        (
            "\"embedding_dim\": 4",
            "\"embedding_dim\": 4294967297",
            "embedding_dim",
        ),
        ("\"max_len\": 3", "\"max_len\": 1000000000000000", "max_len"),
        (
            "\"towers\": [5, 3]",
            "\"towers\": [1099511627776, 3]",
            "towers[0]",
        ),
        ("\"towers\": [5, 3]", "\"towers\": [5, 65537]", "towers[1]"),
        (
            "\"hidden\": 5",
            "\"hidden\": 18446744073709551615",
            "epnet.hidden",
        ),
        ("\"vocab\": 20", "\"vocab\": 2147483647", "emb.user_id"),
        ("\"vocab\": 20", "\"vocab\": 268435457", "features[1].vocab"),
    ];
    let out = fx.path("big-model");
    for (from, to, key) in cases {
        let spec = fx.spec_file("big.json", from, to);
        for cmd in [
            vec!["plan".as_ref(), "--model".as_ref(), spec.as_os_str()],
            vec![
                "init".as_ref(),
                "--spec".as_ref(),
                spec.as_os_str(),
                "--out".as_ref(),
                out.as_os_str(),
            ],
        ] {
            fails_naming(&pepnet(&cmd), &["big.json", key], to);
        }
        assert!(!out.exists());
    }
}

/// `plan` needs no weights: a spec whose tables would take 4 GiB plans at once.
#[test]
fn plan_allocates_no_weights() {
    let fx = Fixture::new();
    let spec = fx.spec_file(
        "wide.json",
        "\"vocab\": 20",
        "\"vocab\": 268435456", // × d 4 = 2^30 f32: the largest tensor allowed, 4 GiB
    );
    let out = ok(
        &pepnet(&["plan".as_ref(), "--model".as_ref(), spec.as_os_str()]),
        "plan",
    );
    assert!(out.is_empty() || !out.contains("error"));
}

/// Weights larger than the host's memory are refused before allocating, naming the bytes.
#[test]
fn init_refuses_weights_larger_than_the_memory() {
    if pepnet::memory::available_bytes().is_none() {
        return;
    }
    let fx = Fixture::new();
    // 4096 features of 4 GiB tables each: 16 TiB.
    let mut spec: serde_json::Value = serde_json::from_str(SPEC).unwrap();
    let features = spec["features"].as_array_mut().unwrap();
    for i in 0..4096 {
        features.push(serde_json::json!({
            "name": format!("big{i}"), "kind": "sparse", "vocab": 268435456, "roles": ["prior"]
        }));
    }
    let path = fx.path("huge.json");
    std::fs::write(&path, spec.to_string()).unwrap();
    fails_naming(
        &pepnet(&[
            "init".as_ref(),
            "--spec".as_ref(),
            path.as_os_str(),
            "--out".as_ref(),
            fx.path("huge-model").as_os_str(),
        ]),
        &["memory:", "bytes", "available"],
        "16 TiB of weights",
    );
    assert!(!fx.path("huge-model").exists());
}

// ---- Family 5: ambiguous names -------------------------------------------------------------------

#[test]
fn colliding_tensor_names_are_refused_naming_both_features() {
    let fx = Fixture::new();
    for (extra, clash) in [("h.ids", "emb.h.ids"), ("h.default", "emb.h.default")] {
        let spec = fx.spec_file(
            "clash.json",
            "{\"name\": \"dur\"",
            &format!(
                "{{\"name\": \"h\", \"kind\": \"sparse\", \"hashed\": true, \"roles\": [\"general\"]}},
                 {{\"name\": \"{extra}\", \"kind\": \"dense\", \"roles\": [\"general\"]}},
                 {{\"name\": \"dur\""
            ),
        );
        fails_naming(
            &pepnet(&["plan".as_ref(), "--model".as_ref(), spec.as_os_str()]),
            &[clash, "'h'", &format!("'{extra}'")],
            extra,
        );
    }
}

#[test]
fn a_duplicate_input_column_is_refused() {
    let fx = Fixture::new();
    let input = fx.path("dup.csv");
    std::fs::write(&input, format!("{HEADER},user_id\nr0,1,2,3,0.5,4\n")).unwrap();
    let output = fx.path("out.csv");
    fails_naming(
        &fx.score(&input, &output, &[]),
        &["dup.csv", "'user_id'", "more than once", "columns 3 and 6"],
        "duplicate column",
    );
    assert!(!output.exists());
}

#[test]
fn a_carried_column_named_like_a_task_or_carried_twice_is_refused() {
    let fx = Fixture::new();
    let text = format!("{HEADER},click\nr0,1,2,3,0.5,1\n");
    let input = fx.path("in.csv");
    std::fs::write(&input, text).unwrap();
    let output = fx.path("out.csv");
    fails_naming(
        &fx.score(&input, &output, &["--carry", "click"]),
        &[
            "two columns named 'click'",
            "a carried column",
            "a task's score",
        ],
        "carry click",
    );
    fails_naming(
        &fx.score(&input, &output, &["--carry", "rid"]),
        &["two columns named 'rid'"],
        "carry rid twice",
    );
    assert!(!output.exists());
}

// ---- Family 6: late or missing checks ----------------------------------------------------------

/// A `--json` into a missing directory fails before training starts (no model is written, no
/// epoch runs).
#[test]
fn outputs_are_checked_before_any_work() {
    let fx = Fixture::new();
    let data = fx.path("data.csv");
    ok(
        &pepnet(&[
            "gen-data".as_ref(),
            "--model".as_ref(),
            fx.model.as_os_str(),
            "--rows".as_ref(),
            "64".as_ref(),
            "--output".as_ref(),
            data.as_os_str(),
        ]),
        "gen-data",
    );
    let out = fx.path("trained");
    let json = fx.path("missing-dir/report.json");
    let err = fails_naming(
        &pepnet(&[
            "train".as_ref(),
            "--model".as_ref(),
            fx.model.as_os_str(),
            "--train".as_ref(),
            data.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
            "--json".as_ref(),
            json.as_os_str(),
        ]),
        &["missing-dir"],
        "train --json into a missing directory",
    );
    assert!(!err.contains("epoch"), "training ran first: {err}");
    assert!(!out.exists());
    // The same for a score output in a missing directory and a rejects path that is a directory.
    let input = fx.input("in.csv", 2, |_, _| {});
    fails_naming(
        &fx.score(&input, &fx.path("nowhere/out.csv"), &[]),
        &["nowhere"],
        "score into a missing directory",
    );
    fails_naming(
        &fx.score(
            &input,
            &fx.path("out.csv"),
            &["--rejects", fx.root.to_str().unwrap()],
        ),
        &["is a directory"],
        "rejects into a directory",
    );
    assert!(!fx.path("out.csv").exists());
}

/// A saved optimizer state is validated like weights: moments finite, sums of squares not
/// negative, a step count the GPU can hold, no extra tensors.
#[test]
fn a_bad_optimizer_state_is_refused_naming_the_tensor() {
    let spec = ModelSpec::from_json(SPEC, "spec").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let good = OptimizerState {
        step: 10,
        tensors: spec
            .expected_tensors()
            .into_iter()
            .flat_map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let values: Vec<f32> = (0..n).map(|i| 0.01 * (i % 7) as f32).collect();
                if name.starts_with("emb.") {
                    vec![(format!("adagrad.{name}"), (shape, values))]
                } else {
                    vec![
                        (format!("adam.m.{name}"), (shape.clone(), values.clone())),
                        (format!("adam.v.{name}"), (shape, values)),
                    ]
                }
            })
            .collect(),
    };
    good.save(dir.path()).unwrap();
    assert_eq!(
        OptimizerState::load(dir.path(), &spec).unwrap(),
        Some(good.clone())
    );

    let spoil = |edit: &dyn Fn(&mut OptimizerState)| {
        let mut s = good.clone();
        edit(&mut s);
        s.save(dir.path()).unwrap();
        OptimizerState::load(dir.path(), &spec)
            .unwrap_err()
            .to_string()
    };
    let err = spoil(&|s| s.tensors.get_mut("adam.v.tower.click.0.weight").unwrap().1[3] = -1.0);
    assert!(
        err.contains("adam.v.tower.click.0.weight") && err.contains("non-negative"),
        "{err}"
    );
    let err = spoil(&|s| s.tensors.get_mut("adam.m.epnet.fc1.bias").unwrap().1[0] = f32::NAN);
    assert!(
        err.contains("adam.m.epnet.fc1.bias") && err.contains("NaN"),
        "{err}"
    );
    let err = spoil(&|s| s.tensors.get_mut("adagrad.emb.tab").unwrap().1[0] = -0.5);
    assert!(err.contains("adagrad.emb.tab"), "{err}");
    let err = spoil(&|s| s.step = u64::MAX);
    assert!(
        err.contains("'step'") && err.contains(&u64::MAX.to_string()),
        "{err}"
    );
    let err = spoil(&|s| {
        s.tensors
            .insert("adam.m.stray".into(), (vec![1], vec![0.0]));
    });
    assert!(
        err.contains("adam.m.stray") && err.contains("extra"),
        "{err}"
    );
}

// ---- Family 7: slow validation -----------------------------------------------------------------

/// 100 000 features validate and plan in linear time (this took 52 s when quadratic; the bound
/// is a hang guard, far above the 0.3 s it takes).
#[test]
fn a_spec_with_100_000_features_plans_quickly() {
    let fx = Fixture::new();
    let mut spec: serde_json::Value = serde_json::from_str(SPEC).unwrap();
    let features = spec["features"].as_array_mut().unwrap();
    for i in 0..100_000 {
        features.push(
            serde_json::json!({"name": format!("d{i}"), "kind": "dense", "roles": ["general"]}),
        );
    }
    let path = fx.path("many.json");
    std::fs::write(&path, spec.to_string()).unwrap();
    let start = std::time::Instant::now();
    ok(
        &pepnet(&["plan".as_ref(), "--model".as_ref(), path.as_os_str()]),
        "plan of 100 000 features",
    );
    assert!(start.elapsed().as_secs() < 20, "{:?}", start.elapsed());
}

// ---- Family 8: degenerate options --------------------------------------------------------------

#[test]
fn zero_counts_and_sizes_are_refused_by_name() {
    let fx = Fixture::new();
    let model = fx.model.to_str().unwrap();
    let cases: [(&[&str], &str); 7] = [
        (&["cache-bench", "--distinct", "0"], "--distinct"),
        (&["cache-bench", "--users", "0"], "--users"),
        (&["cache-bench", "--rows", "0"], "--rows"),
        (&["bench", "--batch-sizes", "8,0"], "--batch-sizes"),
        (&["bench", "--iters", "0"], "--iters"),
        (
            &[
                "train", "--model", model, "--train", "x.csv", "--out", "o", "--epochs", "0",
            ],
            "--epochs",
        ),
        (
            &[
                "gen-input",
                "--model",
                model,
                "--rows",
                "0",
                "--output",
                "x.csv",
            ],
            "--rows",
        ),
    ];
    for (args, option) in cases {
        let out = pepnet(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(option) && err.contains("0 is not in 1.."),
            "{args:?}: {err}"
        );
    }
}

// ---- Family 9: messages ----------------------------------------------------------------------------

/// A 10 MB cell makes a one-line message: the cell is cut short, with its size.
#[test]
fn a_huge_cell_is_not_echoed_whole() {
    let fx = Fixture::new();
    let huge = "9".repeat(10 << 20);
    let input = fx.input("in.csv", 3, |row, c| {
        if row == 2 {
            c[2] = huge.clone();
        }
    });
    let err = fails_naming(
        &fx.score(&input, &fx.path("out.csv"), &[]),
        &["row 2", "'user_id'", "a cell of 10485760 bytes"],
        "10 MB cell",
    );
    assert!(err.len() < 1000, "{} bytes of message", err.len());
}

/// A safetensors file whose header lies about one tensor's bytes names that tensor.
#[test]
fn a_corrupt_safetensors_header_names_the_tensor() {
    let fx = Fixture::new();
    let path = fx.model.join("weights.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header["ppnet.1.fc2.bias"]["shape"] = serde_json::json!([7]);
    let mut text = header.to_string();
    while text.len() < n {
        text.push(' ');
    }
    assert_eq!(text.len(), n, "the edited header keeps its length");
    let mut spoiled = bytes[..8].to_vec();
    spoiled.extend_from_slice(text.as_bytes());
    spoiled.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&path, spoiled).unwrap();
    let input = fx.input("in.csv", 2, |_, _| {});
    fails_naming(
        &fx.score(&input, &fx.path("out.csv"), &[]),
        &[
            "weights.safetensors",
            "ppnet.1.fc2.bias",
            "shape [7] needs 28 bytes",
        ],
        "corrupt header",
    );
}

/// A hashed model whose cache holds fewer rows than one sample needs: the error names the
/// input row, and `--rejects` rejects just that row.
#[test]
fn a_sample_too_large_for_the_cache_names_its_row_and_can_be_rejected() {
    let spec = r#"{
      "embedding_dim": 4, "domain_feature": "tab", "tasks": ["click"],
      "features": [
        {"name": "tab", "kind": "sparse", "vocab": 3, "roles": ["domain"]},
        {"name": "tags", "kind": "multi_hot", "hashed": true, "max_len": 8, "pooling": "sum", "roles": ["general"]}
      ],
      "towers": [3]
    }"#;
    let fx = Fixture::with_spec(spec);
    let input = fx.path("in.csv");
    let mut text = String::from("rid,tab,tags\n");
    for i in 0..6u64 {
        let n = if i == 3 { 8 } else { 2 };
        let tags: Vec<String> = (0..n).map(|j| (i * 100 + j).to_string()).collect();
        text += &format!("r{i},{},{}\n", i % 3, tags.join("|"));
    }
    std::fs::write(&input, text).unwrap();
    // Stored rows for every id (an id not in the store takes the default row, no cache row).
    let ids: Vec<u64> = (0..6u64)
        .flat_map(|i| (0..8).map(move |j| i * 100 + j))
        .collect();
    let rows: Vec<f32> = (0..ids.len() * 4)
        .map(|i| (i as f32 * 0.37).sin())
        .collect();
    let id_bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
    let views = [
        (
            "emb.tags.ids",
            TensorView::new(Dtype::U64, vec![ids.len()], &id_bytes).unwrap(),
        ),
        (
            "emb.tags",
            TensorView::new(Dtype::F32, vec![ids.len(), 4], bytemuck::cast_slice(&rows)).unwrap(),
        ),
    ];
    let rows_file = fx.path("rows.safetensors");
    safetensors::serialize_to_file(views, None, &rows_file).unwrap();
    ok(
        &pepnet(&[
            "apply-rows".as_ref(),
            "--model".as_ref(),
            fx.model.as_os_str(),
            "--rows".as_ref(),
            rows_file.as_os_str(),
        ]),
        "apply-rows",
    );
    let output = fx.path("out.csv");
    let args = |extra: &[&str]| {
        let mut a = vec!["--cache-rows", "4"];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let plain = args(&[]);
    fails_naming(
        &fx.score(
            &input,
            &output,
            &plain.iter().map(String::as_str).collect::<Vec<_>>(),
        ),
        &[
            "in.csv",
            "row 4",
            "distinct cached embedding rows",
            "capacity of 4",
        ],
        "cache too small",
    );
    assert!(!output.exists());
    let rejects = fx.path("rejects.csv");
    let with = args(&["--rejects", rejects.to_str().unwrap()]);
    ok(
        &fx.score(
            &input,
            &output,
            &with.iter().map(String::as_str).collect::<Vec<_>>(),
        ),
        "cache too small, with rejects",
    );
    let rejected = lines(&rejects);
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert!(rejected[1].starts_with("4,,"), "{rejected:?}");
    assert_eq!(lines(&output).len(), 6);
}

/// Parquet ids in an unsigned column use all 64 bits (hashed ids); a list id that does not fit
/// the column's integer type is not called null.
#[test]
fn parquet_unsigned_ids_are_read_whole() {
    use arrow_array::builder::{ListBuilder, UInt64Builder};
    use arrow_array::{ArrayRef, Float32Array, RecordBatch, StringArray, UInt64Array};
    let spec = r#"{
      "embedding_dim": 4, "domain_feature": "tab", "tasks": ["click"],
      "features": [
        {"name": "tab", "kind": "sparse", "vocab": 3, "roles": ["domain"]},
        {"name": "user", "kind": "sparse", "hashed": true, "roles": ["general"]},
        {"name": "tags", "kind": "multi_hot", "hashed": true, "max_len": 3, "pooling": "sum", "roles": ["general"]},
        {"name": "dur", "kind": "dense", "roles": ["general"]}
      ],
      "towers": [3]
    }"#;
    let fx = Fixture::with_spec(spec);
    let mut tags = ListBuilder::new(UInt64Builder::new());
    for ids in [&[u64::MAX, 1 << 63][..], &[5], &[]] {
        tags.values().append_slice(ids);
        tags.append(true);
    }
    let columns: Vec<(&str, ArrayRef)> = vec![
        (
            "rid",
            std::sync::Arc::new(StringArray::from(vec!["a", "b", "c"])),
        ),
        ("tab", std::sync::Arc::new(UInt64Array::from(vec![0, 1, 2]))),
        (
            "user",
            std::sync::Arc::new(UInt64Array::from(vec![u64::MAX, 1 << 63, 9])),
        ),
        ("tags", std::sync::Arc::new(tags.finish())),
        (
            "dur",
            std::sync::Arc::new(Float32Array::from(vec![0.5, 1.0, 1.5])),
        ),
    ];
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let input = fx.path("in.parquet");
    let file = std::fs::File::create(&input).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    let output = fx.path("out.csv");
    ok(&fx.score(&input, &output, &[]), "unsigned hashed ids");
    assert_eq!(lines(&output).len(), 4);
}

// ---- Device faults ---------------------------------------------------------------------------------

/// A device lost in the middle of a run (here destroyed) is a typed error naming what was being
/// done, for scoring and for training; never a panic or a hang.
#[test]
fn a_lost_device_is_an_error_naming_what_was_being_done() {
    use pepnet::train::{Trainer, TrainerOptions};
    use pepnet::{Batch, Column, Engine, EngineOptions, GpuContext, Model};
    let spec = ModelSpec::from_json(SPEC, "spec").unwrap();
    let model = Model::init(spec, 5).unwrap();
    let batch = Batch::new(vec![
        Column::Sparse(vec![0, 1, 2]),
        Column::Sparse(vec![4, 5, 6]),
        Column::MultiHot {
            offsets: vec![0, 1, 3, 3],
            ids: vec![1, 2, 3],
        },
        Column::Dense(vec![0.5, 0.75, -0.25]),
    ]);

    let ctx = GpuContext::new(None).expect("a GPU adapter");
    let engine = Engine::new(ctx.clone(), &model, &EngineOptions::default()).unwrap();
    engine.score(&batch).unwrap();
    ctx.device.destroy();
    match engine.score(&batch) {
        Err(Error::Gpu(m)) => {
            assert!(m.contains("scoring samples 1..=3"), "{m}");
            assert!(m.contains("lost"), "{m}");
        }
        other => panic!("expected a GPU error, got {other:?}"),
    }

    let ctx = GpuContext::new(None).expect("a GPU adapter");
    let options = TrainerOptions {
        batch_size: 3,
        ..Default::default()
    };
    let mut trainer = Trainer::new(ctx.clone(), &model, None, &options).unwrap();
    let labels = vec![1.0, 0.0, 0.0, 1.0, 1.0, 0.0];
    trainer.step(&batch, &labels).unwrap();
    trainer.losses().unwrap();
    ctx.device.destroy();
    let err = trainer
        .step(&batch, &labels)
        .and_then(|()| trainer.losses().map(drop))
        .unwrap_err();
    assert!(matches!(err, Error::Gpu(_)), "{err}");
    assert!(err.to_string().contains("training step"), "{err}");
}

/// Where only OpenGL is found (forced here), the run says so loudly, with how to get Vulkan.
#[test]
fn a_run_on_the_opengl_fallback_says_so() {
    let fx = Fixture::new();
    let input = fx.input("in.csv", 2, |_, _| {});
    let out = Command::new(env!("CARGO_BIN_EXE_pepnet"))
        .args(["score", "--model"])
        .arg(&fx.model)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(fx.path("out.csv"))
        .env("WGPU_BACKEND", "gl")
        .output()
        .unwrap();
    let err = stderr(&out);
    if !err.contains("(Gl)") {
        // No OpenGL driver on this machine either: nothing to fall back to.
        return;
    }
    assert!(err.contains("WARNING: running on OpenGL"), "{err}");
    assert!(err.contains("mesa-vulkan-drivers"), "{err}");
}

// ---- Fuzzing's findings ------------------------------------------------------------------------

/// Every input the fuzzers found to crash, hang or exhaust memory (kept in fuzz/findings/),
/// through the CLI: a clean exit (scored, or an error naming the file), never a panic or an
/// abort.
#[test]
fn the_fuzzers_findings_fail_cleanly() {
    let findings = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/findings");
    let fuzz_spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/spec.json");
    let fx = Fixture::with_spec(&std::fs::read_to_string(&fuzz_spec).unwrap());
    let mut seen = 0;
    for entry in std::fs::read_dir(&findings).unwrap() {
        let dir = entry.unwrap().path();
        for file in std::fs::read_dir(&dir).unwrap() {
            let file = file.unwrap().path();
            let target = dir.file_name().unwrap().to_str().unwrap();
            let runs: Vec<Output> = match target {
                "model_json" => vec![pepnet(&[
                    "plan".as_ref(),
                    "--model".as_ref(),
                    file.as_os_str(),
                ])],
                "csv_input" | "parquet_input" => {
                    let ext = if target == "csv_input" {
                        "csv"
                    } else {
                        "parquet"
                    };
                    let input = fx.path(&format!("finding.{ext}"));
                    std::fs::copy(&file, &input).unwrap();
                    // Bad rows go to a rejects file, so that a read fails only on damage.
                    let rejects = fx.path("rejects.csv");
                    let rejects = rejects.to_str().unwrap();
                    let (model, output) = (fx.model.to_str().unwrap(), fx.path("out.csv"));
                    let (input, output) = (input.to_str().unwrap(), output.to_str().unwrap());
                    ["1", "2"]
                        .iter()
                        .map(|readers| {
                            pepnet(&[
                                "score",
                                "--model",
                                model,
                                "--input",
                                input,
                                "--output",
                                output,
                                "--batch-size",
                                "2",
                                "--readers",
                                readers,
                                "--rejects",
                                rejects,
                                "--quiet",
                            ])
                        })
                        .collect()
                }
                _ => continue,
            };
            // A file that made a decoder panic is damaged: the run must fail, on one reader
            // thread or several (a reader thread's panic once ended the read early, silently).
            let damaged = file
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("panic-parquet");
            // A file once read differently by one thread and two: now alike, ok or failed.
            let name = file.file_name().unwrap().to_str().unwrap();
            if name.starts_with("divergence-") {
                let codes: Vec<_> = runs.iter().map(|o| o.status.code()).collect();
                assert!(
                    codes.windows(2).all(|w| w[0] == w[1]),
                    "{}: one reader thread and two disagree: exits {codes:?}",
                    file.display()
                );
            }
            for out in runs {
                let code = out.status.code();
                assert!(
                    code == Some(1) || (code == Some(0) && !damaged),
                    "{}: exit {code:?}: {}",
                    file.display(),
                    stderr(&out)
                );
                assert!(!stderr(&out).contains("panicked"), "{}", file.display());
            }
            seen += 1;
        }
    }
    assert!(
        seen >= 4,
        "the findings are kept in fuzz/findings ({seen} found)"
    );
}
