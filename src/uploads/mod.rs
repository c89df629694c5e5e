//! Fleet uploads: the CIS490 receiver's job. Lab hosts `PUT` artifacts
//! (`/v1/episodes/{host}/{episode}.tar.zst`) with the SHA-256 they must
//! have; each is received by [`Uploads::receive`]:
//!
//! - admitted within `uploads.max_concurrent` (and `max_concurrent_per_host`)
//!   ([`limits::Admission`]), one upload per id at a time
//!   ([`limits::KeyLocks`]);
//! - answered from the store's record when the id is taken (same hash:
//!   already present; another: conflict), without storing anything;
//! - otherwise streamed into a temporary object while hashed, bounded by
//!   `uploads.max_bytes`, `uploads.max_total_bytes` ([`limits::Quota`]) and
//!   `uploads.idle_timeout_seconds`, then committed ([`store`]) and logged
//!   in `index.jsonl` ([`index`]).
//!
//! The HTTP layer (`http::uploads`) reads the request's names and headers
//! ([`request`]), applies the version gate ([`gate`]) and turns every
//! outcome into a response and an `uploads/{host}` event.

pub mod gate;
pub mod index;
pub mod limits;
pub mod metrics;
pub mod request;
pub mod store;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use edgebus_actors::alerts::clock::rfc3339;
use edgebus_actors::event::now_ms;
use edgebus_actors::frame::DeviceId;

use self::index::IndexLog;
use self::limits::{Admission, Crowded, KeyLocks, Quota};
use self::metrics::UploadMetrics;
use self::request::RequestError;
use self::store::{Committed, EpisodeStore, Record, StageLimits};
use crate::settings::{Settings, UploadSettings, UploadStoreSettings};

/// How often a bucket out of reach at start is tried again.
const MEASURE_RETRY: Duration = Duration::from_secs(10);

/// A record whose upload is still missing this long after it was made is a
/// commit a crash interrupted; another upload may take the id. (A commit
/// takes milliseconds between its record and its rename.)
const STALE_CLAIM_MS: u64 = 10 * 60 * 1000;

/// In a shared bucket, a temporary object older than this at start was left
/// by a crash (an upload that sends nothing for `idle_timeout` is abandoned
/// long before).
const STALE_TMP_AFTER: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("episode exceeds max size")]
    TooLarge,
    #[error(
        "{} uploads are being received (uploads.{}); retry shortly",
        match .0 { Crowded::Instance(n) | Crowded::Host(n) => n },
        match .0 { Crowded::Instance(_) => "max_concurrent", Crowded::Host(_) => "max_concurrent_per_host for this host" }
    )]
    Busy(Crowded),
    #[error("the body sent nothing for {} seconds", .0.as_secs())]
    Timeout(Duration),
    #[error("the upload store is full (uploads.max_total_bytes = {0})")]
    Full(u64),
    #[error("reading the body: {0}")]
    Body(String),
    #[error("the upload store is unavailable: {0}")]
    Unavailable(String),
    #[error("uploads: {0}")]
    Internal(String),
}

/// What a valid request asks to store.
#[derive(Debug, Clone)]
pub struct Upload {
    pub host: DeviceId,
    pub episode: DeviceId,
    pub sha256: String,
    pub schema_version: i64,
    pub commit: Option<String>,
    pub episode_type: Option<String>,
    pub benign_profile: Option<String>,
}

/// How an upload ended, when it was not refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Stored { sha256: String, size_bytes: u64 },
    AlreadyPresent { sha256: String },
    Conflict { existing_sha256: String },
    ShaMismatch { actual_sha256: String },
}

#[derive(Debug)]
pub struct Uploads {
    settings: UploadSettings,
    store: EpisodeStore,
    index: Arc<IndexLog>,
    admission: Arc<Admission>,
    quota: Arc<Quota>,
    /// The store's contents have been counted into the quota (a bucket out
    /// of reach at start is counted when it answers; uploads wait for it).
    measured: Arc<AtomicBool>,
    pub metrics: UploadMetrics,
    keys: KeyLocks,
}

impl Uploads {
    /// Opens the store, sweeps what a crash left, and counts what is stored.
    pub async fn open(
        settings: &Settings,
        registry: &prometheus::Registry,
    ) -> Result<Self, UploadError> {
        let store = EpisodeStore::open(&settings.uploads.store)?;
        Self::with_store(settings, store, registry).await
    }

    /// As [`Uploads::open`], over a given store (tests inject faults).
    pub async fn with_store(
        settings: &Settings,
        store: EpisodeStore,
        registry: &prometheus::Registry,
    ) -> Result<Self, UploadError> {
        let uploads = &settings.uploads;
        let quota = Arc::new(Quota::new(0, uploads.max_total_bytes));
        let measured = Arc::new(AtomicBool::new(false));
        match store.sweep_and_measure(STALE_TMP_AFTER).await {
            Ok(used) => {
                quota.add(used);
                measured.store(true, Ordering::Release);
            }
            // A directory that cannot be read is a broken setup: stop.
            Err(e) if matches!(uploads.store, UploadStoreSettings::Local { .. }) => return Err(e),
            // A bucket may be briefly out of reach: the rest of edgebus
            // starts, and uploads answer 503 until it is counted.
            Err(e) => {
                log::error!("Uploads: the bucket could not be listed ({e}); retrying.");
                let (store, quota, measured) = (store.clone(), quota.clone(), measured.clone());
                actix_web::rt::spawn(async move {
                    loop {
                        actix_web::rt::time::sleep(MEASURE_RETRY).await;
                        if let Ok(used) = store.sweep_and_measure(STALE_TMP_AFTER).await {
                            quota.add(used);
                            measured.store(true, Ordering::Release);
                            log::info!("Uploads: the bucket is counted; uploads are open.");
                            return;
                        }
                    }
                });
            }
        }
        let index_path = index_path(settings);
        let index = IndexLog::open(&index_path)
            .map_err(|e| UploadError::Internal(format!("opening {}: {e}", index_path.display())))?;
        let metrics = UploadMetrics::register(registry);
        metrics
            .stored_bytes
            .set(i64::try_from(quota.used()).unwrap_or(i64::MAX));
        Ok(Self {
            settings: uploads.clone(),
            store,
            index: Arc::new(index),
            admission: Arc::new(Admission::new(
                uploads.max_concurrent,
                uploads.max_concurrent_per_host,
            )),
            quota,
            measured,
            metrics,
            keys: KeyLocks::default(),
        })
    }

    pub fn settings(&self) -> &UploadSettings {
        &self.settings
    }

    pub fn index_path(&self) -> &std::path::Path {
        self.index.path()
    }

    /// Bytes stored, as the quota counts them.
    pub fn used_bytes(&self) -> u64 {
        self.quota.used()
    }

    /// Receives `body` as `upload` (see the module doc for each step).
    pub async fn receive<S, E>(&self, upload: &Upload, mut body: S) -> Result<Outcome, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        if !self.measured.load(Ordering::Acquire) {
            return Err(UploadError::Unavailable(
                "the upload store has not been measured yet".into(),
            ));
        }
        let _place = self
            .admission
            .admit(&upload.host)
            .map_err(UploadError::Busy)?;
        self.metrics.receiving.inc();
        let _receiving = scopeguard(&self.metrics.receiving);
        let deadline = tokio::time::Instant::now() + self.settings.max_duration;
        let key = format!("{}/{}", upload.host, upload.episode);
        let _id = tokio::time::timeout_at(deadline, self.keys.lock(key))
            .await
            .map_err(|_| UploadError::Timeout(self.settings.max_duration))?;
        if let Some(existing) = self.store.existing(&upload.host, &upload.episode).await? {
            let stale_claim =
                !existing.present && now_ms().saturating_sub(existing.claimed_ms) > STALE_CLAIM_MS;
            let answer = if stale_claim {
                // A claim whose upload never landed, long ago: the id is free.
                self.store
                    .release_claim(&upload.host, &upload.episode)
                    .await?;
                None
            } else if existing.sha256 != upload.sha256 {
                Some(Outcome::Conflict {
                    existing_sha256: existing.sha256,
                })
            } else if existing.present {
                Some(Outcome::AlreadyPresent {
                    sha256: existing.sha256,
                })
            } else {
                None // a commit a crash interrupted: these bytes finish it
            };
            if let Some(answer) = answer {
                self.drain(&mut body, deadline).await?;
                return Ok(answer);
            }
        }
        let limits = StageLimits {
            max_bytes: self.settings.max_bytes,
            idle_timeout: self.settings.idle_timeout,
            deadline,
            quota: &self.quota,
        };
        let staged = self.store.stage(body, limits).await?;
        let size = staged.size;
        if staged.sha256 != upload.sha256 {
            let actual_sha256 = staged.sha256.clone();
            self.quota.release(size);
            self.store.discard(staged).await;
            return Ok(Outcome::ShaMismatch { actual_sha256 });
        }
        let received = now_ms();
        let record = Record {
            host_id: upload.host.to_string(),
            episode_id: upload.episode.to_string(),
            sha256: upload.sha256.clone(),
            size_bytes: size,
            schema_version: upload.schema_version,
            commit: upload.commit.clone(),
            episode_type: upload.episode_type.clone(),
            benign_profile: upload.benign_profile.clone(),
            received_at: rfc3339(received),
            received_at_ms: received,
        };
        let committed = self.store.commit(&record, staged).await;
        if !matches!(committed, Ok(Committed::Stored)) {
            self.quota.release(size);
        }
        match committed? {
            Committed::Stored => {
                self.quota.settle(size);
                let (index, line) = (self.index.clone(), record.clone());
                let appended = actix_web::web::block(move || index.append(&line))
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))
                    .and_then(|r| r);
                if let Err(e) = appended {
                    // Stored and recorded in the store; only the log missed it.
                    log::error!(
                        "Could not append {}/{} to {}: {e}.",
                        record.host_id,
                        record.episode_id,
                        self.index.path().display()
                    );
                }
                Ok(Outcome::Stored {
                    sha256: record.sha256,
                    size_bytes: size,
                })
            }
            Committed::AlreadyPresent => Ok(Outcome::AlreadyPresent {
                sha256: record.sha256,
            }),
            Committed::Conflict { existing_sha256 } => Ok(Outcome::Conflict { existing_sha256 }),
        }
    }

    /// Reads a body that will not be kept to its end (within the same
    /// bounds as one that is), so a client that sends its whole body before
    /// reading the answer gets it instead of a reset connection.
    async fn drain<S, E>(
        &self,
        body: &mut S,
        deadline: tokio::time::Instant,
    ) -> Result<(), UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut size = 0u64;
        loop {
            let until = (tokio::time::Instant::now() + self.settings.idle_timeout).min(deadline);
            match tokio::time::timeout_at(until, body.next()).await {
                Err(_) => return Err(UploadError::Timeout(self.settings.idle_timeout)),
                Ok(None) => return Ok(()),
                Ok(Some(Err(e))) => return Err(UploadError::Body(e.to_string())),
                Ok(Some(Ok(chunk))) => {
                    size += chunk.len() as u64;
                    if size > self.settings.max_bytes {
                        return Err(UploadError::TooLarge);
                    }
                }
            }
        }
    }
}

/// `index.jsonl`: in the upload directory for a local store, in
/// `storage.data_dir` for a bucket (each instance logs what it stored).
fn index_path(settings: &Settings) -> PathBuf {
    match &settings.uploads.store {
        UploadStoreSettings::Local { dir } => dir.join("index.jsonl"),
        UploadStoreSettings::S3(_) => {
            PathBuf::from(&settings.storage.data_dir).join("uploads-index.jsonl")
        }
    }
}

/// Takes one off `gauge` when dropped, however the upload ends.
fn scopeguard(gauge: &prometheus::IntGauge) -> impl Drop + '_ {
    struct Dec<'a>(&'a prometheus::IntGauge);
    impl Drop for Dec<'_> {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    Dec(gauge)
}
