//! `Idempotency-Key` for HTTP publish, with the seed receiver's semantics:
//! the same key with the same body is `already-present` (200, the first
//! publish's id), with a different body a conflict (409), the first time
//! created (201).
//!
//! Keys are scoped per identity (one caller cannot probe another's) and kept
//! for [`KEEP_FOR`] after their publish succeeded. Limits, and why they
//! refuse rather than evict: a kept key is a promise that a retry within
//! 24 h publishes nothing. Evicting a key breaks that promise for whoever
//! owned it, so an identity at `http.idempotency_keys_per_identity`, or a
//! store at `http.idempotency_max_keys`, gets 429 for its *new* keys and
//! every key already given keeps its 24 h. A publish that fails leaves no
//! trace, and a duplicate arriving while the first is still publishing gets
//! 409 `in_flight` (retry it and it gets the first one's answer), never a
//! 200 without an id. In process, or in cluster mode in Redis
//! ([`SharedIdempotency`]), behind [`IdempotencyStore`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::digest::{Context, SHA256};

use edgebus_actors::alerts::Clock;

use crate::cluster_store::idempotency::{SharedIdempotency, SharedPending};
use crate::cluster_store::StoreError;
use crate::settings::HttpSettings;

pub const KEEP_FOR: Duration = Duration::from_secs(24 * 3600);
/// Longest `Idempotency-Key` accepted.
pub const MAX_KEY_LEN: usize = 200;
/// Bytes one kept key costs at most, whatever the key's length (it is kept
/// as a SHA-256): map slot and entry, expiry-queue slot, the event id. For
/// the memory formula in the docs; pinned by a test.
pub const ENTRY_BYTES: usize = 384;

pub type Digest = [u8; 32];

#[derive(Debug, PartialEq, Eq)]
pub enum Claim<P = Pending> {
    /// First time: publish, then [`Pending::record`] the result (dropping
    /// the [`Pending`] instead frees the key).
    New(P),
    /// Seen with the same request; the id its publish produced (none for
    /// metrics, which go through the registry).
    AlreadyPresent(Option<String>),
    /// Seen with a different request.
    Conflict,
    /// The same request is still being published.
    InFlight,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdempotencyError {
    #[error("too many Idempotency-Keys held by {0:?} (http.idempotency_keys_per_identity = {1}, each kept 24 h); publish without a key or retry later")]
    IdentityFull(String, usize),
    #[error("too many Idempotency-Keys held (http.idempotency_max_keys = {0}); retry later")]
    StoreFull(usize),
    /// The shared store (cluster mode) failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the system random generator failed")]
    Random,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    InFlight,
    Done(Option<String>),
}

#[derive(Debug)]
struct Entry {
    identity: Arc<str>,
    fingerprint: Digest,
    state: State,
    at_ms: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Digest, Entry>,
    /// Completed keys in completion order; in-flight keys are not here, so
    /// a publish that fails leaves nothing behind.
    order: VecDeque<(u64, Digest)>,
    per_identity: HashMap<Arc<str>, usize>,
}

pub struct Idempotency {
    per_identity: usize,
    max: usize,
    keep_ms: u64,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
}

/// A claimed key whose publish is under way. Dropped without
/// [`Pending::record`] (the publish failed, or the request was abandoned
/// half-way), it frees the key.
#[derive(Debug)]
pub struct Pending {
    store: Arc<Idempotency>,
    slot: Digest,
    recorded: bool,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.slot == other.slot
    }
}

impl Eq for Pending {}

impl std::fmt::Debug for Idempotency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotency").finish_non_exhaustive()
    }
}

pub fn fingerprint(topic: &str, body: &[u8]) -> Digest {
    let mut ctx = Context::new(&SHA256);
    ctx.update(topic.as_bytes());
    ctx.update(&[0]);
    ctx.update(body);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Where `(identity, key)` lives: a fixed-size digest, so a long key costs
/// no more than a short one.
pub(crate) fn slot(identity: &str, key: &str) -> Digest {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&(identity.len() as u64).to_be_bytes());
    ctx.update(identity.as_bytes());
    ctx.update(key.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl Idempotency {
    pub fn new(settings: &HttpSettings, clock: Arc<dyn Clock>) -> Self {
        Self::with_limits(
            settings.idempotency_keys_per_identity,
            settings.idempotency_max_keys,
            clock,
        )
    }

    pub fn with_limits(per_identity: usize, max: usize, clock: Arc<dyn Clock>) -> Self {
        Self {
            per_identity,
            max,
            keep_ms: KEEP_FOR.as_millis() as u64,
            clock,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks and claims `key` for `identity` in one step, so two concurrent
    /// requests with one key cannot both publish.
    pub fn claim(
        self: &Arc<Self>,
        identity: &Arc<str>,
        key: &str,
        fingerprint: Digest,
    ) -> Result<Claim, IdempotencyError> {
        let now = self.clock.now_ms();
        let slot = slot(identity, key);
        let mut inner = self.lock();
        inner.expire(now, self.keep_ms);
        if let Some(entry) = inner.entries.get(&slot) {
            return Ok(match &entry.state {
                _ if entry.fingerprint != fingerprint => Claim::Conflict,
                State::InFlight => Claim::InFlight,
                State::Done(id) => Claim::AlreadyPresent(id.clone()),
            });
        }
        let held = inner.per_identity.get(identity).copied().unwrap_or(0);
        if held >= self.per_identity {
            return Err(IdempotencyError::IdentityFull(
                identity.to_string(),
                self.per_identity,
            ));
        }
        if inner.entries.len() >= self.max {
            return Err(IdempotencyError::StoreFull(self.max));
        }
        *inner.per_identity.entry(identity.clone()).or_insert(0) += 1;
        inner.entries.insert(
            slot,
            Entry {
                identity: identity.clone(),
                fingerprint,
                state: State::InFlight,
                at_ms: now,
            },
        );
        Ok(Claim::New(Pending {
            store: self.clone(),
            slot,
            recorded: false,
        }))
    }

    /// Keys held (in flight or kept) and entries of the expiry queue.
    pub fn len(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.entries.len(), inner.order.len())
    }
}

impl Pending {
    /// The publish succeeded with this event id: keep the key for 24 h.
    pub fn record(mut self, id: Option<String>) {
        self.recorded = true;
        let now = self.store.clock.now_ms();
        let mut inner = self.store.lock();
        if let Some(entry) = inner.entries.get_mut(&self.slot) {
            entry.state = State::Done(id);
            entry.at_ms = now;
            inner.order.push_back((now, self.slot));
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.recorded {
            self.store.lock().forget(&self.slot);
        }
    }
}

impl<P> Claim<P> {
    fn map<Q>(self, f: impl FnOnce(P) -> Q) -> Claim<Q> {
        match self {
            Claim::New(p) => Claim::New(f(p)),
            Claim::AlreadyPresent(id) => Claim::AlreadyPresent(id),
            Claim::Conflict => Claim::Conflict,
            Claim::InFlight => Claim::InFlight,
        }
    }
}

/// Where keys are kept: this process, or in cluster mode Redis, so that
/// every instance honours every key.
#[derive(Debug)]
pub enum IdempotencyStore {
    Local(Arc<Idempotency>),
    Shared(Arc<SharedIdempotency>),
}

/// A claim from either store.
#[derive(Debug)]
pub enum AnyPending {
    Local(Pending),
    Shared(SharedPending),
}

impl IdempotencyStore {
    /// [`Idempotency::claim`], or [`SharedIdempotency::claim`].
    pub async fn claim(
        &self,
        identity: &Arc<str>,
        key: &str,
        fingerprint: Digest,
    ) -> Result<Claim<AnyPending>, IdempotencyError> {
        match self {
            Self::Local(store) => Ok(store
                .claim(identity, key, fingerprint)?
                .map(AnyPending::Local)),
            Self::Shared(store) => Ok(store
                .claim(identity, key, fingerprint)
                .await?
                .map(AnyPending::Shared)),
        }
    }
}

impl AnyPending {
    /// The publish succeeded with this id. A shared store that fails to
    /// take the answer has logged why; its pending marker then expires
    /// after [`crate::cluster_store::idempotency::PENDING_TTL`].
    pub async fn record(self, id: Option<String>) {
        match self {
            Self::Local(pending) => pending.record(id),
            Self::Shared(pending) => {
                let _ = pending.record(id).await;
            }
        }
    }
}

impl Inner {
    fn forget(&mut self, slot: &Digest) {
        let Some(entry) = self.entries.remove(slot) else {
            return;
        };
        if let Some(count) = self.per_identity.get_mut(&entry.identity) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_identity.remove(&entry.identity);
            }
        }
    }

    fn expire(&mut self, now_ms: u64, keep_ms: u64) {
        while let Some(&(at, slot)) = self.order.front() {
            if now_ms.saturating_sub(at) < keep_ms {
                break;
            }
            self.order.pop_front();
            if self
                .entries
                .get(&slot)
                .is_some_and(|e| e.at_ms == at && e.state != State::InFlight)
            {
                self.forget(&slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgebus_actors::alerts::ManualClock;

    fn store(per_identity: usize, max: usize) -> (Arc<Idempotency>, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(1_000));
        let store = Arc::new(Idempotency::with_limits(per_identity, max, clock.clone()));
        (store, clock)
    }

    fn new(claim: Result<Claim, IdempotencyError>) -> Pending {
        match claim {
            Ok(Claim::New(pending)) => pending,
            other => panic!("expected a new claim, got {other:?}"),
        }
    }

    #[test]
    fn same_body_is_already_present_other_body_conflicts() {
        let (store, _) = store(10, 10);
        let ops: Arc<str> = "ops".into();
        let a = fingerprint("t/x", b"{\"a\":1}");
        let b = fingerprint("t/x", b"{\"a\":2}");
        new(store.claim(&ops, "k1", a)).record(Some("1-1".into()));
        assert_eq!(
            store.claim(&ops, "k1", a),
            Ok(Claim::AlreadyPresent(Some("1-1".into())))
        );
        assert_eq!(store.claim(&ops, "k1", b), Ok(Claim::Conflict));
        // Another topic with the same body is another request.
        assert_eq!(
            store.claim(&ops, "k1", fingerprint("t/y", b"{\"a\":1}")),
            Ok(Claim::Conflict)
        );
    }

    #[test]
    fn keys_are_per_identity_and_a_failed_publish_leaves_no_trace() {
        let (store, _) = store(10, 10);
        let (ops, other): (Arc<str>, Arc<str>) = ("ops".into(), "other".into());
        let f = fingerprint("t", b"{}");
        let pending = new(store.claim(&ops, "k", f));
        new(store.claim(&other, "k", f)).record(None);
        drop(pending); // the publish failed
        assert_eq!(store.len(), (1, 1), "only the other identity's key");
        new(store.claim(&ops, "k", f)).record(Some("2-1".into()));
        assert_eq!(store.len(), (2, 2));
    }

    #[test]
    fn a_duplicate_while_the_first_is_in_flight_is_told_so_then_gets_the_answer() {
        let (store, _) = store(10, 10);
        let ops: Arc<str> = "ops".into();
        let f = fingerprint("t", b"{}");
        let first = new(store.claim(&ops, "k", f));
        assert_eq!(store.claim(&ops, "k", f), Ok(Claim::InFlight));
        assert_eq!(
            store.claim(&ops, "k", fingerprint("t", b"{\"x\":1}")),
            Ok(Claim::Conflict)
        );
        first.record(Some("3-7".into()));
        assert_eq!(
            store.claim(&ops, "k", f),
            Ok(Claim::AlreadyPresent(Some("3-7".into())))
        );
    }

    #[test]
    fn one_identity_at_its_cap_is_refused_and_evicts_nobody() {
        let (store, _) = store(2, 3);
        let (ops, other, third): (Arc<str>, Arc<str>, Arc<str>) =
            ("ops".into(), "other".into(), "third".into());
        let f = fingerprint("t", b"{}");
        new(store.claim(&other, "theirs", f)).record(Some("1-1".into()));
        new(store.claim(&ops, "a", f)).record(None);
        new(store.claim(&ops, "b", f)).record(None);
        assert_eq!(
            store.claim(&ops, "c", f),
            Err(IdempotencyError::IdentityFull("ops".into(), 2))
        );
        assert_eq!(
            store.claim(&third, "x", f),
            Err(IdempotencyError::StoreFull(3))
        );
        assert_eq!(
            store.claim(&other, "theirs", f),
            Ok(Claim::AlreadyPresent(Some("1-1".into()))),
            "the other identity's key is still kept"
        );
    }

    #[test]
    fn keys_expire_after_a_day_on_the_clock() {
        let (store, clock) = store(1, 10);
        let ops: Arc<str> = "ops".into();
        let f = fingerprint("t", b"{}");
        new(store.claim(&ops, "k", f)).record(Some("1-1".into()));
        clock.advance(KEEP_FOR - Duration::from_millis(1));
        assert!(matches!(
            store.claim(&ops, "k", f),
            Ok(Claim::AlreadyPresent(_))
        ));
        clock.advance(Duration::from_millis(1));
        new(store.claim(&ops, "k2", f)).record(None);
        assert_eq!(store.len(), (1, 1));
    }

    #[test]
    fn an_entry_costs_at_most_the_documented_bytes_whatever_the_key() {
        // Map slot (digest + entry + a control byte), up to 16/7 of it when
        // the table has just doubled, queue slot, an event id's heap bytes.
        let per = (std::mem::size_of::<(Digest, Entry)>() + 1) * 16 / 7
            + std::mem::size_of::<(u64, Digest)>()
            + 32;
        assert!(per <= ENTRY_BYTES, "{per} > {ENTRY_BYTES}");
    }
}
