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
//!    the same unique indexes decide, and a lost race changes nothing (docs/adr/0001-unique-index-decides-races.md); the bookings
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
//!
//! [`plan`] decides what the steps are given (pure, unit-tested); [`sql`] runs them.

mod plan;
mod sql;

use std::{collections::HashSet, time::Duration};

use chrono::{DateTime, Utc};
use slotq_domain::request::RejectionReason;
use sqlx::PgPool;
use uuid::Uuid;

pub use plan::{hours_lock_key, patient_slot_lock_key};
pub use sql::{INSERT_HOLDS, INSERT_HOLDS_SLOT_ARBITER};

use crate::requests::{RequestView, decided_views, decided_views_locking};
use plan::{Locks, Work};
use sql::Arbiters;

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

impl Decided {
    /// A decision recorded before this transaction (a redelivery).
    fn recorded(view: RequestView) -> Self {
        Decided {
            view,
            fresh: false,
            freed: None,
        }
    }
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
    let locks = Locks::of(inputs, hours_seen);
    let mut tx = pool.begin().await?;
    // Step 1, and the locks: the statement that finds the decided requests takes them.
    let mut decided: Vec<Decided> = decided_views_locking(
        &mut tx,
        &locks.request_ids,
        &locks.patient_slots,
        &locks.hours,
    )
    .await?
    .into_iter()
    .map(Decided::recorded)
    .collect();
    let already: HashSet<Uuid> = decided.iter().map(|d| d.view.id).collect();
    let work = Work::new(inputs, &already);
    if work.pending.is_empty() {
        tx.commit().await?;
        return Ok(decided);
    }
    // Under the hours locks, in a statement of its own (a snapshot taken after them): were
    // the verdicts made on the hours as they are now? If one changed since they were read,
    // the batch is decided again on the new hours.
    if !hours_seen.is_empty() && sql::hours_changed(&mut tx, hours_seen).await? {
        tx.rollback().await?;
        return Err(BatchError::HoursChanged);
    }

    let Work {
        pending,
        rejected: mut outcomes,
        holds,
        moves,
        bookings_to_move,
    } = work;
    if !bookings_to_move.is_empty() {
        sql::lock_bookings_in_order(&mut tx, &bookings_to_move).await?;
    }
    // Steps 2 and 3.
    sql::insert_holds(&mut tx, &holds, hold_ttl, &mut outcomes, arbiters).await?;
    // Step 4.
    for candidate in &moves {
        let outcome = sql::move_booking(&mut tx, candidate).await?;
        outcomes.insert(candidate.input.request_id, outcome);
    }
    // Step 5: the events and audit rows are written by the statement that records the
    // decisions, for the recorded ones only.
    let mut decisions = plan::decisions(&pending, outcomes);
    let recorded = sql::record_decisions(&mut tx, &pending, &decisions).await?;
    if decisions
        .iter()
        .any(|d| d.outcome.booking_id.is_some() && !recorded.contains_key(&d.view.id))
    {
        // Someone recorded a decision for one of our winners: our hold would be a second one.
        return Err(BatchError::Raced);
    }

    let mut lost_race = Vec::new();
    for d in &mut decisions {
        let Some(at) = recorded.get(&d.view.id) else {
            lost_race.push(d.view.id);
            continue;
        };
        d.view.decided_at = Some(*at);
        if let Some(b) = &d.outcome.moved {
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

    decided.extend(raced.into_iter().map(Decided::recorded));
    decided.extend(
        decisions
            .into_iter()
            .filter(|d| d.view.decided_at.is_some())
            .map(|d| Decided {
                freed: d.outcome.moved.map(|b| {
                    (
                        b.request_id,
                        d.outcome.previous_slot.unwrap_or(b.slot_start),
                    )
                }),
                view: d.view,
                fresh: true,
            }),
    );
    Ok(decided)
}
