//! The hot statements keep the plans (and the order) their comments promise, whatever the
//! statistics say.
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

use slotq_store::outbox;
use slotq_testkit::{Options, TestApp, spawn};
use uuid::Uuid;

/// Runs one statement on the test database.
async fn exec(app: &TestApp, sql: &'static str) {
    sqlx::query(sql).execute(&app.pool).await.unwrap();
}

/// A test app without workers or scheduler: only its database is used.
async fn database_only() -> TestApp {
    spawn(Options {
        workers: false,
        scheduler: false,
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn the_decided_check_probes_the_primary_key_even_when_statistics_call_the_table_small() {
    let app = database_only().await;
    // Statistics taken while the table was small, as early in a busy day: with these the
    // planner preferred hashing 128 ids and scanning the whole table when it could.
    exec(
        &app,
        "INSERT INTO booking_requests (id, patient_id, practitioner_id, slot_start,
                                       submitted_at, outcome, reason)
         SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), now(), now(),
                'rejected', 'slot_taken'
         FROM generate_series(1, 4000)",
    )
    .await;
    exec(&app, "ANALYZE booking_requests").await;
    let ids: Vec<Uuid> = (0..128).map(|_| Uuid::now_v7()).collect();
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN {}",
        slotq_store::requests::DECIDED_VIEWS
    )))
    .bind(&ids)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(
        plan.contains("Index Scan using booking_requests_pkey"),
        "{plan}"
    );
    assert!(!plan.contains("Seq Scan on booking_requests"), "{plan}");
    app.stop().await;
}

#[tokio::test]
async fn the_patients_instant_check_of_the_hold_insert_probes_patient_and_instant() {
    let app = database_only().await;
    let insert = |n: i32| {
        sqlx::query(
            "INSERT INTO bookings (id, request_id, country_code, practitioner_id, patient_id,
                                   slot_start, slot_end, status, hold_expires_at)
             SELECT gen_random_uuid(), gen_random_uuid(), 'FR', gen_random_uuid(),
                    gen_random_uuid(), now() + g * interval '1 minute',
                    now() + (g + 30) * interval '1 minute', 'held', now() + interval '5 min'
             FROM generate_series(1, $1) g",
        )
        .bind(n)
    };
    // Statistics of a table that holds few rows in many pages (its earlier rows deleted and
    // vacuumed), refilled in place: the planner then sees a tiny table whatever it holds,
    // and scanned the whole partial unique index (first column: the country) for every row
    // of the batch.
    insert(20_000).execute(&app.pool).await.unwrap();
    exec(&app, "DELETE FROM bookings").await;
    exec(&app, "VACUUM (ANALYZE) bookings").await;
    insert(20_000).execute(&app.pool).await.unwrap();
    let n = 128;
    let ids = |_| Uuid::now_v7();
    let at = |i: usize| chrono::Utc::now() + chrono::Duration::minutes(30 * i as i64);
    // Both hold inserts: the one every index arbitrates and the one only the slot gate does.
    for statement in [
        slotq_store::holds::INSERT_HOLDS,
        slotq_store::holds::INSERT_HOLDS_SLOT_ARBITER,
    ] {
        let plan: Vec<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {statement}")))
                .bind((0..n).map(ids).collect::<Vec<_>>())
                .bind((0..n).map(ids).collect::<Vec<_>>())
                .bind(vec!["FR"; n])
                .bind((0..n).map(ids).collect::<Vec<_>>())
                .bind((0..n).map(ids).collect::<Vec<_>>())
                .bind((0..n).map(at).collect::<Vec<_>>())
                .bind((0..n).map(|i| at(i + 1)).collect::<Vec<_>>())
                .bind(300.0_f64)
                .fetch_all(&app.pool)
                .await
                .unwrap();
        let plan = plan.join("\n");
        assert!(plan.contains("patient_id_slot_start_id_idx"), "{plan}");
        assert!(!plan.contains("country_code_patient_id"), "{plan}");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_dispatcher_reads_the_outbox_in_numeric_transaction_id_order() {
    let app = database_only().await;
    // Two rows of long-ended transactions whose ids differ in their number of digits.
    for xact in ["100", "99"] {
        sqlx::query(
            "INSERT INTO outbox (event_id, type, aggregate_id, key, payload, xact)
             VALUES (gen_random_uuid(), 'booking.held', gen_random_uuid(), 'k', '{}',
                     $1::text::xid8)",
        )
        .bind(xact)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    let from = outbox::Cursor {
        xact: "0".into(),
        id: 0,
    };
    let mut conn = app.pool.acquire().await.unwrap();
    let first = outbox::undispatched_after(&mut conn, &from, 1, &[])
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].at.xact, "99", "numeric order, not text order");
    let next = outbox::undispatched_after(&mut conn, &first[0].at, 10, &[])
        .await
        .unwrap();
    assert_eq!(
        next.iter().map(|r| r.at.xact.as_str()).collect::<Vec<_>>(),
        ["100"]
    );
    drop(conn);
    app.stop().await;
}
