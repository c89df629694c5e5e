//! `sessions.max_streams_per_identity` in cluster mode: one API key's
//! WebSocket and SSE streams counted across every instance in Redis (a
//! private `redis-server`), freed at once when a stream closes, within the
//! lease when its instance dies, and 503 (never 429) while Redis is away.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::auth::{bearer, keys_toml, ADMIN, VIEWER};
use crate::broker::Mosquitto;
use crate::helpers::{spawn_app_external, unique, TestApp, WAIT};
use crate::node::Node;
use crate::redis_proc::RedisServer;
use crate::sse_client::{Refused, SseClient, SseItem};

const STREAM: &str = "/v1/events?topic=notifications/%23";

/// What every instance of a test's cluster shares: Redis, prefix, keys, a
/// cap of 2 and `lease_seconds`.
fn settings(redis: &RedisServer, prefix: &str, lease_seconds: u64, extra: &str) -> String {
    format!(
        "[cluster]\nredis_url = \"{}\"\nkey_prefix = \"{prefix}\"\nstream_lease_seconds = \
         {lease_seconds}\n[sessions]\nmax_streams_per_identity = 2\n{extra}{}",
        redis.url(),
        keys_toml()
    )
}

async fn open(port: u16, key: &str) -> Result<SseClient, Refused> {
    let auth = bearer(key);
    SseClient::open(port, STREAM, &[("Authorization", auth.as_str())]).await
}

/// A stream of `key` on `port` that the server accepted and started.
async fn opened(port: u16, key: &str) -> SseClient {
    let mut stream = open(port, key).await.unwrap_or_else(|r| panic!("{r:?}"));
    stream.snapshot().await;
    stream
}

fn assert_refused(refused: &Refused, status: u16) {
    assert_eq!(refused.status, status, "{refused:?}");
    assert!(
        refused.headers.iter().any(|(n, _)| n == "retry-after"),
        "{refused:?}"
    );
}

/// Opens a stream on `port` as soon as a slot is free: the time it took.
/// Every refusal on the way is a 429.
async fn open_when_free(port: u16, key: &str, within: Duration) -> (SseClient, Duration) {
    let started = Instant::now();
    loop {
        match open(port, key).await {
            Ok(mut stream) => {
                stream.snapshot().await;
                return (stream, started.elapsed());
            }
            Err(refused) => {
                assert_refused(&refused, 429);
                assert!(
                    started.elapsed() < within,
                    "no slot was freed within {within:?}"
                );
                actix_web::rt::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// A connection to the test's Redis and every identity's slot set.
async fn slot_sets(
    redis: &RedisServer,
    prefix: &str,
) -> (redis::aio::MultiplexedConnection, Vec<String>) {
    let mut conn = redis::Client::open(redis.url())
        .expect("URL")
        .get_multiplexed_async_connection()
        .await
        .expect("test connects to its Redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:streams:*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    (conn, keys)
}

async fn members(redis: &RedisServer, prefix: &str) -> usize {
    let (mut conn, keys) = slot_sets(redis, prefix).await;
    let mut count = 0;
    for key in keys {
        let n: usize = redis::cmd("ZCARD")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("ZCARD");
        count += n;
    }
    count
}

/// The latest lease expiry (ms, Redis's clock) of any stream slot.
async fn latest_expiry(redis: &RedisServer, prefix: &str) -> u64 {
    let (mut conn, keys) = slot_sets(redis, prefix).await;
    let mut latest = 0;
    for key in keys {
        let top: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(&key)
            .arg(-1)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await
            .expect("ZRANGE");
        latest = top.iter().map(|(_, s)| *s as u64).fold(latest, u64::max);
    }
    latest
}

#[actix_web::test]
async fn the_identity_cap_holds_across_instances_and_a_closed_stream_frees_it_at_once() {
    let Some(redis) = RedisServer::start_if_installed() else {
        return;
    };
    let (_broker, mqtt_port) = Mosquitto::on_free_port();
    let prefix = unique("caps");
    let shared = settings(&redis, &prefix, 30, "");
    let a = spawn_app_external(mqtt_port, &shared).await;
    let b = spawn_app_external(mqtt_port, &shared).await;

    let on_a = opened(a.port, VIEWER).await;
    let _on_b = opened(b.port, VIEWER).await;
    let third_on_a = open(a.port, VIEWER).await.err().expect("capped on A");
    let third_on_b = open(b.port, VIEWER).await.err().expect("capped on B");
    let ticket = b.ticket(Some(VIEWER)).await;
    let ws_on_b = b
        .call("GET", &format!("/v1/ws?ticket={ticket}"), &[], None)
        .await;
    let other_identity = opened(b.port, ADMIN).await;

    assert_refused(&third_on_a, 429);
    assert_refused(&third_on_b, 429);
    assert!(
        third_on_a.body["error"]
            .as_str()
            .is_some_and(|e| e.contains("sessions.max_streams_per_identity")),
        "{third_on_a:?}"
    );
    assert_eq!(ws_on_b.status, 429, "WebSockets count too: {ws_on_b:?}");
    assert!(ws_on_b.header("retry-after").is_some());
    assert_eq!(members(&redis, &prefix).await, 3, "two of ops, one of root");

    drop(on_a);
    let (_again, _) = open_when_free(b.port, VIEWER, WAIT).await;
    assert_eq!(members(&redis, &prefix).await, 3);
    drop(other_identity);
}

#[actix_web::test]
async fn a_killed_instances_slots_free_within_the_lease() {
    let Some(redis) = RedisServer::start_if_installed() else {
        return;
    };
    let (_broker, mqtt_port) = Mosquitto::on_free_port();
    let prefix = unique("caps");
    let lease = Duration::from_secs(3);
    let shared = settings(&redis, &prefix, lease.as_secs(), "");
    let mut dying = Node::cluster_with_config(
        mqtt_port,
        &redis.url(),
        &unique("dying"),
        &[],
        Some(&shared),
    )
    .await;
    let survivor = spawn_app_external(mqtt_port, &shared).await;
    let held: Vec<SseClient> = vec![
        opened(dying.port(), VIEWER).await,
        opened(dying.port(), VIEWER).await,
    ];
    // The leases are being renewed, not merely young: wait until Redis shows
    // a lease expiry later than any the slots were taken with.
    let taken = latest_expiry(&redis, &prefix).await;
    let deadline = std::time::Instant::now() + WAIT;
    while latest_expiry(&redis, &prefix).await <= taken {
        assert!(
            std::time::Instant::now() < deadline,
            "the leases are never renewed"
        );
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert_refused(&open(survivor.port, VIEWER).await.err().expect("full"), 429);

    dying.kill();
    let refused_at_once = open(survivor.port, VIEWER).await;
    let (_stream, took) = open_when_free(survivor.port, VIEWER, WAIT).await;

    assert_refused(&refused_at_once.err().expect("still leased"), 429);
    assert!(
        took <= lease + lease / 3 + Duration::from_secs(2),
        "freed after {took:?}, lease {lease:?}"
    );
    drop(held);
}

#[actix_web::test]
async fn redis_away_is_503_for_new_streams_while_open_ones_keep_flowing() {
    let Some(mut redis) = RedisServer::start_if_installed() else {
        return;
    };
    let (_broker, mqtt_port) = Mosquitto::on_free_port();
    let prefix = unique("caps");
    let app: TestApp = spawn_app_external(
        mqtt_port,
        // A short lease: the renewal after Redis comes back is soon.
        &settings(&redis, &prefix, 3, "keepalive_seconds = 1\n"),
    )
    .await;
    let mut open_stream = opened(app.port, VIEWER).await;

    redis.kill();
    let refused = open(app.port, VIEWER).await.err().expect("Redis is away");
    assert_refused(&refused, 503);
    // Still open, still written to (keepalives) while Redis is away.
    for _ in 0..2 {
        assert!(matches!(
            open_stream.next_item().await,
            Some(SseItem::Comment(_))
        ));
    }

    redis.restart();
    let deadline = Instant::now() + WAIT;
    let mut second = loop {
        match open(app.port, VIEWER).await {
            Ok(mut stream) => {
                stream.snapshot().await;
                break stream;
            }
            Err(refused) => {
                assert_refused(&refused, 503);
                assert!(Instant::now() < deadline, "never opened again: {refused:?}");
                actix_web::rt::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // Redis came back empty: the renewal counts the stream that stayed open.
    let deadline = Instant::now() + WAIT;
    while members(&redis, &prefix).await < 2 {
        assert!(Instant::now() < deadline, "the open stream was not renewed");
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert_refused(&open(app.port, VIEWER).await.err().expect("full"), 429);

    let admin = bearer(ADMIN);
    let body = json!({"level": "info", "message": "after the outage", "source": "test"});
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = app
            .call(
                "POST",
                "/v1/notifications",
                &[("Authorization", admin.as_str())],
                Some(&body.to_string()),
            )
            .await;
        if answer.status == 201 {
            break;
        }
        assert_eq!(answer.status, 503, "{answer:?}");
        assert!(Instant::now() < deadline, "publishing never resumed");
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    for stream in [&mut open_stream, &mut second] {
        let event = stream.next_event().await;
        assert_eq!(
            event.json()["payload"]["message"],
            "after the outage",
            "{event:?}"
        );
    }
}
