//! The replay ring: the newest events in order, bounded by count and by
//! bytes (the sum of [`Event::heap_bytes`] plus a ring slot each), oldest
//! dropped first.

use std::collections::VecDeque;
use std::mem::size_of;
use std::sync::Arc;

use crate::event::{Event, EventId};

pub struct History {
    ring: VecDeque<Arc<Event>>,
    bytes: usize,
    cap: usize,
    cap_bytes: usize,
}

/// What keeping `event` in the ring costs.
pub fn entry_bytes(event: &Event) -> usize {
    event.heap_bytes() + size_of::<Arc<Event>>()
}

impl History {
    pub fn new(cap: usize, cap_bytes: usize) -> Self {
        Self {
            ring: VecDeque::with_capacity(cap.min(1 << 16)),
            bytes: 0,
            cap,
            cap_bytes,
        }
    }

    pub fn push(&mut self, event: &Arc<Event>) {
        if self.cap == 0 {
            return;
        }
        self.ring.push_back(event.clone());
        self.bytes += entry_bytes(event);
        while self.ring.len() > self.cap || self.bytes > self.cap_bytes {
            let Some(old) = self.ring.pop_front() else {
                break;
            };
            self.bytes -= entry_bytes(&old);
        }
    }

    pub fn front(&self) -> Option<&Arc<Event>> {
        self.ring.front()
    }

    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Event>> {
        self.ring.iter()
    }

    /// The events newer than `id`, oldest first (the ring is in id order).
    pub fn after(&self, id: EventId) -> impl Iterator<Item = &Arc<Event>> {
        let start = self.ring.partition_point(|e| e.id <= id);
        self.ring.range(start..)
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// Sum of [`entry_bytes`] over the ring; never above the byte cap.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Body, Draft};

    fn event(seq: u64) -> Arc<Event> {
        let draft = Draft::new("t", 0, Body::Object(Default::default()));
        Arc::new(Event::from_draft(EventId { epoch: 1, seq }, draft))
    }

    fn seqs(h: &History) -> Vec<u64> {
        h.iter().map(|e| e.id.seq).collect()
    }

    #[test]
    fn the_count_cap_drops_the_oldest() {
        let mut h = History::new(2, usize::MAX);
        for seq in 1..=3 {
            h.push(&event(seq));
        }
        assert_eq!(seqs(&h), vec![2, 3]);
    }

    #[test]
    fn the_byte_cap_drops_the_oldest() {
        // Two-digit sequences: every event has the same size.
        let one = entry_bytes(&event(10));
        let mut h = History::new(100, 3 * one);
        for seq in 10..=19 {
            h.push(&event(seq));
            assert!(h.bytes() <= 3 * one);
        }
        assert_eq!(seqs(&h), vec![17, 18, 19]);
    }

    #[test]
    fn a_zero_cap_keeps_nothing() {
        let mut h = History::new(0, usize::MAX);
        h.push(&event(1));
        assert_eq!(h.len(), 0);
    }
}
