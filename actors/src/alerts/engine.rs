//! Everything the Alerts actor decides, without the actor: the rules and
//! their cooldowns, the fleet-health and upload detectors, presence and
//! digests, fed
//! events and the time, producing alerts, presence changes and digests into
//! [`Output`]. Pure (time is an argument), so it is unit-tested and
//! benchmarked without actix.

use std::time::Duration;

use crate::event::{Event, Fields, Payload};
use crate::families::{attacker_topic, uploads_host, AttackerTopic, REJECTS_TOPIC};
use crate::frame::{DeviceId, MetricsFrame, Rejection};
use crate::reject::Reject;

use super::cooldown::{Cooldown, Decision};
use super::digest::{DigestReport, Digests};
use super::episode::hour_bucket;
use super::health::{FleetHealth, HealthNotice};
use super::presence::{Presence, PresenceChange};
use super::record::{self, Alert, AlertState};
use super::uploads::{Attempt, UploadNotice, Uploads};
use super::AlertsConfig;

/// What the engine produced since the caller last drained it.
#[derive(Debug, Default)]
pub struct Output {
    pub alerts: Vec<Alert>,
    pub presence: Vec<PresenceChange>,
    pub digests: Vec<DigestReport>,
    /// Digests over `max_digests_per_window`: raised, but not posted.
    pub digests_held_back: u64,
    /// Upload attempts from hosts over `max_upload_hosts`, not looked at.
    pub uploads_untracked: u64,
}

impl Output {
    pub fn is_empty(&self) -> bool {
        self.alerts.is_empty()
            && self.presence.is_empty()
            && self.digests.is_empty()
            && self.digests_held_back == 0
            && self.uploads_untracked == 0
    }
}

#[derive(Debug)]
pub struct Engine {
    rules: Vec<super::Rule>,
    silent_after: Duration,
    cooldown: Cooldown,
    presence: Presence,
    health: FleetHealth,
    uploads: Uploads,
    uploads_silent_after: Duration,
    uploads_fatal_window: Duration,
    digests: Digests,
    // Scratch buffers, reused so that a frame allocates nothing.
    decisions: Vec<Decision>,
    notices: Vec<HealthNotice>,
    upload_notices: Vec<UploadNotice>,
    pub out: Output,
}

impl Engine {
    pub fn new(config: AlertsConfig) -> Self {
        let ms = |d: Duration| d.as_millis() as u64;
        Self {
            cooldown: Cooldown::default(),
            presence: Presence::new(ms(config.offline_after)),
            health: FleetHealth::new(
                ms(config.silent_after),
                ms(config.rejecting_window),
                config.max_devices,
            ),
            uploads: Uploads::new(
                ms(config.uploads_silent_after),
                ms(config.uploads_fatal_window),
                config.max_upload_hosts,
            ),
            uploads_silent_after: config.uploads_silent_after,
            uploads_fatal_window: config.uploads_fatal_window,
            digests: Digests::new(ms(config.digest_window), config.max_digests_per_window),
            silent_after: config.silent_after,
            rules: config.rules,
            decisions: Vec::new(),
            notices: Vec::new(),
            upload_notices: Vec::new(),
            out: Output::default(),
        }
    }

    pub fn rules(&self) -> &[super::Rule] {
        &self.rules
    }

    /// One event from the bus.
    pub fn on_event(&mut self, event: &Event, now: u64) {
        match &event.body {
            Payload::Metrics(frame) => self.on_metrics(frame, now),
            Payload::Fields(payload) => {
                if let Some(host) = uploads_host(&event.topic) {
                    return self.on_upload(host, payload, now);
                }
                match attacker_topic(&event.topic) {
                    Some(AttackerTopic::Observation {
                        attacker,
                        primitive,
                    }) => self.digests.observed(attacker, primitive, now),
                    Some(AttackerTopic::Scored { attacker }) => {
                        if let Some(score) = payload.f64("score") {
                            self.digests.scored(attacker, score, now);
                        }
                    }
                    None if &*event.topic == REJECTS_TOPIC => self.on_reject(payload, now),
                    None => {}
                }
            }
        }
    }

    /// An accepted metrics frame.
    pub fn on_metrics(&mut self, frame: &MetricsFrame, now: u64) {
        if !self.rules.is_empty() {
            self.cooldown
                .evaluate(&self.rules, frame, now, &mut self.decisions);
            for decision in self.decisions.drain(..) {
                let (i, value, state) = match decision {
                    Decision::Fire { rule, value } => (rule, value, AlertState::Firing),
                    Decision::Resolve { rule, value } => (rule, value, AlertState::Resolved),
                };
                let rule = &self.rules[i];
                let mut alert = record::rule_alert(rule, frame, value, state);
                alert.key = format!(
                    "alert:{}:{}:{}:{now}",
                    rule.name,
                    frame.device_id,
                    state.as_str()
                );
                if state == AlertState::Firing {
                    alert.cooldown_ms = Some(rule.cooldown_ms);
                }
                self.out.alerts.push(alert);
            }
        }
        self.presence
            .seen(&frame.device_id, now, &mut self.out.presence);
        self.health
            .accepted(&frame.device_id, now, &mut self.notices);
        self.collect_health(now);
    }

    /// An `edgebus/rejects` event.
    pub fn on_reject(&mut self, payload: &Fields, now: u64) {
        let Some(Reject { device, reason }) = Reject::read(payload) else {
            return;
        };
        // The device cap refuses good frames: not a buggy publisher.
        if reason == Rejection::DeviceCap.as_str() {
            return;
        }
        self.health
            .rejected(&device, reason, now, &mut self.notices);
        self.collect_health(now);
    }

    /// An `uploads/{host}` event: one upload attempt. One without a usable
    /// `http_status` is ignored (edgebus publishes these itself; a bad one
    /// is a bug, not a host's symptom).
    pub fn on_upload(&mut self, host: &str, payload: &Fields, now: u64) {
        let Ok(host) = DeviceId::parse(host) else {
            return;
        };
        let Some(http_status) = payload
            .f64("http_status")
            .filter(|s| s.fract() == 0.0 && (100.0..=599.0).contains(s))
        else {
            return;
        };
        let attempt = Attempt {
            http_status: http_status as u16,
            status: payload.str("status"),
            stamped: payload.bool("stamped"),
        };
        let untracked = self.uploads.untracked();
        self.uploads
            .attempt(&host, attempt, now, &mut self.upload_notices);
        self.out.uploads_untracked += self.uploads.untracked() - untracked;
        self.collect_uploads(now);
    }

    /// Runs every deadline due at `now`.
    pub fn due(&mut self, now: u64) {
        self.presence.due(now, &mut self.out.presence);
        self.health.due(now, &mut self.notices);
        self.uploads.due(now, &mut self.upload_notices);
        self.out.digests_held_back += self.digests.due(now, &mut self.out.digests);
        self.collect_health(now);
        self.collect_uploads(now);
    }

    /// The earliest deadline of any detector.
    pub fn next_deadline(&self) -> Option<u64> {
        [
            self.presence.next_deadline(),
            self.health.next_deadline(),
            self.uploads.next_deadline(),
            self.digests.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn online(&self) -> usize {
        self.presence.online()
    }

    pub fn tracked(&self) -> usize {
        self.health.len()
    }

    /// Hosts the upload detectors track.
    pub fn upload_hosts(&self) -> usize {
        self.uploads.len()
    }

    fn collect_uploads(&mut self, now: u64) {
        for notice in self.upload_notices.drain(..) {
            let alert = record::upload_alert(
                &notice,
                self.uploads_silent_after,
                self.uploads_fatal_window,
                now,
            );
            if let Some(mut alert) = alert {
                alert.key = upload_key(&notice, now);
                self.out.alerts.push(alert);
            }
        }
    }

    fn collect_health(&mut self, now: u64) {
        for notice in self.notices.drain(..) {
            if let HealthNotice::Forgotten { device } = &notice {
                self.cooldown.forget(device.as_str());
            }
            if let Some(mut alert) = record::health_alert(&notice, self.silent_after) {
                alert.key = health_key(&notice, now);
                self.out.alerts.push(alert);
            }
        }
    }
}

/// A fleet-health alert's cluster key. A silence is named by the device's
/// last frame (the stream's time, the same on every instance) and the hour
/// bucket its detector fires in; a rejecting run by its hour bucket, the
/// detector's own once-an-hour rule; an end by the frame that ended it.
fn health_key(notice: &HealthNotice, now: u64) -> String {
    let hour = hour_bucket(now);
    match notice {
        HealthNotice::Silent {
            device,
            last_seen_ms,
        } => format!("silent:{device}:{last_seen_ms}:{hour}"),
        HealthNotice::Rejecting { device, .. } => format!("rejecting:{device}:{hour}"),
        HealthNotice::Resolved { device, symptom } => {
            format!("resolved:{}:{device}:{now}", symptom.as_str())
        }
        HealthNotice::Forgotten { device } => format!("forgotten:{device}:{now}"),
    }
}

/// An upload alert's cluster key, named as [`health_key`] names a device's
/// (the rule names keep the two apart).
fn upload_key(notice: &UploadNotice, now: u64) -> String {
    let hour = hour_bucket(now);
    match notice {
        UploadNotice::Silent {
            host,
            last_attempt_ms,
        } => format!("uploads-silent:{host}:{last_attempt_ms}:{hour}"),
        UploadNotice::FatalOnly { host, .. } => format!("uploads-fatal-only:{host}:{hour}"),
        UploadNotice::Unstamped { host, .. } => format!("uploads-unstamped:{host}:{hour}"),
        UploadNotice::Resolved { host, symptom } => {
            format!("resolved:{}:{host}:{now}", symptom.rule())
        }
        UploadNotice::Forgotten { host } => format!("uploads-forgotten:{host}:{now}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::episode::HOUR_MS;
    use crate::alerts::rules::{compile_all, RuleSpec};
    use crate::alerts::{DEFAULT_UPLOADS_FATAL_WINDOW, DEFAULT_UPLOADS_SILENT_AFTER};
    use crate::event::{Body, Draft, EventId};
    use serde_json::json;
    use serde_json::Map;

    fn engine(rules: usize) -> Engine {
        let specs: Vec<RuleSpec> = (0..rules)
            .map(|i| RuleSpec {
                name: format!("r{i}"),
                field: "cpu_percent".into(),
                above: Some(90.0 + i as f64),
                below: None,
                cooldown: None,
            })
            .collect();
        Engine::new(AlertsConfig {
            rules: compile_all(&specs, Duration::from_secs(60)).unwrap(),
            offline_after: Duration::from_secs(30),
            silent_after: Duration::from_secs(1800),
            rejecting_window: Duration::from_secs(300),
            digest_window: Duration::from_secs(300),
            max_digests_per_window: 20,
            max_devices: 10,
            uploads_silent_after: DEFAULT_UPLOADS_SILENT_AFTER,
            uploads_fatal_window: DEFAULT_UPLOADS_FATAL_WINDOW,
            max_upload_hosts: 2,
        })
    }

    fn upload(host: &str, payload: serde_json::Value) -> Event {
        let serde_json::Value::Object(map) = payload else {
            panic!("an object")
        };
        let draft = Draft::new(format!("uploads/{host}"), 0, Body::Object(map));
        Event::from_draft(EventId { epoch: 1, seq: 1 }, draft)
    }

    fn metrics(device: &str, cpu: f64) -> Event {
        let json = format!(
            r#"{{"device_id":"{device}","timestamp":1,"cpu_percent":{cpu},"mem_percent":1,"disk_percent":1}}"#
        );
        let frame = MetricsFrame::parse(device, json.as_bytes(), 4096).unwrap();
        let draft = Draft::new(format!("devices/{device}/metrics"), 0, Body::Metrics(frame));
        Event::from_draft(EventId { epoch: 1, seq: 1 }, draft)
    }

    #[test]
    fn events_are_routed_to_the_right_detector() {
        let mut e = engine(2);
        e.on_event(&metrics("d1", 95.0), 0);
        assert_eq!(e.out.alerts.len(), 2, "95 breaches r0 (90) and r1 (91)");
        assert_eq!(e.out.presence.len(), 1);
        e.out = Output::default();
        let mut body = Map::new();
        body.insert("score".into(), 3.into());
        let scored = Event::from_draft(
            EventId { epoch: 1, seq: 2 },
            Draft::new("attackers/a/scored", 0, Body::Object(body)),
        );
        e.on_event(&scored, 0);
        let obs = Event::from_draft(
            EventId { epoch: 1, seq: 3 },
            Draft::new("attackers/a/observation/dns", 0, Body::Object(Map::new())),
        );
        e.on_event(&obs, 0);
        e.due(300_000);
        assert_eq!(e.out.digests.len(), 1);
        assert_eq!(e.out.digests[0].score, Some(3.0));
    }

    #[test]
    fn outputs_are_named_by_what_decided_them_not_by_when_they_were_seen() {
        // Instances decide on the stream's time (the caller's `now`), so
        // the same events give every instance the same names.
        let mut e = engine(1);
        e.on_event(&metrics("d1", 95.0), 1_000);
        e.on_event(&metrics("d1", 95.0), 2_000);
        e.on_event(&metrics("d1", 10.0), 3_000);
        let keys: Vec<String> = e.out.alerts.iter().map(|a| a.key.clone()).collect();
        assert_eq!(
            keys,
            vec!["alert:r0:d1:firing:1000", "alert:r0:d1:resolved:3000"]
        );
        let mut e = engine(1);
        e.on_event(&metrics("d1", 95.0), 1_000);
        assert_eq!(e.out.alerts[0].cooldown_ms, Some(60_000));
        e.out = Output::default();
        e.on_event(&metrics("d1", 10.0), 2_000);
        assert_eq!(e.out.alerts[0].cooldown_ms, None, "an end has no cooldown");
    }

    #[test]
    fn health_keys_follow_the_detectors_own_once_an_hour_rule() {
        let d1 = DeviceId::parse("d1").unwrap();
        let silent = HealthNotice::Silent {
            device: d1.clone(),
            last_seen_ms: 5,
        };
        assert_eq!(health_key(&silent, HOUR_MS + 9), "silent:d1:5:1");
        let rejecting = HealthNotice::Rejecting {
            device: d1.clone(),
            rejected: 3,
            reason: "invalid_json",
        };
        assert_eq!(
            health_key(&rejecting, 2 * HOUR_MS),
            health_key(&rejecting, 3 * HOUR_MS - 1)
        );
        let resolved = HealthNotice::Resolved {
            device: d1,
            symptom: crate::alerts::health::Symptom::Silent,
        };
        assert_eq!(health_key(&resolved, 42), "resolved:silent:d1:42");
    }

    #[test]
    fn upload_events_feed_the_upload_detectors_and_malformed_ones_are_ignored() {
        let mut e = engine(0);
        for bad in [
            json!({"stamped": false}),
            json!({"http_status": "412", "stamped": false}),
            json!({"http_status": 412.5, "stamped": false}),
            json!({"http_status": 99, "stamped": false}),
            json!({"http_status": 700, "stamped": false}),
        ] {
            e.on_event(&upload("lab-01", bad), 0);
        }
        assert!(e.out.is_empty(), "{:?}", e.out);
        assert_eq!(e.upload_hosts(), 0);
        let refused = json!({"http_status": 400, "status": "missing-commit", "stamped": false});
        for t in 0..3 {
            e.on_event(&upload("lab-01", refused.clone()), HOUR_MS + t);
        }
        let keys: Vec<(&str, &str)> = e
            .out
            .alerts
            .iter()
            .map(|a| (a.rule.as_str(), a.key.as_str()))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("uploads-unstamped", "uploads-unstamped:lab-01:1"),
                ("uploads-fatal-only", "uploads-fatal-only:lab-01:1"),
            ]
        );
        e.out = Output::default();
        e.on_event(&upload("lab-01", json!({"http_status": 201})), HOUR_MS + 9);
        assert_eq!(e.out.alerts.len(), 1);
        assert_eq!(
            e.out.alerts[0].key,
            format!("resolved:uploads-fatal-only:lab-01:{}", HOUR_MS + 9)
        );
        assert_eq!(e.next_deadline(), Some(HOUR_MS + 1_800_000));
        e.out = Output::default();
        e.on_event(&upload("lab-02", json!({"http_status": 201})), HOUR_MS);
        e.on_event(&upload("lab-03", json!({"http_status": 201})), HOUR_MS);
        assert_eq!(e.upload_hosts(), 2, "the cap");
        assert_eq!(e.out.uploads_untracked, 1);
    }

    #[test]
    fn upload_keys_follow_the_detectors_own_once_an_hour_rule() {
        let host = DeviceId::parse("lab-01").unwrap();
        let silent = UploadNotice::Silent {
            host: host.clone(),
            last_attempt_ms: 5,
        };
        assert_eq!(
            upload_key(&silent, HOUR_MS + 9),
            "uploads-silent:lab-01:5:1"
        );
        let resolved = UploadNotice::Resolved {
            host,
            symptom: crate::alerts::uploads::UploadSymptom::Silent,
        };
        assert_eq!(
            upload_key(&resolved, 42),
            "resolved:uploads-silent:lab-01:42"
        );
    }

    #[test]
    fn with_no_rule_a_frame_only_feeds_presence_and_health() {
        let mut e = engine(0);
        e.on_metrics(metrics("d1", 99.0).body.as_metrics().unwrap(), 0);
        assert!(e.out.alerts.is_empty());
        assert_eq!(e.online(), 1);
        assert_eq!(e.tracked(), 1);
        assert_eq!(e.next_deadline(), Some(30_000));
    }
}
