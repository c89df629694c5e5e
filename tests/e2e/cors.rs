//! CORS (`http.cors_origins`): off by default; a listed origin's preflight
//! and requests get the headers, an unlisted one's do not; `*` only when
//! written.

use crate::helpers::Answer;
use crate::helpers::{spawn_app, spawn_app_with, TestApp};

const GUI: &str = "https://gui.example";

async fn preflight(app: &TestApp, origin: &str, method: &str, headers: &str) -> Answer {
    app.call(
        "OPTIONS",
        "/v1/notifications",
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", method),
            ("Access-Control-Request-Headers", headers),
        ],
        None,
    )
    .await
}

#[actix_web::test]
async fn cors_is_off_by_default() {
    let app = spawn_app().await;
    let answer = preflight(&app, GUI, "POST", "content-type").await;
    assert_eq!(
        answer.header("access-control-allow-origin"),
        None,
        "{answer:?}"
    );
    let get = app
        .call("GET", "/v1/devices", &[("Origin", GUI)], None)
        .await;
    assert_eq!(get.header("access-control-allow-origin"), None);
}

#[actix_web::test]
async fn a_listed_origin_gets_the_headers_and_another_does_not() {
    let app = spawn_app_with(&format!("[http]\ncors_origins = [\"{GUI}/\"]")).await;
    let ok = preflight(
        &app,
        GUI,
        "POST",
        "authorization,content-type,idempotency-key",
    )
    .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.header("access-control-allow-origin"), Some(GUI));
    let methods = ok.header("access-control-allow-methods").unwrap_or("");
    for method in ["GET", "POST", "PUT"] {
        assert!(methods.contains(method), "{methods}");
    }
    let headers = ok.header("access-control-allow-headers").unwrap_or("");
    for header in [
        "authorization",
        "content-type",
        "last-event-id",
        "idempotency-key",
        "x-content-sha256",
    ] {
        assert!(headers.contains(header), "{header} in {headers}");
    }
    assert_eq!(ok.header("access-control-max-age"), Some("600"));
    assert_eq!(ok.header("access-control-allow-credentials"), None);

    let refused = preflight(&app, "https://evil.example", "POST", "content-type").await;
    assert_eq!(
        refused.header("access-control-allow-origin"),
        None,
        "{refused:?}"
    );
    let delete = preflight(&app, GUI, "DELETE", "content-type").await;
    assert_eq!(
        delete.header("access-control-allow-origin"),
        None,
        "{delete:?}"
    );

    // The requests themselves: the GUI may read, the other origin's page not.
    let post = app
        .call(
            "POST",
            "/v1/notifications",
            &[("Origin", GUI)],
            Some(r#"{"level":"info","message":"from the GUI"}"#),
        )
        .await;
    assert_eq!(
        post.status, 201,
        "a CORS origin also passes the Origin check: {post:?}"
    );
    assert_eq!(post.header("access-control-allow-origin"), Some(GUI));
    let other = app
        .call(
            "GET",
            "/v1/devices",
            &[("Origin", "https://evil.example")],
            None,
        )
        .await;
    assert_eq!(other.header("access-control-allow-origin"), None);
    let own = format!("http://127.0.0.1:{}", app.port);
    let own_post = app
        .call(
            "POST",
            "/v1/notifications",
            &[("Origin", &own)],
            Some(r#"{"level":"info","message":"own page"}"#),
        )
        .await;
    assert_eq!(own_post.status, 201, "edgebus's own page is unaffected");

    let mut sse = app
        .sse("/v1/events?topic=notifications/%23", &[("Origin", GUI)])
        .await
        .expect("SSE from the GUI");
    assert_eq!(sse.header("access-control-allow-origin"), Some(GUI));
    sse.snapshot().await;
}

#[actix_web::test]
async fn any_origin_only_when_written() {
    // `*` needs credentials: without them any page could read everything.
    let app = spawn_app_with(
        "[http]\ncors_origins = [\"*\"]\n[auth]\napi_keys = [{ name = \"gui\", key = \"cors-test-key-0123456789\", roles = [\"viewer\"] }]",
    )
    .await;
    let answer = preflight(&app, "https://anywhere.example", "GET", "last-event-id").await;
    assert_eq!(
        answer.header("access-control-allow-origin"),
        Some("*"),
        "{answer:?}"
    );
    assert_eq!(answer.header("access-control-allow-credentials"), None);
}
