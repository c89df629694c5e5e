//! The commit protocol's crash windows and the quota's accounting, over a
//! local directory wrapped in a store that fails on demand.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{self, BoxStream};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};

use super::limits::Quota;
use super::store::EpisodeStore;
use super::{Outcome, Upload, UploadError, Uploads};
use crate::settings::Settings;
use edgebus_actors::frame::DeviceId;

/// A local directory whose renames fail while `fail_renames` is set: a
/// crash after the record is created and before the upload is in place.
#[derive(Debug)]
struct Faulty {
    inner: LocalFileSystem,
    fail_renames: AtomicBool,
}

impl fmt::Display for Faulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Faulty {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        if self.fail_renames.load(Ordering::SeqCst) {
            return Err(object_store::Error::Generic {
                store: "faulty",
                source: "the process died before the rename".into(),
            });
        }
        self.inner.rename_opts(from, to, options).await
    }
}

fn temp_dir() -> PathBuf {
    let mut bytes = [0u8; 8];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    let dir = std::env::temp_dir().join(format!("edgebus-store-{}", super::store::hex(&bytes)));
    std::fs::create_dir_all(dir.join("uploads")).unwrap();
    dir
}

async fn uploads(dir: &std::path::Path, fail_renames: bool) -> (Uploads, Arc<Faulty>) {
    let settings = Settings::from_toml(&format!(
        "[storage]\ndata_dir = \"{}\"\n[uploads]\nmax_total_bytes = 1000000\nmax_bytes = 100000\n",
        dir.display()
    ))
    .unwrap();
    let faulty = Arc::new(Faulty {
        inner: LocalFileSystem::new_with_prefix(dir.join("uploads")).unwrap(),
        fail_renames: AtomicBool::new(fail_renames),
    });
    let store = EpisodeStore::with_objects(faulty.clone(), 1024);
    (
        Uploads::with_store(&settings, store, &prometheus::Registry::new())
            .await
            .unwrap(),
        faulty,
    )
}

fn upload(bytes: &[u8]) -> Upload {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    Upload {
        host: DeviceId::parse("lab-01").unwrap(),
        episode: DeviceId::parse("ep").unwrap(),
        sha256: super::store::hex(digest.as_ref()),
        schema_version: 2,
        commit: None,
        episode_type: None,
        benign_profile: None,
    }
}

fn body(bytes: &[u8]) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
    let chunks: Vec<Result<Bytes, std::io::Error>> = bytes
        .chunks(700)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    stream::iter(chunks)
}

#[actix_web::test]
async fn a_crash_between_the_record_and_the_rename_is_finished_by_the_same_bytes() {
    let dir = temp_dir();
    let bytes = vec![7u8; 5_000];
    let (crashing, _) = uploads(&dir, true).await;
    let failed = crashing.receive(&upload(&bytes), body(&bytes)).await;
    assert!(
        matches!(failed, Err(UploadError::Unavailable(_))),
        "{failed:?}"
    );
    assert_eq!(
        crashing.used_bytes(),
        0,
        "a failed commit gives its bytes back"
    );
    assert!(
        dir.join("uploads/.records/lab-01/ep.json").exists(),
        "the id is claimed"
    );
    assert!(
        !dir.join("uploads/lab-01/ep.tar.zst").exists(),
        "nothing partial is visible"
    );
    drop(crashing);

    // Restarted: other bytes conflict with the claim; the same bytes finish it.
    let (restarted, _) = uploads(&dir, false).await;
    let other = vec![8u8; 5_000];
    let answer = restarted
        .receive(&upload(&other), body(&other))
        .await
        .unwrap();
    assert!(matches!(answer, Outcome::Conflict { .. }), "{answer:?}");
    let answer = restarted
        .receive(&upload(&bytes), body(&bytes))
        .await
        .unwrap();
    assert!(
        matches!(
            answer,
            Outcome::Stored {
                size_bytes: 5_000,
                ..
            }
        ),
        "{answer:?}"
    );
    assert_eq!(
        std::fs::read(dir.join("uploads/lab-01/ep.tar.zst")).unwrap(),
        bytes
    );
    assert_eq!(restarted.used_bytes(), Quota::accounted(5_000));
    let again = restarted
        .receive(&upload(&bytes), body(&bytes))
        .await
        .unwrap();
    assert!(matches!(again, Outcome::AlreadyPresent { .. }), "{again:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix_web::test]
async fn only_stored_uploads_count_against_the_quota_and_a_restart_counts_them_again() {
    let dir = temp_dir();
    let (uploads_now, _) = uploads(&dir, false).await;
    let bytes = vec![1u8; 10_000];
    // A body that is not its hash, then over the size limit: nothing counts.
    let mut wrong = upload(&bytes);
    wrong.sha256 = upload(b"x").sha256;
    let answer = uploads_now.receive(&wrong, body(&bytes)).await.unwrap();
    assert!(matches!(answer, Outcome::ShaMismatch { .. }));
    let huge = vec![0u8; 100_001];
    let refused = uploads_now.receive(&upload(&huge), body(&huge)).await;
    assert!(matches!(refused, Err(UploadError::TooLarge)), "{refused:?}");
    assert_eq!(uploads_now.used_bytes(), 0);
    // Stored, then a duplicate: counted once.
    uploads_now
        .receive(&upload(&bytes), body(&bytes))
        .await
        .unwrap();
    uploads_now
        .receive(&upload(&bytes), body(&bytes))
        .await
        .unwrap();
    assert_eq!(uploads_now.used_bytes(), 10_000);
    drop(uploads_now);
    let (restarted, _) = uploads(&dir, false).await;
    assert_eq!(restarted.used_bytes(), 10_000);
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix_web::test]
async fn an_upload_found_without_a_record_is_recorded_and_never_overwritten() {
    let dir = temp_dir();
    let bytes = vec![3u8; 2_000];
    std::fs::create_dir_all(dir.join("uploads/lab-01")).unwrap();
    std::fs::write(dir.join("uploads/lab-01/ep.tar.zst"), &bytes).unwrap();
    let (uploads_now, _) = uploads(&dir, false).await;
    let other = vec![4u8; 2_000];
    let answer = uploads_now
        .receive(&upload(&other), body(&other))
        .await
        .unwrap();
    assert!(
        matches!(&answer, Outcome::Conflict { existing_sha256 } if *existing_sha256 == upload(&bytes).sha256),
        "{answer:?}"
    );
    let answer = uploads_now
        .receive(&upload(&bytes), body(&bytes))
        .await
        .unwrap();
    assert!(
        matches!(answer, Outcome::AlreadyPresent { .. }),
        "{answer:?}"
    );
    assert_eq!(
        std::fs::read(dir.join("uploads/lab-01/ep.tar.zst")).unwrap(),
        bytes
    );
    assert!(dir.join("uploads/.records/lab-01/ep.json").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix_web::test]
async fn a_claim_whose_upload_never_landed_frees_its_id_after_a_while() {
    let dir = temp_dir();
    let bytes = vec![5u8; 3_000];
    let (crashing, _) = uploads(&dir, true).await;
    assert!(crashing
        .receive(&upload(&bytes), body(&bytes))
        .await
        .is_err());
    drop(crashing);
    // Age the claim past the stale limit.
    let path = dir.join("uploads/.records/lab-01/ep.json");
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    record["received_at_ms"] = (edgebus_actors::event::now_ms() - super::STALE_CLAIM_MS - 1).into();
    std::fs::write(&path, serde_json::to_vec(&record).unwrap()).unwrap();
    let (restarted, _) = uploads(&dir, false).await;
    let other = vec![6u8; 3_000];
    let answer = restarted
        .receive(&upload(&other), body(&other))
        .await
        .unwrap();
    assert!(matches!(answer, Outcome::Stored { .. }), "{answer:?}");
    assert_eq!(
        std::fs::read(dir.join("uploads/lab-01/ep.tar.zst")).unwrap(),
        other
    );
    let _ = std::fs::remove_dir_all(&dir);
}
