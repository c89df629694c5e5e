//! Typed, validated settings.
//!
//! Sources, later ones winning: the embedded `config/default.toml`, an
//! optional file (`--config PATH`), then `EDGEBUS__SECTION__KEY` environment
//! variables (lists comma-separated). Every section refuses unknown keys, and
//! [`Settings::validate`] names the key and the rule it breaks, so a bad
//! value stops the process with one line instead of failing later.
//!
//! Did you add a key? Document it in docs/configuration.md's settings table too.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use serde::Deserialize;

use edgebus_actors::ingest::MQTT_PACKET_LIMIT;
use edgebus_actors::topic::TopicFilter;

pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Largest `mqtt.max_payload_bytes` accepted: well under rumqttc's packet
/// limit, so an over-size frame is always ours to reject and count.
pub const MAX_PAYLOAD_LIMIT: usize = 4 * 1024 * 1024;
const _: () = assert!(MAX_PAYLOAD_LIMIT < MQTT_PACKET_LIMIT);

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid setting `{key}`: {rule}")]
    Invalid { key: String, rule: String },
}

fn invalid(key: impl Into<String>, rule: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        key: key.into(),
        rule: rule.into(),
    }
}

/// A secret (password, token, key, webhook URL): never printed by `Debug`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "\"[redacted]\""
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub http: HttpSettings,
    pub mqtt: MqttSettings,
    pub registry: RegistrySettings,
    pub bus: BusSettings,
    pub sessions: SessionSettings,
    pub auth: AuthSettings,
    pub alerts: AlertSettings,
    pub slack: SlackSettings,
    pub storage: StorageSettings,
    pub host_health: HostHealthSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub bind: String,
    pub allowed_origins: Vec<String>,
    pub workers: usize,
    /// Bearer token a scraper may present to `/metrics` instead of a key.
    pub metrics_token: Secret,
    /// `Idempotency-Key`s one identity may hold at once (24 h each).
    pub idempotency_keys_per_identity: usize,
    /// `Idempotency-Key`s held at once over all identities.
    pub idempotency_max_keys: usize,
}

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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSettings {
    pub mode: MqttMode,
    pub url: String,
    pub client_id: String,
    pub topics: Vec<String>,
    pub ca_cert: String,
    pub client_cert: String,
    pub client_key: String,
    pub username: String,
    pub password: Secret,
    pub backoff_min_seconds: u64,
    pub backoff_max_seconds: u64,
    pub max_payload_bytes: usize,
    pub keep_alive_seconds: u64,
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
/// the hex SHA-256 of its bytes, so the config file does not hold it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttCredential {
    pub username: String,
    pub password_sha256: Secret,
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySettings {
    pub prune_seconds: u64,
    pub max_devices: usize,
    pub silent_after_seconds: u64,
}

/// Bounds of `bus.history_bytes` and `bus.last_values_bytes`.
const MIN_BUS_BYTES: usize = 1 << 20;
const MAX_BUS_BYTES: usize = 1 << 40;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusSettings {
    pub queue_capacity: usize,
    pub history: usize,
    pub history_bytes: usize,
    pub last_values_bytes: usize,
    pub snapshot_max_events: usize,
    /// Bytes of accepted frames waiting in the registry's and bus's mailboxes.
    pub inflight_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSettings {
    pub keepalive_seconds: u64,
    pub ws_heartbeat_seconds: u64,
    pub ws_timeout_seconds: u64,
    pub write_timeout_seconds: u64,
    pub max_streams_per_identity: usize,
    /// Where callers share one identity (open mode, the legacy token), the
    /// stream cap is per source address instead.
    pub max_streams_per_address: usize,
    /// Streams open at once over all callers.
    pub max_streams: usize,
    pub ticket_ttl_seconds: u64,
    /// Unredeemed tickets one identity (or, for shared identities, one
    /// address) may hold at once.
    pub max_tickets_per_identity: usize,
    /// Unredeemed tickets held at once over all identities.
    pub max_tickets: usize,
    pub sse_retry_ms: u64,
    /// WebSocket client ops (subscribe/unsubscribe) per second, and burst.
    /// Streams one owner may open per second, and in a burst: each open
    /// costs the bus a snapshot or a replay.
    pub stream_opens_per_second: u32,
    pub stream_opens_burst: u32,
    pub ws_ops_per_second: u32,
    pub ws_ops_burst: u32,
    /// Topic filters named in those ops per second, and burst.
    pub ws_filters_per_second: u32,
    pub ws_filters_burst: u32,
    /// Events the bus puts into those ops' snapshots per second, and burst.
    pub ws_snapshot_events_per_second: u32,
    pub ws_snapshot_events_burst: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub ws_token: Secret,
    pub api_keys: Vec<ApiKeySettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySettings {
    pub name: String,
    /// The key itself, or `sha256:<64 hex>` of it.
    pub key: Secret,
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSettings {
    pub cooldown_seconds: u64,
    pub rules: Vec<AlertRuleSettings>,
    /// Security digests: at most one roll-up per attacker per window.
    pub digest_window_seconds: u64,
    /// …and at most this many roll-ups per window overall.
    pub max_digests_per_window: u32,
    /// A device with only rejected frames for this long is `rejecting`.
    pub rejecting_window_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRuleSettings {
    pub name: String,
    pub field: String,
    #[serde(default)]
    pub above: Option<f64>,
    #[serde(default)]
    pub below: Option<f64>,
    #[serde(default)]
    pub cooldown_seconds: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackSettings {
    pub webhook_url: Secret,
    pub summary_interval_seconds: u64,
    pub timeout_seconds: u64,
    /// Alerts waiting; digests and summaries have budgets of their own.
    pub outbox_capacity: usize,
    /// Digests waiting; when full the oldest digest goes, never an alert.
    pub digest_outbox_capacity: usize,
    /// Least time between two requests to the webhook (Slack: ~1/s).
    pub pace_milliseconds: u64,
    /// Back-off after a 5xx, timeout or connection error: first delay…
    pub retry_min_milliseconds: u64,
    /// …doubling up to this.
    pub retry_max_milliseconds: u64,
    /// How long shutdown waits for the outbox to empty.
    pub shutdown_flush_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    pub data_dir: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostHealthSettings {
    /// Hosts with a stored report; a new host beyond it is refused.
    pub max_hosts: usize,
    /// `GET /v1/host-health` listings streaming at once.
    pub max_concurrent_lists: usize,
}

/// Where settings come from. `Default` = embedded defaults + process env.
#[derive(Debug, Default, Clone)]
pub struct SettingsSources {
    /// `--config PATH`.
    pub file: Option<PathBuf>,
    /// Extra TOML applied after the file (tests, `edgebus demo`).
    pub toml: Option<String>,
    /// Environment to read instead of the process's (tests; never `set_var`).
    pub env: Option<HashMap<String, String>>,
}

const METRIC_FIELDS: [&str; 6] = [
    "cpu_percent",
    "mem_percent",
    "disk_percent",
    "gpu_percent",
    "agent_cpu_percent",
    "agent_mem_mb",
];

impl Settings {
    pub fn load(sources: SettingsSources) -> Result<Self, SettingsError> {
        let mut builder =
            Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        if let Some(path) = &sources.file {
            builder = builder.add_source(File::from(path.as_path()).format(FileFormat::Toml));
        }
        if let Some(toml) = &sources.toml {
            builder = builder.add_source(File::from_str(toml, FileFormat::Toml));
        }
        let env = Environment::with_prefix("EDGEBUS")
            .separator("__")
            .prefix_separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("mqtt.topics")
            .with_list_parse_key("http.allowed_origins")
            .source(sources.env.clone());
        let settings: Settings = builder.add_source(env).build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Defaults plus `toml`, ignoring the process environment.
    pub fn from_toml(toml: &str) -> Result<Self, SettingsError> {
        Self::load(SettingsSources {
            toml: Some(toml.to_owned()),
            env: Some(HashMap::new()),
            ..Default::default()
        })
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        let at_least = |key: &str, value: u64, min: u64| {
            if value < min {
                Err(invalid(key, format!("must be at least {min}")))
            } else {
                Ok(())
            }
        };
        self.http
            .bind
            .parse::<SocketAddr>()
            .map_err(|_| invalid("http.bind", "must be an address like 127.0.0.1:8080"))?;
        for origin in &self.http.allowed_origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return Err(invalid(
                    "http.allowed_origins",
                    format!("{origin:?} must be a scheme://host[:port] origin"),
                ));
            }
        }
        let metrics_token = self.http.metrics_token.expose();
        if !metrics_token.is_empty() && metrics_token.len() < 16 {
            return Err(invalid(
                "http.metrics_token",
                "must be empty or at least 16 characters",
            ));
        }
        let in_range = |key: &str, value: usize, max: usize| {
            if (1..=max).contains(&value) {
                Ok(())
            } else {
                Err(invalid(key, format!("must be from 1 to {max}")))
            }
        };
        in_range(
            "http.idempotency_max_keys",
            self.http.idempotency_max_keys,
            10_000_000,
        )?;
        in_range(
            "http.idempotency_keys_per_identity",
            self.http.idempotency_keys_per_identity,
            self.http.idempotency_max_keys,
        )?;

        let m = &self.mqtt;
        let url = BrokerUrl::parse(&m.url).map_err(|rule| invalid("mqtt.url", rule))?;
        if url.tls && m.mode == MqttMode::Embedded {
            return Err(invalid(
                "mqtt.url",
                "the embedded broker speaks plain mqtt://; use mode = \"external\" for mqtts://",
            ));
        }
        if m.client_id.is_empty() || m.client_id.len() > 128 {
            return Err(invalid("mqtt.client_id", "must be 1 to 128 characters"));
        }
        if m.topics.is_empty() {
            return Err(invalid(
                "mqtt.topics",
                "must list at least one topic filter",
            ));
        }
        for topic in &m.topics {
            TopicFilter::parse(topic)
                .map_err(|e| invalid("mqtt.topics", format!("{topic:?}: {e}")))?;
        }
        at_least("mqtt.backoff_min_seconds", m.backoff_min_seconds, 1)?;
        if m.backoff_max_seconds < m.backoff_min_seconds {
            return Err(invalid(
                "mqtt.backoff_max_seconds",
                "must be at least mqtt.backoff_min_seconds",
            ));
        }
        if !(64..=MAX_PAYLOAD_LIMIT).contains(&m.max_payload_bytes) {
            return Err(invalid(
                "mqtt.max_payload_bytes",
                format!("must be from 64 to {MAX_PAYLOAD_LIMIT}"),
            ));
        }
        if !(1..=65_535).contains(&m.keep_alive_seconds) {
            return Err(invalid(
                "mqtt.keep_alive_seconds",
                "must be from 1 to 65535",
            ));
        }
        if m.client_cert.is_empty() != m.client_key.is_empty() {
            return Err(invalid(
                "mqtt.client_cert",
                "client_cert and client_key must be set together (mutual TLS)",
            ));
        }
        let has_tls_files = !m.ca_cert.is_empty() || !m.client_cert.is_empty();
        if has_tls_files && !url.tls {
            return Err(invalid(
                "mqtt.url",
                "ca_cert / client_cert are set but the url is not mqtts://",
            ));
        }
        if m.username.is_empty() && !m.password.is_empty() {
            return Err(invalid(
                "mqtt.username",
                "must be set when mqtt.password is",
            ));
        }
        self.validate_embedded_broker()?;

        let r = &self.registry;
        at_least("registry.prune_seconds", r.prune_seconds, 1)?;
        at_least("registry.max_devices", r.max_devices as u64, 1)?;
        at_least("registry.silent_after_seconds", r.silent_after_seconds, 1)?;

        if !(1..=1_000_000).contains(&self.bus.queue_capacity) {
            return Err(invalid("bus.queue_capacity", "must be from 1 to 1000000"));
        }
        if self.bus.history > 10_000_000 {
            return Err(invalid("bus.history", "must be at most 10000000"));
        }
        // At least a few of the largest events must fit, or replay and
        // snapshots would silently keep nothing.
        if !(MIN_BUS_BYTES..=MAX_BUS_BYTES).contains(&self.bus.history_bytes) {
            return Err(invalid(
                "bus.history_bytes",
                "must be from 1048576 (1 MiB) to 1099511627776 (1 TiB)",
            ));
        }
        if !(MIN_BUS_BYTES..=MAX_BUS_BYTES).contains(&self.bus.last_values_bytes) {
            return Err(invalid(
                "bus.last_values_bytes",
                "must be from 1048576 (1 MiB) to 1099511627776 (1 TiB)",
            ));
        }
        // A frame of the largest allowed size must always fit.
        if !(MIN_BUS_BYTES..=MAX_BUS_BYTES).contains(&self.bus.inflight_bytes)
            || self.bus.inflight_bytes < 4 * self.mqtt.max_payload_bytes
        {
            return Err(invalid(
                "bus.inflight_bytes",
                "must be from 1048576 (1 MiB) to 1099511627776 (1 TiB), and at least 4 × mqtt.max_payload_bytes",
            ));
        }
        if !(1..=1_000_000).contains(&self.bus.snapshot_max_events) {
            return Err(invalid(
                "bus.snapshot_max_events",
                "must be from 1 to 1000000",
            ));
        }

        let s = &self.sessions;
        at_least("sessions.keepalive_seconds", s.keepalive_seconds, 1)?;
        at_least("sessions.ws_heartbeat_seconds", s.ws_heartbeat_seconds, 1)?;
        if s.ws_timeout_seconds <= s.ws_heartbeat_seconds {
            return Err(invalid(
                "sessions.ws_timeout_seconds",
                "must be greater than sessions.ws_heartbeat_seconds",
            ));
        }
        at_least("sessions.write_timeout_seconds", s.write_timeout_seconds, 1)?;
        at_least(
            "sessions.max_streams_per_identity",
            s.max_streams_per_identity as u64,
            1,
        )?;
        at_least(
            "sessions.max_streams_per_address",
            s.max_streams_per_address as u64,
            1,
        )?;
        in_range("sessions.max_streams", s.max_streams, 1_000_000)?;
        at_least("sessions.ticket_ttl_seconds", s.ticket_ttl_seconds, 1)?;
        in_range("sessions.max_tickets", s.max_tickets, 10_000_000)?;
        in_range(
            "sessions.max_tickets_per_identity",
            s.max_tickets_per_identity,
            s.max_tickets,
        )?;
        if !(100..=600_000).contains(&s.sse_retry_ms) {
            return Err(invalid(
                "sessions.sse_retry_ms",
                "must be from 100 to 600000",
            ));
        }
        for (key, value) in [
            (
                "sessions.stream_opens_per_second",
                s.stream_opens_per_second,
            ),
            ("sessions.stream_opens_burst", s.stream_opens_burst),
            ("sessions.ws_ops_per_second", s.ws_ops_per_second),
            ("sessions.ws_ops_burst", s.ws_ops_burst),
            ("sessions.ws_filters_per_second", s.ws_filters_per_second),
            (
                "sessions.ws_snapshot_events_per_second",
                s.ws_snapshot_events_per_second,
            ),
            (
                "sessions.ws_snapshot_events_burst",
                s.ws_snapshot_events_burst,
            ),
        ] {
            if !(1..=1_000_000).contains(&value) {
                return Err(invalid(key, "must be from 1 to 1000000"));
            }
        }
        let most = edgebus_actors::bus::MAX_FILTERS_PER_SESSION as u32;
        if !(most..=1_000_000).contains(&s.ws_filters_burst) {
            return Err(invalid(
                "sessions.ws_filters_burst",
                "must be from 64 (one op's most filters) to 1000000",
            ));
        }

        self.validate_auth()?;
        self.validate_alerts()?;

        let slack = &self.slack;
        let hook = slack.webhook_url.expose();
        let is_http = hook.starts_with("https://") || hook.starts_with("http://");
        if !hook.is_empty() && !is_http {
            return Err(invalid(
                "slack.webhook_url",
                "must be an http(s):// URL or empty",
            ));
        }
        at_least(
            "slack.summary_interval_seconds",
            slack.summary_interval_seconds,
            1,
        )?;
        at_least("slack.timeout_seconds", slack.timeout_seconds, 1)?;
        at_least("slack.outbox_capacity", slack.outbox_capacity as u64, 1)?;
        at_least(
            "slack.digest_outbox_capacity",
            slack.digest_outbox_capacity as u64,
            1,
        )?;
        at_least("slack.pace_milliseconds", slack.pace_milliseconds, 1)?;
        at_least(
            "slack.retry_min_milliseconds",
            slack.retry_min_milliseconds,
            1,
        )?;
        if slack.retry_max_milliseconds < slack.retry_min_milliseconds {
            return Err(invalid(
                "slack.retry_max_milliseconds",
                "must be at least slack.retry_min_milliseconds",
            ));
        }
        if slack.shutdown_flush_seconds > 300 {
            return Err(invalid(
                "slack.shutdown_flush_seconds",
                "must be at most 300",
            ));
        }

        if self.storage.data_dir.is_empty() {
            return Err(invalid("storage.data_dir", "must not be empty"));
        }
        let hh = &self.host_health;
        if !(1..=1_000_000).contains(&hh.max_hosts) {
            return Err(invalid(
                "host_health.max_hosts",
                "must be from 1 to 1000000",
            ));
        }
        if !(1..=1024).contains(&hh.max_concurrent_lists) {
            return Err(invalid(
                "host_health.max_concurrent_lists",
                "must be from 1 to 1024",
            ));
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), SettingsError> {
        let mut names = std::collections::HashSet::new();
        for (i, key) in self.auth.api_keys.iter().enumerate() {
            let at = |field: &str| format!("auth.api_keys[{i}].{field}");
            if key.name.is_empty() || !names.insert(key.name.as_str()) {
                return Err(invalid(at("name"), "must be non-empty and unique"));
            }
            let secret = key.key.expose();
            match secret.strip_prefix("sha256:") {
                Some(hex) if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    return Err(invalid(
                        at("key"),
                        "sha256: must be followed by 64 hex digits",
                    ))
                }
                None if secret.len() < 16 => {
                    return Err(invalid(at("key"), "must be at least 16 characters"))
                }
                _ => {}
            }
            if key.roles.is_empty() {
                return Err(invalid(at("roles"), "must name at least one role"));
            }
            for role in &key.roles {
                if !matches!(role.as_str(), "viewer" | "publisher" | "admin") {
                    return Err(invalid(
                        at("roles"),
                        format!("{role:?} is not one of viewer, publisher, admin"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_alerts(&self) -> Result<(), SettingsError> {
        if self.alerts.digest_window_seconds < 1 {
            return Err(invalid(
                "alerts.digest_window_seconds",
                "must be at least 1",
            ));
        }
        if self.alerts.rejecting_window_seconds < 1 {
            return Err(invalid(
                "alerts.rejecting_window_seconds",
                "must be at least 1",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, rule) in self.alerts.rules.iter().enumerate() {
            let at = |field: &str| format!("alerts.rules[{i}].{field}");
            let name_ok = (1..=64).contains(&rule.name.len())
                && rule
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !name_ok || !names.insert(rule.name.as_str()) {
                return Err(invalid(
                    at("name"),
                    "must be unique and match ^[A-Za-z0-9_-]{1,64}$",
                ));
            }
            if edgebus_actors::alerts::rules::RESERVED_NAMES.contains(&rule.name.as_str()) {
                return Err(invalid(
                    at("name"),
                    format!("{:?} is reserved for edgebus's own detectors", rule.name),
                ));
            }
            if !METRIC_FIELDS.contains(&rule.field.as_str()) {
                return Err(invalid(
                    at("field"),
                    format!("must be one of {}", METRIC_FIELDS.join(", ")),
                ));
            }
            if rule.above.is_none() && rule.below.is_none() {
                return Err(invalid(
                    at("above"),
                    "a rule needs `above`, `below` or both",
                ));
            }
            if rule.above.iter().chain(&rule.below).any(|v| !v.is_finite()) {
                return Err(invalid(at("above"), "thresholds must be finite numbers"));
            }
        }
        Ok(())
    }

    fn validate_embedded_broker(&self) -> Result<(), SettingsError> {
        let m = &self.mqtt;
        if m.mode != MqttMode::External && !m.username.is_empty() && m.password.is_empty() {
            return Err(invalid(
                "mqtt.password",
                "must be set when mqtt.username is: the embedded broker would accept that name \
                 with no password",
            ));
        }
        let mut names: Vec<&str> = vec![m.username.as_str()];
        for credential in &m.credentials {
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
            if parse_sha256_hex(credential.password_sha256.expose()).is_none() {
                return Err(invalid(
                    "mqtt.credentials",
                    format!("{name:?}: password_sha256 must be 64 hex digits"),
                ));
            }
        }
        if !(64 * 1024..=1 << 30).contains(&m.embedded_retention_bytes) {
            return Err(invalid(
                "mqtt.embedded_retention_bytes",
                "must be from 65536 to 1073741824",
            ));
        }
        if !(2048..=1 << 30).contains(&m.embedded_client_retention_bytes) {
            return Err(invalid(
                "mqtt.embedded_client_retention_bytes",
                "must be from 2048 to 1073741824",
            ));
        }
        if !(1..=100_000).contains(&m.embedded_max_connections) {
            return Err(invalid(
                "mqtt.embedded_max_connections",
                "must be from 1 to 100000",
            ));
        }
        Ok(())
    }

    pub fn broker_url(&self) -> BrokerUrl {
        // validate() has checked it; an unparsable URL cannot reach here.
        BrokerUrl::parse(&self.mqtt.url).unwrap_or(BrokerUrl {
            tls: false,
            host: "127.0.0.1".into(),
            port: 1883,
        })
    }

    pub fn seconds(value: u64) -> Duration {
        Duration::from_secs(value)
    }
}

/// `hex` as the 32 bytes of a SHA-256 digest, or `None` if it is not 64
/// hex digits.
pub fn parse_sha256_hex(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let digit = |b: u8| (b as char).to_digit(16);
        out[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn error_line(toml: &str) -> String {
        Settings::from_toml(toml).unwrap_err().to_string()
    }

    #[test]
    fn the_default_config_parses_and_validates() {
        let s = Settings::from_toml("").unwrap();
        assert_eq!(s.mqtt.mode, MqttMode::Auto);
        assert_eq!(s.bus.queue_capacity, 256);
        assert_eq!(s.alerts.rules[0].above, Some(90.0));
        assert_eq!(
            s.broker_url(),
            BrokerUrl {
                tls: false,
                host: "127.0.0.1".into(),
                port: 1883
            }
        );
    }

    #[test]
    fn environment_overrides_files_including_lists() {
        let s = Settings::load(SettingsSources {
            toml: Some("[bus]\nqueue_capacity = 5".into()),
            env: Some(env(&[
                ("EDGEBUS__BUS__QUEUE_CAPACITY", "7"),
                ("EDGEBUS__MQTT__URL", "mqtts://broker.example:8884"),
                ("EDGEBUS__MQTT__TOPICS", "devices/+/metrics,plant/#"),
                ("EDGEBUS__MQTT__CLIENT_ID", "12345"),
                ("EDGEBUS__AUTH__WS_TOKEN", "s3cret"),
            ])),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.bus.queue_capacity, 7);
        assert_eq!(s.broker_url().port, 8884);
        assert!(s.broker_url().tls);
        assert_eq!(s.mqtt.topics, vec!["devices/+/metrics", "plant/#"]);
        assert_eq!(s.mqtt.client_id, "12345");
        assert_eq!(s.auth.ws_token.expose(), "s3cret");
    }

    #[test]
    fn a_config_file_is_read() {
        let dir = std::env::temp_dir().join(format!("edgebus-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("edgebus.toml");
        std::fs::write(&path, "[registry]\nmax_devices = 3\n").unwrap();
        let s = Settings::load(SettingsSources {
            file: Some(path),
            env: Some(HashMap::new()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.registry.max_devices, 3);
    }

    #[test]
    fn every_rule_names_its_key() {
        let table = [
            ("[bus]\nqueue_capacity = 0", "bus.queue_capacity"),
            ("[bus]\nhistory_bytes = 1000", "bus.history_bytes"),
            ("[bus]\ninflight_bytes = 1000", "bus.inflight_bytes"),
            ("[bus]\ninflight_bytes = 2000000\n[mqtt]\nmax_payload_bytes = 1000000", "bus.inflight_bytes"),
            ("[bus]\nlast_values_bytes = 0", "bus.last_values_bytes"),
            ("[bus]\nsnapshot_max_events = 0", "bus.snapshot_max_events"),
            ("[http]\nbind = \"nowhere\"", "http.bind"),
            ("[mqtt]\nurl = \"http://x\"", "mqtt.url"),
            ("[mqtt]\nurl = \"mqtt://host:99999\"", "mqtt.url"),
            ("[mqtt]\nmode = \"embedded\"\nurl = \"mqtts://h\"", "mqtt.url"),
            ("[mqtt]\ntopics = []", "mqtt.topics"),
            ("[mqtt]\ntopics = [\"a/#/b\"]", "mqtt.topics"),
            ("[mqtt]\nbackoff_min_seconds = 0", "mqtt.backoff_min_seconds"),
            ("[mqtt]\nbackoff_min_seconds = 10\nbackoff_max_seconds = 5", "mqtt.backoff_max_seconds"),
            ("[mqtt]\nmax_payload_bytes = 10", "mqtt.max_payload_bytes"),
            ("[mqtt]\nclient_id = \"\"", "mqtt.client_id"),
            ("[mqtt]\nurl = \"mqtts://h\"\nclient_cert = \"c.pem\"", "mqtt.client_cert"),
            ("[mqtt]\nca_cert = \"ca.pem\"", "mqtt.url"),
            ("[mqtt]\npassword = \"p\"", "mqtt.username"),
            ("[mqtt]\nusername = \"u\"", "mqtt.password"),
            (
                "[[mqtt.credentials]]\nusername = \"d\"\npassword_sha256 = \"abc\"",
                "mqtt.credentials",
            ),
            (
                "[[mqtt.credentials]]\nusername = \"\"\npassword_sha256 = \"00\"",
                "mqtt.credentials",
            ),
            ("[mqtt]\nembedded_retention_bytes = 1000", "mqtt.embedded_retention_bytes"),
            (
                "[mqtt]\nembedded_client_retention_bytes = 1000",
                "mqtt.embedded_client_retention_bytes",
            ),
            ("[mqtt]\nembedded_max_connections = 0", "mqtt.embedded_max_connections"),
            ("[registry]\nmax_devices = 0", "registry.max_devices"),
            ("[sessions]\nws_timeout_seconds = 5\nws_heartbeat_seconds = 10", "sessions.ws_timeout_seconds"),
            ("[sessions]\nws_ops_per_second = 0", "sessions.ws_ops_per_second"),
            ("[sessions]\nstream_opens_burst = 0", "sessions.stream_opens_burst"),
            ("[sessions]\nws_filters_burst = 63", "sessions.ws_filters_burst"),
            ("[auth]\napi_keys = [{ name = \"a\", key = \"short\", roles = [\"viewer\"] }]", "auth.api_keys[0].key"),
            ("[auth]\napi_keys = [{ name = \"a\", key = \"0123456789abcdef\", roles = [\"root\"] }]", "auth.api_keys[0].roles"),
            ("[alerts]\nrules = [{ name = \"x\", field = \"temperature\", above = 1.0 }]", "alerts.rules[0].field"),
            ("[alerts]\nrules = [{ name = \"x\", field = \"cpu_percent\" }]", "alerts.rules[0].above"),
            ("[alerts]\nrules = [{ name = \"a b\", field = \"cpu_percent\", above = 1.0 }]", "alerts.rules[0].name"),
            ("[slack]\nwebhook_url = \"ftp://x\"", "slack.webhook_url"),
            ("[alerts]\nrules = [{ name = \"silent\", field = \"cpu_percent\", above = 1.0 }]", "alerts.rules[0].name"),
            ("[alerts]\ndigest_window_seconds = 0", "alerts.digest_window_seconds"),
            ("[alerts]\nrejecting_window_seconds = 0", "alerts.rejecting_window_seconds"),
            ("[slack]\npace_milliseconds = 0", "slack.pace_milliseconds"),
            ("[slack]\nretry_min_milliseconds = 0", "slack.retry_min_milliseconds"),
            ("[slack]\nretry_min_milliseconds = 500\nretry_max_milliseconds = 100", "slack.retry_max_milliseconds"),
            ("[slack]\nshutdown_flush_seconds = 301", "slack.shutdown_flush_seconds"),
            ("[storage]\ndata_dir = \"\"", "storage.data_dir"),
            ("[http]\nmetrics_token = \"short\"", "http.metrics_token"),
            ("[http]\nidempotency_max_keys = 0", "http.idempotency_max_keys"),
            ("[http]\nidempotency_max_keys = 10\nidempotency_keys_per_identity = 11", "http.idempotency_keys_per_identity"),
            ("[sessions]\nmax_streams_per_address = 0", "sessions.max_streams_per_address"),
            ("[sessions]\nmax_tickets = 0", "sessions.max_tickets"),
            ("[sessions]\nmax_streams = 0", "sessions.max_streams"),
            ("[sessions]\nmax_tickets = 10\nmax_tickets_per_identity = 11", "sessions.max_tickets_per_identity"),
            ("[slack]\ndigest_outbox_capacity = 0", "slack.digest_outbox_capacity"),
            ("[host_health]\nmax_hosts = 0", "host_health.max_hosts"),
            ("[host_health]\nmax_concurrent_lists = 0", "host_health.max_concurrent_lists"),
        ];
        for (toml, key) in table {
            let line = error_line(toml);
            assert!(line.contains(&format!("`{key}`")), "{toml:?} gave {line:?}");
            assert!(!line.contains('\n'), "one line: {line:?}");
        }
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_refused() {
        assert!(error_line("[bus]\nqueue_capacty = 3").contains("queue_capacty"));
        assert!(error_line("[bus]\nqueue_capacity = \"many\"").contains("queue_capacity"));
        assert!(error_line("[mqtt]\nmode = \"sometimes\"").contains("mode"));
    }

    #[test]
    fn secrets_never_reach_debug_output() {
        let s =
            Settings::from_toml("[mqtt]\nusername = \"u\"\npassword = \"hunter2hunter2\"").unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn broker_urls_parse_with_default_ports() {
        assert_eq!(BrokerUrl::parse("mqtt://h").unwrap().port, 1883);
        assert_eq!(BrokerUrl::parse("mqtts://h").unwrap().port, 8883);
        assert_eq!(BrokerUrl::parse("mqtt://[::1]:1884").unwrap().host, "::1");
        assert!(BrokerUrl::parse("mqtt://u:p@h").is_err());
        assert!(BrokerUrl::parse("mqtt://").is_err());
        assert_eq!(BrokerUrl::parse("mqtt://[::1]").unwrap().port, 1883);
    }
}
