//! Uploads kept in an S3-compatible bucket (a moto server the test starts):
//! the same answers as a local directory, one id stored once across
//! concurrent uploads, and nothing temporary left behind.

use serde_json::json;

use crate::helpers::{spawn_app_with, unique};
use crate::moto::Moto;
use crate::uploads::{config, data_dir, put, put_chunked, sha256};

#[actix_web::test]
async fn a_bucket_gives_the_same_answers_as_a_directory() {
    let Some(moto) = Moto::start_if_installed().await else {
        return;
    };
    let bucket = unique("edgebus-uploads").to_ascii_lowercase();
    moto.create_bucket(&bucket).await;
    let s3 = format!(
        "[uploads]\nstore = \"s3\"\n[uploads.s3]\nbucket = \"{bucket}\"\nendpoint = \"{}\"\n\
         access_key_id = \"test\"\nsecret_access_key = \"test\"\nallow_http = true\n",
        moto.endpoint()
    );
    let app = spawn_app_with(&config(&data_dir(), &s3)).await;

    // Big enough for several 8 MiB parts.
    let body: Vec<u8> = (0..20_000_000u32).map(|i| (i % 253) as u8).collect();
    let sha = sha256(&body);
    let chunks: Vec<Vec<u8>> = body.chunks(1 << 20).map(<[u8]>::to_vec).collect();
    let got = put_chunked(
        app.port,
        "lab-01/big.tar.zst",
        &[("X-Content-SHA256", &sha)],
        chunks,
    )
    .await;
    assert_eq!(got.status, 201, "{got:?}");
    assert_eq!(
        got.body,
        json!({"status": "stored", "sha256": sha, "size_bytes": body.len()})
    );
    assert_eq!(
        moto.object(&bucket, "lab-01/big.tar.zst")
            .map(|b| sha256(&b)),
        Some(sha.clone())
    );

    let small = b"small".to_vec();
    let small_sha = sha256(&small);
    let header = [("X-Content-SHA256", small_sha.as_str())];
    let got = put(app.port, "lab-01/big.tar.zst", &header, small.clone()).await;
    assert_eq!(got.status, 409, "{got:?}");
    assert_eq!(
        got.body,
        json!({"status": "conflict", "existing_sha256": sha})
    );
    let got = put(
        app.port,
        "lab-01/big.tar.zst",
        &[("X-Content-SHA256", &sha)],
        body,
    )
    .await;
    assert_eq!(got.status, 200, "{got:?}");
    let got = put(
        app.port,
        "lab-01/s.tar.zst",
        &[("X-Content-SHA256", &sha)],
        small.clone(),
    )
    .await;
    assert_eq!(got.status, 400, "{got:?}");
    assert_eq!(got.body["status"], "sha-mismatch");
    assert_eq!(moto.object(&bucket, "lab-01/s.tar.zst"), None);

    // Concurrent uploads of one id, different bytes, through two instances
    // sharing the bucket: one stored, the rest conflict, decided by the
    // bucket's conditional create (within an instance, uploads of one id
    // also wait for each other).
    let other = spawn_app_with(&config(&data_dir(), &s3)).await;
    let bodies: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 100_000]).collect();
    let uploads = bodies.iter().enumerate().map(|(i, b)| {
        let port = if i % 2 == 0 { app.port } else { other.port };
        let sha = sha256(b);
        let chunks: Vec<Vec<u8>> = b.chunks(10_000).map(<[u8]>::to_vec).collect();
        async move {
            put_chunked(
                port,
                "lab-02/race.tar.zst",
                &[("X-Content-SHA256", &sha)],
                chunks,
            )
            .await
        }
    });
    let answers = futures_util::future::join_all(uploads).await;
    let mut statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409, 409, 409], "{answers:?}");

    let kept = moto
        .object(&bucket, "lab-02/race.tar.zst")
        .expect("the winner is stored");
    let winner = answers.iter().find(|a| a.status == 201).expect("a winner");
    assert_eq!(winner.body["sha256"], sha256(&kept).as_str());

    assert_eq!(moto.keys(&bucket, ".tmp/"), Vec::<String>::new());
    app.handle.stop_now();
    other.handle.stop_now();
}
