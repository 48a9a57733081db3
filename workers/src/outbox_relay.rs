//! The outbox relay: publishes outbox rows to Kafka (`KAFKA_TOPIC`, default `booking-events`)
//! as CloudEvents ([`crate::cloudevent`]), keyed by practitioner id, and marks them published
//! only once the broker acknowledged them.
//!
//! One cycle is one PostgreSQL transaction: claim up to `OUTBOX_BATCH` unpublished rows in
//! creation order with `FOR UPDATE SKIP LOCKED`, produce them, wait for every acknowledgement,
//! mark the acknowledged ones, commit. The producer is idempotent (`enable.idempotence=true`,
//! `acks=all`), so librdkafka's own retries neither duplicate nor reorder messages within a
//! partition, and a key always maps to the same partition.
//!
//! Order per practitioner holds across failures and across several relays:
//! - a row that another transaction holds (another relay's batch, or the retention sweep) is
//!   skipped by the claim; every later row with the same key then waits for the
//!   next cycle ([`outbox::keys_waiting_before`]), so it cannot overtake;
//! - when a message fails, the later messages of its key in the batch are not marked published
//!   even if acknowledged: they are sent again after it. A consumer may then see an event twice
//!   (the same CloudEvents `id`), but never a later event without the earlier ones before it.
//!
//! When Kafka is down the rows wait in the outbox: the cycle fails after
//! `KAFKA_MESSAGE_TIMEOUT_MS`, the transaction rolls back, and the relay backs off, probing the
//! broker with a metadata request (holding no row lock) until it answers. Booking transactions
//! only insert outbox rows, which never conflicts with these locks, and the relay uses its own
//! small connection pool: Kafka can neither slow nor fail the booking path.

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    error::KafkaResult,
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer},
    types::RDKafkaErrorCode,
};
use slotq_runtime::admin::Readiness;
use slotq_runtime::config::{KafkaConfig, NewTopicSettings};
use slotq_runtime::metrics::Metrics;
use slotq_runtime::shutdown::Shutdown;
use slotq_store::outbox;
use sqlx::PgPool;

use crate::cloudevent;

/// The client settings every Kafka client of the relay shares: our defaults, then
/// `KAFKA_PROPERTIES`, then the brokers. Topics are not created by asking for their metadata
/// (`allow.auto.create.topics=false`, which `KAFKA_PROPERTIES` may override): a missing topic
/// is reported ([`Relay::run`]) or created on purpose (`KAFKA_CREATE_TOPIC=1`).
fn client_config(k: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("allow.auto.create.topics", "false");
    for (key, value) in &k.properties {
        c.set(key, value);
    }
    c.set("bootstrap.servers", &k.brokers)
        .set("client.id", client_id);
    c
}

/// Builds the idempotent producer. Properties from `KAFKA_PROPERTIES` come first, so they
/// cannot turn idempotence or `acks=all` off.
pub fn producer(k: &KafkaConfig, client_id: &str) -> KafkaResult<FutureProducer> {
    let mut c = client_config(k, client_id);
    c.set("client.id", client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set(
            "message.timeout.ms",
            k.message_timeout.as_millis().to_string(),
        )
        .create()
}

/// The relay's settings and handles.
pub struct Relay {
    /// Its own small pool (not the booking path's).
    pub pool: PgPool,
    /// The idempotent producer.
    pub producer: FutureProducer,
    /// The Kafka settings: the target topic, and how to create it (`KAFKA_CREATE_TOPIC=1`).
    pub kafka: KafkaConfig,
    /// Where a missing topic is reported, so `/readyz` answers 503 with the reason.
    pub readiness: Readiness,
    /// Rows per cycle.
    pub batch: i64,
    /// Idle wait between cycles.
    pub poll_interval: Duration,
    /// How long a broker probe may take.
    pub probe_timeout: Duration,
    /// Metrics of the process.
    pub metrics: Arc<Metrics>,
}

/// What one cycle did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cycle {
    /// Rows claimed.
    pub claimed: usize,
    /// Rows acknowledged and marked published.
    pub published: usize,
    /// Rows whose production failed.
    pub failed: usize,
    /// Rows left for later: an earlier row of their key was held elsewhere, or failed.
    pub deferred: usize,
}

impl Relay {
    /// Runs until `shutdown`, then flushes the producer.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        tracing::info!(topic = %self.kafka.topic, "outbox relay started");
        let mut failures: u32 = 0;
        let mut topic_ok = false;
        let mut lag_observed: Option<Instant> = None;
        while !shutdown.is_stopping() {
            if lag_observed.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                self.observe_lag().await;
                lag_observed = Some(Instant::now());
            }
            // At start-up and after a failure: is the topic there (and the broker up)?
            if failures > 0 || !topic_ok {
                topic_ok = self.topic_ready().await;
                if !topic_ok {
                    failures = failures.saturating_add(1);
                    pause(backoff(failures), &shutdown).await;
                    continue;
                }
            }
            match self.cycle().await {
                Ok(c) if c.failed > 0 => {
                    failures = failures.saturating_add(1);
                    pause(backoff(failures), &shutdown).await;
                }
                Ok(c) => {
                    if failures > 0 {
                        tracing::info!("outbox relay: Kafka answers again");
                    }
                    failures = 0;
                    if c.claimed < self.batch as usize || c.deferred == c.claimed {
                        pause(self.poll_interval, &shutdown).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = ?e, "outbox relay cycle failed; retrying");
                    failures = failures.saturating_add(1);
                    pause(backoff(failures), &shutdown).await;
                }
            }
        }
        self.observe_lag().await;
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
        tracing::info!("outbox relay stopped");
    }

    /// One claim → produce → acknowledge → mark cycle.
    pub async fn cycle(&self) -> anyhow::Result<Cycle> {
        let mut tx = self.pool.begin().await.context("begin")?;
        let rows = outbox::claim_unpublished(&mut tx, self.batch)
            .await
            .context("claiming outbox rows")?;
        let Some(last) = rows.last() else {
            tx.commit().await.context("commit")?;
            return Ok(Cycle::default());
        };
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let waiting: HashSet<String> = outbox::keys_waiting_before(&mut tx, last, &ids)
            .await
            .context("checking for earlier rows held elsewhere")?
            .into_iter()
            .collect();

        // Hand every message to librdkafka first (it batches and pipelines them), then collect
        // the acknowledgements in claim order.
        let mut sent = Vec::with_capacity(rows.len());
        for row in &rows {
            if waiting.contains(&row.key) {
                sent.push(None);
                continue;
            }
            let body = cloudevent::to_bytes(row).context("encoding a CloudEvent")?;
            let headers = OwnedHeaders::new().insert(Header {
                key: "content-type",
                value: Some(cloudevent::CONTENT_TYPE),
            });
            let record = FutureRecord::to(&self.kafka.topic)
                .key(row.key.as_str())
                .payload(&body)
                .headers(headers);
            sent.push(Some(self.producer.send_result(record).map_err(|(e, _)| e)));
        }

        let mut c = Cycle {
            claimed: rows.len(),
            ..Cycle::default()
        };
        let mut published = Vec::with_capacity(rows.len());
        let mut failed_keys: HashSet<&str> = HashSet::new();
        for (row, sent) in rows.iter().zip(sent) {
            let Some(sent) = sent else {
                c.deferred += 1;
                continue;
            };
            let error = match sent {
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => None,
                    Ok(Err((e, _))) => Some(e.to_string()),
                    Err(_) => Some("producer dropped".to_owned()),
                },
                Err(e) => Some(e.to_string()),
            };
            match error {
                None if failed_keys.contains(row.key.as_str()) => c.deferred += 1,
                None => published.push(row.id),
                Some(e) => {
                    if c.failed == 0 {
                        tracing::warn!(error = %e, event = %row.event_id, "publishing to Kafka failed; the events wait in the outbox");
                    }
                    c.failed += 1;
                    failed_keys.insert(row.key.as_str());
                }
            }
        }
        outbox::mark_published(&mut tx, &published)
            .await
            .context("marking rows published")?;
        tx.commit().await.context("commit")?;
        c.published = published.len();
        self.metrics.events_published.inc_by(c.published as u64);
        self.metrics.event_publish_failures.inc_by(c.failed as u64);
        Ok(c)
    }

    /// Whether the broker answers and has the topic, creating it when it is missing and
    /// `KAFKA_CREATE_TOPIC=1`. A missing topic is logged with how to create it, shown by
    /// `/readyz` and `slotq_kafka_topic_missing`: without this a broker that does not create
    /// topics on first use only ever answered `MessageTimedOut`. No row lock is held.
    async fn topic_ready(&self) -> bool {
        match self.topic_state().await {
            TopicState::Present => {
                if self.metrics.kafka_topic_missing.get() == 1 {
                    tracing::info!(topic = %self.kafka.topic, "the Kafka topic exists now");
                }
                self.metrics.kafka_topic_missing.set(0);
                self.readiness.clear(READINESS_KEY);
                true
            }
            TopicState::Missing => {
                if let Some(settings) = self.kafka.create_topic {
                    match self.create_topic(settings).await {
                        Ok(()) => return false, // checked again after the backoff
                        Err(e) => {
                            tracing::error!(topic = %self.kafka.topic, error = %e, "creating the Kafka topic failed")
                        }
                    }
                }
                let why =
                    missing_topic_message(&self.kafka.topic, self.kafka.create_topic.is_some());
                if self.metrics.kafka_topic_missing.get() == 0 {
                    tracing::error!(topic = %self.kafka.topic, "{why}");
                }
                self.metrics.kafka_topic_missing.set(1);
                self.readiness.set(READINESS_KEY, why);
                false
            }
            TopicState::Unreachable(e) => {
                tracing::debug!(error = %e, "Kafka metadata unavailable");
                false
            }
        }
    }

    async fn topic_state(&self) -> TopicState {
        let producer = self.producer.clone();
        let topic = self.kafka.topic.clone();
        let timeout = self.probe_timeout;
        let answer = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), timeout)
                .map(|m| {
                    m.topics().iter().any(|t| {
                        t.name() == topic && t.error().is_none() && !t.partitions().is_empty()
                    })
                })
        })
        .await;
        match answer {
            Ok(Ok(true)) => TopicState::Present,
            Ok(Ok(false)) => TopicState::Missing,
            Ok(Err(e)) => TopicState::Unreachable(e.to_string()),
            Err(e) => TopicState::Unreachable(e.to_string()),
        }
    }

    async fn create_topic(&self, s: NewTopicSettings) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> =
            client_config(&self.kafka, "slotq-topic-admin").create()?;
        let topic = NewTopic::new(
            &self.kafka.topic,
            s.partitions,
            TopicReplication::Fixed(s.replication),
        );
        let opts = AdminOptions::new().request_timeout(Some(self.probe_timeout));
        for result in admin.create_topics([&topic], &opts).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => anyhow::bail!("{name}: {code}"),
            }
        }
        tracing::info!(topic = %self.kafka.topic, partitions = s.partitions, replication = s.replication, "created the Kafka topic (KAFKA_CREATE_TOPIC=1)");
        Ok(())
    }

    async fn observe_lag(&self) {
        match outbox::publish_lag_seconds(&self.pool).await {
            Ok(lag) => self.metrics.outbox_lag.set(lag),
            Err(e) => tracing::debug!(error = %e, "outbox lag unavailable"),
        }
    }
}

/// The key of the relay's problem in [`Readiness`].
const READINESS_KEY: &str = "kafka_topic";

/// What the broker's metadata says of the topic.
enum TopicState {
    Present,
    Missing,
    Unreachable(String),
}

/// The error a missing topic is reported with: the topic and how to create it.
fn missing_topic_message(topic: &str, create: bool) -> String {
    if create {
        format!(
            "the Kafka topic {topic} does not exist and could not be created (KAFKA_CREATE_TOPIC=1); booking events wait in the outbox"
        )
    } else {
        format!(
            "the Kafka topic {topic} does not exist and the broker does not create topics on first use; booking events wait in the outbox. Create it (kafka-topics.sh --bootstrap-server <broker> --create --topic {topic} --partitions 6 --replication-factor 3) or set KAFKA_CREATE_TOPIC=1 (KAFKA_TOPIC_PARTITIONS, KAFKA_TOPIC_REPLICATION)"
        )
    }
}

/// Exponential backoff between failed cycles: 200 ms, 400 ms, … at most 5 s.
fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(5);
    Duration::from_millis(200u64 << exp).min(Duration::from_secs(5))
}

/// Sleeps `d`, or less when shutdown is asked.
pub(crate) async fn pause(d: Duration, shutdown: &Shutdown) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        () = shutdown.clone().wait() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_caps() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(2), Duration::from_millis(400));
        assert_eq!(backoff(5), Duration::from_millis(3200));
        assert_eq!(backoff(6), Duration::from_secs(5));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(5));
    }
}
