//! `[mqtt]`: the broker ingest reads from, and the embedded broker's limits.

use std::time::Duration;

use serde::Deserialize;

use edgebus_actors::ingest::MQTT_PACKET_LIMIT;
use edgebus_actors::topic::TopicFilter;

use super::{at_least, de, invalid, parse_sha256_hex, Digest, Secret, SettingsError};

/// Largest `mqtt.max_payload_bytes` accepted: well under rumqttc's packet
/// limit, so an over-size frame is always ours to reject and count.
pub const MAX_PAYLOAD_LIMIT: usize = 4 * 1024 * 1024;
const _: () = assert!(MAX_PAYLOAD_LIMIT < MQTT_PACKET_LIMIT);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MqttMode {
    /// Use a broker at `mqtt.url` if one answers, else embed one there.
    Auto,
    /// Always embed a broker at `mqtt.url`.
    Embedded,
    /// Never embed: connect to `mqtt.url`, retrying until it answers.
    External,
}

/// `[mqtt]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMqtt {
    mode: MqttMode,
    url: String,
    client_id: String,
    topics: Vec<String>,
    ca_cert: String,
    client_cert: String,
    client_key: String,
    username: String,
    password: Secret,
    #[serde(rename = "backoff_min_seconds", deserialize_with = "de::seconds")]
    backoff_min: Duration,
    #[serde(rename = "backoff_max_seconds", deserialize_with = "de::seconds")]
    backoff_max: Duration,
    max_payload_bytes: usize,
    #[serde(rename = "keep_alive_seconds", deserialize_with = "de::seconds")]
    keep_alive: Duration,
    persistent_session: bool,
    credentials: Vec<RawMqttCredential>,
    embedded_retention_bytes: usize,
    embedded_client_retention_bytes: usize,
    embedded_max_connections: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqttCredential {
    username: String,
    password_sha256: Secret,
}

#[derive(Debug, Clone)]
pub struct MqttSettings {
    pub mode: MqttMode,
    pub url: BrokerUrl,
    pub client_id: String,
    /// The filters ingest subscribes; also the families HTTP publish may use.
    pub topics: Vec<TopicFilter>,
    /// TLS files (`mqtts://` only; empty = the system roots, no client cert).
    pub ca_cert: String,
    pub client_cert: String,
    pub client_key: String,
    /// edgebus's own login; empty = none.
    pub username: String,
    pub password: Secret,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub max_payload_bytes: usize,
    pub keep_alive: Duration,
    pub persistent_session: bool,
    /// Device credentials the embedded broker accepts besides
    /// `username`/`password`.
    pub credentials: Vec<MqttCredential>,
    /// Embedded broker: bytes kept per filter in `topics` for ingest to
    /// catch up on.
    pub embedded_retention_bytes: usize,
    /// Embedded broker: bytes kept per filter any other client subscribes.
    pub embedded_client_retention_bytes: usize,
    /// Embedded broker: most client connections at once.
    pub embedded_max_connections: usize,
}

/// One device credential of the embedded broker: the password is stored as
/// the SHA-256 of its bytes (hex in the file), so the config does not hold it.
#[derive(Debug, Clone)]
pub struct MqttCredential {
    pub username: String,
    pub password_sha256: Digest,
}

/// `mqtt.url`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest, default_port) = if let Some(rest) = url.strip_prefix("mqtt://") {
            (false, rest, 1883)
        } else if let Some(rest) = url.strip_prefix("mqtts://") {
            (true, rest, 8883)
        } else {
            return Err("must start with mqtt:// or mqtts://".into());
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains(['/', '@', '?', '#']) {
            return Err("must be mqtt[s]://host[:port] with no path, user or query".into());
        }
        // `[v6]:port`, `[v6]`, `host:port` or `host`.
        let (host, port) = match rest.strip_prefix('[') {
            Some(v6) => {
                let (host, tail) = v6.split_once(']').ok_or("unclosed `[` in host")?;
                (host, tail.strip_prefix(':'))
            }
            None => match rest.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            },
        };
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| format!("port {p:?} is not a number from 1 to 65535"))?,
            None => default_port,
        };
        if host.is_empty() || port == 0 {
            return Err("needs a host and a port from 1 to 65535".into());
        }
        Ok(Self {
            tls,
            host: host.to_owned(),
            port,
        })
    }
}

impl RawMqtt {
    pub(super) fn validate(self) -> Result<MqttSettings, SettingsError> {
        let url = BrokerUrl::parse(&self.url).map_err(|rule| invalid("mqtt.url", rule))?;
        if url.tls && self.mode == MqttMode::Embedded {
            return Err(invalid(
                "mqtt.url",
                "the embedded broker speaks plain mqtt://; use mode = \"external\" for mqtts://",
            ));
        }
        if self.client_id.is_empty() || self.client_id.len() > 128 {
            return Err(invalid("mqtt.client_id", "must be 1 to 128 characters"));
        }
        if self.topics.is_empty() {
            return Err(invalid(
                "mqtt.topics",
                "must list at least one topic filter",
            ));
        }
        let topics = self
            .topics
            .iter()
            .map(|topic| {
                TopicFilter::parse(topic)
                    .map_err(|e| invalid("mqtt.topics", format!("{topic:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        at_least("mqtt.backoff_min_seconds", self.backoff_min.as_secs(), 1)?;
        if self.backoff_max < self.backoff_min {
            return Err(invalid(
                "mqtt.backoff_max_seconds",
                "must be at least mqtt.backoff_min_seconds",
            ));
        }
        if !(64..=MAX_PAYLOAD_LIMIT).contains(&self.max_payload_bytes) {
            return Err(invalid(
                "mqtt.max_payload_bytes",
                format!("must be from 64 to {MAX_PAYLOAD_LIMIT}"),
            ));
        }
        if !(1..=65_535).contains(&self.keep_alive.as_secs()) {
            return Err(invalid(
                "mqtt.keep_alive_seconds",
                "must be from 1 to 65535",
            ));
        }
        if self.client_cert.is_empty() != self.client_key.is_empty() {
            return Err(invalid(
                "mqtt.client_cert",
                "client_cert and client_key must be set together (mutual TLS)",
            ));
        }
        let has_tls_files = !self.ca_cert.is_empty() || !self.client_cert.is_empty();
        if has_tls_files && !url.tls {
            return Err(invalid(
                "mqtt.url",
                "ca_cert / client_cert are set but the url is not mqtts://",
            ));
        }
        if self.username.is_empty() && !self.password.is_empty() {
            return Err(invalid(
                "mqtt.username",
                "must be set when mqtt.password is",
            ));
        }
        let credentials = self.validate_embedded_broker()?;
        Ok(MqttSettings {
            mode: self.mode,
            url,
            client_id: self.client_id,
            topics,
            ca_cert: self.ca_cert,
            client_cert: self.client_cert,
            client_key: self.client_key,
            username: self.username,
            password: self.password,
            backoff_min: self.backoff_min,
            backoff_max: self.backoff_max,
            max_payload_bytes: self.max_payload_bytes,
            keep_alive: self.keep_alive,
            persistent_session: self.persistent_session,
            credentials,
            embedded_retention_bytes: self.embedded_retention_bytes,
            embedded_client_retention_bytes: self.embedded_client_retention_bytes,
            embedded_max_connections: self.embedded_max_connections,
        })
    }

    /// The embedded broker's logins and limits.
    fn validate_embedded_broker(&self) -> Result<Vec<MqttCredential>, SettingsError> {
        if self.mode != MqttMode::External && !self.username.is_empty() && self.password.is_empty()
        {
            return Err(invalid(
                "mqtt.password",
                "must be set when mqtt.username is: the embedded broker would accept that name \
                 with no password",
            ));
        }
        let mut names: Vec<&str> = vec![self.username.as_str()];
        let mut credentials = Vec::with_capacity(self.credentials.len());
        for credential in &self.credentials {
            let name = credential.username.as_str();
            if name.is_empty() || name.len() > 256 {
                return Err(invalid(
                    "mqtt.credentials",
                    "each username must be 1 to 256 characters",
                ));
            }
            if names.contains(&name) {
                return Err(invalid(
                    "mqtt.credentials",
                    format!("username {name:?} is listed twice (or is mqtt.username)"),
                ));
            }
            names.push(name);
            let Some(digest) = parse_sha256_hex(credential.password_sha256.expose()) else {
                return Err(invalid(
                    "mqtt.credentials",
                    format!("{name:?}: password_sha256 must be 64 hex digits"),
                ));
            };
            credentials.push(MqttCredential {
                username: name.to_owned(),
                password_sha256: Digest(digest),
            });
        }
        if !(64 * 1024..=1 << 30).contains(&self.embedded_retention_bytes) {
            return Err(invalid(
                "mqtt.embedded_retention_bytes",
                "must be from 65536 to 1073741824",
            ));
        }
        if !(2048..=1 << 30).contains(&self.embedded_client_retention_bytes) {
            return Err(invalid(
                "mqtt.embedded_client_retention_bytes",
                "must be from 2048 to 1073741824",
            ));
        }
        if !(1..=100_000).contains(&self.embedded_max_connections) {
            return Err(invalid(
                "mqtt.embedded_max_connections",
                "must be from 1 to 100000",
            ));
        }
        Ok(credentials)
    }
}

impl MqttSettings {
    /// `mqtt.topics` as written.
    pub fn topic_strings(&self) -> Vec<String> {
        self.topics.iter().map(|t| t.as_str().to_owned()).collect()
    }
}
