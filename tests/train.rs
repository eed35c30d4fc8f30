//! Training on the GPU: every parameter's gradient from the backward kernels against the f64
//! reference (`pepnet::grad`, itself checked against finite differences in tests/grad.rs), for
//! random specs of every variant, and bit-identical repeat runs.
//!
//! Gradient tolerance, per element: |gpu − f64| ≤ 1e-6 + 1e-4 · max|f64 over the tensor| +
//! 1e-3 · |f64| (f32 sums over a batch against f64 ones).

mod common;

use common::{gpu, random_batch, random_spec, rng};
use pepnet::grad;
use pepnet::train::{Trainer, TrainerOptions};
use pepnet::Model;
use rand::RngExt;

fn close(got: f64, want: f64, scale: f64) -> bool {
    (got - want).abs() <= 1e-6 + 1e-4 * scale + 1e-3 * want.abs()
}

#[test]
fn gpu_gradients_match_the_f64_reference_for_every_variant() {
    let ctx = gpu();
    let mut checked = 0usize;
    for seed in 0..16u64 {
        let mut r = rng(900 + seed);
        let variant = (seed % 8) as u32;
        let spec = random_spec(&mut r, variant);
        let model = Model::init(spec.clone(), seed);
        let rows = [1, 7, 70, 131][seed as usize % 4];
        let batch = random_batch(&mut r, &spec, rows);
        let t = spec.n_tasks();
        let labels: Vec<f32> = (0..rows * t).map(|_| r.random_range(0..2) as f32).collect();
        let weights: Vec<f64> = (0..t).map(|_| r.random_range(0.5..2.0)).collect();
        let options = TrainerOptions {
            batch_size: 131,
            task_weights: Some(weights.clone()),
            ..Default::default()
        };
        let mut trainer = Trainer::new(ctx.clone(), &model, None, &options).unwrap();
        let (loss, got) = trainer.gradients(&batch, &labels).unwrap();
        let labels64: Vec<f64> = labels.iter().map(|&y| y as f64).collect();
        let (want_loss, want) =
            grad::loss_and_gradients(&model, &batch, &labels64, &weights).unwrap();
        let context = format!("seed {seed}, variant {variant}, {rows} rows");
        assert!(
            (loss - want_loss).abs() <= 1e-5 * (1.0 + want_loss),
            "{context}: loss {loss} against {want_loss}"
        );

        for (name, w) in &want.dense {
            let g = &got.dense[name];
            let scale = w.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            for (i, (&a, &b)) in g.iter().zip(w).enumerate() {
                assert!(
                    close(a, b, scale),
                    "{context}: {name}[{i}]: gpu {a}, f64 {b}"
                );
                checked += 1;
            }
        }
        assert_eq!(
            got.dense.len(),
            want.dense.len(),
            "{context}: dense tensors"
        );
        for (f, want_rows) in want.rows.iter().enumerate() {
            let got_rows = &got.rows[f];
            let name = &spec.features[f].name;
            assert_eq!(
                got_rows.keys().collect::<Vec<_>>(),
                want_rows.keys().collect::<Vec<_>>(),
                "{context}: feature '{name}': touched rows"
            );
            let scale = want_rows
                .values()
                .flatten()
                .fold(0.0f64, |m, x| m.max(x.abs()));
            for (id, w) in want_rows {
                for (k, (&a, &b)) in got_rows[id].iter().zip(w).enumerate() {
                    assert!(
                        close(a, b, scale),
                        "{context}: emb.{name} row {id}[{k}]: gpu {a}, f64 {b}"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 10_000, "only {checked} elements checked");
}
