//! The payment webhook: signatures, idempotency on the event id, and the race with expiry.
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::time::Duration;

use futures::future::join_all;
use serde_json::{Value, json};
use slotq_testkit::{Options, TestApp, id_of, slot, spawn};
use uuid::Uuid;

async fn held_booking(app: &TestApp, minute: u32) -> (Uuid, Uuid) {
    let fx = app.fixture().await;
    app.hold(fx.patient_id, fx.practitioner_id, slot(3, minute))
        .await
}

fn event(id: &str, kind: &str, booking: Uuid) -> Value {
    json!({"id": id, "type": kind, "booking_id": booking, "amount": 4500, "currency": "EUR"})
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Sends the event `id` of `kind` for `booking`, signed now with the stack's secret.
async fn pay(app: &TestApp, id: &str, kind: &str, booking: Uuid) -> (u16, Value) {
    app.pay(&event(id, kind, booking), &app.secret, now()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_signature_confirms_and_a_duplicate_changes_nothing() {
    let app = spawn(Options::default()).await;
    let (request, booking) = held_booking(&app, 600).await;
    let (s, body) = pay(&app, "evt_1", "payment.succeeded", booking).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["outcome"], "confirmed");
    let (_, b) = app.get(&format!("/v1/bookings/{booking}")).await;
    assert_eq!(b["status"], "confirmed");
    assert_eq!(b["payment_ref"], "evt_1");
    let (_, polled) = app.get(&format!("/v1/booking-requests/{request}")).await;
    assert_eq!(polled["status"], "confirmed");

    let (s, body) = pay(&app, "evt_1", "payment.succeeded", booking).await;
    assert_eq!(s, 200);
    assert_eq!(
        body["outcome"], "confirmed",
        "a duplicate answers the original outcome"
    );
    let (_, body) = pay(&app, "evt_2", "payment.succeeded", booking).await;
    assert_eq!(body["outcome"], "already_confirmed");
    // A second, different payment: the patient paid twice, and that payment is named for
    // the refund, next to the one that confirmed the booking.
    let late: Vec<Value> = sqlx::query_scalar(
        "SELECT payload FROM outbox WHERE type = 'booking.payment_late' AND aggregate_id = $1",
    )
    .bind(booking)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(late.len(), 1, "{late:?}");
    assert_eq!(late[0]["reason"], "refund_required");
    assert_eq!(late[0]["status"], "confirmed");
    assert_eq!(late[0]["payment"]["id"], "evt_2", "{}", late[0]);
    assert_eq!(late[0]["payment"]["confirmed_by"], "evt_1");
    assert!(late[0]["payment"]["amount"].is_i64() && late[0]["payment"]["currency"].is_string());
    assert_eq!(
        app.count("SELECT count(*) FROM audit_log WHERE action = 'confirm'")
            .await,
        1
    );
    assert_eq!(
        app.count("SELECT count(*) FROM outbox WHERE type = 'booking.confirmed'")
            .await,
        1
    );
    assert_eq!(app.count("SELECT count(*) FROM payment_events").await, 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_amount_is_refused_and_changes_nothing() {
    let app = spawn(Options::default()).await;
    let (_, booking) = held_booking(&app, 630).await;
    let mut bad = event("evt_neg", "payment.succeeded", booking);
    bad["amount"] = json!(-5);
    let (s, problem) = app.pay(&bad, &app.secret, now()).await;
    assert_eq!(s, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "amount", "{problem}");
    let (_, b) = app.get(&format!("/v1/bookings/{booking}")).await;
    assert_eq!(b["status"], "held");
    assert_eq!(app.count("SELECT count(*) FROM payment_events").await, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_without_amount_or_currency_is_refused_and_changes_nothing() {
    let app = spawn(Options::default()).await;
    let (_, booking) = held_booking(&app, 645).await;
    for (kind, drop) in [
        ("payment.succeeded", "amount"),
        ("payment.succeeded", "currency"),
        ("payment.failed", "amount"),
    ] {
        let mut bad = event(&format!("evt_no_{drop}_{kind}"), kind, booking);
        bad.as_object_mut().unwrap().remove(drop);
        let (s, problem) = app.pay(&bad, &app.secret, now()).await;
        assert_eq!(s, 422, "{kind} without {drop}: {problem}");
        assert_eq!(problem["errors"][0]["field"], drop, "{problem}");
        assert_eq!(problem["errors"][0]["code"], "required", "{problem}");
        bad[drop] = Value::Null;
        assert_eq!(app.pay(&bad, &app.secret, now()).await.0, 422);
    }
    // An event type slotq does not act on needs neither.
    let other = json!({"id": "evt_other", "type": "charge.dispute.created", "booking_id": booking});
    let (s, body) = app.pay(&other, &app.secret, now()).await;
    assert_eq!(
        (s, body["outcome"].as_str()),
        (200, Some("ignored")),
        "{body}"
    );
    let (_, b) = app.get(&format!("/v1/bookings/{booking}")).await;
    assert_eq!(b["status"], "held");
    assert_eq!(app.count("SELECT count(*) FROM payment_events").await, 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_id_reused_for_another_notification_is_refused() {
    let app = spawn(Options::default()).await;
    let (_, first) = held_booking(&app, 690).await;
    let (_, second) = held_booking(&app, 720).await;
    let (s, body) = pay(&app, "evt_r", "payment.succeeded", first).await;
    assert_eq!((s, body["outcome"].as_str()), (200, Some("confirmed")));
    // The same id for another booking, another type or another amount: 422, nothing changes.
    let mut other_amount = event("evt_r", "payment.succeeded", first);
    other_amount["amount"] = json!(1);
    for ev in [
        event("evt_r", "payment.succeeded", second),
        event("evt_r", "payment.failed", first),
        other_amount,
    ] {
        let (s, problem) = app.pay(&ev, &app.secret, now()).await;
        assert_eq!(s, 422, "{ev} → {problem}");
        assert_eq!(problem["errors"][0]["field"], "id", "{problem}");
        assert_eq!(problem["errors"][0]["code"], "reused", "{problem}");
    }
    let (_, b) = app.get(&format!("/v1/bookings/{second}")).await;
    assert_eq!(b["status"], "held", "the second booking was not confirmed");
    let (_, b) = app.get(&format!("/v1/bookings/{first}")).await;
    assert_eq!(b["status"], "confirmed");
    // The same notification again (currency in another case) is still a replay.
    let mut same = event("evt_r", "payment.succeeded", first);
    same["currency"] = json!("eur");
    let (s, body) = app.pay(&same, &app.secret, now()).await;
    assert_eq!(
        (s, body["outcome"].as_str()),
        (200, Some("confirmed")),
        "{body}"
    );
    assert_eq!(app.count("SELECT count(*) FROM payment_events").await, 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_and_stale_timestamps_are_refused_and_change_nothing() {
    let app = spawn(Options::default()).await;
    let (_, booking) = held_booking(&app, 660).await;
    let ev = event("evt_x", "payment.succeeded", booking);
    for (secret, t) in [
        ("wrong-secret", now()),
        (app.secret.as_str(), now() - 301),
        (app.secret.as_str(), now() + 400),
    ] {
        let (s, body) = app.pay(&ev, secret, t).await;
        assert_eq!(s, 401, "{body}");
        assert_eq!(body["status"], 401);
    }
    // No header, and a body changed after signing.
    let res = app
        .http
        .post(format!("{}/v1/payments/webhook", app.base))
        .json(&ev)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let raw = serde_json::to_vec(&ev).unwrap();
    let sig = slotq_security::payment_signature::sign(app.secret.as_bytes(), now(), &raw);
    let tampered =
        serde_json::to_vec(&event("evt_x", "payment.succeeded", Uuid::now_v7())).unwrap();
    let res = app
        .http
        .post(format!("{}/v1/payments/webhook", app.base))
        .header("payment-signature", sig)
        .body(tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    let (_, b) = app.get(&format!("/v1/bookings/{booking}")).await;
    assert_eq!(b["status"], "held");
    assert_eq!(app.count("SELECT count(*) FROM payment_events").await, 0);
    // Unknown booking with a valid signature: 404, nothing stored.
    let (s, _) = pay(&app, "evt_y", "payment.succeeded", Uuid::now_v7()).await;
    assert_eq!(s, 404);
    assert_eq!(app.count("SELECT count(*) FROM payment_events").await, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_configured_secret_every_webhook_is_refused() {
    let app = spawn(Options {
        env: vec![("PAYMENT_WEBHOOK_SECRET", String::new())],
        ..Options::default()
    })
    .await;
    let (_, booking) = held_booking(&app, 700).await;
    let (s, _) = app
        .pay(&event("evt_1", "payment.succeeded", booking), "", now())
        .await;
    assert_eq!(s, 401);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_payment_cancels_the_hold_and_frees_the_slot() {
    let app = spawn(Options::default()).await;
    let (_, booking) = held_booking(&app, 720).await;
    let (_, body) = pay(&app, "evt_f", "payment.failed", booking).await;
    assert_eq!(body["outcome"], "cancelled");
    let (_, b) = app.get(&format!("/v1/bookings/{booking}")).await;
    assert_eq!(b["status"], "cancelled");
    let (_, body) = pay(&app, "evt_other", "refund.created", booking).await;
    assert_eq!(body["outcome"], "ignored");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_after_expiry_requires_a_refund() {
    let app = spawn(Options {
        env: vec![("HOLD_TTL_SECS", "1".into())],
        ..Options::default()
    })
    .await;
    let (request, booking) = held_booking(&app, 780).await;
    app.wait_for_status(request, "expired", Duration::from_secs(10))
        .await;
    let (s, body) = pay(&app, "evt_late", "payment.succeeded", booking).await;
    assert_eq!(s, 200);
    assert_eq!(body["outcome"], "late_payment_refund_required");
    let (_, b) = app.get(&format!("/v1/bookings/{booking}")).await;
    assert_eq!(b["status"], "expired");
    let late: Vec<Value> =
        sqlx::query_scalar("SELECT payload FROM outbox WHERE type = 'booking.payment_late'")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(late.len(), 1, "{late:?}");
    assert_eq!(late[0]["payment"]["id"], "evt_late", "{}", late[0]);
    assert!(
        late[0]["payment"].get("confirmed_by").is_none(),
        "{}",
        late[0]
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confirmation_racing_expiry_never_yields_both() {
    // The scheduler is driven by hand so its sweeps can be aimed at the payment.
    let app = spawn(Options {
        scheduler: false,
        ..Options::default()
    })
    .await;
    let fx = app.fixture().await;
    let mut bookings = Vec::new();
    for i in 0..30 {
        let patient = app.patient().await;
        let (_, r) = app
            .submit(patient, fx.practitioner_id, slot(3, i * 30))
            .await;
        let d = app.decision(id_of(&r), Duration::from_secs(20)).await;
        bookings.push(d["booking_id"].as_str().unwrap().parse::<Uuid>().unwrap());
    }
    sqlx::query("UPDATE bookings SET hold_expires_at = now() + interval '150 milliseconds'")
        .execute(&app.pool)
        .await
        .unwrap();
    let fast =
        slotq_redis::fast_path::FastPath::new(app.redis.clone(), &app.config.redis_namespace);
    let metrics = slotq_runtime::metrics::Metrics::new();
    let pays = join_all(bookings.iter().enumerate().map(|(i, b)| {
        let app = &app;
        async move {
            tokio::time::sleep(Duration::from_millis(100 + (i as u64 * 7) % 100)).await;
            pay(app, &format!("evt_{i}"), "payment.succeeded", *b)
                .await
                .1["outcome"]
                .clone()
        }
    }));
    let sweeps = async {
        for _ in 0..40 {
            slotq_scheduler::sweep(&app.pool, &fast, &metrics, 5)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let (outcomes, ()) = tokio::join!(pays, sweeps);
    for (b, outcome) in bookings.iter().zip(outcomes) {
        let status: String = sqlx::query_scalar("SELECT status::text FROM bookings WHERE id = $1")
            .bind(b)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        let events: Vec<String> = sqlx::query_scalar("SELECT type FROM outbox WHERE aggregate_id = $1 AND type IN ('booking.confirmed','booking.expired')")
            .bind(b)
            .fetch_all(&app.pool)
            .await
            .unwrap();
        assert_eq!(
            events.len(),
            1,
            "exactly one of confirmed/expired for {b}: {events:?}"
        );
        match outcome.as_str() {
            Some("confirmed") => assert_eq!(
                (status.as_str(), events[0].as_str()),
                ("confirmed", "booking.confirmed")
            ),
            Some("late_payment_refund_required") => assert_eq!(
                (status.as_str(), events[0].as_str()),
                ("expired", "booking.expired")
            ),
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_rows_are_stamped_when_written_not_when_their_transaction_began() {
    let app = spawn(Options::default()).await;
    let (_, booking) = held_booking(&app, 750).await;
    // A transaction that began before the payment (like a cancel waiting for the booking's
    // row lock) writes its audit row after the payment's.
    let mut early = app.pool.begin().await.unwrap();
    sqlx::query("SELECT now()")
        .execute(&mut *early)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (s, body) = pay(&app, "evt_order", "payment.succeeded", booking).await;
    assert_eq!((s, body["outcome"].as_str()), (200, Some("confirmed")));
    sqlx::query(
        "INSERT INTO audit_log (booking_id, actor, action, from_status, to_status, actor_role)
         VALUES ($1, 'desk', 'cancel', 'confirmed', 'cancelled', 'clinic_admin')",
    )
    .bind(booking)
    .execute(&mut *early)
    .await
    .unwrap();
    early.commit().await.unwrap();
    let (_, trail) = app.get(&format!("/v1/bookings/{booking}/audit")).await;
    let actions: Vec<&str> = trail["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["hold", "confirm", "cancel"], "{trail}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_picked_as_a_deadlock_victim_is_retried_not_answered_500() {
    let app = spawn(Options::default()).await;
    let (_, booking) = held_booking(&app, 840).await;
    // Another transaction holds the event id's row (uncommitted) and will ask for the
    // booking's row lock while the payment, holding that lock, waits for the event id: a
    // deadlock, in which PostgreSQL aborts the payment (it waited first).
    let mut other = app.pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO payment_events (event_id, booking_id, type, amount, currency, outcome)
         VALUES ('evt_dl', $1, 'payment.succeeded', 4500, 'EUR', 'confirmed')",
    )
    .bind(booking)
    .execute(&mut *other)
    .await
    .unwrap();
    let payment = {
        let app = &app;
        async move { pay(app, "evt_dl", "payment.succeeded", booking).await }
    };
    let blocker = async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        sqlx::query("SELECT 1 FROM bookings WHERE id = $1 FOR UPDATE")
            .bind(booking)
            .execute(&mut *other)
            .await
            .unwrap();
        // Granted once the payment was aborted; step aside so its retry goes through.
        other.rollback().await.unwrap();
    };
    let ((s, body), ()) = tokio::join!(payment, blocker);
    assert_eq!(
        (s, body["outcome"].as_str()),
        (200, Some("confirmed")),
        "{body}"
    );
    let (_, b) = app.get(&format!("/v1/bookings/{booking}")).await;
    assert_eq!(b["status"], "confirmed");
    assert_eq!(
        app.count("SELECT count(*) FROM outbox WHERE type = 'booking.confirmed'")
            .await,
        1,
        "the aborted attempt left nothing behind"
    );
    app.stop().await;
}
