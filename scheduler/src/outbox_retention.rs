//! Outbox retention: deletes events older than `OUTBOX_RETENTION_SECS` once every consumer is
//! done with them — published to Kafka when the relay runs (`KAFKA_BROKERS` set), turned into
//! webhook deliveries when the dispatcher runs (`WEBHOOK_DISPATCH`, default on). Deliveries keep
//! their own copy of the event, so retries and redeliveries do not need the outbox row.

use std::time::{Duration, Instant};

use chrono::Utc;
use slotq_runtime::config::Config;
use slotq_runtime::metrics::Metrics;
use slotq_store::outbox::{self, Retention};
use sqlx::PgPool;

/// Rows deleted per statement (short transactions, bounded lock sets).
const BATCH: i64 = 5_000;

/// Runs the retention sweep at most once a minute (more often for retentions under a minute).
pub struct Schedule {
    retention: Duration,
    require_published: bool,
    require_dispatched: bool,
    every: Duration,
    last: Option<Instant>,
}

impl Schedule {
    /// The schedule of `config`.
    pub fn new(config: &Config) -> Self {
        Schedule {
            retention: config.outbox.retention,
            require_published: config.kafka.is_some(),
            require_dispatched: config.webhooks.dispatch,
            every: config.outbox.retention.min(Duration::from_secs(60)),
            last: None,
        }
    }

    /// Sweeps when due; errors are logged and the sweep is tried again next time.
    pub async fn tick(&mut self, pool: &PgPool, metrics: &Metrics) {
        if self.last.is_some_and(|t| t.elapsed() < self.every) {
            return;
        }
        self.last = Some(Instant::now());
        match self.sweep(pool).await {
            Ok(0) => {}
            Ok(n) => {
                metrics.outbox_deleted.inc_by(n);
                tracing::info!(deleted = n, "old outbox events deleted");
            }
            Err(e) => tracing::warn!(error = %e, "outbox retention sweep failed"),
        }
    }

    /// Deletes every eligible row, batch by batch; returns how many.
    pub async fn sweep(&self, pool: &PgPool) -> Result<u64, sqlx::Error> {
        let r = Retention {
            before: Utc::now()
                - chrono::Duration::from_std(self.retention).unwrap_or(chrono::Duration::MAX),
            require_published: self.require_published,
            require_dispatched: self.require_dispatched,
        };
        let mut total = 0;
        loop {
            let n = outbox::delete_old(pool, r, BATCH).await?;
            total += n;
            if n < BATCH as u64 {
                return Ok(total);
            }
        }
    }
}
