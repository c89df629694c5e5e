//! API keys, tickets, the stream cap, 401-before-404, Origin, open mode.

use std::sync::Arc;
use std::time::{Duration, Instant};

use edgebus::actors::alerts::ManualClock;
use edgebus::actors::event::now_ms;

use crate::helpers::{spawn_app, spawn_app_with, spawn_app_with_clock, TestApp, WAIT};

pub const VIEWER: &str = "viewer-key-0123456789";
pub const PUBLISHER: &str = "publisher-key-0123456789";
pub const ADMIN: &str = "admin-key-0123456789";

pub fn keys_toml() -> String {
    format!(
        "[auth]\napi_keys = [{{ name = \"ops\", key = \"{VIEWER}\", roles = [\"viewer\"] }}, \
         {{ name = \"tool\", key = \"{PUBLISHER}\", roles = [\"publisher\"] }}, \
         {{ name = \"root\", key = \"{ADMIN}\", roles = [\"admin\"] }}]\n"
    )
}

pub async fn locked_app(extra: &str) -> TestApp {
    spawn_app_with(&format!("{}{extra}", keys_toml())).await
}

pub fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

#[actix_web::test]
async fn every_auth_failure_is_a_precise_401_or_403() {
    let app = locked_app("").await;
    let stream = "/v1/events?topic=notifications/%23";

    let missing = app.sse(stream, &[]).await.err().expect("refused");
    assert_eq!(missing.status, 401);
    assert!(missing.body["error"].as_str().unwrap().contains("missing"));
    assert!(missing
        .headers
        .iter()
        .any(|(n, v)| n == "www-authenticate" && v == "Bearer"));

    let wrong = app
        .sse(stream, &[("Authorization", "Bearer not-a-key-not-a-key")])
        .await
        .err()
        .expect("refused");
    assert_eq!(
        (wrong.status, wrong.body["error"].as_str()),
        (401, Some("invalid API key"))
    );

    let ticket = app.ticket(Some(VIEWER)).await;
    let with_ticket = format!("{stream}&ticket={ticket}");
    let mut first = app
        .sse(&with_ticket, &[])
        .await
        .expect("a fresh ticket opens a stream");
    first.snapshot().await;
    let reused = app.sse(&with_ticket, &[]).await.err().expect("refused");
    assert_eq!(reused.status, 401);
    assert!(reused.body["error"].as_str().unwrap().contains("ticket"));

    for param in ["ticket", "access_token", "token"] {
        let refused = app
            .sse(&format!("{stream}&{param}={VIEWER}"), &[])
            .await
            .err()
            .expect("a key in a URL is refused");
        assert_eq!(refused.status, 401, "{param}");
        assert!(
            refused.body["error"].as_str().unwrap().contains("URL"),
            "{param}"
        );
    }

    let publisher_only = app
        .sse(stream, &[("Authorization", &bearer(PUBLISHER))])
        .await
        .err()
        .expect("refused");
    assert_eq!(publisher_only.status, 403);

    let viewer_publishing = app
        .call(
            "POST",
            "/v1/notifications",
            &[("Authorization", &bearer(VIEWER))],
            Some(r#"{"level":"info","message":"hi"}"#),
        )
        .await;
    assert_eq!(viewer_publishing.status, 403);
    assert!(viewer_publishing.error().contains("publisher"));

    let ws_without_ticket = app.call("GET", "/v1/ws", &[], None).await;
    assert_eq!(ws_without_ticket.status, 401, "refused before any upgrade");
    let devices = app.call("GET", "/v1/devices", &[], None).await;
    assert_eq!(devices.status, 401);
    assert_eq!(devices.header("www-authenticate"), Some("Bearer"));
}

#[actix_web::test]
async fn an_expired_ticket_is_refused() {
    let clock = Arc::new(ManualClock::new(now_ms()));
    let app = spawn_app_with_clock(
        &format!("{}[sessions]\nticket_ttl_seconds = 1", keys_toml()),
        Some(clock.clone()),
    )
    .await;
    let ticket = app.ticket(Some(VIEWER)).await;
    // Expiry is the behaviour under test: the injected clock moves past it.
    clock.advance(Duration::from_secs(1));
    let refused = app
        .sse(&format!("/v1/events?topic=a&ticket={ticket}"), &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.status, 401);
}

#[actix_web::test]
async fn tickets_also_open_websockets_once() {
    let app = locked_app("").await;
    let ticket = app.ticket(Some(VIEWER)).await;
    let mut ws = app.ws(&format!("?ticket={ticket}")).await;
    ws.snapshot().await;
    let again = app
        .call("GET", &format!("/v1/ws?ticket={ticket}"), &[], None)
        .await;
    assert_eq!(again.status, 401);
}

#[actix_web::test]
async fn the_stream_cap_is_429_until_a_stream_closes() {
    let app = locked_app("[sessions]\nmax_streams_per_identity = 2").await;
    let auth = bearer(VIEWER);
    let headers = [("Authorization", auth.as_str())];
    let stream = "/v1/events?topic=notifications/%23";
    let mut a = app.sse(stream, &headers).await.expect("first");
    a.snapshot().await;
    let mut b = app.sse(stream, &headers).await.expect("second");
    b.snapshot().await;
    let third = app.sse(stream, &headers).await.err().expect("capped");
    assert_eq!(third.status, 429);
    assert!(third.headers.iter().any(|(n, _)| n == "retry-after"));
    // Another identity is not affected.
    let admin = bearer(ADMIN);
    let mut other = app
        .sse(stream, &[("Authorization", &admin)])
        .await
        .expect("other identity");
    other.snapshot().await;
    // WebSockets count against the same cap.
    let ticket = app.ticket(Some(VIEWER)).await;
    let ws = app
        .call("GET", &format!("/v1/ws?ticket={ticket}"), &[], None)
        .await;
    assert_eq!(ws.status, 429);

    drop(a);
    let deadline = Instant::now() + WAIT;
    loop {
        match app.sse(stream, &headers).await {
            Ok(mut s) => {
                s.snapshot().await;
                break;
            }
            Err(refused) => {
                assert_eq!(refused.status, 429);
                assert!(Instant::now() < deadline, "the slot was never freed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[actix_web::test]
async fn unknown_entities_are_404_only_after_auth() {
    let app = locked_app("").await;
    let mut publisher = app.publisher().await;
    publisher
        .publish(
            "devices/known-1/metrics",
            crate::helpers::metrics_json("known-1", 1, 5.0),
        )
        .await;
    app.wait_metric("edgebus_frames_accepted_total", 1.0).await;
    let auth = bearer(VIEWER);
    for path in [
        "/v1/devices/nope/events",
        "/v1/attackers/nope/events",
        "/v1/devices/nope",
    ] {
        let anonymous = app.call("GET", path, &[], None).await;
        assert_eq!(
            anonymous.status, 401,
            "{path}: no oracle without credentials"
        );
        let authed = app
            .call("GET", path, &[("Authorization", &auth)], None)
            .await;
        assert_eq!(authed.status, 404, "{path}");
    }
    let mut known = app
        .sse("/v1/devices/known-1/events", &[("Authorization", &auth)])
        .await
        .expect("known device streams");
    let snapshot = known.snapshot().await;
    assert_eq!(snapshot["events"][0]["topic"], "devices/known-1/metrics");
}

#[actix_web::test]
async fn a_foreign_origin_is_refused_before_the_upgrade() {
    let app = spawn_app_with("[http]\nallowed_origins = [\"https://dash.example\"]").await;
    for origin in ["https://evil.example", "null", "https://dash.example.evil"] {
        let refused = app.call("GET", "/v1/ws", &[("Origin", origin)], None).await;
        assert_eq!(refused.status, 403, "{origin}");
    }
    let ok = awc::Client::new()
        .ws(format!("ws://127.0.0.1:{}/v1/ws", app.port))
        .origin("https://dash.example")
        .connect()
        .await
        .expect("allowed origin upgrades");
    assert_eq!(ok.0.status(), 101);
}

#[actix_web::test]
async fn open_mode_lets_anyone_in_and_ping_names_the_caller() {
    let app = spawn_app().await;
    let ping = app.call("POST", "/v1/ping", &[], None).await;
    assert_eq!(ping.status, 200);
    assert_eq!(ping.body["identity"], "anonymous");
    let ticket = app.ticket(None).await;
    assert_eq!(ticket.len(), 64);

    let locked = locked_app("").await;
    let ping = locked
        .call(
            "POST",
            "/v1/ping",
            &[("Authorization", &bearer(PUBLISHER))],
            None,
        )
        .await;
    assert_eq!(ping.status, 200);
    assert_eq!(ping.body["ok"], true);
    assert_eq!(ping.body["identity"], "tool");
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as f64;
    let t = ping.body["t_wall_ns"].as_f64().unwrap();
    assert!((now_ns - t).abs() < 60e9, "wall clock in ns");
    assert_eq!(locked.call("POST", "/v1/ping", &[], None).await.status, 401);
}

/// One identity minting tickets until refused leaves every other identity
/// able to mint (the cap used to be one global pool).
#[actix_web::test]
async fn one_identity_at_its_ticket_cap_leaves_others_minting() {
    let app = locked_app("[sessions]\nmax_tickets_per_identity = 3\nmax_tickets = 100").await;
    let ops = bearer(VIEWER);
    let mut minted = 0;
    let refused = loop {
        let answer = app
            .call("POST", "/v1/auth/ticket", &[("Authorization", &ops)], None)
            .await;
        if answer.status != 200 {
            break answer;
        }
        minted += 1;
        assert!(minted <= 100, "never capped");
    };
    assert_eq!(minted, 3);
    assert_eq!(refused.status, 429);
    assert!(
        refused.error().contains("max_tickets_per_identity"),
        "{refused:?}"
    );
    assert!(refused.header("retry-after").is_some());
    for key in [ADMIN, PUBLISHER] {
        let other = app
            .call(
                "POST",
                "/v1/auth/ticket",
                &[("Authorization", &bearer(key))],
                None,
            )
            .await;
        // The publisher-only key lacks `viewer`: refused for that, not for the cap.
        let want = if key == ADMIN { 200 } else { 403 };
        assert_eq!(other.status, want, "{other:?}");
    }
    // Using a ticket gives its slot back.
    let ticket = app.ticket(Some(ADMIN)).await;
    let mut stream = app
        .sse(
            &format!("/v1/events?topic=notifications/%23&ticket={ticket}"),
            &[],
        )
        .await
        .expect("200");
    stream.snapshot().await;
}

/// The seed bridge's token alone used to guard the WebSocket path only:
/// SSE, devices, publish and notifications stayed open.
#[actix_web::test]
async fn the_legacy_token_alone_guards_every_stream_and_api_call() {
    let app = spawn_app_with("[auth]\nws_token = \"s3cret-token\"").await;
    let token = bearer("s3cret-token");
    let with = [("Authorization", token.as_str())];
    let notification = r#"{"level":"info","message":"hi"}"#;

    let sse = app
        .sse("/v1/events?topic=notifications/%23", &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(sse.status, 401);
    assert!(sse.body["error"].as_str().unwrap().contains("ws_token"));
    for (method, path, body) in [
        ("GET", "/v1/devices", None),
        ("POST", "/v1/notifications", Some(notification)),
        ("POST", "/v1/publish/notifications/x", Some(r#"{"a":1}"#)),
        ("POST", "/v1/auth/ticket", None),
        ("GET", "/metrics", None),
    ] {
        let without = app.call(method, path, &[], body).await;
        assert_eq!(without.status, 401, "{method} {path}");
        let wrong = app
            .call(
                method,
                path,
                &[("Authorization", "Bearer s3cret-tokem")],
                body,
            )
            .await;
        assert_eq!(wrong.status, 401, "{method} {path} with a wrong token");
        let right = app.call(method, path, &with, body).await;
        assert!(
            (200..300).contains(&right.status),
            "{method} {path}: {right:?}"
        );
    }
    let mut by_query = app
        .sse("/v1/events?topic=notifications/%23&token=s3cret-token", &[])
        .await
        .expect("?token= opens SSE as it opens WebSockets");
    by_query.snapshot().await;
    let ticket = app.ticket(Some("s3cret-token")).await;
    let mut by_ticket = app
        .sse(
            &format!("/v1/events?topic=notifications/%23&ticket={ticket}"),
            &[],
        )
        .await
        .expect("a ticket minted with the token");
    by_ticket.snapshot().await;
    let mut ws = app.ws("?token=s3cret-token").await;
    ws.snapshot().await;
}

/// In open mode any web page the operator visited could publish (as a
/// `text/plain` POST, no preflight) or open a WebSocket to a local edgebus.
#[actix_web::test]
async fn open_mode_refuses_cross_origin_writes_and_upgrades_unless_listed() {
    let app = spawn_app().await;
    let own = format!("http://127.0.0.1:{}", app.port);
    let body = Some(r#"{"level":"info","message":"hi"}"#);
    for origin in ["https://evil.example", "null"] {
        let post = app
            .call("POST", "/v1/notifications", &[("Origin", origin)], body)
            .await;
        assert_eq!(post.status, 403, "{origin}: {post:?}");
        assert!(post.error().contains("allowed_origins"));
        let publish = app
            .call(
                "POST",
                "/v1/publish/notifications/x",
                &[("Origin", origin)],
                Some(r#"{"a":1}"#),
            )
            .await;
        assert_eq!(publish.status, 403, "{origin}");
        let upgrade = app.call("GET", "/v1/ws", &[("Origin", origin)], None).await;
        assert_eq!(upgrade.status, 403, "{origin}");
    }
    // Its own page, and clients that send no Origin (curl, devices), pass.
    let own_post = app
        .call("POST", "/v1/notifications", &[("Origin", &own)], body)
        .await;
    assert_eq!(own_post.status, 201, "{own_post:?}");
    assert_eq!(
        app.call("POST", "/v1/notifications", &[], body)
            .await
            .status,
        201
    );
    let (own_ws, _) = awc::Client::new()
        .ws(format!("ws://127.0.0.1:{}/v1/ws", app.port))
        .origin(own.as_str())
        .connect()
        .await
        .expect("its own page upgrades");
    assert_eq!(own_ws.status(), 101);

    // The body a cross-site form or text/plain fetch would send: 415.
    let plain = awc::Client::new()
        .post(app.url("/v1/notifications"))
        .insert_header(("Content-Type", "text/plain"))
        .send_body(r#"{"level":"info","message":"hi"}"#)
        .await
        .expect("POST");
    assert_eq!(plain.status(), 415);

    let listed = spawn_app_with("[http]\nallowed_origins = [\"https://dash.example\"]").await;
    let post = listed
        .call(
            "POST",
            "/v1/notifications",
            &[("Origin", "https://dash.example")],
            body,
        )
        .await;
    assert_eq!(post.status, 201, "{post:?}");
    let (ws, _) = awc::Client::new()
        .ws(format!("ws://127.0.0.1:{}/v1/ws", listed.port))
        .origin("https://dash.example")
        .connect()
        .await
        .expect("a listed origin upgrades");
    assert_eq!(ws.status(), 101);
}

/// `/metrics` is open for a dev Prometheus, closed once credentials exist.
#[actix_web::test]
async fn metrics_need_a_credential_once_any_is_configured() {
    let open = spawn_app().await;
    assert_eq!(open.call("GET", "/metrics", &[], None).await.status, 200);

    let app = locked_app("[http]\nmetrics_token = \"scrape-token-0123456789\"").await;
    let none = app.call("GET", "/metrics", &[], None).await;
    assert_eq!(none.status, 401);
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    for credential in ["scrape-token-0123456789", VIEWER, PUBLISHER] {
        let answer = app
            .call(
                "GET",
                "/metrics",
                &[("Authorization", &bearer(credential))],
                None,
            )
            .await;
        assert_eq!(answer.status, 200, "{credential}");
    }
    let wrong = app
        .call(
            "GET",
            "/metrics",
            &[("Authorization", "Bearer scrape-token-0123456788")],
            None,
        )
        .await;
    assert_eq!(wrong.status, 401);
}

/// Open mode used to have no stream cap at all.
#[actix_web::test]
async fn open_mode_caps_streams_per_source_address() {
    let app = spawn_app_with("[sessions]\nmax_streams_per_address = 2").await;
    let stream = "/v1/events?topic=notifications/%23";
    let mut a = app.sse(stream, &[]).await.expect("first");
    a.snapshot().await;
    let mut b = app.ws("").await;
    b.snapshot().await;
    let third = app.sse(stream, &[]).await.err().expect("capped");
    assert_eq!(third.status, 429);
    assert!(third.body["error"]
        .as_str()
        .unwrap()
        .contains("max_streams_per_address"));
    assert_eq!(app.call("GET", "/v1/ws", &[], None).await.status, 429);
}
