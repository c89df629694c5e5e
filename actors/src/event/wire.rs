//! Every wire form of what the bus delivers, besides the per-event forms an
//! [`Event`] keeps: WebSocket control frames and snapshots, SSE framing and
//! snapshots, the seed dashboard's edgewatch snapshot. The sessions choose a
//! form; the bytes are decided here, once.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use bytestring::ByteString;

use super::{Event, EventId};
use crate::frame::MetricsFrame;

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
    let frames: Vec<&MetricsFrame> = events.iter().filter_map(|e| e.body.as_metrics()).collect();
    (!frames.is_empty()).then(|| edgewatch_message(&frames).into())
}

/// `{"d1": {…}, "d2": {…}}`: frames keyed by device, as the EdgeWatch
/// bridge wrote them with Python's `json.dumps` (its separators included,
/// so a dashboard that compares text sees the bridge's bytes).
pub fn edgewatch_message(frames: &[&MetricsFrame]) -> String {
    let mut out = String::with_capacity(frames.len() * 200 + 2);
    out.push('{');
    for (i, frame) in frames.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        push_str_json(&mut out, frame.device_id.as_str());
        out.push_str(": ");
        push_edgewatch_frame(&mut out, frame);
    }
    out.push('}');
    out
}

/// One frame as the bridge's `Metrics.model_dump()` came out of
/// `json.dumps`: every field of its model in the model's order, `null` for
/// an absent optional one (dashboards test `=== null`), floats as Python
/// prints them (`42.0` for a 42 sent as an integer).
fn push_edgewatch_frame(out: &mut String, frame: &MetricsFrame) {
    out.push_str("{\"device_id\": ");
    push_str_json(out, frame.device_id.as_str());
    out.push_str(", \"timestamp\": ");
    out.push_str(&frame.timestamp.to_string());
    let fields = [
        ("cpu_percent", Some(frame.cpu_percent)),
        ("mem_percent", Some(frame.mem_percent)),
        ("disk_percent", Some(frame.disk_percent)),
        ("gpu_percent", frame.gpu_percent),
        ("agent_cpu_percent", frame.agent_cpu_percent),
        ("agent_mem_mb", frame.agent_mem_mb),
    ];
    for (name, value) in fields {
        out.push_str(", \"");
        out.push_str(name);
        out.push_str("\": ");
        match value {
            Some(v) => push_py_float(out, v),
            None => out.push_str("null"),
        }
    }
    out.push('}');
}

fn push_str_json(out: &mut String, text: &str) {
    // A device id is a safe id: nothing in it needs escaping, but a string
    // literal is written as one all the same.
    out.push_str(&serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned()));
}

/// `value` as Python's `repr(float)`: the shortest digits that read back
/// as the same double (Rust's `{:e}` finds the same ones), in positional
/// form while the decimal point sits within 16 places of the first digit,
/// else `d.ddde±XX`. A validated frame holds no NaN or infinity; were
/// one there, it would go out as `null` rather than as invalid JSON.
fn push_py_float(out: &mut String, value: f64) {
    if !value.is_finite() {
        out.push_str("null");
        return;
    }
    if value.is_sign_negative() {
        out.push('-');
    }
    if value == 0.0 {
        out.push_str("0.0");
        return;
    }
    let sci = format!("{:e}", value.abs());
    let Some((mantissa, exp)) = sci.split_once('e') else {
        out.push_str("null");
        return;
    };
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    // Python's `decpt`: the value is 0.DIGITS × 10^decpt.
    let decpt = exp + 1;
    let n = digits.len() as i32;
    if decpt <= -4 || decpt > 16 {
        out.push_str(&digits[..1]);
        if n > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push_str(&format!(
            "e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        ));
    } else if decpt <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', decpt.unsigned_abs() as usize));
        out.push_str(&digits);
    } else if decpt < n {
        let (int, frac) = digits.split_at(decpt as usize);
        out.push_str(int);
        out.push('.');
        out.push_str(frac);
    } else {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (decpt - n) as usize));
        out.push_str(".0");
    }
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

    fn py(value: f64) -> String {
        let mut out = String::new();
        push_py_float(&mut out, value);
        out
    }

    #[test]
    fn floats_print_as_python_prints_them() {
        for (value, python) in [
            (42.0, "42.0"),
            (42.5, "42.5"),
            (0.1, "0.1"),
            (100.0, "100.0"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1234567890123456.0, "1234567890123456.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1e22, "1e+22"),
            (123456.789, "123456.789"),
            (1e-300, "1e-300"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (33.333333333333336, "33.333333333333336"),
        ] {
            assert_eq!(py(value), python, "{value:e}");
        }
    }

    #[test]
    fn the_edgewatch_form_has_every_field_in_the_models_order() {
        let frame = crate::frame::MetricsFrame::parse(
            "d1",
            br#"{"device_id":"d1","timestamp":5,"cpu_percent":42,"mem_percent":0.5,"disk_percent":3,"agent_cpu_percent":150}"#,
            4096,
        )
        .unwrap();
        assert_eq!(
            edgewatch_message(&[&frame]),
            r#"{"d1": {"device_id": "d1", "timestamp": 5, "cpu_percent": 42.0, "mem_percent": 0.5, "disk_percent": 3.0, "gpu_percent": null, "agent_cpu_percent": 150.0, "agent_mem_mb": null}}"#
        );
        let two = edgewatch_message(&[&frame, &frame]);
        assert!(two.contains("}, \"d1\": {"), "{two}");
        assert_eq!(edgewatch_snapshot(&[]), None);
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
