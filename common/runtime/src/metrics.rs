//! Prometheus metrics: one registry per process (no global state, so tests can run several
//! components in one process). Names follow Prometheus conventions with the `slotq_` prefix.
//! Each process registers only the metrics it updates ([`Metrics::for_component`]), so no
//! process exports a series that stays at zero because another process owns it.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder, core::Collector,
};

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Every metric slotq exports; each process updates the ones it owns.
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// HTTP requests by route, method and status.
    pub http_requests: IntCounterVec,
    /// HTTP latency by route and method.
    pub http_duration: HistogramVec,
    /// Submissions by result (accepted, replayed, slot_taken, shed, invalid).
    pub submissions: IntCounterVec,
    /// Decisions by outcome and reason.
    pub decisions: IntCounterVec,
    /// Submit → durable decision latency.
    pub decision_latency: Histogram,
    /// Requests per committed batch.
    pub batch_size: Histogram,
    /// Batch transaction duration.
    pub commit_duration: Histogram,
    /// Batch attempts retried after a transient error.
    pub batch_retries: IntCounter,
    /// apalis workers replaced after they failed (workers).
    pub worker_restarts: IntCounter,
    /// 1 while the outbox relay finds its Kafka topic missing (workers).
    pub kafka_topic_missing: IntGauge,
    /// Supervised background tasks that ended or panicked before shutdown, by task.
    pub task_failures: IntCounterVec,
    /// Queue depth by state (ready, scheduled, inflight, dead).
    pub queue_depth: IntGaugeVec,
    /// Booking requests accepted and not yet decided (what `MAX_QUEUE_DEPTH` limits).
    pub queue_pending_requests: IntGauge,
    /// Age of the oldest ready job.
    pub queue_oldest_age: IntGauge,
    /// `MAX_QUEUE_DEPTH` (set by ingress), so alerts can compare depth with the shedding point.
    pub queue_max_depth: IntGauge,
    /// Holds expired by the scheduler.
    pub holds_expired: IntCounter,
    /// now − hold_expires_at at expiry.
    pub expiry_lag: Histogram,
    /// Payment webhooks by outcome (including `unauthorized`, `unknown_booking`).
    pub payment_webhooks: IntCounterVec,
    /// Outbox events the broker acknowledged (relay).
    pub events_published: IntCounter,
    /// Outbox events the relay failed to publish (they wait and are retried).
    pub event_publish_failures: IntCounter,
    /// Age of the oldest unpublished outbox row (relay).
    pub outbox_lag: Gauge,
    /// Age of the oldest outbox row not yet fanned out to webhook deliveries (dispatcher).
    pub webhook_dispatch_lag: Gauge,
    /// Webhook delivery attempts by outcome (`delivered`, `failed`, `gone`, `blocked`,
    /// `dead_lettered`).
    pub webhook_deliveries: IntCounterVec,
    /// Webhook deliveries dead-lettered after their retry window.
    pub webhook_dead_letters: IntCounter,
    /// Outbox rows deleted after the retention period (scheduler).
    pub outbox_deleted: IntCounter,
    /// Database pool connections by state (in_use, idle).
    pub db_pool: IntGaugeVec,
    /// Whether this process is shutting down (1) or serving (0).
    pub shutting_down: IntGauge,
}

/// A slotq process, for the metrics it exports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// `slotq-ingress`: HTTP, submissions, payments, the queue depth and its shedding point.
    Ingress,
    /// `slotq-workers`: decisions and batches, the queue depth, the outbox relay and the
    /// webhook dispatcher.
    Workers,
    /// `slotq-scheduler`: expiry and outbox retention.
    Scheduler,
}

impl Metrics {
    /// The metrics `component` updates, plus the pool and drain gauges every process has.
    pub fn for_component(component: Component) -> Self {
        use Component::{Ingress, Scheduler, Workers};
        let m = Self::new();
        let keep = |owners: &[Component], collector: Box<dyn Collector>| {
            if !owners.contains(&component) {
                // Registered by `new` a moment ago, so unregistering cannot fail.
                let _ = m.registry.unregister(collector);
            }
        };
        keep(&[Ingress], Box::new(m.http_requests.clone()));
        keep(&[Ingress], Box::new(m.http_duration.clone()));
        keep(&[Ingress], Box::new(m.submissions.clone()));
        keep(&[Ingress], Box::new(m.payment_webhooks.clone()));
        keep(&[Ingress], Box::new(m.queue_max_depth.clone()));
        keep(&[Ingress, Workers], Box::new(m.queue_depth.clone()));
        keep(&[Ingress, Workers], Box::new(m.queue_oldest_age.clone()));
        keep(
            &[Ingress, Workers],
            Box::new(m.queue_pending_requests.clone()),
        );
        keep(&[Workers], Box::new(m.decisions.clone()));
        keep(&[Workers], Box::new(m.decision_latency.clone()));
        keep(&[Workers], Box::new(m.batch_size.clone()));
        keep(&[Workers], Box::new(m.commit_duration.clone()));
        keep(&[Workers], Box::new(m.batch_retries.clone()));
        keep(&[Workers], Box::new(m.worker_restarts.clone()));
        keep(&[Workers], Box::new(m.events_published.clone()));
        keep(&[Workers], Box::new(m.event_publish_failures.clone()));
        keep(&[Workers], Box::new(m.outbox_lag.clone()));
        keep(&[Workers], Box::new(m.kafka_topic_missing.clone()));
        keep(&[Workers], Box::new(m.webhook_dispatch_lag.clone()));
        keep(&[Workers], Box::new(m.webhook_deliveries.clone()));
        keep(&[Workers], Box::new(m.webhook_dead_letters.clone()));
        keep(&[Scheduler], Box::new(m.holds_expired.clone()));
        keep(&[Scheduler], Box::new(m.expiry_lag.clone()));
        keep(&[Scheduler], Box::new(m.outbox_deleted.clone()));
        m
    }

    /// Creates and registers every metric (of every component).
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| unreachable!("{e}"));
            registry
                .register(Box::new(c.clone()))
                .unwrap_or_else(|e| unreachable!("{e}"));
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .unwrap_or_else(|e| unreachable!("{e}"));
            registry
                .register(Box::new(h.clone()))
                .unwrap_or_else(|e| unreachable!("{e}"));
            h
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| unreachable!("{e}"));
            registry
                .register(Box::new(g.clone()))
                .unwrap_or_else(|e| unreachable!("{e}"));
            g
        };
        let plain_histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .unwrap_or_else(|e| unreachable!("{e}"));
            registry
                .register(Box::new(h.clone()))
                .unwrap_or_else(|e| unreachable!("{e}"));
            h
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).unwrap_or_else(|e| unreachable!("{e}"));
            registry
                .register(Box::new(c.clone()))
                .unwrap_or_else(|e| unreachable!("{e}"));
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).unwrap_or_else(|e| unreachable!("{e}"));
            registry
                .register(Box::new(g.clone()))
                .unwrap_or_else(|e| unreachable!("{e}"));
            g
        };
        let latency = LATENCY_BUCKETS.to_vec();

        Metrics {
            http_requests: counter_vec(
                "slotq_http_requests_total",
                "HTTP requests served.",
                &["route", "method", "status"],
            ),
            http_duration: histogram(
                "slotq_http_request_duration_seconds",
                "HTTP request latency.",
                &["route", "method"],
                latency.clone(),
            ),
            submissions: counter_vec(
                "slotq_booking_submissions_total",
                "Booking request submissions by result.",
                &["result"],
            ),
            decisions: counter_vec(
                "slotq_booking_decisions_total",
                "Durable booking decisions by outcome and reason.",
                &["outcome", "reason"],
            ),
            decision_latency: plain_histogram(
                "slotq_decision_latency_seconds",
                "Time from submission to durable decision.",
                latency.clone(),
            ),
            batch_size: plain_histogram(
                "slotq_batch_size",
                "Requests decided per batch transaction.",
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
            ),
            commit_duration: plain_histogram(
                "slotq_batch_commit_duration_seconds",
                "Duration of one batch transaction.",
                latency.clone(),
            ),
            batch_retries: counter(
                "slotq_batch_retries_total",
                "Batch transactions retried after a transient error.",
            ),
            worker_restarts: counter(
                "slotq_worker_restarts_total",
                "apalis workers replaced after they failed (for example a failed fetch).",
            ),
            kafka_topic_missing: gauge(
                "slotq_kafka_topic_missing",
                "1 while the outbox relay finds its Kafka topic missing (create it, or set KAFKA_CREATE_TOPIC=1).",
            ),
            task_failures: counter_vec(
                "slotq_task_failures_total",
                "Supervised background tasks that ended or panicked before shutdown (restarted, or the process stopped).",
                &["task"],
            ),
            queue_depth: gauge_vec(
                "slotq_queue_depth",
                "Jobs in the hold queue by state.",
                &["state"],
            ),
            queue_pending_requests: gauge(
                "slotq_queue_pending_requests",
                "Booking requests accepted and not yet decided (a job carries up to 64).",
            ),
            queue_oldest_age: gauge(
                "slotq_queue_oldest_ready_age_seconds",
                "Age of the oldest job waiting for a worker.",
            ),
            queue_max_depth: gauge(
                "slotq_queue_max_depth",
                "Pending booking requests above which ingress sheds load (MAX_QUEUE_DEPTH).",
            ),
            holds_expired: counter(
                "slotq_holds_expired_total",
                "Holds expired by the scheduler.",
            ),
            expiry_lag: plain_histogram(
                "slotq_expiry_lag_seconds",
                "Delay between a hold's expiry time and its expiry.",
                latency,
            ),
            payment_webhooks: counter_vec(
                "slotq_payment_webhooks_total",
                "Payment webhooks by outcome.",
                &["outcome"],
            ),
            events_published: counter(
                "slotq_events_published_total",
                "Outbox events published to Kafka and acknowledged by the broker.",
            ),
            event_publish_failures: counter(
                "slotq_event_publish_failures_total",
                "Outbox events whose publication failed (they stay in the outbox and are retried).",
            ),
            outbox_lag: {
                let g = Gauge::new(
                    "slotq_outbox_lag_seconds",
                    "Age of the oldest outbox event not yet published to Kafka (0 when none waits).",
                )
                .unwrap_or_else(|e| unreachable!("{e}"));
                registry
                    .register(Box::new(g.clone()))
                    .unwrap_or_else(|e| unreachable!("{e}"));
                g
            },
            webhook_dispatch_lag: {
                let g = Gauge::new(
                    "slotq_webhook_dispatch_lag_seconds",
                    "Age of the oldest outbox event not yet turned into webhook deliveries.",
                )
                .unwrap_or_else(|e| unreachable!("{e}"));
                registry
                    .register(Box::new(g.clone()))
                    .unwrap_or_else(|e| unreachable!("{e}"));
                g
            },
            webhook_deliveries: counter_vec(
                "slotq_webhook_deliveries_total",
                "Webhook delivery attempts by outcome.",
                &["outcome"],
            ),
            webhook_dead_letters: counter(
                "slotq_webhook_dead_letters_total",
                "Webhook deliveries dead-lettered after their retry window.",
            ),
            outbox_deleted: counter(
                "slotq_outbox_events_deleted_total",
                "Outbox events deleted after the retention period.",
            ),
            db_pool: gauge_vec(
                "slotq_db_pool_connections",
                "Database pool connections by state.",
                &["state"],
            ),
            shutting_down: gauge(
                "slotq_shutting_down",
                "1 while the process drains before exit.",
            ),
            registry,
        }
    }

    /// Records the pool's state (call before rendering).
    pub fn observe_pool(&self, pool: &sqlx::PgPool) {
        let idle = pool.num_idle() as i64;
        self.db_pool.with_label_values(&["idle"]).set(idle);
        self.db_pool
            .with_label_values(&["in_use"])
            .set(i64::from(pool.size()) - idle);
    }

    /// Records one reading of the hold queue's depth (ingress and workers both export it, so
    /// alerts and autoscalers still see the queue when one of them is down).
    pub fn observe_queue(&self, d: &slotq_redis::queue::QueueDepth) {
        self.queue_oldest_age.set(d.oldest_ready_age_secs as i64);
        self.queue_pending_requests
            .set(i64::try_from(d.pending_requests).unwrap_or(i64::MAX));
        for (state, v) in [
            ("ready", d.ready),
            ("scheduled", d.scheduled),
            ("inflight", d.inflight),
            ("dead", d.dead),
        ] {
            self.queue_depth.with_label_values(&[state]).set(v as i64);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on invalid metric families, which `new` rules out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::{Component, Metrics};

    /// The families `m` renders, with every labelled metric given a series first (a family
    /// without series is not rendered).
    fn families(m: &Metrics) -> BTreeSet<String> {
        m.http_requests.with_label_values(&["/x", "GET", "200"]);
        m.http_duration.with_label_values(&["/x", "GET"]);
        m.submissions.with_label_values(&["accepted"]);
        m.decisions.with_label_values(&["held", ""]);
        m.queue_depth.with_label_values(&["ready"]);
        m.payment_webhooks.with_label_values(&["confirmed"]);
        m.webhook_deliveries.with_label_values(&["delivered"]);
        m.db_pool.with_label_values(&["idle"]);
        m.registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect()
    }

    #[test]
    fn every_metric_is_exported_by_some_process_and_owned_ones_only() {
        let all = families(&Metrics::new());
        let by = |c| families(&Metrics::for_component(c));
        let (ingress, workers, scheduler) = (
            by(Component::Ingress),
            by(Component::Workers),
            by(Component::Scheduler),
        );
        let union: BTreeSet<_> = ingress
            .iter()
            .chain(&workers)
            .chain(&scheduler)
            .cloned()
            .collect();
        assert_eq!(union, all, "a metric no process exports");
        for set in [&ingress, &workers, &scheduler] {
            assert!(
                set.contains("slotq_db_pool_connections") && set.contains("slotq_shutting_down")
            );
        }
        assert!(ingress.contains("slotq_http_requests_total"));
        assert!(!workers.contains("slotq_http_requests_total"));
        assert!(!ingress.contains("slotq_outbox_lag_seconds"));
        assert!(!scheduler.contains("slotq_queue_depth"));
        assert!(workers.contains("slotq_queue_depth") && ingress.contains("slotq_queue_depth"));
        assert!(scheduler.contains("slotq_holds_expired_total"));
        assert!(!workers.contains("slotq_holds_expired_total"));
    }

    #[test]
    fn an_unexported_metric_can_still_be_updated() {
        let m = Metrics::for_component(Component::Scheduler);
        m.decisions.with_label_values(&["held", ""]).inc();
        m.holds_expired.inc();
        let text = m.render();
        assert!(!text.contains("slotq_booking_decisions_total"), "{text}");
        assert!(text.contains("slotq_holds_expired_total 1"), "{text}");
    }
}
