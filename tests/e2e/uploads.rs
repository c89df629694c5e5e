//! Fleet uploads (`PUT /v1/episodes/{host}/{id}.tar.zst`): the seed
//! receiver's contract over real HTTP, status for status and body for body;
//! one id stored once however many upload it at once; the upload events.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use serde_json::{json, Value};

use crate::helpers::{spawn_app_with, unique, TestApp};

pub const PUBLISHER: &str = "uploads-publisher-key";
const VIEWER: &str = "uploads-viewer-key";

pub fn data_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(unique("edgebus-uploads"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Keys for a publisher and a viewer, the data directory, and `extra`.
pub fn config(dir: &Path, extra: &str) -> String {
    format!(
        "[auth]\napi_keys = [{{ name = \"lab\", key = \"{PUBLISHER}\", roles = [\"publisher\"] }}, \
         {{ name = \"ops\", key = \"{VIEWER}\", roles = [\"viewer\"] }}]\n\
         [storage]\ndata_dir = \"{}\"\n{extra}",
        dir.display()
    )
}

pub fn sha256(bytes: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    edgebus::uploads::store::hex(digest.as_ref())
}

/// The answer to one upload: status and JSON body.
#[derive(Debug)]
pub struct Put {
    pub status: u16,
    pub body: Value,
}

fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .finish()
}

/// `PUT /v1/episodes/{path}` as the seed's shipper sends it: bearer,
/// `X-Content-SHA256` and whatever else `headers` holds.
pub async fn put(port: u16, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Put {
    let mut req = client()
        .put(format!("http://127.0.0.1:{port}/v1/episodes/{path}"))
        .insert_header(("Authorization", format!("Bearer {PUBLISHER}")));
    for (name, value) in headers {
        req = req.insert_header((*name, *value));
    }
    let resp = req.send_body(body).await;
    answer(resp).await
}

/// The same, with the body streamed in chunks (no `Content-Length`).
pub async fn put_chunked(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    chunks: Vec<Vec<u8>>,
) -> Put {
    let mut req = client()
        .put(format!("http://127.0.0.1:{port}/v1/episodes/{path}"))
        .insert_header(("Authorization", format!("Bearer {PUBLISHER}")));
    for (name, value) in headers {
        req = req.insert_header((*name, *value));
    }
    let body = stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, std::io::Error>(Bytes::from(c))),
    );
    answer(req.send_stream(body).await).await
}

async fn answer(
    resp: Result<
        awc::ClientResponse<
            impl futures_util::Stream<Item = Result<Bytes, awc::error::PayloadError>>,
        >,
        awc::error::SendRequestError,
    >,
) -> Put {
    let mut resp = resp.expect("the upload gets an answer");
    let bytes = resp.body().limit(1 << 20).await.expect("body");
    Put {
        status: resp.status().as_u16(),
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// Everything `index.jsonl` holds.
pub fn index(dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("uploads/index.jsonl")).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).expect("an index line is JSON"))
        .collect()
}

fn stored(dir: &Path, host: &str, id: &str) -> Option<Vec<u8>> {
    std::fs::read(dir.join(format!("uploads/{host}/{id}.tar.zst"))).ok()
}

/// One row of the contract: what, path, headers, body, status, exact JSON.
type Case = (
    &'static str,
    &'static str,
    Vec<(&'static str, String)>,
    Vec<u8>,
    u16,
    Value,
);

async fn app(dir: &Path, extra: &str) -> TestApp {
    spawn_app_with(&config(dir, extra)).await
}

#[actix_web::test]
async fn the_seed_receivers_contract_status_for_status_and_body_for_body() {
    let dir = data_dir();
    let app = app(&dir, "[uploads]\nmax_bytes = 1000\n").await;
    let body = b"episode bytes".to_vec();
    let sha = sha256(&body);
    let other = b"other bytes".to_vec();
    let other_sha = sha256(&other);
    let sha_upper = sha.to_ascii_uppercase();
    let put = |path: &'static str, headers: Vec<(&'static str, String)>, body: Vec<u8>| {
        let port = app.port;
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            put(port, path, &headers, body).await
        }
    };
    let with_sha = |s: &str| vec![("X-Content-SHA256", s.to_owned())];

    let cases: Vec<Case> = vec![
        (
            "a new upload is stored",
            "lab-01/ep-1.tar.zst",
            vec![
                ("X-Content-SHA256", sha_upper.clone()),
                ("X-Episode-Type", "Control".into()),
                ("X-Benign-Profile", "no-such-profile".into()),
            ],
            body.clone(),
            201,
            json!({"status": "stored", "sha256": sha, "size_bytes": body.len()}),
        ),
        (
            "the same id with the same hash is already present",
            "lab-01/ep-1.tar.zst",
            with_sha(&sha),
            body.clone(),
            200,
            json!({"status": "already-present", "sha256": sha}),
        ),
        (
            "the same id with another hash conflicts",
            "lab-01/ep-1.tar.zst",
            with_sha(&other_sha),
            other.clone(),
            409,
            json!({"status": "conflict", "existing_sha256": sha}),
        ),
        (
            "a body that is not its hash is refused",
            "lab-01/ep-2.tar.zst",
            with_sha(&sha),
            other.clone(),
            400,
            json!({"status": "sha-mismatch", "actual_sha256": other_sha}),
        ),
        (
            "no X-Content-SHA256",
            "lab-01/ep-3.tar.zst",
            vec![],
            body.clone(),
            400,
            json!({"error": "X-Content-SHA256 header (64 hex chars) required"}),
        ),
        (
            "a malformed X-Content-SHA256",
            "lab-01/ep-3.tar.zst",
            with_sha(&"z".repeat(64)),
            body.clone(),
            400,
            json!({"error": "X-Content-SHA256 header (64 hex chars) required"}),
        ),
        (
            "X-Schema-Version that is not an integer",
            "lab-01/ep-3.tar.zst",
            vec![
                ("X-Content-SHA256", sha.clone()),
                ("X-Schema-Version", "two".into()),
            ],
            body.clone(),
            400,
            json!({"error": "bad X-Schema-Version"}),
        ),
        (
            "a wrong suffix",
            "lab-01/ep-3.tar.gz",
            with_sha(&sha),
            body.clone(),
            400,
            json!({"error": "expected .tar.zst suffix"}),
        ),
        (
            "an episode id outside the id rule",
            "lab-01/.hidden.tar.zst",
            with_sha(&sha),
            body.clone(),
            400,
            json!({"error": "bad host_id or episode_id"}),
        ),
        (
            "a host id outside the id rule",
            "lab%2001/ep-3.tar.zst",
            with_sha(&sha),
            body.clone(),
            400,
            json!({"error": "bad host_id or episode_id"}),
        ),
        (
            "a Content-Length over uploads.max_bytes",
            "lab-01/ep-4.tar.zst",
            with_sha(&sha),
            vec![7u8; 1001],
            413,
            json!({"error": "episode exceeds max size"}),
        ),
    ];
    for (what, path, headers, body, status, expected) in cases {
        let got = put(path, headers, body).await;
        assert_eq!(got.status, status, "{what}: {got:?}");
        assert_eq!(got.body, expected, "{what}");
    }

    // A streamed body (no Content-Length) is cut at the limit too.
    let big = vec![vec![1u8; 600], vec![2u8; 600]];
    let got = put_chunked(
        app.port,
        "lab-01/ep-5.tar.zst",
        &[("X-Content-SHA256", &sha)],
        big,
    )
    .await;
    assert_eq!(got.status, 413, "{got:?}");
    assert_eq!(got.body, json!({"error": "episode exceeds max size"}));

    // What was refused left nothing; what was stored is the bytes sent.
    assert_eq!(stored(&dir, "lab-01", "ep-1").as_deref(), Some(&body[..]));
    for id in ["ep-2", "ep-3", "ep-4", "ep-5"] {
        assert_eq!(stored(&dir, "lab-01", id), None, "{id}");
    }
    let tmp = std::fs::read_dir(dir.join("uploads/.tmp"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(tmp, 0, "no temporary file outlives its upload");
    // After a mismatch, the right bytes store under that id.
    let got = put("lab-01/ep-2.tar.zst", with_sha(&other_sha), other.clone()).await;
    assert_eq!(got.status, 201, "{got:?}");

    // The index has one line per stored upload, with the labels kept
    // (a known type, lowercased) and dropped (an unknown profile).
    let lines = index(&dir);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let first = &lines[0];
    assert_eq!(first["host_id"], "lab-01");
    assert_eq!(first["episode_id"], "ep-1");
    assert_eq!(first["sha256"], sha.as_str());
    assert_eq!(first["size_bytes"], body.len());
    assert_eq!(first["schema_version"], 2);
    assert_eq!(first["episode_type"], "control");
    assert!(first.get("benign_profile").is_none(), "{first}");
    assert!(first["received_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    app.handle.stop_now();
}

#[actix_web::test]
async fn only_a_publisher_uploads_and_uploads_can_be_turned_off() {
    let dir = data_dir();
    let app = app(&dir, "").await;
    let body = b"x".to_vec();
    let sha = sha256(&body);
    for auth in [None, Some(VIEWER)] {
        let mut req = client()
            .put(app.url("/v1/episodes/lab-01/ep-1.tar.zst"))
            .insert_header(("X-Content-SHA256", sha.as_str()));
        if let Some(key) = auth {
            req = req.insert_header(("Authorization", format!("Bearer {key}")));
        }
        let got = answer(req.send_body(body.clone()).await).await;
        assert_eq!(
            got.status,
            if auth.is_none() { 401 } else { 403 },
            "{got:?}"
        );
    }
    assert_eq!(stored(&dir, "lab-01", "ep-1"), None);
    app.handle.stop_now();

    let off = spawn_app_with(&config(&data_dir(), "[uploads]\nenabled = false\n")).await;
    let got = put(
        off.port,
        "lab-01/ep-1.tar.zst",
        &[("X-Content-SHA256", &sha)],
        body,
    )
    .await;
    assert_eq!(got.status, 404, "{got:?}");
    off.handle.stop_now();
}

#[actix_web::test]
async fn concurrent_uploads_of_one_id_store_it_once() {
    let dir = data_dir();
    let app = app(
        &dir,
        "[uploads]\nmax_concurrent = 16\nmax_concurrent_per_host = 16\n",
    )
    .await;
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let sha = sha256(&body);
    let chunks: Vec<Vec<u8>> = body.chunks(10_000).map(<[u8]>::to_vec).collect();
    let headers = [("X-Content-SHA256", sha.as_str())];
    let uploads =
        (0..8).map(|_| put_chunked(app.port, "lab-01/same.tar.zst", &headers, chunks.clone()));
    let answers = futures_util::future::join_all(uploads).await;
    let mut statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 200, 200, 201],
        "{answers:?}"
    );
    assert_eq!(stored(&dir, "lab-01", "same").as_deref(), Some(&body[..]));
    assert_eq!(index(&dir).len(), 1);

    // Different bytes under one id at once: one is stored, the rest conflict.
    let bodies: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 50_000]).collect();
    let uploads = bodies.iter().map(|b| {
        let sha = sha256(b);
        let chunks: Vec<Vec<u8>> = b.chunks(5_000).map(<[u8]>::to_vec).collect();
        async move {
            put_chunked(
                app.port,
                "lab-01/race.tar.zst",
                &[("X-Content-SHA256", &sha)],
                chunks,
            )
            .await
        }
    });
    let answers = futures_util::future::join_all(uploads).await;
    let winners: Vec<&Put> = answers.iter().filter(|a| a.status == 201).collect();
    assert_eq!(winners.len(), 1, "{answers:?}");
    let kept = stored(&dir, "lab-01", "race").expect("the winner is stored");
    assert_eq!(winners[0].body["sha256"], sha256(&kept).as_str());
    for loser in answers.iter().filter(|a| a.status != 201) {
        assert_eq!(loser.status, 409, "{loser:?}");
        assert_eq!(loser.body["existing_sha256"], sha256(&kept).as_str());
    }
    app.handle.stop_now();
}

#[actix_web::test]
async fn every_outcome_is_an_event_on_the_hosts_uploads_topic() {
    let dir = data_dir();
    let app = app(&dir, "").await;
    let ticket = app.ticket(Some(VIEWER)).await;
    let mut ws = app.ws(&format!("?ticket={ticket}&topic=uploads/%23")).await;
    assert!(ws.snapshot().await.is_empty());
    let body = b"abc".to_vec();
    let sha = sha256(&body);
    let commit = "a".repeat(40);
    let headers = [
        ("X-Content-SHA256", sha.as_str()),
        ("X-Cis490-Code-Commit", commit.as_str()),
        ("X-Episode-Type", "infected"),
    ];
    assert_eq!(
        put(app.port, "lab-07/e1.tar.zst", &headers, body.clone())
            .await
            .status,
        201
    );
    assert_eq!(
        put(app.port, "lab-07/e1.tar.zst", &headers, body.clone())
            .await
            .status,
        200
    );
    assert_eq!(
        put(app.port, "lab-07/e2.tar.zst", &[], body.clone())
            .await
            .status,
        400
    );
    let stored = ws.next_event().await;
    assert_eq!(stored["topic"], "uploads/lab-07");
    assert_eq!(stored["event"], "upload.stored");
    let data = &stored["payload"];
    assert_eq!(data["host_id"], "lab-07");
    assert_eq!(data["episode_id"], "e1");
    assert_eq!(data["status"], "stored");
    assert_eq!(data["http_status"], 201);
    assert_eq!(data["sha256"], sha.as_str());
    assert_eq!(data["size_bytes"], 3);
    assert_eq!(data["commit"], commit.as_str());
    assert_eq!(data["stamped"], true);
    assert_eq!(data["episode_type"], "infected");
    let duplicate = ws.next_event().await;
    assert_eq!(duplicate["event"], "upload.duplicate");
    assert_eq!(duplicate["payload"]["status"], "already-present");
    let refused = ws.next_event().await;
    assert_eq!(refused["event"], "upload.refused");
    assert_eq!(refused["payload"]["http_status"], 400);
    assert_eq!(refused["payload"]["stamped"], false);
    assert_eq!(
        refused["payload"]["reason"],
        "X-Content-SHA256 header (64 hex chars) required"
    );

    // Nobody else may speak on an uploads topic.
    let forged = app
        .call(
            "POST",
            "/v1/publish/uploads/lab-07",
            &[("Authorization", &format!("Bearer {PUBLISHER}"))],
            Some(r#"{"status":"stored"}"#),
        )
        .await;
    assert_eq!(forged.status, 400, "{forged:?}");
    ws.idle_for(Duration::from_millis(200)).await;
    app.handle.stop_now();
}
