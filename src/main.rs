//! `troupe`: settings -> telemetry -> Application::build -> run.

use std::path::PathBuf;

use clap::Parser;
use troupe::settings::{Settings, Sources};
use troupe::startup::Application;

/// An actor-based ledger service.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Address to listen on (server.bind).
    #[arg(long)]
    bind: Option<String>,
    /// Port to listen on (server.port); 0 picks a free one.
    #[arg(long)]
    port: Option<u16>,
    /// Directory of the embedded store (store.path).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Directory holding default.toml and the per-environment files.
    #[arg(long, env = "TROUPE_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    /// Environment: development, staging or production.
    #[arg(long, env = "TROUPE_ENV")]
    env: Option<String>,
}

impl Cli {
    fn sources(&self) -> Sources {
        let mut overrides = Vec::new();
        if let Some(bind) = &self.bind {
            overrides.push(("server.bind".into(), bind.clone()));
        }
        if let Some(port) = self.port {
            overrides.push(("server.port".into(), port.to_string()));
        }
        if let Some(dir) = &self.data_dir {
            overrides.push(("store.path".into(), dir.display().to_string()));
        }
        Sources {
            config_dir: self.config_dir.clone(),
            env: self.env.clone(),
            overrides,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(&cli.sources())?;
    // Before the actix system: the OTLP exporter gets its own small runtime.
    let telemetry = troupe::telemetry::init(&settings)?;
    let result = actix_web::rt::System::new().block_on(serve(settings));
    telemetry.shutdown();
    result
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let app = Application::build(settings).await?;
    tracing::info!(port = app.port(), "troupe listening");
    app.run_until_stopped().await
}
