//! The HTTP surface: one module per endpoint family, wired in [`configure`].

mod devices;
mod health;
mod host_health;
mod metrics;
mod ws;

use std::sync::Arc;

use actix::Addr;
use actix_web::web;

use edgebus_actors::bus::Bus;
use edgebus_actors::ingest::Ingest;
use edgebus_actors::registry::Registry;
use edgebus_actors::telemetry::Telemetry;

use crate::settings::Settings;

/// What every handler may reach: actor addresses, metrics, settings.
pub struct AppState {
    pub bus: Addr<Bus>,
    pub registry: Addr<Registry>,
    pub ingest: Addr<Ingest>,
    pub telemetry: Arc<Telemetry>,
    pub settings: Arc<Settings>,
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/metrics", web::get().to(metrics::metrics))
        .route("/v1/devices", web::get().to(devices::list))
        .route("/v1/devices/{id}", web::get().to(devices::get))
        .route("/v1/ws", web::get().to(ws::ws))
        // Not yet behind API keys (issue 3 adds them: publisher for PUT,
        // viewer for GET).
        .route("/v1/host-health", web::get().to(host_health::list))
        .route("/v1/host-health/{host}", web::put().to(host_health::put));
}
