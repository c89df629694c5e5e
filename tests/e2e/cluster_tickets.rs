//! Stream tickets and `Idempotency-Key`s in cluster mode: two instances
//! share one Redis (a private `redis-server`) and one broker (a private
//! Mosquitto), so a ticket minted on one is redeemed once on either, the
//! ticket cap counts both, and a key publishes once whichever instance it
//! reaches.

use std::time::{Duration, Instant};

use crate::auth::{bearer, keys_toml, PUBLISHER, VIEWER};
use crate::broker::Mosquitto;
use crate::helpers::{spawn_app_external, unique, Answer, TestApp, WAIT};
use crate::redis_proc::RedisServer;

struct Cluster {
    a: TestApp,
    b: TestApp,
    // Dropped after the apps: their teardown never sees a vanished broker.
    _broker: Mosquitto,
}

async fn cluster(redis: &RedisServer, extra: &str) -> Cluster {
    let (broker, mqtt_port) = Mosquitto::on_free_port();
    let settings = format!(
        "[cluster]\nredis_url = \"{}\"\nkey_prefix = \"{}\"\n{}{extra}",
        redis.url(),
        unique("tk"),
        keys_toml()
    );
    let a = spawn_app_external(mqtt_port, &settings).await;
    let b = spawn_app_external(mqtt_port, &settings).await;
    Cluster {
        a,
        b,
        _broker: broker,
    }
}

async fn mint(app: &TestApp) -> Answer {
    let auth = bearer(VIEWER);
    app.call("POST", "/v1/auth/ticket", &[("Authorization", &auth)], None)
        .await
}

fn stream(ticket: &str) -> String {
    format!("/v1/events?topic=notifications/%23&ticket={ticket}")
}

async fn publish(app: &TestApp, source: &str, key: &str, body: &str) -> Answer {
    let auth = bearer(PUBLISHER);
    app.call(
        "POST",
        &format!("/v1/publish/notifications/{source}"),
        &[("Authorization", &auth), ("Idempotency-Key", key)],
        Some(body),
    )
    .await
}

fn assert_retry_later(answer: &Answer) {
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(answer.error().contains("Redis"), "{answer:?}");
    let after: u64 = answer
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After: {answer:?}"));
    assert!(after >= 1);
}

#[actix_web::test]
async fn a_ticket_minted_on_one_instance_opens_one_stream_on_either() {
    let Some(redis) = RedisServer::start_if_installed() else {
        return;
    };
    let c = cluster(&redis, "").await;
    let minted = mint(&c.a).await;
    assert_eq!(minted.status, 200, "{minted:?}");
    let ticket = minted.body["ticket"].as_str().expect("ticket").to_owned();

    let mut opened =
        c.b.sse(&stream(&ticket), &[])
            .await
            .expect("A's ticket opens a stream on B");
    opened.snapshot().await;
    for app in [&c.a, &c.b] {
        let reused = app.sse(&stream(&ticket), &[]).await.err().expect("refused");
        assert_eq!(reused.status, 401, "{:?}", reused.body);
        assert!(reused.body["error"].as_str().unwrap().contains("ticket"));
    }

    // Redeemed at the same moment on both: exactly one stream opens.
    let ticket = c.b.ticket(Some(VIEWER)).await;
    let target = stream(&ticket);
    let (on_a, on_b) = futures_util::join!(c.a.sse(&target, &[]), c.b.sse(&target, &[]));
    let statuses: Vec<u16> = [&on_a, &on_b]
        .iter()
        .map(|r| match r {
            Ok(_) => 200,
            Err(refused) => refused.status,
        })
        .collect();
    let mut sorted = statuses.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [200, 401], "{statuses:?}");
}

#[actix_web::test]
async fn the_ticket_cap_counts_tickets_minted_on_every_instance() {
    let Some(redis) = RedisServer::start_if_installed() else {
        return;
    };
    let c = cluster(&redis, "[sessions]\nmax_tickets_per_identity = 3\n").await;
    let mut held = Vec::new();
    for app in [&c.a, &c.b, &c.a] {
        let minted = mint(app).await;
        assert_eq!(minted.status, 200, "{minted:?}");
        held.push(minted.body["ticket"].as_str().expect("ticket").to_owned());
    }
    for app in [&c.b, &c.a] {
        let refused = mint(app).await;
        assert_eq!(refused.status, 429, "{refused:?}");
        assert!(refused.error().contains("max_tickets_per_identity"));
    }
    // Another identity is not held back.
    let admin = bearer(crate::auth::ADMIN);
    let other =
        c.b.call(
            "POST",
            "/v1/auth/ticket",
            &[("Authorization", &admin)],
            None,
        )
        .await;
    assert_eq!(other.status, 200, "{other:?}");
    // Redeeming one (on B, a ticket minted on A) gives its place back.
    let mut opened = c.b.sse(&stream(&held[0]), &[]).await.expect("opens");
    opened.snapshot().await;
    assert_eq!(mint(&c.b).await.status, 200);
}

#[actix_web::test]
async fn one_idempotency_key_sent_to_both_instances_publishes_once() {
    let Some(redis) = RedisServer::start_if_installed() else {
        return;
    };
    let c = cluster(&redis, "").await;
    let source = unique("idem");
    let auth = bearer(VIEWER);
    let mut sse =
        c.b.sse(
            &format!("/v1/events?topic=notifications/{source}"),
            &[("Authorization", &auth)],
        )
        .await
        .expect("a stream on B");
    sse.snapshot().await;

    let key = unique("key");
    let body = r#"{"v":1}"#;
    let (on_a, on_b) = futures_util::join!(
        publish(&c.a, &source, &key, body),
        publish(&c.b, &source, &key, body)
    );
    let (created, other) = match (on_a.status, on_b.status) {
        (201, _) => (&on_a, &on_b),
        (_, 201) => (&on_b, &on_a),
        _ => panic!("one publish is created: {on_a:?} {on_b:?}"),
    };
    let id = created.body["id"].as_str().expect("an id").to_owned();
    match other.status {
        409 => assert!(other.error().starts_with("in_flight"), "{other:?}"),
        200 => assert_eq!(other.body["id"], id.as_str(), "{other:?}"),
        _ => panic!("the second is in flight or already present: {other:?}"),
    }

    // A later retry anywhere gets the first answer; another body conflicts.
    let deadline = Instant::now() + WAIT;
    let retried = loop {
        let retried = publish(&c.b, &source, &key, body).await;
        if retried.status != 409 || Instant::now() >= deadline {
            break retried;
        }
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(retried.status, 200, "{retried:?}");
    assert_eq!(retried.body["status"], "already-present");
    assert_eq!(retried.body["id"], id.as_str());
    let different = publish(&c.b, &source, &key, r#"{"v":2}"#).await;
    assert_eq!(different.status, 409, "{different:?}");
    assert!(!different.error().starts_with("in_flight"), "{different:?}");

    // Exactly one event: the next one the client sees is a marker sent after.
    let marker = publish(&c.a, &source, &unique("marker"), r#"{"v":"marker"}"#).await;
    assert_eq!(marker.status, 201, "{marker:?}");
    let first = sse.next_event().await;
    assert_eq!(first.id.as_deref(), Some(id.as_str()), "{first:?}");
    let second = sse.next_event().await;
    assert_eq!(
        second.id.as_deref(),
        marker.body["id"].as_str(),
        "{second:?}"
    );
}

#[actix_web::test]
async fn a_dead_redis_is_a_503_for_tickets_and_keys_and_a_restarted_one_is_used_again() {
    let Some(mut redis) = RedisServer::start_if_installed() else {
        return;
    };
    let c = cluster(&redis, "").await;
    let ticket = c.a.ticket(Some(VIEWER)).await;
    let source = unique("down");

    redis.kill();
    assert_retry_later(&mint(&c.a).await);
    // Never a 401 for a ticket that may well be valid.
    let redeem = c.b.sse(&stream(&ticket), &[]).await.err().expect("refused");
    assert_eq!(redeem.status, 503, "{:?}", redeem.body);
    assert!(
        redeem.headers.iter().any(|(n, _)| n == "retry-after"),
        "{:?}",
        redeem.headers
    );
    assert_retry_later(&publish(&c.b, &source, "k1", r#"{"v":1}"#).await);

    // Back, empty: the next calls reconnect by themselves.
    redis.restart();
    let deadline = Instant::now() + WAIT;
    let minted = loop {
        let minted = mint(&c.a).await;
        if minted.status != 503 || Instant::now() >= deadline {
            break minted;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(minted.status, 200, "{minted:?}");
    let ticket = minted.body["ticket"].as_str().expect("ticket");
    let mut opened = c.b.sse(&stream(ticket), &[]).await.expect("opens on B");
    opened.snapshot().await;
    let deadline = Instant::now() + WAIT;
    let published = loop {
        let published = publish(&c.b, &source, "k1", r#"{"v":1}"#).await;
        if published.status != 503 || Instant::now() >= deadline {
            break published;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(published.status, 201, "{published:?}");
    let again = publish(&c.a, &source, "k1", r#"{"v":1}"#).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.body["id"], published.body["id"]);
}
