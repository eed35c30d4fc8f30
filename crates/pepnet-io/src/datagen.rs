//! A synthetic multi-domain, multi-task impression log whose labels come from a known process,
//! with the true probabilities written beside them, so the best achievable AUC is known
//! (`pepnet gen-data`; the process is documented in docs/data.md).
//!
//! Every id of every sparse or multi-hot feature has a latent interest vector in R^K; a sample's
//! interest is the sum of its features' vectors (pooled like the model pools them) plus its dense
//! values times per-feature directions. Its domain re-weights that interest component-wise; each
//! task reads it along its own direction; each user adds a per-task propensity; each task has its
//! own base rate (sparsity):
//!
//! ```text
//! logit_t = b_t + δ_{d,t} + π_{u,t} + a_t · (w_d ⊙ h) / √F      p_t = σ(logit_t),  label_t ~ Bernoulli(p_t)
//! ```

use std::path::Path;

use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::synth;
use pepnet_core::batch::{Batch, Column};
use pepnet_core::error::Result;
use pepnet_core::spec::{FeatureKind, ModelSpec, Pooling, Role};
use pepnet_core::synth::sample_features;

/// Width of the latent interest vectors.
pub const LATENT: usize = 8;

/// Base rate of task t: 0.3 · 0.45^t (the first task is common, later ones ever sparser).
pub fn base_rate(task: usize) -> f64 {
    0.3 * 0.45f64.powi(task as i32)
}

/// A stream that drifts (`pepnet gen-data --drift`): time is the row's index in the stream.
///
/// - Item popularity moves: every sparse or multi-hot id other than the user's and the
///   domain's is shifted by ⌊(vocab / 4) · t / period⌋ (mod vocab), so the popular head of
///   each vocabulary moves a quarter of the way along it every period.
/// - User interests move: the user's latent vector turns from one draw to an independent
///   other, `cos θ · z + sin θ · z'` with θ = (π/2) · t / period, and on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drift {
    /// Rows per period.
    pub period: u64,
    /// The index of the file's first row in the stream (files of one stream continue it).
    pub start: u64,
}

/// The hidden parameters, each drawn from its own seeded stream so that any id's vector is the
/// same wherever it is needed, without tables.
struct Process {
    seed: u64,
    user_feature: Option<usize>,
    domain_feature: usize,
    task_directions: Vec<[f64; LATENT]>,
    drift: Option<Drift>,
}

/// A stream keyed by (seed, what, a, b).
fn stream(seed: u64, what: u64, a: u64, b: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    for (chunk, v) in key.chunks_exact_mut(8).zip([seed, what, a, b]) {
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

/// A standard normal (Box–Muller).
fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn vector(rng: &mut impl Rng, scale: f64) -> [f64; LATENT] {
    std::array::from_fn(|_| normal(rng) * scale)
}

impl Process {
    fn new(spec: &ModelSpec, seed: u64) -> Self {
        let sparse = |f: &&pepnet_core::spec::FeatureSpec| f.kind == FeatureKind::Sparse;
        let user_feature = spec
            .features
            .iter()
            .position(|f| sparse(&f) && f.has_role(Role::Prior))
            .or_else(|| {
                spec.features
                    .iter()
                    .position(|f| sparse(&f) && f.has_role(Role::General))
            });
        let domain_feature = spec
            .features
            .iter()
            .position(|f| f.name == spec.domain_feature)
            .expect("validated");
        let task_directions = (0..spec.n_tasks())
            .map(|t| {
                let v = vector(&mut stream(seed, 1, t as u64, 0), 1.0);
                let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
                v.map(|x| 1.5 * x / norm)
            })
            .collect();
        Self {
            seed,
            user_feature,
            domain_feature,
            task_directions,
            drift: None,
        }
    }

    /// The latent vector of id `id` of feature `f` at time `t`: the user's turns under drift.
    fn interest_at(&self, f: usize, id: u64, t: u64) -> [f64; LATENT] {
        let z = self.interest(f, id);
        match self.drift {
            Some(drift) if Some(f) == self.user_feature => {
                let theta = std::f64::consts::FRAC_PI_2 * t as f64 / drift.period as f64;
                let other = vector(
                    &mut stream(self.seed, 7, f as u64, id),
                    (1.0 / LATENT as f64).sqrt(),
                );
                std::array::from_fn(|k| theta.cos() * z[k] + theta.sin() * other[k])
            }
            _ => z,
        }
    }

    /// Shifts the ids of sample `i` (at time `t`) of every feature but the user's and the
    /// domain's, under drift.
    fn move_popularity(&self, spec: &ModelSpec, batch: &mut Batch, i: usize, t: u64) {
        let Some(drift) = self.drift else { return };
        for (f, column) in batch.columns.iter_mut().enumerate() {
            if f == self.domain_feature || Some(f) == self.user_feature {
                continue;
            }
            let vocab = id_space(&spec.features[f]);
            let shift =
                ((vocab / 4) as u128 * t as u128 / drift.period as u128) as u64 % vocab.max(1);
            let ids = match column {
                Column::Sparse(v) => &mut v[i..i + 1],
                Column::MultiHot { offsets, ids } => &mut ids[offsets[i]..offsets[i + 1]],
                Column::Dense(_) => continue,
            };
            ids.iter_mut().for_each(|id| *id = (*id + shift) % vocab);
        }
    }

    /// Latent vector of id `id` of feature `f` (or of dense feature f's direction).
    fn interest(&self, f: usize, id: u64) -> [f64; LATENT] {
        vector(
            &mut stream(self.seed, 2, f as u64, id),
            (1.0 / LATENT as f64).sqrt(),
        )
    }

    /// Domain d's positive re-weighting of the interest components.
    fn domain_weights(&self, d: u64) -> [f64; LATENT] {
        vector(&mut stream(self.seed, 3, d, 0), 0.7).map(f64::exp)
    }

    /// Domain d's shift of task t's base rate.
    fn domain_offset(&self, d: u64, t: usize) -> f64 {
        0.3 * normal(&mut stream(self.seed, 4, d, t as u64))
    }

    /// User u's propensity for task t.
    fn propensity(&self, u: u64, t: usize) -> f64 {
        0.6 * normal(&mut stream(self.seed, 5, u, t as u64))
    }

    /// The T true probabilities of sample i, at time t.
    fn probabilities(&self, spec: &ModelSpec, batch: &Batch, i: usize, t: u64) -> Vec<f64> {
        let mut h = [0.0; LATENT];
        let mut contributing = 0usize;
        for (f, (feature, column)) in spec.features.iter().zip(&batch.columns).enumerate() {
            if f == self.domain_feature {
                continue;
            }
            contributing += 1;
            match column {
                Column::Dense(v) => {
                    let dir = self.interest(f, u64::MAX);
                    h.iter_mut()
                        .zip(dir)
                        .for_each(|(a, b)| *a += v[i] as f64 * b);
                }
                _ => {
                    let ids = column.ids(i);
                    let scale = match feature.pooling {
                        Some(Pooling::Mean) if !ids.is_empty() => 1.0 / ids.len() as f64,
                        _ => 1.0,
                    };
                    for &id in ids {
                        let z = self.interest_at(f, id, t);
                        h.iter_mut().zip(z).for_each(|(a, b)| *a += scale * b);
                    }
                }
            }
        }
        // Unit-scale interest whatever the number of features.
        let norm = (contributing.max(1) as f64).sqrt();
        h.iter_mut().for_each(|x| *x /= norm);
        let d = batch.columns[self.domain_feature].ids(i)[0];
        let w = self.domain_weights(d);
        let user = self.user_feature.map(|f| batch.columns[f].ids(i)[0]);
        (0..spec.n_tasks())
            .map(|t| {
                let b = (base_rate(t) / (1.0 - base_rate(t))).ln();
                let interest: f64 = (0..LATENT)
                    .map(|k| self.task_directions[t][k] * w[k] * h[k])
                    .sum();
                let logit = b
                    + self.domain_offset(d, t)
                    + user.map_or(0.0, |u| self.propensity(u, t))
                    + interest;
                1.0 / (1.0 + (-logit).exp())
            })
            .collect()
    }
}

/// Features of `rows` impressions: ids log-uniform over each vocabulary (a few popular ids, a
/// long tail), the domain uniform, lists of every length, dense values in [0, 3).
fn features(spec: &ModelSpec, rows: usize, rng: &mut ChaCha8Rng) -> Batch {
    sample_features(spec, rows, rng, |rng, f| {
        let vocab = id_space(f);
        if f.name == spec.domain_feature {
            rng.random_range(0..vocab)
        } else {
            let x = (vocab as f64 + 1.0).powf(rng.random_range(0.0..1.0)) - 1.0;
            x.floor().min(vocab as f64 - 1.0) as u64
        }
    })
}

/// Writes `rows` labelled impressions for `spec` to `path` (CSV or Parquet by extension): the
/// features, then one 0/1 label column per task (named by the task), then `p_<task>`, the true
/// probability. `world` seeds the hidden process, `seed` the sampling: files of one world with
/// different seeds are independent samples of the same behaviour (a training and a validation
/// set). The same world and seed give the same file.
pub fn write(spec: &ModelSpec, rows: usize, world: u64, seed: u64, path: &Path) -> Result<()> {
    write_drifting(spec, rows, world, seed, None, path)
}

/// As [`write`], the rows at times `drift.start ..` of a drifting stream (see [`Drift`]);
/// without `drift`, exactly [`write`]'s file.
pub fn write_drifting(
    spec: &ModelSpec,
    rows: usize,
    world: u64,
    seed: u64,
    drift: Option<Drift>,
    path: &Path,
) -> Result<()> {
    let mut process = Process::new(spec, world);
    process.drift = drift;
    let start = drift.map_or(0, |d| d.start);
    let t_count = spec.n_tasks();
    let mut extra: Vec<String> = spec.tasks.clone();
    extra.extend(spec.tasks.iter().map(|t| format!("p_{t}")));
    let chunks = (0..rows.div_ceil(synth::CHUNK).max(1) as u64).map(|c| {
        let n = (rows - (c as usize * synth::CHUNK).min(rows)).min(synth::CHUNK);
        let mut rng = stream(seed, 6, c, 0);
        let mut batch = features(spec, n, &mut rng);
        let mut columns = vec![Vec::with_capacity(n); 2 * t_count];
        for i in 0..n {
            let t = start + c * synth::CHUNK as u64 + i as u64;
            process.move_popularity(spec, &mut batch, i, t);
            let p = process.probabilities(spec, &batch, i, t);
            for (t, &pt) in p.iter().enumerate() {
                let label = rng.random_range(0.0..1.0) < pt;
                columns[t].push(label as u8 as f32);
                columns[t_count + t].push(pt as f32);
            }
        }
        raw_ids(spec, &mut batch);
        (batch, columns)
    });
    synth::write_rows(spec, &extra, chunks, path)
}

/// Ids a hashed feature's impressions draw from (it has no vocabulary to size them).
pub const HASHED_IDS: u64 = 50_000;

/// How many ids feature `f` draws from: its vocabulary, or [`HASHED_IDS`] when it is hashed.
fn id_space(f: &pepnet_core::spec::FeatureSpec) -> u64 {
    match f.hashed {
        true => HASHED_IDS,
        false => f.rows() as u64,
    }
}

/// Hashed features' ids written as raw 64-bit ids, as a production log holds them: each index
/// the hidden process used mapped through a fixed mix (SplitMix64's finaliser, salted by the
/// feature's name), so that they spread over all 64 bits, one to one.
fn raw_ids(spec: &ModelSpec, batch: &mut Batch) {
    for (f, column) in batch.columns.iter_mut().enumerate() {
        let feature = &spec.features[f];
        if !feature.hashed {
            continue;
        }
        let salt = feature.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        });
        let ids = match column {
            Column::Sparse(v) => v,
            Column::MultiHot { ids, .. } => ids,
            Column::Dense(_) => continue,
        };
        ids.iter_mut().for_each(|id| *id = raw_id(*id, salt));
    }
}

/// SplitMix64's finaliser of `index ^ salt`: a bijection of u64.
fn raw_id(index: u64, salt: u64) -> u64 {
    let mut z = index ^ salt;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
