//! The HTTP surface: one module per endpoint family, wired in [`configure`].

mod body;
pub mod cors;
mod dashboard;
mod decnet;
mod devices;
mod health;
mod host_health;
pub mod idempotency;
mod metrics;
mod publish;
pub mod securetea;
mod sse;
pub mod streams;
mod tickets;
mod uploads;
pub(crate) mod ws;

use std::sync::Arc;

use actix::Addr;
use actix_web::web;

use edgebus_actors::bus::Bus;
use edgebus_actors::cluster::{ClusterHealth, StreamWriter};
use edgebus_actors::ingest::nats::NatsIngest;
use edgebus_actors::ingest::Ingest;
use edgebus_actors::registry::Registry;
use edgebus_actors::telemetry::Telemetry;

use crate::auth::Auth;
use crate::settings::Settings;

/// What every handler may reach: actor addresses, metrics, settings, auth.
use edgebus_actors::bus::QueueLimits;

pub struct AppState {
    pub bus: Addr<Bus>,
    pub registry: Addr<Registry>,
    pub ingest: Addr<Ingest>,
    /// The NATS source, when `nats.url` is set.
    pub nats: Option<Addr<NatsIngest>>,
    pub telemetry: Arc<Telemetry>,
    pub settings: Arc<Settings>,
    /// Every session queue's bounds, the pool they share and each owner's
    /// allowance from it.
    pub queues: edgebus_actors::bus::QueueBudget,
    pub auth: Arc<Auth>,
    /// `Idempotency-Key`s: in process, or in Redis in cluster mode.
    pub idempotency: idempotency::IdempotencyStore,
    /// Host-health reports (on disk, or in Redis in cluster mode), and the
    /// bounds on them.
    pub host_health: Arc<crate::host_health::HostHealthStore>,
    /// Fleet uploads (`None` when `uploads.enabled = false`).
    pub uploads: Option<Arc<crate::uploads::Uploads>>,
    /// `Some` when `uploads.version_gate.enabled`.
    pub version_gate: Option<Arc<crate::uploads::gate::VersionGate>>,
    /// Cluster mode: the stream writer publishes go to, and the health
    /// `/readyz` reports.
    pub cluster: Option<ClusterState>,
}

pub struct ClusterState {
    pub writer: StreamWriter,
    pub health: Arc<ClusterHealth>,
    /// `sessions.max_streams_per_identity`, counted across the cluster.
    pub streams: crate::stream_slots::ClusterStreamSlots,
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        // The CIS490 receiver's name for the same liveness probe.
        .route("/v1/health", web::get().to(health::healthz))
        .route("/metrics", web::get().to(metrics::metrics))
        .route("/v1/ping", web::post().to(tickets::ping))
        .route("/v1/auth/ticket", web::post().to(tickets::ticket))
        .route("/v1/devices", web::get().to(devices::list))
        .route("/v1/devices/{id}", web::get().to(devices::get))
        .route("/v1/devices/{id}/events", web::get().to(sse::device_events))
        .route(
            "/v1/attackers/{uuid}/events",
            web::get().to(sse::attacker_events),
        )
        .route("/v1/events", web::get().to(sse::events))
        .route("/v1/publish/{topic:.+}", web::post().to(publish::publish))
        .route("/v1/notifications", web::post().to(publish::notify))
        .route("/v1/ws", web::get().to(ws::ws))
        .route("/notifs", web::get().to(securetea::notifs))
        .route("/auth/sse-ticket", web::post().to(decnet::sse_ticket))
        .route(
            "/api/v1/auth/sse-ticket",
            web::post().to(decnet::sse_ticket),
        )
        .route(
            "/api/v1/attackers/{uuid}/events",
            web::get().to(decnet::attacker_events),
        )
        .route("/", web::get().to(dashboard::index))
        .route("/assets/config.json", web::get().to(dashboard::config))
        .route("/assets/{file:.*}", web::get().to(dashboard::asset))
        .route("/v1/host-health", web::get().to(host_health::list))
        .route("/v1/host-health/{host}", web::put().to(host_health::put))
        .route("/v1/episodes/{host}/{file}", web::put().to(uploads::put));
}

/// For every accepted connection of a listener that streams: a client that
/// stops reading keeps a streaming connection open for as long as it likes,
/// since actix-web has no write timeout. The kernel gives up on a
/// connection whose sent data stays unacknowledged for `timeout`
/// (zero-window probes included), and with it go the connection's buffers
/// and the session's last chunk.
pub fn unacked_timeout(
    timeout: std::time::Duration,
) -> impl Fn(&dyn std::any::Any, &mut actix_web::dev::Extensions) + Send + Sync + 'static {
    move |conn, _| {
        if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
            let _ = socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(timeout));
        }
    }
}

/// The queue bounds of a stream held by `permit`: its owner's allowance.
pub fn queue_limits(state: &AppState, permit: &crate::stream_slots::StreamHold) -> QueueLimits {
    match permit.owner() {
        Some(owner) => state.queues.for_owner(owner),
        None => state.queues.base(),
    }
}
