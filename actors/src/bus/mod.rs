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

mod last_values;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::event::{now_ms, Draft, Event, EventId};
use crate::session::{Delivery, Offer, SessionId, SessionQueue};
use crate::telemetry::{DropReason, Telemetry};
use crate::topic::{DeliveryClass, FilterIndex, TopicFilter};

use last_values::LastValues;

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
    /// Metrics older than this are left out of snapshots (`registry.prune_seconds`).
    pub metrics_snapshot_window: Duration,
}

pub struct Bus {
    config: BusConfig,
    epoch: u64,
    seq: u64,
    index: FilterIndex<SessionId>,
    sessions: HashMap<SessionId, Subscriber>,
    last: LastValues,
    history: VecDeque<Arc<Event>>,
    telemetry: Arc<Telemetry>,
}

/// What the bus knows of one session.
struct Subscriber {
    queue: SessionQueue,
    filters: Vec<TopicFilter>,
    /// Sequence of the last event offered, so overlapping filters deliver once.
    last_seq: u64,
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

impl Bus {
    pub fn new(config: BusConfig, telemetry: Arc<Telemetry>) -> Self {
        Self {
            history: VecDeque::with_capacity(config.history.min(1 << 16)),
            config,
            epoch: now_ms(),
            seq: 0,
            index: FilterIndex::default(),
            sessions: HashMap::new(),
            last: LastValues::new(MAX_LAST_VALUES),
            telemetry,
        }
    }

    fn next_id(&mut self) -> EventId {
        self.seq += 1;
        EventId {
            epoch: self.epoch,
            seq: self.seq,
        }
    }

    fn publish(&mut self, draft: Draft) -> EventId {
        let id = self.next_id();
        let event = Arc::new(Event::from_draft(id, draft));
        self.telemetry.events_published.inc();
        self.last.insert(&event);
        if self.config.history > 0 {
            if self.history.len() == self.config.history {
                self.history.pop_front();
            }
            self.history.push_back(event.clone());
        }
        self.route(&event);
        id
    }

    fn route(&mut self, event: &Arc<Event>) {
        let Self {
            index,
            sessions,
            telemetry,
            ..
        } = self;
        let seq = event.id.seq;
        let mut routed = 0u64;
        let mut closed: Vec<SessionId> = Vec::new();
        index.for_each_match(&event.topic, |id| {
            let Some(sub) = sessions.get_mut(id) else {
                return;
            };
            if sub.last_seq == seq {
                return;
            }
            sub.last_seq = seq;
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

    /// Latest value of every topic matching `filters`, oldest first.
    fn snapshot(&self, filters: &[TopicFilter]) -> Vec<Arc<Event>> {
        let window_ms = self.config.metrics_snapshot_window.as_millis() as u64;
        let oldest_metrics = now_ms().saturating_sub(window_ms);
        let mut events: Vec<Arc<Event>> = self
            .last
            .iter()
            .filter(|e| e.class != DeliveryClass::Conflate || e.ts_ms >= oldest_metrics)
            .filter(|e| filters.iter().any(|f| f.matches(&e.topic)))
            .cloned()
            .collect();
        events.sort_by_key(|e| e.id);
        events
    }

    fn add_filters(&mut self, id: SessionId, filters: Vec<TopicFilter>) -> Result<(), String> {
        let Some(sub) = self.sessions.get_mut(&id) else {
            return Err("unknown session".into());
        };
        let new: Vec<TopicFilter> = filters
            .into_iter()
            .filter(|f| !sub.filters.contains(f))
            .collect();
        if sub.filters.len() + new.len() > MAX_FILTERS_PER_SESSION {
            return Err(format!(
                "at most {MAX_FILTERS_PER_SESSION} topic filters per session"
            ));
        }
        for filter in &new {
            self.index.insert(filter, id);
        }
        sub.filters.extend(new);
        Ok(())
    }

    fn remove(&mut self, id: SessionId) {
        if let Some(sub) = self.sessions.remove(&id) {
            for filter in &sub.filters {
                self.index.remove(filter, &id);
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

/// Registers a new session with its first filters. Sent by a session once,
/// at start (`do_send`). The bus queues the snapshot before any live event,
/// in the same step, so nothing falls between them and nothing repeats.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Join {
    pub session: SessionId,
    pub queue: SessionQueue,
    pub filters: Vec<TopicFilter>,
}

impl Handler<Join> for Bus {
    type Result = ();

    fn handle(&mut self, msg: Join, _: &mut Context<Self>) {
        let Join {
            session,
            queue,
            filters,
        } = msg;
        self.sessions.insert(
            session,
            Subscriber {
                queue,
                filters: Vec::new(),
                last_seq: 0,
                dropped: 0,
                pending: HashMap::new(),
                behind: false,
            },
        );
        self.subscribe(session, filters);
    }
}

impl Bus {
    fn subscribe(&mut self, session: SessionId, filters: Vec<TopicFilter>) {
        let reply = match self.add_filters(session, filters.clone()) {
            Ok(()) => Delivery::Snapshot(self.snapshot(&filters)),
            Err(e) => Delivery::Error(e),
        };
        if let Some(sub) = self.sessions.get(&session) {
            if sub.queue.offer_control(reply) == Offer::Closed {
                self.remove(session);
            }
        }
    }
}

/// Adds filters to a running session (WebSocket `subscribe` op). The snapshot
/// of the new filters is queued like Join's.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    pub session: SessionId,
    pub filters: Vec<TopicFilter>,
}

impl Handler<Subscribe> for Bus {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) {
        self.subscribe(msg.session, msg.filters);
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
            if let Some(i) = sub.filters.iter().position(|f| f == filter) {
                sub.filters.swap_remove(i);
                self.index.remove(filter, &msg.session);
            }
        }
        // Held frames of filters now gone must not be delivered later.
        let filters = &sub.filters;
        sub.pending
            .retain(|topic, _| filters.iter().any(|f| f.matches(topic)));
        sub.queue.offer_control(Delivery::Unsubscribed(msg.filters));
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
            last_id: EventId {
                epoch: self.epoch,
                seq: self.seq,
            },
        })
    }
}

#[cfg(test)]
mod tests;
