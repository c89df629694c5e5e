//! The Bus actor: numbers every accepted event, remembers the last value per
//! topic and a bounded history, and fans events out to the sessions whose
//! filters match.
//!
//! State: the filter index, one [`Subscriber`] per session, last values and
//! history. Accepts [`Publish`] (from Registry, Ingest, HTTP), [`Join`],
//! [`Subscribe`], [`Unsubscribe`], [`Leave`], [`Resume`] (from sessions) and
//! [`Shutdown`]. Sends nothing but [`Delivery`] items into session queues.
//!
//! Slow sessions: delivery is `try_send` into the session's bounded queue and
//! never waits. When a queue is full, metrics topics *conflate* (the bus keeps
//! only the newest frame per device for that session and hands it over once
//! the session has drained) and every other topic is dropped for that session
//! only and counted into a `lagged` notice. Other sessions never notice.
//!
//! Memory and work: history and last values are bounded by count and by
//! bytes (`bus.history_bytes`, `bus.last_values_bytes`, each event counted
//! at its estimated heap size, oldest dropped first); last values sit in a
//! topic trie, so a snapshot walks only the branches its filters name and
//! stops at `bus.snapshot_max_events`, marked `truncated`.

mod delivery;
mod history;
mod last_values;
pub mod queue;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::event::{now_ms, Draft, Event, EventId};
use crate::families::DeliveryClass;
use crate::subscription::Subscription;
use crate::telemetry::{DropReason, Telemetry};
use crate::topic::{FilterIndex, FilterLevel, TopicFilter};

pub use delivery::{Delivery, SessionId, Snapshot};
use history::History;
use last_values::{Budget, LastValues};
pub use queue::{
    conflate, session_queue, Offer, QueueBudget, QueueLimits, QueuePool, SessionInbox,
    SessionQueue, Take, Taken, CONTROL_RESERVE, REPLAY_PIECE_BYTES, REPLAY_PIECE_EVENTS,
};

/// Mailbox bound of the bus: bursts from ingest are absorbed here; beyond it
/// publishers count an `overload` drop instead of blocking.
pub const BUS_MAILBOX: usize = 65_536;

/// Most distinct topics whose last value is kept for snapshots. Metrics
/// topics are already bounded by `registry.max_devices`; this bounds the
/// others (one per attacker and primitive) against a hostile publisher.
pub const MAX_LAST_VALUES: usize = 100_000;

/// Most filters one session may hold.
pub const MAX_FILTERS_PER_SESSION: usize = 64;

#[derive(Debug, Clone)]
pub struct BusConfig {
    /// Events per session queue before the slow-consumer policy applies.
    pub queue_capacity: usize,
    /// Events kept for `Last-Event-ID` replay.
    pub history: usize,
    /// Bytes the replay history may keep (each event's estimated heap size).
    pub history_bytes: usize,
    /// Bytes the last values may keep (events plus their index entries).
    pub last_values_bytes: usize,
    /// Most events one snapshot returns; the walk that collects them may
    /// visit 4 × this many index nodes. A snapshot cut short is marked
    /// `truncated`.
    pub snapshot_max_events: usize,
    /// Metrics older than this are left out of snapshots (`registry.prune_seconds`).
    pub metrics_snapshot_window: Duration,
}

impl Default for BusConfig {
    /// `config/default.toml`'s values.
    fn default() -> Self {
        Self {
            queue_capacity: 256,
            history: 10_000,
            history_bytes: 16 << 20,
            last_values_bytes: 32 << 20,
            snapshot_max_events: 10_000,
            metrics_snapshot_window: Duration::from_secs(30),
        }
    }
}

pub struct Bus {
    config: BusConfig,
    epoch: u64,
    seq: u64,
    /// The newest event's id.
    newest: EventId,
    /// Cluster mode: events arrive numbered by the Redis stream, and a
    /// resuming client's missed events that the history no longer holds
    /// are fetched from the stream through this recipient.
    stream: Option<Recipient<Backfill>>,
    index: FilterIndex<SessionId>,
    sessions: HashMap<SessionId, Subscriber>,
    last: LastValues,
    history: History,
    telemetry: Arc<Telemetry>,
}

/// What the bus knows of one session.
struct Subscriber {
    queue: SessionQueue,
    filters: Vec<Subscription>,
    /// Some subscription carries payload predicates: a topic match alone
    /// does not decide delivery.
    predicated: bool,
    /// Id of the last event offered or replayed: overlapping filters
    /// deliver once, and a client resuming from an id this instance has not
    /// read yet skips what it already has. [`RECOVERING`] while its missed
    /// events are fetched from the stream.
    last_id: EventId,
    /// Queued-class events dropped since the last `lagged` notice.
    dropped: u64,
    /// Newest metrics event per topic that did not fit while behind.
    pending: HashMap<Arc<str>, Arc<Event>>,
    behind: bool,
}

impl Subscriber {
    fn offer(&mut self, event: &Arc<Event>, telemetry: &Telemetry) -> Offer {
        if event.class == DeliveryClass::Conflate && self.behind {
            // Never queue a frame ahead of an older pending one for the same topic.
            self.hold(event, telemetry);
            return Offer::Full;
        }
        let offer = self.queue.offer_event(event);
        if offer == Offer::Full {
            match event.class {
                DeliveryClass::Conflate => self.hold(event, telemetry),
                DeliveryClass::Queue => {
                    self.dropped += 1;
                    telemetry.events_dropped(DropReason::SlowSession, 1);
                    self.fall_behind();
                }
            }
        }
        offer
    }

    fn hold(&mut self, event: &Arc<Event>, telemetry: &Telemetry) {
        if self
            .pending
            .insert(event.topic.clone(), event.clone())
            .is_some()
        {
            telemetry.events_dropped(DropReason::Conflated, 1);
        }
        self.fall_behind();
    }

    fn fall_behind(&mut self) {
        if !self.behind {
            self.behind = true;
            self.queue.wake();
        }
    }

    /// The session drained its queue: hand over the lagged count and the
    /// newest held frames, as far as they fit.
    fn catch_up(&mut self) -> usize {
        if self.dropped > 0
            && self.queue.offer_control(Delivery::Lagged(self.dropped)) == Offer::Queued
        {
            self.dropped = 0;
        }
        let mut held: Vec<Arc<Event>> = self.pending.drain().map(|(_, e)| e).collect();
        held.sort_by_key(|e| e.id);
        let mut sent = 0;
        let mut rest = held.into_iter();
        for event in rest.by_ref() {
            if self.queue.offer_event(&event) != Offer::Queued {
                self.pending.insert(event.topic.clone(), event);
                break;
            }
            sent += 1;
        }
        for event in rest {
            self.pending.insert(event.topic.clone(), event);
        }
        self.behind = false;
        if !self.pending.is_empty() || self.dropped > 0 {
            self.fall_behind();
        }
        sent
    }
}

/// A subscriber's `last_id` while the stream is asked for what it missed:
/// above every id, so no live event reaches it before its replay.
const RECOVERING: EventId = EventId {
    epoch: u64::MAX,
    seq: u64::MAX,
};

/// Cluster mode: how far (stream time) a resuming client's id may be ahead
/// of what this instance has read for it to wait for the events after it.
/// An instance further behind than this is not ready (`/readyz`) anyway.
const AHEAD_TOLERANCE_MS: u64 = 60_000;

/// Where a resuming client's missed events come from.
enum ResumeFrom {
    /// The history holds them all (maybe none).
    History(Vec<Arc<Event>>),
    /// Cluster mode: the client saw events this instance has not read yet;
    /// it gets nothing now and the live events after its id.
    Ahead,
    /// Cluster mode: older than the history; the stream may still hold them.
    Stream,
    /// Another run's id, garbage, or lost: a snapshot marked `reset`.
    Reset,
}

impl Bus {
    pub fn new(config: BusConfig, telemetry: Arc<Telemetry>) -> Self {
        let epoch = now_ms();
        Self {
            history: History::new(config.history, config.history_bytes),
            last: LastValues::new(MAX_LAST_VALUES, config.last_values_bytes),
            config,
            epoch,
            seq: 0,
            newest: EventId { epoch, seq: 0 },
            stream: None,
            index: FilterIndex::default(),
            sessions: HashMap::new(),
            telemetry,
        }
    }

    /// Cluster mode: every event arrives numbered by the Redis stream
    /// ([`Draft::numbered`]), and `recovery` fetches from the stream what a
    /// resuming client missed beyond the history.
    pub fn stream_fed(mut self, recovery: Recipient<Backfill>) -> Self {
        self.newest = EventId::stream(0, 0);
        self.stream = Some(recovery);
        self
    }

    fn next_id(&mut self) -> EventId {
        self.seq += 1;
        EventId {
            epoch: self.epoch,
            seq: self.seq,
        }
    }

    /// Numbers (or takes the stream's id of) `draft` and keeps it; `None`
    /// for a stream event this bus already has (a reader that read again
    /// after a reconnect) or a draft of the wrong kind for this mode.
    fn store(&mut self, draft: Draft) -> Option<Arc<Event>> {
        let id = match (draft.id(), &self.stream) {
            (None, None) => self.next_id(),
            (Some(id), Some(_)) if id.is_stream() && id > self.newest => id,
            (given, _) => {
                log::warn!(
                    "bus: dropped an event numbered {given:?} (newest {})",
                    self.newest
                );
                return None;
            }
        };
        self.newest = id;
        let event = Arc::new(Event::from_draft(id, draft));
        self.telemetry.events_published.inc();
        self.last.insert(&event);
        self.history.push(&event);
        self.telemetry
            .bus_history_bytes
            .set(self.history.bytes() as i64);
        self.telemetry
            .bus_last_values_bytes
            .set(self.last.bytes() as i64);
        Some(event)
    }

    fn publish(&mut self, draft: Draft) -> EventId {
        match self.store(draft) {
            Some(event) => {
                self.route(&event);
                event.id
            }
            None => self.newest,
        }
    }

    fn route(&mut self, event: &Arc<Event>) {
        let Self {
            index,
            sessions,
            telemetry,
            ..
        } = self;
        let event_id = event.id;
        let mut routed = 0u64;
        let mut closed: Vec<SessionId> = Vec::new();
        index.for_each_match(&event.topic, |id| {
            let Some(sub) = sessions.get_mut(id) else {
                return;
            };
            if event_id <= sub.last_id {
                return;
            }
            if sub.predicated && !sub.filters.iter().any(|s| s.matches(event)) {
                return;
            }
            sub.last_id = event_id;
            match sub.offer(event, telemetry) {
                Offer::Queued => routed += 1,
                Offer::Full => {}
                Offer::Closed => closed.push(*id),
            }
        });
        telemetry.events_routed.inc_by(routed);
        for id in closed {
            self.remove(id);
        }
    }

    fn last_id(&self) -> EventId {
        self.newest
    }

    /// Latest value of every topic matching `subs`, oldest first. The
    /// walk visits only the index branches the filters name, and at most
    /// `snapshot_max_events` events (4 × as many nodes) for all of them
    /// together; past that the snapshot is marked truncated.
    fn snapshot(&self, subs: &[Subscription], reset: bool) -> Snapshot {
        let window_ms = self.config.metrics_snapshot_window.as_millis() as u64;
        let oldest_metrics = now_ms().saturating_sub(window_ms);
        let mut budget = Budget::new(self.config.snapshot_max_events);
        let mut events: Vec<Arc<Event>> = Vec::new();
        let mut levels: Vec<FilterLevel<'_>> = Vec::new();
        for sub in subs {
            levels.clear();
            levels.extend(sub.filter.levels());
            let mut keep = |e: &Event| {
                (e.class != DeliveryClass::Conflate || e.ts_ms >= oldest_metrics)
                    && sub.predicates_hold(&e.body)
            };
            self.last
                .collect(&levels, &mut budget, &mut keep, &mut events);
        }
        // Overlapping filters find an event more than once.
        events.sort_by_key(|e| e.id);
        events.dedup_by_key(|e| e.id);
        if budget.truncated() {
            self.telemetry.snapshots_truncated.inc();
        }
        Snapshot {
            events,
            last_id: self.last_id(),
            reset,
            truncated: budget.truncated(),
        }
    }

    /// Where the events after `after` that match `subs` come from.
    fn resume_from(&self, after: EventId, subs: &[Subscription]) -> ResumeFrom {
        let cluster = self.stream.is_some();
        if after.is_stream() != cluster {
            return ResumeFrom::Reset;
        }
        if after >= self.newest {
            // An id far ahead of what this instance read is not one it will
            // reach soon (another cluster's, or made up): start over.
            let near = after.stream_ms().zip(self.newest.stream_ms()).is_some_and(
                |(after_ms, newest_ms)| after_ms <= newest_ms.saturating_add(AHEAD_TOLERANCE_MS),
            );
            return match (after == self.newest, cluster && near) {
                (true, _) => ResumeFrom::History(Vec::new()),
                (false, true) => ResumeFrom::Ahead,
                (false, false) => ResumeFrom::Reset,
            };
        }
        // The ring is a gapless tail of every event: it holds all events
        // after `after` when it starts at or before `after`'s successor.
        let covered = self.history.front().is_some_and(|front| {
            if cluster {
                front.id <= after
            } else {
                after.epoch == self.epoch && after.seq + 1 >= front.id.seq
            }
        });
        match (covered, cluster) {
            (true, _) => ResumeFrom::History(self.replay_after(after, subs)),
            (false, true) => ResumeFrom::Stream,
            (false, false) => ResumeFrom::Reset,
        }
    }

    /// The history's events after `after` that match `subs`.
    fn replay_after(&self, after: EventId, subs: &[Subscription]) -> Vec<Arc<Event>> {
        self.history
            .after(after)
            .filter(|e| subs.iter().any(|s| s.matches(e)))
            .cloned()
            .collect()
    }

    fn add_filters(&mut self, id: SessionId, subs: Vec<Subscription>) -> Result<(), String> {
        let Some(sub) = self.sessions.get_mut(&id) else {
            return Err("unknown session".into());
        };
        let mut new: Vec<Subscription> = Vec::with_capacity(subs.len());
        for s in subs {
            if !sub.filters.contains(&s) && !new.contains(&s) {
                new.push(s);
            }
        }
        if sub.filters.len() + new.len() > MAX_FILTERS_PER_SESSION {
            return Err(format!(
                "at most {MAX_FILTERS_PER_SESSION} topic filters per session"
            ));
        }
        for s in &new {
            // One index entry per distinct topic filter of the session.
            let indexed = sub.filters.iter().any(|f| f.filter == s.filter);
            if !indexed {
                self.index.insert(&s.filter, id);
            }
            sub.filters.push(s.clone());
        }
        sub.predicated = sub.filters.iter().any(Subscription::has_predicates);
        Ok(())
    }

    fn remove(&mut self, id: SessionId) {
        if let Some(sub) = self.sessions.remove(&id) {
            let mut done: Vec<&TopicFilter> = Vec::new();
            for s in &sub.filters {
                if !done.contains(&&s.filter) {
                    self.index.remove(&s.filter, &id);
                    done.push(&s.filter);
                }
            }
        }
    }
}

impl Actor for Bus {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(BUS_MAILBOX);
    }
}

/// Puts an accepted event on the bus. Sent by Registry and Ingest with
/// `try_send` (a full mailbox is counted as an `overload` drop), and by HTTP
/// publish with `send` to learn the id.
#[derive(Message)]
#[rtype(result = "EventId")]
pub struct Publish(pub Draft);

impl Handler<Publish> for Bus {
    type Result = MessageResult<Publish>;

    fn handle(&mut self, msg: Publish, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.publish(msg.0))
    }
}

/// Registers a new session with its first subscriptions. Sent by a session
/// once, at start (`do_send`). The bus queues the snapshot (or, for a
/// client resuming from `resume`, the missed events from the history) before
/// any live event, in the same step, so nothing falls between them and
/// nothing repeats.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Join {
    pub session: SessionId,
    pub queue: SessionQueue,
    pub subscriptions: Vec<Subscription>,
    /// The client's `Last-Event-ID`, as sent (any text).
    pub resume: Option<String>,
}

impl Handler<Join> for Bus {
    type Result = ();

    fn handle(&mut self, msg: Join, _: &mut Context<Self>) {
        let Join {
            session,
            queue,
            subscriptions,
            resume,
        } = msg;
        // A client that hung up before its turn came costs no snapshot or
        // replay: opening and closing streams in a loop cannot queue work
        // here faster than the bus throws it away.
        if queue.is_closed() {
            return;
        }
        self.sessions.insert(
            session,
            Subscriber {
                queue,
                filters: Vec::new(),
                predicated: false,
                last_id: EventId { epoch: 0, seq: 0 },
                dropped: 0,
                pending: HashMap::new(),
                behind: false,
            },
        );
        self.subscribe(session, subscriptions, resume.as_deref());
    }
}

impl Bus {
    fn subscribe(&mut self, session: SessionId, subs: Vec<Subscription>, resume: Option<&str>) {
        let reply = match self.add_filters(session, subs.clone()) {
            Ok(()) => {
                // A garbage, foreign or too old id gets a snapshot marked as
                // a reset: the client must drop what it shows and start over.
                let parse = if self.stream.is_some() {
                    EventId::parse_stream
                } else {
                    EventId::parse
                };
                let after = resume.and_then(|text| parse(text.trim()));
                let from = after.map_or(ResumeFrom::Reset, |after| self.resume_from(after, &subs));
                match (from, after) {
                    (ResumeFrom::History(events), _) => Delivery::Replay(Box::new(events)),
                    (ResumeFrom::Ahead, Some(after)) => {
                        if let Some(sub) = self.sessions.get_mut(&session) {
                            sub.last_id = after;
                        }
                        Delivery::Replay(Box::default())
                    }
                    (ResumeFrom::Stream, Some(after)) => {
                        if let (Some(sub), Some(stream)) =
                            (self.sessions.get_mut(&session), &self.stream)
                        {
                            // Bounded: when the stream's recovery has
                            // enough waiting, this client starts over now.
                            if stream.try_send(Backfill { session, after }).is_ok() {
                                sub.last_id = RECOVERING;
                                return;
                            }
                        }
                        Delivery::Snapshot(Box::new(self.snapshot(&subs, true)))
                    }
                    _ => Delivery::Snapshot(Box::new(self.snapshot(&subs, resume.is_some()))),
                }
            }
            Err(e) => Delivery::Error(Box::new(e)),
        };
        self.reply(session, reply);
    }

    fn reply(&mut self, session: SessionId, reply: Delivery) {
        if let Some(sub) = self.sessions.get(&session) {
            if sub.queue.offer_control(reply) == Offer::Closed {
                self.remove(session);
            }
        }
    }

    /// The stream's answer for a recovering session: its missed events up
    /// to `upto`, then the history's after that, then live events.
    fn backfilled(&mut self, msg: Backfilled) {
        let Some(sub) = self.sessions.get(&msg.session) else {
            return;
        };
        if sub.last_id != RECOVERING {
            return;
        }
        let subs = sub.filters.clone();
        let newest = self.newest;
        let replay = match msg.result {
            Ok(fetched) if fetched.upto >= newest => Some((fetched.events, fetched.upto)),
            Ok(fetched) => {
                // This instance read further than the stream answered: the
                // rest must still be in the history, else the client lost it.
                let covered = self
                    .history
                    .front()
                    .is_some_and(|front| front.id <= fetched.upto);
                covered.then(|| {
                    let mut events = fetched.events;
                    events.extend(self.history.after(fetched.upto).cloned());
                    (events, newest)
                })
            }
            Err(reason) => {
                log::info!("A resuming client gets a reset snapshot: {reason}");
                None
            }
        };
        let reply = match replay {
            Some((events, upto)) => {
                let events = events
                    .into_iter()
                    .filter(|e| subs.iter().any(|s| s.matches(e)))
                    .collect();
                if let Some(sub) = self.sessions.get_mut(&msg.session) {
                    sub.last_id = upto;
                }
                Delivery::Replay(Box::new(events))
            }
            None => {
                if let Some(sub) = self.sessions.get_mut(&msg.session) {
                    sub.last_id = newest;
                }
                Delivery::Snapshot(Box::new(self.snapshot(&subs, true)))
            }
        };
        self.reply(msg.session, reply);
    }
}

/// Cluster mode: asks the stream for the events after `after` that a
/// resuming session missed (`do_send` from the bus to the stream reader's
/// recovery); answered with [`Backfilled`].
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Backfill {
    pub session: SessionId,
    pub after: EventId,
}

/// Events fetched from the stream for a resuming session.
#[derive(Debug)]
pub struct Fetched {
    /// Every event after the session's id, up to and including `upto`, in
    /// order (all topics: the bus filters them).
    pub events: Vec<Arc<Event>>,
    pub upto: EventId,
}

/// The stream's answer to [`Backfill`]; `Err` says why the client must
/// start over (its id is older than the stream keeps, too much to replay,
/// Redis unreachable).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Backfilled {
    pub session: SessionId,
    pub result: Result<Fetched, String>,
}

impl Handler<Backfilled> for Bus {
    type Result = ();

    fn handle(&mut self, msg: Backfilled, _: &mut Context<Self>) {
        self.backfilled(msg);
    }
}

/// Cluster mode: events read from the stream, numbered, in stream order
/// (`try_send` from the registry, which saw the metrics among them first).
#[derive(Message)]
#[rtype(result = "()")]
pub struct PublishBatch(pub Vec<Draft>);

impl Handler<PublishBatch> for Bus {
    type Result = ();

    fn handle(&mut self, msg: PublishBatch, _: &mut Context<Self>) {
        for draft in msg.0 {
            self.publish(draft);
        }
    }
}

/// Cluster mode, at start: the stream's newest events, kept for snapshots
/// and replay but routed to nobody (they happened before this instance
/// started; alerts must not fire on them again).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Preload(pub Vec<Draft>);

impl Handler<Preload> for Bus {
    type Result = ();

    fn handle(&mut self, msg: Preload, _: &mut Context<Self>) {
        for draft in msg.0 {
            self.store(draft);
        }
    }
}

/// Adds filters to a running session (WebSocket `subscribe` op). The snapshot
/// of the new filters is queued like Join's.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    pub session: SessionId,
    pub subscriptions: Vec<Subscription>,
}

impl Handler<Subscribe> for Bus {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) {
        self.subscribe(msg.session, msg.subscriptions, None);
    }
}

/// Removes filters from a running session (WebSocket `unsubscribe` op); the
/// acknowledgement is queued after the last event those filters delivered.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    pub session: SessionId,
    pub filters: Vec<TopicFilter>,
}

impl Handler<Unsubscribe> for Bus {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) {
        let Some(sub) = self.sessions.get_mut(&msg.session) else {
            return;
        };
        for filter in &msg.filters {
            let before = sub.filters.len();
            sub.filters.retain(|s| s.filter != *filter);
            if sub.filters.len() < before {
                self.index.remove(filter, &msg.session);
            }
        }
        sub.predicated = sub.filters.iter().any(Subscription::has_predicates);
        // Held frames of filters now gone must not be delivered later.
        let filters = &sub.filters;
        sub.pending
            .retain(|_, e| filters.iter().any(|s| s.matches(e)));
        sub.queue
            .offer_control(Delivery::Unsubscribed(Box::new(msg.filters)));
    }
}

/// A session ended. Sent by the session from `stopped()` (`do_send`), so the
/// bus never holds a dead queue for long (a closed queue is also dropped on
/// the next delivery attempt).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    pub session: SessionId,
}

impl Handler<Leave> for Bus {
    type Result = ();

    fn handle(&mut self, msg: Leave, _: &mut Context<Self>) {
        self.remove(msg.session);
    }
}

/// The session drained its queue after being told it fell behind (`do_send`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resume {
    pub session: SessionId,
}

impl Handler<Resume> for Bus {
    type Result = ();

    fn handle(&mut self, msg: Resume, _: &mut Context<Self>) {
        if let Some(sub) = self.sessions.get_mut(&msg.session) {
            let sent = sub.catch_up();
            self.telemetry.events_routed.inc_by(sent as u64);
        }
    }
}

/// Closes every session (graceful shutdown). Sent by startup with `send`;
/// returns how many sessions were told to close.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Shutdown;

impl Handler<Shutdown> for Bus {
    type Result = usize;

    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) -> usize {
        let n = self.sessions.len();
        for (_, sub) in self.sessions.drain() {
            sub.queue.offer_control(Delivery::Close);
        }
        self.index = FilterIndex::default();
        n
    }
}

/// Counts for tests and diagnostics (`send`).
#[derive(Message)]
#[rtype(result = "BusStats")]
pub struct Stats;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusStats {
    pub sessions: usize,
    pub filters: usize,
    pub topics: usize,
    pub history: usize,
    /// Accounted bytes of the history (at most `history_bytes`).
    pub history_bytes: usize,
    /// Accounted bytes of the last values (at most `last_values_bytes`).
    pub last_values_bytes: usize,
    pub last_id: EventId,
}

impl Handler<Stats> for Bus {
    type Result = MessageResult<Stats>;

    fn handle(&mut self, _: Stats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(BusStats {
            sessions: self.sessions.len(),
            filters: self.index.len(),
            topics: self.last.len(),
            history: self.history.len(),
            history_bytes: self.history.bytes(),
            last_values_bytes: self.last.bytes(),
            last_id: self.last_id(),
        })
    }
}

/// What the bus knows of one attacker (`send` from HTTP, before opening a
/// per-attacker stream): `None` when no event of it was ever seen.
#[derive(Message)]
#[rtype(result = "Option<AttackerInfo>")]
pub struct FindAttacker(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttackerInfo {
    /// The attribution identity stamped on its newest event that has one,
    /// so its stream can also carry attribution events keyed on it.
    pub identity_uuid: Option<String>,
}

impl Handler<FindAttacker> for Bus {
    type Result = MessageResult<FindAttacker>;

    fn handle(&mut self, msg: FindAttacker, _: &mut Context<Self>) -> Self::Result {
        // `attackers/{uuid}/+/#`, built from levels so an id is never read
        // as a wildcard; bounded like a snapshot.
        let levels = [
            FilterLevel::Exact("attackers"),
            FilterLevel::Exact(&msg.0),
            FilterLevel::Plus,
            FilterLevel::Hash,
        ];
        let mut events = Vec::new();
        let mut budget = Budget::new(self.config.snapshot_max_events);
        self.last
            .collect(&levels, &mut budget, &mut |_| true, &mut events);
        let identity = events
            .iter()
            .filter_map(|e| Some((e.id, e.body.fields()?.str("identity_uuid")?)))
            .max_by_key(|(id, _)| *id);
        MessageResult((!events.is_empty()).then(|| AttackerInfo {
            identity_uuid: identity.map(|(_, id)| id.to_owned()),
        }))
    }
}

#[cfg(test)]
mod tests;
