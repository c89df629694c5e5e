//! End-to-end load generator: MQTT publish → edgebus → WebSocket receive.
//!
//! Driven by `scripts/bench.sh`, which starts a release `edgebus` with an
//! embedded broker on free ports and runs this target once per scenario. On
//! its own (`cargo bench` without `BENCH_HTTP` or `BENCH_MQTT_WS`) it checks
//! its MQTT-over-WebSocket packet handling, prints a note and exits.
//!
//! What it does, all in one process so send and receive share a clock:
//!
//! 1. opens `BENCH_CLIENTS` WebSocket clients on
//!    `/v1/ws?topic=devices/%2B/metrics`, spread over `BENCH_THREADS` threads
//!    (awc is `!Send`: one actix `System` per thread), and waits until every
//!    client has its `snapshot` (the bus has registered it);
//! 2. publishes `BENCH_RATE` frames/s for `BENCH_DURATION_S` seconds, round
//!    robin over `BENCH_DEVICES` devices (`devices/bench-N/metrics`), paced in
//!    batches once per millisecond (rumqttd silently drops what a lagging
//!    subscriber has not read beyond its retention, so an unpaced loop would
//!    measure the broker's retention, not edgebus). A frame's `timestamp` is
//!    its per-device sequence number; the send time of every frame is kept
//!    in memory;
//! 3. every client records each `(device, seq)` it receives once, and its
//!    latency from the recorded send time;
//! 4. after publishing, waits until everything arrived, nothing arrived for
//!    a second, or `BENCH_DRAIN_S` passed; then prints the report.
//!
//! A frame conflated by the bus (slow session) never reaches the client and
//! counts as lost: the report does not pretend otherwise.
//!
//! Clients (`BENCH_CLIENT_KIND`):
//! - `edgebus` (default): edgebus's `/v1/ws` on `BENCH_HTTP`, as above.
//! - `mqtt-ws`: MQTT 3.1.1 over WebSocket straight to the broker's own
//!   WebSocket listener on `BENCH_MQTT_WS` (host:port), subscribed to
//!   `devices/+/metrics` at QoS 0; the client is ready at its SUBACK. The
//!   reference for what a user gets with no bridge at all (`mqtt_ws.rs`).
//!
//! Publishers (`BENCH_PUBLISHER`):
//! - `raw` (default): MQTT 3.1.1 QoS 0 PUBLISH packets written straight to a
//!   TCP socket, one write per millisecond batch. Costs little CPU, which
//!   matters when the load generator shares a 2-core machine with edgebus.
//! - `rumqttc`: the rumqttc client (`BENCH_QOS` 0 or 1). rumqttc 0.25 flushes
//!   the socket after every request, so it needs much more CPU per frame.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use awc::ws::{Frame, Message};
use futures_util::{SinkExt as _, StreamExt as _};

// In a folder of its own: a file beside this one would be a bench target.
#[path = "e2e_load/mqtt_ws.rs"]
mod mqtt_ws;

/// Most frames one run may publish (send times are kept for each).
const MAX_FRAMES: u64 = 50_000_000;

/// Publisher tick: a batch is written once per tick.
const TICK: Duration = Duration::from_millis(1);

/// With no new delivery for this long after publishing ended, stop waiting.
const QUIET: Duration = Duration::from_secs(1);

/// Concurrent WebSocket handshakes per thread.
const CONNECT_WAVE: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Publisher {
    Raw,
    Rumqttc,
}

/// Who the receiving clients talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientKind {
    /// edgebus's `/v1/ws`.
    Edgebus,
    /// The broker's own WebSocket listener, MQTT over WebSocket.
    MqttWs,
}

#[derive(Debug, Clone)]
struct Config {
    label: String,
    kind: ClientKind,
    /// edgebus's HTTP address(es), or the broker's WebSocket address.
    endpoints: String,
    mqtt: SocketAddr,
    rate: u64,
    duration: Duration,
    clients: usize,
    threads: usize,
    devices: u64,
    publisher: Publisher,
    qos: u8,
    drain: Duration,
    connect_timeout: Duration,
}

fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) if !text.is_empty() => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a valid value")),
        _ => default,
    }
}

impl Config {
    /// `None` when not driven by `scripts/bench.sh` (no `BENCH_HTTP` or
    /// `BENCH_MQTT_WS`).
    fn from_env() -> Option<Self> {
        let kind = match env_or("BENCH_CLIENT_KIND", "edgebus".to_owned()).as_str() {
            "edgebus" => ClientKind::Edgebus,
            "mqtt-ws" => ClientKind::MqttWs,
            other => panic!("BENCH_CLIENT_KIND={other:?}: use edgebus or mqtt-ws"),
        };
        let endpoint_var = match kind {
            ClientKind::Edgebus => "BENCH_HTTP",
            ClientKind::MqttWs => "BENCH_MQTT_WS",
        };
        let endpoints = std::env::var(endpoint_var).ok().filter(|s| !s.is_empty())?;
        let mqtt_text: String = env_or("BENCH_MQTT", String::new());
        let mqtt = mqtt_text
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .expect("BENCH_MQTT must be host:port of the broker to publish to");
        let clients: usize = env_or("BENCH_CLIENTS", 1);
        let publisher = match env_or("BENCH_PUBLISHER", "raw".to_owned()).as_str() {
            "raw" => Publisher::Raw,
            "rumqttc" => Publisher::Rumqttc,
            other => panic!("BENCH_PUBLISHER={other:?}: use raw or rumqttc"),
        };
        let qos: u8 = env_or("BENCH_QOS", 0);
        assert!(qos <= 1, "BENCH_QOS must be 0 or 1");
        assert!(
            publisher == Publisher::Rumqttc || qos == 0,
            "the raw publisher sends QoS 0 only; use BENCH_PUBLISHER=rumqttc for QoS 1"
        );
        let config = Self {
            label: env_or("BENCH_LABEL", "e2e".to_owned()),
            kind,
            endpoints,
            mqtt,
            rate: env_or("BENCH_RATE", 200_000u64).max(1),
            duration: Duration::from_secs_f64(env_or("BENCH_DURATION_S", 10.0f64).max(0.1)),
            clients: clients.max(1),
            threads: env_or("BENCH_THREADS", clients.clamp(1, 2)).clamp(1, clients.max(1)),
            devices: env_or("BENCH_DEVICES", 1_000u64).max(1),
            publisher,
            qos,
            drain: Duration::from_secs_f64(env_or("BENCH_DRAIN_S", 10.0f64)),
            connect_timeout: Duration::from_secs_f64(env_or("BENCH_CONNECT_TIMEOUT_S", 60.0f64)),
        };
        Some(config)
    }

    fn total_frames(&self) -> u64 {
        (self.rate as f64 * self.duration.as_secs_f64()).round() as u64
    }
}

/// What the publisher and every client share.
struct Shared {
    /// Common clock: all times below are nanoseconds since this instant.
    start: Instant,
    total: u64,
    devices: u64,
    /// Send time of frame `seq * devices + device`, plus one (0 = not sent).
    send_ns: Vec<AtomicU64>,
    /// Clients that received their snapshot.
    ready: AtomicUsize,
    /// Clients whose handshake failed.
    failed: AtomicUsize,
    /// Unique deliveries so far, over all clients.
    received: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// One client's view of the run.
#[derive(Default)]
struct ClientStats {
    connected: bool,
    /// One bit per frame index.
    seen: Vec<u64>,
    unique: u64,
    duplicates: u64,
    /// Event frames that are not ours or do not parse.
    foreign: u64,
    /// Our frames whose send time was not recorded (should stay 0).
    unsent: u64,
    lagged_notices: u64,
    lagged_dropped: u64,
    other_frames: u64,
    closed_early: bool,
    latencies_us: Vec<u32>,
    last_recv_ns: u64,
}

impl ClientStats {
    fn new(total: u64) -> Self {
        Self {
            seen: vec![0; total.div_ceil(64) as usize],
            ..Self::default()
        }
    }

    fn on_text(&mut self, text: &[u8], shared: &Shared, ready: &mut bool) {
        if text.starts_with(br#"{"type":"event""#) {
            self.on_frame(parse_event(text), shared);
        } else if text.starts_with(br#"{"type":"snapshot""#) {
            if !*ready {
                *ready = true;
                shared.ready.fetch_add(1, Ordering::AcqRel);
            }
        } else if text.starts_with(br#"{"type":"lagged""#) {
            self.lagged_notices += 1;
            self.lagged_dropped += find(text, b"\"dropped\":")
                .and_then(|at| parse_u64(&text[at + 10..]))
                .map_or(0, |(n, _)| n);
        } else {
            self.other_frames += 1;
        }
    }

    /// A metrics frame as published, straight from the broker.
    fn on_payload(&mut self, payload: &[u8], shared: &Shared) {
        self.on_frame(parse_frame(payload), shared);
    }

    /// One received frame: `(device, seq)`, or `None` if it is not one of ours.
    fn on_frame(&mut self, frame: Option<(u64, u64)>, shared: &Shared) {
        let Some((device, seq)) = frame else {
            self.foreign += 1;
            return;
        };
        if device >= shared.devices {
            self.foreign += 1;
            return;
        }
        let Some(index) = seq
            .checked_mul(shared.devices)
            .and_then(|i| i.checked_add(device))
            .filter(|i| *i < shared.total)
        else {
            self.foreign += 1;
            return;
        };
        let (word, bit) = ((index / 64) as usize, 1u64 << (index % 64));
        if self.seen[word] & bit != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[word] |= bit;
        self.unique += 1;
        shared.received.fetch_add(1, Ordering::Relaxed);
        let now = shared.now_ns();
        self.last_recv_ns = now;
        match shared.send_ns[index as usize].load(Ordering::Acquire) {
            0 => self.unsent += 1,
            sent => {
                let us = now.saturating_sub(sent - 1) / 1_000;
                self.latencies_us.push(us.min(u64::from(u32::MAX)) as u32);
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Leading decimal digits: the value and how many bytes they took.
fn parse_u64(text: &[u8]) -> Option<(u64, usize)> {
    let digits = text.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let value = text[..digits]
        .iter()
        .fold(0u64, |n, b| n * 10 + u64::from(b - b'0'));
    Some((value, digits))
}

/// `(device, seq)` of an event frame carrying one of our metrics frames:
/// `…"payload":{"device_id":"bench-N","timestamp":S,…}`.
fn parse_event(text: &[u8]) -> Option<(u64, u64)> {
    const PAYLOAD: &[u8] = br#""payload":{"device_id":"bench-"#;
    let at = find(text, PAYLOAD)? + br#""payload":"#.len();
    parse_frame(&text[at..])
}

/// `(device, seq)` of one of our metrics frames as published:
/// `{"device_id":"bench-N","timestamp":S,…}`.
fn parse_frame(frame: &[u8]) -> Option<(u64, u64)> {
    const DEVICE: &[u8] = br#"{"device_id":"bench-"#;
    const TIMESTAMP: &[u8] = br#"","timestamp":"#;
    let rest = frame.strip_prefix(DEVICE)?;
    let (device, len) = parse_u64(rest)?;
    let rest = rest[len..].strip_prefix(TIMESTAMP)?;
    let (seq, _) = parse_u64(rest)?;
    Some((device, seq))
}

/// A WebSocket handshake, counted as failed if it fails or ends after
/// `connect_by`.
async fn open_ws(
    request: awc::ws::WebsocketsRequest,
    connect_by: Instant,
    shared: &Shared,
) -> Option<actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>> {
    let wait = connect_by.saturating_duration_since(Instant::now());
    match tokio::time::timeout(wait, request.connect()).await {
        Ok(Ok((_, framed))) => Some(framed),
        Ok(Err(error)) => {
            eprintln!("e2e_load: WebSocket handshake failed: {error}");
            shared.failed.fetch_add(1, Ordering::AcqRel);
            None
        }
        Err(_) => {
            eprintln!("e2e_load: WebSocket handshake timed out");
            shared.failed.fetch_add(1, Ordering::AcqRel);
            None
        }
    }
}

/// One WebSocket client, until `stop` or `deadline`.
async fn run_client(
    client: awc::Client,
    url: String,
    shared: Arc<Shared>,
    connect_by: Instant,
    deadline: Instant,
) -> ClientStats {
    let mut stats = ClientStats::new(shared.total);
    let request = client.ws(url).max_frame_size(1 << 22);
    let Some(mut framed) = open_ws(request, connect_by, &shared).await else {
        return stats;
    };
    stats.connected = true;
    let mut ready = false;
    let mut check = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            biased;
            frame = framed.next() => match frame {
                Some(Ok(Frame::Text(text))) => stats.on_text(&text, &shared, &mut ready),
                Some(Ok(Frame::Ping(payload))) => {
                    let _ = framed.send(Message::Pong(payload)).await;
                }
                Some(Ok(Frame::Close(_))) | Some(Err(_)) | None => {
                    stats.closed_early = !shared.stop.load(Ordering::Acquire);
                    return stats;
                }
                Some(Ok(_)) => {}
            },
            _ = check.tick() => {
                if shared.stop.load(Ordering::Acquire) || Instant::now() >= deadline {
                    break;
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), framed.send(Message::Close(None))).await;
    stats
}

/// `clients` WebSocket clients on one thread with its own actix `System`.
fn receiver_thread(
    kind: ClientKind,
    shared: Arc<Shared>,
    urls: Vec<String>,
    first: usize,
    clients: usize,
    connect_by: Instant,
    deadline: Instant,
) -> Vec<ClientStats> {
    actix_web::rt::System::new().block_on(async move {
        let client = awc::Client::builder()
            .connector(awc::Connector::new().limit(0))
            .timeout(Duration::from_secs(30))
            .finish();
        let mut handles = Vec::with_capacity(clients);
        for i in 0..clients {
            // Client `first + i` of all: spread over the instances in turn.
            let url = urls[(first + i) % urls.len()].clone();
            let (client, task_shared) = (client.clone(), shared.clone());
            let handle = match kind {
                ClientKind::Edgebus => {
                    actix_web::rt::spawn(run_client(client, url, task_shared, connect_by, deadline))
                }
                ClientKind::MqttWs => {
                    let id = format!("edgebus-bench-ws-{}-{}", std::process::id(), first + i);
                    actix_web::rt::spawn(mqtt_ws::run_client(
                        client,
                        url,
                        id,
                        task_shared,
                        connect_by,
                        deadline,
                    ))
                }
            };
            handles.push(handle);
            // Let one wave of handshakes through before starting the next.
            if i % CONNECT_WAVE == CONNECT_WAVE - 1 {
                let started = Instant::now();
                while shared.ready.load(Ordering::Acquire) + shared.failed.load(Ordering::Acquire)
                    < i + 1
                    && started.elapsed() < Duration::from_secs(5)
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        let mut out = Vec::with_capacity(clients);
        for handle in handles {
            if let Ok(stats) = handle.await {
                out.push(stats);
            }
        }
        out
    })
}

/// Frame `index` as an MQTT topic and JSON payload (6 fields, ~130 bytes).
fn frame(index: u64, devices: u64, topic: &mut Vec<u8>, payload: &mut Vec<u8>) {
    let (seq, device) = (index / devices, index % devices);
    let cpu = (index % 1000) as f64 / 10.0;
    let mem = (index * 7 % 1000) as f64 / 10.0;
    let gpu = (index * 13 % 1000) as f64 / 10.0;
    topic.clear();
    payload.clear();
    write!(topic, "devices/bench-{device}/metrics").expect("writing to a Vec cannot fail");
    write!(
        payload,
        r#"{{"device_id":"bench-{device}","timestamp":{seq},"cpu_percent":{cpu:.1},"mem_percent":{mem:.1},"disk_percent":55.5,"gpu_percent":{gpu:.1}}}"#
    )
    .expect("writing to a Vec cannot fail");
}

/// MQTT variable-length "remaining length".
fn put_remaining_length(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
}

/// A QoS 0 PUBLISH packet (MQTT 3.1.1).
fn put_publish(out: &mut Vec<u8>, topic: &[u8], payload: &[u8]) {
    out.push(0x30);
    put_remaining_length(out, 2 + topic.len() + payload.len());
    out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    out.extend_from_slice(topic);
    out.extend_from_slice(payload);
}

/// CONNECT (clean session, keep-alive 60 s) and wait for a CONNACK.
fn raw_connect(addr: SocketAddr, client_id: &str) -> TcpStream {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .expect("the load client cannot reach the MQTT broker");
    stream.set_nodelay(true).expect("TCP_NODELAY");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let mut body = Vec::new();
    body.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60]);
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut packet = vec![0x10];
    put_remaining_length(&mut packet, body.len());
    packet.extend_from_slice(&body);
    stream.write_all(&packet).expect("sending CONNECT");
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).expect("reading CONNACK");
    assert_eq!(
        connack,
        [0x20, 2, 0, 0],
        "the broker refused the load client's CONNECT"
    );
    stream
}

/// How publishing went.
struct Published {
    sent: u64,
    begin_ns: u64,
    end_ns: u64,
}

/// Frames due by `elapsed` at `rate`, at most `total`.
fn due(rate: u64, elapsed: Duration, total: u64) -> u64 {
    ((rate as u128 * elapsed.as_nanos()) / 1_000_000_000).min(u128::from(total)) as u64
}

fn publish_raw(config: &Config, shared: &Shared) -> Published {
    let mut stream = raw_connect(
        config.mqtt,
        &format!("edgebus-bench-{}", std::process::id()),
    );
    let total = shared.total;
    // Never more than 10 ms worth in one write: a stalled tick is caught up
    // over the following ones, not in one burst.
    let max_batch = (config.rate / 100).max(1);
    let (mut topic, mut payload, mut buf) = (Vec::new(), Vec::new(), Vec::new());
    let begin = Instant::now();
    let begin_ns = shared.now_ns();
    let end = begin + config.duration;
    let mut sent = 0u64;
    let mut tick = 0u32;
    loop {
        let now = Instant::now();
        let upto = due(config.rate, now - begin, total).min(sent + max_batch);
        if upto > sent {
            buf.clear();
            for index in sent..upto {
                frame(index, shared.devices, &mut topic, &mut payload);
                put_publish(&mut buf, &topic, &payload);
            }
            let at = shared.now_ns() + 1;
            for slot in &shared.send_ns[sent as usize..upto as usize] {
                slot.store(at, Ordering::Release);
            }
            stream.write_all(&buf).expect("publishing to the broker");
            sent = upto;
        }
        if sent >= total || Instant::now() >= end {
            break;
        }
        tick += 1;
        let next = begin + TICK * tick;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let end_ns = shared.now_ns();
    let _ = stream.write_all(&[0xE0, 0]); // DISCONNECT
    let _ = stream.flush();
    Published {
        sent,
        begin_ns,
        end_ns,
    }
}

fn publish_rumqttc(config: &Config, shared: &Shared) -> Published {
    use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime for the publisher");
    runtime.block_on(async {
        let mut options = MqttOptions::new(
            format!("edgebus-bench-{}", std::process::id()),
            config.mqtt.ip().to_string(),
            config.mqtt.port(),
        );
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_inflight(1_000);
        let (client, mut eventloop) = AsyncClient::new(options, 10_000);
        let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
        let driver = tokio::spawn(async move {
            let mut connected = Some(connected_tx);
            let give_up = Instant::now() + Duration::from_secs(600);
            while Instant::now() < give_up {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(tx) = connected.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(error) => {
                        eprintln!("e2e_load: rumqttc: {error}");
                        return;
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(5), connected_rx)
            .await
            .expect("rumqttc did not connect within 5 s")
            .expect("rumqttc event loop ended before connecting");
        let qos = if config.qos == 1 {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        let total = shared.total;
        let max_batch = (config.rate / 100).max(1);
        let (mut topic, mut payload) = (Vec::new(), Vec::new());
        let begin = tokio::time::Instant::now();
        let begin_ns = shared.now_ns();
        let end = begin + config.duration;
        let mut sent = 0u64;
        let mut tick = 0u32;
        loop {
            let upto = due(config.rate, begin.elapsed(), total).min(sent + max_batch);
            while sent < upto {
                frame(sent, shared.devices, &mut topic, &mut payload);
                let topic_text = String::from_utf8(topic.clone()).expect("ASCII topic");
                shared.send_ns[sent as usize].store(shared.now_ns() + 1, Ordering::Release);
                client
                    .publish(topic_text, qos, false, payload.clone())
                    .await
                    .expect("rumqttc accepts the publish");
                sent += 1;
            }
            if sent >= total || tokio::time::Instant::now() >= end {
                break;
            }
            tick += 1;
            tokio::time::sleep_until(begin + TICK * tick).await;
        }
        let end_ns = shared.now_ns();
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(10), driver).await;
        Published {
            sent,
            begin_ns,
            end_ns,
        }
    })
}

/// CPU ticks (user + system, USER_HZ = 100) per thread of this process,
/// by thread id; empty where `/proc` is not available.
fn thread_ticks() -> Vec<(u64, String, u64)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        // Fields after "(comm) ": state is the first; utime, stime the 12th, 13th.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let tick = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let tid = task.file_name().to_string_lossy().parse().unwrap_or(0);
        out.push((tid, comm.trim().to_owned(), tick(11) + tick(12)));
    }
    out.sort();
    out
}

/// CPU seconds each thread used between two [`thread_ticks`] readings.
fn cpu_since(before: &[(u64, String, u64)]) -> String {
    let mut parts = Vec::new();
    let mut total = 0u64;
    for (tid, comm, ticks) in thread_ticks() {
        let base = before
            .iter()
            .find(|(t, _, _)| *t == tid)
            .map_or(0, |(_, _, b)| *b);
        let used = ticks.saturating_sub(base);
        total += used;
        if used > 0 {
            parts.push(format!("{comm} {:.2} s", used as f64 / 100.0));
        }
    }
    format!("{:.2} s ({})", total as f64 / 100.0, parts.join(", "))
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    f64::from(sorted[rank.min(sorted.len() - 1)]) / 1_000.0
}

fn main() {
    let Some(config) = Config::from_env() else {
        mqtt_ws::self_check();
        println!(
            "e2e_load: BENCH_HTTP (or BENCH_MQTT_WS) is not set; nothing to do. Run scripts/bench.sh."
        );
        return;
    };
    let total = config.total_frames();
    assert!(
        total <= MAX_FRAMES,
        "{total} frames is over {MAX_FRAMES}: lower BENCH_RATE or BENCH_DURATION_S"
    );
    let shared = Arc::new(Shared {
        start: Instant::now(),
        total,
        devices: config.devices,
        send_ns: (0..total).map(|_| AtomicU64::new(0)).collect(),
        ready: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        received: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    // BENCH_HTTP may name several instances (cluster mode), comma-separated.
    let urls: Vec<String> = config
        .endpoints
        .split(',')
        .map(|host| match config.kind {
            ClientKind::Edgebus => {
                format!("ws://{}/v1/ws?topic=devices%2F%2B%2Fmetrics", host.trim())
            }
            ClientKind::MqttWs => format!("ws://{}/", host.trim()),
        })
        .collect();
    let connect_by = Instant::now() + config.connect_timeout;
    let deadline = connect_by + config.duration + config.drain + Duration::from_secs(10);

    // Clients first, spread over the threads.
    let mut threads = Vec::with_capacity(config.threads);
    let mut first = 0;
    for t in 0..config.threads {
        let n = config.clients / config.threads + usize::from(t < config.clients % config.threads);
        let (shared, urls, kind) = (shared.clone(), urls.clone(), config.kind);
        let start = first;
        first += n;
        let handle = std::thread::Builder::new()
            .name(format!("ws-clients-{t}"))
            .spawn(move || receiver_thread(kind, shared, urls, start, n, connect_by, deadline))
            .expect("spawning a client thread");
        threads.push(handle);
    }
    let connect_began = Instant::now();
    while shared.ready.load(Ordering::Acquire) + shared.failed.load(Ordering::Acquire)
        < config.clients
        && Instant::now() < connect_by
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let ready = shared.ready.load(Ordering::Acquire);
    let connect_time = connect_began.elapsed();
    eprintln!(
        "e2e_load[{}]: {ready}/{} clients subscribed in {:.2} s; publishing {} frames/s for {:.1} s",
        config.label,
        config.clients,
        connect_time.as_secs_f64(),
        config.rate,
        config.duration.as_secs_f64()
    );

    let ticks_before = thread_ticks();
    let published = if ready == 0 {
        Published {
            sent: 0,
            begin_ns: shared.now_ns(),
            end_ns: shared.now_ns(),
        }
    } else {
        match config.publisher {
            Publisher::Raw => publish_raw(&config, &shared),
            Publisher::Rumqttc => publish_rumqttc(&config, &shared),
        }
    };

    // Drain: everything arrived, or nothing new for QUIET, or BENCH_DRAIN_S.
    let expected = published.sent * ready as u64;
    let drain_until = Instant::now() + config.drain;
    let mut last = shared.received.load(Ordering::Acquire);
    let mut last_change = Instant::now();
    while Instant::now() < drain_until {
        let now = shared.received.load(Ordering::Acquire);
        if now >= expected {
            break;
        }
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() >= QUIET {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Before the client threads end, so their CPU time is still readable.
    let load_cpu = cpu_since(&ticks_before);
    shared.stop.store(true, Ordering::Release);
    let mut clients: Vec<ClientStats> = Vec::with_capacity(config.clients);
    for handle in threads {
        match handle.join() {
            Ok(stats) => clients.extend(stats),
            Err(_) => eprintln!("e2e_load: a client thread panicked"),
        }
    }
    report(&config, &shared, &published, &clients, ready);
    println!("load client CPU:    {load_cpu} from first publish to the end of the drain");
}

fn report(
    config: &Config,
    shared: &Shared,
    published: &Published,
    clients: &[ClientStats],
    ready: usize,
) {
    let sum = |f: fn(&ClientStats) -> u64| clients.iter().map(f).sum::<u64>();
    let unique = sum(|c| c.unique);
    let connected = clients.iter().filter(|c| c.connected).count();
    let closed_early = clients.iter().filter(|c| c.closed_early).count();
    let publish_s = (published.end_ns - published.begin_ns) as f64 / 1e9;
    let publish_rate = published.sent as f64 / publish_s.max(1e-9);
    let last_recv = clients.iter().map(|c| c.last_recv_ns).max().unwrap_or(0);
    let window_s = last_recv.saturating_sub(published.begin_ns) as f64 / 1e9;
    let delivered_rate = if window_s > 0.0 {
        unique as f64 / window_s
    } else {
        0.0
    };
    let expected = published.sent * ready as u64;
    let loss_pct = if expected > 0 {
        100.0 * (expected.saturating_sub(unique)) as f64 / expected as f64
    } else {
        f64::NAN
    };
    let mut per_client: Vec<u64> = clients
        .iter()
        .filter(|c| c.connected)
        .map(|c| c.unique)
        .collect();
    per_client.sort_unstable();
    let mut latencies: Vec<u32> = Vec::with_capacity(unique as usize);
    for c in clients {
        latencies.extend_from_slice(&c.latencies_us);
    }
    latencies.sort_unstable();
    let (p50, p90, p99, p999) = (
        percentile(&latencies, 50.0),
        percentile(&latencies, 90.0),
        percentile(&latencies, 99.0),
        percentile(&latencies, 99.9),
    );
    let max = latencies
        .last()
        .map_or(f64::NAN, |v| f64::from(*v) / 1_000.0);
    let publisher = match config.publisher {
        Publisher::Raw => "raw MQTT 3.1.1 over TCP".to_owned(),
        Publisher::Rumqttc => "rumqttc".to_owned(),
    };

    println!("== e2e scenario {} ==", config.label);
    println!(
        "publisher:          {publisher}, QoS {}, {} devices round-robin, 1 ms batches",
        config.qos, config.devices
    );
    let kind = match config.kind {
        ClientKind::Edgebus => "edgebus /v1/ws",
        ClientKind::MqttWs => "MQTT over WebSocket on the broker",
    };
    println!(
        "clients:            {} requested ({kind}), {connected} connected, {ready} subscribed, {} thread(s), {closed_early} closed early",
        config.clients, config.threads
    );
    println!(
        "target rate:        {} frames/s for {:.1} s ({} frames)",
        config.rate,
        config.duration.as_secs_f64(),
        shared.total
    );
    println!(
        "published:          {} frames in {publish_s:.2} s = {publish_rate:.0} frames/s",
        published.sent
    );
    println!(
        "delivered:          {unique} of {expected} (frame x client) = {delivered_rate:.0} frames/s summed over clients (window {window_s:.2} s from first publish to last receive)"
    );
    println!("loss:               {loss_pct:.3} % (conflated, dropped or never received; duplicates {}, lagged notices {} announcing {} drops)",
        sum(|c| c.duplicates), sum(|c| c.lagged_notices), sum(|c| c.lagged_dropped));
    if per_client.len() > 1 {
        println!(
            "per client:         min {} / median {} / max {} frames",
            per_client[0],
            per_client[per_client.len() / 2],
            per_client[per_client.len() - 1]
        );
    }
    println!(
        "latency publish→WS: p50 {p50:.2} ms, p90 {p90:.2} ms, p99 {p99:.2} ms, p99.9 {p999:.2} ms, max {max:.2} ms ({} samples)",
        latencies.len()
    );
    let odd = sum(|c| c.foreign) + sum(|c| c.unsent) + sum(|c| c.other_frames);
    if odd > 0 {
        println!(
            "unexpected:         {} foreign event frames, {} without send time, {} other frames",
            sum(|c| c.foreign),
            sum(|c| c.unsent),
            sum(|c| c.other_frames)
        );
    }
    println!(
        "RESULT label={} clients={ready} target={} published_per_s={publish_rate:.0} delivered_per_s={delivered_rate:.0} loss_pct={loss_pct:.3} p50_ms={p50:.2} p99_ms={p99:.2} sent={} delivered={unique}",
        config.label, config.rate, published.sent
    );
}
