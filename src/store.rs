//! The embedding store: where hashed features' rows live on the host, keyed by (feature, id),
//! however many there are. The GPU embedding cache ([`crate::cache`]) fetches from it on a miss
//! and writes live updates through it. [`MemoryStore`] is the default, loaded from the model
//! directory; [`EmbeddingStore`] is the seam for other backends (a memory-mapped file, a
//! networked key-value store).

use std::collections::HashMap;

use crate::spec::ModelSpec;
use crate::weights::Weights;

/// (index of the feature in the spec, raw id).
pub type Key = (u32, u64);

/// Rows by (feature, id). Called only under the cache's lock, so implementations need no
/// locking of their own.
pub trait EmbeddingStore: Send {
    /// Row width (the model's d).
    fn dim(&self) -> usize;

    /// Copies the row of each key into its `dim()` floats of `out` and says whether the store
    /// knows it; rows of unknown keys are left as they are. One call per batch's misses, so a
    /// networked store can make one round trip.
    fn get_many(&self, keys: &[Key], out: &mut [f32], found: &mut [bool]);

    /// Inserts or replaces a row.
    fn put(&mut self, key: Key, row: &[f32]);

    /// Drops a row; says whether it was there.
    fn remove(&mut self, key: Key) -> bool;

    /// Rows held.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every key held (for expiry bookkeeping at start-up).
    fn keys(&self) -> Vec<Key>;
}

/// Every row in host memory: one `Vec` of rows and an index; removed rows' places are reused.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    d: usize,
    index: HashMap<Key, usize>,
    rows: Vec<f32>,
    free: Vec<usize>,
}

impl MemoryStore {
    pub fn new(d: usize) -> Self {
        Self {
            d,
            ..Default::default()
        }
    }

    /// The hashed features' rows of a model directory's weights.
    pub fn from_weights(spec: &ModelSpec, weights: &Weights) -> Self {
        let d = spec.d();
        let mut store = Self::new(d);
        for (f, feature) in spec.features.iter().enumerate() {
            let Some(h) = weights.hashed(&feature.name) else {
                continue;
            };
            store.index.reserve(h.ids.len());
            for (i, &id) in h.ids.iter().enumerate() {
                store.put((f as u32, id), &h.rows[i * d..(i + 1) * d]);
            }
        }
        store
    }
}

impl EmbeddingStore for MemoryStore {
    fn dim(&self) -> usize {
        self.d
    }

    fn get_many(&self, keys: &[Key], out: &mut [f32], found: &mut [bool]) {
        let d = self.d;
        for ((key, dst), hit) in keys.iter().zip(out.chunks_exact_mut(d)).zip(found) {
            *hit = match self.index.get(key) {
                Some(&r) => {
                    dst.copy_from_slice(&self.rows[r * d..(r + 1) * d]);
                    true
                }
                None => false,
            };
        }
    }

    fn put(&mut self, key: Key, row: &[f32]) {
        let d = self.d;
        let r = match self.index.get(&key) {
            Some(&r) => r,
            None => {
                let r = self.free.pop().unwrap_or_else(|| {
                    self.rows.resize(self.rows.len() + d, 0.0);
                    self.rows.len() / d - 1
                });
                self.index.insert(key, r);
                r
            }
        };
        self.rows[r * d..(r + 1) * d].copy_from_slice(row);
    }

    fn remove(&mut self, key: Key) -> bool {
        match self.index.remove(&key) {
            Some(r) => {
                self.free.push(r);
                true
            }
            None => false,
        }
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    fn keys(&self) -> Vec<Key> {
        self.index.keys().copied().collect()
    }
}

/// Reads a file of new rows for hashed features: for each feature it updates, `emb.<f>.ids`
/// (`[n]`, U64 or I64) and `emb.<f>` (`[n, d]`), as in a model directory. Returns, per feature
/// (spec index), its rows. A tensor that is not a hashed feature's ids or rows is an error that
/// names it.
pub fn read_rows_file(
    path: &std::path::Path,
    spec: &ModelSpec,
) -> crate::error::Result<Vec<(usize, crate::weights::HashedRows)>> {
    let bytes = std::fs::read(path).map_err(|e| crate::error::Error::io(path, e))?;
    read_rows(&bytes, &path.display().to_string(), spec)
}

/// As [`read_rows_file`], from the file's bytes; `file` names them in errors.
pub fn read_rows(
    bytes: &[u8],
    file: &str,
    spec: &ModelSpec,
) -> crate::error::Result<Vec<(usize, crate::weights::HashedRows)>> {
    use crate::error::Error;
    use crate::weights::HashedRows;
    let file = file.to_string();
    let st = crate::weights::parse_safetensors(bytes, &file)?;
    let mut out = Vec::new();
    let mut known = Vec::new();
    for (f, feature) in spec.features.iter().enumerate().filter(|(_, f)| f.hashed) {
        let [ids, rows, _] = HashedRows::tensor_names(&feature.name);
        if st.tensor(&ids).is_err() && st.tensor(&rows).is_err() {
            continue;
        }
        let table =
            HashedRows::read(&st, &feature.name, spec.d()).map_err(|(tensor, message)| {
                Error::Tensor {
                    file: file.clone(),
                    tensor,
                    message,
                }
            })?;
        known.extend([ids, rows]);
        out.push((f, table));
    }
    let mut names = st.names();
    names.sort_unstable();
    if let Some(name) = names.into_iter().find(|n| !known.iter().any(|k| k == *n)) {
        return Err(Error::Tensor {
            file,
            tensor: name.to_string(),
            message: "not the ids or rows of a hashed feature of this model \
                      (expected emb.<feature>.ids and emb.<feature>)"
                .into(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_removed_places_are_reused() {
        let mut s = MemoryStore::new(2);
        s.put((0, u64::MAX), &[1.0, 2.0]);
        s.put((1, u64::MAX), &[3.0, 4.0]);
        s.put((0, u64::MAX), &[5.0, 6.0]);
        let mut out = [9.0; 6];
        let mut found = [false; 3];
        s.get_many(
            &[(0, u64::MAX), (2, 7), (1, u64::MAX)],
            &mut out,
            &mut found,
        );
        assert_eq!(found, [true, false, true]);
        assert_eq!(out, [5.0, 6.0, 9.0, 9.0, 3.0, 4.0]);
        assert!(s.remove((0, u64::MAX)));
        assert!(!s.remove((0, u64::MAX)));
        s.put((0, 1), &[7.0, 8.0]);
        assert_eq!((s.len(), s.rows.len()), (2, 4));
    }
}
