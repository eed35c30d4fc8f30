//! A columnar batch of samples: one column per feature, in spec order. This is what the library
//! API scores and what the input readers produce.

use crate::error::{Error, Result};
use crate::spec::{FeatureKind, FeatureSpec, ModelSpec};

/// The values of one feature for every sample of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    /// One id per sample.
    Sparse(Vec<u64>),
    /// Sample `i`'s ids are `ids[offsets[i]..offsets[i + 1]]`; `offsets` has one more entry
    /// than there are samples and starts at 0.
    MultiHot {
        /// Start of each sample's ids in `ids`, then their total count.
        offsets: Vec<usize>,
        /// Every sample's ids, one after another.
        ids: Vec<u64>,
    },
    /// One number per sample.
    Dense(Vec<f32>),
}

impl Column {
    /// Number of samples.
    pub fn len(&self) -> usize {
        match self {
            Column::Sparse(v) => v.len(),
            Column::MultiHot { offsets, .. } => offsets.len().saturating_sub(1),
            Column::Dense(v) => v.len(),
        }
    }

    /// Whether the column holds no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn kind(&self) -> FeatureKind {
        match self {
            Column::Sparse(_) => FeatureKind::Sparse,
            Column::MultiHot { .. } => FeatureKind::MultiHot,
            Column::Dense(_) => FeatureKind::Dense,
        }
    }

    /// Ids of sample `i` (sparse and multi-hot columns).
    pub fn ids(&self, i: usize) -> &[u64] {
        match self {
            Column::Sparse(v) => std::slice::from_ref(&v[i]),
            Column::MultiHot { offsets, ids } => &ids[offsets[i]..offsets[i + 1]],
            Column::Dense(_) => &[],
        }
    }
}

/// A batch whose every value an input reader (a file reader, a request decoder) has checked
/// against a spec, named by [`spec_id`]: an engine or batcher of the same spec takes it without
/// checking it again ([`crate::Engine::score_checked`], [`crate::Batcher::submit_checked`]).
/// Only the readers make one, and it cannot be changed.
#[derive(Debug, Clone)]
pub struct CheckedBatch {
    batch: Batch,
    spec_id: u64,
}

impl CheckedBatch {
    /// A batch an input reader has checked value by value ([`check_ids`], [`check_dense`])
    /// against the spec of `spec_id`. For readers only: an engine trusts it.
    pub fn from_reader(batch: Batch, spec_id: u64) -> Self {
        Self { batch, spec_id }
    }

    /// Samples `rows` (indices into this batch), still checked.
    pub fn take(&self, rows: &[usize]) -> Self {
        Self {
            batch: self.batch.take(rows),
            spec_id: self.spec_id,
        }
    }

    /// The checked batch, to read.
    pub fn batch(&self) -> &Batch {
        &self.batch
    }

    /// The batch itself, no longer marked checked.
    pub fn into_batch(self) -> Batch {
        self.batch
    }

    /// The [`spec_id`] of the spec the values were checked against.
    pub fn spec_id(&self) -> u64 {
        self.spec_id
    }
}

/// A fingerprint of a spec: equal for specs that check values alike (a hash of its JSON).
pub fn spec_id(spec: &ModelSpec) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(spec)
        .expect("a spec always serialises")
        .hash(&mut h);
    h.finish()
}

/// Samples in columns, one per feature of the spec, in spec order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Batch {
    /// One column per feature, in spec order, all of the same length.
    pub columns: Vec<Column>,
}

impl Batch {
    /// A batch of `columns`, unchecked: scoring checks them against the spec.
    pub fn new(columns: Vec<Column>) -> Self {
        Self { columns }
    }

    /// Number of samples (0 for a batch with no columns).
    pub fn len(&self) -> usize {
        self.columns.first().map_or(0, Column::len)
    }

    /// Whether the batch holds no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Samples `range` as a batch of their own.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Batch {
        let columns = self
            .columns
            .iter()
            .map(|c| match c {
                Column::Sparse(v) => Column::Sparse(v[range.clone()].to_vec()),
                Column::Dense(v) => Column::Dense(v[range.clone()].to_vec()),
                Column::MultiHot { offsets, ids } => {
                    let first = offsets[range.start];
                    Column::MultiHot {
                        offsets: offsets[range.start..=range.end]
                            .iter()
                            .map(|o| o - first)
                            .collect(),
                        ids: ids[first..offsets[range.end]].to_vec(),
                    }
                }
            })
            .collect();
        Batch { columns }
    }

    /// The samples at `indices`, in that order, as a batch of their own (a shuffled
    /// training batch).
    pub fn take(&self, indices: &[usize]) -> Batch {
        let columns = self
            .columns
            .iter()
            .map(|c| match c {
                Column::Sparse(v) => Column::Sparse(indices.iter().map(|&i| v[i]).collect()),
                Column::Dense(v) => Column::Dense(indices.iter().map(|&i| v[i]).collect()),
                Column::MultiHot { .. } => {
                    let mut offsets = Vec::with_capacity(indices.len() + 1);
                    let mut ids = Vec::new();
                    offsets.push(0);
                    for &i in indices {
                        ids.extend_from_slice(c.ids(i));
                        offsets.push(ids.len());
                    }
                    Column::MultiHot { offsets, ids }
                }
            })
            .collect();
        Batch { columns }
    }

    /// Appends `other`'s samples (a batch of the same features).
    pub fn append(&mut self, other: &Batch) {
        if self.columns.is_empty() {
            self.columns = other.columns.clone();
            return;
        }
        for (c, o) in self.columns.iter_mut().zip(&other.columns) {
            match (c, o) {
                (Column::Sparse(v), Column::Sparse(w)) => v.extend_from_slice(w),
                (Column::Dense(v), Column::Dense(w)) => v.extend_from_slice(w),
                (
                    Column::MultiHot { offsets, ids },
                    Column::MultiHot {
                        offsets: o_off,
                        ids: o_ids,
                    },
                ) => {
                    let base = ids.len();
                    ids.extend_from_slice(o_ids);
                    offsets.extend(o_off[1..].iter().map(|o| o + base));
                }
                _ => panic!("appending a batch of other column kinds"),
            }
        }
    }

    /// Checks the batch against the spec: one column per feature of the right kind and length,
    /// ids in `[0, vocab)`, lists no longer than `max_len`, dense values finite. Errors name
    /// `source` and the 1-based row `first_row + i`, so readers can report file positions.
    pub fn validate(&self, spec: &ModelSpec, source: &str, first_row: usize) -> Result<()> {
        if self.columns.len() != spec.features.len() {
            return Err(Error::Batch(format!(
                "expected {} columns (one per feature), found {}",
                spec.features.len(),
                self.columns.len()
            )));
        }
        let n = self.len();
        for (f, col) in spec.features.iter().zip(&self.columns) {
            if col.kind() != f.kind {
                return Err(Error::Batch(format!(
                    "column '{}': expected a {:?} column, found {:?}",
                    f.name,
                    f.kind,
                    col.kind()
                )));
            }
            if col.len() != n {
                return Err(Error::Batch(format!(
                    "column '{}': expected {n} samples (as the first column), found {}",
                    f.name,
                    col.len()
                )));
            }
            if let Column::MultiHot { offsets, ids } = col {
                if offsets.first() != Some(&0)
                    || offsets.last() != Some(&ids.len())
                    || offsets.windows(2).any(|w| w[0] > w[1])
                {
                    return Err(Error::Batch(format!(
                        "column '{}': offsets must rise from 0 to the number of ids ({})",
                        f.name,
                        ids.len()
                    )));
                }
            }
            // One pass over the column's values (the common case: all fit); only a column
            // with a value that does not is read again sample by sample, for the message.
            if column_fits(f, col) {
                continue;
            }
            for i in 0..n {
                let checked = match col {
                    Column::Dense(v) => check_dense(v[i]),
                    _ => check_ids(f, col.ids(i)),
                };
                checked.map_err(|message| Error::Input {
                    source_name: source.to_string(),
                    row: first_row + i,
                    column: f.name.clone(),
                    message,
                })?;
            }
        }
        Ok(())
    }
}

/// Whether every value of `col` fits feature `f`: [`check_ids`] and [`check_dense`] over the
/// whole column at once.
fn column_fits(f: &FeatureSpec, col: &Column) -> bool {
    let space = f.id_space();
    let ids_fit = |ids: &[u64]| f.hashed || ids.iter().all(|&id| id < space);
    match col {
        Column::Dense(v) => v.iter().all(|x| x.is_finite()),
        Column::Sparse(ids) => ids_fit(ids),
        Column::MultiHot { offsets, ids } => {
            let short = f
                .max_len
                .is_none_or(|m| offsets.windows(2).all(|w| w[1] - w[0] <= m));
            short && ids_fit(ids)
        }
    }
}

/// Why one sample's ids do not fit feature `f` (sparse or multi-hot), if they do not.
pub fn check_ids(f: &FeatureSpec, ids: &[u64]) -> std::result::Result<(), String> {
    if let Some(max_len) = f.max_len {
        if ids.len() > max_len {
            return Err(format!(
                "list of {} ids is longer than max_len {max_len}",
                ids.len()
            ));
        }
    }
    if f.hashed {
        return Ok(());
    }
    let vocab = f.id_space();
    match ids.iter().find(|&&id| id >= vocab) {
        Some(id) => Err(format!("id {id} is outside [0, {vocab})")),
        None => Ok(()),
    }
}

/// Why a dense value does not fit, if it does not.
pub fn check_dense(x: f32) -> std::result::Result<(), String> {
    if x.is_finite() {
        Ok(())
    } else {
        Err(format!("value {x} is not a finite number"))
    }
}
