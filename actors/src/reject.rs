//! The `edgebus/rejects` event: what ingest and the registry publish when
//! they refuse a frame, and what the Alerts actor counts.

use serde_json::{Map, Value};

use crate::event::{Body, Draft};
pub use crate::families::REJECTS_TOPIC;
use crate::frame::Rejection;

/// Bytes of a rejected payload quoted in its reject event.
const REJECT_EXCERPT_BYTES: usize = 64;

/// The `edgebus/rejects` event for a refused frame: topic, device when known,
/// reason and a short excerpt (never the whole payload).
pub fn reject_draft(
    topic: &str,
    device: Option<&str>,
    rejection: &Rejection,
    payload: &[u8],
    ts_ms: u64,
) -> Draft {
    let mut body = Map::new();
    body.insert("topic".into(), Value::from(topic));
    if let Some(device) = device {
        body.insert("device_id".into(), Value::from(device));
    }
    body.insert("reason".into(), Value::from(rejection.as_str()));
    body.insert("detail".into(), Value::from(rejection.to_string()));
    let cut = &payload[..payload.len().min(REJECT_EXCERPT_BYTES)];
    body.insert(
        "excerpt".into(),
        Value::from(String::from_utf8_lossy(cut).into_owned()),
    );
    Draft::new(REJECTS_TOPIC, ts_ms, Body::Object(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reject_event_carries_only_a_short_excerpt() {
        let payload = vec![b'x'; 10_000];
        let draft = reject_draft(
            "devices/d1/metrics",
            Some("d1"),
            &Rejection::TooLarge(10_000),
            &payload,
            5,
        );
        assert_eq!(&*draft.topic, REJECTS_TOPIC);
        let body = draft.body.fields().expect("object body");
        assert_eq!(body.str("reason"), Some("too_large"));
        assert_eq!(body.str("device_id"), Some("d1"));
        assert_eq!(body.str("excerpt").unwrap().len(), REJECT_EXCERPT_BYTES);
    }
}
