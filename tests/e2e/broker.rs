//! Ingest against Mosquitto: the machine's shared broker (used, never
//! stopped) and a private one this test kills and restarts.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{
    free_port, metrics_json, spawn_app_external, unique, Publisher, PORT_ATTEMPTS, WAIT,
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
    _dir: std::path::PathBuf,
}

impl Mosquitto {
    /// On a port of its own. Mosquitto binds it itself, so a port taken
    /// since [`free_port`] chose it makes it exit: it is started again on
    /// another one.
    pub fn on_free_port() -> (Self, u16) {
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            match Self::try_start(port) {
                Some(broker) => return (broker, port),
                None => eprintln!("Mosquitto could not listen on {port}; trying another port."),
            }
        }
        panic!("Mosquitto could not listen on {PORT_ATTEMPTS} free ports");
    }

    /// On `port` (a restart on the port edgebus is configured for).
    pub fn start(port: u16) -> Self {
        Self::try_start(port).unwrap_or_else(|| panic!("Mosquitto could not listen on {port}"))
    }

    /// `None` when it exited instead of listening.
    fn try_start(port: u16) -> Option<Self> {
        let dir = std::env::temp_dir().join(unique("mosquitto"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .expect("mosquitto.conf");
        let binary = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("mosquitto");
        let child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed (.ci/run installs it)");
        let mut broker = Self { child, _dir: dir };
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
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
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
