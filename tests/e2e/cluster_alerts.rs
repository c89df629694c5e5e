//! Cluster mode's one voice for alerts, end to end: real edgebus processes
//! on one private Mosquitto and one private Redis, the Slack stand-in as
//! the webhook. Every instance decides every alert; each is published once
//! (a claim in Redis), its Slack message waits in the shared outbox, and
//! only the lease holder delivers it, so a leader killed mid-outage loses
//! nothing and a leaderless moment silences nothing.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::broker::Mosquitto;
use crate::helpers::{metrics_json, unique, Publisher, WsClient, WAIT};
use crate::node::Node;
use crate::redis_proc::RedisServer;
use crate::slack_mock::{Reply, SlackMock};
use crate::tools::require_tool;

/// Instances, the broker and Redis they share, and the webhook's stand-in.
struct Fleet {
    nodes: Vec<Node>,
    mqtt_port: u16,
    slack: SlackMock,
    _broker: Mosquitto,
    redis: RedisServer,
}

/// `ids.len()` instances posting to the Slack stand-in, with fast pacing
/// and back-off; `None` (after a loud SKIPPED line) without Mosquitto or
/// redis-server.
async fn fleet(ids: &[&str]) -> Option<Fleet> {
    if !require_tool("mosquitto") || !require_tool("redis-server") {
        return None;
    }
    let redis = RedisServer::start_if_installed()?;
    let (broker, mqtt_port) = Mosquitto::on_free_port();
    let slack = SlackMock::start().await;
    let env = [
        ("EDGEBUS__SLACK__WEBHOOK_URL", slack.url.as_str()),
        ("EDGEBUS__SLACK__PACE_MILLISECONDS", "50"),
        ("EDGEBUS__SLACK__RETRY_MIN_MILLISECONDS", "100"),
        ("EDGEBUS__SLACK__RETRY_MAX_MILLISECONDS", "200"),
        ("EDGEBUS__SLACK__SUMMARY_INTERVAL_SECONDS", "3600"),
    ];
    let mut nodes = Vec::new();
    for id in ids {
        nodes.push(Node::cluster(mqtt_port, &redis.url(), id, &env).await);
    }
    Some(Fleet {
        nodes,
        mqtt_port,
        slack,
        _broker: broker,
        redis,
    })
}

/// One series of `/metrics`; absent counts as 0.
async fn metric(node: &Node, series: &str) -> f64 {
    let (status, text) = node.get("/metrics").await;
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The index of the one instance holding the lease, once there is one.
async fn leader(nodes: &[Node]) -> usize {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut leaders = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            if metric(node, "edgebus_cluster_leader").await == 1.0 {
                leaders.push(i);
            }
        }
        if leaders.len() == 1 {
            return leaders[0];
        }
        assert!(Instant::now() < deadline, "leaders: {leaders:?}");
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Outputs `node` has claimed so far, whoever published them.
async fn claims(node: &Node) -> f64 {
    metric(node, "edgebus_cluster_claims_total{outcome=\"published\"}").await
        + metric(
            node,
            "edgebus_cluster_claims_total{outcome=\"already_published\"}",
        )
        .await
}

/// Waits until `node` has claimed `n` outputs: whatever it published is in
/// the stream by then, so a marker appended afterwards follows it.
async fn wait_claims(node: &Node, n: f64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = claims(node).await;
        if seen >= n {
            assert_eq!(seen, n, "{} claims", node.port());
            return;
        }
        assert!(Instant::now() < deadline, "{seen} of {n} claims");
        actix_web::rt::time::sleep(Duration::from_millis(25)).await;
    }
}

/// POSTs a notification to `node`; its stream id.
async fn marker(node: &Node) -> String {
    let body = json!({"level": "info", "message": "marker", "source": unique("marker")});
    let mut resp = awc::Client::new()
        .post(node.url("/v1/notifications"))
        .send_json(&body)
        .await
        .expect("POST /v1/notifications");
    let answer: Value = resp.json().await.expect("JSON answer");
    assert_eq!(resp.status().as_u16(), 201, "{answer}");
    answer["id"].as_str().expect("an id").to_owned()
}

/// A WebSocket client on one instance and the events it received.
struct Watch {
    ws: WsClient,
    seen: Vec<Value>,
}

impl Watch {
    /// Alerts, presence and notifications, past the snapshot.
    async fn on(node: &Node) -> Self {
        let url = format!(
            "ws://127.0.0.1:{}/v1/ws?topic=alerts%2F%23&topic=devices%2F%2B%2Fpresence&topic=notifications%2F%23",
            node.port()
        );
        let mut ws = WsClient::connect(&url).await;
        ws.snapshot().await;
        Self {
            ws,
            seen: Vec::new(),
        }
    }

    /// Reads until the event `id` arrived: everything published before it
    /// is then in `seen`.
    async fn until(&mut self, id: &str) {
        loop {
            let frame = self.ws.next_event().await;
            let done = frame["id"] == id;
            self.seen.push(frame);
            if done {
                return;
            }
        }
    }

    /// Publishes breach frames for `device` until its alert reaches this
    /// client: a frame the broker handed to an instance just killed is lost
    /// (Mosquitto, clean sessions), and the next one goes to a live one.
    async fn breach_until_alerted(&mut self, publisher: &mut Publisher, device: &str) {
        let deadline = Instant::now() + WAIT;
        for seq in 1.. {
            breach(publisher, device, seq).await;
            let until = tokio::time::Instant::now() + Duration::from_millis(300);
            while let Ok(frame) = tokio::time::timeout_at(until, self.ws.next_event()).await {
                self.seen.push(frame);
                if self.alerts(device) > 0 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "no alert for {device}");
        }
    }

    /// Alert events' topics, in stream order.
    fn alert_order(&self) -> Vec<String> {
        self.seen
            .iter()
            .filter(|e| e["event"] == "alert")
            .filter_map(|e| e["topic"].as_str().map(str::to_owned))
            .collect()
    }

    /// Events named `name` on `topic`.
    fn count(&self, name: &str, topic: &str) -> usize {
        self.seen
            .iter()
            .filter(|e| e["event"] == name && e["topic"] == topic)
            .count()
    }

    fn alerts(&self, device: &str) -> usize {
        self.count("alert", &format!("alerts/{device}/cpu_high"))
    }

    fn online(&self, device: &str) -> usize {
        self.count("device.online", &format!("devices/{device}/presence"))
    }
}

/// The Slack text of `device`'s cpu_high alert.
fn alert_text(device: &str) -> impl Fn(&str) -> bool + '_ {
    move |text: &str| text.contains(&format!("cpu_high ALERT at {device}:"))
}

/// Texts delivered (200) that are `device`'s alert.
fn delivered_for(slack: &SlackMock, device: &str) -> usize {
    slack
        .delivered()
        .iter()
        .filter(|t| alert_text(device)(t))
        .count()
}

async fn breach(publisher: &mut Publisher, device: &str, seq: u64) {
    publisher
        .publish(
            &format!("devices/{device}/metrics"),
            metrics_json(device, seq, 95.0),
        )
        .await;
}

#[actix_web::test]
async fn a_breach_seen_by_every_instance_is_one_alert_per_cooldown_everywhere() {
    // Arrange: three instances, a WebSocket client on each.
    let Some(f) = fleet(&["a", "b", "c"]).await else {
        return;
    };
    leader(&f.nodes).await;
    let mut watches = Vec::new();
    for node in &f.nodes {
        watches.push(Watch::on(node).await);
    }
    let mut publisher = Publisher::connect(f.mqtt_port).await;
    let (hot, later) = (unique("hot"), unique("later"));

    // Act: a sustained breach (three frames inside the 60 s cooldown), then
    // another device's breach, whose alert queues behind anything the
    // first could have caused.
    for seq in 1..=3 {
        breach(&mut publisher, &hot, seq).await;
    }
    breach(&mut publisher, &later, 1).await;
    f.slack.wait_text(alert_text(&later)).await;
    for node in &f.nodes {
        wait_claims(node, 4.0).await;
    }
    let id = marker(&f.nodes[0]).await;

    // Assert: one alert and one device.online on every instance's clients,
    // and one Slack message.
    for w in &mut watches {
        w.until(&id).await;
        assert_eq!(w.alerts(&hot), 1, "{:#?}", w.seen);
        assert_eq!(w.online(&hot), 1, "{:#?}", w.seen);
        assert_eq!(w.alerts(&later), 1, "{:#?}", w.seen);
    }
    assert_eq!(
        delivered_for(&f.slack, &hot),
        1,
        "{:#?}",
        f.slack.delivered()
    );
    assert_eq!(delivered_for(&f.slack, &later), 1);
    let mut claimed = 0.0;
    for node in &f.nodes {
        claimed += metric(node, "edgebus_cluster_claims_total{outcome=\"published\"}").await;
    }
    assert_eq!(claimed, 4.0, "two alerts and two device.online, each once");
}

#[actix_web::test]
async fn a_leader_killed_during_a_slack_outage_loses_no_queued_alert() {
    // Arrange: two instances; Slack answers 500 until told otherwise.
    let Some(mut f) = fleet(&["a", "b"]).await else {
        return;
    };
    f.slack.script(vec![Reply::Status(500, "down"); 100_000]);
    let old = leader(&f.nodes).await;
    let survivor = 1 - old;
    let mut watch = Watch::on(&f.nodes[survivor]).await;
    let mut publisher = Publisher::connect(f.mqtt_port).await;
    let devices: Vec<String> = (0..5).map(|i| unique(&format!("d{i}-"))).collect();
    for device in &devices {
        breach(&mut publisher, device, 1).await;
    }
    // The leader keeps trying the first alert while the rest wait.
    f.slack.wait_requests(3).await;
    assert!(f.slack.delivered().is_empty());

    // Act: kill the leader mid-outage; the same breaches go on (inside
    // their cooldown); Slack recovers.
    f.nodes[old].kill();
    for device in &devices {
        breach(&mut publisher, device, 2).await;
    }
    f.slack.clear_script();
    let last = unique("last");
    watch.breach_until_alerted(&mut publisher, &last).await;
    f.slack.wait_text(alert_text(&last)).await;
    wait_claims(&f.nodes[survivor], 12.0).await;
    let id = marker(&f.nodes[survivor]).await;
    watch.until(&id).await;

    // Assert: every queued alert arrived once, in the order the cluster
    // published them (the stream's), then the new one; none was repeated,
    // and the survivor leads.
    let delivered = f.slack.delivered();
    let slack_order: Vec<String> = delivered
        .iter()
        .filter_map(|t| {
            devices
                .iter()
                .chain([&last])
                .find(|d| alert_text(d)(t))
                .map(|d| format!("alerts/{d}/cpu_high"))
        })
        .collect();
    assert_eq!(slack_order, watch.alert_order(), "{delivered:#?}");
    assert_eq!(slack_order.len(), 6, "{delivered:#?}");
    assert!(alert_text(&last)(delivered.last().expect("some")));
    assert_eq!(leader(&f.nodes[survivor..=survivor]).await, 0);
    // No device.online burst, no repeated alert on the survivor's clients.
    for device in &devices {
        assert_eq!(watch.online(device), 1, "{device}: {:#?}", watch.seen);
        assert_eq!(watch.alerts(device), 1, "{device}: {:#?}", watch.seen);
    }
}

#[actix_web::test]
async fn an_alert_decided_while_no_instance_leads_is_published_once() {
    // Arrange: two instances and a client on the follower.
    let Some(mut f) = fleet(&["a", "b"]).await else {
        return;
    };
    let old = leader(&f.nodes).await;
    let survivor = 1 - old;
    let mut watch = Watch::on(&f.nodes[survivor]).await;
    let mut publisher = Publisher::connect(f.mqtt_port).await;
    let hot = unique("hot");

    // Act: the leader dies; before the lease runs out, a breach.
    f.nodes[old].kill();
    watch.breach_until_alerted(&mut publisher, &hot).await;

    // Assert: the alert and device.online went out with nobody leading,
    // and Slack hears it once the survivor takes the lease.
    assert_eq!(
        metric(&f.nodes[survivor], "edgebus_cluster_leader").await,
        0.0,
        "the lease (5 s) has not passed yet"
    );
    wait_claims(&f.nodes[survivor], 2.0).await;
    let id = marker(&f.nodes[survivor]).await;
    watch.until(&id).await;
    assert_eq!(watch.alerts(&hot), 1, "{:#?}", watch.seen);
    assert_eq!(watch.online(&hot), 1, "{:#?}", watch.seen);
    f.slack.wait_text(alert_text(&hot)).await;

    // Act: the killed instance comes back knowing nothing of the breach
    // (no cooldown, no presence) and sees it go on.
    f.nodes[old].restart().await;
    let mut back = Watch::on(&f.nodes[old]).await;
    breach(&mut publisher, &hot, 100).await;
    let fresh = unique("fresh");
    back.breach_until_alerted(&mut publisher, &fresh).await;
    f.slack.wait_text(alert_text(&fresh)).await;
    wait_claims(&f.nodes[survivor], 4.0).await;
    wait_claims(&f.nodes[old], 4.0).await;
    let id = marker(&f.nodes[survivor]).await;

    // Assert: the newcomer repeated neither the alert (inside its cooldown)
    // nor device.online; the new device's alert went out once.
    watch.until(&id).await;
    back.until(&id).await;
    assert_eq!(watch.alerts(&hot), 1, "{:#?}", watch.seen);
    assert_eq!(watch.online(&hot), 1, "{:#?}", watch.seen);
    assert_eq!(back.alerts(&hot), 0, "{:#?}", back.seen);
    assert_eq!(back.online(&hot), 0, "{:#?}", back.seen);
    assert_eq!(watch.alerts(&fresh), 1);
    assert_eq!(back.alerts(&fresh), 1);
    assert_eq!(
        delivered_for(&f.slack, &hot),
        1,
        "{:#?}",
        f.slack.delivered()
    );
    assert_eq!(delivered_for(&f.slack, &fresh), 1);
}

#[actix_web::test]
async fn a_leader_that_cannot_reach_redis_steps_down_and_delivery_resumes() {
    // Arrange: two instances, one leading.
    let Some(f) = fleet(&["a", "b"]).await else {
        return;
    };
    leader(&f.nodes).await;

    // Act: Redis hangs past the lease.
    f.redis.freeze();
    let deadline = Instant::now() + WAIT;
    loop {
        let mut leaders = 0.0;
        for node in &f.nodes {
            leaders += metric(node, "edgebus_cluster_leader").await;
        }
        if leaders == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "a leader without Redis");
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    let mut errors = 0.0;
    for node in &f.nodes {
        errors += metric(node, "edgebus_cluster_redis_errors_total{op=\"lease\"}").await;
    }
    f.redis.thaw();

    // Assert: the lease failures were counted; once Redis answers, one
    // instance leads again, renews, and an alert reaches Slack once.
    assert!(errors >= 1.0, "lease errors: {errors}");
    let now = leader(&f.nodes).await;
    let renewals = metric(&f.nodes[now], "edgebus_cluster_lease_renewals_total").await;
    let mut publisher = Publisher::connect(f.mqtt_port).await;
    let hot = unique("hot");
    breach(&mut publisher, &hot, 1).await;
    f.slack.wait_text(alert_text(&hot)).await;
    for node in &f.nodes {
        wait_claims(node, 2.0).await;
    }
    assert_eq!(delivered_for(&f.slack, &hot), 1);
    let deadline = Instant::now() + WAIT;
    while metric(&f.nodes[now], "edgebus_cluster_lease_renewals_total").await <= renewals {
        assert!(Instant::now() < deadline, "the lease is not renewed");
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
}
