//! The host's mirror of the GPU hash table that maps (feature, id) to a cache slot. The GPU
//! only reads it (`shaders/resolve.wgsl` probes it for every id of a batch); the host changes
//! it on misses, evictions, expiry and live updates, and records which entries changed so that
//! one scatter dispatch applies them. Both sides hash and probe identically.
//!
//! Open addressing with linear probing; deletions leave tombstones, so a change touches one
//! entry and a concurrent probe chain is never broken. The table has at least twice as many
//! entries as the cache has slots (live load ≤ ½) and is rebuilt when tombstones push the
//! occupied share past ¾.

/// An entry: (tag, id low word, id high word, slot), as `resolve.wgsl` reads it.
pub type Entry = [u32; 4];

/// Tag of a never-used entry: ends every probe chain.
pub const EMPTY: u32 = 0;
/// Tag of a deleted entry: probes pass over it.
pub const TOMBSTONE: u32 = u32::MAX;

/// lowbias32, as in `resolve.wgsl`.
fn mix(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// Where the probe for (tag, id) starts, before masking.
pub fn hash(tag: u32, id: u64) -> u32 {
    mix(id as u32 ^ mix((id >> 32) as u32 ^ mix(tag)))
}

/// The tag of spec feature `feature`.
pub fn tag(feature: usize) -> u32 {
    feature as u32 + 1
}

/// The host's copy of the GPU hash table, with the changes not yet uploaded.
#[derive(Debug, Clone)]
pub struct HostTable {
    entries: Vec<Entry>,
    live: usize,
    tombstones: usize,
    /// Entries changed since the last [`HostTable::take_changes`].
    dirty: Vec<u32>,
    /// The whole table changed (a rebuild): upload it all.
    rebuilt: bool,
}

impl HostTable {
    /// A table for `slots` live entries: the next power of two ≥ 2·slots entries (at least 2).
    pub fn new(slots: usize) -> Self {
        let size = Self::size_for(slots);
        Self {
            entries: vec![[EMPTY; 4]; size],
            live: 0,
            tombstones: 0,
            dirty: Vec::new(),
            rebuilt: true,
        }
    }

    /// Entries of a table for `slots` live entries.
    pub fn size_for(slots: usize) -> usize {
        (2 * slots).next_power_of_two().max(2)
    }

    /// Every entry, in GPU order (for a full upload).
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Entries − 1 (the size is a power of two): masks a hash to an entry index.
    pub fn mask(&self) -> u32 {
        (self.entries.len() - 1) as u32
    }

    fn probe(&self, tag: u32, id: u64) -> impl Iterator<Item = usize> + '_ {
        let start = hash(tag, id) as usize;
        let mask = self.entries.len() - 1;
        (0..self.entries.len()).map(move |p| (start + p) & mask)
    }

    fn matches(e: &Entry, tag: u32, id: u64) -> bool {
        e[0] == tag && e[1] == id as u32 && e[2] == (id >> 32) as u32
    }

    /// The entry index holding (tag, id), if any.
    fn position(&self, tag: u32, id: u64) -> Option<usize> {
        for i in self.probe(tag, id) {
            let e = &self.entries[i];
            if e[0] == EMPTY {
                return None;
            }
            if Self::matches(e, tag, id) {
                return Some(i);
            }
        }
        None
    }

    /// The slot of (tag, id), if cached.
    pub fn get(&self, tag: u32, id: u64) -> Option<u32> {
        self.position(tag, id).map(|i| self.entries[i][3])
    }

    /// Maps (tag, id), which must not be present, to `slot`.
    pub fn insert(&mut self, tag: u32, id: u64, slot: u32) {
        debug_assert!(self.get(tag, id).is_none(), "inserted twice");
        if (self.live + self.tombstones + 1) * 4 > self.entries.len() * 3 {
            self.rebuild();
        }
        let i = self
            .probe(tag, id)
            .find(|&i| matches!(self.entries[i][0], EMPTY | TOMBSTONE))
            .expect("the table is never full");
        if self.entries[i][0] == TOMBSTONE {
            self.tombstones -= 1;
        }
        self.entries[i] = [tag, id as u32, (id >> 32) as u32, slot];
        self.live += 1;
        self.dirty.push(i as u32);
    }

    /// Unmaps (tag, id); returns its slot if it was there.
    pub fn remove(&mut self, tag: u32, id: u64) -> Option<u32> {
        let i = self.position(tag, id)?;
        let slot = self.entries[i][3];
        self.entries[i] = [TOMBSTONE, 0, 0, 0];
        self.live -= 1;
        self.tombstones += 1;
        self.dirty.push(i as u32);
        Some(slot)
    }

    /// Re-inserts every live entry into a fresh array, dropping the tombstones.
    fn rebuild(&mut self) {
        let fresh = vec![[EMPTY; 4]; self.entries.len()];
        let old = std::mem::replace(&mut self.entries, fresh);
        self.live = 0;
        self.tombstones = 0;
        for e in old
            .into_iter()
            .filter(|e| !matches!(e[0], EMPTY | TOMBSTONE))
        {
            let id = e[1] as u64 | (e[2] as u64) << 32;
            let i = self
                .probe(e[0], id)
                .find(|&i| self.entries[i][0] == EMPTY)
                .expect("the table is never full");
            self.entries[i] = e;
            self.live += 1;
        }
        self.rebuilt = true;
    }

    /// What changed since the last call: `None` when the whole table must be uploaded, else the
    /// changed entries' indices (each once, ascending).
    pub fn take_changes(&mut self) -> Option<Vec<u32>> {
        let mut dirty = std::mem::take(&mut self.dirty);
        if std::mem::take(&mut self.rebuilt) {
            return None;
        }
        dirty.sort_unstable();
        dirty.dedup();
        Some(dirty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_and_rebuild_keep_every_live_key_findable() {
        let mut t = HostTable::new(64);
        let _ = t.take_changes();
        let mut live: Vec<((u32, u64), u32)> = Vec::new();
        // Keys that differ only in the high word or the tag; removals interleave with inserts.
        for round in 0..2000u64 {
            if live.len() == 64 || (round % 3 == 0 && !live.is_empty()) {
                let ((tg, id), slot) = live.swap_remove((round as usize * 31) % live.len());
                assert_eq!(t.remove(tg, id), Some(slot));
                assert_eq!(t.get(tg, id), None);
            } else {
                let key = (tag((round % 3) as usize), (round << 32) | (round % 5));
                if t.get(key.0, key.1).is_none() {
                    t.insert(key.0, key.1, round as u32);
                    live.push((key, round as u32));
                }
            }
            for &((tg, id), slot) in &live {
                assert_eq!(t.get(tg, id), Some(slot));
            }
        }
        assert!(
            t.take_changes().is_none(),
            "2000 changes to 128 entries must rebuild"
        );
        assert_eq!(t.get(9, 12345), None);
    }
}
