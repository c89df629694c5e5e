//! `spawn_app()` → [`TestApp`]: edgebus on free ports with its own embedded
//! broker, plus a real MQTT publisher and real WebSocket clients.
//!
//! A [`TestApp`] is stopped when it is dropped: its HTTP server, its actor
//! threads and its broker's listener, so no test's app keeps running (and
//! ticking) through the rest of the run.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_ws::Item;
use awc::ws::{Codec, Frame, Message};
use awc::BoxedSocket;
use futures_util::{SinkExt, StreamExt};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use edgebus::actors::alerts::Clock;
use edgebus::broker::BrokerError;
use edgebus::settings::Settings;
use edgebus::startup::{AppHandle, Application};

/// Upper bound for anything a test awaits; generous for a loaded 2-core CI.
pub const WAIT: Duration = Duration::from_secs(10);

/// Fresh ports tried for something that must bind a port itself, when the
/// one before was taken between [`free_port`] and its bind.
pub const PORT_ATTEMPTS: usize = 5;

/// A port that was free a moment ago. Only for what cannot take a bound
/// listener (rumqttd, Mosquitto, a child process): the port is released
/// here, so whoever binds it later must retry with a fresh one on conflict.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("an ephemeral port")
        .port()
}

pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn metrics_json(device: &str, seq: u64, cpu: f64) -> String {
    format!(
        r#"{{"device_id":"{device}","timestamp":{seq},"cpu_percent":{cpu},"mem_percent":40,"disk_percent":70}}"#
    )
}

/// One series' value in Prometheus text.
fn series_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in /metrics"))
}

pub struct TestApp {
    pub port: u16,
    /// The SecureTea Socket.IO listener (`compat.securetea.enabled`).
    pub socketio_port: Option<u16>,
    /// The EdgeWatch dashboards' listener (`compat.edgewatch.enabled`).
    pub edgewatch_port: Option<u16>,
    pub mqtt_port: u16,
    pub handle: AppHandle,
    http: awc::Client,
    /// `Authorization` for `/metrics` once credentials are configured.
    metrics_auth: Option<String>,
}

/// A credential `/metrics` accepts under `settings`: the metrics token, a
/// plain API key, or the legacy token (`None` in open mode).
fn metrics_auth(settings: &Settings) -> Option<String> {
    let token = settings.http.metrics_token.expose();
    let key = settings
        .auth
        .api_keys
        .iter()
        .map(|k| k.key.expose())
        .find(|k| !k.starts_with("sha256:"));
    let legacy = settings.auth.ws_token.expose();
    [Some(token), key, Some(legacy)]
        .into_iter()
        .flatten()
        .find(|s| !s.is_empty())
        .map(|s| format!("Bearer {s}"))
}

/// edgebus with an embedded broker on free ports.
pub async fn spawn_app() -> TestApp {
    spawn_app_with("").await
}

/// Like [`spawn_app`], with extra TOML applied over the test defaults.
pub async fn spawn_app_with(extra: &str) -> TestApp {
    spawn_app_with_clock(extra, None).await
}

/// Like [`spawn_app_with`], with the alert rules' clock injected.
/// The embedded broker binds its port itself: on a conflict, another port.
pub async fn spawn_app_with_clock(extra: &str, clock: Option<Arc<dyn Clock>>) -> TestApp {
    let app = spawn_embedded(extra, clock).await;
    app.wait_until_ready(true).await;
    app
}

/// Like [`spawn_app_with`], without waiting for `/readyz`: for a test
/// whose app starts while something it needs (a NATS server) is down.
pub async fn spawn_app_unready(extra: &str) -> TestApp {
    spawn_embedded(extra, None).await
}

async fn spawn_embedded(extra: &str, clock: Option<Arc<dyn Clock>>) -> TestApp {
    let client_id = unique("edgebus");
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mqtt_port = free_port();
        let toml = format!(
            "[http]\nbind = \"127.0.0.1:0\"\nworkers = 1\n\
             [mqtt]\nmode = \"embedded\"\nurl = \"mqtt://127.0.0.1:{mqtt_port}\"\nclient_id = \"{client_id}\"\n\
             backoff_min_seconds = 1\nbackoff_max_seconds = 2\n"
        );
        match build(&merge(&toml, extra), clock.clone()).await {
            Ok((app, metrics_auth)) => return serve(app, mqtt_port, metrics_auth),
            Err(e) if attempt < PORT_ATTEMPTS && broker_port_taken(&e) => {
                eprintln!("MQTT port {mqtt_port} was taken ({e:#}); trying another.");
            }
            Err(e) => panic!("edgebus starts: {e:#}"),
        }
    }
}

/// The embedded broker could not have the port it was given.
fn broker_port_taken(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<BrokerError>(),
            Some(BrokerError::PortTaken { .. } | BrokerError::NotListening(_))
        )
    })
}

/// edgebus connecting to a broker it does not run (`mode = "external"`).
pub async fn spawn_app_external(mqtt_port: u16, extra: &str) -> TestApp {
    let toml = format!(
        "[http]\nbind = \"127.0.0.1:0\"\nworkers = 1\n\
         [mqtt]\nmode = \"external\"\nurl = \"mqtt://127.0.0.1:{mqtt_port}\"\nclient_id = \"{}\"\n\
         backoff_min_seconds = 1\nbackoff_max_seconds = 2\npersistent_session = false\n",
        unique("edgebus")
    );
    spawn_with_settings(&merge(&toml, extra), mqtt_port).await
}

/// Later sections' keys are appended to the same table, so TOML stays valid.
fn merge(base: &str, extra: &str) -> String {
    let mut tables: Vec<(String, Vec<String>)> = Vec::new();
    let mut current = String::new();
    for line in base.lines().chain(extra.lines()) {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('[') && !line.starts_with("[[") {
            current = line.to_owned();
            if !tables.iter().any(|(t, _)| *t == current) {
                tables.push((current.clone(), Vec::new()));
            }
            continue;
        }
        let key = line.split('=').next().unwrap_or("").trim().to_owned();
        let (_, lines) = tables
            .iter_mut()
            .find(|(t, _)| *t == current)
            .expect("key inside a table");
        lines.retain(|l| l.split('=').next().unwrap_or("").trim() != key);
        lines.push(line.to_owned());
    }
    tables
        .into_iter()
        .map(|(t, lines)| format!("{t}\n{}\n", lines.join("\n")))
        .collect()
}

async fn spawn_with_settings(toml: &str, mqtt_port: u16) -> TestApp {
    spawn_with(toml, mqtt_port, None).await
}

async fn spawn_with(toml: &str, mqtt_port: u16, clock: Option<Arc<dyn Clock>>) -> TestApp {
    let (app, metrics_auth) = build(toml, clock).await.expect("edgebus starts");
    start(app, mqtt_port, metrics_auth).await
}

/// The application, and the credential `/metrics` needs with these settings.
async fn build(
    toml: &str,
    clock: Option<Arc<dyn Clock>>,
) -> anyhow::Result<(Application, Option<String>)> {
    let _ = env_logger::builder().is_test(true).try_init();
    let settings = Settings::from_toml(toml).expect("test settings are valid");
    let metrics_auth = metrics_auth(&settings);
    let app = match clock {
        Some(clock) => Application::build_with_clock(settings, clock).await,
        None => Application::build(settings).await,
    }?;
    Ok((app, metrics_auth))
}

/// Serves `app` and waits until it is ready.
async fn start(app: Application, mqtt_port: u16, metrics_auth: Option<String>) -> TestApp {
    let app = serve(app, mqtt_port, metrics_auth);
    app.wait_until_ready(true).await;
    app
}

fn serve(app: Application, mqtt_port: u16, metrics_auth: Option<String>) -> TestApp {
    let port = app.port();
    let socketio_port = app.socketio_port();
    let edgewatch_port = app.edgewatch_port();
    let handle = app.handle();
    actix_web::rt::spawn(app.run_until_stopped());
    TestApp {
        port,
        socketio_port,
        edgewatch_port,
        mqtt_port,
        handle,
        http: awc::Client::builder().timeout(WAIT).finish(),
        metrics_auth,
    }
}

impl Drop for TestApp {
    /// Whatever the test did or did not stop (also when it panicked): the
    /// server, the actor threads and the broker's listener stop now.
    fn drop(&mut self) {
        self.handle.stop_now();
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, String) {
        let mut resp = self.http.get(self.url(path)).send().await.expect("request");
        let body = resp.body().limit(16 << 20).await.expect("body");
        (resp.status(), String::from_utf8_lossy(&body).into_owned())
    }

    pub async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let (status, body) = self.get(path).await;
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// Polls `/readyz` until it is (or is not) 200.
    pub async fn wait_until_ready(&self, ready: bool) {
        let deadline = Instant::now() + WAIT * 3;
        loop {
            let status = match self.http.get(self.url("/readyz")).send().await {
                Ok(resp) => resp.status(),
                Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            if (status == StatusCode::OK) == ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz never became ready={ready} (last {status})"
            );
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A metric's value from `/metrics`, e.g. `edgebus_frames_rejected_total{reason="bad_json"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        let mut req = self.http.get(self.url("/metrics"));
        if let Some(auth) = &self.metrics_auth {
            req = req.insert_header(("Authorization", auth.as_str()));
        }
        let mut resp = req.send().await.expect("/metrics");
        let body = resp.body().limit(16 << 20).await.expect("body");
        series_value(&String::from_utf8_lossy(&body), series)
    }

    /// Waits until a metric reaches `at_least`.
    pub async fn wait_metric(&self, series: &str, at_least: f64) -> f64 {
        self.wait_metric_where(series, |v| v >= at_least).await
    }

    /// Waits until a metric's value passes `ok`.
    pub async fn wait_metric_where(&self, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.metric(series).await;
            if ok(v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{series} stayed at {v} for {WAIT:?}"
            );
            actix_web::rt::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until a metric is exactly `value` (counters and gauges updated
    /// by another thread than the one whose output the test saw) and
    /// returns it, so `assert_eq!(app.wait_metric_value(s, v).await, v)`
    /// reads as the assertion it replaces.
    pub async fn wait_metric_value(&self, series: &str, value: f64) -> f64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.metric(series).await;
            if v == value || Instant::now() >= deadline {
                return v;
            }
            actix_web::rt::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Polls a JSON `GET` until `ok` holds for its answer (or the wait is
    /// over) and returns the last answer, for the test to assert on.
    pub async fn wait_json(
        &self,
        path: &str,
        ok: impl Fn(StatusCode, &Value) -> bool,
    ) -> (StatusCode, Value) {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, body) = self.get_json(path).await;
            if ok(status, &body) || Instant::now() >= deadline {
                return (status, body);
            }
            actix_web::rt::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn ws(&self, query: &str) -> WsClient {
        WsClient::connect(&format!("ws://127.0.0.1:{}/v1/ws{query}", self.port)).await
    }

    pub async fn publisher(&self) -> Publisher {
        Publisher::connect(self.mqtt_port).await
    }
}

/// A real MQTT client publishing at QoS 1.
pub struct Publisher {
    client: AsyncClient,
    acks: mpsc::UnboundedReceiver<()>,
}

impl Publisher {
    pub async fn connect(port: u16) -> Self {
        Self::connect_as(port, None).await
    }

    /// Like [`Publisher::connect`], logging in as `(username, password)`.
    pub async fn connect_as(port: u16, login: Option<(&str, &str)>) -> Self {
        let mut options = MqttOptions::new(unique("pub"), "127.0.0.1", port);
        if let Some((username, password)) = login {
            options.set_credentials(username, password);
        }
        options.set_max_packet_size(8 << 20, 8 << 20);
        options.set_inflight(1000);
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let (ack_tx, acks) = mpsc::unbounded_channel();
        let (up_tx, mut up) = mpsc::unbounded_channel();
        actix_web::rt::spawn(async move {
            // Ends with the `Publisher` (its receiver closes), not with the run.
            while !ack_tx.is_closed() {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = up_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        let _ = ack_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => actix_web::rt::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(WAIT, up.recv())
            .await
            .expect("publisher connects");
        Self { client, acks }
    }

    /// Publishes and waits for the broker's PUBACK.
    pub async fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("queue publish");
        tokio::time::timeout(WAIT, self.acks.recv())
            .await
            .expect("PUBACK");
    }

    /// Publishes without waiting for acknowledgements (bursts).
    pub async fn publish_nowait(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("queue publish");
    }

    /// Publishes `count` objects `{"n":0…,"filler":"…"}` of about 15 KB each
    /// without waiting: ~9 MB for 600, enough to fill a client's socket and
    /// queue when it does not read.
    pub async fn flood(&self, topic: &str, count: u64) {
        let filler = "f".repeat(15_000);
        for n in 0..count {
            self.publish_nowait(topic, format!(r#"{{"n":{n},"filler":"{filler}"}}"#))
                .await;
        }
    }
}

/// A real WebSocket client (awc).
pub struct WsClient {
    framed: actix_codec::Framed<BoxedSocket, Codec>,
    /// Answer server pings (a live client); off to play a dead one.
    pub auto_pong: bool,
    /// A fragmented message being joined.
    fragments: Option<Vec<u8>>,
}

/// What a WebSocket client saw next.
#[derive(Debug)]
pub enum WsEvent {
    Json(Value),
    Closed(Option<u16>),
}

impl WsClient {
    pub async fn connect(url: &str) -> Self {
        Self::try_connect(url)
            .await
            .unwrap_or_else(|e| panic!("WebSocket connect to {url}: {e}"))
    }

    /// [`WsClient::connect`], or why not (a client retrying through a
    /// balancer whose backend just died).
    pub async fn try_connect(url: &str) -> Result<Self, String> {
        let (resp, framed) = awc::Client::new()
            .ws(url)
            .max_frame_size(16 << 20)
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(format!("answered {}", resp.status()));
        }
        Ok(Self {
            framed,
            auto_pong: true,
            fragments: None,
        })
    }

    /// Next text frame as JSON, or the close code; answers pings.
    pub async fn next(&mut self) -> WsEvent {
        loop {
            let frame = tokio::time::timeout(WAIT, self.framed.next())
                .await
                .expect("a WebSocket frame within the wait");
            match frame {
                Some(Ok(Frame::Text(bytes))) => {
                    return WsEvent::Json(serde_json::from_slice(&bytes).expect("JSON text frame"))
                }
                // A fragmented message, joined as a browser joins it.
                Some(Ok(Frame::Continuation(item))) => match item {
                    Item::FirstText(bytes) => self.fragments = Some(bytes.to_vec()),
                    Item::Continue(bytes) => self
                        .fragments
                        .as_mut()
                        .expect("a continuation after a first fragment")
                        .extend_from_slice(&bytes),
                    Item::Last(bytes) => {
                        let mut text = self
                            .fragments
                            .take()
                            .expect("a last fragment after a first");
                        text.extend_from_slice(&bytes);
                        return WsEvent::Json(
                            serde_json::from_slice(&text).expect("JSON text message"),
                        );
                    }
                    Item::FirstBinary(_) => panic!("edgebus sends no binary message"),
                },
                Some(Ok(Frame::Ping(p))) => {
                    if self.auto_pong {
                        let _ = self.framed.send(Message::Pong(p)).await;
                    }
                }
                Some(Ok(Frame::Close(reason))) => {
                    return WsEvent::Closed(reason.map(|r| u16::from(r.code)))
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return WsEvent::Closed(None),
            }
        }
    }

    /// Reads for `period`, answering pings as they arrive (as a browser
    /// does); anything else arriving meanwhile fails the test.
    pub async fn idle_for(&mut self, period: Duration) {
        let until = tokio::time::Instant::now() + period;
        if let Ok(event) = tokio::time::timeout_at(until, self.next()).await {
            panic!("nothing expected while idle, got {event:?}");
        }
    }

    pub async fn next_json(&mut self) -> Value {
        match self.next().await {
            WsEvent::Json(v) => v,
            other => panic!("expected a JSON frame, got {other:?}"),
        }
    }

    /// The first frame, which must be the snapshot; returns its events.
    pub async fn snapshot(&mut self) -> Vec<Value> {
        let frame = self.next_json().await;
        assert_eq!(
            frame["type"], "snapshot",
            "first frame must be the snapshot: {frame}"
        );
        frame["events"].as_array().cloned().unwrap_or_default()
    }

    /// Next `{"type":"event"}` frame.
    pub async fn next_event(&mut self) -> Value {
        let frame = self.next_json().await;
        assert_eq!(frame["type"], "event", "expected an event: {frame}");
        frame
    }

    pub async fn send_text(&mut self, text: &str) {
        self.framed
            .send(Message::Text(text.to_owned().into()))
            .await
            .expect("send text");
    }

    pub async fn send(&mut self, message: Message) {
        self.framed.send(message).await.expect("send frame");
    }

    /// Sends a text frame; `false` when the connection refused it or the
    /// send waited two seconds (a server that stopped reading).
    pub async fn try_send_text(&mut self, text: &str) -> bool {
        let send = self.framed.send(Message::Text(text.to_owned().into()));
        matches!(
            tokio::time::timeout(Duration::from_secs(2), send).await,
            Ok(Ok(()))
        )
    }
}

/// A raw WebSocket client with a tiny receive buffer that reads only when
/// asked: the way to play a client that stops reading.
pub struct RawWsClient {
    stream: tokio::net::TcpStream,
}

impl RawWsClient {
    pub async fn connect(port: u16, query: &str) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(2048).expect("SO_RCVBUF");
        let mut stream = socket
            .connect(format!("127.0.0.1:{port}").parse().expect("address"))
            .await
            .expect("connect");
        let request = format!(
            "GET /v1/ws{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .expect("handshake");
        // Read the response head byte by byte, so no frame byte is consumed.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(stream.read_u8().await.expect("handshake response"));
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        Self { stream }
    }

    /// Next text frame as JSON (server frames are unmasked; pings skipped).
    pub async fn next_json(&mut self) -> Value {
        tokio::time::timeout(WAIT, async {
            loop {
                let b0 = self.stream.read_u8().await.expect("frame header");
                let b1 = self.stream.read_u8().await.expect("frame header");
                let len = match b1 & 0x7f {
                    126 => u64::from(self.stream.read_u16().await.expect("length")),
                    127 => self.stream.read_u64().await.expect("length"),
                    n => u64::from(n),
                };
                let mut payload = vec![0; len as usize];
                self.stream.read_exact(&mut payload).await.expect("payload");
                match b0 & 0x0f {
                    0x1 => return serde_json::from_slice(&payload).expect("JSON text frame"),
                    0x8 => panic!("closed by the server: {payload:?}"),
                    _ => continue,
                }
            }
        })
        .await
        .expect("a frame within the wait")
    }
}

/// An HTTP answer: status, headers (lower-case names) and JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }
}

impl TestApp {
    /// Any request; `body` is sent as JSON text when given.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Answer {
        let method = actix_web::http::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, self.url(path));
        for (name, value) in headers {
            req = req.insert_header((*name, *value));
        }
        let mut resp = match body {
            Some(body) => req
                .content_type("application/json")
                .send_body(body.to_owned())
                .await
                .expect("request"),
            None => req.send().await.expect("request"),
        };
        let bytes = resp.body().limit(16 << 20).await.expect("body");
        Answer {
            status: resp.status().as_u16(),
            headers: resp
                .headers()
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_ascii_lowercase(),
                        v.to_str().unwrap_or("").to_owned(),
                    )
                })
                .collect(),
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    /// A stream ticket for `key` (`None`: open dev mode).
    pub async fn ticket(&self, key: Option<&str>) -> String {
        let bearer = key.map(|k| format!("Bearer {k}"));
        let headers: Vec<(&str, &str)> = bearer
            .as_deref()
            .map(|b| vec![("Authorization", b)])
            .unwrap_or_default();
        let answer = self.call("POST", "/v1/auth/ticket", &headers, None).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.body["ticket"].as_str().expect("ticket").to_owned()
    }

    pub async fn sse(
        &self,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Result<crate::sse_client::SseClient, crate::sse_client::Refused> {
        crate::sse_client::SseClient::open(self.port, target, headers).await
    }
}

/// The real `edgebus` binary in its own process (embedded broker, free
/// ports), for what must be measured apart from the test process.
pub struct Service {
    pub port: u16,
    pub mqtt_port: u16,
    child: std::process::Child,
    http: awc::Client,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    /// The binary binds its ports itself: when one was taken meanwhile it
    /// exits, and it is started again on fresh ones.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        let mut attempt = 0;
        loop {
            attempt += 1;
            if let Some(service) = Self::try_start(env).await {
                return service;
            }
            assert!(
                attempt < PORT_ATTEMPTS,
                "edgebus exited at start-up {attempt} times"
            );
        }
    }

    /// `None` when the process exited before it was ready.
    async fn try_start(env: &[(&str, &str)]) -> Option<Self> {
        let (port, mqtt_port) = (free_port(), free_port());
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_edgebus"));
        command
            .env("EDGEBUS__HTTP__BIND", format!("127.0.0.1:{port}"))
            .env("EDGEBUS__MQTT__MODE", "embedded")
            .env(
                "EDGEBUS__MQTT__URL",
                format!("mqtt://127.0.0.1:{mqtt_port}"),
            )
            .env("EDGEBUS__MQTT__CLIENT_ID", unique("svc"))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("the edgebus binary starts");
        let mut service = Self {
            port,
            mqtt_port,
            child,
            http: awc::Client::builder().timeout(WAIT).finish(),
        };
        let deadline = Instant::now() + WAIT * 3;
        loop {
            let url = format!("http://127.0.0.1:{port}/readyz");
            if let Ok(resp) = service.http.get(url).send().await {
                // Still running: the ready answer is its own, not a
                // stranger's on a port it failed to bind.
                if resp.status() == StatusCode::OK && matches!(service.child.try_wait(), Ok(None)) {
                    return Some(service);
                }
            }
            if let Ok(Some(status)) = service.child.try_wait() {
                eprintln!("edgebus exited at start-up ({status}); trying other ports.");
                return None;
            }
            assert!(Instant::now() < deadline, "edgebus never became ready");
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn metric(&self, series: &str) -> f64 {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        let mut resp = self.http.get(url).send().await.expect("/metrics");
        let body = resp.body().limit(16 << 20).await.expect("body");
        series_value(&String::from_utf8_lossy(&body), series)
    }

    /// Polls a metric until `ok(value)`.
    pub async fn wait_metric(&self, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.metric(series).await;
            if ok(v) {
                return v;
            }
            assert!(Instant::now() < deadline, "{series} stuck at {v}");
            actix_web::rt::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Resident memory of the service process.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// The most resident memory the service process has had so far.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        let pid = self.child.id();
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(field))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or_else(|| panic!("{field} of the service"))
    }

    /// SIGKILL, as a crash: nothing is flushed, nothing cleaned up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes `n` notifications of ~2 KB on `notifications/{family}-{i}` and
/// waits until the bus has them all; returns their message text. What a
/// snapshot larger than one 64 KiB piece is made of.
pub async fn publish_large_notifications(
    app: &TestApp,
    publisher: &mut Publisher,
    family: &str,
    n: usize,
) -> String {
    let message = "m".repeat(2000);
    for i in 0..n {
        publisher
            .publish(
                &format!("notifications/{family}-{i}"),
                format!(r#"{{"level":"info","message":"{message}"}}"#),
            )
            .await;
    }
    app.wait_metric("edgebus_events_published_total", n as f64)
        .await;
    message
}

/// Checks a snapshot made by [`publish_large_notifications`] has all `n`
/// of them whole, then publishes one more on the same family, live.
pub async fn large_snapshot_then_live(
    events: &[Value],
    n: usize,
    message: &str,
    publisher: &mut Publisher,
    family: &str,
) {
    assert_eq!(events.len(), n);
    assert!(events
        .iter()
        .all(|e| e["payload"]["message"].as_str() == Some(message)));
    publisher
        .publish(
            &format!("notifications/{family}-live"),
            r#"{"level":"info","message":"live"}"#,
        )
        .await;
}
