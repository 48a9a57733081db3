//! `availability`: reading free slots. One practitioner over 14 days
//! (`GET /v1/practitioners/{id}/availability?days=14`) and a search across
//! `search_practitioners` practitioners of one specialty (`GET /v1/slots?specialty=…`), each
//! asked once cold (bitmaps rebuilt from PostgreSQL) and then `availability_requests` times,
//! one request at a time, so the figures are service time, not queueing.

use std::time::Instant;

use chrono::{Duration, Utc};

use super::Ctx;
use crate::{
    dataset::{self, Hours, PractitionerSpec, hm},
    report::{AvailabilityResult, EndpointResult},
    stats::{Latency, Statuses},
};

/// Runs the availability measurements.
pub async fn run(ctx: &Ctx) -> anyhow::Result<AvailabilityResult> {
    let s = &ctx.settings;
    let specialty = format!("av-{}", ctx.tag);
    let ids = dataset::practitioners(
        &ctx.pool,
        &PractitionerSpec {
            count: s.search_practitioners,
            specialty: specialty.clone(),
            slot_minutes: 15,
            timezone: "Europe/Paris".into(),
            hours: Hours {
                weekdays: (1..=6).collect(),
                start: hm(8, 0),
                end: hm(18, 0),
            },
        },
    )
    .await?;
    let later = (Utc::now() + Duration::days(7)).date_naive();
    let requests = [
        format!("/v1/practitioners/{}/availability?days=14", ids[0]),
        format!("/v1/slots?specialty={specialty}"),
        format!("/v1/slots?specialty={specialty}&from={later}&limit=100"),
    ];
    let mut results = Vec::with_capacity(requests.len());
    for r in requests {
        results.push(endpoint(ctx, r, s.availability_requests).await?);
    }
    let mut it = results.into_iter();
    let mut next = || it.next().unwrap_or_default();
    Ok(AvailabilityResult {
        practitioners: ids.len(),
        practitioner_14_days: next(),
        search: next(),
        search_later_week: next(),
    })
}

async fn endpoint(ctx: &Ctx, request: String, n: usize) -> anyhow::Result<EndpointResult> {
    let mut statuses = Statuses::default();
    let t0 = Instant::now();
    let (status, mut bytes) = ctx.api.get(&request).await?;
    let first_ms = t0.elapsed().as_secs_f64() * 1000.0;
    statuses.add(status);
    let mut warm = Latency::new();
    for _ in 0..n {
        let t = Instant::now();
        match ctx.api.get(&request).await {
            Ok((st, b)) => {
                warm.record(t.elapsed());
                statuses.add(st);
                bytes = b;
            }
            Err(_) => statuses.add_io(),
        }
    }
    Ok(EndpointResult {
        request,
        first_ms,
        warm: warm.summary(),
        statuses,
        bytes,
    })
}
