//! The group-commit batcher.
//!
//! apalis runs up to `WORKER_CONCURRENCY` job handlers at once; each hands its job's booking
//! requests (one job carries what ingress admitted in one call) to the batcher and waits.
//! `BATCH_COMMITTERS` committer tasks take turns at the queue: one gathers up to `BATCH_MAX`
//! requests (or whatever arrived within `BATCH_LINGER_MS` of the first), then decides them in
//! one transaction (`slotq_store::holds::commit_batch`) while the next committer gathers
//! the following batch. A handler returns, and apalis acknowledges its job, only after every
//! one of its requests' decisions committed; if the process dies first, the job is redelivered
//! and the recorded decisions are returned again.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::Utc;
use slotq_domain::request::{RejectionReason, RequestKind, RequestOutcome};
use slotq_redis::fast_path::FastPath;
use slotq_redis::queue::HoldJob;
use slotq_runtime::config::Config;
use slotq_runtime::metrics::Metrics;
use slotq_runtime::tasks::Tasks;
use slotq_store::holds::{self, BatchError, Decided, HoldInput, Verdict};
use slotq_store::lookup::Lookup;
use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};

/// A booking request waiting for its batch.
struct Pending {
    job: HoldJob,
    done: oneshot::Sender<Result<(), String>>,
}

/// Handle given to job handlers.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Pending>,
}

impl Batcher {
    /// Hands a job's requests to the batcher; resolves once every one of their decisions is
    /// committed (they may land in different batches), or with the first failure.
    pub async fn decide_all(&self, jobs: Vec<HoldJob>) -> Result<(), String> {
        let mut waiting = Vec::with_capacity(jobs.len());
        for job in jobs {
            let (done, rx) = oneshot::channel();
            self.tx
                .send(Pending { job, done })
                .await
                .map_err(|_| "batcher stopped".to_string())?;
            waiting.push(rx);
        }
        for rx in waiting {
            rx.await
                .map_err(|_| "batcher dropped the job".to_string())??;
        }
        Ok(())
    }
}

/// What committers need.
pub struct Committer {
    /// Database.
    pub pool: PgPool,
    /// Redis fast path, updated after each commit.
    pub fast: FastPath,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Batch size, linger, TTL, horizon.
    pub config: Arc<Config>,
    /// Cached schedules and patients: a batch reads only what is not there (see
    /// `slotq_store::lookup` for why a stale schedule cannot decide a hold).
    pub lookup: Lookup,
}

/// Starts the committers as critical tasks of `tasks` (a dead committer would leave its share
/// of the batches undecided, so the process stops instead); they end once every [`Batcher`]
/// clone is dropped and the queue is drained.
pub fn start(committer: Committer, tasks: &Tasks) -> Batcher {
    let (tx, rx) = mpsc::channel(committer.config.worker_concurrency.max(1) * 2);
    let rx = Arc::new(Mutex::new(rx));
    let committer = Arc::new(committer);
    for _ in 0..committer.config.committers {
        let (rx, c) = (rx.clone(), committer.clone());
        tasks.spawn_critical("hold committer", async move {
            while let Some(batch) = gather(&rx, c.config.batch_max, c.config.batch_linger).await {
                c.run_batch(batch).await;
            }
        });
    }
    Batcher { tx }
}

/// Waits for a first job, then collects more until the batch is full or the linger is over.
async fn gather(
    rx: &Mutex<mpsc::Receiver<Pending>>,
    max: usize,
    linger: Duration,
) -> Option<Vec<Pending>> {
    let mut rx = rx.lock().await;
    let first = rx.recv().await?;
    let mut batch = Vec::with_capacity(max);
    batch.push(first);
    let deadline = tokio::time::Instant::now() + linger;
    while batch.len() < max {
        // Take what is already there without waiting…
        while batch.len() < max {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        if batch.len() >= max {
            break;
        }
        // …then wait for more until the linger is over.
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(p)) => batch.push(p),
            Ok(None) | Err(_) => break,
        }
    }
    Some(batch)
}

const MAX_ATTEMPTS: u32 = 8;

impl Committer {
    async fn run_batch(&self, batch: Vec<Pending>) {
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            match self.decide(&batch).await {
                Ok(decided) => break Ok(decided),
                Err(e) if e.is_transient() && attempt < MAX_ATTEMPTS => {
                    self.metrics.batch_retries.inc();
                    // Exponential backoff with jitter: 10 ms, 20 ms, … capped at 1 s.
                    let base = 10u64 << (attempt - 1).min(7);
                    let jitter = u64::from(Utc::now().timestamp_subsec_micros() % 10);
                    tracing::warn!(error = %e, attempt, "batch failed; retrying");
                    tokio::time::sleep(Duration::from_millis(base.min(1000) + jitter)).await;
                }
                Err(e) => break Err(e),
            }
        };
        match result {
            Ok(decided) => {
                let views: Vec<_> = decided.iter().map(|d| d.view.clone()).collect();
                let freed: Vec<_> = decided
                    .iter()
                    .filter_map(|d| {
                        d.freed
                            .map(|(request, slot)| (request, d.view.practitioner_id, slot, true))
                    })
                    .collect();
                if let Err(e) = self.fast.booking_changed(&freed).await {
                    tracing::warn!(error = %e, "could not free rescheduled slots in Redis");
                }
                if let Err(e) = self.fast.publish_decisions(&views).await {
                    // PostgreSQL holds the decisions; polls fall back to it.
                    tracing::warn!(error = %e, "could not update the Redis fast path");
                }
                if !freed.is_empty() {
                    self.invalidate_moved_days(&decided).await;
                }
                self.observe(&decided);
                for p in batch {
                    let _ = p.done.send(Ok(()));
                }
            }
            Err(e) => {
                // The jobs stay unacknowledged; apalis schedules them again.
                tracing::error!(error = %e, jobs = batch.len(), "batch failed; jobs will be retried");
                for p in batch {
                    let _ = p.done.send(Err(e.to_string()));
                }
            }
        }
    }

    /// The decisions' own Redis updates cannot tell where a moved booking ended up: within a
    /// batch, an earlier reschedule of a booking marks the slot that a later one of the same
    /// batch moved it away from; across batches (ordered by the booking's row lock), two
    /// committers' updates land in either order. Either way a free slot would be refused by
    /// the pre-check until the bitmap expires. So after a batch that moved bookings, the
    /// bitmaps of every day a move left or reached are dropped (and their change counters
    /// bumped), then rebuilt from PostgreSQL with a compare-and-set that no later change can
    /// lose. Nothing derived from an earlier read of PostgreSQL is written, so two such batches
    /// cannot leave a stale bit whatever the order of their updates.
    async fn invalidate_moved_days(&self, decided: &[Decided]) {
        let mut days: Vec<(uuid::Uuid, chrono::NaiveDate)> = decided
            .iter()
            .filter(|d| d.view.kind == RequestKind::Reschedule && d.view.booking_id.is_some())
            .flat_map(|d| {
                let p = d.view.practitioner_id;
                let from = d.freed.map(|(_, slot)| (p, slot.date_naive()));
                from.into_iter()
                    .chain(std::iter::once((p, d.view.slot_start.date_naive())))
            })
            .collect();
        days.sort_unstable();
        days.dedup();
        if let Err(e) = self.fast.invalidate_days(&days).await {
            tracing::warn!(error = %e, "could not drop the availability of rescheduled days");
            return;
        }
        // Rebuilt at once, so the submission pre-check refuses taken slots of those days
        // again. A rebuild reads the change counter before PostgreSQL and stores only if no
        // change came in between; if one did, the day stays dropped until its next read.
        if let Err(e) =
            slotq_redis::availability::rebuild_pairs(&self.pool, &self.fast, &days).await
        {
            tracing::warn!(error = %e, "could not rebuild the availability of rescheduled days");
        }
    }

    async fn decide(&self, batch: &[Pending]) -> Result<Vec<Decided>, BatchError> {
        let mut practitioners: Vec<_> = batch.iter().map(|p| p.job.practitioner_id).collect();
        practitioners.sort_unstable();
        practitioners.dedup();
        let mut patients: Vec<_> = batch.iter().map(|p| p.job.patient_id).collect();
        patients.sort_unstable();
        patients.dedup();
        // Two independent reads, on two connections at once (usually both from the cache).
        let (schedules, known) = tokio::try_join!(
            self.lookup.schedules(&practitioners),
            self.lookup.known_patients(&patients),
        )?;
        let now = Utc::now();
        let inputs: Vec<HoldInput> = batch
            .iter()
            .map(|p| {
                let j = &p.job;
                let verdict = match schedules.get(&j.practitioner_id) {
                    None => Verdict::Reject(RejectionReason::UnknownPractitioner),
                    Some(_) if !known.contains(&j.patient_id) => {
                        Verdict::Reject(RejectionReason::UnknownPatient)
                    }
                    Some(s) => {
                        match s
                            .schedule
                            .check(j.slot_start, now, self.config.booking_horizon_days)
                        {
                            Ok(slot_end) => Verdict::Candidate {
                                country_code: s.country_code.clone(),
                                slot_end,
                            },
                            Err(problem) => Verdict::Reject(problem.reason()),
                        }
                    }
                };
                HoldInput {
                    request_id: j.request_id,
                    patient_id: j.patient_id,
                    practitioner_id: j.practitioner_id,
                    slot_start: j.slot_start,
                    submitted_at: j.submitted_at,
                    idempotency_key: j.idempotency_key.clone(),
                    reschedule: j.reschedule,
                    actor: j
                        .actor
                        .clone()
                        .map(|a| (a, j.actor_role.clone().unwrap_or_default())),
                    verdict,
                }
            })
            .collect();
        let started = Instant::now();
        let hours_seen: Vec<_> = schedules
            .iter()
            .map(|(id, s)| (*id, s.hours_version))
            .collect();
        let decided =
            match holds::commit_batch(&self.pool, &inputs, &hours_seen, self.config.hold_ttl).await
            {
                Err(BatchError::HoursChanged) => {
                    for p in &practitioners {
                        self.lookup.forget_schedule(*p);
                    }
                    return Err(BatchError::HoursChanged);
                }
                other => other?,
            };
        self.metrics
            .commit_duration
            .observe(started.elapsed().as_secs_f64());
        Ok(decided)
    }

    fn observe(&self, decided: &[Decided]) {
        let m = &self.metrics;
        let fresh: Vec<_> = decided.iter().filter(|d| d.fresh).collect();
        m.batch_size.observe(fresh.len() as f64);
        let now = Utc::now();
        for d in fresh {
            let v = &d.view;
            // Only rejections carry a reason (a rejected reschedule names its booking too).
            let outcome = if v.reason.is_none() {
                RequestOutcome::Held
            } else {
                RequestOutcome::Rejected
            };
            let reason = v.reason.map_or("", RejectionReason::as_str);
            m.decisions
                .with_label_values(&[outcome.as_str(), reason])
                .inc();
            let at = v.decided_at.unwrap_or(now);
            m.decision_latency
                .observe((at - v.submitted_at).num_microseconds().unwrap_or(0) as f64 / 1e6);
            tracing::debug!(request = %v.id, %outcome, reason, "decided");
        }
    }
}
