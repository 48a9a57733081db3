//! Group commit of holds: the one place where booking requests become decisions.
//!
//! A batch of requests is decided in one transaction:
//! 1. requests already decided (a redelivered job) keep their recorded decision;
//! 2. the valid new-hold candidates, sorted by (country, practitioner, slot, submission time),
//!    go into one multi-row `INSERT … ON CONFLICT DO NOTHING RETURNING`; the unique partial
//!    index `bookings_no_double_book` picks exactly one winner per slot, across batches and
//!    processes, and within a batch the earliest submission wins;
//! 3. the losers are classified (`slot_taken` or `patient_conflict`);
//! 4. reschedules move their booking with one conditional `UPDATE` each, under a savepoint:
//!    the same unique indexes decide, and a lost race changes nothing (ADR-001);
//! 5. every decision is recorded in `booking_requests`, with outbox and audit rows.
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

use super::{
    bookings::{Booking, lock_booking},
    events::{AuditEntry, BookingEventData, NewEvent, insert_audit, insert_events, types},
    requests::{RequestView, decided_views},
};
use crate::domain::status::{BookingEvent, BookingStatus};

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

/// How one pending request was decided in this transaction.
struct Outcome {
    booking_id: Option<Uuid>,
    status: &'static str,
    hold_expires_at: Option<DateTime<Utc>>,
    reason: Option<&'static str>,
    /// Events and audit for a successful reschedule (written only if the decision is recorded).
    moved: Option<Booking>,
    previous_slot: Option<DateTime<Utc>>,
}

impl Outcome {
    fn rejected(reason: &'static str) -> Self {
        Outcome {
            booking_id: None,
            status: "rejected",
            hold_expires_at: None,
            reason: Some(reason),
            moved: None,
            previous_slot: None,
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
    insert_holds(&mut tx, &mut holds, hold_ttl, &mut outcomes).await?;
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
            .unwrap_or_else(|| Outcome::rejected("invalid_slot"));
        let view = RequestView {
            id: input.request_id,
            status: o.status.to_owned(),
            kind: if input.reschedule.is_some() {
                "reschedule"
            } else {
                "book"
            }
            .to_owned(),
            booking_id: o.booking_id,
            hold_expires_at: o.hold_expires_at,
            reason: o.reason.map(str::to_owned),
            practitioner_id: input.practitioner_id,
            patient_id: input.patient_id,
            slot_start: input.slot_start,
            submitted_at: input.submitted_at,
            decided_at: None,
        };
        views.push((view, o));
    }
    let recorded = record_decisions(&mut tx, &pending, &views).await?;
    if views
        .iter()
        .any(|(v, o)| (o.booking_id.is_some()) && !recorded.contains_key(&v.id))
    {
        // Someone recorded a decision for one of our winners: our hold would be a second one.
        return Err(BatchError::Raced);
    }

    let mut events = Vec::with_capacity(views.len());
    let mut audit = Vec::new();
    let mut lost_race = Vec::new();
    for (view, o) in &mut views {
        let Some(at) = recorded.get(&view.id) else {
            lost_race.push(view.id);
            continue;
        };
        view.decided_at = Some(*at);
        if let Some(b) = &o.moved {
            events.push(NewEvent {
                event_type: types::RESCHEDULED,
                data: BookingEventData {
                    previous_slot_start: o.previous_slot,
                    ..b.event_data(None)
                },
            });
            audit.push(AuditEntry {
                booking_id: b.id,
                actor: "worker".into(),
                actor_role: "system".into(),
                action: "reschedule",
                from: Some(b.status),
                to: b.status,
                request_id: Some(view.id.to_string()),
            });
            super::conflicts::close(&mut tx, b.id, "rescheduled").await?;
            continue;
        }
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
                previous_slot_start: None,
            },
        });
        if let Some(booking_id) = view.booking_id {
            audit.push(AuditEntry {
                booking_id,
                actor: "worker".into(),
                actor_role: "system".into(),
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

/// Step 2 and 3: one multi-row insert for the new holds, then classify the losers.
async fn insert_holds(
    tx: &mut PgConnection,
    candidates: &mut [(&HoldInput, &str, DateTime<Utc>)],
    hold_ttl: Duration,
    outcomes: &mut HashMap<Uuid, Outcome>,
) -> Result<(), sqlx::Error> {
    if candidates.is_empty() {
        return Ok(());
    }
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
    let booking_ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
    let req_ids: Vec<Uuid> = candidates.iter().map(|c| c.0.request_id).collect();
    let countries: Vec<&str> = candidates.iter().map(|c| c.1).collect();
    let practs: Vec<Uuid> = candidates.iter().map(|c| c.0.practitioner_id).collect();
    let patients: Vec<Uuid> = candidates.iter().map(|c| c.0.patient_id).collect();
    let starts: Vec<DateTime<Utc>> = candidates.iter().map(|c| c.0.slot_start).collect();
    let ends: Vec<DateTime<Utc>> = candidates.iter().map(|c| c.2).collect();
    let winners: Vec<(Uuid, Uuid, DateTime<Utc>)> = sqlx::query_as(
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
    .await?;
    for (req, booking, exp) in winners {
        outcomes.insert(
            req,
            Outcome {
                booking_id: Some(booking),
                status: "held",
                hold_expires_at: Some(exp),
                reason: None,
                moved: None,
                previous_slot: None,
            },
        );
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
        "SELECT b.country_code::text, b.practitioner_id, b.slot_start FROM bookings b
         JOIN unnest($1::text[], $2::uuid[], $3::timestamptz[]) AS u(c, p, s)
           ON b.country_code = u.c AND b.practitioner_id = u.p AND b.slot_start = u.s
         WHERE b.status IN ('held', 'confirmed')",
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
            "slot_taken"
        } else {
            "patient_conflict"
        };
        outcomes.insert(req_ids[i], Outcome::rejected(reason));
    }
    Ok(())
}

/// Step 4: moves one booking to its new slot, or changes nothing.
async fn move_booking(
    tx: &mut PgConnection,
    input: &HoldInput,
    country: &str,
    slot_end: DateTime<Utc>,
) -> Result<Outcome, sqlx::Error> {
    let Some(booking_id) = input.reschedule else {
        return Ok(Outcome::rejected("invalid_slot"));
    };
    let Some(booking) = lock_booking(&mut *tx, booking_id).await? else {
        return Ok(Outcome::rejected("unknown_booking"));
    };
    if booking
        .status
        .apply_at(BookingEvent::Reschedule, booking.slot_start, Utc::now())
        .is_err()
    {
        return Ok(Outcome::rejected("booking_not_active"));
    }
    if booking.slot_start == input.slot_start {
        return Ok(Outcome {
            booking_id: Some(booking.id),
            status: booking.status.as_str(),
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
    let moved: Result<Booking, sqlx::Error> = sqlx::query_as(
        "UPDATE bookings SET slot_start = $3, slot_end = $4, updated_at = now()
         WHERE country_code = $1 AND id = $2 RETURNING *",
    )
    .bind(country)
    .bind(booking.id)
    .bind(input.slot_start)
    .bind(slot_end)
    .fetch_one(&mut *tx)
    .await;
    match moved {
        Ok(b) => {
            sqlx::query("RELEASE SAVEPOINT reschedule")
                .execute(&mut *tx)
                .await?;
            Ok(Outcome {
                booking_id: Some(b.id),
                status: b.status.as_str(),
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
                "patient_conflict"
            } else {
                "slot_taken"
            }))
        }
        Err(e) => Err(e),
    }
}

/// Step 5: records the decisions; returns when each was recorded (absent: recorded earlier by
/// a concurrent delivery of the same request).
async fn record_decisions(
    tx: &mut PgConnection,
    pending: &[&HoldInput],
    views: &[(RequestView, Outcome)],
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
    let reasons: Vec<Option<&str>> = views.iter().map(|(_, o)| o.reason).collect();
    let bks: Vec<Option<Uuid>> = views.iter().map(|(_, o)| o.booking_id).collect();
    let kinds: Vec<&str> = views.iter().map(|(v, _)| v.kind.as_str()).collect();
    let targets: Vec<Option<Uuid>> = pending.iter().map(|i| i.reschedule).collect();
    let recorded: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
        "INSERT INTO booking_requests (id, idempotency_key, patient_id, practitioner_id, slot_start,
                                       submitted_at, outcome, reason, booking_id, kind,
                                       target_booking_id, decided_at)
         SELECT u.id, u.k, u.pa, u.pr, u.s, u.sub, u.o::request_outcome, u.r, u.b, u.kind::request_kind,
                u.t, clock_timestamp()
         FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::timestamptz[],
                     $6::timestamptz[], $7::text[], $8::text[], $9::uuid[], $10::text[], $11::uuid[])
              AS u(id, k, pa, pr, s, sub, o, r, b, kind, t)
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
    .bind(&kinds)
    .bind(&targets)
    .fetch_all(&mut *tx)
    .await?;
    Ok(recorded.into_iter().collect())
}
