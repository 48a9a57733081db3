//! `throughput`: `concurrency` clients submit requests for distinct free slots as fast as the
//! stack answers (each waits for its `202`, then submits the next) for `duration`; then the
//! run waits for every accepted request's durable decision.
//!
//! decided/s = decisions / (last `decided_at` − first submission), read from
//! `booking_requests` (PostgreSQL, the truth), so the figure includes draining the queue
//! after submitting stopped. Latencies are `decided_at − submitted_at` as the services
//! recorded them; following each of thousands of requests with a long-poll would cost the
//! ingress more than the thing measured (every decision wakes every waiting poll).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::Utc;

use super::Ctx;
use crate::{
    checks::{self, Decisions},
    dataset,
    report::ThroughputResult,
    stats::{Latency, Statuses, per_sec},
};

/// What the run needs to check afterwards.
pub struct Outcome {
    /// Figures.
    pub result: ThroughputResult,
    /// Decisions of the accepted requests.
    pub decisions: Decisions,
}

/// Runs one throughput measurement; `round` makes its data set distinct.
pub async fn run(ctx: &Ctx, round: usize) -> anyhow::Result<Outcome> {
    let s = &ctx.settings;
    let grid = Arc::new(
        dataset::grid(
            &ctx.pool,
            &ctx.api,
            s.practitioners,
            &format!("tp-{}-{round}", ctx.tag),
        )
        .await?,
    );
    // Open the client's connections before the clock starts.
    let warm: Vec<_> = (0..s.concurrency)
        .map(|_| ctx.api.get("/healthz"))
        .collect();
    futures::future::join_all(warm).await;

    let next = Arc::new(AtomicU64::new(0));
    let start_wall = Utc::now();
    let start = Instant::now();
    let deadline = start + s.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..s.concurrency {
        let (api, grid, next) = (ctx.api.clone(), grid.clone(), next.clone());
        tasks.spawn(async move {
            let (mut lat, mut statuses, mut ids) =
                (Latency::new(), Statuses::default(), Vec::new());
            while Instant::now() < deadline {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some((patient, practitioner, slot)) = grid.nth(k) else {
                    break;
                };
                let t0 = Instant::now();
                match api.submit(patient, practitioner, slot).await {
                    Ok(r) => {
                        lat.record(t0.elapsed());
                        statuses.add(r.status);
                        ids.extend(r.id);
                    }
                    Err(_) => statuses.add_io(),
                }
            }
            (lat, statuses, ids)
        });
    }
    let (mut submit_latency, mut statuses, mut ids) = (Latency::new(), Statuses::default(), vec![]);
    let mut newest = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (l, st, mine) = r?;
        submit_latency.merge(&l);
        statuses.merge(&st);
        newest.extend(mine.last().copied());
        ids.extend(mine);
    }
    let submit_elapsed = start.elapsed();

    // The newest requests are decided last (the queue is FIFO): wait for them with long-polls,
    // then confirm every decision in PostgreSQL.
    let polls: Vec<_> = newest
        .iter()
        .map(|id| ctx.api.decision(*id, s.decision_timeout))
        .collect();
    futures::future::join_all(polls).await;
    let decisions = checks::decisions_when_decided(
        &ctx.pool,
        &ids,
        s.decision_timeout,
        Duration::from_millis(100),
    )
    .await?;
    // Checked: drop the round's holds, or the scheduler would be expiring tens of thousands
    // of them (short TTL of the bench stack) while the next round is measured.
    super::baseline::cleanup(&ctx.pool, &grid.practitioners).await?;

    let window = decisions
        .last_decided
        .map(|l| (l - start_wall).to_std().unwrap_or_default())
        .unwrap_or_default();
    let drain = window.saturating_sub(submit_elapsed);
    let result = ThroughputResult {
        concurrency: s.concurrency,
        practitioners: s.practitioners,
        submit_s: submit_elapsed.as_secs_f64(),
        accepted: ids.len() as u64,
        accepted_per_sec: per_sec(ids.len() as u64, submit_elapsed),
        statuses,
        decided: decisions.decided,
        held: decisions.held,
        rejected: decisions.rejected.clone(),
        decide_window_s: window.as_secs_f64(),
        decided_per_sec: per_sec(decisions.decided, window),
        drain_s: drain.as_secs_f64(),
        decided_each_second: decisions.each_second(start_wall),
        submit_latency: submit_latency.summary(),
        decision_latency: decisions.server_latency.summary(),
        ..ThroughputResult::default()
    };
    Ok(Outcome { result, decisions })
}

/// Sets the round's bracketed ratio from the single-row baseline measured after it (the one
/// before it is already in `t`).
pub fn bracket(t: &mut ThroughputResult, after_per_sec: f64) {
    t.baseline_after_per_sec = after_per_sec;
    t.ratio_bracketed = ratio(
        t.decided_per_sec,
        (t.baseline_per_sec + after_per_sec) / 2.0,
    );
}

/// `decided` ÷ `baseline`; 0 without a baseline.
fn ratio(decided: f64, baseline: f64) -> f64 {
    if baseline > 0.0 {
        decided / baseline
    } else {
        0.0
    }
}

/// Fills in the ratios to the baselines of the same pair.
pub fn compare(
    t: &mut ThroughputResult,
    baseline: Option<&crate::report::BaselineResult>,
    full: Option<&crate::report::BaselineResult>,
) {
    if let Some(b) = baseline {
        t.baseline_per_sec = b.per_sec;
        t.ratio = ratio(t.decided_per_sec, b.per_sec);
    }
    if let Some(f) = full {
        t.full_baseline_per_sec = f.per_sec;
        t.ratio_full = ratio(t.decided_per_sec, f.per_sec);
    }
}
