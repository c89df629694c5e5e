//! Cluster mode: several instances share one ordered event stream on Redis.
//!
//! Every instance takes its share of the MQTT frames (a shared
//! subscription), validates them, and appends each accepted event (or
//! rejection) to one Redis Stream through its [`StreamWriter`]; its MQTT
//! acknowledgement waits for the append. Every instance's [`reader`] tails
//! that stream and hands each batch, in stream order and numbered with the
//! entry ids, to its registry and on to its bus. So every client on every
//! instance sees the same events, in the same order, with the same ids.
//!
//! A resuming client whose id the history no longer holds gets its missed
//! events from the stream ([`Recovery`]). What the balancer and `/metrics`
//! see of all this is in [`ClusterHealth`] and
//! [`crate::telemetry::ClusterMetrics`].

pub mod entry;
pub mod leader;
mod reader;
pub mod voice;
mod writer;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Value;

use crate::telemetry::Telemetry;

pub use leader::Leadership;
pub use reader::{Recovery, StreamReader};
pub use voice::{Claim, Guard, Voice};
pub use writer::{AppendError, Reply, StreamWriter};

/// How long one Redis command may take before it counts as failed. An
/// `XREAD BLOCK` waits [`READ_BLOCK`] on top of it.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a blocking read waits for new entries before asking again.
pub const READ_BLOCK: Duration = Duration::from_millis(1000);

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `redis://…` or `rediss://…` (a secret: never logged).
    pub redis_url: String,
    pub instance_id: String,
    /// The stream every instance appends to and reads.
    pub stream_key: String,
    /// The sorted set of admitted devices (score: last seen, ms).
    pub devices_key: String,
    /// The leader lease (value: the holder's instance id and fencing token).
    pub leader_key: String,
    /// Every other key (claims, presence, the Slack outbox) is
    /// `{key_prefix}:…`.
    pub key_prefix: String,
    /// Entries the stream keeps (`XADD MAXLEN ~`).
    pub stream_max_len: usize,
    /// `registry.max_devices`, cluster-wide.
    pub max_devices: usize,
    /// A device unseen this long frees its slot (the registry's rule).
    pub forget_after: Duration,
    /// Events read at start (the bus's history).
    pub history: usize,
    /// Most bytes a resuming client may fetch from the stream (by count,
    /// what the stream keeps).
    pub history_bytes: usize,
    pub max_reader_lag: Duration,
}

impl ClusterConfig {
    /// `{key_prefix}:{name}`.
    pub fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.key_prefix)
    }
}

/// A Redis client for `url` with Nagle's algorithm off: a command written
/// while another's answer is outstanding would otherwise wait for the
/// server's delayed ACK (up to 40 ms), which showed as a 25–35 ms p99 on
/// the stream's hop at 1,000 frames/s.
pub fn redis_client(url: &str) -> redis::RedisResult<redis::Client> {
    use redis::IntoConnectionInfo;
    let info = url
        .into_connection_info()?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    redis::Client::open(info)
}

/// One attempt at a connection manager, within `timeout`; `None` when
/// Redis does not answer (the caller falls back, it does not wait).
pub async fn connect_once(config: &ClusterConfig, timeout: Duration) -> Option<ConnectionManager> {
    let attempt = async {
        let client = redis_client(&config.redis_url)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        client
            .get_connection_manager_with_config(manager_config)
            .await
    };
    tokio::time::timeout(timeout, attempt).await.ok()?.ok()
}

/// Opens a connection manager (it reconnects by itself afterwards); the
/// first connection is retried here until it succeeds or `stop` is set.
pub async fn connect(
    config: &ClusterConfig,
    telemetry: &Telemetry,
    health: &ClusterHealth,
    timeout: Duration,
) -> ConnectionManager {
    let mut delay = Duration::from_millis(100);
    loop {
        let attempt = async {
            let client = redis_client(&config.redis_url)?;
            let manager_config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(REDIS_TIMEOUT))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(2));
            client
                .get_connection_manager_with_config(manager_config)
                .await
        };
        match attempt.await {
            Ok(manager) => return manager,
            Err(e) => {
                telemetry.cluster().redis_error("connect");
                health.redis_failed(&format!("cannot connect to Redis: {e}"));
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// What `/readyz` needs to know, shared by the reader, the writer and the
/// health check.
#[derive(Debug)]
pub struct ClusterHealth {
    pub instance_id: String,
    max_reader_lag: Duration,
    started: Instant,
    redis_ok: AtomicBool,
    writer_stalled: AtomicBool,
    /// Milliseconds since `started` of the reader's last completed read.
    reader_alive_ms: AtomicU64,
    reader_started: AtomicBool,
    reader_lag_ms: AtomicU64,
    last_error: Mutex<String>,
}

impl ClusterHealth {
    pub fn new(instance_id: String, max_reader_lag: Duration) -> Arc<Self> {
        Arc::new(Self {
            instance_id,
            max_reader_lag,
            started: Instant::now(),
            redis_ok: AtomicBool::new(false),
            writer_stalled: AtomicBool::new(false),
            reader_alive_ms: AtomicU64::new(0),
            reader_started: AtomicBool::new(false),
            reader_lag_ms: AtomicU64::new(0),
            last_error: Mutex::new("not connected to Redis yet".into()),
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn redis_answered(&self) {
        self.redis_ok.store(true, Ordering::Relaxed);
    }

    pub fn redis_failed(&self, error: &str) {
        self.redis_ok.store(false, Ordering::Relaxed);
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = error.to_owned();
    }

    fn writer_stalled(&self, stalled: bool) {
        self.writer_stalled.store(stalled, Ordering::Relaxed);
    }

    fn reader_read(&self) {
        self.reader_started.store(true, Ordering::Relaxed);
        self.reader_alive_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn reader_lag(&self, lag_ms: u64) {
        self.reader_lag_ms.store(lag_ms, Ordering::Relaxed);
    }

    /// Why this instance should get no clients now; `None` when it is fine.
    pub fn not_ready(&self) -> Option<String> {
        if !self.redis_ok.load(Ordering::Relaxed) {
            let error = self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            return Some(format!("Redis unreachable: {error}"));
        }
        if self.writer_stalled.load(Ordering::Relaxed) {
            return Some("appending to the Redis stream fails; frames are not acknowledged".into());
        }
        if !self.reader_started.load(Ordering::Relaxed) {
            return Some("the stream reader has not read yet".into());
        }
        let silent = self
            .now_ms()
            .saturating_sub(self.reader_alive_ms.load(Ordering::Relaxed));
        let stale = (READ_BLOCK + REDIS_TIMEOUT * 2).as_millis() as u64;
        if silent > stale {
            return Some(format!("the stream reader has not read for {silent} ms"));
        }
        let lag = self.reader_lag_ms.load(Ordering::Relaxed);
        if lag > self.max_reader_lag.as_millis() as u64 {
            return Some(format!(
                "the stream reader is {lag} ms behind (cluster.max_reader_lag_ms = {})",
                self.max_reader_lag.as_millis()
            ));
        }
        None
    }
}

/// One stream entry as read: its id and its field/value pairs.
type RawEntry = (String, Vec<(Vec<u8>, Vec<u8>)>);

/// Stream entries of an `XRANGE`/`XREVRANGE` reply (or one stream of an
/// `XREAD` reply): `[[id, [field, value, …]], …]`.
fn entries(reply: Value) -> Vec<RawEntry> {
    let Value::Array(items) = reply else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(mut parts) = item else {
            continue;
        };
        if parts.len() != 2 {
            continue;
        }
        let fields = parts.pop();
        let id = parts.pop();
        let (Some(id), Some(Value::Array(fields))) = (id, fields) else {
            continue;
        };
        let Some(id) = text(id) else {
            continue;
        };
        let mut pairs = Vec::with_capacity(fields.len() / 2);
        let mut it = fields.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            if let (Value::BulkString(k), Value::BulkString(v)) = (k, v) {
                pairs.push((k, v));
            }
        }
        out.push((id, pairs));
    }
    out
}

/// The entries of the one stream an `XREAD` reply names (nil: none).
fn read_reply_entries(reply: Value) -> Vec<RawEntry> {
    let streams = match reply {
        Value::Array(streams) => streams,
        Value::Map(pairs) => pairs
            .into_iter()
            .map(|(k, v)| Value::Array(vec![k, v]))
            .collect(),
        _ => return Vec::new(),
    };
    streams
        .into_iter()
        .filter_map(|stream| match stream {
            Value::Array(mut kv) if kv.len() == 2 => kv.pop(),
            _ => None,
        })
        .flat_map(entries)
        .collect()
}

fn text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// The draft of one parsed entry, or why not.
fn decode(
    id: &str,
    pairs: &[(Vec<u8>, Vec<u8>)],
) -> Result<crate::event::Draft, entry::EntryError> {
    entry::decode(id, |field| {
        pairs
            .iter()
            .find(|(k, _)| k.as_slice() == field.as_bytes())
            .map(|(_, v)| v.as_slice())
    })
}
