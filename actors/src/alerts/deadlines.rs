//! A min-queue of per-key deadlines, checked lazily: a key is pushed once per
//! deadline cycle, not once per frame. When its deadline comes, the owner
//! looks at the key's real state and either acts or pushes the key again at
//! its new deadline (the mini-redis purge-task shape). One timer, armed for
//! [`Deadlines::next`], serves every key.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

#[derive(Debug)]
pub struct Deadlines<K: Ord> {
    heap: BinaryHeap<Reverse<(u64, K)>>,
}

impl<K: Ord> Default for Deadlines<K> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
        }
    }
}

impl<K: Ord> Deadlines<K> {
    pub fn push(&mut self, at_ms: u64, key: K) {
        self.heap.push(Reverse((at_ms, key)));
    }

    /// The earliest deadline, if any.
    pub fn next(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Takes the earliest key whose deadline is at or before `now_ms`.
    pub fn pop_due(&mut self, now_ms: u64) -> Option<K> {
        if self.next()? > now_ms {
            return None;
        }
        self.heap.pop().map(|Reverse((_, key))| key)
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_out_in_deadline_order_and_only_when_due() {
        let mut d = Deadlines::default();
        d.push(30, "c");
        d.push(10, "a");
        d.push(20, "b");
        assert_eq!(d.next(), Some(10));
        assert_eq!(d.pop_due(5), None);
        assert_eq!(d.pop_due(20), Some("a"));
        assert_eq!(d.pop_due(20), Some("b"));
        assert_eq!(d.pop_due(20), None);
        assert_eq!(d.len(), 1);
        assert_eq!(d.pop_due(u64::MAX), Some("c"));
        assert!(d.is_empty());
    }
}
