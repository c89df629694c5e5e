//! `Idempotency-Key`s shared by every instance: the same key and body sent
//! to two instances publishes once, whichever instance it reaches.
//!
//! - A key is `{prefix}:idem:{hex slot}` (the slot is the SHA-256 of the
//!   owner and the key, as in process), holding either a pending marker
//!   (`p`, the request's fingerprint and the claimer's random token) with a
//!   short TTL ([`PENDING_TTL`]: an instance that dies mid-publish frees the
//!   key by itself), or the publish's answer (`d`, the fingerprint and the
//!   event id) for 24 h.
//! - One script claims: an existing key answers already-present (with the
//!   stored id), conflict (another fingerprint) or in flight (a pending
//!   marker); a new one is checked against the per-owner and total caps and
//!   gets the pending marker, all in one step, so of two instances claiming
//!   one key at the same moment exactly one publishes.
//! - The caps count kept and pending keys in sorted sets (member: slot,
//!   score: when it expires, on Redis's clock): `{prefix}:idem-of:{sha256
//!   hex of the owner}` and `{prefix}:idem`. As in process, a full owner or
//!   store refuses new keys and evicts nothing.
//! - Recording replaces only this claimer's own marker (or a marker that
//!   expired meanwhile, so the answer is still kept); releasing (the
//!   publish failed) deletes only its own marker.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};

use super::{sha256_hex, Link, StoreError, NOW_MS_LUA};
use crate::http::idempotency::{slot, Claim, Digest, IdempotencyError, KEEP_FOR};
use crate::settings::{ClusterSettings, HttpSettings};

/// How long a claim holds a key without an answer: above the longest a
/// publish takes (5 s for the stream, then one bounded Redis call to
/// record), short enough that a retry after an instance died mid-publish
/// soon succeeds.
pub const PENDING_TTL: Duration = Duration::from_secs(15);

/// How long an answer Redis failed to take is retried, and how often. A
/// retry of the request meanwhile is told `in_flight` while the marker
/// lives; after that (Redis away for longer than [`PENDING_TTL`]) a retry
/// may publish again: the one gap in the promise, documented.
pub const RECORD_RETRY_FOR: Duration = Duration::from_secs(60);
const RECORD_RETRY_EVERY: Duration = Duration::from_millis(500);

/// KEYS: entry, owner's set, all keys. ARGV: fingerprint, pending marker,
/// pending ttl ms, per-owner cap, total cap, slot, keep ms.
const CLAIM_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
if v then
  if string.sub(v, 2, 65) ~= ARGV[1] then return {'conflict'} end
  if string.sub(v, 1, 1) == 'p' then return {'in_flight'} end
  return {'done', string.sub(v, 66)}
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
-- A member whose key is gone (it expired a moment early) holds no place.
redis.call('ZREM', KEYS[2], ARGV[6])
redis.call('ZREM', KEYS[3], ARGV[6])
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return {'identity_full'} end
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[5]) then return {'store_full'} end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
local expires = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], expires, ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[7])
redis.call('ZADD', KEYS[3], expires, ARGV[6])
redis.call('PEXPIRE', KEYS[3], ARGV[7])
return {'new'}
";

/// KEYS: entry, owner's set, all keys. ARGV: this claim's marker, the
/// answer, keep ms, slot. 1 = kept, 0 = another claim holds the key.
const RECORD_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
local expires = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], expires, ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], expires, ARGV[4])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return 1
";

/// KEYS: entry, owner's set, all keys. ARGV: this claim's marker, slot.
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
return 1
";

/// Idempotency keys in Redis, for cluster mode.
#[derive(Debug)]
pub struct SharedIdempotency {
    link: Link,
    per_identity: usize,
    max: usize,
    entry_prefix: String,
    owner_prefix: String,
    all_key: String,
    claim: redis::Script,
    record: redis::Script,
    release: redis::Script,
    rng: SystemRandom,
}

/// A claimed key whose publish is under way; see [`SharedPending::record`].
/// Dropped unrecorded, it releases the key in the background (and the
/// marker's TTL frees it if that fails).
#[derive(Debug)]
pub struct SharedPending {
    store: Arc<SharedIdempotency>,
    keys: [String; 3],
    slot: String,
    fingerprint: String,
    marker: String,
    recorded: bool,
}

impl SharedIdempotency {
    pub fn new(cluster: &ClusterSettings, http: &HttpSettings, link: Link) -> Self {
        Self {
            link,
            per_identity: http.idempotency_keys_per_identity,
            max: http.idempotency_max_keys,
            entry_prefix: cluster.key("idem:"),
            owner_prefix: cluster.key("idem-of:"),
            all_key: cluster.key("idem"),
            claim: redis::Script::new(&format!("{NOW_MS_LUA}{CLAIM_SCRIPT}")),
            record: redis::Script::new(&format!("{NOW_MS_LUA}{RECORD_SCRIPT}")),
            release: redis::Script::new(RELEASE_SCRIPT),
            rng: SystemRandom::new(),
        }
    }

    /// Checks and claims `key` for `identity` in one step, cluster-wide.
    pub async fn claim(
        self: &Arc<Self>,
        identity: &Arc<str>,
        key: &str,
        fingerprint: Digest,
    ) -> Result<Claim<SharedPending>, IdempotencyError> {
        let slot = hex(&slot(identity, key));
        let fingerprint = hex(&fingerprint);
        let mut token = [0u8; 16];
        self.rng
            .fill(&mut token)
            .map_err(|_| IdempotencyError::Random)?;
        let marker = format!("p{fingerprint}{}", hex(&token));
        let keys = [
            format!("{}{slot}", self.entry_prefix),
            format!("{}{}", self.owner_prefix, sha256_hex(identity.as_bytes())),
            self.all_key.clone(),
        ];
        let mut invocation = self.claim.prepare_invoke();
        for k in &keys {
            invocation.key(k);
        }
        invocation
            .arg(&fingerprint)
            .arg(&marker)
            .arg(millis(PENDING_TTL))
            .arg(self.per_identity)
            .arg(self.max)
            .arg(&slot)
            .arg(millis(KEEP_FOR));
        let answer: Vec<String> = self
            .link
            .run("claim an Idempotency-Key", &invocation)
            .await?;
        match answer.first().map(String::as_str) {
            Some("new") => Ok(Claim::New(SharedPending {
                store: self.clone(),
                keys,
                slot,
                fingerprint,
                marker,
                recorded: false,
            })),
            Some("done") => Ok(Claim::AlreadyPresent(
                answer.get(1).filter(|id| !id.is_empty()).cloned(),
            )),
            Some("conflict") => Ok(Claim::Conflict),
            Some("in_flight") => Ok(Claim::InFlight),
            Some("identity_full") => Err(IdempotencyError::IdentityFull(
                identity.to_string(),
                self.per_identity,
            )),
            Some("store_full") => Err(IdempotencyError::StoreFull(self.max)),
            other => Err(IdempotencyError::Store(StoreError::Redis(format!(
                "unexpected claim answer {other:?}"
            )))),
        }
    }
}

impl SharedPending {
    /// The publish succeeded with this id: keep the answer for 24 h, on
    /// every instance. If Redis fails to take it, it is retried in the
    /// background for [`RECORD_RETRY_FOR`] (the script replaces only this
    /// claim's marker, or none, so a late retry never overwrites another
    /// claim's answer); the error is returned at once all the same.
    pub async fn record(mut self, id: Option<String>) -> Result<(), StoreError> {
        self.recorded = true;
        let answer = Answer {
            store: self.store.clone(),
            keys: std::mem::take(&mut self.keys),
            slot: std::mem::take(&mut self.slot),
            marker: std::mem::take(&mut self.marker),
            value: format!("d{}{}", self.fingerprint, id.unwrap_or_default()),
        };
        match answer.store_once().await {
            Err(StoreError::Unavailable) => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(answer.store_until(Instant::now() + RECORD_RETRY_FOR));
                }
                Err(StoreError::Unavailable)
            }
            other => other,
        }
    }

    async fn release(
        store: Arc<SharedIdempotency>,
        keys: [String; 3],
        marker: String,
        slot: String,
    ) {
        let mut invocation = store.release.prepare_invoke();
        for k in &keys {
            invocation.key(k);
        }
        invocation.arg(&marker).arg(&slot);
        // A failure is logged by the link; the marker expires by itself.
        let _: Result<i64, _> = store
            .link
            .run("release an Idempotency-Key", &invocation)
            .await;
    }
}

/// A publish's answer on its way to Redis.
struct Answer {
    store: Arc<SharedIdempotency>,
    keys: [String; 3],
    slot: String,
    marker: String,
    value: String,
}

impl Answer {
    async fn store_once(&self) -> Result<(), StoreError> {
        let mut invocation = self.store.record.prepare_invoke();
        for k in &self.keys {
            invocation.key(k);
        }
        invocation
            .arg(&self.marker)
            .arg(&self.value)
            .arg(millis(KEEP_FOR))
            .arg(&self.slot);
        let kept: i64 = self
            .store
            .link
            .run("record an Idempotency-Key", &invocation)
            .await?;
        if kept == 0 {
            // The marker outlived PENDING_TTL and another request claimed
            // the key: that one publishes (again) and records its answer.
            log::warn!(
                "An Idempotency-Key's publish outlasted {PENDING_TTL:?}; another request \
                 claimed the key meanwhile."
            );
        }
        Ok(())
    }

    async fn store_until(self, deadline: Instant) {
        while Instant::now() < deadline {
            tokio::time::sleep(RECORD_RETRY_EVERY).await;
            if !matches!(self.store_once().await, Err(StoreError::Unavailable)) {
                return;
            }
        }
    }
}

impl Drop for SharedPending {
    fn drop(&mut self) {
        if self.recorded {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(Self::release(
            self.store.clone(),
            std::mem::take(&mut self.keys),
            std::mem::take(&mut self.marker),
            std::mem::take(&mut self.slot),
        ));
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Length of a fingerprint in hex, as stored after the one-letter state.
    const FP_HEX: usize = 64;

    #[test]
    fn a_marker_and_an_answer_share_the_fingerprint_offsets_the_script_reads() {
        let fp = hex(&[7u8; 32]);
        assert_eq!(fp.len(), FP_HEX);
        let marker = format!("p{fp}{}", hex(&[1u8; 16]));
        let answer = format!("d{fp}1764423000000-0");
        // Lua's string.sub(v, 2, 65) and string.sub(v, 66).
        assert_eq!(&marker[1..=FP_HEX], fp);
        assert_eq!(&answer[1..=FP_HEX], fp);
        assert_eq!(&answer[FP_HEX + 1..], "1764423000000-0");
    }
}
