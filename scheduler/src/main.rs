//! `slotq-scheduler [run|migrate]`.

use slotq_common::config::{Config, EXIT_CONFIG, Role};

#[tokio::main]
async fn main() {
    let config = match Config::from_env(Role::Scheduler) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("slotq-scheduler: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    slotq_common::telemetry::init(config.log_format);
    let result = match std::env::args().nth(1).as_deref() {
        None | Some("run") => {
            let (trigger, shutdown) = slotq_common::shutdown::channel();
            tokio::spawn(async move {
                slotq_common::shutdown::signal().await;
                tracing::info!("shutting down after the current sweep");
                trigger.fire();
            });
            slotq_scheduler::run(
                config,
                shutdown,
                |addr| tracing::info!(%addr, "admin listening"),
            )
            .await
        }
        Some("migrate") => {
            async {
                let pool = slotq_common::db::connect(&config.database_url, 2).await?;
                slotq_common::db::migrate(&pool).await?;
                Ok(())
            }
            .await
        }
        Some(other) => {
            eprintln!("slotq-scheduler: unknown command {other:?}; expected run or migrate");
            std::process::exit(EXIT_CONFIG);
        }
    };
    if let Err(e) = result {
        tracing::error!(error = ?e, "slotq-scheduler failed");
        std::process::exit(1);
    }
}
