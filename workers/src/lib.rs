//! slotq-workers: the apalis worker pool that turns queued booking requests into durable
//! decisions, in batches (see [`hold_batcher`]).
//!
//! Each process registers one apalis worker with a unique name (host + pid + random suffix),
//! so a killed process's in-flight jobs are recognisable as orphans: once its heartbeat is
//! `WORKER_HEARTBEAT_MS × WORKER_MISSED_HEARTBEATS` old, a live worker re-enqueues them.

pub mod cloudevent;
pub mod hold_batcher;
pub mod outbound;
pub mod outbox_relay;
pub mod webhook_dispatcher;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use apalis::prelude::*;
use slotq_redis::fast_path::FastPath;
use slotq_redis::queue::HoldTask;
use slotq_runtime::config::Config;
use slotq_runtime::metrics::Metrics;
use slotq_runtime::shutdown::Shutdown;
use slotq_runtime::tasks::Tasks;

use crate::hold_batcher::{Batcher, Committer};

/// The job handler: hands the job's requests to the batcher and waits until every one of
/// them is committed. An error leaves the whole job to apalis' retry scheduling; the requests
/// already decided get their recorded decision back when it runs again.
async fn handle(task: HoldTask, batcher: Data<Batcher>) -> Result<(), BoxDynError> {
    // The ingress request id travels in each job, so worker logs join the ingress logs.
    let spans: Vec<tracing::Span> = task
        .holds
        .iter()
        .map(|j| {
            tracing::info_span!("hold", request = %j.request_id, request_id = j.trace_id.as_deref().unwrap_or("-"))
        })
        .collect();
    match batcher.decide_all(task.holds).await {
        Ok(()) => {
            for span in &spans {
                span.in_scope(|| tracing::debug!("hold decided"));
            }
            Ok(())
        }
        Err(e) => {
            for span in &spans {
                span.in_scope(
                    || tracing::warn!(error = %e, "hold not decided; apalis will retry its job"),
                );
            }
            Err(e.into())
        }
    }
}

/// Every second: moves due retries to the ready list in chunks (`queue::promote_due`), and
/// exports the hold queue's depth from the workers too, so alerts and autoscalers reading
/// `/metrics` still see the queue when ingress is down or scaled to zero.
fn spawn_depth_refresher(
    redis: redis::aio::ConnectionManager,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    tasks: &Tasks,
) {
    let shutdown = tasks.shutdown().clone();
    tasks.spawn_restarting("queue depth refresher", move || {
        let (mut redis, config, metrics, shutdown) = (
            redis.clone(),
            config.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = shutdown.clone().wait() => return,
                }
                if let Err(e) =
                    slotq_redis::queue::promote_due(&mut redis, &config.queue(), 1000).await
                {
                    tracing::debug!(error = %e, "could not promote due retries");
                }
                match slotq_redis::queue::depth(&mut redis, &config.queue()).await {
                    Ok(d) => metrics.observe_queue(&d),
                    Err(e) => tracing::debug!(error = %e, "queue depth unavailable"),
                }
            }
        }
    });
}

/// Wakes an idle worker every `period` to fetch again.
///
/// apalis-core 1.0's `IntervalStrategy` (`poll_with_interval`) re-arms its timer after it fires
/// without polling it, so the timer never registers a waker again: after the first empty fetch
/// an idle worker slept until its next heartbeat (2 s), and at 90 requests/s the p99 decision
/// took 1.9 s. This one re-arms and polls until it is pending.
struct Tick {
    period: Duration,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Tick {
    fn every(period: Duration) -> Self {
        Self {
            period,
            sleep: Box::pin(tokio::time::sleep(period)),
        }
    }
}

impl PollStrategy for Tick {
    fn poll_drive(
        &mut self,
        cx: &mut std::task::Context<'_>,
        _snapshot: &PollSnapshot,
    ) -> std::task::Poll<Option<()>> {
        use std::future::Future;
        let mut fired = false;
        while self.sleep.as_mut().poll(cx).is_ready() {
            fired = true;
            let next = tokio::time::Instant::now() + self.period;
            self.sleep.as_mut().reset(next);
        }
        if fired {
            std::task::Poll::Ready(Some(()))
        } else {
            std::task::Poll::Pending
        }
    }
}

/// A unique worker name: host, pid and a random suffix.
pub fn worker_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    format!(
        "slotq-worker-{host}-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Runs apalis workers until `shutdown`, one at a time, each under a fresh unique name.
///
/// apalis ends a worker for good on the first failed fetch (a Redis restart, a refused
/// script): the process would then sit idle while the queue grows. So a failed worker is
/// replaced after a backoff (0.5 s doubling to 30 s). The replacement gets a new name: the
/// failed one's claimed jobs are orphans that heartbeat recovery re-enqueues, and any of them
/// already decided get their recorded decision back.
async fn supervise(
    config: &Arc<Config>,
    redis: &redis::aio::ConnectionManager,
    batcher: Batcher,
    metrics: &Arc<Metrics>,
    shutdown: &Shutdown,
    first_name: String,
) {
    let mut name = first_name;
    let mut backoff = Duration::from_millis(500);
    loop {
        let started = std::time::Instant::now();
        if let Err(e) =
            slotq_redis::queue::promote_due(&mut redis.clone(), &config.queue(), 1000).await
        {
            tracing::warn!(error = %e, "could not promote due retries");
        }
        let storage = slotq_redis::queue::hold_storage(redis.clone(), &config.queue());
        let worker = WorkerBuilder::new(name.clone())
            .backend(
                storage.poll_with_strategy(Tick::every(Duration::from_millis(
                    config.poll_interval_ms,
                ))),
            )
            .concurrency(config.worker_concurrency)
            .data(batcher.clone())
            .build(handle);
        let (stop, m) = (shutdown.clone(), metrics.clone());
        let result = worker
            .run_until(async move {
                stop.wait().await;
                m.shutting_down.set(1);
                Ok::<(), std::io::Error>(())
            })
            .await;
        if shutdown.is_stopping() {
            return;
        }
        match result {
            Ok(()) => tracing::error!(worker = %name, "worker stopped by itself; starting another"),
            Err(e) => {
                tracing::error!(worker = %name, error = %e, "worker failed; starting another")
            }
        }
        metrics.worker_restarts.inc();
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_millis(500);
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.clone().wait() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
        name = worker_name();
    }
}

/// Runs the worker pool until `shutdown`; then stops fetching, lets claimed jobs finish their
/// batch and returns. Returns the admin address through `on_admin` once bound.
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
        readiness,
    } = slotq_runtime::process::start(
        &config,
        slotq_runtime::metrics::Component::Workers,
        config.db_max_connections,
        &shutdown,
        on_admin,
    )
    .await?;
    let tasks = Tasks::new(shutdown.clone(), metrics.task_failures.clone());
    spawn_depth_refresher(redis.clone(), config.clone(), metrics.clone(), &tasks);

    let batcher = hold_batcher::start(
        Committer {
            lookup: slotq_store::lookup::Lookup::new(pool.clone()),
            pool,
            fast: FastPath::new(redis.clone(), &config.redis_namespace),
            metrics: metrics.clone(),
            config: config.clone(),
        },
        &tasks,
    );
    let name = worker_name();
    outbound::start(&config, metrics.clone(), readiness, &tasks, &name)
        .await
        .context("starting the outbox relay and the webhook dispatcher")?;
    tracing::info!(worker = %name, concurrency = config.worker_concurrency, batch_max = config.batch_max, "slotq-workers started");
    if config.worker_concurrency < config.batch_max {
        tracing::warn!(
            concurrency = config.worker_concurrency,
            batch_max = config.batch_max,
            "WORKER_CONCURRENCY is below BATCH_MAX: batches fill only when ingress groups requests into jobs, i.e. under load (set it to at least BATCH_MAX)"
        );
    }
    supervise(&config, &redis, batcher, &metrics, &shutdown, name).await;
    // The worker (and with it every Batcher clone) is gone: committers drain and stop, and
    // so do the relay and the dispatcher. A critical task's death is reported here (exit 1).
    tasks.wait().await?;
    tracing::info!("slotq-workers stopped");
    Ok(())
}
