//! Cluster mode: the outbox lives in Redis, so a message outlives the
//! instance that queued it, and pacing, back-off waits and `Retry-After`
//! hold for every instance.
//!
//! Whichever instance wins an alert's claim queues its message
//! ([`crate::cluster::voice`]); only the holder of the leader lease
//! delivers, one message at a time: it reads the first message (alerts,
//! then digests, then the newest summary), posts it, and only after Slack
//! accepted it (2xx, or a permanent refusal) removes exactly that message.
//! Both steps are scripts that first compare the lease's value with this
//! instance's fencing token, so an instance that lost the lease without
//! noticing neither sends nor removes anything. An instance killed between
//! the post and the removal leaves the message first in line: the next
//! deliverer sends it again (at least once, as a timed-out request is).
//!
//! The time before which nothing may be sent is a key that expires then
//! (`slack:hold`, on Redis's clock): pacing after every answer, the
//! back-off after a failure, Slack's `Retry-After`; a new deliverer honours
//! what the old one was told.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use redis::aio::ConnectionManager;
use redis::{Script, Value};

use super::{Reply, Slack};
use crate::cluster::voice::{entry_text, outbox_entry, OutboxKeys};
use crate::cluster::{ClusterConfig, ClusterHealth, Leadership, REDIS_TIMEOUT};
use crate::event::now_ms;
use crate::notice::{Notice, NoticeKind};

/// How often the deliverer looks at an empty outbox, and how often a
/// non-leader asks whether it leads now.
pub const POLL: Duration = Duration::from_millis(250);

/// Fenced read of the next message. KEYS: lease, alerts, digests, summary,
/// hold. ARGV: the caller's lease value. Returns {-1} when the caller does
/// not hold the lease; {ms, depth} while held back; {0, depth} when empty;
/// {0, depth, which, entry} otherwise.
const FETCH_LUA: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {-1}
end
local depth = redis.call('LLEN', KEYS[2]) + redis.call('LLEN', KEYS[3]) + redis.call('EXISTS', KEYS[4])
local hold = redis.call('PTTL', KEYS[5])
if hold > 0 then
  return {hold, depth}
end
local e = redis.call('LINDEX', KEYS[2], 0)
if e then
  return {0, depth, 'a', e}
end
e = redis.call('LINDEX', KEYS[3], 0)
if e then
  return {0, depth, 'd', e}
end
e = redis.call('GET', KEYS[4])
if e then
  return {0, depth, 's', e}
end
return {0, depth}
"#;

/// Fenced end of one attempt. KEYS: lease, the message's list (or the
/// summary key), hold. ARGV: lease value, which ("" = keep the message,
/// "s" = the summary, else a list), entry, hold ms. Removes the message
/// only if it is still first in line (a full outbox may have dropped it).
const SETTLE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
if ARGV[2] == 's' then
  if redis.call('GET', KEYS[2]) == ARGV[3] then
    redis.call('DEL', KEYS[2])
  end
elseif ARGV[2] ~= '' then
  if redis.call('LINDEX', KEYS[2], 0) == ARGV[3] then
    redis.call('LPOP', KEYS[2])
  end
end
redis.call('SET', KEYS[3], '1', 'PX', ARGV[4])
return 1
"#;

/// What cluster mode's Slack needs: where the outbox is and who leads.
pub struct SharedOutbox {
    pub config: ClusterConfig,
    pub leadership: Arc<Leadership>,
    pub health: Arc<ClusterHealth>,
}

/// The connection and keys, once connected.
pub(super) struct Shared {
    setup: SharedOutbox,
    keys: OutboxKeys,
    conn: Option<ConnectionManager>,
    fetch: Script,
    settle: Script,
}

impl Shared {
    pub(super) fn is_leader(&self) -> bool {
        self.setup.leadership.is_leader()
    }

    pub(super) fn new(setup: SharedOutbox) -> Self {
        Self {
            keys: OutboxKeys::new(&setup.config),
            setup,
            conn: None,
            fetch: Script::new(FETCH_LUA),
            settle: Script::new(SETTLE_LUA),
        }
    }
}

/// The message being delivered: which queue, and its entry as stored.
struct Taken {
    which: String,
    entry: String,
}

enum Fetched {
    NotLeader,
    Wait(Duration),
    Empty,
    Message(Taken),
}

fn parse_fetch(reply: Value) -> Option<(Fetched, i64)> {
    let Value::Array(items) = reply else {
        return None;
    };
    let int = |v: &Value| match v {
        Value::Int(n) => Some(*n),
        _ => None,
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let first = int(items.first()?)?;
    if first < 0 {
        return Some((Fetched::NotLeader, 0));
    }
    let depth = items.get(1).and_then(int).unwrap_or(0);
    if first > 0 {
        return Some((Fetched::Wait(Duration::from_millis(first as u64)), depth));
    }
    match (items.get(2).and_then(text), items.get(3).and_then(text)) {
        (Some(which), Some(entry)) => Some((Fetched::Message(Taken { which, entry }), depth)),
        _ => Some((Fetched::Empty, depth)),
    }
}

impl Slack {
    /// Connects to Redis on the actor's thread, then starts delivering.
    pub(super) fn connect_shared(&mut self, ctx: &mut Context<Self>) {
        let Some(shared) = &self.shared else {
            return;
        };
        let (config, health, telemetry) = (
            shared.setup.config.clone(),
            shared.setup.health.clone(),
            self.telemetry.clone(),
        );
        ctx.spawn(
            async move { crate::cluster::connect(&config, &telemetry, &health, REDIS_TIMEOUT).await }
                .into_actor(self)
                .map(|conn, act, ctx| {
                    if let Some(shared) = &mut act.shared {
                        shared.conn = Some(conn);
                    }
                    act.pump(ctx);
                }),
        );
    }

    fn wake_in(&mut self, delay: Duration, ctx: &mut Context<Self>) {
        let handle = ctx.run_later(delay, |act, ctx| {
            act.wake = None;
            act.pump(ctx);
        });
        self.wake = Some(handle);
    }

    /// The next step of delivery from the shared outbox.
    pub(super) fn pump_shared(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight || self.wake.is_some() {
            return;
        }
        let Some(shared) = &self.shared else {
            return;
        };
        let Some(mut conn) = shared.conn.clone() else {
            return;
        };
        let Some(token) = shared.setup.leadership.token() else {
            self.wake_in(POLL, ctx);
            return;
        };
        let script = shared.fetch.clone();
        let keys = [
            shared.setup.config.leader_key.clone(),
            shared.keys.alerts.clone(),
            shared.keys.digests.clone(),
            shared.keys.summary.clone(),
            shared.keys.hold.clone(),
        ];
        let arg = token.clone();
        self.in_flight = true;
        ctx.spawn(
            async move {
                let mut invocation = script.prepare_invoke();
                for key in &keys {
                    invocation.key(key);
                }
                invocation.arg(arg);
                invocation.invoke_async::<Value>(&mut conn).await
            }
            .into_actor(self)
            .map(move |reply, act, ctx| {
                act.in_flight = false;
                let fetched = match reply {
                    Ok(reply) => parse_fetch(reply),
                    Err(e) => {
                        act.telemetry.cluster().redis_error("slack");
                        act.telemetry.warn_limited("slack_shared", || {
                            format!("Slack: the shared outbox cannot be read (Redis: {e}).")
                        });
                        None
                    }
                };
                let Some((fetched, depth)) = fetched else {
                    act.wake_in(POLL, ctx);
                    return;
                };
                act.telemetry.slack.outbox_depth.set(depth);
                match fetched {
                    Fetched::NotLeader | Fetched::Empty => {
                        for done in act.drained.drain(..) {
                            let _ = done.send(());
                        }
                        act.wake_in(POLL, ctx);
                    }
                    Fetched::Wait(wait) => act.wake_in(wait, ctx),
                    Fetched::Message(taken) => act.send_shared(taken, token, ctx),
                }
            }),
        );
    }

    fn send_shared(&mut self, taken: Taken, token: String, ctx: &mut Context<Self>) {
        let Some(text) = entry_text(&taken.entry) else {
            log::warn!("Slack: an entry of the shared outbox is not edgebus's; removed.");
            self.settle_shared(taken, token, true, self.config.pace, ctx);
            return;
        };
        let Some(request) = self.request(&text) else {
            self.wake_in(POLL, ctx);
            return;
        };
        self.in_flight = true;
        ctx.spawn(request.into_actor(self).map(move |reply, act, ctx| {
            act.in_flight = false;
            act.answered_shared(reply, taken, token, ctx);
        }));
    }

    fn answered_shared(
        &mut self,
        reply: Result<Reply, String>,
        taken: Taken,
        token: String,
        ctx: &mut Context<Self>,
    ) {
        let (remove, hold) = self.account(&reply);
        self.settle_shared(taken, token, remove, hold, ctx);
    }

    /// Removes the message if `remove` (and it is still first), and holds
    /// every deliverer back for `hold`; fenced by the lease.
    fn settle_shared(
        &mut self,
        taken: Taken,
        token: String,
        remove: bool,
        hold: Duration,
        ctx: &mut Context<Self>,
    ) {
        let Some(shared) = &self.shared else {
            return;
        };
        let Some(mut conn) = shared.conn.clone() else {
            return;
        };
        let queue = match taken.which.as_str() {
            "a" => &shared.keys.alerts,
            "d" => &shared.keys.digests,
            _ => &shared.keys.summary,
        };
        let which = if remove {
            taken.which.clone()
        } else {
            String::new()
        };
        let script = shared.settle.clone();
        let keys = [
            shared.setup.config.leader_key.clone(),
            queue.clone(),
            shared.keys.hold.clone(),
        ];
        let hold_ms = (hold.as_millis() as u64).max(1);
        self.in_flight = true;
        ctx.spawn(
            async move {
                let mut invocation = script.prepare_invoke();
                for key in &keys {
                    invocation.key(key);
                }
                invocation
                    .arg(token)
                    .arg(which)
                    .arg(taken.entry)
                    .arg(hold_ms);
                invocation.invoke_async::<i64>(&mut conn).await
            }
                .into_actor(self)
                .map(|reply, act, ctx| {
                    act.in_flight = false;
                    match reply {
                        Ok(1) => act.pump(ctx),
                        Ok(_) => {
                            log::warn!(
                                "Slack: the leader lease was lost during a delivery; the next leader delivers the rest."
                            );
                            act.wake_in(POLL, ctx);
                        }
                        Err(e) => {
                            // The message stays first in line: sent again.
                            act.telemetry.cluster().redis_error("slack");
                            act.telemetry.warn_limited("slack_shared", || {
                                format!("Slack: the shared outbox cannot be updated (Redis: {e}).")
                            });
                            act.wake_in(POLL, ctx);
                        }
                    }
                }),
        );
    }

    /// Cluster mode's summary: the leader replaces the queued one.
    pub(super) fn enqueue_summary_shared(&mut self, text: String, ctx: &mut Context<Self>) {
        let Some(shared) = &self.shared else {
            return;
        };
        let Some(mut conn) = shared.conn.clone() else {
            return;
        };
        if !shared.setup.leadership.is_leader() {
            return;
        }
        let mut notice = Notice {
            kind: NoticeKind::Summary,
            text,
        };
        super::outbox::fit(&mut notice);
        let entry = outbox_entry(&format!("summary:{}", now_ms()), &notice);
        let key = shared.keys.summary.clone();
        ctx.spawn(
            async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(entry)
                    .query_async::<()>(&mut conn)
                    .await
            }
            .into_actor(self)
            .map(|reply, act, _| {
                if reply.is_err() {
                    act.telemetry.cluster().redis_error("slack");
                    act.telemetry.slack_dropped(NoticeKind::Summary, "overload");
                }
            }),
        );
    }
}
