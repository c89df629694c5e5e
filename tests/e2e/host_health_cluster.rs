//! Host-health reports in cluster mode: two instances share one Redis (a
//! private `redis-server`) and one external broker (a private Mosquitto),
//! so a report stored through one is listed by the other, and the host cap
//! holds across both.

use std::time::Instant;

use serde_json::{json, Value};

use crate::broker::Mosquitto;
use crate::helpers::{spawn_app_external, unique, Answer, TestApp, WAIT};
use crate::redis_proc::RedisServer;

/// Two instances in one cluster: the same Redis, key prefix and broker.
struct Cluster {
    a: TestApp,
    b: TestApp,
    prefix: String,
    // Dropped after the apps: their teardown never sees a vanished broker.
    _broker: Mosquitto,
}

async fn cluster(redis: &RedisServer, extra: &str) -> Cluster {
    let (broker, mqtt_port) = Mosquitto::on_free_port();
    let prefix = unique("hh");
    let settings = format!(
        "[cluster]\nredis_url = \"{}\"\nkey_prefix = \"{prefix}\"\n{extra}",
        redis.url()
    );
    let a = spawn_app_external(mqtt_port, &settings).await;
    let b = spawn_app_external(mqtt_port, &settings).await;
    Cluster {
        a,
        b,
        prefix,
        _broker: broker,
    }
}

async fn put(app: &TestApp, host: &str, body: &str) -> Answer {
    app.call("PUT", &format!("/v1/host-health/{host}"), &[], Some(body))
        .await
}

async fn list(app: &TestApp) -> Answer {
    app.call("GET", "/v1/host-health", &[], None).await
}

fn host_ids(listing: &Value) -> Vec<&str> {
    listing["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .filter_map(|h| h["host_id"].as_str())
        .collect()
}

async fn redis_conn(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .expect("URL")
        .get_multiplexed_async_connection()
        .await
        .expect("test connects to its Redis")
}

#[actix_web::test]
async fn a_report_stored_through_one_instance_is_listed_by_the_other() {
    let Some(redis) = RedisServer::start_if_installed() else {
        return;
    };
    let c = cluster(&redis, "").await;
    let report = json!({"disk": "ok", "checks": [{"name": "ntp", "ok": false}]});

    let stored = put(&c.a, "lab-01", &report.to_string()).await;
    let other = put(&c.b, "lab-00", r#"{"n":0}"#).await;
    let refused = put(&c.b, "lab-02", "[1,2]").await;

    assert_eq!(stored.status, 200, "{stored:?}");
    assert_eq!(
        stored.body,
        json!({"status": "stored", "host_id": "lab-01"})
    );
    assert_eq!(other.status, 200, "{other:?}");
    assert_eq!(refused.status, 400, "the same validation: {refused:?}");
    let (on_a, on_b) = (list(&c.a).await, list(&c.b).await);
    assert_eq!(on_a.status, 200);
    assert_eq!(on_b.status, 200);
    assert_eq!(on_a.body, on_b.body, "one store, one listing");
    assert_eq!(host_ids(&on_b.body), vec!["lab-00", "lab-01"], "sorted");
    assert_eq!(on_b.body["hosts"][1]["report"], report);
    assert!(on_b.body["hosts"][1]["received_at_ms"].as_u64().unwrap() > 1_700_000_000_000);
    // Stored as the file store writes it: the one-line record, in one hash.
    let mut conn = redis_conn(&redis).await;
    let record: Vec<u8> = redis::cmd("HGET")
        .arg(format!("{}:host-health", c.prefix))
        .arg("lab-01")
        .query_async(&mut conn)
        .await
        .expect("HGET");
    assert!(!record.contains(&b'\n'));
    let record: Value = serde_json::from_slice(&record).expect("a JSON record");
    assert_eq!(record, on_b.body["hosts"][1]);

    // What this version never writes is skipped, as files are: a record
    // that is not JSON, a field that is no host id.
    let _: () = redis::cmd("HSET")
        .arg(format!("{}:host-health", c.prefix))
        .arg(&["lab-03", "{not json", "../x", "{}"])
        .query_async(&mut conn)
        .await
        .expect("HSET");
    let listed = list(&c.a).await;
    assert_eq!(listed.status, 200, "{listed:?}");
    assert_eq!(host_ids(&listed.body), vec!["lab-00", "lab-01"]);
}

#[actix_web::test]
async fn the_host_cap_holds_across_instances_and_known_hosts_still_update() {
    let Some(redis) = RedisServer::start_if_installed() else {
        return;
    };
    let c = cluster(&redis, "[host_health]\nmax_hosts = 3\n").await;
    for host in ["h0", "h1", "h2"] {
        let answer = put(&c.a, host, r#"{"n":1}"#).await;
        assert_eq!(answer.status, 200, "{host}: {answer:?}");
    }

    let new_on_b = put(&c.b, "h3", r#"{"n":1}"#).await;
    let known_on_b = put(&c.b, "h1", r#"{"n":2}"#).await;

    assert_eq!(new_on_b.status, 409, "{new_on_b:?}");
    assert!(
        new_on_b.error().contains("host_health.max_hosts")
            && new_on_b.error().contains("known host"),
        "{new_on_b:?}"
    );
    assert_eq!(
        known_on_b.status, 200,
        "a known host updates: {known_on_b:?}"
    );
    let listed = list(&c.a).await;
    assert_eq!(host_ids(&listed.body), vec!["h0", "h1", "h2"]);
    assert_eq!(listed.body["hosts"][1]["report"], json!({"n": 2}));
}

#[actix_web::test]
async fn new_hosts_racing_through_both_instances_never_exceed_the_cap() {
    let Some(redis) = RedisServer::start_if_installed() else {
        return;
    };
    let c = cluster(&redis, "[host_health]\nmax_hosts = 5\n").await;
    let hosts: Vec<String> = (0..16).map(|i| format!("race-{i:02}")).collect();

    let answers = futures_util::future::join_all(hosts.iter().enumerate().map(|(i, host)| {
        let app = if i % 2 == 0 { &c.a } else { &c.b };
        put(app, host, "{}")
    }))
    .await;

    let stored = answers.iter().filter(|a| a.status == 200).count();
    let refused = answers.iter().filter(|a| a.status == 409).count();
    assert_eq!((stored, refused), (5, 11), "{answers:?}");
    assert_eq!(host_ids(&list(&c.b).await.body).len(), 5);
}

#[actix_web::test]
async fn a_dead_redis_is_a_503_with_retry_after_and_a_restarted_one_is_used_again() {
    let Some(mut redis) = RedisServer::start_if_installed() else {
        return;
    };
    let c = cluster(&redis, "").await;
    assert_eq!(put(&c.a, "h0", "{}").await.status, 200);

    redis.kill();
    let put_down = put(&c.a, "h0", r#"{"n":1}"#).await;
    let list_down = list(&c.b).await;

    for answer in [&put_down, &list_down] {
        assert_eq!(answer.status, 503, "{answer:?}");
        assert!(
            answer.error().contains("Redis") && answer.error().contains("retry"),
            "{answer:?}"
        );
        let after: u64 = answer
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("Retry-After: {answer:?}"));
        assert!(after >= 1);
    }

    // Back, empty (nothing persisted): the next calls reconnect by themselves.
    redis.restart();
    let deadline = Instant::now() + WAIT;
    let answer = loop {
        let answer = put(&c.a, "h0", r#"{"n":2}"#).await;
        if answer.status != 503 || Instant::now() >= deadline {
            break answer;
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(answer.status, 200, "{answer:?}");
    let listed = list(&c.b).await;
    assert_eq!(listed.status, 200, "{listed:?}");
    assert_eq!(listed.body["hosts"][0]["report"], json!({"n": 2}));
}

#[actix_web::test]
async fn a_hung_redis_is_a_503_within_the_deadline_not_a_hung_request() {
    let Some(redis) = RedisServer::start_if_installed() else {
        return;
    };
    let c = cluster(&redis, "").await;
    assert_eq!(put(&c.a, "h0", "{}").await.status, 200);

    redis.freeze();
    let started = Instant::now();
    let answer = put(&c.b, "h0", r#"{"n":1}"#).await;
    let took = started.elapsed();
    redis.thaw();

    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(answer.header("retry-after").is_some(), "{answer:?}");
    assert!(
        took <= edgebus::host_health::redis::REDIS_DEADLINE + std::time::Duration::from_secs(2),
        "answered after {took:?}"
    );
}

#[actix_web::test]
async fn format_cis490_lists_the_receivers_record_shape_from_redis() {
    let Some(redis) = RedisServer::start_if_installed() else {
        return;
    };
    let c = cluster(&redis, "").await;
    let mut conn = redis_conn(&redis).await;
    // As this version stores it, at a known time; and one it never writes.
    let _: () = redis::cmd("HSET")
        .arg(format!("{}:host-health", c.prefix))
        .arg(&[
            "lab-07",
            r#"{"host_id":"lab-07","received_at":"2026-05-02T18:48:31Z","received_at_ms":1777747711999,"report":{"disk":"ok"}}"#,
            "lab-08",
            r#"{"host_id":"lab-08","report":{}}"#,
        ])
        .query_async(&mut conn)
        .await
        .expect("HSET");
    let stored = put(&c.a, "lab-01", r#"{"n":[1,2]}"#).await;
    assert_eq!(stored.status, 200, "{stored:?}");
    let lab01_at = list(&c.a).await.body["hosts"][0]["received_at"].clone();

    let listed =
        c.b.call("GET", "/v1/host-health?format=cis490", &[], None)
            .await;

    assert_eq!(listed.status, 200, "{listed:?}");
    assert_eq!(
        listed.body,
        json!({"hosts": [
            {"host_id": "lab-01", "received_at_wall": lab01_at, "doctor": {"n": [1, 2]}},
            {"host_id": "lab-07", "received_at_wall": "2026-05-02T18:48:31Z",
             "doctor": {"disk": "ok"}},
        ]}),
        "lab-08 has no receive time: skipped"
    );
    let refused =
        c.b.call("GET", "/v1/host-health?format=xml", &[], None)
            .await;
    assert_eq!(refused.status, 400, "{refused:?}");
}
