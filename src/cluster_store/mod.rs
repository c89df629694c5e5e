//! State that must be one across the instances of a cluster, kept in Redis:
//! stream tickets ([`tickets`]) and `Idempotency-Key`s ([`idempotency`]).
//! Without cluster mode both live in the process (`crate::auth::Tickets`,
//! `crate::http::idempotency::Idempotency`) and nothing here is used.
//!
//! Every call is bounded by [`REDIS_DEADLINE`], as host-health's are: a
//! Redis that is down or stalled becomes [`StoreError::Unavailable`] (HTTP
//! 503 with `Retry-After`), never a wrong answer such as a 401 for a valid
//! ticket or a second publish for a kept key. Time comes from Redis
//! (`TIME` inside each script), so instances with skewed clocks agree on
//! what has expired.

pub mod idempotency;
pub mod tickets;

use std::future::Future;
use std::sync::Arc;

use aws_lc_rs::digest::{digest, SHA256};
use redis::aio::ConnectionManager;
use redis::{RedisError, RetryMethod};

use edgebus_actors::telemetry::Telemetry;

pub use crate::host_health::redis::REDIS_DEADLINE;

/// Seconds a client is told to wait when Redis is away.
pub const RETRY_AFTER_SECS: u64 = 2;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// Redis did not answer in time or refused for now; the cause is logged
    /// where it happened.
    #[error("the cluster store (Redis) is unavailable; retry in {RETRY_AFTER_SECS} seconds")]
    Unavailable,
    /// Redis answered with an error waiting will not cure (a wrong type at
    /// the key, a script error).
    #[error("Redis: {0}")]
    Redis(String),
}

/// A lazily connected Redis and where its failures are logged.
#[derive(Clone)]
pub struct Link {
    /// Connected on first use, so an instance starts while Redis is away
    /// and a request then is a 503 like any other.
    conn: Arc<tokio::sync::OnceCell<ConnectionManager>>,
    url: Arc<str>,
    telemetry: Arc<Telemetry>,
    /// Names the store in the (rate-limited) WARN lines.
    what: &'static str,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("what", &self.what).finish()
    }
}

impl Link {
    pub fn new(url: &str, telemetry: Arc<Telemetry>, what: &'static str) -> Self {
        Self {
            conn: Arc::new(tokio::sync::OnceCell::new()),
            url: url.into(),
            telemetry,
            what,
        }
    }

    async fn conn(&self) -> Result<ConnectionManager, StoreError> {
        let url = self.url.clone();
        self.call("connect", async {
            self.conn
                .get_or_try_init(|| crate::host_health::redis::connect(&url))
                .await
                .cloned()
        })
        .await
    }

    /// Runs `script` within [`REDIS_DEADLINE`], connecting first if needed.
    pub async fn run<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn().await?;
        self.call(what, invocation.invoke_async(&mut conn)).await
    }

    async fn call<T>(
        &self,
        what: &'static str,
        call: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        let cause = match tokio::time::timeout(REDIS_DEADLINE, call).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) if !waiting_helps(&e) => {
                self.telemetry.warn_limited(self.what, || {
                    format!("{}: Redis refused to {what}: {e}.", self.what)
                });
                return Err(StoreError::Redis(e.to_string()));
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {REDIS_DEADLINE:?}"),
        };
        self.telemetry.warn_limited(self.what, || {
            format!(
                "{}: Redis failed to {what} (answered 503): {cause}.",
                self.what
            )
        });
        Err(StoreError::Unavailable)
    }
}

/// Redis is down, unreachable, loading, out of memory or refusing writes.
fn waiting_helps(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || !matches!(e.retry_method(), RetryMethod::NoRetry)
        || matches!(e.code(), Some("OOM" | "MISCONF" | "LOADING"))
}

/// Lower-case hex of the SHA-256 of `data`: how secrets and caller names
/// appear in key names (fixed length, nothing of the secret revealed).
pub fn sha256_hex(data: &[u8]) -> String {
    digest(&SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Milliseconds on Redis's clock, for the scripts below.
const NOW_MS_LUA: &str = "local t = redis.call('TIME')\n\
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n";
