//! The hold queue: job payload, apalis storage and depth.
//!
//! The queue has an explicit, stable name (`{REDIS_NAMESPACE}:holds`), never derived from a
//! Rust type name, so renaming a type cannot strand queued jobs.

use apalis_redis::{Config as ApalisConfig, RedisStorage};
use chrono::{DateTime, Utc};
use redis::{Script, aio::ConnectionManager};
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
    /// Who asked (the token's `sub`), for the audit log; jobs queued before this field
    /// existed are audited as the worker's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The asker's role (`patient`, `clinic_admin`, `service`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_role: Option<String>,
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
        // apalis' lease step (`acquire_leases.lua`) runs `LREM ready-list 1 id` for every
        // fetched job although the fetch already took it off the list: a scan of the whole
        // backlog per job, so draining a backlog was quadratic (256 clients: 2,300 decided/s
        // while 24,000 jobs waited). Recovery needs no lease: a dead worker's jobs are found in
        // its in-flight set once its heartbeat is stale, and shutdown hands back unstarted jobs
        // from that set too.
        .lock_tasks(false)
}

/// The hold storage on a Redis connection (what workers consume).
pub fn hold_storage(conn: ConnectionManager, config: &Config) -> HoldStorage {
    RedisStorage::new(conn).with_config(apalis_config(config))
}

/// How often apalis tries a hold job before it is dead (apalis' own default).
pub const MAX_ATTEMPTS: u32 = 25;

// Why ingress does not push with apalis' `push`/`Sink`: apalis-redis 1.0 gives every pushed
// task a run time of at least "now", so every job lands in the scheduled ZSET, and its
// `fetch_next.lua` promotes *all* due scheduled jobs in one call with
// `rpush(active, unpack(ids))`. Lua's `unpack` fails above ~8000 values ("too many results to
// unpack"), the fetch errors, and apalis marks the worker dead: a backlog of more than ~8000
// submissions (a 10,000-request storm does it) stopped every worker for good. Measured with
// `slotq-loadtest storm`. So new jobs go straight onto the active LIST, in apalis' own layout
// (the data HASH holds the job's JSON, `{queue}:meta:{task id}` its attempts/status, the signal
// LIST wakes workers), exactly as apalis' `batch_push.lua` does for a task without a run time.
// Retries that apalis schedules itself still use the ZSET; there are few of them.
//
// The task id is the booking request id (a UUID v7 is 128 bits, as a ULID), so pushing the
// same request twice is a no-op (`HSETNX`).
/// Lua function `push_hold(data, ready, signal, meta, id, job, max_attempts)`: the push
/// described above; 1 when queued, 0 when that task id was already queued. Also part of the
/// ingress admission script (`fast_path::FastPath::admit`), so a request's status, its
/// idempotency record and its job are written in one atomic round trip.
pub const PUSH_FN_LUA: &str = r"
local function push_hold(data, ready, signal, meta, id, job, max_attempts)
  if redis.call('HSETNX', data, id, job) == 0 then return 0 end
  redis.call('HSET', meta .. ':' .. id,
    'attempts', 0, 'max_attempts', max_attempts, 'status', 'Pending', 'idempotency_key', '')
  redis.call('RPUSH', ready, id)
  redis.call('DEL', signal)
  redis.call('LPUSH', signal, 1)
  return 1
end
";

/// The producer side of the hold queue (ingress).
#[derive(Clone)]
pub struct HoldQueue {
    conn: ConnectionManager,
    keys: [String; 4],
    script: std::sync::Arc<Script>,
}

/// Why a job could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The job could not be encoded.
    #[error("encoding the job: {0}")]
    Encode(#[from] serde_json::Error),
    /// Redis refused or is unreachable.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl HoldQueue {
    /// The hold queue on a Redis connection.
    pub fn new(conn: ConnectionManager, config: &Config) -> Self {
        let c = apalis_config(config);
        Self {
            conn,
            keys: [
                c.job_data_hash(),
                c.active_jobs_list(),
                c.signal_list(),
                c.job_meta_hash(),
            ],
            script: std::sync::Arc::new(Script::new(&format!(
                "{PUSH_FN_LUA}return push_hold(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3])"
            ))),
        }
    }

    /// The apalis task id of a request's job.
    pub fn task_id(request_id: Uuid) -> String {
        ulid::Ulid::from(request_id.as_u128()).to_string()
    }

    /// The keys `push_hold` takes, in order: job data hash, ready list, signal list, meta
    /// prefix.
    pub fn keys(&self) -> &[String; 4] {
        &self.keys
    }

    /// Appends `job` to the ready list in one round trip; `false` when that request's job
    /// was already queued.
    pub async fn push(&self, job: HoldJob) -> Result<bool, PushError> {
        let data = serde_json::to_vec(&job)?;
        let mut inv = self.script.prepare_invoke();
        for k in &self.keys {
            inv.key(k);
        }
        inv.arg(Self::task_id(job.request_id))
            .arg(data)
            .arg(MAX_ATTEMPTS);
        let added: i64 = inv.invoke_async(&mut self.conn.clone()).await?;
        Ok(added == 1)
    }
}

// Retries that apalis schedules land in the same ZSET; should many be due at once (a long
// PostgreSQL outage fails the whole backlog into retries), the same `unpack` limit would end
// the workers again. Workers therefore move due scheduled jobs to the ready list themselves,
// in chunks, every second and before a worker (re)starts.
const PROMOTE_LUA: &str = r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #ids == 0 then return 0 end
redis.call('RPUSH', KEYS[2], unpack(ids))
redis.call('ZREM', KEYS[1], unpack(ids))
redis.call('DEL', KEYS[3])
redis.call('LPUSH', KEYS[3], 1)
return #ids
";

static PROMOTE: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script::new(PROMOTE_LUA));

/// Moves every due job of the scheduled ZSET to the ready list, at most `chunk` (≤ 5,000)
/// per round trip; returns how many moved.
pub async fn promote_due(
    conn: &mut ConnectionManager,
    config: &Config,
    chunk: usize,
) -> redis::RedisResult<u64> {
    let c = apalis_config(config);
    let chunk = chunk.clamp(1, 5000);
    let mut total = 0;
    loop {
        let now = Utc::now().timestamp();
        let moved: u64 = PROMOTE
            .key(c.scheduled_jobs_set())
            .key(c.active_jobs_list())
            .key(c.signal_list())
            .arg(now)
            .arg(chunk)
            .invoke_async(conn)
            .await?;
        total += moved;
        if moved < chunk as u64 {
            return Ok(total);
        }
    }
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
    /// Seconds the oldest ready job has waited: the head of the ready list (its task id is a
    /// ULID, whose first 48 bits are its creation time in ms) or the oldest due retry,
    /// whichever is older; 0 when nothing is ready.
    pub oldest_ready_age_secs: u64,
}

// apalis-redis 1.0's own `Metrics::fetch_by_queue()` is broken (its Lua script expects an
// argument that is never passed), so the depth is read from the queue's keys directly.
// New jobs go straight onto the active LIST (`HoldQueue`); apalis' retries wait in the
// scheduled ZSET scored with their run time, and are promoted once due. So "ready" is the
// active LIST plus the due part of the ZSET, and "scheduled" its future part (retries).
// In-flight jobs sit in one SET per registered worker, `{queue}:inflight:{worker name}` (the
// workers ZSET holds names).
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
local head = redis.call('LINDEX', KEYS[1], 0)
if head and #head == 26 then
  local alphabet = '0123456789ABCDEFGHJKMNPQRSTVWXYZ'
  local ms = 0
  for i = 1, 10 do
    local v = string.find(alphabet, string.sub(head, i, i), 1, true)
    if not v then ms = nil break end
    ms = ms * 32 + (v - 1)
  end
  if ms then
    local age = now - math.floor(ms / 1000)
    if age > oldest then oldest = age end
  end
end
return {ready, scheduled, inflight, dead, oldest}
";

static DEPTH: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script::new(DEPTH_LUA));

/// Reads the depth of the hold queue in one round trip.
pub async fn depth(
    conn: &mut ConnectionManager,
    config: &Config,
) -> redis::RedisResult<QueueDepth> {
    let c = apalis_config(config);
    let (ready, scheduled, inflight, dead, oldest_ready_age_secs): (u64, u64, u64, u64, u64) =
        DEPTH
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
            actor: Some("ann".into()),
            actor_role: None,
        };
        let json = serde_json::to_string(&job).expect("serializes");
        assert!(!json.contains("idempotency_key"));
        assert!(!json.contains("actor_role"));
        let back: HoldJob = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, job);
    }
}
