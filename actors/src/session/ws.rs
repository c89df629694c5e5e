//! The WebSocket session actor, one per client (actix-ws inside an actix actor).
//!
//! State: its filters, heartbeat clock, op budget and the client's `Session`
//! handle. Accepts the client's frames as a stream (ops, ping/pong, close).
//! Sends [`bus::Join`] at start, [`bus::Subscribe`] / [`bus::Unsubscribe`] for
//! ops, [`bus::Resume`] when it drained after falling behind, [`bus::Leave`]
//! when it stops.
//!
//! Ops are the one thing a client makes the bus do, so they are bounded
//! twice: each is charged to the session's [`OpBudget`] (ops, filters and
//! snapshot events per second; over it, an error frame, and a close 1008 for
//! a client that keeps going), and at most one op per session is with the bus at a time (`send`,
//! which waits at the mailbox bound; the next few wait here, more are
//! refused). A flooding client costs the bus a bounded amount of work per
//! second and never more than one mailbox slot.
//!
//! Outgoing frames have exactly one writer: a future that drains the session
//! queue in order and awaits the socket. Nothing on the bus's side ever
//! awaits a client. A client that stops reading is closed once a write has
//! waited `write_deadline`; one that stops answering pings, after `timeout`.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_ws::{
    AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, Item, MessageStream,
};
use bytestring::ByteString;
use serde::Deserialize;

use super::budget::{OpBudget, OpLimits, Verdict};
use super::{SessionStart, WriterEnd};
use crate::bus::{
    self, conflate, session_queue, Bus, Delivery, QueueLimits, SessionId, SessionInbox,
    SessionQueue, Snapshot, Taken,
};
use crate::event::{wire, Event};
use crate::subscription::{Predicate, Subscription};
use crate::telemetry::{DropReason, Telemetry};
use crate::topic::TopicFilter;

/// Largest client frame (ops are tiny; the WebSocket cheat sheet's 64 KiB is
/// generous for them).
pub const MAX_CLIENT_FRAME: usize = 16 * 1024;

/// Items taken from the queue per writer pass (and conflated together).
const WRITE_BATCH: usize = 64;

/// Accepted ops that may wait while one is with the bus; beyond this an op
/// is refused as over the budget. A dashboard sends one or two at a time.
pub const MAX_WAITING_OPS: usize = 4;

/// The wire format a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFormat {
    /// DESIGN.md's snapshot + event envelopes.
    Envelope,
    /// The seed dashboard's `{device_id: frame}` (metrics only).
    Edgewatch,
}

#[derive(Debug, Clone)]
pub struct WsSessionConfig {
    pub heartbeat: Duration,
    pub timeout: Duration,
    /// A single write that waits longer than this closes the client.
    pub write_deadline: Duration,
    /// Its queue's bounds (and the pool it shares).
    pub queue: QueueLimits,
    pub format: WireFormat,
    /// Ops and filters per second this client may send.
    pub limits: OpLimits,
}

pub struct WsSession {
    id: SessionId,
    bus: Addr<Bus>,
    ws: actix_ws::Session,
    stream: Option<AggregatedMessageStream>,
    queue: SessionQueue,
    inbox: Option<SessionInbox>,
    subscriptions: Vec<Subscription>,
    resume: Option<String>,
    config: WsSessionConfig,
    last_heard: Instant,
    budget: OpBudget,
    /// Accepted ops waiting for the one with the bus to be answered.
    waiting_ops: VecDeque<ClientOp>,
    op_in_flight: bool,
    /// The queue's snapshot event count already charged to the budget.
    snapshot_events_charged: u64,
    telemetry: Arc<Telemetry>,
    /// Held for the session's life (e.g. its identity's stream slot);
    /// dropped when the session ends.
    _guard: Option<Box<dyn Send>>,
}

impl WsSession {
    pub fn new(
        ws: actix_ws::Session,
        stream: MessageStream,
        bus: Addr<Bus>,
        start: SessionStart,
        config: WsSessionConfig,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        let (queue, inbox) = session_queue(config.queue.clone());
        let stream = stream
            .max_frame_size(MAX_CLIENT_FRAME)
            .aggregate_continuations()
            .max_continuation_size(MAX_CLIENT_FRAME);
        Self {
            id: SessionId::next(),
            bus,
            ws,
            stream: Some(stream),
            queue,
            inbox: Some(inbox),
            subscriptions: start.subscriptions,
            resume: start.resume,
            budget: OpBudget::new(config.limits, Instant::now()),
            config,
            last_heard: Instant::now(),
            waiting_ops: VecDeque::new(),
            op_in_flight: false,
            snapshot_events_charged: 0,
            telemetry,
            _guard: start.guard,
        }
    }

    /// Sends a close frame (on a clone, off the actor, so stopping does not
    /// cancel it) and stops.
    fn close(&mut self, ctx: &mut Context<Self>, code: CloseCode, description: &str) {
        let ws = self.ws.clone();
        let reason = CloseReason {
            code,
            description: Some(description.to_owned()),
        };
        actix::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(Some(reason))).await;
        });
        ctx.stop();
    }

    /// Charges one message from the client to its op budget: a client
    /// that floods frames the session ignores (or pings) is refused and
    /// closed like one that floods ops, so it cannot keep the thread it
    /// shares with other sessions busy.
    fn charge(&mut self, ctx: &mut Context<Self>) -> bool {
        let verdict = self.budget.admit_op(Instant::now());
        self.admitted(verdict, ctx)
    }

    fn on_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        if !self.charge(ctx) || self.config.format == WireFormat::Edgewatch {
            // The seed dashboard never sent anything meaningful.
            return;
        }
        let now = Instant::now();
        let op = match parse_op(text) {
            Ok(op) => op,
            Err(error) => {
                self.queue.offer_notice(Delivery::Error(Box::new(error)));
                return;
            }
        };
        let verdict = self.budget.admit_filters(op.filters(), now);
        if !self.admitted(verdict, ctx) {
            return;
        }
        if self.waiting_ops.len() >= MAX_WAITING_OPS {
            let verdict = self.budget.refuse(Duration::from_millis(100));
            self.admitted(verdict, ctx);
            return;
        }
        self.telemetry.ws_op("accepted");
        self.waiting_ops.push_back(op);
        self.next_op(ctx);
    }

    /// Applies the budget's verdict: `true` when the op may go on.
    fn admitted(&mut self, verdict: Verdict, ctx: &mut Context<Self>) -> bool {
        match verdict {
            Verdict::Accept => true,
            Verdict::Refuse { retry_after } => {
                self.telemetry.ws_op("rate_limited");
                let ms = u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX);
                self.queue.offer_notice(Delivery::RateLimited(ms));
                false
            }
            Verdict::Close => {
                self.telemetry.ws_op("closed");
                self.telemetry.warn_limited("ws_rate_limited", || {
                    format!(
                        "Closed WebSocket session {}: it kept sending ops over its budget (`sessions.ws_ops_per_second`, `sessions.ws_filters_per_second`).",
                        self.id.0
                    )
                });
                self.close(ctx, CloseCode::Policy, "rate limit exceeded");
                false
            }
        }
    }

    /// Sends the next waiting op to the bus unless one is there already.
    /// `send` (not `do_send`) waits at the bus's mailbox bound.
    fn next_op(&mut self, ctx: &mut Context<Self>) {
        if self.op_in_flight {
            return;
        }
        let Some(op) = self.waiting_ops.pop_front() else {
            return;
        };
        self.op_in_flight = true;
        self.telemetry.ws_ops_in_flight.inc();
        let (bus, session) = (self.bus.clone(), self.id);
        let request = async move {
            match op {
                ClientOp::Subscribe(subscriptions) => {
                    bus.send(bus::Subscribe {
                        session,
                        subscriptions,
                    })
                    .await
                }
                ClientOp::Unsubscribe(filters) => {
                    bus.send(bus::Unsubscribe { session, filters }).await
                }
            }
        };
        ctx.spawn(request.into_actor(self).map(|result, act, ctx| {
            act.op_in_flight = false;
            act.telemetry.ws_ops_in_flight.dec();
            // The bus has answered: its snapshot is in the queue, counted.
            let events = act.queue.snapshot_events();
            act.budget
                .charge_snapshot(events - act.snapshot_events_charged, Instant::now());
            act.snapshot_events_charged = events;
            if result.is_err() {
                // The bus is gone: the server is shutting down.
                ctx.stop();
                return;
            }
            act.next_op(ctx);
        }));
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        if self.last_heard.elapsed() > self.config.timeout {
            log::debug!(
                "Closing WebSocket session {} after heartbeat timeout.",
                self.id.0
            );
            self.close(ctx, CloseCode::Away, "heartbeat timeout");
            return;
        }
        let mut ws = self.ws.clone();
        actix::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.ping(b"")).await;
        });
    }
}

impl Actor for WsSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.telemetry.session_opened("ws");
        if let Some(stream) = self.stream.take() {
            ctx.add_stream(stream);
        }
        if let Some(inbox) = self.inbox.take() {
            let writer = Writer {
                ws: self.ws.clone(),
                format: self.config.format,
                deadline: self.config.write_deadline,
                bus: self.bus.clone(),
                session: self.id,
                telemetry: self.telemetry.clone(),
            };
            ctx.spawn(writer.run(inbox).into_actor(self).map(|end, act, ctx| {
                log::debug!("WebSocket session {} writer ended: {end:?}.", act.id.0);
                ctx.stop();
            }));
        }
        self.bus.do_send(bus::Join {
            session: self.id,
            queue: self.queue.clone(),
            subscriptions: std::mem::take(&mut self.subscriptions),
            resume: self.resume.take(),
        });
        ctx.run_interval(self.config.heartbeat, Self::heartbeat);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if self.op_in_flight {
            // Its future was dropped with the actor.
            self.op_in_flight = false;
            self.telemetry.ws_ops_in_flight.dec();
        }
        self.bus.do_send(bus::Leave { session: self.id });
        self.telemetry.session_closed("ws");
    }
}

impl StreamHandler<Result<AggregatedMessage, actix_ws::ProtocolError>> for WsSession {
    fn handle(
        &mut self,
        msg: Result<AggregatedMessage, actix_ws::ProtocolError>,
        ctx: &mut Context<Self>,
    ) {
        self.last_heard = Instant::now();
        match msg {
            Ok(AggregatedMessage::Text(text)) => self.on_text(&text, ctx),
            // The seed bridge read and ignored whatever a dashboard sent.
            Ok(AggregatedMessage::Binary(_)) if self.config.format == WireFormat::Edgewatch => {
                self.charge(ctx);
            }
            Ok(AggregatedMessage::Binary(_)) => self.close(
                ctx,
                CloseCode::Unsupported,
                "binary frames are not supported",
            ),
            Ok(AggregatedMessage::Ping(_)) if !self.charge(ctx) => {}
            Ok(AggregatedMessage::Ping(payload)) => {
                let mut ws = self.ws.clone();
                actix::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(1), ws.pong(&payload)).await;
                });
            }
            Ok(AggregatedMessage::Pong(_)) => {}
            Ok(AggregatedMessage::Close(reason)) => {
                let ws = self.ws.clone();
                actix::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(reason)).await;
                });
                ctx.stop();
            }
            Err(error) => {
                let (code, text) = close_code_for(&error);
                self.close(ctx, code, text);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// RFC 6455 close codes for protocol errors (actix-ws leaves this to us).
fn close_code_for(error: &actix_ws::ProtocolError) -> (CloseCode, &'static str) {
    use actix_ws::ProtocolError as E;
    match error {
        E::Overflow => (CloseCode::Size, "frame too large"),
        E::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            (CloseCode::Invalid, "invalid UTF-8 in text frame")
        }
        _ => (CloseCode::Protocol, "protocol error"),
    }
}

/// A client operation (WebSocket text frame).
#[derive(Debug)]
enum ClientOp {
    Subscribe(Vec<Subscription>),
    Unsubscribe(Vec<TopicFilter>),
}

impl ClientOp {
    /// Filters named: what the op costs against the filter budget.
    fn filters(&self) -> usize {
        match self {
            ClientOp::Subscribe(subs) => subs.len(),
            ClientOp::Unsubscribe(filters) => filters.len(),
        }
    }
}

fn parse_op(text: &str) -> Result<ClientOp, String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Op {
        op: String,
        topics: Vec<String>,
        /// Payload equality predicates for every topic of a subscribe.
        #[serde(default, rename = "where")]
        predicates: std::collections::BTreeMap<String, String>,
    }
    let op: Op = serde_json::from_str(text).map_err(|e| {
        format!("bad op: {e}; expected {{\"op\":\"subscribe\"|\"unsubscribe\",\"topics\":[…]}}")
    })?;
    if op.topics.len() > bus::MAX_FILTERS_PER_SESSION {
        return Err(format!(
            "at most {} topic filters per op",
            bus::MAX_FILTERS_PER_SESSION
        ));
    }
    let filters = op
        .topics
        .iter()
        .map(|t| TopicFilter::parse(t).map_err(|e| format!("bad topic filter {t:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    match op.op.as_str() {
        "subscribe" => {
            let predicates = op
                .predicates
                .iter()
                .map(|(k, v)| Predicate::new(k, v))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            filters
                .into_iter()
                .map(|f| Subscription::with_predicates(f, predicates.clone()))
                .collect::<Result<Vec<_>, _>>()
                .map(ClientOp::Subscribe)
                .map_err(|e| e.to_string())
        }
        "unsubscribe" if op.predicates.is_empty() => Ok(ClientOp::Unsubscribe(filters)),
        "unsubscribe" => Err("unsubscribe takes topics only".into()),
        other => Err(format!("unknown op {other:?}")),
    }
}

struct Writer {
    ws: actix_ws::Session,
    format: WireFormat,
    deadline: Duration,
    bus: Addr<Bus>,
    session: SessionId,
    telemetry: Arc<Telemetry>,
}

impl Writer {
    async fn run(mut self, mut inbox: SessionInbox) -> WriterEnd {
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        let mut seen = HashSet::new();
        loop {
            let (bus, session) = (&self.bus, self.session);
            let resume = || bus.do_send(bus::Resume { session });
            match inbox.take_resuming(&mut batch, WRITE_BATCH, resume).await {
                Taken::Closed => return WriterEnd::QueueClosed,
                Taken::Items { lagging } => {
                    let conflated = if lagging {
                        conflate(&mut batch, &mut seen)
                    } else {
                        0
                    };
                    if conflated > 0 {
                        self.telemetry
                            .events_dropped(DropReason::Conflated, conflated);
                    }
                    for item in batch.drain(..) {
                        let written = match item {
                            Delivery::Close => {
                                let reason = CloseReason {
                                    code: CloseCode::Away,
                                    description: Some("server shutting down".into()),
                                };
                                let _ = tokio::time::timeout(
                                    self.deadline,
                                    self.ws.close(Some(reason)),
                                )
                                .await;
                                return WriterEnd::ServerClosing;
                            }
                            Delivery::Replay(events) => {
                                let (mut written, format) = (Ok(()), self.format);
                                for text in events.iter().filter_map(|e| event_text(e, format)) {
                                    written = self.write(text).await;
                                    if written.is_err() {
                                        break;
                                    }
                                }
                                written
                            }
                            Delivery::Snapshot(snapshot) if self.format == WireFormat::Envelope => {
                                self.write_snapshot(&snapshot).await
                            }
                            other => match render(other, self.format) {
                                Some(text) => self.write(text).await,
                                None => Ok(()),
                            },
                        };
                        if let Err(end) = written {
                            return end;
                        }
                    }
                }
            }
        }
    }
}

impl Writer {
    async fn write(&mut self, text: ByteString) -> Result<(), WriterEnd> {
        let sent = tokio::time::timeout(self.deadline, self.ws.text(text)).await;
        self.written(sent).await
    }

    /// One message in fragments when it is larger than one piece.
    async fn write_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), WriterEnd> {
        let view = wire::SnapshotView {
            events: &snapshot.events,
            last_id: snapshot.last_id,
            reset: snapshot.reset,
            truncated: snapshot.truncated,
        };
        let mut pieces = view
            .pieces(wire::SnapshotForm::WebSocket, wire::SNAPSHOT_PIECE_BYTES)
            .peekable();
        let Some(first) = pieces.next() else {
            return Ok(());
        };
        if pieces.peek().is_none() {
            return self.write(first.into()).await;
        }
        let mut item = Item::FirstText(first.into());
        loop {
            let sent = tokio::time::timeout(self.deadline, self.ws.continuation(item)).await;
            self.written(sent).await?;
            item = match (pieces.next(), pieces.peek().is_some()) {
                (Some(piece), true) => Item::Continue(piece.into()),
                (Some(piece), false) => Item::Last(piece.into()),
                (None, _) => return Ok(()),
            };
        }
    }

    /// What a send's outcome means for the session: a send that waited
    /// past the deadline closes the client.
    async fn written(
        &mut self,
        sent: Result<Result<(), actix_ws::Closed>, tokio::time::error::Elapsed>,
    ) -> Result<(), WriterEnd> {
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(WriterEnd::ClientGone),
            Err(_) => {
                let reason = CloseReason {
                    code: CloseCode::Again,
                    description: Some("client too slow to read".into()),
                };
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    self.ws.clone().close(Some(reason)),
                )
                .await;
                Err(WriterEnd::WriteDeadline)
            }
        }
    }
}

fn event_text(e: &Event, format: WireFormat) -> Option<ByteString> {
    match format {
        WireFormat::Envelope => Some(e.ws_frame.clone()),
        WireFormat::Edgewatch => e.edgewatch_frame().cloned(),
    }
}

/// The text frame for one queued item (`None`: nothing to say in this
/// format). `Close` and `Replay` are handled by the writer.
fn render(item: Delivery, format: WireFormat) -> Option<ByteString> {
    match (format, item) {
        (_, Delivery::Event(e)) => event_text(&e, format),
        (WireFormat::Envelope, Delivery::Snapshot(snapshot)) => Some(wire::ws_snapshot(
            &snapshot.events,
            snapshot.last_id,
            snapshot.reset,
            snapshot.truncated,
        )),
        (WireFormat::Envelope, Delivery::Lagged(n)) => Some(wire::ws_lagged(n)),
        (WireFormat::Envelope, Delivery::Unsubscribed(filters)) => {
            let topics: Vec<&str> = filters.iter().map(TopicFilter::as_str).collect();
            Some(wire::ws_unsubscribed(&topics))
        }
        (WireFormat::Envelope, Delivery::Error(error)) => Some(wire::ws_error(&error)),
        (WireFormat::Envelope, Delivery::RateLimited(ms)) => Some(wire::ws_rate_limited(ms)),
        (WireFormat::Edgewatch, Delivery::Snapshot(snapshot)) => {
            wire::edgewatch_snapshot(&snapshot.events)
        }
        (_, Delivery::Replay(_) | Delivery::Close) => None,
        (WireFormat::Edgewatch, _) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Snapshot;
    use crate::event::testing;

    fn metrics(seq: u64, device: &str) -> Delivery {
        Delivery::Event(testing::metrics(seq, device))
    }

    fn note(seq: u64) -> Delivery {
        Delivery::Event(testing::note(seq))
    }

    #[test]
    fn ops_parse_or_explain_why_not() {
        assert!(matches!(
            parse_op(r#"{"op":"subscribe","topics":["devices/+/metrics"]}"#),
            Ok(ClientOp::Subscribe(f)) if f.len() == 1
        ));
        assert!(matches!(
            parse_op(r#"{"op":"unsubscribe","topics":["a/#"]}"#),
            Ok(ClientOp::Unsubscribe(_))
        ));
        assert!(parse_op(r#"{"op":"subscribe","topics":["a/#/b"]}"#)
            .unwrap_err()
            .contains("bad topic filter"));
        assert!(parse_op(r#"{"op":"dance","topics":[]}"#)
            .unwrap_err()
            .contains("unknown op"));
        assert!(parse_op("not json").unwrap_err().starts_with("bad op"));
    }

    #[test]
    fn a_snapshot_in_pieces_is_the_whole_frame_cut_between_envelopes() {
        let events: Vec<_> = (0..100)
            .map(|i| match metrics(i, &format!("d{i}")) {
                Delivery::Event(e) => e,
                _ => unreachable!(),
            })
            .collect();
        let envelope = events[0].envelope.len();
        let last_id = crate::event::EventId { epoch: 1, seq: 100 };
        let view = wire::SnapshotView {
            events: &events,
            last_id,
            reset: true,
            truncated: true,
        };
        let pieces_of = |bytes| view.pieces(wire::SnapshotForm::WebSocket, bytes);
        let whole = wire::ws_snapshot(&events, last_id, true, true);
        for piece_bytes in [1, envelope, 10 * envelope, usize::MAX] {
            let pieces: Vec<String> = pieces_of(piece_bytes).collect();
            assert_eq!(pieces.concat(), *whole, "pieces of {piece_bytes}");
            let longest = pieces.iter().map(String::len).max().unwrap_or(0);
            assert!(
                longest <= piece_bytes.saturating_add(2 * envelope + 64),
                "a piece of {longest} bytes for {piece_bytes}"
            );
        }
        let small = pieces_of(10 * envelope).count();
        assert!((9..=12).contains(&small), "{small} pieces of ~10 envelopes");
    }

    #[test]
    fn edgewatch_shows_metrics_only() {
        assert!(render(note(1), WireFormat::Edgewatch).is_none());
        assert!(render(Delivery::Lagged(3), WireFormat::Edgewatch).is_none());
        let text = render(metrics(1, "a"), WireFormat::Edgewatch).expect("metrics render");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["a"]["timestamp"], 1);
        assert!(render(
            Delivery::Snapshot(Box::new(Snapshot::empty())),
            WireFormat::Edgewatch
        )
        .is_none());
    }
}
