//! The webhook dispatcher under a failing, slow endpoint with more attempts in flight than it
//! has PostgreSQL connections: every attempt is recorded, no session is left idle in
//! transaction, and deleting the subscription from the API is not blocked by the dispatcher.
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

#[macro_use]
mod support;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{Path, State},
    http::StatusCode,
    routing::post,
};
use serde_json::json;
use slotq_testkit::{Options, TestApp, id_of, slot, spawn};
use sqlx::PgPool;
use support::start_workers;
use uuid::Uuid;

/// A receiver that answers every request with `status` after `delay`, counting per endpoint.
#[derive(Clone)]
struct SlowReceiver {
    base: String,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl SlowReceiver {
    async fn start(delay: Duration, status: StatusCode) -> SlowReceiver {
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let app = Router::new()
            .route(
                "/hooks/{endpoint}",
                post(
                    move |State(hits): State<Arc<Mutex<HashMap<String, usize>>>>,
                          Path(endpoint): Path<String>| async move {
                        tokio::time::sleep(delay).await;
                        *hits.lock().unwrap().entry(endpoint).or_default() += 1;
                        status
                    },
                ),
            )
            .with_state(hits.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        SlowReceiver { base, hits }
    }

    fn url(&self, endpoint: &str) -> String {
        format!("{}/hooks/{endpoint}", self.base)
    }

    fn hits(&self, endpoint: &str) -> usize {
        self.hits
            .lock()
            .unwrap()
            .get(endpoint)
            .copied()
            .unwrap_or(0)
    }
}

async fn subscribe(app: &TestApp, url: &str) -> Uuid {
    let (s, v) = app
        .post(
            "/v1/webhook-subscriptions",
            &json!({"url": url, "events": ["booking.held"]}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    id_of(&v)
}

/// The app with the dispatcher's settings for these tests.
async fn app(concurrency: &str) -> TestApp {
    spawn(Options {
        workers: false,
        env: vec![
            ("WEBHOOK_ALLOW_PRIVATE", "1".into()),
            ("OUTBOX_POLL_MS", "20".into()),
            ("WEBHOOK_RETRY_BASE_MS", "100".into()),
            ("WEBHOOK_RETRY_MAX_MS", "200".into()),
            ("WEBHOOK_TIMEOUT_MS", "3000".into()),
            ("WEBHOOK_CONCURRENCY", concurrency.into()),
        ],
        ..Options::default()
    })
    .await
}

/// Holds `n` slots of one practitioner at once.
async fn hold_many(app: &TestApp, n: usize) {
    let fx = app.fixture().await;
    let submitted = futures::future::join_all((0..n).map(|i| {
        let m = u32::try_from(i).unwrap() * 30;
        app.submit(fx.patient_id, fx.practitioner_id, slot(2, m))
    }))
    .await;
    for (s, b) in &submitted {
        assert_eq!(*s, 202, "{b}");
    }
    for (_, b) in &submitted {
        let d = app.decision(id_of(b), Duration::from_secs(20)).await;
        assert_eq!(d["status"], "held", "{d}");
    }
}

/// The longest-idle session of the test database that is idle in a transaction, if any.
async fn idlest_in_transaction(pool: &PgPool) -> Option<(f64, String)> {
    sqlx::query_as(
        "SELECT extract(epoch FROM now() - state_change)::float8, query FROM pg_stat_activity
         WHERE datname = current_database() AND state LIKE 'idle in transaction%'
         ORDER BY state_change LIMIT 1",
    )
    .fetch_optional(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_failing_endpoint_with_more_attempts_than_connections_starves_nothing() {
    const EVENTS: usize = 40;
    // Far more attempts in flight than the dispatcher has connections.
    let app = app("32").await;
    assert!(slotq_workers::outbound::dispatcher_pool_size(32) < 32);
    let workers = start_workers(&app).await;
    let rx = SlowReceiver::start(
        Duration::from_millis(250),
        StatusCode::INTERNAL_SERVER_ERROR,
    )
    .await;
    let keep = subscribe(&app, &rx.url("keep")).await;
    let doomed = subscribe(&app, &rx.url("doomed")).await;

    // Sample pg_stat_activity all along.
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (pool, stop) = (app.pool.clone(), stop_sampling.clone());
        tokio::spawn(async move {
            let mut worst: Option<(f64, String)> = None;
            while !stop.load(Ordering::Relaxed) {
                if let Some((secs, query)) = idlest_in_transaction(&pool).await
                    && worst.as_ref().is_none_or(|w| secs > w.0)
                {
                    worst = Some((secs, query));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            worst
        })
    };

    // 40 held bookings: 40 booking.held events, 80 deliveries.
    hold_many(&app, EVENTS).await;

    // Every delivery fails three times at least, with up to 32 slow attempts in flight.
    eventually!(
        Duration::from_secs(30),
        format!(
            "three attempts per delivery (keep {}, doomed {})",
            rx.hits("keep"),
            rx.hits("doomed")
        ),
        rx.hits("keep") >= 3 * EVENTS && rx.hits("doomed") >= 3 * EVENTS
    );

    // Deleting a subscription while its deliveries are attempted answers at once.
    let started = Instant::now();
    let res = app
        .http
        .delete(format!("{}/v1/webhook-subscriptions/{doomed}", app.base))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(res.status(), 204, "{:?}", res.text().await);
    assert!(took < Duration::from_secs(2), "DELETE took {took:?}");
    let doomed_left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE subscription_id = $1")
            .bind(doomed)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(doomed_left, 0);

    // Keep going a little, then drain: attempts in flight finish and are recorded.
    let before = rx.hits("keep");
    eventually!(
        Duration::from_secs(20),
        "more attempts after the delete",
        rx.hits("keep") >= before + EVENTS
    );
    workers.stop().await;
    stop_sampling.store(true, Ordering::Relaxed);
    let worst = sampler.await.unwrap();

    // Every attempt the receiver saw is counted on its delivery and logged, without gaps.
    let (claimed, logged, deliveries, gapless): (i64, i64, i64, bool) = sqlx::query_as(
        "SELECT coalesce(sum(d.attempts), 0)::int8, coalesce(sum(a.n), 0)::int8, count(*),
                coalesce(bool_and(a.n = d.attempts AND a.top = d.attempts), true)
         FROM webhook_deliveries d
         LEFT JOIN LATERAL (SELECT count(*) AS n, max(attempt) AS top
                            FROM webhook_delivery_attempts WHERE delivery_id = d.id) a ON true
         WHERE d.subscription_id = $1",
    )
    .bind(keep)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let received = i64::try_from(rx.hits("keep")).unwrap();
    assert_eq!(deliveries, i64::try_from(EVENTS).unwrap());
    assert_eq!(
        (claimed, logged),
        (received, received),
        "attempts counted, logged and received"
    );
    assert!(gapless, "every delivery logs attempts 1..=attempts");
    let statuses: Vec<(String, Option<i32>)> = sqlx::query_as(
        "SELECT DISTINCT status, last_status_code FROM webhook_deliveries WHERE subscription_id = $1",
    )
    .bind(keep)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(statuses, vec![("pending".to_owned(), Some(500))]);

    if let Some((secs, query)) = worst {
        assert!(
            secs < 1.0,
            "a session stayed idle in transaction for {secs:.1} s after: {query}"
        );
    }
    // The in-process scheduler's own transactions are idle in transaction between their
    // statements for a moment; what must not be there is a session that stays so.
    eventually!(
        Duration::from_secs(5),
        "nothing idle in transaction after the drain",
        idlest_in_transaction(&app.pool).await.is_none()
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_gone_dead_letters_the_other_pending_deliveries_in_the_same_statement() {
    let app = app("1").await;
    let workers = start_workers(&app).await;
    // The first attempt takes a second: meanwhile every event is fanned out.
    let rx = SlowReceiver::start(Duration::from_secs(1), StatusCode::GONE).await;
    let sub = subscribe(&app, &rx.url("gone")).await;
    hold_many(&app, 10).await;
    eventually!(
        Duration::from_secs(15),
        "the subscription disabled",
        app.get(&format!("/v1/webhook-subscriptions/{sub}")).await.1["status"] == "disabled"
    );
    eventually!(
        Duration::from_secs(5),
        "every delivery dead-lettered",
        app.count("SELECT count(*) FROM webhook_deliveries WHERE status = 'dead'")
            .await
            == 10
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.hits("gone"), 1, "one attempt, then no more");
    let rows: Vec<(i32, Option<i32>, Option<String>)> = sqlx::query_as(
        "SELECT attempts, last_status_code, last_error FROM webhook_deliveries
         WHERE subscription_id = $1 ORDER BY attempts DESC",
    )
    .bind(sub)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(rows[0].0, 1);
    assert_eq!(rows[0].1, Some(410));
    for (attempts, code, error) in &rows[1..] {
        assert_eq!((*attempts, *code), (0, None));
        assert!(error.as_deref().unwrap().contains("410 Gone"), "{error:?}");
    }
    assert_eq!(
        app.count("SELECT count(*) FROM webhook_delivery_attempts")
            .await,
        1
    );
    workers.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_in_flight_when_another_410_dead_letters_its_delivery_keeps_its_status_code() {
    let app = app("2").await;
    let workers = start_workers(&app).await;
    // Two attempts run at once and both answer 410 a second later: the first to be recorded
    // dead-letters the other delivery while that one's attempt is still in flight. Whether the
    // second delivery is claimed before the first answer lands depends on the fan-out, so a
    // round with a single attempt is tried again with a fresh subscription.
    let rx = SlowReceiver::start(Duration::from_secs(1), StatusCode::GONE).await;
    let mut raced = 0;
    for round in 0..6 {
        let sub = subscribe(&app, &rx.url(&format!("gone{round}"))).await;
        hold_many(&app, 10).await;
        eventually!(
            Duration::from_secs(15),
            "the subscription disabled",
            app.get(&format!("/v1/webhook-subscriptions/{sub}")).await.1["status"] == "disabled"
        );
        // Let an attempt still in flight finish and be recorded.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let codes: Vec<Option<i32>> = sqlx::query_scalar(
            "SELECT last_status_code FROM webhook_deliveries
             WHERE subscription_id = $1 AND attempts > 0",
        )
        .bind(sub)
        .fetch_all(&app.pool)
        .await
        .unwrap();
        assert!(
            codes.iter().all(|c| *c == Some(410)),
            "round {round}: {codes:?}"
        );
        if codes.len() == 2 {
            raced += 1;
            if raced == 2 {
                break;
            }
        }
    }
    assert!(raced > 0, "no round had two attempts in flight");
    workers.stop().await;
    app.stop().await;
}
