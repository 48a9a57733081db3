//! The Redis fast path around PostgreSQL: request status for polling, idempotency records,
//! the availability pre-check, and the "decided" announcements that wake long-polls.
//!
//! PostgreSQL stays the truth. Everything here may be lost or stale: a lost status falls back
//! to PostgreSQL, a stale availability bit costs a needless trip through the queue (the unique
//! index still decides), a lost announcement is covered by the long-poll's periodic re-check.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use redis::aio::ConnectionManager;
use slotq_domain::request::{RejectionReason, RequestKind, RequestStatus};
use uuid::Uuid;

use crate::keys::{COUNTER_BIT, Keys, availability_bit, bitmap_counter};
use slotq_store::requests::RequestView;

/// How long idempotency keys and final statuses are remembered.
pub const REMEMBER: Duration = Duration::from_secs(24 * 3600);

/// Result of registering a submission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// New request: status `queued` recorded, the job may be pushed.
    Admitted,
    /// The Idempotency-Key was used before for this request id, with this body hash.
    Replay {
        /// The original request id.
        request_id: Uuid,
        /// Whether the bodies match.
        same_body: bool,
    },
    /// The availability bitmap already shows the slot taken.
    SlotTaken,
}

/// An idempotency record `<body hash>|<request id>` judged against `body_hash`.
fn replay_of(record: &str, body_hash: &str) -> Admission {
    let (hash, id) = record.split_once('|').unwrap_or(("", ""));
    match id.parse() {
        Ok(request_id) => Admission::Replay {
            request_id,
            same_body: hash == body_hash,
        },
        // A corrupt record cannot be honoured; treat the key as reused with another body.
        Err(_) => Admission::Replay {
            request_id: Uuid::nil(),
            same_body: false,
        },
    }
}

// Atomic admission of several requests (one call of the ingress admitter), in order; for
// each: idempotency replay first (a replay must answer like the original even if the slot has
// been taken since), then the availability pre-check. A later request of the same call with
// the same idempotency key is a replay of the earlier one. Then the admitted requests are
// queued as one job (`queue::PUSH_FN_LUA`, `queue::HoldTask`), and only after that are their
// idempotency records and `queued` statuses written: Redis does not undo a script that fails
// half-way, and a record written before a failed push would answer the client's retry as a
// replay of a request that was never queued (accepted, never decided). Written after it, a
// failure leaves nothing a retry could mistake for an admission.
// KEYS: 1-5 the hold queue's keys (`HoldQueue::keys`), then 3 per request: idempotency key
//       ("" if none), request status key, availability key ("" = no check)
// ARGV: 1 ttl seconds, 2 max attempts, then 6 per request: body hash, request id, status
//       JSON, availability bit, job JSON, task id
// Returns 2 per request: verdict ('ok', 'replay' or 'taken') and the prior record.
const ADMIT_LUA: &str = r#"
local n = (#KEYS - 5) / 3
local out, jobs, admitted, task, recorded = {}, {}, {}, nil, {}
for i = 0, n - 1 do
  local idem, avail = KEYS[6 + 3 * i], KEYS[8 + 3 * i]
  local a = 3 + 6 * i
  local verdict, prior = 'ok', ''
  if idem ~= '' then
    local p = recorded[idem] or redis.call('GET', idem)
    if p then verdict, prior = 'replay', p end
  end
  if verdict == 'ok' and avail ~= '' and redis.call('GETBIT', avail, tonumber(ARGV[a + 3])) == 1 then
    verdict = 'taken'
  end
  if verdict == 'ok' then
    if idem ~= '' then recorded[idem] = ARGV[a] .. '|' .. ARGV[a + 1] end
    admitted[#admitted + 1] = i
    jobs[#jobs + 1] = ARGV[a + 4]
    task = task or ARGV[a + 5]
  end
  out[#out + 1] = verdict
  out[#out + 1] = prior
end
if task then
  push_hold(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], task,
    '{"holds":[' .. table.concat(jobs, ',') .. ']}', #jobs, ARGV[2])
end
for _, i in ipairs(admitted) do
  local idem, a = KEYS[6 + 3 * i], 3 + 6 * i
  if idem ~= '' then redis.call('SET', idem, recorded[idem], 'EX', ARGV[1]) end
  redis.call('SET', KEYS[7 + 3 * i], ARGV[a + 2], 'EX', ARGV[1])
end
return out
"#;

/// One request for [`FastPath::admit_many`]: its job (which names the request, its slot and
/// its caller-scoped Idempotency-Key) and what the admission writes or checks beside it.
#[derive(Clone, Debug)]
pub struct AdmitItem {
    /// Its job.
    pub job: crate::queue::HoldJob,
    /// Its `queued` view as JSON: the status stored for polling.
    pub status_json: String,
    /// The body's identity for idempotency.
    pub body_hash: String,
    /// Whether to refuse it when the availability bitmap shows the slot taken.
    pub precheck: bool,
}

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
            admit: redis::Script::new(&format!("{}{ADMIT_LUA}", crate::queue::PUSH_FN_LUA)),
            rebuild: redis::Script::new(REBUILD_LUA),
        }
    }

    /// The key builder.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// What an earlier use of this (scoped) idempotency key recorded, judged against
    /// `body_hash`: `None` for a key not seen before. One `GET`, no writes.
    pub async fn prior(
        &self,
        idempotency_key: &str,
        body_hash: &str,
    ) -> redis::RedisResult<Option<Admission>> {
        let record: Option<String> = redis::cmd("GET")
            .arg(self.keys.idempotency(idempotency_key))
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(record.map(|r| replay_of(&r, body_hash)))
    }

    /// Registers submissions (see [`Admission`], one per item, in order) and queues the
    /// admitted ones as one job: in one atomic script when a request has an Idempotency-Key
    /// (one round trip; a failure leaves no idempotency record or status behind, see
    /// `ADMIT_LUA`), else with a pre-check read and one `MULTI` (`admit_keyless`).
    pub async fn admit_many(
        &self,
        items: &[&AdmitItem],
        queue: &crate::queue::HoldQueue,
    ) -> redis::RedisResult<Vec<Admission>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        if items.iter().all(|i| i.job.idempotency_key.is_none()) {
            return self.admit_keyless(items, queue).await;
        }
        let mut inv = self.admit.prepare_invoke();
        for k in queue.keys() {
            inv.key(k);
        }
        inv.arg(REMEMBER.as_secs()).arg(crate::queue::MAX_ATTEMPTS);
        for item in items {
            let job = &item.job;
            let idem = job
                .idempotency_key
                .as_deref()
                .map(|k| self.keys.idempotency(k))
                .unwrap_or_default();
            let avail = if item.precheck {
                self.keys.availability(job.practitioner_id, job.slot_start)
            } else {
                String::new()
            };
            inv.key(idem)
                .key(self.keys.request(job.request_id))
                .key(avail);
            inv.arg(&item.body_hash)
                .arg(job.request_id.to_string())
                .arg(&item.status_json)
                .arg(availability_bit(job.slot_start))
                .arg(serde_json::to_vec(job).map_err(json_err)?)
                .arg(crate::queue::HoldQueue::task_id(job.request_id));
        }
        let flat: Vec<String> = inv.invoke_async(&mut self.conn.clone()).await?;
        if flat.len() != items.len() * 2 {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "admission",
                format!("{} answers for {} requests", flat.len() / 2, items.len()),
            )));
        }
        Ok(items
            .iter()
            .zip(flat.chunks(2))
            .map(|(item, answer)| match answer[0].as_str() {
                "replay" => replay_of(&answer[1], &item.body_hash),
                "taken" => Admission::SlotTaken,
                _ => Admission::Admitted,
            })
            .collect())
    }

    /// [`Self::admit_many`] for a group in which no request has an Idempotency-Key: nothing to
    /// judge atomically, so no script. Redis ran the script's commands at the cost of native
    /// ones, but each `redis.call` and each argument handed to Lua cost it ~3-4 µs more: ~16 µs
    /// of command time per request against ~5 µs as a `MULTI` (ingress pays a
    /// second round trip for it).
    /// Two round trips: the pre-check's bits are read first (a bit set right after only costs
    /// a needless trip through the queue, as with the script); then the admitted requests' job
    /// and `queued` statuses go in one `MULTI`/`EXEC`: a connection lost before `EXEC` runs none
    /// of it. A command that fails inside it (a key of the wrong type) does not undo the others,
    /// as a failing script does not undo its earlier commands; the call then fails and the
    /// submission is answered 503, never 202 (test: `ingress/tests/admission.rs`).
    async fn admit_keyless(
        &self,
        items: &[&AdmitItem],
        queue: &crate::queue::HoldQueue,
    ) -> redis::RedisResult<Vec<Admission>> {
        let mut conn = self.conn.clone();
        let checked: Vec<usize> = (0..items.len()).filter(|&i| items[i].precheck).collect();
        let mut verdicts = vec![Admission::Admitted; items.len()];
        if !checked.is_empty() {
            let mut pipe = redis::pipe();
            for &i in &checked {
                let job = &items[i].job;
                pipe.getbit(
                    self.keys.availability(job.practitioner_id, job.slot_start),
                    availability_bit(job.slot_start) as usize,
                );
            }
            let bits: Vec<bool> = pipe.query_async(&mut conn).await?;
            for (&i, taken) in checked.iter().zip(bits) {
                if taken {
                    verdicts[i] = Admission::SlotTaken;
                }
            }
        }
        let admitted: Vec<&AdmitItem> = items
            .iter()
            .zip(&verdicts)
            .filter(|(_, v)| **v == Admission::Admitted)
            .map(|(item, _)| *item)
            .collect();
        if admitted.is_empty() {
            return Ok(verdicts);
        }
        let jobs: Vec<&crate::queue::HoldJob> = admitted.iter().map(|i| &i.job).collect();
        let mut pipe = redis::pipe();
        pipe.atomic();
        // The task id is the first admitted request's, new like every id ingress gives.
        queue.push_commands(&mut pipe, &jobs).map_err(json_err)?;
        for item in &admitted {
            pipe.set_ex(
                self.keys.request(item.job.request_id),
                &item.status_json,
                REMEMBER.as_secs(),
            )
            .ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        Ok(verdicts)
    }

    /// The cached status of a request.
    pub async fn status(&self, id: Uuid) -> redis::RedisResult<Option<RequestView>> {
        let raw: Option<String> = redis::cmd("GET")
            .arg(self.keys.request(id))
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(raw.and_then(|s| serde_json::from_str(&s).ok()))
    }

    /// After a batch commit: caches each decision, marks held (and found-taken) slots taken,
    /// subtracts the decisions from the pending-requests counter and announces the decided
    /// ids. One round trip, a plain pipeline rather than `MULTI`/`EXEC`: a transaction made
    /// Redis queue every command and answer it twice (`QUEUED`, then in `EXEC`'s array), and
    /// the workers parse every answer. Nothing here needs it:
    /// the commands of one connection run in order (each status is stored before the
    /// announcement that wakes its long-polls), every value is a cache PostgreSQL backs, and
    /// [`mark`] changes a day's counter and bits in one command, so no rebuild in between can
    /// lose a bit.
    pub async fn publish_decisions(&self, views: &[RequestView]) -> redis::RedisResult<()> {
        if views.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        let now = Utc::now();
        let mut ids = String::with_capacity(views.len() * 37);
        let mut taken = Vec::with_capacity(views.len());
        for v in views {
            let active = v.booking_id.is_some() && v.status.is_active();
            if active && v.kind == RequestKind::Reschedule {
                // The booking changes later (paid, cancelled, moved again) under its first
                // request, whose cache entry those changes drop; this request's view is read
                // from PostgreSQL, which always shows the booking's current status.
                pipe.del(self.keys.request(v.id)).ignore();
            } else {
                let json = serde_json::to_string(v).map_err(json_err)?;
                // A held status is only cached until the hold expires; after that the poll
                // asks PostgreSQL, which knows whether it was paid or expired.
                let ttl = match (v.status, v.hold_expires_at) {
                    (RequestStatus::Held, Some(at)) => (at - now).num_seconds().max(1) as u64,
                    _ => REMEMBER.as_secs(),
                };
                pipe.set_ex(self.keys.request(v.id), json, ttl).ignore();
            }
            if active || v.reason == Some(RejectionReason::SlotTaken) {
                taken.push((v.practitioner_id, v.slot_start, true));
            }
            if !ids.is_empty() {
                ids.push(',');
            }
            ids.push_str(&v.id.to_string());
        }
        mark(&self.keys, &mut pipe, taken);
        pipe.decr(self.keys.pending_requests(), views.len())
            .ignore();
        pipe.publish(self.keys.decided_channel(), ids).ignore();
        pipe.query_async(&mut self.conn.clone()).await
    }

    /// After a booking changed status (confirmed, expired, cancelled): drops the cached request
    /// status so polls read PostgreSQL, and frees the slot's bit when the slot is free again.
    pub async fn booking_changed(
        &self,
        changes: &[(Uuid, Uuid, DateTime<Utc>, bool)],
    ) -> redis::RedisResult<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (request_id, ..) in changes {
            pipe.del(self.keys.request(*request_id)).ignore();
        }
        let freed = changes
            .iter()
            .filter(|c| c.3)
            .map(|&(_, practitioner, slot, _)| (practitioner, slot, false))
            .collect();
        mark(&self.keys, &mut pipe, freed);
        pipe.atomic().query_async(&mut self.conn.clone()).await
    }

    /// Clears the availability bitmaps of `(practitioner, UTC day)` pairs and bumps their
    /// change counters, so the next read rebuilds them from PostgreSQL and a rebuild already
    /// under way does not store what it read before (used after reschedules, whose own updates
    /// may land out of order). Until then the pre-check admits, and PostgreSQL decides.
    /// The bits are zeroed rather than the key deleted: the counter lives in the bitmap, and a
    /// deleted one would start again from 0, where a rebuild that read a missing bitmap before
    /// could still store.
    pub async fn invalidate_days(&self, days: &[(Uuid, NaiveDate)]) -> redis::RedisResult<()> {
        if days.is_empty() {
            return Ok(());
        }
        let zeros = vec![0u8; (COUNTER_BIT / 8) as usize];
        let mut pipe = redis::pipe();
        for (practitioner, day) in days {
            let key = self.keys.availability_day(*practitioner, *day);
            pipe.add_command(bump_counter(&key)).ignore();
            pipe.cmd("SETRANGE").arg(&key).arg(0).arg(&zeros).ignore();
            pipe.expire_at(&key, bitmap_expiry(*day)).ignore();
        }
        pipe.atomic().query_async(&mut self.conn.clone()).await
    }

    /// The availability bitmaps of `(practitioner, UTC day)` pairs with their change counters
    /// ([`bitmap_counter`]), in one round trip.
    pub async fn bitmaps(
        &self,
        pairs: &[(Uuid, NaiveDate)],
    ) -> redis::RedisResult<Vec<(Vec<u8>, u32)>> {
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (p, day) in pairs {
            pipe.get(self.keys.availability_day(*p, *day));
        }
        let bitmaps: Vec<Option<Vec<u8>>> = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(bitmaps
            .into_iter()
            .map(|b| {
                let b = b.unwrap_or_default();
                let counter = bitmap_counter(&b);
                (b, counter)
            })
            .collect())
    }

    /// Stores a bitmap rebuilt from PostgreSQL unless it changed since its counter `seen` was
    /// read (compare-and-set on the change counter; the stored bitmap's counter is `seen + 1`,
    /// so a second rebuild that read `seen` stores nothing either). Returns whether it was
    /// stored.
    pub async fn store_rebuilt(
        &self,
        practitioner: Uuid,
        day: NaiveDate,
        seen: u32,
        bitmap: &[u8],
    ) -> redis::RedisResult<bool> {
        let stored: i32 = self
            .rebuild
            .key(self.keys.availability_day(practitioner, day))
            .arg(seen)
            .arg(bitmap)
            .arg(bitmap_expiry(day))
            .arg(COUNTER_BIT)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(stored == 1)
    }
}

/// Adds to `pipe` the commands that set (`taken`) or clear slots' availability bits: per
/// practitioner and day one `BITFIELD` that increments the bitmap's change counter and sets
/// the bits of all its slots that change, then the bitmap's expiry (set after the bits,
/// which create it when missing).
///
/// Counter and bits change in one command, so these commands need no transaction around
/// them: a rebuild's compare-and-set (`REBUILD_LUA`, one atomic script) runs either before
/// the change, and the change is applied over what it stored, or after it, and finds the
/// counter moved and stores nothing. (With the counter in a key of its own, bits first and
/// the bump after would have let a rebuild that read PostgreSQL before our change overwrite
/// it in between, and the bitmap would have kept the old bit for as long as it lives.)
fn mark(keys: &Keys, pipe: &mut redis::Pipeline, mut slots: Vec<(Uuid, DateTime<Utc>, bool)>) {
    slots.sort_unstable_by_key(|&(p, at, _)| (p, at.date_naive()));
    let mut i = 0;
    while i < slots.len() {
        let (practitioner, first, _) = slots[i];
        let day = first.date_naive();
        let same_day = slots[i..]
            .iter()
            .take_while(|(p, at, _)| *p == practitioner && at.date_naive() == day)
            .count();
        let key = keys.availability_day(practitioner, day);
        let mut bitfield = bump_counter(&key);
        for &(_, slot_start, taken) in &slots[i..i + same_day] {
            bitfield
                .arg("SET")
                .arg("u1")
                .arg(availability_bit(slot_start))
                .arg(u8::from(taken));
        }
        pipe.add_command(bitfield).ignore();
        pipe.expire_at(&key, bitmap_expiry(day)).ignore();
        i += same_day;
    }
}

/// `BITFIELD key INCRBY u32 COUNTER_BIT 1`: the bump of a bitmap's change counter, to which
/// [`mark`] appends the bits it changes in the same command.
fn bump_counter(key: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("BITFIELD");
    cmd.arg(key)
        .arg("INCRBY")
        .arg("u32")
        .arg(COUNTER_BIT)
        .arg(1);
    cmd
}

/// Bitmaps live until two days after their date; they are only a cache.
fn bitmap_expiry(day: NaiveDate) -> i64 {
    day.and_time(chrono::NaiveTime::MIN).and_utc().timestamp() + 2 * 86_400
}

// KEYS: 1 bitmap; ARGV: 1 its change counter as read before reading PostgreSQL, 2 the rebuilt
// bitmap (without a counter), 3 expiry (unix seconds), 4 the counter's bit offset. Stores the
// bitmap with the counter one past the one seen, unless the counter moved meanwhile.
const REBUILD_LUA: &str = r"
local now = redis.call('BITFIELD', KEYS[1], 'GET', 'u32', ARGV[4])[1]
if now ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('BITFIELD', KEYS[1], 'SET', 'u32', ARGV[4], (now + 1) % 4294967296)
redis.call('EXPIREAT', KEYS[1], tonumber(ARGV[3]))
return 1
";

fn json_err(e: serde_json::Error) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Client, "json", e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "a test fails loudly on the first surprise"
    )]

    use chrono::TimeZone;

    use super::*;
    use crate::keys::{BUILT_BIT, set_bit};

    /// A stale rebuild — it read the change counter and PostgreSQL before a hold was
    /// published — runs at every point between the commands that publish the hold (the
    /// pipeline is not a transaction, so Redis may run another client's script between any
    /// two of them). The slot must end up marked taken every time: the rebuild either stores
    /// before the bit is written, or finds the counter moved and stores nothing.
    #[tokio::test]
    async fn a_stale_rebuild_between_any_two_marking_commands_never_loses_the_bit() {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let mut conn = crate::connect(&url).await.unwrap();
        let practitioner = Uuid::now_v7();
        let other_day = Uuid::now_v7();
        let at = Utc.with_ymd_and_hms(2030, 5, 6, 9, 30, 0).single().unwrap();
        let slots = vec![
            (practitioner, at, true),
            (practitioner, at + chrono::Duration::minutes(30), true),
            (other_day, at + chrono::Duration::days(1), true),
        ];
        let pairs: Vec<(Uuid, NaiveDate)> = slots
            .iter()
            .map(|(p, when, _)| (*p, when.date_naive()))
            .collect();
        let mut stale = Vec::new();
        set_bit(&mut stale, BUILT_BIT);
        // The marking commands of `slots`, for a namespace of their own.
        let marking = |keys: &Keys| {
            let mut pipe = redis::pipe();
            mark(keys, &mut pipe, slots.clone());
            pipe.cmd_iter().cloned().collect::<Vec<redis::Cmd>>()
        };
        let commands = marking(&Keys::new("t-mark"));
        for k in 0..=commands.len() {
            let fast = FastPath::new(conn.clone(), &format!("t-mark-{}", Uuid::new_v4().simple()));
            let commands = marking(fast.keys());
            // The rebuild reads the counters first, then PostgreSQL (no hold yet).
            let seen = fast.bitmaps(&pairs).await.unwrap();
            for c in &commands[..k] {
                c.query_async::<redis::Value>(&mut conn).await.unwrap();
            }
            for ((p, day), (_, counter)) in pairs.iter().zip(&seen) {
                fast.store_rebuilt(*p, *day, *counter, &stale)
                    .await
                    .unwrap();
            }
            for c in &commands[k..] {
                c.query_async::<redis::Value>(&mut conn).await.unwrap();
            }
            let keys: Vec<String> = pairs
                .iter()
                .map(|(p, day)| fast.keys().availability_day(*p, *day))
                .collect();
            for ((_, when, _), key) in slots.iter().zip(&keys) {
                let bit: bool = redis::cmd("GETBIT")
                    .arg(key)
                    .arg(availability_bit(*when))
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                assert!(bit, "bit of {when} lost with the rebuild after command {k}");
                let ttl: i64 = redis::cmd("TTL")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                assert!(ttl > 0, "{key} has no expiry (rebuild after command {k})");
            }
            let _: () = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        // Two days, one command (counter and bits) and one expiry each, however many slots a
        // day has.
        let names: Vec<String> = commands
            .iter()
            .map(|c| match c.args_iter().next() {
                Some(redis::Arg::Simple(name)) => String::from_utf8_lossy(name).into_owned(),
                _ => String::new(),
            })
            .collect();
        assert_eq!(names, ["BITFIELD", "EXPIREAT", "BITFIELD", "EXPIREAT"]);
    }
}
