//! A session's bounded queue: the bus offers, the session's writer takes.
//!
//! A queue holds events up to a byte bound ([`QueueLimits`]), plus
//! [`CONTROL_RESERVE`] slots for control items (snapshot, lagged notice,
//! close) that must never be lost to a full queue. Offers never block and
//! never allocate per item once the ring has grown; a full queue refuses,
//! and the bus decides what that means for the event (conflate or drop, see
//! `bus`).
//!
//! Why bytes and a shared pool, not a small count: a client that keeps up
//! on average still pauses (a scheduling hiccup, a GC in the browser, a
//! busy network for 20 ms), and at 100,000 frames/s a 256-event queue holds
//! under 3 ms of traffic, so a paused client was treated as a slow one and
//! conflated. Each queue may hold `bus.queue_reserved_bytes` on its own and
//! grow to `bus.queue_bytes` by drawing on one pool of
//! `bus.queue_pool_bytes` that every queue shares: a pause is absorbed,
//! only a client that stays behind is conflated, and many stalled clients
//! together cannot hold more than the pool beyond their reserves. One
//! owner's queues together draw at most `bus.queue_bytes` from the pool
//! ([`QueueBudget`]), so one caller's streams cannot spend it for everyone.
//! An idle queue keeps only a few slots.
//!
//! Why a ring behind a per-session mutex and not a channel: an idle stream
//! must cost little, and 10,000 idle SSE streams are normal. A tokio mpsc
//! costs 1.8 KiB per queue before the first item (a cache-padded channel and
//! a 32-slot block); this costs one small allocation, and its ring shrinks
//! back after a burst. The lock belongs to one session: only the bus (one
//! push, or one batch of control items) and that session's writer (one
//! batch take) ever hold it, for a few instructions, so it is uncontended in
//! practice and costs less than a channel's four atomic read-modify-writes
//! (benches/pipeline.rs, `fanout/*`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};

use super::delivery::Delivery;
use crate::event::Event;
use crate::families::DeliveryClass;

/// Slots kept free for control items beyond the event capacity: the reply
/// (snapshot or acknowledgement) to each op a WebSocket session may have
/// with the bus or waiting (five), a lagged notice, a refusal notice and a
/// close.
pub const CONTROL_RESERVE: usize = 8;

/// Refusals of a client's own ops (`Error`, `RateLimited`) waiting at once:
/// a client that floods ops and stops reading gets one, not a queue full of
/// them, so the reserve stays free for what the bus must deliver.
pub const MAX_NOTICES: usize = 1;

/// A ring that has grown past `SHRINK_ABOVE` slots shrinks to `KEEP_SLOTS`
/// once drained: an idle session keeps only a few slots, and a busy one
/// whose backlog stays small does not reallocate at every drain.
const SHRINK_ABOVE: usize = 64;
const KEEP_SLOTS: usize = 16;

/// A replay (a resuming client's missed events) is handed to the writer at
/// most this many events, and about this many bytes of envelopes, at a time:
/// what one writer pass renders, and what a client that stops reading can
/// hold outside the queue, whatever the history holds.
pub const REPLAY_PIECE_EVENTS: usize = 64;
pub const REPLAY_PIECE_BYTES: usize = 64 * 1024;

/// Events of the replay's head that form the next piece: at least one, at
/// most [`REPLAY_PIECE_EVENTS`], and no more once [`REPLAY_PIECE_BYTES`] is
/// reached.
fn replay_piece_len(events: &[Arc<Event>]) -> usize {
    let mut bytes = 0;
    let mut n = 0;
    for e in events.iter().take(REPLAY_PIECE_EVENTS) {
        if n > 0 && bytes + e.envelope.len() > REPLAY_PIECE_BYTES {
            break;
        }
        bytes += e.envelope.len();
        n += 1;
    }
    n
}

/// How much a session's queue may hold: events by count and by bytes (each
/// event's estimated heap size, [`Event::heap_bytes`]), and the pool the
/// bytes beyond its reserve come from. Cloned into every session; the pool
/// is one for the process.
#[derive(Debug, Clone)]
pub struct QueueLimits {
    /// Most events queued at once (`bus.queue_capacity`).
    pub events: usize,
    /// Most bytes of events queued at once (`bus.queue_bytes`).
    pub bytes: usize,
    /// Bytes a queue holds without drawing on the pool
    /// (`bus.queue_reserved_bytes`): a client that keeps up never waits
    /// for the pool that stalled clients use.
    pub reserved_bytes: usize,
    pub pool: Arc<QueuePool>,
    /// The allowance of the session's owner (API key, or address for a
    /// shared identity): what all its queues together may draw from the
    /// pool, so one caller's streams cannot spend the pool for everyone.
    pub owner: Option<Arc<QueuePool>>,
}

impl QueueLimits {
    pub fn new(events: usize, bytes: usize, reserved_bytes: usize, pool: Arc<QueuePool>) -> Self {
        Self {
            events: events.max(1),
            bytes,
            reserved_bytes: reserved_bytes.min(bytes),
            pool,
            owner: None,
        }
    }

    /// These bounds for a session of the owner whose allowance is `owner`.
    pub fn with_owner(&self, owner: Arc<QueuePool>) -> Self {
        Self {
            owner: Some(owner),
            ..self.clone()
        }
    }

    fn draw(&self, bytes: usize) -> bool {
        if bytes == 0 {
            return true;
        }
        if let Some(owner) = &self.owner {
            if !owner.try_draw(bytes) {
                return false;
            }
        }
        if self.pool.try_draw(bytes) {
            return true;
        }
        if let Some(owner) = &self.owner {
            owner.give_back(bytes);
        }
        false
    }

    fn force_draw(&self, bytes: usize) {
        self.pool.force_draw(bytes);
        if let Some(owner) = &self.owner {
            owner.force_draw(bytes);
        }
    }

    fn give_back(&self, bytes: usize) {
        self.pool.give_back(bytes);
        if let Some(owner) = &self.owner {
            owner.give_back(bytes);
        }
    }

    /// A queue bounded by its event count only (the Alerts actor's, which
    /// must see every event it can; tests).
    pub fn events(events: usize) -> Self {
        Self::new(events, usize::MAX, usize::MAX, Arc::new(QueuePool::new(0)))
    }
}

impl From<usize> for QueueLimits {
    fn from(events: usize) -> Self {
        Self::events(events)
    }
}

/// Every session's queue bounds: the pool all share, and one allowance per
/// owner, created with its first session and gone with its last.
#[derive(Debug)]
pub struct QueueBudget {
    base: QueueLimits,
    owner_bytes: usize,
    owners: Mutex<HashMap<String, Weak<QueuePool>>>,
}

impl QueueBudget {
    /// `owner_bytes`: what one owner's queues together may draw from the pool.
    pub fn new(base: QueueLimits, owner_bytes: usize) -> Self {
        Self {
            base,
            owner_bytes,
            owners: Mutex::new(HashMap::new()),
        }
    }

    /// Bounds shared by no owner (an internal subscriber).
    pub fn base(&self) -> QueueLimits {
        self.base.clone()
    }

    /// Bounds for a session of `owner`.
    pub fn for_owner(&self, owner: &str) -> QueueLimits {
        let mut owners = self.owners.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(pool) = owners.get(owner).and_then(Weak::upgrade) {
            return self.base.with_owner(pool);
        }
        // Entries of owners whose sessions all ended are dropped as the map
        // grows: it holds about the owners with a session open.
        if owners.len() >= 64 && owners.len().is_power_of_two() {
            owners.retain(|_, pool| pool.strong_count() > 0);
        }
        let pool = Arc::new(QueuePool::new(self.owner_bytes));
        owners.insert(owner.to_owned(), Arc::downgrade(&pool));
        self.base.with_owner(pool)
    }
}

/// Bytes every session queue together may hold beyond their reserves
/// (`bus.queue_pool_bytes`).
#[derive(Debug)]
pub struct QueuePool {
    used: AtomicUsize,
    capacity: usize,
}

impl QueuePool {
    pub fn new(capacity: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            capacity,
        }
    }

    /// Bytes drawn from the pool now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn try_draw(&self, bytes: usize) -> bool {
        if bytes == 0 {
            return true;
        }
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&n| n <= self.capacity)
            })
            .is_ok()
    }

    fn force_draw(&self, bytes: usize) {
        if bytes > 0 {
            self.used.fetch_add(bytes, Ordering::AcqRel);
        }
    }

    fn give_back(&self, bytes: usize) {
        if bytes > 0 {
            self.used.fetch_sub(bytes, Ordering::AcqRel);
        }
    }
}

/// Result of offering an item to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Queued,
    Full,
    Closed,
}

/// What a writer's take found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Items were moved into the batch. `lagging`: the session fell behind
    /// and has not caught up, so its writer conflates metrics within them.
    Items { lagging: bool },
    /// Nothing queued, and the bus holds items that did not fit (held
    /// frames, a lagged count): the writer has drained and should ask for
    /// them ([`SessionInbox::caught_up`], then `bus::Resume`).
    Behind,
    /// Nothing queued and every producer is gone: the session is over.
    Closed,
}

struct State {
    items: VecDeque<Delivery>,
    /// Events (not control items) in `items`, against the capacity.
    events: usize,
    /// Their estimated heap bytes, against the byte bound.
    bytes: usize,
    /// The writer waiting for items (or for `behind`).
    waker: Option<Waker>,
    /// The bus holds items for this session; reported once the ring is empty.
    behind: bool,
    /// Set with `behind`, cleared when the writer caught up.
    lagging: bool,
    /// Live [`SessionQueue`] handles; none left means closed.
    producers: usize,
    /// The [`SessionInbox`] is gone (or the queue was closed): refuse all.
    closed: bool,
    /// Takes that found items.
    takes: u64,
    /// Events put into snapshots for this session so far: the snapshot work
    /// its ops caused, charged to its op budget.
    snapshot_events: u64,
    /// Refusal notices waiting (see [`MAX_NOTICES`]).
    notices: usize,
}

struct Shared {
    state: Mutex<State>,
    capacity: usize,
    limits: QueueLimits,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; if something did, the ring is
        // still a valid ring.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The part of `bytes` held on the pool's account.
    fn pooled(&self, bytes: usize) -> usize {
        bytes.saturating_sub(self.limits.reserved_bytes)
    }

    /// Whether `state` may take `cost` more bytes of events; draws what
    /// goes beyond the reserve from the pool. An empty queue always takes
    /// one event, whatever its size and however full the pool (so the pool
    /// may run over by at most one event per queue).
    fn admit(&self, state: &mut State, cost: usize) -> bool {
        let after = state.bytes.saturating_add(cost);
        let draw = self.pooled(after) - self.pooled(state.bytes);
        if state.events == 0 {
            self.limits.force_draw(draw);
        } else if after > self.limits.bytes || !self.limits.draw(draw) {
            return false;
        }
        state.bytes = after;
        true
    }

    /// `cost` bytes of events left the queue: gives back to the pool what
    /// no longer goes beyond the reserve.
    fn release(&self, state: &mut State, cost: usize) {
        let before = state.bytes;
        state.bytes = before.saturating_sub(cost);
        self.limits
            .give_back(self.pooled(before) - self.pooled(state.bytes));
    }
}

/// The producing end, held by the bus (and by the session for its own replies).
pub struct SessionQueue {
    shared: Arc<Shared>,
}

/// The consuming end, owned by the session's writer.
pub struct SessionInbox {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SessionQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionQueue")
            .field("capacity", &self.shared.capacity)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SessionInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionInbox").finish_non_exhaustive()
    }
}

/// A queue within `limits`, plus the control reserve.
pub fn session_queue(limits: impl Into<QueueLimits>) -> (SessionQueue, SessionInbox) {
    let limits = limits.into();
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            events: 0,
            bytes: 0,
            waker: None,
            behind: false,
            lagging: false,
            producers: 1,
            closed: false,
            takes: 0,
            snapshot_events: 0,
            notices: 0,
        }),
        capacity: limits.events,
        limits,
    });
    (
        SessionQueue {
            shared: shared.clone(),
        },
        SessionInbox { shared },
    )
}

impl Clone for SessionQueue {
    fn clone(&self) -> Self {
        self.shared.lock().producers += 1;
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for SessionQueue {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.shared.lock();
            state.producers -= 1;
            if state.producers == 0 {
                state.waker.take()
            } else {
                None
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl SessionQueue {
    /// Offers an event: refused once only the control reserve is left.
    pub fn offer_event(&self, event: &Arc<Event>) -> Offer {
        let mut state = self.shared.lock();
        if state.closed {
            return Offer::Closed;
        }
        if state.events >= self.shared.capacity
            || state.items.len() >= self.shared.capacity + CONTROL_RESERVE
            || !self.shared.admit(&mut state, event.heap_bytes())
        {
            return Offer::Full;
        }
        state.events += 1;
        push(state, Delivery::Event(event.clone()))
    }

    /// Offers a control item, which may use the reserve.
    pub fn offer_control(&self, item: Delivery) -> Offer {
        let state = self.shared.lock();
        if state.closed {
            return Offer::Closed;
        }
        if state.items.len() >= self.shared.capacity + CONTROL_RESERVE {
            return Offer::Full;
        }
        push(state, item)
    }

    /// Offers the refusal of a client's own op: dropped (the client will see
    /// the one already waiting) while [`MAX_NOTICES`] are.
    pub fn offer_notice(&self, item: Delivery) -> Offer {
        let mut state = self.shared.lock();
        if state.closed {
            return Offer::Closed;
        }
        if state.notices >= MAX_NOTICES
            || state.items.len() >= self.shared.capacity + CONTROL_RESERVE
        {
            return Offer::Full;
        }
        state.notices += 1;
        push(state, item)
    }

    /// Tells the session that it fell behind and the bus holds items for it.
    pub fn wake(&self) {
        let waker = {
            let mut state = self.shared.lock();
            state.behind = true;
            state.lagging = true;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    /// Events put into snapshots for this session since it started.
    pub fn snapshot_events(&self) -> u64 {
        self.shared.lock().snapshot_events
    }

    /// Items waiting for the writer, and how many takes it has made so far:
    /// a writer that takes nothing while items wait is stuck.
    pub fn progress(&self) -> (usize, u64) {
        let state = self.shared.lock();
        (state.items.len(), state.takes)
    }

    /// Ends the queue now: what is queued is dropped, offers are refused and
    /// the writer's next take reads [`Take::Closed`]. For a session that
    /// ends while its writer cannot run (a client that stopped reading).
    pub fn close(&self) {
        let (items, waker) = {
            let mut state = self.shared.lock();
            state.closed = true;
            state.events = 0;
            let bytes = state.bytes;
            self.shared.release(&mut state, bytes);
            (std::mem::take(&mut state.items), state.waker.take())
        };
        drop(items);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Pushes under the lock, then wakes the writer outside it.
fn push(mut state: MutexGuard<'_, State>, item: Delivery) -> Offer {
    if let Delivery::Snapshot(snapshot) = &item {
        state.snapshot_events += snapshot.events.len() as u64;
    }
    state.items.push_back(item);
    let waker = state.waker.take();
    drop(state);
    if let Some(waker) = waker {
        waker.wake();
    }
    Offer::Queued
}

impl Drop for SessionInbox {
    fn drop(&mut self) {
        let items = {
            let mut state = self.shared.lock();
            state.closed = true;
            state.events = 0;
            let bytes = state.bytes;
            self.shared.release(&mut state, bytes);
            std::mem::take(&mut state.items)
        };
        drop(items);
    }
}

/// What a writer's take found, with the slow-consumer handshake done by
/// the queue (see [`SessionInbox::poll_take_resuming`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Items were moved into the batch; `lagging` as in [`Take::Items`].
    Items { lagging: bool },
    /// Nothing queued and every producer is gone: the session is over.
    Closed,
}

impl SessionInbox {
    /// [`SessionInbox::poll_take`] with the slow-consumer handshake, the one
    /// place it is written: when the queue drained after the bus said the
    /// subscriber fell behind ([`Take::Behind`]), the subscriber has caught
    /// up, and `resume` asks the bus for what it held (`bus::Resume`, sent
    /// however the subscriber reaches the bus).
    pub fn poll_take_resuming(
        &mut self,
        cx: &mut Context<'_>,
        batch: &mut Vec<Delivery>,
        limit: usize,
        resume: impl Fn(),
    ) -> Poll<Taken> {
        loop {
            match self.poll_take(cx, batch, limit) {
                Poll::Ready(take) => match self.resumed(take, &resume) {
                    Some(taken) => return Poll::Ready(taken),
                    None => continue,
                },
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// [`SessionInbox::poll_take_resuming`] as a future.
    pub async fn take_resuming(
        &mut self,
        batch: &mut Vec<Delivery>,
        limit: usize,
        resume: impl Fn(),
    ) -> Taken {
        poll_fn(|cx| self.poll_take_resuming(cx, batch, limit, &resume)).await
    }

    /// [`SessionInbox::poll_take_resuming`] without waiting: `None` when
    /// there is nothing to take yet.
    pub fn try_take_resuming(
        &mut self,
        batch: &mut Vec<Delivery>,
        limit: usize,
        resume: impl Fn(),
    ) -> Option<Taken> {
        loop {
            let take = self.try_take(batch, limit)?;
            if let Some(taken) = self.resumed(take, &resume) {
                return Some(taken);
            }
        }
    }

    /// The handshake: `Behind` means caught up, then ask the bus to resume.
    fn resumed(&self, take: Take, resume: &impl Fn()) -> Option<Taken> {
        match take {
            Take::Items { lagging } => Some(Taken::Items { lagging }),
            Take::Closed => Some(Taken::Closed),
            Take::Behind => {
                self.caught_up();
                resume();
                None
            }
        }
    }

    /// Moves up to `limit` queued items into `batch`, in order; or reports
    /// that the session is behind or closed; or registers the writer's waker.
    pub fn poll_take(
        &mut self,
        cx: &mut Context<'_>,
        batch: &mut Vec<Delivery>,
        limit: usize,
    ) -> Poll<Take> {
        let mut state = self.shared.lock();
        if let Some(take) = take_locked(&self.shared, &mut state, batch, limit) {
            return Poll::Ready(take);
        }
        match &state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// [`SessionInbox::poll_take`] as a future.
    pub async fn take(&mut self, batch: &mut Vec<Delivery>, limit: usize) -> Take {
        poll_fn(|cx| self.poll_take(cx, batch, limit)).await
    }

    /// Like [`SessionInbox::take`], without waiting: `None` when there is
    /// nothing to report yet.
    pub fn try_take(&mut self, batch: &mut Vec<Delivery>, limit: usize) -> Option<Take> {
        take_locked(&self.shared, &mut self.shared.lock(), batch, limit)
    }

    /// The next item, waiting for one; `None` once closed. (Tests.)
    pub async fn recv(&mut self) -> Option<Delivery> {
        let mut one = Vec::with_capacity(1);
        loop {
            match self.take(&mut one, 1).await {
                Take::Items { .. } => return one.pop(),
                Take::Behind => {}
                Take::Closed => return None,
            }
        }
    }

    /// Takes one item if any is queued. (Tests, benchmarks.)
    pub fn try_recv(&mut self) -> Option<Delivery> {
        let mut state = self.shared.lock();
        let item = state.items.pop_front()?;
        taken(&self.shared, &mut state, std::slice::from_ref(&item));
        Some(item)
    }

    /// Waits until the bus reports that it holds items for this session and
    /// everything queued before that was taken. (Tests.)
    pub async fn behind(&mut self) {
        let mut batch = Vec::new();
        while self.take(&mut batch, usize::MAX).await != Take::Behind {
            batch.clear();
        }
    }

    /// Whether the session fell behind and has not caught up since.
    pub fn is_lagging(&self) -> bool {
        self.shared.lock().lagging
    }

    /// The session drained everything queued: it has caught up.
    pub fn caught_up(&self) {
        let mut state = self.shared.lock();
        state.lagging = false;
        state.behind = false;
    }
}

fn take_locked(
    shared: &Shared,
    state: &mut State,
    batch: &mut Vec<Delivery>,
    limit: usize,
) -> Option<Take> {
    if !state.items.is_empty() {
        let start = batch.len();
        if let Some(Delivery::Replay(events)) = state.items.front_mut() {
            // A replay leaves the queue one piece per take, so the rest
            // stays queued where the watchdog sees it and `close` frees it.
            let n = replay_piece_len(events);
            if n < events.len() {
                let piece: Vec<Arc<Event>> = events.drain(..n).collect();
                batch.push(Delivery::Replay(Box::new(piece)));
            } else if let Some(last) = state.items.pop_front() {
                batch.push(last);
            }
        } else {
            // Up to the limit, stopping before a replay (it goes in pieces).
            let n = limit.min(state.items.len());
            let n = state
                .items
                .iter()
                .take(n)
                .position(|d| matches!(d, Delivery::Replay(_)))
                .unwrap_or(n);
            batch.extend(state.items.drain(..n));
        }
        taken(shared, state, &batch[start..]);
        return Some(Take::Items {
            lagging: state.lagging,
        });
    }
    if state.behind {
        state.behind = false;
        return Some(Take::Behind);
    }
    if state.closed || state.producers == 0 {
        return Some(Take::Closed);
    }
    None
}

fn taken(shared: &Shared, state: &mut State, items: &[Delivery]) {
    state.takes += 1;
    let (mut events, mut bytes, mut notices) = (0, 0, 0);
    for item in items {
        match item {
            Delivery::Event(e) => {
                events += 1;
                bytes += e.heap_bytes();
            }
            Delivery::Error(_) | Delivery::RateLimited(_) => notices += 1,
            _ => {}
        }
    }
    state.events = state.events.saturating_sub(events);
    shared.release(state, bytes);
    state.notices = state.notices.saturating_sub(notices);
    if state.items.is_empty() && state.items.capacity() > SHRINK_ABOVE {
        state.items.shrink_to(KEEP_SLOTS);
    }
}

/// Keeps only the newest metrics event per topic within one batch; returns
/// how many older frames were left out.
pub fn conflate(batch: &mut Vec<Delivery>, seen: &mut HashSet<Arc<str>>) -> u64 {
    let metrics = batch
        .iter()
        .filter(|d| matches!(d, Delivery::Event(e) if e.class == DeliveryClass::Conflate))
        .count();
    if metrics < 2 {
        return 0;
    }
    seen.clear();
    let mut keep: Vec<bool> = vec![true; batch.len()];
    for (i, item) in batch.iter().enumerate().rev() {
        if let Delivery::Event(e) = item {
            if e.class == DeliveryClass::Conflate && !seen.insert(e.topic.clone()) {
                keep[i] = false;
            }
        }
    }
    let mut flags = keep.iter();
    batch.retain(|_| *flags.next().unwrap_or(&true));
    keep.iter().filter(|k| !**k).count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Snapshot;
    use crate::event::{testing, Body, Draft, EventId};

    fn metrics(seq: u64, device: &str) -> Delivery {
        Delivery::Event(testing::metrics(seq, device))
    }

    fn note(seq: u64) -> Delivery {
        Delivery::Event(testing::note(seq))
    }

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

    /// Limits in units of one test event's cost.
    fn limits(events: usize, bytes: usize, reserved: usize, pool: &Arc<QueuePool>) -> QueueLimits {
        let cost = event(0).heap_bytes();
        QueueLimits::new(events, bytes * cost, reserved * cost, pool.clone())
    }

    fn drain(inbox: &mut SessionInbox) -> usize {
        let mut n = 0;
        while inbox.try_recv().is_some() {
            n += 1;
        }
        n
    }

    #[test]
    fn a_queue_holds_events_up_to_its_byte_bound_whatever_its_count() {
        let pool = Arc::new(QueuePool::new(usize::MAX));
        let (queue, mut inbox) = session_queue(limits(1000, 3, 3, &pool));
        for seq in 0..3 {
            assert_eq!(queue.offer_event(&event(seq)), Offer::Queued);
        }
        assert_eq!(queue.offer_event(&event(3)), Offer::Full);
        assert_eq!(drain(&mut inbox), 3);
        assert_eq!(queue.offer_event(&event(4)), Offer::Queued, "room again");
    }

    #[test]
    fn beyond_its_reserve_a_queue_draws_on_the_pool_and_gives_it_back() {
        let cost = event(0).heap_bytes();
        let pool = Arc::new(QueuePool::new(2 * cost));
        let (queue, mut inbox) = session_queue(limits(1000, 100, 2, &pool));
        for seq in 0..4 {
            assert_eq!(queue.offer_event(&event(seq)), Offer::Queued);
        }
        assert_eq!(pool.used(), 2 * cost, "two events beyond the reserve");
        assert_eq!(queue.offer_event(&event(4)), Offer::Full, "pool spent");
        let mut batch = Vec::new();
        inbox.try_take(&mut batch, 1);
        assert_eq!(pool.used(), cost, "what left the queue went back");
        assert_eq!(drain(&mut inbox), 3);
        assert_eq!(pool.used(), 0);
    }

    #[test]
    fn a_stalled_queue_spending_the_pool_leaves_every_other_queue_its_reserve() {
        let cost = event(0).heap_bytes();
        let pool = Arc::new(QueuePool::new(8 * cost));
        let (stalled, _stalled_inbox) = session_queue(limits(1000, 100, 2, &pool));
        let mut queued = 0;
        while stalled.offer_event(&event(queued)) == Offer::Queued {
            queued += 1;
        }
        assert_eq!(queued, 10, "its reserve and the whole pool");
        let (fast, mut fast_inbox) = session_queue(limits(1000, 100, 2, &pool));
        for round in 0..100 {
            assert_eq!(fast.offer_event(&event(round)), Offer::Queued);
            assert_eq!(fast.offer_event(&event(round)), Offer::Queued);
            assert_eq!(drain(&mut fast_inbox), 2, "a client that keeps up");
        }
        assert_eq!(fast.offer_event(&event(1)), Offer::Queued);
        assert_eq!(fast.offer_event(&event(2)), Offer::Queued);
        assert_eq!(
            fast.offer_event(&event(3)),
            Offer::Full,
            "beyond its reserve, the pool is the stalled one's"
        );
    }

    #[test]
    fn one_owners_queues_together_draw_at_most_its_allowance_from_the_pool() {
        let cost = event(0).heap_bytes();
        let pool = Arc::new(QueuePool::new(100 * cost));
        let budget = QueueBudget::new(limits(1000, 100, 1, &pool), 4 * cost);
        let fill = |queue: &SessionQueue| {
            let mut n = 0;
            while queue.offer_event(&event(n)) == Offer::Queued {
                n += 1;
            }
            n
        };
        let (a1, a1_inbox) = session_queue(budget.for_owner("a"));
        let (a2, _a2_inbox) = session_queue(budget.for_owner("a"));
        let (b, _b_inbox) = session_queue(budget.for_owner("b"));
        assert_eq!(fill(&a1), 5, "its reserve and the owner's allowance");
        assert_eq!(fill(&a2), 1, "its reserve only: the allowance is spent");
        assert_eq!(fill(&b), 5, "another owner still draws");
        assert_eq!(pool.used(), 8 * cost);
        drop(a1_inbox);
        assert_eq!(fill(&a2), 4, "the allowance came back with the queue");
    }

    #[test]
    fn an_empty_queue_takes_an_event_larger_than_its_bounds() {
        let pool = Arc::new(QueuePool::new(0));
        let (queue, mut inbox) = session_queue(QueueLimits::new(10, 1, 1, pool.clone()));
        assert_eq!(queue.offer_event(&event(1)), Offer::Queued);
        assert_eq!(queue.offer_event(&event(2)), Offer::Full);
        assert!(pool.used() > 0, "counted on the pool while queued");
        assert_eq!(drain(&mut inbox), 1);
        assert_eq!(pool.used(), 0);
    }

    #[test]
    fn a_closed_or_dropped_queue_gives_its_bytes_back_to_the_pool() {
        let pool = Arc::new(QueuePool::new(usize::MAX));
        let (queue, inbox) = session_queue(limits(1000, 100, 1, &pool));
        for seq in 0..5 {
            queue.offer_event(&event(seq));
        }
        assert!(pool.used() > 0);
        queue.close();
        assert_eq!(pool.used(), 0);
        drop(inbox);
        let (queue, inbox) = session_queue(limits(1000, 100, 1, &pool));
        for seq in 0..5 {
            queue.offer_event(&event(seq));
        }
        drop(inbox);
        assert_eq!(pool.used(), 0);
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
    fn control_items_and_events_together_stay_within_capacity_plus_reserve() {
        let (queue, _inbox) = session_queue(2);
        for _ in 0..2 + CONTROL_RESERVE {
            assert_eq!(queue.offer_control(Delivery::Lagged(1)), Offer::Queued);
        }
        assert_eq!(queue.offer_event(&event(1)), Offer::Full);
    }

    #[test]
    fn the_control_reserve_is_bounded_too() {
        let (queue, _inbox) = session_queue(1);
        for _ in 0..1 + CONTROL_RESERVE {
            assert_eq!(queue.offer_control(Delivery::Lagged(1)), Offer::Queued);
        }
        assert_eq!(queue.offer_control(Delivery::Lagged(1)), Offer::Full);
    }

    #[test]
    fn a_dropped_inbox_reads_as_closed() {
        let (queue, inbox) = session_queue(2);
        drop(inbox);
        assert_eq!(queue.offer_event(&event(1)), Offer::Closed);
        assert!(queue.is_closed());
    }

    #[test]
    fn takes_come_in_order_in_batches_up_to_the_limit() {
        let (queue, mut inbox) = session_queue(8);
        for seq in 0..5 {
            queue.offer_event(&event(seq));
        }
        let mut batch = Vec::new();
        assert_eq!(
            inbox.try_take(&mut batch, 3),
            Some(Take::Items { lagging: false })
        );
        assert_eq!(
            inbox.try_take(&mut batch, 3),
            Some(Take::Items { lagging: false })
        );
        let seqs: Vec<u64> = batch
            .iter()
            .map(|d| match d {
                Delivery::Event(e) => e.id.seq,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(seqs, vec![0, 1, 2, 3, 4]);
        assert_eq!(inbox.try_take(&mut batch, 3), None, "empty and open");
        assert_eq!(queue.offer_event(&event(5)), Offer::Queued, "room again");
    }

    #[test]
    fn behind_is_reported_once_the_queue_is_drained() {
        let (queue, mut inbox) = session_queue(1);
        queue.offer_event(&event(1));
        queue.wake();
        let mut batch = Vec::new();
        assert_eq!(
            inbox.try_take(&mut batch, 8),
            Some(Take::Items { lagging: true }),
            "queued items first, marked for conflation"
        );
        assert_eq!(inbox.try_take(&mut batch, 8), Some(Take::Behind));
        assert_eq!(inbox.try_take(&mut batch, 8), None, "reported once");
        assert!(inbox.is_lagging(), "until the writer caught up");
        inbox.caught_up();
        assert!(!inbox.is_lagging());
    }

    #[test]
    fn a_drained_subscriber_catches_up_and_asks_to_resume_exactly_once() {
        let (queue, mut inbox) = session_queue(1);
        queue.offer_event(&event(1));
        queue.wake();
        let asked = std::cell::Cell::new(0);
        let resume = || asked.set(asked.get() + 1);
        let mut batch = Vec::new();
        assert_eq!(
            inbox.try_take_resuming(&mut batch, 8, resume),
            Some(Taken::Items { lagging: true })
        );
        assert_eq!(asked.get(), 0, "not before the queue is drained");
        assert_eq!(inbox.try_take_resuming(&mut batch, 8, resume), None);
        assert_eq!(asked.get(), 1);
        assert!(!inbox.is_lagging(), "caught up when it asked");
        assert_eq!(inbox.try_take_resuming(&mut batch, 8, resume), None);
        assert_eq!(asked.get(), 1, "once per fall behind");
        drop(queue);
        assert_eq!(
            inbox.try_take_resuming(&mut batch, 8, resume),
            Some(Taken::Closed)
        );
    }

    #[test]
    fn the_inbox_reads_closed_when_every_producer_is_gone() {
        let (queue, mut inbox) = session_queue(2);
        let other = queue.clone();
        queue.offer_event(&event(1));
        drop(queue);
        let mut batch = Vec::new();
        assert_eq!(
            inbox.try_take(&mut batch, 8),
            Some(Take::Items { lagging: false })
        );
        assert_eq!(inbox.try_take(&mut batch, 8), None, "one producer left");
        drop(other);
        assert_eq!(inbox.try_take(&mut batch, 8), Some(Take::Closed));
    }

    #[test]
    fn close_drops_what_is_queued_and_refuses_more() {
        let (queue, mut inbox) = session_queue(4);
        let e = event(1);
        queue.offer_event(&e);
        queue.close();
        assert_eq!(Arc::strong_count(&e), 1, "the queued reference is released");
        assert_eq!(queue.offer_event(&e), Offer::Closed);
        assert_eq!(inbox.try_take(&mut Vec::new(), 8), Some(Take::Closed));
    }

    #[actix::test]
    async fn a_waiting_writer_is_woken_by_an_offer_by_a_wake_and_by_the_last_drop() {
        let (queue, mut inbox) = session_queue(4);
        let offer = queue.clone();
        let waiter = tokio::spawn(async move {
            let mut batch = Vec::new();
            let first = inbox.take(&mut batch, 8).await;
            let second = inbox.take(&mut batch, 8).await;
            let third = inbox.take(&mut batch, 8).await;
            (first, second, third, batch.len())
        });
        tokio::task::yield_now().await;
        offer.offer_event(&event(1));
        tokio::task::yield_now().await;
        queue.wake();
        tokio::task::yield_now().await;
        drop(offer);
        drop(queue);
        let (first, second, third, taken) =
            tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
                .await
                .expect("the writer was woken each time")
                .expect("no panic");
        assert_eq!(first, Take::Items { lagging: false });
        assert_eq!(taken, 1);
        // `behind` is reported before `closed`, whenever the writer ran.
        assert_eq!(second, Take::Behind);
        assert_eq!(third, Take::Closed);
    }

    #[test]
    fn a_ring_grown_by_a_burst_is_given_back_once_drained() {
        let (queue, mut inbox) = session_queue(1024);
        for seq in 0..500 {
            queue.offer_event(&event(seq));
        }
        while inbox.try_recv().is_some() {}
        assert!(inbox.shared.lock().items.capacity() <= KEEP_SLOTS);
    }

    fn seqs(batch: &[Delivery]) -> Vec<u64> {
        batch
            .iter()
            .flat_map(|d| match d {
                Delivery::Replay(events) => events.iter().map(|e| e.id.seq).collect(),
                Delivery::Event(e) => vec![e.id.seq],
                _ => vec![],
            })
            .collect()
    }

    #[test]
    fn a_replay_leaves_the_queue_in_bounded_pieces_in_order_then_live_events() {
        let (queue, mut inbox) = session_queue(8);
        let total = REPLAY_PIECE_EVENTS as u64 * 3 + 5;
        let replay: Vec<Arc<Event>> = (1..=total).map(event).collect();
        queue.offer_control(Delivery::Replay(Box::new(replay)));
        queue.offer_event(&event(total + 1));
        let mut all = Vec::new();
        let mut batch = Vec::new();
        while let Some(Take::Items { .. }) = inbox.try_take(&mut batch, 64) {
            if let [Delivery::Replay(piece)] = batch.as_slice() {
                assert!(!piece.is_empty() && piece.len() <= REPLAY_PIECE_EVENTS);
            }
            all.extend(seqs(&batch));
            batch.clear();
        }
        assert_eq!(
            all,
            (1..=total + 1).collect::<Vec<_>>(),
            "each once, in order"
        );
    }

    #[test]
    fn a_replay_piece_stops_at_the_byte_bound_but_always_moves() {
        let big = |seq| {
            let mut map = serde_json::Map::new();
            map.insert("f".into(), "x".repeat(REPLAY_PIECE_BYTES / 3).into());
            let draft = Draft::new("t", 0, Body::Object(map));
            Arc::new(Event::from_draft(EventId { epoch: 1, seq }, draft))
        };
        let events: Vec<Arc<Event>> = (1..=10).map(big).collect();
        assert_eq!(
            replay_piece_len(&events),
            2,
            "two thirds fit, a third does not"
        );
        let huge = |seq| {
            let mut map = serde_json::Map::new();
            map.insert("f".into(), "x".repeat(REPLAY_PIECE_BYTES * 2).into());
            let draft = Draft::new("t", 0, Body::Object(map));
            Arc::new(Event::from_draft(EventId { epoch: 1, seq }, draft))
        };
        assert_eq!(replay_piece_len(&[huge(1), huge(2)]), 1);
    }

    #[test]
    fn an_untaken_replay_stays_queued_for_the_watchdog_and_close_frees_it() {
        let (queue, mut inbox) = session_queue(8);
        let replay: Vec<Arc<Event>> = (1..=1000).map(event).collect();
        let first = replay[999].clone();
        queue.offer_control(Delivery::Replay(Box::new(replay)));
        let mut batch = Vec::new();
        inbox.try_take(&mut batch, 64);
        let (queued, takes) = queue.progress();
        assert_eq!((queued, takes), (1, 1), "the rest waits in the queue");
        queue.close();
        assert_eq!(Arc::strong_count(&first), 1, "closing frees the rest");
    }

    #[test]
    fn the_queue_counts_the_events_put_into_snapshots() {
        let (queue, _inbox) = session_queue(4);
        let snapshot = |n: u64| {
            let mut s = Snapshot::empty();
            s.events = (0..n).map(event).collect();
            Delivery::Snapshot(Box::new(s))
        };
        queue.offer_control(snapshot(3));
        queue.offer_event(&event(9));
        queue.offer_control(snapshot(5));
        assert_eq!(queue.snapshot_events(), 8);
    }

    #[test]
    fn a_queue_slot_is_two_words() {
        // Every idle session's ring is made of these: keep payloads boxed.
        assert!(std::mem::size_of::<Delivery>() <= 16);
    }

    #[test]
    fn conflation_keeps_the_newest_frame_per_device_and_every_other_event() {
        let mut batch = vec![
            metrics(1, "a"),
            note(2),
            metrics(3, "b"),
            metrics(4, "a"),
            note(5),
            metrics(6, "a"),
        ];
        let dropped = conflate(&mut batch, &mut HashSet::new());
        assert_eq!(dropped, 2);
        assert_eq!(seqs(&batch), vec![2, 3, 5, 6]);
    }

    #[test]
    fn a_flood_of_refusals_leaves_the_reserve_to_the_bus() {
        let (queue, mut inbox) = session_queue(4);
        for seq in 0..4 {
            assert_eq!(queue.offer_event(&event(seq)), Offer::Queued);
        }
        assert_eq!(queue.offer_notice(Delivery::RateLimited(5)), Offer::Queued);
        for _ in 0..100 {
            assert_eq!(queue.offer_notice(Delivery::RateLimited(5)), Offer::Full);
        }
        // Every reply the bus owes the session's ops still fits.
        for _ in 0..5 {
            let reply = Delivery::Snapshot(Box::new(Snapshot::empty()));
            assert_eq!(queue.offer_control(reply), Offer::Queued);
        }
        let mut batch = Vec::new();
        while let Some(Take::Items { .. }) = inbox.try_take(&mut batch, 64) {}
        assert_eq!(queue.offer_notice(Delivery::RateLimited(5)), Offer::Queued);
    }
}
