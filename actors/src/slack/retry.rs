//! What to do with Slack's answer, and how long to wait before trying
//! again. Pure.
//!
//! 2xx: delivered. 429: wait exactly `Retry-After` (capped), then send the
//! same message again. 5xx, timeouts and connection errors: exponential
//! back-off with jitter, forever (the outbox bound limits what waits).
//! Anything else (400 `invalid_payload`, 403, 404 `no_service`, 410, a
//! redirect, which the client never follows): permanent, dropped and counted.

use std::time::Duration;

/// A `Retry-After` beyond this is treated as this: Slack asks for seconds.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// 429 with a usable `Retry-After`.
    RetryAfter(Duration),
    /// Transient: back off and retry.
    Retry,
    /// Will not succeed by retrying; the reason is the metric label.
    Permanent(&'static str),
}

pub fn classify(status: u16, retry_after: Option<&str>) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        429 => match retry_after.and_then(parse_retry_after) {
            Some(wait) => Verdict::RetryAfter(wait),
            None => Verdict::Retry,
        },
        408 | 500..=599 => Verdict::Retry,
        300..=399 => Verdict::Permanent("redirect"),
        400 => Verdict::Permanent("http_400"),
        403 => Verdict::Permanent("http_403"),
        404 => Verdict::Permanent("http_404"),
        410 => Verdict::Permanent("http_410"),
        401..=499 => Verdict::Permanent("http_4xx"),
        _ => Verdict::Permanent("unexpected_status"),
    }
}

/// `Retry-After` as delta-seconds (what Slack sends), capped at
/// [`MAX_RETRY_AFTER`]. An HTTP-date, a negative or a non-number is `None`:
/// the caller falls back to its back-off.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() || value.len() > 12 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: u64 = value.parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// Exponential back-off with "equal jitter": attempt n waits a random time in
/// [d/2, d] with d = min(max, min × 2ⁿ), so retries from many senders spread
/// out yet never come sooner than half the nominal delay.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration, seed: u64) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
            // xorshift must not start at zero.
            rng: seed | 1,
        }
    }

    /// The nominal (pre-jitter) delay of the next attempt.
    pub fn nominal(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    pub fn next_delay(&mut self) -> Duration {
        let nominal = self.nominal();
        self.attempt = self.attempt.saturating_add(1);
        let half = nominal / 2;
        let span = (nominal - half).as_micros() as u64;
        let jitter = if span == 0 {
            0
        } else {
            self.next_random() % (span + 1)
        };
        half + Duration::from_micros(jitter)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64: plenty for spreading retries; not for secrets.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::notice::PERMANENT_REASONS;

    #[test]
    fn statuses_map_to_what_slack_means() {
        assert_eq!(classify(200, None), Verdict::Delivered);
        assert_eq!(classify(204, None), Verdict::Delivered);
        assert_eq!(
            classify(429, Some("2")),
            Verdict::RetryAfter(Duration::from_secs(2))
        );
        assert_eq!(classify(429, None), Verdict::Retry);
        assert_eq!(classify(500, None), Verdict::Retry);
        assert_eq!(classify(503, None), Verdict::Retry);
        assert_eq!(classify(400, None), Verdict::Permanent("http_400"));
        assert_eq!(classify(403, None), Verdict::Permanent("http_403"));
        assert_eq!(classify(404, None), Verdict::Permanent("http_404"));
        assert_eq!(classify(410, None), Verdict::Permanent("http_410"));
        assert_eq!(classify(418, None), Verdict::Permanent("http_4xx"));
        assert_eq!(classify(302, None), Verdict::Permanent("redirect"));
        assert_eq!(classify(101, None), Verdict::Permanent("unexpected_status"));
        for v in [
            classify(400, None),
            classify(302, None),
            classify(101, None),
        ] {
            let Verdict::Permanent(reason) = v else {
                panic!()
            };
            assert!(PERMANENT_REASONS.contains(&reason));
        }
    }

    #[test]
    fn malformed_retry_after_falls_back_and_huge_ones_are_capped() {
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("0"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("999999"), Some(MAX_RETRY_AFTER));
        for bad in [
            "",
            "abc",
            "-1",
            "1.5",
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "99999999999999999999",
        ] {
            assert_eq!(parse_retry_after(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000), 7);
        let nominal: Vec<u64> = (0..6)
            .map(|_| {
                let n = b.nominal().as_millis() as u64;
                b.next_delay();
                n
            })
            .collect();
        assert_eq!(nominal, vec![100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.nominal(), Duration::from_millis(100));
    }

    proptest! {
        #[test]
        fn jitter_stays_within_half_to_full_nominal(seed in any::<u64>(), steps in 1usize..40) {
            let mut b = Backoff::new(Duration::from_millis(50), Duration::from_secs(60), seed);
            let mut last_nominal = Duration::ZERO;
            for _ in 0..steps {
                let nominal = b.nominal();
                prop_assert!(nominal >= last_nominal, "non-decreasing before jitter");
                prop_assert!(nominal <= Duration::from_secs(60));
                let d = b.next_delay();
                prop_assert!(d >= nominal / 2 && d <= nominal, "{d:?} vs {nominal:?}");
                last_nominal = nominal;
            }
        }
    }
}
