//! `baseline`: what a synchronous design achieves on the same PostgreSQL — the hold INSERT
//! of `common/src/db/holds.rs` (same table, same unique indexes, `ON CONFLICT` on the slot
//! gate as the pipeline's batches do since loadtest/README.md change 25, so the synchronous
//! design gets that saving too),
//! one row per transaction, driven by as many connections as the pipeline has clients, for
//! the same duration.
//!
//! Two variants:
//! - `insert` (the reference of the target): one auto-committed `INSERT … RETURNING`
//!   per request, the cheapest a synchronous design can be — it records no decision, no
//!   event, no audit;
//! - `full`: what the pipeline writes for a request — the hold, its `booking_requests`
//!   decision, an `outbox` event and an `audit_log` row — in one transaction per request.
//!
//! The rows use practitioner and patient ids that exist nowhere else (no foreign key leads
//! from `bookings`), so they never collide with the pipeline's; the bookings and decisions
//! are deleted afterwards so the scheduler does not expire them during later scenarios.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use sqlx::{PgPool, postgres::PgPoolOptions};
use uuid::Uuid;

use super::Ctx;
use crate::{dataset::Grid, report::BaselineResult, stats::Latency};

/// Which synchronous design.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One row per transaction.
    Insert,
    /// Hold + decision + outbox + audit per transaction.
    Full,
}

const HOLD_SQL: &str =
    "INSERT INTO bookings (id, request_id, country_code, practitioner_id, patient_id,
                      slot_start, slot_end, status, hold_expires_at)
 VALUES ($1, $2, 'FR', $3, $4, $5, $6, 'held', now() + make_interval(secs => $7))
 ON CONFLICT (country_code, practitioner_id, slot_start) WHERE status IN ('held', 'confirmed')
 DO NOTHING
 RETURNING id";

/// Runs the baseline for `ctx.settings.duration` on `ctx.settings.concurrency` connections.
pub async fn run(ctx: &Ctx, mode: Mode) -> anyhow::Result<BaselineResult> {
    let s = &ctx.settings;
    let n = s.concurrency;
    // A synchronous service shares a pool among its callers: PostgreSQL refuses more than
    // `max_connections` (100 by default), so above BASELINE_MAX_CONNECTIONS callers queue for a
    // connection, as they would in such a service.
    let conns = n.min(BASELINE_MAX_CONNECTIONS);
    let pool = PgPoolOptions::new()
        .max_connections(conns as u32)
        .min_connections(conns as u32)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&s.database_url)
        .await
        .context("connecting the baseline's pool")?;
    // Open every connection before the clock starts.
    let warm: Vec<_> = (0..conns).map(|_| pool.acquire()).collect();
    let conns = futures::future::try_join_all(warm).await?;
    drop(conns);

    let fake = |k: usize| (0..k).map(|_| Uuid::new_v4()).collect::<Vec<_>>();
    let grid = Arc::new(Grid::new(fake(s.practitioners), fake(s.practitioners)));
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + s.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (pool, grid, next) = (pool.clone(), grid.clone(), next.clone());
        tasks.spawn(async move {
            let (mut lat, mut ok, mut errors) = (Latency::new(), 0u64, 0u64);
            while Instant::now() < deadline {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some((patient, practitioner, slot)) = grid.nth(k) else {
                    break;
                };
                let t0 = Instant::now();
                let res = match mode {
                    Mode::Insert => insert(&pool, patient, practitioner, slot).await,
                    Mode::Full => full(&pool, patient, practitioner, slot).await,
                };
                lat.record(t0.elapsed());
                match res {
                    Ok(true) => ok += 1,
                    Ok(false) | Err(_) => errors += 1,
                }
            }
            (lat, ok, errors)
        });
    }
    let (mut lat, mut committed, mut errors) = (Latency::new(), 0, 0);
    while let Some(r) = tasks.join_next().await {
        let (l, ok, e) = r?;
        lat.merge(&l);
        committed += ok;
        errors += e;
    }
    let elapsed = start.elapsed();
    cleanup(&pool, &grid.practitioners).await?;
    pool.close().await;
    Ok(BaselineResult {
        mode: match mode {
            Mode::Insert => "insert",
            Mode::Full => "full",
        }
        .into(),
        concurrency: n,
        elapsed_s: elapsed.as_secs_f64(),
        committed,
        errors,
        per_sec: crate::stats::per_sec(committed, elapsed),
        latency: lat.summary(),
    })
}

const HOLD_SECS: f64 = 300.0;

/// Connections of the baseline's pool at most.
pub const BASELINE_MAX_CONNECTIONS: usize = 64;

/// One auto-committed hold; `true` when the row was inserted.
async fn insert(
    pool: &PgPool,
    patient: Uuid,
    practitioner: Uuid,
    slot: chrono::DateTime<chrono::Utc>,
) -> Result<bool, sqlx::Error> {
    let id: Option<Uuid> = sqlx::query_scalar(HOLD_SQL)
        .bind(Uuid::now_v7())
        .bind(Uuid::now_v7())
        .bind(practitioner)
        .bind(patient)
        .bind(slot)
        .bind(slot + chrono::Duration::minutes(5))
        .bind(HOLD_SECS)
        .fetch_optional(pool)
        .await?;
    Ok(id.is_some())
}

/// The hold, its decision, an outbox event and an audit row in one transaction.
async fn full(
    pool: &PgPool,
    patient: Uuid,
    practitioner: Uuid,
    slot: chrono::DateTime<chrono::Utc>,
) -> Result<bool, sqlx::Error> {
    let request = Uuid::now_v7();
    let mut tx = pool.begin().await?;
    let Some(booking): Option<Uuid> = sqlx::query_scalar(HOLD_SQL)
        .bind(Uuid::now_v7())
        .bind(request)
        .bind(practitioner)
        .bind(patient)
        .bind(slot)
        .bind(slot + chrono::Duration::minutes(5))
        .bind(HOLD_SECS)
        .fetch_optional(&mut *tx)
        .await?
    else {
        tx.rollback().await?;
        return Ok(false);
    };
    sqlx::query(
        "INSERT INTO booking_requests (id, patient_id, practitioner_id, slot_start, submitted_at,
                                       outcome, booking_id, kind, decided_at)
         VALUES ($1, $2, $3, $4, now(), 'held', $5, 'book', clock_timestamp())",
    )
    .bind(request)
    .bind(patient)
    .bind(practitioner)
    .bind(slot)
    .bind(booking)
    .execute(&mut *tx)
    .await?;
    let payload = serde_json::json!({
        "booking_id": booking, "request_id": request, "practitioner_id": practitioner,
        "patient_id": patient, "slot_start": slot, "status": "held",
    });
    sqlx::query(
        "INSERT INTO outbox (event_id, type, aggregate_id, key, payload)
         VALUES ($1, 'booking.held', $2, $3, $4)",
    )
    .bind(Uuid::now_v7())
    .bind(booking)
    .bind(practitioner.to_string())
    .bind(payload)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO audit_log (booking_id, actor, action, from_status, to_status, request_id, actor_role)
         VALUES ($1, 'baseline', 'hold', NULL, 'held', $2, 'system')",
    )
    .bind(booking)
    .bind(request.to_string())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Deletes the bookings, decisions and events of `practitioners` (audit rows are
/// append-only), so a later scenario neither expires them nor scans them.
pub async fn cleanup(pool: &PgPool, practitioners: &[Uuid]) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM bookings WHERE practitioner_id = ANY($1)")
        .bind(practitioners)
        .execute(pool)
        .await?;
    sqlx::query("DELETE FROM booking_requests WHERE practitioner_id = ANY($1)")
        .bind(practitioners)
        .execute(pool)
        .await?;
    let keys: Vec<String> = practitioners.iter().map(Uuid::to_string).collect();
    sqlx::query("DELETE FROM outbox WHERE key = ANY($1)")
        .bind(&keys)
        .execute(pool)
        .await?;
    Ok(())
}
