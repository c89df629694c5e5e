//! `edgebus [--config PATH]`: runs the service until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use edgebus::settings::{Settings, SettingsSources, DEFAULT_TOML};
use edgebus::startup::Application;

#[derive(Parser)]
#[command(
    version,
    about = "Real-time event bus for device fleets and security tooling."
)]
struct Cli {
    /// A TOML file applied over the built-in defaults.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Print the built-in default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
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
    edgebus::telemetry::init_logging();
    let settings = Settings::load(SettingsSources {
        file: cli.config,
        ..Default::default()
    })?;
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build(settings).await?;
        app.run_until_stopped().await
    })
}
