//! Ingest against Mosquitto: the machine's shared broker (used, never
//! stopped) and a private one this test kills and restarts. And the
//! embedded broker's logins and memory bounds.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::helpers::{
    free_port, metrics_json, spawn_app_external, spawn_app_with, unique, Publisher, Service,
    PORT_ATTEMPTS, WAIT,
};

const SHARED_MOSQUITTO: u16 = 1883;

fn answers(port: u16) -> bool {
    TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().expect("address"),
        Duration::from_millis(300),
    )
    .is_ok()
}

#[actix_web::test]
async fn ingest_works_against_the_shared_mosquitto() {
    if !answers(SHARED_MOSQUITTO) {
        eprintln!("No Mosquitto on 127.0.0.1:{SHARED_MOSQUITTO}; skipping.");
        return;
    }
    // Subscribed to this test's own topic only: other clients of the shared
    // broker publish what they like, and none of it reaches these counters.
    let device = unique("shared");
    let topic = format!("devices/{device}/metrics");
    let app =
        spawn_app_external(SHARED_MOSQUITTO, &format!("[mqtt]\ntopics = [\"{topic}\"]")).await;
    let mut ws = app
        .ws(&format!("?topic={}", topic.replace('/', "%2F")))
        .await;
    ws.snapshot().await;
    let mut publisher = Publisher::connect(SHARED_MOSQUITTO).await;

    publisher
        .publish(&topic, metrics_json(&device, 1, 42.0))
        .await;
    publisher
        .publish(&topic, metrics_json(&device, 2, 420.0))
        .await; // out of range
    publisher
        .publish(&topic, metrics_json(&device, 3, 43.0))
        .await;

    assert_eq!(ws.next_event().await["payload"]["timestamp"], 1);
    assert_eq!(ws.next_event().await["payload"]["timestamp"], 3);
    assert_eq!(
        app.wait_metric_value(
            r#"edgebus_frames_rejected_total{reason="out_of_range"}"#,
            1.0
        )
        .await,
        1.0
    );
    app.handle.shutdown().await;
}

/// A Mosquitto of our own on `port`, killed when dropped (also used by the
/// dashboard restart test).
pub struct Mosquitto {
    child: Child,
    dir: std::path::PathBuf,
}

impl Mosquitto {
    /// On a port of its own. Mosquitto binds it itself, so a port taken
    /// since [`free_port`] chose it makes it exit: it is started again on
    /// another one.
    pub fn on_free_port() -> (Self, u16) {
        Self::on_free_port_with("")
    }

    /// [`Mosquitto::on_free_port`] logging everything it does (each
    /// PUBLISH it sends, to whom) to a file [`Mosquitto::log`] reads.
    pub fn on_free_port_logging() -> (Self, u16) {
        Self::on_free_port_with("log_type all\n")
    }

    fn on_free_port_with(extra: &str) -> (Self, u16) {
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            match Self::try_start(port, extra) {
                Some(broker) => return (broker, port),
                None => eprintln!("Mosquitto could not listen on {port}; trying another port."),
            }
        }
        panic!("Mosquitto could not listen on {PORT_ATTEMPTS} free ports");
    }

    /// On `port` (a restart on the port edgebus is configured for).
    pub fn start(port: u16) -> Self {
        Self::try_start(port, "").unwrap_or_else(|| panic!("Mosquitto could not listen on {port}"))
    }

    /// `None` when it exited instead of listening.
    fn try_start(port: u16, extra: &str) -> Option<Self> {
        let dir = std::env::temp_dir().join(unique("mosquitto"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n{extra}"),
        )
        .expect("mosquitto.conf");
        let binary = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("mosquitto");
        let child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            // It logs to stderr: a file opened here, before it drops root
            // for the `mosquitto` user, who may not write in our directory.
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("mosquitto.log")).expect("mosquitto.log"))
            .spawn()
            .expect("mosquitto is installed (.ci/run installs it)");
        let mut broker = Self { child, dir };
        let deadline = Instant::now() + WAIT;
        loop {
            // Listening and still running: the answer is its own.
            if answers(port) && matches!(broker.child.try_wait(), Ok(None)) {
                return Some(broker);
            }
            if let Ok(Some(_)) = broker.child.try_wait() {
                return None;
            }
            assert!(Instant::now() < deadline, "mosquitto listens on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Everything it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[actix_web::test]
async fn ingest_reconnects_and_resubscribes_after_a_broker_restart() {
    // Arrange: edgebus on a private Mosquitto.
    let (mut broker, port) = Mosquitto::on_free_port();
    let app = spawn_app_external(port, "").await;
    let device = unique("restart");
    let topic = format!("devices/{device}/metrics");
    let mut ws = app.ws("").await;
    ws.snapshot().await;
    let mut publisher = Publisher::connect(port).await;
    publisher
        .publish(&topic, metrics_json(&device, 1, 1.0))
        .await;
    assert_eq!(ws.next_event().await["payload"]["timestamp"], 1);

    // Act: the broker dies; edgebus turns not-ready; the broker comes back.
    broker.kill();
    app.wait_until_ready(false).await;
    assert_eq!(
        app.wait_metric_value("edgebus_mqtt_connected", 0.0).await,
        0.0
    );
    let _broker = Mosquitto::start(port);
    app.wait_until_ready(true).await;

    // Assert: re-subscribed (clean session), frames flow again, the session
    // stayed open and the reconnects were counted.
    let mut publisher = Publisher::connect(port).await;
    publisher
        .publish(&topic, metrics_json(&device, 2, 2.0))
        .await;
    assert_eq!(ws.next_event().await["payload"]["timestamp"], 2);
    assert!(app.wait_metric("edgebus_mqtt_reconnects_total", 1.0).await >= 1.0);
    assert_eq!(
        app.wait_metric_value("edgebus_mqtt_connected", 1.0).await,
        1.0
    );
}

#[actix_web::test]
async fn frames_sent_while_edgebus_restarts_are_delivered_by_its_persistent_session() {
    let (_broker, port) = Mosquitto::on_free_port();
    let client_id = unique("persistent");
    let extra = format!("[mqtt]\npersistent_session = true\nclient_id = \"{client_id}\"");
    let first = spawn_app_external(port, &extra).await;
    let (before, during) = (unique("before"), unique("during"));
    let mut publisher = Publisher::connect(port).await;
    publisher
        .publish(
            &format!("devices/{before}/metrics"),
            metrics_json(&before, 1, 1.0),
        )
        .await;
    first
        .wait_metric("edgebus_frames_accepted_total", 1.0)
        .await;

    // edgebus stops; Mosquitto keeps its session and queues QoS 1 frames.
    first.handle.shutdown().await;
    for seq in 1..=3 {
        publisher
            .publish(
                &format!("devices/{during}/metrics"),
                metrics_json(&during, seq, 2.0),
            )
            .await;
    }

    let second = spawn_app_external(port, &extra).await;
    second
        .wait_metric("edgebus_frames_accepted_total", 3.0)
        .await;
    let (status, device) = second.get_json(&format!("/v1/devices/{during}")).await;
    assert_eq!(status, 200, "the frames queued by the broker arrived");
    assert_eq!(
        device["metrics"]["timestamp"], 3,
        "in order, the last one last"
    );
    assert_eq!(
        second.metric("edgebus_frames_accepted_total").await,
        3.0,
        "each once"
    );
    second.handle.shutdown().await;
}

/// edgebus's embedded broker with one device credential ("d1") and its
/// own credential ("edgebus" / "edgebus-secret").
fn with_credentials() -> String {
    format!(
        "[mqtt]\nusername = \"edgebus\"\npassword = \"edgebus-secret\"\n\
         credentials = [{{ username = \"d1\", password_sha256 = \"{}\" }}]\n",
        sha256_hex("device-secret")
    )
}

fn sha256_hex(text: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether the broker on `port` answers a CONNECT with `login` by a
/// CONNACK (`Ok`) or closes the connection (`Err`, with what the client
/// saw).
async fn try_login(port: u16, login: Option<(&str, &str)>) -> Result<(), String> {
    let mut options = MqttOptions::new(unique("login"), "127.0.0.1", port);
    if let Some((username, password)) = login {
        options.set_credentials(username, password);
    }
    let (_client, mut eventloop) = AsyncClient::new(options, 10);
    let outcome = tokio::time::timeout(WAIT, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    return Ok(ack.code);
                }
                Ok(_) => {}
                Err(error) => return Err(error.to_string()),
            }
        }
    })
    .await
    .expect("the broker answers the CONNECT");
    match outcome {
        Ok(rumqttc::ConnectReturnCode::Success) => Ok(()),
        Ok(code) => Err(format!("{code:?}")),
        Err(error) => Err(error),
    }
}

/// One MQTT 3.1.1 packet: type byte, remaining length, body.
fn packet(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    let mut len = body.len();
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
    out.extend_from_slice(body);
    out
}

fn mqtt_string(text: &str) -> Vec<u8> {
    let mut out = (text.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out
}

#[actix_web::test]
async fn with_credentials_an_anonymous_or_wrong_login_is_refused() {
    let app = spawn_app_with(&with_credentials()).await;

    let anonymous = try_login(app.mqtt_port, None).await;
    let wrong = try_login(app.mqtt_port, Some(("d1", "not-the-secret"))).await;
    let unknown = try_login(app.mqtt_port, Some(("nobody", "device-secret"))).await;
    let device = try_login(app.mqtt_port, Some(("d1", "device-secret"))).await;
    let edgebus = try_login(app.mqtt_port, Some(("edgebus", "edgebus-secret"))).await;

    assert!(anonymous.is_err(), "anonymous: {anonymous:?}");
    assert!(wrong.is_err(), "wrong password: {wrong:?}");
    assert!(unknown.is_err(), "unknown user: {unknown:?}");
    assert_eq!(device, Ok(()));
    assert_eq!(edgebus, Ok(()));
    app.handle.shutdown().await;
}

#[actix_web::test]
async fn a_device_credential_publishes_a_frame_that_reaches_the_devices_list() {
    let app = spawn_app_with(&with_credentials()).await;
    let device = unique("cred");
    let mut ws = app.ws("").await;
    ws.snapshot().await;
    let mut publisher = Publisher::connect_as(app.mqtt_port, Some(("d1", "device-secret"))).await;

    publisher
        .publish(
            &format!("devices/{device}/metrics"),
            metrics_json(&device, 1, 5.0),
        )
        .await;

    assert_eq!(
        ws.next_event().await["payload"]["device_id"],
        device.as_str()
    );
    let (_, devices) = app.get_json("/v1/devices").await;
    assert!(devices.to_string().contains(&device), "{devices}");
    app.handle.shutdown().await;
}

#[actix_web::test]
async fn with_credentials_an_anonymous_client_cannot_inject_a_frame() {
    // Arrange: a WebSocket watching every device.
    let app = spawn_app_with(&with_credentials()).await;
    let (intruder, device) = (unique("intruder"), unique("real"));
    let mut ws = app.ws("").await;
    ws.snapshot().await;

    // Act: an anonymous CONNECT with a PUBLISH right behind it, as the
    // attack sent them, before any answer.
    let mut raw = TcpStream::connect(("127.0.0.1", app.mqtt_port)).expect("tcp connect");
    raw.set_read_timeout(Some(WAIT)).expect("read timeout");
    let mut connect = mqtt_string("MQTT");
    connect.extend_from_slice(&[4, 0x02, 0, 60]);
    connect.extend(mqtt_string(&unique("anon")));
    let mut publish = mqtt_string(&format!("devices/{intruder}/metrics"));
    publish.extend_from_slice(metrics_json(&intruder, 1, 5.0).as_bytes());
    let mut bytes = packet(0x10, &connect);
    bytes.extend(packet(0x30, &publish));
    raw.write_all(&bytes).expect("send CONNECT + PUBLISH");
    // The broker closes the connection without a CONNACK: the refusal is
    // complete once we read end-of-stream, so nothing of it can still be
    // on its way to ingest.
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    let mut publisher = Publisher::connect_as(app.mqtt_port, Some(("d1", "device-secret"))).await;
    publisher
        .publish(
            &format!("devices/{device}/metrics"),
            metrics_json(&device, 1, 5.0),
        )
        .await;

    // Assert: no CONNACK, and the first frame anyone sees is the real one.
    assert!(answer.is_empty(), "the broker answered {answer:?}");
    assert_eq!(
        ws.next_event().await["payload"]["device_id"],
        device.as_str()
    );
    let (_, devices) = app.get_json("/v1/devices").await;
    assert!(!devices.to_string().contains(&intruder), "{devices}");
    app.handle.shutdown().await;
}

#[actix_web::test]
async fn without_credentials_the_embedded_broker_stays_open() {
    let app = spawn_app_with("").await;

    assert_eq!(try_login(app.mqtt_port, None).await, Ok(()));
    app.handle.shutdown().await;
}

#[actix_web::test]
async fn a_filter_left_behind_keeps_no_more_than_the_client_retention() {
    // Arrange: edgebus in its own process, so its RSS is the broker's; a
    // device subscribes to a filter edgebus does not use, then leaves.
    // rumqttd keeps that filter's log, and keeps appending to it, for good.
    let service = Service::start(&[
        ("EDGEBUS__MQTT__USERNAME", "edgebus"),
        ("EDGEBUS__MQTT__PASSWORD", "edgebus-secret"),
    ])
    .await;
    let login = Some(("edgebus", "edgebus-secret"));
    let mut options = MqttOptions::new(unique("junk"), "127.0.0.1", service.mqtt_port);
    options.set_credentials("edgebus", "edgebus-secret");
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client
        .subscribe("junk/#", QoS::AtMostOnce)
        .await
        .expect("queue SUBSCRIBE");
    tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(Event::Incoming(Packet::SubAck(_))) = eventloop.poll().await {
                return;
            }
        }
    })
    .await
    .expect("SUBACK");
    drop((client, eventloop));
    let mut publisher = Publisher::connect_as(service.mqtt_port, login).await;
    publisher.publish("junk/warmup", vec![b'w'; 200_000]).await;
    let before = service.rss_kib();

    // Act: 48 MB into the abandoned filter, each publish acknowledged, so
    // each is in the broker's log.
    for _ in 0..240 {
        publisher.publish("junk/x", vec![b'j'; 200_000]).await;
    }
    let grown_mib = service.rss_kib().saturating_sub(before) / 1024;

    // Assert: the log kept two segments of 128 KiB, each overshot by one
    // 200 KB message: ≈ 1.1 MiB with rumqttd's preallocated slots (measured
    // +1 MiB). It used to keep all 48 MB (up to 128 MiB).
    assert!(grown_mib < 16, "RSS grew {grown_mib} MiB");
}

#[actix_web::test]
async fn frames_edgebus_rejects_keep_no_more_than_the_ingest_retention() {
    // Arrange: edgebus in its own process with a 1 MiB ingest retention.
    let service = Service::start(&[
        ("EDGEBUS__MQTT__USERNAME", "edgebus"),
        ("EDGEBUS__MQTT__PASSWORD", "edgebus-secret"),
        ("EDGEBUS__MQTT__EMBEDDED_RETENTION_BYTES", "1048576"),
    ])
    .await;
    let login = Some(("edgebus", "edgebus-secret"));
    let mut publisher = Publisher::connect_as(service.mqtt_port, login).await;
    let too_large = r#"edgebus_frames_rejected_total{reason="too_large"}"#;
    publisher
        .publish("attackers/warmup", vec![b'w'; 200_000])
        .await;
    service.wait_metric(too_large, |v| v >= 1.0).await;
    let before = service.rss_kib();

    // Act: 48 MB of frames on edgebus's own `attackers/#`, each one too
    // large, so ingest rejects and counts them; wait until it has.
    for _ in 0..240 {
        publisher
            .publish("attackers/a1/scan", vec![b'a'; 200_000])
            .await;
    }
    service.wait_metric(too_large, |v| v >= 241.0).await;
    let grown_mib = service.rss_kib().saturating_sub(before) / 1024;

    // Assert: the filter's log kept its four segments of 256 KiB, each
    // overshot by one message: ≈ 2.7 MiB with rumqttd's preallocated slots
    // (measured +4 MiB). It used to keep all 48 MB (up to 128 MiB).
    assert!(grown_mib < 16, "RSS grew {grown_mib} MiB");
}

#[actix_web::test]
async fn frames_the_broker_drops_before_ingest_reads_them_are_counted() {
    // Arrange: a 64 KiB ingest retention, about four of these 15 KB
    // objects. Each has 1,500 keys: ingest parses and checks every one (tens
    // of µs), while the broker only appends the bytes, so a burst outruns
    // ingest by construction rather than by luck.
    let app = spawn_app_with("[mqtt]\nembedded_retention_bytes = 65536").await;
    let publisher = app.publisher().await;
    let topic = format!("attackers/{}/observation/burst", unique("burst"));
    let payload = serde_json::Value::Object(
        (0..1500)
            .map(|k| (format!("k{k}"), serde_json::Value::from(k)))
            .collect(),
    )
    .to_string();

    // Act: a burst far beyond that retention (40 MB into 64 KiB).
    for _ in 0..2700 {
        publisher.publish_nowait(&topic, payload.clone()).await;
    }

    // Assert: the frames dropped before ingest read them are counted.
    app.wait_metric("edgebus_mqtt_broker_overruns_total", 1.0)
        .await;
    app.handle.shutdown().await;
}
