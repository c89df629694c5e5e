//! MQTT in → validation → registry → bus → WebSocket out.

use serde_json::Value;

use crate::helpers::{metrics_json, spawn_app, spawn_app_with, unique};

fn device_and_seq(event: &Value) -> (String, u64) {
    let payload = &event["payload"];
    (
        payload["device_id"].as_str().unwrap_or_default().to_owned(),
        payload["timestamp"].as_u64().unwrap_or(u64::MAX),
    )
}

#[actix_web::test]
async fn a_client_gets_the_snapshot_then_exactly_the_good_frames_in_order() {
    // Arrange
    let app = spawn_app().await;
    let (d1, d2) = (unique("d"), unique("d"));
    let mut ws = app.ws("?topic=devices/%2B/metrics").await;
    assert!(ws.snapshot().await.is_empty());
    let mut publisher = app.publisher().await;
    let t1 = format!("devices/{d1}/metrics");
    let t2 = format!("devices/{d2}/metrics");

    // Act: good and bad frames interleaved, on one ordered connection.
    let frames: Vec<(&str, String, bool)> = vec![
        (&t1, metrics_json(&d1, 1, 10.0), true),
        (
            &t1,
            metrics_json(&d1, 2, 10.0).replace(r#""cpu_percent":10"#, r#""cpu_percent":NaN"#),
            false,
        ),
        (&t2, metrics_json(&d2, 3, 0.0), true),
        (
            &t1,
            metrics_json(&d1, 4, 10.0).replace("}", r#","evil":"<!channel>"}"#),
            false,
        ),
        (&t1, metrics_json(&d2, 5, 10.0), false), // device_id does not match the topic
        (
            &t2,
            metrics_json(&d2, 6, 100.0).replace(r#""cpu_percent":100"#, r#""cpu_percent":true"#),
            false,
        ),
        (&t1, metrics_json(&d1, 7, 100.0), true),
        (&t2, metrics_json(&d2, 8, 100.5), false),
        (&t1, format!("[{}]", metrics_json(&d1, 9, 1.0)), false),
        (&t2, metrics_json(&d2, 10, 55.5), true),
    ];
    for (topic, payload, _) in &frames {
        publisher.publish(topic, payload.clone()).await;
    }

    // Assert: the good ones, in order, with the envelope of DESIGN.md.
    let expected: Vec<(String, u64)> = frames
        .iter()
        .filter(|(_, _, good)| *good)
        .map(|(topic, payload, _)| {
            let v: Value = serde_json::from_str(payload).unwrap();
            let device = topic.split('/').nth(1).unwrap().to_owned();
            (device, v["timestamp"].as_u64().unwrap())
        })
        .collect();
    let mut got = Vec::new();
    let mut last_seq = 0;
    for _ in 0..expected.len() {
        let event = ws.next_event().await;
        assert_eq!(event["event"], "metrics");
        assert!(event["ts"].as_u64().unwrap() > 1_700_000_000_000);
        let (epoch, seq) = event["id"].as_str().unwrap().split_once('-').unwrap();
        assert!(!epoch.is_empty());
        let seq: u64 = seq.parse().unwrap();
        assert!(seq > last_seq, "ids increase");
        last_seq = seq;
        assert_eq!(
            event["topic"],
            format!(
                "devices/{}/metrics",
                event["payload"]["device_id"].as_str().unwrap()
            )
        );
        got.push(device_and_seq(&event));
    }
    assert_eq!(got, expected);
    assert_eq!(
        app.wait_metric_value("edgebus_frames_accepted_total", 4.0)
            .await,
        4.0
    );
    assert_eq!(
        app.wait_metric_value(r#"edgebus_frames_rejected_total{reason="bad_json"}"#, 1.0)
            .await,
        1.0
    );
    assert_eq!(
        app.wait_metric_value(
            r#"edgebus_frames_rejected_total{reason="unknown_key"}"#,
            1.0
        )
        .await,
        1.0
    );
    assert_eq!(
        app.wait_metric_value(
            r#"edgebus_frames_rejected_total{reason="device_id_mismatch"}"#,
            1.0
        )
        .await,
        1.0
    );
    assert_eq!(
        app.wait_metric_value(r#"edgebus_frames_rejected_total{reason="wrong_type"}"#, 1.0)
            .await,
        1.0
    );
    assert_eq!(
        app.wait_metric_value(
            r#"edgebus_frames_rejected_total{reason="out_of_range"}"#,
            1.0
        )
        .await,
        1.0
    );
    assert_eq!(
        app.wait_metric_value(r#"edgebus_frames_rejected_total{reason="not_object"}"#, 1.0)
            .await,
        1.0
    );
}

#[actix_web::test]
async fn every_rejection_is_an_event_on_the_rejects_topic_without_the_payload() {
    let app = spawn_app().await;
    let device = unique("bad");
    let mut ws = app.ws("?topic=edgebus/rejects").await;
    ws.snapshot().await;
    let mut publisher = app.publisher().await;
    let secret_tail = "x".repeat(500);
    let payload = format!(
        r#"{{"device_id":"{device}","timestamp":1,"cpu_percent":1,"mem_percent":1,"disk_percent":1,"note":"{secret_tail}"}}"#
    );

    publisher
        .publish(&format!("devices/{device}/metrics"), payload)
        .await;
    publisher.publish("attackers/a1/scored", "[1,2]").await;

    let first = ws.next_event().await;
    assert_eq!(first["event"], "reject");
    assert_eq!(first["payload"]["reason"], "unknown_key");
    assert_eq!(first["payload"]["device_id"], device.as_str());
    assert_eq!(
        first["payload"]["topic"],
        format!("devices/{device}/metrics")
    );
    assert!(first["payload"]["excerpt"].as_str().unwrap().len() <= 64);
    let second = ws.next_event().await;
    assert_eq!(second["payload"]["reason"], "not_object");
    assert!(second["payload"].get("device_id").is_none());
}

#[actix_web::test]
async fn an_oversized_frame_is_counted_and_the_connection_survives() {
    let app = spawn_app_with("[mqtt]\nmax_payload_bytes = 1024").await;
    let device = unique("d");
    let topic = format!("devices/{device}/metrics");
    let mut ws = app.ws("").await;
    ws.snapshot().await;
    let mut publisher = app.publisher().await;

    publisher.publish(&topic, vec![b' '; 200_000]).await;
    publisher
        .publish(&topic, metrics_json(&device, 2, 5.0))
        .await;

    let event = ws.next_event().await;
    assert_eq!(device_and_seq(&event), (device, 2));
    assert_eq!(
        app.wait_metric_value(r#"edgebus_frames_rejected_total{reason="too_large"}"#, 1.0)
            .await,
        1.0
    );
    assert_eq!(app.metric("edgebus_mqtt_reconnects_total").await, 0.0);
}

#[actix_web::test]
async fn a_late_joiner_gets_the_latest_frame_of_each_active_device() {
    let app = spawn_app().await;
    let (a, b) = (unique("a"), unique("b"));
    let mut first = app.ws("").await;
    first.snapshot().await;
    let mut publisher = app.publisher().await;
    for (device, seq) in [(&a, 1), (&b, 2), (&a, 3)] {
        publisher
            .publish(
                &format!("devices/{device}/metrics"),
                metrics_json(device, seq, 1.0),
            )
            .await;
    }
    for _ in 0..3 {
        first.next_event().await; // all three are on the bus now
    }

    let mut late = app.ws("?topic=devices/%2B/metrics").await;
    let snapshot = late.snapshot().await;

    let mut got: Vec<(String, u64)> = snapshot.iter().map(device_and_seq).collect();
    got.sort();
    let mut want = vec![(a.clone(), 3), (b.clone(), 2)];
    want.sort();
    assert_eq!(got, want);
    publisher
        .publish(&format!("devices/{b}/metrics"), metrics_json(&b, 4, 1.0))
        .await;
    assert_eq!(
        device_and_seq(&late.next_event().await),
        (b, 4),
        "live after the snapshot"
    );
}

#[actix_web::test]
async fn beyond_the_device_cap_new_devices_are_dropped_and_known_ones_update() {
    let app = spawn_app_with("[registry]\nmax_devices = 2").await;
    let (d1, d2, d3) = (unique("d"), unique("d"), unique("d"));
    let mut ws = app
        .ws("?topic=devices/%2B/metrics&topic=edgebus/rejects")
        .await;
    ws.snapshot().await;
    let mut publisher = app.publisher().await;

    for (device, seq) in [(&d1, 1), (&d2, 2), (&d3, 3), (&d1, 4)] {
        publisher
            .publish(
                &format!("devices/{device}/metrics"),
                metrics_json(device, seq, 1.0),
            )
            .await;
    }

    let mut seen = Vec::new();
    for _ in 0..4 {
        let event = ws.next_event().await;
        match event["event"].as_str() {
            Some("metrics") => seen.push(device_and_seq(&event)),
            Some("reject") => {
                assert_eq!(event["payload"]["reason"], "device_cap");
                assert_eq!(event["payload"]["device_id"], d3.as_str());
                seen.push(("cap".into(), 0));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        seen,
        vec![
            (d1.clone(), 1),
            (d2.clone(), 2),
            ("cap".into(), 0),
            (d1.clone(), 4)
        ]
    );
    let (_, devices) = app
        .wait_json("/v1/devices", |_, d| {
            d.as_object().map_or(0, |o| o.len()) == 2 && d[&d1]["metrics"]["timestamp"] == 4
        })
        .await;
    let mut ids: Vec<&String> = devices.as_object().unwrap().keys().collect();
    ids.sort();
    let mut want = vec![&d1, &d2];
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(devices[&d1]["metrics"]["timestamp"], 4);
    assert_eq!(
        app.wait_metric_value(r#"edgebus_frames_rejected_total{reason="device_cap"}"#, 1.0)
            .await,
        1.0
    );
}

#[actix_web::test]
async fn the_device_endpoints_show_latest_state_and_404_for_unknown() {
    let app = spawn_app().await;
    let device = unique("d");
    let mut ws = app.ws("").await;
    ws.snapshot().await;
    let mut publisher = app.publisher().await;
    publisher
        .publish(
            &format!("devices/{device}/metrics"),
            metrics_json(&device, 9, 33.5),
        )
        .await;
    ws.next_event().await;

    let (status, body) = app
        .wait_json(&format!("/v1/devices/{device}"), |status, _| status == 200)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["device_id"], device.as_str());
    assert_eq!(body["active"], true);
    assert_eq!(body["metrics"]["cpu_percent"], 33.5);
    assert!(body["last_seen"].as_u64().unwrap() > 1_700_000_000_000);

    let (status, body) = app.get_json("/v1/devices/nobody").await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("nobody"));
}
