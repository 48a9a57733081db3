//! Booking requests as clients see them: the poll endpoint's view of a durable decision.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use slotq_domain::{
    request::{RejectionReason, RequestKind, RequestOutcome, RequestStatus},
    status::BookingStatus,
};

/// `GET /v1/booking-requests/{id}`: the request, its decision and, once held, the booking's
/// current status. Also what Redis caches for the fast path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RequestView {
    /// Request id.
    pub id: Uuid,
    /// `queued`, `rejected`, or the booking's status (`held`, `confirmed`, `expired`, …).
    pub status: RequestStatus,
    /// `book` (a new hold) or `reschedule` (moving `booking_id` to `slot_start`).
    #[serde(default)]
    #[schema(required = true)]
    pub kind: RequestKind,
    /// The booking, once held; for a reschedule, the booking being moved (queued, moved or
    /// rejected alike).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub booking_id: Option<Uuid>,
    /// When the hold runs out (while held).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "slotq_domain::json_time::utc_opt"
    )]
    pub hold_expires_at: Option<DateTime<Utc>>,
    /// Why the request was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RejectionReason>,
    /// The practitioner asked for.
    pub practitioner_id: Uuid,
    /// The patient.
    pub patient_id: Uuid,
    /// The slot asked for.
    #[serde(serialize_with = "slotq_domain::json_time::utc")]
    pub slot_start: DateTime<Utc>,
    /// When ingress accepted the request.
    #[serde(serialize_with = "slotq_domain::json_time::utc")]
    pub submitted_at: DateTime<Utc>,
    /// When the decision was committed.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "slotq_domain::json_time::utc_opt"
    )]
    pub decided_at: Option<DateTime<Utc>>,
}

impl RequestView {
    /// Whether the request still waits for its decision.
    pub fn is_queued(&self) -> bool {
        self.status.is_queued()
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    kind: RequestKind,
    outcome: RequestOutcome,
    reason: Option<RejectionReason>,
    booking_id: Option<Uuid>,
    practitioner_id: Uuid,
    patient_id: Uuid,
    slot_start: DateTime<Utc>,
    submitted_at: DateTime<Utc>,
    decided_at: DateTime<Utc>,
    status: Option<BookingStatus>,
    hold_expires_at: Option<DateTime<Utc>>,
}

impl From<Row> for RequestView {
    fn from(r: Row) -> Self {
        let status = match (r.outcome, r.status) {
            (RequestOutcome::Held, Some(s)) => RequestStatus::of_booking(s),
            // A held request always has its booking (a CHECK constraint); the row without
            // one cannot occur, and reads as the outcome alone.
            (RequestOutcome::Held, None) => RequestStatus::Held,
            (RequestOutcome::Rejected, _) => RequestStatus::Rejected,
        };
        RequestView {
            id: r.id,
            kind: r.kind,
            hold_expires_at: if r.status == Some(BookingStatus::Held) {
                r.hold_expires_at
            } else {
                None
            },
            status,
            booking_id: r.booking_id,
            reason: r.reason,
            practitioner_id: r.practitioner_id,
            patient_id: r.patient_id,
            slot_start: r.slot_start,
            submitted_at: r.submitted_at,
            decided_at: Some(r.decided_at),
        }
    }
}

macro_rules! decided_views_sql {
    () => {
        "SELECT r.id, r.kind::text AS kind, r.outcome::text AS outcome, r.reason,
        COALESCE(r.booking_id, r.target_booking_id) AS booking_id, r.practitioner_id,
        r.patient_id, r.slot_start, r.submitted_at, r.decided_at, b.status, b.hold_expires_at
    FROM unnest($1::uuid[]) AS q(id)
    CROSS JOIN LATERAL (SELECT * FROM booking_requests WHERE id = q.id LIMIT 1) r
    LEFT JOIN LATERAL (
        SELECT status, hold_expires_at FROM bookings WHERE id = r.booking_id LIMIT 1
    ) b ON true"
    };
}
/// The decided-views query (`$1`: the request ids), public for the tests of its plan.
pub const DECIDED_VIEWS: &str = decided_views_sql!();
// One primary-key probe per id and one `bookings (id)` probe per found request, whatever the
// statistics say. As `WHERE r.id = ANY($1) … JOIN bookings`, PostgreSQL planned a sequential
// scan of `booking_requests` (chosen while the table held ~9,000 rows, kept while it grew) and
// a hash join over all of `bookings`: 24–28 ms per batch, and decided/s fell from ~6,500 to
// ~2,500. The `LIMIT 1`
// (the id is the primary key) keeps the lateral subquery a subquery: without it PostgreSQL
// pulls it up into a plain join and, with statistics from when the table was small, hashed
// the ids and scanned all of `booking_requests` in about one batch of five during a fresh
// throughput round.
/// The decided views of these requests (undecided ones are absent).
pub async fn decided_views<'c, E>(
    executor: E,
    ids: &[Uuid],
) -> Result<Vec<RequestView>, sqlx::Error>
where
    E: sqlx::PgExecutor<'c>,
{
    let rows: Vec<Row> = sqlx::query_as(DECIDED_VIEWS)
        .bind(ids)
        .fetch_all(executor)
        .await?;
    Ok(rows.into_iter().map(RequestView::from).collect())
}

/// [`decided_views`], and in the same statement (before it reads a row) the transaction-level
/// advisory locks `lock_keys` (exclusive) and `shared_keys` (shared), each in the order given.
pub async fn decided_views_locking(
    conn: &mut sqlx::PgConnection,
    ids: &[Uuid],
    lock_keys: &[i64],
    shared_keys: &[i64],
) -> Result<Vec<RequestView>, sqlx::Error> {
    if lock_keys.is_empty() && shared_keys.is_empty() {
        return decided_views(conn, ids).await;
    }
    // An uncorrelated condition is a one-time filter: PostgreSQL evaluates it (taking every
    // lock) when the statement starts, before and whether or not any row is read. The shared
    // keys come first (`UNION ALL` runs its branches in order): a batch waiting for an hours
    // key, behind a replacement of those hours, holds no patient key another batch could be
    // waiting for.
    let rows: Vec<Row> = sqlx::query_as(concat!(
        decided_views_sql!(),
        " WHERE (SELECT count(*) FROM (",
        "SELECT pg_advisory_xact_lock_shared(k) FROM unnest($3::bigint[]) AS s(k)",
        " UNION ALL SELECT pg_advisory_xact_lock(k) FROM unnest($2::bigint[]) AS l(k)) AS locks",
        ") >= 0"
    ))
    .bind(ids)
    .bind(lock_keys)
    .bind(shared_keys)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(RequestView::from).collect())
}

/// The decided view of one request, `None` while undecided or unknown.
pub async fn decided_view(pool: &PgPool, id: Uuid) -> Result<Option<RequestView>, sqlx::Error> {
    Ok(decided_views(pool, &[id]).await?.pop())
}
