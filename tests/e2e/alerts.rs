//! Alerts end to end: MQTT frames in, alert and presence events on the bus
//! (seen by a real WebSocket client), Slack messages at a real HTTP server.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use edgebus::actors::alerts::{Check, ManualClock};
use edgebus::actors::event::now_ms;

use crate::helpers::{metrics_json, spawn_app_with, spawn_app_with_clock, unique, TestApp};
use crate::slack_mock::SlackMock;

/// Slack at the mock, fast pacing and retries so tests do not wait.
pub fn slack_toml(slack: &SlackMock) -> String {
    format!(
        "[slack]\nwebhook_url = \"{}\"\npace_milliseconds = 20\nretry_min_milliseconds = 50\nretry_max_milliseconds = 200\ntimeout_seconds = 2\nsummary_interval_seconds = 3600\n",
        slack.url
    )
}

fn topic(device: &str) -> String {
    format!("devices/{device}/metrics")
}

/// The start of the current UTC hour plus `minutes`.
fn this_hour_plus(minutes: u64) -> u64 {
    now_ms() / 3_600_000 * 3_600_000 + minutes * 60_000
}

async fn check(app: &TestApp) {
    app.handle.alerts().send(Check).await.expect("alerts alive");
}

fn count(texts: &[String], needle: &str) -> usize {
    texts.iter().filter(|t| t.contains(needle)).count()
}

#[actix_web::test]
async fn a_sustained_breach_alerts_once_per_device_and_its_end_once() {
    // Arrange
    let slack = SlackMock::start().await;
    let app = spawn_app_with(&slack_toml(&slack)).await;
    let mut ws = app.ws("?topic=alerts/%23").await;
    assert!(ws.snapshot().await.is_empty());
    let mut publisher = app.publisher().await;
    let (d1, d2, sentinel) = (unique("d"), unique("d"), unique("sentinel"));

    // Act: ten hot frames from each of two devices, then d1 cools down.
    for seq in 0..10 {
        publisher
            .publish(&topic(&d1), metrics_json(&d1, seq, 95.0))
            .await;
        publisher
            .publish(&topic(&d2), metrics_json(&d2, seq, 96.0))
            .await;
    }
    publisher
        .publish(&topic(&d1), metrics_json(&d1, 10, 40.0))
        .await;
    publisher
        .publish(&topic(&d1), metrics_json(&d1, 11, 41.0))
        .await;
    publisher
        .publish(&topic(&sentinel), metrics_json(&sentinel, 0, 99.0))
        .await;

    // Assert: on the bus, exactly these alerts, in order.
    let mut seen = Vec::new();
    loop {
        let event = ws.next_event().await;
        assert_eq!(event["event"], "alert");
        let p = &event["payload"];
        seen.push((
            event["topic"].as_str().unwrap_or_default().to_owned(),
            p["state"].as_str().unwrap_or_default().to_owned(),
        ));
        if p["device_id"] == sentinel.as_str() {
            break;
        }
    }
    let expected = vec![
        (format!("alerts/{d1}/cpu_high"), "firing".to_owned()),
        (format!("alerts/{d2}/cpu_high"), "firing".to_owned()),
        (format!("alerts/{d1}/cpu_high"), "resolved".to_owned()),
        (format!("alerts/{sentinel}/cpu_high"), "firing".to_owned()),
    ];
    assert_eq!(seen, expected);

    // And the same four at Slack, in order, in the seed bridge's words.
    let texts = slack.wait_delivered(4).await;
    assert_eq!(texts.len(), 4, "{texts:#?}");
    assert!(texts[0].starts_with(&format!(
        ":rotating_light: cpu_high ALERT at {d1}: cpu_percent 95.0 (threshold: above 90). CPU 95.0%, RAM 40.0%"
    )));
    assert!(texts[1].contains(&format!("ALERT at {d2}")));
    assert!(texts[2].starts_with(&format!(
        ":white_check_mark: cpu_high resolved at {d1}: cpu_percent 40.0"
    )));
    assert!(texts[3].contains(&sentinel));
    assert_eq!(
        app.wait_metric_value("edgebus_alerts_raised_total{rule=\"cpu_high\"}", 3.0)
            .await,
        3.0
    );
}

#[actix_web::test]
async fn the_next_alert_comes_only_when_the_cooldown_has_passed() {
    let slack = SlackMock::start().await;
    let clock = Arc::new(ManualClock::new(now_ms()));
    let app = spawn_app_with_clock(&slack_toml(&slack), Some(clock.clone())).await;
    let mut publisher = app.publisher().await;
    let (d1, sentinel) = (unique("d"), unique("sentinel"));

    publisher
        .publish(&topic(&d1), metrics_json(&d1, 1, 95.0))
        .await;
    assert_eq!(slack.wait_delivered(1).await.len(), 1);

    // 59 s later, still hot: held back (the sentinel proves the frame was seen).
    clock.advance(Duration::from_secs(59));
    publisher
        .publish(&topic(&d1), metrics_json(&d1, 2, 97.0))
        .await;
    publisher
        .publish(&topic(&sentinel), metrics_json(&sentinel, 1, 99.0))
        .await;
    let texts = slack.wait_delivered(2).await;
    assert!(texts[1].contains(&sentinel), "{texts:#?}");

    // 60 s after the first alert: the next one.
    clock.advance(Duration::from_secs(1));
    publisher
        .publish(&topic(&d1), metrics_json(&d1, 3, 98.0))
        .await;
    let texts = slack.wait_delivered(3).await;
    assert!(
        texts[2].contains(&format!("ALERT at {d1}: cpu_percent 98.0")),
        "{texts:#?}"
    );
}

#[actix_web::test]
async fn presence_is_announced_online_then_offline_within_a_second_of_the_deadline() {
    // The alerts clock is the test's, so "not before the deadline" and "at
    // the deadline" are exact whatever the machine's load; the actor's own
    // timer, armed for the deadline, announces it.
    let clock = Arc::new(ManualClock::new(now_ms()));
    let app = spawn_app_with_clock("[registry]\nprune_seconds = 1\n", Some(clock.clone())).await;
    let mut ws = app.ws("?topic=devices/%2B/presence").await;
    ws.snapshot().await;
    let mut publisher = app.publisher().await;
    let (d1, sentinel) = (unique("d"), unique("sentinel"));

    publisher
        .publish(&topic(&d1), metrics_json(&d1, 1, 10.0))
        .await;

    let online = ws.next_event().await;
    assert_eq!(online["event"], "device.online");
    assert_eq!(online["topic"], format!("devices/{d1}/presence"));
    assert_eq!(online["payload"]["device_id"], d1.as_str());
    // A millisecond before the deadline: still online. An offline event
    // would come before the sentinel's online one.
    clock.advance(Duration::from_millis(999));
    check(&app).await;
    publisher
        .publish(&topic(&sentinel), metrics_json(&sentinel, 1, 10.0))
        .await;
    let next = ws.next_event().await;
    assert_eq!(
        (
            next["event"].as_str(),
            next["payload"]["device_id"].as_str()
        ),
        (Some("device.online"), Some(sentinel.as_str())),
        "nothing before the deadline"
    );
    clock.advance(Duration::from_millis(1));
    let offline = ws.next_event().await;
    assert_eq!(offline["event"], "device.offline");
    assert_eq!(offline["payload"]["device_id"], d1.as_str());
    assert_eq!(
        offline["payload"]["last_seen"],
        online["payload"]["last_seen"]
    );
    // A new frame: online again.
    publisher
        .publish(&topic(&d1), metrics_json(&d1, 2, 10.0))
        .await;
    assert_eq!(ws.next_event().await["event"], "device.online");
}

#[actix_web::test]
async fn a_rejecting_device_is_reported_once_an_hour_and_its_recovery_once() {
    let slack = SlackMock::start().await;
    let clock = Arc::new(ManualClock::new(this_hour_plus(5)));
    let app = spawn_app_with_clock(&slack_toml(&slack), Some(clock.clone())).await;
    let mut publisher = app.publisher().await;
    let (bad, sentinel) = (unique("bad"), unique("sentinel"));

    for _ in 0..3 {
        publisher.publish(&topic(&bad), "[1]").await;
    }
    let first = slack
        .wait_text(|t| t.contains(&format!("{bad} is rejecting")))
        .await;
    assert!(first.contains("last reason: not_object"), "{first}");

    // Ten minutes on, still broken: same hour, no new report.
    clock.advance(Duration::from_secs(600));
    for _ in 0..3 {
        publisher.publish(&topic(&bad), "{\"device_id\":1}").await;
    }
    publisher
        .publish(&topic(&sentinel), metrics_json(&sentinel, 1, 99.0))
        .await;
    slack.wait_text(|t| t.contains(&sentinel)).await;
    assert_eq!(count(&slack.delivered(), "is rejecting"), 1);

    // An hour later, still broken: reported again.
    clock.advance(Duration::from_secs(3600));
    for _ in 0..3 {
        publisher.publish(&topic(&bad), "[1]").await;
    }
    slack.wait_delivered(3).await;
    assert_eq!(count(&slack.delivered(), &format!("{bad} is rejecting")), 2);

    // Fixed.
    publisher
        .publish(&topic(&bad), metrics_json(&bad, 1, 10.0))
        .await;
    slack
        .wait_text(|t| t.contains(&format!("{bad} frames are accepted again")))
        .await;
    assert_eq!(
        app.wait_metric_value("edgebus_alerts_raised_total{rule=\"rejecting\"}", 2.0)
            .await,
        2.0
    );
}

#[actix_web::test]
async fn a_silent_device_is_reported_hourly_until_it_speaks_again() {
    let slack = SlackMock::start().await;
    let t0 = this_hour_plus(5);
    let clock = Arc::new(ManualClock::new(t0));
    let app = spawn_app_with_clock(&slack_toml(&slack), Some(clock.clone())).await;
    let mut presence = app.ws("?topic=devices/%2B/presence").await;
    presence.snapshot().await;
    let mut publisher = app.publisher().await;
    let (d1, sentinel) = (unique("d"), unique("sentinel"));

    publisher
        .publish(&topic(&d1), metrics_json(&d1, 1, 10.0))
        .await;
    // Seen by the alerts actor (it announces presence) before time moves.
    assert_eq!(presence.next_event().await["event"], "device.online");

    clock.advance(Duration::from_secs(30 * 60)); // registry.silent_after_seconds
    check(&app).await;
    let silent = slack
        .wait_text(|t| t.contains(&format!("{d1} is silent")))
        .await;
    assert!(
        silent.contains("nothing received for over 30 minutes (last seen"),
        "{silent}"
    );

    // Later the same hour: nothing new.
    clock.advance(Duration::from_secs(10 * 60));
    check(&app).await;
    publisher
        .publish(&topic(&sentinel), metrics_json(&sentinel, 1, 99.0))
        .await;
    slack.wait_text(|t| t.contains(&sentinel)).await;
    assert_eq!(count(&slack.delivered(), &format!("{d1} is silent")), 1);

    // The next hour: reported again.
    clock.set(t0 + 55 * 60_000);
    check(&app).await;
    slack.wait_delivered(3).await;
    assert_eq!(count(&slack.delivered(), &format!("{d1} is silent")), 2);

    publisher
        .publish(&topic(&d1), metrics_json(&d1, 2, 10.0))
        .await;
    slack
        .wait_text(|t| t.contains(&format!("{d1} is sending again")))
        .await;
    let (_, devices) = app
        .wait_json("/v1/devices", |_, d| d.get(&d1).is_some())
        .await;
    assert!(devices.get(&d1).is_some());
}

#[actix_web::test]
async fn attacker_events_reach_slack_as_one_digest_per_window() {
    // The window is on the test's clock: however slowly the four events
    // travel, they fall in one window, which closes when the clock says.
    let slack = SlackMock::start().await;
    let clock = Arc::new(ManualClock::new(now_ms()));
    let app = spawn_app_with_clock(
        &format!(
            "{}[alerts]\ndigest_window_seconds = 1\n",
            slack_toml(&slack)
        ),
        Some(clock.clone()),
    )
    .await;
    let mut raw = app.ws("?topic=attackers/%23").await;
    raw.snapshot().await;
    let mut presence = app.ws("?topic=devices/%2B/presence").await;
    presence.snapshot().await;
    let mut publisher = app.publisher().await;
    let (attacker, sentinel) = (unique("a"), unique("sentinel"));

    for primitive in ["dns", "http", "dns"] {
        publisher
            .publish(
                &format!("attackers/{attacker}/observation/{primitive}"),
                r#"{"detail":"x"}"#,
            )
            .await;
    }
    publisher
        .publish(&format!("attackers/{attacker}/scored"), r#"{"score":42}"#)
        .await;

    // The raw stream stays on the bus, event by event.
    for _ in 0..4 {
        let e = raw.next_event().await;
        assert!(e["topic"].as_str().unwrap_or_default().contains(&attacker));
    }
    // Seen by the alerts actor (it announces the sentinel after them)
    // before the window closes.
    publisher
        .publish(&topic(&sentinel), metrics_json(&sentinel, 1, 10.0))
        .await;
    assert_eq!(presence.next_event().await["event"], "device.online");
    clock.advance(Duration::from_secs(1));
    check(&app).await;
    let digest = slack
        .wait_text(|t| t.contains(&format!("attacker {attacker}")))
        .await;
    assert_eq!(
        digest,
        format!(":shield: attacker {attacker}: 3 observations across 2 primitives in the last 1 second, score 42")
    );
    assert_eq!(slack.requests().len(), 1, "one message, not four");
    let _: Value = serde_json::from_str(&slack.requests()[0].body).expect("JSON body");
}

#[actix_web::test]
async fn without_slack_alerts_still_reach_the_bus() {
    let app = spawn_app_with(
        "[alerts]\nrules = [{ name = \"disk_full\", field = \"disk_percent\", above = 65.0, cooldown_seconds = 5 }]\n",
    )
    .await;
    let mut ws = app.ws("?topic=alerts/%2B/disk_full").await;
    ws.snapshot().await;
    let mut publisher = app.publisher().await;
    let d1 = unique("d");

    publisher
        .publish(&topic(&d1), metrics_json(&d1, 1, 1.0))
        .await;

    let alert = ws.next_event().await;
    assert_eq!(alert["topic"], format!("alerts/{d1}/disk_full"));
    let p = &alert["payload"];
    assert_eq!(p["field"], "disk_percent");
    assert_eq!(p["value"], 70.0);
    assert_eq!(p["above"], 65.0);
    assert_eq!(p["state"], "firing");
    assert!(p["message"]
        .as_str()
        .unwrap_or_default()
        .contains("disk_full ALERT"));
    assert_eq!(
        app.metric("edgebus_slack_outbox_depth").await,
        0.0,
        "no Slack actor, nothing queued"
    );
}
