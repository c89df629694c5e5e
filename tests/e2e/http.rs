//! Health, readiness, metrics and configuration errors.

use std::process::Command;

use crate::helpers::spawn_app;

#[actix_web::test]
async fn health_readiness_and_metrics_answer() {
    let app = spawn_app().await;
    let (status, body) = app.get_json("/healthz").await;
    assert_eq!(
        (status.as_u16(), body["status"].as_str()),
        (200, Some("ok"))
    );
    let (status, body) = app.get_json("/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(body["mqtt"], "subscribed");
    assert_eq!(
        app.wait_metric_value("edgebus_mqtt_connected", 1.0).await,
        1.0
    );
    let (status, text) = app.get("/metrics").await;
    assert_eq!(status, 200);
    for series in [
        "edgebus_frames_accepted_total",
        "edgebus_frames_rejected_total{reason=\"bad_json\"}",
        "edgebus_events_routed_total",
        "edgebus_events_dropped_total{reason=\"slow_session\"}",
        "edgebus_sessions_open{kind=\"ws\"}",
        "edgebus_mqtt_reconnects_total",
    ] {
        assert!(text.contains(series), "missing {series}");
    }
}

#[actix_web::test]
async fn sessions_are_counted_while_open_and_released_on_disconnect() {
    let app = spawn_app().await;
    // The Alerts actor is a bus subscriber of its own: the baseline.
    let before = app
        .handle
        .bus()
        .send(edgebus::actors::bus::Stats)
        .await
        .unwrap();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut ws = app.ws("").await;
        ws.snapshot().await;
        clients.push(ws);
    }
    assert_eq!(
        app.wait_metric_value(r#"edgebus_sessions_open{kind="ws"}"#, 3.0)
            .await,
        3.0
    );
    drop(clients);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.metric(r#"edgebus_sessions_open{kind="ws"}"#).await != 0.0 {
        assert!(std::time::Instant::now() < deadline, "sessions released");
        actix_web::rt::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let stats = app
        .handle
        .bus()
        .send(edgebus::actors::bus::Stats)
        .await
        .unwrap();
    assert_eq!(
        stats.sessions, before.sessions,
        "the bus holds no dead session"
    );
    assert_eq!(stats.filters, before.filters);
}

#[test]
fn a_bad_setting_exits_non_zero_with_one_line_naming_the_key() {
    let output = Command::new(env!("CARGO_BIN_EXE_edgebus"))
        .env("EDGEBUS__BUS__QUEUE_CAPACITY", "0")
        .output()
        .expect("run edgebus");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("`bus.queue_capacity`"), "{stderr}");
}

#[test]
fn a_missing_config_file_is_reported() {
    let output = Command::new(env!("CARGO_BIN_EXE_edgebus"))
        .args(["--config", "/nonexistent/edgebus.toml"])
        .output()
        .expect("run edgebus");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("edgebus.toml"));
}
