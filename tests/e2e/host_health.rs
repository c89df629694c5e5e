//! Host-health reports: `PUT /v1/host-health/{host}`, `GET /v1/host-health`,
//! stored atomically on disk and kept across restarts.
//! Publisher to write, viewer to read.

use std::path::PathBuf;
use std::time::Duration;

use actix_web::http::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{spawn_app_with, unique, TestApp};

fn data_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(unique("edgebus-e2e-data"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn app_with_data(dir: &std::path::Path) -> TestApp {
    spawn_app_with(&format!("[storage]\ndata_dir = \"{}\"\n", dir.display())).await
}

fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish()
}

async fn put(app: &TestApp, host: &str, body: impl Into<Vec<u8>>) -> (StatusCode, Value) {
    let mut resp = client()
        .put(app.url(&format!("/v1/host-health/{host}")))
        .insert_header(("content-type", "application/json"))
        .send_body(body.into())
        .await
        .expect("PUT");
    let bytes = resp.body().limit(1 << 20).await.expect("body");
    (
        resp.status(),
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[actix_web::test]
async fn a_report_is_stored_with_its_receive_time_and_listed() {
    let dir = data_dir();
    let app = app_with_data(&dir).await;
    let report = json!({"disk": "ok", "checks": [{"name": "ntp", "ok": false}]});

    let (status, body) = put(&app, "lab-01", report.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"status": "stored", "host_id": "lab-01"}));
    put(&app, "lab-00", r#"{"n":0}"#).await;

    let (status, all) = app.get_json("/v1/host-health").await;
    assert_eq!(status, StatusCode::OK);
    let hosts = all["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 2);
    assert_eq!(hosts[0]["host_id"], "lab-00", "sorted by host");
    assert_eq!(hosts[1]["report"], report);
    let received = hosts[1]["received_at"].as_str().expect("received_at");
    assert!(
        received.ends_with('Z') && received.len() == 20,
        "{received}"
    );
    assert!(hosts[1]["received_at_ms"].as_u64().unwrap() > 1_700_000_000_000);

    let on_disk: Value =
        serde_json::from_slice(&std::fs::read(dir.join("host-health/lab-01.json")).expect("file"))
            .expect("JSON file");
    assert_eq!(on_disk, hosts[1]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix_web::test]
async fn bad_hosts_and_bodies_are_refused_with_json_errors() {
    let dir = data_dir();
    let app = app_with_data(&dir).await;
    let long = "h".repeat(65);
    let bad_hosts = [
        "..%2F..%2Fetc%2Fpasswd",
        "a%20b",
        ".hidden",
        "x%00",
        long.as_str(),
        "%3C!channel%3E",
    ];
    for host in bad_hosts {
        let (status, body) = put(&app, host, "{}").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{host}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap_or_default()
                .contains("host id"),
            "{body}"
        );
    }
    for bad in ["[1,2]", "\"text\"", "{", "", r#"{"a":1,"a":2}"#] {
        let (status, body) = put(&app, "h1", bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}: {body}");
        assert!(body["error"].is_string());
    }
    let huge = format!(r#"{{"pad":"{}"}}"#, "x".repeat(70 * 1024));
    let (status, body) = put(&app, "h1", huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(body["error"].is_string());

    let (_, all) = app.get_json("/v1/host-health").await;
    assert_eq!(all, json!({"hosts": []}), "nothing was stored");
    assert!(walk(&dir.join("host-health")).is_empty(), "no file written");
    let _ = std::fs::remove_dir_all(&dir);
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default()
}

#[actix_web::test]
async fn concurrent_writers_and_readers_never_see_a_partial_report() {
    let dir = data_dir();
    let app = app_with_data(&dir).await;
    // Large, distinct bodies so a torn write would show.
    let bodies: Vec<Value> = (0..6)
        .map(|w| json!({"writer": w, "pad": "x".repeat(20_000 + w * 3_000)}))
        .collect();
    put(&app, "h1", bodies[0].to_string()).await;

    let writers = bodies.iter().cloned().map(|body| {
        let app = &app;
        async move {
            for _ in 0..15 {
                let (status, _) = put(app, "h1", body.to_string()).await;
                assert_eq!(status, StatusCode::OK);
            }
        }
    });
    let reader = async {
        let mut reads = 0;
        for _ in 0..60 {
            let (status, all) = app.get_json("/v1/host-health").await;
            assert_eq!(status, StatusCode::OK, "every read parses");
            let hosts = all["hosts"].as_array().expect("hosts");
            assert_eq!(hosts.len(), 1, "{all}");
            assert!(bodies.contains(&hosts[0]["report"]), "a torn report");
            reads += 1;
        }
        reads
    };
    let (_, reads) = futures_util::join!(futures_util::future::join_all(writers), reader);
    assert_eq!(reads, 60);

    let files: Vec<String> = walk(&dir.join("host-health"))
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
        .collect();
    assert_eq!(files, vec!["h1.json"], "no temporary file left behind");
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix_web::test]
async fn reports_survive_a_restart() {
    let dir = data_dir();
    let app = app_with_data(&dir).await;
    put(&app, "h1", r#"{"ok":true}"#).await;
    app.handle.shutdown().await;

    let again = app_with_data(&dir).await;
    let (_, all) = again.get_json("/v1/host-health").await;
    assert_eq!(all["hosts"][0]["host_id"], "h1");
    assert_eq!(all["hosts"][0]["report"], json!({"ok": true}));
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix_web::test]
async fn writing_needs_a_publisher_and_reading_a_viewer() {
    use crate::auth::{bearer, keys_toml, PUBLISHER, VIEWER};
    let dir = data_dir();
    let app = spawn_app_with(&format!(
        "{}[storage]\ndata_dir = \"{}\"\n",
        keys_toml(),
        dir.display()
    ))
    .await;
    let body = Some(r#"{"ok":true}"#);
    let path = "/v1/host-health/lab-02";
    let (viewer, publisher) = (bearer(VIEWER), bearer(PUBLISHER));
    assert_eq!(app.call("PUT", path, &[], body).await.status, 401);
    let as_viewer = app
        .call("PUT", path, &[("Authorization", &viewer)], body)
        .await;
    assert_eq!(as_viewer.status, 403);
    let stored = app
        .call("PUT", path, &[("Authorization", &publisher)], body)
        .await;
    assert_eq!(stored.status, 200, "{stored:?}");
    assert_eq!(
        app.call("GET", "/v1/host-health", &[], None).await.status,
        401
    );
    let listed = app
        .call(
            "GET",
            "/v1/host-health",
            &[("Authorization", &viewer)],
            None,
        )
        .await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body["hosts"][0]["host_id"], "lab-02");
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix_web::test]
async fn a_new_host_over_the_cap_is_refused_with_a_clear_error_and_known_hosts_still_update() {
    let dir = data_dir();
    let app = spawn_app_with(&format!(
        "[storage]\ndata_dir = \"{}\"\n[host_health]\nmax_hosts = 3\n",
        dir.display()
    ))
    .await;
    for host in ["h0", "h1", "h2"] {
        let (status, body) = put(&app, host, r#"{"n":1}"#).await;
        assert_eq!(status, StatusCode::OK, "{host}: {body}");
    }

    let (status, body) = put(&app, "h3", r#"{"n":1}"#).await;

    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("host_health.max_hosts") && error.contains("known host"),
        "{error}"
    );
    let (status, body) = put(&app, "h1", r#"{"n":2}"#).await;
    assert_eq!(status, StatusCode::OK, "a known host updates: {body}");
    let (_, all) = app.get_json("/v1/host-health").await;
    let hosts = all["hosts"].as_array().expect("hosts");
    let ids: Vec<&str> = hosts.iter().filter_map(|h| h["host_id"].as_str()).collect();
    assert_eq!(ids, vec!["h0", "h1", "h2"]);
    assert_eq!(hosts[1]["report"], json!({"n": 2}));
    assert!(!dir.join("host-health/h3.json").exists());
    app.handle.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix_web::test]
async fn a_report_is_stored_as_compactly_as_it_was_sent() {
    let dir = data_dir();
    let app = app_with_data(&dir).await;
    // Many small values: pretty-printing would put each on its own line.
    let samples: Vec<Value> = (0..2_000).map(|i| json!([i, {"ok": i % 2 == 0}])).collect();
    let body = json!({ "samples": samples }).to_string();

    let (status, answer) = put(&app, "compact-01", body.clone()).await;

    assert_eq!(status, StatusCode::OK, "{answer}");
    let stored = std::fs::read(dir.join("host-health/compact-01.json")).expect("file");
    assert!(
        stored.len() <= body.len() + 256,
        "{} bytes on disk for a {}-byte report",
        stored.len(),
        body.len()
    );
    let on_disk: Value = serde_json::from_slice(&stored).expect("JSON file");
    assert_eq!(on_disk["report"].to_string(), body);
    app.handle.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix_web::test]
async fn a_listing_of_many_hosts_is_streamed_and_has_every_one() {
    let dir = data_dir();
    let app = spawn_app_with(&format!(
        "[storage]\ndata_dir = \"{}\"\n[host_health]\nmax_hosts = 300\n",
        dir.display()
    ))
    .await;
    let hosts: Vec<String> = (0..240).map(|i| format!("fleet-{i:03}")).collect();
    for batch in hosts.chunks(12) {
        let puts = batch.iter().map(|host| {
            let app = &app;
            async move {
                let body = json!({"host": host, "pad": "x".repeat(1_000)}).to_string();
                let (status, answer) = put(app, host, body).await;
                assert_eq!(status, StatusCode::OK, "{host}: {answer}");
            }
        });
        futures_util::future::join_all(puts).await;
    }

    let mut resp = client()
        .get(app.url("/v1/host-health"))
        .send()
        .await
        .expect("GET");

    assert_eq!(resp.status(), StatusCode::OK);
    // Streamed: the length is not known up front, since the handler has
    // not read the reports yet when the head goes out.
    assert!(
        resp.headers().get("content-length").is_none(),
        "{:?}",
        resp.headers()
    );
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let bytes = resp.body().limit(16 << 20).await.expect("body");
    let all: Value = serde_json::from_slice(&bytes).expect("one JSON document");
    let listed = all["hosts"].as_array().expect("hosts");
    let ids: Vec<&str> = listed
        .iter()
        .filter_map(|h| h["host_id"].as_str())
        .collect();
    assert_eq!(ids, hosts, "every host, sorted");
    assert!(listed.iter().all(|h| h["report"]["host"] == h["host_id"]));

    // The same listing in the receiver's shape, streamed the same way.
    let mut resp = client()
        .get(app.url("/v1/host-health?format=cis490"))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("content-length").is_none());
    let bytes = resp.body().limit(16 << 20).await.expect("body");
    let all: Value = serde_json::from_slice(&bytes).expect("one JSON document");
    let listed = all["hosts"].as_array().expect("hosts");
    let ids: Vec<&str> = listed
        .iter()
        .filter_map(|h| h["host_id"].as_str())
        .collect();
    assert_eq!(ids, hosts, "every host, sorted");
    assert!(listed.iter().all(|h| h["doctor"]["host"] == h["host_id"]
        && h["received_at_wall"].is_string()
        && h.as_object().map(|o| o.len()) == Some(3)));
    app.handle.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix_web::test]
async fn v1_health_answers_exactly_like_healthz() {
    let app = spawn_app_with("").await;

    let (status, body) = app.get_json("/v1/health").await;
    let (healthz_status, healthz) = app.get_json("/healthz").await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"status": "ok"}));
    assert_eq!((status, body), (healthz_status, healthz));
}

#[actix_web::test]
async fn ping_names_the_lab_host_when_it_is_a_host_id_and_the_schema_version() {
    let app = spawn_app_with("").await;
    let ping = |host: Option<&'static str>| {
        let app = &app;
        async move {
            let headers: Vec<(&str, &str)> = host.map(|h| ("X-Lab-Host", h)).into_iter().collect();
            let mut answer = app.call("POST", "/v1/ping", &headers, None).await;
            assert_eq!(answer.status, 200, "{answer:?}");
            let t = answer.body["t_wall_ns"].take();
            assert!(t.as_f64().unwrap_or(0.0) > 1.7e18, "wall clock in ns: {t}");
            answer.body
        }
    };
    let expected = |host_id: Value| {
        json!({
            "ok": true,
            "identity": "anonymous",
            "roles": ["viewer", "publisher", "admin"],
            "host_id": host_id,
            "t_wall_ns": null,
            "schema_version": 2,
        })
    };

    assert_eq!(
        ping(Some("lab-01.cs_490")).await,
        expected(json!("lab-01.cs_490"))
    );
    assert_eq!(ping(None).await, expected(Value::Null));
    let long: &'static str = "h".repeat(65).leak();
    for bad in [
        "<script>alert(1)</script>",
        ".hidden",
        "../etc",
        "lab 01",
        "",
        long,
    ] {
        assert_eq!(ping(Some(bad)).await, expected(Value::Null), "{bad:?}");
    }
}

/// A stored record as this version writes it, placed before the app starts.
fn stored_record(dir: &std::path::Path, host: &str, received_ms: u64, report: &str) {
    let hh = dir.join("host-health");
    std::fs::create_dir_all(&hh).expect("dir");
    let at = edgebus::actors::alerts::clock::rfc3339(received_ms);
    std::fs::write(
        hh.join(format!("{host}.json")),
        format!(
            r#"{{"host_id":"{host}","received_at":"{at}","received_at_ms":{received_ms},"report":{report}}}"#
        ),
    )
    .expect("record");
}

#[actix_web::test]
async fn format_cis490_lists_the_receivers_record_shape() {
    let dir = data_dir();
    stored_record(
        &dir,
        "lab-07",
        1_777_747_711_999,
        r#"{"disk":"ok","n":[1,2]}"#,
    );
    stored_record(&dir, "lab-02", 1_000, "{}");
    let app = app_with_data(&dir).await;
    let report = json!({"checks": [{"name": "ntp", "ok": false}], "note": "<b>\"x\"</b>"});
    let (status, _) = put(&app, "lab-05", report.to_string()).await;
    assert_eq!(status, StatusCode::OK);
    let (_, edgebus) = app.get_json("/v1/host-health").await;
    let lab05_at = edgebus["hosts"][1]["received_at"].clone();

    let mut resp = client()
        .get(app.url("/v1/host-health?format=cis490"))
        .send()
        .await
        .expect("GET");

    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers().get("content-length").is_none(),
        "still streamed: {:?}",
        resp.headers()
    );
    let bytes = resp.body().limit(1 << 20).await.expect("body");
    let listed: Value = serde_json::from_slice(&bytes).expect("one JSON document");
    assert_eq!(
        listed,
        json!({"hosts": [
            {"host_id": "lab-02", "received_at_wall": "1970-01-01T00:00:01Z", "doctor": {}},
            {"host_id": "lab-05", "received_at_wall": lab05_at, "doctor": report},
            {"host_id": "lab-07", "received_at_wall": "2026-05-02T18:48:31Z",
             "doctor": {"disk": "ok", "n": [1, 2]}},
        ]})
    );
    let wall = listed["hosts"][1]["received_at_wall"]
        .as_str()
        .unwrap_or("");
    assert!(
        wall.len() == 20 && wall.as_bytes()[10] == b'T' && wall.ends_with('Z'),
        "%Y-%m-%dT%H:%M:%SZ: {wall}"
    );
    let (status, again) = app.get_json("/v1/host-health").await;
    assert_eq!(
        (status, again),
        (StatusCode::OK, edgebus),
        "no format: today's shape"
    );
    app.handle.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix_web::test]
async fn any_other_listing_format_is_a_400_naming_the_one_known() {
    let dir = data_dir();
    let app = app_with_data(&dir).await;
    for query in [
        "format=json",
        "format=CIS490",
        "format=",
        "format=cis490&format=cis490",
        "format=%3Cb%3E",
    ] {
        let answer = app
            .call("GET", &format!("/v1/host-health?{query}"), &[], None)
            .await;
        assert_eq!(answer.status, 400, "{query}: {answer:?}");
        assert!(answer.error().contains("format"), "{query}: {answer:?}");
    }
    let answer = app
        .call("GET", "/v1/host-health?format=json", &[], None)
        .await;
    assert_eq!(
        answer.body,
        json!({"error": "unknown format \"json\": use format=cis490, or no format for edgebus's own shape"})
    );
    let _ = std::fs::remove_dir_all(&dir);
}
