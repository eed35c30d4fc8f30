//! Writes small valid files for each fuzz target into `fuzz/seeds/<target>/`, all made by the
//! crate's own writers where it has one (weights, optimizer state) or from the repository's
//! examples. Deterministic: running it again rewrites the same bytes.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{FixedSizeListBuilder, Int64Builder, LargeListBuilder, ListBuilder};
use arrow_array::builder::Int32Builder;
use arrow_array::{ArrayRef, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch};
use arrow_array::{StringArray, UInt8Array};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};
use pepnet_train::{OptimizerState, OPTIMIZER_FILE};
use pepnet_core::weights::HashedRows;
use pepnet_core::{Model, ModelSpec};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

const SPEC_JSON: &str = include_str!("../../spec.json");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The seeds this run wrote: the check at the end reads those (the seed directories also hold
/// inputs the fuzzer found, which need not be valid).
static WRITTEN: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
    WRITTEN.lock().unwrap().push(dir.join(name));
    println!("{} ({} bytes)", dir.join(name).display(), bytes.len());
}

/// Tensors as (name, dtype, shape, little-endian bytes), serialised with optional metadata.
type Raw = (String, Dtype, Vec<usize>, Vec<u8>);

fn serialize(tensors: &[Raw], metadata: Option<std::collections::HashMap<String, String>>) -> Vec<u8> {
    let views = tensors.iter().map(|(n, dt, shape, data)| {
        (n.as_str(), TensorView::new(*dt, shape.clone(), data).unwrap())
    });
    safetensors::serialize(views, metadata).unwrap()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect()
}

fn hashed_rows(d: usize, ids: &[u64], default: bool) -> HashedRows {
    HashedRows {
        d,
        ids: ids.to_vec(),
        rows: (0..ids.len() * d).map(|i| i as f32 * 0.25 - 1.0).collect(),
        default: default.then(|| vec![0.5; d]),
    }
}

fn main() {
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../seeds"));
    let spec = ModelSpec::from_json(SPEC_JSON, "spec.json").unwrap();
    let d = spec.d();

    // model_json: the repository's specs and the fuzz spec.
    let dir = out.join("model_json");
    for (name, path) in [
        ("tiny.json", "examples/specs/tiny.json"),
        ("paper.json", "examples/specs/paper.json"),
        ("paper_mmoe.json", "examples/specs/paper_mmoe.json"),
        ("kuairand.json", "examples/kuairand/model.json"),
    ] {
        write(&dir, name, &fs::read(repo().join(path)).unwrap());
    }
    write(&dir, "fuzz_spec.json", SPEC_JSON.as_bytes());
    let mut mmoe = spec.clone();
    mmoe.experts = Some(pepnet_core::spec::ExpertsSpec { count: 2, hidden: vec![6, 5] });
    mmoe.epnet = None;
    write(&dir, "fuzz_spec_mmoe.json", mmoe.to_json().as_bytes());

    // weights_safetensors: fresh weights; with stored hashed rows; everything as F16 / I64.
    let dir = out.join("weights_safetensors");
    let mut model = Model {
        spec: spec.clone(),
        weights: pepnet_core::Weights::init(&spec, 0),
    };
    write(&dir, "init.safetensors", &model.weights.to_safetensors());
    *model.weights.hashed_mut("video_id").unwrap() =
        hashed_rows(d, &[1, 42, u64::MAX - 5], true);
    *model.weights.hashed_mut("recent_tag_ids").unwrap() = hashed_rows(d, &[7], false);
    write(&dir, "hashed_rows.safetensors", &model.weights.to_safetensors());
    let mut raw: Vec<Raw> = model
        .weights
        .iter()
        .map(|(n, t)| (n.to_string(), Dtype::F16, t.shape.clone(), f16_bytes(&t.data)))
        .collect();
    for f in ["video_id", "recent_tag_ids"] {
        let h = model.weights.hashed(f).unwrap();
        let [ids, rows, default] = HashedRows::tensor_names(f);
        let n = h.ids.len();
        raw.push((ids, Dtype::I64, vec![n], h.ids.iter().flat_map(|i| i.to_le_bytes()).collect()));
        raw.push((rows, Dtype::F16, vec![n, d], f16_bytes(&h.rows)));
        if let Some(v) = &h.default {
            raw.push((default, Dtype::F32, vec![d], f32_bytes(v)));
        }
    }
    write(&dir, "f16_i64.safetensors", &serialize(&raw, None));

    // optimizer_state: written by OptimizerState::save (the file OptimizerState::load reads).
    let dir = out.join("optimizer_state");
    let tmp = std::env::temp_dir().join(format!("pepnet-seedgen-{}", std::process::id()));
    fs::create_dir_all(&tmp).unwrap();
    for (step, scale) in [(0u64, 0.0f32), (12345, 0.125)] {
        let mut tensors = BTreeMap::new();
        for (name, shape) in spec.expected_tensors() {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|i| i as f32 * scale).collect();
            if name.starts_with("emb.") {
                tensors.insert(format!("adagrad.{name}"), (shape, data));
            } else {
                tensors.insert(format!("adam.m.{name}"), (shape.clone(), data.clone()));
                tensors.insert(format!("adam.v.{name}"), (shape, data));
            }
        }
        let state = OptimizerState { step, tensors };
        state.check(&spec).unwrap();
        state.save(&tmp).unwrap();
        let bytes = fs::read(tmp.join(OPTIMIZER_FILE)).unwrap();
        write(&dir, &format!("step{step}.safetensors"), &bytes);
    }
    fs::remove_dir_all(&tmp).unwrap();

    // rows_safetensors: files of new rows for `apply-rows`.
    let dir = out.join("rows_safetensors");
    let rows = |f: &str, ids: &[u64], id_dtype: Dtype, f16: bool| -> Vec<Raw> {
        let h = hashed_rows(d, ids, false);
        let [ids_name, rows_name, _] = HashedRows::tensor_names(f);
        let id_bytes = h.ids.iter().flat_map(|i| i.to_le_bytes()).collect();
        let (dt, bytes) = if f16 {
            (Dtype::F16, f16_bytes(&h.rows))
        } else {
            (Dtype::F32, f32_bytes(&h.rows))
        };
        vec![
            (ids_name, id_dtype, vec![ids.len()], id_bytes),
            (rows_name, dt, vec![ids.len(), d], bytes),
        ]
    };
    write(&dir, "video_id.safetensors", &serialize(&rows("video_id", &[3, 9, 1 << 40], Dtype::U64, false), None));
    let mut both = rows("video_id", &[5], Dtype::I64, true);
    both.extend(rows("recent_tag_ids", &[1, 2, 3, 4], Dtype::U64, false));
    write(&dir, "both.safetensors", &serialize(&both, None));
    write(&dir, "empty.safetensors", &serialize(&rows("recent_tag_ids", &[], Dtype::U64, false), None));

    // csv_input: the head of the KuaiRand example (its columns are the fuzz spec's features),
    // a file with bad rows, and one with score columns for read_number_columns.
    let dir = out.join("csv_input");
    let input = fs::read_to_string(repo().join("examples/kuairand/input.csv")).unwrap();
    let head: Vec<&str> = input.lines().take(13).collect();
    write(&dir, "kuairand_head.csv", (head.join("\n") + "\n").as_bytes());
    write(
        &dir,
        "bad_rows.csv",
        b"tab,user_id,video_id,tag_ids,recent_tag_ids,log_duration\r\n\
          0,1,18446744073709551615,1|2|3|4,1|2|3|4|5|6,0.5\r\n\
          3,1,2,,,1\r\n\
          1,100,2,1,,1\r\n\
          2,5,-1,59,,2\r\n\
          1,5,7,1|2|3|4|5,,2\r\n\
          1,5,7,60,,2\r\n\
          1,5,7,,,NaN\r\n\
          1,5,7,, 1 | 2 ,inf\r\n\
          1,5,7\r\n\
          \"1\",\" 5\",\"7\",\"1|2\",\"\",\"1e3\"\r\n",
    );
    write(
        &dir,
        "scores.csv",
        b"request_id,tab,user_id,video_id,tag_ids,recent_tag_ids,log_duration,click,like\n\
          a,0,0,0,,,0,0.25,0.5\n\
          b,1,99,123456789,0|59,9|8|7,-1.5,1e-5,1\n\
          c,2,50,1,3,,3.25,0,0.125\n",
    );

    // parquet_input: the same rows as Parquet, in several layouts and encodings.
    let dir = out.join("parquet_input");
    let rows: Vec<Vec<&str>> = head[1..].iter().map(|l| l.split(',').collect()).collect();
    let header: Vec<&str> = head[0].split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let ints = |name: &str| -> Vec<i64> { rows.iter().map(|r| r[col(name)].parse().unwrap()).collect() };
    let lists = |name: &str| -> Vec<Vec<i64>> {
        rows.iter()
            .map(|r| {
                let cell = r[col(name)];
                if cell.is_empty() {
                    Vec::new()
                } else {
                    cell.split('|').map(|x| x.parse().unwrap()).collect()
                }
            })
            .collect()
    };
    let n = rows.len();
    let tab = ints("tab");
    let user = ints("user_id");
    let video = ints("video_id");
    let tags = lists("tag_ids");
    let recent = lists("recent_tag_ids");
    let dur: Vec<f64> = rows.iter().map(|r| r[col("log_duration")].parse().unwrap()).collect();

    let mut list_i64 = ListBuilder::new(Int64Builder::new());
    for l in &tags {
        list_i64.values().append_slice(l);
        list_i64.append(true);
    }
    let mut large_i32 = LargeListBuilder::new(Int32Builder::new());
    for l in &recent {
        for &x in l {
            large_i32.values().append_value(x as i32);
        }
        large_i32.append(true);
    }
    let base: Vec<(&str, ArrayRef)> = vec![
        ("request_id", Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r[0])))),
        ("tab", Arc::new(UInt8Array::from_iter_values(tab.iter().map(|&x| x as u8)))),
        ("user_id", Arc::new(Int32Array::from_iter_values(user.iter().map(|&x| x as i32)))),
        // A hashed feature's ids as stored signed hashes.
        ("video_id", Arc::new(Int64Array::from_iter_values(video.iter().map(|&x| x.wrapping_mul(-0x61c8_8646_80b5_83eb))))),
        ("tag_ids", Arc::new(list_i64.finish())),
        ("recent_tag_ids", Arc::new(large_i32.finish())),
        ("log_duration", Arc::new(Float64Array::from(dur.clone()))),
        ("click", Arc::new(Float32Array::from_iter_values((0..n).map(|i| i as f32 / n as f32)))),
        ("like", Arc::new(Float32Array::from_iter_values((0..n).map(|i| (i % 2) as f32)))),
    ];
    let batch = RecordBatch::try_from_iter(base.clone()).unwrap();
    let parquet = |batch: &RecordBatch, props: WriterProperties| -> Vec<u8> {
        let mut buf = Vec::new();
        let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props)).unwrap();
        w.write(batch).unwrap();
        w.close().unwrap();
        buf
    };
    let props = || WriterProperties::builder().set_max_row_group_row_count(Some(4));
    write(&dir, "kuairand_head_plain.parquet", &parquet(&batch, props().set_dictionary_enabled(false).build()));
    write(&dir, "kuairand_head_snappy.parquet", &parquet(&batch, props().set_compression(Compression::SNAPPY).build()));
    write(
        &dir,
        "kuairand_head_zstd_v2.parquet",
        &parquet(
            &batch,
            props()
                .set_compression(Compression::ZSTD(ZstdLevel::default()))
                .set_writer_version(WriterVersion::PARQUET_2_0)
                .set_statistics_enabled(EnabledStatistics::Page)
                .set_data_page_row_count_limit(2)
                .build(),
        ),
    );
    // Nulls, negative and out-of-range ids, a fixed-size list column, an LZ4 file in one group.
    let mut fixed = FixedSizeListBuilder::new(Int64Builder::new(), 2);
    for i in 0..4i64 {
        fixed.values().append_value(i);
        if i == 2 {
            fixed.values().append_null();
        } else {
            fixed.values().append_value(59 - i);
        }
        fixed.append(true);
    }
    let odd = RecordBatch::try_from_iter(vec![
        ("tab", Arc::new(Int64Array::from(vec![Some(0), None, Some(2), Some(1)])) as ArrayRef),
        ("user_id", Arc::new(Int64Array::from(vec![1, -1, 100, 99]))),
        ("video_id", Arc::new(Int64Array::from(vec![i64::MIN, -1, 0, i64::MAX]))),
        ("tag_ids", Arc::new(fixed.finish())),
        ("recent_tag_ids", Arc::new({
            let mut b = ListBuilder::new(Int64Builder::new());
            for len in [0usize, 6, 7, 1] {
                b.values().append_slice(&vec![3; len]);
                b.append(len != 0);
            }
            b.finish()
        })),
        ("log_duration", Arc::new(Float32Array::from(vec![f32::NAN, 1.0, f32::INFINITY, -0.0]))),
    ])
    .unwrap();
    write(&dir, "odd_values_lz4.parquet", &parquet(&odd, WriterProperties::builder().set_compression(Compression::LZ4_RAW).build()));

    check(&out, &spec);
}

/// Each seed is valid for its reader (so that fuzzing starts deep inside the parsers); the
/// files meant to hold bad rows read to the end with a rejects file.
fn check(out: &Path, spec: &ModelSpec) {
    // grpc_request: ModelInferRequest messages for random batches, typed and raw contents.
    let dir = out.join("grpc_request");
    for (n, seed) in [(0usize, 0u64), (1, 1), (5, 2)] {
        let batch = pepnet_core::synth::random_batch(&spec, n, seed);
        for raw in [false, true] {
            let request = pepnet_serve::grpc::request(&spec, "m", &batch, Some("s"), raw);
            let kind = if raw { "raw" } else { "typed" };
            write(&dir, &format!("{n}_rows_{kind}.pb"), &prost::Message::encode_to_vec(&request));
        }
    }

    let files = |t: &str| {
        let written = WRITTEN.lock().unwrap();
        let mut v: Vec<PathBuf> =
            written.iter().filter(|p| p.starts_with(out.join(t))).cloned().collect();
        v.sort();
        v
    };
    for p in files("model_json") {
        ModelSpec::load(&p).unwrap_or_else(|e| panic!("{e}"));
    }
    for p in files("weights_safetensors") {
        pepnet_core::Weights::load(&p, spec).unwrap_or_else(|e| panic!("{e}"));
    }
    let tmp = std::env::temp_dir().join(format!("pepnet-seedgen-check-{}", std::process::id()));
    fs::create_dir_all(&tmp).unwrap();
    for p in files("optimizer_state") {
        fs::copy(&p, tmp.join(OPTIMIZER_FILE)).unwrap();
        OptimizerState::load(&tmp, spec).unwrap_or_else(|e| panic!("{e}")).unwrap();
    }
    for p in files("grpc_request") {
        let bytes = fs::read(&p).unwrap();
        let message: pepnet_serve::proto::ModelInferRequest =
            prost::Message::decode(bytes.as_slice()).unwrap();
        pepnet_serve::grpc::decode(&message, &spec).unwrap_or_else(|e| panic!("{e}"));
    }
    for p in files("rows_safetensors") {
        pepnet_core::store::read_rows_file(&p, spec).unwrap_or_else(|e| panic!("{e}"));
    }
    for p in files("csv_input").into_iter().chain(files("parquet_input")) {
        let rejects = pepnet_io::Rejects::create(&tmp.join("rejects.csv")).unwrap();
        let reader = pepnet_io::InputReader::open(&p, spec, &[], 4, Some(rejects)).unwrap();
        let mut rows = 0;
        for b in reader {
            rows += b.unwrap_or_else(|e| panic!("{e}")).batch.len();
        }
        println!("{}: {rows} rows read", p.display());
    }
    fs::remove_dir_all(&tmp).unwrap();
}
