//! Events and an SSE parser for the engine's unit tests.

use std::sync::Arc;

use super::{Body, Draft, Event, EventId};
use crate::frame::MetricsFrame;

/// A metrics event of `device`, numbered `seq` (its timestamp too).
pub fn metrics(seq: u64, device: &str) -> Arc<Event> {
    let json = format!(
        r#"{{"device_id":"{device}","timestamp":{seq},"cpu_percent":1,"mem_percent":1,"disk_percent":1}}"#
    );
    let frame = MetricsFrame::parse(device, json.as_bytes(), 4096).expect("a valid frame");
    let draft = Draft::new(format!("devices/{device}/metrics"), 0, Body::Metrics(frame));
    Arc::new(Event::from_draft(EventId { epoch: 1, seq }, draft))
}

/// An empty notification-like event on `n/x`, numbered `seq`.
pub fn note(seq: u64) -> Arc<Event> {
    let draft = Draft::new("n/x", 0, Body::Object(Default::default()));
    Arc::new(Event::from_draft(EventId { epoch: 1, seq }, draft))
}

/// A WHATWG-style SSE parser: the events a browser would dispatch, as
/// (id, event name, data).
pub fn parse_sse(stream: &str) -> Vec<(Option<String>, String, String)> {
    let mut events = Vec::new();
    let (mut id, mut name, mut data): (Option<String>, String, Vec<String>) =
        (None, String::new(), Vec::new());
    for line in stream.split('\n') {
        if line.is_empty() {
            if !data.is_empty() {
                events.push((id.take(), std::mem::take(&mut name), data.join("\n")));
                data.clear();
            }
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = Some(value.to_owned()),
            "event" => name = value.to_owned(),
            "data" => data.push(value.to_owned()),
            _ => {}
        }
    }
    events
}
