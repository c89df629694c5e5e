//! The Alerts actor with a real Bus, a manual clock and a stand-in for the
//! Slack actor: hours pass without anyone waiting for them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::*;
use crate::bus::session_queue;
use crate::bus::{BusConfig, Join};
use crate::event::{Body, Draft};
use crate::frame::{MetricsFrame, Rejection};
use crate::reject::reject_draft;
use crate::subscription::Subscription;

/// 2026-05-02T13:00:00Z, the start of an hour bucket.
const T0: u64 = 1_777_726_800_000;
const MIN: Duration = Duration::from_secs(60);

/// Stands in for the Slack actor: forwards every notice to the test.
struct Collector(mpsc::UnboundedSender<Notice>);

impl Actor for Collector {
    type Context = Context<Self>;
}

impl Handler<Enqueue> for Collector {
    type Result = ();
    fn handle(&mut self, msg: Enqueue, _: &mut Context<Self>) {
        let _ = self.0.send(msg.0);
    }
}

/// Answered once every earlier `Enqueue` was handled.
#[derive(Message)]
#[rtype(result = "()")]
struct Marker;

impl Handler<Marker> for Collector {
    type Result = ();
    fn handle(&mut self, _: Marker, _: &mut Context<Self>) {}
}

struct Rig {
    bus: Addr<Bus>,
    alerts: Addr<Alerts>,
    collector: Addr<Collector>,
    notices: mpsc::UnboundedReceiver<Notice>,
    events: SessionInbox,
    clock: Arc<ManualClock>,
    telemetry: Arc<Telemetry>,
}

fn cpu_rule(cooldown: Duration) -> Rule {
    Rule::compile(
        &RuleSpec {
            name: "cpu_high".into(),
            field: "cpu_percent".into(),
            above: Some(90.0),
            below: None,
            cooldown: Some(cooldown),
        },
        Duration::from_secs(60),
    )
    .unwrap()
}

async fn rig() -> Rig {
    rig_with_digest_budget(20).await
}

async fn rig_with_digest_budget(max_digests_per_window: u32) -> Rig {
    rig_with(max_digests_per_window, None, Arc::new(Telemetry::new())).await
}

async fn rig_with(
    max_digests_per_window: u32,
    journal: Option<Journal>,
    telemetry: Arc<Telemetry>,
) -> Rig {
    let bus = Bus::new(
        BusConfig {
            queue_capacity: 1024,
            history: 0,
            metrics_snapshot_window: Duration::from_secs(30),
            ..BusConfig::default()
        },
        telemetry.clone(),
    )
    .start();
    let (tx, notices) = mpsc::unbounded_channel();
    let collector = Collector(tx).start();
    let clock = Arc::new(ManualClock::new(T0));
    let config = AlertsConfig {
        rules: vec![cpu_rule(Duration::from_secs(60))],
        offline_after: Duration::from_secs(30),
        silent_after: 30 * MIN,
        rejecting_window: 5 * MIN,
        digest_window: 5 * MIN,
        max_digests_per_window,
        max_devices: 100,
        uploads_silent_after: DEFAULT_UPLOADS_SILENT_AFTER,
        uploads_fatal_window: DEFAULT_UPLOADS_FATAL_WINDOW,
        max_upload_hosts: 100,
    };
    let alerts = Alerts::new(
        config,
        bus.clone(),
        Some(collector.clone().recipient()),
        telemetry.clone(),
        clock.clone(),
    );
    let alerts = match journal {
        Some(journal) => alerts.with_journal(journal),
        None => alerts,
    }
    .start();
    // Started (and joined the bus) before anything is published.
    alerts.send(Stats).await.unwrap();
    let (queue, mut events) = session_queue(1024);
    bus.send(Join {
        session: SessionId::next(),
        queue,
        subscriptions: vec![
            Subscription::topic(TopicFilter::parse("alerts/#").unwrap()),
            Subscription::topic(TopicFilter::parse("devices/+/presence").unwrap()),
        ],
        resume: None,
    })
    .await
    .unwrap();
    assert!(matches!(events.try_recv(), Some(Delivery::Snapshot(_))));
    Rig {
        bus,
        alerts,
        collector,
        notices,
        events,
        clock,
        telemetry,
    }
}

fn frame(device: &str, cpu: f64) -> Draft {
    let json = format!(
        r#"{{"device_id":"{device}","timestamp":1,"cpu_percent":{cpu},"mem_percent":40,"disk_percent":70}}"#
    );
    let frame = MetricsFrame::parse(device, json.as_bytes(), 4096).unwrap();
    Draft::new(format!("devices/{device}/metrics"), 0, Body::Metrics(frame))
}

/// An `uploads/{host}` event as the upload endpoint publishes it.
fn upload(host: &str, http_status: u16, status: &str) -> Draft {
    let payload = serde_json::json!({
        "host_id": host,
        "episode_id": "ep-0001",
        "status": status,
        "http_status": http_status,
        "stamped": true,
    });
    let serde_json::Value::Object(map) = payload else {
        unreachable!("an object")
    };
    let name = if http_status < 300 {
        families::UPLOAD_STORED
    } else {
        families::UPLOAD_REFUSED
    };
    Draft::new(families::uploads_topic(host), 0, Body::Object(map)).with_event_name(name)
}

/// Stops the actor (tests only): its journal goes with it.
#[derive(Message)]
#[rtype(result = "()")]
struct Shutdown;

impl Handler<Shutdown> for Alerts {
    type Result = ();
    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

fn observation(attacker: &str, primitive: &str) -> Draft {
    Draft::new(
        format!("attackers/{attacker}/observation/{primitive}"),
        0,
        Body::Object(serde_json::Map::new()),
    )
}

impl Rig {
    async fn publish(&self, draft: Draft) {
        self.bus.send(Publish(draft)).await.unwrap();
    }

    async fn reject(&self, device: &str) {
        let draft = reject_draft(
            &format!("devices/{device}/metrics"),
            Some(device),
            &Rejection::NotObject,
            b"[1]",
            0,
        );
        self.publish(draft).await;
    }

    /// The next Slack notice.
    async fn notice(&mut self) -> Notice {
        tokio::time::timeout(Duration::from_secs(5), self.notices.recv())
            .await
            .expect("a notice in time")
            .expect("collector alive")
    }

    /// Notices produced so far and not yet read. A breaching frame from a
    /// sentinel device is published last: once its alert arrives, everything
    /// published before it has been handled.
    async fn quiet_until_sentinel(&mut self) -> Vec<Notice> {
        let sentinel = format!("sentinel-{}", SessionId::next().0);
        self.publish(frame(&sentinel, 99.0)).await;
        let mut seen = Vec::new();
        loop {
            let n = self.notice().await;
            if n.text.contains(&sentinel) {
                return seen;
            }
            seen.push(n);
        }
    }

    /// Notices queued by work that already ran (after `send(Check)`).
    async fn pending_notices(&mut self) -> Vec<Notice> {
        self.collector.send(Marker).await.unwrap();
        let mut out = Vec::new();
        while let Ok(n) = self.notices.try_recv() {
            out.push(n);
        }
        out
    }

    async fn check(&self) {
        self.alerts.send(Check).await.unwrap();
    }

    /// Bus events on `alerts/#` and `devices/+/presence` so far, as (topic, event name).
    async fn bus_events(&mut self) -> Vec<(String, String, serde_json::Value)> {
        self.bus.send(crate::bus::Stats).await.unwrap();
        let mut out = Vec::new();
        while let Some(item) = self.events.try_recv() {
            if let Delivery::Event(e) = item {
                let v: serde_json::Value = serde_json::from_str(&e.envelope).unwrap();
                out.push((
                    e.topic.to_string(),
                    e.name.to_string(),
                    v["payload"].clone(),
                ));
            }
        }
        out
    }
}

#[actix::test]
async fn a_sustained_breach_alerts_once_per_cooldown_and_recovery_once() {
    let mut rig = rig().await;
    for _ in 0..5 {
        rig.publish(frame("d1", 95.0)).await;
    }
    let first = rig.notice().await;
    assert!(
        first
            .text
            .starts_with(":rotating_light: cpu_high ALERT at d1"),
        "{}",
        first.text
    );
    assert_eq!(first.kind, NoticeKind::Alert);
    rig.clock.advance(Duration::from_secs(59));
    rig.publish(frame("d1", 96.0)).await;
    assert!(
        rig.quiet_until_sentinel().await.is_empty(),
        "within the cooldown"
    );
    rig.clock.advance(Duration::from_secs(1));
    rig.publish(frame("d1", 97.0)).await;
    assert!(rig.notice().await.text.contains("cpu_percent 97.0"));
    rig.publish(frame("d1", 10.0)).await;
    rig.publish(frame("d1", 11.0)).await;
    let resolved = rig.quiet_until_sentinel().await;
    assert_eq!(resolved.len(), 1, "{resolved:?}");
    assert!(resolved[0].text.contains("cpu_high resolved at d1"));
    assert_eq!(
        rig.telemetry.alerts.raised("cpu_high"),
        4,
        "d1 twice, two sentinels"
    );

    let alerts: Vec<_> = rig
        .bus_events()
        .await
        .into_iter()
        .filter(|(t, _, _)| t == "alerts/d1/cpu_high")
        .collect();
    let states: Vec<&str> = alerts
        .iter()
        .map(|(_, _, p)| p["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, vec!["firing", "firing", "resolved"]);
    assert!(alerts.iter().all(|(_, name, _)| name == "alert"));
}

#[actix::test]
async fn a_rejecting_device_is_reported_once_per_hour_bucket() {
    let mut rig = rig().await;
    for _ in 0..3 {
        rig.reject("bad").await;
    }
    let n = rig.notice().await;
    assert!(
        n.text.starts_with(":no_entry: bad is rejecting"),
        "{}",
        n.text
    );
    assert!(n.text.contains("not_object"));
    // The rest of the hour: a bad frame every 2 minutes, no new report.
    for _ in 0..29 {
        rig.clock.advance(2 * MIN);
        rig.reject("bad").await;
    }
    assert!(rig.quiet_until_sentinel().await.is_empty());
    // 14:00: a new bucket.
    rig.clock.set(T0 + 3_600_000);
    rig.reject("bad").await;
    assert!(rig.notice().await.text.contains("bad is rejecting"));
    // Fixed: the next frame is accepted.
    rig.publish(frame("bad", 5.0)).await;
    assert!(rig
        .notice()
        .await
        .text
        .contains("bad frames are accepted again"));
    let events = rig.bus_events().await;
    let rejecting: Vec<&str> = events
        .iter()
        .filter(|(t, _, _)| t == "alerts/bad/rejecting")
        .map(|(_, _, p)| p["state"].as_str().unwrap())
        .collect();
    assert_eq!(rejecting, vec!["firing", "firing", "resolved"]);
    assert_eq!(rig.telemetry.alerts.raised("rejecting"), 2);
}

#[actix::test]
async fn rejections_from_the_device_cap_are_not_a_buggy_publisher() {
    let mut rig = rig().await;
    for _ in 0..5 {
        let draft = reject_draft(
            "devices/x/metrics",
            Some("x"),
            &Rejection::DeviceCap,
            b"",
            0,
        );
        rig.publish(draft).await;
    }
    assert!(rig.quiet_until_sentinel().await.is_empty());
}

#[actix::test]
async fn a_silent_device_is_reported_at_its_deadline_then_hourly_until_it_returns() {
    let mut rig = rig().await;
    rig.publish(frame("d1", 10.0)).await;
    assert!(rig.quiet_until_sentinel().await.is_empty());
    rig.clock.advance(30 * MIN);
    rig.check().await;
    let silent = rig.pending_notices().await;
    let texts: Vec<&str> = silent.iter().map(|n| n.text.as_str()).collect();
    assert!(
        texts.iter().any(|t| t.starts_with(":zzz: d1 is silent: nothing received for over 30 minutes (last seen 2026-05-02T13:00:00Z)")),
        "{texts:?}"
    );
    // Later in the same hour: nothing new.
    rig.clock.advance(20 * MIN);
    rig.check().await;
    assert!(!rig
        .pending_notices()
        .await
        .iter()
        .any(|n| n.text.contains("d1 is silent")),);
    // 14:00: still silent, reported again.
    rig.clock.set(T0 + 3_600_000);
    rig.check().await;
    assert!(rig
        .pending_notices()
        .await
        .iter()
        .any(|n| n.text.contains("d1 is silent")));
    rig.publish(frame("d1", 10.0)).await;
    let back = rig.quiet_until_sentinel().await;
    assert!(
        back.iter().any(|n| n.text.contains("d1 is sending again")),
        "{back:?}"
    );
}

#[actix::test]
async fn presence_goes_online_then_offline_at_the_deadline() {
    let mut rig = rig().await;
    rig.publish(frame("d1", 10.0)).await;
    rig.quiet_until_sentinel().await;
    rig.clock.advance(Duration::from_secs(20));
    rig.publish(frame("d1", 10.0)).await;
    rig.quiet_until_sentinel().await;
    rig.clock.advance(Duration::from_secs(29));
    rig.check().await;
    let before: Vec<String> = rig
        .bus_events()
        .await
        .into_iter()
        .filter(|(t, _, _)| t == "devices/d1/presence")
        .map(|(_, name, _)| name)
        .collect();
    assert_eq!(
        before,
        vec!["device.online"],
        "deadline is 30 s after the second frame"
    );
    rig.clock.advance(Duration::from_secs(1));
    rig.check().await;
    let after: Vec<(String, serde_json::Value)> = rig
        .bus_events()
        .await
        .into_iter()
        .filter(|(t, _, _)| t == "devices/d1/presence")
        .map(|(_, name, p)| (name, p))
        .collect();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].0, "device.offline");
    assert_eq!(after[0].1["last_seen"], T0 + 20_000);
    assert_eq!(
        rig.alerts.send(Stats).await.unwrap().online,
        0,
        "the sentinels went too"
    );
}

#[actix::test]
async fn attacker_observations_roll_up_into_one_digest_per_window() {
    let mut rig = rig().await;
    for primitive in ["dns", "http", "dns", "ssh", "http"] {
        rig.publish(observation("a1", primitive)).await;
    }
    let mut score = serde_json::Map::new();
    score.insert("score".into(), 87.5.into());
    rig.publish(Draft::new("attackers/a1/scored", 0, Body::Object(score)))
        .await;
    assert!(
        rig.quiet_until_sentinel().await.is_empty(),
        "nothing one by one"
    );
    rig.clock.advance(5 * MIN);
    rig.check().await;
    let digests = rig.pending_notices().await;
    assert_eq!(digests.len(), 1, "{digests:?}");
    assert_eq!(digests[0].kind, NoticeKind::Digest);
    assert_eq!(
        digests[0].text,
        ":shield: attacker a1: 5 observations across 3 primitives in the last 5 minutes, score 87.5"
    );
    rig.clock.advance(5 * MIN);
    rig.check().await;
    assert!(rig.pending_notices().await.is_empty(), "one per window");
    assert_eq!(rig.telemetry.alerts.raised(DIGEST_RULE), 1);
}

#[actix::test]
async fn a_flood_of_attackers_posts_at_most_the_window_s_budget_and_counts_the_rest() {
    let mut rig = rig_with_digest_budget(3).await;
    for i in 0..10 {
        rig.publish(observation(&format!("flood{i}"), "dns")).await;
    }
    assert!(rig.quiet_until_sentinel().await.is_empty());
    rig.clock.advance(5 * MIN);
    rig.check().await;
    let posted = rig.pending_notices().await;
    assert_eq!(posted.len(), 3, "{posted:?}");
    assert!(posted.iter().all(|n| n.kind == NoticeKind::Digest));
    assert_eq!(
        rig.telemetry
            .slack
            .dropped(NoticeKind::Digest, "rate_limited"),
        7
    );
    assert_eq!(rig.telemetry.alerts.raised(DIGEST_RULE), 10, "all raised");

    // The next window has its own budget.
    rig.publish(observation("late", "dns")).await;
    rig.quiet_until_sentinel().await;
    rig.clock.advance(5 * MIN);
    rig.check().await;
    assert_eq!(rig.pending_notices().await.len(), 1);
}

#[actix::test]
async fn refused_uploads_raise_fatal_only_on_the_bus_in_slack_and_in_the_journal() {
    let dir = journal::TempDir::new("actor");
    let telemetry = Arc::new(Telemetry::new());
    let (journal, writer) =
        Journal::open(&dir.0, DEFAULT_JOURNAL_MAX_BYTES, telemetry.clone()).unwrap();
    let mut rig = rig_with(20, Some(journal), telemetry).await;
    for _ in 0..3 {
        rig.publish(upload("lab-01", 412, "stale-commit")).await;
    }
    let n = rig.notice().await;
    assert_eq!(
        n.text,
        ":no_entry: lab-01 uploads are all refused (fatal-only): 3 uploads refused, none stored for 30 minutes (last: 412 stale-commit)"
    );
    // Busy answers say nothing about the host; more refusals in the hour
    // are not reported again.
    rig.clock.advance(10 * MIN);
    rig.publish(upload("lab-01", 429, "busy")).await;
    rig.publish(upload("lab-01", 412, "stale-commit")).await;
    assert!(rig.quiet_until_sentinel().await.is_empty());
    // 14:00, still refused: reported again.
    rig.clock.set(T0 + 3_600_000);
    for _ in 0..3 {
        rig.publish(upload("lab-01", 412, "stale-commit")).await;
    }
    assert!(rig
        .notice()
        .await
        .text
        .contains("lab-01 uploads are all refused"));
    rig.publish(upload("lab-01", 201, "stored")).await;
    assert_eq!(
        rig.notice().await.text,
        ":white_check_mark: lab-01 uploads are stored again (uploads-fatal-only resolved)"
    );
    // Past the sentinel, every alert came back from the bus to the actor.
    rig.quiet_until_sentinel().await;

    let alerts: Vec<serde_json::Value> = rig
        .bus_events()
        .await
        .into_iter()
        .filter(|(t, _, _)| t == "alerts/lab-01/uploads-fatal-only")
        .map(|(_, name, p)| {
            assert_eq!(name, "alert");
            p
        })
        .collect();
    let states: Vec<&str> = alerts
        .iter()
        .map(|p| p["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, vec!["firing", "firing", "resolved"]);
    assert!(alerts
        .iter()
        .all(|p| p["symptom"] == "fatal-only" && p["source"] == "uploads"));
    assert_eq!(rig.telemetry.alerts.raised("uploads-fatal-only"), 2);
    assert_eq!(rig.telemetry.alerts.raised("uploads-silent"), 0);
    assert_eq!(rig.alerts.send(Stats).await.unwrap().upload_hosts, 1);

    // The actor gone, its journal's writer ends once it has written all.
    rig.alerts.send(Shutdown).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio::task::spawn_blocking(move || writer.join()),
    )
    .await
    .expect("the writer ends with the actor")
    .unwrap()
    .unwrap();
    let text = std::fs::read_to_string(dir.0.join(journal::JOURNAL_FILE)).unwrap();
    let detail = "3 uploads refused, none stored for 30 minutes (last: 412 stale-commit)";
    assert_eq!(
        text,
        format!(
            concat!(
                r#"{{"ts":"2026-05-02T13:00:00Z","host":"lab-01","symptom":"fatal-only","hour_bucket":493813,"detail":"{detail}"}}"#,
                "\n",
                r#"{{"ts":"2026-05-02T14:00:00Z","host":"lab-01","symptom":"fatal-only","hour_bucket":493814,"detail":"{detail2}"}}"#,
                "\n"
            ),
            detail = detail,
            detail2 = "7 uploads refused, none stored for 30 minutes (last: 412 stale-commit)",
        )
    );
    for reason in ["full", "closed", "write_failed"] {
        assert_eq!(rig.telemetry.alerts.journal_dropped(reason), 0, "{reason}");
    }
}

#[test]
fn the_upload_rules_are_reserved_and_their_alerts_subscribed() {
    for symptom in uploads::UploadSymptom::ALL {
        assert!(rules::RESERVED_NAMES.contains(&symptom.rule()));
        let filter = families::alert_topic("+", symptom.rule());
        assert!(SUBSCRIPTIONS.contains(&filter.as_str()), "{filter}");
    }
}
