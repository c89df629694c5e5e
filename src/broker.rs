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

use std::hash::BuildHasher;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use edgebus_actors::ingest::LocalLink;
use rumqttd::local::LinkBuilder;
use rumqttd::protocol::v4::V4;
use rumqttd::{ConnectionSettings, LinkType, RouterConfig, ServerSettings};
use tokio::sync::oneshot;

/// How long start-up waits for the embedded broker to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Retention of the broker's per-filter commit log. A subscriber that falls
/// further behind than this silently loses messages (rumqttd never slows a
/// publisher), so it is sized for bursts far beyond the benchmarked rate:
/// 16 MiB × 8 ≈ 0.5 M metrics frames. Memory is used only while lagging.
const SEGMENT_BYTES: usize = 16 * 1024 * 1024;
const SEGMENT_COUNT: usize = 8;

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

/// Starts rumqttd on `addr` and returns, once it accepts connections, the
/// local link that ingest reads from (its client id starts with
/// `client_id`) and the handle that stops the listener.
/// `max_payload_bytes` is edgebus's frame limit: the broker's own limit sits
/// well above it, so over-size frames reach edgebus and are counted there
/// instead of silently disconnecting the device.
pub fn start_embedded(
    addr: SocketAddr,
    max_payload_bytes: usize,
    client_id: &str,
) -> Result<(LocalLink, Listener), BrokerError> {
    let port_taken = move |reason: String| BrokerError::PortTaken { addr, reason };
    // Held until the listener thread hands the port to rumqttd, which can
    // only bind it itself: the window in which another process could take
    // it is a few instructions on that thread.
    let held = TcpListener::bind(addr).map_err(|e| port_taken(e.to_string()))?;
    let router_tx = rumqttd::Router::new(0, router_config()).spawn();
    // Ingest's connection to the router, in process: no socket involved.
    let (tx, rx, _ack) = LinkBuilder::new(&link_client_id(client_id), router_tx.clone())
        .build()
        .map_err(|e| BrokerError::Link(e.to_string()))?;
    let mut server = rumqttd::Server::new(server_settings(addr, max_payload_bytes), router_tx, V4);
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

fn router_config() -> RouterConfig {
    RouterConfig {
        max_connections: 100_000,
        max_outgoing_packet_count: 1_000,
        max_segment_size: SEGMENT_BYTES,
        max_segment_count: SEGMENT_COUNT,
        ..Default::default()
    }
}

fn server_settings(addr: SocketAddr, max_payload_bytes: usize) -> ServerSettings {
    let connections = ConnectionSettings {
        connection_timeout_ms: 5_000,
        max_payload_size: (max_payload_bytes * 4).max(1024 * 1024),
        max_inflight_count: 500,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    ServerSettings {
        name: "edgebus-v4".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    }
}

#[cfg(test)]
mod tests {
    use super::link_client_id;

    #[test]
    fn the_link_id_is_the_client_id_plus_a_suffix_no_device_would_pick() {
        let (a, b) = (link_client_id("edgebus"), link_client_id("edgebus"));
        assert!(a.starts_with("edgebus-link-") && a.len() == "edgebus-link-".len() + 16);
        assert_ne!(a, b, "not guessable from the configured id");
    }
}
