//! The byte budget of accepted events on their way to the bus.
//!
//! Between ingest and the bus, events wait in the registry's and the bus's
//! mailboxes, whose bounds count messages, not bytes: 65,536 drafts of the
//! largest allowed payload would be gigabytes. Ingest takes each draft's
//! cost from this budget before the hand-off; the draft carries the permit,
//! and gives it back when the bus numbers it (or when it is dropped on the
//! way). A publisher who outruns the bus meets a full budget and loses its
//! own frames, counted as `overload`, instead of growing the process.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Bytes of drafts in flight, and the most there may be.
#[derive(Debug)]
pub struct InflightBytes {
    used: AtomicUsize,
    limit: usize,
}

impl InflightBytes {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Takes `bytes` if they fit under the limit.
    pub fn try_reserve(self: &Arc<Self>, bytes: usize) -> Option<InflightPermit> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .ok()?;
        Some(InflightPermit {
            budget: self.clone(),
            bytes,
        })
    }

    /// Bytes held by permits now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// A share of the budget; dropping it gives the bytes back.
#[derive(Debug)]
pub struct InflightPermit {
    budget: Arc<InflightBytes>,
    bytes: usize,
}

impl Drop for InflightPermit {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_refuses_what_does_not_fit_and_takes_back_what_is_dropped() {
        let budget = InflightBytes::new(100);
        let a = budget.try_reserve(60).expect("fits");
        assert!(budget.try_reserve(41).is_none(), "60 + 41 > 100");
        let b = budget.try_reserve(40).expect("exactly full");
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        assert!(budget.try_reserve(60).is_some(), "room again");
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn one_draft_larger_than_the_whole_budget_never_fits() {
        let budget = InflightBytes::new(10);
        assert!(budget.try_reserve(11).is_none());
        assert_eq!(budget.used(), 0);
    }
}
