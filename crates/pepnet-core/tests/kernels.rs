//! Each WGSL kernel on its own, against its f64 reference (`pepnet_core::gpu::<kernel>::reference`), on
//! random inputs and awkward shapes (1, primes, non-multiples of the 64×64×16 tiles). The
//! activation buffer starts filled with random values, so an output the kernel forgot to write (or
//! wrote where it should not) shows up as a mismatch.
//!
//! Tolerance: |gpu − reference| ≤ 1e-5 · (1 + |reference|), with operands scaled so that every
//! output is of order one.

mod common;

use common::{assert_close_tol, gpu, random_spec, random_vec, rng, run, run_on, width, Rng};
use pepnet_core::cache::table::{tag, HostTable};
use pepnet_core::gpu::act::ActStorage;
use pepnet_core::gpu::gather::layout::GatherLayout;
use pepnet_core::gpu::gather::reference as gather_ref;
use pepnet_core::gpu::gather::{self, MAX_PAGES};
use pepnet_core::gpu::linear::reference as linear_ref;
use pepnet_core::gpu::linear::{
    self, lay_out, pack_half, pack_layer, ActBinding, Activation, LinearProblem, Precision,
    SpanParams, Variant, View,
};
use pepnet_core::gpu::mmoe_mix::reference as mmoe_mix_ref;
use pepnet_core::gpu::optimizer::reference as optimizer_ref;
use pepnet_core::gpu::optimizer::{AdaGradOptions, AdaGradParams, AdamOptions, AdamParams};
use pepnet_core::gpu::resolve::reference as resolve_ref;
use pepnet_core::gpu::resolve::{key_gpu, ResolveParams, MISS, UNKNOWN};
use pepnet_core::gpu::scatter::reference as scatter_ref;
use pepnet_core::gpu::scatter::ScatterParams;
use pepnet_core::Weights;
use rand::RngExt;

#[test]
fn linear_matches_reference_on_random_groups() {
    let ctx = gpu();
    for seed in 0..40u64 {
        let mut r = rng(seed);
        let rows = [1, 7, 64, 65, 130, 257][seed as usize % 6];
        let n_problems = r.random_range(1..=5);
        // Lay each problem's input, gate, multiplier and output out in columns of one row.
        let mut width_used = 0u32;
        let mut alloc = |w: u32| {
            let c = width_used;
            width_used += w + 3; // a gap, so neighbours' overreads would show
            c
        };
        let mut shapes = Vec::new();
        for _ in 0..n_problems {
            let (n, k) = (width(&mut r, 150) as u32, width(&mut r, 150) as u32);
            let gated = r.random_range(0..2) == 0;
            let multiplied = r.random_range(0..2) == 0;
            let kept = r.random_range(0..2) == 0;
            // Probabilities: written to the f32 scores buffer (same layout) instead.
            let f32_out = r.random_range(0..4) == 0;
            let cols = (
                alloc(k),
                gated.then(|| alloc(k)),
                multiplied.then(|| alloc(n)),
                alloc(n),
                kept.then(|| alloc(n)),
            );
            shapes.push((n, k, f32_out, cols));
        }
        let stride = width_used + r.random_range(0..5);
        let mut weights = Vec::new();
        let problems: Vec<LinearProblem> = shapes
            .iter()
            .map(|&(n, k, f32_out, (a, g, m, y, keep))| {
                let w = random_vec(&mut r, (n * k) as usize, 1.0 / (k as f32).sqrt());
                let b = random_vec(&mut r, n as usize, 0.5);
                let (w_offset, bias_offset) = pack_layer(&mut weights, &w, &b, k);
                let at = |c: u32| View { offset: c, stride };
                LinearProblem {
                    grad_k: k,
                    a: at(a),
                    gate: g.map(at),
                    multiplier: m.map(at),
                    keep: keep.map(at),
                    y: at(y),
                    w_offset,
                    bias_offset,
                    n,
                    k,
                    activation: [
                        Activation::None,
                        Activation::Relu,
                        Activation::Gate,
                        Activation::Sigmoid,
                    ][r.random_range(0..4)],
                    gamma: r.random_range(0.5..3.0),
                    f32_out,
                }
            })
            .collect();
        let len = rows * stride as usize;
        let initial = random_vec(&mut r, len, 1.0);
        let (table, tiles) = lay_out(&problems);
        let span = ctx.uniform_buffer("span", &SpanParams::new(0, table.len()));
        let batch = ctx.uniform_buffer("batch", &common::batch_params(rows));
        let problem_buf = ctx.storage_buffer("problems", &table);
        let weight_buf = ctx.storage_buffer("weights", &weights);
        let half_buf = ctx.storage_buffer("weights f16", &pack_half(&weights));
        let initial_scores = random_vec(&mut r, len, 1.0);
        let scores = ctx.storage_buffer("scores", &initial_scores);
        // Over f32 storage every variant; over f16 storage (the activations of f16 scoring)
        // the f16 ones.
        for storage in common::act_storages(&ctx) {
            let initial = common::stored(storage, &initial);
            let act = common::act_buffer(&ctx, storage, &initial);
            let binding = ActBinding {
                buffer: &act,
                storage,
                scores: Some(&scores),
            };
            let bg = ctx.linear().bind_group(
                &ctx.device,
                linear::Bindings {
                    span: &span,
                    batch: &batch,
                    problems: &problem_buf,
                    weights: &weight_buf,
                    act: binding,
                    weights_half: Some(&half_buf),
                },
            );
            let reference = |precision| {
                let mut want: Vec<f64> = initial.iter().map(|&x| x as f64).collect();
                let mut want_scores: Vec<f64> = initial_scores.iter().map(|&x| x as f64).collect();
                linear_ref::linear_group_at(
                    (precision, storage),
                    &problems,
                    rows,
                    &weights,
                    (&mut want, &mut want_scores),
                );
                (want, want_scores)
            };
            let (want_f32, want_f16) = (reference(Precision::F32), reference(Precision::F16));
            // Every variant the device has, whatever the size: each must be right on every shape.
            let variants = Variant::ALL
                .into_iter()
                .filter(|&v| ctx.linear().has(v))
                .filter(|v| storage == ActStorage::F32 || v.precision() == Precision::F16);
            for variant in variants {
                ctx.queue
                    .write_buffer(&act, 0, &common::act_bytes(storage, &initial));
                ctx.queue
                    .write_buffer(&scores, 0, bytemuck::cast_slice(&initial_scores));
                let got = run_on(&ctx, &act, storage, len, |pass| {
                    ctx.linear()
                        .dispatch_variant(pass, &bg, tiles, rows as u32, (variant, storage))
                });
                let got_scores = ctx.read_buffer(&scores, len).unwrap();
                let (want, want_scores) = match variant.precision() {
                    Precision::F32 => &want_f32,
                    Precision::F16 => &want_f16,
                };
                let what = format!(
                    "linear {variant:?} over {storage:?}, seed {seed}, rows {rows}, {problems:?}"
                );
                let (tolerance, scores_tolerance) = match (variant.precision(), storage) {
                    (Precision::F32, _) => (1e-5, 1e-5),
                    (Precision::F16, ActStorage::F32) => (HALF_TOLERANCE, HALF_TOLERANCE),
                    (Precision::F16, ActStorage::F16) => (STORED_HALF_TOLERANCE, HALF_TOLERANCE),
                };
                assert_close_tol(&got, want, tolerance, &what);
                assert_close_tol(&got_scores, want_scores, scores_tolerance, &what);
            }
        }
    }
    // Which variants ran: the f16 SIMT ones everywhere, tensor cores where the device has them
    // (PEPNET_REQUIRE_COOP makes their absence a failure, as in CI's Mesa 26 run).
    assert!(ctx.linear().has(Variant::HalfBatch) && ctx.linear().has(Variant::HalfSmall));
    if common::coop_required() {
        assert!(
            ctx.linear().has(Variant::Coop),
            "no cooperative-matrix kernel on this device"
        );
    }
}

/// f16 kernels against the reference that rounds their inputs alike: the products of f16
/// values are exact in f32, so only the order and rounding of the f32 sums differ; tensor
/// cores may round their sums less finely than IEEE f32, hence 4× the f32 tolerance.
const HALF_TOLERANCE: f64 = 4e-5;

/// Over f16 storage each output is rounded to f16 as it is stored (to 2^-11 relative, ties to
/// even), by the GPU from its f32 sum and here from the exact one: where the two sums straddle
/// a rounding boundary they land one f16 step (2^-10 relative) apart.
const STORED_HALF_TOLERANCE: f64 = 1.0e-3;

#[test]
fn gather_matches_reference_on_random_specs_and_pages() {
    let ctx = gpu();
    for seed in 0..24u64 {
        let mut r = rng(100 + seed);
        let spec = random_spec(&mut r, seed as u32 % 8);
        let d = spec.d();
        let weights = Weights::init(&spec, seed);
        let rows = [1, 7, 256, 1000][seed as usize % 4];
        // Each feature gets 1–3 destinations, each its own d-wide block of a sample's row.
        let mut used = 0u32;
        let mut destinations = Vec::new();
        for _ in &spec.features {
            let n = r.random_range(0..=3);
            destinations.push(
                (0..n)
                    .map(|_| {
                        used += d as u32 + r.random_range(0..3);
                        used - d as u32
                    })
                    .collect::<Vec<u32>>(),
            );
        }
        let stride = used + 1;
        let destinations: Vec<Vec<View>> = destinations
            .into_iter()
            .map(|cols| {
                cols.into_iter()
                    .map(|offset| View { offset, stride })
                    .collect()
            })
            .collect();
        let total_rows: u64 = spec.features.iter().map(|f| f.rows() as u64).sum();
        let pages_wanted = r.random_range(1..=MAX_PAGES as u64);
        let batch = common::random_batch(&mut r, &spec, rows);
        let len = rows * stride as usize;
        let initial = random_vec(&mut r, len, 1.0);
        // Rows stored as f32, and as f16 (half the bytes: a page holds twice the rows); over
        // f32 activations and f16 ones.
        let cases = common::act_storages(&ctx)
            .into_iter()
            .flat_map(|s| [(Precision::F32, s), (Precision::F16, s)]);
        for (precision, storage) in cases {
            let initial = common::stored(storage, &initial);
            let row_bytes = 4 * pepnet_core::gpu::gather::row_words(d, precision) as u64;
            let page_bytes = total_rows.div_ceil(pages_wanted) * row_bytes;
            let layout =
                GatherLayout::with_precision(&spec, &destinations, page_bytes, 0, precision)
                    .unwrap();
            let pages: Vec<Vec<u32>> = (0..layout.n_pages)
                .map(|p| layout.page_words(&spec, &weights, p))
                .collect();
            let (mut ids, mut dense) = (Vec::new(), Vec::new());
            layout.encode(&batch, 0..rows, &mut ids, &mut dense, &mut Vec::new());
            let params = ctx.uniform_buffer("params", &layout.params);
            let batch_buf = ctx.uniform_buffer("batch", &common::batch_params(rows));
            let features = ctx.storage_buffer("features", &layout.features);
            let ids_buf = ctx.storage_buffer("ids", &ids);
            let dense_buf = ctx.storage_buffer("dense", &dense);
            let act = common::act_buffer(&ctx, storage, &initial);
            let page_bufs: Vec<wgpu::Buffer> = pages
                .iter()
                .map(|p| ctx.storage_buffer("page", p))
                .collect();
            let page_refs: [&wgpu::Buffer; MAX_PAGES] =
                std::array::from_fn(|p| &page_bufs[p.min(page_bufs.len() - 1)]);
            let bg = ctx.gather().bind_group(
                &ctx.device,
                gather::Bindings {
                    params: &params,
                    batch: &batch_buf,
                    features: &features,
                    ids: &ids_buf,
                    dense: &dense_buf,
                    act: (&act, storage),
                    pages: page_refs,
                },
            );
            let got = run_on(&ctx, &act, storage, len, |pass| {
                ctx.gather()
                    .dispatch(pass, &bg, &layout.params, rows as u32, storage)
            });

            // The reference reads the model's f32 rows, rounded to f16 where stored so.
            let resident: Vec<f32> = (0..layout.n_pages)
                .flat_map(|p| layout.page(&spec, &weights, p))
                .collect();
            let table = |row: u32, k: usize| {
                let x = resident[row as usize * d + k] as f64;
                match precision {
                    Precision::F32 => x,
                    Precision::F16 => pepnet_core::reference::round_f16(x),
                }
            };
            let mut want: Vec<f64> = initial.iter().map(|&x| x as f64).collect();
            gather_ref::gather(&layout, &table, &ids, &dense, rows, &mut want);
            // Over f16 storage each gathered value is rounded as it is stored: the sums of a
            // multi-hot feature may straddle a rounding boundary (one f16 step apart).
            let tolerance = match storage {
                ActStorage::F32 => 1e-5,
                ActStorage::F16 => {
                    for x in &mut want {
                        *x = pepnet_core::reference::round_f16(*x);
                    }
                    STORED_HALF_TOLERANCE
                }
            };
            assert_close_tol(
                &got,
                &want,
                tolerance,
                &format!(
                    "gather seed {seed}, rows {precision:?}, act {storage:?}, {} pages",
                    layout.n_pages
                ),
            );
        }
    }
}

#[test]
fn mmoe_mix_matches_reference() {
    let ctx = gpu();
    for seed in 0..16u64 {
        let mut r = rng(200 + seed);
        let (params, stride) = common::random_mix(&mut r);
        let (k, t, w) = (params.experts, params.tasks, params.width);
        let rows = [1, 7, 256, 601][seed as usize % 4];
        let len = rows * stride as usize;
        let initial = random_vec(&mut r, len, 3.0);
        let params_buf = ctx.uniform_buffer("params", &params);
        let batch = ctx.uniform_buffer("batch", &common::batch_params(rows));
        for storage in common::act_storages(&ctx) {
            let initial = common::stored(storage, &initial);
            let act = common::act_buffer(&ctx, storage, &initial);
            let bg = ctx
                .mmoe_mix()
                .bind_group(&ctx.device, &params_buf, &batch, (&act, storage));
            let got = run_on(&ctx, &act, storage, len, |pass| {
                ctx.mmoe_mix()
                    .dispatch(pass, &bg, &params, rows as u32, storage)
            });
            let mut want: Vec<f64> = initial.iter().map(|&x| x as f64).collect();
            let (stored, tolerance): (&dyn Fn(f64) -> f64, f64) = match storage {
                ActStorage::F32 => (&|x| x, 1e-5),
                ActStorage::F16 => (&pepnet_core::reference::round_f16, STORED_HALF_TOLERANCE),
            };
            mmoe_mix_ref::mmoe_mix_stored(&params, rows, &mut want, stored);
            assert_close_tol(
                &got,
                &want,
                tolerance,
                &format!("mix seed {seed}, K {k}, T {t}, width {w}, act {storage:?}"),
            );
        }
    }
}

/// The cache lookup on tables the host mirror built through inserts and removals (so probe
/// chains run over tombstones), with ids that differ only in their high word or feature, some
/// cached and some not; checked against a search of every entry.
#[test]
fn resolve_matches_reference_on_random_tables() {
    let ctx = gpu();
    for seed in 0..12u64 {
        let mut r = rng(seed);
        let slots = [1, 3, 17, 61, 200, 1000][seed as usize % 6];
        let n_features = r.random_range(1..=4usize);
        let mut table = HostTable::new(slots);
        let mut cached = Vec::new();
        let mut next_slot = 0u32;
        let random_key = |r: &mut Rng| {
            let f = r.random_range(0..n_features);
            let id = (r.random_range(0..8u64) << 32) | r.random_range(0..u32::MAX as u64);
            (f, id)
        };
        for _ in 0..3 * slots {
            if cached.len() < slots && r.random_range(0..3) > 0 {
                let (f, id) = random_key(&mut r);
                if table.get(tag(f), id).is_none() {
                    // A fifth are ids cached as unknown to the store.
                    let slot = if r.random_range(0..5) == 0 {
                        UNKNOWN
                    } else {
                        next_slot += 1;
                        next_slot - 1
                    };
                    table.insert(tag(f), id, slot);
                    cached.push((f, id));
                }
            } else if !cached.is_empty() {
                let (f, id) = cached.swap_remove(r.random_range(0..cached.len()));
                table.remove(tag(f), id);
            }
        }
        let n_keys = [1, 31, 256, 1001][seed as usize % 4];
        let keys: Vec<[u32; 4]> = (0..n_keys)
            .map(|i| {
                let (f, id) = if !cached.is_empty() && r.random_range(0..2) == 0 {
                    cached[r.random_range(0..cached.len())]
                } else {
                    random_key(&mut r)
                };
                key_gpu(f, id, (2 * i + 1) as u32)
            })
            .collect();
        let defaults: Vec<u32> = (0..n_features).map(|_| r.random_range(0..1000)).collect();
        let cache_base = r.random_range(0..5000);
        let initial: Vec<u32> = (0..2 * n_keys + 1).map(|_| r.random_range(0..99)).collect();
        let params = ResolveParams {
            n_keys: n_keys as u32,
            mask: table.mask(),
            cache_base,
            _pad: 0,
        };
        let buffers = [
            ctx.uniform_buffer("params", &params),
            ctx.storage_buffer("keys", &keys),
            ctx.storage_buffer("table", table.entries()),
            ctx.storage_buffer("defaults", &defaults),
            ctx.storage_buffer("ids", &initial),
            ctx.storage_buffer("resolved", &vec![7u32; n_keys]),
        ];
        let bg = ctx
            .resolve()
            .bind_group(&ctx.device, std::array::from_fn(|i| &buffers[i]));
        run(&ctx, &buffers[4], 1, |pass| {
            ctx.resolve().dispatch(pass, &bg, n_keys as u32)
        });
        let as_u32 = |b: &wgpu::Buffer, n: usize| -> Vec<u32> {
            bytemuck::cast_slice(&ctx.read_buffer(b, n).unwrap()).to_vec()
        };
        let mut want_ids = initial.clone();
        let want =
            resolve_ref::resolve(&keys, table.entries(), &defaults, cache_base, &mut want_ids);
        assert_eq!(
            as_u32(&buffers[5], n_keys),
            want,
            "seed {seed}: resolved slots"
        );
        assert_eq!(
            as_u32(&buffers[4], initial.len()),
            want_ids,
            "seed {seed}: rows"
        );
        if n_keys > 1 && !cached.is_empty() {
            assert!(want.contains(&MISS) && want.iter().any(|&s| s != MISS));
        }
        if n_keys > 200 && slots > 50 {
            assert!(
                want.contains(&UNKNOWN),
                "seed {seed}: some ids are cached as unknown"
            );
        }
    }
}

#[test]
fn scatter_matches_reference() {
    let ctx = gpu();
    for seed in 0..8u64 {
        let mut r = rng(seed);
        let width = [1, 4, 13, 64][seed as usize % 4];
        let records = [1, 7, 300][seed as usize % 3];
        let slots = records + r.random_range(0..50);
        let mut targets: Vec<u32> = (0..slots as u32).collect();
        for i in (1..targets.len()).rev() {
            targets.swap(i, r.random_range(0..=i));
        }
        let index = &targets[..records];
        let src: Vec<u32> = (0..records * width).map(|_| r.random()).collect();
        let initial: Vec<u32> = (0..slots * width).map(|_| r.random()).collect();
        let params = ScatterParams {
            count: records as u32,
            width: width as u32,
            _pad: [0; 2],
        };
        let params_buf = ctx.uniform_buffer("params", &params);
        let (index_buf, src_buf) = (
            ctx.storage_buffer("index", index),
            ctx.storage_buffer("src", &src),
        );
        let dst = ctx.storage_buffer("dst", &initial);
        let bg = ctx
            .scatter()
            .bind_group(&ctx.device, &params_buf, &index_buf, &src_buf, &dst);
        let got = run(&ctx, &dst, initial.len(), |pass| {
            ctx.scatter().dispatch(pass, &bg, &params)
        });
        let mut want = initial.clone();
        scatter_ref::scatter(index, &src, width, &mut want);
        let got: &[u32] = bytemuck::cast_slice(&got);
        assert_eq!(got, want.as_slice(), "seed {seed}, width {width}");
    }
}

/// Optimizer states: operands are of order one or less and updates may cancel (m ≈ 0), so the
/// tolerance is absolute (1e-6) plus relative (1e-5).
fn assert_close_f64(got: &[f32], want: &[f64], what: &str) {
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= 1e-6 + 1e-5 * w.abs(),
            "{what}: element {i}: gpu {g}, reference {w}"
        );
    }
}

#[test]
fn adam_matches_reference() {
    let ctx = gpu();
    for seed in 0..6u64 {
        let mut r = rng(seed);
        let n = [1, 7, 256, 1000, 4099, 70_001][seed as usize];
        let config = AdamOptions {
            lr: r.random_range(1e-4..1e-2),
            ..Default::default()
        };
        let step = r.random_range(1..200);
        let grad = random_vec(&mut r, n, 0.5);
        let param = random_vec(&mut r, n, 1.0);
        let m = random_vec(&mut r, n, 0.1);
        let v: Vec<f32> = (0..n).map(|_| r.random_range(0.0..0.05)).collect();
        let params = AdamParams::new(&config, n as u32, step);
        let bufs = [
            ctx.uniform_buffer("params", &params),
            ctx.storage_buffer("grad", &grad),
            ctx.storage_buffer("param", &param),
            ctx.storage_buffer("m", &m),
            ctx.storage_buffer("v", &v),
        ];
        let bg = ctx
            .optimizer()
            .adam_bind_group(&ctx.device, std::array::from_fn(|i| &bufs[i]));
        run(&ctx, &bufs[2], 1, |pass| {
            ctx.optimizer().adam(pass, &bg, n as u32)
        });
        let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        let (mut p, mut mm, mut vv) = (f64s(&param), f64s(&m), f64s(&v));
        optimizer_ref::adam(&config, step, &grad, &mut p, &mut mm, &mut vv);
        let what = format!("adam seed {seed}, n {n}, step {step}");
        assert_close_f64(
            &ctx.read_buffer(&bufs[2], n).unwrap(),
            &p,
            &format!("{what}: param"),
        );
        assert_close_f64(
            &ctx.read_buffer(&bufs[3], n).unwrap(),
            &mm,
            &format!("{what}: m"),
        );
        assert_close_f64(
            &ctx.read_buffer(&bufs[4], n).unwrap(),
            &vv,
            &format!("{what}: v"),
        );
    }
}

#[test]
fn adagrad_updates_only_the_touched_rows_as_the_reference_does() {
    let ctx = gpu();
    for seed in 0..6u64 {
        let mut r = rng(seed);
        let d = [1, 3, 16, 40, 61, 64][seed as usize];
        let rows = r.random_range(1..500usize);
        let mut order: Vec<u32> = (0..rows as u32).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, r.random_range(0..=i));
        }
        let touched = &order[..r.random_range(1..=rows)];
        let config = AdaGradOptions::default();
        let row_grad = random_vec(&mut r, touched.len() * d, 0.5);
        let table = random_vec(&mut r, rows * d, 1.0);
        let sum_sq: Vec<f32> = (0..rows * d).map(|_| r.random_range(0.0..0.3)).collect();
        let params = AdaGradParams {
            rows: touched.len() as u32,
            d: d as u32,
            lr: config.lr as f32,
            eps: config.eps as f32,
        };
        let bufs = [
            ctx.uniform_buffer("params", &params),
            ctx.storage_buffer("touched", touched),
            ctx.storage_buffer("row grad", &row_grad),
            ctx.storage_buffer("table", &table),
            ctx.storage_buffer("sum_sq", &sum_sq),
        ];
        let bg = ctx
            .optimizer()
            .adagrad_bind_group(&ctx.device, std::array::from_fn(|i| &bufs[i]));
        run(&ctx, &bufs[3], 1, |pass| {
            ctx.optimizer().adagrad_rows(pass, &bg, &params)
        });
        let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        let (mut t, mut s) = (f64s(&table), f64s(&sum_sq));
        optimizer_ref::adagrad_rows(&config, d, touched, &row_grad, &mut t, &mut s);
        let what = format!(
            "adagrad seed {seed}, d {d}, {} of {rows} rows",
            touched.len()
        );
        let got = ctx.read_buffer(&bufs[3], rows * d).unwrap();
        assert_close_f64(&got, &t, &format!("{what}: table"));
        assert_close_f64(
            &ctx.read_buffer(&bufs[4], rows * d).unwrap(),
            &s,
            &format!("{what}: sums"),
        );
        // Rows not touched are bit for bit unchanged.
        for row in order[touched.len()..].iter().map(|&x| x as usize) {
            assert_eq!(
                got[row * d..(row + 1) * d],
                table[row * d..(row + 1) * d],
                "{what}"
            );
        }
    }
}

/// The f16 copy of the weights (`to_half`, whose rounding `round_half` every f16 kernel shares)
/// is bit for bit what the host's `pack_half` (the `half` crate, ties to even) makes: on random
/// values of every magnitude, exact ties, f16 subnormals, the largest finite f16 and overflow.
#[test]
fn to_half_rounds_as_the_host_does() {
    let ctx = gpu();
    for seed in 0..4u64 {
        let mut r = rng(seed);
        let n = [4, 12, 1028, 70_000][seed as usize];
        let mut values: Vec<f32> = (0..n)
            .map(|i| match i % 6 {
                // Random magnitudes from 2^-30 to 2^17, both signs.
                0 | 1 => {
                    let sign = if r.random_range(0..2) == 0 { 1.0 } else { -1.0 };
                    sign * 2f32.powf(r.random_range(-30.0..17.0))
                }
                // A tie: halfway between two f16 neighbours (a random f16 plus half an ulp).
                2 => {
                    let h = half::f16::from_bits(r.random_range(0x0001u16..0x7bff));
                    let next = half::f16::from_bits(h.to_bits() + 1);
                    (h.to_f32() + next.to_f32()) / 2.0
                }
                3 => r.random_range(-1e-5f32..1e-5), // f16 subnormals
                4 => [65504.0, 65519.0, 65520.0, -70000.0, 6.1e-5, 0.0][r.random_range(0..6)],
                _ => r.random_range(-1.0f32..1.0),
            })
            .collect();
        values.resize(values.len().next_multiple_of(4), 0.5);
        let count = values.len() as u32;
        let params = AdamParams::new(&AdamOptions::default(), count, 1);
        let params_buf = ctx.uniform_buffer("params", &params);
        let weights = ctx.storage_buffer("weights", &values);
        let initial: Vec<u32> = (0..count / 2).map(|_| r.random::<u32>()).collect();
        let half_buf = ctx.storage_buffer("weights f16", &initial);
        let bg = ctx
            .optimizer()
            .to_half_bind_group(&ctx.device, &params_buf, &weights, &half_buf);
        let got = run(&ctx, &half_buf, initial.len(), |pass| {
            ctx.optimizer().to_half(pass, &bg, count)
        });
        let got: &[u32] = bytemuck::cast_slice(&got);
        let want = pack_half(&values);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g,
                w,
                "seed {seed}: pair {i} ({}, {}): gpu {g:08x}, host {w:08x}",
                values[2 * i],
                values[2 * i + 1]
            );
        }
    }
}
