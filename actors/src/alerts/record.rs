//! Alert records: what goes on the bus (`alerts/{device_id}/{rule}`, event
//! `alert`) and the Slack text that goes with it, built from the detectors'
//! decisions. Pure. Texts are raw: the Slack actor escapes them.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::event::{Body, Draft, Event};
use crate::families;
use crate::frame::{DeviceId, MetricsFrame};

use super::clock::{human_duration, rfc3339};
use super::digest::DigestReport;
use super::episode::hour_bucket;
use super::health::{HealthNotice, Symptom};
use super::journal::JournalLine;
use super::presence::PresenceChange;
use super::rules::Rule;
use super::uploads::{UploadNotice, UploadSymptom};

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

/// The `source` of an upload detector's alert.
pub const UPLOADS_SOURCE: &str = "uploads";

/// An upload detector's finding as an alert (`None` for bookkeeping
/// notices), raised at `now_ms`. Its payload carries what `alerts.jsonl`
/// needs, so the journal line is read back from the bus event alone:
/// `symptom`, `source: "uploads"`, `hour_bucket`, `detail`.
pub fn upload_alert(
    notice: &UploadNotice,
    silent_after: Duration,
    fatal_window: Duration,
    now_ms: u64,
) -> Option<Alert> {
    let mut fields = Map::new();
    let (host, symptom, state, detail) = match notice {
        UploadNotice::Silent {
            host,
            last_attempt_ms,
        } => {
            fields.insert("last_attempt".into(), Value::from(*last_attempt_ms));
            let detail = format!(
                "no upload attempt for over {} (last {})",
                human_duration(silent_after),
                rfc3339(*last_attempt_ms)
            );
            (host, UploadSymptom::Silent, AlertState::Firing, detail)
        }
        UploadNotice::FatalOnly {
            host,
            refused,
            http_status,
            status,
        } => {
            fields.insert("refused".into(), Value::from(*refused));
            fields.insert("http_status".into(), Value::from(*http_status));
            let last = match status {
                Some(status) => {
                    fields.insert("status".into(), Value::from(status.as_str()));
                    format!("{http_status} {status}")
                }
                None => http_status.to_string(),
            };
            let uploads = if *refused == 1 { "upload" } else { "uploads" };
            let detail = format!(
                "{refused} {uploads} refused, none stored for {} (last: {last})",
                human_duration(fatal_window)
            );
            (host, UploadSymptom::FatalOnly, AlertState::Firing, detail)
        }
        UploadNotice::Unstamped { host, http_status } => {
            fields.insert("http_status".into(), Value::from(*http_status));
            let detail =
                format!("uploading without the code commit header (last answer: {http_status})");
            (host, UploadSymptom::Unstamped, AlertState::Firing, detail)
        }
        UploadNotice::Resolved { host, symptom } => {
            let detail = match symptom {
                UploadSymptom::Silent => "uploading again",
                UploadSymptom::FatalOnly => "uploads are stored again",
                UploadSymptom::Unstamped => "uploads carry the commit header again",
            };
            (host, *symptom, AlertState::Resolved, detail.to_owned())
        }
        UploadNotice::Forgotten { .. } => return None,
    };
    let text = match (state, symptom) {
        (AlertState::Resolved, _) => format!(
            ":white_check_mark: {host} {detail} ({} resolved)",
            symptom.rule()
        ),
        (AlertState::Firing, UploadSymptom::Silent) => {
            format!(":zzz: {host} uploads are silent: {detail}")
        }
        (AlertState::Firing, UploadSymptom::FatalOnly) => {
            format!(":no_entry: {host} uploads are all refused (fatal-only): {detail}")
        }
        (AlertState::Firing, UploadSymptom::Unstamped) => {
            format!(":warning: {host} uploads are unstamped: {detail}")
        }
    };
    fields.insert("symptom".into(), Value::from(symptom.as_str()));
    fields.insert("source".into(), Value::from(UPLOADS_SOURCE));
    fields.insert("hour_bucket".into(), Value::from(hour_bucket(now_ms)));
    fields.insert("detail".into(), Value::from(detail));
    Some(Alert {
        device: host.clone(),
        rule: symptom.rule().to_owned(),
        state,
        fields,
        text,
        key: String::new(),
        cooldown_ms: None,
    })
}

/// The `alerts.jsonl` line of an upload detector's firing, read from its
/// alert event as it comes back on the bus; `None` for any other event.
pub fn journal_line(event: &Event) -> Option<JournalLine> {
    let mut levels = event.topic.split('/');
    let (Some("alerts"), Some(_), Some(rule), None) =
        (levels.next(), levels.next(), levels.next(), levels.next())
    else {
        return None;
    };
    let symptom = UploadSymptom::from_rule(rule)?;
    let fields = event.body.fields()?;
    if fields.str("state")? != AlertState::Firing.as_str()
        || fields.str("source")? != UPLOADS_SOURCE
    {
        return None;
    }
    let bucket = fields.f64("hour_bucket")?;
    if !(bucket.is_finite() && bucket >= 0.0 && bucket.fract() == 0.0) {
        return None;
    }
    Some(JournalLine {
        ts: rfc3339(event.ts_ms),
        host: fields.str("device_id")?.to_owned(),
        symptom: symptom.as_str(),
        hour_bucket: bucket as u64,
        detail: fields.str("detail").unwrap_or_default().to_owned(),
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

    fn upload(notice: &UploadNotice, now_ms: u64) -> Alert {
        let half_hour = Duration::from_secs(1800);
        upload_alert(notice, half_hour, half_hour, now_ms).unwrap()
    }

    #[test]
    fn upload_findings_are_alerts_under_their_own_rules() {
        let host = DeviceId::parse("lab-01").unwrap();
        let now = 1_777_729_711_000; // 13:48:31Z, bucket 493813
        let fatal = upload(
            &UploadNotice::FatalOnly {
                host: host.clone(),
                refused: 3,
                http_status: 412,
                status: Some("stale-commit".into()),
            },
            now,
        );
        assert_eq!(fatal.topic(), "alerts/lab-01/uploads-fatal-only");
        assert_eq!(
            fatal.text,
            ":no_entry: lab-01 uploads are all refused (fatal-only): 3 uploads refused, none stored for 30 minutes (last: 412 stale-commit)"
        );
        let event = Event::from_draft(EventId { epoch: 1, seq: 1 }, fatal.draft(now));
        assert_eq!(event.name, "alert");
        let v: Value = serde_json::from_str(&event.envelope).unwrap();
        let p = &v["payload"];
        assert_eq!(p["device_id"], "lab-01");
        assert_eq!(p["rule"], "uploads-fatal-only");
        assert_eq!(p["state"], "firing");
        assert_eq!(p["symptom"], "fatal-only");
        assert_eq!(p["source"], "uploads");
        assert_eq!(p["hour_bucket"], 493_813);
        assert_eq!(p["refused"], 3);
        assert_eq!(p["http_status"], 412);
        assert_eq!(p["status"], "stale-commit");
        assert_eq!(
            journal_line(&event),
            Some(JournalLine {
                ts: "2026-05-02T13:48:31Z".into(),
                host: "lab-01".into(),
                symptom: "fatal-only",
                hour_bucket: 493_813,
                detail: "3 uploads refused, none stored for 30 minutes (last: 412 stale-commit)"
                    .into(),
            })
        );

        let silent = upload(
            &UploadNotice::Silent {
                host: host.clone(),
                last_attempt_ms: now - 1_800_000,
            },
            now,
        );
        assert_eq!(
            silent.text,
            ":zzz: lab-01 uploads are silent: no upload attempt for over 30 minutes (last 2026-05-02T13:18:31Z)"
        );
        let unstamped = upload(
            &UploadNotice::Unstamped {
                host: host.clone(),
                http_status: 201,
            },
            now,
        );
        assert_eq!(unstamped.topic(), "alerts/lab-01/uploads-unstamped");
        assert_eq!(unstamped.fields["symptom"], "unstamped");

        let resolved = upload(
            &UploadNotice::Resolved {
                host: host.clone(),
                symptom: UploadSymptom::FatalOnly,
            },
            now,
        );
        assert_eq!(resolved.state, AlertState::Resolved);
        assert_eq!(
            resolved.text,
            ":white_check_mark: lab-01 uploads are stored again (uploads-fatal-only resolved)"
        );
        let event = Event::from_draft(EventId { epoch: 1, seq: 2 }, resolved.draft(now));
        assert_eq!(journal_line(&event), None, "only firings are journalled");
        assert!(upload_alert(
            &UploadNotice::Forgotten { host },
            Duration::ZERO,
            Duration::ZERO,
            now
        )
        .is_none());
    }

    #[test]
    fn only_upload_alerts_are_journalled() {
        let d1 = DeviceId::parse("d1").unwrap();
        let silent = health_alert(
            &HealthNotice::Silent {
                device: d1,
                last_seen_ms: 0,
            },
            Duration::from_secs(1800),
        )
        .unwrap();
        let event = Event::from_draft(EventId { epoch: 1, seq: 1 }, silent.draft(0));
        assert_eq!(journal_line(&event), None);
        // An alert topic with an upload rule's name but not edgebus's payload.
        let mut forged = Map::new();
        forged.insert("state".into(), "firing".into());
        forged.insert("device_id".into(), "x".into());
        let draft = Draft::new("alerts/x/uploads-silent", 0, Body::Object(forged));
        let event = Event::from_draft(EventId { epoch: 1, seq: 2 }, draft);
        assert_eq!(journal_line(&event), None);
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
