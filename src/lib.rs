//! # edgebus: the service shell
//!
//! Settings, the embedded broker, the HTTP surface and the wiring of the
//! actors from [`edgebus_actors`] (re-exported as [`actors`]).

pub mod auth;
pub mod broker;
pub mod cis490;
pub mod cluster_store;
pub mod edgewatch;
pub mod error;
pub mod host_health;
pub mod http;
pub mod import;
pub mod redis_link;
pub mod securetea;
pub mod settings;
pub mod simulate;
pub mod startup;
pub mod stream_slots;
pub mod telemetry;
pub mod uploads;
pub mod wiring;

pub use edgebus_actors as actors;
