//! The whole forward pass at f16 precision against the f64 reference of the exact model: random
//! specs of every variant, awkward widths, batches of 1, 7, 256 and a few thousand. The test
//! asserts which linear kernel ran: the f16 SIMT kernels on a device without cooperative
//! matrices (Mesa 25's lavapipe), the tensor-core kernel where the device has them (Mesa 26's
//! lavapipe in CI, where `PEPNET_REQUIRE_COOP=1` makes its absence a failure), and that the
//! activations are stored as f16 (both lavapipes have f16 shaders).
//!
//! Tolerance: 2e-3 absolute on probabilities. f16 rounds each weight and each stored activation
//! to 11 significant bits (relative error ≤ 2^-12); sums and probabilities stay f32, so the
//! error of a probability is a few times 2^-12 at worst through the towers and gates of these
//! sizes.

mod common;

use common::{coop_required, gpu, max_abs_diff, random_batch, random_spec, rng};
use pepnet_core::gpu::act::ActStorage;
use pepnet_core::gpu::linear::{Precision, Variant};
use pepnet_core::{reference, Engine, EngineOptions, Model};

const TOLERANCE: f64 = 2e-3;

#[test]
fn random_specs_of_every_variant_match_the_reference_at_f16() {
    let ctx = gpu();
    let coop = ctx.linear().coop().is_some();
    if coop_required() {
        assert!(
            coop,
            "PEPNET_REQUIRE_COOP=1 but the device has no cooperative matrices"
        );
    }
    let batch_variant = if coop {
        Variant::Coop
    } else {
        Variant::HalfBatch
    };
    let f16_storage = *common::act_storages(&ctx).last().unwrap();
    let mut worst: f64 = 0.0;
    let n_specs = 56; // 7 of each of the 8 (EPNet, PPNet, experts) combinations
    for seed in 0..n_specs {
        let mut r = rng(5000 + seed);
        let spec = random_spec(&mut r, seed as u32 % 8);
        let model = Model::init(spec, seed).unwrap();
        let options = EngineOptions {
            max_batch: if seed % 2 == 0 { 4096 } else { 1000 },
            precision: Precision::F16,
            ..Default::default()
        };
        let engine = Engine::new(ctx.clone(), &model, &options).unwrap();
        assert_eq!(engine.precision(), Precision::F16);
        // Activations stored as f16 (every device CI uses has f16 shaders).
        assert_eq!(engine.act_storage(), f16_storage);
        for n in [1, 7, 256, 2000 + seed as usize * 17] {
            let expected = if n <= 12 {
                Variant::HalfSmall
            } else {
                batch_variant
            };
            assert_eq!(engine.linear_variant(n), expected, "batch of {n}");
            let batch = random_batch(&mut r, &model.spec, n);
            let got = engine.score(&batch).unwrap();
            let want = reference::forward(&model, &batch).unwrap();
            let diff = max_abs_diff(&got, &want);
            worst = worst.max(diff);
            assert!(
                diff <= TOLERANCE,
                "spec seed {seed}, batch {n}, {expected:?}: max |gpu - reference| = {diff:e} > \
                 {TOLERANCE:e}; {:?}",
                model.spec
            );
        }
    }
    // f16 must actually differ from f32 somewhere, or the f16 path did not run.
    assert!(
        worst > 1e-6,
        "f16 scores equal the f64 reference to {worst:e}"
    );
    eprintln!("f16 forward: worst |gpu - reference| = {worst:e} ({batch_variant:?})");
}

/// At f32 the engine runs the f32 kernels whatever the device offers.
#[test]
fn f32_is_the_default_and_runs_the_f32_kernels() {
    let ctx = gpu();
    let mut r = rng(77);
    let model = Model::init(random_spec(&mut r, 7), 3).unwrap();
    let engine = Engine::new(ctx, &model, &EngineOptions::default()).unwrap();
    assert_eq!(engine.precision(), Precision::F32);
    assert_eq!(engine.act_storage(), ActStorage::F32);
    assert_eq!(engine.linear_variant(5), Variant::Small);
    assert_eq!(engine.linear_variant(500), Variant::Batch);
}
