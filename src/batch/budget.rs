//! The global memory budget on buffered bytes.
//!
//! Owns one counter: bytes accepted but not yet committed, across all streams.
//! A reservation that would pass the limit is refused (the caller answers
//! 503); nothing already reserved is ever dropped to make room.

use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    events: AtomicUsize,
    limit: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Self {
        Budget {
            used: AtomicUsize::new(0),
            events: AtomicUsize::new(0),
            limit,
        }
    }

    /// Reserve `n` bytes holding `events` events, or refuse if that would
    /// pass the limit.
    pub fn try_reserve(&self, n: usize, events: usize) -> bool {
        let mut current = self.used.load(Ordering::Relaxed);
        loop {
            let next = current.saturating_add(n);
            if next > self.limit {
                return false;
            }
            match self.used.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    let held = self.events.fetch_add(events, Ordering::AcqRel) + events;
                    metrics::gauge!("sluice_buffered_bytes").set(next as f64);
                    metrics::gauge!("sluice_buffered_events").set(held as f64);
                    return true;
                }
                Err(actual) => current = actual,
            }
        }
    }

    pub fn release(&self, n: usize, events: usize) {
        let before = self.used.fetch_sub(n, Ordering::AcqRel);
        let held = self.events.fetch_sub(events, Ordering::AcqRel);
        metrics::gauge!("sluice_buffered_bytes").set(before.saturating_sub(n) as f64);
        metrics::gauge!("sluice_buffered_events").set(held.saturating_sub(events) as f64);
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn refuses_past_the_limit_and_frees_on_release() {
        let b = super::Budget::new(100);
        assert!(b.try_reserve(60, 1));
        assert!(!b.try_reserve(41, 1));
        assert!(b.try_reserve(40, 1));
        b.release(60, 1);
        assert_eq!(b.used(), 40);
        assert!(b.try_reserve(60, 1));
    }
}
