//! Fleet-health detectors, after the seed receiver's `check_fleet_health`:
//!
//! - **silent**: a device seen in the last 24 h that has sent nothing (no
//!   frame at all, accepted or rejected) for `silent_after`;
//! - **rejecting**: a device whose frames were all rejected over
//!   `rejecting_window` (at least [`REJECTING_MIN_FRAMES`] of them): a buggy
//!   publisher.
//!
//! Each fires at most once per (device, symptom, UTC hour bucket), so a
//! sustained fault is reported once an hour, and its end is announced once
//! when the device is healthy again ([`super::episode`]). Pure: time is an argument; the actor
//! arms one timer for [`FleetHealth::next_deadline`].

use std::collections::HashMap;

use crate::frame::DeviceId;

use super::episode::{Episode, Quiet, Silence, SilenceWatch, Watched};

/// One rejected frame is a glitch; this many in a row, with none accepted
/// within the window, is a buggy publisher.
pub const REJECTING_MIN_FRAMES: u64 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Symptom {
    Silent,
    Rejecting,
}

impl Symptom {
    pub fn as_str(self) -> &'static str {
        match self {
            Symptom::Silent => "silent",
            Symptom::Rejecting => "rejecting",
        }
    }
}

/// What the detectors found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthNotice {
    Silent {
        device: DeviceId,
        last_seen_ms: u64,
    },
    Rejecting {
        device: DeviceId,
        /// Consecutive rejected frames so far.
        rejected: u64,
        reason: &'static str,
    },
    Resolved {
        device: DeviceId,
        symptom: Symptom,
    },
    /// Unseen for [`FORGET_AFTER_MS`]: other per-device state may go too.
    Forgotten {
        device: DeviceId,
    },
}

#[derive(Debug)]
struct DeviceHealth {
    silence: Silence,
    last_accepted_ms: Option<u64>,
    streak: u64,
    streak_last_ms: u64,
    rejecting: Episode,
}

impl Watched for DeviceHealth {
    fn silence(&mut self) -> &mut Silence {
        &mut self.silence
    }
}

#[derive(Debug)]
pub struct FleetHealth {
    devices: HashMap<DeviceId, DeviceHealth>,
    watch: SilenceWatch,
    rejecting_window_ms: u64,
    /// Bound on devices known only from rejected frames (topics are chosen by
    /// publishers, so their number is not bounded by the registry's cap).
    max_devices: usize,
}

impl FleetHealth {
    pub fn new(silent_after_ms: u64, rejecting_window_ms: u64, max_devices: usize) -> Self {
        Self {
            devices: HashMap::new(),
            watch: SilenceWatch::new(silent_after_ms),
            rejecting_window_ms,
            max_devices,
        }
    }

    /// An accepted frame from `device`.
    pub fn accepted(&mut self, device: &DeviceId, now_ms: u64, out: &mut Vec<HealthNotice>) {
        let Some(d) = self.touch(device, now_ms, true, out) else {
            return;
        };
        d.last_accepted_ms = Some(now_ms);
        d.streak = 0;
        if d.rejecting.clear() {
            out.push(HealthNotice::Resolved {
                device: device.clone(),
                symptom: Symptom::Rejecting,
            });
        }
    }

    /// A rejected frame whose topic named `device`.
    pub fn rejected(
        &mut self,
        device: &DeviceId,
        reason: &'static str,
        now_ms: u64,
        out: &mut Vec<HealthNotice>,
    ) {
        let window = self.rejecting_window_ms;
        let Some(d) = self.touch(device, now_ms, false, out) else {
            return;
        };
        if d.streak > 0 && now_ms.saturating_sub(d.streak_last_ms) > window {
            d.streak = 0; // a long pause: this is a new run of bad frames
        }
        d.streak += 1;
        d.streak_last_ms = now_ms;
        let none_accepted = d
            .last_accepted_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= window);
        if d.streak >= REJECTING_MIN_FRAMES && none_accepted && d.rejecting.admit(now_ms) {
            out.push(HealthNotice::Rejecting {
                device: device.clone(),
                rejected: d.streak,
                reason,
            });
        }
    }

    /// Any frame from `device`: refreshes last-seen, ends a silence, and
    /// makes sure a silence deadline is queued.
    fn touch(
        &mut self,
        device: &DeviceId,
        now_ms: u64,
        accepted: bool,
        out: &mut Vec<HealthNotice>,
    ) -> Option<&mut DeviceHealth> {
        // Look up before inserting: `entry()` would clone the id on every frame.
        if !self.devices.contains_key(device.as_str()) {
            if !accepted && self.devices.len() >= self.max_devices.saturating_mul(2) {
                return None;
            }
            self.devices.insert(
                device.clone(),
                DeviceHealth {
                    silence: Silence::new(now_ms),
                    last_accepted_ms: None,
                    streak: 0,
                    streak_last_ms: now_ms,
                    rejecting: Episode::default(),
                },
            );
        }
        let d = self.devices.get_mut(device.as_str())?;
        if self.watch.heard(device, &mut d.silence, now_ms) {
            out.push(HealthNotice::Resolved {
                device: device.clone(),
                symptom: Symptom::Silent,
            });
        }
        Some(d)
    }

    /// Runs every check due at `now_ms`.
    pub fn due(&mut self, now_ms: u64, out: &mut Vec<HealthNotice>) {
        self.watch
            .due(now_ms, &mut self.devices, |device, quiet| match quiet {
                Quiet::Forgotten => out.push(HealthNotice::Forgotten { device }),
                Quiet::Silent { last_seen_ms } => out.push(HealthNotice::Silent {
                    device,
                    last_seen_ms,
                }),
            });
    }

    pub fn next_deadline(&self) -> Option<u64> {
        self.watch.next_deadline()
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::episode::FORGET_AFTER_MS;

    const MIN: u64 = 60_000;
    /// 2026-05-02T13:00:00Z: the start of an hour bucket.
    const T0: u64 = 1_777_726_800_000;

    fn id(s: &str) -> DeviceId {
        DeviceId::parse(s).unwrap()
    }

    fn health() -> FleetHealth {
        FleetHealth::new(30 * MIN, 5 * MIN, 100)
    }

    fn due(h: &mut FleetHealth, now: u64) -> Vec<HealthNotice> {
        let mut out = Vec::new();
        h.due(now, &mut out);
        out
    }

    fn silent(device: &str, last_seen_ms: u64) -> HealthNotice {
        HealthNotice::Silent {
            device: id(device),
            last_seen_ms,
        }
    }

    #[test]
    fn a_quiet_device_is_reported_silent_at_its_deadline_then_once_per_hour() {
        let mut h = health();
        let mut out = Vec::new();
        h.accepted(&id("d1"), T0 + 5 * MIN, &mut out);
        assert!(out.is_empty());
        assert_eq!(h.next_deadline(), Some(T0 + 35 * MIN));
        assert!(due(&mut h, T0 + 34 * MIN).is_empty());
        assert_eq!(due(&mut h, T0 + 35 * MIN), vec![silent("d1", T0 + 5 * MIN)]);
        // Checked again at the next hour bucket, not before.
        assert_eq!(h.next_deadline(), Some(T0 + 60 * MIN));
        assert!(due(&mut h, T0 + 50 * MIN).is_empty());
        assert_eq!(due(&mut h, T0 + 60 * MIN), vec![silent("d1", T0 + 5 * MIN)]);
        assert_eq!(
            due(&mut h, T0 + 120 * MIN),
            vec![silent("d1", T0 + 5 * MIN)]
        );
    }

    #[test]
    fn frames_push_the_silence_deadline_back() {
        let mut h = health();
        let mut out = Vec::new();
        for m in 0..40 {
            h.accepted(&id("d1"), T0 + m * MIN, &mut out);
            out.extend(due(&mut h, T0 + m * MIN));
        }
        assert!(out.is_empty(), "{out:?}");
        assert!(
            h.watch.queued() <= 1,
            "one deadline per device, not one per frame"
        );
        assert_eq!(
            due(&mut h, T0 + 69 * MIN),
            vec![silent("d1", T0 + 39 * MIN)]
        );
    }

    #[test]
    fn the_end_of_a_silence_is_announced_once() {
        let mut h = health();
        let mut out = Vec::new();
        h.accepted(&id("d1"), T0, &mut out);
        assert_eq!(due(&mut h, T0 + 30 * MIN).len(), 1);
        h.accepted(&id("d1"), T0 + 40 * MIN, &mut out);
        assert_eq!(
            out,
            vec![HealthNotice::Resolved {
                device: id("d1"),
                symptom: Symptom::Silent
            }]
        );
        out.clear();
        h.accepted(&id("d1"), T0 + 41 * MIN, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_relapse_within_the_same_hour_is_not_reported_twice() {
        let mut h = FleetHealth::new(10 * MIN, 5 * MIN, 100);
        let mut out = Vec::new();
        h.accepted(&id("d1"), T0, &mut out);
        assert_eq!(due(&mut h, T0 + 10 * MIN).len(), 1);
        h.accepted(&id("d1"), T0 + 20 * MIN, &mut out);
        assert_eq!(out.len(), 1, "resolved");
        out.clear();
        // Silent again at 13:30, within the 13:00 bucket already reported.
        assert!(due(&mut h, T0 + 30 * MIN).is_empty(), "same hour bucket");
        h.accepted(&id("d1"), T0 + 35 * MIN, &mut out);
        assert!(out.is_empty(), "nothing was said, so no resolution either");
        assert_eq!(
            due(&mut h, T0 + 60 * MIN),
            vec![silent("d1", T0 + 35 * MIN)]
        );
    }

    #[test]
    fn silent_devices_are_forgotten_after_a_day() {
        let mut h = health();
        let mut out = Vec::new();
        h.accepted(&id("d1"), T0, &mut out);
        let mut reports = 0;
        let mut now = T0;
        while let Some(at) = h.next_deadline() {
            now = at;
            for n in due(&mut h, at) {
                match n {
                    HealthNotice::Silent { .. } => reports += 1,
                    HealthNotice::Forgotten { device } => assert_eq!(device, id("d1")),
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(now, T0 + FORGET_AFTER_MS);
        assert_eq!(
            reports, 24,
            "13:30 and then every hour until 13:00 the next day"
        );
        assert!(h.is_empty());
    }

    #[test]
    fn a_device_whose_frames_are_all_rejected_is_reported_once_per_hour() {
        let mut h = health();
        let mut out = Vec::new();
        for s in 0..2 {
            h.rejected(&id("bad"), "out_of_range", T0 + s * 1000, &mut out);
        }
        assert!(out.is_empty(), "two bad frames are not yet a pattern");
        h.rejected(&id("bad"), "out_of_range", T0 + 2000, &mut out);
        assert_eq!(
            out,
            vec![HealthNotice::Rejecting {
                device: id("bad"),
                rejected: 3,
                reason: "out_of_range"
            }]
        );
        out.clear();
        for s in 3..3600 {
            h.rejected(&id("bad"), "out_of_range", T0 + s * 1000, &mut out);
        }
        assert!(out.is_empty(), "same hour bucket: {out:?}");
        h.rejected(&id("bad"), "unknown_key", T0 + 3600 * 1000, &mut out);
        assert_eq!(out.len(), 1);
        assert!(matches!(
            out[0],
            HealthNotice::Rejecting {
                rejected: 3601,
                reason: "unknown_key",
                ..
            }
        ));
        out.clear();
        h.accepted(&id("bad"), T0 + 3601 * 1000, &mut out);
        assert_eq!(
            out,
            vec![HealthNotice::Resolved {
                device: id("bad"),
                symptom: Symptom::Rejecting
            }]
        );
    }

    #[test]
    fn a_device_with_a_recent_good_frame_is_not_rejecting_yet() {
        let mut h = health();
        let mut out = Vec::new();
        h.accepted(&id("d1"), T0, &mut out);
        for s in 1..=10 {
            h.rejected(&id("d1"), "bad_json", T0 + s * 1000, &mut out);
        }
        assert!(out.is_empty(), "a good frame 10 s ago");
        h.rejected(&id("d1"), "bad_json", T0 + 5 * MIN, &mut out);
        assert_eq!(out.len(), 1, "nothing but rejections for the whole window");
    }

    #[test]
    fn rejections_spread_out_beyond_the_window_do_not_add_up() {
        let mut h = health();
        let mut out = Vec::new();
        for i in 0..10 {
            h.rejected(&id("d1"), "bad_json", T0 + i * 6 * MIN, &mut out);
        }
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn devices_known_only_from_rejections_are_bounded() {
        let mut h = FleetHealth::new(30 * MIN, 5 * MIN, 2);
        let mut out = Vec::new();
        for i in 0..10 {
            h.rejected(&id(&format!("x{i}")), "bad_json", T0, &mut out);
        }
        assert_eq!(h.len(), 4);
        h.accepted(&id("good"), T0, &mut out);
        assert_eq!(
            h.len(),
            5,
            "accepted devices are bounded by the registry's cap instead"
        );
    }
}
