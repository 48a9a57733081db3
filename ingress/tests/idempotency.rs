//! Idempotency-Key, Stripe semantics: a retry is answered before the request is validated
//! again, keys belong to the caller who sent them; and every view of a request shows the same
//! `submitted_at` and, for a reschedule, the booking it was to move.
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use serde_json::{Value, json};
use slotq_security::auth::Role;
use slotq_testkit::{Options, TestApp, client, id_of, slot, spawn};
use uuid::Uuid;

async fn post(
    http: &reqwest::Client,
    app: &TestApp,
    path: &str,
    key: &str,
    body: &Value,
) -> (u16, Value) {
    let res = http
        .post(format!("{}{path}", app.base))
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

fn booking_body(patient: Uuid, practitioner: Uuid, at: DateTime<Utc>) -> Value {
    json!({"patient_id": patient, "practitioner_id": practitioner, "slot_start": at.to_rfc3339()})
}

/// Opening hours every day `start`–`end` (UTC).
async fn hours(app: &TestApp, practitioner: Uuid, start: &str, end: &str) {
    app.daily_hours(practitioner, start, end).await;
}

/// Drops the cached status, so the next poll reads PostgreSQL.
async fn forget_cached_status(app: &TestApp, request: Uuid) {
    let mut conn = app.redis.clone();
    let _: () = redis::cmd("DEL")
        .arg(format!("{}:req:{request}", app.config.redis_namespace))
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_returns_the_original_request_even_when_it_would_no_longer_validate() {
    let app = spawn(Options::default()).await;
    let fx = app.fixture().await;
    let at = slot(3, 10 * 60);
    let body = booking_body(fx.patient_id, fx.practitioner_id, at);
    let (s, first) = post(&app.http, &app, "/v1/booking-requests", "retry-1", &body).await;
    assert_eq!(s, 202, "{first}");
    let decided = app.decision(id_of(&first), Duration::from_secs(20)).await;
    assert_eq!(decided["status"], "held", "{decided}");

    // The practitioner no longer works at 10:00: the same body would now be refused…
    hours(&app, fx.practitioner_id, "12:00", "18:00").await;
    let (s, v) = post(
        &app.http,
        &app,
        "/v1/booking-requests",
        "fresh-key",
        &booking_body(fx.patient_id, fx.practitioner_id, at),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["errors"][0]["code"], "invalid_slot", "{v}");
    // …but the retry is answered with the original request.
    let (s, again) = post(&app.http, &app, "/v1/booking-requests", "retry-1", &body).await;
    assert_eq!(s, 202, "{again}");
    assert_eq!(again["id"], first["id"], "{again}");
    assert_eq!(again["status"], "held", "{again}");
    // The same key with another body is still refused as a reuse, not judged as a request.
    let other = booking_body(fx.patient_id, fx.practitioner_id, slot(3, 11 * 60));
    let (s, v) = post(&app.http, &app, "/v1/booking-requests", "retry-1", &other).await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["errors"][0]["code"], "idempotency_key_reused", "{v}");

    // A refused request does not consume its key: the corrected request may use it.
    let (s, v) = post(&app.http, &app, "/v1/booking-requests", "fresh-key", &other).await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["errors"][0]["code"], "invalid_slot", "{v}");
    let patient = app.patient().await;
    let good = booking_body(patient, fx.practitioner_id, slot(3, 13 * 60));
    let (s, v) = post(&app.http, &app, "/v1/booking-requests", "fresh-key", &good).await;
    assert_eq!(s, 202, "{v}");
    assert_ne!(v["id"], first["id"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reschedule_retry_after_the_move_returns_the_original_request() {
    let app = spawn(Options::default()).await;
    let fx = app.fixture().await;
    let (s, r) = app
        .submit(fx.patient_id, fx.practitioner_id, slot(3, 9 * 60))
        .await;
    assert_eq!(s, 202, "{r}");
    let held = app.decision(id_of(&r), Duration::from_secs(20)).await;
    let booking = held["booking_id"].as_str().unwrap().to_owned();
    let path = format!("/v1/bookings/{booking}/reschedule");
    let body = json!({"slot_start": slot(3, 15 * 60).to_rfc3339()});
    let (s, first) = post(&app.http, &app, &path, "move-1", &body).await;
    assert_eq!(s, 202, "{first}");
    let moved = app.decision(id_of(&first), Duration::from_secs(20)).await;
    assert_eq!(moved["status"], "held", "{moved}");
    let (_, b) = app.get(&format!("/v1/bookings/{booking}")).await;
    assert_eq!(
        b["slot_start"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        slot(3, 15 * 60)
    );

    // Now the booking is at that slot: a new request would be `same_slot`, the retry is not.
    let (s, v) = post(&app.http, &app, &path, "move-2", &body).await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["errors"][0]["code"], "same_slot", "{v}");
    let (s, again) = post(&app.http, &app, &path, "move-1", &body).await;
    assert_eq!(s, 202, "{again}");
    assert_eq!(again["id"], first["id"], "{again}");
    assert_eq!(again["kind"], "reschedule", "{again}");
    let (s, v) = post(
        &app.http,
        &app,
        &path,
        "move-1",
        &json!({"slot_start": slot(3, 16 * 60).to_rfc3339()}),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["errors"][0]["code"], "idempotency_key_reused", "{v}");
    assert_eq!(
        app.count("SELECT count(*) FROM booking_requests WHERE kind = 'reschedule'")
            .await,
        1
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_are_scoped_to_the_caller() {
    let app = spawn(Options::default()).await;
    let fx = app.fixture().await;
    let other_patient = app.patient().await;
    let alice = client(&app.token(Role::Service, "backend-alice", None, None));
    let bob = client(&app.token(Role::Service, "backend-bob", None, None));
    let pat = client(&app.token(Role::Patient, "patient-1", None, Some(fx.patient_id)));

    let a_body = booking_body(fx.patient_id, fx.practitioner_id, slot(3, 600));
    let b_body = booking_body(other_patient, fx.practitioner_id, slot(3, 660));
    let (s, a) = post(&alice, &app, "/v1/booking-requests", "order-42", &a_body).await;
    assert_eq!(s, 202, "{a}");
    // Another caller's identical key is another key: no 422, and no replay of alice's request.
    let (s, b) = post(&bob, &app, "/v1/booking-requests", "order-42", &b_body).await;
    assert_eq!(s, 202, "{b}");
    assert_ne!(a["id"], b["id"]);
    // Not even with alice's exact body: bob cannot probe alice's keys.
    let (s, probe) = post(&bob, &app, "/v1/booking-requests", "order-7", &a_body).await;
    let (s2, probe2) = post(&alice, &app, "/v1/booking-requests", "order-7", &b_body).await;
    assert!(s == 202 || s == 409, "{probe}");
    assert!(s2 == 202 || s2 == 409, "{probe2}");
    assert_ne!(probe["id"], a["id"]);
    // The same sub under another role is another caller too.
    let pat_body = booking_body(fx.patient_id, fx.practitioner_id, slot(4, 600));
    let (s, p) = post(&pat, &app, "/v1/booking-requests", "order-42", &pat_body).await;
    assert_eq!(s, 202, "{p}");
    assert_ne!(p["id"], a["id"]);

    // Each caller still has its own replay and reuse check.
    let (s, again) = post(&alice, &app, "/v1/booking-requests", "order-42", &a_body).await;
    assert_eq!((s, &again["id"]), (202, &a["id"]), "{again}");
    let (s, again) = post(&bob, &app, "/v1/booking-requests", "order-42", &b_body).await;
    assert_eq!((s, &again["id"]), (202, &b["id"]), "{again}");
    let (s, v) = post(&alice, &app, "/v1/booking-requests", "order-42", &b_body).await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["errors"][0]["code"], "idempotency_key_reused", "{v}");

    // PostgreSQL records the key as scoped, like Redis: one caller's key, one distinct value.
    for r in [&a, &b, &p] {
        app.decision(id_of(r), Duration::from_secs(20)).await;
    }
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT idempotency_key FROM booking_requests WHERE id = ANY($1) ORDER BY idempotency_key",
    )
    .bind(vec![id_of(&a), id_of(&b), id_of(&p)])
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(keys.iter().all(|k| k.ends_with(":order-42")), "{keys:?}");
    assert_eq!(
        keys.iter().collect::<std::collections::HashSet<_>>().len(),
        3,
        "{keys:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitted_at_is_the_same_instant_in_every_view() {
    let app = spawn(Options::default()).await;
    let fx = app.fixture().await;
    for minute in [600, 630, 660] {
        let (s, accepted) = app
            .submit(fx.patient_id, fx.practitioner_id, slot(5, minute))
            .await;
        assert_eq!(s, 202, "{accepted}");
        let id = id_of(&accepted);
        let at = accepted["submitted_at"].as_str().unwrap().to_owned();
        let parsed: DateTime<Utc> = at.parse().unwrap();
        assert_eq!(parsed.nanosecond() % 1_000, 0, "microseconds: {at}");
        let (_, queued) = app.get(&format!("/v1/booking-requests/{id}")).await;
        let decided = app.decision(id, Duration::from_secs(20)).await;
        forget_cached_status(&app, id).await;
        let (_, durable) = app.get(&format!("/v1/booking-requests/{id}")).await;
        assert!(durable["decided_at"].is_string(), "{durable}");
        for v in [&queued, &decided, &durable] {
            assert_eq!(v["submitted_at"], at, "{v}");
        }
        // Release the patient for the next slot.
        let booking = decided["booking_id"].as_str().unwrap();
        let (s, _) = app
            .post(&format!("/v1/bookings/{booking}/cancel"), &json!({}))
            .await;
        assert_eq!(s, 200);
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_reschedule_still_names_the_booking_it_was_to_move() {
    // Without the Redis pre-check, the taken slot is found by the worker (a rejection).
    let app = spawn(Options {
        env: vec![("PRECHECK", "0".into())],
        ..Options::default()
    })
    .await;
    let fx = app.fixture().await;
    let other = app.patient().await;
    let (_, r1) = app
        .submit(fx.patient_id, fx.practitioner_id, slot(3, 600))
        .await;
    let (_, r2) = app.submit(other, fx.practitioner_id, slot(3, 660)).await;
    let mine = app.decision(id_of(&r1), Duration::from_secs(20)).await;
    assert_eq!(
        app.decision(id_of(&r2), Duration::from_secs(20)).await["status"],
        "held"
    );
    let booking = mine["booking_id"].as_str().unwrap().to_owned();

    let (s, queued) = app.reschedule(booking.parse().unwrap(), slot(3, 660)).await;
    assert_eq!(s, 202, "{queued}");
    assert_eq!(queued["booking_id"], booking.as_str(), "{queued}");
    let id = id_of(&queued);
    let rejected = app.decision(id, Duration::from_secs(20)).await;
    assert_eq!(rejected["status"], "rejected", "{rejected}");
    assert_eq!(rejected["reason"], "slot_taken", "{rejected}");
    assert_eq!(rejected["booking_id"], booking.as_str(), "{rejected}");
    assert!(rejected.get("hold_expires_at").is_none(), "{rejected}");
    // The same from PostgreSQL.
    forget_cached_status(&app, id).await;
    let (_, durable) = app.get(&format!("/v1/booking-requests/{id}")).await;
    assert_eq!(durable["status"], "rejected", "{durable}");
    assert_eq!(durable["booking_id"], booking.as_str(), "{durable}");
    assert!(durable.get("hold_expires_at").is_none(), "{durable}");
    // A rejected plain booking still has none.
    let (_, r3) = app
        .submit(app.patient().await, fx.practitioner_id, slot(3, 660))
        .await;
    let lost = app.decision(id_of(&r3), Duration::from_secs(20)).await;
    assert_eq!(lost["status"], "rejected", "{lost}");
    assert!(lost.get("booking_id").is_none(), "{lost}");
    app.stop().await;
}
