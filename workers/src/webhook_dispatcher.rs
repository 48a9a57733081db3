//! The webhook dispatcher: turns outbox rows into signed HTTP deliveries to the clients'
//! subscriptions, retried with exponential backoff and jitter, then dead-lettered.
//!
//! It reads the outbox (through its own cursor), not the Kafka topic, so it works with the
//! relay off. Two loops:
//! - **fan-out**: lock the cursor (`outbox_cursors`; one dispatcher at a time), read the rows
//!   after it that no running transaction can still add to (`outbox::undispatched_after`),
//!   insert one `pending` delivery per matching active subscription, move the cursor — one short
//!   transaction, and no write to the outbox rows themselves;
//! - **delivery**: claim due deliveries with a lease (`db::webhooks::claim_due`), POST each
//!   (at most `WEBHOOK_CONCURRENCY` in flight, each bounded by `WEBHOOK_TIMEOUT_MS`), record the
//!   attempt: 2xx delivered; `410 Gone` disables the subscription; anything else (another
//!   status, a timeout, a refused or failed connection) is retried after
//!   `min(WEBHOOK_RETRY_BASE_MS × 2^(n−1), WEBHOOK_RETRY_MAX_MS)` with equal jitter (half fixed,
//!   half random) until `WEBHOOK_RETRY_WINDOW_SECS` (24 h) have passed, then dead-lettered.
//!
//! Requests follow the Standard Webhooks spec: `webhook-id` is the event id (the same on every
//! retry and redelivery, for the receiver's deduplication), `webhook-timestamp` the attempt's
//! unix time, `webhook-signature` `v1,<base64 HMAC-SHA256>` of `id.timestamp.body`. Delivery is
//! at least once and unordered (a retried event can arrive after a later one).
//!
//! The SSRF guard ([`slotq_security::webhooks::target`]) is enforced where it matters, at
//! connection time: IP-literal hosts are checked before the request, host names through a DNS
//! resolver that drops private and loopback addresses, so a name that resolves (or later
//! re-resolves) into the private network is never connected to. Redirects are not followed and
//! proxies from the environment are ignored, for the same reason.
//!
//! Longer than most modules: fan-out, delivery, retry and dead-lettering share one state machine of a delivery.

use std::{
    error::Error as StdError,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use chrono::Utc;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use slotq_runtime::config::{OutboxConfig, WebhookConfig};
use slotq_runtime::metrics::Metrics;
use slotq_runtime::shutdown::Shutdown;
use slotq_security::webhooks::signature::Secret;
use slotq_security::webhooks::target::{self, TargetError};
use slotq_store::{
    outbox,
    webhooks::{self, Attempt, AttemptResult, DueDelivery, NewDelivery},
};
use sqlx::PgPool;
use tokio::{sync::Notify, task::JoinSet};
use uuid::Uuid;

use crate::{cloudevent, outbox_relay::pause};

/// The dispatcher's settings and handles.
pub struct Dispatcher {
    /// Its own small pool (not the booking path's).
    pub pool: PgPool,
    /// HTTP client with the SSRF-guarding resolver.
    pub http: reqwest::Client,
    /// Outbox batch and polling.
    pub outbox: OutboxConfig,
    /// Timeouts, retries, concurrency.
    pub config: WebhookConfig,
    /// Metrics of the process.
    pub metrics: Arc<Metrics>,
    /// Wakes the delivery loop when the fan-out created deliveries.
    pub wake: Notify,
}

/// The outbound HTTP client: timeout, no redirects, no proxy, and the guarded resolver.
pub fn http_client(config: &WebhookConfig) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("slotq-webhooks/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(GuardedResolver {
            allow_private: config.allow_private,
        }))
        .build()
}

impl Dispatcher {
    /// Runs both loops until `shutdown`; attempts in flight finish first.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        tracing::info!("webhook dispatcher started");
        let fan_out = tokio::spawn(self.clone().fan_out_loop(shutdown.clone()));
        self.clone().delivery_loop(shutdown).await;
        let _ = fan_out.await;
        tracing::info!("webhook dispatcher stopped");
    }

    async fn fan_out_loop(self: Arc<Self>, shutdown: Shutdown) {
        let mut lag_observed: Option<Instant> = None;
        let mut failures: u32 = 0;
        while !shutdown.is_stopping() {
            if lag_observed.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                match outbox::dispatch_lag_seconds(&self.pool).await {
                    Ok(lag) => self.metrics.webhook_dispatch_lag.set(lag),
                    Err(e) => tracing::debug!(error = %e, "dispatch lag unavailable"),
                }
                lag_observed = Some(Instant::now());
            }
            match self.fan_out().await {
                Ok(n) => {
                    failures = 0;
                    if n < self.outbox.batch as usize {
                        pause(self.outbox.poll_interval, &shutdown).await;
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = ?e, "webhook fan-out failed; retrying");
                    pause(self.outbox.poll_interval * failures.min(50), &shutdown).await;
                }
            }
        }
    }

    /// One fan-out transaction; returns how many outbox rows it handled.
    pub async fn fan_out(&self) -> anyhow::Result<usize> {
        let mut tx = self.pool.begin().await.context("begin")?;
        let Some(cursor) = outbox::lock_dispatch_cursor(&mut tx)
            .await
            .context("locking the dispatch cursor")?
        else {
            // Another dispatcher is fanning out.
            tx.commit().await.context("commit")?;
            return Ok(0);
        };
        // Nothing is written, and no row locked, until there are rows to fan out: an idle poll
        // is a read-only transaction, whose commit waits for no WAL flush.
        let wanted = webhooks::wanted_event_types(&mut tx)
            .await
            .context("reading subscriptions")?;
        let batch = self.outbox.batch;
        // Where the next rows end and how many there are; the rows themselves only when a
        // subscription wants some event (with none, reading and decoding every row of a busy
        // outbox only to move the cursor was 8 % of the workers).
        let mut claimed = Vec::new();
        let mut end = if wanted.is_empty() {
            outbox::skip_after(&mut tx, &cursor, batch)
                .await
                .context("skipping outbox rows")?
        } else {
            claimed = outbox::undispatched_after(&mut tx, &cursor, batch, &wanted)
                .await
                .context("reading outbox rows")?;
            end_of(&claimed)
        };
        if end.is_none() {
            tx.commit().await.context("commit")?;
            return Ok(0);
        }
        let routes = webhooks::active_routes(&mut tx)
            .await
            .context("locking subscriptions")?;
        let mut locked: Vec<String> = routes.iter().flat_map(|r| r.events.clone()).collect();
        locked.sort_unstable();
        locked.dedup();
        if locked != wanted {
            // A subscription changed in between: read the rows again with the payloads the
            // locked subscriptions want.
            claimed = outbox::undispatched_after(&mut tx, &cursor, batch, &locked)
                .await
                .context("reading outbox rows")?;
            end = end_of(&claimed);
        }
        let Some((last, handled)) = end else {
            tx.commit().await.context("commit")?;
            return Ok(0);
        };
        let rows: Vec<_> = claimed.into_iter().map(|u| u.event).collect();
        let mut deliveries = Vec::new();
        for row in &rows {
            let mut body = None;
            for route in routes.iter().filter(|r| r.events.contains(&row.event_type)) {
                let body = match &body {
                    Some(b) => b,
                    None => body.insert(cloudevent::to_value(row).context("encoding")?),
                };
                deliveries.push(NewDelivery {
                    id: Uuid::now_v7(),
                    subscription_id: route.id,
                    event_id: row.event_id,
                    event_type: row.event_type.clone(),
                    body: body.clone(),
                });
            }
        }
        webhooks::insert_deliveries(&mut tx, &deliveries)
            .await
            .context("creating deliveries")?;
        outbox::advance_dispatch_cursor(&mut tx, &last)
            .await
            .context("advancing the dispatch cursor")?;
        tx.commit().await.context("commit")?;
        if !deliveries.is_empty() {
            self.wake.notify_one();
        }
        Ok(usize::try_from(handled).unwrap_or(0))
    }

    /// Claims due deliveries and runs each attempt as its own task, at most
    /// `WEBHOOK_CONCURRENCY` at once. An attempt holds no connection while it waits for the
    /// endpoint and records its result in one statement, and as a task it keeps running while
    /// this loop waits for the pool to claim more: nothing here can wait on a connection that
    /// an unpolled future holds.
    async fn delivery_loop(self: Arc<Self>, shutdown: Shutdown) {
        // An attempt's lease: its timeout plus time to record the result.
        let lease = (self.config.timeout + Duration::from_secs(30)).as_secs_f64();
        let mut in_flight: JoinSet<()> = JoinSet::new();
        loop {
            while let Some(done) = in_flight.try_join_next() {
                reaped(done);
            }
            if shutdown.is_stopping() {
                // Attempts in flight finish (each within WEBHOOK_TIMEOUT_MS) and are recorded.
                while let Some(done) = in_flight.join_next().await {
                    reaped(done);
                }
                return;
            }
            let free = self.config.concurrency.saturating_sub(in_flight.len());
            if free > 0 {
                let limit = i64::try_from(free).unwrap_or(i64::MAX);
                match webhooks::claim_due(&self.pool, limit, lease).await {
                    Ok(due) => {
                        for d in due {
                            in_flight.spawn(self.clone().attempt(d));
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "claiming webhook deliveries failed"),
                }
            }
            tokio::select! {
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => reaped(done),
                () = tokio::time::sleep(self.outbox.poll_interval) => {}
                () = self.wake.notified() => {}
                () = shutdown.clone().wait() => {}
            }
        }
    }

    /// Sends one delivery and records what happened.
    async fn attempt(self: Arc<Self>, d: DueDelivery) {
        let started_at = Utc::now();
        let clock = Instant::now();
        let sent = self.send(&d).await;
        let duration_ms = i32::try_from(clock.elapsed().as_millis()).unwrap_or(i32::MAX);
        let (result, outcome) = match sent.class {
            Class::Delivered => (AttemptResult::Delivered, "delivered"),
            Class::Gone => (AttemptResult::Gone, "gone"),
            Class::Failed | Class::Blocked => {
                let now = Utc::now();
                let window = chrono::Duration::from_std(self.config.retry_window)
                    .unwrap_or(chrono::Duration::MAX);
                if now - d.retry_from >= window {
                    (AttemptResult::Dead, "dead_lettered")
                } else {
                    let delay = retry_delay(
                        d.attempts,
                        self.config.retry_base,
                        self.config.retry_max,
                        jitter(),
                    );
                    let next =
                        now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
                    let outcome = if sent.class == Class::Blocked {
                        "blocked"
                    } else {
                        "failed"
                    };
                    (AttemptResult::Retry(next), outcome)
                }
            }
        };
        self.metrics
            .webhook_deliveries
            .with_label_values(&[outcome])
            .inc();
        if result == AttemptResult::Dead {
            self.metrics.webhook_dead_letters.inc();
            tracing::warn!(delivery = %d.id, subscription = %d.subscription_id, attempts = d.attempts, error = ?sent.error, "webhook delivery dead-lettered");
        } else if result == AttemptResult::Gone {
            tracing::info!(subscription = %d.subscription_id, "endpoint answered 410 Gone: subscription disabled");
        }
        let attempt = Attempt {
            delivery_id: d.id,
            subscription_id: d.subscription_id,
            attempt: d.attempts,
            started_at,
            duration_ms,
            status_code: sent.status,
            error: sent.error,
            result,
        };
        // A result that cannot be recorded is not lost: the lease runs out and the delivery is
        // attempted again (the receiver deduplicates on webhook-id).
        if let Err(e) = webhooks::record_attempt(&self.pool, &attempt).await {
            tracing::warn!(error = %e, delivery = %d.id, "could not record a webhook attempt");
        }
    }

    async fn send(&self, d: &DueDelivery) -> Sent {
        let url = match target::parse(&d.url, self.config.allow_private) {
            Ok(u) => u,
            Err(e @ TargetError::PrivateAddress(_)) => return Sent::blocked(e.to_string()),
            Err(e) => return Sent::failed(None, format!("invalid URL: {e}")),
        };
        let secret = match Secret::parse(&d.secret) {
            Ok(s) => s,
            Err(e) => return Sent::failed(None, format!("unusable signing secret: {e}")),
        };
        let body = match serde_json::to_vec(&d.body) {
            Ok(b) => b,
            Err(e) => return Sent::failed(None, format!("encoding the body: {e}")),
        };
        let id = d.event_id.to_string();
        let timestamp = Utc::now().timestamp();
        let signature = secret.sign(&id, timestamp, &body);
        let res = self
            .http
            .post(url)
            // Structured mode of the CloudEvents HTTP binding: the whole event is the body.
            .header(
                reqwest::header::CONTENT_TYPE,
                crate::cloudevent::CONTENT_TYPE,
            )
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        match res {
            Ok(r) if r.status().is_success() => Sent {
                class: Class::Delivered,
                status: Some(i32::from(r.status().as_u16())),
                error: None,
            },
            Ok(r) if r.status() == reqwest::StatusCode::GONE => Sent {
                class: Class::Gone,
                status: Some(410),
                error: Some("410 Gone".into()),
            },
            Ok(r) => Sent::failed(
                Some(i32::from(r.status().as_u16())),
                format!("answered {}", r.status()),
            ),
            Err(e) => {
                if let Some(b) = find_source::<Blocked>(&e) {
                    Sent::blocked(b.to_string())
                } else if e.is_timeout() {
                    Sent::failed(None, format!("timed out after {:?}", self.config.timeout))
                } else {
                    Sent::failed(None, chain(&e))
                }
            }
        }
    }
}

/// Logs an attempt task that panicked (its delivery is retried when the lease runs out).
/// The position of the last of `rows` and how many they are; `None` for none.
fn end_of(rows: &[outbox::Undispatched]) -> Option<(outbox::Cursor, i64)> {
    rows.last()
        .map(|u| (u.at.clone(), i64::try_from(rows.len()).unwrap_or(i64::MAX)))
}

fn reaped(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        tracing::error!(error = %e, "a webhook attempt task failed");
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Delivered,
    Gone,
    Failed,
    Blocked,
}

struct Sent {
    class: Class,
    status: Option<i32>,
    error: Option<String>,
}

impl Sent {
    fn failed(status: Option<i32>, error: String) -> Self {
        Sent {
            class: Class::Failed,
            status,
            error: Some(truncate(error)),
        }
    }

    fn blocked(error: String) -> Self {
        Sent {
            class: Class::Blocked,
            status: None,
            error: Some(truncate(format!("refused: {error}"))),
        }
    }
}

fn truncate(mut s: String) -> String {
    if s.len() > 500 {
        let mut end = 500;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// An error and its causes, `: `-separated.
fn chain(e: &dyn StdError) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn find_source<'a, T: StdError + 'static>(e: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(t) = c.downcast_ref::<T>() {
            return Some(t);
        }
        cur = c.source();
    }
    None
}

/// The delay after failed attempt number `attempt` (1-based): `base × 2^(attempt−1)` capped at
/// `max`, with equal jitter: half of it fixed, half scaled by `jitter` ∈ [0, 1).
pub fn retry_delay(attempt: i32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = u32::try_from(attempt.saturating_sub(1))
        .unwrap_or(0)
        .min(30);
    let capped = base.saturating_mul(1u32 << exp).min(max);
    capped / 2 + capped.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
}

/// A random number in [0, 1).
fn jitter() -> f64 {
    getrandom::u64()
        .map(|r| (r >> 11) as f64 / (1u64 << 53) as f64)
        .unwrap_or(0.5)
}

/// A connection refused by the SSRF guard.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves only to private, loopback or reserved addresses ({ip})")]
struct Blocked {
    host: String,
    ip: IpAddr,
}

/// Resolves with the system resolver and drops the addresses a webhook may not reach.
struct GuardedResolver {
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| target::check_ip(a.ip(), allow_private).is_ok())
                .collect();
            match (allowed.is_empty(), all.first()) {
                (false, _) => Ok(Box::new(allowed.into_iter()) as Addrs),
                (true, Some(first)) => Err(Box::new(Blocked {
                    host,
                    ip: first.ip(),
                }) as Box<dyn StdError + Send + Sync>),
                (true, None) => Err(format!("{host} has no address").into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_with_jitter_and_cap() {
        let base = Duration::from_secs(5);
        let max = Duration::from_secs(3600);
        assert_eq!(retry_delay(1, base, max, 0.0), Duration::from_millis(2500));
        assert_eq!(retry_delay(1, base, max, 1.0), Duration::from_secs(5));
        assert_eq!(retry_delay(2, base, max, 0.0), Duration::from_secs(5));
        assert_eq!(retry_delay(4, base, max, 0.5), Duration::from_secs(30));
        assert_eq!(retry_delay(40, base, max, 1.0), max);
        assert_eq!(retry_delay(40, base, max, 0.0), max / 2);
        assert_eq!(retry_delay(0, base, max, 0.0), Duration::from_millis(2500));
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j));
        }
    }

    #[test]
    fn the_default_schedule_keeps_retrying_for_24_hours() {
        // With the defaults (5 s base, 1 h cap) and the least jitter, count the attempts that
        // fit in the 24 h window: the delivery is retried all along, then dead-lettered.
        let (base, max) = (Duration::from_secs(5), Duration::from_secs(3600));
        let mut elapsed = Duration::ZERO;
        let mut attempt = 1;
        while elapsed < Duration::from_secs(24 * 3600) {
            elapsed += retry_delay(attempt, base, max, 0.0);
            attempt += 1;
        }
        assert!(
            (40..80).contains(&attempt),
            "{attempt} attempts in 24 h with maximal jitter"
        );
    }

    #[tokio::test]
    async fn the_resolver_drops_loopback_unless_private_targets_are_allowed() {
        let guarded = GuardedResolver {
            allow_private: false,
        };
        let err = guarded
            .resolve("localhost".parse().expect("name"))
            .await
            .err()
            .expect("loopback refused");
        assert!(err.downcast_ref::<Blocked>().is_some(), "{err}");
        let open = GuardedResolver {
            allow_private: true,
        };
        let addrs: Vec<SocketAddr> = open
            .resolve("localhost".parse().expect("name"))
            .await
            .expect("resolves")
            .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()));
    }
}
