//! Pure domain logic: no I/O here, so every rule is unit-tested beside its code.
//!
//! - [`slot`]: the slot grid (is this instant a bookable slot of this practitioner?)
//! - [`status`]: the booking state machine, the one place transitions are decided
//! - [`fields`]: parse-don't-validate helpers for API input (names, emails, country codes)

pub mod fields;
pub mod slot;
pub mod status;
