//! `[nats]`: NATS as a second event source (off while `url` is empty).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use edgebus_actors::ingest::subject::{validate_subject, Rule};
use edgebus_actors::topic::TopicFilter;

use super::{at_least, de, invalid, Secret, SettingsError};

/// `[nats]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNats {
    url: String,
    user: String,
    password: Secret,
    token: Secret,
    creds_file: String,
    ca_cert: String,
    subjects: Vec<String>,
    allow_topics: Vec<String>,
    #[serde(rename = "backoff_min_seconds", deserialize_with = "de::seconds")]
    backoff_min: Duration,
    #[serde(rename = "backoff_max_seconds", deserialize_with = "de::seconds")]
    backoff_max: Duration,
    map: Vec<RawMapRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapRule {
    subject: String,
    topic: String,
}

/// How edgebus logs in to the NATS server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsLogin {
    None,
    UserPassword { user: String, password: Secret },
    Token(Secret),
    CredsFile(PathBuf),
}

/// The NATS source's settings; `None` in [`super::Settings::nats`] when
/// `nats.url` is empty.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    pub url: String,
    pub login: NatsLogin,
    /// Trust for TLS; `None` = the system roots.
    pub ca_cert: Option<PathBuf>,
    pub subjects: Vec<String>,
    /// Topics a NATS frame may land on besides `mqtt.topics`.
    pub allow_topics: Vec<TopicFilter>,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// `nats.map`, in order, checked; tried before the built-in DECNET rules.
    pub map: Vec<Rule>,
}

impl RawNats {
    pub(super) fn validate(self) -> Result<Option<NatsSettings>, SettingsError> {
        if self.url.is_empty() {
            return Ok(None);
        }
        let tls = self.url.starts_with("tls://");
        let rest = self
            .url
            .strip_prefix("nats://")
            .or_else(|| self.url.strip_prefix("tls://"))
            .ok_or_else(|| invalid("nats.url", "must start with nats:// or tls://"))?;
        if rest.is_empty() || rest.contains(['/', '@', '?', '#', ',']) {
            return Err(invalid(
                "nats.url",
                "must be nats://host[:port] or tls://host[:port], with no user, path or query \
                 (credentials go in nats.user/password, nats.token or nats.creds_file)",
            ));
        }
        let ways = [
            !self.user.is_empty() || !self.password.is_empty(),
            !self.token.is_empty(),
            !self.creds_file.is_empty(),
        ];
        if ways.iter().filter(|w| **w).count() > 1 {
            return Err(invalid(
                "nats.token",
                "set one of nats.user + nats.password, nats.token or nats.creds_file",
            ));
        }
        let login = if !self.token.is_empty() {
            NatsLogin::Token(self.token)
        } else if !self.creds_file.is_empty() {
            NatsLogin::CredsFile(PathBuf::from(self.creds_file))
        } else if self.user.is_empty() != self.password.is_empty() {
            return Err(invalid(
                "nats.password",
                "nats.user and nats.password must be set together",
            ));
        } else if self.user.is_empty() {
            NatsLogin::None
        } else {
            NatsLogin::UserPassword {
                user: self.user,
                password: self.password,
            }
        };
        let ca_cert = (!self.ca_cert.is_empty()).then(|| PathBuf::from(&self.ca_cert));
        if ca_cert.is_some() && !tls {
            return Err(invalid("nats.ca_cert", "is for tls:// URLs only"));
        }
        if self.subjects.is_empty() {
            return Err(invalid("nats.subjects", "must list at least one subject"));
        }
        for subject in &self.subjects {
            validate_subject(subject).map_err(|e| invalid("nats.subjects", e.to_string()))?;
        }
        let allow_topics = self
            .allow_topics
            .iter()
            .map(|t| {
                TopicFilter::parse(t)
                    .map_err(|e| invalid("nats.allow_topics", format!("{t:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        at_least("nats.backoff_min_seconds", self.backoff_min.as_secs(), 1)?;
        if self.backoff_max < self.backoff_min {
            return Err(invalid(
                "nats.backoff_max_seconds",
                "must be at least nats.backoff_min_seconds",
            ));
        }
        let map = self
            .map
            .iter()
            .enumerate()
            .map(|(i, r)| {
                Rule::parse(&r.subject, &r.topic)
                    .map_err(|e| invalid(format!("nats.map[{i}]"), e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(NatsSettings {
            url: self.url,
            login,
            ca_cert,
            subjects: self.subjects,
            allow_topics,
            backoff_min: self.backoff_min,
            backoff_max: self.backoff_max,
            map,
        }))
    }
}
