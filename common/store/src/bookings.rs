//! Bookings after their creation: reading, cancelling, expiring. Every change locks the row,
//! asks the state machine, writes the new status with outbox and audit rows, all in one
//! transaction, so concurrent changes (payment racing expiry, cancel racing payment) serialize
//! on the row and exactly one of them wins.
//!
//! Longer than most modules: every statement on `bookings` outside the batch decision lives here (one module per table family).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgConnection, PgPool};
use uuid::Uuid;

use crate::events::{AuditEntry, BookingEventData, NewEvent, insert_audit, insert_events, types};
use slotq_domain::status::{BookingEvent, BookingStatus, IllegalTransition};

/// A booking as stored and returned by `GET /v1/bookings/{id}`.
#[derive(Clone, Debug, Serialize, FromRow, utoipa::ToSchema)]
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
            previous_slot_start: None,
            kind: None,
            payment: None,
        }
    }

    /// A hold whose expiry has passed, swept by the scheduler or not: it is over, so it can be
    /// neither paid (the payment is late) nor moved.
    pub fn hold_lapsed(&self, now: DateTime<Utc>) -> bool {
        self.status == BookingStatus::Held && self.hold_expires_at.is_some_and(|at| at <= now)
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

impl TransitionError {
    /// The database error, if that is what it is.
    pub fn db(&self) -> Option<&sqlx::Error> {
        match self {
            TransitionError::Db(e) => Some(e),
            _ => None,
        }
    }
}

/// Who causes a change, for the audit log.
#[derive(Clone, Debug)]
pub struct Actor {
    /// The token's subject, or `scheduler`, `payment-provider`, …
    pub name: String,
    /// The token's role, or `system`.
    pub role: String,
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

/// Why a booking changed, as stored on the row and as told in its event.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Reason<'a> {
    /// None given.
    None,
    /// A reason code of the system (`payment_failed`, `hold_expired`): row and event.
    Code(&'static str),
    /// A caller's free text: kept on the row (`cancel_reason`), while the event, which goes
    /// to Kafka and webhook subscribers, carries only the code, if any (the text may hold
    /// personal data).
    Text(&'a str, Option<&'static str>),
}

impl<'a> Reason<'a> {
    fn stored(self) -> Option<&'a str> {
        match self {
            Reason::None => None,
            Reason::Code(c) => Some(c),
            Reason::Text(t, _) => Some(t),
        }
    }

    fn published(self) -> Option<String> {
        match self {
            Reason::None | Reason::Text(_, None) => None,
            Reason::Code(c) | Reason::Text(_, Some(c)) => Some(c.to_owned()),
        }
    }
}

/// Applies `event` to a locked booking: updates the row and writes outbox and audit rows.
pub(crate) async fn transition(
    conn: &mut PgConnection,
    booking: &Booking,
    event: BookingEvent,
    actor: &Actor,
    reason: Reason<'_>,
    payment_ref: Option<&str>,
) -> Result<Booking, TransitionError> {
    let to = booking
        .status
        .apply_at(event, booking.slot_start, chrono::Utc::now())?;
    let updated: Booking = sqlx::query_as(
        "UPDATE bookings SET status = $3, updated_at = clock_timestamp(),
                confirmed_at = CASE WHEN $3 = 'confirmed' THEN clock_timestamp() ELSE confirmed_at END,
                cancelled_at = CASE WHEN $3 = 'cancelled' THEN clock_timestamp() ELSE cancelled_at END,
                cancel_reason = COALESCE($4, cancel_reason),
                payment_ref = COALESCE($5, payment_ref)
         WHERE country_code = $1 AND id = $2 RETURNING *",
    )
    .bind(&booking.country_code)
    .bind(booking.id)
    .bind(to)
    .bind(reason.stored())
    .bind(payment_ref)
    .fetch_one(&mut *conn)
    .await?;
    let (event_type, action) = match to {
        BookingStatus::Confirmed => (types::CONFIRMED, "confirm"),
        BookingStatus::Expired => (types::EXPIRED, "expire"),
        BookingStatus::Cancelled => (types::CANCELLED, "cancel"),
        BookingStatus::Completed => (types::COMPLETED, "complete"),
        BookingStatus::NoShow => (types::NO_SHOW, "no_show"),
        BookingStatus::Held => (types::HELD, "hold"),
    };
    insert_events(
        &mut *conn,
        &[NewEvent {
            event_type,
            data: updated.event_data(reason.published()),
        }],
    )
    .await?;
    insert_audit(
        &mut *conn,
        &[AuditEntry {
            booking_id: booking.id,
            actor: actor.name.clone(),
            actor_role: actor.role.clone(),
            action,
            from: Some(booking.status),
            to,
            request_id: actor.request_id.clone(),
        }],
    )
    .await?;
    Ok(updated)
}

/// Applies a status change requested through the API (cancel, complete, no-show) to one
/// booking, in its own transaction. A cancellation also closes an open schedule conflict.
pub async fn change_status(
    pool: &PgPool,
    id: Uuid,
    event: BookingEvent,
    reason: Option<&str>,
    actor: &Actor,
) -> Result<Booking, TransitionError> {
    crate::retry_conflicts(
        || change_status_once(pool, id, event, reason, actor),
        TransitionError::db,
    )
    .await
}

async fn change_status_once(
    pool: &PgPool,
    id: Uuid,
    event: BookingEvent,
    reason: Option<&str>,
    actor: &Actor,
) -> Result<Booking, TransitionError> {
    let mut tx = pool.begin().await?;
    let booking = lock_booking(&mut tx, id)
        .await?
        .ok_or(TransitionError::NotFound)?;
    let reason = match (event, reason) {
        (BookingEvent::Cancel, Some(text)) => Reason::Text(text, Some("cancelled")),
        (BookingEvent::Cancel, None) => Reason::Code("cancelled"),
        (_, Some(text)) => Reason::Text(text, None),
        (_, None) => Reason::None,
    };
    let updated = transition(&mut tx, &booking, event, actor, reason, None).await?;
    if event == BookingEvent::Cancel {
        crate::conflicts::close(&mut tx, id, "cancelled").await?;
    }
    tx.commit().await?;
    Ok(updated)
}

/// Cancels a held or confirmed booking; the slot is free once this commits.
pub async fn cancel(
    pool: &PgPool,
    id: Uuid,
    reason: Option<&str>,
    actor: &Actor,
) -> Result<Booking, TransitionError> {
    change_status(pool, id, BookingEvent::Cancel, reason, actor).await
}

/// Filters and page position of a booking listing.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// Only this status.
    pub status: Option<BookingStatus>,
    /// Slots starting at or after.
    pub from: Option<DateTime<Utc>>,
    /// Slots starting before.
    pub to: Option<DateTime<Utc>>,
    /// Continue after this (slot_start, id).
    pub after: Option<(DateTime<Utc>, Uuid)>,
    /// Page size.
    pub limit: i64,
}

/// Whose bookings to list.
#[derive(Clone, Copy, Debug)]
pub enum ListOwner {
    /// A patient's.
    Patient(Uuid),
    /// A practitioner's (the day sheet).
    Practitioner(Uuid),
    /// A patient's at one clinic (what that clinic's admin may see).
    PatientAtClinic {
        /// The patient.
        patient: Uuid,
        /// The clinic.
        clinic: Uuid,
    },
}

/// Bookings of a patient or practitioner ordered by (slot_start, id), one page.
pub async fn list(
    pool: &PgPool,
    owner: ListOwner,
    f: &ListFilter,
) -> Result<Vec<Booking>, sqlx::Error> {
    let (by_patient, owner_id, clinic) = match owner {
        ListOwner::Patient(id) => (true, id, None),
        ListOwner::Practitioner(id) => (false, id, None),
        ListOwner::PatientAtClinic { patient, clinic } => (true, patient, Some(clinic)),
    };
    let (after_start, after_id) = f.after.map_or((None, None), |(s, id)| (Some(s), Some(id)));
    sqlx::query_as(
        "SELECT * FROM bookings
         WHERE (CASE WHEN $1 THEN patient_id ELSE practitioner_id END) = $2
           AND ($3::booking_status IS NULL OR status = $3)
           AND ($4::timestamptz IS NULL OR slot_start >= $4)
           AND ($5::timestamptz IS NULL OR slot_start < $5)
           AND ($6::timestamptz IS NULL OR (slot_start, id) > ($6, $7))
           AND ($9::uuid IS NULL
                OR practitioner_id IN (SELECT id FROM practitioners WHERE clinic_id = $9))
         ORDER BY slot_start, id
         LIMIT $8",
    )
    .bind(by_patient)
    .bind(owner_id)
    .bind(f.status)
    .bind(f.from)
    .bind(f.to)
    .bind(after_start)
    .bind(after_id)
    .bind(f.limit)
    .bind(clinic)
    .fetch_all(pool)
    .await
}

/// Start instants of the active bookings of a practitioner in `[from, to)`.
pub async fn active_slot_starts(
    pool: &PgPool,
    practitioner_id: Uuid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<DateTime<Utc>>, sqlx::Error> {
    // Active bookings without the country: `status::text` (`db` module docs).
    sqlx::query_scalar(
        "SELECT slot_start FROM bookings
         WHERE practitioner_id = $1 AND slot_start >= $2 AND slot_start < $3
           AND status::text IN ('held', 'confirmed')",
    )
    .bind(practitioner_id)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
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
                previous_slot_start: None,
                kind: None,
                payment: None,
            },
        })
        .collect();
    let audit: Vec<AuditEntry> = expired
        .iter()
        .map(|e| AuditEntry {
            booking_id: e.id,
            actor: "scheduler".into(),
            actor_role: "system".into(),
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
