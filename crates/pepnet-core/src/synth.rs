//! Synthetic inputs for a spec: random batches for benchmarks, tests and examples, so that any
//! model can be scored without real data (`pepnet-io` writes them to files).

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::batch::{Batch, Column};
use crate::spec::{FeatureKind, FeatureSpec, ModelSpec};

/// `rows` random samples, the same for the same seed: ids uniform over each vocabulary, lists of
/// every length from empty to `max_len`, dense values uniform in [0, 3).
pub fn random_batch(spec: &ModelSpec, rows: usize, seed: u64) -> Batch {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    sample_features(spec, rows, &mut rng, |rng, f| {
        rng.random_range(0..f.id_space())
    })
}

/// `rows` samples with ids from `id(rng, feature)`, lists of every length from empty to
/// `max_len`, and dense values uniform in [0, 3).
pub fn sample_features(
    spec: &ModelSpec,
    rows: usize,
    rng: &mut ChaCha8Rng,
    mut id: impl FnMut(&mut ChaCha8Rng, &FeatureSpec) -> u64,
) -> Batch {
    let columns = spec
        .features
        .iter()
        .map(|f| match f.kind {
            FeatureKind::Sparse => Column::Sparse((0..rows).map(|_| id(rng, f)).collect()),
            FeatureKind::MultiHot => {
                let mut offsets = Vec::with_capacity(rows + 1);
                offsets.push(0);
                let mut ids = Vec::new();
                for _ in 0..rows {
                    let len = rng.random_range(0..=f.max_len.unwrap_or(0));
                    for _ in 0..len {
                        ids.push(id(rng, f));
                    }
                    offsets.push(ids.len());
                }
                Column::MultiHot { offsets, ids }
            }
            FeatureKind::Dense => {
                Column::Dense((0..rows).map(|_| rng.random_range(0.0..3.0)).collect())
            }
        })
        .collect();
    Batch::new(columns)
}
