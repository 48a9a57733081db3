//! The response bodies of the API that are not a store row as it is: pages, composed views
//! and small answers. Handlers return these types, and the OpenAPI document describes the
//! same types, so a body cannot drift from its schema.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use slotq_store::{
    bookings::Booking,
    conflicts::Conflict,
    directory::Practitioner,
    events::AuditRow,
    webhooks::{AttemptView, Delivery, Subscription},
};
use utoipa::ToSchema;
use uuid::Uuid;

/// A page of bookings.
#[derive(Serialize, ToSchema)]
pub struct BookingPage {
    /// Bookings in (slot_start, id) order.
    pub items: Vec<Booking>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// A new webhook subscription, with its signing secret (shown this once).
#[derive(Serialize, ToSchema)]
pub struct SubscriptionCreated {
    /// The subscription.
    #[serde(flatten)]
    pub subscription: Subscription,
    /// `whsec_` + base64 key: verifies the `webhook-signature` of every delivery.
    pub secret: String,
}

/// A page of webhook subscriptions.
#[derive(Serialize, ToSchema)]
pub struct SubscriptionPage {
    /// Oldest first.
    pub items: Vec<Subscription>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<Uuid>,
}

/// A page of a subscription's deliveries.
#[derive(Serialize, ToSchema)]
pub struct DeliveryPage {
    /// Newest first.
    pub items: Vec<Delivery>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<Uuid>,
}

/// A delivery with every attempt made.
#[derive(Serialize, ToSchema)]
pub struct DeliveryDetail {
    /// The delivery.
    #[serde(flatten)]
    pub delivery: Delivery,
    /// Its attempts, in order.
    pub history: Vec<AttemptView>,
}

/// Open schedule conflicts.
#[derive(Serialize, ToSchema)]
pub struct ConflictList {
    /// Earliest first.
    pub items: Vec<Conflict>,
}

/// A booking's audit trail.
#[derive(Serialize, ToSchema)]
pub struct AuditTrail {
    /// The booking.
    pub booking_id: Uuid,
    /// Oldest first.
    pub items: Vec<AuditRow>,
}

/// One free slot.
#[derive(Serialize, ToSchema)]
pub struct FreeSlot {
    /// Start.
    pub start: DateTime<Utc>,
    /// End.
    pub end: DateTime<Utc>,
}

/// Free slots of one local day.
#[derive(Serialize, ToSchema)]
pub struct AvailabilityDay {
    /// Local date in the clinic's time zone.
    pub date: NaiveDate,
    /// Free slots, in order.
    pub slots: Vec<FreeSlot>,
}

/// A practitioner's availability.
#[derive(Serialize, ToSchema)]
pub struct Availability {
    /// The practitioner.
    pub practitioner_id: Uuid,
    /// The clinic's IANA time zone.
    pub timezone: String,
    /// Slot length.
    pub slot_minutes: u32,
    /// One entry per requested day.
    pub days: Vec<AvailabilityDay>,
}

/// A free slot found by search.
#[derive(Serialize, ToSchema)]
pub struct FoundSlot {
    /// Practitioner.
    pub practitioner_id: Uuid,
    /// Their clinic.
    pub clinic_id: Uuid,
    /// Their specialty.
    pub specialty: String,
    /// Start.
    pub start: DateTime<Utc>,
    /// End.
    pub end: DateTime<Utc>,
}

/// A page of search results.
#[derive(Serialize, ToSchema)]
pub struct SlotPage {
    /// Earliest first.
    pub items: Vec<FoundSlot>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Practitioners.
#[derive(Serialize, ToSchema)]
pub struct PractitionerList {
    /// In id order.
    pub items: Vec<Practitioner>,
}

/// Result of an availability rebuild.
#[derive(Serialize, ToSchema)]
pub struct RebuildResult {
    /// The practitioner.
    pub practitioner_id: Uuid,
    /// Days rebuilt.
    pub days_rebuilt: usize,
}

/// Result of resolving a conflict.
#[derive(Serialize, ToSchema)]
pub struct Resolution {
    /// The booking.
    pub booking_id: Uuid,
    /// `kept` or `cancelled`.
    pub resolution: &'static str,
}

/// The answer to the payment provider.
#[derive(Serialize, ToSchema)]
pub struct PaymentAnswer {
    /// `confirmed`, `already_confirmed`, `cancelled`, `late_payment_refund_required` or `ignored`.
    pub outcome: &'static str,
}
