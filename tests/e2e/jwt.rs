//! JWTs beside API keys: `Authorization: Bearer <jwt>` on every endpoint
//! a key opens, with the token's roles; 401 for expired, forged or
//! misaddressed tokens; 403 without a role; tickets for JWT identities;
//! `?token=<jwt>` on SSE only behind the compatibility flag; stream caps
//! per subject.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use edgebus::actors::alerts::{Clock, ManualClock};
use edgebus::actors::event::now_ms;

use crate::auth::{bearer, keys_toml, VIEWER};
use crate::helpers::{spawn_app_with, spawn_app_with_clock, TestApp};

const SECRET: &str = "e2e-hs256-secret-of-at-least-32-bytes";
const ISSUER: &str = "https://decnet.example";
const AUDIENCE: &str = "edgebus";
const STREAM: &str = "/v1/events?topic=notifications/%23";
const NOTIFICATION: &str = r#"{"level":"info","message":"from a JWT"}"#;

pub fn jwt_toml(extra: &str) -> String {
    format!(
        "{}[auth.jwt]\nhs256_secret = \"{SECRET}\"\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\n{extra}",
        keys_toml()
    )
}

async fn jwt_app(extra: &str) -> (TestApp, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(now_ms()));
    let app = spawn_app_with_clock(&jwt_toml(extra), Some(clock.clone())).await;
    (app, clock)
}

/// Claims for `sub` with `roles`, valid five minutes on `clock`.
fn claims(clock: &ManualClock, sub: &str, roles: Value) -> Value {
    json!({
        "sub": sub,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": clock.now_ms() / 1000 + 300,
        "roles": roles,
    })
}

fn sign(claims: &Value) -> String {
    let key = EncodingKey::from_secret(SECRET.as_bytes()).expect("key");
    encode(&Header::new(Algorithm::HS256), claims, &key).expect("signed")
}

pub fn token(clock: &ManualClock, sub: &str, roles: Value) -> String {
    sign(&claims(clock, sub, roles))
}

#[actix_web::test]
async fn a_bearer_jwt_opens_what_its_roles_allow_everywhere_a_key_does() {
    let (app, clock) = jwt_app("").await;
    let publisher = bearer(&token(&clock, "tool-7", json!(["publisher"])));
    let viewer = bearer(&token(&clock, "alice", json!("viewer openid")));
    let nobody = bearer(&token(&clock, "mallory", json!(["dba"])));

    let published = app
        .call(
            "POST",
            "/v1/notifications",
            &[("Authorization", &publisher)],
            Some(NOTIFICATION),
        )
        .await;
    assert_eq!(published.status, 201, "{published:?}");
    let raw = app
        .call(
            "POST",
            "/v1/publish/notifications/jwt",
            &[("Authorization", &publisher)],
            Some(r#"{"a":1}"#),
        )
        .await;
    assert_eq!(raw.status, 201, "{raw:?}");

    let devices = app
        .call("GET", "/v1/devices", &[("Authorization", &viewer)], None)
        .await;
    assert_eq!(devices.status, 200, "{devices:?}");
    let mut stream = app
        .sse(STREAM, &[("Authorization", viewer.as_str())])
        .await
        .expect("a viewer JWT opens a stream");
    stream.snapshot().await;
    let metrics = app
        .call("GET", "/metrics", &[("Authorization", &viewer)], None)
        .await;
    assert_eq!(metrics.status, 200);

    let ping = app
        .call("POST", "/v1/ping", &[("Authorization", &nobody)], None)
        .await;
    assert_eq!(ping.status, 200, "any valid token may ping");
    assert_eq!(ping.body["identity"], "jwt:mallory");
    assert_eq!(ping.body["roles"], json!([]));

    // A token with no edgebus role: 403 wherever a role is needed.
    let viewer_publishing = app
        .call(
            "POST",
            "/v1/notifications",
            &[("Authorization", &viewer)],
            Some(NOTIFICATION),
        )
        .await;
    assert_eq!(viewer_publishing.status, 403);
    assert!(viewer_publishing.error().contains("publisher"));
    for (method, path) in [
        ("GET", "/v1/devices"),
        ("POST", "/v1/auth/ticket"),
        ("GET", "/metrics"),
    ] {
        let refused = app
            .call(method, path, &[("Authorization", &nobody)], None)
            .await;
        assert_eq!(refused.status, 403, "{method} {path}: {refused:?}");
        assert!(refused.error().contains("viewer"));
    }
    let no_role_stream = app
        .sse(STREAM, &[("Authorization", nobody.as_str())])
        .await
        .err()
        .expect("refused");
    assert_eq!(no_role_stream.status, 403);

    // API keys still work beside JWTs.
    let key = app
        .call(
            "GET",
            "/v1/devices",
            &[("Authorization", &bearer(VIEWER))],
            None,
        )
        .await;
    assert_eq!(key.status, 200);
}

#[actix_web::test]
async fn a_jwt_identity_gets_tickets_for_browser_streams() {
    let (app, clock) = jwt_app("").await;
    let viewer = token(&clock, "alice", json!(["viewer"]));
    let ticket = app.ticket(Some(&viewer)).await;
    let mut stream = app
        .sse(&format!("{STREAM}&ticket={ticket}"), &[])
        .await
        .expect("the ticket opens a stream");
    stream.snapshot().await;
    let mut ws = app
        .ws(&format!("?ticket={}", app.ticket(Some(&viewer)).await))
        .await;
    ws.snapshot().await;
}

#[actix_web::test]
async fn expired_forged_and_misaddressed_tokens_are_401_with_the_reason() {
    let (app, clock) = jwt_app("").await;
    let good = claims(&clock, "alice", json!(["viewer"]));
    let with = |key: &str, value: Value| {
        let mut c = good.clone();
        c[key] = value;
        sign(&c)
    };
    let other_key = EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes!").expect("key");
    let forged = encode(&Header::new(Algorithm::HS256), &good, &other_key).expect("signed");
    let expiring = sign(&good);
    let cases = [
        (with("aud", json!("someone-else")), "audience"),
        (with("iss", json!("https://evil.example")), "issuer"),
        (forged, "signature"),
        ("bm90IGpzb24.bm90IGpzb24.c2ln".to_owned(), "malformed"),
    ];
    for (token, reason) in &cases {
        let auth = bearer(token);
        let answer = app
            .call("GET", "/v1/devices", &[("Authorization", &auth)], None)
            .await;
        assert_eq!(answer.status, 401, "{reason}: {answer:?}");
        assert!(answer.error().contains(reason), "{reason}: {answer:?}");
        assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
        let stream = app
            .sse(STREAM, &[("Authorization", auth.as_str())])
            .await
            .err()
            .expect("refused");
        assert_eq!(stream.status, 401, "{reason}");
    }

    // Valid now; past exp plus the 30 s leeway on the injected clock, not.
    let auth = bearer(&expiring);
    let headers = [("Authorization", auth.as_str())];
    assert_eq!(
        app.call("GET", "/v1/devices", &headers, None).await.status,
        200
    );
    clock.advance(Duration::from_secs(330));
    let expired = app.call("GET", "/v1/devices", &headers, None).await;
    assert_eq!(expired.status, 401);
    assert!(expired.error().contains("expired"), "{expired:?}");

    // Oversized bearers are refused before any parsing.
    let huge = bearer(&format!("a.{}.c", "b".repeat(9000)));
    let answer = app
        .call("GET", "/v1/devices", &[("Authorization", &huge)], None)
        .await;
    assert_eq!(answer.status, 401);
    assert!(answer.error().contains("8192"), "{answer:?}");
}

#[actix_web::test]
async fn a_jwt_in_the_url_opens_sse_only_behind_the_compatibility_flag() {
    let (strict, clock) = jwt_app("").await;
    let viewer = token(&clock, "alice", json!(["viewer"]));
    for param in ["token", "access_token"] {
        let refused = strict
            .sse(&format!("{STREAM}&{param}={viewer}"), &[])
            .await
            .err()
            .expect("a JWT in a URL never authenticates by default");
        assert_eq!(refused.status, 401, "{param}");
        assert!(
            refused.body["error"].as_str().unwrap().contains("URL"),
            "{param}"
        );
    }

    let (compat, clock) = jwt_app("allow_query_token_on_streams = true").await;
    let viewer = token(&clock, "alice", json!(["viewer"]));
    // What DECNET's older frontend sends on its EventSource.
    let mut stream = compat
        .sse(&format!("{STREAM}&token={viewer}"), &[])
        .await
        .expect("?token=<jwt> opens SSE with the flag");
    stream.snapshot().await;
    let forged = format!("{viewer}x");
    let refused = compat
        .sse(&format!("{STREAM}&token={forged}"), &[])
        .await
        .err()
        .expect("still verified");
    assert_eq!(refused.status, 401);
    // Only `?token=`, only SSE.
    let other_param = compat
        .sse(&format!("{STREAM}&access_token={viewer}"), &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(other_param.status, 401);
    let ws = compat
        .call("GET", &format!("/v1/ws?token={viewer}"), &[], None)
        .await;
    assert_eq!(ws.status, 401, "{ws:?}");
    assert!(ws.error().contains("URL"));
    // Not on plain API calls either: they read no URL credential at all.
    let devices = compat
        .call("GET", &format!("/v1/devices?token={viewer}"), &[], None)
        .await;
    assert_eq!(devices.status, 401);
}

#[actix_web::test]
async fn a_subjects_streams_are_capped_per_sub_whatever_token_it_holds() {
    let (app, clock) = jwt_app("[sessions]\nmax_streams_per_identity = 2").await;
    // Two different tokens for one subject count as one identity. The
    // subject is named like the API key "ops", which keeps its own cap.
    let first = bearer(&token(&clock, "ops", json!(["viewer"])));
    clock.advance(Duration::from_secs(1));
    let second_token = token(&clock, "ops", json!(["viewer"]));
    let second = bearer(&second_token);
    assert_ne!(first, second);
    let mut a = app
        .sse(STREAM, &[("Authorization", first.as_str())])
        .await
        .expect("first");
    a.snapshot().await;
    let ticket = app.ticket(Some(&second_token)).await;
    let mut b = app
        .sse(&format!("{STREAM}&ticket={ticket}"), &[])
        .await
        .expect("second, by ticket");
    b.snapshot().await;
    let third = app
        .sse(STREAM, &[("Authorization", second.as_str())])
        .await
        .err()
        .expect("capped");
    assert_eq!(third.status, 429);
    assert!(
        third.body["error"].as_str().unwrap().contains("jwt:ops"),
        "{third:?}"
    );
    let bob = bearer(&token(&clock, "bob", json!(["viewer"])));
    let mut other = app
        .sse(STREAM, &[("Authorization", bob.as_str())])
        .await
        .expect("another subject");
    other.snapshot().await;
    let key = bearer(VIEWER);
    let mut by_key = app
        .sse(STREAM, &[("Authorization", key.as_str())])
        .await
        .expect("the API key \"ops\" is another identity");
    by_key.snapshot().await;
}

#[actix_web::test]
async fn an_es256_public_key_file_verifies_tokens_of_its_private_key() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt");
    let app = spawn_app_with(&format!(
        "{}[auth.jwt]\npublic_key_file = \"{fixtures}/es256_public.pem\"\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"",
        keys_toml()
    ))
    .await;
    let now_s = now_ms() / 1000;
    let body = json!({
        "sub": "svc", "iss": ISSUER, "aud": [AUDIENCE], "exp": now_s + 300, "roles": ["admin"],
    });
    let sign_with = |pem: &str| {
        let key =
            EncodingKey::from_ec_pem(&std::fs::read(format!("{fixtures}/{pem}")).expect("fixture"))
                .expect("key");
        bearer(&encode(&Header::new(Algorithm::ES256), &body, &key).expect("signed"))
    };
    let good = sign_with("es256_private.pem");
    let answer = app
        .call(
            "POST",
            "/v1/notifications",
            &[("Authorization", &good)],
            Some(NOTIFICATION),
        )
        .await;
    assert_eq!(answer.status, 201, "{answer:?}");
    let forged = sign_with("other_es256_private.pem");
    let answer = app
        .call("GET", "/v1/devices", &[("Authorization", &forged)], None)
        .await;
    assert_eq!(answer.status, 401);
    assert!(answer.error().contains("signature"));
}

#[actix_web::test]
async fn a_token_with_no_roles_claim_gets_the_default_roles_and_only_then() {
    // DECNET's own tokens: no roles claim (its roles live in its database)
    // and the caller in `uuid`, not `sub`.
    let (app, clock) = jwt_app("identity_claim = \"uuid\"\ndefault_roles = [\"viewer\"]\n").await;
    let decnet = |extra: Value| {
        let mut claims = json!({
            "uuid": "7c1e-analyst",
            "iss": ISSUER,
            "aud": AUDIENCE,
            "exp": clock.now_ms() / 1000 + 300,
        });
        if let (Some(claims), Value::Object(extra)) = (claims.as_object_mut(), extra) {
            claims.extend(extra);
        }
        format!("Bearer {}", sign(&claims))
    };
    let plain = decnet(json!({}));
    let mut stream = app
        .sse(STREAM, &[("Authorization", plain.as_str())])
        .await
        .expect("a viewer by default");
    stream.snapshot().await;
    let ping = app
        .call("POST", "/v1/ping", &[("Authorization", &plain)], None)
        .await;
    assert_eq!(ping.body["identity"], "jwt:7c1e-analyst");
    assert_eq!(ping.body["roles"], json!(["viewer"]));
    // A roles claim, even an empty one, is the token's word: no default.
    let empty = decnet(json!({"roles": []}));
    let refused = app
        .sse(STREAM, &[("Authorization", empty.as_str())])
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.status, 403);
    // Defaults never add what a role needs beyond them.
    let publishing = app
        .call(
            "POST",
            "/v1/notifications",
            &[("Authorization", &plain)],
            Some(NOTIFICATION),
        )
        .await;
    assert_eq!(publishing.status, 403);
}
