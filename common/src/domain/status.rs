//! The booking state machine: every status change in slotq is decided here.
//!
//! ```text
//! held ──payment.succeeded──▶ confirmed ──▶ completed | no_show
//! held ──hold_expires_at──▶ expired          held|confirmed ──cancel──▶ cancelled
//! held ──payment.failed──▶ cancelled
//! ```

use std::{fmt, str::FromStr};

/// Status of a booking (the PostgreSQL enum `booking_status`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "booking_status", rename_all = "snake_case")]
pub enum BookingStatus {
    /// Slot reserved, waiting for payment until `hold_expires_at`.
    Held,
    /// Paid.
    Confirmed,
    /// Not paid in time; the slot is free again.
    Expired,
    /// Cancelled by the patient, the clinic or a failed payment; the slot is free again.
    Cancelled,
    /// The visit took place.
    Completed,
    /// The patient did not come.
    NoShow,
}

/// Something that happens to a booking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BookingEvent {
    /// The payment provider reports success.
    PaymentSucceeded,
    /// The payment provider reports failure.
    PaymentFailed,
    /// The hold's time ran out.
    Expire,
    /// The patient or clinic cancels.
    Cancel,
    /// The visit happened.
    Complete,
    /// The patient did not come.
    NoShow,
}

/// A transition the state machine does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a {from} booking cannot be {event:?}")]
pub struct IllegalTransition {
    /// Current status.
    pub from: BookingStatus,
    /// The refused event.
    pub event: BookingEvent,
}

impl BookingStatus {
    /// The status after `event`, or why not.
    pub fn apply(self, event: BookingEvent) -> Result<BookingStatus, IllegalTransition> {
        use BookingEvent as E;
        use BookingStatus as S;
        match (self, event) {
            (S::Held, E::PaymentSucceeded) => Ok(S::Confirmed),
            (S::Held, E::PaymentFailed) => Ok(S::Cancelled),
            (S::Held, E::Expire) => Ok(S::Expired),
            (S::Held | S::Confirmed, E::Cancel) => Ok(S::Cancelled),
            (S::Confirmed, E::Complete) => Ok(S::Completed),
            (S::Confirmed, E::NoShow) => Ok(S::NoShow),
            (from, event) => Err(IllegalTransition { from, event }),
        }
    }

    /// Whether the booking occupies its slot.
    pub fn is_active(self) -> bool {
        matches!(self, BookingStatus::Held | BookingStatus::Confirmed)
    }

    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            BookingStatus::Held => "held",
            BookingStatus::Confirmed => "confirmed",
            BookingStatus::Expired => "expired",
            BookingStatus::Cancelled => "cancelled",
            BookingStatus::Completed => "completed",
            BookingStatus::NoShow => "no_show",
        }
    }
}

impl fmt::Display for BookingStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BookingStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "held" => BookingStatus::Held,
            "confirmed" => BookingStatus::Confirmed,
            "expired" => BookingStatus::Expired,
            "cancelled" => BookingStatus::Cancelled,
            "completed" => BookingStatus::Completed,
            "no_show" => BookingStatus::NoShow,
            other => return Err(format!("unknown booking status {other:?}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{BookingEvent as E, BookingStatus as S};

    #[test]
    fn the_documented_transitions_are_allowed() {
        assert_eq!(S::Held.apply(E::PaymentSucceeded), Ok(S::Confirmed));
        assert_eq!(S::Held.apply(E::PaymentFailed), Ok(S::Cancelled));
        assert_eq!(S::Held.apply(E::Expire), Ok(S::Expired));
        assert_eq!(S::Held.apply(E::Cancel), Ok(S::Cancelled));
        assert_eq!(S::Confirmed.apply(E::Cancel), Ok(S::Cancelled));
        assert_eq!(S::Confirmed.apply(E::Complete), Ok(S::Completed));
        assert_eq!(S::Confirmed.apply(E::NoShow), Ok(S::NoShow));
    }

    #[test]
    fn everything_else_is_refused() {
        let all = [
            S::Held,
            S::Confirmed,
            S::Expired,
            S::Cancelled,
            S::Completed,
            S::NoShow,
        ];
        let events = [
            E::PaymentSucceeded,
            E::PaymentFailed,
            E::Expire,
            E::Cancel,
            E::Complete,
            E::NoShow,
        ];
        let allowed = all
            .iter()
            .flat_map(|s| events.iter().map(move |e| (*s, *e)))
            .filter(|(s, e)| s.apply(*e).is_ok())
            .count();
        assert_eq!(allowed, 7);
        assert!(S::Expired.apply(E::PaymentSucceeded).is_err());
        assert!(S::Confirmed.apply(E::Expire).is_err());
        for s in all {
            assert_eq!(s.as_str().parse::<S>(), Ok(s));
        }
    }
}
