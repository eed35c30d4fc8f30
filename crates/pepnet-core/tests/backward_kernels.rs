//! Each training kernel on its own against its f64 reference (`pepnet_core::gpu::<kernel>::reference`),
//! on random inputs and awkward shapes: the linear backward (input, gate, weight and bias
//! gradients), the MMoE mix's backward, the gather's backward (sparse row gradients) and the loss.
//! Gradient buffers start filled with random values, so a gradient the kernel forgot to write, or
//! wrote where it should not, shows up as a mismatch.
//!
//! Tolerance: |gpu − reference| ≤ 1e-5 · (1 + |reference|) (`common::assert_close`), with operands
//! scaled so that outputs are of order one.

mod common;

use std::collections::BTreeMap;

use common::{assert_close, gpu, random_batch, random_spec, random_vec, rng, width};
use pepnet_core::gpu::gather::backward::{feature_table, RowGradParams};
use pepnet_core::gpu::gather::layout::GatherLayout;
use pepnet_core::gpu::gather::reference as gather_ref;
use pepnet_core::gpu::gather::row_uses::RowUses;
use pepnet_core::gpu::linear::backward::{input_groups, InputBindings, WeightBindings};
use pepnet_core::gpu::linear::reference as linear_ref;
use pepnet_core::gpu::linear::{
    lay_out, pack_layer, weight_tiles, Activation, LinearProblem, View,
};
use pepnet_core::gpu::loss::reference as loss_ref;
use pepnet_core::gpu::loss::LossParams;
use pepnet_core::gpu::mmoe_mix::reference as mmoe_mix_ref;
use pepnet_core::spec::Pooling;
use rand::RngExt;

/// Groups of problems that share an input (1–3 each), some gated (each its own gate), some with
/// a multiplier (and the activation kept), some with a stop-gradient (grad_k < k), every
/// activation; widths up to 150 (several 64-column tiles).
#[test]
fn linear_backward_matches_reference_on_random_groups() {
    let mut coop_runs = 0;
    let ctx = gpu();
    for seed in 0..30u64 {
        let mut r = rng(3000 + seed);
        let rows = [1, 7, 64, 65, 130, 257][seed as usize % 6];
        let mut used = 0u32;
        let mut alloc = |w: u32| {
            used += w + 2; // a gap, so overreaches show
            used - w - 2
        };
        let mut shapes = Vec::new();
        for _ in 0..r.random_range(1..=3) {
            let k = width(&mut r, 150) as u32;
            let a = alloc(k);
            let count = r.random_range(1..=3);
            let gated = r.random_range(0..2) == 0;
            let grad_k = if !gated && r.random_range(0..2) == 0 {
                r.random_range(1..=k)
            } else {
                k
            };
            for _ in 0..count {
                let n = width(&mut r, 150) as u32;
                let activation = [
                    Activation::None,
                    Activation::Relu,
                    Activation::Gate,
                    Activation::Sigmoid,
                ][r.random_range(0..4)];
                // As plans make them: a multiplier after an activation keeps the activation
                // (without one it may or may not), a sigmoid has neither.
                let multiplied = activation != Activation::Sigmoid && r.random_range(0..3) == 0;
                let gate = gated.then(|| alloc(k));
                let multiplier = multiplied.then(|| alloc(n));
                let must_keep = multiplied && activation != Activation::None;
                let keep =
                    (must_keep || (multiplied && r.random_range(0..2) == 0)).then(|| alloc(n));
                let y = alloc(n);
                shapes.push((a, k, grad_k, n, activation, gate, multiplier, keep, y));
            }
        }
        let stride = used + r.random_range(0..3);
        let at = |offset: u32| View { offset, stride };
        let mut weights = Vec::new();
        let problems: Vec<LinearProblem> = shapes
            .iter()
            .map(
                |&(a, k, grad_k, n, activation, gate, multiplier, keep, y)| {
                    let w = random_vec(&mut r, (n * k) as usize, 1.0 / (n as f32).sqrt());
                    let b = random_vec(&mut r, n as usize, 0.5);
                    let (w_offset, bias_offset) = pack_layer(&mut weights, &w, &b, k);
                    LinearProblem {
                        grad_k,
                        a: at(a),
                        gate: gate.map(at),
                        multiplier: multiplier.map(at),
                        keep: keep.map(at),
                        y: at(y),
                        w_offset,
                        bias_offset,
                        n,
                        k,
                        activation,
                        gamma: r.random_range(0.5..3.0),
                        // Training stores f32, where probabilities take one slot like the rest.
                        f32_out: false,
                    }
                },
            )
            .collect();
        let len = rows * stride as usize;
        let act = random_vec(&mut r, len, 1.0);
        let grad = random_vec(&mut r, len, 1.0);
        let wgrad = random_vec(&mut r, weights.len(), 1.0);

        let (table, _) = lay_out(&problems);
        let (groups, in_tiles) = input_groups(&problems, 0);
        let w_tiles: u32 = problems.iter().map(weight_tiles).sum();
        let span = |count: usize| pepnet_core::gpu::linear::SpanParams::new(0, count);
        let in_span = ctx.uniform_buffer("span", &span(groups.len()));
        let w_span = ctx.uniform_buffer("span", &span(problems.len()));
        let batch = ctx.uniform_buffer("batch", &common::batch_params(rows));
        let problem_buf = ctx.storage_buffer("problems", &table);
        let group_buf = ctx.storage_buffer("groups", &groups);
        let weight_buf = ctx.storage_buffer("weights", &weights);
        let act_buf = ctx.storage_buffer("act", &act);
        let grad_buf = ctx.storage_buffer("grad", &grad);
        let wgrad_buf = ctx.storage_buffer("wgrad", &wgrad);
        let kernel = &ctx.linear_backward();
        let igrad_bindings = InputBindings {
            span: &in_span,
            batch: &batch,
            problems: &problem_buf,
            weights: &weight_buf,
            act: &act_buf,
            grad: &grad_buf,
            groups: &group_buf,
        };
        let wgrad_bindings = WeightBindings {
            span: &w_span,
            batch: &batch,
            problems: &problem_buf,
            act: &act_buf,
            grad: &grad_buf,
            wgrad: &wgrad_buf,
        };
        let input = kernel.input_bind_group(&ctx.device, igrad_bindings, false);
        let weight = kernel.weight_bind_group(&ctx.device, wgrad_bindings, false);
        // The tensor-core weight gradient, into its own pre-filled buffer (it reads `grad`
        // before input_grad writes it, as the trainer records them).
        let coop_wgrad_buf = ctx.storage_buffer("wgrad coop", &wgrad);
        let coop_grad_buf = ctx.storage_buffer("grad coop", &grad);
        let coop = kernel.has_coop().then(|| {
            let coop_weights = WeightBindings {
                wgrad: &coop_wgrad_buf,
                ..wgrad_bindings
            };
            let coop_inputs = InputBindings {
                grad: &coop_grad_buf,
                ..igrad_bindings
            };
            let weight = kernel.weight_bind_group(&ctx.device, coop_weights, true);
            let input = kernel.input_bind_group(&ctx.device, coop_inputs, true);
            (weight, input)
        });
        let got_grad = common::run(&ctx, &grad_buf, len, |pass| {
            if let Some((weight, input)) = &coop {
                kernel.weight_grad(pass, weight, w_tiles, true);
                kernel.input_grad(pass, input, in_tiles, rows as u32, true);
            }
            kernel.weight_grad(pass, &weight, w_tiles, false);
            kernel.input_grad(pass, &input, in_tiles, rows as u32, false);
        });
        let got_wgrad = ctx.read_buffer(&wgrad_buf, weights.len()).unwrap();

        let f64s = |v: &[f32]| -> Vec<f64> { v.iter().map(|&x| x as f64).collect() };
        let mut want_grad = f64s(&grad);
        let mut want_wgrad = f64s(&wgrad);
        linear_ref::linear_backward(
            &problems,
            rows,
            &weights,
            &f64s(&act),
            &mut want_grad,
            &mut want_wgrad,
        );
        let what = format!("seed {seed}, rows {rows}, {problems:?}");
        assert_close(&got_grad, &want_grad, &format!("input gradients, {what}"));
        assert_close(
            &got_wgrad,
            &want_wgrad,
            &format!("weight gradients, {what}"),
        );
        if coop.is_some() {
            coop_runs += 1;
            let got = ctx.read_buffer(&coop_wgrad_buf, weights.len()).unwrap();
            check_coop_wgrad(&problems, &got, &want_wgrad, &got_wgrad, &what);
            // Input and gate gradients: dZ and W enter as f16, so each is within 2e-3 of the
            // largest of the buffer's reference values it could sum (the same bound as above),
            // and everything it must not write stays as it was.
            let got = ctx.read_buffer(&coop_grad_buf, len).unwrap();
            let scale = want_grad
                .iter()
                .zip(&grad)
                .filter(|(w, g)| **w != **g as f64)
                .fold(0.0f64, |m, (w, _)| m.max(w.abs()));
            for (i, (&g, &w)) in got.iter().zip(&want_grad).enumerate() {
                assert!(
                    (g as f64 - w).abs() <= 1e-6 + 2e-3 * scale,
                    "coop input gradients: element {i}: gpu {g}, reference {w} (scale {scale}), {what}"
                );
            }
        }
    }
    if common::coop_required() {
        assert!(coop_runs > 0, "weight_grad_coop never ran");
    }
}

/// `weight_grad_coop` against the reference: dZ and A ⊙ G enter the products as f16 (dZ
/// block-scaled, so relative rounding 2^-12 however small), summed in f32, so each weight's
/// error is within 2e-3 of its problem's largest weight gradient (a sum of `rows` terms each
/// rounded by 2^-11 at most); the bias sums f32 values as `weight_grad` does, in another order.
fn check_coop_wgrad(
    problems: &[LinearProblem],
    got: &[f32],
    want: &[f64],
    simt: &[f32],
    what: &str,
) {
    for p in problems {
        let stride = pepnet_core::gpu::linear::padded_k(p.k) as usize;
        let (w0, b0) = (p.w_offset as usize, p.bias_offset as usize);
        let at = |n: usize, k: usize| w0 + n * stride + k;
        let mut scale: f64 = 0.0;
        for n in 0..p.n as usize {
            for k in 0..p.k as usize {
                scale = scale.max(want[at(n, k)].abs());
            }
        }
        for n in 0..p.n as usize {
            for k in 0..p.k as usize {
                let (g, w) = (got[at(n, k)] as f64, want[at(n, k)]);
                assert!(
                    (g - w).abs() <= 1e-6 + 2e-3 * scale,
                    "coop weight gradient [{n}, {k}]: gpu {g}, reference {w} (scale {scale}), {what}"
                );
            }
            let (g, s) = (got[b0 + n], simt[b0 + n]);
            assert!(
                (g - s).abs() <= 1e-5 * (1.0 + s.abs()),
                "coop bias gradient [{n}]: {g}, weight_grad's {s}, {what}"
            );
        }
    }
}

#[test]
fn mmoe_mix_backward_matches_reference() {
    let ctx = gpu();
    for seed in 0..16u64 {
        let mut r = rng(3100 + seed);
        let (params, stride) = common::random_mix(&mut r);
        let (k, t, w) = (params.experts, params.tasks, params.width);
        let rows = [1, 7, 256, 601][seed as usize % 4];
        let len = rows * stride as usize;
        let act = random_vec(&mut r, len, 3.0);
        let grad = random_vec(&mut r, len, 1.0);
        let params_buf = ctx.uniform_buffer("params", &params);
        let batch = ctx.uniform_buffer("batch", &common::batch_params(rows));
        let act_buf = ctx.storage_buffer("act", &act);
        let grad_buf = ctx.storage_buffer("grad", &grad);
        let bgs = ctx.mmoe_mix().backward_bind_groups(
            &ctx.device,
            &params_buf,
            &batch,
            &act_buf,
            &grad_buf,
        );
        let got = common::run(&ctx, &grad_buf, len, |pass| {
            ctx.mmoe_mix()
                .dispatch_backward(pass, &bgs, &params, rows as u32)
        });
        let mut want: Vec<f64> = grad.iter().map(|&x| x as f64).collect();
        let act64: Vec<f64> = act.iter().map(|&x| x as f64).collect();
        mmoe_mix_ref::mmoe_mix_backward(&params, rows, &act64, &mut want);
        assert_close(
            &got,
            &want,
            &format!("mix backward seed {seed}, K {k}, T {t}, width {w}"),
        );
    }
}

/// Row gradients for random specs (sparse, multi-hot with sum and mean pooling, dense), each
/// feature read from 1–3 random places, some scaled by another view; the host's grouping of the
/// uses is checked against a plain per-row collection.
#[test]
fn gather_backward_matches_reference_on_random_specs() {
    let ctx = gpu();
    for seed in 0..16u64 {
        let mut r = rng(3200 + seed);
        let spec = random_spec(&mut r, seed as u32 % 8);
        let d = spec.d();
        let rows = [1, 7, 256, 700][seed as usize % 4];
        let mut used = 0u32;
        let mut block = |r: &mut common::Rng| {
            used += d as u32 + r.random_range(0..3);
            used - d as u32
        };
        let mut places = Vec::new();
        for _ in &spec.features {
            let n = r.random_range(1..=3);
            let cols: Vec<(u32, Option<u32>)> = (0..n)
                .map(|_| {
                    let g = block(&mut r);
                    (g, (r.random_range(0..3) == 0).then(|| block(&mut r)))
                })
                .collect();
            places.push(cols);
        }
        let stride = used + 1;
        let at = |offset: u32| View { offset, stride };
        let destinations: Vec<Vec<View>> = places
            .iter()
            .map(|p| p.iter().map(|&(g, _)| at(g)).collect())
            .collect();
        let sources: Vec<Vec<(View, Option<View>)>> = places
            .iter()
            .map(|p| p.iter().map(|&(g, s)| (at(g), s.map(at))).collect())
            .collect();
        let layout = GatherLayout::new(&spec, &destinations, u32::MAX as u64, 0).unwrap();
        let batch = random_batch(&mut r, &spec, rows);
        let mut uses = RowUses::default();
        uses.build(&spec, &layout, &batch, 0..rows);

        // The grouping, against a plain collection of every use per row.
        let mut expected: BTreeMap<u32, Vec<(u32, u32, f32)>> = BTreeMap::new();
        for b in 0..rows {
            for (f, feature) in spec.features.iter().enumerate() {
                let (g, base) = layout.placement[f].unwrap();
                let col = &batch.columns[f];
                if let pepnet_core::Column::Dense(v) = col {
                    expected
                        .entry(base)
                        .or_default()
                        .push((b as u32, g as u32, v[b]));
                    continue;
                }
                let ids = col.ids(b);
                let weight = match feature.pooling {
                    Some(Pooling::Mean) => 1.0 / ids.len() as f32,
                    _ => 1.0,
                };
                for &id in ids {
                    let e = expected.entry(base + id as u32).or_default();
                    e.push((b as u32, g as u32, weight));
                }
            }
        }
        assert_eq!(
            uses.touched,
            expected.keys().copied().collect::<Vec<_>>(),
            "seed {seed}: touched rows"
        );
        for (u, list) in expected.values().enumerate() {
            let got: Vec<(u32, u32, f32)> = uses.uses
                [uses.starts[u] as usize..uses.starts[u + 1] as usize]
                .iter()
                .map(|x| (x.sample, x.feature, x.weight))
                .collect();
            assert_eq!(&got, list, "seed {seed}: uses of touched row {u}");
        }

        let len = rows * stride as usize;
        let act = random_vec(&mut r, len, 1.0);
        let grad = random_vec(&mut r, len, 1.0);
        let table = feature_table(&layout, &sources);
        let params = RowGradParams {
            rows: uses.touched.len() as u32,
            d: d as u32,
            _pad: [0; 2],
        };
        let out_len = uses.touched.len() * d;
        let out_init = random_vec(&mut r, out_len.max(1), 1.0);
        let buffers = [
            ctx.uniform_buffer("params", &params),
            ctx.storage_buffer("features", &table),
            ctx.storage_buffer("starts", &uses.starts),
            ctx.storage_buffer("uses", &uses.uses),
            ctx.storage_buffer("act", &act),
            ctx.storage_buffer("grad", &grad),
            ctx.storage_buffer("row grad", &out_init),
        ];
        let bg = ctx
            .gather_backward()
            .bind_group(&ctx.device, std::array::from_fn(|i| &buffers[i]));
        let got = common::run(&ctx, &buffers[6], out_len, |pass| {
            ctx.gather_backward().dispatch(pass, &bg, &params)
        });
        let f64s = |v: &[f32]| -> Vec<f64> { v.iter().map(|&x| x as f64).collect() };
        let want = gather_ref::gather_backward(&table, &uses, d, &f64s(&act), &f64s(&grad));
        assert_close(
            &got,
            &want,
            &format!("gather backward seed {seed}, {rows} rows"),
        );
    }
}

/// The loss kernel: the output gradient w_t (p − y) / B in place of the probabilities, the
/// batch's loss in its log slot, other slots untouched.
#[test]
fn loss_matches_reference() {
    let ctx = gpu();
    for seed in 0..12u64 {
        let mut r = rng(3300 + seed);
        let rows = [1, 7, 256, 1000][seed as usize % 4];
        let t = r.random_range(1..=6usize);
        let out_off = r.random_range(0..50u32);
        let len = out_off as usize + rows * t;
        let mut act = random_vec(&mut r, len, 1.0);
        for p in &mut act[out_off as usize..] {
            *p = r.random_range(0.001..0.999);
        }
        let labels: Vec<f32> = (0..rows * t).map(|_| r.random_range(0..2) as f32).collect();
        let weights: Vec<f32> = (0..t).map(|_| r.random_range(0.5..2.0)).collect();
        let grad = random_vec(&mut r, len, 1.0);
        let log = random_vec(&mut r, 8, 1.0);
        let slot = r.random_range(0..8u32);
        let params = LossParams {
            tasks: t as u32,
            out_off,
            log_slot: slot,
            _pad: 0,
        };
        let buffers = [
            ctx.uniform_buffer("params", &params),
            ctx.uniform_buffer("batch", &common::batch_params(rows)),
            ctx.storage_buffer("act", &act),
            ctx.storage_buffer("labels", &labels),
            ctx.storage_buffer("task weights", &weights),
            ctx.storage_buffer("grad", &grad),
            ctx.zeroed_storage("terms", (rows * t * 4) as u64),
            ctx.storage_buffer("log", &log),
        ];
        let bgs = ctx
            .loss()
            .bind_groups(&ctx.device, std::array::from_fn(|i| &buffers[i]));
        let got_grad = common::run(&ctx, &buffers[5], len, |pass| {
            ctx.loss().dispatch(pass, &bgs, rows as u32, t as u32)
        });
        let got_log = ctx.read_buffer(&buffers[7], 8).unwrap();

        let mut want_grad: Vec<f64> = grad.iter().map(|&x| x as f64).collect();
        let loss = loss_ref::bce(
            &act,
            &labels,
            &weights,
            (rows, out_off as usize),
            &mut want_grad,
        );
        let mut want_log: Vec<f64> = log.iter().map(|&x| x as f64).collect();
        want_log[slot as usize] = loss;
        let what = format!("loss seed {seed}, {rows} rows, {t} tasks");
        assert_close(&got_grad, &want_grad, &what);
        assert_close(&got_log, &want_log, &what);
    }
}
