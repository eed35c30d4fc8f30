//! A one-shot reply: a result one thread delivers to a caller that either blocks for it or
//! awaits it, on any async runtime (the waker is the caller's own).

use std::sync::{Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// Where one result is delivered.
pub(crate) struct Reply<T> {
    slot: Mutex<Slot<T>>,
    ready: Condvar,
}

struct Slot<T> {
    result: Option<T>,
    waker: Option<Waker>,
}

impl<T> Default for Reply<T> {
    fn default() -> Self {
        Self {
            slot: Mutex::new(Slot {
                result: None,
                waker: None,
            }),
            ready: Condvar::new(),
        }
    }
}

impl<T> Reply<T> {
    fn lock(&self) -> MutexGuard<'_, Slot<T>> {
        // Nothing panics while holding the slot; if something did, the slot is still whole.
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Delivers the result and wakes the caller, blocked or awaiting.
    pub fn send(&self, result: T) {
        let mut slot = self.lock();
        slot.result = Some(result);
        if let Some(w) = slot.waker.take() {
            w.wake();
        }
        self.ready.notify_all();
    }

    /// Blocks until the result is delivered, or `deadline` passes (then `None`).
    pub fn wait(&self, deadline: Option<Instant>) -> Option<T> {
        let mut slot = self.lock();
        loop {
            if let Some(result) = slot.result.take() {
                return Some(result);
            }
            slot = match deadline {
                None => self.ready.wait(slot).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    (self.ready.wait_timeout(slot, left))
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    /// The result if delivered, else registers the caller's waker.
    pub fn poll(&self, cx: &mut Context<'_>) -> Poll<T> {
        let mut slot = self.lock();
        match slot.result.take() {
            Some(result) => Poll::Ready(result),
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
