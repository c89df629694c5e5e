//! One lazily connected, deadline-bounded Redis connection, as every
//! cluster-mode store in the service shell uses it (host-health reports,
//! tickets and idempotency keys, stream slots).
//!
//! - Connected on first use, so an instance starts (not ready) while Redis
//!   is away, and a request then is a 503 like any other.
//! - Every call, connecting included, is bounded by [`REDIS_DEADLINE`]: a
//!   Redis that is down or stalled becomes [`StoreError::Unavailable`]
//!   (HTTP 503 with `Retry-After`), never a hung request or a wrong answer.
//!   The connection manager reconnects by itself on a later call.
//! - Failures are logged rate-limited under the store's name, and counted
//!   in `edgebus_cluster_redis_errors_total{op}` when the store names an op.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, RetryMethod};

use edgebus_actors::telemetry::Telemetry;

/// Longest a request waits for Redis, reconnecting included, before it
/// answers 503: short enough that a dead Redis never holds a client, long
/// enough for a loaded one to answer.
pub const REDIS_DEADLINE: Duration = Duration::from_secs(3);

/// Seconds a client is told to wait when Redis is away.
pub const RETRY_AFTER_SECS: u64 = 2;

/// Connect attempts get this long each; a reply this long (the manager's
/// own timeouts, within [`REDIS_DEADLINE`]).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

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

/// A connection manager for `url` (`TCP_NODELAY`) that reconnects by itself
/// and gives up on a reply after [`RESPONSE_TIMEOUT`].
pub async fn connect(url: &str) -> Result<ConnectionManager, RedisError> {
    let client = edgebus_actors::cluster::redis_client(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        // Few, quick retries: a request waits at most REDIS_DEADLINE anyway,
        // and the next request starts a fresh reconnect.
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(100))
        .set_max_delay(Duration::from_millis(500));
    client.get_connection_manager_with_config(config).await
}

/// A lazily connected Redis and where its failures are logged.
#[derive(Clone)]
pub struct Link {
    conn: Arc<tokio::sync::OnceCell<ConnectionManager>>,
    url: Arc<str>,
    telemetry: Arc<Telemetry>,
    /// Names the store in the (rate-limited) WARN lines.
    what: &'static str,
    /// The `op` label its failures are counted under, if any.
    op: Option<&'static str>,
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
            op: None,
        }
    }

    /// Counts failures in `edgebus_cluster_redis_errors_total{op}` too.
    pub fn counted_as(mut self, op: &'static str) -> Self {
        self.op = Some(op);
        self
    }

    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// The connection manager, connecting first if needed.
    pub async fn conn(&self) -> Result<ConnectionManager, StoreError> {
        self.call("connect", async {
            self.conn
                .get_or_try_init(|| connect(&self.url))
                .await
                .cloned()
        })
        .await
    }

    /// Runs a script within [`REDIS_DEADLINE`], connecting first if needed.
    pub async fn run<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn().await?;
        self.call(what, invocation.invoke_async(&mut conn)).await
    }

    /// One Redis call within [`REDIS_DEADLINE`]; `what` names it in the log.
    pub async fn call<T>(
        &self,
        what: &'static str,
        call: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        let outcome = tokio::time::timeout(REDIS_DEADLINE, call).await;
        if let Ok(Ok(value)) = outcome {
            return Ok(value);
        }
        if let Some(op) = self.op {
            self.telemetry.cluster().redis_error(op);
        }
        let cause = match outcome {
            Ok(Err(e)) if !waiting_helps(&e) => {
                self.telemetry.warn_limited(self.what, || {
                    format!("{}: Redis refused to {what}: {e}.", self.what)
                });
                return Err(StoreError::Redis(e.to_string()));
            }
            Ok(Err(e)) => e.to_string(),
            _ => format!("no answer within {REDIS_DEADLINE:?}"),
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

/// Redis is down, unreachable, loading, out of memory or refusing writes:
/// conditions that pass (or that an operator fixes) without the client
/// changing its request.
fn waiting_helps(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || !matches!(e.retry_method(), RetryMethod::NoRetry)
        || matches!(e.code(), Some("OOM" | "MISCONF" | "LOADING"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_redis_is_worth_waiting_for_and_a_wrong_type_is_not() {
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(waiting_helps(&refused));
        let wrong_type = RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "WRONGTYPE Operation against a key holding the wrong kind of value",
        ));
        assert!(!waiting_helps(&wrong_type));
    }
}
