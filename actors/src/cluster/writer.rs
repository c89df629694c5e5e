//! The stream writer: appends events to the Redis stream in batches, one
//! round trip per batch, and tells each caller the id its event got.
//!
//! One task per instance. Appends queue on a channel (what waits there is
//! bounded by the callers: ingest's in-flight bytes, HTTP's connections);
//! the task takes everything waiting (up to [`MAX_BATCH`]) and runs one Lua
//! script that, atomically, admits the batch's devices under the
//! cluster-wide cap and `XADD`s every entry. While Redis fails, the batch
//! is retried with back-off and nothing is acknowledged.
//!
//! A batch whose answer timed out may still run: a Redis that hung runs
//! every copy it was sent once it resumes. So each batch carries a key of
//! its own; the script records its ids under it, and a copy that finds
//! them answers them instead of appending again. Once sent, a batch is
//! therefore never changed: an append with a deadline (HTTP) that passes
//! meanwhile is answered `Unavailable` but stays in it (it may yet be
//! appended); one that passes before its batch went out is dropped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::{Script, Value};
use tokio::sync::{mpsc, oneshot};

use super::entry::EntryFields;
use super::{ClusterConfig, ClusterHealth, REDIS_TIMEOUT};
use crate::event::{now_ms, Draft, EventId};
use crate::frame::Rejection;
use crate::reject::reject_draft;
use crate::telemetry::Telemetry;

/// Most entries per round trip.
pub const MAX_BATCH: usize = 512;

/// Most payload bytes per round trip (a batch always takes one entry).
const MAX_BATCH_BYTES: usize = 4 << 20;

/// Admits the devices of a batch under the cap and appends every entry,
/// once per batch key. KEYS: devices zset, stream, batch key. ARGV: now,
/// forget cutoff, max devices, max stream length, entry count, then per
/// entry: device ("" = none),
/// topic, ts, payload, name ("" = none). Returns per entry its id, or 0
/// when its device was refused (nothing appended for it).
const APPEND_LUA: &str = r#"
local devices, stream, batch = KEYS[1], KEYS[2], KEYS[3]
local done = redis.call('GET', batch)
if done then
  return cjson.decode(done)
end
local now, cutoff, max_devices = ARGV[1], ARGV[2], tonumber(ARGV[3])
local max_len, n = ARGV[4], tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', devices, '-inf', '(' .. cutoff)
local out = {}
local i = 6
for e = 1, n do
  local device, topic, ts, payload, name = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  i = i + 5
  local admitted = true
  if device ~= '' then
    if redis.call('ZSCORE', devices, device) or redis.call('ZCARD', devices) < max_devices then
      redis.call('ZADD', devices, now, device)
    else
      admitted = false
    end
  end
  if admitted then
    if name == '' then
      out[e] = redis.call('XADD', stream, 'MAXLEN', '~', max_len, '*', 't', topic, 'ts', ts, 'p', payload)
    else
      out[e] = redis.call('XADD', stream, 'MAXLEN', '~', max_len, '*', 't', topic, 'ts', ts, 'p', payload, 'n', name)
    end
  else
    out[e] = 0
  end
end
redis.call('SET', batch, cjson.encode(out), 'PX', BATCH_KEY_TTL_MS)
return out
"#;

/// How long a batch's ids stay recorded for copies of it still queued in
/// Redis: they run right after the first, in the order they were sent.
const BATCH_KEY_TTL_MS: u64 = 300_000;

/// Why an event was not appended.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AppendError {
    /// Redis did not take it before the caller's deadline; not appended.
    #[error("the event stream (Redis) is unavailable: {0}")]
    Unavailable(String),
    /// Its device would exceed `registry.max_devices` cluster-wide; a
    /// `device_cap` rejection was appended instead.
    #[error("device_cap: registry.max_devices devices are known")]
    DeviceCap,
    /// The writer has stopped (shutdown).
    #[error("edgebus is shutting down")]
    Stopped,
}

/// Where the outcome of one append goes.
pub type Reply = oneshot::Sender<Result<EventId, AppendError>>;

struct Append {
    draft: Draft,
    /// The metrics device to admit under the cap, if any.
    device: Option<String>,
    reply: Option<Reply>,
    /// Past it, give up (the caller answered 503 already).
    deadline: Option<Instant>,
}

/// Bytes of appends with a deadline (HTTP) that may wait for Redis at
/// once: while Redis is away, a publisher sending faster than its requests
/// time out cannot grow the queue past this (beyond: 503 at once).
pub const WAITING_WITH_DEADLINE_BYTES: usize = 16 << 20;

/// Cloneable handle on the writer task.
#[derive(Clone)]
pub struct StreamWriter {
    tx: mpsc::UnboundedSender<Append>,
    /// Ingest's appends are bounded by ingest's own budget; these by this.
    waiting: Arc<crate::inflight::InflightBytes>,
}

impl StreamWriter {
    /// Starts the task on `thread`.
    pub fn start(
        thread: &actix::ArbiterHandle,
        config: ClusterConfig,
        health: Arc<ClusterHealth>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        thread.spawn(run(rx, config, health, telemetry));
        Self {
            tx,
            waiting: crate::inflight::InflightBytes::new(WAITING_WITH_DEADLINE_BYTES),
        }
    }

    /// Appends `draft`; `reply` hears its id (or why not). `device`: a
    /// metrics frame's device, admitted under the cluster-wide cap first.
    /// Without a deadline it is retried until Redis takes it.
    pub fn append(
        &self,
        draft: Draft,
        device: Option<String>,
        reply: Option<Reply>,
        deadline: Option<Instant>,
    ) {
        let append = Append {
            draft,
            device,
            reply,
            deadline,
        };
        if let Err(mpsc::error::SendError(append)) = self.tx.send(append) {
            if let Some(reply) = append.reply {
                let _ = reply.send(Err(AppendError::Stopped));
            }
        }
    }

    /// [`StreamWriter::append`], awaiting the outcome (HTTP publish).
    pub async fn append_until(
        &self,
        draft: Draft,
        device: Option<String>,
        deadline: Instant,
    ) -> Result<EventId, AppendError> {
        let Some(draft) = draft.reserve(&self.waiting) else {
            return Err(AppendError::Unavailable(
                "too many publishes are waiting for Redis".into(),
            ));
        };
        let (tx, rx) = oneshot::channel();
        self.append(draft, device, Some(tx), Some(deadline));
        // The writer may be busy retrying an earlier batch (ingest's frames
        // have no deadline) and not reach this one: the caller's deadline
        // holds anyway. An append still queued then is dropped unsent when
        // the writer reaches it.
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(reply) => reply.unwrap_or(Err(AppendError::Stopped)),
            Err(_) => Err(AppendError::Unavailable(
                "Redis did not take the event in time".into(),
            )),
        }
    }
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<Append>,
    config: ClusterConfig,
    health: Arc<ClusterHealth>,
    telemetry: Arc<Telemetry>,
) {
    let script =
        Script::new(&APPEND_LUA.replace("BATCH_KEY_TTL_MS", &BATCH_KEY_TTL_MS.to_string()));
    let mut conn = super::connect(&config, &telemetry, &health, REDIS_TIMEOUT).await;
    // Batch keys are unique across this instance's restarts.
    let run_id = now_ms();
    let mut batches: u64 = 0;
    let mut batch: Vec<Append> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut bytes = first.draft.payload_json().len();
        batch.push(first);
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            let Ok(next) = rx.try_recv() else {
                break;
            };
            bytes += next.draft.payload_json().len();
            batch.push(next);
        }
        let mut delay = Duration::from_millis(50);
        // Set when the batch goes out; from then on it is never changed.
        let mut key: Option<String> = None;
        loop {
            expire(&mut batch, key.is_none());
            if batch.is_empty() {
                // Nothing waits for Redis any more (the last appends expired):
                // nothing is held unacknowledged, so this is no reason to be
                // unready; whether Redis answers is the health check's call.
                health.writer_stalled(false);
                break;
            }
            let batch_key = key
                .get_or_insert_with(|| {
                    batches += 1;
                    format!(
                        "{}:batch:{}:{run_id}:{batches}",
                        config.stream_key, config.instance_id
                    )
                })
                .clone();
            match append_batch(&script, &mut conn, &config, &batch, &batch_key).await {
                Ok(outcomes) => {
                    health.writer_stalled(false);
                    health.redis_answered();
                    telemetry.cluster().append_batch.observe(batch.len() as f64);
                    // Refused devices' rejections refill the batch, a new one.
                    finish(&mut batch, outcomes, &telemetry);
                    key = None;
                    delay = Duration::from_millis(50);
                }
                Err(e) => {
                    telemetry.cluster().redis_error("append");
                    health.writer_stalled(true);
                    health.redis_failed(&format!("append failed: {e}"));
                    log::warn!(
                        "cluster: appending {} event(s) to the stream failed ({e}); retrying in {delay:?}",
                        batch.len()
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

/// Appends past their deadline are answered `Unavailable`; dropped too
/// while the batch has not gone out (`unsent`), kept once it has (a copy
/// of it may yet run).
fn expire(batch: &mut Vec<Append>, unsent: bool) {
    let now = Instant::now();
    batch.retain_mut(|a| {
        if a.deadline.is_some_and(|d| d <= now) {
            if let Some(reply) = a.reply.take() {
                let _ = reply.send(Err(AppendError::Unavailable(
                    "Redis did not answer in time".into(),
                )));
            }
            return !unsent;
        }
        true
    });
}

/// What became of each entry of a batch.
enum Outcome {
    Appended(EventId),
    DeviceRefused,
}

async fn append_batch(
    script: &Script,
    conn: &mut ConnectionManager,
    config: &ClusterConfig,
    batch: &[Append],
    batch_key: &str,
) -> redis::RedisResult<Vec<Outcome>> {
    let now = now_ms();
    let cutoff = now.saturating_sub(config.forget_after.as_millis() as u64);
    let mut invocation = script.prepare_invoke();
    invocation
        .key(&config.devices_key)
        .key(&config.stream_key)
        .key(batch_key)
        .arg(now)
        .arg(cutoff)
        .arg(config.max_devices)
        .arg(config.stream_max_len)
        .arg(batch.len());
    for append in batch {
        let fields = EntryFields::of(&append.draft);
        invocation
            .arg(append.device.as_deref().unwrap_or(""))
            .arg(fields.topic)
            .arg(&fields.ts)
            .arg(fields.payload)
            .arg(fields.name.unwrap_or(""));
    }
    let reply: Value = invocation.invoke_async(conn).await?;
    let Value::Array(items) = reply else {
        return Err(unexpected("the append script did not answer a list"));
    };
    if items.len() != batch.len() {
        return Err(unexpected("the append script answered the wrong count"));
    }
    items
        .into_iter()
        .map(|item| match item {
            Value::Int(0) => Ok(Outcome::DeviceRefused),
            Value::BulkString(id) => std::str::from_utf8(&id)
                .ok()
                .and_then(EventId::parse_stream)
                .map(Outcome::Appended)
                .ok_or_else(|| unexpected("XADD answered something else than an id")),
            _ => Err(unexpected(
                "the append script answered something unexpected",
            )),
        })
        .collect()
}

fn unexpected(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Parse, what))
}

/// Answers every append of a batch; a device refused by the cap gets a
/// `device_cap` rejection appended in its place, as one instance reports it.
fn finish(batch: &mut Vec<Append>, outcomes: Vec<Outcome>, telemetry: &Telemetry) {
    let mut rejects = Vec::new();
    for (append, outcome) in batch.drain(..).zip(outcomes) {
        let result = match outcome {
            Outcome::Appended(id) => {
                telemetry.cluster().appended.inc();
                if append.device.is_some() {
                    telemetry.frames_accepted.inc();
                }
                Ok(id)
            }
            Outcome::DeviceRefused => {
                telemetry.frame_rejected(&append.draft.topic, &Rejection::DeviceCap);
                rejects.push(reject_draft(
                    &append.draft.topic,
                    append.device.as_deref(),
                    &Rejection::DeviceCap,
                    b"",
                    append.draft.ts_ms,
                ));
                Err(AppendError::DeviceCap)
            }
        };
        if let Some(reply) = append.reply {
            let _ = reply.send(result);
        }
    }
    batch.extend(rejects.into_iter().map(|draft| Append {
        draft,
        device: None,
        reply: None,
        deadline: None,
    }));
}
