//! Exponential reconnect back-off: `min`, doubling, capped at `max`, reset
//! after a good connection. rumqttc reconnects on the next `poll()` with no
//! delay of its own (28,000 attempts in 500 ms against a closed port), so the
//! pause between attempts is ours.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        let max = max.max(min);
        Self {
            min,
            max,
            next: min,
        }
    }

    /// The pause before the next attempt; each call doubles the one after.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    /// A connection succeeded: the next failure waits `min` again.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn delays_double_up_to_the_ceiling() {
        let mut b = Backoff::new(secs(1), secs(60));
        let delays: Vec<u64> = (0..9).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn reset_starts_again_from_the_minimum() {
        let mut b = Backoff::new(secs(1), secs(60));
        b.next_delay();
        b.next_delay();
        b.reset();
        assert_eq!(b.next_delay(), secs(1));
        assert_eq!(b.next_delay(), secs(2));
    }

    #[test]
    fn a_ceiling_below_the_floor_is_lifted_to_the_floor() {
        let mut b = Backoff::new(secs(5), secs(1));
        assert_eq!(b.next_delay(), secs(5));
        assert_eq!(b.next_delay(), secs(5));
    }

    #[test]
    fn huge_values_saturate_instead_of_overflowing() {
        let mut b = Backoff::new(Duration::MAX / 2, Duration::MAX);
        b.next_delay();
        b.next_delay();
        assert_eq!(b.next_delay(), Duration::MAX);
    }
}
