//! `latency`: an open model — requests arrive at a fixed rate (default 90/s, the seed's peak)
//! whatever the stack's answers, each on a distinct free slot; each arrival submits, then
//! long-polls (`?wait=`) until its decision. Latency is measured from the *scheduled* arrival,
//! so a stalled generator or stack cannot hide its delay (no coordinated omission).

use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use super::Ctx;
use crate::{
    checks::{self, Decisions},
    dataset,
    report::LatencyResult,
    stats::{Latency, Statuses},
};

/// Grid practitioners of the latency run: enough that slots never run out.
const PRACTITIONERS: usize = 20;

/// What the run needs to check afterwards.
pub struct Outcome {
    /// Figures.
    pub result: LatencyResult,
    /// Accepted request ids.
    pub accepted: Vec<Uuid>,
    /// Their decisions in PostgreSQL.
    pub decisions: Decisions,
}

struct Arrival {
    status: Option<u16>,
    submit: Duration,
    id: Option<Uuid>,
    decided_after: Option<Duration>,
}

/// Runs the open-model measurement.
pub async fn run(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let s = &ctx.settings;
    let grid = dataset::grid(
        &ctx.pool,
        &ctx.api,
        PRACTITIONERS,
        &format!("lat-{}", ctx.tag),
    )
    .await?;
    let total = (s.rate * s.latency_duration.as_secs_f64()).round().max(1.0) as u64;
    let interval = Duration::from_secs_f64(1.0 / s.rate);
    // A few connections opened beforehand, as a steady client would have them.
    let warm: Vec<_> = (0..8).map(|_| ctx.api.get("/healthz")).collect();
    futures::future::join_all(warm).await;

    let start = Instant::now() + Duration::from_millis(50);
    let mut late = 0;
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..total {
        let at = start + interval.mul_f64(k as f64);
        tokio::time::sleep_until(at).await;
        if at.elapsed() > Duration::from_millis(5) {
            late += 1;
        }
        let Some((patient, practitioner, slot)) = grid.nth(k) else {
            break;
        };
        let (api, timeout) = (ctx.api.clone(), s.decision_timeout);
        tasks.spawn(async move {
            let t0 = Instant::now();
            let mut a = Arrival {
                status: None,
                submit: Duration::ZERO,
                id: None,
                decided_after: None,
            };
            let Ok(r) = api.submit(patient, practitioner, slot).await else {
                return a;
            };
            a.submit = t0.elapsed();
            a.status = Some(r.status);
            a.id = r.id;
            if let Some(id) = r.id
                && let Ok(v) = api.decision(id, timeout).await
                && !v.is_queued()
            {
                a.decided_after = Some(at.elapsed());
            }
            a
        });
    }
    let (mut e2e, mut submit, mut statuses) = (Latency::new(), Latency::new(), Statuses::default());
    let (mut accepted, mut decided) = (Vec::new(), 0);
    while let Some(r) = tasks.join_next().await {
        let a = r?;
        match a.status {
            Some(st) => {
                statuses.add(st);
                submit.record(a.submit);
            }
            None => statuses.add_io(),
        }
        accepted.extend(a.id);
        if let Some(d) = a.decided_after {
            decided += 1;
            e2e.record(d);
        }
    }
    let decisions = checks::decisions_when_decided(
        &ctx.pool,
        &accepted,
        s.decision_timeout,
        Duration::from_millis(100),
    )
    .await?;
    Ok(Outcome {
        result: LatencyResult {
            rate: s.rate,
            duration_s: s.latency_duration.as_secs_f64(),
            scheduled: total,
            late_starts: late,
            statuses,
            accepted: accepted.len() as u64,
            decided,
            submit_to_decision: e2e.summary(),
            submit_latency: submit.summary(),
            server_decision_latency: decisions.server_latency.summary(),
        },
        accepted,
        decisions,
    })
}
