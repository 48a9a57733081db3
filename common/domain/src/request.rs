//! Booking requests: what a client asked for and what became of it (DESIGN §4).
//!
//! ```text
//! request: queued ──▶ held | rejected(reason)
//! ```
//!
//! Once held, a request reports its booking's status ([`RequestStatus::of_booking`]). The
//! wire names are the `snake_case` variant names; PostgreSQL stores them as text
//! (`booking_requests.reason`) or as enums read through a `::text` cast (`kind`, `outcome`),
//! so every type here reads and writes text ([`text_enum!`]).

use crate::status::BookingStatus;

/// Defines a unit-only enum with one wire name per variant: `as_str`, `Display`, `FromStr`,
/// serde and utoipa by that name, and (feature `sqlx`) PostgreSQL text encoding.
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident => $wire:literal, )+ }
    ) => {
        $(#[$meta])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
            utoipa::ToSchema,
        )]
        // The wire names are the variants' snake_case names (a unit test checks `as_str`
        // agrees); utoipa reads `rename_all`, not a per-variant `rename` made by a macro.
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &[$name] = &[$($name::$variant),+];

            /// The wire (and database) name.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $wire,)+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, UnknownName> {
                match s {
                    $($wire => Ok($name::$variant),)+
                    other => Err(UnknownName { kind: stringify!($name), name: other.to_owned() }),
                }
            }
        }

        #[cfg(feature = "sqlx")]
        impl sqlx::Type<sqlx::Postgres> for $name {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<sqlx::Postgres>>::type_info()
            }
            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        #[cfg(feature = "sqlx")]
        impl sqlx::Encode<'_, sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::Postgres>>::encode(self.as_str(), buf)
            }
        }

        #[cfg(feature = "sqlx")]
        impl sqlx::Decode<'_, sqlx::Postgres> for $name {
            fn decode(value: sqlx::postgres::PgValueRef<'_>) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
                Ok(text.parse()?)
            }
        }

        #[cfg(feature = "sqlx")]
        impl sqlx::postgres::PgHasArrayType for $name {
            fn array_type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::postgres::PgHasArrayType>::array_type_info()
            }
        }
    };
}

/// A name that is not one of an enum's wire names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a {kind}")]
pub struct UnknownName {
    /// The enum's Rust name.
    pub kind: &'static str,
    /// What was read.
    pub name: String,
}

text_enum! {
    /// What a booking request asks for (the PostgreSQL enum `request_kind`).
    pub enum RequestKind {
        /// A new hold of `slot_start`.
        Book => "book",
        /// Moving an existing booking to `slot_start`.
        Reschedule => "reschedule",
    }
}

impl Default for RequestKind {
    /// Jobs and cached views written before `kind` existed were all bookings.
    fn default() -> Self {
        RequestKind::Book
    }
}

text_enum! {
    /// The durable decision on a request (the PostgreSQL enum `request_outcome`).
    pub enum RequestOutcome {
        /// It won its slot (or moved its booking).
        Held => "held",
        /// It was refused, with a [`RejectionReason`].
        Rejected => "rejected",
    }
}

text_enum! {
    /// Where a request stands, as `GET /v1/booking-requests/{id}` reports it: `queued` until
    /// decided, `rejected`, or once held the status of its booking.
    pub enum RequestStatus {
        /// Accepted, waiting for a worker's decision.
        Queued => "queued",
        /// Holds its slot until `hold_expires_at`.
        Held => "held",
        /// Refused; `reason` says why.
        Rejected => "rejected",
        /// Paid (also when the visit was later completed or missed).
        Confirmed => "confirmed",
        /// Not paid in time.
        Expired => "expired",
        /// Cancelled after it was held.
        Cancelled => "cancelled",
    }
}

impl RequestStatus {
    /// The status of a held request whose booking is in `status`. A visit that took place or
    /// was missed was a confirmed booking: the request says `confirmed`, the booking resource
    /// itself `completed` or `no_show` (DESIGN §5 lists no other request statuses).
    pub fn of_booking(status: BookingStatus) -> Self {
        match status {
            BookingStatus::Held => RequestStatus::Held,
            BookingStatus::Confirmed | BookingStatus::Completed | BookingStatus::NoShow => {
                RequestStatus::Confirmed
            }
            BookingStatus::Expired => RequestStatus::Expired,
            BookingStatus::Cancelled => RequestStatus::Cancelled,
        }
    }

    /// Whether the request still waits for its decision.
    pub fn is_queued(self) -> bool {
        self == RequestStatus::Queued
    }

    /// Whether the request holds (or held and kept) an active booking.
    pub fn is_active(self) -> bool {
        matches!(self, RequestStatus::Held | RequestStatus::Confirmed)
    }
}

text_enum! {
    /// Why a request was rejected: durable in `booking_requests.reason`, in the poll view,
    /// in `booking.rejected` events and in the `slotq_decisions_total` metric's label.
    pub enum RejectionReason {
        /// Another active booking has the slot.
        SlotTaken => "slot_taken",
        /// The patient already has an active booking starting at that instant.
        PatientConflict => "patient_conflict",
        /// Not a slot of the practitioner's grid and hours (or one a clock change cuts).
        InvalidSlot => "invalid_slot",
        /// The slot has started or passed.
        InPast => "in_past",
        /// Further ahead than the booking horizon.
        BeyondHorizon => "beyond_horizon",
        /// No such practitioner.
        UnknownPractitioner => "unknown_practitioner",
        /// No such patient.
        UnknownPatient => "unknown_patient",
        /// A reschedule of a booking that does not exist.
        UnknownBooking => "unknown_booking",
        /// A reschedule of a booking that is no longer held or confirmed.
        BookingNotActive => "booking_not_active",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip_through_text_and_json() {
        for r in RejectionReason::ALL {
            assert_eq!(r.as_str().parse::<RejectionReason>(), Ok(*r));
            let json = serde_json::to_string(r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.as_str()));
            assert_eq!(serde_json::from_str::<RejectionReason>(&json).unwrap(), *r);
        }
        for s in RequestStatus::ALL {
            assert_eq!(s.to_string().parse::<RequestStatus>(), Ok(*s));
        }
        assert_eq!("reschedule".parse(), Ok(RequestKind::Reschedule));
        assert_eq!("rejected".parse(), Ok(RequestOutcome::Rejected));
    }

    #[test]
    fn an_unknown_name_is_an_error_that_names_it() {
        let e = "overbooked".parse::<RejectionReason>().unwrap_err();
        assert_eq!(e.name, "overbooked");
        assert!(e.to_string().contains("RejectionReason"), "{e}");
        assert!(serde_json::from_str::<RequestStatus>("\"pending\"").is_err());
    }

    #[test]
    fn a_held_request_reports_its_bookings_status_as_the_api_lists_it() {
        use BookingStatus as B;
        assert_eq!(RequestStatus::of_booking(B::Held), RequestStatus::Held);
        assert_eq!(
            RequestStatus::of_booking(B::Completed),
            RequestStatus::Confirmed
        );
        assert_eq!(
            RequestStatus::of_booking(B::NoShow),
            RequestStatus::Confirmed
        );
        assert_eq!(
            RequestStatus::of_booking(B::Expired),
            RequestStatus::Expired
        );
        assert_eq!(
            RequestStatus::of_booking(B::Cancelled),
            RequestStatus::Cancelled
        );
        assert!(RequestStatus::Confirmed.is_active() && !RequestStatus::Expired.is_active());
    }

    #[test]
    fn kind_defaults_to_book_for_views_written_before_it_existed() {
        assert_eq!(RequestKind::default(), RequestKind::Book);
    }
}
