//! One instance at a time does what must not be done twice and cannot be
//! claimed per output: delivering the shared Slack outbox, and building
//! the periodic summary. (Alerts, presence and digests need no leader:
//! each is claimed by whichever instance asks first, see [`super::voice`].)
//!
//! The holder of a lease in Redis (`SET key NX PX`, renewed by a
//! compare-and-expire script) is the leader. An instance that cannot renew
//! steps down when its lease runs out, before another can take it over,
//! and the next one takes over within [`LEASE`] of the last renewal.
//!
//! Every acquisition takes a fencing token (`INCR {leader}:epoch`) and
//! stores `{instance}:{token}` as the lease's value; what only the leader
//! may do in Redis (delivering the shared Slack outbox) is done by scripts
//! that first compare the lease's value with the caller's, so a deposed
//! leader that has not noticed yet changes nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::Script;

use super::{ClusterConfig, ClusterHealth, REDIS_TIMEOUT};
use crate::telemetry::Telemetry;

/// How long a lease lasts without renewal.
pub const LEASE: Duration = Duration::from_secs(5);

/// How often the holder renews (and the others try to take it).
const RENEW_EVERY: Duration = Duration::from_millis(1000);

/// Extends the lease only if this instance still holds it.
const RENEW_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

/// Takes the lease if nobody holds it, with a new fencing token. KEYS:
/// lease, epoch counter. ARGV: instance id, lease ms. Returns the lease's
/// value, or nil when another instance holds it.
const ACQUIRE_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return false
end
local value = ARGV[1] .. ':' .. redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return value
"#;

/// Whether this instance holds the lease now, and the lease's value (its
/// fencing token) while it does; shared with the alerts and Slack.
#[derive(Debug, Default)]
pub struct Leadership {
    leader: AtomicBool,
    token: Mutex<Option<String>>,
}

impl Leadership {
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// The lease's value while this instance holds it: scripts that only
    /// the leader may run compare it with the lease.
    pub fn token(&self) -> Option<String> {
        if !self.is_leader() {
            return None;
        }
        self.token
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, leader: bool, token: Option<&str>, instance: &str) {
        *self.token.lock().unwrap_or_else(PoisonError::into_inner) =
            token.filter(|_| leader).map(str::to_owned);
        if self.leader.swap(leader, Ordering::Relaxed) != leader {
            if leader {
                log::info!("cluster `{instance}`: now the leader (Slack delivery, summaries).");
            } else {
                log::warn!("cluster `{instance}`: no longer the leader.");
            }
        }
    }
}

/// Runs the lease loop on `thread`.
pub fn start(
    thread: &actix::ArbiterHandle,
    config: ClusterConfig,
    leadership: Arc<Leadership>,
    health: Arc<ClusterHealth>,
    telemetry: Arc<Telemetry>,
) {
    thread.spawn(async move {
        let key = config.leader_key.clone();
        let epoch_key = format!("{key}:epoch");
        let renew = Script::new(RENEW_LUA);
        let acquire = Script::new(ACQUIRE_LUA);
        let mut conn = super::connect(&config, &telemetry, &health, REDIS_TIMEOUT).await;
        let mut held_until: Option<Instant> = None;
        let mut token: Option<String> = None;
        let mut tick = tokio::time::interval(RENEW_EVERY);
        let lease_ms = LEASE.as_millis() as u64;
        loop {
            tick.tick().await;
            let asked = Instant::now();
            let result: redis::RedisResult<Option<String>> = match (&held_until, &token) {
                (Some(_), Some(value)) => renew
                    .key(&key)
                    .arg(value)
                    .arg(lease_ms)
                    .invoke_async::<i64>(&mut conn)
                    .await
                    .map(|n| (n == 1).then(|| value.clone())),
                _ => {
                    acquire
                        .key(&key)
                        .key(&epoch_key)
                        .arg(&config.instance_id)
                        .arg(lease_ms)
                        .invoke_async::<Option<String>>(&mut conn)
                        .await
                }
            };
            match result {
                // The lease counts from when it was asked for: the holder
                // steps down no later than Redis lets it expire.
                Ok(Some(value)) => {
                    if held_until.is_some() {
                        telemetry.cluster().lease_renewals.inc();
                    }
                    held_until = Some(asked + LEASE);
                    token = Some(value);
                }
                Ok(None) => {
                    held_until = None;
                    token = None;
                }
                Err(e) => {
                    telemetry.cluster().redis_error("lease");
                    log::warn!("cluster: the leader lease could not be renewed: {e}");
                }
            }
            let leader = held_until.is_some_and(|until| Instant::now() < until);
            if !leader {
                held_until = None;
                token = None;
            }
            leadership.set(leader, token.as_deref(), &config.instance_id);
            telemetry.cluster().leader.set(i64::from(leader));
        }
    });
}
