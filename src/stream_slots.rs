//! Cluster mode: `sessions.max_streams_per_identity` counted across every
//! instance, in Redis.
//!
//! - One sorted set per identity, `{key_prefix}:streams:{sha256(name)}`;
//!   a member per open stream, `{instance_id}:{boot}-{n}`, scored with its
//!   lease's expiry (ms, on Redis's clock, so instances' clocks never
//!   matter). Taking a slot is one script: drop expired members, count,
//!   add if under the cap. Two instances racing for the last slot cannot
//!   both have it.
//! - Each instance renews the leases of its own open streams every third of
//!   [`ClusterSettings::stream_lease`], [`RENEW_BATCH`] members per script
//!   call whatever identity they belong to, so one identity's many streams
//!   cost the others nothing extra. An instance that dies stops renewing:
//!   its slots free themselves within the lease.
//! - A stream that ends removes its member at once (`ZREM`, from the same
//!   task that renews, so a renewal never puts back a member just removed).
//!   If Redis is away then, the lease frees it later.
//! - A renewal adds its members back if Redis lost them (restarted empty, or
//!   away longer than the lease): the streams are open, so they count, even
//!   if that puts an identity over its cap until some close.
//! - Every call is bounded by [`REDIS_DEADLINE`]. Redis down or stalled when
//!   a stream opens is a 503 with `Retry-After`, never a 429; streams
//!   already open are not touched.
//!
//! The per-address cap (shared identities) and the total cap stay per
//! instance: they are checked first, locally, as on one instance.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use aws_lc_rs::digest::{digest, SHA256};
use redis::aio::ConnectionManager;
use redis::RedisError;
use tokio::sync::mpsc;

use edgebus_actors::telemetry::Telemetry;

use crate::auth::{Identity, StreamPermit};
use crate::error::ApiError;
use crate::settings::ClusterSettings;

pub use crate::redis_link::REDIS_DEADLINE;

/// Members renewed per script call: bounds each call's time in Redis.
pub const RENEW_BATCH: usize = 256;

/// Releases sent in one pipeline.
const RELEASE_BATCH: usize = 1024;

/// Key under which repeated Redis failures are rate-limited in the log.
const WARN_KEY: &str = "stream_slots_redis";

/// The `op` label of `edgebus_cluster_redis_errors_total`.
const METRIC_OP: &str = "stream_slots";

/// Takes a slot: `KEYS[1]` the identity's set, `ARGV` = member, cap, lease
/// (ms). 1 = taken, 0 = full.
const TAKE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], lease)
  return 1
end
return 0
";

/// Renews leases: `ARGV[1]` = lease (ms), then per key of `KEYS` the number
/// of its members and the members. A set outlives its newest lease by
/// nothing: an abandoned identity leaves no key behind.
const RENEW_SCRIPT: &str = r"
local t = redis.call('TIME')
local lease = tonumber(ARGV[1])
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + lease
local i = 2
for k = 1, #KEYS do
  local n = tonumber(ARGV[i])
  i = i + 1
  for j = 1, n do
    redis.call('ZADD', KEYS[k], expiry, ARGV[i])
    i = i + 1
  end
  redis.call('PEXPIRE', KEYS[k], lease)
end
return 1
";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SlotError {
    #[error(
        "too many concurrent streams for {0:?} across the cluster \
         (sessions.max_streams_per_identity = {1})"
    )]
    Full(String, usize),
    #[error("the stream cap's store (Redis) is unreachable; retry shortly")]
    Unavailable,
    #[error("Redis refused the stream cap's script: {0}")]
    Redis(String),
}

impl From<crate::redis_link::StoreError> for SlotError {
    fn from(e: crate::redis_link::StoreError) -> Self {
        match e {
            crate::redis_link::StoreError::Unavailable => Self::Unavailable,
            crate::redis_link::StoreError::Redis(cause) => Self::Redis(cause),
        }
    }
}

impl From<SlotError> for ApiError {
    fn from(e: SlotError) -> Self {
        let text = e.to_string();
        match e {
            SlotError::Full(..) => ApiError::TooManyRequests(text, 1),
            SlotError::Unavailable => ApiError::UnavailableRetry(text, 1),
            SlotError::Redis(_) => ApiError::Internal(anyhow::anyhow!(text)),
        }
    }
}

/// Everything a stream holds under the caps; dropping it (the stream
/// ended) frees every slot.
pub struct StreamHold {
    _local: StreamPermit,
    _cluster: Option<ClusterSlot>,
}

impl StreamHold {
    /// Whose stream this is (see [`StreamPermit::owner`]).
    pub fn owner(&self) -> Option<&str> {
        self._local.owner()
    }

    pub fn local(permit: StreamPermit) -> Self {
        Self {
            _local: permit,
            _cluster: None,
        }
    }
}

/// The identity caps shared by every instance of a cluster.
pub struct ClusterStreamSlots {
    inner: Arc<Inner>,
}

struct Inner {
    /// Connected on first use, so an instance starts while Redis is away.
    link: crate::redis_link::Link,
    key_prefix: String,
    /// `{instance_id}:{random}-`: members of a restarted instance never
    /// collide with its former self's.
    member_prefix: String,
    next: AtomicU64,
    max: usize,
    lease_ms: u64,
    take: redis::Script,
    renew: redis::Script,
    /// This instance's open streams: set key → members.
    held: Mutex<HashMap<Arc<str>, HashSet<Arc<str>>>>,
    released: mpsc::UnboundedSender<(Arc<str>, Arc<str>)>,
}

/// One stream's member in its identity's set.
pub struct ClusterSlot {
    inner: Arc<Inner>,
    key: Arc<str>,
    member: Arc<str>,
}

impl Drop for ClusterSlot {
    fn drop(&mut self) {
        {
            let mut held = self.inner.held.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(members) = held.get_mut(&self.key) {
                members.remove(&self.member);
                if members.is_empty() {
                    held.remove(&self.key);
                }
            }
        }
        // Gone from `held` before the release is queued: the renewer
        // renews only what `held` still has, then removes what was queued.
        let _ = self
            .inner
            .released
            .send((self.key.clone(), self.member.clone()));
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ClusterStreamSlots {
    /// Caps each named identity at `max` streams across the cluster; the
    /// renewer runs on `thread` (`cluster.stream_lease`, every third).
    pub fn start(
        thread: &actix::ArbiterHandle,
        cluster: &ClusterSettings,
        max: usize,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        let lease_ms = u64::try_from(cluster.stream_lease.as_millis())
            .unwrap_or(u64::MAX)
            .max(3);
        let mut boot = [0u8; 6];
        if aws_lc_rs::rand::fill(&mut boot).is_err() {
            // Only tells incarnations apart: the clock will do.
            let now = edgebus_actors::event::now_ms().to_le_bytes();
            boot.copy_from_slice(&now[..6]);
        }
        let (released, receiver) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            link: crate::redis_link::Link::new(cluster.redis_url.expose(), telemetry, WARN_KEY)
                .counted_as(METRIC_OP),
            key_prefix: cluster.key("streams"),
            member_prefix: format!("{}:{}-", cluster.instance_id, to_hex(&boot)),
            next: AtomicU64::new(0),
            max,
            lease_ms,
            take: redis::Script::new(TAKE_SCRIPT),
            renew: redis::Script::new(RENEW_SCRIPT),
            held: Mutex::new(HashMap::new()),
            released,
        });
        let every = Duration::from_millis(lease_ms / 3);
        thread.spawn(renewer(Arc::downgrade(&inner), receiver, every));
        Self { inner }
    }

    /// The set that counts `name`'s streams.
    pub fn key_for(&self, name: &str) -> String {
        format!(
            "{}:{}",
            self.inner.key_prefix,
            to_hex(digest(&SHA256, name.as_bytes()).as_ref())
        )
    }

    /// Streams this instance holds open for `name`.
    pub fn held_for(&self, name: &str) -> usize {
        let key = self.key_for(name);
        let held = self.inner.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(key.as_str()).map_or(0, HashSet::len)
    }

    /// Takes a cluster-wide slot for a named identity (an API key, a JWT
    /// subject, or a ticket minted with either) after `local` was taken; shared identities
    /// keep only their local slot.
    pub async fn acquire(
        &self,
        identity: &Identity,
        local: StreamPermit,
    ) -> Result<StreamHold, SlotError> {
        if !identity.is_named() {
            return Ok(StreamHold::local(local));
        }
        let inner = &self.inner;
        let key: Arc<str> = self.key_for(&identity.name).into();
        let n = inner.next.fetch_add(1, Ordering::Relaxed);
        let member: Arc<str> = format!("{}{n}", inner.member_prefix).into();
        let mut conn = inner.conn().await?;
        let mut invocation = inner.take.key(&*key);
        invocation.arg(&*member).arg(inner.max).arg(inner.lease_ms);
        // Taken in Redis but this request gone before it is recorded (the
        // client left, the answer timed out): nobody renews the member, so
        // it frees itself within the lease.
        let taken: i64 = inner
            .call("take a stream slot", invocation.invoke_async(&mut conn))
            .await?;
        if taken != 1 {
            return Err(SlotError::Full(identity.name.to_string(), inner.max));
        }
        inner
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .insert(member.clone());
        Ok(StreamHold {
            _local: local,
            _cluster: Some(ClusterSlot {
                inner: self.inner.clone(),
                key,
                member,
            }),
        })
    }
}

impl Inner {
    async fn conn(&self) -> Result<ConnectionManager, SlotError> {
        Ok(self.link.conn().await?)
    }

    /// One Redis call within [`REDIS_DEADLINE`]; a failure waiting can cure
    /// is [`SlotError::Unavailable`] and a (rate-limited) WARN.
    async fn call<T>(
        &self,
        what: &'static str,
        call: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, SlotError> {
        Ok(self.link.call(what, call).await?)
    }

    /// Removes `first` and whatever else is queued, in one pipeline.
    async fn release(
        &self,
        first: (Arc<str>, Arc<str>),
        queue: &mut mpsc::UnboundedReceiver<(Arc<str>, Arc<str>)>,
    ) {
        let mut by_key: BTreeMap<Arc<str>, Vec<Arc<str>>> = BTreeMap::new();
        by_key.entry(first.0).or_default().push(first.1);
        let mut count = 1;
        while count < RELEASE_BATCH {
            let Ok((key, member)) = queue.try_recv() else {
                break;
            };
            by_key.entry(key).or_default().push(member);
            count += 1;
        }
        let mut pipe = redis::pipe();
        for (key, members) in &by_key {
            pipe.cmd("ZREM")
                .arg(&**key)
                .arg(members.iter().map(|m| &**m).collect::<Vec<&str>>())
                .ignore();
        }
        let Ok(mut conn) = self.conn().await else {
            return;
        };
        // A failure is logged by `call`; the leases free these later.
        let _ = self
            .call("free stream slots", pipe.query_async::<()>(&mut conn))
            .await;
    }

    /// Renews every lease this instance holds, [`RENEW_BATCH`] at a time,
    /// freeing queued releases between batches.
    async fn renew_all(&self, queue: &mut mpsc::UnboundedReceiver<(Arc<str>, Arc<str>)>) {
        let snapshot: Vec<(Arc<str>, Arc<str>)> = {
            let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            held.iter()
                .flat_map(|(key, members)| members.iter().map(|m| (key.clone(), m.clone())))
                .collect()
        };
        for batch in snapshot.chunks(RENEW_BATCH) {
            while let Ok(first) = queue.try_recv() {
                self.release(first, queue).await;
            }
            // Only what is still open: a stream that ended since the
            // snapshot must not be put back.
            let mut by_key: BTreeMap<Arc<str>, Vec<Arc<str>>> = BTreeMap::new();
            {
                let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
                for (key, member) in batch {
                    if held.get(key).is_some_and(|m| m.contains(member)) {
                        by_key.entry(key.clone()).or_default().push(member.clone());
                    }
                }
            }
            if by_key.is_empty() {
                continue;
            }
            let mut invocation = self.renew.prepare_invoke();
            invocation.arg(self.lease_ms);
            for (key, members) in &by_key {
                invocation.key(&**key).arg(members.len());
                for member in members {
                    invocation.arg(&**member);
                }
            }
            let Ok(mut conn) = self.conn().await else {
                return;
            };
            let renewed: Result<i64, _> = self
                .call("renew stream slots", invocation.invoke_async(&mut conn))
                .await;
            if renewed.is_err() {
                // Redis is away: the next round tries again, not the next batch.
                return;
            }
        }
    }
}

/// Renews every `every` and frees ended streams' slots as they end, until
/// the slots are dropped.
async fn renewer(
    inner: Weak<Inner>,
    mut queue: mpsc::UnboundedReceiver<(Arc<str>, Arc<str>)>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            released = queue.recv() => {
                let (Some(first), Some(inner)) = (released, inner.upgrade()) else {
                    return;
                };
                inner.release(first, &mut queue).await;
            }
            _ = tick.tick() => {
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                inner.renew_all(&mut queue).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;
    use actix_web::http::{header, StatusCode};
    use actix_web::ResponseError;

    #[test]
    fn a_full_cluster_is_429_and_an_absent_redis_503_both_with_retry_after() {
        for (error, status) in [
            (
                SlotError::Full("ops".into(), 2),
                StatusCode::TOO_MANY_REQUESTS,
            ),
            (SlotError::Unavailable, StatusCode::SERVICE_UNAVAILABLE),
        ] {
            let response = ApiError::from(error).error_response();
            assert_eq!(response.status(), status);
            assert!(response.headers().contains_key(header::RETRY_AFTER));
        }
    }

    #[test]
    fn the_lease_is_thirty_seconds_unless_set_within_bounds() {
        let cluster = |extra: &str| {
            Settings::from_toml(&format!(
                "[mqtt]\nmode = \"external\"\nurl = \"mqtt://127.0.0.1:1883\"\n\
                 [cluster]\nredis_url = \"redis://127.0.0.1:6379\"\n{extra}"
            ))
        };
        let default = cluster("").unwrap().cluster.unwrap();
        assert_eq!(default.stream_lease, Duration::from_secs(30));
        let short = cluster("stream_lease_seconds = 1")
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(short.stream_lease, Duration::from_secs(1));
        for wrong in ["stream_lease_seconds = 0", "stream_lease_seconds = 3601"] {
            let error = cluster(wrong).expect_err(wrong).to_string();
            assert!(error.contains("cluster.stream_lease_seconds"), "{error}");
        }
    }
}
