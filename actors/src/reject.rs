//! The `edgebus/rejects` event: what ingest and the registry publish when
//! they refuse a frame, and what the Alerts actor counts. Its body is
//! written ([`reject_draft`]) and read back ([`Reject::read`]) here only.

use serde_json::{Map, Value};

use crate::event::{Body, Draft, Fields};
pub use crate::families::REJECTS_TOPIC;
use crate::frame::{DeviceId, Rejection};

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

/// What a reject event tells about the device that sent the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub device: DeviceId,
    /// One of [`Rejection::ALL_REASONS`], or `"unknown"`.
    pub reason: &'static str,
}

impl Reject {
    /// The device and reason of a reject event's body; `None` when it names
    /// no valid device (the topic named none).
    pub fn read(body: &Fields) -> Option<Self> {
        let device = DeviceId::parse(body.str("device_id")?).ok()?;
        let reason = body.str("reason").unwrap_or("");
        let reason = Rejection::ALL_REASONS
            .iter()
            .copied()
            .find(|r| *r == reason)
            .unwrap_or("unknown");
        Some(Self { device, reason })
    }
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

    #[test]
    fn a_reject_event_reads_back_its_device_and_reason() {
        let draft = reject_draft(
            "devices/d1/metrics",
            Some("d1"),
            &Rejection::NotUtf8,
            b"x",
            5,
        );
        let body = draft.body.fields().expect("object body");
        assert_eq!(
            Reject::read(body),
            Some(Reject {
                device: DeviceId::parse("d1").unwrap(),
                reason: "not_utf8"
            })
        );
        let draft = reject_draft("plant/x", None, &Rejection::NotObject, b"[1]", 5);
        assert_eq!(
            Reject::read(draft.body.fields().expect("object body")),
            None
        );
    }
}
