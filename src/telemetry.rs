//! Logging set-up. Metrics live in `edgebus_actors::telemetry`.

/// Default filter: INFO for edgebus, and rumqttd silenced. rumqttd emits a
/// `tracing` span per connection and per publish, which the `log` bridge turns
/// into ERROR lines (floods, not errors). `RUST_LOG` overrides all of it.
pub const DEFAULT_LOG_FILTER: &str = "info,rumqttd=off,tracing::span=off";

pub fn init_logging() {
    let env = env_logger::Env::default().default_filter_or(DEFAULT_LOG_FILTER);
    let _ = env_logger::Builder::from_env(env).try_init();
}
