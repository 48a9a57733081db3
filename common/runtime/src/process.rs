//! What every slotq process does the same way: connect to PostgreSQL and Redis, apply
//! migrations, and the `main` of the background services (configuration, logs, subcommands,
//! SIGTERM).

use anyhow::Context;
use redis::aio::ConnectionManager;
use sqlx::PgPool;

use crate::config::{Config, EXIT_CONFIG, Role};
use crate::shutdown::{self, Shutdown};

/// Opens a pool of at most `max_connections` (applying migrations when `AUTO_MIGRATE=1`) and
/// the Redis connection.
pub async fn connect(
    config: &Config,
    max_connections: u32,
) -> anyhow::Result<(PgPool, ConnectionManager)> {
    let pool = slotq_store::connect(&config.database_url, max_connections)
        .await
        .context("connecting to PostgreSQL")?;
    if config.auto_migrate {
        slotq_store::migrate(&pool)
            .await
            .context("applying migrations")?;
    }
    let redis = slotq_redis::connect(&config.redis_url)
        .await
        .context("connecting to Redis")?;
    Ok((pool, redis))
}

/// What a background service (workers, scheduler) starts with: its connections, its metrics
/// registry, and its admin listener (`/metrics`, `/healthz`, `/readyz` on `ADMIN_ADDR`) until
/// `shutdown`. `on_admin` gets the bound address.
pub struct Started {
    /// PostgreSQL pool.
    pub pool: PgPool,
    /// Redis connection.
    pub redis: ConnectionManager,
    /// The process's metrics (served by the admin listener).
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Problems that make `/readyz` answer 503, reported by the process's components.
    pub readiness: crate::admin::Readiness,
}

/// Connects (see [`connect`]), creates the metrics registry of `component` and binds the admin
/// listener.
pub async fn start(
    config: &Config,
    component: crate::metrics::Component,
    max_connections: u32,
    shutdown: &Shutdown,
    on_admin: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<Started> {
    let (pool, redis) = connect(config, max_connections).await?;
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::for_component(component));
    let readiness = crate::admin::Readiness::default();
    let addr = crate::admin::serve(
        config.admin_addr,
        crate::admin::AdminState {
            metrics: metrics.clone(),
            readiness: readiness.clone(),
            pool: pool.clone(),
            redis: redis.clone(),
        },
        shutdown.clone().wait(),
    )
    .await
    .context("binding ADMIN_ADDR")?;
    on_admin(addr);
    Ok(Started {
        pool,
        redis,
        metrics,
        readiness,
    })
}

/// The `migrate` subcommand: applies migrations, then encrypts patient data written before
/// encryption existed or under a retired key.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let pool = slotq_store::connect(&config.database_url, 2)
        .await
        .context("connecting to PostgreSQL")?;
    slotq_store::migrate(&pool)
        .await
        .context("applying migrations")?;
    if let Some(keys) = &config.pii {
        slotq_store::directory::encrypt_patients_at_rest(&pool, keys)
            .await
            .context("encrypting patient data")?;
    }
    tracing::info!("migrations applied");
    Ok(())
}

/// With `--help`, `-h` or `help` as the first argument: prints `usage` and exits 0 (before any
/// configuration is read, so it works without one).
pub fn help_if_asked(usage: &str) {
    if matches!(
        std::env::args().nth(1).as_deref(),
        Some("--help" | "-h" | "help")
    ) {
        println!("{}", usage.trim_end());
        std::process::exit(0);
    }
}

/// `main` of a background service: `<name> [run|migrate|--help]`. Bad configuration exits 64;
/// SIGTERM or Ctrl-C fires the [`Shutdown`] given to `run` and logs `stopping`. `about` says
/// what `run` does, for `--help`.
pub async fn service_main<F, Fut>(
    role: Role,
    name: &str,
    about: &str,
    stopping: &'static str,
    run: F,
) where
    F: FnOnce(Config, Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    help_if_asked(&format!(
        "usage: {name} [run|migrate]\n\n  run      (default) {about}\n  migrate  apply the database migrations and exit\n\nConfigured by environment variables (README: Configuration): DATABASE_URL, REDIS_URL,\nADMIN_ADDR, ... Exit status 64 for a configuration error."
    ));
    let config = match Config::from_env(role) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    crate::telemetry::init(config.log_format);
    let result = match std::env::args().nth(1).as_deref() {
        None | Some("run") => {
            let (trigger, stop) = shutdown::channel();
            tokio::spawn(async move {
                shutdown::signal().await;
                tracing::info!("{stopping}");
                trigger.fire();
            });
            run(config, stop).await
        }
        Some("migrate") => migrate(&config).await,
        Some(other) => {
            eprintln!("{name}: unknown command {other:?}; expected run or migrate");
            std::process::exit(EXIT_CONFIG);
        }
    };
    if let Err(e) = result {
        tracing::error!(error = ?e, "{name} failed");
        std::process::exit(1);
    }
}
