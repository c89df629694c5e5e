//! HTTP publish and notifications: the MQTT rules, size cap, families,
//! Idempotency-Key, roles.

use serde_json::json;

use crate::auth::{bearer, locked_app, ADMIN, PUBLISHER};
use crate::helpers::{metrics_json, spawn_app, unique};

#[actix_web::test]
async fn a_published_object_reaches_subscribers_with_its_id() {
    let app = spawn_app().await;
    let uuid = unique("pub");
    let mut sse = app
        .sse("/v1/attackers/%2B/events", &[])
        .await
        .err()
        .map(|r| r.status);
    assert_eq!(sse.take(), Some(400), "an attacker id is one topic level");
    let mut stream = app
        .sse(&format!("/v1/events?topic=attackers/{uuid}/%23"), &[])
        .await
        .expect("200");
    stream.snapshot().await;
    let answer = app
        .call(
            "POST",
            &format!("/v1/publish/attackers/{uuid}/scored"),
            &[],
            Some(r#"{"score": 42}"#),
        )
        .await;
    assert_eq!(answer.status, 201, "{answer:?}");
    let event = stream.next_event().await;
    assert_eq!(event.id.as_deref(), answer.body["id"].as_str());
    assert_eq!(event.event, "attacker.scored");
    assert_eq!(event.json()["payload"]["score"], 42);
}

#[actix_web::test]
async fn published_metrics_meet_the_strict_frame_rules_and_update_the_registry() {
    let app = spawn_app().await;
    let device = unique("httpdev");
    let topic = format!("/v1/publish/devices/{device}/metrics");
    let bad = app
        .call(
            "POST",
            &topic,
            &[],
            Some(&metrics_json("someone-else", 1, 5.0)),
        )
        .await;
    assert_eq!(bad.status, 400);
    assert!(bad.error().starts_with("device_id_mismatch"), "{bad:?}");
    let nan = app
        .call(
            "POST",
            &topic,
            &[],
            Some(&metrics_json(&device, 1, 5.0).replace("5", "NaN")),
        )
        .await;
    assert_eq!(nan.status, 400);
    let good = app
        .call("POST", &topic, &[], Some(&metrics_json(&device, 1, 5.0)))
        .await;
    assert_eq!(good.status, 201, "{good:?}");
    let (status, devices) = app
        .wait_json("/v1/devices", |_, d| d.get(device.as_str()).is_some())
        .await;
    assert_eq!(status, 200);
    assert_eq!(devices[device.as_str()]["metrics"]["cpu_percent"], 5.0);
}

#[actix_web::test]
async fn size_shape_and_topic_are_checked() {
    let app = spawn_app().await;
    let big = format!(r#"{{"x":"{}"}}"#, "z".repeat(20_000));
    let cases = [
        ("/v1/publish/notifications/x", big.as_str(), 413),
        ("/v1/publish/notifications/x", "[1,2]", 400),
        ("/v1/publish/notifications/x", r#"{"a":1,"a":2}"#, 400),
        ("/v1/publish/elsewhere/x", r#"{"a":1}"#, 400),
        ("/v1/publish/edgebus/rejects", r#"{"a":1}"#, 400),
        ("/v1/publish/notifications/x", "not json", 400),
    ];
    for (path, body, status) in cases {
        let answer = app.call("POST", path, &[], Some(body)).await;
        assert_eq!(
            answer.status,
            status,
            "{path} {}",
            &body[..body.len().min(20)]
        );
        assert!(!answer.error().is_empty(), "a JSON error: {answer:?}");
    }
    let outside = app
        .call("POST", "/v1/publish/elsewhere/x", &[], Some(r#"{"a":1}"#))
        .await;
    assert!(outside.error().contains("mqtt.topics"));
}

#[actix_web::test]
async fn an_idempotency_key_publishes_once() {
    let app = locked_app("").await;
    let auth = bearer(PUBLISHER);
    let source = unique("idem");
    let path = format!("/v1/publish/notifications/{source}");
    let key = unique("key");
    let headers = [
        ("Authorization", auth.as_str()),
        ("Idempotency-Key", key.as_str()),
    ];
    let first = app.call("POST", &path, &headers, Some(r#"{"v":1}"#)).await;
    assert_eq!(
        (first.status, first.body["status"].as_str()),
        (201, Some("created"))
    );
    let same = app.call("POST", &path, &headers, Some(r#"{"v":1}"#)).await;
    assert_eq!(same.status, 200);
    assert_eq!(same.body["status"], "already-present");
    assert_eq!(same.body["id"], first.body["id"], "the original event's id");
    let different = app.call("POST", &path, &headers, Some(r#"{"v":2}"#)).await;
    assert_eq!(different.status, 409);

    let ticket = app.ticket(Some(crate::auth::VIEWER)).await;
    let mut sse = app
        .sse(
            &format!("/v1/events?topic=notifications/{source}&ticket={ticket}"),
            &[],
        )
        .await
        .expect("200");
    let snapshot = sse.snapshot().await;
    let events = snapshot["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "one event on the bus");
    let stats = app
        .handle
        .bus()
        .send(edgebus::actors::bus::Stats)
        .await
        .unwrap();
    assert_eq!(
        stats.last_id.to_string(),
        first.body["id"].as_str().unwrap(),
        "nothing after it"
    );
}

#[actix_web::test]
async fn notifications_are_checked_and_published_under_their_source() {
    let app = spawn_app().await;
    let mut sse = app
        .sse("/v1/events?topic=notifications/%23", &[])
        .await
        .expect("200");
    sse.snapshot().await;
    let message = "disk <b>full</b>\n\nevent: evil\ndata: x";
    let ok = app
        .call(
            "POST",
            "/v1/notifications",
            &[],
            Some(
                &json!({"level": "warning", "message": message, "source": "securetea"}).to_string(),
            ),
        )
        .await;
    assert_eq!(ok.status, 201, "{ok:?}");
    assert_eq!(ok.body["topic"], "notifications/securetea");
    let e = sse.next_event().await;
    assert_eq!(e.event, "notification");
    let payload = &e.json()["payload"];
    assert_eq!(payload["message"], message, "one event, the text intact");
    assert_eq!(payload["level"], "warning");

    let long = "x".repeat(2001);
    for (body, what) in [
        (json!({"level": "loud", "message": "m"}), "level"),
        (json!({"level": "info", "message": long}), "message"),
        (json!({"level": "info", "message": ""}), "message"),
        (
            json!({"level": "info", "message": "m", "extra": 1}),
            "unknown field",
        ),
        (
            json!({"level": "info", "message": "m", "source": "a/b"}),
            "source",
        ),
    ] {
        let answer = app
            .call("POST", "/v1/notifications", &[], Some(&body.to_string()))
            .await;
        assert_eq!(answer.status, 400, "{body}");
        assert!(answer.error().contains(what), "{what}: {answer:?}");
    }
}

/// One publisher's keys used to evict another's from a shared pool, so the
/// other's retry within the promised 24 h published twice.
#[actix_web::test]
async fn one_publishers_keys_never_evict_anothers() {
    let app =
        locked_app("[http]\nidempotency_keys_per_identity = 2\nidempotency_max_keys = 10").await;
    let path = format!("/v1/publish/notifications/{}", unique("evict"));
    let (root, tool) = (bearer(ADMIN), bearer(PUBLISHER));
    let kept = app
        .call(
            "POST",
            &path,
            &[("Authorization", &root), ("Idempotency-Key", "root-1")],
            Some(r#"{"v":0}"#),
        )
        .await;
    assert_eq!(kept.status, 201);

    let mut statuses = Vec::new();
    for n in 0..6 {
        let key = format!("tool-{n}");
        let answer = app
            .call(
                "POST",
                &path,
                &[("Authorization", &tool), ("Idempotency-Key", &key)],
                Some(&format!(r#"{{"v":{n}}}"#)),
            )
            .await;
        if answer.status == 429 {
            assert!(
                answer.error().contains("idempotency_keys_per_identity"),
                "{answer:?}"
            );
        }
        statuses.push(answer.status);
    }
    assert_eq!(statuses, [201, 201, 429, 429, 429, 429]);

    let retry = app
        .call(
            "POST",
            &path,
            &[("Authorization", &root), ("Idempotency-Key", "root-1")],
            Some(r#"{"v":0}"#),
        )
        .await;
    assert_eq!(retry.status, 200, "{retry:?}");
    assert_eq!(retry.body["id"], kept.body["id"], "published once");
}

/// A publish refused after its key was claimed (here: the device cap) must
/// not hold the key: it used to stay in the store's bookkeeping.
#[actix_web::test]
async fn a_refused_publish_leaves_no_key_behind() {
    let app =
        locked_app("[http]\nidempotency_keys_per_identity = 1\n[registry]\nmax_devices = 1").await;
    let tool = bearer(PUBLISHER);
    let first = unique("dev");
    let ok = app
        .call(
            "POST",
            &format!("/v1/publish/devices/{first}/metrics"),
            &[("Authorization", &tool)],
            Some(&metrics_json(&first, 1, 5.0)),
        )
        .await;
    assert_eq!(ok.status, 201, "{ok:?}");
    for n in 0..3 {
        let device = unique("refused");
        let refused = app
            .call(
                "POST",
                &format!("/v1/publish/devices/{device}/metrics"),
                &[
                    ("Authorization", &tool),
                    ("Idempotency-Key", &format!("r{n}")),
                ],
                Some(&metrics_json(&device, 1, 5.0)),
            )
            .await;
        assert_eq!(refused.status, 403, "{refused:?}");
    }
    // The identity's one key slot is still free, and a refused key reusable.
    let answer = app
        .call(
            "POST",
            &format!("/v1/publish/notifications/{}", unique("after")),
            &[("Authorization", &tool), ("Idempotency-Key", "r0")],
            Some(r#"{"v":1}"#),
        )
        .await;
    assert_eq!(answer.status, 201, "{answer:?}");
}
