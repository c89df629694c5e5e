//! The data that flows between actors.
//!
//! A [`Draft`] is an accepted event before the bus has numbered it; the bus
//! turns it into an [`Event`], whose wire forms are serialised once and shared
//! (`Arc`, `ByteString`) by every session that receives it.

use std::fmt;
use std::io::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use bytestring::ByteString;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::ingest::frame::MetricsFrame;
use crate::topic::{classify, DeliveryClass};

/// Milliseconds since the Unix epoch, UTC.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Event id: an epoch (this run's start, ms) plus a sequence within it, so an
/// id from a previous run is recognised as such and never replayed as if it
/// belonged to this one (Centrifugo's epoch + offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    pub epoch: u64,
    pub seq: u64,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_base36(f, self.epoch)?;
        write!(f, "-{}", self.seq)
    }
}

fn write_base36(f: &mut fmt::Formatter<'_>, mut n: u64) -> fmt::Result {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut buf = [0u8; 13];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = DIGITS[(n % 36) as usize];
        n /= 36;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    f.write_str(std::str::from_utf8(&buf[i..]).map_err(|_| fmt::Error)?)
}

impl EventId {
    /// Parses `epoch-seq` as produced by `Display`; anything else is `None`.
    pub fn parse(text: &str) -> Option<Self> {
        let (epoch, seq) = text.split_once('-')?;
        if epoch.is_empty() || epoch.len() > 13 || seq.is_empty() || seq.len() > 20 {
            return None;
        }
        let epoch = u64::from_str_radix(epoch, 36).ok()?;
        if !seq.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Self {
            epoch,
            seq: seq.parse().ok()?,
        })
    }
}

/// Payload of an event.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Body {
    Metrics(MetricsFrame),
    Object(Map<String, Value>),
}

impl Body {
    pub fn as_metrics(&self) -> Option<&MetricsFrame> {
        match self {
            Body::Metrics(m) => Some(m),
            Body::Object(_) => None,
        }
    }
}

/// An accepted event, not yet numbered. Built by ingest (or HTTP publish) so
/// the payload's JSON is produced off the bus's thread.
#[derive(Debug, Clone)]
pub struct Draft {
    pub topic: Arc<str>,
    pub ts_ms: u64,
    pub body: Body,
    /// `body` serialised, once.
    payload_json: String,
    /// Event name when the topic alone cannot tell it (presence: one topic,
    /// `device.online` or `device.offline`); `None` = [`classify`]'s.
    name: Option<&'static str>,
}

impl Draft {
    pub fn new(topic: impl Into<Arc<str>>, ts_ms: u64, body: Body) -> Self {
        // Serialising a validated frame or a `Map` cannot fail (string keys,
        // finite numbers); fall back to an empty object rather than panic.
        let payload_json = serde_json::to_string(&body).unwrap_or_else(|_| "{}".to_owned());
        Self {
            topic: topic.into(),
            ts_ms,
            body,
            payload_json,
            name: None,
        }
    }

    /// Names the event explicitly, overriding the topic's family name.
    pub fn with_event_name(mut self, name: &'static str) -> Self {
        self.name = Some(name);
        self
    }
}

/// A numbered event with its wire forms.
#[derive(Debug)]
pub struct Event {
    pub id: EventId,
    pub topic: Arc<str>,
    pub name: Arc<str>,
    pub class: DeliveryClass,
    pub ts_ms: u64,
    pub body: Body,
    /// `{"id","topic","event","ts","payload"}`: SSE `data:` and snapshots.
    pub envelope: ByteString,
    /// `{"type":"event",…envelope}`: the WebSocket text frame.
    pub ws_frame: ByteString,
    /// `{device_id: frame}` for `?format=edgewatch`, built on first use.
    edgewatch: OnceLock<Option<ByteString>>,
    /// `id:`/`event:`/`data:` for SSE, built on first use and shared.
    sse: OnceLock<Bytes>,
}

impl Event {
    pub fn from_draft(id: EventId, draft: Draft) -> Self {
        let Draft {
            topic,
            ts_ms,
            body,
            payload_json,
            name: explicit,
        } = draft;
        let (name, class) = classify(&topic);
        let name: Arc<str> = explicit.unwrap_or(name).into();
        // `"id":…,"payload":{…}}`, the part both wire forms share, written
        // once; then each form is one allocation of the exact size.
        let mut head = Vec::with_capacity(96 + topic.len() + name.len() + payload_json.len());
        head.extend_from_slice(b"\"id\":\"");
        let _ = write!(head, "{id}");
        head.extend_from_slice(b"\",\"topic\":");
        push_json_string(&mut head, &topic);
        head.extend_from_slice(b",\"event\":");
        push_json_string(&mut head, &name);
        let _ = write!(head, ",\"ts\":{ts_ms},\"payload\":");
        head.extend_from_slice(payload_json.as_bytes());
        head.push(b'}');
        let envelope = joined(b"{", &head);
        let ws_frame = joined(b"{\"type\":\"event\",", &head);
        Self {
            id,
            topic,
            name,
            class,
            ts_ms,
            body,
            envelope,
            ws_frame,
            edgewatch: OnceLock::new(),
            sse: OnceLock::new(),
        }
    }

    /// The SSE frame of this event, shared by every SSE session.
    pub fn sse_frame(&self) -> &Bytes {
        self.sse
            .get_or_init(|| crate::session::sse::event_frame(self))
    }

    /// The seed dashboard's `{device_id: frame}` text, for metrics events.
    pub fn edgewatch_frame(&self) -> Option<&ByteString> {
        self.edgewatch
            .get_or_init(|| {
                let frame = self.body.as_metrics()?;
                let json = serde_json::to_string(frame).ok()?;
                Some(format!("{{{}:{json}}}", json_string(frame.device_id.as_str())).into())
            })
            .as_ref()
    }
}

/// `text` as a JSON string literal, appended.
fn push_json_string(out: &mut Vec<u8>, text: &str) {
    if serde_json::to_writer(&mut *out, text).is_err() {
        out.extend_from_slice(b"\"\"");
    }
}

/// `prefix` then `rest`, as one string of exactly that size. Both parts are
/// UTF-8 built above, so the check cannot fail.
fn joined(prefix: &[u8], rest: &[u8]) -> ByteString {
    let mut bytes = Vec::with_capacity(prefix.len() + rest.len());
    bytes.extend_from_slice(prefix);
    bytes.extend_from_slice(rest);
    ByteString::try_from(Bytes::from(bytes)).unwrap_or_default()
}

fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics_draft() -> Draft {
        let frame = MetricsFrame::parse(
            "d1",
            br#"{"device_id":"d1","timestamp":5,"cpu_percent":1,"mem_percent":2,"disk_percent":3}"#,
            1024,
        )
        .unwrap();
        Draft::new(
            "devices/d1/metrics",
            1_763_800_000_123,
            Body::Metrics(frame),
        )
    }

    #[test]
    fn ids_round_trip_through_text() {
        let id = EventId {
            epoch: 1_763_800_000_000,
            seq: 1042,
        };
        let text = id.to_string();
        assert_eq!(EventId::parse(&text), Some(id));
        assert_eq!(
            EventId::parse(&EventId { epoch: 0, seq: 0 }.to_string()),
            Some(EventId { epoch: 0, seq: 0 })
        );
    }

    #[test]
    fn garbage_ids_do_not_parse() {
        for bad in [
            "",
            "abc",
            "-1",
            "k3f9-",
            "-5",
            "k3f9-x",
            "k3f9-+5",
            "k3f9-99999999999999999999999",
            "!!-1",
        ] {
            assert_eq!(EventId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn envelope_and_ws_frame_follow_the_wire_format() {
        let id = EventId { epoch: 36, seq: 7 };
        let event = Event::from_draft(id, metrics_draft());
        let envelope: Value = serde_json::from_str(&event.envelope).unwrap();
        assert_eq!(envelope["id"], "10-7");
        assert_eq!(envelope["topic"], "devices/d1/metrics");
        assert_eq!(envelope["event"], "metrics");
        assert_eq!(envelope["ts"], 1_763_800_000_123u64);
        assert_eq!(envelope["payload"]["cpu_percent"], 1.0);
        let frame: Value = serde_json::from_str(&event.ws_frame).unwrap();
        assert_eq!(frame["type"], "event");
        assert_eq!(frame["id"], "10-7");
        assert_eq!(frame["payload"], envelope["payload"]);
    }

    #[test]
    fn edgewatch_form_is_keyed_by_device() {
        let event = Event::from_draft(EventId { epoch: 1, seq: 1 }, metrics_draft());
        let v: Value = serde_json::from_str(event.edgewatch_frame().unwrap()).unwrap();
        assert_eq!(v["d1"]["disk_percent"], 3.0);
        let other = Draft::new("notifications/x", 0, Body::Object(Map::new()));
        assert!(Event::from_draft(EventId { epoch: 1, seq: 2 }, other)
            .edgewatch_frame()
            .is_none());
    }

    #[test]
    fn an_explicit_event_name_overrides_the_topic_family() {
        let draft = Draft::new("devices/d1/presence", 0, Body::Object(Map::new()))
            .with_event_name("device.offline");
        let event = Event::from_draft(EventId { epoch: 1, seq: 1 }, draft);
        assert_eq!(&*event.name, "device.offline");
        let v: Value = serde_json::from_str(&event.envelope).unwrap();
        assert_eq!(v["event"], "device.offline");
        let plain = Draft::new("alerts/d1/cpu_high", 0, Body::Object(Map::new()));
        assert_eq!(
            &*Event::from_draft(EventId { epoch: 1, seq: 2 }, plain).name,
            "alert"
        );
    }

    #[test]
    fn topics_with_quotes_stay_valid_json() {
        let draft = Draft::new("odd/\"quoted\"", 0, Body::Object(Map::new()));
        let event = Event::from_draft(EventId { epoch: 1, seq: 1 }, draft);
        let v: Value = serde_json::from_str(&event.envelope).unwrap();
        assert_eq!(v["topic"], "odd/\"quoted\"");
    }
}
