//! Group commit of holds: the one place where booking requests become decisions.
//!
//! A batch of requests is decided in one transaction:
//! 1. requests already decided (a redelivered job) keep their recorded decision;
//! 2. the (patient, instant) advisory locks below are taken; the valid new-hold candidates,
//!    sorted by (country, practitioner, slot, submission time), go into one multi-row
//!    `INSERT … ON CONFLICT (…) DO NOTHING RETURNING` (rarely more, see below); the unique
//!    partial index `bookings_no_double_book` picks exactly one winner per slot, across
//!    batches and processes, and within a batch the earliest submission wins. It is the only
//!    arbiter unless one patient's instant is in the batch twice ([`INSERT_HOLDS_SLOT_ARBITER`]);
//! 3. the losers are classified (`slot_taken` or `patient_conflict`);
//! 4. reschedules move their booking with one conditional `UPDATE` each, under a savepoint:
//!    the same unique indexes decide, and a lost race changes nothing (ADR-001); the bookings
//!    to move are locked before step 2, all at once in id order, so batches never deadlock
//!    on them;
//! 5. every decision is recorded in `booking_requests`, with its outbox and audit rows, in one
//!    statement.
//!
//! A batch without reschedules or losers is six round trips: `BEGIN`, the decided check
//! (which also takes the locks below), the hours check, the insert, the record, `COMMIT`.
//!
//! Hours: the worker checks slots against the schedules it read before the transaction. The
//! decided check also takes every practitioner's hours lock shared ([`hours_lock_key`]),
//! which a replacement of hours takes exclusively, and the next statement (a snapshot after
//! the locks) checks that no practitioner's `hours_changed_at` moved since the read; if one
//! did, the batch is rolled back and decided again on the new hours
//! ([`BatchError::HoursChanged`]). So every hold was either committed before a replacement
//! of its hours (and is checked by it for conflicts) or decided on the new hours.
//!
//! A patient may not hold two active bookings that start at the same time, in any countries
//! (DESIGN §3). `bookings` is LIST-partitioned by country, and a unique index of a partitioned
//! table must contain the partition key, so `bookings_patient_no_overlap` only sees one
//! country. Across countries the rule is kept here, race-free: before its first write, the
//! batch takes a transaction-level advisory lock on every (patient, slot start) it may create
//! — new holds and reschedule targets — in one statement, in sorted key order (two batches
//! wait for each other, never deadlock on these locks). A competing batch of the same patient
//! and instant therefore commits before our next statement starts or after we commit; the
//! inserts and moves skip a candidate when that patient has any other active booking at that
//! instant, which is then a `patient_conflict`. (Rejected alternative: a non-partitioned
//! side table with a unique (patient, slot start) key — `ON CONFLICT DO NOTHING` of the one
//! multi-row insert cannot arbitrate on a second table, so a loser on the practitioner's slot
//! would still claim the patient's instant.) Candidates of one patient at one instant in
//! several countries of the same batch are inserted in rounds, one country each, in order of
//! submission, so that the earliest one that can win does. The locks cost no round trip of
//! their own: the statement of step 1 takes them.
//!
//! If a concurrent transaction recorded one of our winners' requests first (the same job
//! delivered twice at once), the batch is rolled back and retried: step 1 then finds the
//! recorded decision, so a request never owns two holds.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    bookings::{Booking, lock_booking},
    events::{
        AuditColumns, AuditEntry, BookingEventData, EventColumns, NewEvent, bind_audit_columns,
        bind_event_columns, types,
    },
    requests::{RequestView, decided_views, decided_views_locking},
};
use slotq_domain::{
    request::{RejectionReason, RequestKind, RequestStatus},
    status::{BookingEvent, BookingStatus},
};

/// One request of a batch, with the worker's verdict on its slot.
#[derive(Clone, Debug)]
pub struct HoldInput {
    /// Booking request id (the job's identity).
    pub request_id: Uuid,
    /// Patient.
    pub patient_id: Uuid,
    /// Practitioner.
    pub practitioner_id: Uuid,
    /// Slot asked for.
    pub slot_start: DateTime<Utc>,
    /// When ingress accepted it.
    pub submitted_at: DateTime<Utc>,
    /// The client's Idempotency-Key, if any.
    pub idempotency_key: Option<String>,
    /// For a reschedule: the booking to move to `slot_start`.
    pub reschedule: Option<Uuid>,
    /// Whether it may compete for the slot.
    pub verdict: Verdict,
    /// Who asked (`sub`, role), for the audit log; `None`: the worker itself.
    pub actor: Option<(String, String)>,
}

/// The worker's verdict before the database decides.
#[derive(Clone, Debug)]
pub enum Verdict {
    /// A valid slot: try to hold it.
    Candidate {
        /// Bookings partition.
        country_code: String,
        /// Slot end.
        slot_end: DateTime<Utc>,
    },
    /// Refused before competing, for this reason.
    Reject(RejectionReason),
}

/// A decision out of a batch.
#[derive(Clone, Debug)]
pub struct Decided {
    /// What the client will see.
    pub view: RequestView,
    /// `true` when this transaction made the decision (not a redelivery of a decided one).
    pub fresh: bool,
    /// For a successful reschedule: the booking's original request and the slot it left.
    pub freed: Option<(Uuid, DateTime<Utc>)>,
}

/// Outcome of one attempt at a batch.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// A concurrent delivery of the same request decided first; retry the batch.
    #[error("a request of the batch was decided concurrently")]
    Raced,
    /// A practitioner's hours were replaced after the batch read them; decide it again.
    #[error("the hours of a practitioner of the batch changed")]
    HoursChanged,
}

impl BatchError {
    /// Whether retrying the batch may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            BatchError::Raced | BatchError::HoursChanged => true,
            BatchError::Db(e) => crate::is_transient(e),
        }
    }
}

/// How one pending request was decided in this transaction.
struct Outcome {
    booking_id: Option<Uuid>,
    status: RequestStatus,
    hold_expires_at: Option<DateTime<Utc>>,
    reason: Option<RejectionReason>,
    /// Events and audit for a successful reschedule (written only if the decision is recorded).
    moved: Option<Booking>,
    previous_slot: Option<DateTime<Utc>>,
}

impl Outcome {
    fn rejected(reason: RejectionReason) -> Self {
        Outcome {
            booking_id: None,
            status: RequestStatus::Rejected,
            hold_expires_at: None,
            reason: Some(reason),
            moved: None,
            previous_slot: None,
        }
    }
}

/// Which unique indexes of `bookings` arbitrate the hold insert's `ON CONFLICT DO NOTHING`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arbiters {
    /// The slot gate alone ([`INSERT_HOLDS_SLOT_ARBITER`]), unless the batch has one patient's
    /// instant more than once.
    SlotGate,
    /// Every unique index ([`INSERT_HOLDS`]).
    Every,
}

/// Decides a batch of requests in one transaction. Returns one decision per distinct request id.
pub async fn commit_batch(
    pool: &PgPool,
    inputs: &[HoldInput],
    hours_seen: &[(Uuid, Option<DateTime<Utc>>)],
    hold_ttl: Duration,
) -> Result<Vec<Decided>, BatchError> {
    match decide_batch(pool, inputs, hours_seen, hold_ttl, Arbiters::SlotGate).await {
        // A unique index other than the slot gate refused a hold (see
        // `INSERT_HOLDS_SLOT_ARBITER`; moves handle their own conflicts): the transaction is
        // gone, so the batch is decided again with every index arbitrating.
        Err(BatchError::Db(e)) if crate::is_unique_violation(&e) => {
            tracing::warn!(error = %e, "a hold conflicted outside the slot gate; deciding the batch again with every unique index arbitrating");
            decide_batch(pool, inputs, hours_seen, hold_ttl, Arbiters::Every).await
        }
        other => other,
    }
}

async fn decide_batch(
    pool: &PgPool,
    inputs: &[HoldInput],
    hours_seen: &[(Uuid, Option<DateTime<Utc>>)],
    hold_ttl: Duration,
    arbiters: Arbiters,
) -> Result<Vec<Decided>, BatchError> {
    let mut seen = HashSet::with_capacity(inputs.len());
    let all_ids: Vec<Uuid> = inputs
        .iter()
        .map(|i| i.request_id)
        .filter(|id| seen.insert(*id))
        .collect();
    // The (patient, instant) locks of every candidate — new holds and reschedule targets —
    // are taken by the same statement that finds the already-decided requests (a redelivered
    // one's lock is one more than needed, and harmless).
    let lock_keys = patient_slot_lock_keys(
        inputs
            .iter()
            .filter(|i| matches!(i.verdict, Verdict::Candidate { .. }))
            .map(|i| (i.patient_id, i.slot_start)),
    );

    let mut hours_keys: Vec<i64> = hours_seen.iter().map(|(p, _)| hours_lock_key(*p)).collect();
    hours_keys.sort_unstable();
    hours_keys.dedup();

    let mut tx = pool.begin().await?;
    let mut decided: Vec<Decided> =
        decided_views_locking(&mut tx, &all_ids, &lock_keys, &hours_keys)
            .await?
            .into_iter()
            .map(|view| Decided {
                view,
                fresh: false,
                freed: None,
            })
            .collect();
    let already: HashSet<Uuid> = decided.iter().map(|d| d.view.id).collect();
    let mut taken_ids = HashSet::with_capacity(inputs.len());
    let pending: Vec<&HoldInput> = inputs
        .iter()
        .filter(|i| !already.contains(&i.request_id) && taken_ids.insert(i.request_id))
        .collect();
    if pending.is_empty() {
        tx.commit().await?;
        return Ok(decided);
    }
    // Under the hours locks, in a statement of its own (a snapshot taken after them): were
    // the verdicts made on the hours as they are now? If one changed since they were read,
    // the batch is decided again on the new hours.
    if !hours_seen.is_empty() && hours_changed(&mut tx, hours_seen).await? {
        tx.rollback().await?;
        return Err(BatchError::HoursChanged);
    }

    let mut outcomes: HashMap<Uuid, Outcome> = HashMap::with_capacity(pending.len());
    for input in &pending {
        if let Verdict::Reject(reason) = input.verdict {
            outcomes.insert(input.request_id, Outcome::rejected(reason));
        }
    }
    let candidates: Vec<(&HoldInput, &str, DateTime<Utc>)> = pending
        .iter()
        .filter_map(|i| match &i.verdict {
            Verdict::Candidate {
                country_code,
                slot_end,
            } => Some((*i, country_code.as_str(), *slot_end)),
            Verdict::Reject(_) => None,
        })
        .collect();
    let (mut holds, mut moves): (Vec<_>, Vec<_>) = candidates
        .into_iter()
        .partition(|c| c.0.reschedule.is_none());
    // The bookings to move are locked first, in id order, before any hold is inserted: two
    // batches locking them one by one in submission order deadlocked, and PostgreSQL could
    // pick as its victim a cancel or payment queued on one of those rows (a 500).
    let mut to_move: Vec<Uuid> = moves.iter().filter_map(|(i, _, _)| i.reschedule).collect();
    to_move.sort_unstable();
    to_move.dedup();
    if !to_move.is_empty() {
        lock_bookings_in_order(&mut tx, &to_move).await?;
    }
    insert_holds(&mut tx, &mut holds, hold_ttl, &mut outcomes, arbiters).await?;
    moves.sort_by_key(|(i, _, _)| (i.submitted_at, i.request_id));
    for (input, country, end) in moves {
        let outcome = move_booking(&mut tx, input, country, end).await?;
        outcomes.insert(input.request_id, outcome);
    }

    // Record every pending decision.
    let mut views: Vec<(RequestView, Outcome)> = Vec::with_capacity(pending.len());
    for input in &pending {
        let o = outcomes
            .remove(&input.request_id)
            .unwrap_or_else(|| Outcome::rejected(RejectionReason::InvalidSlot));
        let view = RequestView {
            id: input.request_id,
            status: o.status,
            kind: if input.reschedule.is_some() {
                RequestKind::Reschedule
            } else {
                RequestKind::Book
            },
            // A rejected reschedule still names the booking it was to move.
            booking_id: o.booking_id.or(input.reschedule),
            hold_expires_at: o.hold_expires_at,
            reason: o.reason,
            practitioner_id: input.practitioner_id,
            patient_id: input.patient_id,
            slot_start: input.slot_start,
            submitted_at: input.submitted_at,
            decided_at: None,
        };
        views.push((view, o));
    }
    // The events and audit rows of every decision, written by the statement that records the
    // decisions, for the recorded ones only.
    let mut events = Vec::with_capacity(views.len());
    let mut audit = Vec::new();
    // `views` follows `pending`, one view per pending input.
    for ((view, o), input) in views.iter().zip(&pending) {
        // A reschedule to the slot its booking already has (another request moved it there):
        // decided with the booking's status, nothing changed, so no event and no audit row.
        if input.reschedule.is_some() && o.booking_id.is_some() && o.moved.is_none() {
            continue;
        }
        // The event, and the audit row (booking, action, from, to) of a booking that changed.
        let (event, changed) = match &o.moved {
            Some(b) => (
                NewEvent {
                    event_type: types::RESCHEDULED,
                    data: BookingEventData {
                        request_id: view.id,
                        previous_slot_start: o.previous_slot,
                        kind: Some(view.kind),
                        ..b.event_data(None)
                    },
                },
                Some((b.id, "reschedule", Some(b.status), b.status)),
            ),
            None => (
                NewEvent {
                    event_type: if o.booking_id.is_some() {
                        types::HELD
                    } else {
                        types::REJECTED
                    },
                    data: BookingEventData {
                        booking_id: view.booking_id,
                        request_id: view.id,
                        practitioner_id: view.practitioner_id,
                        patient_id: view.patient_id,
                        slot_start: view.slot_start,
                        status: view.status.as_str().to_owned(),
                        reason: view.reason.map(|r| r.as_str().to_owned()),
                        previous_slot_start: None,
                        kind: Some(view.kind),
                        payment: None,
                    },
                },
                o.booking_id
                    .map(|id| (id, "hold", None, BookingStatus::Held)),
            ),
        };
        events.push((view.id, event));
        if let Some((booking_id, action, from, to)) = changed {
            let (actor, actor_role) = input
                .actor
                .clone()
                .unwrap_or_else(|| ("worker".into(), "system".into()));
            audit.push((
                view.id,
                AuditEntry {
                    booking_id,
                    actor,
                    actor_role,
                    action,
                    from,
                    to,
                    request_id: Some(view.id.to_string()),
                },
            ));
        }
    }
    let recorded = record_decisions(&mut tx, &pending, &views, &events, &audit).await?;
    if views
        .iter()
        .any(|(v, o)| (o.booking_id.is_some()) && !recorded.contains_key(&v.id))
    {
        // Someone recorded a decision for one of our winners: our hold would be a second one.
        return Err(BatchError::Raced);
    }

    let mut lost_race = Vec::new();
    for (view, o) in &mut views {
        let Some(at) = recorded.get(&view.id) else {
            lost_race.push(view.id);
            continue;
        };
        view.decided_at = Some(*at);
        if let Some(b) = &o.moved {
            crate::conflicts::close(&mut tx, b.id, "rescheduled").await?;
        }
    }
    // Rejections decided concurrently by another delivery: report what was recorded.
    let raced = if lost_race.is_empty() {
        Vec::new()
    } else {
        decided_views(&mut *tx, &lost_race).await?
    };
    tx.commit().await?;

    decided.extend(raced.into_iter().map(|view| Decided {
        view,
        fresh: false,
        freed: None,
    }));
    decided.extend(
        views
            .into_iter()
            .filter(|(v, _)| v.decided_at.is_some())
            .map(|(view, o)| Decided {
                view,
                fresh: true,
                freed: o
                    .moved
                    .map(|b| (b.request_id, o.previous_slot.unwrap_or(b.slot_start))),
            }),
    );
    Ok(decided)
}

/// Step 2 and 3: one multi-row insert for the new holds (one per round when a patient asks for
/// the same instant in several countries), then classify the losers.
async fn insert_holds(
    tx: &mut PgConnection,
    candidates: &mut [(&HoldInput, &str, DateTime<Utc>)],
    hold_ttl: Duration,
    outcomes: &mut HashMap<Uuid, Outcome>,
    arbiters: Arbiters,
) -> Result<(), sqlx::Error> {
    if candidates.is_empty() {
        return Ok(());
    }
    let mut instants = HashSet::with_capacity(candidates.len());
    let sql = if arbiters == Arbiters::SlotGate
        && candidates
            .iter()
            .all(|c| instants.insert((c.0.patient_id, c.0.slot_start)))
    {
        INSERT_HOLDS_SLOT_ARBITER
    } else {
        INSERT_HOLDS
    };
    // A stable global order: concurrent batches take index locks in the same order (fewer
    // deadlocks) and the earliest submission for a slot wins.
    candidates.sort_by(|a, b| {
        (
            a.1,
            a.0.practitioner_id,
            a.0.slot_start,
            a.0.submitted_at,
            a.0.request_id,
        )
            .cmp(&(
                b.1,
                b.0.practitioner_id,
                b.0.slot_start,
                b.0.submitted_at,
                b.0.request_id,
            ))
    });
    let n = candidates.len();
    let req_ids: Vec<Uuid> = candidates.iter().map(|c| c.0.request_id).collect();
    let countries: Vec<&str> = candidates.iter().map(|c| c.1).collect();
    let practs: Vec<Uuid> = candidates.iter().map(|c| c.0.practitioner_id).collect();
    let starts: Vec<DateTime<Utc>> = candidates.iter().map(|c| c.0.slot_start).collect();
    let rounds = country_rounds(candidates);
    let last_round = rounds.iter().copied().max().unwrap_or(0);
    for round in 0..=last_round {
        let rows: Vec<&(&HoldInput, &str, DateTime<Utc>)> = candidates
            .iter()
            .zip(&rounds)
            .filter(|(_, r)| **r == round)
            .map(|(c, _)| c)
            .collect();
        for (req, booking, exp) in insert_round(&mut *tx, sql, &rows, hold_ttl).await? {
            outcomes.insert(
                req,
                Outcome {
                    booking_id: Some(booking),
                    status: RequestStatus::Held,
                    hold_expires_at: Some(exp),
                    reason: None,
                    moved: None,
                    previous_slot: None,
                },
            );
        }
    }

    // Losers: slot occupied (by anyone, including this batch's winner) → slot_taken; otherwise
    // the patient already has an active booking at that time.
    let losers: Vec<usize> = (0..n)
        .filter(|i| !outcomes.contains_key(&req_ids[*i]))
        .collect();
    if losers.is_empty() {
        return Ok(());
    }
    let lc: Vec<&str> = losers.iter().map(|i| countries[*i]).collect();
    let lp: Vec<Uuid> = losers.iter().map(|i| practs[*i]).collect();
    let ls: Vec<DateTime<Utc>> = losers.iter().map(|i| starts[*i]).collect();
    let occupied: HashSet<(String, Uuid, DateTime<Utc>)> = sqlx::query_as(
        "SELECT b.country_code::text, b.practitioner_id, b.slot_start
         FROM unnest($1::text[], $2::uuid[], $3::timestamptz[]) AS u(c, p, s)
         CROSS JOIN LATERAL (
             SELECT country_code, practitioner_id, slot_start FROM bookings
             WHERE country_code = u.c AND practitioner_id = u.p AND slot_start = u.s
               AND status IN ('held', 'confirmed')
             LIMIT 1) b",
    )
    .bind(&lc)
    .bind(&lp)
    .bind(&ls)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    for i in losers {
        let key = (countries[i].to_owned(), practs[i], starts[i]);
        let reason = if occupied.contains(&key) {
            RejectionReason::SlotTaken
        } else {
            RejectionReason::PatientConflict
        };
        outcomes.insert(req_ids[i], Outcome::rejected(reason));
    }
    Ok(())
}

/// The advisory-lock key of a patient's instant: FNV-1a (64 bit) over the patient id's bytes
/// and the slot start's Unix microseconds (big-endian). A fixed function, so every worker
/// process, of any version, computes the same key; a collision only makes two batches wait
/// for each other.
pub fn patient_slot_lock_key(patient_id: Uuid, slot_start: DateTime<Utc>) -> i64 {
    let micros = slot_start.timestamp_micros().to_be_bytes();
    fnv1a_key(patient_id.as_bytes().iter().chain(micros.iter()))
}

/// The advisory-lock key of a practitioner's hours: FNV-1a (64 bit) over `hours:` and the id's
/// bytes. A batch holds it shared while it decides on those hours, a replacement of the hours
/// exclusively ([`crate::directory::replace_hours`]).
pub fn hours_lock_key(practitioner_id: Uuid) -> i64 {
    fnv1a_key(b"hours:".iter().chain(practitioner_id.as_bytes().iter()))
}

/// FNV-1a (64 bit) of `bytes`, as an advisory-lock key.
fn fnv1a_key<'a>(bytes: impl Iterator<Item = &'a u8>) -> i64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = bytes.fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME));
    i64::from_be_bytes(hash.to_be_bytes())
}

/// The advisory-lock keys of these (patient, instant) pairs, sorted and without duplicates:
/// taken in this order (a function scan returns an array's elements in order), two batches
/// wait for each other on these locks, never deadlock.
fn patient_slot_lock_keys(slots: impl Iterator<Item = (Uuid, DateTime<Utc>)>) -> Vec<i64> {
    let mut keys: Vec<i64> = slots
        .map(|(patient, start)| patient_slot_lock_key(patient, start))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// The insert round of each (sorted) candidate: 0, unless its patient asks for the same
/// instant in several countries of this batch; then the countries take turns, ordered by their
/// earliest submission (round 0 for the earliest), so that the unique index (within a country)
/// and the `NOT EXISTS` check (across countries, seeing the earlier rounds' rows) together let
/// at most one of them win — the earliest that can.
fn country_rounds(candidates: &[(&HoldInput, &str, DateTime<Utc>)]) -> Vec<usize> {
    type Earliest<'a> = Vec<((DateTime<Utc>, Uuid), &'a str)>;
    let mut groups: HashMap<(Uuid, DateTime<Utc>), Earliest<'_>> = HashMap::new();
    for (input, country, _) in candidates {
        let first = (input.submitted_at, input.request_id);
        let group = groups
            .entry((input.patient_id, input.slot_start))
            .or_default();
        match group.iter_mut().find(|(_, c)| c == country) {
            Some(entry) => entry.0 = entry.0.min(first),
            None => group.push((first, country)),
        }
    }
    for group in groups.values_mut() {
        group.sort_unstable();
    }
    candidates
        .iter()
        .map(|(input, country, _)| {
            groups
                .get(&(input.patient_id, input.slot_start))
                .and_then(|g| g.iter().position(|(_, c)| c == country))
                .unwrap_or(0)
        })
        .collect()
}

/// The multi-row hold insert of [`insert_round`], with `ON CONFLICT` and `RETURNING` to follow
/// (`$1`–`$7`: booking ids, request ids, countries, practitioners, patients, slot starts and
/// ends; `$8`: hold TTL in seconds).
///
/// `status::text` in the patient's-instant check keeps the partial unique indexes out of it
/// (the convention of the `db` module): their predicate is `status IN ('held', 'confirmed')`
/// and their first column the country, which this check (any country) does not name. With
/// statistics of a table analyzed nearly empty and refilled since, PostgreSQL answered the
/// check with a full index-only scan of `bookings_patient_no_overlap` per row — 115 ms per
/// batch, 0.13× the baseline — instead of probing `(patient_id, slot_start, id)`
/// (loadtest/README.md, change 23).
macro_rules! insert_holds_sql {
    ($on_conflict:literal) => {
        concat!(
            "INSERT INTO bookings (id, request_id, country_code, practitioner_id, patient_id,
                               slot_start, slot_end, status, hold_expires_at)
         SELECT u.id, u.request_id, u.country_code, u.practitioner_id, u.patient_id,
                u.slot_start, u.slot_end, 'held', now() + make_interval(secs => $8)
         FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::uuid[], $5::uuid[],
                     $6::timestamptz[], $7::timestamptz[]) WITH ORDINALITY
              AS u(id, request_id, country_code, practitioner_id, patient_id, slot_start, slot_end, ord)
         LEFT JOIN LATERAL (
             SELECT 1 AS hit FROM bookings o
             WHERE o.patient_id = u.patient_id AND o.slot_start = u.slot_start
               AND o.status::text IN ('held', 'confirmed')
             LIMIT 1) busy ON true
         WHERE busy.hit IS NULL
         ORDER BY u.ord
         ",
            $on_conflict,
            "
         RETURNING request_id, id, hold_expires_at"
        )
    };
}

/// The hold insert that skips a row conflicting with any unique index of `bookings`; public
/// for the tests of its plan. Used for a batch in which one patient asks for the same instant
/// more than once, where `bookings_patient_no_overlap` must skip the later rows of one round,
/// and when [`commit_batch`] decides a batch again after [`INSERT_HOLDS_SLOT_ARBITER`] failed.
pub const INSERT_HOLDS: &str = insert_holds_sql!("ON CONFLICT DO NOTHING");

/// The hold insert of every other batch: only the slot gate arbitrates. `ON CONFLICT DO
/// NOTHING` without a target checks each row against all four unique indexes before inserting
/// it (a speculative insertion); naming the one index that can conflict took ~1 ms off each
/// 128-row insert (~14 %, loadtest/README.md change 25). The other three cannot conflict in
/// such a batch: the primary key's ids are new UUIDv7s; a request is in the batch once and a
/// second delivery of it elsewhere is the same slot, which the gate skips; the patient's
/// instant appears once in the batch, and other batches of that patient and instant are kept
/// out by its advisory lock and the busy check (a statement after the lock). Should one
/// conflict all the same, the statement fails and [`commit_batch`] decides the batch again
/// with [`INSERT_HOLDS`].
pub const INSERT_HOLDS_SLOT_ARBITER: &str = insert_holds_sql!(
    "ON CONFLICT (country_code, practitioner_id, slot_start)
             WHERE status IN ('held', 'confirmed') DO NOTHING"
);

/// One multi-row insert of new holds; returns (request, booking, hold expiry) of the winners.
/// A row is skipped when its slot is taken or its patient already has an active booking at
/// that instant: in its country by the unique indexes (rows of this statement included), in
/// any country by `NOT EXISTS` (committed rows and this transaction's earlier statements; the
/// advisory locks keep concurrent batches of the same patient and instant out).
async fn insert_round(
    tx: &mut PgConnection,
    sql: &'static str,
    rows: &[&(&HoldInput, &str, DateTime<Utc>)],
    hold_ttl: Duration,
) -> Result<Vec<(Uuid, Uuid, DateTime<Utc>)>, sqlx::Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let booking_ids: Vec<Uuid> = rows.iter().map(|_| Uuid::now_v7()).collect();
    let req_ids: Vec<Uuid> = rows.iter().map(|c| c.0.request_id).collect();
    let countries: Vec<&str> = rows.iter().map(|c| c.1).collect();
    let practs: Vec<Uuid> = rows.iter().map(|c| c.0.practitioner_id).collect();
    let patients: Vec<Uuid> = rows.iter().map(|c| c.0.patient_id).collect();
    let starts: Vec<DateTime<Utc>> = rows.iter().map(|c| c.0.slot_start).collect();
    let ends: Vec<DateTime<Utc>> = rows.iter().map(|c| c.2).collect();
    sqlx::query_as(sql)
        .bind(&booking_ids)
        .bind(&req_ids)
        .bind(&countries)
        .bind(&practs)
        .bind(&patients)
        .bind(&starts)
        .bind(&ends)
        .bind(hold_ttl.as_secs_f64())
        .fetch_all(&mut *tx)
        .await
}

/// Whether any practitioner's hours changed since `seen` was read.
async fn hours_changed(
    tx: &mut PgConnection,
    seen: &[(Uuid, Option<DateTime<Utc>>)],
) -> Result<bool, sqlx::Error> {
    let (ids, versions): (Vec<Uuid>, Vec<Option<DateTime<Utc>>>) = seen.iter().copied().unzip();
    sqlx::query_scalar(
        "SELECT EXISTS (
             SELECT 1 FROM unnest($1::uuid[], $2::timestamptz[]) AS s(id, at)
             JOIN practitioners p ON p.id = s.id
             WHERE p.hours_changed_at IS DISTINCT FROM s.at)",
    )
    .bind(&ids)
    .bind(&versions)
    .fetch_one(tx)
    .await
}

/// Locks the bookings `ids` (sorted) in that order: the rows are locked as the sorted
/// result is returned.
async fn lock_bookings_in_order(tx: &mut PgConnection, ids: &[Uuid]) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1 FROM bookings WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .bind(ids)
        .execute(tx)
        .await
        .map(|_| ())
}

/// Step 4: moves one booking to its new slot, or changes nothing.
async fn move_booking(
    tx: &mut PgConnection,
    input: &HoldInput,
    country: &str,
    slot_end: DateTime<Utc>,
) -> Result<Outcome, sqlx::Error> {
    let Some(booking_id) = input.reschedule else {
        return Ok(Outcome::rejected(RejectionReason::InvalidSlot));
    };
    let Some(booking) = lock_booking(&mut *tx, booking_id).await? else {
        return Ok(Outcome::rejected(RejectionReason::UnknownBooking));
    };
    if booking
        .status
        .apply_at(BookingEvent::Reschedule, booking.slot_start, Utc::now())
        .is_err()
    {
        return Ok(Outcome::rejected(RejectionReason::BookingNotActive));
    }
    // A hold past its expiry that the scheduler has not swept yet is over: a payment for it is
    // answered late (payments.rs), and it cannot be moved either.
    if booking.hold_lapsed(Utc::now()) {
        return Ok(Outcome::rejected(RejectionReason::BookingNotActive));
    }
    if booking.slot_start == input.slot_start {
        return Ok(Outcome {
            booking_id: Some(booking.id),
            status: RequestStatus::of_booking(booking.status),
            hold_expires_at: booking
                .hold_expires_at
                .filter(|_| booking.status == BookingStatus::Held),
            reason: None,
            moved: None,
            previous_slot: None,
        });
    }
    sqlx::query("SAVEPOINT reschedule")
        .execute(&mut *tx)
        .await?;
    // The patient's other active booking at the new instant, in any country, blocks the move
    // (the batch holds the advisory lock of that instant); `status::text`: module docs of `db`.
    let moved: Result<Option<Booking>, sqlx::Error> = sqlx::query_as(
        "UPDATE bookings SET slot_start = $3, slot_end = $4, updated_at = now()
         WHERE country_code = $1 AND id = $2
           AND NOT EXISTS (
               SELECT 1 FROM bookings o
               WHERE o.patient_id = $5 AND o.slot_start = $3 AND o.id <> $2
                 AND o.status::text IN ('held', 'confirmed'))
         RETURNING *",
    )
    .bind(country)
    .bind(booking.id)
    .bind(input.slot_start)
    .bind(slot_end)
    .bind(booking.patient_id)
    .fetch_optional(&mut *tx)
    .await;
    match moved {
        Ok(None) => {
            sqlx::query("RELEASE SAVEPOINT reschedule")
                .execute(&mut *tx)
                .await?;
            Ok(Outcome::rejected(RejectionReason::PatientConflict))
        }
        Ok(Some(b)) => {
            sqlx::query("RELEASE SAVEPOINT reschedule")
                .execute(&mut *tx)
                .await?;
            Ok(Outcome {
                booking_id: Some(b.id),
                status: RequestStatus::of_booking(b.status),
                hold_expires_at: b
                    .hold_expires_at
                    .filter(|_| b.status == BookingStatus::Held),
                reason: None,
                previous_slot: Some(booking.slot_start),
                moved: Some(b),
            })
        }
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => {
            sqlx::query("ROLLBACK TO SAVEPOINT reschedule")
                .execute(&mut *tx)
                .await?;
            // The per-partition index names carry the column names.
            let patient = e.constraint().is_some_and(|c| c.contains("patient"));
            Ok(Outcome::rejected(if patient {
                RejectionReason::PatientConflict
            } else {
                RejectionReason::SlotTaken
            }))
        }
        Err(e) => Err(e),
    }
}

/// Step 5: records the decisions, and writes the outbox events and audit rows of the recorded
/// ones, in one statement; returns when each was recorded (absent: recorded earlier by a
/// concurrent delivery of the same request, whose events were written by that delivery).
async fn record_decisions(
    tx: &mut PgConnection,
    pending: &[&HoldInput],
    views: &[(RequestView, Outcome)],
    events: &[(Uuid, NewEvent)],
    audit: &[(Uuid, AuditEntry)],
) -> Result<HashMap<Uuid, DateTime<Utc>>, sqlx::Error> {
    let ids: Vec<Uuid> = views.iter().map(|(v, _)| v.id).collect();
    let keys: Vec<Option<&str>> = pending
        .iter()
        .map(|i| i.idempotency_key.as_deref())
        .collect();
    let pats: Vec<Uuid> = views.iter().map(|(v, _)| v.patient_id).collect();
    let prs: Vec<Uuid> = views.iter().map(|(v, _)| v.practitioner_id).collect();
    let sts: Vec<DateTime<Utc>> = views.iter().map(|(v, _)| v.slot_start).collect();
    let subs: Vec<DateTime<Utc>> = views.iter().map(|(v, _)| v.submitted_at).collect();
    let outs: Vec<&str> = views
        .iter()
        .map(|(_, o)| {
            if o.booking_id.is_some() {
                "held"
            } else {
                "rejected"
            }
        })
        .collect();
    let reasons: Vec<Option<RejectionReason>> = views.iter().map(|(_, o)| o.reason).collect();
    let bks: Vec<Option<Uuid>> = views.iter().map(|(_, o)| o.booking_id).collect();
    let kinds: Vec<RequestKind> = views.iter().map(|(v, _)| v.kind).collect();
    let targets: Vec<Option<Uuid>> = pending.iter().map(|i| i.reschedule).collect();
    let ev = EventColumns::of(events.iter().map(|(_, e)| e))?;
    let ev_requests: Vec<Uuid> = events.iter().map(|(r, _)| *r).collect();
    let au = AuditColumns::of(audit.iter().map(|(_, a)| a));
    let au_requests: Vec<Uuid> = audit.iter().map(|(r, _)| *r).collect();
    // Outbox rows are inserted in the order given (their serial ids keep it), so the relay
    // publishes a batch's events in the order the requests were decided.
    let query = sqlx::query_as(
        "WITH rec AS (
             INSERT INTO booking_requests (id, idempotency_key, patient_id, practitioner_id,
                                           slot_start, submitted_at, outcome, reason, booking_id,
                                           kind, target_booking_id, decided_at)
             SELECT u.id, u.k, u.pa, u.pr, u.s, u.sub, u.o::request_outcome, u.r, u.b,
                    u.kind::request_kind, u.t, clock_timestamp()
             FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::timestamptz[],
                         $6::timestamptz[], $7::text[], $8::text[], $9::uuid[], $10::text[],
                         $11::uuid[])
                  AS u(id, k, pa, pr, s, sub, o, r, b, kind, t)
             ON CONFLICT (id) DO NOTHING
             RETURNING id, decided_at
         ), ev AS (
             INSERT INTO outbox (event_id, type, aggregate_id, key, payload)
             SELECT e.id, e.t, e.a, e.k, e.p
             FROM unnest($12::uuid[], $13::text[], $14::uuid[], $15::text[], $16::text[]::jsonb[],
                         $17::uuid[]) WITH ORDINALITY AS e(id, t, a, k, p, req, ord)
             WHERE e.req IN (SELECT id FROM rec)
             ORDER BY e.ord
         ), au AS (
             INSERT INTO audit_log (booking_id, actor, action, from_status, to_status,
                                    request_id, actor_role)
             SELECT a.b, a.ac, a.act, a.f, a.t, a.r, a.ro
             FROM unnest($18::uuid[], $19::text[], $20::text[], $21::text[], $22::text[],
                         $23::text[], $24::text[], $25::uuid[])
                  WITH ORDINALITY AS a(b, ac, act, f, t, r, ro, req, ord)
             WHERE a.req IN (SELECT id FROM rec)
             ORDER BY a.ord
         )
         SELECT id, decided_at FROM rec",
    )
    .bind(&ids)
    .bind(&keys)
    .bind(&pats)
    .bind(&prs)
    .bind(&sts)
    .bind(&subs)
    .bind(&outs)
    .bind(&reasons)
    .bind(&bks)
    .bind(&kinds)
    .bind(&targets);
    let query = bind_event_columns!(query, ev).bind(&ev_requests);
    let recorded: Vec<(Uuid, DateTime<Utc>)> = bind_audit_columns!(query, au)
        .bind(&au_requests)
        .fetch_all(&mut *tx)
        .await?;
    Ok(recorded.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(patient: Uuid, country: &'static str, at: DateTime<Utc>, ms: i64) -> HoldInput {
        HoldInput {
            request_id: Uuid::now_v7(),
            patient_id: patient,
            practitioner_id: Uuid::now_v7(),
            slot_start: at,
            submitted_at: DateTime::UNIX_EPOCH + chrono::Duration::milliseconds(ms),
            idempotency_key: None,
            reschedule: None,
            actor: None,
            verdict: Verdict::Candidate {
                country_code: country.to_owned(),
                slot_end: at,
            },
        }
    }

    #[test]
    fn the_lock_key_is_a_fixed_function_of_patient_and_instant() {
        // Every worker version must compute the same key: this value may never change.
        let patient = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        let at = DateTime::UNIX_EPOCH + chrono::Duration::seconds(1_800_000_000);
        assert_eq!(
            patient_slot_lock_key(patient, at),
            patient_slot_lock_key(patient, at)
        );
        // FNV-1a 64 of the 16 id bytes and 1_800_000_000_000_000 µs as big-endian i64.
        assert_eq!(
            patient_slot_lock_key(patient, at),
            -9_055_600_386_278_898_009
        );
        assert_ne!(
            patient_slot_lock_key(patient, at),
            patient_slot_lock_key(patient, at + chrono::Duration::minutes(30))
        );
        assert_ne!(
            patient_slot_lock_key(patient, at),
            patient_slot_lock_key(Uuid::nil(), at)
        );
    }

    #[test]
    fn countries_of_one_patient_and_instant_take_turns_in_submission_order() {
        let (p, q) = (Uuid::now_v7(), Uuid::now_v7());
        let t = DateTime::UNIX_EPOCH + chrono::Duration::days(20_000);
        let u = t + chrono::Duration::minutes(30);
        let inputs = [
            input(p, "FR", t, 5),
            input(p, "DE", t, 1),
            input(p, "FR", t, 2),
            input(p, "ES", t, 9),
            input(p, "FR", u, 7),
            input(q, "IT", t, 0),
            input(q, "IT", t, 3),
        ];
        let candidates: Vec<(&HoldInput, &str, DateTime<Utc>)> = inputs
            .iter()
            .map(|i| match &i.verdict {
                Verdict::Candidate { country_code, .. } => (i, country_code.as_str(), t),
                Verdict::Reject(_) => unreachable!("all candidates"),
            })
            .collect();
        // DE (1 ms) before FR (2 ms) before ES (9 ms); other instants and patients: round 0.
        assert_eq!(country_rounds(&candidates), vec![1, 0, 1, 2, 0, 0, 0]);
    }
}
