//! `edgebus [--config PATH]`: runs the service until SIGTERM/SIGINT.
//! `edgebus demo`: the service plus a simulated fleet feeding its dashboard.
//! `edgebus simulate --url mqtt://…`: the simulated fleet alone, for any broker.
//! `edgebus import edgewatch [--env-file PATH]`: the EdgeWatch bridge's
//! settings as edgebus TOML, on stdout.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use edgebus::settings::{BrokerUrl, Settings, SettingsSources, DEFAULT_TOML};
use edgebus::simulate::{self, FleetConfig, SimulateConfig};
use edgebus::startup::Application;

// jemalloc: frames are allocated on the ingest thread and freed on the bus
// and HTTP threads; glibc malloc handles that cross-thread pattern poorly
// (single client at 200k frames/s offered: 71k/s delivered with glibc,
// 119k/s with jemalloc; docs/benchmarks.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    version,
    about = "Real-time event bus for device fleets and security tooling."
)]
struct Cli {
    /// A TOML file applied over the built-in defaults.
    #[arg(long, value_name = "PATH", global = true)]
    config: Option<PathBuf>,
    /// Print the built-in default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run edgebus (embedded defaults, or --config) with a simulated fleet
    /// publishing to its broker, and print the dashboard's URL.
    Demo(FleetArgs),
    /// Publish a simulated fleet to any MQTT broker (edgebus's, or another).
    Simulate {
        /// The broker to publish to.
        #[arg(
            long,
            value_name = "mqtt://HOST[:PORT]",
            default_value = "mqtt://127.0.0.1:1883"
        )]
        url: String,
        /// Stop after this many seconds (default: run until interrupted).
        #[arg(long, value_name = "SECONDS")]
        duration: Option<f64>,
        /// Log in to the broker as this user, with the password in the
        /// environment variable EDGEBUS_SIMULATE_PASSWORD.
        #[arg(long, value_name = "USER")]
        username: Option<String>,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Print the edgebus configuration equivalent to a seed system's
    /// settings (TOML, on stdout), for `--config`.
    Import {
        #[command(subcommand)]
        from: ImportFrom,
    },
}

#[derive(Subcommand)]
enum ImportFrom {
    /// The EdgeWatch bridge: its variables from the environment, over its
    /// `.env` file, read as its pydantic settings read them.
    Edgewatch {
        /// The bridge's .env file (default: ./.env, when there is one).
        #[arg(long, value_name = "PATH")]
        env_file: Option<PathBuf>,
    },
}

#[derive(Args, Clone)]
struct FleetArgs {
    /// Devices in the fleet (one of them goes silent, one sends bad frames).
    #[arg(long, default_value_t = 36)]
    devices: usize,
    /// Metrics frames per second across the fleet (default: one per device).
    #[arg(long)]
    rate: Option<f64>,
    /// Attackers publishing observations, scores and fingerprint rotations.
    #[arg(long, default_value_t = 3)]
    attackers: usize,
    /// Seed of the simulation: the same seed replays the same fleet.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Seconds before the silent device stops publishing.
    #[arg(long, default_value_t = 20)]
    silent_after: u64,
}

impl FleetArgs {
    fn config(
        &self,
        host: String,
        port: u16,
        duration: Option<Duration>,
        login: Option<(String, String)>,
    ) -> SimulateConfig {
        SimulateConfig {
            host,
            port,
            fleet: FleetConfig {
                devices: self.devices,
                attackers: self.attackers,
                seed: self.seed,
                silent_after: Duration::from_secs(self.silent_after),
                ..FleetConfig::default()
            },
            rate: self.rate.unwrap_or(self.devices.max(1) as f64),
            duration,
            login,
        }
    }
}

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("edgebus: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn try_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.print_default_config {
        print!("{DEFAULT_TOML}");
        return Ok(());
    }
    // rustls panics at first use if more than one crypto provider is compiled
    // in and none was chosen; choose one before anything connects.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // Logging starts once the settings are read (a bad setting is one line
    // on stderr anyway), so every line of a cluster instance names it.
    let load = |file: Option<PathBuf>| {
        let settings = Settings::load(SettingsSources {
            file,
            ..Default::default()
        });
        let instance = settings
            .as_ref()
            .ok()
            .and_then(|s| s.cluster.as_ref())
            .map(|c| c.instance_id.as_str());
        edgebus::telemetry::init_logging(instance);
        settings
    };
    match cli.command {
        Some(Command::Import {
            from: ImportFrom::Edgewatch { env_file },
        }) => {
            use edgebus::import::edgewatch;
            // Names and values that are not UTF-8 are none of the bridge's.
            let env = std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
            let vars =
                edgewatch::read_vars(env_file.as_deref(), env).with_context(
                    || match &env_file {
                        Some(path) => format!("`--env-file`: cannot read {}", path.display()),
                        None => "cannot read ./.env".to_owned(),
                    },
                )?;
            print!("{}", edgewatch::to_toml(&vars)?);
            Ok(())
        }
        None => {
            let settings = load(cli.config)?;
            actix_web::rt::System::new().block_on(async move {
                let app = Application::build(settings).await?;
                app.run_until_stopped().await
            })
        }
        Some(Command::Demo(fleet)) => {
            let settings = load(cli.config)?;
            actix_web::rt::System::new().block_on(demo(settings, fleet))
        }
        Some(Command::Simulate {
            url,
            duration,
            username,
            fleet,
        }) => {
            edgebus::telemetry::init_logging(None);
            let broker =
                BrokerUrl::parse(&url).map_err(|rule| anyhow::anyhow!("`--url`: {rule}"))?;
            anyhow::ensure!(!broker.tls, "`--url`: the simulator speaks plain mqtt://");
            let duration = duration
                .map(Duration::try_from_secs_f64)
                .transpose()
                .map_err(|_| anyhow::anyhow!("`--duration` must be a number of seconds"))?;
            let login = username.map(|user| {
                let password = std::env::var("EDGEBUS_SIMULATE_PASSWORD").unwrap_or_default();
                (user, password)
            });
            let config = fleet.config(broker.host, broker.port, duration, login);
            let rate = config.rate;
            eprintln!(
                "Simulating {} devices and {} attackers at {rate} frames/s on {url} (seed {}).",
                fleet.devices, fleet.attackers, fleet.seed
            );
            let report = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(simulate::run(config))?;
            eprintln!(
                "Published {} metrics frames and {} other messages.",
                report.frames, report.other
            );
            Ok(())
        }
    }
}

async fn demo(settings: Settings, fleet: FleetArgs) -> anyhow::Result<()> {
    let app = Application::build(settings.clone()).await?;
    let mqtt = app.mqtt().clone();
    let host = if settings.http.bind.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        settings.http.bind_host()
    };
    // The demo's devices log in as edgebus's own `mqtt.username`, which
    // the embedded broker accepts.
    let m = &settings.mqtt;
    let login =
        (!m.username.is_empty()).then(|| (m.username.clone(), m.password.expose().to_owned()));
    let config = fleet.config(mqtt.host.clone(), mqtt.port, None, login);
    println!(
        "edgebus demo: {} simulated devices and {} attackers on mqtt://{}:{}{}.",
        fleet.devices,
        fleet.attackers,
        mqtt.host,
        mqtt.port,
        if mqtt.embedded {
            " (embedded broker)"
        } else {
            ""
        }
    );
    println!("Dashboard: http://{host}:{}/", app.port());
    let simulator = actix_web::rt::spawn(async move {
        if let Err(error) = simulate::run(config).await {
            log::error!("The demo fleet stopped: {error}.");
        }
    });
    let result = app.run_until_stopped().await;
    simulator.abort();
    result
}
