//! Criterion benchmarks of each kernel alone, on the paper preset's real shapes, and of the
//! host paths that feed them (Parquet reading, id encoding). Throughput is in FLOPs for the
//! matrix kernels (criterion prints it as "elem/s") and in samples for the rest.
//!
//!     cargo bench --bench kernels

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pepnet::gpu::act::ActStorage;
use pepnet::gpu::gather::layout::GatherLayout;
use pepnet::gpu::gather::{self, MAX_PAGES};
use pepnet::gpu::linear::{self, lay_out, ActBinding, Precision, SpanParams};
use pepnet::gpu::{BatchParams, GpuContext};
use pepnet::io::InputReader;
use pepnet::plan::{PackedWeights, Plan, Step};
use pepnet::tools::bench;
use pepnet::{synth, Model};

const ROWS: u32 = 256;

struct Fixture {
    ctx: Arc<GpuContext>,
    model: Model,
    plan: Plan,
    packed: PackedWeights,
}

fn fixture() -> Fixture {
    let ctx = GpuContext::new(None).expect("a GPU adapter");
    let model = Model::init(bench::preset("paper").unwrap(), 1).unwrap();
    let packed = PackedWeights::new(&model.spec, &model.weights);
    let plan = Plan::new(&model.spec, &packed.layout, ROWS, ActStorage::F32);
    Fixture {
        ctx,
        model,
        plan,
        packed,
    }
}

/// Runs `record` once on the GPU and waits for it.
fn run(ctx: &GpuContext, record: impl FnOnce(&mut wgpu::ComputePass)) {
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        record(&mut pass);
    }
    ctx.queue.submit([encoder.finish()]);
    ctx.device
        .poll(wgpu::PollType::wait_indefinitely())
        .unwrap();
}

fn kernels(c: &mut Criterion) {
    let f = fixture();
    let ctx = &f.ctx;
    let mut group = c.benchmark_group(format!("kernels/{}", ctx.info.name));
    group.sample_size(10);
    let act_len = ROWS as usize * (f.plan.row_width as usize + f.model.spec.n_tasks());
    let act_init: Vec<f32> = (0..act_len)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let act = ctx.storage_buffer("act", &act_init);
    let batch = ctx.uniform_buffer(
        "batch",
        &BatchParams {
            rows: ROWS,
            _pad: [0; 3],
        },
    );
    let weights = ctx.storage_buffer("weights", &f.packed.data);

    for step in &f.plan.steps {
        let Step::Linear { label, problems } = step else {
            continue;
        };
        if !(label == "ppnet.fc2" || label == "towers.0") {
            continue;
        }
        let (table, tiles) = lay_out(problems);
        let span = ctx.uniform_buffer("span", &SpanParams::new(0, table.len()));
        let problems_buf = ctx.storage_buffer("problems", &table);
        let bg = ctx.linear().bind_group(
            &ctx.device,
            linear::Bindings {
                span: &span,
                batch: &batch,
                problems: &problems_buf,
                weights: &weights,
                act: ActBinding {
                    buffer: &act,
                    storage: ActStorage::F32,
                    scores: None,
                },
                weights_half: None,
            },
        );
        group.throughput(Throughput::Elements(step.flops_per_sample() * ROWS as u64));
        group.bench_function(format!("linear/{label}/{ROWS}"), |b| {
            b.iter(|| {
                run(ctx, |pass| {
                    ctx.linear().dispatch(
                        pass,
                        &bg,
                        tiles,
                        ROWS,
                        (Precision::F32, ActStorage::F32),
                    );
                })
            })
        });
    }

    let layout = GatherLayout::new(
        &f.model.spec,
        &f.plan.destinations,
        ctx.max_binding_bytes(),
        0,
    )
    .unwrap();
    let pages: Vec<wgpu::Buffer> = (0..layout.n_pages)
        .map(|p| ctx.storage_buffer("page", &layout.page(&f.model.spec, &f.model.weights, p)))
        .collect();
    let page_refs: [&wgpu::Buffer; MAX_PAGES] =
        std::array::from_fn(|p| &pages[p.min(pages.len() - 1)]);
    let input = synth::random_batch(&f.model.spec, ROWS as usize, 3);
    let (mut ids, mut dense) = (Vec::new(), Vec::new());
    layout.encode(
        &input,
        0..ROWS as usize,
        &mut ids,
        &mut dense,
        &mut Vec::new(),
    );
    let params = ctx.uniform_buffer("params", &layout.params);
    let features = ctx.storage_buffer("features", &layout.features);
    let (ids_buf, dense_buf) = (
        ctx.storage_buffer("ids", &ids),
        ctx.storage_buffer("dense", &dense),
    );
    let bg = ctx.gather().bind_group(
        &ctx.device,
        gather::Bindings {
            params: &params,
            batch: &batch,
            features: &features,
            ids: &ids_buf,
            dense: &dense_buf,
            act: (&act, ActStorage::F32),
            pages: page_refs,
        },
    );
    group.throughput(Throughput::Elements(ROWS as u64));
    group.bench_function(format!("gather/{ROWS}"), |b| {
        b.iter(|| {
            run(ctx, |pass| {
                ctx.gather()
                    .dispatch(pass, &bg, &layout.params, ROWS, ActStorage::F32)
            })
        })
    });
    group.finish();
}

fn host_paths(c: &mut Criterion) {
    let model = Model::init(bench::preset("paper").unwrap(), 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.parquet");
    let rows = 65536;
    synth::write_file(&model.spec, rows, 1, &path).unwrap();
    let mut group = c.benchmark_group("host");
    group.sample_size(10);
    group.throughput(Throughput::Elements(rows as u64));
    group.bench_function("parquet_read/65536", |b| {
        b.iter(|| {
            InputReader::open(&path, &model.spec, &[], 16384, None)
                .unwrap()
                .map(|b| b.unwrap().batch.len())
                .sum::<usize>()
        })
    });
    let packed = PackedWeights::new(&model.spec, &model.weights);
    let plan = Plan::new(&model.spec, &packed.layout, 16384, ActStorage::F32);
    let layout = GatherLayout::new(&model.spec, &plan.destinations, u64::MAX / 8, 0).unwrap();
    let batch = synth::random_batch(&model.spec, 16384, 2);
    let (mut ids, mut dense, mut keys) = (Vec::new(), Vec::new(), Vec::new());
    group.throughput(Throughput::Elements(16384));
    group.bench_function("encode_ids/16384", |b| {
        b.iter(|| layout.encode(&batch, 0..16384, &mut ids, &mut dense, &mut keys))
    });
    group.finish();
}

criterion_group!(benches, kernels, host_paths);
criterion_main!(benches);
