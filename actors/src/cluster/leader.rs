//! One instance at a time speaks for the cluster where every instance
//! would otherwise say the same thing: alert and presence events and Slack.
//!
//! Every instance reads the same stream in the same order, so every
//! instance's alert engine reaches the same decisions; only the holder of
//! a lease in Redis (`SET key id NX PX`, renewed by a compare-and-expire
//! script) publishes them. An instance that cannot renew steps down when
//! its lease runs out, before another can take it over, and the next one
//! takes over within [`LEASE`] of the last renewal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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

/// Whether this instance holds the lease now; shared with the alerts.
#[derive(Debug, Default)]
pub struct Leadership {
    leader: AtomicBool,
}

impl Leadership {
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    fn set(&self, leader: bool, instance: &str) {
        if self.leader.swap(leader, Ordering::Relaxed) != leader {
            if leader {
                log::info!("cluster `{instance}`: now the leader (alerts, presence and Slack).");
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
        let renew = Script::new(RENEW_LUA);
        let mut conn = super::connect(&config, &telemetry, &health, REDIS_TIMEOUT).await;
        let mut held_until: Option<Instant> = None;
        let mut tick = tokio::time::interval(RENEW_EVERY);
        let lease_ms = LEASE.as_millis() as u64;
        loop {
            tick.tick().await;
            let asked = Instant::now();
            let result: redis::RedisResult<bool> = if held_until.is_some() {
                renew
                    .key(&key)
                    .arg(&config.instance_id)
                    .arg(lease_ms)
                    .invoke_async::<i64>(&mut conn)
                    .await
                    .map(|n| n == 1)
            } else {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&config.instance_id)
                    .arg("NX")
                    .arg("PX")
                    .arg(lease_ms)
                    .query_async::<Option<String>>(&mut conn)
                    .await
                    .map(|ok| ok.is_some())
            };
            match result {
                // The lease counts from when it was asked for: the holder
                // steps down no later than Redis lets it expire.
                Ok(true) => held_until = Some(asked + LEASE),
                Ok(false) => held_until = None,
                Err(e) => {
                    telemetry.cluster().redis_error("lease");
                    log::warn!("cluster: the leader lease could not be renewed: {e}");
                }
            }
            let leader = held_until.is_some_and(|until| Instant::now() < until);
            if !leader {
                held_until = None;
            }
            leadership.set(leader, &config.instance_id);
            telemetry.cluster().leader.set(i64::from(leader));
        }
    });
}
