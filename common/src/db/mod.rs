//! PostgreSQL access. All SQL of slotq lives under this module, one file per table family.
//!
//! Queries are checked at run time (`sqlx::query`), not with the `query!` macros: the batch
//! statements bind arrays through `unnest`, and keeping the build free of a live database or
//! an offline `.sqlx/` cache matters more here than compile-time checking; every query is
//! exercised by the integration tests instead.

pub mod bookings;
pub mod conflicts;
pub mod directory;
pub mod events;
pub mod holds;
pub mod outbox;
pub mod payments;
pub mod requests;
pub mod webhooks;

use std::time::Duration;

use sqlx::{PgPool, postgres::PgPoolOptions};

/// The embedded migrations of `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Opens a pool of at most `max` connections.
///
/// Sessions plan every execution of a prepared statement with its actual parameters
/// (`plan_cache_mode = force_custom_plan`, unless the URL sets `plan_cache_mode` itself).
/// PostgreSQL's default switches a statement to a cached generic plan after five runs, chosen
/// with the table sizes of that moment; the batch statements kept plans made for a small
/// `bookings` while it grew, and after the `mixed` load scenario a throughput round decided
/// 4,177 requests/s instead of 6,861 with custom plans (loadtest/README.md, change 9).
pub async fn connect(url: &str, max: u32) -> Result<PgPool, sqlx::Error> {
    let mut options: sqlx::postgres::PgConnectOptions = url.parse()?;
    if !url.contains("plan_cache_mode") {
        options = options.options([("plan_cache_mode", "force_custom_plan")]);
    }
    PgPoolOptions::new()
        .max_connections(max)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
}

/// Applies pending migrations (safe to run concurrently: sqlx takes an advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Whether an error is worth retrying: lost connections, pool exhaustion, deadlocks,
/// serialization failures and a server shutting down. Constraint violations and bad SQL are not.
pub fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => matches!(
            db.code().as_deref(),
            Some(
                "40001"
                    | "40P01"
                    | "55P03"
                    | "57P01"
                    | "57P02"
                    | "57P03"
                    | "53300"
                    | "08000"
                    | "08003"
                    | "08006"
            )
        ),
        _ => false,
    }
}

/// Whether an error is a unique-constraint violation.
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}
