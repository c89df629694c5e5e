//! The embedded MQTT broker (rumqttd), for the default setup: `cargo run`
//! works with nothing else installed.
//!
//! rumqttd's `Broker::start()` blocks its thread forever, has no shutdown,
//! cannot report an ephemeral port and only *logs* a port already in use. So
//! edgebus assembles the broker from rumqttd's parts instead: the router
//! (`Router::spawn`) and one MQTT listener (`Server::start`) run on a thread
//! of ours, whose runtime ends at [`Listener::stop`] and with it the listening
//! socket and every device connection. The port is held until that thread
//! hands it to rumqttd, a bind failure is reported as an error, and start-up
//! waits until the port accepts connections.
//!
//! What cannot be stopped: the router's thread. It keeps a sender to its own
//! channel, so it never sees the channel close, and has no stop event. Once
//! the listener and ingest are gone nothing sends to it and it stays parked,
//! holding the memory of its commit log until the process exits.
//!
//! Ingest does not connect to it over TCP: before the listener starts, it
//! takes an in-process local link from the router ([`LocalLink`]), so our
//! subscription's publishes are handed over as `Bytes` instead of being
//! encoded by the broker's network thread and decoded again by rumqttc.
//!
//! What rumqttd 0.20 can and cannot bound, read in its source:
//! - CONNECT: `link/remote.rs` `handle_auth` calls our handler with the
//!   username and password; a refusal closes the connection with no CONNACK
//!   (rumqttd writes none), so a client sees the socket closed.
//! - No per-client ACL: `router/routing.rs` `validate_subscription` only
//!   refuses `$`-filters, so any accepted client may subscribe to `#`.
//! - A filter's commit log is never freed: `router/logs.rs` `DataLog` only
//!   ever inserts into `native`/`filter_indexes`, and keeps appending to it
//!   after its last subscriber left. Each log is bounded by its segments.
//! - Retained messages cannot be limited or turned off:
//!   `append_to_commitlog` stores every `retain` publish in a map with no
//!   cap. Only credentials bound who can fill it.
//! - Its per-message size is `4 + topic + payload`; a stored message also
//!   costs ~232 bytes of struct, and each segment preallocates 1024 slots.
//!
//! - Alerts (read-cursor jumps) are pushed only by rumqttd's own timer,
//!   which runs only inside `Broker::start()`; so ingest counts what it
//!   lost from the gaps in its link's read offsets instead.
//!
//! So what a client can make the broker keep is bounded by who may connect
//! (credentials), how many at once, the packet size, and the per-filter
//! segments set here: per filter about `segments × (segment + packet +
//! 232 KiB)`.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use edgebus_actors::ingest::LocalLink;
use edgebus_actors::telemetry::Telemetry;
use rumqttd::local::LinkBuilder;
use rumqttd::protocol::v4::V4;
use rumqttd::{ConnectionSettings, LinkType, RouterConfig, SegmentConfig, ServerSettings};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;

use crate::settings::Settings;

/// How long start-up waits for the embedded broker to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Segments per filter log of edgebus's own subscriptions. rumqttd drops a
/// whole segment at a time, so with 4 a lagging ingest loses at most a
/// quarter of `mqtt.embedded_retention_bytes` at once.
const INGEST_SEGMENTS: usize = 4;
/// Segments per filter log of any other client's subscription.
const CLIENT_SEGMENTS: usize = 2;
/// rumqttd panics on a segment under 1 KiB (`segments/mod.rs`).
const MIN_SEGMENT_BYTES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("`mqtt.url`: cannot resolve {0}")]
    Resolve(String),
    #[error("`mqtt.url`: cannot embed a broker on {addr}: {reason} (is another broker running there? use mqtt.mode = \"external\" to connect to it)")]
    PortTaken { addr: SocketAddr, reason: String },
    #[error("the embedded broker did not start listening on {0} within {LISTEN_TIMEOUT:?}")]
    NotListening(SocketAddr),
    #[error("could not start the embedded broker thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("the embedded broker refused edgebus's local link: {0}")]
    Link(String),
}

pub fn resolve(host: &str, port: u16) -> Result<SocketAddr, BrokerError> {
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| BrokerError::Resolve(format!("{host}:{port}")))
}

/// Whether something accepts TCP connections at `addr` (mode "auto").
pub fn answers(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// The embedded broker's MQTT listener, running on a thread of its own.
/// Cloneable handles share it through an `Arc`.
#[derive(Debug)]
pub struct Listener {
    addr: SocketAddr,
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

impl Listener {
    /// Closes the listening socket and every device connection (the thread's
    /// runtime ends). Synchronous, so a `Drop` may call it; later calls do
    /// nothing.
    pub fn stop(&self) {
        let stop = self
            .stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(stop) = stop {
            // An error means the thread has ended already.
            let _ = stop.send(());
            log::info!("Embedded MQTT broker on {} stopped listening.", self.addr);
        }
    }
}

/// The usernames and password digests the embedded broker accepts.
#[derive(Clone, Default)]
pub struct Credentials(HashMap<String, [u8; 32]>);

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Credentials {
    /// `mqtt.username`/`password` (edgebus's own, and the default devices')
    /// plus `mqtt.credentials`.
    pub fn from_settings(settings: &Settings) -> Self {
        let m = &settings.mqtt;
        let mut map = HashMap::new();
        if !m.username.is_empty() {
            map.insert(m.username.clone(), sha256(m.password.expose().as_bytes()));
        }
        for credential in &m.credentials {
            map.insert(credential.username.clone(), credential.password_sha256.0);
        }
        Self(map)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `password` is `username`'s. The digests are compared in
    /// constant time, and an unknown name costs the same hash and compare,
    /// so timing tells neither the password nor which names exist.
    pub fn accepts(&self, username: &str, password: &str) -> bool {
        let given = sha256(password.as_bytes());
        match self.0.get(username) {
            Some(stored) => stored.ct_eq(&given).into(),
            None => {
                let _ = [0u8; 32].ct_eq(&given);
                false
            }
        }
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// How the embedded broker is started, from `[mqtt]`.
#[derive(Clone)]
pub struct Embedded {
    pub addr: SocketAddr,
    /// edgebus's frame limit: the broker's own limit sits well above it,
    /// so over-size frames reach edgebus and are counted there instead of
    /// silently disconnecting the device.
    pub max_payload_bytes: usize,
    /// The local link's client id starts with it.
    pub client_id: String,
    /// edgebus's subscriptions: their logs keep `retention_bytes`.
    pub topics: Vec<String>,
    pub credentials: Credentials,
    pub retention_bytes: usize,
    pub client_retention_bytes: usize,
    pub max_connections: usize,
    /// Refused logins are logged through its rate limiter.
    pub telemetry: Arc<Telemetry>,
}

impl Embedded {
    pub fn from_settings(settings: &Settings, addr: SocketAddr, telemetry: Arc<Telemetry>) -> Self {
        let m = &settings.mqtt;
        Self {
            addr,
            max_payload_bytes: m.max_payload_bytes,
            client_id: m.client_id.clone(),
            topics: m.topic_strings(),
            credentials: Credentials::from_settings(settings),
            retention_bytes: m.embedded_retention_bytes,
            client_retention_bytes: m.embedded_client_retention_bytes,
            max_connections: m.embedded_max_connections,
            telemetry,
        }
    }

    /// The broker's packet limit: 4 × edgebus's frame limit, so a frame
    /// somewhat over it still reaches edgebus to be counted, and at least
    /// 256 KiB. It also bounds what one connection, a retained message or
    /// one entry of a filter's log can hold (rumqttd refuses a larger
    /// packet by closing the connection).
    pub fn max_packet_bytes(&self) -> usize {
        (self.max_payload_bytes * 4).max(256 * 1024)
    }
}

/// Starts rumqttd and returns, once it accepts connections, the local link
/// that ingest reads from (its client id starts with `client_id`) and the
/// handle that stops the listener.
pub fn start_embedded(embedded: &Embedded) -> Result<(LocalLink, Listener), BrokerError> {
    let addr = embedded.addr;
    let port_taken = move |reason: String| BrokerError::PortTaken { addr, reason };
    // Held until the listener thread hands the port to rumqttd, which can
    // only bind it itself: the window in which another process could take
    // it is a few instructions on that thread.
    let held = TcpListener::bind(addr).map_err(|e| port_taken(e.to_string()))?;
    let router_tx = rumqttd::Router::new(0, router_config(embedded)).spawn();
    // Ingest's connection to the router, in process: no socket involved.
    let (tx, rx, _ack) = LinkBuilder::new(&link_client_id(&embedded.client_id), router_tx.clone())
        .build()
        .map_err(|e| BrokerError::Link(e.to_string()))?;
    let mut server = rumqttd::Server::new(server_settings(embedded), router_tx, V4);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (failed_tx, failed) = std::sync::mpsc::channel::<BrokerError>();
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = failed_tx.send(BrokerError::Thread(e));
                    return;
                }
            };
            drop(held);
            runtime.block_on(async {
                tokio::select! {
                    // It returns only when it cannot bind.
                    result = server.start(LinkType::Remote) => {
                        if let Err(e) = result {
                            let _ = failed_tx.send(port_taken(e.to_string()));
                        }
                    }
                    _ = stop_rx => {}
                }
            });
            // Dropping the runtime closes the listener and the device
            // connections it serves.
        })?;
    let deadline = Instant::now() + LISTEN_TIMEOUT;
    loop {
        if let Ok(error) = failed.try_recv() {
            return Err(error);
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            log::info!("Embedded MQTT broker listening on {addr}.");
            if embedded.credentials.is_empty() {
                log::warn!(
                    "OPEN MQTT BROKER: no mqtt.username or mqtt.credentials are configured, so \
                     anyone who can reach {addr} may read every topic and publish frames. \
                     Configure credentials before exposing the embedded broker."
                );
            }
            let listener = Listener {
                addr,
                stop: Mutex::new(Some(stop_tx)),
            };
            return Ok((LocalLink { tx, rx }, listener));
        }
        if Instant::now() >= deadline {
            let _ = stop_tx.send(());
            return Err(BrokerError::NotListening(addr));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The local link's client id: `client_id` plus a per-process random
/// suffix. The link cannot be re-established, so no device may take its
/// session over by connecting with the same id (by accident, or by copying
/// `mqtt.client_id`).
fn link_client_id(client_id: &str) -> String {
    let salt = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
    format!("{client_id}-link-{salt:016x}")
}

fn router_config(embedded: &Embedded) -> RouterConfig {
    let client = segments(embedded.client_retention_bytes, CLIENT_SEGMENTS);
    let ingest = segments(embedded.retention_bytes, INGEST_SEGMENTS);
    // rumqttd sizes a new filter's log by the first `custom_segment` key
    // the filter matches as a topic: our own filters (and any client filter
    // inside them) get the ingest retention, every other filter the small one.
    let custom = embedded
        .topics
        .iter()
        .map(|topic| (shared_stripped(topic).to_owned(), ingest.clone()))
        .collect();
    RouterConfig {
        // Our local link is a connection too.
        max_connections: embedded.max_connections + 1,
        max_outgoing_packet_count: 1_000,
        max_segment_size: client.max_segment_size,
        max_segment_count: client.max_segment_count,
        custom_segment: Some(custom),
        ..Default::default()
    }
}

fn server_settings(embedded: &Embedded) -> ServerSettings {
    let mut connections = ConnectionSettings {
        connection_timeout_ms: 5_000,
        max_payload_size: embedded.max_packet_bytes(),
        max_inflight_count: 500,
        auth: None,
        external_auth: None,
        // In rumqttd 0.20 this only matters for a publish no filter
        // matches, and `DataLog::matches` never reports "none": keep it off
        // so a future version cannot create a log per published topic.
        dynamic_filters: false,
    };
    if !embedded.credentials.is_empty() {
        let credentials = Arc::new(embedded.credentials.clone());
        let telemetry = embedded.telemetry.clone();
        connections.set_auth_handler(move |_client_id, username: String, password: String| {
            let accepted = credentials.accepts(&username, &password);
            if !accepted {
                // The name is the client's: cut and escaped, and the line
                // rate-limited, so refused logins cannot flood the log.
                telemetry.warn_limited("broker_login_refused", || {
                    let name: String = username.chars().take(64).collect();
                    format!(
                        "The embedded MQTT broker refused a login as \"{}\".",
                        name.escape_debug()
                    )
                });
            }
            std::future::ready(accepted)
        });
    }
    ServerSettings {
        name: "edgebus-v4".into(),
        listen: embedded.addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    }
}

/// `total` bytes in `count` segments, none under rumqttd's minimum.
fn segments(total: usize, count: usize) -> SegmentConfig {
    SegmentConfig {
        max_segment_size: (total / count).max(MIN_SEGMENT_BYTES),
        max_segment_count: count,
    }
}

/// rumqttd keeps a `$share/group/filter` subscription in `filter`'s log.
fn shared_stripped(topic: &str) -> &str {
    topic
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(topic, |(_, filter)| filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml: &str) -> Settings {
        Settings::from_toml(toml).unwrap()
    }

    fn embedded(toml: &str) -> Embedded {
        Embedded::from_settings(
            &settings(toml),
            "127.0.0.1:1883".parse().unwrap(),
            Arc::new(Telemetry::new()),
        )
    }

    fn hex(bytes: [u8; 32]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn the_configured_login_and_hashed_device_credentials_are_accepted() {
        let credentials = Credentials::from_settings(&settings(&format!(
            "[mqtt]\nusername = \"edgebus\"\npassword = \"own-secret\"\n\
             [[mqtt.credentials]]\nusername = \"d1\"\npassword_sha256 = \"{}\"",
            hex(sha256(b"d1-secret"))
        )));

        assert!(credentials.accepts("edgebus", "own-secret"));
        assert!(credentials.accepts("d1", "d1-secret"));
        assert!(!credentials.accepts("d1", "own-secret"));
        assert!(!credentials.accepts("edgebus", ""));
        assert!(!credentials.accepts("nobody", "d1-secret"));
        assert!(!format!("{credentials:?}").contains("secret"));
    }

    #[test]
    fn without_a_username_or_credentials_the_broker_has_no_login() {
        let e = embedded("");
        assert!(e.credentials.is_empty());
        assert!(server_settings(&e).connections.external_auth.is_none());
    }

    #[test]
    fn with_credentials_every_connect_goes_through_the_login_check() {
        let e = embedded("[mqtt]\nusername = \"u\"\npassword = \"p\"");
        assert!(server_settings(&e).connections.external_auth.is_some());
    }

    #[test]
    fn our_filters_get_the_ingest_retention_and_any_other_the_client_one() {
        let e = embedded(
            "[mqtt]\ntopics = [\"devices/+/metrics\", \"$share/g/attackers/#\"]\n\
             embedded_retention_bytes = 8388608\nembedded_client_retention_bytes = 65536\n\
             embedded_max_connections = 50",
        );

        let router = router_config(&e);

        assert_eq!(router.max_connections, 51);
        assert_eq!(
            (router.max_segment_size, router.max_segment_count),
            (32_768, CLIENT_SEGMENTS)
        );
        let custom = router.custom_segment.unwrap();
        let mut keys: Vec<_> = custom.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["attackers/#", "devices/+/metrics"]);
        let ingest = &custom["attackers/#"];
        assert_eq!(
            (ingest.max_segment_size, ingest.max_segment_count),
            (2 << 20, INGEST_SEGMENTS)
        );
    }

    #[test]
    fn a_segment_is_never_under_rumqttds_minimum() {
        assert_eq!(segments(2048, 4).max_segment_size, MIN_SEGMENT_BYTES);
    }

    #[test]
    fn the_packet_limit_sits_above_the_frame_limit() {
        assert_eq!(embedded("").max_packet_bytes(), 256 << 10);
        let big = embedded("[mqtt]\nmax_payload_bytes = 1048576");
        assert_eq!(big.max_packet_bytes(), 4 << 20);
    }

    #[test]
    fn the_link_id_is_the_client_id_plus_a_suffix_no_device_would_pick() {
        let (a, b) = (link_client_id("edgebus"), link_client_id("edgebus"));
        assert!(a.starts_with("edgebus-link-") && a.len() == "edgebus-link-".len() + 16);
        assert_ne!(a, b, "not guessable from the configured id");
    }
}
