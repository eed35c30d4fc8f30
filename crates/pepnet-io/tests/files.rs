//! Scoring files at scale: CSV and Parquet in and out, the threaded pipeline, `--rejects`, and
//! Parquet's bad inputs. Each bad input must fail naming the file, row and column, and leave no
//! output behind.

#[path = "../../pepnet-core/tests/common/mod.rs"]
mod common;

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Float32Type;
use arrow_array::{ArrayRef, Float64Array, Int64Array, ListArray, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use pepnet_core::{Engine, EngineOptions, Model, ModelSpec};
use pepnet_io::pipeline::{score_file, ScoreFileOptions};

const SPEC: &str = r#"{
  "embedding_dim": 5, "domain_feature": "tab", "tasks": ["click", "like", "follow"],
  "features": [
    {"name": "tab", "kind": "sparse", "vocab": 3, "roles": ["domain"]},
    {"name": "user_id", "kind": "sparse", "vocab": 50, "roles": ["general", "prior"]},
    {"name": "tags", "kind": "multi_hot", "vocab": 20, "max_len": 3, "pooling": "sum", "roles": ["general"]},
    {"name": "dur", "kind": "dense", "roles": ["general", "domain"]}
  ],
  "epnet": {"hidden": 7}, "ppnet": {"hidden": 6}, "experts": null, "towers": [9]
}"#;

fn model() -> Model {
    Model::init(ModelSpec::from_json(SPEC, "spec").unwrap(), 17).unwrap()
}

fn engine(model: &Model) -> Engine {
    let options = EngineOptions {
        max_batch: 64,
        workspaces: 2,
        ..Default::default()
    };
    Engine::new(common::gpu(), model, &options).unwrap()
}

fn run(
    model: &Model,
    input: &Path,
    output: &Path,
    options: &ScoreFileOptions,
) -> pepnet_core::Result<pepnet_io::pipeline::ScoreSummary> {
    let engine = engine(model);
    score_file(&model.spec, input, output, options, &|b| {
        engine.score_checked(b)
    })
}

/// Every column of a Parquet file, as (name, array) after concatenating its batches.
fn read_parquet(path: &Path) -> Vec<(String, Vec<ArrayRef>)> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let mut columns: Vec<(String, Vec<ArrayRef>)> = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        if columns.is_empty() {
            columns = batch
                .schema()
                .fields()
                .iter()
                .map(|f| (f.name().clone(), Vec::new()))
                .collect();
        }
        for (c, array) in columns.iter_mut().zip(batch.columns()) {
            c.1.push(array.clone());
        }
    }
    columns
}

fn floats(arrays: &[ArrayRef]) -> Vec<f32> {
    arrays
        .iter()
        .flat_map(|a| a.as_primitive::<Float32Type>().values().to_vec())
        .collect()
}

fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect()
}

#[test]
fn csv_and_parquet_inputs_and_outputs_agree() {
    let model = model();
    let dir = tempfile::tempdir().unwrap();
    let (csv_in, pq_in) = (dir.path().join("in.csv"), dir.path().join("in.parquet"));
    pepnet_io::synth::write_file(&model.spec, 1000, 5, &csv_in).unwrap();
    pepnet_io::synth::write_file(&model.spec, 1000, 5, &pq_in).unwrap();
    let carry = vec!["user_id".to_string(), "tags".to_string()];
    let options = ScoreFileOptions {
        batch_size: 96,
        carry: carry.clone(),
        ..Default::default()
    };
    let outputs = [
        ("csv", &csv_in, "out1.csv"),
        ("csv", &pq_in, "out2.csv"),
        ("parquet", &pq_in, "out3.parquet"),
        ("parquet", &csv_in, "out4.parquet"),
    ];
    let mut scores = Vec::new();
    for (kind, input, name) in outputs {
        let out = dir.path().join(name);
        let summary = run(&model, input, &out, &options).unwrap();
        assert_eq!((summary.rows, summary.rejected), (1000, 0));
        let s: Vec<f32> = if kind == "csv" {
            let rows = csv_rows(&out);
            assert_eq!(rows.len(), 1000);
            rows.iter()
                .flat_map(|r| {
                    r[2..]
                        .iter()
                        .map(|x| x.parse::<f32>().unwrap())
                        .collect::<Vec<_>>()
                })
                .collect()
        } else {
            let cols = read_parquet(&out);
            let names: Vec<&str> = cols.iter().map(|c| c.0.as_str()).collect();
            assert_eq!(names, ["user_id", "tags", "click", "like", "follow"]);
            // Carried columns keep their types: ids from Parquet stay integers, cells from CSV stay text.
            let carried_type = cols[0].1[0].data_type().clone();
            assert_eq!(
                carried_type,
                if input == &pq_in {
                    DataType::Int64
                } else {
                    DataType::Utf8
                }
            );
            let per_task: Vec<Vec<f32>> = cols[2..].iter().map(|c| floats(&c.1)).collect();
            (0..1000)
                .flat_map(|i| per_task.iter().map(move |t| t[i]))
                .collect()
        };
        scores.push(s);
    }
    // The same rows score the same through every path (CSV prints the shortest f32 that reads back).
    for s in &scores[1..] {
        assert_eq!(s, &scores[0]);
    }
    // ... and as the reference says.
    let batch = pepnet_core::synth::random_batch(&model.spec, 1000, 5);
    let want = pepnet_core::reference::forward(&model, &batch).unwrap();
    assert!(common::max_abs_diff(&scores[0], &want) < 1e-5);
}

#[test]
fn rejects_collects_bad_rows_and_scores_the_rest() {
    let model = model();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    let mut text = String::from("rid,tab,user_id,tags,dur\n");
    let bad = [3usize, 7, 8, 20];
    for row in 1..=25 {
        let line = match row {
            3 => "r3,5,1,2,0.5".to_string(),       // tab outside [0, 3)
            7 => "r7,1,x,2,0.5".to_string(),       // not an id
            8 => "r8,1,2,1|2|3|4,0.5".to_string(), // list too long
            20 => "r20,1,2,1,nan".to_string(),     // not finite
            _ => format!(
                "r{row},{},{},{}|{},{}",
                row % 3,
                row,
                row % 20,
                (row * 7) % 20,
                row as f32 / 10.0
            ),
        };
        text += &line;
        text.push('\n');
    }
    std::fs::write(&input, text).unwrap();
    let output = dir.path().join("out.csv");
    let rejects = dir.path().join("rejects.csv");
    let options = ScoreFileOptions {
        batch_size: 4,
        carry: vec!["rid".into()],
        rejects: Some(rejects.clone()),
        ..Default::default()
    };
    let summary = run(&model, &input, &output, &options).unwrap();
    assert_eq!((summary.rows, summary.rejected), (21, 4));
    let rows = csv_rows(&output);
    let kept: Vec<String> = (1..=25)
        .filter(|r| !bad.contains(r))
        .map(|r| format!("r{r}"))
        .collect();
    assert_eq!(rows.iter().map(|r| r[0].clone()).collect::<Vec<_>>(), kept);
    let rejected = csv_rows(&rejects);
    let summary: Vec<(String, String)> = rejected
        .iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    assert_eq!(
        summary,
        [("3", "tab"), ("7", "user_id"), ("8", "tags"), ("20", "dur")]
            .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    assert!(
        rejected[0][3].contains("outside [0, 3)"),
        "{:?}",
        rejected[0]
    );
    assert!(rejected[3][3].contains("nan"), "{:?}", rejected[3]);
    // Scores of kept rows equal scoring the good rows alone.
    let good = dir.path().join("good.csv");
    let mut good_text = String::from("rid,tab,user_id,tags,dur\n");
    for row in (1..=25).filter(|r| !bad.contains(r)) {
        good_text += &format!(
            "r{row},{},{},{}|{},{}\n",
            row % 3,
            row,
            row % 20,
            (row * 7) % 20,
            row as f32 / 10.0
        );
    }
    std::fs::write(&good, good_text).unwrap();
    let good_out = dir.path().join("good_out.csv");
    run(
        &model,
        &good,
        &good_out,
        &ScoreFileOptions {
            carry: vec!["rid".into()],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(csv_rows(&good_out), rows);
}

/// Writes a Parquet file with the given columns.
fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    write_parquet_with(path, columns, None)
}

/// Writes a Parquet file with the given columns and writer properties.
fn write_parquet_with(
    path: &Path,
    columns: Vec<(&str, ArrayRef)>,
    props: Option<parquet::file::properties::WriterProperties>,
) {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let batch =
        RecordBatch::try_new(schema.clone(), columns.into_iter().map(|c| c.1).collect()).unwrap();
    let mut writer = ArrowWriter::try_new(File::create(path).unwrap(), schema, props).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

/// Six empty `tags` lists but at row index `i` (0-based), which holds `list`.
fn one_list(i: usize, list: Option<Vec<Option<i64>>>) -> ArrayRef {
    let mut lists = vec![Some(vec![]); 6];
    lists[i] = list;
    tags(lists)
}

fn tags(lists: Vec<Option<Vec<Option<i64>>>>) -> ArrayRef {
    Arc::new(ListArray::from_iter_primitive::<
        arrow_array::types::Int64Type,
        _,
        _,
    >(lists))
}

/// Six good rows; `change` spoils one column.
fn parquet_columns(change: Option<(&'static str, ArrayRef)>) -> Vec<(&'static str, ArrayRef)> {
    let mut cols: Vec<(&str, ArrayRef)> = vec![
        ("tab", Arc::new(Int64Array::from(vec![0, 1, 2, 0, 1, 2]))),
        (
            "user_id",
            Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5, 6])),
        ),
        (
            "tags",
            tags(vec![
                Some(vec![Some(1)]),
                Some(vec![]),
                Some(vec![Some(2), Some(3)]),
                None.or(Some(vec![])),
                Some(vec![Some(4)]),
                Some(vec![Some(5)]),
            ]),
        ),
        (
            "dur",
            Arc::new(Float64Array::from(vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6])),
        ),
    ];
    if let Some((name, array)) = change {
        let i = cols.iter().position(|c| c.0 == name).unwrap();
        cols[i].1 = array;
    }
    cols
}

/// What is wrong, the spoiled column, and what the error must say.
type BadCase = (
    &'static str,
    Option<(&'static str, ArrayRef)>,
    &'static [&'static str],
);

#[test]
fn parquet_bad_inputs_name_the_place_and_leave_no_output() {
    let model = model();
    let cases: Vec<BadCase> = vec![
        (
            "id outside vocab",
            Some((
                "user_id",
                Arc::new(Int64Array::from(vec![1, 2, 3, 4, 50, 6])),
            )),
            &["row 5", "'user_id'", "50"],
        ),
        (
            "negative id",
            Some(("tab", Arc::new(Int64Array::from(vec![0, 1, -2, 0, 1, 2])))),
            &["row 3", "'tab'", "-2"],
        ),
        (
            "null id",
            Some((
                "user_id",
                Arc::new(Int64Array::from(vec![
                    Some(1),
                    None,
                    Some(3),
                    Some(4),
                    Some(5),
                    Some(6),
                ])),
            )),
            &["row 2", "'user_id'", "null"],
        ),
        (
            "null dense",
            Some((
                "dur",
                Arc::new(Float64Array::from(vec![
                    Some(0.1),
                    Some(0.2),
                    Some(0.3),
                    Some(0.4),
                    Some(0.5),
                    None,
                ])),
            )),
            &["row 6", "'dur'", "null"],
        ),
        (
            "infinite dense",
            Some((
                "dur",
                Arc::new(Float64Array::from(vec![
                    0.1,
                    0.2,
                    f64::INFINITY,
                    0.4,
                    0.5,
                    0.6,
                ])),
            )),
            &["row 3", "'dur'", "inf"],
        ),
        (
            "overflowing dense",
            Some((
                "dur",
                Arc::new(Float64Array::from(vec![0.1, 1e40, 0.3, 0.4, 0.5, 0.6])),
            )),
            &["row 2", "'dur'", "1e40"],
        ),
        (
            "list too long",
            Some((
                "tags",
                one_list(3, Some(vec![Some(1), Some(2), Some(3), Some(4)])),
            )),
            &["row 4", "'tags'", "max_len 3"],
        ),
        (
            "id outside vocab in a list",
            Some(("tags", one_list(1, Some(vec![Some(20)])))),
            &["row 2", "'tags'", "20"],
        ),
        (
            "null id in a list",
            Some(("tags", one_list(4, Some(vec![Some(1), None])))),
            &["row 5", "'tags'", "null"],
        ),
        (
            "null list",
            Some(("tags", one_list(2, None))),
            &["row 3", "'tags'", "null"],
        ),
        (
            "text where ids belong",
            Some((
                "user_id",
                Arc::new(StringArray::from(vec!["a", "b", "c", "d", "e", "f"])),
            )),
            &["'user_id'", "integer ids", "Utf8"],
        ),
    ];
    for (what, change, needles) in cases {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.parquet");
        write_parquet(&input, parquet_columns(change));
        let output = dir.path().join("out.parquet");
        let err = run(
            &model,
            &input,
            &output,
            &ScoreFileOptions {
                batch_size: 2,
                ..Default::default()
            },
        )
        .err()
        .unwrap_or_else(|| panic!("{what}: expected an error"))
        .to_string();
        assert!(err.contains("in.parquet"), "{what}: {err}");
        for needle in needles {
            assert!(err.contains(needle), "{what}: '{needle}' not in: {err}");
        }
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["in.parquet"], "{what}: files left behind");
    }
    // A missing column.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.parquet");
    let mut cols = parquet_columns(None);
    cols.retain(|c| c.0 != "dur");
    write_parquet(&input, cols);
    let err = run(
        &model,
        &input,
        &dir.path().join("o.csv"),
        &ScoreFileOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("missing column 'dur'"), "{err}");
    // The good file scores.
    write_parquet(&input, parquet_columns(None));
    let summary = run(
        &model,
        &input,
        &dir.path().join("o.csv"),
        &ScoreFileOptions::default(),
    )
    .unwrap();
    assert_eq!(summary.rows, 6);
}

#[test]
fn many_small_batches_through_the_pipeline_keep_their_order() {
    let model = model();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.parquet");
    pepnet_io::synth::write_file(&model.spec, 5000, 9, &input).unwrap();
    let output = dir.path().join("out.parquet");
    let options = ScoreFileOptions {
        batch_size: 37,
        carry: vec!["user_id".into()],
        scorers: 3,
        ..Default::default()
    };
    let summary = run(&model, &input, &output, &options).unwrap();
    assert_eq!(summary.rows, 5000);
    let cols = read_parquet(&output);
    let ids: Vec<i64> = cols[0]
        .1
        .iter()
        .flat_map(|a| {
            a.as_primitive::<arrow_array::types::Int64Type>()
                .values()
                .to_vec()
        })
        .collect();
    let batch = pepnet_core::synth::random_batch(&model.spec, 5000, 9);
    let want: Vec<i64> = match &batch.columns[1] {
        pepnet_core::Column::Sparse(v) => v.iter().map(|&x| x as i64).collect(),
        _ => unreachable!(),
    };
    // synth writes chunks of 65536 rows, so 5000 rows come from one seed: the same rows.
    assert_eq!(ids, want);
}

/// Reading on several threads gives what one reader gives: the same output, the same rejects
/// file (rows in file order), and without `--rejects` the same first error, for CSV (chunks)
/// and Parquet (row groups), with bad rows in several threads' parts.
#[test]
fn several_reader_threads_read_as_one() {
    let model = model();
    let dir = tempfile::tempdir().unwrap();
    let clean = dir.path().join("clean.csv");
    pepnet_io::synth::write_file(&model.spec, 2000, 3, &clean).unwrap();
    // Bad cells spread over the file: an id out of range, text for a number, a short row.
    let mut lines: Vec<String> = std::fs::read_to_string(&clean)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    for (n, row) in [5usize, 97, 98, 640, 1333, 1999].into_iter().enumerate() {
        let cells: Vec<&str> = lines[row].split(',').collect();
        lines[row] = match n % 3 {
            0 => format!("{},999,{}", cells[0], cells[2..].join(",")),
            1 => format!("{},{},{},oops", cells[0], cells[1], cells[2]),
            _ => cells[0].to_string(),
        };
    }
    let csv_in = dir.path().join("in.csv");
    std::fs::write(&csv_in, lines.join("\n") + "\n").unwrap();
    // The same rows as Parquet in row groups of 150 (a few per thread), bad values kept.
    let pq_in = dir.path().join("in.parquet");
    write_parquet_groups(&csv_in, &pq_in, 150);
    let groups = ParquetRecordBatchReaderBuilder::try_new(File::open(&pq_in).unwrap())
        .unwrap()
        .metadata()
        .num_row_groups();
    assert_eq!(groups, 14, "2000 rows in row groups of 150");

    for input in [&csv_in, &pq_in] {
        let mut outputs = Vec::new();
        for readers in [1, 2, 3] {
            let out = dir.path().join(format!("out{readers}.csv"));
            let rejects = dir.path().join(format!("rejects{readers}.csv"));
            let options = ScoreFileOptions {
                batch_size: 64,
                carry: vec!["user_id".into()],
                rejects: Some(rejects.clone()),
                readers,
                ..Default::default()
            };
            let summary = run(&model, input, &out, &options).unwrap();
            assert_eq!(
                summary.rejected,
                6,
                "{} with {readers} readers",
                input.display()
            );
            let failed = run(
                &model,
                input,
                &dir.path().join("never.csv"),
                &ScoreFileOptions {
                    batch_size: 64,
                    readers,
                    ..Default::default()
                },
            )
            .unwrap_err()
            .to_string();
            outputs.push((
                std::fs::read(&out).unwrap(),
                std::fs::read(&rejects).unwrap(),
                failed,
            ));
        }
        for (readers, o) in outputs.iter().enumerate().skip(1) {
            let what = format!("{} with {} readers", input.display(), readers + 1);
            assert!(o.0 == outputs[0].0, "{what}: scores differ");
            assert!(o.1 == outputs[0].1, "{what}: rejects differ");
            assert_eq!(o.2, outputs[0].2, "{what}: first error");
        }
        assert!(outputs[0].2.contains("row 5"), "{}", outputs[0].2);
        assert!(!dir.path().join("never.csv").exists());
    }
}

/// Rewrites a CSV of the test spec as Parquet with row groups of `rows`: ids as integers where
/// they parse, the rest (bad cells) as they are, so both files hold the same bad rows.
fn write_parquet_groups(csv_in: &Path, out: &Path, rows: usize) {
    let lines: Vec<Vec<String>> = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(csv_in)
        .unwrap()
        .records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect();
    let int = |s: &str| s.parse::<i64>().ok();
    let tab: Vec<Option<i64>> = lines.iter().map(|r| int(&r[0])).collect();
    let user: Vec<Option<i64>> = lines
        .iter()
        .map(|r| r.get(1).and_then(|c| int(c)))
        .collect();
    let tags: Vec<Option<Vec<Option<i64>>>> = lines
        .iter()
        .map(|r| {
            r.get(2).map(|c| {
                c.split('|')
                    .filter(|p| !p.is_empty())
                    .map(|p| p.parse::<i64>().ok())
                    .collect()
            })
        })
        .collect();
    let dur: Vec<Option<f64>> = lines
        .iter()
        .map(|r| r.get(3).and_then(|c| c.parse::<f64>().ok()))
        .collect();
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("tab", Arc::new(Int64Array::from(tab))),
        ("user_id", Arc::new(Int64Array::from(user))),
        (
            "tags",
            Arc::new(ListArray::from_iter_primitive::<
                arrow_array::types::Int64Type,
                _,
                _,
            >(tags)),
        ),
        ("dur", Arc::new(Float64Array::from(dur))),
    ];
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(rows))
        .build();
    write_parquet_with(out, columns, Some(props));
}

/// A batch checked against one spec is checked again by an engine of another: rows that fit
/// the reader's spec but not the engine's are an error naming the column, never read out of
/// range.
#[test]
fn batches_checked_against_another_spec_are_checked_again() {
    let model = model();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    pepnet_io::synth::write_file(&model.spec, 300, 4, &input).unwrap();
    // The same features with a smaller user vocabulary: ids up to 49 no longer fit.
    let small = Model::init(
        ModelSpec::from_json(&SPEC.replace("\"vocab\": 50", "\"vocab\": 5"), "spec").unwrap(),
        3,
    )
    .unwrap();
    let engine = engine(&small);
    let err = score_file(
        &model.spec,
        &input,
        &dir.path().join("out.csv"),
        &ScoreFileOptions::default(),
        &|b| engine.score_checked(b),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("user_id"), "{err}");
    assert!(!dir.path().join("out.csv").exists());
}

/// Outputs never destroy what they should not touch: an output or rejects path naming the input
/// (however spelled) or each other is refused before anything is read; a symlinked output
/// replaces the file the link points to and the link stays; a FIFO is written as a stream and
/// stays a FIFO.
#[test]
fn outputs_never_replace_inputs_links_or_fifos() {
    let model = model();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    pepnet_io::synth::write_file(&model.spec, 200, 6, &input).unwrap();
    let original = std::fs::read(&input).unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let same_input = sub.join("..").join("in.csv");
    let cases = [
        (same_input.clone(), None),
        (dir.path().join("out.csv"), Some(input.clone())),
        (dir.path().join("out.csv"), Some(sub.join("../out.csv"))),
    ];
    for (output, rejects) in cases {
        let options = ScoreFileOptions {
            rejects: rejects.clone(),
            ..Default::default()
        };
        let err = run(&model, &input, &output, &options)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is the same file as"), "{err}");
        assert_eq!(
            std::fs::read(&input).unwrap(),
            original,
            "the input was touched"
        );
        assert!(!dir.path().join("out.csv").exists());
    }

    // A symlink: its target gets the scores, the link stays a link.
    let target = dir.path().join("target.csv");
    std::fs::write(&target, "old").unwrap();
    let link = dir.path().join("link.csv");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    run(&model, &input, &link, &ScoreFileOptions::default()).unwrap();
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(csv_rows(&target).len(), 200);

    // A FIFO: read on another thread while scoring writes to it.
    let fifo = dir.path().join("scores.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
    };
    run(&model, &input, &fifo, &ScoreFileOptions::default()).unwrap();
    let text = reader.join().unwrap();
    assert_eq!(
        text.lines().count(),
        201,
        "a header and 200 rows through the FIFO"
    );
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
    // Nothing left behind beside any of them.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".pepnet-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A file's bytes in memory read as the file itself is: the same batches, CSV and Parquet.
#[test]
fn inputs_read_from_memory_equal_inputs_read_from_files() {
    use pepnet_io::{Format, InputReader};
    let model = model();
    let dir = tempfile::tempdir().unwrap();
    for name in ["in.csv", "in.parquet"] {
        let path = dir.path().join(name);
        pepnet_io::synth::write_file(&model.spec, 37, 3, &path).unwrap();
        let read = |reader: InputReader| -> Vec<pepnet_core::Batch> {
            reader.map(|b| b.unwrap().batch).collect()
        };
        let from_file = read(InputReader::open(&path, &model.spec, &[], 8, None).unwrap());
        let format = Format::of(&path);
        let bytes = std::fs::read(&path).unwrap();
        let from_memory =
            read(InputReader::from_bytes(name, bytes, format, &model.spec, &[], 8, None).unwrap());
        assert_eq!(from_file.len(), 5, "{name}");
        assert_eq!(from_file, from_memory, "{name}");
    }
}
