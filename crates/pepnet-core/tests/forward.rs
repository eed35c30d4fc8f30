//! The whole forward pass on the GPU against the f64 reference: random specs of every variant,
//! awkward widths, batch sizes from 1 to a few thousand, batches split across passes, tables
//! split across pages, and many threads at once.
//!
//! Tolerance: 1e-5 absolute on probabilities (f32 kernels against an f64 oracle).

mod common;

use common::{gpu, max_abs_diff, random_batch, random_spec, rng};
use pepnet_core::{reference, Engine, EngineOptions, Model};

const TOLERANCE: f64 = 1e-5;

/// Scores `batch` both ways and checks they agree; returns the reference probabilities.
fn check(engine: &Engine, model: &Model, batch: &pepnet_core::Batch, what: &str) -> Vec<f64> {
    let got = engine.score(batch).unwrap();
    let want = reference::forward(model, batch).unwrap();
    let diff = max_abs_diff(&got, &want);
    assert!(
        diff <= TOLERANCE,
        "{what}: max |gpu - reference| = {diff:e} > {TOLERANCE:e}"
    );
    want
}

#[test]
fn random_specs_of_every_variant_match_the_reference() {
    let ctx = gpu();
    let n_specs = 56; // 7 of each of the 8 (EPNet, PPNet, experts) combinations
    let mut spread = Vec::new();
    for seed in 0..n_specs {
        let mut r = rng(1000 + seed);
        let spec = random_spec(&mut r, seed as u32 % 8);
        let model = Model::init(spec, seed).unwrap();
        // Half the engines hold fewer rows than the large batch, so it is split across passes.
        let max_batch = if seed % 2 == 0 { 4096 } else { 1000 };
        let options = EngineOptions {
            max_batch,
            ..Default::default()
        };
        let engine = Engine::new(ctx.clone(), &model, &options).unwrap();
        for n in [1, 7, 256, 2500 + seed as usize * 13] {
            let batch = random_batch(&mut r, &model.spec, n);
            let want = check(
                &engine,
                &model,
                &batch,
                &format!("spec seed {seed}, batch {n}, {:?}", model.spec),
            );
            if n > 1000 {
                let mean = want.iter().sum::<f64>() / want.len() as f64;
                spread.push(
                    (want.iter().map(|p| (p - mean).powi(2)).sum::<f64>() / want.len() as f64)
                        .sqrt(),
                );
            }
        }
    }
    // The comparison means something only if the probabilities vary with the inputs.
    let median = {
        spread.sort_by(f64::total_cmp);
        spread[spread.len() / 2]
    };
    assert!(
        median > 0.01,
        "probabilities barely vary (median std {median}); the test inputs are too tame"
    );
}

#[test]
fn tables_split_across_pages_match_the_reference() {
    let ctx = gpu();
    for seed in 0..8u64 {
        let mut r = rng(7000 + seed);
        let model = Model::init(random_spec(&mut r, seed as u32), seed).unwrap();
        let d = model.spec.d() as u64;
        let total_rows: u64 = model.spec.features.iter().map(|f| f.rows() as u64).sum();
        // Pages of about a third of the tables: three or four pages.
        let rows_per_page = total_rows.div_ceil(3).max(1);
        let options = EngineOptions {
            max_page_bytes: Some(rows_per_page * d * 4),
            ..Default::default()
        };
        let engine = Engine::new(ctx.clone(), &model, &options).unwrap();
        assert!(
            engine.pages() >= 2 || total_rows < 2,
            "seed {seed}: expected several pages, got {}",
            engine.pages()
        );
        let batch = random_batch(&mut r, &model.spec, 300);
        check(&engine, &model, &batch, &format!("paged, seed {seed}"));
    }
}

#[test]
fn tables_that_need_more_pages_than_bindings_are_a_clear_error() {
    let mut r = rng(42);
    let model = Model::init(random_spec(&mut r, 7), 1).unwrap();
    let d = model.spec.d() as u64;
    let options = EngineOptions {
        max_page_bytes: Some(d * 4),
        ..Default::default()
    };
    let total_rows: u64 = model.spec.features.iter().map(|f| f.rows() as u64).sum();
    if total_rows > 4 {
        let err = Engine::new(gpu(), &model, &options)
            .err()
            .expect("too many pages must fail");
        assert!(err.to_string().contains("storage bindings"), "{err}");
    }
}

#[test]
fn one_engine_scores_from_many_threads() {
    let ctx = gpu();
    let mut r = rng(99);
    let model = Model::init(random_spec(&mut r, 7), 5).unwrap();
    let options = EngineOptions {
        max_batch: 100,
        workspaces: 2,
        ..Default::default()
    };
    let engine = Engine::new(ctx, &model, &options).unwrap();
    let batches: Vec<_> = (0..6)
        .map(|i| random_batch(&mut rng(500 + i), &model.spec, 150 + i as usize * 31))
        .collect();
    std::thread::scope(|s| {
        for (i, batch) in batches.iter().enumerate() {
            let (engine, model) = (&engine, &model);
            s.spawn(move || {
                for _ in 0..3 {
                    check(engine, model, batch, &format!("thread {i}"));
                }
            });
        }
    });
}

#[test]
fn engine_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Engine>();
    assert_send_sync::<pepnet_core::GpuContext>();
    assert_send_sync::<pepnet_core::Error>();
}

#[test]
fn dispatch_count_does_not_grow_with_tasks_or_experts() {
    let mut r = rng(3);
    let mut base = random_spec(&mut r, 7);
    let count = |spec: &pepnet_core::ModelSpec| {
        let model = Model::init(spec.clone(), 0).unwrap();
        Engine::new(
            gpu(),
            &model,
            &EngineOptions {
                max_batch: 16,
                ..Default::default()
            },
        )
        .unwrap()
        .steps()
        .len()
    };
    base.tasks = vec!["a".into()];
    base.experts.as_mut().unwrap().count = 1;
    let few = count(&base);
    base.tasks = (0..6).map(|t| format!("t{t}")).collect();
    base.experts.as_mut().unwrap().count = 4;
    assert_eq!(count(&base), few);
    // gather + 2 EPNet + 2 PPNet + one per expert depth + mix + L+1 tower layers
    let expected =
        1 + 2 + 2 + base.experts.as_ref().unwrap().hidden.len() + 1 + base.towers.len() + 1;
    assert_eq!(few, expected);
}

#[test]
fn an_invalid_batch_is_an_error_not_a_panic() {
    let mut r = rng(11);
    let model = Model::init(random_spec(&mut r, 3), 0).unwrap();
    let engine = Engine::new(gpu(), &model, &EngineOptions::default()).unwrap();
    let mut batch = random_batch(&mut r, &model.spec, 5);
    if let pepnet_core::Column::Sparse(ids) = &mut batch.columns[0] {
        ids[3] = 1_000_000;
    }
    let err = engine.score(&batch).unwrap_err().to_string();
    assert!(
        err.contains("row 4") && err.contains("domain") && err.contains("1000000"),
        "{err}"
    );
    batch.columns.pop();
    assert!(engine.score(&batch).is_err());
}

#[test]
fn features_named_like_tensors_score() {
    // "weight" and "x.bias" make tensor names ("emb.weight", "emb.x.bias") that end like a
    // linear layer's; only the model's layers may be packed as layers.
    let spec = pepnet_core::ModelSpec::from_json(
        r#"{"embedding_dim": 3, "domain_feature": "weight", "tasks": ["a", "b"],
            "features": [
              {"name": "weight", "kind": "sparse", "vocab": 4, "roles": ["domain", "general"]},
              {"name": "x.bias", "kind": "dense", "roles": ["general", "prior"]}
            ],
            "epnet": {"hidden": 5}, "ppnet": {"hidden": 4}, "towers": [6]}"#,
        "spec",
    )
    .unwrap();
    let model = Model::init(spec, 8).unwrap();
    let engine = Engine::new(gpu(), &model, &EngineOptions::default()).unwrap();
    let batch = random_batch(&mut rng(8), &model.spec, 33);
    check(&engine, &model, &batch, "features named like tensors");
}
