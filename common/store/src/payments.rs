//! Payment-provider notifications: idempotent on the provider's event id, and racing safely
//! with expiry because both lock the same booking row.

use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    bookings::{Actor, Booking, Reason, TransitionError, lock_booking, transition},
    events::{BookingEventData, NewEvent, PaymentData, insert_events, types},
};
use slotq_domain::status::{BookingEvent, BookingStatus};

/// A verified notification from the payment provider.
#[derive(Clone, Debug)]
pub struct PaymentNotice {
    /// The provider's event id (idempotency key).
    pub event_id: String,
    /// `payment.succeeded`, `payment.failed` or another type (ignored).
    pub event_type: String,
    /// The booking paid for.
    pub booking_id: Uuid,
    /// Amount in minor units.
    pub amount: Option<i64>,
    /// ISO currency.
    pub currency: Option<String>,
}

/// What a notification did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaymentOutcome {
    /// The hold is now confirmed.
    Confirmed,
    /// It was confirmed before.
    AlreadyConfirmed,
    /// A failed payment cancelled the hold.
    Cancelled,
    /// Money for a hold that expired or was cancelled: refund it.
    LatePaymentRefundRequired,
    /// Nothing to do.
    Ignored,
}

impl PaymentOutcome {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentOutcome::Confirmed => "confirmed",
            PaymentOutcome::AlreadyConfirmed => "already_confirmed",
            PaymentOutcome::Cancelled => "cancelled",
            PaymentOutcome::LatePaymentRefundRequired => "late_payment_refund_required",
            PaymentOutcome::Ignored => "ignored",
        }
    }

    fn parse(s: &str) -> PaymentOutcome {
        match s {
            "confirmed" => PaymentOutcome::Confirmed,
            "already_confirmed" => PaymentOutcome::AlreadyConfirmed,
            "cancelled" => PaymentOutcome::Cancelled,
            "late_payment_refund_required" => PaymentOutcome::LatePaymentRefundRequired,
            _ => PaymentOutcome::Ignored,
        }
    }
}

/// The result of applying a notice.
#[derive(Clone, Debug)]
pub struct PaymentResult {
    /// The answer to the provider.
    pub outcome: PaymentOutcome,
    /// `true` when the event id was seen before (nothing changed this time).
    pub duplicate: bool,
    /// The booking after the change, when its status changed now.
    pub changed: Option<Booking>,
}

/// Why a notice was not applied.
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    /// The booking is unknown, or the database failed.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// The event id was recorded before for a different notification (another booking, type,
    /// amount or currency): nothing is changed and the earlier answer is not repeated.
    #[error("event id already used for a different notification")]
    EventReused,
}

impl PaymentError {
    /// The database error, if that is what it is.
    pub fn db(&self) -> Option<&sqlx::Error> {
        match self {
            PaymentError::Transition(t) => t.db(),
            PaymentError::EventReused => None,
        }
    }
}

impl From<sqlx::Error> for PaymentError {
    fn from(e: sqlx::Error) -> Self {
        PaymentError::Transition(e.into())
    }
}

/// A notification recorded before under the same event id.
#[derive(sqlx::FromRow)]
struct StoredEvent {
    booking_id: Uuid,
    #[sqlx(rename = "type")]
    event_type: String,
    amount: Option<i64>,
    currency: Option<String>,
    outcome: String,
}

impl StoredEvent {
    /// The earlier answer when `notice` is the same notification again.
    fn replay(self, notice: &PaymentNotice) -> Result<PaymentResult, PaymentError> {
        let same = self.booking_id == notice.booking_id
            && self.event_type == notice.event_type
            && self.amount == notice.amount
            && self.currency == notice.currency;
        if !same {
            return Err(PaymentError::EventReused);
        }
        Ok(PaymentResult {
            outcome: PaymentOutcome::parse(&self.outcome),
            duplicate: true,
            changed: None,
        })
    }
}

const STORED_EVENT: &str =
    "SELECT booking_id, type, amount, currency, outcome FROM payment_events WHERE event_id = $1";

/// Applies a payment notice. `NotFound` when the booking does not exist, `EventReused` when
/// the event id came before with another notification (nothing stored or changed either way).
pub async fn apply_payment(
    pool: &PgPool,
    notice: &PaymentNotice,
    actor: &Actor,
) -> Result<PaymentResult, PaymentError> {
    crate::retry_conflicts(|| apply_payment_once(pool, notice, actor), PaymentError::db).await
}

async fn apply_payment_once(
    pool: &PgPool,
    notice: &PaymentNotice,
    actor: &Actor,
) -> Result<PaymentResult, PaymentError> {
    let stored: Option<StoredEvent> = sqlx::query_as(STORED_EVENT)
        .bind(&notice.event_id)
        .fetch_optional(pool)
        .await?;
    if let Some(stored) = stored {
        return stored.replay(notice);
    }
    let mut tx = pool.begin().await?;
    let booking = lock_booking(&mut tx, notice.booking_id)
        .await?
        .ok_or(TransitionError::NotFound)?;
    // Checked again under the lock: a duplicate delivered concurrently waited on the row.
    let dup: Option<StoredEvent> = sqlx::query_as(STORED_EVENT)
        .bind(&notice.event_id)
        .fetch_optional(&mut *tx)
        .await?;
    if let Some(stored) = dup {
        return stored.replay(notice);
    }
    let past_due = booking.hold_lapsed(chrono::Utc::now());
    let (outcome, changed) = match (notice.event_type.as_str(), booking.status) {
        ("payment.succeeded", BookingStatus::Held) if !past_due => {
            let b = transition(
                &mut tx,
                &booking,
                BookingEvent::PaymentSucceeded,
                actor,
                Reason::None,
                Some(&notice.event_id),
            )
            .await?;
            (PaymentOutcome::Confirmed, Some(b))
        }
        ("payment.succeeded", BookingStatus::Held) => {
            // Due but not yet swept: expire it now, so the answer and the state agree.
            let expirer = Actor {
                name: "payment-provider".into(),
                role: "system".into(),
                request_id: actor.request_id.clone(),
            };
            let b = transition(
                &mut tx,
                &booking,
                BookingEvent::Expire,
                &expirer,
                Reason::Code("hold_expired"),
                None,
            )
            .await?;
            late_payment(&mut tx, &b, notice).await?;
            (PaymentOutcome::LatePaymentRefundRequired, Some(b))
        }
        (
            "payment.succeeded",
            BookingStatus::Confirmed | BookingStatus::Completed | BookingStatus::NoShow,
        ) => {
            // Another payment than the one that confirmed it (a replay of that one was
            // answered above): the patient paid twice, and this one must be refunded.
            late_payment(&mut tx, &booking, notice).await?;
            (PaymentOutcome::AlreadyConfirmed, None)
        }
        ("payment.succeeded", BookingStatus::Expired | BookingStatus::Cancelled) => {
            late_payment(&mut tx, &booking, notice).await?;
            (PaymentOutcome::LatePaymentRefundRequired, None)
        }
        ("payment.failed", BookingStatus::Held) => {
            let b = transition(
                &mut tx,
                &booking,
                BookingEvent::PaymentFailed,
                actor,
                Reason::Code("payment_failed"),
                None,
            )
            .await?;
            (PaymentOutcome::Cancelled, Some(b))
        }
        _ => (PaymentOutcome::Ignored, None),
    };
    sqlx::query(
        "INSERT INTO payment_events (event_id, booking_id, type, amount, currency, outcome)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&notice.event_id)
    .bind(notice.booking_id)
    .bind(&notice.event_type)
    .bind(notice.amount)
    .bind(&notice.currency)
    .bind(outcome.as_str())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(PaymentResult {
        outcome,
        duplicate: false,
        changed,
    })
}

/// `booking.payment_late`: a payment the booking cannot take, named so it can be refunded.
async fn late_payment(
    conn: &mut sqlx::PgConnection,
    booking: &Booking,
    notice: &PaymentNotice,
) -> Result<(), sqlx::Error> {
    let data = BookingEventData {
        payment: Some(PaymentData {
            id: notice.event_id.clone(),
            amount: notice.amount,
            currency: notice.currency.clone(),
            confirmed_by: booking.payment_ref.clone(),
        }),
        ..booking.event_data(Some("refund_required".into()))
    };
    insert_events(
        conn,
        &[NewEvent {
            event_type: types::PAYMENT_LATE,
            data,
        }],
    )
    .await
}
