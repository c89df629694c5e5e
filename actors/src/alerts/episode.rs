//! What every fleet detector (devices in [`super::health`], upload hosts in
//! [`super::uploads`]) shares, after the seed's `check_fleet_health`: a
//! symptom is reported at most once per (subject, symptom, UTC hour bucket),
//! its end is announced once, and a subject quiet for a day is forgotten.

use std::collections::HashMap;

use crate::frame::DeviceId;

use super::deadlines::Deadlines;

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

/// One watched thing's silence: when it was last heard from, its silent
/// episode, and whether a check for it is queued.
#[derive(Debug, Clone, Copy)]
pub struct Silence {
    pub last_seen_ms: u64,
    pub episode: Episode,
    scheduled: bool,
}

impl Silence {
    pub fn new(now_ms: u64) -> Self {
        Self {
            last_seen_ms: now_ms,
            episode: Episode::default(),
            scheduled: false,
        }
    }
}

/// What the silence checks found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quiet {
    /// Quiet for the threshold; reported once per hour bucket.
    Silent { last_seen_ms: u64 },
    /// Quiet for [`FORGET_AFTER_MS`]: removed from the map.
    Forgotten,
}

/// A watched thing with a [`Silence`] (a device, an uploading host).
pub trait Watched {
    fn silence(&mut self) -> &mut Silence;
}

/// The silence deadlines of many watched things, one timer queue for all:
/// the rule both fleet detectors (devices, uploading hosts) share.
#[derive(Debug)]
pub struct SilenceWatch {
    deadlines: Deadlines<DeviceId>,
    silent_after_ms: u64,
}

impl SilenceWatch {
    pub fn new(silent_after_ms: u64) -> Self {
        Self {
            deadlines: Deadlines::default(),
            silent_after_ms: silent_after_ms.max(1),
        }
    }

    /// Something from `id` at `now_ms`: refreshes its last-seen time and
    /// makes sure a check is queued. `true` when this ends a reported
    /// silence (its end is to be announced).
    pub fn heard(&mut self, id: &DeviceId, silence: &mut Silence, now_ms: u64) -> bool {
        silence.last_seen_ms = silence.last_seen_ms.max(now_ms);
        let ended = silence.episode.clear();
        if !silence.scheduled {
            silence.scheduled = true;
            self.deadlines
                .push(silence.last_seen_ms + self.silent_after_ms, id.clone());
        }
        ended
    }

    /// Runs every check due at `now_ms` over `watched`, reporting what it
    /// finds (a forgotten one is removed from the map first).
    pub fn due<T: Watched>(
        &mut self,
        now_ms: u64,
        watched: &mut HashMap<DeviceId, T>,
        mut report: impl FnMut(DeviceId, Quiet),
    ) {
        while let Some(id) = self.deadlines.pop_due(now_ms) {
            let Some(thing) = watched.get_mut(id.as_str()) else {
                continue;
            };
            let silence = thing.silence();
            silence.scheduled = false;
            let quiet = now_ms.saturating_sub(silence.last_seen_ms);
            if quiet >= FORGET_AFTER_MS {
                watched.remove(id.as_str());
                report(id, Quiet::Forgotten);
                continue;
            }
            if quiet >= self.silent_after_ms && silence.episode.admit(now_ms) {
                let last_seen_ms = silence.last_seen_ms;
                report(id.clone(), Quiet::Silent { last_seen_ms });
            }
            silence.scheduled = true;
            let next = next_silence_check(now_ms, silence.last_seen_ms, self.silent_after_ms);
            self.deadlines.push(next, id);
        }
    }

    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.next()
    }

    /// Checks queued (at most one per watched thing).
    pub fn queued(&self) -> usize {
        self.deadlines.len()
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
