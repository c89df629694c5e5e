//! The Server-Sent Events session actor, one per client.
//!
//! State: its subscriptions and the sending end of the HTTP response body.
//! Sends [`bus::Join`] at start (with the client's `Last-Event-ID`, so the
//! bus replays what it missed or sends a snapshot marked as a reset),
//! [`bus::Resume`] when it drained after falling behind, [`bus::Leave`] when
//! it stops. Holds its identity's stream slot until then.
//!
//! One writer future drains the session queue into the response body (a
//! small bounded channel actix-web reads from). It writes `: keepalive` at
//! once (so headers flush and the browser sees a live stream) and after
//! every `keepalive` of silence. A client that goes away drops the body;
//! the writer notices at once and the session ends. A write that waits
//! longer than `write_deadline` ends the session too.
//!
//! Framing (pure functions below): `id:`, `event:`, `data:` lines, a blank
//! line after each event. Event names and ids are stripped of CR/LF and data
//! is split on line breaks, so no payload can forge a field or an event.

use std::collections::HashSet;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use actix::prelude::*;
use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::mpsc;

use super::ws::conflate;
use super::{
    session_queue, Delivery, SessionId, SessionInbox, SessionQueue, SessionStart, WriterEnd,
};
use crate::bus::{self, Bus};
use crate::event::Event;
use crate::telemetry::{DropReason, Telemetry};

/// Items taken from the queue per writer pass, written as one chunk.
const WRITE_BATCH: usize = 64;

/// Chunks buffered between the writer and actix-web.
const BODY_CHUNKS: usize = 4;

pub const KEEPALIVE: &[u8] = b": keepalive\n\n";

#[derive(Debug, Clone)]
pub struct SseSessionConfig {
    /// A comment is written after this long without any other write.
    pub keepalive: Duration,
    /// A chunk the client does not take within this ends the session.
    pub write_deadline: Duration,
    pub queue_capacity: usize,
    /// The `retry:` hint: how long a browser waits before reconnecting.
    pub retry: Duration,
}

/// The response body: what the session writes, as actix-web reads it.
pub struct SseBody {
    rx: mpsc::Receiver<Bytes>,
}

impl futures_util::Stream for SseBody {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|chunk| chunk.map(Ok))
    }
}

pub struct SseSession {
    id: SessionId,
    bus: Addr<Bus>,
    queue: SessionQueue,
    inbox: Option<SessionInbox>,
    start: Option<SessionStart>,
    out: Option<mpsc::Sender<Bytes>>,
    config: SseSessionConfig,
    telemetry: Arc<Telemetry>,
    _guard: Option<Box<dyn Send>>,
}

impl SseSession {
    /// The session and the body to answer the request with.
    pub fn new(
        bus: Addr<Bus>,
        mut start: SessionStart,
        config: SseSessionConfig,
        telemetry: Arc<Telemetry>,
    ) -> (Self, SseBody) {
        let (queue, inbox) = session_queue(config.queue_capacity);
        let (tx, rx) = mpsc::channel(BODY_CHUNKS);
        let guard = start.guard.take();
        let session = Self {
            id: SessionId::next(),
            bus,
            queue,
            inbox: Some(inbox),
            start: Some(start),
            out: Some(tx),
            config,
            telemetry,
            _guard: guard,
        };
        (session, SseBody { rx })
    }
}

impl Actor for SseSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.telemetry.session_opened("sse");
        if let (Some(inbox), Some(out)) = (self.inbox.take(), self.out.take()) {
            let writer = Writer {
                out,
                config: self.config.clone(),
                bus: self.bus.clone(),
                session: self.id,
                telemetry: self.telemetry.clone(),
            };
            ctx.spawn(writer.run(inbox).into_actor(self).map(|end, act, ctx| {
                log::debug!("SSE session {} ended: {end:?}.", act.id.0);
                ctx.stop();
            }));
        }
        if let Some(start) = self.start.take() {
            self.bus.do_send(bus::Join {
                session: self.id,
                queue: self.queue.clone(),
                subscriptions: start.subscriptions,
                resume: start.resume,
            });
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.bus.do_send(bus::Leave { session: self.id });
        self.telemetry.session_closed("sse");
    }
}

struct Writer {
    out: mpsc::Sender<Bytes>,
    config: SseSessionConfig,
    bus: Addr<Bus>,
    session: SessionId,
    telemetry: Arc<Telemetry>,
}

impl Writer {
    async fn run(self, mut inbox: SessionInbox) -> WriterEnd {
        let mut preface = BytesMut::with_capacity(32);
        preface.put_slice(KEEPALIVE);
        preface.put_slice(format!("retry: {}\n\n", self.config.retry.as_millis()).as_bytes());
        if let Err(end) = self.write(preface.freeze()).await {
            return end;
        }
        // Grown on demand and released after a burst: an idle stream should
        // hold as little as possible (10,000 of them are normal).
        let mut batch = Vec::new();
        let mut seen = HashSet::new();
        let behind = inbox.behind.clone();
        let idle = tokio::time::sleep(self.config.keepalive);
        tokio::pin!(idle);
        loop {
            tokio::select! {
                biased;
                () = self.out.closed() => return WriterEnd::ClientGone,
                first = inbox.recv() => {
                    let Some(first) = first else {
                        return WriterEnd::QueueClosed;
                    };
                    batch.push(first);
                    while batch.len() < WRITE_BATCH {
                        match inbox.try_recv() {
                            Some(item) => batch.push(item),
                            None => break,
                        }
                    }
                    if inbox.is_lagging() {
                        let conflated = conflate(&mut batch, &mut seen);
                        if conflated > 0 {
                            self.telemetry.events_dropped(DropReason::Conflated, conflated);
                        }
                    }
                    let closing = batch.iter().any(|d| matches!(d, Delivery::Close));
                    let chunk = match batch.as_slice() {
                        // The common case of a live stream: one event, whose
                        // shared bytes go out as they are (no copy).
                        [Delivery::Event(e)] => e.sse_frame().clone(),
                        items => {
                            let mut chunk = BytesMut::new();
                            for item in items {
                                render(item, &mut chunk);
                            }
                            chunk.freeze()
                        }
                    };
                    batch.clear();
                    if batch.capacity() > 4 {
                        batch = Vec::new();
                    }
                    if !chunk.is_empty() {
                        if let Err(end) = self.write(chunk).await {
                            return end;
                        }
                        idle.as_mut().reset(tokio::time::Instant::now() + self.config.keepalive);
                    }
                    if closing {
                        return WriterEnd::ServerClosing;
                    }
                }
                () = behind.notified() => {
                    inbox.caught_up();
                    self.bus.do_send(bus::Resume { session: self.session });
                }
                () = &mut idle => {
                    if let Err(end) = self.write(Bytes::from_static(KEEPALIVE)).await {
                        return end;
                    }
                    idle.as_mut().reset(tokio::time::Instant::now() + self.config.keepalive);
                }
            }
        }
    }

    async fn write(&self, chunk: Bytes) -> Result<(), WriterEnd> {
        match tokio::time::timeout(self.config.write_deadline, self.out.send(chunk)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(WriterEnd::ClientGone),
            Err(_) => Err(WriterEnd::WriteDeadline),
        }
    }
}

/// Appends the SSE form of one queued item.
fn render(item: &Delivery, out: &mut BytesMut) {
    match item {
        Delivery::Event(e) => out.put_slice(e.sse_frame()),
        Delivery::Replay(events) => {
            for e in events {
                out.put_slice(e.sse_frame());
            }
        }
        Delivery::Snapshot(snapshot) => {
            let mut data = String::with_capacity(
                48 + snapshot
                    .events
                    .iter()
                    .map(|e| e.envelope.len() + 1)
                    .sum::<usize>(),
            );
            data.push_str(r#"{"events":["#);
            super::ws::push_envelopes(&mut data, &snapshot.events);
            data.push_str(r#"],"last_id":""#);
            data.push_str(&snapshot.last_id.to_string());
            data.push_str(r#"","reset":"#);
            data.push_str(if snapshot.reset { "true" } else { "false" });
            data.push('}');
            write_frame(out, Some(&snapshot.last_id.to_string()), "snapshot", &data);
        }
        Delivery::Lagged(n) => {
            write_frame(out, None, "lagged", &format!(r#"{{"dropped":{n}}}"#));
        }
        Delivery::Error(error) => {
            let json = serde_json::json!({ "error": error });
            write_frame(out, None, "error", &json.to_string());
        }
        Delivery::Close => {
            write_frame(out, None, "close", r#"{"reason":"server shutting down"}"#);
        }
        // SSE has no client ops to acknowledge.
        Delivery::Unsubscribed(_) => {}
    }
}

/// The shared SSE frame of an event (built once, on first use, by
/// [`Event::sse_frame`]).
pub(crate) fn event_frame(e: &Event) -> Bytes {
    let mut out = BytesMut::with_capacity(e.envelope.len() + e.name.len() + 48);
    write_frame(&mut out, Some(&e.id.to_string()), &e.name, &e.envelope);
    out.freeze()
}

/// One SSE event. CR and LF cannot appear in a field value, so they are
/// dropped from `id` and `event`, and `data` becomes one `data:` line per
/// line of text (a client joins them back with `\n`).
pub fn write_frame(out: &mut BytesMut, id: Option<&str>, event: &str, data: &str) {
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
    use crate::event::{Body, Draft, EventId};

    /// A WHATWG-style parser: the events a browser would dispatch.
    fn parse(stream: &str) -> Vec<(Option<String>, String, String)> {
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

    #[test]
    fn one_frame_is_one_event_with_its_fields() {
        let mut out = BytesMut::new();
        write_frame(&mut out, Some("k3-7"), "metrics", r#"{"a":1}"#);
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
        write_frame(
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
    fn event_frames_carry_id_name_and_envelope() {
        let draft = Draft::new("attackers/a1/scored", 5, Body::Object(Default::default()));
        let event = Event::from_draft(EventId { epoch: 36, seq: 9 }, draft);
        let text = String::from_utf8(event.sse_frame().to_vec()).unwrap();
        let events = parse(&text);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].0.as_deref(), Some("10-9"));
        assert_eq!(events[0].1, "attacker.scored");
        assert_eq!(events[0].2, &*event.envelope);
    }
}
