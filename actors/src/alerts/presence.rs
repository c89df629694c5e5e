//! Device presence: `device.online` at a device's first frame (or its first
//! after going offline), `device.offline` when its deadline (last frame +
//! `offline_after`) passes. One deadline per device is queued lazily, so a
//! frame costs a map lookup, and "offline" is due exactly at the deadline
//! rather than at the next sweep. Pure: time is an argument.

use std::collections::HashMap;

use crate::frame::DeviceId;

use super::deadlines::Deadlines;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceChange {
    Online { device: DeviceId, last_seen_ms: u64 },
    Offline { device: DeviceId, last_seen_ms: u64 },
}

impl PresenceChange {
    pub fn device(&self) -> &DeviceId {
        match self {
            PresenceChange::Online { device, .. } | PresenceChange::Offline { device, .. } => {
                device
            }
        }
    }

    pub fn last_seen_ms(&self) -> u64 {
        match self {
            PresenceChange::Online { last_seen_ms, .. }
            | PresenceChange::Offline { last_seen_ms, .. } => *last_seen_ms,
        }
    }

    /// The event name on the bus.
    pub fn event_name(&self) -> &'static str {
        match self {
            PresenceChange::Online { .. } => "device.online",
            PresenceChange::Offline { .. } => "device.offline",
        }
    }
}

#[derive(Debug)]
pub struct Presence {
    /// Online devices and their last frame; an offline device is removed.
    last_seen: HashMap<DeviceId, u64>,
    deadlines: Deadlines<DeviceId>,
    offline_after_ms: u64,
}

impl Presence {
    pub fn new(offline_after_ms: u64) -> Self {
        Self {
            last_seen: HashMap::new(),
            deadlines: Deadlines::default(),
            offline_after_ms: offline_after_ms.max(1),
        }
    }

    /// A frame from `device` at `now_ms`.
    pub fn seen(&mut self, device: &DeviceId, now_ms: u64, out: &mut Vec<PresenceChange>) {
        if let Some(seen) = self.last_seen.get_mut(device.as_str()) {
            *seen = (*seen).max(now_ms);
            return;
        }
        self.last_seen.insert(device.clone(), now_ms);
        self.deadlines
            .push(now_ms + self.offline_after_ms, device.clone());
        out.push(PresenceChange::Online {
            device: device.clone(),
            last_seen_ms: now_ms,
        });
    }

    /// Announces every device whose deadline passed by `now_ms`.
    pub fn due(&mut self, now_ms: u64, out: &mut Vec<PresenceChange>) {
        while let Some(device) = self.deadlines.pop_due(now_ms) {
            let Some(&seen) = self.last_seen.get(device.as_str()) else {
                continue;
            };
            let deadline = seen + self.offline_after_ms;
            if deadline <= now_ms {
                self.last_seen.remove(device.as_str());
                out.push(PresenceChange::Offline {
                    device,
                    last_seen_ms: seen,
                });
            } else {
                self.deadlines.push(deadline, device);
            }
        }
    }

    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.next()
    }

    pub fn online(&self) -> usize {
        self.last_seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> DeviceId {
        DeviceId::parse(s).unwrap()
    }

    #[test]
    fn online_once_then_offline_exactly_at_the_deadline() {
        let mut p = Presence::new(30_000);
        let mut out = Vec::new();
        for t in [0, 1_000, 2_000, 10_000] {
            p.seen(&id("d1"), t, &mut out);
        }
        assert_eq!(
            out,
            vec![PresenceChange::Online {
                device: id("d1"),
                last_seen_ms: 0
            }]
        );
        out.clear();
        p.due(30_000, &mut out);
        assert!(out.is_empty(), "seen at 10 s: not yet");
        assert_eq!(p.next_deadline(), Some(40_000));
        p.due(39_999, &mut out);
        assert!(out.is_empty());
        p.due(40_000, &mut out);
        assert_eq!(
            out,
            vec![PresenceChange::Offline {
                device: id("d1"),
                last_seen_ms: 10_000
            }]
        );
        assert_eq!(p.online(), 0);
        assert_eq!(p.next_deadline(), None);
    }

    #[test]
    fn a_device_that_returns_is_online_again() {
        let mut p = Presence::new(1_000);
        let mut out = Vec::new();
        p.seen(&id("d1"), 0, &mut out);
        p.due(1_000, &mut out);
        p.seen(&id("d1"), 5_000, &mut out);
        let names: Vec<&str> = out.iter().map(PresenceChange::event_name).collect();
        assert_eq!(
            names,
            vec!["device.online", "device.offline", "device.online"]
        );
        assert_eq!(out[2].last_seen_ms(), 5_000);
    }

    #[test]
    fn devices_go_offline_independently() {
        let mut p = Presence::new(1_000);
        let mut out = Vec::new();
        p.seen(&id("a"), 0, &mut out);
        p.seen(&id("b"), 500, &mut out);
        out.clear();
        p.seen(&id("a"), 900, &mut out);
        p.due(1_500, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].device().as_str(), "b");
        out.clear();
        p.due(1_900, &mut out);
        assert_eq!(out[0].device().as_str(), "a");
    }
}
