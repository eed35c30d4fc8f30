//! Synthetic inputs for a spec: random batches for benchmarks and examples, and a CSV writer
//! for them, so that any model can be scored without real data (`pepnet gen-input`).

use std::path::Path;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::atomic_file;
use crate::batch::{Batch, Column};
use crate::error::{Error, Result};
use crate::spec::{FeatureKind, ModelSpec};

/// `rows` random samples, the same for the same seed: ids uniform over each vocabulary, lists of
/// every length from empty to `max_len`, dense values uniform in [0, 3).
pub fn random_batch(spec: &ModelSpec, rows: usize, seed: u64) -> Batch {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let columns = spec
        .features
        .iter()
        .map(|f| {
            let vocab = f.rows() as u64;
            match f.kind {
                FeatureKind::Sparse => {
                    Column::Sparse((0..rows).map(|_| rng.random_range(0..vocab)).collect())
                }
                FeatureKind::MultiHot => {
                    let mut offsets = Vec::with_capacity(rows + 1);
                    offsets.push(0);
                    let mut ids = Vec::new();
                    for _ in 0..rows {
                        let len = rng.random_range(0..=f.max_len.unwrap_or(0));
                        ids.extend((0..len).map(|_| rng.random_range(0..vocab)));
                        offsets.push(ids.len());
                    }
                    Column::MultiHot { offsets, ids }
                }
                FeatureKind::Dense => {
                    Column::Dense((0..rows).map(|_| rng.random_range(0.0..3.0)).collect())
                }
            }
        })
        .collect();
    Batch::new(columns)
}

/// Writes a batch as an input CSV for `spec` (header: the feature names), atomically.
pub fn write_csv(spec: &ModelSpec, batch: &Batch, path: &Path) -> Result<()> {
    let tmp = atomic_file::temp_beside(path)?;
    let mut writer = csv::Writer::from_writer(tmp);
    let io = |e: csv::Error| Error::io(path, e.into());
    writer
        .write_record(spec.features.iter().map(|f| f.name.as_str()))
        .map_err(io)?;
    let mut fields = Vec::with_capacity(spec.features.len());
    for i in 0..batch.len() {
        fields.clear();
        for column in &batch.columns {
            fields.push(match column {
                Column::Dense(v) => v[i].to_string(),
                _ => column
                    .ids(i)
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join("|"),
            });
        }
        writer.write_record(&fields).map_err(io)?;
    }
    let tmp = writer
        .into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}
