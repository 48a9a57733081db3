//! Outbound webhooks: subscriptions, deliveries (one per subscription and event) and their
//! attempts.
//!
//! The dispatcher fans outbox rows out into `pending` deliveries, then claims due deliveries
//! with a lease (`next_attempt_at` moves past the attempt's timeout, so a crashed dispatcher's
//! delivery becomes due again), and records each attempt's result. Result updates are guarded
//! by the attempt number, so a late answer from an attempt whose lease ran out changes nothing.
//!
//! Longer than most modules: every statement on the webhook tables lives here (one module per table family).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// A subscription as the API shows it (never with its secret).
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Subscription {
    /// Id (UUIDv7).
    pub id: Uuid,
    /// Where deliveries are POSTed.
    pub url: String,
    /// Event types delivered.
    pub events: Vec<String>,
    /// `active` or `disabled` (after a `410 Gone`).
    pub status: String,
    /// Why it was disabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// When it was disabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_at: Option<DateTime<Utc>>,
}

/// Stores a new subscription.
pub async fn insert_subscription(
    pool: &PgPool,
    id: Uuid,
    url: &str,
    events: &[String],
    secret: &str,
) -> Result<Subscription, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO webhook_subscriptions (id, url, events, secret) VALUES ($1, $2, $3, $4)
         RETURNING id, url, events, status, disabled_reason, created_at, disabled_at",
    )
    .bind(id)
    .bind(url)
    .bind(events)
    .bind(secret)
    .fetch_one(pool)
    .await
}

/// One subscription.
pub async fn get_subscription(
    pool: &PgPool,
    id: Uuid,
) -> Result<Option<Subscription>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, url, events, status, disabled_reason, created_at, disabled_at
         FROM webhook_subscriptions WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Subscriptions in creation order, after the id `after`, at most `limit`.
pub async fn list_subscriptions(
    pool: &PgPool,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Subscription>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, url, events, status, disabled_reason, created_at, disabled_at
         FROM webhook_subscriptions WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Deletes a subscription and its deliveries; false when there was none.
pub async fn delete_subscription(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query("DELETE FROM webhook_subscriptions WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .map(|r| r.rows_affected() == 1)
}

/// An active subscription as the fan-out needs it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Route {
    /// Subscription id.
    pub id: Uuid,
    /// Event types it wants.
    pub events: Vec<String>,
}

/// Active subscriptions, share-locked until `conn`'s transaction ends, so a subscription
/// cannot be disabled or deleted between reading it and inserting its deliveries.
pub async fn active_routes(conn: &mut PgConnection) -> Result<Vec<Route>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, events FROM webhook_subscriptions WHERE status = 'active' ORDER BY id FOR SHARE",
    )
    .fetch_all(conn)
    .await
}

/// The event types some active subscription wants, sorted, without locking anything (the
/// fan-out locks the subscriptions only once it has rows to deliver).
pub async fn wanted_event_types(conn: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT e FROM webhook_subscriptions, unnest(events) AS e
         WHERE status = 'active' ORDER BY e",
    )
    .fetch_all(conn)
    .await
}

/// A delivery to create.
#[derive(Clone, Debug)]
pub struct NewDelivery {
    /// Id (UUIDv7).
    pub id: Uuid,
    /// Subscription.
    pub subscription_id: Uuid,
    /// The outbox event id.
    pub event_id: Uuid,
    /// Its type.
    pub event_type: String,
    /// The request body (the CloudEvent).
    pub body: Value,
}

/// Creates deliveries, due now; an (subscription, event) pair that exists already is skipped.
pub async fn insert_deliveries(
    conn: &mut PgConnection,
    deliveries: &[NewDelivery],
) -> Result<u64, sqlx::Error> {
    if deliveries.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = deliveries.iter().map(|d| d.id).collect();
    let subs: Vec<Uuid> = deliveries.iter().map(|d| d.subscription_id).collect();
    let events: Vec<Uuid> = deliveries.iter().map(|d| d.event_id).collect();
    let types: Vec<&str> = deliveries.iter().map(|d| d.event_type.as_str()).collect();
    let bodies: Vec<&Value> = deliveries.iter().map(|d| &d.body).collect();
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, subscription_id, event_id, event_type, body, next_attempt_at)
         SELECT u.*, now() FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::jsonb[]) AS u
         ON CONFLICT (subscription_id, event_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&subs)
    .bind(&events)
    .bind(&types)
    .bind(&bodies)
    .execute(conn)
    .await
    .map(|r| r.rows_affected())
}

/// A delivery claimed for one attempt.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct DueDelivery {
    /// Delivery id.
    pub id: Uuid,
    /// Subscription.
    pub subscription_id: Uuid,
    /// The event id (`webhook-id`).
    pub event_id: Uuid,
    /// This attempt's number (1 for the first).
    pub attempts: i32,
    /// The body to send.
    pub body: Value,
    /// Start of the retry window.
    pub retry_from: DateTime<Utc>,
    /// Target URL.
    pub url: String,
    /// Signing secret (`whsec_…`).
    pub secret: String,
}

/// Claims up to `limit` due deliveries of active subscriptions, earliest due first: counts
/// the attempt and leases the delivery for `lease_secs`.
pub async fn claim_due(
    pool: &PgPool,
    limit: i64,
    lease_secs: f64,
) -> Result<Vec<DueDelivery>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE webhook_deliveries d
         SET attempts = d.attempts + 1, last_attempt_at = now(),
             next_attempt_at = now() + make_interval(secs => $2)
         FROM webhook_subscriptions s
         WHERE d.id IN (
             SELECT d2.id FROM webhook_deliveries d2
             JOIN webhook_subscriptions s2 ON s2.id = d2.subscription_id
             WHERE d2.status = 'pending' AND d2.next_attempt_at <= now() AND s2.status = 'active'
             ORDER BY d2.next_attempt_at LIMIT $1
             FOR UPDATE OF d2 SKIP LOCKED)
           AND s.id = d.subscription_id
         RETURNING d.id, d.subscription_id, d.event_id, d.attempts, d.body, d.retry_from, s.url, s.secret",
    )
    .bind(limit)
    .bind(lease_secs)
    .fetch_all(pool)
    .await
}

/// What became of one attempt.
#[derive(Clone, Debug, PartialEq)]
pub enum AttemptResult {
    /// 2xx.
    Delivered,
    /// Failed; try again at this instant.
    Retry(DateTime<Utc>),
    /// Failed and the retry window is over: dead-letter it.
    Dead,
    /// `410 Gone`: dead-letter it and disable the subscription (and dead-letter its other
    /// pending deliveries).
    Gone,
}

/// One finished attempt.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// The delivery.
    pub delivery_id: Uuid,
    /// Its subscription.
    pub subscription_id: Uuid,
    /// The attempt number it was claimed with.
    pub attempt: i32,
    /// When the request started.
    pub started_at: DateTime<Utc>,
    /// How long it took.
    pub duration_ms: i32,
    /// The HTTP status, when an answer came.
    pub status_code: Option<i32>,
    /// What went wrong, when something did.
    pub error: Option<String>,
    /// The decision.
    pub result: AttemptResult,
}

/// Records an attempt and its consequence, in one statement (so no transaction is ever left
/// open between two round trips, holding delivery rows that `DELETE` of a subscription needs).
/// Returns false when the delivery had moved on (its lease ran out and another attempt claimed
/// it, or the subscription went away); the attempt is still logged when the delivery exists.
///
/// A `410 Gone` dead-letters the subscription's other pending deliveries too. Two of those
/// recorded at once (two attempts in flight) would each lock its own delivery and then wait for
/// the other's: a deadlock, one result lost. So a `410` first locks its subscription, in a
/// transaction of two statements, and such records run one after the other.
pub async fn record_attempt(pool: &PgPool, a: &Attempt) -> Result<bool, sqlx::Error> {
    if a.result != AttemptResult::Gone {
        return record_attempt_on(pool, a).await;
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT 1 FROM webhook_subscriptions WHERE id = $1 FOR UPDATE")
        .bind(a.subscription_id)
        .execute(&mut *tx)
        .await?;
    let applied = record_attempt_on(&mut *tx, a).await?;
    tx.commit().await?;
    Ok(applied)
}

async fn record_attempt_on<'c, E: sqlx::PgExecutor<'c>>(
    executor: E,
    a: &Attempt,
) -> Result<bool, sqlx::Error> {
    let (status, next): (&str, Option<DateTime<Utc>>) = match a.result {
        AttemptResult::Delivered => ("delivered", None),
        AttemptResult::Retry(at) => ("pending", Some(at)),
        AttemptResult::Dead | AttemptResult::Gone => ("dead", None),
    };
    // The sub-statements share one snapshot: `others` leaves out the delivery `applied`
    // updates, and the `410 Gone` consequences run only when the result was applied.
    let applied: Result<i64, sqlx::Error> = sqlx::query_scalar(
        "WITH logged AS (
             INSERT INTO webhook_delivery_attempts
                 (delivery_id, attempt, started_at, duration_ms, status_code, error)
             SELECT $1, $2, $7, $8, $5, $6
             WHERE EXISTS (SELECT 1 FROM webhook_deliveries WHERE id = $1)
             ON CONFLICT DO NOTHING
         ), applied AS (
             UPDATE webhook_deliveries
             SET status = $3::text, next_attempt_at = $4, last_status_code = $5, last_error = $6,
                 delivered_at = CASE WHEN $3::text = 'delivered' THEN now() END,
                 dead_at = CASE WHEN $3::text = 'dead' THEN now() END
             WHERE id = $1 AND attempts = $2 AND status = 'pending'
             RETURNING subscription_id
         ), disabled AS (
             UPDATE webhook_subscriptions s
             SET status = 'disabled', disabled_at = now(),
                 disabled_reason = 'the endpoint answered 410 Gone'
             FROM applied a
             WHERE $9 AND s.id = a.subscription_id AND s.status = 'active'
         ), others AS (
             UPDATE webhook_deliveries d
             SET status = 'dead', dead_at = now(), next_attempt_at = NULL,
                 last_error = 'subscription disabled: the endpoint answered 410 Gone'
             FROM applied a
             WHERE $9 AND d.subscription_id = a.subscription_id AND d.status = 'pending'
               AND d.id <> $1
         ), late AS (
             -- An attempt that was in flight when another delivery's 410 dead-lettered this
             -- one: its answer is still the delivery's last status code. (No `status` test:
             -- this statement's snapshot may predate the dead-lettering, which it then waits
             -- for; only the conditions re-checked on the new row version may decide.)
             UPDATE webhook_deliveries
             SET last_status_code = $5
             WHERE id = $1 AND attempts = $2 AND last_status_code IS NULL
               AND $5::int IS NOT NULL AND NOT EXISTS (SELECT 1 FROM applied)
         )
         SELECT count(*) FROM applied",
    )
    .bind(a.delivery_id)
    .bind(a.attempt)
    .bind(status)
    .bind(next)
    .bind(a.status_code)
    .bind(a.error.as_deref())
    .bind(a.started_at)
    .bind(a.duration_ms)
    .bind(a.result == AttemptResult::Gone)
    .fetch_one(executor)
    .await;
    match applied {
        Ok(n) => Ok(n == 1),
        // The delivery was deleted (with its subscription) after the statement's snapshot:
        // the attempt's log row has nothing left to belong to.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23503") => Ok(false),
        Err(e) => Err(e),
    }
}

/// A delivery as the API shows it.
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Delivery {
    /// Id (UUIDv7).
    pub id: Uuid,
    /// Subscription.
    pub subscription_id: Uuid,
    /// The event (`webhook-id`).
    pub event_id: Uuid,
    /// Its type.
    pub event_type: String,
    /// `pending`, `delivered` or `dead` (dead-lettered).
    pub status: String,
    /// Attempts made so far.
    pub attempts: i32,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When the last attempt started.
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// HTTP status of the last answer.
    pub last_status_code: Option<i32>,
    /// Error of the last attempt.
    pub last_error: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// When it was delivered.
    pub delivered_at: Option<DateTime<Utc>>,
    /// When it was dead-lettered.
    pub dead_at: Option<DateTime<Utc>>,
}

const DELIVERY_SELECT: &str = "SELECT id, subscription_id, event_id, event_type, status, attempts,
    next_attempt_at, last_attempt_at, last_status_code, last_error, created_at, delivered_at, dead_at
    FROM webhook_deliveries";

/// A subscription's deliveries, newest first, before the id `before`, optionally of one
/// status.
pub async fn list_deliveries(
    pool: &PgPool,
    subscription_id: Uuid,
    status: Option<&str>,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Delivery>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{DELIVERY_SELECT} WHERE subscription_id = $1 AND ($2::text IS NULL OR status = $2)
         AND ($3::uuid IS NULL OR id < $3) ORDER BY id DESC LIMIT $4"
    )))
    .bind(subscription_id)
    .bind(status)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// One delivery of a subscription.
pub async fn get_delivery(
    pool: &PgPool,
    subscription_id: Uuid,
    id: Uuid,
) -> Result<Option<Delivery>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{DELIVERY_SELECT} WHERE subscription_id = $1 AND id = $2"
    )))
    .bind(subscription_id)
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// One recorded attempt, as the API shows it.
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AttemptView {
    /// Attempt number.
    pub attempt: i32,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// How long it took.
    pub duration_ms: i32,
    /// HTTP status, when an answer came.
    pub status_code: Option<i32>,
    /// What went wrong.
    pub error: Option<String>,
}

/// A delivery's attempts, in order.
pub async fn attempts(pool: &PgPool, delivery_id: Uuid) -> Result<Vec<AttemptView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT attempt, started_at, duration_ms, status_code, error
         FROM webhook_delivery_attempts WHERE delivery_id = $1 ORDER BY attempt",
    )
    .bind(delivery_id)
    .fetch_all(pool)
    .await
}

/// Why a redelivery was refused.
#[derive(Debug, thiserror::Error)]
pub enum RedeliverError {
    /// No such delivery in that subscription.
    #[error("no such delivery")]
    NotFound,
    /// Only dead-lettered deliveries can be redelivered.
    #[error("the delivery is {0}, not dead-lettered")]
    NotDead(String),
    /// The subscription is disabled.
    #[error("the subscription is disabled")]
    SubscriptionDisabled,
    /// Database error.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Sends a dead-lettered delivery again: due now, with a fresh retry window.
pub async fn redeliver(
    pool: &PgPool,
    subscription_id: Uuid,
    id: Uuid,
) -> Result<Delivery, RedeliverError> {
    let updated: Option<Delivery> = sqlx::query_as(
        "UPDATE webhook_deliveries d
         SET status = 'pending', next_attempt_at = now(), retry_from = now(), dead_at = NULL
         WHERE d.id = $2 AND d.subscription_id = $1 AND d.status = 'dead'
           AND EXISTS (SELECT 1 FROM webhook_subscriptions s WHERE s.id = $1 AND s.status = 'active')
         RETURNING id, subscription_id, event_id, event_type, status, attempts, next_attempt_at,
                   last_attempt_at, last_status_code, last_error, created_at, delivered_at, dead_at",
    )
    .bind(subscription_id)
    .bind(id)
    .fetch_optional(pool)
    .await?;
    if let Some(d) = updated {
        return Ok(d);
    }
    let Some(d) = get_delivery(pool, subscription_id, id).await? else {
        return Err(RedeliverError::NotFound);
    };
    if d.status != "dead" {
        return Err(RedeliverError::NotDead(d.status));
    }
    Err(RedeliverError::SubscriptionDisabled)
}
