//! The pure half of a batch decision: what to lock, which requests compete and in what order,
//! how losers are classified, and which views, events and audit rows the decisions make.
//! No I/O here: [`super`] runs the statements, this module decides what they are given, and
//! its rules are unit-tested without a database.
//!
//! Longer than most modules: about 40 % of it is its unit tests.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use slotq_domain::{
    request::{RejectionReason, RequestKind, RequestStatus},
    status::BookingStatus,
};
use uuid::Uuid;

use super::{HoldInput, Verdict};
use crate::{
    bookings::Booking,
    events::{AuditEntry, BookingEventData, NewEvent, types},
    requests::RequestView,
};

/// A request that may compete for its slot: a new hold or a reschedule target.
#[derive(Clone, Copy, Debug)]
pub(super) struct Candidate<'a> {
    /// The request.
    pub input: &'a HoldInput,
    /// The bookings partition of its practitioner.
    pub country: &'a str,
    /// The end of the slot asked for.
    pub slot_end: DateTime<Utc>,
}

/// How one pending request was decided in this transaction.
#[derive(Debug)]
pub(super) struct Outcome {
    /// The booking held (or moved), if any.
    pub booking_id: Option<Uuid>,
    /// What the client will see.
    pub status: RequestStatus,
    /// While held: when the hold runs out.
    pub hold_expires_at: Option<DateTime<Utc>>,
    /// Why it was rejected.
    pub reason: Option<RejectionReason>,
    /// For a successful reschedule: the moved booking (its events and audit are written only
    /// if the decision is recorded).
    pub moved: Option<Booking>,
    /// For a successful reschedule: the slot the booking left.
    pub previous_slot: Option<DateTime<Utc>>,
}

impl Outcome {
    /// A rejection.
    pub fn rejected(reason: RejectionReason) -> Self {
        Outcome {
            booking_id: None,
            status: RequestStatus::Rejected,
            hold_expires_at: None,
            reason: Some(reason),
            moved: None,
            previous_slot: None,
        }
    }

    /// A new hold that won its slot.
    pub fn held(booking_id: Uuid, hold_expires_at: DateTime<Utc>) -> Self {
        Outcome {
            booking_id: Some(booking_id),
            status: RequestStatus::Held,
            hold_expires_at: Some(hold_expires_at),
            reason: None,
            moved: None,
            previous_slot: None,
        }
    }

    /// A reschedule whose booking already had the slot asked for: nothing changes.
    pub fn already_there(booking: &Booking) -> Self {
        Outcome {
            booking_id: Some(booking.id),
            status: RequestStatus::of_booking(booking.status),
            hold_expires_at: booking
                .hold_expires_at
                .filter(|_| booking.status == BookingStatus::Held),
            reason: None,
            moved: None,
            previous_slot: None,
        }
    }

    /// A reschedule that moved `booking` here from the slot `from`.
    pub fn moved(booking: Booking, from: DateTime<Utc>) -> Self {
        let at_new_slot = Outcome::already_there(&booking);
        Outcome {
            previous_slot: Some(from),
            moved: Some(booking),
            ..at_new_slot
        }
    }
}

/// What a batch locks before it reads anything, from its inputs alone.
#[derive(Debug, PartialEq)]
pub(super) struct Locks {
    /// Every distinct request id, in first-seen order.
    pub request_ids: Vec<Uuid>,
    /// The (patient, instant) keys of every candidate, sorted, taken exclusively.
    pub patient_slots: Vec<i64>,
    /// The hours keys of every practitioner the verdicts were made on, sorted, taken shared.
    pub hours: Vec<i64>,
}

impl Locks {
    /// The locks of a batch. A redelivered request's lock is one more than needed, and
    /// harmless.
    pub fn of(inputs: &[HoldInput], hours_seen: &[(Uuid, Option<DateTime<Utc>>)]) -> Self {
        let mut seen = HashSet::with_capacity(inputs.len());
        let request_ids = inputs
            .iter()
            .map(|i| i.request_id)
            .filter(|id| seen.insert(*id))
            .collect();
        let patient_slots = patient_slot_lock_keys(
            inputs
                .iter()
                .filter(|i| matches!(i.verdict, Verdict::Candidate { .. }))
                .map(|i| (i.patient_id, i.slot_start)),
        );
        let mut hours: Vec<i64> = hours_seen.iter().map(|(p, _)| hours_lock_key(*p)).collect();
        hours.sort_unstable();
        hours.dedup();
        Locks {
            request_ids,
            patient_slots,
            hours,
        }
    }
}

/// The requests of a batch still to decide, split by what the database must do with them.
#[derive(Debug)]
pub(super) struct Work<'a> {
    /// Every request not decided before, once each, in input order.
    pub pending: Vec<&'a HoldInput>,
    /// Refused before competing.
    pub rejected: HashMap<Uuid, Outcome>,
    /// New holds, in the insert's global order ([`Work::new`]).
    pub holds: Vec<Candidate<'a>>,
    /// Reschedules, in submission order.
    pub moves: Vec<Candidate<'a>>,
    /// The bookings the reschedules move, sorted and distinct: locked first, in this order.
    pub bookings_to_move: Vec<Uuid>,
}

impl<'a> Work<'a> {
    /// Splits the inputs not in `decided`.
    ///
    /// New holds are sorted by (country, practitioner, slot, submission, request): concurrent
    /// batches take index locks in the same order (fewer deadlocks) and the earliest
    /// submission for a slot wins. The bookings to move are locked before any hold is
    /// inserted, in id order: two batches locking them one by one in submission order
    /// deadlocked, and PostgreSQL could pick as its victim a cancel or payment queued on one
    /// of those rows.
    pub fn new(inputs: &'a [HoldInput], decided: &HashSet<Uuid>) -> Self {
        let mut taken = HashSet::with_capacity(inputs.len());
        let pending: Vec<&HoldInput> = inputs
            .iter()
            .filter(|i| !decided.contains(&i.request_id) && taken.insert(i.request_id))
            .collect();
        let mut rejected = HashMap::new();
        let mut holds = Vec::with_capacity(pending.len());
        let mut moves = Vec::new();
        for input in &pending {
            match &input.verdict {
                Verdict::Reject(reason) => {
                    rejected.insert(input.request_id, Outcome::rejected(*reason));
                }
                Verdict::Candidate {
                    country_code,
                    slot_end,
                } => {
                    let c = Candidate {
                        input,
                        country: country_code,
                        slot_end: *slot_end,
                    };
                    if input.reschedule.is_some() {
                        moves.push(c);
                    } else {
                        holds.push(c);
                    }
                }
            }
        }
        holds.sort_by(|a, b| a.insert_order().cmp(&b.insert_order()));
        moves.sort_by_key(|c| (c.input.submitted_at, c.input.request_id));
        let mut bookings_to_move: Vec<Uuid> =
            moves.iter().filter_map(|c| c.input.reschedule).collect();
        bookings_to_move.sort_unstable();
        bookings_to_move.dedup();
        Work {
            pending,
            rejected,
            holds,
            moves,
            bookings_to_move,
        }
    }
}

impl Candidate<'_> {
    fn insert_order(&self) -> (&str, Uuid, DateTime<Utc>, DateTime<Utc>, Uuid) {
        (
            self.country,
            self.input.practitioner_id,
            self.input.slot_start,
            self.input.submitted_at,
            self.input.request_id,
        )
    }
}

/// Whether every (patient, instant) of these holds is there once: then the slot gate alone
/// can arbitrate the insert (`INSERT_HOLDS_SLOT_ARBITER`).
pub(super) fn one_request_per_patient_instant(holds: &[Candidate<'_>]) -> bool {
    let mut instants = HashSet::with_capacity(holds.len());
    holds
        .iter()
        .all(|c| instants.insert((c.input.patient_id, c.input.slot_start)))
}

/// Why a new hold that the insert skipped lost: its slot is occupied (by anyone, including
/// this batch's winner), or else its patient already has an active booking at that time.
pub(super) fn loser_reason(slot_occupied: bool) -> RejectionReason {
    if slot_occupied {
        RejectionReason::SlotTaken
    } else {
        RejectionReason::PatientConflict
    }
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
pub(super) fn patient_slot_lock_keys(
    slots: impl Iterator<Item = (Uuid, DateTime<Utc>)>,
) -> Vec<i64> {
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
pub(super) fn country_rounds(candidates: &[Candidate<'_>]) -> Vec<usize> {
    type Earliest<'a> = Vec<((DateTime<Utc>, Uuid), &'a str)>;
    let mut groups: HashMap<(Uuid, DateTime<Utc>), Earliest<'_>> = HashMap::new();
    for &Candidate { input, country, .. } in candidates {
        let first = (input.submitted_at, input.request_id);
        let group = groups
            .entry((input.patient_id, input.slot_start))
            .or_default();
        match group.iter_mut().find(|(_, c)| *c == country) {
            Some(entry) => entry.0 = entry.0.min(first),
            None => group.push((first, country)),
        }
    }
    for group in groups.values_mut() {
        group.sort_unstable();
    }
    candidates
        .iter()
        .map(|&Candidate { input, country, .. }| {
            groups
                .get(&(input.patient_id, input.slot_start))
                .and_then(|g| g.iter().position(|(_, c)| *c == country))
                .unwrap_or(0)
        })
        .collect()
}

/// One decision of the batch, ready to record.
#[derive(Debug)]
pub(super) struct Decision {
    /// What the client will see (`decided_at` is set once recorded).
    pub view: RequestView,
    /// How it was decided.
    pub outcome: Outcome,
    /// Its outbox event; `None` for a reschedule that found its booking already at the slot.
    pub event: Option<NewEvent>,
    /// The audit row of a booking it created or moved.
    pub audit: Option<AuditEntry>,
}

/// The decision of every pending request, in `pending` order. A request without an outcome
/// (none of the steps decided it) is rejected as `invalid_slot`.
pub(super) fn decisions(
    pending: &[&HoldInput],
    mut outcomes: HashMap<Uuid, Outcome>,
) -> Vec<Decision> {
    pending
        .iter()
        .map(|input| {
            let o = outcomes
                .remove(&input.request_id)
                .unwrap_or_else(|| Outcome::rejected(RejectionReason::InvalidSlot));
            decision(input, o)
        })
        .collect()
}

fn decision(input: &HoldInput, o: Outcome) -> Decision {
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
    // A reschedule to the slot its booking already has (another request moved it there):
    // decided with the booking's status, nothing changed, so no event and no audit row.
    if input.reschedule.is_some() && o.booking_id.is_some() && o.moved.is_none() {
        return Decision {
            view,
            outcome: o,
            event: None,
            audit: None,
        };
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
    let audit = changed.map(|(booking_id, action, from, to)| {
        let (actor, actor_role) = input
            .actor
            .clone()
            .unwrap_or_else(|| ("worker".into(), "system".into()));
        AuditEntry {
            booking_id,
            actor,
            actor_role,
            action,
            from,
            to,
            request_id: Some(view.id.to_string()),
        }
    });
    Decision {
        view,
        outcome: o,
        event: Some(event),
        audit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 20_000;

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::UNIX_EPOCH + chrono::Duration::days(T0) + chrono::Duration::minutes(minutes)
    }

    fn input(patient: Uuid, country: &'static str, start: DateTime<Utc>, ms: i64) -> HoldInput {
        HoldInput {
            request_id: Uuid::now_v7(),
            patient_id: patient,
            practitioner_id: Uuid::now_v7(),
            slot_start: start,
            submitted_at: DateTime::UNIX_EPOCH + chrono::Duration::milliseconds(ms),
            idempotency_key: None,
            reschedule: None,
            actor: None,
            verdict: Verdict::Candidate {
                country_code: country.to_owned(),
                slot_end: start + chrono::Duration::minutes(30),
            },
        }
    }

    fn rejected(mut i: HoldInput, reason: RejectionReason) -> HoldInput {
        i.verdict = Verdict::Reject(reason);
        i
    }

    fn booking(id: Uuid, status: BookingStatus, start: DateTime<Utc>) -> Booking {
        Booking {
            id,
            request_id: Uuid::now_v7(),
            country_code: "FR".into(),
            practitioner_id: Uuid::now_v7(),
            patient_id: Uuid::now_v7(),
            slot_start: start,
            slot_end: start + chrono::Duration::minutes(30),
            status,
            hold_expires_at: Some(start),
            confirmed_at: None,
            cancelled_at: None,
            cancel_reason: None,
            payment_ref: None,
            created_at: start,
            updated_at: start,
        }
    }

    #[test]
    fn the_lock_key_is_a_fixed_function_of_patient_and_instant() {
        // Every worker version must compute the same key: this value may never change.
        let patient = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        let at = DateTime::UNIX_EPOCH + chrono::Duration::seconds(1_800_000_000);
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
        assert_ne!(hours_lock_key(patient), hours_lock_key(Uuid::nil()));
    }

    #[test]
    fn countries_of_one_patient_and_instant_take_turns_in_submission_order() {
        let (p, q) = (Uuid::now_v7(), Uuid::now_v7());
        let (t, u) = (at(0), at(30));
        let inputs = [
            input(p, "FR", t, 5),
            input(p, "DE", t, 1),
            input(p, "FR", t, 2),
            input(p, "ES", t, 9),
            input(p, "FR", u, 7),
            input(q, "IT", t, 0),
            input(q, "IT", t, 3),
        ];
        let candidates: Vec<Candidate<'_>> = inputs
            .iter()
            .map(|i| match &i.verdict {
                Verdict::Candidate { country_code, .. } => Candidate {
                    input: i,
                    country: country_code,
                    slot_end: t,
                },
                Verdict::Reject(_) => unreachable!("all candidates"),
            })
            .collect();
        // DE (1 ms) before FR (2 ms) before ES (9 ms); other instants and patients: round 0.
        assert_eq!(country_rounds(&candidates), vec![1, 0, 1, 2, 0, 0, 0]);
        assert!(!one_request_per_patient_instant(&candidates));
        assert!(one_request_per_patient_instant(&candidates[4..6]));
    }

    #[test]
    fn locks_cover_every_candidate_once_sorted_and_not_the_rejected() {
        let p = Uuid::now_v7();
        let a = input(p, "FR", at(0), 1);
        let inputs = vec![
            a.clone(),
            a.clone(),
            input(p, "FR", at(30), 2),
            rejected(input(p, "FR", at(60), 3), RejectionReason::InPast),
        ];
        let pr = inputs[0].practitioner_id;
        let locks = Locks::of(&inputs, &[(pr, None), (pr, None)]);
        assert_eq!(locks.request_ids.len(), 3, "a repeated request once");
        assert_eq!(locks.request_ids[0], a.request_id);
        let mut want = vec![
            patient_slot_lock_key(p, at(0)),
            patient_slot_lock_key(p, at(30)),
        ];
        want.sort_unstable();
        assert_eq!(locks.patient_slots, want);
        assert_eq!(locks.hours, vec![hours_lock_key(pr)]);
    }

    #[test]
    fn work_splits_rejections_holds_and_moves_and_skips_decided_and_repeated_requests() {
        let p = Uuid::now_v7();
        let late = input(p, "FR", at(0), 9);
        let mut early = input(Uuid::now_v7(), "FR", at(0), 1);
        early.practitioner_id = late.practitioner_id;
        let done = input(p, "FR", at(30), 2);
        let bad = rejected(input(p, "FR", at(60), 3), RejectionReason::BeyondHorizon);
        let (b1, b2) = (Uuid::from_u128(2), Uuid::from_u128(1));
        let mut move_late = input(p, "DE", at(90), 8);
        move_late.reschedule = Some(b1);
        let mut move_early = input(p, "DE", at(120), 4);
        move_early.reschedule = Some(b2);
        let inputs = vec![
            late.clone(),
            early.clone(),
            done.clone(),
            bad.clone(),
            late.clone(),
            move_late.clone(),
            move_early.clone(),
        ];
        let work = Work::new(&inputs, &HashSet::from([done.request_id]));
        let ids = |cs: &[Candidate<'_>]| cs.iter().map(|c| c.input.request_id).collect::<Vec<_>>();
        assert_eq!(
            work.pending.len(),
            5,
            "decided and repeated requests are left out"
        );
        assert_eq!(
            work.rejected[&bad.request_id].reason,
            Some(RejectionReason::BeyondHorizon)
        );
        assert_eq!(work.rejected.len(), 1);
        // Same slot: the earlier submission is inserted first, so it wins.
        assert_eq!(ids(&work.holds), vec![early.request_id, late.request_id]);
        assert_eq!(
            ids(&work.moves),
            vec![move_early.request_id, move_late.request_id]
        );
        assert_eq!(work.bookings_to_move, vec![b2, b1], "locked in id order");
    }

    #[test]
    fn a_loser_is_slot_taken_when_the_slot_is_occupied_else_a_patient_conflict() {
        assert_eq!(loser_reason(true), RejectionReason::SlotTaken);
        assert_eq!(loser_reason(false), RejectionReason::PatientConflict);
    }

    #[test]
    fn decisions_make_one_view_and_event_each_and_audit_only_bookings_that_changed() {
        let p = Uuid::now_v7();
        let won = input(p, "FR", at(0), 1);
        let lost = input(p, "FR", at(30), 2);
        let undecided = input(p, "FR", at(60), 3);
        let mut moved = input(p, "FR", at(90), 4);
        moved.actor = Some(("alice".into(), "patient".into()));
        let mut stayed = input(p, "FR", at(120), 5);
        let (moved_id, stayed_id, hold_id) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        moved.reschedule = Some(moved_id);
        stayed.reschedule = Some(stayed_id);
        let pending = vec![&won, &lost, &undecided, &moved, &stayed];
        let b = booking(moved_id, BookingStatus::Confirmed, at(90));
        let outcome_moved = Outcome::moved(b, at(10));
        let outcomes = HashMap::from([
            (won.request_id, Outcome::held(hold_id, at(5))),
            (
                lost.request_id,
                Outcome::rejected(RejectionReason::SlotTaken),
            ),
            (moved.request_id, outcome_moved),
            (
                stayed.request_id,
                Outcome::already_there(&booking(stayed_id, BookingStatus::Held, at(120))),
            ),
        ]);
        let d = decisions(&pending, outcomes);
        assert_eq!(d.len(), 5);
        let ids: Vec<Uuid> = d.iter().map(|d| d.view.id).collect();
        assert_eq!(
            ids,
            pending.iter().map(|i| i.request_id).collect::<Vec<_>>()
        );

        assert_eq!(d[0].view.status, RequestStatus::Held);
        assert_eq!(d[0].view.booking_id, Some(hold_id));
        assert_eq!(d[0].event.as_ref().unwrap().event_type, types::HELD);
        let audit = d[0].audit.as_ref().unwrap();
        assert_eq!((audit.action, audit.actor.as_str()), ("hold", "worker"));

        assert_eq!(d[1].view.reason, Some(RejectionReason::SlotTaken));
        assert_eq!(d[1].event.as_ref().unwrap().event_type, types::REJECTED);
        assert!(d[1].audit.is_none(), "nothing changed in bookings");

        assert_eq!(d[2].view.reason, Some(RejectionReason::InvalidSlot));

        assert_eq!(d[3].view.kind, RequestKind::Reschedule);
        assert_eq!(d[3].view.status, RequestStatus::Confirmed);
        let event = d[3].event.as_ref().unwrap();
        assert_eq!(event.event_type, types::RESCHEDULED);
        assert_eq!(event.data.previous_slot_start, Some(at(10)));
        assert_eq!(event.data.request_id, moved.request_id);
        let audit = d[3].audit.as_ref().unwrap();
        assert_eq!(
            (
                audit.action,
                audit.actor.as_str(),
                audit.actor_role.as_str()
            ),
            ("reschedule", "alice", "patient")
        );

        // Already at the slot: decided with the booking's status, no event, no audit.
        assert_eq!(d[4].view.status, RequestStatus::Held);
        assert_eq!(d[4].view.hold_expires_at, Some(at(120)));
        assert!(d[4].event.is_none() && d[4].audit.is_none());
    }
}
