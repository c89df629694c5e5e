//! What every fleet detector (devices in [`super::health`], upload hosts in
//! [`super::uploads`]) shares, after the seed's `check_fleet_health`: a
//! symptom is reported at most once per (subject, symptom, UTC hour bucket),
//! its end is announced once, and a subject quiet for a day is forgotten.

pub const HOUR_MS: u64 = 3_600_000;

/// Subjects quiet this long are forgotten: the silent detectors look back
/// 24 h.
pub const FORGET_AFTER_MS: u64 = 24 * HOUR_MS;

/// The UTC hour bucket of a time (hours since the epoch): the unit of
/// de-duplication.
pub fn hour_bucket(ms: u64) -> u64 {
    ms / HOUR_MS
}

/// One symptom's episode for one subject.
#[derive(Debug, Default, Clone, Copy)]
pub struct Episode {
    active: bool,
    announced: bool,
    last_bucket: Option<u64>,
}

impl Episode {
    /// Marks the symptom present; `true` if it should be reported now
    /// (not yet reported in this hour bucket).
    pub fn admit(&mut self, now_ms: u64) -> bool {
        self.active = true;
        let bucket = hour_bucket(now_ms);
        if self.last_bucket == Some(bucket) {
            return false;
        }
        self.last_bucket = Some(bucket);
        self.announced = true;
        true
    }

    /// The symptom is gone; `true` if its end should be announced.
    pub fn clear(&mut self) -> bool {
        let was = self.active && self.announced;
        self.active = false;
        self.announced = false;
        was
    }
}

/// When a silence watch looks at a subject next, having just looked at
/// `now_ms`: while silent, when the next hour bucket opens (the
/// once-an-hour rule cannot report sooner) but no later than the moment
/// the subject is forgotten; otherwise when it would turn silent.
pub fn next_silence_check(now_ms: u64, last_seen_ms: u64, silent_after_ms: u64) -> u64 {
    if now_ms.saturating_sub(last_seen_ms) >= silent_after_ms {
        let next_bucket = (hour_bucket(now_ms) + 1) * HOUR_MS;
        next_bucket.min(last_seen_ms + FORGET_AFTER_MS)
    } else {
        last_seen_ms + silent_after_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    #[test]
    fn an_episode_is_reported_once_per_hour_and_its_end_only_if_reported() {
        let mut e = Episode::default();
        assert!(e.admit(HOUR_MS + 1));
        assert!(!e.admit(2 * HOUR_MS - 1), "same bucket");
        assert!(e.admit(2 * HOUR_MS), "next bucket");
        assert!(e.clear());
        assert!(!e.clear(), "announced once");
        assert!(!e.admit(2 * HOUR_MS + 5), "a relapse in a reported bucket");
        assert!(!e.clear(), "nothing was said, so no end either");
    }

    #[test]
    fn a_silence_is_looked_at_hourly_until_forgotten() {
        assert_eq!(next_silence_check(0, 0, 30 * MIN), 30 * MIN);
        assert_eq!(next_silence_check(30 * MIN, 0, 30 * MIN), HOUR_MS);
        assert_eq!(
            next_silence_check(FORGET_AFTER_MS - 1, 0, 30 * MIN),
            FORGET_AFTER_MS
        );
        assert_eq!(
            next_silence_check(FORGET_AFTER_MS + 2 * MIN, 5 * MIN, 30 * MIN),
            FORGET_AFTER_MS + 5 * MIN,
            "forgotten before the next bucket opens"
        );
    }
}
