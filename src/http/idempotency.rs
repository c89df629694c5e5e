//! `Idempotency-Key` for HTTP publish, with the seed receiver's semantics:
//! the same key with the same body is `already-present` (200), with a
//! different body a conflict (409), the first time created (201).
//!
//! Keys are scoped per identity (one caller cannot probe another's) and
//! kept for [`KEEP_FOR`], at most [`MAX_KEYS`] of them (oldest forgotten
//! first). In process: several instances would keep them in Redis.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_lc_rs::digest::{Context, SHA256};

pub const KEEP_FOR: Duration = Duration::from_secs(24 * 3600);
pub const MAX_KEYS: usize = 100_000;
/// Longest `Idempotency-Key` accepted.
pub const MAX_KEY_LEN: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First time: the caller publishes, then [`Idempotency::record`]s the result.
    New,
    /// Seen with the same request; here is what it produced.
    AlreadyPresent(serde_json::Value),
    /// Seen with a different request.
    Conflict,
}

struct Entry {
    fingerprint: [u8; 32],
    result: Option<serde_json::Value>,
    at: Instant,
}

#[derive(Default)]
pub struct Idempotency {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<(String, String), Entry>,
    order: VecDeque<(Instant, (String, String))>,
}

pub fn fingerprint(topic: &str, body: &[u8]) -> [u8; 32] {
    let mut ctx = Context::new(&SHA256);
    ctx.update(topic.as_bytes());
    ctx.update(&[0]);
    ctx.update(body);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl Idempotency {
    /// Checks and claims `key` for `identity` in one step, so two concurrent
    /// requests with one key cannot both publish.
    pub fn claim(&self, identity: &str, key: &str, fingerprint: [u8; 32]) -> Claim {
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.expire(now);
        let id = (identity.to_owned(), key.to_owned());
        if let Some(entry) = inner.entries.get(&id) {
            return if entry.fingerprint != fingerprint {
                Claim::Conflict
            } else {
                Claim::AlreadyPresent(entry.result.clone().unwrap_or(serde_json::Value::Null))
            };
        }
        inner.entries.insert(
            id.clone(),
            Entry {
                fingerprint,
                result: None,
                at: now,
            },
        );
        inner.order.push_back((now, id));
        while inner.entries.len() > MAX_KEYS {
            let Some((_, oldest)) = inner.order.pop_front() else {
                break;
            };
            inner.entries.remove(&oldest);
        }
        Claim::New
    }

    pub fn record(&self, identity: &str, key: &str, result: serde_json::Value) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = inner
            .entries
            .get_mut(&(identity.to_owned(), key.to_owned()))
        {
            entry.result = Some(result);
        }
    }

    /// The publish failed: the key is free again.
    pub fn release(&self, identity: &str, key: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.entries.remove(&(identity.to_owned(), key.to_owned()));
    }
}

impl Inner {
    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < KEEP_FOR {
                break;
            }
            let Some((at, id)) = self.order.pop_front() else {
                break;
            };
            // A released and re-claimed key has a newer entry: keep it.
            if self.entries.get(&id).is_some_and(|e| e.at == at) {
                self.entries.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn same_body_is_already_present_other_body_conflicts() {
        let store = Idempotency::default();
        let a = fingerprint("t/x", b"{\"a\":1}");
        let b = fingerprint("t/x", b"{\"a\":2}");
        assert_eq!(store.claim("ops", "k1", a), Claim::New);
        store.record("ops", "k1", json!({"id": "1-1"}));
        assert_eq!(
            store.claim("ops", "k1", a),
            Claim::AlreadyPresent(json!({"id": "1-1"}))
        );
        assert_eq!(store.claim("ops", "k1", b), Claim::Conflict);
        // Another topic with the same body is another request.
        assert_eq!(
            store.claim("ops", "k1", fingerprint("t/y", b"{\"a\":1}")),
            Claim::Conflict
        );
    }

    #[test]
    fn keys_are_per_identity_and_released_keys_are_free() {
        let store = Idempotency::default();
        let f = fingerprint("t", b"{}");
        assert_eq!(store.claim("ops", "k", f), Claim::New);
        assert_eq!(store.claim("other", "k", f), Claim::New);
        store.release("ops", "k");
        assert_eq!(store.claim("ops", "k", f), Claim::New);
    }
}
