//! The dynamic batcher: requests from many threads coalesced into GPU batches, each request's
//! scores bit-identical to scoring it alone; a full queue refused and recovered from; deadlines;
//! a bad request refused alone; the async interface.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{gpu, random_batch, random_spec, rng};
use pepnet_core::error::Error;
use pepnet_core::gpu::linear::Precision;
use pepnet_core::{Batch, Batcher, BatcherOptions, Column, Engine, EngineOptions, Model};

fn engine(model: &Model, precision: Precision, invariant: bool) -> Arc<Engine> {
    let options = EngineOptions {
        workspaces: 2,
        precision,
        batch_invariant: invariant,
        ..Default::default()
    };
    Arc::new(Engine::new(gpu(), model, &options).unwrap())
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Requests of awkward sizes from 6 threads at once, merged however the timing falls: every
/// request's scores equal, bit for bit, the same engine scoring it alone; for every model
/// variant and both precisions.
#[test]
fn batched_scores_are_bit_identical_to_scoring_alone() {
    for precision in [Precision::F32, Precision::F16] {
        for variant in 0..8 {
            let mut r = rng(40 + variant as u64);
            let spec = random_spec(&mut r, variant);
            let model = Model::init(spec, 7).unwrap();
            let engine = engine(&model, precision, true);
            assert!(engine.is_batch_invariant());
            // One row runs on the large-batch kernels, as every batch does.
            assert_eq!(engine.linear_variant(1), engine.linear_variant(100_000));
            assert_eq!(engine.linear_variant(1).precision(), precision);
            if precision == Precision::F16 && common::coop_required() {
                assert_eq!(
                    engine.linear_variant(1),
                    pepnet_core::gpu::linear::Variant::Coop
                );
            }
            let sizes = [1usize, 3, 7, 13, 2, 29, 1, 5];
            let requests: Vec<Vec<Batch>> = (0..6)
                .map(|t| {
                    sizes
                        .iter()
                        .map(|&n| random_batch(&mut rng(1000 * t + n as u64), &model.spec, n))
                        .collect()
                })
                .collect();
            let batcher = Arc::new(
                Batcher::new(
                    engine.clone(),
                    BatcherOptions {
                        max_rows: 40,
                        max_delay: Duration::from_millis(5),
                        ..Default::default()
                    },
                )
                .unwrap(),
            );
            let batched: Vec<Vec<Vec<f32>>> = std::thread::scope(|s| {
                let handles: Vec<_> = requests
                    .iter()
                    .map(|reqs| {
                        let batcher = batcher.clone();
                        s.spawn(move || {
                            reqs.iter()
                                .map(|b| batcher.score(b.clone(), None).unwrap())
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for (reqs, got) in requests.iter().zip(&batched) {
                for (b, scores) in reqs.iter().zip(got) {
                    let alone = engine.score(b).unwrap();
                    assert_eq!(scores.len(), b.len() * model.spec.n_tasks());
                    assert_eq!(
                        bits(scores),
                        bits(&alone),
                        "{precision:?}, variant {variant}: a request of {} rows",
                        b.len()
                    );
                }
            }
        }
    }
}

#[test]
fn an_engine_that_is_not_batch_invariant_is_refused() {
    let model = Model::init(random_spec(&mut rng(1), 0), 1).unwrap();
    let err = Batcher::new(
        engine(&model, Precision::F32, false),
        BatcherOptions::default(),
    )
    .err()
    .expect("refused");
    assert!(err.to_string().contains("batch-invariant"), "{err}");
}

/// Beyond `max_queued_rows` a request is refused with `Overloaded`, not queued; once the
/// queue drains, requests are taken again.
#[test]
fn a_full_queue_refuses_then_recovers() {
    let model = Model::init(random_spec(&mut rng(2), 0), 2).unwrap();
    let batcher = Batcher::new(
        engine(&model, Precision::F32, true),
        BatcherOptions {
            max_rows: 1000,
            max_delay: Duration::from_millis(300),
            max_queued_rows: 20,
            in_flight: 1,
        },
    )
    .unwrap();
    let batch = random_batch(&mut rng(3), &model.spec, 8);
    let first = batcher.submit(batch.clone(), None).unwrap();
    let second = batcher.submit(batch.clone(), None).unwrap();
    match batcher.submit(batch.clone(), None) {
        Err(Error::Overloaded(m)) => assert!(m.contains("16 rows are waiting"), "{m}"),
        Err(e) => panic!("expected Overloaded, got {e}"),
        Ok(_) => panic!("expected Overloaded, the request was queued"),
    }
    let (a, b) = (first.wait().unwrap(), second.wait().unwrap());
    assert_eq!(bits(&a), bits(&b));
    assert_eq!(batcher.queued_rows(), 0);
    assert_eq!(bits(&batcher.score(batch, None).unwrap()), bits(&a));
}

#[test]
fn deadlines_are_honoured() {
    let model = Model::init(random_spec(&mut rng(4), 1), 4).unwrap();
    let batcher = Batcher::new(
        engine(&model, Precision::F32, true),
        BatcherOptions {
            max_rows: 1000,
            max_delay: Duration::from_millis(400),
            in_flight: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let batch = random_batch(&mut rng(5), &model.spec, 4);
    let past = Instant::now() - Duration::from_millis(1);
    assert!(matches!(
        batcher.submit(batch.clone(), Some(past)),
        Err(Error::DeadlineExceeded(_))
    ));
    // Waits for the batch to fill longer than the deadline allows.
    let soon = Instant::now() + Duration::from_millis(50);
    let pending = batcher.submit(batch.clone(), Some(soon)).unwrap();
    assert!(matches!(pending.wait(), Err(Error::DeadlineExceeded(_))));
    // Without one, the same request is scored.
    assert_eq!(
        batcher.score(batch, None).unwrap().len(),
        4 * model.spec.n_tasks()
    );
}

/// A request that does not fit the model is refused on submission, naming its sample; one
/// whose probabilities overflow fails alone, and the request merged with it is scored as if
/// alone.
#[test]
fn a_bad_request_fails_alone() {
    let mut model = Model::init(random_spec(&mut rng(6), 0), 6).unwrap();
    let dense = model.spec.features.iter().position(|f| {
        f.kind == pepnet_core::spec::FeatureKind::Dense
            && f.roles.contains(&pepnet_core::spec::Role::General)
    });
    let engine = engine(&model, Precision::F32, true);
    let batcher = Batcher::new(
        engine.clone(),
        BatcherOptions {
            max_rows: 100,
            max_delay: Duration::from_millis(50),
            ..Default::default()
        },
    )
    .unwrap();
    let good = random_batch(&mut rng(7), &model.spec, 5);
    let mut columns: Vec<Column> = (0..model.spec.features.len())
        .map(|f| good.take(&[0]).columns[f].clone())
        .collect();
    columns[0] = match &columns[0] {
        Column::Sparse(_) => Column::Sparse(vec![u32::MAX as u64]),
        other => other.clone(),
    };
    if matches!(columns[0], Column::Sparse(_)) && !model.spec.features[0].hashed {
        let err = batcher
            .submit(Batch::new(columns), None)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("request"), "{err}");
    }
    let Some(f) = dense else { return };
    // A dense vector large enough that 3e38 · v overflows.
    let name = format!("emb.{}", model.spec.features[f].name);
    let d = model.spec.d();
    model.weights.get_mut(&name).unwrap().data = vec![1000.0; d];
    let engine = self::engine(&model, Precision::F32, true);
    let batcher = Batcher::new(
        engine.clone(),
        BatcherOptions {
            max_rows: 100,
            max_delay: Duration::from_millis(50),
            ..Default::default()
        },
    )
    .unwrap();
    let mut bad = random_batch(&mut rng(8), &model.spec, 3);
    if let Column::Dense(v) = &mut bad.columns[f] {
        v[1] = 3e38;
    }
    let (p_good, p_bad) = (
        batcher.submit(good.clone(), None).unwrap(),
        batcher.submit(bad, None).unwrap(),
    );
    match p_bad.wait() {
        Err(Error::Samples(s)) => assert_eq!(s[0].sample, 1),
        other => panic!("expected Samples, got {other:?}"),
    }
    assert_eq!(
        bits(&p_good.wait().unwrap()),
        bits(&engine.score(&good).unwrap())
    );
}

/// The async interface, driven by a minimal executor.
#[test]
fn pending_is_a_future() {
    let model = Model::init(random_spec(&mut rng(9), 2), 9).unwrap();
    let engine = engine(&model, Precision::F32, true);
    let batcher = Batcher::new(engine.clone(), BatcherOptions::default()).unwrap();
    let batch = random_batch(&mut rng(10), &model.spec, 6);
    let scores = pollster::block_on(batcher.submit(batch.clone(), None).unwrap()).unwrap();
    assert_eq!(bits(&scores), bits(&engine.score(&batch).unwrap()));
}
