//! The transactional outbox and the audit log: both are written inside the transaction that
//! makes the change they describe, so an event exists if and only if the change committed.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use slotq_domain::status::BookingStatus;

pub use slotq_domain::events::types;

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
    #[serde(serialize_with = "slotq_domain::json_time::utc")]
    pub slot_start: DateTime<Utc>,
    /// Status after the change, or `rejected`.
    pub status: String,
    /// Rejection or cancellation reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The slot a rescheduled booking left.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "slotq_domain::json_time::utc_opt"
    )]
    pub previous_slot_start: Option<DateTime<Utc>>,
    /// For the events of a worker's decision: the deciding request's kind, `book` or
    /// `reschedule`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<slotq_domain::request::RequestKind>,
    /// For `booking.payment_late`: the payment to refund, as the provider named it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment: Option<PaymentData>,
}

/// A provider's payment, as a `booking.payment_late` event names it (ids and amounts only).
#[derive(Clone, Debug, Serialize)]
pub struct PaymentData {
    /// The provider's event id of this payment.
    pub id: String,
    /// Amount in minor units.
    pub amount: Option<i64>,
    /// ISO 4217 currency code.
    pub currency: Option<String>,
    /// The payment that confirmed the booking earlier, if one did (so the refund is not
    /// taken for it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirmed_by: Option<String>,
}

/// One outbox row to write.
#[derive(Clone, Debug)]
pub struct NewEvent {
    /// One of [`types`].
    pub event_type: &'static str,
    /// What the event is about.
    pub data: BookingEventData,
}

/// Outbox rows as the column arrays of an `unnest` insert.
pub(crate) struct EventColumns {
    pub(crate) ids: Vec<Uuid>,
    pub(crate) kinds: Vec<&'static str>,
    pub(crate) aggregates: Vec<Uuid>,
    pub(crate) keys: Vec<String>,
    /// JSON text, bound as `text[]` and cast to `jsonb[]` by the statement: serialized once,
    /// straight from the data (not built as a `serde_json::Value` and serialized again by the
    /// binding).
    pub(crate) payloads: Vec<String>,
}

impl EventColumns {
    pub(crate) fn of<'a>(
        events: impl ExactSizeIterator<Item = &'a NewEvent>,
    ) -> Result<Self, sqlx::Error> {
        let n = events.len();
        let mut c = EventColumns {
            ids: Vec::with_capacity(n),
            kinds: Vec::with_capacity(n),
            aggregates: Vec::with_capacity(n),
            keys: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
        };
        for e in events {
            c.ids.push(Uuid::now_v7());
            c.kinds.push(e.event_type);
            // A rejection is about the request (a rejected reschedule names the booking it was
            // to move in its data, but that booking did not change).
            c.aggregates.push(if e.event_type == types::REJECTED {
                e.data.request_id
            } else {
                e.data.booking_id.unwrap_or(e.data.request_id)
            });
            c.keys.push(e.data.practitioner_id.to_string());
            c.payloads.push(
                serde_json::to_string(&e.data).map_err(|err| sqlx::Error::Encode(Box::new(err)))?,
            );
        }
        Ok(c)
    }
}

/// Binds [`EventColumns`] to a query (a `Query` or a `QueryAs`) in the order of the outbox
/// columns `event_id, type, aggregate_id, key, payload`, the one order every insert uses.
macro_rules! bind_event_columns {
    ($query:expr, $c:expr) => {
        $query
            .bind(&$c.ids)
            .bind(&$c.kinds)
            .bind(&$c.aggregates)
            .bind(&$c.keys)
            .bind(&$c.payloads)
    };
}
pub(crate) use bind_event_columns;

/// Binds [`AuditColumns`] in the order of the audit columns `booking_id, actor, action,
/// from_status, to_status, request_id, actor_role`, the one order every insert uses.
macro_rules! bind_audit_columns {
    ($query:expr, $c:expr) => {
        $query
            .bind(&$c.bookings)
            .bind(&$c.actors)
            .bind(&$c.actions)
            .bind(&$c.froms)
            .bind(&$c.tos)
            .bind(&$c.requests)
            .bind(&$c.roles)
    };
}
pub(crate) use bind_audit_columns;

/// Appends events to the outbox.
pub async fn insert_events(
    conn: &mut PgConnection,
    events: &[NewEvent],
) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let c = EventColumns::of(events.iter())?;
    bind_event_columns!(
        sqlx::query(
            "INSERT INTO outbox (event_id, type, aggregate_id, key, payload)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[]::jsonb[])",
        ),
        c
    )
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

/// Audit rows as the column arrays of an `unnest` insert.
pub(crate) struct AuditColumns<'a> {
    pub(crate) bookings: Vec<Uuid>,
    pub(crate) actors: Vec<&'a str>,
    pub(crate) roles: Vec<&'a str>,
    pub(crate) actions: Vec<&'static str>,
    pub(crate) froms: Vec<Option<&'static str>>,
    pub(crate) tos: Vec<&'static str>,
    pub(crate) requests: Vec<Option<&'a str>>,
}

impl<'a> AuditColumns<'a> {
    pub(crate) fn of(entries: impl ExactSizeIterator<Item = &'a AuditEntry>) -> Self {
        let n = entries.len();
        let mut c = AuditColumns {
            bookings: Vec::with_capacity(n),
            actors: Vec::with_capacity(n),
            roles: Vec::with_capacity(n),
            actions: Vec::with_capacity(n),
            froms: Vec::with_capacity(n),
            tos: Vec::with_capacity(n),
            requests: Vec::with_capacity(n),
        };
        for e in entries {
            c.bookings.push(e.booking_id);
            c.actors.push(e.actor.as_str());
            c.roles.push(e.actor_role.as_str());
            c.actions.push(e.action);
            c.froms.push(e.from.map(BookingStatus::as_str));
            c.tos.push(e.to.as_str());
            c.requests.push(e.request_id.as_deref());
        }
        c
    }
}

/// Appends audit rows.
pub async fn insert_audit(
    conn: &mut PgConnection,
    entries: &[AuditEntry],
) -> Result<(), sqlx::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    let c = AuditColumns::of(entries.iter());
    bind_audit_columns!(
        sqlx::query(
            "INSERT INTO audit_log (booking_id, actor, action, from_status, to_status, request_id, actor_role)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])",
        ),
        c
    )
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
