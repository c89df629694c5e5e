//! The device table: latest frame and last-seen per device, the admission cap
//! and the "active" window. Pure: time is an argument.

use std::collections::HashMap;

use crate::devices::DeviceView;
use crate::frame::{DeviceId, MetricsFrame};

/// What became of an observed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// First frame of a device, admitted under the cap.
    New,
    /// A known device updated.
    Updated,
    /// A new device while the table is full: dropped.
    Refused,
}

#[derive(Debug)]
pub struct DeviceTable {
    devices: HashMap<DeviceId, (MetricsFrame, u64)>,
    max_devices: usize,
    active_ms: u64,
}

impl DeviceTable {
    pub fn new(max_devices: usize, active_ms: u64) -> Self {
        Self {
            devices: HashMap::new(),
            max_devices,
            active_ms,
        }
    }

    pub fn observe(&mut self, frame: &MetricsFrame, now_ms: u64) -> Admission {
        if let Some(entry) = self.devices.get_mut(frame.device_id.as_str()) {
            *entry = (frame.clone(), now_ms);
            return Admission::Updated;
        }
        if self.devices.len() >= self.max_devices {
            return Admission::Refused;
        }
        self.devices
            .insert(frame.device_id.clone(), (frame.clone(), now_ms));
        Admission::New
    }

    /// A frame whose device was admitted elsewhere (cluster mode: the cap
    /// is decided once, in Redis, by the instance that validated it). Still
    /// bounded here, at twice the cap: the instances forget devices at
    /// slightly different moments, never by more than that.
    pub fn admit(&mut self, frame: &MetricsFrame, now_ms: u64) -> Admission {
        if let Some(entry) = self.devices.get_mut(frame.device_id.as_str()) {
            *entry = (frame.clone(), now_ms);
            return Admission::Updated;
        }
        if self.devices.len() >= self.max_devices.saturating_mul(2) {
            return Admission::Refused;
        }
        self.devices
            .insert(frame.device_id.clone(), (frame.clone(), now_ms));
        Admission::New
    }

    fn view(&self, id: &DeviceId, frame: &MetricsFrame, last_seen: u64, now_ms: u64) -> DeviceView {
        DeviceView {
            device_id: id.clone(),
            last_seen,
            active: now_ms.saturating_sub(last_seen) <= self.active_ms,
            metrics: frame.clone(),
        }
    }

    pub fn get(&self, id: &str, now_ms: u64) -> Option<DeviceView> {
        let (key, (frame, seen)) = self.devices.get_key_value(id)?;
        Some(self.view(key, frame, *seen, now_ms))
    }

    /// Devices seen within the active window, sorted by id.
    pub fn active(&self, now_ms: u64) -> Vec<DeviceView> {
        let mut views: Vec<DeviceView> = self
            .devices
            .iter()
            .map(|(id, (frame, seen))| self.view(id, frame, *seen, now_ms))
            .filter(|v| v.active)
            .collect();
        views.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        views
    }

    /// Forgets devices unseen since `cutoff_ms`, freeing their slots under the cap.
    pub fn forget_before(&mut self, cutoff_ms: u64) -> usize {
        let before = self.devices.len();
        self.devices.retain(|_, (_, seen)| *seen >= cutoff_ms);
        before - self.devices.len()
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

    fn frame(device: &str, cpu: u32) -> MetricsFrame {
        let json = format!(
            r#"{{"device_id":"{device}","timestamp":1,"cpu_percent":{cpu},"mem_percent":1,"disk_percent":1}}"#
        );
        MetricsFrame::parse(device, json.as_bytes(), 4096).unwrap()
    }

    #[test]
    fn new_devices_beyond_the_cap_are_refused_but_known_ones_update() {
        let mut t = DeviceTable::new(2, 30_000);
        assert_eq!(t.observe(&frame("a", 1), 0), Admission::New);
        assert_eq!(t.observe(&frame("b", 1), 0), Admission::New);
        assert_eq!(t.observe(&frame("c", 1), 0), Admission::Refused);
        assert_eq!(t.observe(&frame("a", 2), 5), Admission::Updated);
        assert_eq!(t.get("a", 5).unwrap().metrics.cpu_percent, 2.0);
        assert!(t.get("c", 5).is_none());
    }

    #[test]
    fn active_lists_only_devices_seen_within_the_window() {
        let mut t = DeviceTable::new(10, 30_000);
        t.observe(&frame("old", 1), 0);
        t.observe(&frame("new", 1), 20_000);
        let ids: Vec<String> = t
            .active(40_000)
            .iter()
            .map(|v| v.device_id.to_string())
            .collect();
        assert_eq!(ids, vec!["new"]);
        assert!(
            !t.get("old", 40_000).unwrap().active,
            "still known, not active"
        );
    }

    #[test]
    fn forgetting_frees_slots_under_the_cap() {
        let mut t = DeviceTable::new(1, 30_000);
        t.observe(&frame("a", 1), 0);
        assert_eq!(t.observe(&frame("b", 1), 10), Admission::Refused);
        assert_eq!(t.forget_before(5), 1);
        assert_eq!(t.observe(&frame("b", 1), 10), Admission::New);
    }
}
