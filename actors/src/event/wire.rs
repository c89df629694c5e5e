//! Every wire form of what the bus delivers, besides the per-event forms an
//! [`Event`] keeps: WebSocket control frames and snapshots, SSE framing and
//! snapshots, the seed dashboard's edgewatch snapshot. The sessions choose a
//! form; the bytes are decided here, once.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use bytestring::ByteString;

use super::{Event, EventId};

/// `{"type":"lagged","dropped":n}`: this many events were dropped.
pub fn ws_lagged(n: u64) -> ByteString {
    format!(r#"{{"type":"lagged","dropped":{n}}}"#).into()
}

/// `{"type":"unsubscribed","topics":[…]}`: no event of these filters follows.
pub fn ws_unsubscribed(topics: &[&str]) -> ByteString {
    let json = serde_json::json!({"type": "unsubscribed", "topics": topics});
    json.to_string().into()
}

/// `{"type":"error","error":…}`: a client op was refused.
pub fn ws_error(error: &str) -> ByteString {
    let json = serde_json::json!({"type": "error", "error": error});
    json.to_string().into()
}

/// The refusal of an op over the session's budget, with when to retry.
pub fn ws_rate_limited(ms: u64) -> ByteString {
    format!(
        r#"{{"type":"error","error":"rate_limited","message":"too many ops: slow down","retry_after_ms":{ms}}}"#
    )
    .into()
}

/// `{"type":"snapshot","events":[envelope,…],"last_id":…}` from shared
/// envelopes; `"reset":true` when the client's resume id was not honoured,
/// `"truncated":true` when the bus cut the snapshot at its bound.
pub fn ws_snapshot(
    events: &[Arc<Event>],
    last_id: EventId,
    reset: bool,
    truncated: bool,
) -> ByteString {
    let view = SnapshotView {
        events,
        last_id,
        reset,
        truncated,
    };
    view.pieces(SnapshotForm::WebSocket, usize::MAX)
        .collect::<String>()
        .into()
}

/// Rendered snapshot text per piece. A large snapshot goes out in pieces
/// (WebSocket: fragments of one message; SSE: chunks of one event), each
/// rendered only once the socket took the one before: a client that stops
/// reading holds a few pieces, not whole snapshots of up to
/// `bus.snapshot_max_events` events.
pub const SNAPSHOT_PIECE_BYTES: usize = 64 * 1024;

/// The wire a snapshot is rendered for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotForm {
    /// `{"type":"snapshot","events":[…],"last_id":…}`.
    WebSocket,
    /// `id:`/`event: snapshot`/`data: {"events":[…],"last_id":…,"reset":…}`.
    Sse,
}

/// What a snapshot says, borrowed from wherever it is kept.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotView<'a> {
    pub events: &'a [Arc<Event>],
    pub last_id: EventId,
    pub reset: bool,
    pub truncated: bool,
}

impl<'a> SnapshotView<'a> {
    /// Its text in pieces of about `piece_bytes`, rendered one at a time.
    pub fn pieces(self, form: SnapshotForm, piece_bytes: usize) -> SnapshotPieces<'a> {
        SnapshotPieces {
            view: self,
            form,
            piece_bytes,
            cursor: SnapshotCursor::default(),
        }
    }
}

/// Where a snapshot's rendering stands; kept apart from the snapshot so an
/// owner of both (an SSE body) can resume it on its next poll.
#[derive(Debug, Default)]
pub struct SnapshotCursor {
    next: usize,
    started: bool,
    finished: bool,
}

impl SnapshotCursor {
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The next piece of about `piece_bytes` (cut only between envelopes,
    /// so a piece exceeds it by at most one envelope and the tail); `None`
    /// after the last.
    pub fn next_piece(
        &mut self,
        view: &SnapshotView<'_>,
        form: SnapshotForm,
        piece_bytes: usize,
    ) -> Option<String> {
        if self.finished {
            return None;
        }
        let events = view.events;
        let mut out = String::new();
        if !self.started {
            self.started = true;
            let all: usize = events.iter().map(|e| e.envelope.len() + 1).sum();
            out.reserve(96 + all.min(piece_bytes));
            match form {
                SnapshotForm::WebSocket => out.push_str(r#"{"type":"snapshot","events":["#),
                SnapshotForm::Sse => {
                    // The id is ours (base36 and digits): nothing to clean.
                    out.push_str("id: ");
                    out.push_str(&view.last_id.to_string());
                    out.push_str("\nevent: snapshot\ndata: ");
                    out.push_str(r#"{"events":["#);
                }
            }
        }
        while self.next < events.len() && out.len() < piece_bytes {
            if self.next > 0 {
                out.push(',');
            }
            // JSON text escapes every control character: the envelopes
            // keep the SSE `data:` line one line.
            out.push_str(&events[self.next].envelope);
            self.next += 1;
        }
        if self.next == events.len() {
            self.finished = true;
            out.push_str(r#"],"last_id":""#);
            out.push_str(&view.last_id.to_string());
            out.push('"');
            match form {
                SnapshotForm::WebSocket if view.reset => out.push_str(r#","reset":true"#),
                SnapshotForm::WebSocket => {}
                SnapshotForm::Sse => {
                    out.push_str(r#","reset":"#);
                    out.push_str(if view.reset { "true" } else { "false" });
                }
            }
            if view.truncated {
                out.push_str(r#","truncated":true"#);
            }
            out.push('}');
            if form == SnapshotForm::Sse {
                out.push_str("\n\n");
            }
        }
        Some(out)
    }
}

/// A snapshot's pieces as an iterator over borrowed parts.
pub struct SnapshotPieces<'a> {
    view: SnapshotView<'a>,
    form: SnapshotForm,
    piece_bytes: usize,
    cursor: SnapshotCursor,
}

impl Iterator for SnapshotPieces<'_> {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        self.cursor
            .next_piece(&self.view, self.form, self.piece_bytes)
    }
}

/// `envelope,envelope,…` (the shared bytes, copied once per snapshot).
pub fn push_envelopes(out: &mut String, events: &[Arc<Event>]) {
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&e.envelope);
    }
}

/// The seed's snapshot: one object of every active device's frame, or
/// nothing when there is none (the seed sent nothing then either).
pub fn edgewatch_snapshot(events: &[Arc<Event>]) -> Option<ByteString> {
    let mut map = serde_json::Map::new();
    for e in events {
        if let Some(frame) = e.body.as_metrics() {
            map.insert(
                frame.device_id.to_string(),
                serde_json::to_value(frame).ok()?,
            );
        }
    }
    (!map.is_empty()).then(|| serde_json::Value::Object(map).to_string().into())
}

/// The SSE `snapshot` event: `{"events":[envelope,…],"last_id":…,"reset":…}`
/// (`"truncated":true` when the bus cut it at its bound), with the snapshot's
/// last id as the event id, so a browser resumes from it.
pub fn sse_snapshot(
    out: &mut BytesMut,
    events: &[Arc<Event>],
    last_id: EventId,
    reset: bool,
    truncated: bool,
) {
    let view = SnapshotView {
        events,
        last_id,
        reset,
        truncated,
    };
    for piece in view.pieces(SnapshotForm::Sse, usize::MAX) {
        out.put_slice(piece.as_bytes());
    }
}

/// The SSE `lagged` event: this many events were dropped.
pub fn sse_lagged(out: &mut BytesMut, n: u64) {
    write_sse_frame(out, None, "lagged", &format!(r#"{{"dropped":{n}}}"#));
}

/// The SSE `error` event.
pub fn sse_error(out: &mut BytesMut, error: &str) {
    let json = serde_json::json!({ "error": error });
    write_sse_frame(out, None, "error", &json.to_string());
}

/// The SSE `close` event: the server is going away.
pub fn sse_close(out: &mut BytesMut) {
    write_sse_frame(out, None, "close", r#"{"reason":"server shutting down"}"#);
}

/// One SSE event. CR and LF cannot appear in a field value, so they are
/// dropped from `id` and `event`, and `data` becomes one `data:` line per
/// line of text (a client joins them back with `\n`).
pub fn write_sse_frame(out: &mut BytesMut, id: Option<&str>, event: &str, data: &str) {
    let clean = |s: &str| -> String {
        s.chars()
            .filter(|c| !matches!(c, '\r' | '\n' | '\0'))
            .collect()
    };
    if let Some(id) = id {
        out.put_slice(b"id: ");
        out.put_slice(clean(id).as_bytes());
        out.put_u8(b'\n');
    }
    out.put_slice(b"event: ");
    out.put_slice(clean(event).as_bytes());
    out.put_u8(b'\n');
    for line in data.split(['\n', '\r']) {
        out.put_slice(b"data: ");
        out.put_slice(line.as_bytes());
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::testing::{metrics, parse_sse as parse};

    #[test]
    fn one_frame_is_one_event_with_its_fields() {
        let mut out = BytesMut::new();
        write_sse_frame(&mut out, Some("k3-7"), "metrics", r#"{"a":1}"#);
        let text = std::str::from_utf8(&out).unwrap();
        assert_eq!(text, "id: k3-7\nevent: metrics\ndata: {\"a\":1}\n\n");
        assert_eq!(
            parse(text),
            vec![(Some("k3-7".into()), "metrics".into(), r#"{"a":1}"#.into())]
        );
    }

    #[test]
    fn line_breaks_cannot_forge_fields_or_events() {
        let mut out = BytesMut::new();
        write_sse_frame(
            &mut out,
            Some("1\nevent: evil"),
            "x\r\ndata: injected",
            "line1\ndata: fake\r\n\nevent: evil\rend",
        );
        let text = std::str::from_utf8(&out).unwrap();
        let events = parse(text);
        assert_eq!(events.len(), 1, "{text:?}");
        let (id, name, data) = &events[0];
        assert_eq!(id.as_deref(), Some("1event: evil"));
        assert_eq!(name, "xdata: injected");
        assert_eq!(data, "line1\ndata: fake\n\n\nevent: evil\nend");
    }

    #[test]
    fn snapshot_frame_embeds_the_shared_envelopes() {
        let e = metrics(1, "a");
        let text = ws_snapshot(
            &[e.clone(), e],
            crate::event::EventId { epoch: 1, seq: 1 },
            false,
            false,
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type"], "snapshot");
        assert_eq!(v["events"].as_array().unwrap().len(), 2);
        assert_eq!(v["events"][0]["topic"], "devices/a/metrics");
    }

    #[test]
    fn an_sse_snapshot_in_pieces_is_the_one_event_write_sse_frame_writes() {
        let events: Vec<_> = (0..50).map(|i| metrics(i, &format!("d{i}"))).collect();
        let last_id = EventId { epoch: 7, seq: 50 };
        for (reset, truncated) in [(false, false), (true, true)] {
            let mut data = String::from(r#"{"events":["#);
            push_envelopes(&mut data, &events);
            data.push_str(&format!(r#"],"last_id":"{last_id}","reset":{reset}"#));
            if truncated {
                data.push_str(r#","truncated":true"#);
            }
            data.push('}');
            let mut oracle = BytesMut::new();
            write_sse_frame(&mut oracle, Some(&last_id.to_string()), "snapshot", &data);
            let view = SnapshotView {
                events: &events,
                last_id,
                reset,
                truncated,
            };
            let envelope = events[0].envelope.len();
            for piece_bytes in [1, envelope, 7 * envelope, usize::MAX] {
                let pieces: Vec<String> = view.pieces(SnapshotForm::Sse, piece_bytes).collect();
                assert_eq!(
                    pieces.concat().as_bytes(),
                    &oracle[..],
                    "pieces of {piece_bytes}"
                );
            }
            let mut whole = BytesMut::new();
            sse_snapshot(&mut whole, &events, last_id, reset, truncated);
            assert_eq!(whole, oracle);
        }
    }
}
