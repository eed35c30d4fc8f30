//! Training on the GPU: every parameter's gradient from the backward kernels against the f64
//! reference (`pepnet_core::grad`, itself checked against finite differences in tests/grad.rs), for
//! random specs of every variant (3 of each), one optimizer step, and bit-identical repeat and
//! resumed runs.
//!
//! Gradient tolerance, per element: |gpu − f64| ≤ 1e-6 + 1e-4 · max|f64 over the tensor| +
//! 1e-3 · |f64| (f32 sums over a batch against f64 ones).

#[path = "../../pepnet-core/tests/common/mod.rs"]
mod common;

use common::{gpu, random_batch, random_spec, rng};
use pepnet_core::grad;
use pepnet_core::Model;
use pepnet_train::{Trainer, TrainerOptions};
use rand::RngExt;

fn close(got: f64, want: f64, scale: f64) -> bool {
    (got - want).abs() <= 1e-6 + 1e-4 * scale + 1e-3 * want.abs()
}

#[test]
fn gpu_gradients_match_the_f64_reference_for_every_variant() {
    let ctx = gpu();
    let mut checked = 0usize;
    for seed in 0..24u64 {
        let mut r = rng(900 + seed);
        let variant = (seed % 8) as u32;
        let spec = random_spec(&mut r, variant);
        let model = Model::init(spec.clone(), seed).unwrap();
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

/// A few steps of training on random data, returning the trained model and its optimizer state.
fn train_steps(
    model: &Model,
    state: Option<&pepnet_train::OptimizerState>,
    batches: &[(pepnet_core::Batch, Vec<f32>)],
) -> (Model, pepnet_train::OptimizerState, Vec<f32>) {
    let options = TrainerOptions {
        batch_size: 96,
        ..Default::default()
    };
    let mut trainer = Trainer::new(gpu(), model, state, &options).unwrap();
    for (batch, labels) in batches {
        trainer.step(batch, labels).unwrap();
    }
    let losses = trainer.losses().unwrap();
    (
        trainer.model().unwrap(),
        trainer.optimizer_state().unwrap(),
        losses,
    )
}

fn random_batches(
    r: &mut common::Rng,
    spec: &pepnet_core::ModelSpec,
    n: usize,
) -> Vec<(pepnet_core::Batch, Vec<f32>)> {
    (0..n)
        .map(|i| {
            let rows = [96, 50, 1][i % 3];
            let batch = random_batch(r, spec, rows);
            let labels = (0..rows * spec.n_tasks())
                .map(|_| r.random_range(0..2) as f32)
                .collect();
            (batch, labels)
        })
        .collect()
}

#[test]
fn training_is_bit_identical_run_to_run_and_across_a_resume() {
    for seed in 0..8u64 {
        let mut r = rng(1300 + seed);
        let spec = random_spec(&mut r, seed as u32);
        let model = Model::init(spec.clone(), seed).unwrap();
        let batches = random_batches(&mut r, &spec, 4);
        let (a, state_a, losses_a) = train_steps(&model, None, &batches);
        let (b, state_b, losses_b) = train_steps(&model, None, &batches);
        assert_eq!(a, b, "seed {seed}: two runs differ");
        assert_eq!(state_a, state_b, "seed {seed}");
        assert_eq!(losses_a, losses_b, "seed {seed}");
        assert_eq!(state_a.step, 4);
        assert!(losses_a.iter().all(|l| l.is_finite() && *l > 0.0));
        assert_ne!(
            a.weights, model.weights,
            "seed {seed}: training changed nothing"
        );

        // Two steps, stop (through the files), two more: the same as four at once.
        let dir = tempfile::tempdir().unwrap();
        let (half, state, _) = train_steps(&model, None, &batches[..2]);
        half.save(dir.path()).unwrap();
        state.save(dir.path()).unwrap();
        let reloaded = Model::load(dir.path()).unwrap();
        let state = pepnet_train::OptimizerState::load(dir.path(), &spec)
            .unwrap()
            .unwrap();
        let (resumed, resumed_state, _) = train_steps(&reloaded, Some(&state), &batches[2..]);
        assert_eq!(resumed, a, "seed {seed}: a resumed run differs");
        assert_eq!(resumed_state, state_a, "seed {seed}");
    }
}

/// How far a first optimizer step lr · g / (|g| + eps) may move apart when the gradient g is
/// known within the gradient test's tolerance δ: at most lr · 2δ / (|g| + eps) (and 2 lr), plus
/// the f32 rounding of the weight.
fn step_tolerance(lr: f64, g: f64, scale: f64, eps: f64, weight: f64) -> f64 {
    let delta = 1e-6 + 1e-4 * scale + 1e-3 * g.abs();
    lr * (2.0 * delta / (g.abs() + eps)).min(2.0) + 1e-6 * weight.abs() + 1e-7
}

/// One step: Adam on every dense tensor and AdaGrad on exactly the touched rows, from the f64
/// gradients, match the GPU's update (within [`step_tolerance`]); untouched rows stay as they
/// were, bit for bit.
#[test]
fn one_step_applies_adam_and_adagrad_as_the_reference() {
    for seed in 0..8u64 {
        let mut r = rng(1700 + seed);
        let spec = random_spec(&mut r, seed as u32);
        let model = Model::init(spec.clone(), seed).unwrap();
        let batches = random_batches(&mut r, &spec, 1);
        let (trained, _, _) = train_steps(&model, None, &batches);
        let (batch, labels) = &batches[0];
        let labels64: Vec<f64> = labels.iter().map(|&y| y as f64).collect();
        let ones = vec![1.0; spec.n_tasks()];
        let (_, g) = grad::loss_and_gradients(&model, batch, &labels64, &ones).unwrap();
        let (adam, adagrad) = (
            pepnet_core::gpu::optimizer::AdamOptions::default(),
            pepnet_core::gpu::optimizer::AdaGradOptions::default(),
        );
        for (name, t) in model.weights.iter() {
            let after = &trained.weights.get(name).data;
            if let Some(feature) = name.strip_prefix("emb.") {
                let f = spec
                    .features
                    .iter()
                    .position(|x| x.name == feature)
                    .unwrap();
                let d = spec.d();
                let scale = g.rows[f]
                    .values()
                    .flatten()
                    .fold(0.0f64, |m, x| m.max(x.abs()));
                for (row, (before, now)) in t.data.chunks(d).zip(after.chunks(d)).enumerate() {
                    match g.rows[f].get(&(row as u64)) {
                        None => assert_eq!(before, now, "seed {seed}: {name} row {row} untouched"),
                        Some(gr) => {
                            for k in 0..d {
                                let s = gr[k] * gr[k];
                                let want = before[k] as f64
                                    - adagrad.lr * gr[k] / (s.sqrt() + adagrad.eps);
                                let tol =
                                    step_tolerance(adagrad.lr, gr[k], scale, adagrad.eps, want);
                                assert!(
                                    (now[k] as f64 - want).abs() <= tol,
                                    "seed {seed}: {name} row {row}[{k}]: {} against {want}",
                                    now[k]
                                );
                            }
                        }
                    }
                }
            } else {
                let gr = &g.dense[name];
                let scale = gr.iter().fold(0.0f64, |m, x| m.max(x.abs()));
                for (i, (&before, &now)) in t.data.iter().zip(after).enumerate() {
                    // Adam's first step: m̂ = g, v̂ = g².
                    let want = before as f64 - adam.lr * gr[i] / (gr[i].abs() + adam.eps);
                    let tol = step_tolerance(adam.lr, gr[i], scale, adam.eps, want);
                    assert!(
                        (now as f64 - want).abs() <= tol,
                        "seed {seed}: {name}[{i}]: {now} against {want}"
                    );
                }
            }
        }
    }
}

/// Services hold a trainer behind a lock or move it to a worker thread.
#[test]
fn trainer_is_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Trainer>();
}

/// An optimizer state from another model is refused, naming the tensor, not a panic.
#[test]
fn a_state_that_does_not_fit_the_model_is_an_error() {
    let mut r = rng(2100);
    let spec = random_spec(&mut r, 3);
    let model = Model::init(spec.clone(), 0).unwrap();
    let batches = random_batches(&mut r, &spec, 1);
    let (_, mut state, _) = train_steps(&model, None, &batches);
    let name = state.tensors.keys().next().unwrap().clone();
    state.tensors.get_mut(&name).unwrap().1.pop();
    let options = TrainerOptions::default();
    let err = Trainer::new(gpu(), &model, Some(&state), &options)
        .err()
        .expect("a misshapen state is refused")
        .to_string();
    assert!(err.contains(&name), "{err}");
    state.tensors.remove(&name);
    let err = Trainer::new(gpu(), &model, Some(&state), &options)
        .err()
        .expect("a state missing a tensor is refused")
        .to_string();
    assert!(err.contains(&name) && err.contains("missing"), "{err}");
}

/// Score-then-train: the probabilities a step reports for its batch are those of the weights
/// before its update (the f64 reference of the model read back just before the step), for
/// random specs of every variant.
#[test]
fn last_scores_are_the_batch_scored_before_its_update() {
    for seed in 0..8u64 {
        let mut r = rng(9000 + seed);
        let spec = random_spec(&mut r, seed as u32);
        let model = Model::init(spec, seed).unwrap();
        let batches = random_batches(&mut r, &model.spec, 3);
        let options = TrainerOptions {
            batch_size: 96,
            ..Default::default()
        };
        let mut trainer = Trainer::new(gpu(), &model, None, &options).unwrap();
        for (k, (batch, labels)) in batches.iter().enumerate() {
            let before = trainer.model().unwrap();
            trainer.step(batch, labels).unwrap();
            let got = trainer.last_scores().unwrap();
            let want = pepnet_core::reference::forward(&before, batch).unwrap();
            assert_eq!(got.len(), want.len());
            let worst = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (*g as f64 - w).abs())
                .fold(0.0, f64::max);
            assert!(
                worst < 2e-5,
                "spec {seed}, step {k}: {worst:e} from the reference"
            );
            let after = pepnet_core::reference::forward(&trainer.model().unwrap(), batch).unwrap();
            let moved = after
                .iter()
                .zip(&want)
                .map(|(a, w)| (a - w).abs())
                .fold(0.0, f64::max);
            assert!(
                moved > 1e-6,
                "spec {seed}, step {k}: the step changed no score"
            );
        }
    }
}
