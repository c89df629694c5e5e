//! The cluster tests' fixtures, checked on their own: HAProxy in front of
//! real edgebus processes (failing over when one is SIGKILLed), a
//! [`Node`] on an external broker that dies and comes back on its port,
//! and a private redis-server killed and restarted.

use std::time::Instant;

use crate::broker::Mosquitto;
use crate::haproxy::{Balance, Haproxy};
use crate::helpers::{metrics_json, unique, Publisher, Service, WsClient, WsEvent, WAIT};
use crate::node::Node;
use crate::redis_proc::RedisServer;
use crate::sse_client::SseClient;
use crate::tools::{require_tool, tool_path};

/// Polls `GET /readyz` through the proxy until backend `index` answers 200.
async fn wait_served_by(proxy: &Haproxy, index: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = proxy.get("/readyz").await;
        if answer.status == 200 && answer.backend == Some(index) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "n{index} never answered through HAProxy; last {answer:?}\n{}",
            proxy.log_tail(20)
        );
        actix_web::rt::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The next `count` answers all come from backend `index`.
async fn all_served_by(proxy: &Haproxy, index: usize, count: usize) {
    for _ in 0..count {
        let answer = proxy.get("/readyz").await;
        assert_eq!(
            (answer.status, answer.backend),
            (200, Some(index)),
            "{answer:?}"
        );
    }
}

#[test]
fn tools_are_found_on_path_or_in_system_dirs() {
    assert!(tool_path("sh").is_some());
    assert!(tool_path("edgebus-no-such-tool").is_none());
}

#[actix_web::test]
async fn haproxy_first_pins_clients_and_fails_over_when_the_first_is_killed() {
    if !require_tool("haproxy") {
        return;
    }
    let first = Service::start(&[]).await;
    let second = Service::start(&[]).await;
    let proxy = Haproxy::start_with(&[first.port, second.port], Balance::First);
    proxy.wait_backends_up(2).await;
    all_served_by(&proxy, 0, 5).await;
    let answer = proxy.get("/readyz").await;
    assert!(answer.body.contains("subscribed"), "{answer:?}");

    drop(first); // SIGKILL

    // Redispatch carries requests to the second before the health checks
    // mark the first down; then every request goes there.
    wait_served_by(&proxy, 1).await;
    proxy.wait_backend_down(0).await;
    all_served_by(&proxy, 1, 5).await;
}

#[actix_web::test]
async fn haproxy_round_robin_spreads_requests_over_both_services() {
    if !require_tool("haproxy") {
        return;
    }
    let a = Service::start(&[]).await;
    let b = Service::start(&[]).await;
    let proxy = Haproxy::start(&[a.port, b.port]);
    proxy.wait_backends_up(2).await;
    // Both serve, in turn while both pass their checks; a check that times
    // out on a loaded machine takes one out for a moment, so ask until
    // each has answered (bounded), not a fixed ten times.
    let mut seen = [0; 2];
    let deadline = std::time::Instant::now() + crate::helpers::WAIT;
    while seen.contains(&0) && std::time::Instant::now() < deadline {
        let answer = proxy.get("/readyz").await;
        assert_eq!(answer.status, 200, "{answer:?}");
        seen[answer.backend.expect("a backend answered")] += 1;
    }
    assert!(seen.iter().all(|&n| n > 0), "served by {seen:?}");
}

#[actix_web::test]
async fn node_on_an_external_broker_dies_on_sigkill_and_restarts_on_its_port() {
    if !require_tool("haproxy") || !require_tool("mosquitto") {
        return;
    }
    let (_broker, mqtt_port) = Mosquitto::on_free_port();
    let mut a = Node::start(mqtt_port, &[]).await;
    let b = Node::start(mqtt_port, &[]).await;
    let proxy = Haproxy::start_with(&[a.port(), b.port()], Balance::First);
    proxy.wait_backends_up(2).await;
    all_served_by(&proxy, 0, 3).await;

    let port = a.port();
    a.kill();
    assert!(!a.is_running());
    wait_served_by(&proxy, 1).await;
    proxy.wait_backend_down(0).await;

    a.restart().await;
    assert_eq!(a.port(), port);
    let (status, _) = a.get("/readyz").await;
    assert_eq!(status, 200);
    // `first` prefers n0 again as soon as a health check passes.
    wait_served_by(&proxy, 0).await;
    drop(b);
}

#[actix_web::test]
async fn websocket_and_sse_through_haproxy_carry_live_events_until_the_node_dies() {
    if !require_tool("haproxy") || !require_tool("mosquitto") {
        return;
    }
    let (_broker, mqtt_port) = Mosquitto::on_free_port();
    let mut node = Node::start(mqtt_port, &[]).await;
    let proxy = Haproxy::start_with(&[node.port()], Balance::First);
    proxy.wait_backends_up(1).await;
    let device = unique("proxied");
    let topic = format!("devices/{device}/metrics");
    let query = format!("?topic={}", topic.replace('/', "%2F"));

    let mut ws = WsClient::connect(&format!("ws://127.0.0.1:{}/v1/ws{query}", proxy.port())).await;
    assert!(ws.snapshot().await.is_empty());
    let mut sse = SseClient::open(proxy.port(), &format!("/v1/events{query}"), &[])
        .await
        .expect("200");
    assert_eq!(sse.header("x-edgebus-backend"), Some("n0"));
    sse.snapshot().await;

    let mut publisher = Publisher::connect(mqtt_port).await;
    publisher
        .publish(&topic, metrics_json(&device, 1, 42.0))
        .await;
    assert_eq!(ws.next_event().await["payload"]["timestamp"], 1);
    assert_eq!(sse.next_event().await.json()["payload"]["timestamp"], 1);

    node.kill();
    assert!(matches!(ws.next().await, WsEvent::Closed(_)));
    assert!(sse.ends_within(WAIT).await);
}

#[actix_web::test]
async fn node_in_cluster_mode_becomes_ready_on_its_own_redis_and_broker() {
    if !require_tool("redis-server") || !require_tool("mosquitto") {
        return;
    }
    let (_broker, mqtt_port) = Mosquitto::on_free_port();
    let redis = RedisServer::start();
    let a = Node::cluster(mqtt_port, &redis.url(), "a", &[]).await;
    let b = Node::cluster(mqtt_port, &redis.url(), "b", &[]).await;
    for node in [&a, &b] {
        let (status, body) = node.get("/readyz").await;
        assert_eq!(status, 200, "{body}");
    }
}

#[actix_web::test]
#[should_panic(expected = "cluster.redis_url")]
async fn node_that_cannot_start_fails_with_its_own_words() {
    // Settings are checked before anything connects: no broker needed.
    Node::start(1, &[("EDGEBUS__CLUSTER__REDIS_URL", "http://not-redis")]).await;
}

#[actix_web::test]
async fn redis_server_dies_on_sigkill_and_restarts_on_its_port() {
    if !require_tool("redis-server") {
        return;
    }
    let mut redis = RedisServer::start();
    assert!(redis.ping());
    let port = redis.port();
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}"));

    // The crate edgebus uses reaches it too.
    let client = redis::Client::open(redis.url()).expect("a Redis URL");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut connection)
        .await
        .expect("SET");

    redis.kill();
    assert!(!redis.ping());

    redis.restart();
    assert_eq!(redis.port(), port);
    assert!(redis.ping());
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("connects again");
    let value: Option<String> = redis::cmd("GET")
        .arg("k")
        .query_async(&mut connection)
        .await
        .expect("GET");
    assert_eq!(value, None, "a restart starts empty");
}
