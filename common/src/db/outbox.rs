//! Reading the transactional outbox: the Kafka relay's claims, the webhook dispatcher's
//! claims, lag and retention. (Rows are written by [`super::events::insert_events`].)
//!
//! Claims lock rows with `FOR UPDATE SKIP LOCKED` in creation order. Never "id > last seen":
//! bigserial ids are handed out at insert time but become visible at commit time, so a cursor
//! would skip a row that commits after a later one was read.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// One outbox row.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct OutboxEvent {
    /// Row id (insertion order; breaks ties of `created_at`).
    pub id: i64,
    /// The event's own id (the CloudEvents `id`, the webhook `webhook-id`).
    pub event_id: Uuid,
    /// `booking.held`, …
    #[sqlx(rename = "type")]
    pub event_type: String,
    /// The booking (or, for a rejection, the request).
    pub aggregate_id: Uuid,
    /// Partition key: the practitioner id.
    pub key: String,
    /// The event data (ids only, no personal data).
    pub payload: Value,
    /// When the row was written.
    pub created_at: DateTime<Utc>,
}

/// Locks up to `limit` unpublished rows, oldest first, skipping rows another transaction holds.
/// The locks last until `conn`'s transaction ends.
pub async fn claim_unpublished(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<OutboxEvent>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, event_id, type, aggregate_id, key, payload, created_at
         FROM outbox WHERE published_at IS NULL
         ORDER BY created_at, id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Keys of unpublished rows older than `before` that are not in `claimed`: rows another
/// relay (or the dispatcher, for a moment) holds. Their keys must wait, or a later event of
/// the same practitioner would overtake them.
pub async fn keys_waiting_before(
    conn: &mut PgConnection,
    before: &OutboxEvent,
    claimed: &[i64],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT key FROM outbox
         WHERE published_at IS NULL AND (created_at, id) < ($1, $2) AND NOT (id = ANY($3))",
    )
    .bind(before.created_at)
    .bind(before.id)
    .bind(claimed)
    .fetch_all(conn)
    .await
}

/// Marks rows published (after the broker acknowledged them).
pub async fn mark_published(conn: &mut PgConnection, ids: &[i64]) -> Result<u64, sqlx::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
        .bind(ids)
        .execute(conn)
        .await
        .map(|r| r.rows_affected())
}

/// Locks up to `limit` rows not yet handed to the webhook dispatcher, oldest first.
pub async fn claim_undispatched(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<OutboxEvent>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, event_id, type, aggregate_id, key, payload, created_at
         FROM outbox WHERE dispatched_at IS NULL
         ORDER BY created_at, id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Marks rows dispatched (their webhook deliveries exist).
pub async fn mark_dispatched(conn: &mut PgConnection, ids: &[i64]) -> Result<u64, sqlx::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    sqlx::query("UPDATE outbox SET dispatched_at = now() WHERE id = ANY($1)")
        .bind(ids)
        .execute(conn)
        .await
        .map(|r| r.rows_affected())
}

/// Age in seconds of the oldest unpublished row (0 when none waits).
pub async fn publish_lag_seconds(pool: &PgPool) -> Result<f64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0)
         FROM outbox WHERE published_at IS NULL",
    )
    .fetch_one(pool)
    .await
}

/// Age in seconds of the oldest row not yet handed to the webhook dispatcher (0 when none).
pub async fn dispatch_lag_seconds(pool: &PgPool) -> Result<f64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0)
         FROM outbox WHERE dispatched_at IS NULL",
    )
    .fetch_one(pool)
    .await
}

/// What the retention sweep may delete.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    /// Rows created before this instant are old enough.
    pub before: DateTime<Utc>,
    /// The Kafka relay runs: a row must have been published first.
    pub require_published: bool,
    /// The webhook dispatcher runs: a row must have been dispatched first.
    pub require_dispatched: bool,
}

/// Deletes up to `limit` old rows that every consumer is done with; returns how many.
pub async fn delete_old(pool: &PgPool, r: Retention, limit: i64) -> Result<u64, sqlx::Error> {
    sqlx::query(
        "DELETE FROM outbox WHERE id IN (
             SELECT id FROM outbox
             WHERE created_at < $1
               AND (published_at IS NOT NULL OR NOT $2)
               AND (dispatched_at IS NOT NULL OR NOT $3)
             ORDER BY created_at LIMIT $4
             FOR UPDATE SKIP LOCKED)",
    )
    .bind(r.before)
    .bind(r.require_published)
    .bind(r.require_dispatched)
    .bind(limit)
    .execute(pool)
    .await
    .map(|res| res.rows_affected())
}
