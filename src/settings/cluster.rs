//! `[cluster]`: several instances sharing one ordered event stream on Redis.

use std::time::Duration;

use serde::Deserialize;

use super::{in_range, invalid, MqttMode, Secret, SettingsError};

/// `[cluster]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    redis_url: Secret,
    instance_id: String,
    group: String,
    key_prefix: String,
    stream_max_len: usize,
    max_reader_lag_ms: u64,
    stream_lease_seconds: u64,
}

/// Cluster mode's settings; `None` in [`super::Settings::cluster`] means one
/// instance, as without Redis.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// `redis://` or `rediss://`, with password and db: a secret.
    pub redis_url: Secret,
    /// Names this process in logs, `/readyz`, `/metrics` and its MQTT client id.
    pub instance_id: String,
    /// The MQTT shared-subscription group: `$share/{group}/{filter}`.
    pub group: String,
    /// Every Redis key edgebus uses starts with this and a colon, so two
    /// clusters can share one Redis.
    pub key_prefix: String,
    /// Entries the stream keeps (trimmed approximately on every append).
    pub stream_max_len: usize,
    /// `/readyz` is 503 while this instance reads the stream further behind.
    pub max_reader_lag: Duration,
    /// How long a stream slot under `sessions.max_streams_per_identity`
    /// outlives the last renewal of the instance holding it: the time a
    /// dead instance's slots stay taken.
    pub stream_lease: Duration,
}

impl ClusterSettings {
    /// The Redis Stream every instance appends to and reads.
    pub fn stream_key(&self) -> String {
        format!("{}:events", self.key_prefix)
    }

    /// Any other key, under the prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.key_prefix)
    }
}

fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl RawCluster {
    pub(super) fn validate(
        self,
        mqtt_mode: MqttMode,
    ) -> Result<Option<ClusterSettings>, SettingsError> {
        if self.redis_url.is_empty() {
            return Ok(None);
        }
        let url = self.redis_url.expose();
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(invalid(
                "cluster.redis_url",
                "must start with redis:// or rediss://",
            ));
        }
        if let Err(e) = redis::Client::open(url) {
            return Err(invalid(
                "cluster.redis_url",
                format!("is not a Redis URL ({e})"),
            ));
        }
        if mqtt_mode != MqttMode::External {
            return Err(invalid(
                "mqtt.mode",
                "cluster mode (cluster.redis_url) needs mqtt.mode = \"external\": every instance \
                 must read one shared broker",
            ));
        }
        let instance_id = if self.instance_id.is_empty() {
            default_instance_id()
        } else {
            self.instance_id
        };
        if !is_token(&instance_id) {
            return Err(invalid(
                "cluster.instance_id",
                "must be 1 to 64 letters, digits, '-', '_' or '.'",
            ));
        }
        if !is_token(&self.group) {
            return Err(invalid(
                "cluster.group",
                "must be 1 to 64 letters, digits, '-', '_' or '.' (it is a topic level)",
            ));
        }
        if self.key_prefix.is_empty() || self.key_prefix.len() > 64 {
            return Err(invalid("cluster.key_prefix", "must be 1 to 64 characters"));
        }
        in_range("cluster.stream_max_len", self.stream_max_len, 100_000_000)?;
        if !(100..=600_000).contains(&self.max_reader_lag_ms) {
            return Err(invalid(
                "cluster.max_reader_lag_ms",
                "must be from 100 to 600000",
            ));
        }
        if !(1..=3600).contains(&self.stream_lease_seconds) {
            return Err(invalid(
                "cluster.stream_lease_seconds",
                "must be from 1 to 3600",
            ));
        }
        Ok(Some(ClusterSettings {
            redis_url: self.redis_url,
            instance_id,
            group: self.group,
            key_prefix: self.key_prefix,
            stream_max_len: self.stream_max_len,
            max_reader_lag: Duration::from_millis(self.max_reader_lag_ms),
            stream_lease: Duration::from_secs(self.stream_lease_seconds),
        }))
    }
}

/// The host name plus six random hex digits: unique across restarts, so a
/// restarted instance never inherits a dead one's MQTT session.
fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                .take(48)
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "edgebus".to_owned());
    let mut bytes = [0u8; 3];
    // The suffix only tells instances apart; a failed RNG falls back to the pid.
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        let pid = std::process::id().to_le_bytes();
        bytes.copy_from_slice(&pid[..3]);
    }
    format!("{host}-{:02x}{:02x}{:02x}", bytes[0], bytes[1], bytes[2])
}
