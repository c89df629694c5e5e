//! Typed, validated settings.
//!
//! Sources, later ones winning: the embedded `config/default.toml`, an
//! optional file (`--config PATH`), then `EDGEBUS__SECTION__KEY` environment
//! variables (lists comma-separated). Each section is read as written (every
//! section refuses unknown keys), then validated by its own `validate`, which
//! names the key and the rule it breaks, so a bad value stops the process
//! with one line instead of failing later. What comes out is typed: the
//! broker URL, topic filters, roles, addresses, durations and key digests are
//! parsed here once, and nothing downstream parses them again.
//!
//! Did you add a key? Document it in docs/configuration.md's settings table too.

mod alerts;
mod auth;
mod bus;
mod cluster;
mod compat;
mod decnet;
mod edgewatch;
mod http;
mod jwt;
mod mqtt;
mod nats;
mod registry;
mod sessions;
mod slack;
mod storage;
mod uploads;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use config::{Config, Environment, File, FileFormat};
use serde::Deserialize;

pub use alerts::AlertSettings;
pub use auth::{ApiKey, AuthSettings, Role, JWT_NAME_PREFIX};
pub use bus::BusSettings;
pub use cluster::ClusterSettings;
pub use compat::{CompatSettings, CorsOrigins, IpNet, SecureTeaSettings};
pub use decnet::DecnetSettings;
pub use edgewatch::EdgeWatchSettings;
pub use http::HttpSettings;
pub use jwt::{JwtKey, JwtSettings, MIN_HS256_SECRET};
pub use mqtt::{BrokerUrl, MqttCredential, MqttMode, MqttSettings, MAX_PAYLOAD_LIMIT};
pub use nats::{NatsLogin, NatsSettings};
pub use registry::RegistrySettings;
pub use sessions::SessionSettings;
pub use slack::SlackSettings;
pub use storage::{HostHealthSettings, StorageSettings};
pub use uploads::{S3Settings, UploadSettings, UploadStoreSettings};

pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

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

fn at_least(key: &str, value: u64, min: u64) -> Result<(), SettingsError> {
    if value < min {
        Err(invalid(key, format!("must be at least {min}")))
    } else {
        Ok(())
    }
}

fn in_range(key: &str, value: usize, max: usize) -> Result<(), SettingsError> {
    if (1..=max).contains(&value) {
        Ok(())
    } else {
        Err(invalid(key, format!("must be from 1 to {max}")))
    }
}

/// Durations written as whole seconds or milliseconds.
mod de {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }

    pub fn milliseconds<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
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

/// The SHA-256 of a secret (an API key, a device password): what is kept
/// of it to compare against. Not printed by `Debug` either.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of(bytes: &[u8]) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"[sha256]\"")
    }
}

/// The validated settings, one typed section per `[table]`.
#[derive(Debug, Clone)]
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
    pub uploads: UploadSettings,
    pub compat: CompatSettings,
    /// `Some` in cluster mode (`cluster.redis_url` set).
    pub cluster: Option<ClusterSettings>,
    /// `Some` when the NATS source is on (`nats.url` set).
    pub nats: Option<NatsSettings>,
    /// Deprecated keys in use, one sentence each: logged as WARN at start.
    pub warnings: Vec<String>,
}

/// The settings as written, before validation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    http: http::RawHttp,
    mqtt: mqtt::RawMqtt,
    registry: registry::RawRegistry,
    bus: BusSettings,
    sessions: SessionSettings,
    auth: auth::RawAuth,
    alerts: alerts::RawAlerts,
    slack: SlackSettings,
    storage: StorageSettings,
    host_health: HostHealthSettings,
    uploads: uploads::RawUploads,
    compat: compat::RawCompat,
    cluster: cluster::RawCluster,
    nats: nats::RawNats,
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

impl Settings {
    pub fn load(sources: SettingsSources) -> Result<Self, SettingsError> {
        // What the operator wrote, apart from the defaults: a renamed key set
        // under both names is a conflict only if both came from them.
        let mut builder = Config::builder();
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
            .with_list_parse_key("http.cors_origins")
            .with_list_parse_key("auth.jwt.algorithms")
            .with_list_parse_key("uploads.episode_types")
            .with_list_parse_key("uploads.benign_profiles")
            .with_list_parse_key("nats.subjects")
            .with_list_parse_key("nats.allow_topics")
            .with_list_parse_key("compat.securetea.allowed_sources")
            .with_list_parse_key("compat.securetea.socketio_cors_origins")
            .source(sources.env.clone());
        let written = builder.add_source(env).build()?;
        let sets = |key: &str| written.get::<config::Value>(key).is_ok();
        let user_set_active_window = sets("registry.active_window_seconds");

        let raw: RawSettings = Config::builder()
            .add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml))
            .add_source(written)
            .build()?
            .try_deserialize()?;
        raw.validate(user_set_active_window)
    }

    /// Defaults plus `toml`, ignoring the process environment.
    pub fn from_toml(toml: &str) -> Result<Self, SettingsError> {
        Self::load(SettingsSources {
            toml: Some(toml.to_owned()),
            env: Some(HashMap::new()),
            ..Default::default()
        })
    }
}

impl RawSettings {
    /// Section by section, in the order of `config/default.toml`.
    fn validate(self, user_set_active_window: bool) -> Result<Settings, SettingsError> {
        let mut warnings = Vec::new();
        let http = self.http.validate()?;
        let mqtt = self.mqtt.validate()?;
        let registry = self
            .registry
            .validate(user_set_active_window, &mut warnings)?;
        self.bus.validate(mqtt.max_payload_bytes)?;
        self.sessions.validate()?;
        let auth = self.auth.validate()?;
        // With no credentials configured every GET answers anyone: `*` would
        // let any web page a user visits read this edgebus through their
        // browser.
        let open = auth.api_keys.is_empty() && auth.ws_token.is_empty() && auth.jwt.is_none();
        if open && http.cors_origins.iter().any(|o| o == "*") {
            return Err(invalid(
                "http.cors_origins",
                "\"*\" needs credentials (auth.api_keys, auth.ws_token or auth.jwt): in open dev mode any site could read every stream; list the GUI's origin instead",
            ));
        }
        let alerts = self.alerts.validate()?;
        self.slack.validate()?;
        self.storage.validate()?;
        self.host_health.validate()?;
        let uploads = self.uploads.validate(&self.storage.data_dir)?;
        let compat = self.compat.validate()?;
        // A locked service with a listener anyone may read would have a side
        // door: the dashboards' listener must ask for its token too.
        if !open && compat.edgewatch.enabled && compat.edgewatch.token.is_empty() {
            return Err(invalid(
                "compat.edgewatch.token",
                "must be set when auth is configured: without it anyone who reaches compat.edgewatch.bind reads every device's metrics",
            ));
        }
        let cluster = self.cluster.validate(mqtt.mode)?;
        let nats = self.nats.validate()?;
        Ok(Settings {
            http,
            mqtt,
            registry,
            bus: self.bus,
            sessions: self.sessions,
            auth,
            alerts,
            slack: self.slack,
            storage: self.storage,
            host_health: self.host_health,
            uploads,
            compat,
            cluster,
            nats,
            warnings,
        })
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
    use std::time::Duration;

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
        assert_eq!(s.bus.queue_capacity, 65_536);
        assert_eq!(s.bus.queue_bytes, 16 << 20);
        assert_eq!(s.bus.queue_reserved_bytes, 256 << 10);
        assert_eq!(s.bus.queue_pool_bytes, 64 << 20);
        assert_eq!(s.alerts.rules[0].above, Some(90.0));
        assert_eq!(
            s.mqtt.url,
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
        assert_eq!(s.mqtt.url.port, 8884);
        assert!(s.mqtt.url.tls);
        assert_eq!(s.mqtt.topic_strings(), vec!["devices/+/metrics", "plant/#"]);
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
            ("[bus]\nqueue_reserved_bytes = 1000", "bus.queue_reserved_bytes"),
            ("[bus]\nqueue_reserved_bytes = 262144\nqueue_bytes = 100000", "bus.queue_bytes"),
            ("[bus]\nqueue_pool_bytes = 2000000000000", "bus.queue_pool_bytes"),
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
            ("[nats]\nurl = \"http://x\"", "nats.url"),
            ("[nats]\nurl = \"nats://u:p@x\"", "nats.url"),
            ("[nats]\nurl = \"nats://x\"\nuser = \"u\"", "nats.password"),
            ("[nats]\nurl = \"nats://x\"\ntoken = \"t\"\ncreds_file = \"c\"", "nats.token"),
            ("[nats]\nurl = \"nats://x\"\nca_cert = \"ca.pem\"", "nats.ca_cert"),
            ("[nats]\nurl = \"nats://x\"\nsubjects = []", "nats.subjects"),
            ("[nats]\nurl = \"nats://x\"\nsubjects = [\"a.>.b\"]", "nats.subjects"),
            ("[nats]\nurl = \"nats://x\"\nallow_topics = [\"a/#/b\"]", "nats.allow_topics"),
            ("[nats]\nurl = \"nats://x\"\nbackoff_min_seconds = 0", "nats.backoff_min_seconds"),
            ("[nats]\nurl = \"nats://x\"\n[[nats.map]]\nsubject = \"a.b\"\ntopic = \"x/{3}\"", "nats.map[0]"),
        ];
        for (toml, key) in table {
            let line = error_line(toml);
            assert!(line.contains(&format!("`{key}`")), "{toml:?} gave {line:?}");
            assert!(!line.contains('\n'), "one line: {line:?}");
        }
    }

    #[test]
    fn cors_origins_are_origins_or_a_lone_star_also_from_the_environment() {
        assert!(Settings::from_toml("")
            .unwrap()
            .http
            .cors_origins
            .is_empty());
        let s = Settings::from_toml(
            "[http]\ncors_origins = [\"https://gui.example/\", \"http://10.0.0.5:5173\", \"https://gui.example\"]",
        )
        .unwrap();
        assert_eq!(
            s.http.cors_origins,
            vec!["https://gui.example", "http://10.0.0.5:5173"]
        );
        let star = Settings::from_toml(&format!("[http]\ncors_origins = [\"*\"]\n{KEYS}")).unwrap();
        assert_eq!(star.http.cors_origins, vec!["*"]);
        for bad in [
            "[\"*\", \"https://a.example\"]",
            "[\"gui.example\"]",
            "[\"https://gui.example/app\"]",
            "[\"ftp://gui.example\"]",
            "[\"https://u@gui.example\"]",
        ] {
            let line = error_line(&format!("[http]\ncors_origins = {bad}"));
            assert!(line.contains("`http.cors_origins`"), "{bad}: {line}");
        }
        let from_env = Settings::load(SettingsSources {
            env: Some(env(&[
                (
                    "EDGEBUS__HTTP__CORS_ORIGINS",
                    "https://a.example,https://b.example",
                ),
                (
                    "EDGEBUS__AUTH__JWT__HS256_SECRET",
                    "env-hs256-secret-of-at-least-32-bytes",
                ),
                ("EDGEBUS__AUTH__JWT__ISSUER", "https://idp.example"),
                ("EDGEBUS__AUTH__JWT__AUDIENCE", "edgebus"),
                ("EDGEBUS__AUTH__JWT__ALGORITHMS", "HS256,HS512"),
            ])),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(from_env.http.cors_origins.len(), 2);
        let jwt = from_env.auth.jwt.unwrap();
        assert_eq!(jwt.algorithms.len(), 2);
        assert_eq!(jwt.issuer, "https://idp.example");
        assert!(error_line("[http]\ncors_max_age_seconds = 100000")
            .contains("`http.cors_max_age_seconds`"));
    }

    const KEYS: &str =
        "[auth]\napi_keys = [{ name = \"gui\", key = \"settings-test-key-0123456789\", roles = [\"viewer\"] }]";

    #[test]
    fn cors_for_any_origin_needs_credentials() {
        let line = error_line("[http]\ncors_origins = [\"*\"]");
        assert!(line.contains("`http.cors_origins`"), "{line}");
        let with_keys = Settings::from_toml(&format!("[http]\ncors_origins = [\"*\"]\n{KEYS}"));
        assert!(with_keys.is_ok(), "{with_keys:?}");
    }

    #[test]
    fn the_nats_source_is_off_by_default_and_defaults_to_decnet_subjects() {
        assert!(Settings::from_toml("").unwrap().nats.is_none());
        let s = Settings::load(SettingsSources {
            env: Some(env(&[
                ("EDGEBUS__NATS__URL", "tls://nats.example:4443"),
                ("EDGEBUS__NATS__TOKEN", "s3cret-token"),
            ])),
            ..Default::default()
        })
        .unwrap();
        let nats = s.nats.unwrap();
        assert_eq!(nats.url, "tls://nats.example:4443");
        assert_eq!(nats.login, NatsLogin::Token(Secret::new("s3cret-token")));
        assert_eq!(
            nats.subjects,
            edgebus_actors::ingest::subject::DECNET_SUBJECTS.map(String::from)
        );
        assert!(!format!("{nats:?}").contains("s3cret"));

        let s = Settings::from_toml(
            "[nats]\nurl = \"nats://127.0.0.1:4300\"\nuser = \"edge\"\npassword = \"pw\"\n\
             [[nats.map]]\nsubject = \"plant.*.>\"\ntopic = \"plants/{1}/{>}\"",
        )
        .unwrap();
        let nats = s.nats.unwrap();
        assert_eq!(nats.map.len(), 1);
        assert!(matches!(nats.login, NatsLogin::UserPassword { .. }));
    }

    #[test]
    fn the_active_window_is_read_in_seconds() {
        let s = Settings::from_toml("[registry]\nactive_window_seconds = 12").unwrap();
        assert_eq!(s.registry.active_window, Duration::from_secs(12));
        assert!(s.warnings.is_empty());
        assert!(error_line("[registry]\nactive_window_seconds = 0")
            .contains("`registry.active_window_seconds`"));
    }

    #[test]
    fn the_old_name_of_the_active_window_still_applies_with_a_warning() {
        let from_file = Settings::from_toml("[registry]\nprune_seconds = 7").unwrap();
        let from_env = Settings::load(SettingsSources {
            env: Some(env(&[("EDGEBUS__REGISTRY__PRUNE_SECONDS", "7")])),
            ..Default::default()
        })
        .unwrap();
        for s in [from_file, from_env] {
            assert_eq!(s.registry.active_window, Duration::from_secs(7));
            assert_eq!(s.warnings.len(), 1);
            let warning = &s.warnings[0];
            assert!(warning.contains("`registry.prune_seconds`"), "{warning}");
            assert!(
                warning.contains("`registry.active_window_seconds`"),
                "{warning}"
            );
        }
        assert!(error_line("[registry]\nprune_seconds = 0").contains("`registry.prune_seconds`"));
    }

    #[test]
    fn both_names_of_the_active_window_are_refused_together() {
        let from_file = error_line("[registry]\nprune_seconds = 7\nactive_window_seconds = 8");
        let from_file_and_env = Settings::load(SettingsSources {
            toml: Some("[registry]\nprune_seconds = 7".into()),
            env: Some(env(&[("EDGEBUS__REGISTRY__ACTIVE_WINDOW_SECONDS", "8")])),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        for line in [from_file, from_file_and_env] {
            assert!(line.contains("registry.prune_seconds"), "{line}");
            assert!(line.contains("registry.active_window_seconds"), "{line}");
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

    #[test]
    fn cluster_mode_is_off_by_default_and_needs_an_external_broker() {
        assert!(Settings::from_toml("").unwrap().cluster.is_none());
        assert_eq!(
            error_line("[cluster]\nredis_url = \"redis://127.0.0.1:6379\""),
            "invalid setting `mqtt.mode`: cluster mode (cluster.redis_url) needs mqtt.mode = \
             \"external\": every instance must read one shared broker"
        );
        let s = Settings::from_toml(
            "[mqtt]\nmode = \"external\"\n[cluster]\nredis_url = \"redis://:pw@127.0.0.1:6379/2\"",
        )
        .unwrap();
        let cluster = s.cluster.unwrap();
        assert_eq!(cluster.stream_key(), "edgebus:events");
        assert!(cluster.instance_id.len() > 7, "{}", cluster.instance_id);
        assert!(
            !format!("{cluster:?}").contains("pw@"),
            "the URL is a secret"
        );
        assert!(
            error_line("[mqtt]\nmode = \"external\"\n[cluster]\nredis_url = \"http://x\"")
                .contains("`cluster.redis_url`")
        );
        assert!(error_line(
            "[mqtt]\nmode = \"external\"\n[cluster]\nredis_url = \"redis://x\"\ngroup = \"a/b\""
        )
        .contains("`cluster.group`"));
    }
}
