//! A bounded cache of decompressed segments, shared by every reader.
//!
//! Owns memory for reads: at most `budget` bytes, oldest inserted evicted
//! first. N readers of one segment cost one GET and one decompression.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;

#[derive(Debug)]
pub struct SegmentCache {
    budget: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<String, Bytes>,
    order: VecDeque<String>,
    bytes: usize,
}

impl SegmentCache {
    pub fn new(budget: usize) -> Self {
        SegmentCache {
            budget,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn get(&self, key: &str) -> Option<Bytes> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.map.get(key).cloned()
    }

    /// Keep `raw` unless it alone is larger than the budget.
    pub fn insert(&self, key: &str, raw: Bytes) {
        if raw.len() > self.budget {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.map.contains_key(key) {
            return;
        }
        while inner.bytes + raw.len() > self.budget {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some(b) = inner.map.remove(&old) {
                inner.bytes -= b.len();
            }
        }
        inner.bytes += raw.len();
        inner.order.push_back(key.to_string());
        inner.map.insert(key.to_string(), raw);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_oldest_past_the_budget() {
        let c = SegmentCache::new(10);
        c.insert("a", Bytes::from_static(b"12345"));
        c.insert("b", Bytes::from_static(b"12345"));
        c.insert("c", Bytes::from_static(b"123"));
        assert!(c.get("a").is_none());
        assert!(c.get("b").is_some() && c.get("c").is_some());
        c.insert("huge", Bytes::from(vec![0u8; 11]));
        assert!(c.get("huge").is_none());
    }
}
