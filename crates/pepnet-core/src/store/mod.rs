//! The embedding store: where hashed features' rows live on the host, keyed by (feature, id),
//! however many there are. The GPU embedding cache ([`crate::cache`]) fetches from it on a miss
//! and writes live updates through it. [`MemoryStore`] is the default, loaded from the model
//! directory; a networked one (`pepnet-store-redis`, a Redis Cluster) is opened through
//! [`OpenStore`] and shared by many scoring processes.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::spec::ModelSpec;
use crate::weights::Weights;

/// The paper's update policy for live rows (see `cache::updates`): at most `max_updates`
/// writes per id per window of `window_secs`, and expiry after `expire_after_secs` without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdatePolicy {
    /// Writes allowed per id per window; `None`: no cap.
    pub max_updates: Option<u32>,
    /// Length of the cap's window, in seconds.
    pub window_secs: u64,
    /// Seconds without a write after which an id expires; `None`: never.
    pub expire_after_secs: Option<u64>,
}

impl Default for UpdatePolicy {
    fn default() -> Self {
        Self {
            max_updates: None,
            window_secs: 3600,
            expire_after_secs: None,
        }
    }
}

/// One node of a networked store, as its store sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeHealth {
    /// `host:port`.
    pub node: String,
    /// Whether it is skipped now (it missed a deadline and has not answered a probe since).
    pub down: bool,
    /// Keys fetched as unavailable because of it, since the store opened (each distinct key
    /// of a batch's misses once; the cache's `unavailable` counts their occurrences).
    pub unavailable: u64,
}

/// (index of the feature in the spec, raw id).
pub type Key = (u32, u64);

/// What the store said of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    /// Its row was copied out.
    Row,
    /// Its row was copied out, and the store drops it at this Unix second (the update
    /// policy's expiry); the cache drops its copy then too.
    Expires(u64),
    /// The store does not hold it: the id reads its feature's default row.
    Unknown,
    /// The part of the store holding it did not answer, and the store was asked to go on
    /// without it (degraded mode): it reads the default row this time, and is not cached.
    Unavailable,
}

/// Rows by (feature, id). Called only under the cache's lock, so implementations need no
/// locking of their own.
pub trait EmbeddingStore: Send {
    /// Row width (the model's d).
    fn dim(&self) -> usize;

    /// Copies the row of each key into its `dim()` floats of `out` and says what the store
    /// knew of it; rows not found are left as they are. One call per batch's misses, so a
    /// networked store can make one round trip. Fails, naming the part of the store that did
    /// not answer, unless the store degrades to [`Fetched::Unavailable`] instead.
    fn get_many(&mut self, keys: &[Key], out: &mut [f32], found: &mut [Fetched]) -> Result<()>;

    /// Inserts or replaces a row; `false` when a store that keeps the update policy refused it
    /// (the id reached its cap of writes in the window).
    fn put(&mut self, key: Key, row: &[f32]) -> Result<bool>;

    /// Drops a row; says whether it was there.
    fn remove(&mut self, key: Key) -> Result<bool>;

    /// Rows held.
    fn len(&self) -> usize;

    /// Whether the store holds no rows.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every key held, for the expiry bookkeeping of a store that keeps none itself; `None`
    /// for a store that expires rows on its own (a networked one).
    fn keys(&self) -> Option<Vec<Key>>;

    /// The update policy, for a store shared by several processes that keeps it itself (so the
    /// cap and expiry hold across them); `None`: the cache keeps it.
    fn keeps_update_policy(&self) -> Option<UpdatePolicy> {
        None
    }

    /// Keys whose rows other processes wrote since the last call (their cached copies are
    /// stale).
    fn take_changed(&mut self) -> Vec<Key> {
        Vec::new()
    }

    /// The nodes of a networked store, with their health; empty for one in memory.
    fn nodes(&self) -> Vec<NodeHealth> {
        Vec::new()
    }

    /// Whether the whole store changed since the last call (a bulk load into a shared store):
    /// every cached row, and every id cached as unknown, is stale.
    fn take_reloaded(&mut self) -> bool {
        false
    }
}

/// Opens a store for an engine (`cache::StoreSource::Open`): called once per engine built, so
/// that a server's reload opens its own connection to a shared store.
pub trait OpenStore: Send + Sync + std::fmt::Debug {
    /// The store of `spec`'s hashed features.
    fn open(&self, spec: &ModelSpec) -> Result<Box<dyn EmbeddingStore>>;
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
    /// An empty store of rows of `d` floats.
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
                store.insert((f as u32, id), &h.rows[i * d..(i + 1) * d]);
            }
        }
        store
    }
}

impl EmbeddingStore for MemoryStore {
    fn dim(&self) -> usize {
        self.d
    }

    fn get_many(&mut self, keys: &[Key], out: &mut [f32], found: &mut [Fetched]) -> Result<()> {
        let d = self.d;
        for ((key, dst), hit) in keys.iter().zip(out.chunks_exact_mut(d)).zip(found) {
            *hit = match self.index.get(key) {
                Some(&r) => {
                    dst.copy_from_slice(&self.rows[r * d..(r + 1) * d]);
                    Fetched::Row
                }
                None => Fetched::Unknown,
            };
        }
        Ok(())
    }

    fn put(&mut self, key: Key, row: &[f32]) -> Result<bool> {
        self.insert(key, row);
        Ok(true)
    }

    fn remove(&mut self, key: Key) -> Result<bool> {
        Ok(match self.index.remove(&key) {
            Some(r) => {
                self.free.push(r);
                true
            }
            None => false,
        })
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    fn keys(&self) -> Option<Vec<Key>> {
        Some(self.index.keys().copied().collect())
    }
}

impl MemoryStore {
    /// Inserts or replaces a row.
    pub fn insert(&mut self, key: Key, row: &[f32]) {
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
        s.put((0, u64::MAX), &[1.0, 2.0]).unwrap();
        s.put((1, u64::MAX), &[3.0, 4.0]).unwrap();
        s.put((0, u64::MAX), &[5.0, 6.0]).unwrap();
        let mut out = [9.0; 6];
        let mut found = [Fetched::Unavailable; 3];
        s.get_many(
            &[(0, u64::MAX), (2, 7), (1, u64::MAX)],
            &mut out,
            &mut found,
        )
        .unwrap();
        assert_eq!(found, [Fetched::Row, Fetched::Unknown, Fetched::Row]);
        assert_eq!(out, [5.0, 6.0, 9.0, 9.0, 3.0, 4.0]);
        assert!(s.remove((0, u64::MAX)).unwrap());
        assert!(!s.remove((0, u64::MAX)).unwrap());
        s.put((0, 1), &[7.0, 8.0]).unwrap();
        assert_eq!((s.len(), s.rows.len()), (2, 4));
    }
}
