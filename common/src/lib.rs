//! slotq-common: what the ingress, the workers and the scheduler share.
//!
//! - [`domain`]: pure rules (slot grid, booking state machine, field parsing)
//! - [`db`]: every SQL statement, one module per table family
//! - [`queue`]: the hold job and its apalis storage
//! - [`fast_path`] and [`redis_keys`]: the Redis side (status cache, idempotency, availability)
//! - [`signature`]: payment-webhook signatures
//! - [`config`], [`telemetry`], [`metrics`], [`admin`], [`shutdown`]: process plumbing

pub mod admin;
pub mod auth;
pub mod availability;
pub mod config;
pub mod db;
pub mod domain;
pub mod fast_path;
pub mod json_time;
pub mod lookup;
pub mod metrics;
pub mod pii;
pub mod process;
pub mod queue;
pub mod rate_limit;
pub mod redis_keys;
pub mod shutdown;
pub mod signature;
pub mod telemetry;
pub mod webhooks;

/// Opens the Redis connection manager (reconnects by itself).
pub async fn redis_connect(url: &str) -> redis::RedisResult<redis::aio::ConnectionManager> {
    redis::Client::open(url)?.get_connection_manager().await
}
