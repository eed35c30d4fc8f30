//! The protocol layer alone, without a GPU: what the server does per request besides scoring.
//! For requests of 1, 64 and 1 024 rows of the example model, each protocol's decode (bytes to
//! a batch the engine takes) and encode (scores to the answer's bytes), and the batcher's merge
//! of 8 such requests into one batch and split of the scores back. Throughput is in rows, so
//! criterion's "elem/s" is rows per second; the README's table turns it into ns per row.
//!
//!     cargo bench -p pepnet-serve --bench protocol

use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use prost::Message;

use pepnet_core::batcher::{merge, split};
use pepnet_core::spec::ModelSpec;
use pepnet_core::synth;
use pepnet_serve::grpc;
use pepnet_serve::oip::{self, InferRequest};
use pepnet_serve::proto::ModelInferRequest;

const ROWS: [usize; 3] = [1, 64, 1024];

fn spec() -> ModelSpec {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/kuairand/model.json");
    ModelSpec::load(&dir).expect("the example's spec")
}

/// Scores in (0, 1) for `n` rows, as the engine returns them.
fn scores(spec: &ModelSpec, n: usize) -> Vec<f32> {
    (0..n * spec.n_tasks())
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 + 0.0005)
        .collect()
}

fn decode(c: &mut Criterion) {
    let spec = spec();
    let mut group = c.benchmark_group("decode");
    for n in ROWS {
        let batch = synth::random_batch(&spec, n, n as u64);
        group.throughput(Throughput::Elements(n as u64));
        let json = serde_json::to_vec(&oip::request(&spec, &batch, None)).unwrap();
        group.bench_with_input(BenchmarkId::new("http_json", n), &json, |b, body| {
            b.iter(|| oip::decode_http(body, None, &spec).unwrap())
        });
        let (binary, header) = oip::binary_request(&spec, &batch, None);
        group.bench_with_input(BenchmarkId::new("http_binary", n), &binary, |b, body| {
            b.iter(|| oip::decode_http(body, Some(header), &spec).unwrap())
        });
        for (name, raw) in [("grpc_typed", false), ("grpc_raw", true)] {
            // As tonic hands the message over: one buffer, which raw contents are slices of.
            let bytes = bytes::Bytes::from(
                grpc::request(&spec, "pepnet", &batch, None, raw).encode_to_vec(),
            );
            group.bench_with_input(BenchmarkId::new(name, n), &bytes, |b, bytes| {
                b.iter(|| {
                    let message = ModelInferRequest::decode(bytes.clone()).unwrap();
                    grpc::decode(&message, &spec).unwrap()
                })
            });
        }
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let spec = spec();
    let mut group = c.benchmark_group("encode");
    for n in ROWS {
        let batch = synth::random_batch(&spec, n, n as u64);
        let scores = scores(&spec, n);
        group.throughput(Throughput::Elements(n as u64));
        let (body, header) = oip::binary_request(&spec, &batch, None);
        let binary = oip::decode_http(&body, Some(header), &spec).unwrap();
        let json = InferRequest {
            binary_outputs: vec![false; binary.outputs.len()],
            ..binary.clone()
        };
        group.bench_function(BenchmarkId::new("http_json", n), |b| {
            b.iter(|| serde_json::to_vec(&oip::response(&spec, "pepnet", "1", &json, &scores)))
        });
        group.bench_function(BenchmarkId::new("http_binary", n), |b| {
            b.iter(|| oip::binary_response(&spec, "pepnet", "1", &binary, &scores))
        });
        for (name, raw) in [("grpc_typed", false), ("grpc_raw", true)] {
            group.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter(|| {
                    grpc::response(&spec, "pepnet", "1", &binary, &scores, raw).encode_to_vec()
                })
            });
        }
    }
    group.finish();
}

/// Eight requests of n rows merged into one batch, and the scores split back.
fn merge_split(c: &mut Criterion) {
    let spec = spec();
    let t = spec.n_tasks();
    let mut group = c.benchmark_group("batcher_merge_split");
    for n in ROWS {
        let requests: Vec<_> = (0..8)
            .map(|i| synth::random_batch(&spec, n, (n * 8 + i) as u64))
            .collect();
        let rows = vec![n; 8];
        let scores = scores(&spec, 8 * n);
        group.throughput(Throughput::Elements(8 * n as u64));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_batched(
                || (requests.clone(), scores.clone()),
                |(requests, scores)| {
                    let merged = merge(requests);
                    (merged.len(), split(scores, &rows, t))
                },
                criterion::BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(1));
    targets = decode, encode, merge_split
}
criterion_main!(benches);
