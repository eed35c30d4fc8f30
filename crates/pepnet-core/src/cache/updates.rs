//! The paper's update policy for live rows: an id's row may be written at most `max_updates`
//! times per window of `window_secs`, and an id whose row has not been written for
//! `expire_after_secs` expires (dropped from the store and the cache). Times are seconds on a
//! clock the caller supplies (Unix time in the CLI), so the policy is testable and replayable.

use std::collections::HashMap;

use crate::store::{Key, UpdatePolicy};

#[derive(Debug, Clone, Copy)]
struct Record {
    window_start: u64,
    in_window: u32,
    last_write: u64,
}

/// Per id, its writes in the current window and its last write.
#[derive(Debug, Clone)]
pub struct UpdateTracker {
    policy: UpdatePolicy,
    records: HashMap<Key, Record>,
}

impl UpdateTracker {
    /// Tracks `keys`, present since `now`.
    pub fn new(policy: UpdatePolicy, keys: impl IntoIterator<Item = Key>, now: u64) -> Self {
        let records = keys
            .into_iter()
            .map(|k| {
                let r = Record {
                    window_start: now,
                    in_window: 0,
                    last_write: now,
                };
                (k, r)
            })
            .collect();
        Self { policy, records }
    }

    /// The policy the tracker enforces.
    pub fn policy(&self) -> &UpdatePolicy {
        &self.policy
    }

    /// Whether `key` may be written at `now`; if so, counts the write.
    pub fn allow(&mut self, key: Key, now: u64) -> bool {
        let mut r = self.records.get(&key).copied().unwrap_or(Record {
            window_start: now,
            in_window: 0,
            last_write: now,
        });
        if now.saturating_sub(r.window_start) >= self.policy.window_secs {
            r.window_start = now;
            r.in_window = 0;
        }
        if self
            .policy
            .max_updates
            .is_some_and(|cap| r.in_window >= cap)
        {
            // Refused: an id never written stays untracked (it is not in the store).
            if let Some(old) = self.records.get_mut(&key) {
                *old = r;
            }
            return false;
        }
        r.in_window += 1;
        r.last_write = now;
        self.records.insert(key, r);
        true
    }

    /// Takes out and returns the ids not written for the expiry time at `now`, sorted.
    pub fn expire(&mut self, now: u64) -> Vec<Key> {
        let Some(after) = self.policy.expire_after_secs else {
            return Vec::new();
        };
        let mut gone: Vec<Key> = self
            .records
            .iter()
            .filter(|(_, r)| now.saturating_sub(r.last_write) >= after)
            .map(|(k, _)| *k)
            .collect();
        gone.sort_unstable();
        for k in &gone {
            self.records.remove(k);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_capped_per_window_and_silent_ids_expire() {
        let policy = UpdatePolicy {
            max_updates: Some(2),
            window_secs: 10,
            expire_after_secs: Some(100),
        };
        let mut t = UpdateTracker::new(policy, [(0, 1), (0, 2)], 0);
        assert!(t.allow((0, 1), 1));
        assert!(t.allow((0, 1), 2));
        assert!(!t.allow((0, 1), 9), "a third write in the window is capped");
        assert!(t.allow((0, 1), 10), "a new window allows writes again");
        assert_eq!(t.expire(99), vec![]);
        assert_eq!(
            t.expire(100),
            vec![(0, 2)],
            "(0, 2) was never written after load"
        );
        assert_eq!(t.expire(110), vec![(0, 1)]);
        assert_eq!(t.expire(1000), vec![]);
        let mut frozen = UpdateTracker::new(
            UpdatePolicy {
                max_updates: Some(0),
                ..policy
            },
            [],
            0,
        );
        assert!(!frozen.allow((1, 9), 5));
        assert_eq!(
            frozen.expire(1000),
            vec![],
            "a refused new id was never stored"
        );
    }
}
