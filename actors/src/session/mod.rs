//! Per-client sessions and the queue that feeds them.
//!
//! The bus pushes [`Delivery`] items into each session's bounded queue with a
//! non-blocking `try_send` (a tokio mpsc: no lock and no per-item allocation),
//! so a slow client can only ever fill its own queue. The queue holds
//! `bus.queue_capacity` events plus a few reserved slots for control items
//! (snapshot, lagged notice, close) that must never be lost to a full queue.

pub mod sse;
pub mod ws;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use crate::event::{Event, EventId};
use crate::subscription::Subscription;
use crate::topic::TopicFilter;

pub use sse::{SseBody, SseSession, SseSessionConfig};
pub use ws::{WireFormat, WsSession, WsSessionConfig};

/// Slots kept free for control items beyond the event capacity.
pub const CONTROL_RESERVE: usize = 4;

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
#[derive(Debug)]
pub enum Delivery {
    Event(Arc<Event>),
    /// Latest value per matching topic; always the first item after a
    /// subscribe, so nothing falls between snapshot and live events.
    /// (Boxed: a queue slot is the size of its largest item.)
    Snapshot(Box<Snapshot>),
    /// A resuming client's missed events, from the history, in order; live
    /// events follow with no gap and no repeat.
    Replay(Vec<Arc<Event>>),
    /// This many queued-class events were dropped because the queue was full.
    Lagged(u64),
    /// Acknowledges an unsubscribe: no event of these filters follows.
    Unsubscribed(Vec<TopicFilter>),
    /// A client op was refused; the session stays open.
    Error(String),
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
}

impl Snapshot {
    pub fn empty() -> Self {
        Self {
            events: Vec::new(),
            last_id: EventId { epoch: 0, seq: 0 },
            reset: false,
        }
    }
}

/// What a new session starts with, whatever its transport.
pub struct SessionStart {
    pub subscriptions: Vec<Subscription>,
    /// The client's `Last-Event-ID`, as sent.
    pub resume: Option<String>,
    /// Held for the session's life and dropped when it ends (the identity's
    /// stream slot): ending the session is what frees it.
    pub guard: Option<Box<dyn Send>>,
}

/// Why a session's writer stopped (WebSocket or SSE).
#[derive(Debug)]
pub(crate) enum WriterEnd {
    ClientGone,
    WriteDeadline,
    ServerClosing,
    QueueClosed,
}

/// Result of offering an item to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Queued,
    Full,
    Closed,
}

/// The producing end, held by the bus (and by the session for its own replies).
#[derive(Debug, Clone)]
pub struct SessionQueue {
    tx: mpsc::Sender<Delivery>,
    /// Events (not control items) in the queue, against `capacity`.
    events: Arc<AtomicUsize>,
    capacity: usize,
    /// Wakes the session when the bus holds items that did not fit (conflated
    /// frames, a lagged count): once it has drained, it asks for them.
    behind: Arc<Notify>,
    /// Set while the session is behind: its writer then conflates metrics
    /// within what is queued. A session that keeps up sees every frame.
    lagging: Arc<AtomicBool>,
}

/// The consuming end, owned by the session's writer.
#[derive(Debug)]
pub struct SessionInbox {
    rx: mpsc::Receiver<Delivery>,
    events: Arc<AtomicUsize>,
    pub behind: Arc<Notify>,
    lagging: Arc<AtomicBool>,
}

/// A queue for `capacity` events plus the control reserve.
pub fn session_queue(capacity: usize) -> (SessionQueue, SessionInbox) {
    let capacity = capacity.max(1);
    let (tx, rx) = mpsc::channel(capacity + CONTROL_RESERVE);
    let behind = Arc::new(Notify::new());
    let events = Arc::new(AtomicUsize::new(0));
    let lagging = Arc::new(AtomicBool::new(false));
    (
        SessionQueue {
            tx,
            events: events.clone(),
            capacity,
            behind: behind.clone(),
            lagging: lagging.clone(),
        },
        SessionInbox {
            rx,
            events,
            behind,
            lagging,
        },
    )
}

impl SessionQueue {
    /// Offers an event: refused once only the control reserve is left.
    pub fn offer_event(&self, event: &Arc<Event>) -> Offer {
        if self.tx.is_closed() {
            return Offer::Closed;
        }
        if self.events.load(Ordering::Acquire) >= self.capacity {
            return Offer::Full;
        }
        let offer = self.offer(Delivery::Event(event.clone()));
        if offer == Offer::Queued {
            self.events.fetch_add(1, Ordering::AcqRel);
        }
        offer
    }

    /// Offers a control item, which may use the reserve.
    pub fn offer_control(&self, item: Delivery) -> Offer {
        self.offer(item)
    }

    fn offer(&self, item: Delivery) -> Offer {
        match self.tx.try_send(item) {
            Ok(()) => Offer::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => Offer::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Offer::Closed,
        }
    }

    /// Tells the session that it fell behind and the bus holds items for it.
    pub fn wake(&self) {
        self.lagging.store(true, Ordering::Release);
        self.behind.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

impl SessionInbox {
    /// Takes up to `limit` items in order; 0 means the bus dropped the queue.
    pub async fn recv_many(&mut self, buf: &mut Vec<Delivery>, limit: usize) -> usize {
        let start = buf.len();
        let n = self.rx.recv_many(buf, limit).await;
        self.taken(&buf[start..]);
        n
    }

    /// The next item; `None` when the bus dropped the queue.
    pub async fn recv(&mut self) -> Option<Delivery> {
        let item = self.rx.recv().await?;
        self.taken(std::slice::from_ref(&item));
        Some(item)
    }

    /// Whether the session fell behind and has not caught up since.
    pub fn is_lagging(&self) -> bool {
        self.lagging.load(Ordering::Acquire)
    }

    /// The session drained everything queued: it has caught up.
    pub fn caught_up(&self) {
        self.lagging.store(false, Ordering::Release);
    }

    /// Takes one item if any is queued (tests, benchmarks).
    pub fn try_recv(&mut self) -> Option<Delivery> {
        let item = self.rx.try_recv().ok()?;
        self.taken(std::slice::from_ref(&item));
        Some(item)
    }

    fn taken(&self, items: &[Delivery]) {
        let events = items
            .iter()
            .filter(|d| matches!(d, Delivery::Event(_)))
            .count();
        if events > 0 {
            self.events.fetch_sub(events, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Body, Draft, EventId};

    fn event(seq: u64) -> Arc<Event> {
        let draft = Draft::new("t", 0, Body::Object(Default::default()));
        Arc::new(Event::from_draft(EventId { epoch: 1, seq }, draft))
    }

    #[test]
    fn events_fill_exactly_the_capacity_and_control_items_still_fit() {
        let (queue, mut inbox) = session_queue(3);
        for seq in 0..3 {
            assert_eq!(queue.offer_event(&event(seq)), Offer::Queued);
        }
        assert_eq!(queue.offer_event(&event(9)), Offer::Full);
        assert_eq!(queue.offer_control(Delivery::Lagged(1)), Offer::Queued);
        let mut got = Vec::new();
        while let Some(item) = inbox.try_recv() {
            got.push(item);
        }
        assert_eq!(got.len(), 4);
        assert!(matches!(got[3], Delivery::Lagged(1)));
        assert_eq!(
            queue.offer_event(&event(10)),
            Offer::Queued,
            "draining frees room"
        );
    }

    #[test]
    fn control_items_do_not_count_against_the_event_capacity() {
        let (queue, _inbox) = session_queue(2);
        assert_eq!(
            queue.offer_control(Delivery::Snapshot(Box::new(Snapshot::empty()))),
            Offer::Queued
        );
        assert_eq!(queue.offer_event(&event(1)), Offer::Queued);
        assert_eq!(queue.offer_event(&event(2)), Offer::Queued);
        assert_eq!(queue.offer_event(&event(3)), Offer::Full);
    }

    #[test]
    fn a_dropped_inbox_reads_as_closed() {
        let (queue, inbox) = session_queue(2);
        drop(inbox);
        assert_eq!(queue.offer_event(&event(1)), Offer::Closed);
        assert!(queue.is_closed());
    }
}
