//! `slotq-loadtest`: drives a running slotq through its HTTP API with named scenarios, measures
//! a synchronous baseline on the same PostgreSQL, checks the invariants in the database, and
//! prints a table (and `--json FILE`). See `loadtest/README.md` for the method and results.
//!
//! - [`scenarios`]: `throughput`, `baseline`, `latency`, `storm`, `mixed`, `availability`
//! - [`dataset`]: bulk SQL practitioners, API-created patients, the distinct-slot grid
//! - [`checks`]: what PostgreSQL says afterwards (decisions, double bookings)
//! - [`stats`]: HDR latency histograms; [`report`]: the JSON document and the table
//!
//! The exit status is 1 when an invariant fails (a double booking, an accepted request
//! without a durable decision, a storm with other than one winner or with a 5xx), so the
//! benchmark doubles as a correctness check under load.

pub mod checks;
pub mod client;
pub mod dataset;
pub mod options;
pub mod report;
pub mod scenarios;
pub mod stats;
pub mod zipf;

use std::{collections::HashMap, time::Duration};

use anyhow::Context;
use chrono::Utc;
use sqlx::postgres::PgPoolOptions;

use crate::{
    client::Api,
    options::{Scenario, Settings},
    report::{Machine, Report},
    scenarios::{Ctx, baseline},
};

/// Targets of the issue.
pub mod targets {
    /// decided/s of the pipeline over the single-row baseline.
    pub const RATIO: f64 = 1.5;
    /// p99 submit → decision at the latency scenario's rate, ms.
    pub const LATENCY_P99_MS: f64 = 50.0;
    /// p99 of availability reads ("a few ms"), ms.
    pub const AVAILABILITY_P99_MS: f64 = 10.0;
}

/// Runs the scenarios of `settings` and returns every figure, check and target.
pub async fn run(settings: Settings) -> anyhow::Result<Report> {
    let api = Api::new(
        &settings.url,
        &settings.token,
        settings.payment_secret.clone(),
    )?;
    api.ready(Duration::from_secs(30)).await?;
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(&settings.database_url)
        .await
        .with_context(|| format!("connecting to {}", settings.database_url))?;
    let mut report = Report {
        started_at: Some(Utc::now()),
        machine: machine(&pool).await,
        settings: echo(&settings),
        ..Report::default()
    };
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let ctx = Ctx {
        settings,
        api,
        pool,
        tag,
    };
    let s = &ctx.settings;
    for scenario in s.scenarios.clone() {
        eprintln!("slotq-loadtest: {} …", scenario.name());
        match scenario {
            Scenario::Latency => latency(&ctx, &mut report).await?,
            Scenario::Storm => storm(&ctx, &mut report).await?,
            Scenario::Availability => availability(&ctx, &mut report).await?,
            Scenario::Mixed => mixed(&ctx, &mut report).await?,
            Scenario::Baseline => pairs(&ctx, &mut report).await?,
            // Run with its baseline, as pairs.
            Scenario::Throughput => {}
        }
    }
    let doubles = checks::double_bookings(&ctx.pool).await?;
    report.check(
        "all",
        "no slot has two active bookings",
        doubles == 0,
        format!("{doubles} slots"),
    );
    let overlaps = checks::patient_overlaps(&ctx.pool).await?;
    report.check(
        "all",
        "no patient has two active bookings at one time",
        overlaps == 0,
        format!("{overlaps} patients"),
    );
    report.machine.loadavg_end = loadavg();
    ctx.pool.close().await;
    Ok(report)
}

fn decided_check(report: &mut Report, scenario: &str, d: &checks::Decisions) {
    report.check(
        scenario,
        "every accepted request has a durable decision",
        d.missing.is_empty(),
        format!(
            "{} decided, {} missing{}",
            d.decided,
            d.missing.len(),
            d.missing
                .first()
                .map(|id| format!(" (e.g. {id})"))
                .unwrap_or_default()
        ),
    );
}

async fn latency(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    settle(&ctx.pool).await;
    let o = scenarios::latency::run(ctx).await?;
    decided_check(report, "latency", &o.decisions);
    let r = &o.result;
    report.check(
        "latency",
        "no 5xx",
        r.statuses.server_errors() == 0,
        r.statuses.compact(),
    );
    report.check(
        "latency",
        "every accepted request's decision reached its client",
        r.decided == r.accepted,
        format!("{} of {}", r.decided, r.accepted),
    );
    let p99 = r.submit_to_decision.p99_ms;
    report.target(
        &format!("latency p99 submit→decision @ {:.0}/s", r.rate),
        &format!("< {} ms", targets::LATENCY_P99_MS),
        format!("{p99:.1} ms"),
        r.decided > 0 && p99 < targets::LATENCY_P99_MS,
    );
    report.latency = Some(o.result);
    Ok(())
}

async fn storm(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let o = scenarios::storm::run(ctx).await?;
    let r = &o.result;
    decided_check(report, "storm", &o.decisions);
    report.check(
        "storm",
        "exactly one winner (PostgreSQL and API)",
        r.winners == 1 && r.winners_api == 1 && r.active_bookings == 1,
        format!(
            "{} held, {} via API, {} active bookings",
            r.winners, r.winners_api, r.active_bookings
        ),
    );
    report.check(
        "storm",
        "no 5xx, every request answered",
        r.server_errors == 0
            && r.statuses.total() == r.requests
            && !r.statuses.0.contains_key("io"),
        r.statuses.compact(),
    );
    report.check(
        "storm",
        "every loser refused with slot_taken",
        r.accepted + r.conflicts == r.requests && r.rejected.keys().all(|k| k == "slot_taken"),
        format!(
            "{} accepted, {} 409, rejected {:?}",
            r.accepted, r.conflicts, r.rejected
        ),
    );
    report.target(
        &format!("storm of {}", r.requests),
        "1 winner, 0 5xx",
        format!("{} winner(s), {} 5xx", r.winners, r.server_errors),
        r.winners == 1 && r.server_errors == 0,
    );
    report.storm = Some(o.result);
    Ok(())
}

async fn availability(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let r = scenarios::availability::run(ctx).await?;
    for (name, e) in [
        (
            "availability 1 practitioner × 14 days",
            &r.practitioner_14_days,
        ),
        (
            &*format!("search across {} practitioners", r.practitioners),
            &r.search,
        ),
    ] {
        report.check(
            "availability",
            &format!("{name}: every answer 200"),
            e.statuses.total() == e.statuses.get(200),
            e.statuses.compact(),
        );
        report.target(
            &format!("{name} p99"),
            &format!("< {} ms", targets::AVAILABILITY_P99_MS),
            format!("{:.2} ms (p50 {:.2})", e.warm.p99_ms, e.warm.p50_ms),
            e.warm.count > 0 && e.warm.p99_ms < targets::AVAILABILITY_P99_MS,
        );
    }
    report.availability = Some(r);
    Ok(())
}

async fn mixed(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let o = scenarios::mixed::run(ctx).await?;
    decided_check(report, "mixed", &o.decisions);
    let r = &o.result;
    report.check(
        "mixed",
        "no 5xx",
        r.statuses.server_errors() == 0 && r.cancels.server_errors() == 0,
        r.statuses.compact(),
    );
    report.check(
        "mixed",
        "every booking's status follows from what was done",
        o.unexplained.is_empty(),
        if o.unexplained.is_empty() {
            format!("{:?}", r.final_statuses)
        } else {
            format!(
                "{} unexplained, e.g. {}",
                o.unexplained.len(),
                o.unexplained[0]
            )
        },
    );
    report.mixed = Some(o.result);
    Ok(())
}

/// What pgbench does before each run: vacuums and analyzes the tables a round writes, so that
/// every measured round, baseline or pipeline, starts from the same state whatever autovacuum
/// does. On the measured machine autovacuum is off (`autovacuum = off`): the rows that earlier
/// rounds wrote and their clean-ups deleted stayed in every index, the planner never had
/// statistics, and rounds slowed as the run went on (loadtest/README.md, change 23).
async fn vacuum(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    sqlx::query("VACUUM (ANALYZE) bookings, booking_requests, outbox, audit_log")
        .execute(pool)
        .await?;
    Ok(())
}

/// Before the latency run: a checkpoint, so that the dirty pages of the scenarios before it
/// (a throughput round writes hundreds of MB) are flushed before, not while, commits are
/// timed. In the stop-16 full run the latency scenario right after the throughput rounds had
/// 99 of its 900 arrivals start late (the load generator itself starved) and a p99 of
/// 85.7 ms, against 20.4 ms alone (loadtest/README.md). `CHECKPOINT` needs a superuser or
/// `pg_checkpoint`; without one the run goes on as before.
async fn settle(pool: &sqlx::PgPool) {
    if let Err(e) = sqlx::query("CHECKPOINT").execute(pool).await {
        eprintln!("slotq-loadtest: no checkpoint before the latency run ({e})");
    }
}

/// Baseline (and full baseline) then throughput, `repeat` times, then one closing baseline, so
/// each round is compared with the single-row baselines taken just before and just after it
/// on the same machine (whose speed drifts within minutes).
async fn pairs(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let s = &ctx.settings;
    let with_throughput = s.scenarios.contains(&Scenario::Throughput);
    for round in 0..s.repeat {
        vacuum(&ctx.pool).await?;
        let b = baseline::run(ctx, baseline::Mode::Insert).await?;
        report.baseline.push(b.clone());
        let full = if s.full_baseline {
            vacuum(&ctx.pool).await?;
            let f = baseline::run(ctx, baseline::Mode::Full).await?;
            report.full_baseline.push(f.clone());
            Some(f)
        } else {
            None
        };
        if !with_throughput {
            continue;
        }
        vacuum(&ctx.pool).await?;
        eprintln!("slotq-loadtest: throughput (round {}) …", round + 1);
        let mut o = scenarios::throughput::run(ctx, round).await?;
        scenarios::throughput::compare(&mut o.result, Some(&b), full.as_ref());
        let name = format!("throughput #{}", round + 1);
        decided_check(report, &name, &o.decisions);
        let r = &o.result;
        report.check(
            &name,
            "distinct free slots are all held, no 5xx",
            r.held == r.decided && r.statuses.server_errors() == 0,
            format!("{} held of {}; {}", r.held, r.decided, r.statuses.compact()),
        );
        report.throughput.push(o.result);
    }
    if !report.throughput.is_empty() {
        // A closing baseline, so that every round has one before and one after it.
        vacuum(&ctx.pool).await?;
        eprintln!("slotq-loadtest: closing baseline …");
        let closing = baseline::run(ctx, baseline::Mode::Insert).await?;
        report.baseline.push(closing);
        let after: Vec<f64> = report.baseline.iter().skip(1).map(|b| b.per_sec).collect();
        for (t, after) in report.throughput.iter_mut().zip(after) {
            scenarios::throughput::bracket(t, after);
        }
        let mut ratios: Vec<f64> = report
            .throughput
            .iter()
            .map(|t| t.ratio_bracketed)
            .collect();
        ratios.sort_by(f64::total_cmp);
        let median = ratios[ratios.len() / 2];
        report.target(
            "decided/s ÷ single-row baselines before+after",
            &format!("≥ {}×", targets::RATIO),
            format!(
                "{median:.2}× (median of {}: {})",
                ratios.len(),
                ratios
                    .iter()
                    .map(|r| format!("{r:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            median >= targets::RATIO,
        );
    }
    Ok(())
}

fn echo(s: &Settings) -> std::collections::BTreeMap<String, String> {
    [
        ("url", s.url.clone()),
        ("duration_s", s.duration.as_secs_f64().to_string()),
        (
            "latency_duration_s",
            s.latency_duration.as_secs_f64().to_string(),
        ),
        ("concurrency", s.concurrency.to_string()),
        ("rate", s.rate.to_string()),
        ("storm", s.storm.to_string()),
        ("storm_concurrency", s.storm_concurrency.to_string()),
        ("practitioners", s.practitioners.to_string()),
        ("search_practitioners", s.search_practitioners.to_string()),
        ("mixed_practitioners", s.mixed_practitioners.to_string()),
        ("repeat", s.repeat.to_string()),
        ("seed", s.seed.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn machine(pool: &sqlx::PgPool) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |text: &str, name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default()
    };
    let kib: f64 = field(&meminfo, "MemTotal")
        .trim_end_matches(" kB")
        .parse()
        .unwrap_or(0.0);
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, usize::from),
        cpu_model: field(&cpuinfo, "model name"),
        memory_gib: kib / 1024.0 / 1024.0,
        loadavg_start: loadavg(),
        loadavg_end: String::new(),
        postgres: sqlx::query_scalar("SELECT version()")
            .fetch_one(pool)
            .await
            .unwrap_or_default(),
    }
}

/// The command line: parses, runs, prints the table, writes the JSON; returns the exit status.
pub async fn main_with(args: &[String], vars: &HashMap<String, String>) -> i32 {
    if args
        .iter()
        .any(|a| a == "-h" || a == "--help" || a == "help")
    {
        println!("{}", options::command().render_help());
        return 0;
    }
    let settings = match Settings::parse(args, vars) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("slotq-loadtest: {e:#}");
            return 2;
        }
    };
    let (json, strict) = (settings.json.clone(), settings.strict);
    let report = match run(settings).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("slotq-loadtest: {e:#}");
            return 2;
        }
    };
    println!("{}", report.render());
    if let Some(path) = json {
        let written = serde_json::to_vec_pretty(&report)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| std::fs::write(&path, bytes).map_err(anyhow::Error::from));
        if let Err(e) = written {
            eprintln!("slotq-loadtest: writing {}: {e:#}", path.display());
            return 2;
        }
    }
    exit_status(&report, strict)
}

/// 1 when an invariant failed (or, with `strict`, a target was missed), else 0.
pub fn exit_status(report: &Report, strict: bool) -> i32 {
    if !report.invariants_hold() || (strict && !report.targets_met()) {
        1
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_invariant_fails_the_run_and_a_missed_target_only_when_strict() {
        let mut r = Report::default();
        r.check("storm", "exactly one winner", true, "1");
        r.target("ratio", "≥ 1.5×", "1.2×".into(), false);
        assert_eq!(exit_status(&r, false), 0);
        assert_eq!(exit_status(&r, true), 1);
        r.check("all", "no slot has two active bookings", false, "1 slots");
        assert_eq!(exit_status(&r, false), 1);
        assert!(r.render().contains("FAIL"));
        assert!(r.render().contains("MISSED"));
    }
}
