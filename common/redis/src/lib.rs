//! slotq-redis: everything slotq keeps in Redis.
//!
//! Redis holds the queue (run it with AOF in production) and caches that may be lost or stale;
//! PostgreSQL stays the truth, and every cache here is rebuilt from it.
//!
//! - [`keys`]: every key slotq writes (apalis' own `<ns>:holds:*` keys come from [`queue`])
//! - [`queue`]: the hold job, apalis' storage layout, the admission script, depth and retries
//! - [`fast_path`]: what ingress and the workers share on the booking path: request statuses,
//!   idempotency records, admission and the publication of decisions
//! - [`availability`]: per-day bitmaps of taken slots, rebuilt from PostgreSQL on a miss
//! - [`rate_limit`]: GCRA request rate limits

pub mod availability;
pub mod fast_path;
pub mod keys;
pub mod queue;
pub mod rate_limit;

/// Opens the Redis connection manager (reconnects by itself).
pub async fn connect(url: &str) -> redis::RedisResult<redis::aio::ConnectionManager> {
    redis::Client::open(url)?.get_connection_manager().await
}
