//! Reschedules of one booking decided together (found by a black-box review): the Redis
//! availability bits, the events and audit rows, and the polls of the reschedule requests must
//! all follow where the booking really is.
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

#[allow(unused_macros, reason = "the helpers serve several test files")]
mod support;

use std::time::Duration;

use serde_json::{Value, json};
use slotq_testkit::{Options, id_of, slot, spawn};
use support::start_workers;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reschedules_decided_together_leave_only_the_final_slot_taken() {
    // A long linger, so the four reschedules are decided in one batch.
    let app = spawn(Options {
        workers: false,
        env: vec![("BATCH_LINGER_MS", "300".into())],
        ..Options::default()
    })
    .await;
    let fx = app.fixture().await;
    let (first, a, b) = (slot(3, 600), slot(3, 630), slot(3, 660));
    let workers = start_workers(&app).await;
    let (_, booking) = app.hold(fx.patient_id, fx.practitioner_id, first).await;
    workers.stop().await;
    // Someone looked at the day: its bitmap is complete, so later reads trust its bits.
    let day = format!(
        "/v1/practitioners/{}/availability?from={}&days=1",
        fx.practitioner_id,
        first.date_naive()
    );
    assert_eq!(app.get(&day).await.0, 200);

    // Queued while no worker runs, decided together: to A, to B, and to B twice more.
    let mut requests = Vec::new();
    for to in [a, b, b, b] {
        let (s, r) = app.reschedule(booking, to).await;
        assert_eq!(s, 202, "{r}");
        requests.push(id_of(&r));
    }
    let workers = start_workers(&app).await;
    app.assert_all_held(&requests, Duration::from_secs(20))
        .await;
    let (_, bk) = app.get(&format!("/v1/bookings/{booking}")).await;
    assert_eq!(bk["slot_start"], json!(b), "{bk}");

    // Only B is taken: the first slot and A are free, through the API and the pre-check.
    let (_, av) = app.get(&day).await;
    let free: Vec<&str> = av["days"][0]["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["start"].as_str().unwrap())
        .collect();
    let rfc =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert!(
        free.contains(&rfc(first).as_str()) && free.contains(&rfc(a).as_str()),
        "{free:?}"
    );
    assert!(!free.contains(&rfc(b).as_str()), "{free:?}");
    let other = app.patient().await;
    let (_, held_a) = app.hold(other, fx.practitioner_id, a).await;
    let (s, taken) = app.submit(app.patient().await, fx.practitioner_id, b).await;
    assert_eq!(
        (s, taken["code"].as_str()),
        (409, Some("slot_taken")),
        "{taken}"
    );

    // One hold, two moves: the reschedules already at B wrote no event and no audit row.
    let count = |sql: &'static str| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .bind(booking)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        count("SELECT count(*) FROM outbox WHERE aggregate_id = $1 AND type = 'booking.held'")
            .await,
        1
    );
    assert_eq!(
        count(
            "SELECT count(*) FROM outbox WHERE aggregate_id = $1 AND type = 'booking.rescheduled'"
        )
        .await,
        2
    );
    assert_eq!(
        count("SELECT count(*) FROM audit_log WHERE booking_id = $1 AND action = 'hold'").await,
        1
    );
    assert_eq!(
        count("SELECT count(*) FROM audit_log WHERE booking_id = $1 AND action = 'reschedule'")
            .await,
        2
    );

    // Every reschedule request's poll follows the booking: paid, then cancelled.
    let ev = json!({"id": format!("evt_{booking}"), "type": "payment.succeeded",
                    "booking_id": booking, "amount": 1, "currency": "EUR"});
    let (s, paid) = app
        .pay(&ev, &app.secret, chrono::Utc::now().timestamp())
        .await;
    assert_eq!(
        (s, paid["outcome"].as_str()),
        (200, Some("confirmed")),
        "{paid}"
    );
    let polls = |want: &'static str| {
        let requests = requests.clone();
        let app = &app;
        async move {
            for r in requests {
                let (_, v): (u16, Value) = app.get(&format!("/v1/booking-requests/{r}")).await;
                assert_eq!(v["status"], want, "{v}");
            }
        }
    };
    polls("confirmed").await;
    let (s, c) = app
        .post(&format!("/v1/bookings/{booking}/cancel"), &json!({}))
        .await;
    assert_eq!(s, 200, "{c}");
    polls("cancelled").await;
    assert_ne!(held_a, booking);
    workers.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_past_its_expiry_cannot_be_moved_even_before_the_sweep() {
    // No scheduler: the hold stays `held` in PostgreSQL after its expiry time.
    let app = spawn(Options {
        scheduler: false,
        ..Options::default()
    })
    .await;
    let fx = app.fixture().await;
    let (_, booking) = app
        .hold(fx.patient_id, fx.practitioner_id, slot(3, 600))
        .await;
    sqlx::query("UPDATE bookings SET hold_expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(booking)
        .execute(&app.pool)
        .await
        .unwrap();
    let (s, r) = app.reschedule(booking, slot(3, 660)).await;
    if s == 202 {
        let d = app.decision(id_of(&r), Duration::from_secs(20)).await;
        assert_eq!(
            (d["status"].as_str(), d["reason"].as_str()),
            (Some("rejected"), Some("booking_not_active")),
            "{d}"
        );
    } else {
        assert_eq!(s, 409, "refused at once is fine too: {r}");
    }
    let (_, b) = app.get(&format!("/v1/bookings/{booking}")).await;
    assert_eq!(b["slot_start"], json!(slot(3, 600)), "not moved: {b}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_rebuilds_the_bitmaps_of_both_days_and_a_rebuild_read_before_it_is_not_stored() {
    use slotq_redis::fast_path::FastPath;
    use slotq_redis::keys::{BUILT_BIT, availability_bit, bit_is_set, set_bit};
    let app = spawn(Options::default()).await;
    let fx = app.fixture().await;
    let p = fx.practitioner_id;
    let (from, to) = (slot(3, 600), slot(4, 630));
    let (d1, d2) = (from.date_naive(), to.date_naive());
    let (_, booking) = app.hold(fx.patient_id, p, from).await;
    // Both days were looked at: their bitmaps are complete.
    for d in [d1, d2] {
        let url = format!("/v1/practitioners/{p}/availability?from={d}&days=1");
        assert_eq!(app.get(&url).await.0, 200);
    }
    let fast = FastPath::new(app.redis.clone(), &app.config.redis_namespace);
    let before = fast.bitmaps(&[(p, d1), (p, d2)]).await.unwrap();
    assert!(before.iter().all(|(b, _)| bit_is_set(b, BUILT_BIT)));
    assert!(bit_is_set(&before[0].0, availability_bit(from)));

    let (s, r) = app.reschedule(booking, to).await;
    assert_eq!(s, 202, "{r}");
    let d = app.decision(id_of(&r), Duration::from_secs(20)).await;
    assert_eq!(d["status"], "held", "{d}");

    // Both days' bitmaps were dropped (their counters moved on) and rebuilt from PostgreSQL
    // (right after the decision was published): `from` is free again, `to` taken ...
    let mut after = fast.bitmaps(&[(p, d1), (p, d2)]).await.unwrap();
    for _ in 0..100 {
        if after.iter().all(|(b, _)| bit_is_set(b, BUILT_BIT)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        after = fast.bitmaps(&[(p, d1), (p, d2)]).await.unwrap();
    }
    for ((b, v), (_, v0)) in after.iter().zip(&before) {
        assert!(bit_is_set(b, BUILT_BIT), "not rebuilt");
        assert_ne!(v, v0, "the change counter did not move");
    }
    assert!(!bit_is_set(&after[0].0, availability_bit(from)));
    assert!(bit_is_set(&after[1].0, availability_bit(to)));
    // ... and a rebuild that read PostgreSQL before the move (the booking still at `from`)
    // cannot store what it saw.
    let mut stale = Vec::new();
    set_bit(&mut stale, BUILT_BIT);
    set_bit(&mut stale, availability_bit(from));
    let stored = fast
        .store_rebuilt(p, d1, before[0].1, &stale)
        .await
        .unwrap();
    assert!(!stored, "a stale rebuild overwrote the move");

    // Availability and the pre-check agree, without a read having rebuilt anything first.
    let starts = |av: Value| -> Vec<String> {
        av["days"][0]["slots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["start"].as_str().unwrap().to_owned())
            .collect()
    };
    let rfc =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let other = app.patient().await;
    let (s, v) = app.submit(other, p, to).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("slot_taken")), "{v}");
    let (_, av1) = app
        .get(&format!(
            "/v1/practitioners/{p}/availability?from={d1}&days=1"
        ))
        .await;
    let (_, av2) = app
        .get(&format!(
            "/v1/practitioners/{p}/availability?from={d2}&days=1"
        ))
        .await;
    assert!(starts(av1).contains(&rfc(from)));
    assert!(!starts(av2).contains(&rfc(to)));
    let (_, held) = app.hold(other, p, from).await;
    assert_ne!(held, booking);
    app.stop().await;
}

/// Deadlocks PostgreSQL has counted in the test's database.
async fn deadlocks(app: &slotq_testkit::TestApp) -> i64 {
    app.count("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_moving_the_same_bookings_in_opposite_orders_do_not_deadlock() {
    // Batches of two, two committers: request pairs (A then B) and (B then A) are decided side
    // by side. Locking the bookings one by one in submission order deadlocked them.
    let app = spawn(Options {
        workers: false,
        env: vec![
            ("BATCH_MAX", "2".into()),
            ("BATCH_LINGER_MS", "20".into()),
            ("WORKER_CONCURRENCY", "8".into()),
        ],
        ..Options::default()
    })
    .await;
    let fx = app.fixture().await;
    let workers = start_workers(&app).await;
    let mut pairs = Vec::new();
    for k in 0..12u32 {
        let (_, a) = app
            .hold(fx.patient_id, fx.practitioner_id, slot(2, k * 60))
            .await;
        let other = app.patient().await;
        let (_, b) = app
            .hold(other, fx.practitioner_id, slot(2, k * 60 + 30))
            .await;
        pairs.push((k, a, b));
    }
    workers.stop().await;
    let before = deadlocks(&app).await;
    let mut requests = Vec::new();
    for (k, a, b) in &pairs {
        // Four distinct free targets per pair (days 3 and 4), so no move waits on another's slot.
        for (booking, day, minute) in [(a, 3, 0), (b, 3, 30), (b, 4, 0), (a, 4, 30)] {
            let (s, r) = app.reschedule(*booking, slot(day, k * 60 + minute)).await;
            assert_eq!(s, 202, "{r}");
            requests.push(id_of(&r));
        }
    }
    let workers = start_workers(&app).await;
    app.assert_all_held(&requests, Duration::from_secs(30))
        .await;
    assert_eq!(
        deadlocks(&app).await - before,
        0,
        "deadlocks among the batches"
    );
    assert_eq!(workers.metric("slotq_batch_retries_total").await, 0.0);
    workers.stop().await;
    app.stop().await;
}
