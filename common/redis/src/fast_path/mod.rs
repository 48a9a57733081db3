//! What the booking path keeps in Redis around PostgreSQL, one file per concern:
//! - [`admission`]: idempotency records, the availability pre-check and queueing, atomically;
//! - [`decisions`]: request statuses for polling and the "decided" announcements that wake
//!   long-polls;
//! - [`bitmaps`]: the availability bitmaps' changes, invalidation and rebuild.
//!
//! PostgreSQL stays the truth. Everything here may be lost or stale: a lost status falls back
//! to PostgreSQL, a stale availability bit costs a needless trip through the queue (the unique
//! index still decides), a lost announcement is covered by the long-poll's periodic re-check.

mod admission;
mod bitmaps;
mod decisions;

use std::time::Duration;

use redis::aio::ConnectionManager;

pub use admission::{Admission, AdmitItem};

use crate::keys::Keys;

/// How long idempotency keys and final statuses are remembered.
pub const REMEMBER: Duration = Duration::from_secs(24 * 3600);

/// Redis operations of the fast path, for one namespace.
#[derive(Clone)]
pub struct FastPath {
    conn: ConnectionManager,
    keys: Keys,
    admit: redis::Script,
    rebuild: redis::Script,
}

impl FastPath {
    /// Uses `conn` for namespace `namespace`.
    pub fn new(conn: ConnectionManager, namespace: &str) -> Self {
        Self {
            conn,
            keys: Keys::new(namespace),
            admit: redis::Script::new(&format!(
                "{}{}",
                crate::queue::PUSH_FN_LUA,
                admission::ADMIT_LUA
            )),
            rebuild: redis::Script::new(bitmaps::REBUILD_LUA),
        }
    }

    /// The key builder.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }
}

/// A JSON error as a Redis client error.
pub(crate) fn json_err(e: serde_json::Error) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Client, "json", e.to_string()))
}
