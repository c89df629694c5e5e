//! The stream reader: tails the Redis stream and feeds this instance's
//! registry (and through it the bus) in stream order; and [`Recovery`],
//! which fetches from the stream what a resuming client missed beyond the
//! bus's history.
//!
//! At start the reader reads the stream's newest `bus.history` entries as a
//! preload (kept for snapshots and replay, routed to nobody), then reads on
//! from there with blocking `XREAD`s. A health loop pings Redis and
//! measures how far the reader is behind the stream's newest entry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use redis::aio::ConnectionManager;
use redis::Value;

use super::{decode, entries, read_reply_entries, ClusterConfig, ClusterHealth, RawEntry};
use super::{READ_BLOCK, REDIS_TIMEOUT};
use crate::bus::{Backfill, Backfilled, Fetched};
use crate::event::{Draft, Event, EventId};
use crate::registry::ObserveStream;
use crate::telemetry::Telemetry;

/// Most entries per `XREAD` / `XRANGE` page.
const READ_COUNT: usize = 1000;

/// How often the health loop pings Redis and measures the reader's lag.
const HEALTH_EVERY: Duration = Duration::from_millis(500);

pub struct StreamReader;

impl StreamReader {
    /// Starts the reader and the health loop on `thread`; the preload is
    /// sent before any live batch.
    pub fn start(
        thread: &ArbiterHandle,
        config: ClusterConfig,
        registry: Recipient<ObserveStream>,
        health: Arc<ClusterHealth>,
        telemetry: Arc<Telemetry>,
    ) {
        let position = Arc::new(std::sync::Mutex::new(EventId::stream(0, 0)));
        thread.spawn(read_loop(
            config.clone(),
            registry,
            health.clone(),
            telemetry.clone(),
            position.clone(),
        ));
        thread.spawn(health_loop(config, health, telemetry, position));
    }
}

/// The drafts of `entries`, skipping (and counting) foreign ones.
fn drafts(entries: Vec<RawEntry>, telemetry: &Telemetry) -> (Vec<Draft>, Option<EventId>) {
    let mut last = None;
    let mut out = Vec::with_capacity(entries.len());
    for (id, pairs) in entries {
        if let Some(parsed) = EventId::parse_stream(&id) {
            last = Some(parsed);
        }
        match decode(&id, &pairs) {
            Ok(draft) => out.push(draft),
            Err(e) => {
                telemetry.cluster().foreign_entries.inc();
                log::warn!("cluster: skipped a stream entry: {e}");
            }
        }
    }
    (out, last)
}

async fn read_loop(
    config: ClusterConfig,
    registry: Recipient<ObserveStream>,
    health: Arc<ClusterHealth>,
    telemetry: Arc<Telemetry>,
    position: Arc<std::sync::Mutex<EventId>>,
) {
    let mut conn = super::connect(&config, &telemetry, &health, REDIS_TIMEOUT + READ_BLOCK).await;
    // The newest entries first, oldest to newest; reading on from the last
    // of them misses nothing appended meanwhile.
    let mut last = loop {
        let reply: redis::RedisResult<Value> = redis::cmd("XREVRANGE")
            .arg(&config.stream_key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(config.history)
            .query_async(&mut conn)
            .await;
        match reply {
            Ok(reply) => {
                let mut newest_first = entries(reply);
                newest_first.reverse();
                let (drafts, last) = drafts(newest_first, &telemetry);
                let n = drafts.len();
                if registry
                    .send(ObserveStream {
                        drafts,
                        preload: true,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                log::info!(
                    "cluster `{}`: preloaded {n} event(s) from the stream; reading on.",
                    config.instance_id
                );
                break last.unwrap_or(EventId::stream(0, 0));
            }
            Err(e) => {
                telemetry.cluster().redis_error("read");
                health.redis_failed(&format!("reading the stream failed: {e}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    set_position(&position, last);
    health.reader_read();
    loop {
        let reply: redis::RedisResult<Value> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(READ_BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&config.stream_key)
            .arg(last.to_string())
            .query_async(&mut conn)
            .await;
        match reply {
            Ok(reply) => {
                health.reader_read();
                let (drafts, newest) = drafts(read_reply_entries(reply), &telemetry);
                let Some(newest) = newest else {
                    continue;
                };
                last = newest;
                set_position(&position, last);
                telemetry.cluster().read.inc_by(drafts.len() as u64);
                // Waits for the registry: a reader that falls behind shows
                // as lag (and /readyz), never as lost events.
                let sent = registry
                    .send(ObserveStream {
                        drafts,
                        preload: false,
                    })
                    .await;
                if sent.is_err() {
                    return;
                }
            }
            Err(e) => {
                telemetry.cluster().redis_error("read");
                health.redis_failed(&format!("reading the stream failed: {e}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

fn set_position(position: &std::sync::Mutex<EventId>, id: EventId) {
    *position
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = id;
}

/// Pings Redis (round trip, reachability) and compares the reader's
/// position with the stream's newest entry (lag, on Redis's clock).
async fn health_loop(
    config: ClusterConfig,
    health: Arc<ClusterHealth>,
    telemetry: Arc<Telemetry>,
    position: Arc<std::sync::Mutex<EventId>>,
) {
    let mut conn = super::connect(&config, &telemetry, &health, REDIS_TIMEOUT).await;
    telemetry
        .cluster()
        .info
        .with_label_values(&[&config.instance_id])
        .set(1);
    let mut tick = tokio::time::interval(HEALTH_EVERY);
    loop {
        tick.tick().await;
        let started = Instant::now();
        let newest: redis::RedisResult<Value> = redis::cmd("XREVRANGE")
            .arg(&config.stream_key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await;
        match newest {
            Ok(reply) => {
                telemetry
                    .cluster()
                    .redis_rtt_seconds
                    .set(started.elapsed().as_secs_f64());
                health.redis_answered();
                let newest = entries(reply)
                    .into_iter()
                    .next()
                    .and_then(|(id, _)| EventId::parse_stream(&id));
                let read = *position
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let lag_ms = match (newest.and_then(|n| n.stream_ms()), read.stream_ms()) {
                    (Some(newest_ms), Some(read_ms)) if newest.is_some_and(|n| n > read) => {
                        newest_ms.saturating_sub(read_ms).max(1)
                    }
                    _ => 0,
                };
                health.reader_lag(lag_ms);
                telemetry
                    .cluster()
                    .reader_lag_seconds
                    .set(lag_ms as f64 / 1000.0);
            }
            Err(e) => {
                telemetry.cluster().redis_error("ping");
                health.redis_failed(&e.to_string());
            }
        }
    }
}

/// Fetches a resuming session's missed events from the stream, one
/// session at a time (each fetch is bounded by `bus.history_bytes` bytes,
/// and by what the stream keeps), and answers the bus with [`Backfilled`].
pub struct Recovery {
    config: ClusterConfig,
    bus: Recipient<Backfilled>,
    health: Arc<ClusterHealth>,
    telemetry: Arc<Telemetry>,
    conn: Option<ConnectionManager>,
}

/// Backfill requests that may wait; beyond, the client gets a reset.
pub const RECOVERY_MAILBOX: usize = 256;

impl Recovery {
    pub fn new(
        config: ClusterConfig,
        bus: Recipient<Backfilled>,
        health: Arc<ClusterHealth>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        Self {
            config,
            bus,
            health,
            telemetry,
            conn: None,
        }
    }
}

impl Actor for Recovery {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(RECOVERY_MAILBOX);
    }
}

impl Handler<Backfill> for Recovery {
    // Atomic: one fetch at a time; the rest wait in the bounded mailbox.
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, msg: Backfill, _: &mut Context<Self>) -> Self::Result {
        let (config, health, telemetry) = (
            self.config.clone(),
            self.health.clone(),
            self.telemetry.clone(),
        );
        let conn = self.conn.take();
        AtomicResponse::new(Box::pin(
            async move {
                // One attempt: a resume while Redis is away gets its reset
                // now, it does not wait for Redis behind the others.
                let conn = match conn {
                    Some(conn) => Some(conn),
                    None => super::connect_once(&config, REDIS_TIMEOUT).await,
                };
                let Some(mut conn) = conn else {
                    telemetry.cluster().redis_error("backfill");
                    health.redis_failed("cannot connect to Redis for a resume");
                    let result = Err("Redis is unreachable".to_owned());
                    return (None, msg.session, result);
                };
                let result = fetch(&mut conn, &config, msg.after).await;
                if let Err(e) = &result {
                    telemetry.cluster().redis_error("backfill");
                    log::info!(
                        "cluster: a resume from {} falls back to a snapshot: {e}",
                        msg.after
                    );
                }
                (Some(conn), msg.session, result)
            }
            .into_actor(self)
            .map(|(conn, session, result), act, _| {
                act.conn = conn;
                // The bus must hear back, or the session waits for ever.
                act.bus.do_send(Backfilled { session, result });
            }),
        ))
    }
}

/// Every entry after `after`, when the stream still holds them all and
/// they fit `bus.history_bytes`.
async fn fetch(
    conn: &mut ConnectionManager,
    config: &ClusterConfig,
    after: EventId,
) -> Result<Fetched, String> {
    let trimmed = trimmed_through(conn, config)
        .await
        .map_err(|e| e.to_string())?;
    if trimmed.is_some_and(|gone| gone > after) {
        return Err(format!("{after} is older than the stream keeps"));
    }
    let mut events = Vec::new();
    let mut bytes = 0usize;
    let mut from = after;
    let mut upto = after;
    loop {
        let reply: Value = redis::cmd("XRANGE")
            .arg(&config.stream_key)
            .arg(format!("({from}"))
            .arg("+")
            .arg("COUNT")
            .arg(READ_COUNT)
            .query_async(conn)
            .await
            .map_err(|e| e.to_string())?;
        let page = entries(reply);
        let full = page.len() == READ_COUNT;
        for (id, pairs) in page {
            let Some(event_id) = EventId::parse_stream(&id) else {
                continue;
            };
            from = event_id;
            upto = event_id;
            if let Ok(draft) = decode(&id, &pairs) {
                let event = Arc::new(Event::from_draft(event_id, draft));
                bytes += event.heap_bytes();
                events.push(event);
            }
            // By count the stream is the bound (the ring already covers
            // `bus.history` events); by bytes, what the ring may hold.
            if events.len() > config.stream_max_len || bytes > config.history_bytes {
                return Err(format!(
                    "more than a resume may fetch (cluster.stream_max_len = {}, bus.history_bytes = {}) was missed",
                    config.stream_max_len, config.history_bytes
                ));
            }
        }
        if !full {
            return Ok(Fetched { events, upto });
        }
    }
}

/// An id at or after the newest one the stream may have lost: just before
/// its first entry, or Redis 7's `max-deleted-entry-id` when later;
/// `None` for an empty stream.
async fn trimmed_through(
    conn: &mut ConnectionManager,
    config: &ClusterConfig,
) -> redis::RedisResult<Option<EventId>> {
    let info: redis::RedisResult<Value> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(&config.stream_key)
        .query_async(conn)
        .await;
    let info = match info {
        Ok(info) => info,
        // No such key: an empty stream lost nothing.
        Err(e) if e.to_string().contains("no such key") => return Ok(None),
        Err(e) => return Err(e),
    };
    let pairs: Vec<(String, Value)> = match info {
        Value::Array(items) => {
            let mut out = Vec::new();
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                if let Some(k) = super::text(k) {
                    out.push((k, v));
                }
            }
            out
        }
        Value::Map(items) => items
            .into_iter()
            .filter_map(|(k, v)| Some((super::text(k)?, v)))
            .collect(),
        _ => Vec::new(),
    };
    let field = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    // Trimming (`XADD … MAXLEN`) does not move `max-deleted-entry-id` (only
    // `XDEL` does), so the first entry bounds what is gone: everything
    // before it may be. `max-deleted-entry-id` (Redis 7) adds entries
    // deleted after it.
    let deleted = field("max-deleted-entry-id")
        .and_then(super::text)
        .and_then(|id| EventId::parse_stream(&id))
        .filter(|id| *id != EventId::stream(0, 0));
    let before_first = field("first-entry")
        .and_then(|v| entries(Value::Array(vec![v])).into_iter().next())
        .and_then(|(id, _)| EventId::parse_stream(&id))
        .map(|id| match id.seq {
            0 => EventId::stream(id.stream_ms().unwrap_or(1).saturating_sub(1), u64::MAX),
            seq => EventId::stream(id.stream_ms().unwrap_or(0), seq - 1),
        });
    Ok(deleted.max(before_first))
}
