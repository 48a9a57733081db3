//! The statements of a batch decision, run by [`super::commit_batch`] in one transaction.
//! What they are given is decided in [`super::plan`]; the rules they rely on are in the
//! module docs of [`super`]. Large because each statement carries the reasons for its shape
//! (plans chosen against stale statistics); split further only along statements.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use chrono::{DateTime, Utc};
use slotq_domain::{
    request::{RejectionReason, RequestKind},
    status::BookingEvent,
};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{
    HoldInput,
    plan::{self, Candidate, Decision, Outcome},
};
use crate::{
    bookings::{Booking, lock_booking},
    events::{
        AuditColumns, AuditEntry, EventColumns, NewEvent, bind_audit_columns, bind_event_columns,
    },
    requests::RequestView,
};

/// Which unique indexes of `bookings` arbitrate the hold insert's `ON CONFLICT DO NOTHING`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Arbiters {
    /// The slot gate alone ([`INSERT_HOLDS_SLOT_ARBITER`]), unless the batch has one patient's
    /// instant more than once.
    SlotGate,
    /// Every unique index ([`INSERT_HOLDS`]).
    Every,
}

/// Step 2 and 3: one multi-row insert for the new holds (one per round when a patient asks for
/// the same instant in several countries), then classify the losers.
pub(super) async fn insert_holds(
    tx: &mut PgConnection,
    candidates: &[Candidate<'_>],
    hold_ttl: Duration,
    outcomes: &mut HashMap<Uuid, Outcome>,
    arbiters: Arbiters,
) -> Result<(), sqlx::Error> {
    if candidates.is_empty() {
        return Ok(());
    }
    let sql = if arbiters == Arbiters::SlotGate && plan::one_request_per_patient_instant(candidates)
    {
        INSERT_HOLDS_SLOT_ARBITER
    } else {
        INSERT_HOLDS
    };
    let n = candidates.len();
    let req_ids: Vec<Uuid> = candidates.iter().map(|c| c.input.request_id).collect();
    let countries: Vec<&str> = candidates.iter().map(|c| c.country).collect();
    let practs: Vec<Uuid> = candidates.iter().map(|c| c.input.practitioner_id).collect();
    let starts: Vec<DateTime<Utc>> = candidates.iter().map(|c| c.input.slot_start).collect();
    let rounds = plan::country_rounds(candidates);
    let last_round = rounds.iter().copied().max().unwrap_or(0);
    for round in 0..=last_round {
        let rows: Vec<&Candidate<'_>> = candidates
            .iter()
            .zip(&rounds)
            .filter(|(_, r)| **r == round)
            .map(|(c, _)| c)
            .collect();
        for (req, booking, exp) in insert_round(&mut *tx, sql, &rows, hold_ttl).await? {
            outcomes.insert(req, Outcome::held(booking, exp));
        }
    }

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
        outcomes.insert(
            req_ids[i],
            Outcome::rejected(plan::loser_reason(occupied.contains(&key))),
        );
    }
    Ok(())
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
/// batch, 0.13× the baseline — instead of probing `(patient_id, slot_start, id)`.
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
/// 128-row insert (~14 %). The other three cannot conflict in
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
    rows: &[&Candidate<'_>],
    hold_ttl: Duration,
) -> Result<Vec<(Uuid, Uuid, DateTime<Utc>)>, sqlx::Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let booking_ids: Vec<Uuid> = rows.iter().map(|_| Uuid::now_v7()).collect();
    let req_ids: Vec<Uuid> = rows.iter().map(|c| c.input.request_id).collect();
    let countries: Vec<&str> = rows.iter().map(|c| c.country).collect();
    let practs: Vec<Uuid> = rows.iter().map(|c| c.input.practitioner_id).collect();
    let patients: Vec<Uuid> = rows.iter().map(|c| c.input.patient_id).collect();
    let starts: Vec<DateTime<Utc>> = rows.iter().map(|c| c.input.slot_start).collect();
    let ends: Vec<DateTime<Utc>> = rows.iter().map(|c| c.slot_end).collect();
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
pub(super) async fn hours_changed(
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
pub(super) async fn lock_bookings_in_order(
    tx: &mut PgConnection,
    ids: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1 FROM bookings WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .bind(ids)
        .execute(tx)
        .await
        .map(|_| ())
}

/// Step 4: moves one booking to its new slot, or changes nothing.
pub(super) async fn move_booking(
    tx: &mut PgConnection,
    candidate: &Candidate<'_>,
) -> Result<Outcome, sqlx::Error> {
    let Candidate {
        input,
        country,
        slot_end,
    } = *candidate;
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
        return Ok(Outcome::already_there(&booking));
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
            Ok(Outcome::moved(b, booking.slot_start))
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
pub(super) async fn record_decisions(
    tx: &mut PgConnection,
    pending: &[&HoldInput],
    decisions: &[Decision],
) -> Result<HashMap<Uuid, DateTime<Utc>>, sqlx::Error> {
    let views: Vec<(&RequestView, &Outcome)> =
        decisions.iter().map(|d| (&d.view, &d.outcome)).collect();
    let (events, ev_requests): (Vec<&NewEvent>, Vec<Uuid>) = decisions
        .iter()
        .filter_map(|d| d.event.as_ref().map(|e| (e, d.view.id)))
        .unzip();
    let (audit, au_requests): (Vec<&AuditEntry>, Vec<Uuid>) = decisions
        .iter()
        .filter_map(|d| d.audit.as_ref().map(|a| (a, d.view.id)))
        .unzip();
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
    let ev = EventColumns::of(events.into_iter())?;
    let au = AuditColumns::of(audit.into_iter());
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
