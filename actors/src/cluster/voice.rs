//! One voice for the cluster without waiting for a leader: every instance
//! reads the same stream in the same order, so every instance's alert
//! engine reaches the same alerts, presence changes and digests. Each
//! output carries a key that names it the same on every instance (the
//! rule, the device and the stream time of the event that decided it, say);
//! to publish, an instance claims the key in Redis (`SET said:{key} NX`)
//! and, in the same script, appends the event to the stream and queues
//! the Slack message in the shared outbox. The first instance to ask
//! publishes; the others find the claim taken and say nothing. So nothing
//! waits for a lease: an output decided while no instance holds it (at
//! start, or after the leader died) is published once all the same.
//!
//! A claim can also carry a [`Guard`] for what an instance that started
//! late does not know: a cooldown mark (`cool:{…}`, expiring with the
//! cooldown) so it does not repeat an alert another instance sent, and the
//! cluster's view of each device's presence (the hash `presence`) so it
//! does not announce `device.online` for devices that were online before
//! it started.
//!
//! One task per instance: claims queue on a bounded channel and go to
//! Redis in batches, one script per round trip, retried with back-off
//! while Redis fails (a retried claim that had been taken finds its own
//! mark and publishes nothing twice).

use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use tokio::sync::mpsc;

use super::entry::EntryFields;
use super::{ClusterConfig, ClusterHealth, REDIS_TIMEOUT};
use crate::event::Draft;
use crate::notice::{Notice, NoticeKind};
use crate::telemetry::Telemetry;

/// Claims that may wait for Redis; beyond it new ones are dropped and
/// counted (`edgebus_events_dropped_total{reason="overload"}`).
pub const VOICE_QUEUE: usize = 16_384;

/// Most claims per round trip.
const MAX_CLAIMS: usize = 256;

/// How long a claim mark lives: far longer than any instance lags behind
/// the stream, so a late instance still finds it.
pub const SAID_TTL: Duration = Duration::from_secs(24 * 3600);

/// Claims a batch. KEYS: stream, alert outbox, digest outbox, presence
/// hash. ARGV: key prefix, stream max length, claim TTL ms, alert outbox
/// capacity, digest outbox capacity, claim count, then per claim: key,
/// guard ("", "cool", "online", "offline"), guard argument, guard TTL ms,
/// topic ("" = no event), ts, payload, name, outbox ("", "a", "d"),
/// outbox entry. Returns per claim 0 (another instance published it), 1
/// (published), 2 (published, and the oldest message of its outbox was
/// dropped to make room).
const CLAIM_LUA: &str = r#"
local stream, alerts, digests, presence = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local prefix, max_len, said_ms = ARGV[1], ARGV[2], ARGV[3]
local cap_alerts, cap_digests = tonumber(ARGV[4]), tonumber(ARGV[5])
local n = tonumber(ARGV[6])
local out = {}
local touched = false
local i = 7
for c = 1, n do
  local key, guard, garg, gttl = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local topic, ts, payload, name = ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], ARGV[i + 7]
  local list, entry = ARGV[i + 8], ARGV[i + 9]
  i = i + 10
  local won = redis.call('SET', prefix .. ':said:' .. key, '1', 'NX', 'PX', said_ms)
  if won and guard == 'cool' then
    won = redis.call('SET', prefix .. ':cool:' .. garg, '1', 'NX', 'PX', gttl)
  elseif won and (guard == 'online' or guard == 'offline') then
    if redis.call('HGET', presence, garg) == guard then
      won = false
    else
      redis.call('HSET', presence, garg, guard)
      touched = true
    end
  end
  local r = 0
  if won then
    r = 1
    if topic ~= '' then
      if name == '' then
        redis.call('XADD', stream, 'MAXLEN', '~', max_len, '*', 't', topic, 'ts', ts, 'p', payload)
      else
        redis.call('XADD', stream, 'MAXLEN', '~', max_len, '*', 't', topic, 'ts', ts, 'p', payload, 'n', name)
      end
    end
    if list ~= '' then
      local box, cap = alerts, cap_alerts
      if list == 'd' then
        box, cap = digests, cap_digests
      end
      if redis.call('RPUSH', box, entry) > cap then
        redis.call('LPOP', box)
        r = 2
      end
    end
  end
  out[c] = r
end
if touched then
  redis.call('PEXPIRE', presence, said_ms)
end
return out
"#;

/// What a late instance may not know, checked in the claim's script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    None,
    /// Published only if `cool:{key}` is free; it is then taken for `ttl`.
    Cooldown {
        key: String,
        ttl: Duration,
    },
    /// Published only if the cluster does not hold the device online already.
    Online(String),
    /// Published only if the cluster does not hold the device offline already.
    Offline(String),
}

/// One output to publish once per cluster.
#[derive(Debug)]
pub struct Claim {
    /// Names the output the same on every instance.
    pub key: String,
    pub guard: Guard,
    /// The event to append to the stream, if any.
    pub draft: Option<Draft>,
    /// The Slack message to queue, if any (alerts and digests; Slack on).
    pub notice: Option<Notice>,
}

/// The Redis keys of the shared Slack outbox.
#[derive(Debug, Clone)]
pub struct OutboxKeys {
    pub alerts: String,
    pub digests: String,
    /// The newest summary (a string: a newer one replaces it).
    pub summary: String,
    /// Nothing is sent while it exists (pacing, back-off, `Retry-After`):
    /// its expiry on Redis's clock is the time every deliverer honours.
    pub hold: String,
}

impl OutboxKeys {
    pub fn new(config: &ClusterConfig) -> Self {
        Self {
            alerts: config.key("slack:alerts"),
            digests: config.key("slack:digests"),
            summary: config.key("slack:summary"),
            hold: config.key("slack:hold"),
        }
    }
}

/// How many messages of each budget the shared outbox keeps
/// (`slack.outbox_capacity`, `slack.digest_outbox_capacity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxBounds {
    pub alerts: usize,
    pub digests: usize,
}

/// One message in the shared outbox: its claim key makes every entry
/// distinct, so the deliverer removes exactly the message it sent. Texts
/// come cut to their kind's budget (the Slack outbox's rule).
pub fn outbox_entry(key: &str, notice: &Notice) -> String {
    serde_json::json!({ "k": key, "t": notice.text }).to_string()
}

/// The text of an outbox entry (`None`: not one of ours).
pub fn entry_text(entry: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(entry).ok()?;
    value.get("t")?.as_str().map(str::to_owned)
}

/// Cloneable handle on the claiming task.
#[derive(Clone)]
pub struct Voice {
    tx: mpsc::Sender<Claim>,
}

impl Voice {
    /// Starts the task on `thread`. `slack`: the outbox bounds, `None` when
    /// Slack is off (notices are then not queued).
    pub fn start(
        thread: &actix::ArbiterHandle,
        config: ClusterConfig,
        slack: Option<OutboxBounds>,
        health: Arc<ClusterHealth>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(VOICE_QUEUE);
        thread.spawn(run(rx, config, slack, health, telemetry));
        Self { tx }
    }

    /// Queues `claim`; false when the queue is full (Redis has been away a
    /// while) or the task stopped.
    pub fn claim(&self, claim: Claim) -> bool {
        self.tx.try_send(claim).is_ok()
    }
}

async fn run(
    mut rx: mpsc::Receiver<Claim>,
    config: ClusterConfig,
    slack: Option<OutboxBounds>,
    health: Arc<ClusterHealth>,
    telemetry: Arc<Telemetry>,
) {
    let script = Script::new(CLAIM_LUA);
    let keys = OutboxKeys::new(&config);
    let presence_key = config.key("presence");
    let (cap_alerts, cap_digests) = slack.map_or((1, 1), |l| (l.alerts.max(1), l.digests.max(1)));
    let mut conn = super::connect(&config, &telemetry, &health, REDIS_TIMEOUT).await;
    let mut batch: Vec<Claim> = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_CLAIMS {
            let Ok(next) = rx.try_recv() else {
                break;
            };
            batch.push(next);
        }
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&config.stream_key)
            .key(&keys.alerts)
            .key(&keys.digests)
            .key(&presence_key)
            .arg(&config.key_prefix)
            .arg(config.stream_max_len)
            .arg(SAID_TTL.as_millis() as u64)
            .arg(cap_alerts)
            .arg(cap_digests)
            .arg(batch.len());
        for claim in &batch {
            let (guard, garg, gttl) = match &claim.guard {
                Guard::None => ("", "", 0),
                Guard::Cooldown { key, ttl } => ("cool", key.as_str(), ttl.as_millis() as u64),
                Guard::Online(device) => ("online", device.as_str(), 0),
                Guard::Offline(device) => ("offline", device.as_str(), 0),
            };
            invocation
                .arg(&claim.key)
                .arg(guard)
                .arg(garg)
                .arg(gttl.max(1));
            match &claim.draft {
                Some(draft) => {
                    let fields = EntryFields::of(draft);
                    invocation
                        .arg(fields.topic)
                        .arg(fields.ts)
                        .arg(fields.payload)
                        .arg(fields.name.unwrap_or(""));
                }
                None => {
                    invocation.arg("").arg("").arg("").arg("");
                }
            }
            match claim.notice.as_ref().filter(|_| slack.is_some()) {
                Some(notice) => {
                    let list = if notice.kind == NoticeKind::Digest {
                        "d"
                    } else {
                        "a"
                    };
                    invocation.arg(list).arg(outbox_entry(&claim.key, notice));
                }
                None => {
                    invocation.arg("").arg("");
                }
            }
        }
        let mut delay = Duration::from_millis(50);
        let outcome: Vec<i64> = loop {
            match invocation.invoke_async::<Vec<i64>>(&mut conn).await {
                Ok(outcome) => {
                    health.redis_answered();
                    break outcome;
                }
                Err(e) => {
                    telemetry.cluster().redis_error("claim");
                    telemetry.warn_limited("cluster_claim", || {
                        format!("cluster: alerts cannot be published (Redis: {e}); retrying.")
                    });
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        };
        for (claim, won) in batch.iter().zip(outcome) {
            telemetry.cluster().claimed(won > 0);
            if won == 2 {
                if let Some(notice) = &claim.notice {
                    telemetry.slack_dropped(notice.kind, "outbox_full");
                }
            }
        }
        batch.clear();
    }
}
