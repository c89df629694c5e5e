//! `[uploads]`: fleet uploads (`PUT /v1/episodes/{host}/{id}.tar.zst`),
//! where they are kept and every bound on them.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{de, invalid, Secret, SettingsError};
use crate::uploads::gate::GateSettings;

/// Where uploads are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadStoreSettings {
    /// A directory on this machine.
    Local { dir: PathBuf },
    /// An S3-compatible bucket, which several instances can share.
    S3(S3Settings),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    pub bucket: String,
    /// Empty = AWS itself; else an S3-compatible server's URL.
    pub endpoint: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: Secret,
    /// Allow a plain-HTTP endpoint (a server on the same host, tests).
    pub allow_http: bool,
}

#[derive(Debug, Clone)]
pub struct UploadSettings {
    pub enabled: bool,
    pub store: UploadStoreSettings,
    /// Largest upload accepted.
    pub max_bytes: u64,
    /// Everything stored together (on a shared bucket: counted at start,
    /// then what this instance adds); an upload that would pass it gets 507.
    pub max_total_bytes: u64,
    /// Uploads being received at once by this instance, all hosts together.
    pub max_concurrent: usize,
    /// Uploads being received at once for one host.
    pub max_concurrent_per_host: usize,
    /// A body that sends nothing for this long is abandoned (408).
    pub idle_timeout: Duration,
    /// An upload (its wait for another upload of its id included) must be
    /// done within this (408).
    pub max_duration: Duration,
    /// `X-Episode-Type` values kept; others are dropped and logged.
    pub episode_types: BTreeSet<String>,
    /// `X-Benign-Profile` values kept; others are dropped and logged.
    pub benign_profiles: BTreeSet<String>,
    /// Fleet detector: a host quiet this long after uploading is `silent`.
    pub silent_after: Duration,
    /// Fleet detector: the window `fatal-only` looks back over.
    pub fatal_window: Duration,
    /// Hosts the fleet detectors follow.
    pub max_hosts: usize,
    /// `[uploads.version_gate]`.
    pub version_gate: GateSettings,
}

/// The largest object S3 copies in one request: the rename into place.
const S3_MAX_COPY_BYTES: u64 = 5 * 1024 * 1024 * 1024;

/// `[uploads]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUploads {
    enabled: bool,
    store: String,
    dir: String,
    max_bytes: u64,
    max_total_bytes: u64,
    max_concurrent: usize,
    max_concurrent_per_host: usize,
    #[serde(rename = "idle_timeout_seconds", deserialize_with = "de::seconds")]
    idle_timeout: Duration,
    #[serde(rename = "max_duration_seconds", deserialize_with = "de::seconds")]
    max_duration: Duration,
    episode_types: Vec<String>,
    benign_profiles: Vec<String>,
    #[serde(rename = "silent_after_seconds", deserialize_with = "de::seconds")]
    silent_after: Duration,
    #[serde(rename = "fatal_window_seconds", deserialize_with = "de::seconds")]
    fatal_window: Duration,
    max_hosts: usize,
    s3: S3Settings,
    #[serde(default)]
    version_gate: GateSettings,
}

impl RawUploads {
    pub(super) fn validate(self, data_dir: &str) -> Result<UploadSettings, SettingsError> {
        if self.max_bytes == 0 {
            return Err(invalid("uploads.max_bytes", "must be at least 1"));
        }
        if self.max_total_bytes < self.max_bytes {
            return Err(invalid(
                "uploads.max_total_bytes",
                "must be at least uploads.max_bytes",
            ));
        }
        if !(1..=1024).contains(&self.max_concurrent) {
            return Err(invalid("uploads.max_concurrent", "must be from 1 to 1024"));
        }
        if !(1..=self.max_concurrent).contains(&self.max_concurrent_per_host) {
            return Err(invalid(
                "uploads.max_concurrent_per_host",
                "must be from 1 to uploads.max_concurrent",
            ));
        }
        if !(1..=3600).contains(&self.idle_timeout.as_secs()) {
            return Err(invalid(
                "uploads.idle_timeout_seconds",
                "must be from 1 to 3600",
            ));
        }
        if self.max_duration < self.idle_timeout || self.max_duration.as_secs() > 86_400 {
            return Err(invalid(
                "uploads.max_duration_seconds",
                "must be from uploads.idle_timeout_seconds to 86400",
            ));
        }
        if self.silent_after.is_zero() {
            return Err(invalid(
                "uploads.silent_after_seconds",
                "must be at least 1",
            ));
        }
        if self.fatal_window.is_zero() {
            return Err(invalid(
                "uploads.fatal_window_seconds",
                "must be at least 1",
            ));
        }
        if !(1..=1_000_000).contains(&self.max_hosts) {
            return Err(invalid("uploads.max_hosts", "must be from 1 to 1000000"));
        }
        self.version_gate
            .validate()
            .map_err(|(key, rule)| invalid(key, rule))?;
        let episode_types = closed_set("uploads.episode_types", self.episode_types)?;
        let benign_profiles = closed_set("uploads.benign_profiles", self.benign_profiles)?;
        let store = match self.store.as_str() {
            "local" => UploadStoreSettings::Local {
                dir: if self.dir.is_empty() {
                    PathBuf::from(data_dir).join("uploads")
                } else {
                    PathBuf::from(self.dir)
                },
            },
            "s3" => {
                if self.max_bytes > S3_MAX_COPY_BYTES {
                    return Err(invalid(
                        "uploads.max_bytes",
                        "must be at most 5 GiB with store = \"s3\" (S3 copies an object into place, and a copy is at most 5 GiB)",
                    ));
                }
                if self.s3.bucket.is_empty() {
                    return Err(invalid(
                        "uploads.s3.bucket",
                        "must be set when store = \"s3\"",
                    ));
                }
                if self.s3.region.is_empty() {
                    return Err(invalid("uploads.s3.region", "must not be empty"));
                }
                if self.s3.access_key_id.is_empty() != self.s3.secret_access_key.is_empty() {
                    return Err(invalid(
                        "uploads.s3.secret_access_key",
                        "access_key_id and secret_access_key are set together (or both empty: \
                         the environment's AWS credentials)",
                    ));
                }
                UploadStoreSettings::S3(self.s3)
            }
            other => {
                return Err(invalid(
                    "uploads.store",
                    format!("must be \"local\" or \"s3\" (got {other:?})"),
                ))
            }
        };
        Ok(UploadSettings {
            enabled: self.enabled,
            store,
            max_bytes: self.max_bytes,
            max_total_bytes: self.max_total_bytes,
            max_concurrent: self.max_concurrent,
            max_concurrent_per_host: self.max_concurrent_per_host,
            idle_timeout: self.idle_timeout,
            max_duration: self.max_duration,
            episode_types,
            benign_profiles,
            silent_after: self.silent_after,
            fatal_window: self.fatal_window,
            max_hosts: self.max_hosts,
            version_gate: self.version_gate,
        })
    }
}

/// A closed set of header values: lowercase words, as the headers are
/// compared after lowercasing.
fn closed_set(key: &str, values: Vec<String>) -> Result<BTreeSet<String>, SettingsError> {
    values
        .into_iter()
        .map(|v| {
            let ok = !v.is_empty()
                && v.len() <= 64
                && v.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                });
            if ok {
                Ok(v)
            } else {
                Err(invalid(
                    key,
                    format!("{v:?}: values are 1 to 64 of [a-z0-9_-]"),
                ))
            }
        })
        .collect()
}
