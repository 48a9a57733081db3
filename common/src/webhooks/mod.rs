//! Outbound client webhooks: what ingress and the dispatcher share.
//!
//! - [`signature`]: Standard Webhooks signing secrets and signatures (`webhook-signature`);
//! - [`target`]: which URLs a subscription may point at (http/https only, and no private or
//!   loopback address unless `WEBHOOK_ALLOW_PRIVATE=1`), the server-side request forgery guard;
//! - [`EVENT_TYPES`]: the event types a subscription may ask for.
//!
//! The tables live in `db::webhooks`; the dispatcher is `slotq-workers`' `webhook_dispatcher`.

pub mod signature;
pub mod target;

use crate::db::events::types;

/// Every event type a client may subscribe to (the `type` of the outbox rows).
pub const EVENT_TYPES: &[&str] = types::ALL;

/// Whether `t` is an event type a subscription may name.
pub fn is_event_type(t: &str) -> bool {
    EVENT_TYPES.contains(&t)
}
