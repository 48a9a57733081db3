//! The booking path end to end: submit → queue → batched commit → poll, against real
//! PostgreSQL and Redis with the workers and the scheduler running in-process.
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::time::Duration;

use futures::future::join_all;
use serde_json::{Value, json};
use slotq_testkit::{Options, id_of, slot, spawn};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storm_on_one_slot_yields_exactly_one_hold() {
    let app = spawn(Options::default()).await;
    let fx = app.fixture().await;
    let mut patients = Vec::new();
    for _ in 0..600 {
        patients.push(app.patient().await);
    }
    let target = slot(3, 10 * 60);

    let submissions = join_all(
        patients
            .iter()
            .map(|p| app.submit(*p, fx.practitioner_id, target)),
    )
    .await;
    let mut accepted = Vec::new();
    let mut conflicts = 0;
    for (status, body) in &submissions {
        match status {
            202 => accepted.push(id_of(body)),
            409 => {
                assert_eq!(body["code"], "slot_taken", "{body}");
                conflicts += 1;
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    let decisions = join_all(
        accepted
            .iter()
            .map(|id| app.decision(*id, Duration::from_secs(30))),
    )
    .await;
    let held = decisions.iter().filter(|d| d["status"] == "held").count();
    let taken = decisions
        .iter()
        .filter(|d| d["status"] == "rejected" && d["reason"] == "slot_taken")
        .count();
    assert_eq!(held, 1, "exactly one winner");
    assert_eq!(
        held + taken,
        accepted.len(),
        "every other accepted request lost with slot_taken"
    );
    assert_eq!(accepted.len() + conflicts, 600);

    let active: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM bookings WHERE practitioner_id = $1 AND slot_start = $2 AND status IN ('held','confirmed')",
    )
    .bind(fx.practitioner_id)
    .bind(target)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(active, 1);
    let recorded = app.count("SELECT count(*) FROM booking_requests").await;
    assert_eq!(
        recorded as usize,
        accepted.len(),
        "every accepted request has a durable decision"
    );
    // After the storm the pre-check answers 409 at once.
    let late = app.patient().await;
    let (s, body) = app.submit(late, fx.practitioner_id, target).await;
    assert_eq!(s, 409, "{body}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_slots_are_all_held_and_the_poll_shows_the_decision() {
    let app = spawn(Options::default()).await;
    let fx = app.fixture().await;
    let ids: Vec<Uuid> =
        join_all((0..40).map(|i| app.submit(fx.patient_id, fx.practitioner_id, slot(2, i * 30))))
            .await
            .into_iter()
            .map(|(s, b)| {
                assert_eq!(s, 202, "{b}");
                assert_eq!(b["status"], "queued");
                id_of(&b)
            })
            .collect();
    for id in &ids {
        let d = app.decision(*id, Duration::from_secs(20)).await;
        assert_eq!(d["status"], "held", "{d}");
        assert!(
            d["booking_id"].is_string()
                && d["hold_expires_at"].is_string()
                && d["decided_at"].is_string(),
            "{d}"
        );
        let (s, b) = app
            .get(&format!(
                "/v1/bookings/{}",
                d["booking_id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(s, 200);
        assert_eq!(b["status"], "held");
        assert_eq!(b["request_id"], json!(id));
    }
    assert_eq!(
        app.count("SELECT count(*) FROM outbox WHERE type = 'booking.held'")
            .await,
        40
    );
    assert_eq!(
        app.count("SELECT count(*) FROM audit_log WHERE action = 'hold'")
            .await,
        40
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_cannot_hold_two_slots_at_the_same_time() {
    let app = spawn(Options::default()).await;
    let fx = app.fixture().await;
    let other = app.fixture().await;
    let t = slot(4, 9 * 60);
    let (_, a) = app.submit(fx.patient_id, fx.practitioner_id, t).await;
    let first = app.decision(id_of(&a), Duration::from_secs(20)).await;
    assert_eq!(first["status"], "held");
    let (_, b) = app.submit(fx.patient_id, other.practitioner_id, t).await;
    let second = app.decision(id_of(&b), Duration::from_secs(20)).await;
    assert_eq!(second["status"], "rejected");
    assert_eq!(second["reason"], "patient_conflict");
    app.stop().await;
}

fn idem_request(app: &slotq_testkit::TestApp, key: &str, body: &Value) -> reqwest::RequestBuilder {
    app.http
        .post(format!("{}/v1/booking-requests", app.base))
        .header("Idempotency-Key", key)
        .json(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_returns_the_original_request_and_refuses_another_body() {
    let app = spawn(Options::default()).await;
    let fx = app.fixture().await;
    let body = json!({"patient_id": fx.patient_id, "practitioner_id": fx.practitioner_id, "slot_start": slot(5, 600).to_rfc3339()});
    let first = idem_request(&app, "key-1", &body).send().await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let decided = app.decision(id_of(&first), Duration::from_secs(20)).await;
    assert_eq!(decided["status"], "held");

    // Same key, same body (formatted differently) → same request, even after the decision.
    let same = json!({"slot_start": slot(5, 600).to_rfc3339(), "practitioner_id": fx.practitioner_id, "patient_id": fx.patient_id});
    let again = idem_request(&app, "key-1", &same).send().await.unwrap();
    assert_eq!(again.status(), 202);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);

    // Same key, different body → 422, nothing new recorded.
    let other = json!({"patient_id": fx.patient_id, "practitioner_id": fx.practitioner_id, "slot_start": slot(5, 660).to_rfc3339()});
    let refused = idem_request(&app, "key-1", &other).send().await.unwrap();
    assert_eq!(refused.status(), 422);
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.count("SELECT count(*) FROM booking_requests").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM bookings").await, 1);

    // Concurrent duplicates with one key still create one request.
    let body = json!({"patient_id": fx.patient_id, "practitioner_id": fx.practitioner_id, "slot_start": slot(6, 600).to_rfc3339()});
    let responses = join_all((0..20).map(|_| idem_request(&app, "key-2", &body).send())).await;
    let mut ids = std::collections::HashSet::new();
    for r in responses {
        let r = r.unwrap();
        assert_eq!(r.status(), 202);
        ids.insert(id_of(&r.json::<Value>().await.unwrap()));
    }
    assert_eq!(ids.len(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaid_hold_expires_and_the_slot_can_be_held_again() {
    let app = spawn(Options {
        env: vec![("HOLD_TTL_SECS", "2".into())],
        ..Options::default()
    })
    .await;
    let fx = app.fixture().await;
    let t = slot(3, 8 * 60);
    let (_, r) = app.submit(fx.patient_id, fx.practitioner_id, t).await;
    let held = app.decision(id_of(&r), Duration::from_secs(20)).await;
    assert_eq!(held["status"], "held");
    let expired = app
        .wait_for_status(id_of(&r), "expired", Duration::from_secs(10))
        .await;
    assert!(expired.get("hold_expires_at").is_none(), "{expired}");
    let booking = held["booking_id"].as_str().unwrap();
    let (_, b) = app.get(&format!("/v1/bookings/{booking}")).await;
    assert_eq!(b["status"], "expired");
    assert_eq!(
        app.count("SELECT count(*) FROM outbox WHERE type = 'booking.expired'")
            .await,
        1
    );
    assert_eq!(
        app.count("SELECT count(*) FROM audit_log WHERE action = 'expire'")
            .await,
        1
    );

    let other = app.patient().await;
    let (s, r2) = app.submit(other, fx.practitioner_id, t).await;
    assert_eq!(
        s, 202,
        "the pre-check must know the slot is free again: {r2}"
    );
    let again = app.decision(id_of(&r2), Duration::from_secs(20)).await;
    assert_eq!(again["status"], "held", "{again}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_frees_the_slot_and_cannot_happen_twice() {
    let app = spawn(Options::default()).await;
    let fx = app.fixture().await;
    let t = slot(3, 14 * 60);
    let (_, r) = app.submit(fx.patient_id, fx.practitioner_id, t).await;
    let held = app.decision(id_of(&r), Duration::from_secs(20)).await;
    let booking = held["booking_id"].as_str().unwrap().to_owned();
    let (s, b) = app
        .post(
            &format!("/v1/bookings/{booking}/cancel"),
            &json!({"reason": "changed my mind"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["status"], "cancelled");
    assert_eq!(b["cancel_reason"], "changed my mind");
    // The caller's text stays on the booking; the event for subscribers carries a code only
    // (free text may name the patient or their illness).
    let event: Value = sqlx::query_scalar(
        "SELECT payload FROM outbox WHERE type = 'booking.cancelled' AND aggregate_id = $1",
    )
    .bind(booking.parse::<Uuid>().unwrap())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(event["reason"], "cancelled", "{event}");
    assert!(!event.to_string().contains("changed my mind"), "{event}");
    let (_, polled) = app
        .get(&format!("/v1/booking-requests/{}", id_of(&r)))
        .await;
    assert_eq!(polled["status"], "cancelled");
    let (s, again) = app
        .post(&format!("/v1/bookings/{booking}/cancel"), &json!({}))
        .await;
    assert_eq!(s, 409, "{again}");
    let (s, _) = app
        .post(
            &format!("/v1/bookings/{}/cancel", Uuid::now_v7()),
            &json!({}),
        )
        .await;
    assert_eq!(s, 404);

    let other = app.patient().await;
    let (s, r2) = app.submit(other, fx.practitioner_id, t).await;
    assert_eq!(s, 202);
    assert_eq!(
        app.decision(id_of(&r2), Duration::from_secs(20)).await["status"],
        "held"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_returns_as_soon_as_the_decision_lands() {
    // No workers yet: the request stays queued until they start.
    let app = spawn(Options {
        workers: false,
        ..Options::default()
    })
    .await;
    let fx = app.fixture().await;
    let (_, r) = app
        .submit(fx.patient_id, fx.practitioner_id, slot(2, 600))
        .await;
    let id = id_of(&r);
    let (s, queued) = app.get(&format!("/v1/booking-requests/{id}")).await;
    assert_eq!(s, 200);
    assert_eq!(queued["status"], "queued");
    assert!(queued["submitted_at"].is_string());

    let started = std::time::Instant::now();
    let path = format!("/v1/booking-requests/{id}?wait=20");
    let poll = app.get(&path);
    let env = app.env.clone();
    let workers = async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let config =
            slotq_runtime::config::Config::from_vars(slotq_runtime::config::Role::Workers, &env)
                .unwrap();
        let (trigger, stop) = slotq_runtime::shutdown::channel();
        let handle = tokio::spawn(slotq_workers::run(config, stop, |_| {}));
        (trigger, handle)
    };
    let ((s, decided), (trigger, handle)) = tokio::join!(poll, workers);
    assert_eq!(s, 200);
    assert_eq!(decided["status"], "held", "{decided}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "woken by the decision, not by the timeout"
    );
    trigger.fire();
    let _ = handle.await;
    let (s, _) = app
        .get(&format!("/v1/booking-requests/{}", Uuid::now_v7()))
        .await;
    assert_eq!(s, 404);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn above_max_queue_depth_ingress_sheds_load_with_503_and_retry_after() {
    let app = spawn(Options {
        workers: false,
        env: vec![("MAX_QUEUE_DEPTH", "3".into())],
        ..Options::default()
    })
    .await;
    let fx = app.fixture().await;
    let mut shed = None;
    for i in 0..40 {
        let body = json!({"patient_id": fx.patient_id, "practitioner_id": fx.practitioner_id, "slot_start": slot(2, i * 30).to_rfc3339()});
        let res = app
            .http
            .post(format!("{}/v1/booking-requests", app.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        if res.status() == 503 {
            shed = Some(res);
            break;
        }
        assert_eq!(res.status(), 202);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let res = shed.expect("ingress should shed load once the queue is full");
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_endpoints_answer() {
    let app = spawn(Options {
        workers: false,
        scheduler: false,
        ..Options::default()
    })
    .await;
    let res = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .http
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let fx = app.fixture().await;
    let _ = app
        .submit(fx.patient_id, fx.practitioner_id, slot(2, 600))
        .await;
    let text = app
        .http
        .get(format!("{}/metrics", app.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("slotq_http_requests_total"), "{text}");
    assert!(
        text.contains("slotq_booking_submissions_total{result=\"accepted\"} 1"),
        "{text}"
    );
    app.stop().await;
}
