//! The WebSocket protocol: ops, filters, formats, auth, heartbeat, slow
//! clients, close codes, shutdown.

use std::time::{Duration, Instant};

use awc::ws::Message;
use serde_json::Value;

use crate::helpers::{
    large_snapshot_then_live, metrics_json, publish_large_notifications, spawn_app, spawn_app_with,
    unique, Publisher, RawWsClient, WsClient, WsEvent,
};

#[actix_web::test]
async fn ops_add_and_remove_topics_and_other_topics_never_arrive() {
    let app = spawn_app().await;
    let (a, b) = (
        format!("notifications/{}", unique("a")),
        format!("notifications/{}", unique("b")),
    );
    let mut publisher = app.publisher().await;
    publisher
        .publish(&b, r#"{"level":"info","message":"before"}"#)
        .await;
    app.wait_metric("edgebus_events_published_total", 1.0).await;
    let mut ws = app.ws(&format!("?topic={a}")).await;
    assert!(ws.snapshot().await.is_empty());

    // Subscribing to b: its snapshot (the earlier message), then live events.
    ws.send_text(&format!(r#"{{"op":"subscribe","topics":["{b}"]}}"#))
        .await;
    let snapshot = ws.snapshot().await;
    assert_eq!(snapshot.len(), 1);
    assert_eq!(snapshot[0]["payload"]["message"], "before");
    publisher
        .publish(&b, r#"{"level":"info","message":"b1"}"#)
        .await;
    assert_eq!(ws.next_event().await["payload"]["message"], "b1");

    // Unsubscribing from a is acknowledged; a's events stop, b's go on.
    ws.send_text(&format!(r#"{{"op":"unsubscribe","topics":["{a}"]}}"#))
        .await;
    let ack = ws.next_json().await;
    assert_eq!(ack["type"], "unsubscribed");
    assert_eq!(ack["topics"][0], a.as_str());
    publisher
        .publish(&a, r#"{"level":"info","message":"a-after"}"#)
        .await;
    publisher
        .publish(&b, r#"{"level":"info","message":"b2"}"#)
        .await;
    let next = ws.next_event().await;
    assert_eq!(
        next["payload"]["message"], "b2",
        "nothing from {a} after the ack"
    );
    assert_eq!(next["event"], "notification");

    // A bad op is answered, and the session stays open.
    ws.send_text(r#"{"op":"subscribe","topics":["a/#/b"]}"#)
        .await;
    let error = ws.next_json().await;
    assert_eq!(error["type"], "error");
    assert!(error["error"].as_str().unwrap().contains("a/#/b"));
    publisher
        .publish(&b, r#"{"level":"info","message":"b3"}"#)
        .await;
    assert_eq!(ws.next_event().await["payload"]["message"], "b3");
}

#[actix_web::test]
async fn the_edgewatch_format_speaks_the_seed_dashboards_language() {
    let app = spawn_app().await;
    let device = unique("d");
    let topic = format!("devices/{device}/metrics");
    let mut publisher = app.publisher().await;
    publisher
        .publish(&topic, metrics_json(&device, 1, 12.0))
        .await;
    app.wait_metric("edgebus_events_published_total", 1.0).await;

    let mut ws = app.ws("?format=edgewatch").await;
    let snapshot = ws.next_json().await;
    assert_eq!(
        snapshot[&device]["timestamp"], 1,
        "snapshot is {{device_id: frame}}: {snapshot}"
    );
    publisher
        .publish("notifications/x", r#"{"level":"info","message":"m"}"#)
        .await;
    publisher
        .publish(&topic, metrics_json(&device, 2, 13.0))
        .await;
    let frame = ws.next_json().await;
    assert_eq!(frame.as_object().unwrap().len(), 1);
    assert_eq!(frame[&device]["cpu_percent"], 13.0);
    // Every field of the seed's model, `null` where the frame had none.
    let fields = frame[&device].as_object().unwrap();
    assert_eq!(fields.len(), 8, "{frame}");
    assert!(fields["gpu_percent"].is_null() && fields["agent_mem_mb"].is_null());
}

#[actix_web::test]
async fn the_legacy_token_closes_unauthorised_clients_with_1008() {
    let app = spawn_app_with("[auth]\nws_token = \"s3cret-token\"").await;
    let mut wrong = app.ws("?token=s3cret-tokem").await;
    assert!(matches!(wrong.next().await, WsEvent::Closed(Some(1008))));
    let mut missing = app.ws("").await;
    assert!(matches!(missing.next().await, WsEvent::Closed(Some(1008))));
    let mut right = app.ws("?token=s3cret-token").await;
    right.snapshot().await;
}

#[actix_web::test]
async fn a_bad_topic_filter_or_format_is_refused_before_the_upgrade() {
    let app = spawn_app().await;
    let (status, body) = app.get_json("/v1/ws?topic=a/%23/b").await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("a/#/b"));
    let (status, _) = app.get_json("/v1/ws?format=xml").await;
    assert_eq!(status, 400);
}

#[actix_web::test]
async fn protocol_violations_get_their_close_codes() {
    let app = spawn_app().await;
    let mut binary = app.ws("").await;
    binary.snapshot().await;
    binary.send(Message::Binary(vec![1, 2, 3].into())).await;
    assert!(matches!(binary.next().await, WsEvent::Closed(Some(1003))));

    let mut huge = app.ws("").await;
    huge.snapshot().await;
    huge.send_text(&"x".repeat(100_000)).await;
    assert!(matches!(huge.next().await, WsEvent::Closed(Some(1009))));

    // Other clients are unaffected.
    let mut fine = app.ws("").await;
    fine.snapshot().await;
}

#[actix_web::test]
async fn a_client_that_never_answers_pings_is_closed_and_unregistered() {
    let app = spawn_app_with("[sessions]\nws_heartbeat_seconds = 1\nws_timeout_seconds = 2").await;
    let mut silent = app.ws("").await;
    silent.auto_pong = false;
    silent.snapshot().await;
    assert_eq!(
        app.wait_metric_value(r#"edgebus_sessions_open{kind="ws"}"#, 1.0)
            .await,
        1.0
    );
    match silent.next().await {
        WsEvent::Closed(code) => assert_eq!(code, Some(1001)),
        other => panic!("expected a close, got {other:?}"),
    }
    // Session gauge back to zero.
    app.wait_metric_where(r#"edgebus_sessions_open{kind="ws"}"#, |v| v == 0.0)
        .await;
}

#[actix_web::test]
async fn a_client_that_answers_pings_stays_connected() {
    // The client answers every ping as it arrives, so only a stall of the
    // whole process delays a pong; the timeout leaves two seconds of room
    // for one (a timeout of two heartbeats would leave one).
    const TIMEOUT: Duration = Duration::from_secs(3);
    let app = spawn_app_with(&format!(
        "[sessions]\nws_heartbeat_seconds = 1\nws_timeout_seconds = {}",
        TIMEOUT.as_secs()
    ))
    .await;
    let mut live = app.ws("?topic=notifications/%23").await;
    live.snapshot().await;
    let mut publisher = app.publisher().await;
    let started = std::time::Instant::now();
    // Outlive the timeout twice over, answering pings meanwhile.
    let mut n = 0;
    while started.elapsed() <= 2 * TIMEOUT {
        live.idle_for(Duration::from_millis(1000)).await;
        publisher
            .publish("notifications/hb", format!(r#"{{"n":{n}}}"#))
            .await;
        assert_eq!(live.next_event().await["payload"]["n"], n);
        n += 1;
    }
}

#[actix_web::test]
async fn a_slow_client_loses_only_its_own_events_and_never_delays_a_fast_one() {
    let app =
        spawn_app_with("[bus]\nqueue_capacity = 1024\n[sessions]\nwrite_timeout_seconds = 5\n[mqtt]\nembedded_retention_bytes = 33554432").await;
    let topic = format!("notifications/{}", unique("load"));
    let _slow = RawWsClient::connect(app.port, "?topic=notifications/%23").await;
    let mut fast = app.ws("?topic=notifications/%23").await;
    fast.snapshot().await;
    app.wait_metric(r#"edgebus_sessions_open{kind="ws"}"#, 2.0)
        .await;
    let publisher = app.publisher().await;
    let filler = "x".repeat(8000);
    const N: u64 = 3000;

    for n in 0..N {
        publisher
            .publish_nowait(&topic, format!(r#"{{"n":{n},"filler":"{filler}"}}"#))
            .await;
    }

    for n in 0..N {
        let event = fast.next_event().await;
        assert_eq!(
            event["payload"]["n"], n,
            "the fast client sees every event, in order"
        );
    }
    let dropped = app
        .wait_metric(
            r#"edgebus_events_dropped_total{reason="slow_session"}"#,
            1.0,
        )
        .await;
    assert!(dropped < N as f64, "only the slow session lost events");
}

#[actix_web::test]
async fn a_client_that_falls_behind_is_told_how_many_events_it_lost() {
    let app =
        spawn_app_with("[bus]\nqueue_capacity = 4\n[sessions]\nwrite_timeout_seconds = 30\n[mqtt]\nembedded_retention_bytes = 33554432").await;
    let topic = format!("notifications/{}", unique("lag"));
    let mut lagging = RawWsClient::connect(app.port, "?topic=notifications/%23").await;
    let publisher = app.publisher().await;
    const N: u64 = 600;

    // ~9 MB the client does not read: its socket and queue fill up.
    publisher.flood(&topic, N).await;
    app.wait_metric(
        r#"edgebus_events_dropped_total{reason="slow_session"}"#,
        1.0,
    )
    .await;

    // Now it reads: everything is either delivered or counted in a notice.
    assert_eq!(lagging.next_json().await["type"], "snapshot");
    let mut seen = Vec::new();
    let mut lagged = 0;
    while seen.len() as u64 + lagged < N {
        let frame: Value = lagging.next_json().await;
        match frame["type"].as_str() {
            Some("event") => seen.push(frame["payload"]["n"].as_u64().unwrap()),
            Some("lagged") => lagged += frame["dropped"].as_u64().unwrap(),
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert!(lagged > 0, "the client was told");
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "what arrives is in order"
    );
    let counted = app
        .wait_metric_value(
            r#"edgebus_events_dropped_total{reason="slow_session"}"#,
            lagged as f64,
        )
        .await;
    assert_eq!(counted as u64, lagged, "notice and counter agree");
}

#[actix_web::test]
async fn shutdown_closes_sessions_with_going_away() {
    let app = spawn_app().await;
    let mut ws = app.ws("").await;
    ws.snapshot().await;
    app.handle.shutdown().await;
    assert!(matches!(ws.next().await, WsEvent::Closed(Some(1001))));
}

/// Publishes one metrics frame and waits until the watcher has it.
async fn round_trip(
    publisher: &mut Publisher,
    watcher: &mut WsClient,
    device: &str,
    seq: u64,
) -> Duration {
    let started = Instant::now();
    publisher
        .publish(
            &format!("devices/{device}/metrics"),
            metrics_json(device, seq, 10.0),
        )
        .await;
    let frame = watcher.next_event().await;
    assert_eq!(frame["payload"]["timestamp"], seq, "in order, none lost");
    started.elapsed()
}

#[actix_web::test]
async fn a_session_flooding_subscribe_ops_is_refused_and_closed_while_a_watcher_keeps_its_pace() {
    // Defaults: 10 ops/s (burst 40), 64 filters/s (burst 256).
    let app = spawn_app().await;
    let mut publisher = app.publisher().await;
    // Stored topics, so every subscribe's snapshot has work to do.
    const STORED: u64 = 2000;
    let stored = unique("stored");
    for n in 0..STORED {
        publisher
            .publish_nowait(
                &format!("notifications/{stored}-{n}"),
                r#"{"level":"info","message":"m"}"#,
            )
            .await;
    }
    app.wait_metric("edgebus_events_published_total", STORED as f64)
        .await;
    let device = unique("watched");
    let mut watcher = app.ws(&format!("?topic=devices/{device}/metrics")).await;
    watcher.snapshot().await;
    let mut seq = 0;
    let mut baseline = Duration::ZERO;
    for _ in 0..5 {
        seq += 1;
        baseline = baseline.max(round_trip(&mut publisher, &mut watcher, &device, seq).await);
    }

    // A viewer sends subscribe ops of 64 filters as fast as it can.
    let mut flooder = app.ws("?topic=quiet/x").await;
    flooder.snapshot().await;
    // Each filter names a stored topic, so every accepted op makes the bus
    // build a snapshot of 64 events.
    let topics: Vec<String> = (0..64)
        .map(|i| format!(r#""notifications/{stored}-{i}""#))
        .collect();
    let op = format!(r#"{{"op":"subscribe","topics":[{}]}}"#, topics.join(","));
    let flood_started = Instant::now();
    let flood = actix_web::rt::spawn(async move {
        let mut sent = 0;
        while sent < 200 && flooder.try_send_text(&op).await {
            sent += 1;
        }
        let mut rate_limited = 0;
        loop {
            match flooder.next().await {
                WsEvent::Json(frame) if frame["error"] == "rate_limited" => {
                    assert!(frame["retry_after_ms"].as_u64().is_some(), "{frame}");
                    rate_limited += 1;
                }
                WsEvent::Json(_) => {}
                WsEvent::Closed(code) => return (rate_limited, code, Instant::now()),
            }
        }
    });

    // The watcher keeps its pace meanwhile. The bound is generous for a
    // shared 2-core machine; before the op budget, a flood like this kept
    // the bus busy for seconds (tens of seconds at 20,000 topics).
    let bound = baseline * 10 + Duration::from_secs(1);
    for _ in 0..10 {
        seq += 1;
        let took = round_trip(&mut publisher, &mut watcher, &device, seq).await;
        assert!(
            took <= bound,
            "watcher took {took:?} (baseline {baseline:?})"
        );
    }
    let (rate_limited, code, closed_at) = flood.await.expect("flooder task");
    assert!(rate_limited >= 1, "the flooder was told it is rate limited");
    assert_eq!(code, Some(1008), "and closed as a policy violation");

    // The bus did a bounded amount of work for it: the filter burst (four
    // 64-filter ops) plus the refill while it flooded, one op at a time.
    let accepted = app
        .metric(r#"edgebus_ws_ops_total{result="accepted"}"#)
        .await;
    let elapsed = (closed_at - flood_started).as_secs_f64();
    assert!(
        accepted <= 4.0 + elapsed.ceil() + 1.0,
        "{accepted} ops reached the bus in {elapsed:.1} s"
    );
    assert_eq!(
        app.metric(r#"edgebus_ws_ops_total{result="closed"}"#).await,
        1.0
    );
    app.wait_metric_where("edgebus_ws_ops_in_flight", |v| v == 0.0)
        .await;
    seq += 1;
    round_trip(&mut publisher, &mut watcher, &device, seq).await;
}

#[actix_web::test]
async fn a_snapshot_larger_than_one_fragment_arrives_as_one_whole_message() {
    // Arrange: a ~200 KB snapshot, which goes out in fragments rendered as
    // the socket takes them.
    let app = spawn_app().await;
    let family = unique("big");
    let mut publisher = app.publisher().await;
    let message = publish_large_notifications(&app, &mut publisher, &family, 100).await;

    // Act
    let mut ws = app.ws("?topic=notifications/%23").await;

    // Assert: one snapshot message with every event, then live events.
    let snapshot = ws.snapshot().await;
    large_snapshot_then_live(&snapshot, 100, &message, &mut publisher, &family).await;
    assert_eq!(ws.next_event().await["payload"]["message"], "live");
}
