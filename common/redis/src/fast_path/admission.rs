//! Admission: idempotency replay, the availability pre-check and queueing of a group of
//! submissions, in one script (or, with no Idempotency-Key in the group, one `MULTI`).

use uuid::Uuid;

use super::{FastPath, REMEMBER, json_err};
use crate::keys::availability_bit;

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
pub(super) const ADMIT_LUA: &str = r#"
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

impl FastPath {
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
}
