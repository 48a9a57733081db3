//! Group commit of holds: the one place where booking requests become decisions.
//!
//! A batch of requests is decided in one transaction:
//! 1. requests already decided (a redelivered job) keep their recorded decision;
//! 2. the valid candidates, sorted by (country, practitioner, slot, submission time), go into
//!    one multi-row `INSERT … ON CONFLICT DO NOTHING RETURNING`; the unique partial index
//!    `bookings_no_double_book` picks exactly one winner per slot, across batches and
//!    processes, and within a batch the earliest submission wins;
//! 3. the losers are classified (`slot_taken` or `patient_conflict`);
//! 4. every decision is recorded in `booking_requests`, with outbox and audit rows.
//!
//! If a concurrent transaction recorded one of our winners' requests first (the same job
//! delivered twice at once), the batch is rolled back and retried: step 1 then finds the
//! recorded decision, so a request never owns two holds.

use std::{collections::HashSet, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::{
    events::{AuditEntry, BookingEventData, NewEvent, insert_audit, insert_events, types},
    requests::{RequestView, decided_views},
};
use crate::domain::status::BookingStatus;

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
    /// Whether it may compete for the slot.
    pub verdict: Verdict,
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
    /// Refused before competing, with this reason code.
    Reject(&'static str),
}

/// A decision out of a batch.
#[derive(Clone, Debug)]
pub struct Decided {
    /// What the client will see.
    pub view: RequestView,
    /// `true` when this transaction made the decision (not a redelivery of a decided one).
    pub fresh: bool,
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
}

impl BatchError {
    /// Whether retrying the batch may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            BatchError::Raced => true,
            BatchError::Db(e) => super::is_transient(e),
        }
    }
}

/// Decides a batch of requests in one transaction. Returns one decision per distinct request id.
pub async fn commit_batch(
    pool: &PgPool,
    inputs: &[HoldInput],
    hold_ttl: Duration,
) -> Result<Vec<Decided>, BatchError> {
    let mut tx = pool.begin().await?;
    let mut seen = HashSet::with_capacity(inputs.len());
    let all_ids: Vec<Uuid> = inputs
        .iter()
        .map(|i| i.request_id)
        .filter(|id| seen.insert(*id))
        .collect();

    let mut decided: Vec<Decided> = decided_views(&mut *tx, &all_ids)
        .await?
        .into_iter()
        .map(|view| Decided { view, fresh: false })
        .collect();
    let already: HashSet<Uuid> = decided.iter().map(|d| d.view.id).collect();

    let mut pending: Vec<&HoldInput> = Vec::with_capacity(inputs.len());
    let mut taken_ids = HashSet::with_capacity(inputs.len());
    for input in inputs {
        if !already.contains(&input.request_id) && taken_ids.insert(input.request_id) {
            pending.push(input);
        }
    }
    if pending.is_empty() {
        tx.commit().await?;
        return Ok(decided);
    }

    // Candidates in a stable global order: concurrent batches take index locks in the same
    // order (fewer deadlocks) and the earliest submission for a slot wins.
    let mut candidates: Vec<(&HoldInput, &str, DateTime<Utc>)> = pending
        .iter()
        .filter_map(|i| match &i.verdict {
            Verdict::Candidate {
                country_code,
                slot_end,
            } => Some((*i, country_code.as_str(), *slot_end)),
            Verdict::Reject(_) => None,
        })
        .collect();
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
    let mut booking_ids = Vec::with_capacity(n);
    let (mut req_ids, mut countries, mut practs, mut patients, mut starts, mut ends) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (input, country, end) in &candidates {
        booking_ids.push(Uuid::now_v7());
        req_ids.push(input.request_id);
        countries.push(*country);
        practs.push(input.practitioner_id);
        patients.push(input.patient_id);
        starts.push(input.slot_start);
        ends.push(*end);
    }
    let winners: Vec<(Uuid, Uuid, DateTime<Utc>)> = if n == 0 {
        Vec::new()
    } else {
        sqlx::query_as(
            "INSERT INTO bookings (id, request_id, country_code, practitioner_id, patient_id,
                                   slot_start, slot_end, status, hold_expires_at)
             SELECT u.id, u.request_id, u.country_code, u.practitioner_id, u.patient_id,
                    u.slot_start, u.slot_end, 'held', now() + make_interval(secs => $8)
             FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::uuid[], $5::uuid[],
                         $6::timestamptz[], $7::timestamptz[]) WITH ORDINALITY
                  AS u(id, request_id, country_code, practitioner_id, patient_id, slot_start, slot_end, ord)
             ORDER BY u.ord
             ON CONFLICT DO NOTHING
             RETURNING request_id, id, hold_expires_at",
        )
        .bind(&booking_ids)
        .bind(&req_ids)
        .bind(&countries)
        .bind(&practs)
        .bind(&patients)
        .bind(&starts)
        .bind(&ends)
        .bind(hold_ttl.as_secs_f64())
        .fetch_all(&mut *tx)
        .await?
    };
    let won: std::collections::HashMap<Uuid, (Uuid, DateTime<Utc>)> = winners
        .into_iter()
        .map(|(req, booking, exp)| (req, (booking, exp)))
        .collect();

    // Losers: slot occupied (by anyone, including this batch's winner) → slot_taken; otherwise
    // the patient already has an active booking at that time.
    let losers: Vec<usize> = (0..n).filter(|i| !won.contains_key(&req_ids[*i])).collect();
    let occupied: HashSet<(String, Uuid, DateTime<Utc>)> = if losers.is_empty() {
        HashSet::new()
    } else {
        let lc: Vec<&str> = losers.iter().map(|i| countries[*i]).collect();
        let lp: Vec<Uuid> = losers.iter().map(|i| practs[*i]).collect();
        let ls: Vec<DateTime<Utc>> = losers.iter().map(|i| starts[*i]).collect();
        let rows: Vec<(String, Uuid, DateTime<Utc>)> = sqlx::query_as(
            "SELECT b.country_code::text, b.practitioner_id, b.slot_start FROM bookings b
             JOIN unnest($1::text[], $2::uuid[], $3::timestamptz[]) AS u(c, p, s)
               ON b.country_code = u.c AND b.practitioner_id = u.p AND b.slot_start = u.s
             WHERE b.status IN ('held', 'confirmed')",
        )
        .bind(&lc)
        .bind(&lp)
        .bind(&ls)
        .fetch_all(&mut *tx)
        .await?;
        rows.into_iter().collect()
    };

    // Record every pending decision.
    let m = pending.len();
    let mut views: Vec<RequestView> = Vec::with_capacity(m);
    for input in &pending {
        let (status, booking_id, hold_expires_at, reason) = match &input.verdict {
            Verdict::Reject(reason) => ("rejected", None, None, Some((*reason).to_owned())),
            Verdict::Candidate { country_code, .. } => match won.get(&input.request_id) {
                Some((booking, exp)) => ("held", Some(*booking), Some(*exp), None),
                None => {
                    let key = (
                        country_code.clone(),
                        input.practitioner_id,
                        input.slot_start,
                    );
                    let reason = if occupied.contains(&key) {
                        "slot_taken"
                    } else {
                        "patient_conflict"
                    };
                    ("rejected", None, None, Some(reason.to_owned()))
                }
            },
        };
        views.push(RequestView {
            id: input.request_id,
            status: status.to_owned(),
            booking_id,
            hold_expires_at,
            reason,
            practitioner_id: input.practitioner_id,
            patient_id: input.patient_id,
            slot_start: input.slot_start,
            submitted_at: input.submitted_at,
            decided_at: None,
        });
    }
    let ids: Vec<Uuid> = views.iter().map(|v| v.id).collect();
    let keys: Vec<Option<&str>> = pending
        .iter()
        .map(|i| i.idempotency_key.as_deref())
        .collect();
    let pats: Vec<Uuid> = views.iter().map(|v| v.patient_id).collect();
    let prs: Vec<Uuid> = views.iter().map(|v| v.practitioner_id).collect();
    let sts: Vec<DateTime<Utc>> = views.iter().map(|v| v.slot_start).collect();
    let subs: Vec<DateTime<Utc>> = views.iter().map(|v| v.submitted_at).collect();
    let outs: Vec<&str> = views.iter().map(|v| v.status.as_str()).collect();
    let reasons: Vec<Option<&str>> = views.iter().map(|v| v.reason.as_deref()).collect();
    let bks: Vec<Option<Uuid>> = views.iter().map(|v| v.booking_id).collect();
    let recorded: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
        "INSERT INTO booking_requests (id, idempotency_key, patient_id, practitioner_id, slot_start,
                                       submitted_at, outcome, reason, booking_id, decided_at)
         SELECT u.id, u.k, u.pa, u.pr, u.s, u.sub, u.o::request_outcome, u.r, u.b, clock_timestamp()
         FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::timestamptz[],
                     $6::timestamptz[], $7::text[], $8::text[], $9::uuid[]) AS u(id, k, pa, pr, s, sub, o, r, b)
         ON CONFLICT (id) DO NOTHING
         RETURNING id, decided_at",
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
    .fetch_all(&mut *tx)
    .await?;
    let recorded: std::collections::HashMap<Uuid, DateTime<Utc>> = recorded.into_iter().collect();
    if won.keys().any(|req| !recorded.contains_key(req)) {
        // Someone recorded a decision for one of our winners: our hold would be a second one.
        return Err(BatchError::Raced);
    }

    let mut events = Vec::with_capacity(views.len());
    let mut audit = Vec::with_capacity(won.len());
    let mut lost_race = Vec::new();
    for view in &mut views {
        let Some(at) = recorded.get(&view.id) else {
            lost_race.push(view.id);
            continue;
        };
        view.decided_at = Some(*at);
        let held = view.booking_id.is_some();
        events.push(NewEvent {
            event_type: if held { types::HELD } else { types::REJECTED },
            data: BookingEventData {
                booking_id: view.booking_id,
                request_id: view.id,
                practitioner_id: view.practitioner_id,
                patient_id: view.patient_id,
                slot_start: view.slot_start,
                status: view.status.clone(),
                reason: view.reason.clone(),
            },
        });
        if let Some(booking_id) = view.booking_id {
            audit.push(AuditEntry {
                booking_id,
                actor: "worker".into(),
                action: "hold",
                from: None,
                to: BookingStatus::Held,
                request_id: Some(view.id.to_string()),
            });
        }
    }
    insert_events(&mut tx, &events).await?;
    insert_audit(&mut tx, &audit).await?;
    // Rejections decided concurrently by another delivery: report what was recorded.
    let raced = if lost_race.is_empty() {
        Vec::new()
    } else {
        decided_views(&mut *tx, &lost_race).await?
    };
    tx.commit().await?;

    decided.extend(raced.into_iter().map(|view| Decided { view, fresh: false }));
    decided.extend(
        views
            .into_iter()
            .filter(|v| v.decided_at.is_some())
            .map(|view| Decided { view, fresh: true }),
    );
    Ok(decided)
}
