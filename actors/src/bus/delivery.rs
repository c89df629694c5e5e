//! The bus's delivery protocol: what it puts in a session's queue.
//!
//! The bus offers [`Delivery`] items to each subscriber's bounded queue
//! ([`super::queue`]) without ever waiting, so a slow client can only ever
//! fill its own queue. The queue holds `bus.queue_capacity` events plus a few
//! reserved slots for control items (snapshot, lagged notice, close) that
//! must never be lost to a full queue. Sessions and the Alerts actor are
//! subscribers alike; the bus knows none of them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::event::{Event, EventId};
use crate::topic::TopicFilter;

/// Identifies a session to the bus; unique within a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl SessionId {
    pub fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// One item in a session's queue, written to the client in order.
///
/// Two words: every payload is one pointer or one number, so an idle
/// session's queue stays small (see `queue`).
#[derive(Debug)]
#[allow(clippy::box_collection)]
pub enum Delivery {
    Event(Arc<Event>),
    /// Latest value per matching topic; always the first item after a
    /// subscribe, so nothing falls between snapshot and live events.
    /// (Boxed: a queue slot is the size of its largest item.)
    Snapshot(Box<Snapshot>),
    /// A resuming client's missed events, from the history, in order; live
    /// events follow with no gap and no repeat. The queue hands it to the
    /// writer in pieces (`queue::REPLAY_PIECE_EVENTS` / `_BYTES`).
    Replay(Box<Vec<Arc<Event>>>),
    /// This many queued-class events were dropped because the queue was full.
    Lagged(u64),
    /// Acknowledges an unsubscribe: no event of these filters follows.
    Unsubscribed(Box<Vec<TopicFilter>>),
    /// A client op was refused; the session stays open.
    Error(Box<String>),
    /// A client op was refused because the session is over its op budget;
    /// it may try again after this many milliseconds.
    RateLimited(u64),
    /// The server is going away: close the stream cleanly.
    Close,
}

/// The latest value of every matching topic.
#[derive(Debug)]
pub struct Snapshot {
    pub events: Vec<Arc<Event>>,
    /// The bus's newest id when the snapshot was taken: a client that
    /// resumes from it misses nothing.
    pub last_id: EventId,
    /// The client asked to resume from an id the history no longer holds
    /// (or from another run): it must drop what it shows and start over.
    pub reset: bool,
    /// The bus stopped at its per-snapshot bound (`bus.snapshot_max_events`):
    /// some matching topics are missing. Sent as `"truncated":true`.
    pub truncated: bool,
}

impl Snapshot {
    pub fn empty() -> Self {
        Self {
            events: Vec::new(),
            last_id: EventId { epoch: 0, seq: 0 },
            reset: false,
            truncated: false,
        }
    }
}
