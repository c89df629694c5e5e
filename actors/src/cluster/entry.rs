//! One event as a Redis stream entry, and back: the fields every instance
//! writes and reads. Pure.
//!
//! An entry holds the topic (`t`), the receive time in ms (`ts`), the
//! payload as JSON text (`p`, already validated by the instance that
//! appended it) and, for presence, the event name (`n`). The reader parses
//! the payload again with the same rules, so an entry that another program
//! wrote onto the stream key cannot bring anything the validator would
//! have refused.

use crate::event::{Body, Draft, EventId};
use crate::families::{explicit_event_name, metrics_device};
use crate::frame::{parse_object, MetricsFrame};

pub const TOPIC: &str = "t";
pub const TS: &str = "ts";
pub const PAYLOAD: &str = "p";
pub const NAME: &str = "n";

/// Largest payload a reader accepts from the stream: above any
/// `mqtt.max_payload_bytes`, plus a reject event's excerpt and envelope.
pub const MAX_ENTRY_PAYLOAD: usize = 2 << 20;

/// An entry that is not an edgebus event.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EntryError {
    #[error("stream entry {id}: field `{field}` is missing or not UTF-8")]
    Missing { id: String, field: &'static str },
    #[error("stream entry {id}: {reason}")]
    Invalid { id: String, reason: String },
}

/// What is appended for one draft.
#[derive(Debug, PartialEq)]
pub struct EntryFields<'a> {
    pub topic: &'a str,
    pub ts: String,
    pub payload: &'a str,
    pub name: Option<&'static str>,
}

impl<'a> EntryFields<'a> {
    pub fn of(draft: &'a Draft) -> Self {
        Self {
            topic: &draft.topic,
            ts: draft.ts_ms.to_string(),
            payload: draft.payload_json(),
            name: draft.explicit_name(),
        }
    }

    /// Field name and value pairs, in order.
    pub fn pairs(&self) -> Vec<(&'static str, &[u8])> {
        let mut out: Vec<(&'static str, &[u8])> = vec![
            (TOPIC, self.topic.as_bytes()),
            (TS, self.ts.as_bytes()),
            (PAYLOAD, self.payload.as_bytes()),
        ];
        if let Some(name) = self.name {
            out.push((NAME, name.as_bytes()));
        }
        out
    }
}

/// The draft an entry holds, numbered with its entry id. `get` looks a
/// field up by name.
pub fn decode<'a>(id: &str, get: impl Fn(&str) -> Option<&'a [u8]>) -> Result<Draft, EntryError> {
    let invalid = |reason: String| EntryError::Invalid {
        id: id.to_owned(),
        reason,
    };
    let text = |field: &'static str| {
        get(field)
            .and_then(|b| std::str::from_utf8(b).ok())
            .ok_or_else(|| EntryError::Missing {
                id: id.to_owned(),
                field,
            })
    };
    let event_id = EventId::parse_stream(id).ok_or_else(|| invalid("not a stream id".into()))?;
    let topic = text(TOPIC)?;
    let ts_ms: u64 = text(TS)?
        .parse()
        .map_err(|_| invalid("`ts` is not a number".into()))?;
    let payload = get(PAYLOAD).ok_or_else(|| EntryError::Missing {
        id: id.to_owned(),
        field: PAYLOAD,
    })?;
    let body = match metrics_device(topic) {
        Some(device) => Body::Metrics(
            MetricsFrame::parse(device, payload, MAX_ENTRY_PAYLOAD)
                .map_err(|r| invalid(r.to_string()))?,
        ),
        None => Body::Object(
            parse_object(payload, MAX_ENTRY_PAYLOAD).map_err(|r| invalid(r.to_string()))?,
        ),
    };
    let mut draft = Draft::new(topic, ts_ms, body).numbered(event_id);
    if let Some(name) = get(NAME) {
        let name = std::str::from_utf8(name)
            .ok()
            .and_then(explicit_event_name)
            .ok_or_else(|| invalid("unknown event name".into()))?;
        draft = draft.with_event_name(name);
    }
    Ok(draft)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::event::Event;

    fn round_trip(draft: Draft) -> Draft {
        let fields = EntryFields::of(&draft);
        let map: HashMap<&str, Vec<u8>> = fields
            .pairs()
            .into_iter()
            .map(|(k, v)| (k, v.to_vec()))
            .collect();
        decode("1764423000000-5", |f| map.get(f).map(Vec::as_slice)).unwrap()
    }

    fn metrics_draft() -> Draft {
        let payload = br#"{"device_id":"d1","timestamp":1,"cpu_percent":42.5,"mem_percent":1,"disk_percent":2}"#;
        let frame = MetricsFrame::parse("d1", payload, 4096).unwrap();
        Draft::new(
            "devices/d1/metrics",
            1_764_423_000_123,
            Body::Metrics(frame),
        )
    }

    #[test]
    fn an_event_reads_back_as_it_was_appended_with_the_entry_id() {
        let wire = Event::from_draft(EventId::stream(1, 1), metrics_draft());
        let back = round_trip(metrics_draft());
        assert_eq!(back.id(), Some(EventId::stream(1_764_423_000_000, 5)));
        let event = Event::from_draft(EventId::stream(1, 1), back);
        assert_eq!(event.envelope, wire.envelope);
    }

    #[test]
    fn presence_keeps_its_event_name() {
        let draft = Draft::new("alerts/d1/presence", 7, Body::Object(Default::default()))
            .with_event_name("device.offline");
        let back = round_trip(draft);
        assert_eq!(back.explicit_name(), Some("device.offline"));
        assert_eq!(back.ts_ms, 7);
    }

    #[test]
    fn foreign_entries_are_refused_with_the_reason() {
        let bad_metrics: HashMap<&str, &[u8]> = [
            (TOPIC, &b"devices/d1/metrics"[..]),
            (TS, b"1"),
            (PAYLOAD, b"{\"cpu_percent\":1}"),
        ]
        .into();
        assert!(matches!(
            decode("1-1", |f| bad_metrics.get(f).copied()),
            Err(EntryError::Invalid { .. })
        ));
        let no_topic: HashMap<&str, &[u8]> = [(TS, &b"1"[..]), (PAYLOAD, b"{}")].into();
        assert_eq!(
            decode("1-1", |f| no_topic.get(f).copied()).unwrap_err(),
            EntryError::Missing {
                id: "1-1".into(),
                field: TOPIC
            }
        );
        let named: HashMap<&str, &[u8]> = [
            (TOPIC, &b"x/y"[..]),
            (TS, b"1"),
            (PAYLOAD, b"{}"),
            (NAME, b"error"),
        ]
        .into();
        assert!(decode("1-1", |f| named.get(f).copied()).is_err());
    }
}
