//! Plans of the hot statements stay what their comments promise, whatever the statistics say.
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

use slotq_testkit::{Options, spawn};
use uuid::Uuid;

#[tokio::test]
async fn the_decided_check_probes_the_primary_key_even_when_statistics_call_the_table_small() {
    let app = spawn(Options {
        workers: false,
        scheduler: false,
        ..Options::default()
    })
    .await;
    // Statistics taken while the table was small, as early in a busy day: with these the
    // planner preferred hashing 128 ids and scanning the whole table when it could.
    sqlx::query(
        "INSERT INTO booking_requests (id, patient_id, practitioner_id, slot_start,
                                       submitted_at, outcome, reason)
         SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), now(), now(),
                'rejected', 'slot_taken'
         FROM generate_series(1, 4000)",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE booking_requests")
        .execute(&app.pool)
        .await
        .unwrap();
    let ids: Vec<Uuid> = (0..128).map(|_| Uuid::now_v7()).collect();
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN {}",
        slotq_common::db::requests::DECIDED_VIEWS
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
