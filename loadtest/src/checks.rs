//! What PostgreSQL (the truth) says after a scenario: which accepted requests have a durable
//! decision and when it was recorded, and whether any slot or patient holds two active
//! bookings. The API is not trusted for invariants; the database is read directly.

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::stats::Latency;

/// Ids per query: large `= ANY($1)` arrays stay cheap in chunks.
const CHUNK: usize = 10_000;

/// The recorded decisions of a set of accepted requests.
#[derive(Debug, Default)]
pub struct Decisions {
    /// Requests with a decision row.
    pub decided: u64,
    /// Of which `held`.
    pub held: u64,
    /// Rejections by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Accepted requests without a decision row.
    pub missing: Vec<Uuid>,
    /// Earliest `submitted_at` (ingress clock).
    pub first_submitted: Option<DateTime<Utc>>,
    /// Latest `decided_at` (the worker's transaction clock).
    pub last_decided: Option<DateTime<Utc>>,
    /// `decided_at − submitted_at` of each decision (server clocks, same machine).
    pub server_latency: Latency,
    /// Every `decided_at`, for [`Decisions::each_second`].
    pub decided_at: Vec<DateTime<Utc>>,
}

impl Decisions {
    /// Decisions recorded in each whole second after `start` (index 0: the first second).
    pub fn each_second(&self, start: DateTime<Utc>) -> Vec<u64> {
        let mut out: Vec<u64> = Vec::new();
        for at in &self.decided_at {
            let s = (*at - start).num_milliseconds().max(0) as usize / 1000;
            if out.len() <= s {
                out.resize(s + 1, 0);
            }
            out[s] += 1;
        }
        out
    }
}

type Row = (Uuid, DateTime<Utc>, DateTime<Utc>, String, Option<String>);

/// Reads the decisions of `ids` from `booking_requests`.
pub async fn decisions(pool: &PgPool, ids: &[Uuid]) -> anyhow::Result<Decisions> {
    let mut d = Decisions::default();
    let mut found = std::collections::HashSet::with_capacity(ids.len());
    for chunk in ids.chunks(CHUNK) {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, submitted_at, decided_at, outcome::text, reason
             FROM booking_requests WHERE id = ANY($1)",
        )
        .bind(chunk)
        .fetch_all(pool)
        .await?;
        for (id, submitted, decided, outcome, reason) in rows {
            found.insert(id);
            d.decided += 1;
            if outcome == "held" {
                d.held += 1;
            } else {
                *d.rejected
                    .entry(reason.unwrap_or_else(|| "?".into()))
                    .or_default() += 1;
            }
            d.first_submitted = Some(d.first_submitted.map_or(submitted, |f| f.min(submitted)));
            d.last_decided = Some(d.last_decided.map_or(decided, |l| l.max(decided)));
            d.decided_at.push(decided);
            let us = (decided - submitted).num_microseconds().unwrap_or(i64::MAX);
            d.server_latency.record_micros(us.max(0) as u64);
        }
    }
    d.missing = ids
        .iter()
        .filter(|i| !found.contains(*i))
        .copied()
        .collect();
    Ok(d)
}

/// Which of `ids` have no decision row yet. One primary-key probe per id (the lateral
/// `LIMIT 1` keeps PostgreSQL from hashing the ids and scanning the whole table, which it did
/// for `id = ANY($1)`: a poll then read every decision of the run while the workers drained).
async fn undecided(pool: &PgPool, ids: &[Uuid]) -> anyhow::Result<Vec<Uuid>> {
    let mut left = Vec::new();
    for chunk in ids.chunks(CHUNK) {
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT q.id FROM unnest($1::uuid[]) WITH ORDINALITY AS q(id, ord)
             LEFT JOIN LATERAL (
                 SELECT 1 AS hit FROM booking_requests r WHERE r.id = q.id LIMIT 1) d ON true
             WHERE d.hit IS NULL ORDER BY q.ord",
        )
        .bind(chunk)
        .fetch_all(pool)
        .await?;
        left.extend(ids);
    }
    Ok(left)
}

/// Requests checked per poll while the newest ones are undecided.
const TAIL: usize = 1_000;

/// Polls every `every` until each of `ids` (in submission order) is decided or `timeout`
/// passes, then reads their decisions. The workers decide roughly in submission order, so a
/// poll only checks the newest [`TAIL`] undecided requests until those are all decided, then
/// the rest once: the polls stay small while the workers drain (they share the machine).
pub async fn decisions_when_decided(
    pool: &PgPool,
    ids: &[Uuid],
    timeout: Duration,
    every: Duration,
) -> anyhow::Result<Decisions> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pending: Vec<Uuid> = ids.to_vec();
    while !pending.is_empty() {
        let tail = pending.len().saturating_sub(TAIL);
        let left = undecided(pool, &pending[tail..]).await?;
        if left.is_empty() {
            pending = undecided(pool, &pending[..tail]).await?;
        } else {
            pending.truncate(tail);
            pending.extend(left);
        }
        if pending.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(every).await;
    }
    decisions(pool, ids).await
}

/// Slots with more than one active (`held`/`confirmed`) booking, in the whole database.
pub async fn double_bookings(pool: &PgPool) -> anyhow::Result<i64> {
    active_groups_over_one(pool, "country_code, practitioner_id, slot_start").await
}

/// Patients with two active bookings starting at the same time (in any countries), in the
/// whole database.
pub async fn patient_overlaps(pool: &PgPool) -> anyhow::Result<i64> {
    active_groups_over_one(pool, "patient_id, slot_start").await
}

/// Groups of active bookings by `columns` (a fixed column list) with more than one row.
async fn active_groups_over_one(pool: &PgPool, columns: &'static str) -> anyhow::Result<i64> {
    let sql = format!(
        "SELECT count(*) FROM (
           SELECT 1 FROM bookings WHERE status IN ('held', 'confirmed')
           GROUP BY {columns} HAVING count(*) > 1) d"
    );
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(pool)
        .await?)
}

/// Bookings by status among `booking_ids`.
pub async fn booking_statuses(
    pool: &PgPool,
    booking_ids: &[Uuid],
) -> anyhow::Result<BTreeMap<Uuid, String>> {
    let mut out = BTreeMap::new();
    for chunk in booking_ids.chunks(CHUNK) {
        let rows: Vec<(Uuid, String)> =
            sqlx::query_as("SELECT id, status::text FROM bookings WHERE id = ANY($1)")
                .bind(chunk)
                .fetch_all(pool)
                .await?;
        out.extend(rows);
    }
    Ok(out)
}

/// Holds whose expiry is due but not yet swept (the scheduler's backlog).
pub async fn due_holds(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM bookings WHERE status = 'held' AND hold_expires_at <= now()",
    )
    .fetch_one(pool)
    .await?)
}
