//! A patient may not hold two active bookings that start at the same time (DESIGN §3), in any
//! countries: `bookings` is partitioned by country, so its unique index only sees one country;
//! `commit_batch` enforces the rule across them under advisory locks.
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

#[allow(unused_macros, reason = "the helpers serve several test files")]
mod support;

use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};
use futures::future::join_all;
use serde_json::{Value, json};
use slotq_store::holds::{Decided, HoldInput, Verdict, commit_batch};
use slotq_testkit::{Options, TestApp, id_of, slot, spawn};
use sqlx::PgPool;
use uuid::Uuid;

const COUNTRIES: [&str; 5] = ["FR", "DE", "ES", "IT", "BE"];

/// A practitioner in a clinic of `country` (UTC, 30-minute slots, every day 00:00–23:30).
async fn practitioner(app: &TestApp, country: &str) -> Uuid {
    app.practitioner_in(country).await.1
}

async fn decide(app: &TestApp, patient: Uuid, practitioner: Uuid, at: DateTime<Utc>) -> Value {
    let (s, r) = app.submit(patient, practitioner, at).await;
    assert_eq!(s, 202, "{r}");
    app.decision(id_of(&r), Duration::from_secs(20)).await
}

async fn reschedule(app: &TestApp, booking: Uuid, at: DateTime<Utc>) -> Value {
    let (s, r) = app.reschedule(booking, at).await;
    assert_eq!(s, 202, "{r}");
    app.decision(id_of(&r), Duration::from_secs(20)).await
}

fn booking_of(d: &Value) -> Uuid {
    d["booking_id"].as_str().unwrap().parse().unwrap()
}

/// (patient, slot start) pairs with more than one active booking.
async fn doubles(pool: &PgPool) -> Vec<(Uuid, DateTime<Utc>, i64)> {
    sqlx::query_as(
        "SELECT patient_id, slot_start, count(*) FROM bookings
         WHERE status IN ('held', 'confirmed') GROUP BY 1, 2 HAVING count(*) > 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_holding_a_slot_in_one_country_cannot_hold_the_same_time_in_another() {
    let app = spawn(Options::default()).await;
    let (fr, de) = (
        practitioner(&app, "FR").await,
        practitioner(&app, "DE").await,
    );
    let patient = app.patient().await;
    let t = slot(3, 600);
    let later = slot(3, 630);

    let first = decide(&app, patient, fr, t).await;
    assert_eq!(first["status"], "held", "{first}");
    let abroad = decide(&app, patient, de, t).await;
    assert_eq!(
        (abroad["status"].as_str(), abroad["reason"].as_str()),
        (Some("rejected"), Some("patient_conflict")),
        "{abroad}"
    );

    // Another time abroad is fine; moving it onto the same time is not.
    let second = decide(&app, patient, de, later).await;
    assert_eq!(second["status"], "held", "{second}");
    let moved = reschedule(&app, booking_of(&second), t).await;
    assert_eq!(
        (moved["status"].as_str(), moved["reason"].as_str()),
        (Some("rejected"), Some("patient_conflict")),
        "{moved}"
    );
    let (_, b) = app
        .get(&format!("/v1/bookings/{}", booking_of(&second)))
        .await;
    assert_eq!(b["slot_start"], json!(later), "the booking stayed: {b}");
    // Its event is about the request (the CloudEvents subject), not the booking, which did
    // not change; the data still names the booking it was to move.
    let (aggregate, data): (Uuid, Value) = sqlx::query_as(
        "SELECT aggregate_id, payload FROM outbox
         WHERE type = 'booking.rejected' AND payload->>'request_id' = $1",
    )
    .bind(moved["id"].as_str().unwrap())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(aggregate.to_string(), moved["id"].as_str().unwrap());
    assert_eq!(data["booking_id"], json!(booking_of(&second)));

    // Once the first booking is cancelled, the time is the patient's to take abroad.
    let (s, v) = app
        .post(
            &format!("/v1/bookings/{}/cancel", booking_of(&first)),
            &json!({}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let moved = reschedule(&app, booking_of(&second), t).await;
    assert_eq!(moved["status"], "held", "{moved}");
    let (_, b) = app
        .get(&format!("/v1/bookings/{}", booking_of(&second)))
        .await;
    assert_eq!(b["slot_start"], json!(t), "{b}");

    // The cancelled slot is free for someone else.
    let other = app.patient().await;
    let d = decide(&app, other, fr, t).await;
    assert_eq!(d["status"], "held", "{d}");
    assert!(doubles(&app.pool).await.is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_same_time_requests_in_several_countries_hold_exactly_one() {
    // Small batches, several committers and a second worker process: the requests of one
    // patient are decided by concurrent transactions.
    let app = spawn(Options {
        env: vec![("BATCH_MAX", "2".into()), ("BATCH_COMMITTERS", "4".into())],
        ..Options::default()
    })
    .await;
    let second_process = support::start_workers(&app).await;
    let mut practitioners = Vec::new();
    for country in COUNTRIES {
        for _ in 0..2 {
            practitioners.push(practitioner(&app, country).await);
        }
    }
    let mut patients = Vec::new();
    for _ in 0..6 {
        patients.push(app.patient().await);
    }
    for day in 3..6 {
        // Each patient asks every practitioner for the same instant (one instant per patient).
        let asks: Vec<(Uuid, Uuid, DateTime<Utc>)> = patients
            .iter()
            .enumerate()
            .flat_map(|(i, p)| {
                let at = slot(day, 480 + 30 * u32::try_from(i).unwrap());
                practitioners.iter().map(move |pr| (*p, *pr, at))
            })
            .collect();
        let answers = join_all(asks.iter().map(|(p, pr, at)| app.submit(*p, *pr, *at))).await;
        let decisions = join_all(answers.iter().map(|(s, r)| {
            assert_eq!(*s, 202, "{r}");
            app.decision(id_of(r), Duration::from_secs(30))
        }))
        .await;
        for p in &patients {
            let mine: Vec<&Value> = decisions
                .iter()
                .filter(|d| d["patient_id"] == json!(p))
                .collect();
            assert_eq!(mine.len(), practitioners.len());
            let n_held = mine.iter().filter(|d| d["status"] == "held").count();
            assert_eq!(n_held, 1, "day {day}, patient {p}: {mine:?}");
            for d in mine.iter().filter(|d| d["status"] != "held") {
                assert_eq!(
                    (d["status"].as_str(), d["reason"].as_str()),
                    (Some("rejected"), Some("patient_conflict")),
                    "{d}"
                );
            }
        }
    }
    assert!(doubles(&app.pool).await.is_empty());
    assert_eq!(
        app.count("SELECT count(*) FROM bookings WHERE status = 'held'")
            .await,
        18
    );
    second_process.stop().await;
    app.stop().await;
}

/// A stack without workers (the test decides batches itself), a hold TTL, a slot start three
/// days ahead and a base submission time.
async fn batch_setting() -> (TestApp, Duration, DateTime<Utc>, DateTime<Utc>) {
    let app = spawn(Options {
        workers: false,
        scheduler: false,
        env: vec![],
    })
    .await;
    let t = (Utc::now() + chrono::Duration::days(3))
        .duration_trunc(chrono::Duration::minutes(30))
        .unwrap();
    (app, Duration::from_secs(600), t, Utc::now())
}

/// A candidate for `commit_batch`, submitted `order` milliseconds after `base`.
fn candidate(
    patient: Uuid,
    practitioner: Uuid,
    country: &str,
    at: DateTime<Utc>,
    base: DateTime<Utc>,
    order: i64,
) -> HoldInput {
    HoldInput {
        request_id: Uuid::now_v7(),
        patient_id: patient,
        practitioner_id: practitioner,
        slot_start: at,
        submitted_at: base + chrono::Duration::milliseconds(order),
        idempotency_key: None,
        reschedule: None,
        actor: None,
        verdict: Verdict::Candidate {
            country_code: country.to_owned(),
            slot_end: at + chrono::Duration::minutes(30),
        },
    }
}

fn outcome(decided: &[Decided], request: Uuid) -> (String, Option<String>) {
    let d = decided
        .iter()
        .find(|d| d.view.id == request)
        .unwrap_or_else(|| panic!("no decision for {request}"));
    (
        d.view.status.to_string(),
        d.view.reason.map(|r| r.to_string()),
    )
}

fn held() -> (String, Option<String>) {
    ("held".into(), None)
}

fn rejected(reason: &str) -> (String, Option<String>) {
    ("rejected".into(), Some(reason.into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_decides_same_time_requests_across_countries_in_submission_order() {
    let (app, ttl, t, base) = batch_setting().await;
    let (p, q) = (Uuid::now_v7(), Uuid::now_v7());
    let (fr_a, de_b, de_b2, es_c, it_d) = (
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
    );
    let taken = candidate(q, fr_a, "FR", t, base, 0);
    let d = commit_batch(&app.pool, std::slice::from_ref(&taken), &[], ttl)
        .await
        .unwrap();
    assert_eq!(outcome(&d, taken.request_id), held());

    // P asks FR (taken by Q), then DE, then ES, then another DE practitioner, all at t; the
    // batch lists them out of order. The earliest that can win wins; the rest conflict.
    let fr = candidate(p, fr_a, "FR", t, base, 1);
    let de = candidate(p, de_b, "DE", t, base, 2);
    let es = candidate(p, es_c, "ES", t, base, 3);
    let de2 = candidate(p, de_b2, "DE", t, base, 4);
    let it_elsewhere = candidate(p, it_d, "IT", t + chrono::Duration::hours(1), base, 5);
    let batch = vec![
        de2.clone(),
        es.clone(),
        it_elsewhere.clone(),
        de.clone(),
        fr.clone(),
    ];
    let d = commit_batch(&app.pool, &batch, &[], ttl).await.unwrap();
    assert_eq!(outcome(&d, fr.request_id), rejected("slot_taken"));
    assert_eq!(outcome(&d, de.request_id), held());
    assert_eq!(outcome(&d, es.request_id), rejected("patient_conflict"));
    assert_eq!(outcome(&d, de2.request_id), rejected("patient_conflict"));
    assert_eq!(outcome(&d, it_elsewhere.request_id), held());
    let it_booking = d
        .iter()
        .find(|x| x.view.id == it_elsewhere.request_id)
        .and_then(|x| x.view.booking_id)
        .unwrap();

    // A reschedule of P's IT booking onto t conflicts with the DE hold; a hold and a
    // reschedule onto the same new instant in one batch: the hold is decided first.
    let mut onto_t = candidate(p, it_d, "IT", t, base, 6);
    onto_t.reschedule = Some(it_booking);
    let d = commit_batch(&app.pool, std::slice::from_ref(&onto_t), &[], ttl)
        .await
        .unwrap();
    assert_eq!(outcome(&d, onto_t.request_id), rejected("patient_conflict"));
    let u = t + chrono::Duration::hours(2);
    let hold_u = candidate(p, es_c, "ES", u, base, 7);
    let mut move_u = candidate(p, it_d, "IT", u, base, 8);
    move_u.reschedule = Some(it_booking);
    let d = commit_batch(&app.pool, &[move_u.clone(), hold_u.clone()], &[], ttl)
        .await
        .unwrap();
    assert_eq!(outcome(&d, hold_u.request_id), held());
    assert_eq!(outcome(&d, move_u.request_id), rejected("patient_conflict"));
    let still: DateTime<Utc> = sqlx::query_scalar("SELECT slot_start FROM bookings WHERE id = $1")
        .bind(it_booking)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(still, t + chrono::Duration::hours(1));
    assert!(doubles(&app.pool).await.is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_refused_by_an_index_other_than_the_slot_gate_still_gets_its_decision() {
    let (app, ttl, t, base) = batch_setting().await;
    let (practitioner, other) = (Uuid::now_v7(), Uuid::now_v7());
    let odd = candidate(Uuid::now_v7(), practitioner, "FR", t, base, 0);
    let fine = candidate(Uuid::now_v7(), other, "FR", t, base, 1);
    // A booking already names `odd`'s request at another time, with no recorded decision:
    // the batch's insert (only the slot gate arbitrating) violates UNIQUE (country_code,
    // request_id), and the batch is decided again with every unique index arbitrating.
    sqlx::query(
        "INSERT INTO bookings (id, request_id, country_code, practitioner_id, patient_id,
                               slot_start, slot_end, status, hold_expires_at)
         VALUES (gen_random_uuid(), $1, 'FR', $2, $3, $4, $4 + interval '30 min', 'held',
                 now() + interval '10 min')",
    )
    .bind(odd.request_id)
    .bind(practitioner)
    .bind(odd.patient_id)
    .bind(t + chrono::Duration::hours(1))
    .execute(&app.pool)
    .await
    .unwrap();
    let d = commit_batch(&app.pool, &[odd.clone(), fine.clone()], &[], ttl)
        .await
        .unwrap();
    assert_eq!(outcome(&d, fine.request_id), held());
    // Not its slot (free) that refused it: classified as the patient's conflict, recorded.
    assert_eq!(outcome(&d, odd.request_id), rejected("patient_conflict"));
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM booking_requests WHERE id = ANY($1)")
            .bind(vec![odd.request_id, fine.request_id])
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(recorded, 2);
    let at_t: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM bookings WHERE practitioner_id = $1 AND slot_start = $2",
    )
    .bind(practitioner)
    .bind(t)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(at_t, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_of_one_patient_in_different_countries_hold_one() {
    let app = spawn(Options {
        workers: false,
        scheduler: false,
        env: vec![],
    })
    .await;
    let pool = slotq_store::connect(&app.config.database_url, 12)
        .await
        .unwrap();
    let ttl = Duration::from_secs(600);
    for round in 0..15i64 {
        let t = (Utc::now() + chrono::Duration::days(3) + chrono::Duration::hours(round))
            .duration_trunc(chrono::Duration::minutes(30))
            .unwrap();
        let patient = Uuid::now_v7();
        let base = Utc::now();
        // Twelve one-request batches at once, each at another practitioner, in five countries.
        let inputs: Vec<HoldInput> = (0..12)
            .map(|i| {
                let country = COUNTRIES[usize::try_from(i).unwrap() % COUNTRIES.len()];
                candidate(patient, Uuid::now_v7(), country, t, base, i)
            })
            .collect();
        let results = join_all(inputs.iter().map(|input| {
            let pool = pool.clone();
            let input = input.clone();
            tokio::spawn(async move {
                loop {
                    match commit_batch(&pool, std::slice::from_ref(&input), &[], ttl).await {
                        Ok(d) => return outcome(&d, input.request_id),
                        Err(e) if e.is_transient() => continue,
                        Err(e) => panic!("batch failed: {e}"),
                    }
                }
            })
        }))
        .await;
        let outcomes: Vec<_> = results.into_iter().map(Result::unwrap).collect();
        let held_n = outcomes.iter().filter(|o| **o == held()).count();
        assert_eq!(held_n, 1, "round {round}: {outcomes:?}");
        assert!(
            outcomes
                .iter()
                .all(|o| *o == held() || *o == rejected("patient_conflict")),
            "{outcomes:?}"
        );
    }
    assert!(doubles(&app.pool).await.is_empty());
    pool.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decided_check_takes_every_lock_even_when_nothing_was_decided() {
    let app = spawn(Options {
        workers: false,
        scheduler: false,
        env: vec![],
    })
    .await;
    let mut tx = app.pool.begin().await.unwrap();
    // No request of these ids exists: the statement reads no row, yet locks all three keys
    // exclusively and the two hours keys shared.
    let views = slotq_store::requests::decided_views_locking(
        &mut tx,
        &[Uuid::now_v7(), Uuid::now_v7()],
        &[-5, 7, 11],
        &[3, 13],
    )
    .await
    .unwrap();
    assert!(views.is_empty());
    let held: Vec<String> = sqlx::query_scalar(
        "SELECT mode FROM pg_locks
         WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted ORDER BY mode",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    assert_eq!(
        held,
        [
            "ExclusiveLock",
            "ExclusiveLock",
            "ExclusiveLock",
            "ShareLock",
            "ShareLock"
        ]
    );
    // Another session cannot take one of them until the transaction ends.
    let mut other = app.pool.acquire().await.unwrap();
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(7)")
        .fetch_one(&mut *other)
        .await
        .unwrap();
    assert!(!free, "key 7 should be held by the open transaction");
    tx.rollback().await.unwrap();
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(7)")
        .fetch_one(&mut *other)
        .await
        .unwrap();
    assert!(free, "the transaction's locks end with it");
    sqlx::query("SELECT pg_advisory_unlock(7)")
        .execute(&mut *other)
        .await
        .unwrap();
    drop(other);
    app.stop().await;
}
