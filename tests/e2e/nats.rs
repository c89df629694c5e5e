//! NATS as a second event source: a private nats-server (never the shared
//! one on 4222), publishers that speak like DECNET's (its bus envelope
//! `{"v","id","topic","type","ts","payload"}` on `attacker.*` and
//! `attribution.*` subjects), and WebSocket clients that see the events on
//! edgebus's attacker and attribution topics.

use std::io::Read;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::broker::Mosquitto;
use crate::helpers::{
    free_port, spawn_app_unready, spawn_app_with, unique, TestApp, WsClient, PORT_ATTEMPTS,
};
use crate::node::Node;
use crate::redis_proc::RedisServer;
use crate::tools::{installed, require_tool, wait_until_up};

/// A nats-server on a free port of its own, killed on drop.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl NatsServer {
    /// A free port, not yet listened on: [`NatsServer::spawn`] starts it.
    fn reserve() -> Self {
        let dir = std::env::temp_dir().join(unique("nats"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self {
            child: None,
            port: free_port(),
            dir,
        }
    }

    /// Started and answering. nats-server binds the port itself, so a port
    /// taken since [`free_port`] chose it makes it exit: another is tried.
    pub fn start() -> Self {
        for _ in 0..PORT_ATTEMPTS {
            let mut server = Self::reserve();
            match server.spawn() {
                Ok(()) => return server,
                Err(log) if log.contains("in use") => {
                    eprintln!(
                        "nats-server could not listen on {}; trying another.",
                        server.port
                    );
                }
                Err(log) => panic!("nats-server exited at start-up:\n{log}"),
            }
        }
        panic!("nats-server could not listen on {PORT_ATTEMPTS} free ports");
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, as a crash.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process on `self.port` and waits until it greets a
    /// client with `INFO`; `Err(its log's tail)` when it exited instead.
    fn spawn(&mut self) -> Result<(), String> {
        let log_path = self.dir.join(format!("nats-{}.log", self.port));
        let log = std::fs::File::create(&log_path).expect("nats log");
        let child = Command::new(installed("nats-server"))
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("nats-server starts");
        let port = self.port;
        let up = wait_until_up(self.child.insert(child), &log_path, "nats-server", || {
            greets(port)
        });
        if up.is_err() {
            self.child = None;
        }
        up
    }
}

/// The server's first words to a client are `INFO {…}`.
fn greets(port: u16) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(300))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut hello = [0u8; 4];
        stream.read_exact(&mut hello)?;
        Ok(&hello == b"INFO")
    };
    attempt().unwrap_or(false)
}

/// A publisher as DECNET's bus is one: JSON on a subject, fire and forget.
pub async fn publisher(server: &NatsServer) -> async_nats::Client {
    async_nats::connect(server.url())
        .await
        .expect("the test publisher connects")
}

pub async fn publish(client: &async_nats::Client, subject: &str, payload: &Value) {
    client
        .publish(subject.to_owned(), payload.to_string().into())
        .await
        .expect("publish");
    client.flush().await.expect("flush");
}

/// DECNET's bus envelope (`Event.to_dict()`), as its publishers send it.
pub fn envelope(subject: &str, kind: &str, payload: Value) -> Value {
    json!({
        "v": 1,
        "id": unique("evt").replace('-', ""),
        "topic": subject,
        "type": kind,
        "ts": 1_763_800_000.25,
        "payload": payload,
    })
}

pub fn nats_toml(url: &str) -> String {
    format!("[nats]\nurl = \"{url}\"\nbackoff_min_seconds = 1\nbackoff_max_seconds = 1\n")
}

async fn app_on(server: &NatsServer) -> TestApp {
    spawn_app_with(&nats_toml(&server.url())).await
}

#[actix_web::test]
async fn decnet_events_on_nats_reach_streams_on_edgebus_topics() {
    if !require_tool("nats-server") {
        return;
    }
    let server = NatsServer::start();
    let app = app_on(&server).await;
    let (_, ready) = app.get_json("/readyz").await;
    assert_eq!(ready["nats"], "subscribed", "{ready}");
    let mut ws = app.ws("?topic=attackers/%23&topic=attribution/%23").await;
    ws.snapshot().await;
    let client = publisher(&server).await;
    let attacker = unique("att");
    let identity = unique("ident");

    let sent = [
        (
            "attacker.observation.ja3",
            format!("attackers/{attacker}/observation/ja3"),
            "observation",
            envelope(
                "attacker.observation.ja3",
                "observation",
                json!({ "attacker_uuid": attacker, "primitive": "ja3", "value": "771,4865-4866" }),
            ),
        ),
        (
            "attacker.fingerprint_rotated",
            format!("attackers/{attacker}/fingerprint_rotated"),
            "fingerprint.rotated",
            envelope(
                "attacker.fingerprint_rotated",
                "fingerprint_rotated",
                json!({ "attacker_uuid": attacker, "old": "f1", "new": "f2" }),
            ),
        ),
        (
            "attacker.scored",
            format!("attackers/{attacker}/scored"),
            "attacker.scored",
            // A flat payload works as well as an envelope.
            json!({ "attacker_uuid": attacker, "score": 0.93 }),
        ),
        (
            "attribution.profile.state_changed",
            "attribution/profile/state_changed".to_owned(),
            "state_changed",
            envelope(
                "attribution.profile.state_changed",
                "state_changed",
                json!({ "identity_uuid": identity, "state": "confirmed" }),
            ),
        ),
    ];
    for (subject, _, _, payload) in &sent {
        publish(&client, subject, payload).await;
    }
    for (subject, topic, event, payload) in &sent {
        let got = ws.next_event().await;
        assert_eq!(got["topic"], topic.as_str(), "{subject}: {got}");
        assert_eq!(got["event"], *event, "{subject}: {got}");
        assert_eq!(&got["payload"], payload, "{subject}: the payload as sent");
    }
    assert_eq!(app.metric("edgebus_nats_connected").await, 1.0);
}

#[actix_web::test]
async fn a_bad_nats_frame_is_rejected_counted_and_reported() {
    if !require_tool("nats-server") {
        return;
    }
    let server = NatsServer::start();
    let app = app_on(&server).await;
    let mut ws = app.ws("?topic=edgebus/rejects").await;
    ws.snapshot().await;
    let client = publisher(&server).await;

    // No attacker_uuid to name the topic by.
    publish(&client, "attacker.scored", &json!({ "score": 1 })).await;
    // Mapped, then refused by the same rules as an MQTT frame.
    publish(&client, "attribution.profile.state_changed", &json!([1, 2])).await;

    let first = ws.next_event().await;
    assert_eq!(first["event"], "reject");
    assert_eq!(first["payload"]["reason"], "bad_topic");
    assert_eq!(first["payload"]["topic"], "attacker/scored");
    let detail = first["payload"].to_string();
    assert!(
        detail.contains("attacker_uuid"),
        "the reason names the field: {detail}"
    );
    let second = ws.next_event().await;
    assert_eq!(second["payload"]["reason"], "not_object");
    assert_eq!(
        second["payload"]["topic"],
        "attribution/profile/state_changed"
    );
    app.wait_metric(r#"edgebus_frames_rejected_total{reason="bad_topic"}"#, 1.0)
        .await;
    app.wait_metric(r#"edgebus_frames_rejected_total{reason="not_object"}"#, 1.0)
        .await;
}

#[actix_web::test]
async fn readiness_follows_the_nats_server_from_start_through_a_crash() {
    if !require_tool("nats-server") {
        return;
    }
    // Down at start: edgebus starts anyway, and says it is not ready.
    let mut server = NatsServer::reserve();
    let app = spawn_app_unready(&nats_toml(&server.url())).await;
    app.wait_until_ready(false).await;
    let (status, ready) = app.get_json("/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["nats"], "connecting", "{ready}");
    assert_eq!(app.metric("edgebus_nats_connected").await, 0.0);

    server
        .spawn()
        .expect("nats-server starts on the reserved port");
    app.wait_until_ready(true).await;
    let mut ws = app.ws("?topic=attackers/%23").await;
    ws.snapshot().await;
    let attacker = unique("att");
    let scored = json!({ "attacker_uuid": attacker, "score": 1 });
    publish(&publisher(&server).await, "attacker.scored", &scored).await;
    assert_eq!(ws.next_event().await["payload"], scored);

    server.kill();
    app.wait_until_ready(false).await;
    let (_, ready) = app.get_json("/readyz").await;
    assert_eq!(ready["nats"], "disconnected", "{ready}");
    assert_eq!(ready["mqtt"], "subscribed", "MQTT is not NATS: {ready}");

    server.spawn().expect("nats-server starts again");
    app.wait_until_ready(true).await;
    let again = json!({ "attacker_uuid": attacker, "score": 2 });
    publish(&publisher(&server).await, "attacker.scored", &again).await;
    let got = ws.next_event().await;
    assert_eq!(got["topic"], format!("attackers/{attacker}/scored"));
    assert_eq!(got["payload"], again);
    assert!(app.metric("edgebus_nats_reconnects_total").await >= 1.0);
}

/// One series of a node's `/metrics`; absent counts as 0.
async fn node_metric(node: &Node, series: &str) -> f64 {
    let (status, text) = node.get("/metrics").await;
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[actix_web::test]
async fn in_cluster_mode_each_nats_message_is_taken_once_and_seen_on_every_instance() {
    if !require_tool("nats-server") || !require_tool("mosquitto") || !require_tool("redis-server") {
        return;
    }
    let server = NatsServer::start();
    let (_broker, mqtt_port) = Mosquitto::on_free_port();
    let redis = RedisServer::start();
    let url = server.url();
    let env = [("EDGEBUS__NATS__URL", url.as_str())];
    // Ready = queue-subscribed on NATS, so nothing published below is missed.
    let nodes = [
        Node::cluster(mqtt_port, &redis.url(), "a", &env).await,
        Node::cluster(mqtt_port, &redis.url(), "b", &env).await,
    ];
    let mut clients = Vec::new();
    for node in &nodes {
        let mut ws = WsClient::connect(&format!(
            "ws://127.0.0.1:{}/v1/ws?topic=attackers/%23",
            node.port()
        ))
        .await;
        ws.snapshot().await;
        clients.push(ws);
    }
    let attacker = unique("att");
    let client = publisher(&server).await;
    const COUNT: u64 = 20;
    for score in 0..COUNT {
        let payload = json!({ "attacker_uuid": attacker, "score": score });
        publish(&client, "attacker.scored", &payload).await;
    }

    let mut orders = Vec::new();
    for ws in &mut clients {
        let mut scores = Vec::new();
        for _ in 0..COUNT {
            let event = ws.next_event().await;
            assert_eq!(event["topic"], format!("attackers/{attacker}/scored"));
            scores.push(event["payload"]["score"].as_u64().expect("a score"));
        }
        orders.push(scores);
    }
    // One stream, one order everywhere; every message exactly once.
    assert_eq!(orders[0], orders[1]);
    let mut sorted = orders[0].clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..COUNT).collect::<Vec<_>>());
    // The queue group gave each message to one instance only.
    let mut taken = 0.0;
    for node in &nodes {
        taken += node_metric(node, "edgebus_frames_accepted_total").await;
    }
    assert_eq!(taken, COUNT as f64);
}
