//! The bus's own bounds, end to end: what a stored event costs in memory,
//! snapshots cut at their bound, and event names no publisher can choose.

use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with, unique, Service, WAIT};

/// `{"a":[0,0,…]}` of about `bytes` bytes: the payload that once cost ~20×
/// its size once parsed and kept.
fn zeros(bytes: usize) -> String {
    let n = (bytes - 8) / 2;
    let mut s = String::with_capacity(bytes);
    s.push_str(r#"{"a":["#);
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push('0');
    }
    s.push_str("]}");
    s
}

/// POSTs each body to `/v1/publish/attackers/{prefix}{i}/observation/dns`
/// of an open-mode service and waits for each `201`.
async fn publish_all(service: &Service, prefix: &str, range: std::ops::Range<usize>, body: &str) {
    let http = awc::Client::builder().timeout(WAIT).finish();
    for i in range {
        let url = format!(
            "http://127.0.0.1:{}/v1/publish/attackers/{prefix}{i}/observation/dns",
            service.port
        );
        let resp = http
            .post(url)
            .content_type("application/json")
            .send_body(body.to_owned())
            .await
            .expect("publish");
        assert_eq!(resp.status().as_u16(), 201, "publish {i}");
    }
}

#[actix_web::test]
async fn hostile_payloads_cost_a_small_multiple_of_their_size_and_stay_under_the_byte_bounds() {
    // The real binary in its own process, so its memory is its own. Small
    // byte bounds: 4 MiB of history, 2 MiB of last values.
    let history_bytes: u64 = 4 << 20;
    let last_values_bytes: u64 = 2 << 20;
    let service = Service::start(&[
        ("EDGEBUS__BUS__HISTORY_BYTES", &history_bytes.to_string()),
        (
            "EDGEBUS__BUS__LAST_VALUES_BYTES",
            &last_values_bytes.to_string(),
        ),
    ])
    .await;
    let body = zeros(16_000);
    let prefix = unique("z");
    // Warm up allocator pools, worker buffers and the publish path.
    publish_all(&service, &prefix, 0..20, &body).await;
    let before = service.rss_kib();

    // 100 events (~1.6 MB of payload) fit in the history: each stays
    // resident, at two wire forms (~2x) plus allocator noise; the parsed
    // tree kept beside them made it ~20x.
    publish_all(&service, &prefix, 20..120, &body).await;
    let grown = service.rss_kib().saturating_sub(before);
    let wire_kib = (100 * body.len() / 1024) as u64;
    assert!(
        grown <= 5 * wire_kib,
        "100 stored 16 KB events: {grown} KiB resident for {wire_kib} KiB of payload \
         (a parsed tree kept beside the wire forms costs ~20x)"
    );

    // 600 more (~9.6 MB): the bounds hold, whatever was published.
    publish_all(&service, &prefix, 120..720, &body).await;
    let grown = service.rss_kib().saturating_sub(before);
    let bound_kib = (history_bytes + last_values_bytes) / 1024;
    let slack_kib = 8 * 1024; // allocator pools, HTTP buffers, metrics
    assert!(
        grown <= bound_kib + slack_kib,
        "720 stored 16 KB events: grew {grown} KiB, bound {bound_kib} KiB + {slack_kib} KiB"
    );
    // The accounting the bounds apply to, as an operator sees it.
    let history = service.metric("edgebus_bus_history_bytes").await;
    let last_values = service.metric("edgebus_bus_last_values_bytes").await;
    assert!(
        history > 0.0 && history <= history_bytes as f64,
        "{history}"
    );
    assert!(
        last_values > 0.0 && last_values <= last_values_bytes as f64,
        "{last_values}"
    );
}

#[actix_web::test]
async fn a_wide_snapshot_stops_at_its_bound_and_says_so() {
    let app = spawn_app_with("[bus]\nsnapshot_max_events = 5\n").await;
    let source = unique("wide");
    for i in 0..8 {
        let body = json!({"level": "info", "message": format!("n{i}")}).to_string();
        let answer = app
            .call(
                "POST",
                &format!("/v1/publish/notifications/{source}/{i}"),
                &[],
                Some(&body),
            )
            .await;
        assert_eq!(answer.status, 201, "{answer:?}");
    }
    let mut ws = app.ws(&format!("?topic=notifications/{source}/%23")).await;
    let frame = ws.next_json().await;
    assert_eq!(frame["type"], "snapshot");
    assert_eq!(frame["events"].as_array().map(Vec::len), Some(5));
    assert_eq!(frame["truncated"], true, "{frame}");

    // A narrow filter is whole, and says nothing.
    let mut ws = app.ws(&format!("?topic=notifications/{source}/3")).await;
    let frame = ws.next_json().await;
    assert_eq!(frame["events"].as_array().map(Vec::len), Some(1));
    assert!(frame.get("truncated").is_none(), "{frame}");

    let mut sse = app
        .sse(&format!("/v1/events?topic=notifications/{source}/%23"), &[])
        .await
        .expect("200");
    let snapshot = sse.snapshot().await;
    assert_eq!(snapshot["events"].as_array().map(Vec::len), Some(5));
    assert_eq!(snapshot["truncated"], true);
    assert_eq!(app.metric("edgebus_snapshots_truncated_total").await, 2.0);
}

#[actix_web::test]
async fn a_publisher_cannot_choose_a_reserved_sse_event_name() {
    let app = spawn_app().await;
    let attacker = unique("a");
    let mut sse = app
        .sse(&format!("/v1/events?topic=attackers/{attacker}/%23"), &[])
        .await
        .expect("200");
    sse.snapshot().await;
    let mut ws = app.ws(&format!("?topic=attackers/{attacker}/%23")).await;
    ws.snapshot().await;

    // Over MQTT, then over HTTP, to a topic whose last level is `error`.
    // (One at a time: a PUBACK does not mean ingest has read the frame, and
    // an HTTP publish reaches the bus directly, so it could overtake it.)
    let mut publisher = app.publisher().await;
    for via in ["mqtt", "http"] {
        let payload = json!({"attacker_uuid": attacker, "via": via}).to_string();
        if via == "mqtt" {
            publisher
                .publish(&format!("attackers/{attacker}/error"), payload)
                .await;
        } else {
            let answer = app
                .call(
                    "POST",
                    &format!("/v1/publish/attackers/{attacker}/error"),
                    &[],
                    Some(&payload),
                )
                .await;
            assert_eq!(answer.status, 201, "{answer:?}");
        }

        let event = sse.next_event().await;
        assert_eq!(event.event, "message", "never `error`: {event:?}");
        let envelope = event.json();
        assert_eq!(envelope["event"], "message");
        assert_eq!(envelope["payload"]["via"], via);
        let frame = ws.next_event().await;
        assert_eq!(frame["event"], "message", "the WebSocket says the same");
    }
}
