//! `storm`: K requests (default 10,000) for one slot of one practitioner, `storm_concurrency`
//! in flight at once. Exactly one may win; the others are refused — at once with `409` by the
//! Redis pre-check once the winner is known, or `rejected: slot_taken` by the worker — and
//! no request may end in a 5xx.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{Timelike, Utc};
use futures::{StreamExt, stream};

use super::Ctx;
use crate::{
    checks::{self, Decisions},
    dataset::{self, Hours, PractitionerSpec},
    report::StormResult,
    stats::{Statuses, per_sec},
};

/// What the run needs to check afterwards.
pub struct Outcome {
    /// Figures.
    pub result: StormResult,
    /// Decisions of the accepted requests.
    pub decisions: Decisions,
}

/// Patients taking part (the slot decides, not the patient; they only have to exist).
const PATIENTS: usize = 100;

/// Runs the storm.
pub async fn run(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let s = &ctx.settings;
    let practitioner = dataset::practitioners(
        &ctx.pool,
        &PractitionerSpec {
            count: 1,
            specialty: format!("storm-{}", ctx.tag),
            slot_minutes: 30,
            timezone: "UTC".into(),
            hours: Hours::round_the_clock(),
        },
    )
    .await?[0];
    let patients = Arc::new(
        dataset::patients(
            &ctx.api,
            PATIENTS.min(s.storm),
            &format!("storm-{}", ctx.tag),
        )
        .await?,
    );
    let slot = (Utc::now() + chrono::Duration::days(2))
        .with_hour(10)
        .and_then(|t| t.with_minute(0))
        .and_then(|t| t.with_second(0))
        .and_then(|t| t.with_nanosecond(0))
        .ok_or_else(|| anyhow::anyhow!("no 10:00 the day after tomorrow"))?;
    let c = s.storm_concurrency.min(s.storm);
    let warm: Vec<_> = (0..c).map(|_| ctx.api.get("/healthz")).collect();
    futures::future::join_all(warm).await;

    let next = Arc::new(AtomicU64::new(0));
    let total = s.storm as u64;
    let start_wall = Utc::now();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..c {
        let (api, next, patients) = (ctx.api.clone(), next.clone(), patients.clone());
        tasks.spawn(async move {
            let (mut statuses, mut ids, mut codes) = (Statuses::default(), Vec::new(), 0u64);
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= total {
                    break;
                }
                let patient = patients[k as usize % patients.len()];
                match api.submit(patient, practitioner, slot).await {
                    Ok(r) => {
                        statuses.add(r.status);
                        if r.status == 409 && r.code.as_deref() == Some("slot_taken") {
                            codes += 1;
                        }
                        ids.extend(r.id);
                    }
                    Err(_) => statuses.add_io(),
                }
            }
            (statuses, ids, codes)
        });
    }
    let (mut statuses, mut ids, mut conflicts) = (Statuses::default(), Vec::new(), 0);
    while let Some(r) = tasks.join_next().await {
        let (st, mine, codes) = r?;
        statuses.merge(&st);
        ids.extend(mine);
        conflicts += codes;
    }
    let submit = start.elapsed();

    let decisions = checks::decisions_when_decided(
        &ctx.pool,
        &ids,
        s.decision_timeout,
        Duration::from_millis(20),
    )
    .await?;
    let all_decided = decisions
        .last_decided
        .map(|l| (l - start_wall).to_std().unwrap_or_default())
        .unwrap_or(submit)
        .max(submit);
    // What clients see: every accepted request through the API.
    let winners_api = stream::iter(ids.iter().copied())
        .map(|id| {
            let api = ctx.api.clone();
            async move {
                matches!(api.poll(id, 0).await, Ok(Ok(v)) if v.booking_id.is_some() && v.status == "held")
            }
        })
        .buffer_unordered(64)
        .filter(|held| futures::future::ready(*held))
        .count()
        .await as u64;
    let active: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM bookings WHERE practitioner_id = $1 AND slot_start = $2
           AND status IN ('held', 'confirmed')",
    )
    .bind(practitioner)
    .bind(slot)
    .fetch_one(&ctx.pool)
    .await?;
    let result = StormResult {
        requests: total,
        concurrency: c,
        accepted: ids.len() as u64,
        conflicts,
        server_errors: statuses.server_errors(),
        requests_per_sec: per_sec(statuses.total(), submit),
        statuses,
        winners: decisions.held,
        winners_api,
        rejected: decisions.rejected.clone(),
        undecided: decisions.missing.len() as u64,
        active_bookings: active,
        submit_ms: submit.as_secs_f64() * 1000.0,
        all_decided_ms: all_decided.as_secs_f64() * 1000.0,
    };
    Ok(Outcome { result, decisions })
}
