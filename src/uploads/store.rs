//! Where uploads are kept, through `object_store`: a local directory or an
//! S3-compatible bucket, with one layout and one commit protocol for both.
//!
//! - `{host}/{episode}.tar.zst`: the upload, visible only once whole and
//!   verified;
//! - `.records/{host}/{episode}.json`: its [`Record`] (hash, size, labels),
//!   created with a create-only put: **the commit point**. Whoever creates
//!   the record owns the id; everyone else compares hashes against it;
//! - `.tmp/{random}`: a body being received. Host ids cannot start with a
//!   dot, so these never collide with a host's directory.
//!
//! An upload is streamed into a temporary object while it is hashed (a part
//! at a time: memory per upload is about two parts, whatever its size),
//! checked against its declared hash and size, then committed: the record is
//! created, and the temporary object renamed into place. A crash before the
//! record leaves only a temporary object (swept at start; on S3 also an
//! incomplete multipart upload, for the bucket's lifecycle rule); a crash
//! between the record and the rename leaves a record without its upload,
//! which the next upload of the same bytes completes.
//!
//! On a local directory every write is fsynced (file and directory) before
//! it is renamed into place, and the rename is atomic. On S3 the record's
//! create-only put is a conditional `PUT` (`If-None-Match: *`), and the
//! rename a server-side copy then a delete: a reader never sees a partial
//! upload either way.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};

use edgebus_actors::frame::DeviceId;

use super::limits::Quota;
use super::request::SUFFIX;
use super::UploadError;
use crate::settings::UploadStoreSettings;

/// Parts written to a local directory: big enough to keep syscalls few,
/// small enough that an upload holds little memory.
const LOCAL_PART_BYTES: usize = 1024 * 1024;

/// Parts sent to S3, which refuses parts under 5 MiB (but the last).
const S3_PART_BYTES: usize = 8 * 1024 * 1024;

/// Largest record read back; records are a few hundred bytes.
const MAX_RECORD_BYTES: u64 = 16 * 1024;

const RECORDS: &str = ".records";
const TMP: &str = ".tmp";

/// What is kept of a stored upload, in the store and in `index.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub host_id: String,
    pub episode_id: String,
    pub sha256: String,
    pub size_bytes: u64,
    pub schema_version: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub episode_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub benign_profile: Option<String>,
    pub received_at: String,
    pub received_at_ms: u64,
}

/// What the store holds for an id already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    pub sha256: String,
    /// The upload itself is in place (a record without it is a commit a
    /// crash interrupted).
    pub present: bool,
    /// When the record was made.
    pub claimed_ms: u64,
}

/// A body received whole into a temporary object.
#[derive(Debug)]
pub struct Staged {
    path: Path,
    pub sha256: String,
    pub size: u64,
}

/// How committing a staged body ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    Stored,
    AlreadyPresent,
    Conflict { existing_sha256: String },
}

/// The bounds a body is received under.
#[derive(Debug, Clone, Copy)]
pub struct StageLimits<'a> {
    pub max_bytes: u64,
    pub idle_timeout: Duration,
    /// When the whole body must have arrived.
    pub deadline: tokio::time::Instant,
    pub quota: &'a Quota,
}

#[derive(Debug, Clone)]
pub struct EpisodeStore {
    objects: Arc<dyn ObjectStore>,
    part_bytes: usize,
    /// The local directory, for what `object_store` does not list (its own
    /// staging files).
    local_dir: Option<PathBuf>,
}

impl EpisodeStore {
    /// Opens the configured store (creating a local directory).
    pub fn open(settings: &UploadStoreSettings) -> Result<Self, UploadError> {
        match settings {
            UploadStoreSettings::Local { dir } => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    UploadError::Internal(format!("creating {}: {e}", dir.display()))
                })?;
                let local = LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| UploadError::Internal(e.to_string()))?
                    .with_fsync(true);
                Ok(Self {
                    objects: Arc::new(local),
                    part_bytes: LOCAL_PART_BYTES,
                    local_dir: Some(dir.clone()),
                })
            }
            UploadStoreSettings::S3(s3) => {
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(&s3.bucket)
                    .with_region(&s3.region)
                    .with_allow_http(s3.allow_http);
                if !s3.endpoint.is_empty() {
                    builder = builder.with_endpoint(&s3.endpoint);
                }
                if !s3.access_key_id.is_empty() {
                    builder = builder
                        .with_access_key_id(&s3.access_key_id)
                        .with_secret_access_key(s3.secret_access_key.expose());
                }
                let s3 = builder
                    .build()
                    .map_err(|e| UploadError::Internal(format!("uploads.s3: {e}")))?;
                Ok(Self {
                    objects: Arc::new(s3),
                    part_bytes: S3_PART_BYTES,
                    local_dir: None,
                })
            }
        }
    }

    /// A store over any `object_store` (tests wrap one to inject faults).
    pub fn with_objects(objects: Arc<dyn ObjectStore>, part_bytes: usize) -> Self {
        Self {
            objects,
            part_bytes,
            local_dir: None,
        }
    }

    /// Bytes a part holds while it is written: what one upload costs in
    /// memory, about twice this.
    pub fn part_bytes(&self) -> usize {
        self.part_bytes
    }

    pub fn upload_path(host: &DeviceId, episode: &DeviceId) -> Path {
        Path::from(format!("{host}/{episode}{SUFFIX}"))
    }

    fn record_path(host: &DeviceId, episode: &DeviceId) -> Path {
        Path::from(format!("{RECORDS}/{host}/{episode}.json"))
    }

    /// What is stored under this id already, if anything.
    pub async fn existing(
        &self,
        host: &DeviceId,
        episode: &DeviceId,
    ) -> Result<Option<Existing>, UploadError> {
        let record = self.read_record(host, episode).await?;
        let upload = Self::upload_path(host, episode);
        let present = match self.objects.head(&upload).await {
            Ok(_) => true,
            Err(object_store::Error::NotFound { .. }) => false,
            Err(e) => return Err(unavailable(e)),
        };
        match record {
            Some(record) => Ok(Some(Existing {
                sha256: record.sha256,
                present,
                claimed_ms: record.received_at_ms,
            })),
            // An upload put there without a record (copied in from the
            // receiver edgebus replaces): hashed once and recorded, so it is
            // never overwritten.
            None if present => self.adopt(host, episode).await.map(Some),
            None => Ok(None),
        }
    }

    /// Records an upload found without a record.
    async fn adopt(&self, host: &DeviceId, episode: &DeviceId) -> Result<Existing, UploadError> {
        let found = self
            .objects
            .get(&Self::upload_path(host, episode))
            .await
            .map_err(unavailable)?;
        let (size, modified) = (found.meta.size, found.meta.last_modified);
        let mut bytes = found.into_stream();
        let mut hasher = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        while let Some(chunk) = bytes.next().await {
            hasher.update(&chunk.map_err(unavailable)?);
        }
        let at = u64::try_from(modified.timestamp_millis()).unwrap_or(0);
        let record = Record {
            host_id: host.to_string(),
            episode_id: episode.to_string(),
            sha256: hex(hasher.finish().as_ref()),
            size_bytes: size,
            schema_version: crate::cis490::SCHEMA_VERSION.into(),
            commit: None,
            episode_type: None,
            benign_profile: None,
            received_at: edgebus_actors::alerts::clock::rfc3339(at),
            received_at_ms: at,
        };
        log::info!("Recorded {host}/{episode}{SUFFIX}, found without a record.");
        match self.create_record(&record).await {
            Ok(()) => Ok(Existing {
                sha256: record.sha256,
                present: true,
                claimed_ms: at,
            }),
            // Recorded meanwhile by another upload or instance.
            Err(_) => match self.read_record(host, episode).await? {
                Some(r) => Ok(Existing {
                    sha256: r.sha256,
                    present: true,
                    claimed_ms: r.received_at_ms,
                }),
                None => Err(UploadError::Unavailable(format!(
                    "the record of {host}/{episode} could not be made"
                ))),
            },
        }
    }

    async fn create_record(&self, record: &Record) -> Result<(), UploadError> {
        let (host, episode) = ids(record)?;
        let bytes = serde_json::to_vec(record).map_err(|e| UploadError::Internal(e.to_string()))?;
        self.objects
            .put_opts(
                &Self::record_path(&host, &episode),
                PutPayload::from(bytes),
                PutOptions::from(PutMode::Create),
            )
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    /// Removes a claim whose upload never landed (see `Uploads::receive`).
    pub async fn release_claim(
        &self,
        host: &DeviceId,
        episode: &DeviceId,
    ) -> Result<(), UploadError> {
        log::warn!(
            "Releasing the stale claim on {host}/{episode}{SUFFIX}: its upload never landed."
        );
        match self.objects.delete(&Self::record_path(host, episode)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn read_record(
        &self,
        host: &DeviceId,
        episode: &DeviceId,
    ) -> Result<Option<Record>, UploadError> {
        let found = match self.objects.get(&Self::record_path(host, episode)).await {
            Ok(found) => found,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(unavailable(e)),
        };
        if found.meta.size > MAX_RECORD_BYTES {
            return Err(UploadError::Internal(format!(
                "the record of {host}/{episode} is {} bytes, not one this version wrote",
                found.meta.size
            )));
        }
        let bytes = found.bytes().await.map_err(unavailable)?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| UploadError::Internal(format!("the record of {host}/{episode}: {e}")))
    }

    /// Receives `body` into a temporary object, hashing it, within
    /// `limits`; every byte received is reserved from the quota, and given
    /// back when the body is refused.
    pub async fn stage<S, E>(&self, body: S, limits: StageLimits<'_>) -> Result<Staged, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let path = Path::from(format!("{TMP}/{}", random_name()?));
        let upload = self
            .objects
            .put_multipart(&path)
            .await
            .map_err(unavailable)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_bytes);
        let mut hasher = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut size = 0u64;
        let received = receive(body, limits, &mut writer, &mut hasher, &mut size).await;
        let finished = match received {
            Ok(()) => writer.finish().await.map_err(unavailable),
            Err(e) => {
                // Nothing of a refused body stays behind.
                let _ = writer.abort().await;
                Err(e)
            }
        };
        if let Err(e) = finished {
            limits.quota.release(size);
            let _ = self.objects.delete(&path).await;
            return Err(e);
        }
        Ok(Staged {
            path,
            sha256: hex(hasher.finish().as_ref()),
            size,
        })
    }

    /// Drops a staged body (refused after it was received).
    pub async fn discard(&self, staged: Staged) {
        if let Err(e) = self.objects.delete(&staged.path).await {
            log::warn!(
                "Could not remove the temporary upload {}: {e}.",
                staged.path
            );
        }
    }

    /// Makes `staged` the upload of its id, unless another upload owns the
    /// id (see the module's commit protocol).
    pub async fn commit(&self, record: &Record, staged: Staged) -> Result<Committed, UploadError> {
        let (host, episode) = ids(record)?;
        let bytes = serde_json::to_vec(record).map_err(|e| UploadError::Internal(e.to_string()))?;
        let create = PutOptions::from(PutMode::Create);
        let claimed = self
            .objects
            .put_opts(
                &Self::record_path(&host, &episode),
                PutPayload::from(bytes),
                create,
            )
            .await;
        match claimed {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => {
                let existing = match self.existing(&host, &episode).await {
                    Ok(existing) => existing,
                    Err(e) => {
                        self.discard(staged).await;
                        return Err(e);
                    }
                };
                match existing {
                    Some(e) if e.sha256 != staged.sha256 => {
                        self.discard(staged).await;
                        return Ok(Committed::Conflict {
                            existing_sha256: e.sha256,
                        });
                    }
                    Some(Existing { present: true, .. }) => {
                        self.discard(staged).await;
                        return Ok(Committed::AlreadyPresent);
                    }
                    // The id is ours by its hash, but its upload never
                    // landed: these same bytes finish the commit.
                    Some(Existing { present: false, .. }) => {}
                    // Someone's create won, and its record cannot be read
                    // yet (S3 answers a concurrent create with 409 before
                    // the winner's record is visible): never place bytes
                    // without owning the id.
                    None => {
                        self.discard(staged).await;
                        return Err(UploadError::Unavailable(format!(
                            "another upload of {host}/{episode} is being committed; retry"
                        )));
                    }
                }
            }
            Err(e) => {
                self.discard(staged).await;
                return Err(unavailable(e));
            }
        }
        let upload = Self::upload_path(&host, &episode);
        if let Err(e) = self.objects.rename(&staged.path, &upload).await {
            // A bucket renames by copy then delete: a failed delete leaves
            // the upload in place, stored.
            let placed = self.objects.head(&upload).await.is_ok();
            self.discard(staged).await;
            if !placed {
                return Err(unavailable(e));
            }
        }
        Ok(Committed::Stored)
    }

    /// At start: removes temporary objects left by a crash and returns the
    /// bytes stored, as the quota counts them. A local directory is this
    /// instance's alone, so everything temporary in it is left over; a
    /// bucket may be shared by instances receiving uploads now, so only
    /// what is older than `stale_after` is.
    pub async fn sweep_and_measure(&self, stale_after: Duration) -> Result<u64, UploadError> {
        let stale_after = if self.local_dir.is_some() {
            Duration::ZERO
        } else {
            stale_after
        };
        let cutoff = SystemTime::now()
            .checked_sub(stale_after)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        if let Some(dir) = &self.local_dir {
            sweep_local_staging(&dir.join(TMP), cutoff);
        }
        let mut used = 0u64;
        let mut listing = self.objects.list(None);
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(unavailable)?;
            let name = meta.location.as_ref();
            if name.starts_with(&format!("{TMP}/")) {
                if SystemTime::from(meta.last_modified) <= cutoff {
                    let _ = self.objects.delete(&meta.location).await;
                }
            } else if !name.starts_with(&format!("{RECORDS}/")) && name.ends_with(SUFFIX) {
                used = used.saturating_add(Quota::accounted(meta.size));
            }
        }
        Ok(used)
    }
}

/// Reads the body into `writer`, one part in flight at most.
async fn receive<S, E>(
    mut body: S,
    limits: StageLimits<'_>,
    writer: &mut WriteMultipart,
    hasher: &mut aws_lc_rs::digest::Context,
    size: &mut u64,
) -> Result<(), UploadError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    loop {
        let until = (tokio::time::Instant::now() + limits.idle_timeout).min(limits.deadline);
        let chunk = match tokio::time::timeout_at(until, body.next()).await {
            Err(_) => return Err(UploadError::Timeout(limits.idle_timeout)),
            Ok(None) => return Ok(()),
            Ok(Some(Err(e))) => return Err(UploadError::Body(e.to_string())),
            Ok(Some(Ok(chunk))) => chunk,
        };
        let len = chunk.len() as u64;
        if size.saturating_add(len) > limits.max_bytes {
            return Err(UploadError::TooLarge);
        }
        if !limits.quota.reserve(len) {
            return Err(UploadError::Full(limits.quota.max()));
        }
        *size += len;
        hasher.update(&chunk);
        writer.wait_for_capacity(1).await.map_err(unavailable)?;
        writer.put(chunk);
    }
}

/// `object_store` keeps a local multipart write in a staging file it does
/// not list; a crash leaves those behind.
fn sweep_local_staging(dir: &std::path::Path, cutoff: SystemTime) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t <= cutoff);
        if old {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn ids(record: &Record) -> Result<(DeviceId, DeviceId), UploadError> {
    match (
        DeviceId::parse(&record.host_id),
        DeviceId::parse(&record.episode_id),
    ) {
        (Ok(h), Ok(e)) => Ok((h, e)),
        _ => Err(UploadError::Internal("a record with bad ids".into())),
    }
}

/// A store error: the store is unreachable or refused; the client may retry.
fn unavailable(e: object_store::Error) -> UploadError {
    UploadError::Unavailable(e.to_string())
}

fn random_name() -> Result<String, UploadError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| UploadError::Internal("no randomness for a temporary name".into()))?;
    Ok(hex(&bytes))
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
