//! The hold queue: job payload, apalis storage and depth.
//!
//! The queue has an explicit, stable name (`{REDIS_NAMESPACE}:holds`), never derived from a
//! Rust type name, so renaming a type cannot strand queued jobs.

use apalis_redis::{Config as ApalisConfig, RedisStorage};
use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::Config;

/// One booking request on its way to a worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HoldJob {
    /// Booking request id; the job is idempotent on it.
    pub request_id: Uuid,
    /// Patient.
    pub patient_id: Uuid,
    /// Practitioner.
    pub practitioner_id: Uuid,
    /// Slot asked for.
    pub slot_start: DateTime<Utc>,
    /// When ingress accepted it (start of the decision latency).
    pub submitted_at: DateTime<Utc>,
    /// The client's Idempotency-Key, recorded with the decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// For a reschedule: the booking to move to `slot_start`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reschedule: Option<Uuid>,
    /// The HTTP request id, so worker logs can be joined to ingress logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// apalis storage of hold jobs.
pub type HoldStorage = RedisStorage<HoldJob>;

/// The apalis configuration shared by producers and workers of the hold queue.
pub fn apalis_config(config: &Config) -> ApalisConfig {
    ApalisConfig::default()
        .queue(config.holds_queue())
        .batch_size(config.batch_max.min(256))
        .heartbeat_interval(config.heartbeat_interval)
        .missed_heartbeats(config.missed_heartbeats)
        // Nobody subscribes to apalis' per-task pub/sub events: skip one PUBLISH per job.
        .emit_events(false)
}

/// The hold storage on a Redis connection.
pub fn hold_storage(conn: ConnectionManager, config: &Config) -> HoldStorage {
    RedisStorage::new(conn).with_config(apalis_config(config))
}

/// Jobs of the hold queue by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Waiting for a worker.
    pub ready: u64,
    /// Waiting for a retry.
    pub scheduled: u64,
    /// Claimed by a worker, not yet acknowledged.
    pub inflight: u64,
    /// Failed for good.
    pub dead: u64,
    /// Seconds the oldest due job has waited in the scheduled set (0 when none).
    pub oldest_ready_age_secs: u64,
}

// apalis-redis 1.0's own `Metrics::fetch_by_queue()` is broken (its Lua script expects an
// argument that is never passed), so the depth is read from the queue's keys directly.
// `push` stores new jobs in the scheduled ZSET scored with their run time (now), and workers
// promote due ones to the active LIST when they fetch; so "ready" is the active LIST plus the
// due part of the ZSET, and "scheduled" its future part (retries). In-flight jobs sit in one
// SET per registered worker, `{queue}:inflight:{worker name}` (the workers ZSET holds names).
const DEPTH_LUA: &str = r"
local now = tonumber(redis.call('TIME')[1])
local ready = redis.call('LLEN', KEYS[1]) + redis.call('ZCOUNT', KEYS[2], '-inf', now)
local scheduled = redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf')
local dead = redis.call('SCARD', KEYS[3])
local inflight = 0
for _, worker in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
  inflight = inflight + redis.call('SCARD', KEYS[5] .. ':' .. worker)
end
local oldest = 0
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if first[2] and tonumber(first[2]) <= now then oldest = now - tonumber(first[2]) end
return {ready, scheduled, inflight, dead, oldest}
";

/// Reads the depth of the hold queue in one round trip.
pub async fn depth(
    conn: &mut ConnectionManager,
    config: &Config,
) -> redis::RedisResult<QueueDepth> {
    let c = apalis_config(config);
    let (ready, scheduled, inflight, dead, oldest_ready_age_secs): (u64, u64, u64, u64, u64) =
        redis::Script::new(DEPTH_LUA)
            .key(c.active_jobs_list())
            .key(c.scheduled_jobs_set())
            .key(c.dead_jobs_set())
            .key(c.workers_set())
            .key(c.inflight_jobs_set())
            .invoke_async(conn)
            .await?;
    Ok(QueueDepth {
        ready,
        scheduled,
        inflight,
        dead,
        oldest_ready_age_secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_round_trip_through_json_and_tolerate_missing_optionals() {
        let job = HoldJob {
            request_id: Uuid::now_v7(),
            patient_id: Uuid::now_v7(),
            practitioner_id: Uuid::now_v7(),
            slot_start: Utc::now(),
            submitted_at: Utc::now(),
            idempotency_key: None,
            reschedule: None,
            trace_id: Some("abc".into()),
        };
        let json = serde_json::to_string(&job).expect("serializes");
        assert!(!json.contains("idempotency_key"));
        let back: HoldJob = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, job);
    }
}
