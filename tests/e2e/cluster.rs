//! Cluster mode end to end: real edgebus processes sharing one private
//! Mosquitto (a shared subscription) and one private Redis (the event
//! stream), with real WebSocket and SSE clients on every instance. What
//! one instance takes in, every client on every instance sees once, in one
//! order, under one id.

use std::collections::{BTreeSet, HashSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{json, Value};
use tokio::time::timeout_at;

use crate::broker::Mosquitto;
use crate::helpers::{free_port, metrics_json, unique, Publisher, WsClient, WsEvent, WAIT};
use crate::node::Node;
use crate::redis_proc::RedisServer;
use crate::sse_client::{SseClient, SseItem};
use crate::tools::require_tool;

/// Per-session queues deep enough that no client is conflated or lagged:
/// these tests check order and delivery, not the slow-consumer policy.
const DEEP_QUEUES: (&str, &str) = ("EDGEBUS__BUS__QUEUE_CAPACITY", "65536");

/// Instances on one broker and one Redis; the nodes are killed first.
struct Cluster {
    nodes: Vec<Node>,
    mqtt_port: u16,
    _broker: Mosquitto,
    _redis: RedisServer,
}

/// `ids.len()` instances with `env`, all ready; `None` (after a loud
/// SKIPPED line) when Mosquitto or redis-server is not installed.
async fn cluster(ids: &[&str], env: &[(&str, &str)]) -> Option<Cluster> {
    if !require_tool("mosquitto") || !require_tool("redis-server") {
        return None;
    }
    let (broker, mqtt_port) = Mosquitto::on_free_port();
    let redis = RedisServer::start();
    let url = redis.url();
    let nodes = join_all(ids.iter().map(|id| Node::cluster(mqtt_port, &url, id, env))).await;
    Some(Cluster {
        nodes,
        mqtt_port,
        _broker: broker,
        _redis: redis,
    })
}

/// `?topic=…&topic=…`, each filter percent-encoded.
fn query(filters: &[&str]) -> String {
    let topics: Vec<String> = filters
        .iter()
        .map(|f| {
            let f = f
                .replace('/', "%2F")
                .replace('+', "%2B")
                .replace('#', "%23");
            format!("topic={f}")
        })
        .collect();
    format!("?{}", topics.join("&"))
}

/// `ms-seq` as numbers, so ids compare in stream order.
fn stream_id(id: &str) -> (u64, u64) {
    let parsed = id
        .split_once('-')
        .and_then(|(ms, seq)| Some((ms.parse().ok()?, seq.parse().ok()?)));
    parsed.unwrap_or_else(|| panic!("{id:?} is not a stream entry id"))
}

/// An event as a client received it.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    id: String,
    name: String,
    topic: String,
    payload: Value,
}

impl Seen {
    fn from_envelope(envelope: &Value) -> Self {
        let text = |key: &str| {
            envelope[key]
                .as_str()
                .unwrap_or_else(|| panic!("no {key} in {envelope}"))
                .to_owned()
        };
        Self {
            id: text("id"),
            name: text("event"),
            topic: text("topic"),
            payload: envelope["payload"].clone(),
        }
    }
}

enum Stream {
    Ws(WsClient),
    Sse(SseClient),
}

/// One WebSocket or SSE client and everything it has received so far.
struct Watcher {
    label: String,
    stream: Stream,
    seen: Vec<Seen>,
    /// Anything else (lagged, close, a frame of another type): the tests
    /// here expect none.
    other: Vec<String>,
    ended: bool,
}

impl Watcher {
    /// A WebSocket client on `node`, past its snapshot.
    async fn ws(node: &Node, label: &str, filters: &[&str]) -> Self {
        let url = format!("ws://127.0.0.1:{}/v1/ws{}", node.port(), query(filters));
        let mut ws = WsClient::connect(&url).await;
        ws.snapshot().await;
        Self::new(format!("{label} ws"), Stream::Ws(ws))
    }

    /// An SSE client on `node`, past its snapshot.
    async fn sse(node: &Node, label: &str, filters: &[&str]) -> Self {
        let target = format!("/v1/events{}", query(filters));
        let mut sse = SseClient::open(node.port(), &target, &[])
            .await
            .unwrap_or_else(|r| panic!("SSE {target} on {label} refused: {r:?}"));
        sse.snapshot().await;
        Self::new(format!("{label} sse"), Stream::Sse(sse))
    }

    /// A WebSocket and an SSE client on each node.
    async fn both_on(nodes: &[(&Node, &str)], filters: &[&str]) -> Vec<Self> {
        let mut all = Vec::new();
        for (node, label) in nodes {
            all.push(Self::ws(node, label, filters).await);
            all.push(Self::sse(node, label, filters).await);
        }
        all
    }

    fn new(label: String, stream: Stream) -> Self {
        Self {
            label,
            stream,
            seen: Vec::new(),
            other: Vec::new(),
            ended: false,
        }
    }

    /// Reads one item; false when nothing came before `deadline` or the
    /// stream ended.
    async fn read_one(&mut self, deadline: tokio::time::Instant) -> bool {
        if self.ended {
            return false;
        }
        match &mut self.stream {
            Stream::Ws(ws) => match timeout_at(deadline, ws.next()).await {
                Err(_) => return false,
                Ok(WsEvent::Json(frame)) if frame["type"] == "event" => {
                    self.seen.push(Seen::from_envelope(&frame));
                }
                Ok(WsEvent::Json(frame)) => self.other.push(frame.to_string()),
                Ok(WsEvent::Closed(code)) => {
                    self.other.push(format!("closed {code:?}"));
                    self.ended = true;
                }
            },
            Stream::Sse(sse) => match timeout_at(deadline, sse.next_item()).await {
                Err(_) => return false,
                Ok(Some(SseItem::Comment(_))) => {}
                Ok(Some(SseItem::Event(event))) => {
                    let data = event.json();
                    if event.id.is_some() && data.get("topic").is_some() {
                        let seen = Seen::from_envelope(&data);
                        assert_eq!(event.id.as_deref(), Some(seen.id.as_str()), "{event:?}");
                        assert_eq!(event.event, seen.name, "{event:?}");
                        self.seen.push(seen);
                    } else {
                        self.other.push(format!("{}: {}", event.event, event.data));
                    }
                }
                Ok(None) => {
                    self.other.push("the stream ended".into());
                    self.ended = true;
                }
            },
        }
        !self.ended
    }

    /// Reads until `done(events so far)` or `deadline`; whether done.
    async fn read_until(
        &mut self,
        deadline: tokio::time::Instant,
        done: impl Fn(&[Seen]) -> bool,
    ) -> bool {
        while !done(&self.seen) {
            if !self.read_one(deadline).await {
                return done(&self.seen);
            }
        }
        true
    }
}

/// Every watcher reads until `done`, all at once (none of them may stall
/// on a full socket while another is read); panics naming the laggards.
async fn read_all_until(
    watchers: &mut [Watcher],
    within: Duration,
    what: &str,
    done: impl Fn(&[Seen]) -> bool + Copy,
) {
    let deadline = tokio::time::Instant::now() + within;
    let outcomes = join_all(watchers.iter_mut().map(|w| w.read_until(deadline, done))).await;
    let behind: Vec<String> = watchers
        .iter()
        .zip(outcomes)
        .filter(|(_, ok)| !ok)
        .map(|(w, _)| {
            format!(
                "{} ({} events, other: {:?})",
                w.label,
                w.seen.len(),
                w.other
            )
        })
        .collect();
    assert!(
        behind.is_empty(),
        "within {within:?} these clients did not get {what}: {behind:?}"
    );
}

/// `POST path` with a JSON body: status and JSON answer.
async fn post(node: &Node, path: &str, body: &Value) -> (u16, Value) {
    let client = awc::Client::builder().timeout(WAIT).finish();
    let mut resp = client
        .post(node.url(path))
        .content_type("application/json")
        .send_body(body.to_string())
        .await
        .unwrap_or_else(|e| panic!("POST {path} to node on {}: {e}", node.port()));
    let bytes = resp.body().await.expect("body");
    (
        resp.status().as_u16(),
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Posts a notification from `source`; the id its answer gives.
async fn notify(node: &Node, source: &str, message: &str) -> String {
    let body = json!({"level": "info", "message": message, "source": source});
    let (status, answer) = post(node, "/v1/notifications", &body).await;
    assert_eq!(status, 201, "{answer}");
    answer["id"].as_str().expect("an id").to_owned()
}

/// One series of `/metrics`; absent counts as 0.
async fn metric(node: &Node, series: &str) -> f64 {
    let (status, text) = node.get("/metrics").await;
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

async fn metric_sum(nodes: &[Node], series: &str) -> f64 {
    let mut sum = 0.0;
    for node in nodes {
        sum += metric(node, series).await;
    }
    sum
}

/// Polls until the series summed over `nodes` is `value`; the last sum.
async fn wait_metric_sum(nodes: &[Node], series: &str, value: f64) -> f64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let sum = metric_sum(nodes, series).await;
        if sum == value || Instant::now() >= deadline {
            return sum;
        }
        actix_web::rt::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The ids `GET /v1/devices` lists.
async fn devices(node: &Node) -> BTreeSet<String> {
    let (status, body) = node.get("/v1/devices").await;
    assert_eq!(status, 200, "{body}");
    let listing: Value = serde_json::from_str(&body).expect("JSON");
    listing
        .as_object()
        .expect("devices keyed by id")
        .keys()
        .cloned()
        .collect()
}

/// Polls every node's device list until each is `expected` (or the wait is
/// over); the last lists.
async fn wait_devices(nodes: &[Node], expected: &BTreeSet<String>) -> Vec<BTreeSet<String>> {
    let deadline = Instant::now() + WAIT;
    loop {
        let lists = join_all(nodes.iter().map(devices)).await;
        if lists.iter().all(|l| l == expected) || Instant::now() >= deadline {
            return lists;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_web::test]
async fn every_client_on_every_instance_gets_every_event_once_in_one_order() {
    // Arrange: three instances, a WebSocket and an SSE client on each.
    let Some(c) = cluster(&["a", "b", "c"], &[DEEP_QUEUES]).await else {
        return;
    };
    let (a, b, n3) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    let mut watchers =
        Watcher::both_on(&[(a, "a"), (b, "b"), (n3, "c")], &["devices/+/metrics"]).await;
    let run = unique("fleet");
    let fleet: Vec<String> = (0..20).map(|d| format!("{run}-d{d}")).collect();
    let mut publisher = Publisher::connect(c.mqtt_port).await;

    // Act: 20 devices × 50 frames at QoS 1, each acknowledged by the broker
    // before the next, while every client reads.
    let publish = async {
        for seq in 1..=50u64 {
            for device in &fleet {
                let cpu = (seq % 80) as f64;
                publisher
                    .publish(
                        &format!("devices/{device}/metrics"),
                        metrics_json(device, seq, cpu),
                    )
                    .await;
            }
        }
    };
    let read = read_all_until(&mut watchers, WAIT, "1,000 events", |s| s.len() >= 1000);
    futures_util::join!(publish, read);
    // Each instance took its share from the broker.
    let accepted = "edgebus_frames_accepted_total";
    assert_eq!(wait_metric_sum(&c.nodes, accepted, 1000.0).await, 1000.0);
    for node in &c.nodes {
        let share = metric(node, accepted).await;
        assert!(share > 0.0, "node on {} accepted {share}", node.port());
    }
    // A marker appended after all 1,000: whatever a client gets before it
    // is everything it will get of them.
    let marker = format!("{run}-marker");
    let (status, answer) = post(
        a,
        &format!("/v1/publish/devices/{marker}/metrics"),
        &serde_json::from_str(&metrics_json(&marker, 1, 1.0)).expect("JSON"),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    read_all_until(&mut watchers, WAIT, "the marker", |s| {
        s.iter().any(|e| e.payload["device_id"] == marker.as_str())
    })
    .await;

    // Assert: 1,000 distinct frames and the marker last, on every client,
    // under the same ids in strictly increasing stream order.
    let sent: HashSet<(String, u64)> = fleet
        .iter()
        .flat_map(|d| (1..=50).map(move |seq| (d.clone(), seq)))
        .collect();
    let reference: Vec<String> = watchers[0].seen.iter().map(|e| e.id.clone()).collect();
    for w in &watchers {
        assert!(w.other.is_empty(), "{}: {:?}", w.label, w.other);
        assert_eq!(
            w.seen.len(),
            1001,
            "{}: 1,000 frames and the marker",
            w.label
        );
        let (frames, last) = w.seen.split_at(1000);
        assert_eq!(last[0].payload["device_id"], marker.as_str(), "{}", w.label);
        let got: HashSet<(String, u64)> = frames
            .iter()
            .map(|e| {
                assert_eq!(e.name, "metrics", "{}: {e:?}", w.label);
                let device = e.payload["device_id"].as_str().expect("device_id");
                assert_eq!(e.topic, format!("devices/{device}/metrics"));
                let seq = e.payload["timestamp"].as_u64().expect("timestamp");
                (device.to_owned(), seq)
            })
            .collect();
        assert_eq!(got.len(), 1000, "{}: duplicates", w.label);
        assert!(got == sent, "{}: not the frames published", w.label);
        let ids: Vec<String> = w.seen.iter().map(|e| e.id.clone()).collect();
        assert!(
            ids.windows(2).all(|p| stream_id(&p[0]) < stream_id(&p[1])),
            "{}: ids not strictly increasing",
            w.label
        );
        assert!(
            ids == reference,
            "{}: another order than {}",
            w.label,
            watchers[0].label
        );
    }
    let mut expected: BTreeSet<String> = fleet.iter().cloned().collect();
    expected.insert(marker);
    for (node, list) in c.nodes.iter().zip(wait_devices(&c.nodes, &expected).await) {
        assert_eq!(list, expected, "GET /v1/devices on {}", node.port());
    }
}

#[actix_web::test]
async fn a_post_to_one_instance_reaches_ws_and_sse_clients_on_the_others_once() {
    // Arrange
    let Some(c) = cluster(&["a", "b", "c"], &[]).await else {
        return;
    };
    let (a, b, n3) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    let mut watchers = Watcher::both_on(&[(b, "b"), (n3, "c")], &["notifications/#"]).await;
    let (source, marker) = (unique("posted"), unique("marker"));

    // Act: a notification posted to A, then a marker behind it.
    let id = notify(a, &source, "from a").await;
    let marker_id = notify(a, &marker, "marker").await;
    read_all_until(&mut watchers, WAIT, "the marker", |s| {
        s.iter().any(|e| e.id == marker_id)
    })
    .await;

    // Assert: before the marker, exactly the posted event, under A's id.
    assert!(stream_id(&id) < stream_id(&marker_id), "{id} {marker_id}");
    for w in &watchers {
        assert!(w.other.is_empty(), "{}: {:?}", w.label, w.other);
        let ids: Vec<&str> = w.seen.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, [id.as_str(), marker_id.as_str()], "{}", w.label);
        let posted = &w.seen[0];
        assert_eq!(posted.name, "notification", "{}", w.label);
        assert_eq!(
            posted.topic,
            format!("notifications/{source}"),
            "{}",
            w.label
        );
        assert_eq!(posted.payload["message"], "from a", "{}", w.label);
    }
}

#[actix_web::test]
async fn the_device_cap_holds_across_instances() {
    // Arrange: a cap of 3 on two instances, a reject watcher on each, and
    // three devices admitted over MQTT.
    let Some(c) = cluster(&["a", "b"], &[("EDGEBUS__REGISTRY__MAX_DEVICES", "3")]).await else {
        return;
    };
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let mut rejects = vec![
        Watcher::ws(a, "a", &["edgebus/rejects"]).await,
        Watcher::ws(b, "b", &["edgebus/rejects"]).await,
    ];
    let run = unique("cap");
    let admitted: BTreeSet<String> = (1..=3).map(|d| format!("{run}-d{d}")).collect();
    let fourth = format!("{run}-d4");
    let mut publisher = Publisher::connect(c.mqtt_port).await;
    for device in &admitted {
        publisher
            .publish(
                &format!("devices/{device}/metrics"),
                metrics_json(device, 1, 5.0),
            )
            .await;
    }
    for (node, list) in c.nodes.iter().zip(wait_devices(&c.nodes, &admitted).await) {
        assert_eq!(list, admitted, "the first three on {}", node.port());
    }
    let capped = r#"edgebus_frames_rejected_total{reason="device_cap"}"#;
    let before = metric_sum(&c.nodes, capped).await;
    let is_fourth_capped =
        |e: &Seen| e.payload["device_id"] == fourth.as_str() && e.payload["reason"] == "device_cap";

    // Act 1: the fourth over HTTP to B.
    let (status, answer) = post(
        b,
        &format!("/v1/publish/devices/{fourth}/metrics"),
        &serde_json::from_str(&metrics_json(&fourth, 1, 5.0)).expect("JSON"),
    )
    .await;

    // Assert 1: refused with 403, counted once, reported on both.
    assert_eq!(status, 403, "{answer}");
    let error = answer["error"].as_str().unwrap_or("");
    assert!(error.contains("device cap"), "{answer}");
    assert_eq!(
        wait_metric_sum(&c.nodes, capped, before + 1.0).await,
        before + 1.0
    );
    read_all_until(&mut rejects, WAIT, "the HTTP refusal", |s| {
        s.iter().filter(|e| is_fourth_capped(e)).count() == 1
    })
    .await;

    // Act 2: the fourth over MQTT, to whichever instance the broker picks.
    publisher
        .publish(
            &format!("devices/{fourth}/metrics"),
            metrics_json(&fourth, 2, 5.0),
        )
        .await;

    // Assert 2: a counted rejection, once across the cluster, reported on
    // both; and every instance still lists exactly the first three.
    read_all_until(&mut rejects, WAIT, "the MQTT refusal", |s| {
        s.iter().filter(|e| is_fourth_capped(e)).count() == 2
    })
    .await;
    // The counter is bumped before the reject is appended, so it has been.
    assert_eq!(metric_sum(&c.nodes, capped).await, before + 2.0);
    for w in &rejects {
        assert!(w.other.is_empty(), "{}: {:?}", w.label, w.other);
        assert!(w.seen.iter().all(|e| e.name == "reject"), "{:?}", w.seen);
        assert_eq!(w.seen.len(), 2, "{}: {:?}", w.label, w.seen);
    }
    for node in &c.nodes {
        assert_eq!(devices(node).await, admitted, "on {}", node.port());
    }
    let accepted = metric_sum(&c.nodes, "edgebus_frames_accepted_total").await;
    assert_eq!(accepted, 3.0, "refused frames are not accepted ones");
}

#[test]
fn cluster_mode_is_refused_with_the_embedded_broker() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgebus"))
        .env("EDGEBUS__MQTT__MODE", "embedded")
        .env("EDGEBUS__CLUSTER__REDIS_URL", "redis://127.0.0.1:1")
        // Were it to start anyway, on ports of its own, not the shared ones.
        .env("EDGEBUS__HTTP__BIND", format!("127.0.0.1:{}", free_port()))
        .env(
            "EDGEBUS__MQTT__URL",
            format!("mqtt://127.0.0.1:{}", free_port()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the edgebus binary starts");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("edgebus still ran after {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = child.wait_with_output().expect("its output");
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(!status.success(), "{status}; stderr:\n{stderr}");
    let naming: Vec<&str> = stderr.lines().filter(|l| l.contains("mqtt.mode")).collect();
    assert_eq!(naming.len(), 1, "stderr:\n{stderr}");
    assert!(naming[0].contains("external"), "{}", naming[0]);
}

#[actix_web::test]
async fn alerts_and_presence_appear_once_across_instances() {
    // Arrange: two instances, one of them the leader; a WebSocket and an
    // SSE client on each.
    let Some(c) = cluster(&["a", "b"], &[]).await else {
        return;
    };
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    assert_eq!(
        wait_metric_sum(&c.nodes, "edgebus_cluster_leader", 1.0).await,
        1.0,
        "one leader"
    );
    let mut watchers = Watcher::both_on(
        &[(a, "a"), (b, "b")],
        &["alerts/#", "devices/+/presence", "notifications/#"],
    )
    .await;
    let device = unique("hot");
    let alerts_for = |s: &[Seen]| {
        s.iter()
            .filter(|e| e.name == "alert" && e.topic.starts_with(&format!("alerts/{device}/")))
            .count()
    };
    let online_for = |s: &[Seen]| {
        s.iter()
            .filter(|e| {
                e.name == "device.online" && e.topic == format!("devices/{device}/presence")
            })
            .count()
    };
    let mut publisher = Publisher::connect(c.mqtt_port).await;

    // Act: one frame over the cpu_high threshold (90).
    publisher
        .publish(
            &format!("devices/{device}/metrics"),
            metrics_json(&device, 1, 95.0),
        )
        .await;
    read_all_until(&mut watchers, WAIT, "the alert and device.online", |s| {
        alerts_for(s) >= 1 && online_for(s) >= 1
    })
    .await;
    // Whatever either instance published after them is in front of this.
    let marker_id = notify(a, &unique("marker"), "marker").await;
    read_all_until(&mut watchers, WAIT, "the marker", |s| {
        s.iter().any(|e| e.id == marker_id)
    })
    .await;

    // Assert: each once, with the same ids everywhere.
    let reference: Vec<&str> = watchers[0].seen.iter().map(|e| e.id.as_str()).collect();
    for w in &watchers {
        assert!(w.other.is_empty(), "{}: {:?}", w.label, w.other);
        assert_eq!(alerts_for(&w.seen), 1, "{}: {:?}", w.label, w.seen);
        assert_eq!(online_for(&w.seen), 1, "{}: {:?}", w.label, w.seen);
        let ids: Vec<&str> = w.seen.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, reference, "{}", w.label);
    }
}
