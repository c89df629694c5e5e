//! The Server-Sent Events session actor, one per client, and the response
//! body it feeds.
//!
//! The actor holds the session's place on the bus: it sends [`bus::Join`]
//! at start (with the client's `Last-Event-ID`, so the bus replays what it
//! missed or sends a snapshot marked as a reset), [`bus::Resume`] when the
//! body drained after falling behind, [`bus::Leave`] when it stops, and it
//! holds its identity's stream slot until then.
//!
//! The body ([`SseBody`]) is what actix-web reads: it takes from the
//! session queue only when actix-web asks for more, so a client's socket
//! is the only buffer between the queue and the client, and an idle stream
//! costs no writer task and no second channel (10,000 idle streams are
//! normal). It writes `: keepalive` and the `retry:` hint at once (headers
//! flush and the browser sees a live stream) and a keepalive after every
//! `keepalive` of silence.
//!
//! A client that goes away drops the body: the body tells the actor, which
//! stops at once. A client that stops reading leaves events queued with no
//! take: the actor's watchdog, run every `write_deadline`, ends the session
//! when items waited through a whole round untaken, so between one and two
//! deadlines after the client stopped (its slot is freed; actix-web keeps
//! the TCP connection until the client closes it). A resuming client's
//! replay is no exception: the queue hands it over one bounded piece per
//! take and keeps the rest queued, so a client that never reads holds at
//! most one piece outside the queue and is ended like any other.
//!
//! Framing is [`crate::event::wire`]'s: `id:`, `event:`, `data:` lines, a
//! blank line after each event, with no way for a payload to forge a field.
//! A session speaks edgebus's envelopes, or DECNET's per-attacker form
//! ([`SseForm::Decnet`], [`crate::event::decnet`]) for its dashboard: the
//! same queue, caps, keepalives and resume, other bytes.

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use actix::prelude::*;
use bytes::{BufMut, Bytes, BytesMut};
use tokio::time::{Instant, Sleep};

use super::SessionStart;
use crate::bus::{
    self, conflate, session_queue, Bus, Delivery, QueueLimits, SessionId, SessionInbox,
    SessionQueue, Snapshot, Taken,
};
use crate::event::decnet::{self, DecnetSnapshot};
use crate::event::wire::{self, SnapshotCursor, SnapshotForm, SnapshotView, SNAPSHOT_PIECE_BYTES};
use crate::event::Event;
use crate::telemetry::{DropReason, Telemetry};

/// Items taken from the queue per body read, written as one chunk.
const WRITE_BATCH: usize = 64;

/// The watchdog never runs more often than this, whatever the deadline.
const MIN_WATCH: Duration = Duration::from_millis(100);

pub const KEEPALIVE: &[u8] = b": keepalive\n\n";

#[derive(Debug, Clone)]
pub struct SseSessionConfig {
    /// A comment is written after this long without any other write.
    pub keepalive: Duration,
    /// Events that wait this long untaken end the session (checked every
    /// `write_deadline`, so it ends within twice that).
    pub write_deadline: Duration,
    /// Its queue's bounds (and the pool it shares).
    pub queue: QueueLimits,
    /// The `retry:` hint: how long a browser waits before reconnecting.
    pub retry: Duration,
    pub form: SseForm,
}

/// What a session writes for events and snapshots (the rest, `lagged`,
/// `error` and `close`, is the same in both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseForm {
    /// edgebus's envelopes: the shared frame of each event.
    Envelope,
    /// DECNET's per-attacker stream, for this attacker.
    Decnet { attacker: Arc<str> },
}

pub struct SseSession {
    id: SessionId,
    bus: Addr<Bus>,
    queue: SessionQueue,
    start: Option<SessionStart>,
    write_deadline: Duration,
    /// The queue's take count at the last watchdog round.
    takes: u64,
    /// Whether items were waiting at the last watchdog round.
    waiting: bool,
    telemetry: Arc<Telemetry>,
    _guard: Option<Box<dyn Send>>,
}

impl SseSession {
    /// Starts the session actor on the current arbiter; returns the body to
    /// answer the request with.
    pub fn start(
        bus: Addr<Bus>,
        mut start: SessionStart,
        config: SseSessionConfig,
        telemetry: Arc<Telemetry>,
    ) -> SseBody {
        let (queue, inbox) = session_queue(config.queue.clone());
        let ctx = Context::new();
        let guard = start.guard.take();
        let body = SseBody {
            form: config.form,
            inbox,
            batch: Vec::new(),
            seen: HashSet::new(),
            preface: Some(preface(config.retry)),
            idle: Box::pin(tokio::time::sleep(config.keepalive)),
            keepalive: config.keepalive,
            session: ctx.address(),
            telemetry: telemetry.clone(),
            done: false,
            pending: None,
        };
        ctx.run(Self {
            id: SessionId::next(),
            bus,
            queue,
            start: Some(start),
            write_deadline: config.write_deadline,
            takes: 0,
            waiting: false,
            telemetry,
            _guard: guard,
        });
        body
    }
}

impl Actor for SseSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.telemetry.session_opened("sse");
        if let Some(start) = self.start.take() {
            self.bus.do_send(bus::Join {
                session: self.id,
                queue: self.queue.clone(),
                subscriptions: start.subscriptions,
                resume: start.resume,
            });
        }
        ctx.run_interval(self.write_deadline.max(MIN_WATCH), |act, ctx| {
            let (queued, takes) = act.queue.progress();
            if stuck(act.waiting, act.takes, queued, takes) {
                log::debug!(
                    "SSE session {} ended: {queued} item(s) untaken for at least {:?}.",
                    act.id.0,
                    act.write_deadline
                );
                ctx.stop();
            }
            act.waiting = queued > 0;
            act.takes = takes;
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.bus.do_send(bus::Leave { session: self.id });
        // A body that actix-web no longer reads still holds the inbox: free
        // what is queued now, and end the body if it is ever read again.
        self.queue.close();
        self.telemetry.session_closed("sse");
    }
}

/// The watchdog's rule, from the last round's reading (items waiting?
/// takes so far) and this one's: stuck when items were waiting at the last
/// round already and none was taken since, so the oldest has waited a whole
/// round. An item queued just before a round, after a long quiet spell, is
/// not stuck.
fn stuck(was_waiting: bool, takes_then: u64, queued: usize, takes: u64) -> bool {
    was_waiting && queued > 0 && takes == takes_then
}

/// The body was dropped: the client went away or the response ended.
#[derive(Message)]
#[rtype(result = "()")]
struct BodyGone;

impl Handler<BodyGone> for SseSession {
    type Result = ();

    fn handle(&mut self, _: BodyGone, ctx: &mut Context<Self>) {
        log::debug!(
            "SSE session {} ended: the response body was dropped.",
            self.id.0
        );
        ctx.stop();
    }
}

/// The body drained its queue after the bus said it fell behind.
#[derive(Message)]
#[rtype(result = "()")]
struct Drained;

impl Handler<Drained> for SseSession {
    type Result = ();

    fn handle(&mut self, _: Drained, _: &mut Context<Self>) {
        self.bus.do_send(bus::Resume { session: self.id });
    }
}

/// The response body: the session queue, rendered as actix-web reads it.
pub struct SseBody {
    form: SseForm,
    inbox: SessionInbox,
    /// Grown on demand and released after a burst: an idle stream should
    /// hold as little as possible.
    batch: Vec<Delivery>,
    seen: HashSet<Arc<str>>,
    preface: Option<Bytes>,
    idle: Pin<Box<Sleep>>,
    keepalive: Duration,
    session: Addr<SseSession>,
    telemetry: Arc<Telemetry>,
    /// The stream ended (server closing, or the session's queue closed).
    done: bool,
    /// A snapshot being written piece by piece, and what followed it in its
    /// batch (boxed: an idle stream keeps one pointer for it).
    pending: Option<Box<PendingSnapshot>>,
}

/// A snapshot larger than one piece, part written.
struct PendingSnapshot {
    writer: SnapshotWriter,
    /// Items taken with it, written once it is.
    rest: Vec<Delivery>,
}

/// A snapshot being rendered, in the session's form.
enum SnapshotWriter {
    Envelope {
        snapshot: Box<Snapshot>,
        cursor: SnapshotCursor,
    },
    Decnet(DecnetSnapshot),
}

impl SnapshotWriter {
    fn new(snapshot: Box<Snapshot>, form: &SseForm) -> Self {
        match form {
            SseForm::Envelope => Self::Envelope {
                snapshot,
                cursor: SnapshotCursor::default(),
            },
            SseForm::Decnet { attacker } => Self::Decnet(DecnetSnapshot::new(
                attacker.clone(),
                &snapshot.events,
                snapshot.last_id,
            )),
        }
    }
}

impl PendingSnapshot {
    /// Appends its next piece to `out`; `true` once the last is written.
    fn write_piece(&mut self, out: &mut BytesMut) -> bool {
        match &mut self.writer {
            SnapshotWriter::Envelope { snapshot, cursor } => {
                let view = SnapshotView {
                    events: &snapshot.events,
                    last_id: snapshot.last_id,
                    reset: snapshot.reset,
                    truncated: snapshot.truncated,
                };
                if let Some(piece) =
                    cursor.next_piece(&view, SnapshotForm::Sse, SNAPSHOT_PIECE_BYTES)
                {
                    out.put_slice(piece.as_bytes());
                }
                cursor.is_finished()
            }
            SnapshotWriter::Decnet(snapshot) => {
                if let Some(piece) = snapshot.next_piece(SNAPSHOT_PIECE_BYTES) {
                    out.put_slice(piece.as_bytes());
                }
                snapshot.is_finished()
            }
        }
    }
}

fn preface(retry: Duration) -> Bytes {
    let mut preface = BytesMut::with_capacity(32);
    preface.put_slice(KEEPALIVE);
    preface.put_slice(format!("retry: {}\n\n", retry.as_millis()).as_bytes());
    preface.freeze()
}

impl SseBody {
    fn wrote(&mut self, chunk: Bytes) -> Poll<Option<Result<Bytes, Infallible>>> {
        let keepalive = self.keepalive;
        self.idle.as_mut().reset(Instant::now() + keepalive);
        Poll::Ready(Some(Ok(chunk)))
    }

    /// One chunk of what was taken: a lone event is its shared frame (no
    /// copy), anything else is rendered into one buffer, up to the first
    /// piece of a large snapshot.
    fn render_batch(&mut self, lagging: bool) -> Bytes {
        if lagging {
            let conflated = conflate(&mut self.batch, &mut self.seen);
            if conflated > 0 {
                self.telemetry
                    .events_dropped(DropReason::Conflated, conflated);
            }
        }
        let chunk = match self.batch.as_slice() {
            [Delivery::Event(e)] if self.form == SseForm::Envelope => e.sse_frame().clone(),
            _ => {
                let mut chunk = BytesMut::new();
                let items = std::mem::take(&mut self.batch);
                self.render_items(items, &mut chunk);
                chunk.freeze()
            }
        };
        self.batch.clear();
        if self.batch.capacity() > 4 {
            self.batch = Vec::new();
        }
        chunk
    }

    /// Renders `items` in order; a snapshot larger than one piece is
    /// started, and it and the items after it wait in `pending`.
    fn render_items(&mut self, items: Vec<Delivery>, out: &mut BytesMut) {
        let mut items = items.into_iter();
        while let Some(item) = items.next() {
            match item {
                Delivery::Snapshot(snapshot) => {
                    let mut pending = Box::new(PendingSnapshot {
                        writer: SnapshotWriter::new(snapshot, &self.form),
                        rest: Vec::new(),
                    });
                    if !pending.write_piece(out) {
                        pending.rest.extend(items);
                        self.pending = Some(pending);
                        return;
                    }
                }
                Delivery::Close => {
                    render(&Delivery::Close, out, &self.form);
                    self.done = true;
                }
                other => render(&other, out, &self.form),
            }
        }
    }

    /// The next piece of a snapshot being written, then what followed it.
    fn continue_pending(&mut self) -> Option<Bytes> {
        let mut pending = self.pending.take()?;
        let mut chunk = BytesMut::new();
        if pending.write_piece(&mut chunk) {
            let rest = std::mem::take(&mut pending.rest);
            self.render_items(rest, &mut chunk);
        } else {
            self.pending = Some(pending);
        }
        Some(chunk.freeze())
    }
}

impl futures_util::Stream for SseBody {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(preface) = this.preface.take() {
            return this.wrote(preface);
        }
        if let Some(chunk) = this.continue_pending() {
            return this.wrote(chunk);
        }
        while !this.done {
            let session = &this.session;
            let resume = || session.do_send(Drained);
            match this
                .inbox
                .poll_take_resuming(cx, &mut this.batch, WRITE_BATCH, resume)
            {
                Poll::Ready(Taken::Items { lagging }) => {
                    let chunk = this.render_batch(lagging);
                    if !chunk.is_empty() {
                        return this.wrote(chunk);
                    }
                }
                Poll::Ready(Taken::Closed) => this.done = true,
                Poll::Pending => {
                    return match this.idle.as_mut().poll(cx) {
                        Poll::Ready(()) => this.wrote(Bytes::from_static(KEEPALIVE)),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
        Poll::Ready(None)
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        self.session.do_send(BodyGone);
    }
}

/// Appends the SSE form of one queued item.
fn render(item: &Delivery, out: &mut BytesMut, form: &SseForm) {
    let event = |e: &Event, out: &mut BytesMut| match form {
        SseForm::Envelope => out.put_slice(e.sse_frame()),
        SseForm::Decnet { .. } => decnet::sse_event(out, e),
    };
    match item {
        Delivery::Event(e) => event(e, out),
        Delivery::Replay(events) => {
            for e in events.iter() {
                event(e, out);
            }
        }
        Delivery::Snapshot(snapshot) => match form {
            SseForm::Envelope => wire::sse_snapshot(
                out,
                &snapshot.events,
                snapshot.last_id,
                snapshot.reset,
                snapshot.truncated,
            ),
            SseForm::Decnet { attacker } => {
                let mut snapshot =
                    DecnetSnapshot::new(attacker.clone(), &snapshot.events, snapshot.last_id);
                while let Some(piece) = snapshot.next_piece(usize::MAX) {
                    out.put_slice(piece.as_bytes());
                }
            }
        },
        Delivery::Lagged(n) => wire::sse_lagged(out, *n),
        Delivery::Error(error) => wire::sse_error(out, error),
        Delivery::Close => wire::sse_close(out),
        // SSE has no client ops to acknowledge or refuse.
        Delivery::Unsubscribed(_) | Delivery::RateLimited(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::testing::parse_sse as parse;
    use crate::event::{Body, Draft, EventId};
    use serde_json::Value;

    #[test]
    fn the_watchdog_ends_only_a_session_whose_items_waited_a_whole_round() {
        // Quiet stream, then an event lands just before the round: fine.
        assert!(!stuck(false, 7, 1, 7));
        // It was still there a round later and nothing was taken: stuck.
        assert!(stuck(true, 7, 1, 7));
        // Something was taken in between: progress, however slow.
        assert!(!stuck(true, 7, 3, 8));
        // Drained by now.
        assert!(!stuck(true, 7, 0, 7));
    }

    #[test]
    fn the_decnet_form_renames_events_and_reshapes_snapshots_only() {
        let Value::Object(map) = serde_json::json!({"attacker_uuid": "a1", "value": 2}) else {
            unreachable!()
        };
        let draft = Draft::new("attackers/a1/observation/dns", 5, Body::Object(map));
        let event = Arc::new(Event::from_draft(EventId { epoch: 36, seq: 9 }, draft));
        let form = SseForm::Decnet {
            attacker: "a1".into(),
        };
        let snapshot = Box::new(Snapshot {
            events: vec![event.clone()],
            last_id: event.id,
            reset: false,
            truncated: false,
        });
        let mut out = BytesMut::new();
        for item in [
            Delivery::Snapshot(snapshot),
            Delivery::Event(event.clone()),
            Delivery::Lagged(3),
        ] {
            render(&item, &mut out, &form);
        }
        let events = parse(std::str::from_utf8(&out).unwrap());
        let names: Vec<&str> = events.iter().map(|(_, name, _)| name.as_str()).collect();
        assert_eq!(names, ["snapshot", "observation", "lagged"]);
        let snapshot: Value = serde_json::from_str(&events[0].2).unwrap();
        assert_eq!(snapshot["observations"][0]["primitive"], "dns");
        let live: Value = serde_json::from_str(&events[1].2).unwrap();
        assert_eq!(live["topic"], "attacker.observation.dns");
        assert_eq!(events[1].0.as_deref(), Some("10-9"));
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
