//! Starts what carries results out of the pipeline: the outbox relay to Kafka (when
//! `KAFKA_BROKERS` is set) and the webhook dispatcher (unless `WEBHOOK_DISPATCH=0`).
//!
//! Both use their own small PostgreSQL pool, so neither a slow broker nor slow client endpoints
//! can take connections from the hold batcher.

use std::sync::Arc;

use anyhow::Context;
use slotq_common::{config::Config, metrics::Metrics, shutdown::Shutdown};
use tokio::{sync::Notify, task::JoinHandle};

use crate::{outbox_relay::Relay, webhook_dispatcher::Dispatcher};

/// Connections of the outbound pool: the relay holds one for a cycle, the dispatcher's two
/// loops one each for short transactions.
const POOL_SIZE: u32 = 3;

/// Starts the relay and the dispatcher as configured; their tasks end after `shutdown`.
pub async fn start(
    config: &Config,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    client_id: &str,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let mut tasks = Vec::new();
    if config.kafka.is_none() && !config.webhooks.dispatch {
        return Ok(tasks);
    }
    let pool = slotq_common::db::connect(&config.database_url, POOL_SIZE)
        .await
        .context("connecting the outbound pool to PostgreSQL")?;
    if let Some(kafka) = &config.kafka {
        let relay = Relay {
            pool: pool.clone(),
            producer: crate::outbox_relay::producer(kafka, client_id)
                .context("creating the Kafka producer (KAFKA_BROKERS, KAFKA_PROPERTIES)")?,
            topic: kafka.topic.clone(),
            batch: config.outbox.batch,
            poll_interval: config.outbox.poll_interval,
            probe_timeout: kafka.message_timeout.min(std::time::Duration::from_secs(5)),
            metrics: metrics.clone(),
        };
        tasks.push(tokio::spawn(relay.run(shutdown.clone())));
    } else {
        tracing::info!("KAFKA_BROKERS is unset: the outbox relay is off");
    }
    if config.webhooks.dispatch {
        let dispatcher = Arc::new(Dispatcher {
            pool,
            http: crate::webhook_dispatcher::http_client(&config.webhooks)
                .context("building the webhook HTTP client")?,
            outbox: config.outbox.clone(),
            config: config.webhooks.clone(),
            metrics,
            wake: Notify::new(),
        });
        tasks.push(tokio::spawn(dispatcher.run(shutdown)));
    }
    Ok(tasks)
}
