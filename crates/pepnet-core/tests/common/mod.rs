//! Shared test fixtures of the engine's tests (and, included by path, of the other crates'):
//! one GPU context per test binary, random specs covering every model variant, random batches,
//! and the kernels' harness. Everything random is seeded, so a failure names its seed.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use pepnet_core::gpu::act::ActStorage;
use pepnet_core::spec::{
    ExpertsSpec, FeatureKind, FeatureSpec, GateSpec, ModelSpec, Pooling, Role,
};
use pepnet_core::{Batch, Column, GpuContext, InitSpec};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub type Rng = ChaCha8Rng;

pub fn rng(seed: u64) -> Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// The GPU every test of this binary shares (lavapipe on a machine without a GPU). Tests fail,
/// never skip, without one: CI installs a driver.
pub fn gpu() -> Arc<GpuContext> {
    static CTX: OnceLock<Arc<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| {
        GpuContext::new(None).expect("a GPU adapter (install mesa-vulkan-drivers for lavapipe)")
    })
    .clone()
}

/// Whether the cooperative-matrix kernels must run here: set `PEPNET_REQUIRE_COOP=1` where the
/// device offers them (CI's Mesa 26 run), so that their absence fails instead of passing on
/// the f16 SIMT kernels alone.
pub fn coop_required() -> bool {
    std::env::var("PEPNET_REQUIRE_COOP").is_ok_and(|v| v == "1")
}

/// Awkward widths: 1, primes, and non-multiples of every tile size (4, 16, 64).
pub fn width(rng: &mut Rng, max: usize) -> usize {
    const AWKWARD: [usize; 12] = [1, 2, 3, 5, 7, 13, 17, 31, 37, 61, 67, 97];
    if rng.random_range(0..3) == 0 {
        rng.random_range(1..=max)
    } else {
        let choices: Vec<usize> = AWKWARD.iter().copied().filter(|&w| w <= max).collect();
        choices[rng.random_range(0..choices.len())]
    }
}

/// A random valid spec. `variant` picks EPNet (bit 0), PPNet (bit 1) and experts (bit 2), so
/// consecutive variants cover every combination.
pub fn random_spec(rng: &mut Rng, variant: u32) -> ModelSpec {
    let d = if rng.random_range(0..4) == 0 {
        *[1, 64].get(rng.random_range(0..2)).unwrap()
    } else {
        width(rng, 64)
    };
    let n_tasks = rng.random_range(1..=6);
    let mut features = vec![FeatureSpec {
        name: "domain".into(),
        kind: FeatureKind::Sparse,
        vocab: Some(rng.random_range(1..=5)),
        max_len: None,
        pooling: None,
        hashed: false,
        roles: vec![Role::Domain],
    }];
    let n_more = rng.random_range(1..=5);
    for i in 0..n_more {
        let kind = [
            FeatureKind::Sparse,
            FeatureKind::MultiHot,
            FeatureKind::Dense,
        ][rng.random_range(0..3)];
        let mut roles: Vec<Role> = [Role::General, Role::Domain, Role::Prior]
            .into_iter()
            .filter(|_| rng.random_range(0..2) == 0)
            .collect();
        if i == 0 && !roles.contains(&Role::General) {
            roles.insert(0, Role::General);
        }
        if roles.is_empty() {
            roles.push(Role::Prior);
        }
        features.push(FeatureSpec {
            name: format!("f{i}"),
            kind,
            vocab: (kind != FeatureKind::Dense).then(|| rng.random_range(1..=300)),
            max_len: (kind == FeatureKind::MultiHot).then(|| rng.random_range(1..=6)),
            pooling: (kind == FeatureKind::MultiHot).then(|| {
                if rng.random_range(0..2) == 0 {
                    Pooling::Sum
                } else {
                    Pooling::Mean
                }
            }),
            hashed: false,
            roles,
        });
    }
    let gate = |rng: &mut Rng| GateSpec {
        hidden: width(rng, 40),
    };
    let epnet = (variant & 1 != 0).then(|| gate(rng));
    let ppnet = (variant & 2 != 0).then(|| gate(rng));
    let experts = (variant & 4 != 0).then(|| ExpertsSpec {
        count: rng.random_range(1..=4),
        hidden: (0..rng.random_range(1..=2))
            .map(|_| width(rng, 40))
            .collect(),
    });
    let towers = (0..rng.random_range(0..=3))
        .map(|_| width(rng, 40))
        .collect();
    let spec = ModelSpec {
        embedding_dim: d,
        gate_gamma: if rng.random_range(0..4) == 0 {
            rng.random_range(0.5..3.0)
        } else {
            2.0
        },
        domain_feature: "domain".into(),
        tasks: (0..n_tasks).map(|t| format!("task{t}")).collect(),
        features,
        epnet,
        ppnet,
        experts,
        towers,
        // Large values everywhere (no zero biases): a kernel's error cannot hide in them.
        init: Some(InitSpec::unit_uniform(d)),
    };
    spec.validate().expect("the generator makes valid specs");
    spec
}

/// A random batch of `n` samples: ids anywhere in each vocabulary, lists of every length from
/// empty to max_len, dense values in [-2, 2].
pub fn random_batch(rng: &mut Rng, spec: &ModelSpec, n: usize) -> Batch {
    let columns = spec
        .features
        .iter()
        .map(|f| match f.kind {
            FeatureKind::Sparse => Column::Sparse(
                (0..n)
                    .map(|_| rng.random_range(0..f.rows() as u64))
                    .collect(),
            ),
            FeatureKind::MultiHot => {
                let mut offsets = vec![0];
                let mut ids = Vec::new();
                for _ in 0..n {
                    for _ in 0..rng.random_range(0..=f.max_len.unwrap()) {
                        ids.push(rng.random_range(0..f.rows() as u64));
                    }
                    offsets.push(ids.len());
                }
                Column::MultiHot { offsets, ids }
            }
            FeatureKind::Dense => {
                Column::Dense((0..n).map(|_| rng.random_range(-2.0..2.0)).collect())
            }
        })
        .collect();
    Batch::new(columns)
}

/// Largest |a - b| over two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y).abs())
        .fold(0.0, f64::max)
}

/// Random values uniform in ±scale.
pub fn random_vec(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

pub fn assert_close(got: &[f32], want: &[f64], what: &str) {
    assert_close_tol(got, want, 1e-5, what)
}

/// |got − want| ≤ `rel` · (1 + |want|) element by element.
pub fn assert_close_tol(got: &[f32], want: &[f64], rel: f64, what: &str) {
    assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = rel * (1.0 + w.abs());
        assert!(
            (g as f64 - w).abs() <= tol,
            "{what}: element {i}: gpu {g}, reference {w}"
        );
    }
}

/// Runs one dispatch recorded by `record` and returns the activation buffer afterwards.
pub fn run(
    ctx: &GpuContext,
    act: &wgpu::Buffer,
    len: usize,
    record: impl FnOnce(&mut wgpu::ComputePass),
) -> Vec<f32> {
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        record(&mut pass);
    }
    ctx.queue.submit([encoder.finish()]);
    ctx.read_buffer(act, len).unwrap()
}

/// The activation storages this device runs: f32, and f16 where it has f16 shaders. Every
/// Vulkan driver CI uses (lavapipe, Mesa 25 and 26) has them, so there f16 is required: a test
/// over these storages cannot pass on f32 alone.
pub fn act_storages(ctx: &GpuContext) -> Vec<ActStorage> {
    let f16 = ctx.features.contains(wgpu::Features::SHADER_F16);
    if ctx.info.name.contains("llvmpipe") && ctx.info.backend == wgpu::Backend::Vulkan {
        assert!(
            f16,
            "lavapipe offers f16 shaders: f16 activation storage must run"
        );
    }
    let mut all = vec![ActStorage::F32];
    if f16 {
        all.push(ActStorage::F16);
    }
    all
}

/// An activation buffer over `storage` holding `values` (rounded to f16 for f16 storage).
pub fn act_buffer(ctx: &GpuContext, storage: ActStorage, values: &[f32]) -> wgpu::Buffer {
    ctx.storage_buffer("act", &act_bytes(storage, values))
}

/// `values` as the bytes of an activation buffer over `storage`.
pub fn act_bytes(storage: ActStorage, values: &[f32]) -> Vec<u8> {
    match storage {
        ActStorage::F32 => bytemuck::cast_slice(values).to_vec(),
        ActStorage::F16 => bytemuck::cast_slice(&half_bits(values)).to_vec(),
    }
}

/// `values` as f16 bits, padded to a whole number of words.
pub fn half_bits(values: &[f32]) -> Vec<u16> {
    let mut bits: Vec<u16> = values
        .iter()
        .map(|&x| half::f16::from_f32(x).to_bits())
        .collect();
    bits.resize(values.len().next_multiple_of(2), 0);
    bits
}

/// The raw slots of an f16 activation buffer of `len` slots.
pub fn read_half_bits(ctx: &GpuContext, act: &wgpu::Buffer, len: usize) -> Vec<u16> {
    let words = ctx.read_buffer(act, len.div_ceil(2)).unwrap();
    let mut bits: Vec<u16> = bytemuck::cast_slice(&words).to_vec();
    bits.truncate(len);
    bits
}

/// `values` as stored over `storage` and read back.
pub fn stored(storage: ActStorage, values: &[f32]) -> Vec<f32> {
    values.iter().map(|&x| storage.round(x)).collect()
}

/// Runs one dispatch recorded by `record` over an activation buffer of `storage` and returns
/// its `len` slots afterwards, as f32 values.
pub fn run_on(
    ctx: &GpuContext,
    act: &wgpu::Buffer,
    storage: ActStorage,
    len: usize,
    record: impl FnOnce(&mut wgpu::ComputePass),
) -> Vec<f32> {
    match storage {
        ActStorage::F32 => run(ctx, act, len, record),
        ActStorage::F16 => {
            run(ctx, act, 0, record);
            read_half_bits(ctx, act, len)
                .into_iter()
                .map(|b| half::f16::from_bits(b).to_f32())
                .collect()
        }
    }
}

/// The batch-size uniform of a dispatch over `rows` rows.
pub fn batch_params(rows: usize) -> pepnet_core::gpu::BatchParams {
    pepnet_core::gpu::BatchParams {
        rows: rows as u32,
        _pad: [0; 3],
    }
}

/// A random MMoE mix over one activation row per sample: K experts of a random awkward width
/// side by side, then the T·K logits, then the T mixed outputs, and a few spare columns. Returns
/// the parameters and the row stride.
pub fn random_mix(r: &mut Rng) -> (pepnet_core::gpu::mmoe_mix::MixParams, u32) {
    let (k, t, w) = (
        r.random_range(1..=5u32),
        r.random_range(1..=6u32),
        width(r, 70) as u32,
    );
    let stride = k * w + t * k + t * w + r.random_range(0..4);
    let params = pepnet_core::gpu::mmoe_mix::MixParams {
        experts: k,
        tasks: t,
        width: w,
        x_off: 0,
        x_stride: stride,
        logit_off: k * w,
        logit_stride: stride,
        y_off: k * w + t * k,
        y_stride: stride,
        _pad: [0; 3],
    };
    (params, stride)
}
