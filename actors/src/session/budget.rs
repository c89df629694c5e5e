//! A WebSocket session's op budget: how many ops, and how many topic
//! filters in them, a client may send per second.
//!
//! Every `subscribe` costs the bus a snapshot of the new filters and every op
//! a turn of the bus's mailbox, so one client flooding ops could take the
//! bus from everyone. Three token buckets cap that work per session: ops,
//! filters named in ops (both charged before the op goes to the bus), and
//! events the bus put into the op's snapshot (charged after, so a big
//! snapshot leaves the session in debt and its next ops wait until it is
//! paid). An op over any of them is refused with an error frame, and a
//! client that keeps going after [`MAX_REFUSED_IN_A_ROW`] refusals is
//! closed. Pure: the caller passes the time.

use std::time::{Duration, Instant};

/// Refused ops in a row (no accepted op between them) after which the
/// session is closed: a client that ignores the error frames is not a
/// dashboard, and every refusal still costs a parse and a frame.
pub const MAX_REFUSED_IN_A_ROW: u32 = 10;

/// `sessions.ws_ops_per_second` and friends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpLimits {
    pub ops_per_second: u32,
    pub ops_burst: u32,
    pub filters_per_second: u32,
    pub filters_burst: u32,
    pub snapshot_events_per_second: u32,
    pub snapshot_events_burst: u32,
}

impl Default for OpLimits {
    /// The shipped defaults (`config/default.toml`).
    fn default() -> Self {
        Self {
            ops_per_second: 10,
            ops_burst: 40,
            filters_per_second: 64,
            filters_burst: 256,
            snapshot_events_per_second: 20_000,
            snapshot_events_burst: 100_000,
        }
    }
}

/// Tokens refilled at `rate` per second up to `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket: a client starts with its whole burst.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        Self {
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
    }

    /// Takes `cost` tokens, or says how long until they would be there.
    pub fn try_take(&mut self, cost: u32, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        let cost = f64::from(cost);
        if cost <= self.tokens {
            self.tokens -= cost;
            Ok(())
        } else {
            let wait = (cost.min(self.burst) - self.tokens) / self.rate;
            Err(Duration::from_secs_f64(wait.max(0.001)))
        }
    }

    /// Takes `cost` tokens for work already done: the bucket may go into
    /// debt, down to one burst below empty.
    pub fn charge(&mut self, cost: u64, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens - cost as f64).max(-self.burst);
    }

    /// `Err(wait)` while in debt: how long until it is paid.
    pub fn solvent(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 0.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (-self.tokens / self.rate).max(0.001),
            ))
        }
    }
}

/// What to do with a client op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Refuse it with an error frame; the client may retry after this long.
    Refuse {
        retry_after: Duration,
    },
    /// The client kept going after refusals: close it (1008).
    Close,
}

#[derive(Debug, Clone)]
pub struct OpBudget {
    ops: TokenBucket,
    filters: TokenBucket,
    snapshots: TokenBucket,
    refused_in_a_row: u32,
}

impl OpBudget {
    pub fn new(limits: OpLimits, now: Instant) -> Self {
        Self {
            ops: TokenBucket::new(limits.ops_per_second, limits.ops_burst, now),
            filters: TokenBucket::new(limits.filters_per_second, limits.filters_burst, now),
            snapshots: TokenBucket::new(
                limits.snapshot_events_per_second,
                limits.snapshot_events_burst,
                now,
            ),
            refused_in_a_row: 0,
        }
    }

    /// Charges one op (any text frame, before it is even parsed).
    pub fn admit_op(&mut self, now: Instant) -> Verdict {
        let result = self.ops.try_take(1, now);
        self.decide(result)
    }

    /// Charges the filters an op names (its index and snapshot work); an
    /// op also waits while earlier snapshots are not paid for.
    pub fn admit_filters(&mut self, filters: usize, now: Instant) -> Verdict {
        if let Err(wait) = self.snapshots.solvent(now) {
            return self.decide(Err(wait));
        }
        let cost = u32::try_from(filters).unwrap_or(u32::MAX);
        let result = self.filters.try_take(cost, now);
        self.decide(result)
    }

    /// The bus put this many events into the snapshots of the session's
    /// last op (known only once it answered).
    pub fn charge_snapshot(&mut self, events: u64, now: Instant) {
        self.snapshots.charge(events, now);
    }

    /// An op was refused for another reason (too many waiting): it counts
    /// toward the close like a rate refusal.
    pub fn refuse(&mut self, retry_after: Duration) -> Verdict {
        self.decide(Err(retry_after))
    }

    fn decide(&mut self, result: Result<(), Duration>) -> Verdict {
        match result {
            Ok(()) => {
                self.refused_in_a_row = 0;
                Verdict::Accept
            }
            Err(_) if self.refused_in_a_row + 1 >= MAX_REFUSED_IN_A_ROW => Verdict::Close,
            Err(retry_after) => {
                self.refused_in_a_row += 1;
                Verdict::Refuse { retry_after }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: OpLimits = OpLimits {
        ops_per_second: 2,
        ops_burst: 4,
        filters_per_second: 10,
        filters_burst: 64,
        snapshot_events_per_second: 1000,
        snapshot_events_burst: 5000,
    };

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(2, 4, t0);
        for _ in 0..4 {
            assert_eq!(bucket.try_take(1, t0), Ok(()));
        }
        let wait = bucket.try_take(1, t0).unwrap_err();
        assert!(wait >= Duration::from_millis(499) && wait <= Duration::from_millis(501));
        assert_eq!(bucket.try_take(1, t0 + Duration::from_millis(500)), Ok(()));
        assert!(bucket.try_take(1, t0 + Duration::from_millis(600)).is_err());
        // Idle for a long time: back to the burst, not beyond.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..4 {
            assert_eq!(bucket.try_take(1, later), Ok(()));
        }
        assert!(bucket.try_take(1, later).is_err());
    }

    #[test]
    fn a_dashboard_pace_is_never_refused() {
        let t0 = Instant::now();
        let mut budget = OpBudget::new(OpLimits::default(), t0);
        // A view switch (unsubscribe, subscribe to seven filters) every 200 ms
        // for ten minutes.
        for i in 0..3000u32 {
            let now = t0 + Duration::from_millis(200) * i;
            assert_eq!(budget.admit_op(now), Verdict::Accept);
            assert_eq!(budget.admit_filters(7, now), Verdict::Accept);
        }
        // And a full 64-filter subscribe at once.
        let now = t0 + Duration::from_secs(601);
        assert_eq!(budget.admit_op(now), Verdict::Accept);
        assert_eq!(budget.admit_filters(64, now), Verdict::Accept);
    }

    #[test]
    fn a_flood_is_refused_then_closed_and_filters_count_apart_from_ops() {
        let t0 = Instant::now();
        let mut budget = OpBudget::new(LIMITS, t0);
        assert_eq!(budget.admit_op(t0), Verdict::Accept);
        assert_eq!(budget.admit_filters(64, t0), Verdict::Accept);
        assert_eq!(budget.admit_op(t0), Verdict::Accept);
        assert!(
            matches!(budget.admit_filters(1, t0), Verdict::Refuse { .. }),
            "the filter budget is spent although ops remain"
        );
        let mut in_a_row = 1;
        loop {
            match budget.admit_op(t0) {
                Verdict::Accept => in_a_row = 0,
                Verdict::Refuse { retry_after } => {
                    assert!(retry_after > Duration::ZERO);
                    in_a_row += 1;
                }
                Verdict::Close => break,
            }
        }
        assert_eq!(
            in_a_row,
            MAX_REFUSED_IN_A_ROW - 1,
            "closed on the tenth refusal in a row"
        );
    }

    #[test]
    fn a_big_snapshot_leaves_the_session_in_debt_until_paid() {
        let t0 = Instant::now();
        let mut budget = OpBudget::new(LIMITS, t0);
        assert_eq!(budget.admit_op(t0), Verdict::Accept);
        assert_eq!(budget.admit_filters(1, t0), Verdict::Accept);
        budget.charge_snapshot(7000, t0); // 2,000 beyond the burst
        assert_eq!(budget.admit_op(t0), Verdict::Accept);
        match budget.admit_filters(1, t0) {
            Verdict::Refuse { retry_after } => {
                assert_eq!(retry_after, Duration::from_secs(2), "the debt at the rate")
            }
            other => panic!("{other:?}"),
        }
        let paid = t0 + Duration::from_secs(2);
        assert_eq!(budget.admit_op(paid), Verdict::Accept);
        assert_eq!(budget.admit_filters(1, paid), Verdict::Accept);
        // Debt is capped at one burst, so no snapshot locks a session out
        // for longer than two bursts' worth.
        budget.charge_snapshot(u64::MAX, paid);
        let wait = match budget.admit_filters(1, paid) {
            Verdict::Refuse { retry_after } => retry_after,
            other => panic!("{other:?}"),
        };
        assert_eq!(wait, Duration::from_secs(5));
    }

    #[test]
    fn an_accepted_op_forgives_earlier_refusals() {
        let t0 = Instant::now();
        let mut budget = OpBudget::new(LIMITS, t0);
        for _ in 0..4 {
            budget.admit_op(t0);
        }
        for _ in 0..MAX_REFUSED_IN_A_ROW - 1 {
            assert!(matches!(budget.admit_op(t0), Verdict::Refuse { .. }));
        }
        let later = t0 + Duration::from_secs(1);
        assert_eq!(budget.admit_op(later), Verdict::Accept);
        assert!(matches!(budget.admit_op(later), Verdict::Accept));
        assert!(matches!(budget.admit_op(later), Verdict::Refuse { .. }));
    }
}
