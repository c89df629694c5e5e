//! Alert records: what goes on the bus (`alerts/{device_id}/{rule}`, event
//! `alert`) and the Slack text that goes with it, built from the detectors'
//! decisions. Pure. Texts are raw: the Slack actor escapes them.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::event::{Body, Draft};
use crate::families;
use crate::frame::{DeviceId, MetricsFrame};

use super::clock::{human_duration, rfc3339};
use super::digest::DigestReport;
use super::health::{HealthNotice, Symptom};
use super::presence::PresenceChange;
use super::rules::Rule;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertState {
    Firing,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }

    /// The level a dashboard shows it with (the notification levels).
    pub fn level(self) -> &'static str {
        match self {
            AlertState::Firing => "error",
            AlertState::Resolved => "success",
        }
    }
}

/// One alert: a bus event and a Slack text.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub device: DeviceId,
    pub rule: String,
    pub state: AlertState,
    /// Extra payload fields (beyond device_id, rule, state, message).
    pub fields: Map<String, Value>,
    pub text: String,
    /// Names this alert the same on every cluster instance (they decide
    /// alike: they read one stream); set by the engine.
    pub key: String,
    /// A fired rule's cooldown: the cluster keeps a mark this long, so an
    /// instance that started late does not repeat it.
    pub cooldown_ms: Option<u64>,
}

impl Alert {
    pub fn topic(&self) -> String {
        families::alert_topic(self.device.as_str(), &self.rule)
    }

    /// The bus event: `{device_id, rule, state, level, message, …fields}`.
    pub fn draft(&self, ts_ms: u64) -> Draft {
        let mut payload = Map::new();
        payload.insert("device_id".into(), Value::from(self.device.as_str()));
        payload.insert("rule".into(), Value::from(self.rule.as_str()));
        payload.insert("state".into(), Value::from(self.state.as_str()));
        payload.insert("level".into(), Value::from(self.state.level()));
        payload.insert("message".into(), Value::from(self.text.as_str()));
        payload.extend(self.fields.clone());
        Draft::new(self.topic(), ts_ms, Body::Object(payload))
    }
}

fn num(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

/// A threshold rule fired or resolved for `frame`'s device.
pub fn rule_alert(rule: &Rule, frame: &MetricsFrame, value: f64, state: AlertState) -> Alert {
    let mut fields = Map::new();
    fields.insert("field".into(), Value::from(rule.field.as_str()));
    fields.insert("value".into(), num(value));
    if let Some(above) = rule.above {
        fields.insert("above".into(), num(above));
    }
    if let Some(below) = rule.below {
        fields.insert("below".into(), num(below));
    }
    let device = &frame.device_id;
    let threshold = rule.threshold_text();
    let field = rule.field.as_str();
    let text = match state {
        AlertState::Firing => format!(
            ":rotating_light: {} ALERT at {device}: {field} {value:.1} (threshold: {threshold}). CPU {:.1}%, RAM {:.1}%, Disk {:.1}%",
            rule.name, frame.cpu_percent, frame.mem_percent, frame.disk_percent
        ),
        AlertState::Resolved => format!(
            ":white_check_mark: {} resolved at {device}: {field} {value:.1} (threshold: {threshold})",
            rule.name
        ),
    };
    Alert {
        device: device.clone(),
        rule: rule.name.to_string(),
        state,
        fields,
        text,
        key: String::new(),
        cooldown_ms: None,
    }
}

/// A fleet-health finding as an alert (`None` for bookkeeping notices).
pub fn health_alert(notice: &HealthNotice, silent_after: Duration) -> Option<Alert> {
    let mut fields = Map::new();
    let (device, symptom, state, text) = match notice {
        HealthNotice::Silent {
            device,
            last_seen_ms,
        } => {
            fields.insert("last_seen".into(), Value::from(*last_seen_ms));
            let text = format!(
                ":zzz: {device} is silent: nothing received for over {} (last seen {})",
                human_duration(silent_after),
                rfc3339(*last_seen_ms)
            );
            (device, Symptom::Silent, AlertState::Firing, text)
        }
        HealthNotice::Rejecting {
            device,
            rejected,
            reason,
        } => {
            fields.insert("rejected".into(), Value::from(*rejected));
            fields.insert("reason".into(), Value::from(*reason));
            let text = format!(
                ":no_entry: {device} is rejecting: its last {rejected} frames were all refused (last reason: {reason})"
            );
            (device, Symptom::Rejecting, AlertState::Firing, text)
        }
        HealthNotice::Resolved { device, symptom } => {
            let text = match symptom {
                Symptom::Silent => {
                    format!(":white_check_mark: {device} is sending again (silent resolved)")
                }
                Symptom::Rejecting => {
                    format!(":white_check_mark: {device} frames are accepted again (rejecting resolved)")
                }
            };
            (device, *symptom, AlertState::Resolved, text)
        }
        HealthNotice::Forgotten { .. } => return None,
    };
    Some(Alert {
        device: device.clone(),
        rule: symptom.as_str().to_owned(),
        state,
        fields,
        text,
        key: String::new(),
        cooldown_ms: None,
    })
}

/// `device.online` / `device.offline` on `devices/{id}/presence`.
pub fn presence_draft(change: &PresenceChange, ts_ms: u64) -> Draft {
    let mut payload = Map::new();
    payload.insert("device_id".into(), Value::from(change.device().as_str()));
    payload.insert("last_seen".into(), Value::from(change.last_seen_ms()));
    let topic = families::presence_topic(change.device().as_str());
    Draft::new(topic, ts_ms, Body::Object(payload)).with_event_name(change.event_name())
}

/// "attacker X: N observations across K primitives in the last W, score S".
pub fn digest_text(report: &DigestReport) -> String {
    let obs = if report.observations == 1 {
        "observation"
    } else {
        "observations"
    };
    let prims = if report.primitives == 1 {
        "primitive"
    } else {
        "primitives"
    };
    let score = report
        .score
        .map_or_else(|| "n/a".to_owned(), |s| format!("{s}"));
    let attacker: String = report.attacker.chars().take(128).collect();
    let at_least = if report.primitives_capped {
        "at least "
    } else {
        ""
    };
    format!(
        ":shield: attacker {attacker}: {} {obs} across {at_least}{} {prims} in the last {}, score {score}",
        report.observations,
        report.primitives,
        human_duration(Duration::from_millis(report.window_ms)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::rules::RuleSpec;
    use crate::event::{Event, EventId};

    fn frame(cpu: f64) -> MetricsFrame {
        let json = format!(
            r#"{{"device_id":"d1","timestamp":1,"cpu_percent":{cpu},"mem_percent":40,"disk_percent":70}}"#
        );
        MetricsFrame::parse("d1", json.as_bytes(), 4096).unwrap()
    }

    fn cpu_rule() -> Rule {
        Rule::compile(
            &RuleSpec {
                name: "cpu_high".into(),
                field: "cpu_percent".into(),
                above: Some(90.0),
                below: None,
                cooldown: None,
            },
            Duration::from_secs(60),
        )
        .unwrap()
    }

    #[test]
    fn a_rule_alert_is_an_alert_event_with_the_seed_style_text() {
        let alert = rule_alert(&cpu_rule(), &frame(95.25), 95.25, AlertState::Firing);
        assert_eq!(
            alert.text,
            ":rotating_light: cpu_high ALERT at d1: cpu_percent 95.2 (threshold: above 90). CPU 95.2%, RAM 40.0%, Disk 70.0%"
        );
        let event = Event::from_draft(EventId { epoch: 1, seq: 1 }, alert.draft(7));
        assert_eq!(&*event.topic, "alerts/d1/cpu_high");
        assert_eq!(event.name, "alert");
        let v: Value = serde_json::from_str(&event.envelope).unwrap();
        let p = &v["payload"];
        assert_eq!(p["device_id"], "d1");
        assert_eq!(p["rule"], "cpu_high");
        assert_eq!(p["state"], "firing");
        assert_eq!(p["field"], "cpu_percent");
        assert_eq!(p["value"], 95.25);
        assert_eq!(p["above"], 90.0);
        assert!(p.get("below").is_none());
        let resolved = rule_alert(&cpu_rule(), &frame(40.0), 40.0, AlertState::Resolved);
        assert_eq!(resolved.draft(0).topic.as_ref(), "alerts/d1/cpu_high");
        assert!(resolved.text.contains("resolved at d1"));
    }

    #[test]
    fn health_findings_use_their_symptom_as_the_rule() {
        let d1 = DeviceId::parse("d1").unwrap();
        let silent = health_alert(
            &HealthNotice::Silent {
                device: d1.clone(),
                last_seen_ms: 1_777_729_711_000,
            },
            Duration::from_secs(1800),
        )
        .unwrap();
        assert_eq!(silent.topic(), "alerts/d1/silent");
        assert_eq!(
            silent.text,
            ":zzz: d1 is silent: nothing received for over 30 minutes (last seen 2026-05-02T13:48:31Z)"
        );
        let rejecting = health_alert(
            &HealthNotice::Rejecting {
                device: d1.clone(),
                rejected: 4,
                reason: "bad_json",
            },
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(rejecting.topic(), "alerts/d1/rejecting");
        assert_eq!(rejecting.fields["reason"], "bad_json");
        let resolved = health_alert(
            &HealthNotice::Resolved {
                device: d1.clone(),
                symptom: Symptom::Rejecting,
            },
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(resolved.state, AlertState::Resolved);
        assert!(health_alert(&HealthNotice::Forgotten { device: d1 }, Duration::ZERO).is_none());
    }

    #[test]
    fn presence_events_carry_their_own_names() {
        let change = PresenceChange::Offline {
            device: DeviceId::parse("d1").unwrap(),
            last_seen_ms: 5,
        };
        let event = Event::from_draft(EventId { epoch: 1, seq: 1 }, presence_draft(&change, 9));
        assert_eq!(&*event.topic, "devices/d1/presence");
        assert_eq!(event.name, "device.offline");
        let v: Value = serde_json::from_str(&event.envelope).unwrap();
        assert_eq!(v["payload"]["last_seen"], 5);
    }

    #[test]
    fn a_digest_reads_as_one_sentence() {
        let report = DigestReport {
            attacker: "a-1".into(),
            observations: 12,
            primitives: 3,
            primitives_capped: false,
            window_ms: 300_000,
            score: Some(87.5),
            opened_ms: 0,
        };
        assert_eq!(
            digest_text(&report),
            ":shield: attacker a-1: 12 observations across 3 primitives in the last 5 minutes, score 87.5"
        );
    }
}
