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

/// What every binary's `--help` ends with.
pub const CONFIGURED_BY: &str = "Configured by environment variables (README: Configuration): DATABASE_URL, REDIS_URL,\nADMIN_ADDR, ... Exit status 64 for a configuration error.";

/// Parses the command line with clap, before any configuration is read (so `--help` works
/// without one): `--help`, `-h` and `help` print the usage and exit 0; a command line clap
/// refuses is reported and exits 64, like bad configuration.
pub fn parse_args(command: clap::Command) -> clap::ArgMatches {
    const TEMPLATE: &str = "usage: {usage}\n\n{about}\n\n{all-args}{after-help}";
    let command = command
        .help_template(TEMPLATE)
        .after_help(CONFIGURED_BY)
        .mut_subcommands(|c| c.help_template(TEMPLATE));
    match command.try_get_matches() {
        Ok(m) => m,
        Err(e) => {
            use clap::error::ErrorKind;
            let _ = e.print();
            let help = matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion);
            std::process::exit(if help { 0 } else { EXIT_CONFIG });
        }
    }
}

/// `main` of a background service: `<name> [run|migrate|help]`. Bad configuration exits 64;
/// SIGTERM or Ctrl-C fires the [`Shutdown`] given to `run` and logs `stopping`. `about` says
/// what `run` does, for `--help`.
pub async fn service_main<F, Fut>(
    role: Role,
    name: &'static str,
    about: &'static str,
    stopping: &'static str,
    run: F,
) where
    F: FnOnce(Config, Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let args = parse_args(
        clap::Command::new(name)
            .about(about)
            .override_usage(format!("{name} [run|migrate]"))
            .subcommand(clap::Command::new("run").about(format!("(default) {about}")))
            .subcommand(
                clap::Command::new("migrate").about("apply the database migrations and exit"),
            ),
    );
    let config = match Config::from_env(role) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    crate::telemetry::init(config.log_format);
    let result = match args.subcommand_name() {
        None | Some("run") => {
            let (trigger, stop) = shutdown::channel();
            tokio::spawn(async move {
                shutdown::signal().await;
                tracing::info!("{stopping}");
                trigger.fire();
            });
            run(config, stop).await
        }
        // clap accepts no other subcommand.
        Some(_) => migrate(&config).await,
    };
    if let Err(e) = result {
        tracing::error!(error = ?e, "{name} failed");
        std::process::exit(1);
    }
}
