//! Reading the transactional outbox: the Kafka relay's claims, the webhook dispatcher's
//! claims, lag and retention. (Rows are written by [`crate::events::insert_events`].)
//!
//! The relay claims rows with `FOR UPDATE SKIP LOCKED` in creation order. Never "id > last
//! seen": bigserial ids are handed out at insert time but become visible at commit time, so a
//! cursor over ids would skip a row that commits after a later one was read. The webhook
//! dispatcher does keep a cursor, over `(writing transaction, id)` and only up to the oldest
//! transaction still running ([`undispatched_after`]), which no later commit can fall behind.

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
/// relay holds. Their keys must wait, or a later event of
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

/// Where the webhook dispatcher is in the outbox: the last row it handled, in
/// `(xact, id)` order (migration `20261201000002`).
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Cursor {
    /// The writing transaction of that row (`xid8`, as text).
    pub xact: String,
    /// Its id.
    pub id: i64,
}

/// An outbox row with its place in the dispatcher's order.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Undispatched {
    /// The row.
    #[sqlx(flatten)]
    pub event: OutboxEvent,
    /// Its position.
    #[sqlx(flatten)]
    pub at: Cursor,
}

/// The advisory lock of the webhook dispatcher's cursor (the two-key form: a key space of its
/// own, apart from the one-key locks of the hold batches).
const DISPATCH_LOCK: (i32, i32) = (0x736c_6f74, 1);

/// Locks the webhook dispatcher's cursor until `conn`'s transaction ends and reads it; `None`
/// while another dispatcher holds it (that one is working: this one has nothing to do).
///
/// The lock is a transaction-level advisory lock, not `FOR UPDATE` on the cursor's row: a row
/// lock is written to the table, which gives the transaction an id and a WAL record, so every
/// idle poll of the dispatcher (10 a second by default) ended in a commit that waited for a WAL
/// flush. The cursor is read by a statement of its own, after the lock: its snapshot then
/// holds what the previous holder committed.
pub async fn lock_dispatch_cursor(conn: &mut PgConnection) -> Result<Option<Cursor>, sqlx::Error> {
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, $2)")
        .bind(DISPATCH_LOCK.0)
        .bind(DISPATCH_LOCK.1)
        .fetch_one(&mut *conn)
        .await?;
    if !locked {
        return Ok(None);
    }
    sqlx::query_as("SELECT xact::text AS xact, id FROM outbox_cursors WHERE consumer = 'webhooks'")
        .fetch_optional(conn)
        .await
}

/// Up to `limit` rows after `cursor`, in `(xact, id)` order, written by transactions older than
/// the oldest one still running: every transaction before that point has ended, so no row can
/// become visible behind the cursor later. (A long-running writing transaction elsewhere holds
/// this point back, and with it the dispatch, until it ends.) Only rows whose type is in
/// `wanted` carry their payload; the others come with a `null` one: the dispatcher only needs
/// their position, and decoding every event's JSON for no subscriber was a seventh of the
/// workers' instructions per decision.
///
/// The order names the table's columns: a bare `ORDER BY xact` meant the output column
/// `xact::text`, which sorted `"100"` before `"99"` (a row could fall behind the cursor when
/// the transaction ids gained a digit) and which no index serves (a sort of every row after
/// the cursor, ~30 ms per call at 10,000 events/s).
pub async fn undispatched_after(
    conn: &mut PgConnection,
    cursor: &Cursor,
    limit: i64,
    wanted: &[String],
) -> Result<Vec<Undispatched>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, event_id, type, aggregate_id, key,
                CASE WHEN type = ANY($4) THEN payload ELSE 'null'::jsonb END AS payload,
                created_at, xact::text AS xact
         FROM outbox
         WHERE (xact, id) > ($1::text::xid8, $2)
           AND xact < pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY outbox.xact, outbox.id LIMIT $3",
    )
    .bind(&cursor.xact)
    .bind(cursor.id)
    .bind(limit)
    .bind(wanted)
    .fetch_all(conn)
    .await
}

/// What [`undispatched_after`] would return, without the rows: how many there are (at most
/// `limit`) and the position of the last one; `None` when there are none. For a dispatcher
/// whose subscriptions want no event at all: it only moves its cursor, and reading every
/// event of a busy outbox for nobody cost the workers ~7,000 instructions per decision (its
/// columns decoded) and PostgreSQL the rows sent.
pub async fn skip_after(
    conn: &mut PgConnection,
    cursor: &Cursor,
    limit: i64,
) -> Result<Option<(Cursor, i64)>, sqlx::Error> {
    let row: Option<(String, i64, i64)> = sqlx::query_as(
        "WITH w AS (
             SELECT xact, id FROM outbox
             WHERE (xact, id) > ($1::text::xid8, $2)
               AND xact < pg_snapshot_xmin(pg_current_snapshot())
             ORDER BY outbox.xact, outbox.id LIMIT $3)
         SELECT l.xact::text, l.id, (SELECT count(*) FROM w)
         FROM (SELECT xact, id FROM w ORDER BY w.xact DESC, w.id DESC LIMIT 1) l",
    )
    .bind(&cursor.xact)
    .bind(cursor.id)
    .bind(limit)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(xact, id, n)| (Cursor { xact, id }, n)))
}

/// Moves the dispatcher's cursor (locked by [`lock_dispatch_cursor`]) to `to`.
pub async fn advance_dispatch_cursor(
    conn: &mut PgConnection,
    to: &Cursor,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE outbox_cursors SET xact = $1::text::xid8, id = $2 WHERE consumer = 'webhooks'",
    )
    .bind(&to.xact)
    .bind(to.id)
    .execute(conn)
    .await?;
    Ok(())
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
        "SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(o.created_at))::float8, 0)
         FROM outbox o JOIN outbox_cursors c ON c.consumer = 'webhooks'
         WHERE (o.xact, o.id) > (c.xact, c.id)",
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

/// Deletes up to `limit` old rows that every consumer is done with; returns how many. (A row
/// without `xact` was dispatched before the dispatcher kept a cursor.)
pub async fn delete_old(pool: &PgPool, r: Retention, limit: i64) -> Result<u64, sqlx::Error> {
    sqlx::query(
        "DELETE FROM outbox WHERE id IN (
             SELECT id FROM outbox
             WHERE created_at < $1
               AND (published_at IS NOT NULL OR NOT $2)
               AND (NOT $3 OR xact IS NULL OR (xact, id) <= (
                   SELECT xact, id FROM outbox_cursors WHERE consumer = 'webhooks'))
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
