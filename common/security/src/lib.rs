//! slotq-security: who a caller is and whether a message is genuine.
//!
//! - [`auth`]: bearer JWT verification (HS256 secret or a JWKS), roles and claims
//! - [`pii`]: AES-GCM encryption of patients' personal data and its blind index
//! - [`payment_signature`]: the payment provider's webhook signature
//! - [`webhooks`]: our outbound webhooks' signatures (Standard Webhooks) and the guard on
//!   which URLs a subscription may target

pub mod auth;
pub mod payment_signature;
pub mod pii;
pub mod webhooks;
