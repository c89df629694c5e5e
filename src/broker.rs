//! The embedded MQTT broker (rumqttd), for the default setup: `cargo run`
//! works with nothing else installed.
//!
//! rumqttd's `Broker::start()` blocks its thread forever, has no shutdown,
//! cannot report an ephemeral port and only *logs* a port already in use. So
//! the port is checked here first, the broker runs on its own thread, and
//! start-up waits until the port accepts connections.
//!
//! Ingest does not connect to it over TCP: before the broker starts, it
//! takes an in-process local link from the router ([`LocalLink`]), so our
//! subscription's publishes are handed over as `Bytes` instead of being
//! encoded by the broker's network thread and decoded again by rumqttc.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use edgebus_actors::ingest::LocalLink;
use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};

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

/// Starts rumqttd on `addr` and returns, once it accepts connections, the
/// local link that ingest reads from (its client id starts with
/// `client_id`).
/// `max_payload_bytes` is edgebus's frame limit: the broker's own limit sits
/// well above it, so over-size frames reach edgebus and are counted there
/// instead of silently disconnecting the device.
pub fn start_embedded(
    addr: SocketAddr,
    max_payload_bytes: usize,
    client_id: &str,
) -> Result<LocalLink, BrokerError> {
    TcpListener::bind(addr).map_err(|e| BrokerError::PortTaken {
        addr,
        reason: e.to_string(),
    })?;
    let config = broker_config(addr, max_payload_bytes);
    // `new` starts the router thread; the link must be taken before
    // `start()`, which blocks its thread for good.
    let mut broker = rumqttd::Broker::new(config);
    let (tx, rx) = broker
        .link(&link_client_id(client_id))
        .map_err(|e| BrokerError::Link(e.to_string()))?;
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            if let Err(error) = broker.start() {
                log::error!("The embedded MQTT broker stopped: {error}.");
            }
        })?;
    let deadline = Instant::now() + LISTEN_TIMEOUT;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            log::info!("Embedded MQTT broker listening on {addr}.");
            return Ok(LocalLink { tx, rx });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(BrokerError::NotListening(addr))
}

/// The local link's client id: `client_id` plus a per-process random
/// suffix. The link cannot be re-established, so no device may take its
/// session over by connecting with the same id (by accident, or by copying
/// `mqtt.client_id`).
fn link_client_id(client_id: &str) -> String {
    let salt = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
    format!("{client_id}-link-{salt:016x}")
}

fn broker_config(addr: SocketAddr, max_payload_bytes: usize) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: 5_000,
        max_payload_size: (max_payload_bytes * 4).max(1024 * 1024),
        max_inflight_count: 500,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "edgebus-v4".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 100_000,
            max_outgoing_packet_count: 1_000,
            max_segment_size: SEGMENT_BYTES,
            max_segment_count: SEGMENT_COUNT,
            ..Default::default()
        },
        v4: Some(HashMap::from([("1".to_owned(), server)])),
        ..Default::default()
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
