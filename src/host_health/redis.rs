//! The Redis store, for cluster mode: one hash, `{cluster.key_prefix}:host-health`,
//! field = host id, value = the record, so a report stored through one
//! instance is listed by every other.
//!
//! - The host cap is cluster-wide and atomic: one Lua script checks
//!   `HEXISTS`, `HLEN` and does the `HSET` in one step, so instances racing
//!   for the last place cannot both have it, and a known host can always
//!   replace its report.
//! - A listing reads the host names (`HKEYS`, at most `max_hosts` names of
//!   at most 64 bytes), sorts them like the file store does, then fetches
//!   the records [`LIST_BATCH`] at a time with `HMGET`, each batch only
//!   when the response asks for the next piece.
//! - Every call is bounded by [`REDIS_DEADLINE`]: a Redis that is down or
//!   stalled turns into [`HostHealthError::Unavailable`] (HTTP 503 with
//!   `Retry-After`), never a hung request. The connection manager
//!   reconnects by itself on a later call.
//!
//! Redis itself is trusted (it holds every report): a record larger than
//! [`super::MAX_RECORD_BYTES`] or not JSON, which this version never writes, is
//! skipped with a warning, as the file store does.

use std::future::Future;
use std::sync::Arc;

use redis::aio::ConnectionManager;
use redis::RedisError;

use edgebus_actors::frame::DeviceId;
use edgebus_actors::telemetry::Telemetry;

use super::{validate_host, HostHealthError, HostHealthLimits, ListSlot, ListSlots, Shape, Stage};

/// Records fetched per `HMGET` while listing: at most this many reports
/// (64 KiB each at most) are held per listing, and a thousand hosts cost
/// 250 round trips.
pub const LIST_BATCH: usize = 4;

pub use crate::redis_link::REDIS_DEADLINE;

/// Stores `ARGV[2]` under field `ARGV[1]` of `KEYS[1]` unless the field is
/// new and the hash already has `ARGV[3]` fields. 1 = stored, 0 = full.
const PUT_SCRIPT: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1
    or redis.call('HLEN', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
";

/// Key under which repeated Redis failures are rate-limited in the log.
const WARN_KEY: &str = "host_health_redis";

/// What a store and its listings need to talk to Redis: the shared link
/// and the hash.
#[derive(Clone, Debug)]
struct Link {
    redis: crate::redis_link::Link,
    key: Arc<str>,
}

impl Link {
    async fn conn(&self) -> Result<ConnectionManager, HostHealthError> {
        Ok(self.redis.conn().await?)
    }

    async fn call<T>(
        &self,
        what: &'static str,
        call: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, HostHealthError> {
        Ok(self.redis.call(what, call).await?)
    }
}

/// Host-health reports in a Redis hash shared by every instance.
#[derive(Debug)]
pub struct RedisStore {
    link: Link,
    limits: HostHealthLimits,
    put: redis::Script,
    /// Listings this instance is sending.
    lists: Arc<ListSlots>,
}

impl RedisStore {
    /// Reports live in the hash `key` (`ClusterSettings::key("host-health")`).
    pub fn new(
        url: &str,
        key: String,
        limits: HostHealthLimits,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        Self {
            link: Link {
                redis: crate::redis_link::Link::new(url, telemetry, WARN_KEY),
                key: key.into(),
            },
            limits,
            put: redis::Script::new(PUT_SCRIPT),
            lists: Arc::new(ListSlots::new(limits.max_concurrent_lists)),
        }
    }

    /// Stores `record` as the latest report of `host`; refuses a new host
    /// once `max_hosts` hosts are stored, counting every instance's.
    pub async fn put(&self, host: &DeviceId, record: &[u8]) -> Result<(), HostHealthError> {
        let mut conn = self.link.conn().await?;
        let mut invocation = self.put.key(&*self.link.key);
        invocation
            .arg(host.as_str())
            .arg(record)
            .arg(self.limits.max_hosts);
        let stored: i64 = self
            .link
            .call("store a report", invocation.invoke_async(&mut conn))
            .await?;
        if stored == 1 {
            Ok(())
        } else {
            Err(HostHealthError::Full(self.limits.max_hosts))
        }
    }

    /// Starts a listing of every stored report in `shape`, sorted by host
    /// id, for `owner`. The host names are read now, so a Redis that is down
    /// is a 503 rather than a body cut short.
    pub async fn list(&self, owner: Arc<str>, shape: Shape) -> Result<Listing, HostHealthError> {
        let slot = self.lists.take(owner)?;
        let mut conn = self.link.conn().await?;
        let names: Vec<Vec<u8>> = self
            .link
            .call(
                "list the hosts",
                redis::cmd("HKEYS")
                    .arg(&*self.link.key)
                    .query_async(&mut conn),
            )
            .await?;
        let mut hosts: Vec<Box<str>> = names
            .into_iter()
            .filter_map(|name| {
                let name = String::from_utf8(name).ok()?;
                validate_host(&name).ok()?;
                Some(name.into_boxed_str())
            })
            .collect();
        hosts.sort_unstable();
        Ok(Listing {
            link: self.link.clone(),
            hosts: hosts.into_iter(),
            stage: Stage::Head,
            shape,
            _slot: slot,
        })
    }
}

/// One `GET /v1/host-health` body read from Redis: the head, then up to
/// [`LIST_BATCH`] records per piece (fetched when that piece is asked
/// for), then the tail. Dropping it frees its place among the listings.
#[derive(Debug)]
pub struct Listing {
    link: Link,
    hosts: std::vec::IntoIter<Box<str>>,
    stage: Stage,
    shape: Shape,
    _slot: ListSlot,
}

impl Listing {
    /// The next piece of the body, `None` after the last; an error when
    /// Redis fails midway (the caller ends the body there).
    pub async fn next_piece(&mut self) -> Result<Option<Vec<u8>>, HostHealthError> {
        match self.stage {
            Stage::Head => {
                self.stage = Stage::First;
                return Ok(Some(br#"{"hosts":["#.to_vec()));
            }
            Stage::Done => return Ok(None),
            Stage::First | Stage::Rest => {}
        }
        loop {
            let batch: Vec<Box<str>> = self.hosts.by_ref().take(LIST_BATCH).collect();
            if batch.is_empty() {
                self.stage = Stage::Done;
                return Ok(Some(b"]}".to_vec()));
            }
            let mut conn = self.link.conn().await?;
            let records: Vec<Option<Vec<u8>>> = self
                .link
                .call(
                    "read reports",
                    redis::cmd("HMGET")
                        .arg(&*self.link.key)
                        .arg(batch.iter().map(|h| &**h).collect::<Vec<&str>>())
                        .query_async(&mut conn),
                )
                .await?;
            let mut piece = Vec::new();
            // A host removed since the names were read is simply absent.
            for (host, record) in batch.iter().zip(records) {
                let Some(record) = record else { continue };
                let start = piece.len();
                if self.stage == Stage::Rest {
                    piece.push(b',');
                }
                if let Err(problem) = self.shape.render(&record, &mut piece) {
                    piece.truncate(start);
                    self.link.redis.telemetry().warn_limited(WARN_KEY, || {
                        format!("Skipped the host-health report of `{host}`: {problem}.")
                    });
                    continue;
                }
                self.stage = Stage::Rest;
            }
            if !piece.is_empty() {
                return Ok(Some(piece));
            }
        }
    }
}
