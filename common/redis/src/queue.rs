//! The hold queue: job payload, apalis storage and depth.
//!
//! The queue has an explicit, stable name (`{REDIS_NAMESPACE}:holds`), never derived from a
//! Rust type name, so renaming a type cannot strand queued jobs.
//!
//! Longer than most modules: apalis' key layout, the Lua scripts that write it and their reasons belong together; a change to one is a change to all.

use apalis_redis::{Config as ApalisConfig, RedisStorage};
use chrono::{DateTime, Utc};
use redis::{Script, aio::ConnectionManager};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

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
    #[serde(serialize_with = "slotq_domain::json_time::utc")]
    pub slot_start: DateTime<Utc>,
    /// When ingress accepted it (start of the decision latency).
    #[serde(serialize_with = "slotq_domain::json_time::utc")]
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

/// One queued job: the booking requests that ingress admitted in one Redis call (at most
/// [`ADMIT_MAX`]), each decided on its own.
///
/// Why several per job: apalis spends about ten Redis commands on every job (its data and
/// metadata, the ready list and the wake-up signal, the in-flight set, the acknowledgement and
/// the clean-up of done jobs), which were half of Redis' work per request. A job per admission call pays them once for all the
/// requests that arrived while the previous call was in flight; at low load that is one.
///
/// On the wire `{"holds": [HoldJob, …]}`; a bare `HoldJob` (a job queued by an earlier
/// version) reads as a task of one, so an upgrade strands nothing.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HoldTask {
    /// The requests, in admission order.
    pub holds: Vec<HoldJob>,
}

/// A [`HoldTask`]'s JSON, written from borrowed jobs (no copy of them).
pub fn task_data(jobs: &[&HoldJob]) -> Result<Vec<u8>, serde_json::Error> {
    #[derive(Serialize)]
    struct Borrowed<'a> {
        holds: &'a [&'a HoldJob],
    }
    serde_json::to_vec(&Borrowed { holds: jobs })
}

impl<'de> Deserialize<'de> for HoldTask {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, IgnoredAny, MapAccess, Visitor};
        // A visitor rather than an untagged enum, which buffers the whole job before it tries
        // a variant (a tenth of the workers' work per decision).
        struct Task;
        impl<'de> Visitor<'de> for Task {
            type Value = HoldTask;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(r#"a hold task {"holds": [...]} or a single hold job"#)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HoldTask, A::Error> {
                let Some(first) = map.next_key::<std::borrow::Cow<'de, str>>()? else {
                    return Err(A::Error::custom("an empty object is not a hold task"));
                };
                if first == "holds" {
                    let holds = map.next_value::<Vec<HoldJob>>()?;
                    while map.next_key::<IgnoredAny>()?.is_some() {
                        map.next_value::<IgnoredAny>()?;
                    }
                    return Ok(HoldTask { holds });
                }
                // A bare job of an earlier version (rare): its fields, read as one job.
                let mut fields = serde_json::Map::new();
                fields.insert(first.into_owned(), map.next_value()?);
                while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
                    fields.insert(k, v);
                }
                let job = HoldJob::deserialize(serde_json::Value::Object(fields))
                    .map_err(A::Error::custom)?;
                Ok(HoldTask { holds: vec![job] })
            }
        }
        d.deserialize_map(Task)
    }
}

/// The most requests one admission call (and so one job) carries.
pub const ADMIT_MAX: usize = 64;

/// apalis storage of hold jobs.
pub type HoldStorage = RedisStorage<HoldTask>;

/// What the hold queue's layout and apalis' workers depend on, from the process configuration.
#[derive(Clone, Debug)]
pub struct QueueSettings {
    /// `REDIS_NAMESPACE`: every key of the queue starts with it.
    pub namespace: String,
    /// `BATCH_MAX`: jobs a worker fetches at once (capped at 256).
    pub batch_max: usize,
    /// `WORKER_HEARTBEAT_MS`: how often a worker proves it is alive.
    pub heartbeat_interval: std::time::Duration,
    /// How many heartbeats a worker may miss before its jobs are recovered.
    pub missed_heartbeats: usize,
}

impl QueueSettings {
    /// The apalis queue name of hold jobs, inside the namespace.
    pub fn holds_queue(&self) -> String {
        format!("{}:holds", self.namespace)
    }
}

/// The apalis configuration shared by producers and workers of the hold queue.
pub fn apalis_config(settings: &QueueSettings) -> ApalisConfig {
    ApalisConfig::default()
        .queue(settings.holds_queue())
        .batch_size(settings.batch_max.min(256))
        .heartbeat_interval(settings.heartbeat_interval)
        .missed_heartbeats(settings.missed_heartbeats)
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
pub fn hold_storage(conn: ConnectionManager, settings: &QueueSettings) -> HoldStorage {
    RedisStorage::new(conn).with_config(apalis_config(settings))
}

/// How often apalis tries a hold job before it is dead (apalis' own default).
pub const MAX_ATTEMPTS: u32 = 25;

// Why ingress does not push with apalis' `push`/`Sink`: apalis-redis 1.0 gives every pushed
// task a run time of at least "now", so every job lands in the scheduled ZSET, and its
// `fetch_next.lua` promotes *all* due scheduled jobs in one call with
// `rpush(active, unpack(ids))`. Lua's `unpack` fails above ~8000 values ("too many results to
// unpack"), the fetch errors, and apalis marks the worker dead: a backlog of more than ~8000
// submissions (a 10,000-request storm does it) stopped every worker for good. So new jobs go straight onto the active LIST, in apalis' own layout
// (the data HASH holds the job's JSON, `{queue}:meta:{task id}` its attempts/status, the signal
// LIST wakes workers), exactly as apalis' `batch_push.lua` does for a task without a run time.
// Retries that apalis schedules itself still use the ZSET; there are few of them.
//
// The task id is the booking request id (a UUID v7 is 128 bits, as a ULID), so pushing the
// same request twice is a no-op (`HSETNX`).
/// Lua function `push_hold(data, ready, signal, meta, pending, id, job, requests,
/// max_attempts)`: the push described above, and `requests` (the job's count of booking
/// requests) added to the pending counter; 1 when queued, 0 when that task id was already
/// queued. Also part of the ingress admission script (`fast_path::FastPath::admit_many`), so
/// the requests' statuses, their idempotency records and their job are written in one atomic
/// round trip.
pub const PUSH_FN_LUA: &str = r"
local function push_hold(data, ready, signal, meta, pending, id, job, requests, max_attempts)
  if redis.call('HSETNX', data, id, job) == 0 then return 0 end
  redis.call('HSET', meta .. ':' .. id,
    'attempts', 0, 'max_attempts', max_attempts, 'status', 'Pending', 'idempotency_key', '')
  redis.call('RPUSH', ready, id)
  redis.call('DEL', signal)
  redis.call('LPUSH', signal, 1)
  redis.call('INCRBY', pending, requests)
  return 1
end
";

/// The producer side of the hold queue (ingress).
#[derive(Clone)]
pub struct HoldQueue {
    conn: ConnectionManager,
    keys: [String; 5],
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
    pub fn new(conn: ConnectionManager, settings: &QueueSettings) -> Self {
        let c = apalis_config(settings);
        Self {
            conn,
            keys: [
                c.job_data_hash(),
                c.active_jobs_list(),
                c.signal_list(),
                c.job_meta_hash(),
                crate::keys::Keys::new(&settings.namespace).pending_requests(),
            ],
            script: std::sync::Arc::new(Script::new(&format!(
                "{PUSH_FN_LUA}return push_hold(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], ARGV[3], ARGV[4])"
            ))),
        }
    }

    /// The apalis task id of a request's job.
    pub fn task_id(request_id: Uuid) -> String {
        ulid::Ulid::from(request_id.as_u128()).to_string()
    }

    /// The keys `push_hold` takes, in order: job data hash, ready list, signal list, meta
    /// prefix, pending-requests counter.
    pub fn keys(&self) -> &[String; 5] {
        &self.keys
    }

    /// Adds `push_hold`'s commands (the Lua function above, command for command) to an atomic
    /// pipeline: one job of `jobs`, under the first one's task id. For callers that know that
    /// id is new (a fresh request id), since a pipeline cannot stop at `HSETNX`'s answer.
    /// Nothing is added for no jobs.
    pub fn push_commands(
        &self,
        pipe: &mut redis::Pipeline,
        jobs: &[&HoldJob],
    ) -> Result<(), serde_json::Error> {
        let Some(first) = jobs.first() else {
            return Ok(());
        };
        let id = Self::task_id(first.request_id);
        let [data_hash, ready, signal, meta, pending] = &self.keys;
        pipe.hset_nx(data_hash, &id, task_data(jobs)?).ignore();
        pipe.hset_multiple(
            format!("{meta}:{id}"),
            &[
                ("attempts", "0".to_owned()),
                ("max_attempts", MAX_ATTEMPTS.to_string()),
                ("status", "Pending".to_owned()),
                ("idempotency_key", String::new()),
            ],
        )
        .ignore();
        pipe.rpush(ready, &id).ignore();
        pipe.del(signal).ignore();
        pipe.lpush(signal, 1).ignore();
        pipe.incr(pending, jobs.len()).ignore();
        Ok(())
    }

    /// Appends a job of one request to the ready list in one round trip; `false` when that
    /// request's job was already queued.
    pub async fn push(&self, job: HoldJob) -> Result<bool, PushError> {
        let id = Self::task_id(job.request_id);
        let data = task_data(&[&job])?;
        let mut inv = self.script.prepare_invoke();
        for k in &self.keys {
            inv.key(k);
        }
        inv.arg(id).arg(data).arg(1).arg(MAX_ATTEMPTS);
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
    settings: &QueueSettings,
    chunk: usize,
) -> redis::RedisResult<u64> {
    let c = apalis_config(settings);
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

/// Jobs of the hold queue by state, and the booking requests they carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Booking requests accepted and not yet decided (ready, waiting for a retry or in
    /// flight): what load shedding compares with `MAX_QUEUE_DEPTH`. A job carries up to
    /// [`ADMIT_MAX`] of them.
    pub pending_requests: u64,
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
//
// Pending requests: a counter that the push adds each job's requests to and workers subtract
// their decisions from (`FastPath::publish_decisions`). It can drift: a decision announced
// twice (a job redelivered after part of it committed) subtracts twice, a failed announcement
// not at all. So it is read with a floor of one request per unfinished job, and set to 0
// whenever no job is ready, scheduled or in flight: then every job pushed has been
// acknowledged, and a worker subtracts before it acknowledges, so the true count is 0.
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
local pending = tonumber(redis.call('GET', KEYS[6]) or '0') or 0
local jobs = ready + scheduled + inflight
if jobs == 0 then
  if pending ~= 0 then redis.call('SET', KEYS[6], 0) end
  pending = 0
elseif pending < jobs then
  pending = jobs
end
return {ready, scheduled, inflight, dead, oldest, pending}
";

static DEPTH: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script::new(DEPTH_LUA));

/// Reads the depth of the hold queue in one round trip.
pub async fn depth(
    conn: &mut ConnectionManager,
    settings: &QueueSettings,
) -> redis::RedisResult<QueueDepth> {
    let c = apalis_config(settings);
    let (ready, scheduled, inflight, dead, oldest_ready_age_secs, pending_requests): (
        u64,
        u64,
        u64,
        u64,
        u64,
        u64,
    ) = DEPTH
        .key(c.active_jobs_list())
        .key(c.scheduled_jobs_set())
        .key(c.dead_jobs_set())
        .key(c.workers_set())
        .key(c.inflight_jobs_set())
        .key(crate::keys::Keys::new(&settings.namespace).pending_requests())
        .invoke_async(conn)
        .await?;
    Ok(QueueDepth {
        pending_requests,
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

    #[test]
    fn tasks_carry_several_jobs_and_read_a_bare_job_as_a_task_of_one() {
        let job = |i: u8| HoldJob {
            request_id: Uuid::from_bytes([i; 16]),
            patient_id: Uuid::now_v7(),
            practitioner_id: Uuid::now_v7(),
            slot_start: Utc::now(),
            submitted_at: Utc::now(),
            idempotency_key: Some(format!("k{i}")),
            reschedule: None,
            trace_id: None,
            actor: None,
            actor_role: None,
        };
        let task = HoldTask {
            holds: vec![job(1), job(2)],
        };
        let json = serde_json::to_string(&task).expect("serializes");
        assert!(json.starts_with(r#"{"holds":[{"#), "{json}");
        assert_eq!(
            serde_json::from_str::<HoldTask>(&json).expect("reads"),
            task
        );
        // What ingress' admission script writes: the jobs' JSON joined inside `holds`.
        let joined = format!(
            r#"{{"holds":[{},{}]}}"#,
            serde_json::to_string(&task.holds[0]).unwrap(),
            serde_json::to_string(&task.holds[1]).unwrap()
        );
        assert_eq!(
            serde_json::from_str::<HoldTask>(&joined).expect("reads"),
            task
        );
        // A job queued by an earlier version: one request, no `holds`.
        let old = serde_json::to_string(&task.holds[0]).unwrap();
        assert_eq!(
            serde_json::from_str::<HoldTask>(&old).expect("reads").holds,
            vec![task.holds[0].clone()]
        );
        assert!(serde_json::from_str::<HoldTask>(r#"{"holds":"x"}"#).is_err());
    }
}
