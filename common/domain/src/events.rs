//! The event types of the booking-events stream: the `type` of every outbox row, of the
//! CloudEvents sent to Kafka and of the webhooks clients subscribe to.

/// Event type names, as written to the outbox.
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

/// Whether `t` is an event type a webhook subscription may name.
pub fn is_event_type(t: &str) -> bool {
    types::ALL.contains(&t)
}
