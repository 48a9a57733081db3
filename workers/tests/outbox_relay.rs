//! The outbox relay against librdkafka's mock cluster: every event of a storm reaches the
//! topic exactly once, in commit order per practitioner; a broker outage never touches the
//! booking path, the events wait in the outbox and all go out after recovery; retention only
//! deletes what was published.
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

#[macro_use]
mod support;

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use chrono::Utc;
use futures::future::join_all;
use rdkafka::{
    mocking::MockCluster,
    types::{RDKafkaApiKey, RDKafkaRespErr},
};
use serde_json::{Value, json};
use slotq_testkit::{Options, TestApp, id_of, slot, spawn};
use support::{Consumed, consume, start_workers};
use uuid::Uuid;

/// One outbox row, in outbox order.
#[derive(Debug)]
struct Row {
    id: i64,
    event_id: Uuid,
    key: String,
    kind: String,
    aggregate_id: Uuid,
    /// The writing transaction.
    xact: String,
}

impl Row {
    /// A payment or cancellation: the storm's follow-ups, made one at a time after every
    /// decision was seen.
    fn follow_up(&self) -> bool {
        matches!(
            self.kind.as_str(),
            "booking.confirmed" | "booking.cancelled"
        )
    }
}

async fn outbox_in_order(app: &TestApp) -> Vec<Row> {
    let rows: Vec<(i64, Uuid, String, String, Uuid, String)> = sqlx::query_as(
        "SELECT id, event_id, key, type, aggregate_id, xact::text
         FROM outbox ORDER BY created_at, id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(id, event_id, key, kind, aggregate_id, xact)| Row {
            id,
            event_id,
            key,
            kind,
            aggregate_id,
            xact,
        })
        .collect()
}

/// A one-broker mock cluster, its bootstrap address and a fresh topic name (not created).
fn mock_cluster() -> (
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    String,
    String,
) {
    let cluster = MockCluster::new(1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let topic = format!("booking-events-{}", Uuid::new_v4().simple());
    (cluster, bootstrap, topic)
}

fn kafka_env(bootstrap: &str, topic: &str) -> Vec<(&'static str, String)> {
    vec![
        ("KAFKA_BROKERS", bootstrap.to_owned()),
        ("KAFKA_TOPIC", topic.to_owned()),
        ("KAFKA_MESSAGE_TIMEOUT_MS", "1500".into()),
        (
            "KAFKA_PROPERTIES",
            "reconnect.backoff.ms=20,reconnect.backoff.max.ms=200,linger.ms=2".into(),
        ),
        ("OUTBOX_POLL_MS", "20".into()),
        ("OUTBOX_BATCH", "40".into()),
    ]
}

/// A storm on a few practitioners' slots, then payments and cancellations of the winners:
/// chains held → confirmed → cancelled and held → cancelled. Returns the accepted request ids.
async fn storm_and_follow_ups(app: &TestApp, practitioners: &[Uuid], patients: &[Uuid]) {
    let mut subs = Vec::new();
    for (pi, p) in practitioners.iter().enumerate() {
        for s in 0..6u32 {
            for c in 0..4usize {
                subs.push((patients[(c + pi) % patients.len()], *p, slot(2, s * 30)));
            }
        }
    }
    let answers = join_all(subs.iter().map(|(pat, pr, at)| app.submit(*pat, *pr, *at))).await;
    let accepted: Vec<Uuid> = answers
        .iter()
        .filter(|(s, _)| *s == 202)
        .map(|(_, b)| id_of(b))
        .collect();
    assert!(!accepted.is_empty());
    let decisions = join_all(
        accepted
            .iter()
            .map(|id| app.decision(*id, Duration::from_secs(30))),
    )
    .await;
    let bookings: Vec<Uuid> = decisions
        .iter()
        .filter(|d| d["status"] == "held")
        .map(|d| d["booking_id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(
        bookings.len() >= practitioners.len() * 6 / 2,
        "{decisions:?}"
    );
    for (i, b) in bookings.iter().enumerate() {
        if i % 2 == 0 {
            let (s, v) = app
                .pay(
                    &json!({"id": format!("evt_{b}"), "type": "payment.succeeded",
                            "booking_id": b, "amount": 4500, "currency": "EUR"}),
                    &app.secret,
                    Utc::now().timestamp(),
                )
                .await;
            assert_eq!((s, v["outcome"].as_str()), (200, Some("confirmed")), "{v}");
        }
        if i % 4 != 2 {
            let (s, v) = app
                .post(&format!("/v1/bookings/{b}/cancel"), &json!({}))
                .await;
            assert_eq!(s, 200, "{v}");
        }
    }
}

async fn unpublished(app: &TestApp) -> i64 {
    app.count("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .await
}

/// Whether `a` (earlier in outbox order than `b`, same practitioner) was committed before `b`
/// was written, so the topic must hold it first. Events of transactions that ran side by side
/// (two committers' batches for different slots of one practitioner) have no such order: either
/// may commit first, and creation order is not commit order between them.
fn committed_before(a: &Row, b: &Row) -> bool {
    (a.xact == b.xact && a.id < b.id)
        || a.aggregate_id == b.aggregate_id
        || (!a.follow_up() && b.follow_up())
        || (a.follow_up() && b.follow_up())
}

/// Per practitioner (key), the topic must hold that practitioner's events in commit order:
/// every event after each one committed before it was written ([`committed_before`]), with
/// nothing lost or added. With `last_copy`, duplicates are allowed and the last copy of each
/// event counts.
fn assert_order_per_key(rows: &[Row], consumed: &[Consumed], last_copy: bool) {
    let mut by_partition: HashMap<i32, Vec<&Consumed>> = HashMap::new();
    for m in consumed {
        by_partition.entry(m.partition).or_default().push(m);
    }
    let mut partition_of_key: HashMap<&str, i32> = HashMap::new();
    let mut topic_order: HashMap<&str, Vec<Uuid>> = HashMap::new();
    for messages in by_partition.values() {
        for m in messages {
            let p = *partition_of_key
                .entry(m.key.as_str())
                .or_insert(m.partition);
            assert_eq!(p, m.partition, "one practitioner, one partition");
            let id: Uuid = m.event["id"].as_str().unwrap().parse().unwrap();
            topic_order.entry(m.key.as_str()).or_default().push(id);
        }
    }
    for (key, ids) in &mut topic_order {
        if last_copy {
            let mut seen = HashSet::new();
            let mut kept: Vec<Uuid> = ids
                .iter()
                .rev()
                .filter(|i| seen.insert(**i))
                .copied()
                .collect();
            kept.reverse();
            *ids = kept;
        }
        let of_key: Vec<&Row> = rows.iter().filter(|r| r.key == *key).collect();
        let mut arrived: Vec<Uuid> = ids.clone();
        arrived.sort();
        let mut written: Vec<Uuid> = of_key.iter().map(|r| r.event_id).collect();
        written.sort();
        assert_eq!(arrived, written, "practitioner {key}: the same events");
        let position: HashMap<Uuid, usize> = ids.iter().enumerate().map(|(i, e)| (*e, i)).collect();
        for (i, a) in of_key.iter().enumerate() {
            for b in &of_key[i + 1..] {
                if committed_before(a, b) {
                    assert!(
                        position[&a.event_id] < position[&b.event_id],
                        "practitioner {key}: {} ({}) arrived after {} ({}), which was written \
                         after it committed; topic order {ids:?}",
                        a.event_id,
                        a.kind,
                        b.event_id,
                        b.kind
                    );
                }
            }
        }
    }
    let keys: HashSet<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(
        keys.len(),
        topic_order.len(),
        "every practitioner's events arrived"
    );
}

/// Every event's lifecycle is causal: a booking's `held` comes before what follows it.
fn assert_booking_histories(rows: &[Row]) {
    let mut history: HashMap<Uuid, Vec<&str>> = HashMap::new();
    for r in rows {
        history.entry(r.aggregate_id).or_default().push(&r.kind);
    }
    let mut chains = 0;
    for kinds in history.values() {
        if kinds.len() > 1 {
            chains += 1;
            assert_eq!(kinds[0], "booking.held", "{kinds:?}");
        }
        if kinds.len() == 3 {
            assert_eq!(
                kinds,
                &["booking.held", "booking.confirmed", "booking.cancelled"]
            );
        }
    }
    assert!(chains > 0, "the storm produced follow-up events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storms_events_arrive_exactly_once_in_commit_order_per_practitioner() {
    let (cluster, bootstrap, topic) = mock_cluster();
    cluster.create_topic(&topic, 4, 1).unwrap();
    let mut env = kafka_env(&bootstrap, &topic);
    env.retain(|(k, _)| *k != "OUTBOX_BATCH");
    env.push(("OUTBOX_BATCH", "8".into()));
    let app = spawn(Options {
        env,
        ..Options::default()
    })
    .await;
    // A second worker process, so two relays claim side by side (SKIP LOCKED) and order per
    // practitioner must survive their interleaving.
    let second = start_workers(&app).await;
    let mut practitioners = Vec::new();
    let mut patients = Vec::new();
    for _ in 0..3 {
        let fx = app.fixture().await;
        practitioners.push(fx.practitioner_id);
        patients.push(fx.patient_id);
    }
    for _ in 0..3 {
        patients.push(app.patient().await);
    }

    storm_and_follow_ups(&app, &practitioners, &patients).await;
    eventually!(
        Duration::from_secs(30),
        "every event published",
        unpublished(&app).await == 0
    );
    let rows = outbox_in_order(&app).await;
    assert!(rows.len() > 60, "{} events", rows.len());

    let (b, t, n) = (bootstrap.clone(), topic.clone(), rows.len());
    let consumed =
        tokio::task::spawn_blocking(move || consume(&b, &t, 4, n, Duration::from_secs(30)))
            .await
            .unwrap();
    // Exactly once: as many messages as events, and each event id once.
    assert_eq!(consumed.len(), rows.len(), "no event lost or duplicated");
    let ids: HashSet<Uuid> = consumed
        .iter()
        .map(|m| m.event["id"].as_str().unwrap().parse().unwrap())
        .collect();
    let expected: HashSet<Uuid> = rows.iter().map(|r| r.event_id).collect();
    assert_eq!(ids, expected);
    // Structured-mode CloudEvents keyed by practitioner.
    let kinds: HashMap<Uuid, &str> = rows.iter().map(|r| (r.event_id, r.kind.as_str())).collect();
    for m in &consumed {
        let e = &m.event;
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["source"], "/slotq");
        assert_eq!(e["datacontenttype"], "application/json");
        assert_eq!(
            m.content_type.as_deref(),
            Some("application/cloudevents+json; charset=UTF-8")
        );
        let id: Uuid = e["id"].as_str().unwrap().parse().unwrap();
        assert_eq!(e["type"], kinds[&id]);
        assert_eq!(e["partitionkey"], m.key.as_str());
        assert_eq!(e["data"]["practitioner_id"], m.key.as_str());
        assert!(e["time"].as_str().unwrap().ends_with('Z'));
        assert!(e["data"].get("email").is_none() && e["data"].get("name").is_none());
    }
    assert_order_per_key(&rows, &consumed, false);
    assert_booking_histories(&rows);
    assert!(
        second.metric("slotq_events_published_total").await > 0.0,
        "both relays took part"
    );
    second.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transient_produce_errors_are_retried_without_duplicates() {
    let (cluster, bootstrap, topic) = mock_cluster();
    cluster.create_topic(&topic, 2, 1).unwrap();
    let app = spawn(Options {
        env: kafka_env(&bootstrap, &topic),
        ..Options::default()
    })
    .await;
    let fx = app.fixture().await;
    // The broker refuses the next produce requests with retriable errors; the idempotent
    // producer resends the same sequence numbers, so nothing is duplicated or reordered.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        ],
    );
    let answers = join_all(
        (0..20u32).map(|i| app.submit(fx.patient_id, fx.practitioner_id, slot(3, i * 30))),
    )
    .await;
    for (s, b) in &answers {
        assert_eq!(*s, 202, "{b}");
        app.decision(id_of(b), Duration::from_secs(20)).await;
    }
    eventually!(
        Duration::from_secs(30),
        "every event published",
        unpublished(&app).await == 0
    );
    let rows = outbox_in_order(&app).await;
    assert_eq!(rows.len(), 20);
    let (b, t) = (bootstrap.clone(), topic.clone());
    let consumed =
        tokio::task::spawn_blocking(move || consume(&b, &t, 2, 20, Duration::from_secs(30)))
            .await
            .unwrap();
    assert_eq!(consumed.len(), 20, "retries added no duplicate");
    assert_order_per_key(&rows, &consumed, false);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_kafka_down_bookings_are_decided_events_wait_and_all_go_out_after_recovery() {
    let (cluster, bootstrap, topic) = mock_cluster();
    cluster.create_topic(&topic, 3, 1).unwrap();
    let mut env = kafka_env(&bootstrap, &topic);
    // Retention is short, but unpublished events must survive it.
    env.push(("OUTBOX_RETENTION_SECS", "1".into()));
    let app = spawn(Options {
        workers: false,
        env,
        ..Options::default()
    })
    .await;
    let workers = start_workers(&app).await;
    let mut practitioners = Vec::new();
    let mut patients = Vec::new();
    for _ in 0..2 {
        let fx = app.fixture().await;
        practitioners.push(fx.practitioner_id);
        patients.push(fx.patient_id);
    }
    patients.push(app.patient().await);

    cluster.broker_down(1).unwrap();
    let started = std::time::Instant::now();
    storm_and_follow_ups(&app, &practitioners, &patients).await;
    // The booking path answered and decided without Kafka, as fast as ever.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "booking path slowed: {:?}",
        started.elapsed()
    );
    let total = app.count("SELECT count(*) FROM outbox").await;
    assert!(total > 20);
    eventually!(
        Duration::from_secs(20),
        "a failed publish attempt",
        workers.metric("slotq_event_publish_failures_total").await > 0.0
    );
    // Nothing is published while the broker is down, and retention keeps every row.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        unpublished(&app).await,
        total,
        "the outbox holds every event"
    );
    assert_eq!(app.count("SELECT count(*) FROM outbox").await, total);
    eventually!(
        Duration::from_secs(10),
        "lag visible on /metrics",
        workers.metric("slotq_outbox_lag_seconds").await >= 1.0
    );
    assert_eq!(workers.metric("slotq_events_published_total").await, 0.0);
    let rows = outbox_in_order(&app).await;

    cluster.broker_up(1).unwrap();
    eventually!(
        Duration::from_secs(60),
        "every event published",
        unpublished(&app).await == 0
    );
    let (b, t, n) = (bootstrap.clone(), topic.clone(), rows.len());
    let consumed =
        tokio::task::spawn_blocking(move || consume(&b, &t, 3, n, Duration::from_secs(30)))
            .await
            .unwrap();
    let ids: HashSet<Uuid> = consumed
        .iter()
        .map(|m| m.event["id"].as_str().unwrap().parse().unwrap())
        .collect();
    let expected: HashSet<Uuid> = rows.iter().map(|r| r.event_id).collect();
    assert_eq!(ids, expected, "every event delivered after recovery");
    // Duplicates may follow the injected failure; the last copies are in order.
    assert_order_per_key(&rows, &consumed, true);
    assert!(workers.metric("slotq_events_published_total").await >= total as f64);
    eventually!(
        Duration::from_secs(10),
        "lag back to zero",
        workers.metric("slotq_outbox_lag_seconds").await == 0.0
    );
    // Published and dispatched: now retention deletes them.
    eventually!(
        Duration::from_secs(15),
        "old published events deleted",
        app.count("SELECT count(*) FROM outbox").await == 0
    );
    workers.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_kafka_brokers_the_relay_is_off_and_events_stay_unpublished() {
    let app = spawn(Options::default()).await;
    let fx = app.fixture().await;
    let (s, b) = app
        .submit(fx.patient_id, fx.practitioner_id, slot(1, 600))
        .await;
    assert_eq!(s, 202, "{b}");
    let d: Value = app.decision(id_of(&b), Duration::from_secs(20)).await;
    assert_eq!(d["status"], "held");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(unpublished(&app).await, 1);
    app.stop().await;
}

/// A broker that does not create topics on first use: the missing topic is an error naming
/// it, on `/readyz` and in `slotq_kafka_topic_missing`, and the events wait in the outbox
/// until the topic exists; then they are published and the workers are ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_topic_makes_the_workers_unready_and_events_wait_until_it_exists() {
    let (cluster, bootstrap, topic) = mock_cluster();
    let env = kafka_env(&bootstrap, &topic);
    let app = spawn(Options {
        env: env.clone(),
        workers: false,
        ..Options::default()
    })
    .await;
    let workers = start_workers(&app).await;
    let readyz = format!("http://{}/readyz", workers.admin);
    eventually!(
        Duration::from_secs(20),
        "the missing topic is reported",
        workers.metric("slotq_kafka_topic_missing").await == 1.0
    );
    let r = reqwest::get(&readyz).await.unwrap();
    assert_eq!(r.status(), 503);
    let body = r.text().await.unwrap();
    assert!(body.contains(&topic), "{body}");
    assert!(body.contains("KAFKA_CREATE_TOPIC"), "{body}");

    let fx = app.fixture().await;
    let (s, b) = app
        .submit(fx.patient_id, fx.practitioner_id, slot(2, 0))
        .await;
    assert_eq!(s, 202, "{b}");
    app.decision(id_of(&b), Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(unpublished(&app).await, 1, "the event waits in the outbox");

    cluster.create_topic(&topic, 2, 1).unwrap();
    eventually!(
        Duration::from_secs(30),
        "the event is published once the topic exists",
        unpublished(&app).await == 0
    );
    assert_eq!(workers.metric("slotq_kafka_topic_missing").await, 0.0);
    assert_eq!(reqwest::get(&readyz).await.unwrap().status(), 200);
    workers.stop().await;
    app.stop().await;
}

/// `KAFKA_CREATE_TOPIC=1` asks the broker to create the missing topic. librdkafka's mock
/// cluster does not implement CreateTopics, so here the request fails: the failure is
/// reported as such (not as a topic to create by hand), and the relay goes on checking.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_create_topic_asks_the_broker_and_reports_when_it_cannot() {
    let (cluster, bootstrap, topic) = mock_cluster();
    let mut env = kafka_env(&bootstrap, &topic);
    env.push(("KAFKA_CREATE_TOPIC", "1".into()));
    env.push(("KAFKA_TOPIC_PARTITIONS", "3".into()));
    env.push(("KAFKA_TOPIC_REPLICATION", "1".into()));
    let app = spawn(Options {
        env,
        workers: false,
        ..Options::default()
    })
    .await;
    let workers = start_workers(&app).await;
    eventually!(
        Duration::from_secs(20),
        "the failed creation is reported",
        workers.metric("slotq_kafka_topic_missing").await == 1.0
    );
    let body = reqwest::get(format!("http://{}/readyz", workers.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        body.contains(&topic) && body.contains("could not be created"),
        "{body}"
    );
    // Created by other means, the topic is found and used.
    cluster.create_topic(&topic, 3, 1).unwrap();
    eventually!(
        Duration::from_secs(20),
        "the topic is found",
        workers.metric("slotq_kafka_topic_missing").await == 0.0
    );
    workers.stop().await;
    app.stop().await;
}
