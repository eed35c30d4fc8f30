//! Which cached row to evict. Each slot has a priority; the lowest goes first, ties to the lower
//! slot. Priorities only rise between evictions (an access never lowers one), so a lazy
//! min-heap is exact: a popped entry whose priority is stale is pushed back with the current one.
//! An access is O(1); an eviction is amortised O(log slots).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use serde::{Deserialize, Serialize};

use super::frequency::{Frequency, FrequencySketch};

/// How a full cache picks its victim.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvictionPolicy {
    /// The paper's choice: a score per row, its accesses decayed by `decay` per batch
    /// (frequency with recency); the lowest score goes first.
    Score {
        /// Factor an access's weight is multiplied by each batch, in (0, 1].
        decay: f64,
    },
    /// Least recently used.
    Lru,
    /// Least frequently used (accesses since the row entered the cache).
    Lfu,
    /// TinyLFU: rows ranked by their ids' accesses, counted for every id asked for (cached or
    /// not) in a count-min sketch that halves every so often ([`super::frequency`]); memory
    /// proportional to the cache. Ties go to the less recently used.
    TinyLfu,
    /// LFU with every id's accesses counted from the start, also while not cached: the
    /// benchmark's reference, in memory growing with the ids seen.
    PerfectLfu,
}

impl EvictionPolicy {
    /// The score policy with its default decay: an access counts half after ~34 batches.
    pub const DEFAULT_DECAY: f64 = 0.98;

    /// The score policy with [`Self::DEFAULT_DECAY`].
    pub fn score() -> Self {
        EvictionPolicy::Score {
            decay: Self::DEFAULT_DECAY,
        }
    }

    /// Parses `tinylfu`, `score`, `score:<decay>`, `lru`, `lfu` or `perfect-lfu`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "lru" => Ok(EvictionPolicy::Lru),
            "lfu" => Ok(EvictionPolicy::Lfu),
            "tinylfu" => Ok(EvictionPolicy::TinyLfu),
            "perfect-lfu" => Ok(EvictionPolicy::PerfectLfu),
            "score" => Ok(Self::score()),
            _ => match s.strip_prefix("score:").map(str::parse::<f64>) {
                Some(Ok(decay)) if decay > 0.0 && decay <= 1.0 => {
                    Ok(EvictionPolicy::Score { decay })
                }
                _ => Err(format!(
                    "'{s}': expected tinylfu, score, score:<decay in (0, 1]>, lru, lfu or perfect-lfu"
                )),
            },
        }
    }

    /// The policy as [`Self::parse`] reads it (`score:<decay>` with the decay spelled out).
    pub fn name(&self) -> String {
        match self {
            EvictionPolicy::Score { decay } => format!("score:{decay}"),
            EvictionPolicy::Lru => "lru".into(),
            EvictionPolicy::Lfu => "lfu".into(),
            EvictionPolicy::TinyLfu => "tinylfu".into(),
            EvictionPolicy::PerfectLfu => "perfect-lfu".into(),
        }
    }

    /// The access history the policy ranks by, for a cache of `slots` rows; `None` for the
    /// policies that rank cached rows only.
    pub fn frequency(&self, slots: usize) -> Option<Frequency> {
        match self {
            EvictionPolicy::TinyLfu => Some(Frequency::Sketch(FrequencySketch::for_slots(slots))),
            EvictionPolicy::PerfectLfu => Some(Frequency::Exact(Default::default())),
            _ => None,
        }
    }
}

/// A total order on f64 priorities for the heap.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Priority(f64);

impl Eq for Priority {}

impl PartialOrd for Priority {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Priority {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Picks the slot a full cache evicts: a priority per slot and a lazy min-heap over them (see
/// the module comment).
#[derive(Debug, Clone)]
pub struct Evictor {
    policy: EvictionPolicy,
    /// Current priority of each occupied slot; `None` for a free one.
    priority: Vec<Option<f64>>,
    /// Accesses since insertion (LFU's priority).
    count: Vec<u64>,
    /// Bumped when a row enters a slot, so heap entries of its previous row are dropped.
    generation: Vec<u32>,
    /// (priority when pushed, slot, generation): one live entry per occupied slot.
    heap: BinaryHeap<Reverse<(Priority, u32, u32)>>,
    /// −ln(decay), for the score policy's log-domain priority.
    neg_ln_decay: f64,
}

impl Evictor {
    /// An evictor under `policy` for `slots` slots, all free.
    pub fn new(policy: EvictionPolicy, slots: usize) -> Self {
        let neg_ln_decay = match policy {
            EvictionPolicy::Score { decay } => -decay.ln(),
            _ => 0.0,
        };
        Self {
            policy,
            priority: vec![None; slots],
            count: vec![0; slots],
            generation: vec![0; slots],
            heap: BinaryHeap::new(),
            neg_ln_decay,
        }
    }

    /// The score policy keeps ln(Σ_accesses decay^(−batch)): the decayed score of every slot
    /// divided by the same decay^(−now), so comparing slots needs no per-batch decay pass, and
    /// the logarithm keeps it finite for any run length.
    fn raised(&self, slot: u32, batch: u64, accesses: u64) -> f64 {
        let s = slot as usize;
        match self.policy {
            EvictionPolicy::Lru => batch as f64,
            EvictionPolicy::Lfu => self.count[s] as f64,
            // Frequency policies set priorities themselves (`insert_at`, `access_at`).
            EvictionPolicy::TinyLfu | EvictionPolicy::PerfectLfu => self.priority[s].unwrap_or(0.0),
            EvictionPolicy::Score { .. } => {
                let add = (accesses as f64).ln() + batch as f64 * self.neg_ln_decay;
                match self.priority[s] {
                    None => add,
                    Some(p) => {
                        let (hi, lo) = if p > add { (p, add) } else { (add, p) };
                        hi + (lo - hi).exp().ln_1p()
                    }
                }
            }
        }
    }

    /// A row entered `slot` in `batch`, accessed `accesses` times there.
    pub fn insert(&mut self, slot: u32, batch: u64, accesses: u64) {
        let s = slot as usize;
        self.priority[s] = None;
        self.count[s] = accesses;
        let p = self.raised(slot, batch, accesses);
        self.priority[s] = Some(p);
        self.generation[s] = self.generation[s].wrapping_add(1);
        self.heap
            .push(Reverse((Priority(p), slot, self.generation[s])));
    }

    /// `slot` was accessed `accesses` times in `batch`.
    pub fn access(&mut self, slot: u32, batch: u64, accesses: u64) {
        let s = slot as usize;
        self.count[s] += accesses;
        let p = self.raised(slot, batch, accesses);
        self.priority[s] = Some(p);
    }

    /// A row entered `slot` with `priority` (the frequency policies').
    pub fn insert_at(&mut self, slot: u32, priority: f64) {
        let s = slot as usize;
        self.priority[s] = Some(priority);
        self.generation[s] = self.generation[s].wrapping_add(1);
        self.heap
            .push(Reverse((Priority(priority), slot, self.generation[s])));
    }

    /// `slot`'s priority is now `priority` (the frequency policies'). A lower one (a count
    /// halved since) gets its own heap entry; the stale higher one is dropped when popped.
    pub fn access_at(&mut self, slot: u32, priority: f64) {
        let s = slot as usize;
        if self.priority[s].is_some_and(|p| priority < p) {
            self.heap
                .push(Reverse((Priority(priority), slot, self.generation[s])));
        }
        self.priority[s] = Some(priority);
    }

    /// Scales every priority by `factor` (the frequency history halved): the one change that
    /// lowers priorities, so the heap is rebuilt from the current ones.
    pub fn rescale(&mut self, factor: f64) {
        self.heap.clear();
        for (s, p) in self.priority.iter_mut().enumerate() {
            if let Some(p) = p {
                *p *= factor;
                self.heap
                    .push(Reverse((Priority(*p), s as u32, self.generation[s])));
            }
        }
    }

    /// `slot` was freed (expired): it is no longer a candidate.
    pub fn remove(&mut self, slot: u32) {
        self.priority[slot as usize] = None;
    }

    /// The `k` lowest-priority occupied slots for which `pinned` is false, lowest first, taken
    /// out of the candidates; fewer if there are not that many. One call per batch, so pinned
    /// slots are stepped over once, not once per victim.
    pub fn pop_victims(&mut self, k: usize, pinned: impl Fn(u32) -> bool) -> Vec<u32> {
        let mut held = Vec::new();
        let mut victims = Vec::with_capacity(k);
        while victims.len() < k {
            let Some(Reverse((Priority(p), slot, generation))) = self.heap.pop() else {
                break;
            };
            if generation != self.generation[slot as usize] {
                continue; // an entry of a row that has left the slot
            }
            match self.priority[slot as usize] {
                None => continue,
                Some(current) if current != p => {
                    self.heap
                        .push(Reverse((Priority(current), slot, generation)));
                }
                Some(_) if pinned(slot) => held.push(Reverse((Priority(p), slot, generation))),
                Some(_) => {
                    self.priority[slot as usize] = None;
                    victims.push(slot);
                }
            }
        }
        self.heap.extend(held);
        victims
    }

    /// The lowest-priority unpinned slot (see [`Evictor::pop_victims`]).
    pub fn pop_victim(&mut self, pinned: impl Fn(u32) -> bool) -> Option<u32> {
        self.pop_victims(1, pinned).pop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evict_order(policy: EvictionPolicy) -> Vec<u32> {
        let mut e = Evictor::new(policy, 3);
        // Slot 0: 5 accesses long ago; slot 1: 1 access recently; slot 2: 2 accesses, middling.
        e.insert(0, 0, 5);
        e.insert(2, 50, 2);
        e.insert(1, 100, 1);
        (0..3).map(|_| e.pop_victim(|_| false).unwrap()).collect()
    }

    #[test]
    fn policies_order_victims_as_documented() {
        assert_eq!(evict_order(EvictionPolicy::Lru), [0, 2, 1]);
        assert_eq!(evict_order(EvictionPolicy::Lfu), [1, 2, 0]);
        // Decayed scores at batch 100: 5·0.9^100 ≈ 1.3e-4, 2·0.9^50 ≈ 0.01, 1.
        assert_eq!(evict_order(EvictionPolicy::Score { decay: 0.9 }), [0, 2, 1]);
        // Without decay the score is the count: LFU's order.
        assert_eq!(evict_order(EvictionPolicy::Score { decay: 1.0 }), [1, 2, 0]);
    }

    #[test]
    fn accesses_raise_priority_and_pinned_slots_are_skipped() {
        let mut e = Evictor::new(EvictionPolicy::Lru, 3);
        for s in 0..3 {
            e.insert(s, s as u64, 1);
        }
        e.access(0, 10, 1);
        assert_eq!(e.pop_victim(|s| s == 1), Some(2));
        assert_eq!(e.pop_victim(|_| false), Some(1));
        e.remove(0);
        assert_eq!(e.pop_victim(|_| false), None);
    }

    #[test]
    fn policy_names_parse_back() {
        for p in [
            EvictionPolicy::score(),
            EvictionPolicy::Lru,
            EvictionPolicy::Lfu,
        ] {
            assert_eq!(EvictionPolicy::parse(&p.name()), Ok(p));
        }
        assert!(EvictionPolicy::parse("score:2").is_err());
    }
}
