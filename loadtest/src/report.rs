//! Every figure of a run: the JSON document (`--json FILE`) and the human table.
//!
//! Longer than most modules: one renderer per scenario's table, kept side by side so they stay alike.

use std::{collections::BTreeMap, fmt::Write};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::stats::{LatencySummary, Statuses};

/// The whole run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// When the run started.
    pub started_at: Option<DateTime<Utc>>,
    /// Where it ran.
    pub machine: Machine,
    /// The settings that matter for comparing runs.
    pub settings: BTreeMap<String, String>,
    /// Single-row INSERT baseline, one entry per `--repeat`.
    pub baseline: Vec<BaselineResult>,
    /// Four-row synchronous baseline (hold + decision + outbox + audit), per `--repeat`.
    pub full_baseline: Vec<BaselineResult>,
    /// The pipeline, one entry per `--repeat`.
    pub throughput: Vec<ThroughputResult>,
    /// Open-model latency.
    pub latency: Option<LatencyResult>,
    /// One slot, many requests.
    pub storm: Option<StormResult>,
    /// Availability of one practitioner and search across many.
    pub availability: Option<AvailabilityResult>,
    /// Payments, cancellations and expiries on popular practitioners.
    pub mixed: Option<MixedResult>,
    /// Invariants (a failed one makes the exit status 1).
    pub checks: Vec<Check>,
    /// Performance targets of the issue.
    pub targets: Vec<Target>,
}

/// The machine and its load when the run started.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Machine {
    /// CPUs this process may use.
    pub cpus: usize,
    /// `/proc/cpuinfo` model name.
    pub cpu_model: String,
    /// `/proc/meminfo` total, GiB.
    pub memory_gib: f64,
    /// `/proc/loadavg` at the start (the machine is shared; a high value means noisy numbers).
    pub loadavg_start: String,
    /// `/proc/loadavg` at the end.
    pub loadavg_end: String,
    /// `SELECT version()`.
    pub postgres: String,
}

/// A baseline run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BaselineResult {
    /// `insert` (one row per transaction) or `full` (four rows per transaction).
    pub mode: String,
    /// Connections driving it.
    pub concurrency: usize,
    /// Seconds measured.
    pub elapsed_s: f64,
    /// Transactions committed.
    pub committed: u64,
    /// Failed statements.
    pub errors: u64,
    /// Committed per second.
    pub per_sec: f64,
    /// Per-transaction latency.
    pub latency: LatencySummary,
}

/// A throughput run of the pipeline.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ThroughputResult {
    /// Concurrent submitters.
    pub concurrency: usize,
    /// Grid practitioners.
    pub practitioners: usize,
    /// Seconds of submitting.
    pub submit_s: f64,
    /// Answers by status.
    pub statuses: Statuses,
    /// `202`s.
    pub accepted: u64,
    /// `202`s per second of submitting.
    pub accepted_per_sec: f64,
    /// Accepted requests with a durable decision.
    pub decided: u64,
    /// Decided `held`.
    pub held: u64,
    /// Decided `rejected`, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Seconds from the first submission to the last durable decision.
    pub decide_window_s: f64,
    /// Decisions per second over that window (the figure compared with the baseline).
    pub decided_per_sec: f64,
    /// Seconds the queue took to drain after submitting stopped.
    pub drain_s: f64,
    /// Decisions recorded in each second after the first submission (where a round slows).
    pub decided_each_second: Vec<u64>,
    /// `POST` → `202`, client side.
    pub submit_latency: LatencySummary,
    /// `submitted_at` → `decided_at` as recorded by the services.
    pub decision_latency: LatencySummary,
    /// The single-row baseline of the same pair.
    pub baseline_per_sec: f64,
    /// `decided_per_sec / baseline_per_sec`.
    pub ratio: f64,
    /// The four-row baseline of the same pair (0 when not run).
    pub full_baseline_per_sec: f64,
    /// `decided_per_sec / full_baseline_per_sec`.
    pub ratio_full: f64,
    /// The single-row baseline measured right after this round (the next pair's, or the
    /// closing one after the last round).
    pub baseline_after_per_sec: f64,
    /// `decided_per_sec` ÷ the mean of the single-row baselines before and after the round:
    /// a reference that drifts less with the machine than the one before it alone. The
    /// throughput target is judged on this ratio.
    pub ratio_bracketed: f64,
}

/// The open-model latency run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LatencyResult {
    /// Arrivals per second.
    pub rate: f64,
    /// Seconds of arrivals.
    pub duration_s: f64,
    /// Arrivals scheduled.
    pub scheduled: u64,
    /// Arrivals the generator started more than 5 ms late.
    pub late_starts: u64,
    /// Answers by status.
    pub statuses: Statuses,
    /// `202`s.
    pub accepted: u64,
    /// Of which decided (seen by the client).
    pub decided: u64,
    /// Scheduled arrival → decision seen by the client's long-poll.
    pub submit_to_decision: LatencySummary,
    /// `POST` → `202`.
    pub submit_latency: LatencySummary,
    /// `submitted_at` → `decided_at` as recorded by the services.
    pub server_decision_latency: LatencySummary,
}

/// The storm on one slot.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StormResult {
    /// Requests sent.
    pub requests: u64,
    /// In flight at once.
    pub concurrency: usize,
    /// Answers by status.
    pub statuses: Statuses,
    /// `202`s.
    pub accepted: u64,
    /// `409 slot_taken` from the Redis pre-check.
    pub conflicts: u64,
    /// `5xx` answers.
    pub server_errors: u64,
    /// Accepted requests decided `held` (PostgreSQL).
    pub winners: u64,
    /// Winners as the API reports them.
    pub winners_api: u64,
    /// Decided `rejected`, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Accepted requests without a decision.
    pub undecided: u64,
    /// Active bookings of the slot afterwards.
    pub active_bookings: i64,
    /// Milliseconds to send every request.
    pub submit_ms: f64,
    /// Milliseconds from the first request to the last decision.
    pub all_decided_ms: f64,
    /// Requests per second while sending.
    pub requests_per_sec: f64,
}

/// One endpoint of the availability run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EndpointResult {
    /// Path and query asked.
    pub request: String,
    /// First call (cold caches: bitmaps rebuilt from PostgreSQL), ms.
    pub first_ms: f64,
    /// Later calls.
    pub warm: LatencySummary,
    /// Answers by status.
    pub statuses: Statuses,
    /// Bytes of the last answer.
    pub bytes: usize,
}

/// Availability and search.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AvailabilityResult {
    /// Practitioners behind the search.
    pub practitioners: usize,
    /// `GET /v1/practitioners/{id}/availability?days=14`.
    pub practitioner_14_days: EndpointResult,
    /// `GET /v1/slots?specialty=…` over every practitioner.
    pub search: EndpointResult,
    /// `GET /v1/slots?specialty=…&limit=100` a week ahead.
    pub search_later_week: EndpointResult,
}

/// The mixed run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MixedResult {
    /// Seconds of submitting.
    pub duration_s: f64,
    /// Concurrent patients.
    pub concurrency: usize,
    /// Practitioners (Zipf s = 1.1).
    pub practitioners: usize,
    /// Submissions by status.
    pub statuses: Statuses,
    /// `202`s.
    pub accepted: u64,
    /// Decided `held`.
    pub held: u64,
    /// Decided `rejected`, by reason (client view).
    pub rejected: BTreeMap<String, u64>,
    /// Holds paid; webhook outcomes.
    pub payments: BTreeMap<String, u64>,
    /// Holds cancelled; answers by status.
    pub cancels: Statuses,
    /// Holds left to expire.
    pub left_to_expire: u64,
    /// Final booking statuses (PostgreSQL) by what the client did: `paid→confirmed: n`, ….
    pub final_statuses: BTreeMap<String, u64>,
    /// Whether the run waited for every left hold to expire.
    pub expiry_checked: bool,
    /// Scheduled → decision seen by the client.
    pub submit_to_decision: LatencySummary,
}

/// One invariant.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// Scenario.
    pub scenario: String,
    /// What must hold.
    pub name: String,
    /// Whether it held.
    pub ok: bool,
    /// Figures behind it.
    pub detail: String,
}

/// One performance target.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// What is measured.
    pub name: String,
    /// The goal.
    pub goal: String,
    /// What was measured.
    pub measured: String,
    /// Whether the goal was met.
    pub met: bool,
}

impl Report {
    /// Records an invariant.
    pub fn check(&mut self, scenario: &str, name: &str, ok: bool, detail: impl Into<String>) {
        self.checks.push(Check {
            scenario: scenario.into(),
            name: name.into(),
            ok,
            detail: detail.into(),
        });
    }

    /// Records a target.
    pub fn target(&mut self, name: &str, goal: &str, measured: String, met: bool) {
        self.targets.push(Target {
            name: name.into(),
            goal: goal.into(),
            measured,
            met,
        });
    }

    /// Whether every invariant held.
    pub fn invariants_hold(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    /// Whether every target was met.
    pub fn targets_met(&self) -> bool {
        self.targets.iter().all(|t| t.met)
    }

    /// The human table.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let m = &self.machine;
        let _ = writeln!(
            o,
            "slotq load test — {} CPUs ({}), {:.0} GiB, load {} → {}\n{}",
            m.cpus, m.cpu_model, m.memory_gib, m.loadavg_start, m.loadavg_end, m.postgres
        );
        let lat = |l: &LatencySummary| {
            format!(
                "p50 {:>7.2}  p90 {:>7.2}  p99 {:>7.2}  max {:>8.2} ms  (n={})",
                l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms, l.count
            )
        };
        for (name, runs) in [
            ("baseline (1 row/txn)", &self.baseline),
            ("baseline (4 rows/txn)", &self.full_baseline),
        ] {
            for (i, b) in runs.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "\n{name} #{}: {} connections, {:.1} s\n  committed/s {:>9.0}   ({} committed, {} errors)\n  txn latency  {}",
                    i + 1,
                    b.concurrency,
                    b.elapsed_s,
                    b.per_sec,
                    b.committed,
                    b.errors,
                    lat(&b.latency)
                );
            }
        }
        for (i, t) in self.throughput.iter().enumerate() {
            let _ = writeln!(
                o,
                "\nthroughput #{}: {} clients, {} practitioners, {:.1} s submitting\n  accepted/s  {:>9.0}   ({} accepted; {})\n  decided/s   {:>9.0}   ({} decided in {:.2} s, drain {:.2} s; held {}, rejected {:?})\n  vs baseline {:>9.2}×  (1 row/txn {:.0}/s){}\n  bracketed   {:>9.2}×  (mean of {:.0}/s before and {:.0}/s after)\n  submit→202       {}\n  submit→decision  {}  (server timestamps)",
                i + 1,
                t.concurrency,
                t.practitioners,
                t.submit_s,
                t.accepted_per_sec,
                t.accepted,
                t.statuses.compact(),
                t.decided_per_sec,
                t.decided,
                t.decide_window_s,
                t.drain_s,
                t.held,
                t.rejected,
                t.ratio,
                t.baseline_per_sec,
                if t.full_baseline_per_sec > 0.0 {
                    format!(
                        "; vs 4 rows/txn {:.2}× ({:.0}/s)",
                        t.ratio_full, t.full_baseline_per_sec
                    )
                } else {
                    String::new()
                },
                t.ratio_bracketed,
                t.baseline_per_sec,
                t.baseline_after_per_sec,
                lat(&t.submit_latency),
                lat(&t.decision_latency),
            );
            if !t.decided_each_second.is_empty() {
                let each: Vec<String> = t.decided_each_second.iter().map(u64::to_string).collect();
                let _ = writeln!(o, "  decided each second  {}", each.join(" "));
            }
        }
        if let Some(l) = &self.latency {
            let _ = writeln!(
                o,
                "\nlatency: {:.0} req/s for {:.1} s (open model; {} scheduled, {} started late)\n  answers {}; {} accepted, {} decided\n  submit→decision  {}  (client, from scheduled arrival)\n  submit→202       {}\n  server decision  {}",
                l.rate,
                l.duration_s,
                l.scheduled,
                l.late_starts,
                l.statuses.compact(),
                l.accepted,
                l.decided,
                lat(&l.submit_to_decision),
                lat(&l.submit_latency),
                lat(&l.server_decision_latency),
            );
        }
        if let Some(s) = &self.storm {
            let _ = writeln!(
                o,
                "\nstorm: {} requests on one slot, {} in flight\n  answers {}  ({:.0} req/s, sent in {:.0} ms)\n  winners {} (API {}), rejected {:?}, 409 {}, 5xx {}, undecided {}\n  all decided after {:.0} ms; active bookings of the slot: {}",
                s.requests,
                s.concurrency,
                s.statuses.compact(),
                s.requests_per_sec,
                s.submit_ms,
                s.winners,
                s.winners_api,
                s.rejected,
                s.conflicts,
                s.server_errors,
                s.undecided,
                s.all_decided_ms,
                s.active_bookings
            );
        }
        if let Some(a) = &self.availability {
            let _ = writeln!(o, "\navailability ({} practitioners):", a.practitioners);
            for e in [&a.practitioner_14_days, &a.search, &a.search_later_week] {
                let _ = writeln!(
                    o,
                    "  {}\n    first {:.2} ms; then {}  [{}; {} B]",
                    e.request,
                    e.first_ms,
                    lat(&e.warm),
                    e.statuses.compact(),
                    e.bytes
                );
            }
        }
        if let Some(x) = &self.mixed {
            let _ = writeln!(
                o,
                "\nmixed: {} patients, {} Zipf-popular practitioners, {:.1} s\n  answers {}; held {}, rejected {:?}\n  payments {:?}; cancels {}; left to expire {}\n  final {:?}{}\n  submit→decision  {}",
                x.concurrency,
                x.practitioners,
                x.duration_s,
                x.statuses.compact(),
                x.held,
                x.rejected,
                x.payments,
                x.cancels.compact(),
                x.left_to_expire,
                x.final_statuses,
                if x.expiry_checked {
                    ""
                } else {
                    " (expiry not awaited)"
                },
                lat(&x.submit_to_decision),
            );
        }
        if !self.targets.is_empty() {
            let _ = writeln!(o, "\ntargets:");
            for t in &self.targets {
                let _ = writeln!(
                    o,
                    "  [{}] {:<38} goal {:<16} measured {}",
                    if t.met { " met " } else { "MISSED" },
                    t.name,
                    t.goal,
                    t.measured
                );
            }
        }
        let _ = writeln!(o, "\ninvariants:");
        for c in &self.checks {
            let _ = writeln!(
                o,
                "  [{}] {:<13} {:<52} {}",
                if c.ok { " ok " } else { "FAIL" },
                c.scenario,
                c.name,
                c.detail
            );
        }
        o
    }
}
