//! Criterion benchmarks of the scoring paths on the built-in example model: the GPU engine end
//! to end (upload, kernels, readback) at several batch sizes, the f64 reference, and the CSV
//! reader. On lavapipe these measure the CPU standing in for a GPU; on real hardware they
//! measure the engine.
//!
//!     cargo bench --bench forward

use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pepnet::io::InputReader;
use pepnet::{reference, synth, Batch, Engine, EngineOptions, GpuContext, Model};

fn example() -> Model {
    Model::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kuairand"))
        .expect("example model")
}

/// Fresh random batches, so that no run scores one cached input.
fn batches(model: &Model, n: usize, count: usize) -> Vec<Batch> {
    (0..count)
        .map(|i| synth::random_batch(&model.spec, n, (n * 1000 + i) as u64))
        .collect()
}

fn engine(c: &mut Criterion) {
    let model = example();
    let ctx = GpuContext::new(None).expect("a GPU adapter");
    let mut group = c.benchmark_group(format!("engine/{}", ctx.info.name));
    group.sample_size(10);
    for n in [1usize, 256, 4096] {
        let engine = Engine::new(
            ctx.clone(),
            &model,
            &EngineOptions {
                max_batch: n,
                ..Default::default()
            },
        )
        .unwrap();
        let inputs = batches(&model, n, 8);
        let mut i = 0;
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % inputs.len();
                engine.score(&inputs[i]).unwrap()
            })
        });
    }
    group.finish();
}

fn cpu_paths(c: &mut Criterion) {
    let model = example();
    let mut group = c.benchmark_group("cpu");
    group.sample_size(10);
    let inputs = batches(&model, 256, 1);
    group.throughput(Throughput::Elements(256));
    group.bench_function("reference/256", |b| {
        b.iter(|| reference::forward(&model, &inputs[0]).unwrap())
    });
    let csv = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kuairand/input.csv");
    group.bench_function("csv_read/256", |b| {
        b.iter(|| {
            InputReader::open(&csv, &model.spec, &[], 4096, None)
                .unwrap()
                .map(|b| b.unwrap().batch.len())
                .sum::<usize>()
        })
    });
    group.finish();
}

criterion_group!(benches, engine, cpu_paths);
criterion_main!(benches);
