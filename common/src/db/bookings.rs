//! Bookings after their creation: reading, cancelling, expiring. Every change locks the row,
//! asks the state machine, writes the new status with outbox and audit rows, all in one
//! transaction, so concurrent changes (payment racing expiry, cancel racing payment) serialize
//! on the row and exactly one of them wins.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgConnection, PgPool};
use uuid::Uuid;

use super::events::{AuditEntry, BookingEventData, NewEvent, insert_audit, insert_events, types};
use crate::domain::status::{BookingEvent, BookingStatus, IllegalTransition};

/// A booking as stored and returned by `GET /v1/bookings/{id}`.
#[derive(Clone, Debug, Serialize, FromRow)]
pub struct Booking {
    /// Id.
    pub id: Uuid,
    /// The booking request that created it.
    pub request_id: Uuid,
    /// Partition key.
    pub country_code: String,
    /// Practitioner.
    pub practitioner_id: Uuid,
    /// Patient.
    pub patient_id: Uuid,
    /// Slot start.
    pub slot_start: DateTime<Utc>,
    /// Slot end.
    pub slot_end: DateTime<Utc>,
    /// Current status.
    pub status: BookingStatus,
    /// When an unpaid hold runs out.
    pub hold_expires_at: Option<DateTime<Utc>>,
    /// When payment confirmed it.
    pub confirmed_at: Option<DateTime<Utc>>,
    /// When it was cancelled.
    pub cancelled_at: Option<DateTime<Utc>>,
    /// Why it was cancelled.
    pub cancel_reason: Option<String>,
    /// The payment provider's event that confirmed it.
    pub payment_ref: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl Booking {
    /// The event payload describing this booking now.
    pub fn event_data(&self, reason: Option<String>) -> BookingEventData {
        BookingEventData {
            booking_id: Some(self.id),
            request_id: self.request_id,
            practitioner_id: self.practitioner_id,
            patient_id: self.patient_id,
            slot_start: self.slot_start,
            status: self.status.as_str().to_owned(),
            reason,
        }
    }
}

/// Why a transition did not happen.
#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    /// No such booking.
    #[error("booking not found")]
    NotFound,
    /// The state machine refuses it.
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Who causes a change, for the audit log.
#[derive(Clone, Debug)]
pub struct Actor {
    /// `api`, `scheduler`, `payment-provider`, …
    pub name: String,
    /// The HTTP request id (or similar) that caused it.
    pub request_id: Option<String>,
}

/// Reads a booking.
pub async fn get_booking(pool: &PgPool, id: Uuid) -> Result<Option<Booking>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM bookings WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// Reads and locks a booking inside a transaction.
pub(crate) async fn lock_booking(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<Booking>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM bookings WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Applies `event` to a locked booking: updates the row and writes outbox and audit rows.
pub(crate) async fn transition(
    conn: &mut PgConnection,
    booking: &Booking,
    event: BookingEvent,
    actor: &Actor,
    reason: Option<&str>,
    payment_ref: Option<&str>,
) -> Result<Booking, TransitionError> {
    let to = booking.status.apply(event)?;
    let updated: Booking = sqlx::query_as(
        "UPDATE bookings SET status = $3, updated_at = now(),
                confirmed_at = CASE WHEN $3 = 'confirmed' THEN now() ELSE confirmed_at END,
                cancelled_at = CASE WHEN $3 = 'cancelled' THEN now() ELSE cancelled_at END,
                cancel_reason = COALESCE($4, cancel_reason),
                payment_ref = COALESCE($5, payment_ref)
         WHERE country_code = $1 AND id = $2 RETURNING *",
    )
    .bind(&booking.country_code)
    .bind(booking.id)
    .bind(to)
    .bind(reason)
    .bind(payment_ref)
    .fetch_one(&mut *conn)
    .await?;
    let (event_type, action) = match to {
        BookingStatus::Confirmed => (types::CONFIRMED, "confirm"),
        BookingStatus::Expired => (types::EXPIRED, "expire"),
        BookingStatus::Cancelled => (types::CANCELLED, "cancel"),
        BookingStatus::Completed => ("booking.completed", "complete"),
        BookingStatus::NoShow => ("booking.no_show", "no_show"),
        BookingStatus::Held => (types::HELD, "hold"),
    };
    insert_events(
        &mut *conn,
        &[NewEvent {
            event_type,
            data: updated.event_data(reason.map(str::to_owned)),
        }],
    )
    .await?;
    insert_audit(
        &mut *conn,
        &[AuditEntry {
            booking_id: booking.id,
            actor: actor.name.clone(),
            action,
            from: Some(booking.status),
            to,
            request_id: actor.request_id.clone(),
        }],
    )
    .await?;
    Ok(updated)
}

/// Cancels a held or confirmed booking; the slot is free once this commits.
pub async fn cancel(
    pool: &PgPool,
    id: Uuid,
    reason: Option<&str>,
    actor: &Actor,
) -> Result<Booking, TransitionError> {
    let mut tx = pool.begin().await?;
    let booking = lock_booking(&mut tx, id)
        .await?
        .ok_or(TransitionError::NotFound)?;
    let updated = transition(
        &mut tx,
        &booking,
        BookingEvent::Cancel,
        actor,
        Some(reason.unwrap_or("cancelled")),
        None,
    )
    .await?;
    tx.commit().await?;
    Ok(updated)
}

/// A hold the scheduler expired.
#[derive(Clone, Debug, FromRow)]
pub struct ExpiredHold {
    /// Booking.
    pub id: Uuid,
    /// Its request (whose cached status must be dropped).
    pub request_id: Uuid,
    /// Practitioner.
    pub practitioner_id: Uuid,
    /// Patient.
    pub patient_id: Uuid,
    /// Slot start (whose availability bit must be cleared).
    pub slot_start: DateTime<Utc>,
    /// When it was due.
    pub hold_expires_at: DateTime<Utc>,
}

/// Expires up to `limit` due holds in one transaction. Rows locked by a concurrent payment or
/// by another scheduler replica are skipped (`SKIP LOCKED`) and looked at next sweep.
pub async fn expire_due(pool: &PgPool, limit: i64) -> Result<Vec<ExpiredHold>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let expired: Vec<ExpiredHold> = sqlx::query_as(
        "WITH due AS (
             SELECT country_code, id FROM bookings
             WHERE status = 'held' AND hold_expires_at <= now()
             ORDER BY hold_expires_at
             LIMIT $1
             FOR UPDATE SKIP LOCKED)
         UPDATE bookings b SET status = 'expired', updated_at = now()
         FROM due WHERE b.country_code = due.country_code AND b.id = due.id AND b.status = 'held'
         RETURNING b.id, b.request_id, b.practitioner_id, b.patient_id, b.slot_start, b.hold_expires_at",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let events: Vec<NewEvent> = expired
        .iter()
        .map(|e| NewEvent {
            event_type: types::EXPIRED,
            data: BookingEventData {
                booking_id: Some(e.id),
                request_id: e.request_id,
                practitioner_id: e.practitioner_id,
                patient_id: e.patient_id,
                slot_start: e.slot_start,
                status: BookingStatus::Expired.as_str().to_owned(),
                reason: Some("hold_expired".into()),
            },
        })
        .collect();
    let audit: Vec<AuditEntry> = expired
        .iter()
        .map(|e| AuditEntry {
            booking_id: e.id,
            actor: "scheduler".into(),
            action: "expire",
            from: Some(BookingStatus::Held),
            to: BookingStatus::Expired,
            request_id: Some(e.request_id.to_string()),
        })
        .collect();
    insert_events(&mut tx, &events).await?;
    insert_audit(&mut tx, &audit).await?;
    tx.commit().await?;
    Ok(expired)
}
