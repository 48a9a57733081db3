//! Client webhooks end to end, against a small HTTP receiver on 127.0.0.1: Standard Webhooks
//! signatures, retries with backoff and the same `webhook-id`, `410 Gone`, dead letters and
//! redelivery, the SSRF guard, and the subscription API's answers to bad input.
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

#[macro_use]
mod support;

use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use slotq_security::webhooks::signature::Secret;
use slotq_testkit::{Fixture, Options, TestApp, id_of, slot, spawn};
use support::{Received, Receiver, Workers, start_workers};
use uuid::Uuid;

/// Fast retries, receivers on 127.0.0.1.
fn env(extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("WEBHOOK_ALLOW_PRIVATE", "1".to_owned()),
        ("OUTBOX_POLL_MS", "20".into()),
        ("WEBHOOK_RETRY_BASE_MS", "100".into()),
        ("WEBHOOK_RETRY_MAX_MS", "400".into()),
        ("WEBHOOK_TIMEOUT_MS", "2000".into()),
    ];
    for (k, v) in extra {
        env.retain(|(e, _)| e != k);
        env.push((k, (*v).to_owned()));
    }
    env
}

async fn app_with_workers(extra: &[(&'static str, &str)]) -> (TestApp, Workers) {
    let app = spawn(Options {
        workers: false,
        env: env(extra),
        ..Options::default()
    })
    .await;
    let workers = start_workers(&app).await;
    (app, workers)
}

async fn subscribe(app: &TestApp, url: &str, events: &[&str]) -> (Uuid, Secret) {
    let (s, v) = app
        .post(
            "/v1/webhook-subscriptions",
            &json!({"url": url, "events": events}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let secret = Secret::parse(v["secret"].as_str().unwrap()).expect("whsec_ secret");
    (id_of(&v), secret)
}

/// A held booking; returns (request id, booking id).
async fn hold(app: &TestApp, fx: &Fixture, minute: u32) -> (Uuid, Uuid) {
    app.hold(fx.patient_id, fx.practitioner_id, slot(2, minute))
        .await
}

fn verify(r: &Received, secret: &Secret) {
    let now = Utc::now().timestamp();
    secret
        .verify(
            &r.header("webhook-id"),
            &r.header("webhook-timestamp"),
            &r.header("webhook-signature"),
            &r.body,
            now,
            300,
        )
        .unwrap_or_else(|e| panic!("signature of {r:?} does not verify: {e}"));
    assert_eq!(
        r.header("content-type"),
        slotq_workers::cloudevent::CONTENT_TYPE
    );
    assert_eq!(
        r.header("webhook-id"),
        r.json()["id"].as_str().unwrap(),
        "webhook-id is the event id"
    );
}

async fn deliveries(app: &TestApp, sub: Uuid, query: &str) -> Vec<Value> {
    let (s, v) = app
        .get(&format!(
            "/v1/webhook-subscriptions/{sub}/deliveries{query}"
        ))
        .await;
    assert_eq!(s, 200, "{v}");
    v["items"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_and_only_subscribed_events_are_sent() {
    let (app, workers) = app_with_workers(&[]).await;
    let rx = Receiver::start(&[], 200).await;
    let (a, secret_a) = subscribe(&app, &rx.url("a"), &["booking.held", "booking.confirmed"]).await;
    let (b, secret_b) = subscribe(&app, &rx.url("b"), &["booking.cancelled"]).await;
    assert_ne!(secret_a.encoded(), secret_b.encoded());
    let fx = app.fixture().await;

    let (_, booking) = hold(&app, &fx, 600).await;
    let (s, v) = app
        .pay(
            &json!({"id": "evt_1", "type": "payment.succeeded", "booking_id": booking,
                    "amount": 4500, "currency": "EUR"}),
            &app.secret,
            Utc::now().timestamp(),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    eventually!(
        Duration::from_secs(10),
        "held and confirmed at a",
        rx.received("a").len() == 2
    );
    let got = rx.received("a");
    let types: Vec<Value> = got.iter().map(|r| r.json()["type"].clone()).collect();
    assert!(types.contains(&json!("booking.held")) && types.contains(&json!("booking.confirmed")));
    for r in &got {
        verify(r, &secret_a);
        assert!(
            secret_b
                .verify(
                    &r.header("webhook-id"),
                    &r.header("webhook-timestamp"),
                    &r.header("webhook-signature"),
                    &r.body,
                    Utc::now().timestamp(),
                    300
                )
                .is_err(),
            "another subscription's secret does not verify it"
        );
        let e = r.json();
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["data"]["booking_id"], booking.to_string());
        let event_id: Uuid = e["id"].as_str().unwrap().parse().unwrap();
        let in_outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE event_id = $1")
            .bind(event_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        assert_eq!(in_outbox, 1);
    }
    assert!(rx.received("b").is_empty(), "b wants only cancellations");

    let (s, v) = app
        .post(&format!("/v1/bookings/{booking}/cancel"), &json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    eventually!(
        Duration::from_secs(10),
        "cancellation at b",
        rx.received("b").len() == 1
    );
    verify(&rx.received("b")[0], &secret_b);
    assert_eq!(rx.received("b")[0].json()["type"], "booking.cancelled");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.received("a").len(), 2, "a does not want cancellations");

    let listed = deliveries(&app, a, "").await;
    assert_eq!(listed.len(), 2);
    for d in &listed {
        assert_eq!(d["status"], "delivered", "{d}");
        assert_eq!(d["attempts"], 1);
        assert_eq!(d["last_status_code"], 200);
    }
    assert_eq!(deliveries(&app, b, "?status=delivered").await.len(), 1);
    assert_eq!(
        workers
            .metric("slotq_webhook_deliveries_total{outcome=\"delivered\"}")
            .await,
        3.0
    );
    workers.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_failing_three_times_gets_the_event_on_the_fourth_attempt_with_the_same_id() {
    let (app, workers) = app_with_workers(&[]).await;
    let rx = Receiver::start(&[500, 503, 429], 200).await;
    let (sub, secret) = subscribe(&app, &rx.url("flaky"), &["booking.held"]).await;
    let fx = app.fixture().await;
    hold(&app, &fx, 630).await;

    eventually!(
        Duration::from_secs(15),
        "four attempts",
        rx.received("flaky").len() == 4
    );
    let got = rx.received("flaky");
    let id = got[0].header("webhook-id");
    for r in &got {
        assert_eq!(r.header("webhook-id"), id, "same webhook-id on every retry");
        verify(r, &secret);
    }
    // Exponential backoff with equal jitter: at least half of 100, 200, 400 ms.
    for (i, min_ms) in [(1, 50), (2, 100), (3, 200)] {
        let gap = got[i].at - got[i - 1].at;
        assert!(
            gap >= Duration::from_millis(min_ms),
            "gap before attempt {} was {gap:?}",
            i + 1
        );
    }
    eventually!(
        Duration::from_secs(5),
        "delivered",
        deliveries(&app, sub, "").await[0]["status"] == "delivered"
    );
    let d = &deliveries(&app, sub, "").await[0];
    assert_eq!(d["attempts"], 4);
    let (s, detail) = app
        .get(&format!(
            "/v1/webhook-subscriptions/{sub}/deliveries/{}",
            d["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(s, 200, "{detail}");
    let codes: Vec<Value> = detail["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].clone())
        .collect();
    assert_eq!(codes, vec![json!(500), json!(503), json!(429), json!(200)]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.received("flaky").len(), 4, "nothing after success");
    assert_eq!(
        workers
            .metric("slotq_webhook_deliveries_total{outcome=\"failed\"}")
            .await,
        3.0
    );
    workers.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_gone_disables_the_subscription() {
    let (app, workers) = app_with_workers(&[]).await;
    let rx = Receiver::start(&[], 410).await;
    let (sub, _) = subscribe(
        &app,
        &rx.url("gone"),
        &["booking.held", "booking.cancelled"],
    )
    .await;
    let fx = app.fixture().await;
    let (_, booking) = hold(&app, &fx, 660).await;
    eventually!(
        Duration::from_secs(10),
        "subscription disabled",
        app.get(&format!("/v1/webhook-subscriptions/{sub}")).await.1["status"] == "disabled"
    );
    let (_, v) = app.get(&format!("/v1/webhook-subscriptions/{sub}")).await;
    assert!(
        v["disabled_reason"].as_str().unwrap().contains("410"),
        "{v}"
    );
    assert!(v.get("secret").is_none(), "the secret is never shown again");
    let d = &deliveries(&app, sub, "").await[0];
    assert_eq!(d["status"], "dead");
    assert_eq!(d["last_status_code"], 410);

    // Later events are not delivered to a disabled subscription, not even created.
    let (s, _) = app
        .post(&format!("/v1/bookings/{booking}/cancel"), &json!({}))
        .await;
    assert_eq!(s, 200);
    eventually!(
        Duration::from_secs(5),
        "the cancellation dispatched",
        app.count(
            "SELECT count(*) FROM outbox o JOIN outbox_cursors c ON c.consumer = 'webhooks'
             WHERE (o.xact, o.id) > (c.xact, c.id)"
        )
        .await
            == 0
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.received("gone").len(), 1, "one attempt, then silence");
    assert_eq!(deliveries(&app, sub, "").await.len(), 1);
    let (s, v) = app
        .post(
            &format!(
                "/v1/webhook-subscriptions/{sub}/deliveries/{}/redeliver",
                d["id"].as_str().unwrap()
            ),
            &json!({}),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("subscription_disabled")),
        "{v}"
    );
    assert_eq!(
        workers
            .metric("slotq_webhook_deliveries_total{outcome=\"gone\"}")
            .await,
        1.0
    );
    workers.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_delivery_is_redelivered_with_one_call() {
    let (app, workers) = app_with_workers(&[("WEBHOOK_RETRY_WINDOW_SECS", "1")]).await;
    let rx = Receiver::start(&[], 500).await;
    let (sub, secret) = subscribe(&app, &rx.url("down"), &["booking.held"]).await;
    let fx = app.fixture().await;
    hold(&app, &fx, 690).await;

    eventually!(
        Duration::from_secs(10),
        "dead-lettered",
        deliveries(&app, sub, "?status=dead").await.len() == 1
    );
    let dead = &deliveries(&app, sub, "?status=dead").await[0];
    let attempts = rx.received("down").len();
    assert!(attempts >= 2, "retried within the window ({attempts})");
    assert_eq!(dead["attempts"], attempts);
    assert_eq!(dead["last_status_code"], 500);
    assert!(dead["next_attempt_at"].is_null());
    assert_eq!(
        workers.metric("slotq_webhook_dead_letters_total").await,
        1.0
    );
    // Dead letters are not retried any more.
    rx.answer(204);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(rx.received("down").len(), attempts);

    let id = dead["id"].as_str().unwrap();
    let path = format!("/v1/webhook-subscriptions/{sub}/deliveries/{id}/redeliver");
    let (s, v) = app.post(&path, &json!({})).await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["status"], "pending");
    eventually!(
        Duration::from_secs(10),
        "redelivered",
        deliveries(&app, sub, "?status=delivered").await.len() == 1
    );
    let got = rx.received("down");
    assert_eq!(got.len(), attempts + 1);
    assert_eq!(
        got[attempts].header("webhook-id"),
        got[0].header("webhook-id")
    );
    verify(&got[attempts], &secret);
    let (s, v) = app.post(&path, &json!({})).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("not_dead_lettered")),
        "{v}"
    );
    workers.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_and_loopback_targets_are_refused_without_the_allow_private_flag() {
    let (app, workers) = app_with_workers(&[("WEBHOOK_ALLOW_PRIVATE", "0")]).await;
    let rx = Receiver::start(&[], 200).await;
    for url in [
        rx.url("x"),
        rx.url("x").replace("127.0.0.1", "localhost"),
        "http://[::1]:8080/hook".to_owned(),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "http://10.0.0.7/hook".to_owned(),
    ] {
        let (s, v) = app
            .post(
                "/v1/webhook-subscriptions",
                &json!({"url": url, "events": ["booking.held"]}),
            )
            .await;
        assert_eq!(s, 422, "{url}: {v}");
        assert_eq!(v["errors"][0]["field"], "url");
        assert_eq!(v["errors"][0]["code"], "private_address", "{url}: {v}");
    }
    // A subscription that reached the table anyway (created while private targets were
    // allowed, say) is refused at connection time: the receiver never hears of it.
    let sub = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO webhook_subscriptions (id, url, events, secret) VALUES ($1, $2, $3, $4)",
    )
    .bind(sub)
    .bind(rx.url("x").replace("127.0.0.1", "localhost"))
    .bind(vec!["booking.held".to_owned()])
    .bind(Secret::generate().unwrap().encoded())
    .execute(&app.pool)
    .await
    .unwrap();
    let fx = app.fixture().await;
    hold(&app, &fx, 720).await;
    eventually!(
        Duration::from_secs(10),
        "an attempt refused",
        deliveries(&app, sub, "")
            .await
            .first()
            .is_some_and(|d| d["attempts"].as_i64() >= Some(2))
    );
    let d = &deliveries(&app, sub, "").await[0];
    assert!(d["last_error"].as_str().unwrap().contains("refused"), "{d}");
    assert!(d["last_status_code"].is_null());
    assert!(
        rx.received("x").is_empty(),
        "no request reached the loopback receiver"
    );
    assert!(
        workers
            .metric("slotq_webhook_deliveries_total{outcome=\"blocked\"}")
            .await
            >= 2.0
    );
    workers.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscription_api_validates_input_and_answers_problem_json() {
    let app = spawn(Options {
        workers: false,
        scheduler: false,
        env: env(&[]),
    })
    .await;
    // The stack allows private addresses; the URLs that should pass the URL checks resolve
    // (localhost) without network access.
    let cases = [
        (
            json!({"url": "not a url", "events": ["booking.held"]}),
            "url",
            "invalid_url",
        ),
        (
            json!({"url": "ftp://example.com/x", "events": ["booking.held"]}),
            "url",
            "unsupported_scheme",
        ),
        (
            json!({"url": "https://u:p@example.com/", "events": ["booking.held"]}),
            "url",
            "invalid_url",
        ),
        (
            json!({"url": "http://localhost:9/", "events": ["booking.exploded"]}),
            "events[0]",
            "unknown_event_type",
        ),
        (
            json!({"url": "http://localhost:9/", "events": []}),
            "events",
            "invalid",
        ),
        (
            json!({"url": 42, "events": ["booking.held"]}),
            "url",
            "invalid",
        ),
        (json!({"events": ["booking.held"]}), "url", "required"),
        (
            json!({"url": "https://example.com/", "events": ["booking.held"], "x": 1}),
            "x",
            "unknown_field",
        ),
        (
            json!({"url": "http://localhost:9/#where", "events": ["booking.held"]}),
            "url",
            "invalid_url",
        ),
    ];
    for (body, field, code) in cases {
        let res = app
            .http
            .post(format!("{}/v1/webhook-subscriptions", app.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 422, "{body}");
        assert_eq!(
            res.headers()["content-type"],
            "application/problem+json",
            "{body}"
        );
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["status"], 422);
        assert_eq!(v["errors"][0]["field"], field, "{body}: {v}");
        assert_eq!(v["errors"][0]["code"], code, "{body}: {v}");
    }
    assert_eq!(
        app.count("SELECT count(*) FROM webhook_subscriptions")
            .await,
        0
    );

    // Create, list (paged), get, delete.
    let mut ids = Vec::new();
    for i in 0..3 {
        let (s, v) = app
            .post(
                "/v1/webhook-subscriptions",
                &json!({"url": format!("http://127.0.0.1:9/h{i}"), "events": ["booking.held", "booking.held"]}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["events"], json!(["booking.held"]), "duplicates collapse");
        assert_eq!(v["status"], "active");
        assert!(v["secret"].as_str().unwrap().starts_with("whsec_"));
        ids.push(id_of(&v));
    }
    let (s, page) = app.get("/v1/webhook-subscriptions?limit=2").await;
    assert_eq!(s, 200);
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert!(page["items"][0].get("secret").is_none());
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest) = app
        .get(&format!(
            "/v1/webhook-subscriptions?limit=2&cursor={cursor}"
        ))
        .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert_eq!(id_of(&rest["items"][0]), ids[2]);
    let (s, v) = app.get("/v1/webhook-subscriptions?cursor=nope").await;
    assert_eq!((s, &v["errors"][0]["field"]), (422, &json!("cursor")));
    let (s, v) = app
        .get(&format!(
            "/v1/webhook-subscriptions/{}/deliveries?status=lost",
            ids[0]
        ))
        .await;
    assert_eq!((s, &v["errors"][0]["field"]), (422, &json!("status")));

    let del = |id: Uuid| {
        app.http
            .delete(format!("{}/v1/webhook-subscriptions/{id}", app.base))
            .send()
    };
    assert_eq!(del(ids[0]).await.unwrap().status(), 204);
    assert_eq!(del(ids[0]).await.unwrap().status(), 404);
    let (s, v) = app
        .get(&format!("/v1/webhook-subscriptions/{}", ids[0]))
        .await;
    assert_eq!(s, 404, "{v}");
    let (s, _) = app.get("/v1/webhook-subscriptions/not-a-uuid").await;
    assert_eq!(s, 404);
    let (s, _) = app
        .get(&format!(
            "/v1/webhook-subscriptions/{}/deliveries",
            Uuid::new_v4()
        ))
        .await;
    assert_eq!(s, 404);
    let (s, _) = app
        .post(
            &format!(
                "/v1/webhook-subscriptions/{}/deliveries/{}/redeliver",
                ids[1],
                Uuid::new_v4()
            ),
            &json!({}),
        )
        .await;
    assert_eq!(s, 404);
    app.stop().await;
}

/// A stack without workers or scheduler: the tests run the dispatcher's statements by hand.
async fn bare_app() -> TestApp {
    spawn(Options {
        workers: false,
        scheduler: false,
        env: env(&[]),
    })
    .await
}

/// Writes one outbox row through `conn`; returns its id.
async fn outbox_row(conn: impl sqlx::PgExecutor<'_>) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO outbox (event_id, type, aggregate_id, key, payload)
         VALUES ($1, 'booking.held', $1, 'k', '{}') RETURNING id",
    )
    .bind(Uuid::now_v7())
    .fetch_one(conn)
    .await
    .unwrap()
}

/// Takes the dispatch cursor for `tx`'s transaction (it must be free) and reads it.
async fn take_cursor(tx: &mut sqlx::PgConnection) -> slotq_store::outbox::Cursor {
    slotq_store::outbox::lock_dispatch_cursor(tx)
        .await
        .unwrap()
        .unwrap()
}

/// Whether a dispatcher could take the cursor now (tried in a transaction of its own, rolled
/// back).
async fn cursor_free(pool: &sqlx::PgPool) -> bool {
    let mut tx = pool.begin().await.unwrap();
    let free = slotq_store::outbox::lock_dispatch_cursor(&mut tx)
        .await
        .unwrap()
        .is_some();
    tx.rollback().await.unwrap();
    free
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_fan_out_locks_no_row_so_its_commit_waits_for_no_wal_flush() {
    use slotq_store::{outbox, webhooks};
    let app = bare_app().await;
    // What an idle poll runs: the cursor, the wanted types, the outbox after the cursor.
    let mut tx = app.pool.begin().await.unwrap();
    let cursor = take_cursor(&mut tx).await;
    let wanted = webhooks::wanted_event_types(&mut tx).await.unwrap();
    let rows = outbox::undispatched_after(&mut tx, &cursor, 100, &wanted)
        .await
        .unwrap();
    assert!(rows.is_empty());
    // A row lock (the cursor's row was locked FOR UPDATE before) gives the transaction an id,
    // and its commit a WAL flush.
    let xid: Option<String> = sqlx::query_scalar("SELECT pg_current_xact_id_if_assigned()::text")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(xid, None);
    // The lock is held all the same: a second dispatcher finds the cursor taken.
    assert!(!cursor_free(&app.pool).await);
    tx.commit().await.unwrap();
    assert!(cursor_free(&app.pool).await);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dispatch_cursor_never_passes_a_row_whose_transaction_is_still_running() {
    use slotq_store::outbox;
    let app = bare_app().await;
    // T1 writes first (the smaller id) but commits last; T2 commits in between.
    let mut t1 = app.pool.begin().await.unwrap();
    let early = outbox_row(&mut *t1).await;
    let late = outbox_row(&app.pool).await;
    assert!(early < late);

    let read = |pool: sqlx::PgPool| async move {
        let mut tx = pool.begin().await.unwrap();
        let cursor = take_cursor(&mut tx).await;
        let rows = outbox::undispatched_after(&mut tx, &cursor, 100, &["booking.held".into()])
            .await
            .unwrap();
        if let Some(last) = rows.last() {
            outbox::advance_dispatch_cursor(&mut tx, &last.at)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        rows.into_iter().map(|r| r.event.id).collect::<Vec<i64>>()
    };
    // While T1 runs, T2's committed row waits too: a cursor past it would skip T1's row.
    assert_eq!(read(app.pool.clone()).await, Vec::<i64>::new());
    // While another dispatcher holds the cursor, this one reads nothing.
    let mut holder = app.pool.begin().await.unwrap();
    assert!(
        outbox::lock_dispatch_cursor(&mut holder)
            .await
            .unwrap()
            .is_some()
    );
    t1.commit().await.unwrap();
    assert!(!cursor_free(&app.pool).await);
    holder.rollback().await.unwrap();
    // Both, in the order of their transactions, once no older transaction runs anywhere in
    // the cluster (other tests' databases count too: transaction ids are cluster-wide).
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while seen.len() < 2 && std::time::Instant::now() < deadline {
        seen.extend(read(app.pool.clone()).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, vec![early, late]);
    assert_eq!(read(app.pool.clone()).await, Vec::<i64>::new());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_subscriber_the_cursor_skips_exactly_the_rows_a_read_would_return() {
    use slotq_store::outbox;
    let app = bare_app().await;
    let cursor = |pool: sqlx::PgPool| async move {
        let mut tx = pool.begin().await.unwrap();
        let c = take_cursor(&mut tx).await;
        tx.rollback().await.unwrap();
        c
    };
    // Both statements in one transaction, against the same snapshot horizon.
    let both = |pool: sqlx::PgPool, limit: i64| async move {
        let mut tx = pool.begin().await.unwrap();
        let c = take_cursor(&mut tx).await;
        let skip = outbox::skip_after(&mut tx, &c, limit).await.unwrap();
        let rows = outbox::undispatched_after(&mut tx, &c, limit, &[])
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        (skip, rows)
    };
    // A running transaction holds its row, and the committed one after it, back.
    let mut t1 = app.pool.begin().await.unwrap();
    let early = outbox_row(&mut *t1).await;
    let mut later = Vec::new();
    for _ in 0..3 {
        later.push(outbox_row(&app.pool).await);
    }
    let (skip, rows) = both(app.pool.clone(), 100).await;
    assert_eq!(skip, None);
    assert!(rows.is_empty());
    t1.commit().await.unwrap();

    // Once nothing older runs anywhere in the cluster: the same count and last position as
    // the read, also when the limit cuts the rows short.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (skip, rows) = both(app.pool.clone(), 100).await;
        if rows.len() == 4 || std::time::Instant::now() > deadline {
            let (last, n) = skip.expect("rows to skip");
            assert_eq!(n, 4);
            assert_eq!(last, rows[3].at);
            assert_eq!(last.id, later[2]);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (skip, rows) = both(app.pool.clone(), 2).await;
    let (last, n) = skip.expect("rows to skip");
    assert_eq!((n, last.id), (2, later[0]));
    assert_eq!(
        rows.iter().map(|r| r.event.id).collect::<Vec<_>>(),
        vec![early, later[0]]
    );
    assert_eq!(last, rows[1].at);

    // The dispatcher of a stack without subscriptions moves its cursor over all four.
    let workers = start_workers(&app).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cursor(app.pool.clone()).await.id != later[2] && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cursor(app.pool.clone()).await.id, later[2]);
    let deliveries: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(deliveries, 0);
    workers.stop().await;
    app.stop().await;
}
