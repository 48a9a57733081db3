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
    Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[cfg_attr(feature = "sqlx", derive(sqlx::Type))]
#[serde(rename_all = "snake_case")]
#[cfg_attr(
    feature = "sqlx",
    sqlx(type_name = "booking_status", rename_all = "snake_case")
)]
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
    /// The booking moves to another slot; its status is kept.
    Reschedule,
}

/// A transition the state machine does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{why}")]
pub struct IllegalTransition {
    /// Current status.
    pub from: BookingStatus,
    /// The refused event.
    pub event: BookingEvent,
    /// Explanation for the client.
    pub why: &'static str,
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
            (S::Held | S::Confirmed, E::Reschedule) => Ok(self),
            (from, event) => Err(IllegalTransition {
                from,
                event,
                why: "this change is not allowed in the booking's current status",
            }),
        }
    }

    /// [`apply`](Self::apply) with the rules that depend on time: a visit's outcome can only
    /// be recorded once the slot has started. Every status change in slotq goes through here.
    pub fn apply_at(
        self,
        event: BookingEvent,
        slot_start: chrono::DateTime<chrono::Utc>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<BookingStatus, IllegalTransition> {
        let to = self.apply(event)?;
        if matches!(event, BookingEvent::Complete | BookingEvent::NoShow) && now < slot_start {
            return Err(IllegalTransition {
                from: self,
                event,
                why: "the visit has not started yet",
            });
        }
        if event == BookingEvent::Reschedule && now >= slot_start {
            return Err(IllegalTransition {
                from: self,
                event,
                why: "a visit that has started cannot be rescheduled",
            });
        }
        Ok(to)
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
            E::Reschedule,
        ];
        let allowed = all
            .iter()
            .flat_map(|s| events.iter().map(move |e| (*s, *e)))
            .filter(|(s, e)| s.apply(*e).is_ok())
            .count();
        assert_eq!(allowed, 9);
        assert!(S::Expired.apply(E::PaymentSucceeded).is_err());
        assert!(S::Confirmed.apply(E::Expire).is_err());
        for s in all {
            assert_eq!(s.as_str().parse::<S>(), Ok(s));
        }
    }

    #[test]
    fn visit_outcomes_wait_for_the_slot_and_reschedules_must_come_before_it() {
        let slot = chrono::Utc::now();
        let before = slot - chrono::Duration::minutes(1);
        let after = slot + chrono::Duration::minutes(1);
        assert!(S::Confirmed.apply_at(E::Complete, slot, before).is_err());
        assert_eq!(
            S::Confirmed.apply_at(E::Complete, slot, after),
            Ok(S::Completed)
        );
        assert_eq!(S::Confirmed.apply_at(E::NoShow, slot, after), Ok(S::NoShow));
        assert!(S::Held.apply_at(E::Complete, slot, after).is_err());
        assert_eq!(
            S::Confirmed.apply_at(E::Reschedule, slot, before),
            Ok(S::Confirmed)
        );
        assert!(S::Confirmed.apply_at(E::Reschedule, slot, after).is_err());
    }
}
