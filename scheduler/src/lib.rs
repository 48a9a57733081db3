//! slotq-scheduler: expires unpaid holds and frees their slots; cleans up apalis' record of
//! finished jobs; deletes outbox events past their retention ([`outbox_retention`]). Safe to
//! run with several replicas: expiry and retention claim rows with `FOR UPDATE SKIP LOCKED`,
//! and the cleanup pops members atomically.

pub mod outbox_retention;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use chrono::Utc;
use redis::aio::ConnectionManager;
use slotq_redis::fast_path::FastPath;
use slotq_runtime::config::Config;
use slotq_runtime::metrics::Metrics;
use slotq_runtime::shutdown::Shutdown;
use sqlx::PgPool;

/// One expiry sweep: expires due holds batch by batch until none is due. Returns how many.
pub async fn sweep(
    pool: &PgPool,
    fast: &FastPath,
    metrics: &Metrics,
    batch: i64,
) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        let expired = slotq_store::bookings::expire_due(pool, batch).await?;
        let now = Utc::now();
        for e in &expired {
            metrics
                .expiry_lag
                .observe((now - e.hold_expires_at).num_milliseconds().max(0) as f64 / 1000.0);
            tracing::info!(booking = %e.id, request = %e.request_id, "hold expired");
        }
        metrics.holds_expired.inc_by(expired.len() as u64);
        let changes: Vec<_> = expired
            .iter()
            .map(|e| (e.request_id, e.practitioner_id, e.slot_start, true))
            .collect();
        if let Err(e) = fast.booking_changed(&changes).await {
            tracing::warn!(error = %e, "could not update the Redis fast path after expiry");
        }
        total += expired.len();
        if (expired.len() as i64) < batch {
            return Ok(total);
        }
    }
}

// apalis-redis keeps every finished job's id in `{queue}:done`, its payload in `{queue}:data`
// and a `{queue}:meta:{id}` hash, forever. The decision is durable in PostgreSQL, so these are
// dropped here, a bounded number per tick.
const CLEANUP_LUA: &str = r"
local ids = redis.call('SPOP', KEYS[1], tonumber(ARGV[1]))
for _, id in ipairs(ids) do
  redis.call('HDEL', KEYS[2], id)
  redis.call('DEL', KEYS[3] .. ':' .. id)
end
return #ids
";

/// Removes up to `limit` finished jobs' bookkeeping from Redis.
pub async fn cleanup_done_jobs(
    conn: &mut ConnectionManager,
    config: &Config,
    limit: usize,
) -> redis::RedisResult<usize> {
    let c = slotq_redis::queue::apalis_config(&config.queue());
    redis::Script::new(CLEANUP_LUA)
        .key(c.done_jobs_set())
        .key(c.job_data_hash())
        .key(c.job_meta_hash())
        .arg(limit)
        .invoke_async(conn)
        .await
}

/// Runs until `shutdown`, finishing the current sweep first.
pub async fn run(
    config: Config,
    shutdown: Shutdown,
    on_admin: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let slotq_runtime::process::Started {
        pool,
        redis,
        metrics,
        ..
    } = slotq_runtime::process::start(
        &config,
        slotq_runtime::metrics::Component::Scheduler,
        config.db_max_connections.min(4),
        &shutdown,
        on_admin,
    )
    .await?;
    let fast = FastPath::new(redis.clone(), &config.redis_namespace);
    let mut conn = redis;
    let mut retention = outbox_retention::Schedule::new(&config);
    let mut tick = tokio::time::interval(config.expiry_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(
        interval_ms = config.expiry_interval.as_millis() as u64,
        "slotq-scheduler started"
    );
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.clone().wait() => break,
        }
        // A sweep is never interrupted: it runs to the end of its transaction.
        if let Err(e) = sweep(&pool, &fast, &metrics, config.expiry_batch).await {
            tracing::error!(error = ?e, "expiry sweep failed; retrying next tick");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // A second look for conflicts after each hours change (a safety net, see
        // `conflicts::recheck`).
        match slotq_store::conflicts::recheck(&pool).await {
            Ok(new) if !new.is_empty() => {
                tracing::info!(
                    bookings = new.len(),
                    "schedule conflicts found after an hours change"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "schedule conflict re-check failed"),
        }
        if let Err(e) = cleanup_done_jobs(&mut conn, &config, 5_000).await {
            tracing::warn!(error = %e, "finished-job cleanup failed");
        }
        retention.tick(&pool, &metrics).await;
    }
    metrics.shutting_down.set(1);
    tracing::info!("slotq-scheduler stopped");
    Ok(())
}
