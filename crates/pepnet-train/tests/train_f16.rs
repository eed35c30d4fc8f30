//! Mixed-precision (f16) training on the GPU: the forward pass runs the f16 kernels (tensor
//! cores where the device has them) on an f16 copy of the weights that the optimizer refreshes
//! from the f32 master weights after every step; loss, gradients (f32 buffers, so no loss
//! scaling) and optimizer state stay f32.
//!
//! - Gradients against the f64 reference of mixed precision (`grad::loss_and_gradients_mixed`:
//!   the forward's linear inputs and weights rounded to f16 as the kernels round them; the weight
//!   gradients' operands rounded too where they run on tensor cores; the input gradients with
//!   f32 weights and unrounded inputs), for random specs of every variant. Tolerance per
//!   element: |gpu − f64| ≤ 1e-6 + 1e-3 · max|f64 over the tensor| + 1e-3 · |f64|, ten times
//!   f32's scale term: an input the GPU holds in f32 and the reference in f64 can round to
//!   neighbouring f16 values (worst seen: 1.8e-4 · max). Against the exact model the f16
//!   gradients differ by up to ~40% of a small tensor's largest element (a ReLU or a near-tie
//!   flips), which is why the reference rounds as the kernels do.
//! - Bit-identical repeat runs, which differ from the f32 ones (so the f16 path ran).
//! - The f16 copy after each step is exactly the master weights rounded (ties to even).

#[path = "../../pepnet-core/tests/common/mod.rs"]
mod common;

use common::{coop_required, gpu, random_batch, random_spec, rng};
use pepnet_core::gpu::linear::{Precision, Variant};
use pepnet_core::grad;
use pepnet_core::Model;
use pepnet_train::{Trainer, TrainerOptions};
use rand::RngExt;

fn close(got: f64, want: f64, scale: f64) -> bool {
    (got - want).abs() <= 1e-6 + 1e-3 * scale + 1e-3 * want.abs()
}

fn f16_options(batch_size: usize) -> TrainerOptions {
    TrainerOptions {
        batch_size,
        precision: Precision::F16,
        ..Default::default()
    }
}

#[test]
fn f16_gradients_match_the_f64_reference_for_every_variant() {
    let ctx = gpu();
    if coop_required() {
        assert!(
            ctx.linear().coop().is_some(),
            "no cooperative matrices here"
        );
    }
    let mut checked = 0usize;
    let mut worst: f64 = 0.0;
    for seed in 0..24u64 {
        let mut r = rng(2900 + seed);
        let variant = (seed % 8) as u32;
        let spec = random_spec(&mut r, variant);
        let model = Model::init(spec.clone(), seed).unwrap();
        let rows = [1, 7, 70, 131][seed as usize % 4];
        let batch = random_batch(&mut r, &spec, rows);
        let t = spec.n_tasks();
        let labels: Vec<f32> = (0..rows * t).map(|_| r.random_range(0..2) as f32).collect();
        let mut trainer = Trainer::new(ctx.clone(), &model, None, &f16_options(131)).unwrap();
        let expected = match (rows <= 12, ctx.linear().coop().is_some()) {
            (true, _) => Variant::HalfSmall,
            (false, true) => Variant::Coop,
            (false, false) => Variant::HalfBatch,
        };
        assert_eq!(trainer.linear_variant(rows), expected);
        let (loss, got) = trainer.gradients(&batch, &labels).unwrap();
        let labels64: Vec<f64> = labels.iter().map(|&y| y as f64).collect();
        // The weight gradients' products round their operands too where they run on tensor
        // cores.
        let weight_grad = if trainer.backward_on_tensor_cores() {
            Precision::F16
        } else {
            Precision::F32
        };
        if coop_required() {
            assert_eq!(
                weight_grad,
                Precision::F16,
                "the backward is not on tensor cores"
            );
        }
        let (want_loss, want) = grad::loss_and_gradients_mixed(
            (Precision::F16, weight_grad),
            &model,
            &batch,
            &labels64,
            &vec![1.0; t],
        )
        .unwrap();
        let context = format!("seed {seed}, variant {variant}, {rows} rows, {expected:?}");
        assert!(
            (loss - want_loss).abs() <= 2e-3 * (1.0 + want_loss),
            "{context}: loss {loss} against {want_loss}"
        );
        let mut check = |name: &str, g: &[f64], w: &[f64]| {
            let scale = w.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            for (i, (&a, &b)) in g.iter().zip(w).enumerate() {
                assert!(
                    close(a, b, scale),
                    "{context}: {name}[{i}]: gpu {a}, f64 {b}"
                );
                worst = worst.max((a - b).abs() / (1e-12 + scale));
                checked += 1;
            }
        };
        for (name, w) in &want.dense {
            check(name, &got.dense[name], w);
        }
        for (f, want_rows) in want.rows.iter().enumerate() {
            let got_rows = &got.rows[f];
            assert_eq!(
                got_rows.keys().collect::<Vec<_>>(),
                want_rows.keys().collect::<Vec<_>>(),
                "{context}: touched rows"
            );
            let g: Vec<f64> = got_rows.values().flatten().copied().collect();
            let w: Vec<f64> = want_rows.values().flatten().copied().collect();
            check(&format!("emb.{}", spec.features[f].name), &g, &w);
        }
    }
    assert!(checked > 10_000, "only {checked} elements checked");
    eprintln!("f16 gradients: worst |gpu - f64| / max|f64| = {worst:e}");
}

/// Trains a few steps at `precision`; returns the trained model's weights and the losses.
fn train(model: &Model, precision: Precision, seed: u64) -> (Vec<(String, Vec<f32>)>, Vec<f32>) {
    let mut r = rng(seed);
    let options = TrainerOptions {
        batch_size: 96,
        precision,
        ..Default::default()
    };
    let mut trainer = Trainer::new(gpu(), model, None, &options).unwrap();
    for i in 0..5 {
        let rows = [96, 50, 1][i % 3];
        let batch = random_batch(&mut r, &model.spec, rows);
        let labels: Vec<f32> = (0..rows * model.spec.n_tasks())
            .map(|_| r.random_range(0..2) as f32)
            .collect();
        trainer.step(&batch, &labels).unwrap();
        // The forward's f16 copy is the master weights rounded, after every step.
        if precision == Precision::F16 {
            let packed = trainer.packed_weights().unwrap();
            let half = trainer.half_weights().unwrap().expect("an f16 copy");
            assert_eq!(
                half,
                pepnet_core::gpu::linear::pack_half(&packed),
                "step {i}"
            );
        }
    }
    let losses = trainer.losses().unwrap();
    let model = trainer.model().unwrap();
    let mut weights: Vec<(String, Vec<f32>)> = model
        .weights
        .iter()
        .map(|(n, t)| (n.to_string(), t.data.clone()))
        .collect();
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    (weights, losses)
}

#[test]
fn f16_training_is_bit_identical_run_to_run() {
    for seed in 0..8u64 {
        let mut r = rng(3300 + seed);
        let model = Model::init(random_spec(&mut r, seed as u32), seed).unwrap();
        let (a, losses_a) = train(&model, Precision::F16, seed);
        let (b, losses_b) = train(&model, Precision::F16, seed);
        assert_eq!(losses_a, losses_b, "seed {seed}: losses");
        assert!(
            a == b,
            "seed {seed}: weights differ between two identical runs"
        );
        let (c, losses_c) = train(&model, Precision::F32, seed);
        assert!(
            losses_a != losses_c && a != c,
            "seed {seed}: f16 training equals f32 training, so f16 did not run"
        );
    }
}
