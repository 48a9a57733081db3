//! The transactional outbox and the audit log: both are written inside the transaction that
//! makes the change they describe, so an event exists if and only if the change committed.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::status::BookingStatus;

/// Event types of the `booking-events` stream.
pub mod types {
    /// A request won its slot.
    pub const HELD: &str = "booking.held";
    /// A request was refused.
    pub const REJECTED: &str = "booking.rejected";
    /// Payment confirmed a hold.
    pub const CONFIRMED: &str = "booking.confirmed";
    /// A hold ran out.
    pub const EXPIRED: &str = "booking.expired";
    /// A booking was cancelled.
    pub const CANCELLED: &str = "booking.cancelled";
    /// Money arrived for a hold that is no longer active: refund it.
    pub const PAYMENT_LATE: &str = "booking.payment_late";
    /// A booking moved to another slot.
    pub const RESCHEDULED: &str = "booking.rescheduled";
    /// New hours no longer cover an active booking; the clinic must resolve it.
    pub const SCHEDULE_CONFLICT: &str = "booking.schedule_conflict";
    /// The visit took place.
    pub const COMPLETED: &str = "booking.completed";
    /// The patient did not come.
    pub const NO_SHOW: &str = "booking.no_show";

    /// Every type above: a new type added here is at once offered to webhook subscribers.
    pub const ALL: &[&str] = &[
        HELD,
        REJECTED,
        CONFIRMED,
        EXPIRED,
        CANCELLED,
        PAYMENT_LATE,
        RESCHEDULED,
        SCHEDULE_CONFLICT,
        COMPLETED,
        NO_SHOW,
    ];
}

/// The payload of every booking event: ids only, never personal data.
#[derive(Clone, Debug, Serialize)]
pub struct BookingEventData {
    /// The booking, when one exists.
    pub booking_id: Option<Uuid>,
    /// The request that created it (or was rejected).
    pub request_id: Uuid,
    /// Practitioner (also the partition key of the topic).
    pub practitioner_id: Uuid,
    /// Patient.
    pub patient_id: Uuid,
    /// Slot start.
    pub slot_start: DateTime<Utc>,
    /// Status after the change, or `rejected`.
    pub status: String,
    /// Rejection or cancellation reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The slot a rescheduled booking left.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_slot_start: Option<DateTime<Utc>>,
}

/// One outbox row to write.
#[derive(Clone, Debug)]
pub struct NewEvent {
    /// One of [`types`].
    pub event_type: &'static str,
    /// What the event is about.
    pub data: BookingEventData,
}

/// Appends events to the outbox.
pub async fn insert_events(
    conn: &mut PgConnection,
    events: &[NewEvent],
) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(events.len());
    let mut kinds = Vec::with_capacity(events.len());
    let mut aggregates = Vec::with_capacity(events.len());
    let mut keys = Vec::with_capacity(events.len());
    let mut payloads = Vec::with_capacity(events.len());
    for e in events {
        ids.push(Uuid::now_v7());
        kinds.push(e.event_type);
        aggregates.push(e.data.booking_id.unwrap_or(e.data.request_id));
        keys.push(e.data.practitioner_id.to_string());
        payloads
            .push(serde_json::to_value(&e.data).map_err(|err| sqlx::Error::Encode(Box::new(err)))?);
    }
    sqlx::query(
        "INSERT INTO outbox (event_id, type, aggregate_id, key, payload)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::jsonb[])",
    )
    .bind(&ids)
    .bind(&kinds)
    .bind(&aggregates)
    .bind(&keys)
    .bind(&payloads)
    .execute(conn)
    .await?;
    Ok(())
}

/// One audit row to write.
#[derive(Clone, Debug)]
pub struct AuditEntry {
    /// The booking.
    pub booking_id: Uuid,
    /// Who did it: the token's subject, or `worker`, `scheduler`, `payment-provider`.
    pub actor: String,
    /// The caller's role (`patient`, `clinic_admin`, `ops`, `service`), or `system`.
    pub actor_role: String,
    /// What was done (`hold`, `confirm`, `expire`, `cancel`, …).
    pub action: &'static str,
    /// Status before, `None` at creation.
    pub from: Option<BookingStatus>,
    /// Status after.
    pub to: BookingStatus,
    /// The HTTP request id or booking request id that caused it.
    pub request_id: Option<String>,
}

/// Appends audit rows.
pub async fn insert_audit(
    conn: &mut PgConnection,
    entries: &[AuditEntry],
) -> Result<(), sqlx::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    let bookings: Vec<Uuid> = entries.iter().map(|e| e.booking_id).collect();
    let actors: Vec<&str> = entries.iter().map(|e| e.actor.as_str()).collect();
    let roles: Vec<&str> = entries.iter().map(|e| e.actor_role.as_str()).collect();
    let actions: Vec<&str> = entries.iter().map(|e| e.action).collect();
    let froms: Vec<Option<&str>> = entries
        .iter()
        .map(|e| e.from.map(BookingStatus::as_str))
        .collect();
    let tos: Vec<&str> = entries.iter().map(|e| e.to.as_str()).collect();
    let requests: Vec<Option<&str>> = entries.iter().map(|e| e.request_id.as_deref()).collect();
    sqlx::query(
        "INSERT INTO audit_log (booking_id, actor, action, from_status, to_status, request_id, actor_role)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])",
    )
    .bind(&bookings)
    .bind(&actors)
    .bind(&actions)
    .bind(&froms)
    .bind(&tos)
    .bind(&requests)
    .bind(&roles)
    .execute(conn)
    .await?;
    Ok(())
}

/// One audit row as listed by `GET /v1/bookings/{id}/audit`.
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AuditRow {
    /// Who.
    pub actor: String,
    /// Their role.
    pub actor_role: Option<String>,
    /// What.
    pub action: String,
    /// Status before.
    pub from_status: Option<String>,
    /// Status after.
    pub to_status: String,
    /// The request that caused it.
    pub request_id: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

/// The audit trail of a booking, oldest first.
pub async fn audit_trail(
    pool: &sqlx::PgPool,
    booking_id: Uuid,
) -> Result<Vec<AuditRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT actor, actor_role, action, from_status, to_status, request_id, at
         FROM audit_log WHERE booking_id = $1 ORDER BY at, id",
    )
    .bind(booking_id)
    .fetch_all(pool)
    .await
}
