//! Starts what carries results out of the pipeline: the outbox relay to Kafka (when
//! `KAFKA_BROKERS` is set) and the webhook dispatcher (unless `WEBHOOK_DISPATCH=0`).
//!
//! Each has its own small PostgreSQL pool, so neither a slow broker nor slow client endpoints
//! can take connections from the hold batcher, nor from each other: the relay keeps a
//! transaction open while the broker acknowledges, the dispatcher never holds a connection
//! across an HTTP call.

use std::sync::Arc;

use anyhow::Context;
use slotq_runtime::admin::Readiness;
use slotq_runtime::config::Config;
use slotq_runtime::metrics::Metrics;
use slotq_runtime::tasks::Tasks;
use tokio::sync::Notify;

use crate::{outbox_relay::Relay, webhook_dispatcher::Dispatcher};

/// Connections of the relay's pool: one held for a cycle, one for the lag gauge.
const RELAY_POOL_SIZE: u32 = 2;

/// Connections of the dispatcher's pool for `concurrency` attempts in flight: one for the
/// fan-out transaction, one for claiming, and one per four attempts (at least one, at most
/// eight) to record results. An attempt holds a connection only for its one-statement record,
/// a few milliseconds against the tens of milliseconds or more of its HTTP call, so a quarter
/// of the attempts' number is plenty; the cap keeps a large `WEBHOOK_CONCURRENCY` from
/// taking PostgreSQL's connections.
pub fn dispatcher_pool_size(concurrency: usize) -> u32 {
    let recorders = u32::try_from(concurrency.div_ceil(4)).unwrap_or(u32::MAX);
    2 + recorders.clamp(1, 8)
}

/// Starts the relay and the dispatcher as configured, as tasks of `tasks` (restarted should
/// one die); they end after shutdown.
pub async fn start(
    config: &Config,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    tasks: &Tasks,
    client_id: &str,
) -> anyhow::Result<()> {
    if config.kafka.is_none() && !config.webhooks.dispatch {
        return Ok(());
    }
    if let Some(kafka) = &config.kafka {
        let pool = slotq_store::connect(&config.database_url, RELAY_POOL_SIZE)
            .await
            .context("connecting the outbox relay's pool to PostgreSQL")?;
        let relay = Arc::new(Relay {
            pool,
            producer: crate::outbox_relay::producer(kafka, client_id)
                .context("creating the Kafka producer (KAFKA_BROKERS, KAFKA_PROPERTIES)")?,
            kafka: kafka.clone(),
            readiness,
            batch: config.outbox.batch,
            poll_interval: config.outbox.poll_interval,
            probe_timeout: kafka.message_timeout.min(std::time::Duration::from_secs(5)),
            metrics: metrics.clone(),
        });
        let shutdown = tasks.shutdown().clone();
        tasks.spawn_restarting("outbox relay", move || relay.clone().run(shutdown.clone()));
    } else {
        tracing::info!("KAFKA_BROKERS is unset: the outbox relay is off");
    }
    if config.webhooks.dispatch {
        let pool = slotq_store::connect(
            &config.database_url,
            dispatcher_pool_size(config.webhooks.concurrency),
        )
        .await
        .context("connecting the webhook dispatcher's pool to PostgreSQL")?;
        let dispatcher = Arc::new(Dispatcher {
            pool,
            http: crate::webhook_dispatcher::http_client(&config.webhooks)
                .context("building the webhook HTTP client")?,
            outbox: config.outbox.clone(),
            config: config.webhooks.clone(),
            metrics,
            wake: Notify::new(),
        });
        let shutdown = tasks.shutdown().clone();
        tasks.spawn_restarting("webhook dispatcher", move || {
            dispatcher.clone().run(shutdown.clone())
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::dispatcher_pool_size;

    #[test]
    fn the_dispatcher_pool_grows_with_concurrency_within_bounds() {
        assert_eq!(dispatcher_pool_size(0), 3);
        assert_eq!(dispatcher_pool_size(1), 3);
        assert_eq!(dispatcher_pool_size(8), 4);
        assert_eq!(dispatcher_pool_size(32), 10);
        assert_eq!(dispatcher_pool_size(10_000), 10);
    }
}
