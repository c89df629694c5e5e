//! Logging set-up. Metrics live in `edgebus_actors::telemetry`.

use log::LevelFilter;

/// rumqttd emits a `tracing` span per connection and per publish, which the
/// `log` bridge turns into ERROR lines: one per frame, a flood that halves
/// throughput. They are off by default *beneath* `RUST_LOG`, so
/// `RUST_LOG=warn` sets the level without bringing them back; naming the
/// target (`RUST_LOG=info,rumqttd=warn`) still shows them.
pub const QUIET_TARGETS: [&str; 2] = ["rumqttd", "tracing::span"];

/// `instance`: cluster mode's `cluster.instance_id`, written on every line
/// so the logs of several instances can be merged and still told apart.
pub fn init_logging(instance: Option<&str>) {
    let mut builder = env_logger::Builder::new();
    if let Some(instance) = instance {
        let instance = instance.to_owned();
        builder.format(move |buf, record| {
            use std::io::Write as _;
            writeln!(
                buf,
                "[{} {:<5} {instance} {}] {}",
                buf.timestamp(),
                record.level(),
                record.target(),
                record.args()
            )
        });
    }
    builder.filter_level(LevelFilter::Info);
    for target in QUIET_TARGETS {
        builder.filter_module(target, LevelFilter::Off);
    }
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    let _ = builder.try_init();
}
