//! Security digests: attacker events are not posted one by one. The first
//! observation of an attacker opens a window of `window`; when it closes, one
//! roll-up ("N observations across K primitives in the last W, score S")
//! goes out, so each attacker is posted at most once per window. The raw
//! stream stays on the bus for dashboards. Pure: time is an argument.
//!
//! Attacker ids come from topics, which publishers choose, so one publisher
//! could otherwise have thousands of digests posted per window: at most
//! `max_per_window` reports go out per window overall ([`Budget`]); the rest
//! are counted as held back, never queued.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use super::deadlines::Deadlines;

/// Attackers with an open window at once; beyond it new attackers are
/// counted only when a slot frees (attacker ids come from topics, which
/// publishers choose).
pub const MAX_OPEN_WINDOWS: usize = 10_000;

/// Distinct primitives counted per window; beyond it the report says "at
/// least". Names are kept as 64-bit hashes: 10,000 windows of 128 cost a
/// few MiB whatever names publishers choose.
pub const MAX_PRIMITIVES: usize = 128;

#[derive(Debug, Clone, PartialEq)]
pub struct DigestReport {
    pub attacker: Box<str>,
    pub observations: u64,
    pub primitives: usize,
    /// More distinct primitives than [`MAX_PRIMITIVES`] were seen.
    pub primitives_capped: bool,
    pub window_ms: u64,
    pub score: Option<f64>,
    /// When the window opened (its first observation).
    pub opened_ms: u64,
}

#[derive(Debug, Default)]
struct Window {
    opened_ms: u64,
    observations: u64,
    primitives: HashSet<u64>,
    capped: bool,
    score: Option<f64>,
}

/// At most `max` admissions per fixed window of `window_ms`, the window
/// starting at the first admission asked for after the previous one ended.
#[derive(Debug)]
pub struct Budget {
    max: u32,
    window_ms: u64,
    started: Option<u64>,
    used: u32,
}

impl Budget {
    pub fn new(max: u32, window_ms: u64) -> Self {
        Self {
            max,
            window_ms: window_ms.max(1),
            started: None,
            used: 0,
        }
    }

    /// Whether one more fits in the window open at `now_ms` (and takes it).
    pub fn admit(&mut self, now_ms: u64) -> bool {
        let expired = self
            .started
            .is_none_or(|start| now_ms >= start.saturating_add(self.window_ms));
        if expired {
            self.started = Some(now_ms);
            self.used = 0;
        }
        if self.used < self.max {
            self.used += 1;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
pub struct Digests {
    open: HashMap<Box<str>, Window>,
    deadlines: Deadlines<Box<str>>,
    window_ms: u64,
    budget: Budget,
}

impl Digests {
    /// One report per attacker per `window_ms`, at most `max_per_window`
    /// reports per `window_ms` overall.
    pub fn new(window_ms: u64, max_per_window: u32) -> Self {
        Self {
            open: HashMap::new(),
            deadlines: Deadlines::default(),
            window_ms: window_ms.max(1),
            budget: Budget::new(max_per_window, window_ms),
        }
    }

    fn window(&mut self, attacker: &str, now_ms: u64) -> Option<&mut Window> {
        if !self.open.contains_key(attacker) {
            if self.open.len() >= MAX_OPEN_WINDOWS {
                return None;
            }
            let key: Box<str> = attacker.into();
            self.deadlines.push(now_ms + self.window_ms, key.clone());
            self.open.insert(
                key,
                Window {
                    opened_ms: now_ms,
                    ..Window::default()
                },
            );
        }
        self.open.get_mut(attacker)
    }

    /// An observation of `attacker` through `primitive`.
    pub fn observed(&mut self, attacker: &str, primitive: &str, now_ms: u64) {
        if let Some(w) = self.window(attacker, now_ms) {
            w.observations += 1;
            let mut h = DefaultHasher::new();
            primitive.hash(&mut h);
            let key = h.finish();
            if w.primitives.len() < MAX_PRIMITIVES {
                w.primitives.insert(key);
            } else if !w.primitives.contains(&key) {
                w.capped = true;
            }
        }
    }

    /// A new score for `attacker`.
    pub fn scored(&mut self, attacker: &str, score: f64, now_ms: u64) {
        if let Some(w) = self.window(attacker, now_ms) {
            w.score = Some(score);
        }
    }

    /// Closes every window due at `now_ms`; one report per attacker that
    /// was observed in it, within the overall budget. Returns how many
    /// reports the budget held back.
    pub fn due(&mut self, now_ms: u64, out: &mut Vec<DigestReport>) -> u64 {
        let mut held_back = 0;
        while let Some(attacker) = self.deadlines.pop_due(now_ms) {
            let Some(w) = self.open.remove(&attacker) else {
                continue;
            };
            if w.observations == 0 {
                continue;
            }
            if !self.budget.admit(now_ms) {
                held_back += 1;
                continue;
            }
            out.push(DigestReport {
                attacker,
                observations: w.observations,
                primitives: w.primitives.len(),
                primitives_capped: w.capped,
                window_ms: self.window_ms,
                score: w.score,
                opened_ms: w.opened_ms,
            });
        }
        held_back
    }

    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due(d: &mut Digests, now: u64) -> Vec<DigestReport> {
        let mut out = Vec::new();
        assert_eq!(d.due(now, &mut out), 0, "nothing held back");
        out
    }

    #[test]
    fn observations_roll_up_into_one_report_per_window() {
        let mut d = Digests::new(60_000, 100);
        for (t, primitive) in [(0, "dns"), (1_000, "http"), (2_000, "dns"), (59_000, "ssh")] {
            d.observed("a1", primitive, t);
        }
        d.scored("a1", 42.0, 3_000);
        d.scored("a1", 87.5, 4_000);
        assert!(due(&mut d, 59_999).is_empty());
        assert_eq!(
            due(&mut d, 60_000),
            vec![DigestReport {
                attacker: "a1".into(),
                observations: 4,
                primitives: 3,
                primitives_capped: false,
                window_ms: 60_000,
                score: Some(87.5),
                opened_ms: 0,
            }]
        );
        assert_eq!(d.next_deadline(), None);
        // The next observation opens a new window.
        d.observed("a1", "dns", 61_000);
        assert_eq!(d.next_deadline(), Some(121_000));
    }

    #[test]
    fn attackers_have_their_own_windows_and_scores_alone_say_nothing() {
        let mut d = Digests::new(10, u32::MAX);
        d.observed("a", "p", 0);
        d.observed("b", "p", 5);
        d.scored("c", 1.0, 5);
        let first = due(&mut d, 10);
        assert_eq!(first.len(), 1);
        assert_eq!(&*first[0].attacker, "a");
        let second = due(&mut d, 15);
        assert_eq!(second.len(), 1, "c had a score but no observation");
        assert_eq!(&*second[0].attacker, "b");
        assert_eq!(second[0].score, None);
    }

    #[test]
    fn open_windows_and_primitives_are_bounded() {
        let mut d = Digests::new(10, u32::MAX);
        for i in 0..MAX_OPEN_WINDOWS + 10 {
            d.observed(&format!("a{i}"), "p", 0);
        }
        assert_eq!(d.open.len(), MAX_OPEN_WINDOWS);
        for i in 0..MAX_PRIMITIVES + 10 {
            d.observed("a0", &format!("p{i}"), 0);
        }
        let reports = due(&mut d, 10);
        let a0 = reports.iter().find(|r| &*r.attacker == "a0").unwrap();
        assert_eq!(a0.primitives, MAX_PRIMITIVES);
        assert!(a0.primitives_capped);
        assert_eq!(a0.observations, MAX_PRIMITIVES as u64 + 11);
    }

    #[test]
    fn reports_over_the_budget_of_a_window_are_held_back_and_counted() {
        let mut d = Digests::new(1_000, 3);
        for i in 0..10 {
            d.observed(&format!("a{i}"), "p", 0);
        }
        let mut out = Vec::new();
        assert_eq!(d.due(1_000, &mut out), 7);
        let posted: Vec<&str> = out.iter().map(|r| &*r.attacker).collect();
        assert_eq!(posted.len(), 3, "{posted:?}");
        // The next window has a budget of its own.
        for i in 0..4 {
            d.observed(&format!("b{i}"), "p", 1_500);
        }
        out.clear();
        assert_eq!(d.due(2_500, &mut out), 1);
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn a_budget_refills_only_once_its_window_has_passed() {
        let mut b = Budget::new(2, 100);
        assert!(b.admit(50) && b.admit(60));
        assert!(!b.admit(149), "the window opened at 50");
        assert!(b.admit(150) && b.admit(249));
        assert!(!b.admit(249));
        let mut off = Budget::new(0, 100);
        assert!(!off.admit(0), "a budget of 0 admits nothing");
    }
}
