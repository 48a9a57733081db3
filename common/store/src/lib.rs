//! PostgreSQL access. All SQL of slotq lives under this module, one file per table family.
//!
//! Queries are checked at run time (`sqlx::query`), not with the `query!` macros: the batch
//! statements bind arrays through `unnest`, and keeping the build free of a live database or
//! an offline `.sqlx/` cache matters more here than compile-time checking; every query is
//! exercised by the integration tests instead.
//!
//! A query for active bookings that does not name the country writes
//! `status::text IN ('held', 'confirmed')`: the partial unique indexes of `bookings` carry the
//! predicate `status IN ('held', 'confirmed')` and lead with the country, and with statistics
//! that call the table small PostgreSQL answered such a query with a full scan of one of them
//! (see `holds::INSERT_HOLDS`). The cast keeps them out; the query probes an index that leads
//! with the patient or the practitioner instead.

pub mod bookings;
pub mod conflicts;
pub mod directory;
pub mod events;
pub mod holds;
pub mod lookup;
pub mod outbox;
pub mod payments;
pub mod requests;
pub mod webhooks;

use std::time::Duration;

use sqlx::{PgPool, postgres::PgPoolOptions};

/// The embedded migrations of `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Opens a pool of at most `max` connections.
///
/// Sessions plan every execution of a prepared statement with its actual parameters
/// (`plan_cache_mode = force_custom_plan`, unless the URL sets `plan_cache_mode` itself).
/// PostgreSQL's default switches a statement to a cached generic plan after five runs, chosen
/// with the table sizes of that moment; the batch statements kept plans made for a small
/// `bookings` while it grew, and after the `mixed` load scenario a throughput round decided
/// 4,177 requests/s instead of 6,861 with custom plans.
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
        sqlx::Error::Database(_) if is_conflict_abort(err) => true,
        sqlx::Error::Database(db) => matches!(
            db.code().as_deref(),
            Some("55P03" | "57P01" | "57P02" | "57P03" | "53300" | "08000" | "08003" | "08006")
        ),
        _ => false,
    }
}

/// Whether PostgreSQL rolled a transaction back because of another one: a deadlock victim
/// (`40P01`) or a serialization failure (`40001`). Nothing of it happened, so running it again
/// is safe.
pub fn is_conflict_abort(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40P01" | "40001")))
}

/// Runs the transaction `run` makes, again (three times in all, 10 and 20 ms apart) while
/// PostgreSQL aborts it for a conflict with another transaction ([`is_conflict_abort`]) —
/// a deadlock victim may be any of the transactions involved, and the caller should not see
/// a 500 for it. `db_error` finds the database error inside `E`.
pub async fn retry_conflicts<T, E, Fut>(
    mut run: impl FnMut() -> Fut,
    db_error: impl Fn(&E) -> Option<&sqlx::Error>,
) -> Result<T, E>
where
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match run().await {
            Err(e) if attempt < 3 && db_error(&e).is_some_and(is_conflict_abort) => {
                tracing::warn!(attempt, "transaction aborted by a conflict; retrying");
                tokio::time::sleep(Duration::from_millis(10 << (attempt - 1))).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Whether an error is a unique-constraint violation.
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}
