//! Outbound client webhooks: what ingress and the dispatcher share.
//!
//! - [`signature`]: Standard Webhooks signing secrets and signatures (`webhook-signature`);
//! - [`target`]: which URLs a subscription may point at (http/https only, and no private or
//!   loopback address unless `WEBHOOK_ALLOW_PRIVATE=1`), the server-side request forgery guard.
//!
//! The event types a subscription may ask for are `slotq_domain::events`; the tables live in
//! `slotq_store::webhooks`; the dispatcher is `slotq-workers`' `webhook_dispatcher`.

pub mod signature;
pub mod target;
