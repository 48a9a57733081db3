//! `mixed`: `concurrency` patients book Zipf-popular practitioners (a few get most requests,
//! so slots collide) over the next three days; each hold is then paid (70 %), cancelled
//! (10 %) or left to expire (20 %, needs a short `HOLD_TTL_SECS` on the stack). At the end the
//! run waits for the left holds to expire and compares every booking's status in PostgreSQL
//! with what the client did.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use chrono::{DateTime, Timelike, Utc};
use uuid::Uuid;

use super::Ctx;
use crate::{
    checks::{self, Decisions},
    dataset::{self, Hours, PractitionerSpec, hm},
    report::MixedResult,
    stats::{Latency, Statuses},
    zipf::Zipf,
};

/// Zipf exponent of practitioner popularity.
const ZIPF_S: f64 = 1.1;
/// Days of slots offered (tomorrow on).
const DAYS: i64 = 3;
/// Slots a day (08:00–18:00, 30 minutes).
const SLOTS_A_DAY: i64 = 20;

/// What the client did with a hold.
#[derive(Clone, Debug)]
enum Act {
    /// Paid; the webhook's outcome.
    Paid(String),
    /// Cancelled; the HTTP status.
    Cancelled(u16),
    /// Left to expire at this time.
    Left(DateTime<Utc>),
}

impl Act {
    fn label(&self) -> &'static str {
        match self {
            Act::Paid(_) => "paid",
            Act::Cancelled(_) => "cancelled",
            Act::Left(_) => "left",
        }
    }

    /// Whether `status` (PostgreSQL) is what this act must have led to.
    fn explains(&self, status: &str, expiry_checked: bool) -> bool {
        match self {
            Act::Paid(o) if o == "confirmed" => status == "confirmed",
            // The hold ran out (or was cancelled) before the money came: refunded.
            Act::Paid(o) if o == "late_payment_refund_required" => {
                matches!(status, "expired" | "cancelled")
            }
            Act::Paid(_) => false,
            Act::Cancelled(200) => status == "cancelled",
            Act::Cancelled(409) => status == "expired",
            Act::Cancelled(_) => false,
            Act::Left(_) if expiry_checked => status == "expired",
            Act::Left(_) => matches!(status, "held" | "expired"),
        }
    }
}

/// What the run needs to check afterwards.
pub struct Outcome {
    /// Figures.
    pub result: MixedResult,
    /// Decisions of the accepted requests (PostgreSQL).
    pub decisions: Decisions,
    /// Bookings whose final status does not follow from what the client did.
    pub unexplained: Vec<String>,
}

#[derive(Default)]
struct Tally {
    statuses: Statuses,
    accepted: Vec<Uuid>,
    held: u64,
    rejected: BTreeMap<String, u64>,
    acts: Vec<(Uuid, Act)>,
    payments: BTreeMap<String, u64>,
    cancels: Statuses,
    e2e: Latency,
}

/// Runs the mixed workload.
pub async fn run(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let s = &ctx.settings;
    let practitioners = dataset::practitioners(
        &ctx.pool,
        &PractitionerSpec {
            count: s.mixed_practitioners,
            specialty: format!("mx-{}", ctx.tag),
            slot_minutes: 30,
            timezone: "UTC".into(),
            hours: Hours {
                weekdays: (1..=7).collect(),
                start: hm(8, 0),
                end: hm(18, 0),
            },
        },
    )
    .await?;
    let patients = dataset::patients(
        &ctx.api,
        (2 * s.concurrency).max(20),
        &format!("mx-{}", ctx.tag),
    )
    .await?;
    let first = (Utc::now() + chrono::Duration::days(1))
        .with_hour(8)
        .and_then(|t| t.with_minute(0))
        .and_then(|t| t.with_second(0))
        .and_then(|t| t.with_nanosecond(0))
        .ok_or_else(|| anyhow::anyhow!("no 08:00 tomorrow"))?;
    let zipf = Zipf::new(practitioners.len(), ZIPF_S);
    let start = Instant::now();
    let deadline = start + s.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..s.concurrency {
        let (api, zipf, practitioners, patients) = (
            ctx.api.clone(),
            zipf.clone(),
            practitioners.clone(),
            patients.clone(),
        );
        let (seed, timeout) = (s.seed.wrapping_add(client as u64), s.decision_timeout);
        tasks.spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut t = Tally::default();
            while Instant::now() < deadline {
                let practitioner = practitioners[zipf.sample(&mut rng)];
                let patient = patients[rng.usize(..patients.len())];
                let slot = first
                    + chrono::Duration::days(rng.i64(0..DAYS))
                    + chrono::Duration::minutes(30 * rng.i64(0..SLOTS_A_DAY));
                let t0 = Instant::now();
                let r = match api.submit(patient, practitioner, slot).await {
                    Ok(r) => r,
                    Err(_) => {
                        t.statuses.add_io();
                        continue;
                    }
                };
                t.statuses.add(r.status);
                let Some(id) = r.id else { continue };
                t.accepted.push(id);
                let Ok(v) = api.decision(id, timeout).await else {
                    continue;
                };
                if v.is_queued() {
                    continue;
                }
                t.e2e.record(t0.elapsed());
                let (Some(booking), "held") = (v.booking_id, v.status.as_str()) else {
                    *t.rejected
                        .entry(v.reason.unwrap_or_else(|| v.status.clone()))
                        .or_default() += 1;
                    continue;
                };
                t.held += 1;
                let roll = rng.f64();
                let act = if roll < 0.7 {
                    match api.pay(booking).await {
                        Ok((200, Some(outcome))) => Act::Paid(outcome),
                        Ok((status, _)) => Act::Paid(format!("http {status}")),
                        Err(e) => Act::Paid(format!("error {e}")),
                    }
                } else if roll < 0.8 {
                    match api.cancel(booking).await {
                        Ok(status) => {
                            t.cancels.add(status);
                            Act::Cancelled(status)
                        }
                        Err(_) => {
                            t.cancels.add_io();
                            Act::Cancelled(0)
                        }
                    }
                } else {
                    Act::Left(v.hold_expires_at.unwrap_or_else(Utc::now))
                };
                if let Act::Paid(o) = &act {
                    *t.payments.entry(o.clone()).or_default() += 1;
                }
                t.acts.push((booking, act));
            }
            t
        });
    }
    let mut all = Tally::default();
    while let Some(r) = tasks.join_next().await {
        let t = r?;
        all.statuses.merge(&t.statuses);
        all.accepted.extend(t.accepted);
        all.held += t.held;
        for (k, v) in t.rejected {
            *all.rejected.entry(k).or_default() += v;
        }
        for (k, v) in t.payments {
            *all.payments.entry(k).or_default() += v;
        }
        all.cancels.merge(&t.cancels);
        all.acts.extend(t.acts);
        all.e2e.merge(&t.e2e);
    }
    let elapsed = start.elapsed();

    let decisions = checks::decisions_when_decided(
        &ctx.pool,
        &all.accepted,
        s.decision_timeout,
        Duration::from_millis(100),
    )
    .await?;

    // Wait for the holds left to expire, when the stack's hold TTL allows.
    let left: Vec<Uuid> = all
        .acts
        .iter()
        .filter(|(_, a)| matches!(a, Act::Left(_)))
        .map(|(b, _)| *b)
        .collect();
    let last_expiry = all
        .acts
        .iter()
        .filter_map(|(_, a)| match a {
            Act::Left(at) => Some(*at),
            _ => None,
        })
        .max();
    let wait = last_expiry
        .map(|at| (at - Utc::now()).to_std().unwrap_or_default())
        .unwrap_or_default();
    let expiry_checked = wait <= s.max_expiry_wait;
    if expiry_checked && !left.is_empty() {
        tokio::time::sleep(wait).await;
        let give_up = Instant::now() + Duration::from_secs(30);
        loop {
            let st = checks::booking_statuses(&ctx.pool, &left).await?;
            if st.values().all(|v| v != "held") || Instant::now() >= give_up {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let bookings: Vec<Uuid> = all.acts.iter().map(|(b, _)| *b).collect();
    let statuses = checks::booking_statuses(&ctx.pool, &bookings).await?;
    let mut final_statuses = BTreeMap::new();
    let mut unexplained = Vec::new();
    for (booking, act) in &all.acts {
        let status = statuses.get(booking).map_or("missing", String::as_str);
        *final_statuses
            .entry(format!("{}→{status}", act.label()))
            .or_default() += 1;
        if !act.explains(status, expiry_checked) {
            unexplained.push(format!("{booking}: {act:?} but {status}"));
        }
    }
    let result = MixedResult {
        duration_s: elapsed.as_secs_f64(),
        concurrency: s.concurrency,
        practitioners: practitioners.len(),
        statuses: all.statuses,
        accepted: all.accepted.len() as u64,
        held: all.held,
        rejected: all.rejected,
        payments: all.payments,
        cancels: all.cancels,
        left_to_expire: left.len() as u64,
        final_statuses,
        expiry_checked,
        submit_to_decision: all.e2e.summary(),
    };
    Ok(Outcome {
        result,
        decisions,
        unexplained,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_statuses_follow_from_what_the_client_did() {
        assert!(Act::Paid("confirmed".into()).explains("confirmed", true));
        assert!(!Act::Paid("confirmed".into()).explains("held", true));
        assert!(Act::Paid("late_payment_refund_required".into()).explains("expired", true));
        assert!(Act::Cancelled(200).explains("cancelled", true));
        assert!(Act::Cancelled(409).explains("expired", true));
        assert!(Act::Left(Utc::now()).explains("expired", true));
        assert!(!Act::Left(Utc::now()).explains("held", true));
        assert!(Act::Left(Utc::now()).explains("held", false));
    }
}
