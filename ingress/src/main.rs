//! `slotq-ingress [serve|migrate]`.

use slotq_common::config::{Config, EXIT_CONFIG, Role};

#[tokio::main]
async fn main() {
    let config = match Config::from_env(Role::Ingress) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("slotq-ingress: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    slotq_common::telemetry::init(config.log_format);
    let command = std::env::args().nth(1).unwrap_or_else(|| "serve".into());
    let result = match command.as_str() {
        "serve" => run(config).await,
        "migrate" => migrate(&config).await,
        other => {
            eprintln!("slotq-ingress: unknown command {other:?}; expected serve or migrate");
            std::process::exit(EXIT_CONFIG);
        }
    };
    if let Err(e) = result {
        tracing::error!(error = ?e, "slotq-ingress failed");
        std::process::exit(1);
    }
}

async fn migrate(config: &Config) -> anyhow::Result<()> {
    let pool = slotq_common::db::connect(&config.database_url, 2).await?;
    slotq_common::db::migrate(&pool).await?;
    tracing::info!("migrations applied");
    Ok(())
}

async fn run(config: Config) -> anyhow::Result<()> {
    let (trigger, shutdown) = slotq_common::shutdown::channel();
    let listener = tokio::net::TcpListener::bind(config.http_addr).await?;
    let state = slotq_ingress::AppState::connect(config, shutdown).await?;
    let running = slotq_ingress::serve(listener, state).await?;
    tracing::info!(addr = %running.addr, "slotq-ingress listening");
    slotq_common::shutdown::signal().await;
    tracing::info!("shutting down: finishing in-flight requests");
    trigger.fire();
    running.handle.await??;
    Ok(())
}
