//! The `pepnet` binary end to end: `init`, `score` (GPU and reference backends), `info`, and
//! every error rule of the contract (`docs/model.md`, "model.json", "Tensor names" and "Scoring
//! input and output files") as a user meets it on the command line.
//!
//! Every test builds its fixtures in a fresh temporary directory: a model made by `pepnet init`
//! from a small spec, an input CSV, and an output directory that holds nothing but the output,
//! so that a test can list it and see that a failed run left nothing behind.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::cli::{ok, pepnet, stderr};

use pepnet::spec::ModelSpec;
use pepnet::Weights;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// Tiny on purpose (lavapipe runs the kernels on the CPU): d = 4, three tasks, EPNet and PPNet
/// on, a sparse domain feature, sparse general+prior features, a multi-hot feature with
/// max_len 3, and a dense feature that is both general and domain-side.
const SPEC: &str = r#"{
  "embedding_dim": 4,
  "gate_gamma": 2.0,
  "domain_feature": "tab",
  "tasks": ["click", "like", "follow"],
  "features": [
    {"name": "tab", "kind": "sparse", "vocab": 3, "roles": ["domain"]},
    {"name": "user_id", "kind": "sparse", "vocab": 20, "roles": ["general", "prior"]},
    {"name": "item_id", "kind": "sparse", "vocab": 30, "roles": ["general", "prior"]},
    {"name": "tags", "kind": "multi_hot", "vocab": 10, "max_len": 3, "pooling": "mean", "roles": ["general"]},
    {"name": "dur", "kind": "dense", "roles": ["general", "domain"]}
  ],
  "epnet": {"hidden": 5},
  "ppnet": {"hidden": 6},
  "experts": null,
  "towers": [5, 3]
}"#;

const TASKS: [&str; 3] = ["click", "like", "follow"];

/// Input header: the features (not in spec order), plus an id and a free-text column that the
/// model ignores unless they are carried.
const HEADER: [&str; 7] = ["rid", "dur", "tab", "user_id", "item_id", "tags", "note"];

/// Rows in the input files; with `--batch-size 4` that is three batches.
const N_ROWS: usize = 10;

/// The (1-based) data row that the bad-input tests spoil: in the last batch, after two batches
/// were scored and written.
const BAD_ROW: usize = 9;

const BATCH_SIZE: &str = "4";

/// Asserts the run failed cleanly (non-zero exit, no panic) and that stderr holds every needle.
fn assert_fails_naming(out: &Output, needles: &[&str], what: &str) {
    let err = stderr(out);
    assert!(
        !out.status.success(),
        "{what}: expected failure, but the run succeeded; stderr:\n{err}"
    );
    assert!(
        !err.contains("panicked"),
        "{what}: the binary panicked instead of reporting an error:\n{err}"
    );
    for needle in needles {
        assert!(
            err.contains(needle),
            "{what}: stderr does not contain {needle:?}:\n{err}"
        );
    }
}

/// Names of the entries of `dir`, sorted.
fn list_dir(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A temporary directory with `model/` (made by `pepnet init`), `in/` for inputs and `out/` for
/// outputs (initially empty).
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::fs::create_dir(root.join("in")).unwrap();
        std::fs::create_dir(root.join("out")).unwrap();
        let spec = root.join("spec.json");
        std::fs::write(&spec, SPEC).unwrap();
        let out = pepnet(&[
            OsStr::new("init"),
            OsStr::new("--spec"),
            spec.as_os_str(),
            OsStr::new("--out"),
            root.join("model").as_os_str(),
            OsStr::new("--seed"),
            OsStr::new("11"),
        ]);
        ok(&out, "pepnet init");
        Self { _dir: dir, root }
    }

    fn model(&self) -> PathBuf {
        self.root.join("model")
    }

    fn out_dir(&self) -> PathBuf {
        self.root.join("out")
    }

    /// Writes `rows` under `header` to `in/<name>` (fields may vary in number per row).
    fn write_input(&self, name: &str, header: &[&str], rows: &[Vec<String>]) -> PathBuf {
        let path = self.root.join("in").join(name);
        let mut w = csv::WriterBuilder::new()
            .flexible(true)
            .from_path(&path)
            .unwrap();
        w.write_record(header).unwrap();
        for row in rows {
            w.write_record(row).unwrap();
        }
        w.flush().unwrap();
        path
    }

    /// `pepnet score` with `--batch-size 4` and any extra arguments.
    fn score(&self, model: &Path, input: &Path, output: &Path, extra: &[&str]) -> Output {
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("score"),
            OsStr::new("--model"),
            model.as_os_str(),
            OsStr::new("--input"),
            input.as_os_str(),
            OsStr::new("--output"),
            output.as_os_str(),
            OsStr::new("--batch-size"),
            OsStr::new(BATCH_SIZE),
        ];
        args.extend(extra.iter().map(OsStr::new));
        pepnet(&args)
    }
}

/// Valid rows matching [`HEADER`]: every tab, ids across each vocabulary, tag lists of length
/// 0 to 3, negative and positive dense values, and notes that need CSV quoting.
fn valid_rows() -> Vec<Vec<String>> {
    (1..=N_ROWS)
        .map(|i| {
            let tags: Vec<String> = (0..i % 4).map(|k| ((i + 3 * k) % 10).to_string()).collect();
            vec![
                format!("r{i}"),
                format!("{:.3}", i as f32 * 0.37 - 1.5),
                (i % 3).to_string(),
                ((i * 7) % 20).to_string(),
                ((i * 11) % 30).to_string(),
                tags.join("|"),
                format!("note {i}, \"quoted\""),
            ]
        })
        .collect()
}

fn col(name: &str) -> usize {
    HEADER.iter().position(|h| *h == name).unwrap()
}

/// Reads an output CSV: its header and rows.
fn read_output(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::Reader::from_path(path).unwrap();
    let header = r.headers().unwrap().iter().map(String::from).collect();
    let rows = r
        .records()
        .map(|rec| rec.unwrap().iter().map(String::from).collect())
        .collect();
    (header, rows)
}

/// The probabilities of an output file whose last `TASKS.len()` columns are the tasks, checked
/// to lie in (0, 1).
fn probabilities(rows: &[Vec<String>]) -> Vec<f32> {
    let mut ps = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        for cell in &row[row.len() - TASKS.len()..] {
            let p: f32 = cell
                .parse()
                .unwrap_or_else(|_| panic!("row {}: '{cell}' is not a number", i + 1));
            assert!(
                p > 0.0 && p < 1.0,
                "row {}: probability {p} is not in (0, 1)",
                i + 1
            );
            ps.push(p);
        }
    }
    ps
}

// ---------------------------------------------------------------------------------------------
// Valid runs

#[test]
fn score_writes_carried_columns_then_tasks_and_reference_agrees() {
    let fx = Fixture::new();
    let rows = valid_rows();
    let input = fx.write_input("in.csv", &HEADER, &rows);

    // GPU backend, carrying an ignored column, a free-text column and a feature column.
    let gpu_out = fx.out_dir().join("gpu.csv");
    let out = fx.score(&fx.model(), &input, &gpu_out, &["--carry", "rid,note,tab"]);
    ok(&out, "score (gpu)");
    let (header, gpu_rows) = read_output(&gpu_out);
    assert_eq!(
        header,
        ["rid", "note", "tab", "click", "like", "follow"],
        "header: carried columns, then the tasks"
    );
    assert_eq!(gpu_rows.len(), N_ROWS, "one output row per input row");
    for (i, (got, input_row)) in gpu_rows.iter().zip(&rows).enumerate() {
        assert_eq!(got.len(), 3 + TASKS.len(), "row {}", i + 1);
        assert_eq!(got[0], input_row[col("rid")], "row {}: rid", i + 1);
        assert_eq!(got[1], input_row[col("note")], "row {}: note", i + 1);
        assert_eq!(got[2], input_row[col("tab")], "row {}: tab", i + 1);
    }
    let gpu_p = probabilities(&gpu_rows);
    let spread = gpu_p.iter().cloned().fold(f32::NEG_INFINITY, f32::max)
        - gpu_p.iter().cloned().fold(f32::INFINITY, f32::min);
    assert!(
        spread > 1e-3,
        "probabilities barely vary ({spread}); the fixture is too tame"
    );

    // The f64 reference on the CPU, same carry: the same numbers within 1e-5.
    let ref_out = fx.out_dir().join("reference.csv");
    let out = fx.score(
        &fx.model(),
        &input,
        &ref_out,
        &["--carry", "rid,note,tab", "--backend", "reference"],
    );
    ok(&out, "score (reference)");
    let (ref_header, ref_rows) = read_output(&ref_out);
    assert_eq!(ref_header, header);
    assert_eq!(ref_rows.len(), N_ROWS);
    for (g, r) in gpu_rows.iter().zip(&ref_rows) {
        assert_eq!(g[..3], r[..3], "carried cells agree");
    }
    let ref_p = probabilities(&ref_rows);
    for (i, (g, r)) in gpu_p.iter().zip(&ref_p).enumerate() {
        assert!(
            (g - r).abs() <= 1e-5,
            "row {}, task {}: gpu {g} vs reference {r}",
            i / TASKS.len() + 1,
            TASKS[i % TASKS.len()]
        );
    }

    // Without --carry the output holds the tasks only, with the same numbers.
    let plain_out = fx.out_dir().join("plain.csv");
    ok(
        &fx.score(&fx.model(), &input, &plain_out, &[]),
        "score (no carry)",
    );
    let (plain_header, plain_rows) = read_output(&plain_out);
    assert_eq!(plain_header, TASKS);
    assert_eq!(probabilities(&plain_rows), gpu_p);

    assert_eq!(
        list_dir(&fx.out_dir()),
        ["gpu.csv", "plain.csv", "reference.csv"],
        "no temporary files are left next to the outputs"
    );
}

#[test]
fn successful_run_replaces_an_existing_output() {
    let fx = Fixture::new();
    let input = fx.write_input("in.csv", &HEADER, &valid_rows());
    let output = fx.out_dir().join("scores.csv");
    std::fs::write(&output, "stale\n").unwrap();
    ok(&fx.score(&fx.model(), &input, &output, &[]), "score");
    let (header, rows) = read_output(&output);
    assert_eq!(header, TASKS);
    assert_eq!(rows.len(), N_ROWS);
    assert_eq!(list_dir(&fx.out_dir()), ["scores.csv"]);
}

// ---------------------------------------------------------------------------------------------
// Bad input: each fails, names the file, row, column and value, and leaves no output behind.

/// Checks a failed score run: it names the input file and every needle, did not panic, and left
/// the output directory empty (no output, no temporary file).
fn assert_failed_cleanly(fx: &Fixture, out: &Output, input: &Path, needles: &[&str], what: &str) {
    let file = input.display().to_string();
    let mut all = vec![file.as_str()];
    all.extend_from_slice(needles);
    assert_fails_naming(out, &all, what);
    assert!(
        list_dir(&fx.out_dir()).is_empty(),
        "{what}: a failed run left {:?} in the output directory",
        list_dir(&fx.out_dir())
    );
}

/// Puts `value` in column `column` of data row [`BAD_ROW`] of an otherwise valid file of
/// [`N_ROWS`] rows, scores it with `--batch-size 4`, and checks the run fails naming the file,
/// the row, the column and each of `needles` (the offending value), leaving nothing behind.
fn check_bad_cell(column: &str, value: &str, needles: &[&str]) {
    let fx = Fixture::new();
    let mut rows = valid_rows();
    rows[BAD_ROW - 1][col(column)] = value.to_string();
    let input = fx.write_input("bad.csv", &HEADER, &rows);
    let output = fx.out_dir().join("scores.csv");
    let out = fx.score(&fx.model(), &input, &output, &["--carry", "rid"]);
    let row = format!("row {BAD_ROW},");
    let col = format!("column '{column}'");
    let mut all = vec![row.as_str(), col.as_str()];
    all.extend_from_slice(needles);
    let what = format!("{column} = {value:?} in row {BAD_ROW}");
    assert_failed_cleanly(&fx, &out, &input, &all, &what);
    assert!(!output.exists(), "{what}: the output file exists");
}

#[test]
fn sparse_id_at_or_above_vocab_fails() {
    check_bad_cell("user_id", "12345", &["12345"]);
    // The first id out of range: vocab itself.
    check_bad_cell("tab", "3", &["id 3", "[0, 3)"]);
}

#[test]
fn negative_sparse_id_fails() {
    check_bad_cell("item_id", "-7", &["-7"]);
}

#[test]
fn non_integer_sparse_id_fails() {
    check_bad_cell("user_id", "2.5", &["2.5"]);
    check_bad_cell("tab", "abc", &["abc"]);
}

#[test]
fn multi_hot_list_longer_than_max_len_fails() {
    check_bad_cell("tags", "1|2|3|4", &["4", "max_len 3"]);
}

#[test]
fn bad_id_inside_a_multi_hot_list_fails() {
    check_bad_cell("tags", "1|99|2", &["99"]);
    check_bad_cell("tags", "1|-2", &["-2"]);
    check_bad_cell("tags", "1|x7", &["x7"]);
}

#[test]
fn dense_value_that_does_not_parse_fails() {
    check_bad_cell("dur", "fast", &["fast"]);
    check_bad_cell("dur", "", &["''"]);
}

#[test]
fn nan_dense_value_fails() {
    check_bad_cell("dur", "NaN", &["NaN"]);
}

#[test]
fn infinite_dense_value_fails() {
    check_bad_cell("dur", "inf", &["inf"]);
    check_bad_cell("dur", "-inf", &["-inf"]);
}

#[test]
fn dense_value_that_overflows_f32_fails() {
    check_bad_cell("dur", "1e40", &[]);
}

/// The contract asks the error to name the value; `1e40` parses to an f32 infinity, and the
/// message must show what the file holds, not the overflowed number.
#[test]
fn dense_value_that_overflows_f32_is_named_as_written() {
    check_bad_cell("dur", "1e40", &["1e40"]);
}

#[test]
fn row_with_the_wrong_number_of_fields_fails() {
    for (what, change) in [("too few", -1isize), ("too many", 1)] {
        let fx = Fixture::new();
        let mut rows = valid_rows();
        let row = &mut rows[BAD_ROW - 1];
        if change < 0 {
            row.pop();
        } else {
            row.push("surplus".into());
        }
        let input = fx.write_input("ragged.csv", &HEADER, &rows);
        let output = fx.out_dir().join("scores.csv");
        let out = fx.score(&fx.model(), &input, &output, &[]);
        let row_needle = format!("row {BAD_ROW}");
        assert_failed_cleanly(
            &fx,
            &out,
            &input,
            &[&row_needle, "fields"],
            &format!("{what} fields in row {BAD_ROW}"),
        );
    }
}

#[test]
fn missing_feature_column_fails() {
    for missing in ["tab", "tags", "dur"] {
        let fx = Fixture::new();
        let keep: Vec<usize> = (0..HEADER.len())
            .filter(|&c| HEADER[c] != missing)
            .collect();
        let header: Vec<&str> = keep.iter().map(|&c| HEADER[c]).collect();
        let rows: Vec<Vec<String>> = valid_rows()
            .into_iter()
            .map(|r| keep.iter().map(|&c| r[c].clone()).collect())
            .collect();
        let input = fx.write_input("no_col.csv", &header, &rows);
        let output = fx.out_dir().join("scores.csv");
        let out = fx.score(&fx.model(), &input, &output, &[]);
        let col = format!("'{missing}'");
        assert_failed_cleanly(
            &fx,
            &out,
            &input,
            &["missing column", &col],
            &format!("no column {missing}"),
        );
    }
}

#[test]
fn missing_carried_column_fails() {
    let fx = Fixture::new();
    let input = fx.write_input("in.csv", &HEADER, &valid_rows());
    let output = fx.out_dir().join("scores.csv");
    let out = fx.score(
        &fx.model(),
        &input,
        &output,
        &["--carry", "rid,request_time"],
    );
    assert_failed_cleanly(
        &fx,
        &out,
        &input,
        &["missing column", "'request_time'"],
        "carrying a column the file lacks",
    );
}

#[test]
fn failed_run_leaves_an_existing_output_untouched() {
    let fx = Fixture::new();
    let mut rows = valid_rows();
    rows[BAD_ROW - 1][col("user_id")] = "999".into();
    let input = fx.write_input("bad.csv", &HEADER, &rows);
    let output = fx.out_dir().join("scores.csv");
    let precious = "click,like,follow\n0.25,0.5,0.75\n";
    std::fs::write(&output, precious).unwrap();
    let out = fx.score(&fx.model(), &input, &output, &[]);
    assert_fails_naming(&out, &["row 9,", "column 'user_id'", "999"], "bad id");
    assert_eq!(
        std::fs::read_to_string(&output).unwrap(),
        precious,
        "a failed run changed the existing output"
    );
    assert_eq!(list_dir(&fx.out_dir()), ["scores.csv"], "no temporary file");

    // The same for a failure found before any batch is scored (a bad model directory).
    std::fs::write(fx.model().join("model.json"), "{").unwrap();
    let out = fx.score(
        &fx.model(),
        &fx.write_input("in.csv", &HEADER, &valid_rows()),
        &output,
        &[],
    );
    assert_fails_naming(&out, &["model.json"], "unreadable model.json");
    assert_eq!(std::fs::read_to_string(&output).unwrap(), precious);
    assert_eq!(list_dir(&fx.out_dir()), ["scores.csv"]);
}

// ---------------------------------------------------------------------------------------------
// Model directory errors, met through `pepnet score`.

/// Scores a valid input with the fixture's (spoiled) model; checks the run fails
/// naming each needle and leaves the output directory empty.
fn check_bad_model(fx: &Fixture, needles: &[&str], what: &str) {
    let input = fx.write_input("in.csv", &HEADER, &valid_rows());
    let output = fx.out_dir().join("scores.csv");
    let out = fx.score(&fx.model(), &input, &output, &[]);
    assert_fails_naming(&out, needles, what);
    assert!(
        list_dir(&fx.out_dir()).is_empty(),
        "{what}: a failed run left {:?} in the output directory",
        list_dir(&fx.out_dir())
    );
}

/// Replaces `from` by `to` in the spec text, checking the replacement happened.
fn spec_with(from: &str, to: &str) -> String {
    assert!(SPEC.contains(from), "the test spec has no {from:?}");
    SPEC.replace(from, to)
}

#[test]
fn bad_model_json_fails_naming_the_key() {
    let tab_feature = r#"{"name": "tab", "kind": "sparse", "vocab": 3, "roles": ["domain"]},"#;
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "unknown top-level key",
            spec_with(r#""towers""#, r#""colour": 1, "towers""#),
            vec!["colour"],
        ),
        (
            "unknown feature key",
            spec_with(r#""vocab": 30,"#, r#""vocab": 30, "hash": true,"#),
            vec!["hash"],
        ),
        (
            "domain feature not among the features",
            spec_with(tab_feature, ""),
            vec!["domain_feature", "'tab'"],
        ),
        (
            "domain_feature names no feature",
            spec_with(r#""domain_feature": "tab""#, r#""domain_feature": "page""#),
            vec!["domain_feature", "'page'"],
        ),
        (
            "no domain_feature key",
            spec_with(r#""domain_feature": "tab","#, ""),
            vec!["domain_feature"],
        ),
        (
            "feature without roles",
            spec_with(r#""roles": ["general"]}"#, r#""roles": []}"#),
            vec!["features[3]", "tags", "roles"],
        ),
        (
            "empty task list",
            spec_with(r#"["click", "like", "follow"]"#, "[]"),
            vec!["'tasks'"],
        ),
        (
            "zero tower width",
            spec_with("[5, 3]", "[5, 0]"),
            vec!["towers[1]"],
        ),
        (
            "zero EPNet width",
            spec_with(r#""epnet": {"hidden": 5}"#, r#""epnet": {"hidden": 0}"#),
            vec!["epnet.hidden"],
        ),
        (
            "zero PPNet width",
            spec_with(r#""ppnet": {"hidden": 6}"#, r#""ppnet": {"hidden": 0}"#),
            vec!["ppnet.hidden"],
        ),
    ];
    for (what, text, needles) in cases {
        let fx = Fixture::new();
        let spec_path = fx.model().join("model.json");
        std::fs::write(&spec_path, &text).unwrap();
        let file = spec_path.display().to_string();
        let mut all = vec![file.as_str()];
        all.extend(needles);
        check_bad_model(&fx, &all, what);
    }
}

/// A tensor as written to a safetensors file: name, dtype, shape, little-endian bytes.
type RawTensor = (String, Dtype, Vec<usize>, Vec<u8>);

/// The fixture's weights (as `pepnet init --seed 11` makes them) as [`RawTensor`]s.
fn fixture_tensors() -> Vec<RawTensor> {
    let spec = ModelSpec::from_json(SPEC, "spec.json").unwrap();
    let weights = Weights::init(&spec, 11);
    weights
        .iter()
        .map(|(name, t)| {
            let bytes = t.data.iter().flat_map(|x| x.to_le_bytes()).collect();
            (name.to_string(), Dtype::F32, t.shape.clone(), bytes)
        })
        .collect()
}

fn write_safetensors(path: &Path, tensors: &[RawTensor]) {
    let views = tensors.iter().map(|(name, dtype, shape, bytes)| {
        (
            name.as_str(),
            TensorView::new(*dtype, shape.clone(), bytes).unwrap(),
        )
    });
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// Writes the fixture's weights after `spoil` changed them and checks scoring fails naming the
/// weights file and each needle.
fn check_bad_weights(what: &str, needles: &[&str], spoil: impl FnOnce(&mut Vec<RawTensor>)) {
    let fx = Fixture::new();
    let mut tensors = fixture_tensors();
    spoil(&mut tensors);
    let path = fx.model().join("weights.safetensors");
    write_safetensors(&path, &tensors);
    let file = path.display().to_string();
    let mut all = vec![file.as_str()];
    all.extend_from_slice(needles);
    check_bad_model(&fx, &all, what);
}

fn find<'a>(tensors: &'a mut [RawTensor], name: &str) -> &'a mut RawTensor {
    tensors
        .iter_mut()
        .find(|t| t.0 == name)
        .unwrap_or_else(|| panic!("the fixture has no tensor {name}"))
}

#[test]
fn unchanged_fixture_weights_score() {
    // The spoiling tests below mean something only if the unspoiled file they start from works.
    let fx = Fixture::new();
    let tensors = fixture_tensors();
    write_safetensors(&fx.model().join("weights.safetensors"), &tensors);
    let input = fx.write_input("in.csv", &HEADER, &valid_rows());
    let out = fx.score(&fx.model(), &input, &fx.out_dir().join("s.csv"), &[]);
    ok(&out, "fixture weights rewritten");
}

#[test]
fn weights_missing_a_tensor_fail() {
    check_bad_weights(
        "missing tower bias",
        &["'tower.like.1.bias'", "missing", "[3]"],
        |t| t.retain(|t| t.0 != "tower.like.1.bias"),
    );
    check_bad_weights(
        "missing embedding",
        &["'emb.tags'", "missing", "[10, 4]"],
        |t| t.retain(|t| t.0 != "emb.tags"),
    );
}

#[test]
fn weights_with_an_extra_tensor_fail() {
    check_bad_weights("extra tensor", &["'tower.share.0.weight'", "extra"], |t| {
        t.push((
            "tower.share.0.weight".into(),
            Dtype::F32,
            vec![2, 2],
            vec![0; 16],
        ))
    });
}

#[test]
fn weights_with_a_wrong_shape_fail() {
    check_bad_weights(
        "embedding with one row too many",
        &["'emb.user_id'", "[20, 4]", "[21, 4]"],
        |t| {
            let e = find(t, "emb.user_id");
            e.2 = vec![21, 4];
            e.3 = vec![0; 21 * 4 * 4];
        },
    );
    check_bad_weights(
        "transposed PPNet weight",
        &["'ppnet.0.fc1.weight'", "[6, 24]", "[24, 6]"],
        |t| find(t, "ppnet.0.fc1.weight").2 = vec![24, 6],
    );
}

#[test]
fn weights_with_a_wrong_dtype_fail() {
    check_bad_weights("I32 tensor", &["'epnet.fc1.bias'", "I32"], |t| {
        find(t, "epnet.fc1.bias").1 = Dtype::I32;
    });
    check_bad_weights("F64 tensor", &["'tower.click.2.weight'", "F64"], |t| {
        let e = find(t, "tower.click.2.weight");
        e.1 = Dtype::F64;
        e.3 =
            e.3.chunks_exact(4)
                .flat_map(|b| (f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64).to_le_bytes())
                .collect();
    });
}

#[test]
fn weights_with_a_non_finite_value_fail() {
    check_bad_weights("NaN weight", &["'epnet.fc2.weight'", "NaN"], |t| {
        find(t, "epnet.fc2.weight").3[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    });
}

#[test]
fn weights_file_that_is_not_safetensors_fails() {
    let fx = Fixture::new();
    let path = fx.model().join("weights.safetensors");
    std::fs::write(&path, b"not a safetensors file").unwrap();
    check_bad_model(&fx, &[&path.display().to_string()], "garbage weights");
}

// ---------------------------------------------------------------------------------------------
// init and info

#[test]
fn init_is_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.json");
    std::fs::write(&spec, SPEC).unwrap();
    let init = |name: &str, seed: &str| -> PathBuf {
        let out_dir = dir.path().join(name);
        let out = pepnet(&[
            OsStr::new("init"),
            OsStr::new("--spec"),
            spec.as_os_str(),
            OsStr::new("--out"),
            out_dir.as_os_str(),
            OsStr::new("--seed"),
            OsStr::new(seed),
        ]);
        ok(&out, &format!("init {name}"));
        assert_eq!(
            list_dir(&out_dir),
            ["model.json", "weights.safetensors"],
            "init writes exactly the two model files"
        );
        out_dir
    };
    let read = |dir: &Path, file: &str| std::fs::read(dir.join(file)).unwrap();
    let (a, b, c) = (init("a", "5"), init("b", "5"), init("c", "6"));
    assert_eq!(
        read(&a, "weights.safetensors"),
        read(&b, "weights.safetensors"),
        "same seed, different weights"
    );
    assert_eq!(read(&a, "model.json"), read(&b, "model.json"));
    assert_ne!(
        read(&a, "weights.safetensors"),
        read(&c, "weights.safetensors"),
        "different seeds, same weights"
    );
    // The written spec is the one given, with the scheme the weights were drawn by.
    let written = ModelSpec::load(&a.join("model.json")).unwrap();
    let mut given = ModelSpec::from_json(SPEC, "spec.json").unwrap();
    assert_eq!(given.init, None);
    given.init = Some(pepnet::InitSpec::default());
    assert_eq!(written, given);
}

#[test]
fn init_with_a_bad_spec_fails_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.json");
    std::fs::write(&spec, spec_with("[5, 3]", "[0, 3]")).unwrap();
    let out_dir = dir.path().join("model");
    let out = pepnet(&[
        OsStr::new("init"),
        OsStr::new("--spec"),
        spec.as_os_str(),
        OsStr::new("--out"),
        out_dir.as_os_str(),
    ]);
    assert_fails_naming(
        &out,
        &[&spec.display().to_string(), "towers[0]"],
        "init with a zero tower width",
    );
    assert!(
        !out_dir.exists(),
        "a failed init created the model directory"
    );
}

#[test]
fn info_lists_an_adapter() {
    let out = pepnet(&["info"]);
    ok(&out, "pepnet info");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.lines().any(|l| l.starts_with("[0] ")),
        "no adapter line in:\n{stdout}"
    );
}

/// Degenerate sizes are refused by name, not silently changed, looped on or divided by.
#[test]
fn zero_sizes_are_refused_naming_the_option() {
    let cases: [&[&str]; 5] = [
        &[
            "score",
            "--model",
            "m",
            "--input",
            "i.csv",
            "--output",
            "o.csv",
            "--batch-size",
            "0",
        ],
        &[
            "score",
            "--model",
            "m",
            "--input",
            "i.csv",
            "--output",
            "o.csv",
            "--readers",
            "0",
        ],
        &["cache-bench", "--distinct", "0"],
        &["cache-bench", "--batch", "0"],
        &["cache-bench", "--lookups", "0"],
    ];
    for args in cases {
        let flag = args[args.len() - 2];
        let out = pepnet(args);
        assert_fails_naming(&out, &[flag], &args.join(" "));
    }
}

/// A run stopped by SIGTERM or SIGINT leaves no temporary file behind and does not touch the
/// output it was writing (here an existing file, which keeps its old content).
#[test]
fn an_interrupted_score_leaves_nothing_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    let gen = Command::new(env!("CARGO_BIN_EXE_pepnet"))
        .args([
            "gen-input",
            "--model",
            "examples/kuairand",
            "--rows",
            "40000",
            "--output",
        ])
        .arg(&input)
        .output()
        .unwrap();
    ok(&gen, "gen-input");
    for signal in ["-TERM", "-INT"] {
        let output = dir.path().join("scores.csv");
        std::fs::write(&output, "old").unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pepnet"))
            .args([
                "score",
                "--model",
                "examples/kuairand",
                "--batch-size",
                "64",
                "--input",
            ])
            .arg(&input)
            .arg("--output")
            .arg(&output)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Wait (at most 20 s) until the run has its temporary output, then stop it.
        let temporary = || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(".pepnet-"))
                .count()
        };
        let start = std::time::Instant::now();
        while temporary() == 0 && start.elapsed().as_secs() < 20 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(temporary(), 1, "{signal}: the run never started its output");
        let killed = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(killed.success());
        let out = child.wait_with_output().unwrap();
        assert!(
            !out.status.success(),
            "{signal}: the run finished before the signal"
        );
        assert!(
            stderr(&out).contains("interrupted"),
            "{signal}: {}",
            stderr(&out)
        );
        assert_eq!(temporary(), 0, "{signal}: a temporary file was left behind");
        assert_eq!(std::fs::read_to_string(&output).unwrap(), "old", "{signal}");
    }
}
