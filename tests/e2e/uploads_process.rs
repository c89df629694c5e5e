//! Uploads against the real binary in its own process, where its memory can
//! be read and it can be killed: a 200 MB upload streams through in flat
//! memory, and a crash in the middle of an upload leaves nothing visible.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};

use crate::helpers::{Service, WAIT};
use crate::uploads::{data_dir, put, sha256};

const MIB: usize = 1024 * 1024;

/// Chunk `i` of a large body: deterministic, not compressible to nothing.
fn chunk(i: usize) -> Vec<u8> {
    (0..MIB).map(|j| ((i * 31 + j * 7) % 251) as u8).collect()
}

fn sha_of_chunks(n: usize) -> String {
    let mut hasher = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for i in 0..n {
        hasher.update(&chunk(i));
    }
    edgebus::uploads::store::hex(hasher.finish().as_ref())
}

async fn service(dir: &Path) -> Service {
    let dir = dir.display().to_string();
    Service::start(&[
        ("EDGEBUS__STORAGE__DATA_DIR", dir.as_str()),
        ("EDGEBUS__UPLOADS__MAX_BYTES", "300000000"),
    ])
    .await
}

#[actix_web::test]
async fn a_200_mb_upload_streams_through_in_flat_memory() {
    const CHUNKS: usize = 200;
    let dir = data_dir();
    let service = service(&dir).await;
    let sha = sha_of_chunks(CHUNKS);
    let before = service.peak_rss_kib();
    let body = stream::iter(0..CHUNKS).map(|i| Ok::<_, std::io::Error>(Bytes::from(chunk(i))));
    let mut resp = awc::Client::builder()
        .timeout(Duration::from_secs(300))
        .finish()
        .put(format!(
            "http://127.0.0.1:{}/v1/episodes/lab-01/big.tar.zst",
            service.port
        ))
        .insert_header(("X-Content-SHA256", sha.as_str()))
        .send_stream(body)
        .await
        .expect("an answer");
    let answer: serde_json::Value = resp.json().await.expect("JSON");
    assert_eq!(resp.status().as_u16(), 201, "{answer}");
    assert_eq!(answer["size_bytes"], CHUNKS * MIB);
    let grew_kib = service.peak_rss_kib().saturating_sub(before);
    eprintln!("peak RSS grew by {grew_kib} KiB receiving {CHUNKS} MiB");
    assert!(
        grew_kib < 32 * 1024,
        "receiving {CHUNKS} MiB raised the peak RSS by {grew_kib} KiB: the body was held in memory"
    );
    let stored = std::fs::metadata(dir.join("uploads/lab-01/big.tar.zst")).expect("stored");
    assert_eq!(stored.len() as usize, CHUNKS * MIB);
}

#[actix_web::test]
async fn a_crash_mid_upload_leaves_nothing_visible_and_the_upload_stores_after_restart() {
    let dir = data_dir();
    let mut service = service(&dir).await;
    let body: Vec<u8> = (0..16).flat_map(chunk).collect();
    let sha = sha256(&body);

    // Half the body, then the client waits (the upload stays open) until
    // the first half is on disk, in the temporary area.
    let tmp = dir.join("uploads/.tmp");
    let (tx, upload) = open_upload(service.port, "lab-01/ep.tar.zst", &sha, &body[..8 * MIB]).await;
    wait_for_temp_bytes(&tmp, 4 * MIB as u64).await;
    service.kill();
    drop(tx);
    let _ = upload.await;

    // Nothing partial is visible where uploads are read.
    assert!(!dir.join("uploads/lab-01/ep.tar.zst").exists());
    assert!(!dir.join("uploads/.records/lab-01/ep.json").exists());
    assert!(temp_bytes(&tmp) > 0, "the crash left its temporary file");

    // Restarted on the same directory: what the crash left is swept, and
    // the same upload stores.
    let service = self::service(&dir).await;
    assert_eq!(temp_bytes(&tmp), 0, "the leftover is swept at start");
    let got = put(
        service.port,
        "lab-01/ep.tar.zst",
        &[("X-Content-SHA256", &sha)],
        body.clone(),
    )
    .await;
    assert_eq!(got.status, 201, "{got:?}");
    assert_eq!(
        std::fs::read(dir.join("uploads/lab-01/ep.tar.zst")).expect("stored"),
        body
    );
}

type BodySender = tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>;

/// An upload of `path` that has sent `sent` and stays open for more (sent
/// through the returned sender); its answer's status comes from the task.
async fn open_upload(
    port: u16,
    path: &str,
    sha: &str,
    sent: &[u8],
) -> (
    BodySender,
    actix_web::rt::task::JoinHandle<Result<awc::http::StatusCode, awc::error::SendRequestError>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(sent.len() / MIB + 2);
    for piece in sent.chunks(MIB) {
        tx.send(Ok(Bytes::copy_from_slice(piece)))
            .await
            .expect("queued");
    }
    let url = format!("http://127.0.0.1:{port}/v1/episodes/{path}");
    let sha = sha.to_owned();
    let upload = actix_web::rt::spawn(async move {
        awc::Client::builder()
            .timeout(Duration::from_secs(60))
            .finish()
            .put(url)
            .insert_header(("X-Content-SHA256", sha.as_str()))
            .send_stream(tokio_stream_of(rx))
            .await
            .map(|r| r.status())
    });
    (tx, upload)
}

/// Waits until the temporary area holds at least `bytes`.
async fn wait_for_temp_bytes(tmp: &Path, bytes: u64) {
    let deadline = Instant::now() + WAIT;
    while temp_bytes(tmp) < bytes {
        assert!(Instant::now() < deadline, "the body never reached the disk");
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Bytes in the temporary area (staging files included).
fn temp_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn tokio_stream_of(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[actix_web::test]
async fn a_client_that_hangs_up_mid_body_gives_back_every_byte_and_place() {
    let dir = data_dir();
    let service = service(&dir).await;
    let stored_before = service.metric("edgebus_uploads_stored_bytes").await;
    let sha = "0".repeat(64);
    let half: Vec<u8> = (0..4).flat_map(|_| chunk(0)).collect();
    let (tx, upload) = open_upload(service.port, "lab-01/gone.tar.zst", &sha, &half).await;
    let tmp = dir.join("uploads/.tmp");
    wait_for_temp_bytes(&tmp, 2 * MIB as u64).await;
    // The client goes away with the body half sent.
    upload.abort();
    drop(tx);
    // Answered (to nobody) and counted: the upload's bookkeeping is done.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut answered = 0.0;
        for status in edgebus::uploads::metrics::STATUSES {
            answered += service
                .metric(&format!("edgebus_uploads_total{{status=\"{status}\"}}"))
                .await;
        }
        if answered >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the abandoned upload was never answered"
        );
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(service.metric("edgebus_uploads_receiving").await, 0.0);
    assert_eq!(
        service.metric("edgebus_uploads_stored_bytes").await,
        stored_before,
        "the half body's bytes are given back"
    );
    assert_eq!(temp_bytes(&tmp), 0, "its temporary file is removed");
}
