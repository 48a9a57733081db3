//! slotq-domain: the booking rules, with no I/O, so every rule is unit-tested beside its code.
//!
//! Nothing here talks to PostgreSQL, Redis or HTTP; the crate does not depend on sqlx, redis
//! or axum, except an optional `sqlx` feature for derives that the store turns on
//! (docs/adr/0002-layer-crates.md).
//!
//! - [`slot`]: the slot grid (is this instant a bookable slot of this practitioner?)
//! - [`status`]: the booking state machine, the one place transitions are decided
//! - [`request`]: booking requests: kind, status, rejection reasons
//! - [`events`]: the event types of the outbox, webhooks and Kafka
//! - [`fields`]: parse-don't-validate newtypes for API input (names, e-mails, country codes)
//! - [`json_time`]: RFC 3339 timestamps written without chrono's per-character escaping

pub mod events;
pub mod fields;
pub mod json_time;
pub mod request;
pub mod slot;
pub mod status;
