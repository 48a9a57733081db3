//! Command line and environment of `slotq-loadtest`.

use std::{collections::HashMap, path::PathBuf, str::FromStr, time::Duration};

use anyhow::{Context, bail};

/// A named scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scenario {
    /// Single-row INSERT per transaction straight into PostgreSQL (the synchronous design).
    Baseline,
    /// N closed-loop submitters on distinct slots for D seconds; decided/s vs the baseline.
    Throughput,
    /// Open model at a fixed arrival rate; submit → decision percentiles.
    Latency,
    /// K requests for one slot.
    Storm,
    /// One practitioner's availability over 14 days, and search across many practitioners.
    Availability,
    /// Zipf-popular practitioners, payments, cancellations, expiries; invariants at the end.
    Mixed,
}

impl Scenario {
    /// Every scenario in the order `all` runs them: the baseline/throughput pairs first, on a
    /// fresh database (each round drops its holds afterwards), then the others. After `mixed`
    /// a throughput round measured well below a fresh one (loadtest/README.md), so `mixed`,
    /// which also waits for its holds to expire, runs last.
    pub const ALL: [Scenario; 6] = [
        Scenario::Baseline,
        Scenario::Throughput,
        Scenario::Latency,
        Scenario::Storm,
        Scenario::Availability,
        Scenario::Mixed,
    ];

    /// The scenario's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Latency => "latency",
            Scenario::Storm => "storm",
            Scenario::Availability => "availability",
            Scenario::Mixed => "mixed",
            Scenario::Baseline => "baseline",
            Scenario::Throughput => "throughput",
        }
    }
}

impl FromStr for Scenario {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Scenario::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .with_context(|| format!("unknown scenario {s:?}"))
    }
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Scenarios to run, in order.
    pub scenarios: Vec<Scenario>,
    /// Base URL of the stack's ingress.
    pub url: String,
    /// The stack's PostgreSQL database (bulk data set, baseline, invariant checks).
    pub database_url: String,
    /// Bearer token of role `service`.
    pub token: String,
    /// Payment webhook secret of the stack (`mixed` pays holds).
    pub payment_secret: Option<String>,
    /// How long `throughput`, `baseline` and `mixed` submit.
    pub duration: Duration,
    /// How long `latency` submits.
    pub latency_duration: Duration,
    /// Concurrent clients of `throughput`, `baseline` (connections) and `mixed`.
    pub concurrency: usize,
    /// Arrivals per second of `latency`.
    pub rate: f64,
    /// Requests of `storm`.
    pub storm: usize,
    /// Requests of `storm` in flight at once.
    pub storm_concurrency: usize,
    /// Practitioners (and patients) of the distinct-slot grid of `throughput`.
    pub practitioners: usize,
    /// Practitioners `availability` searches across.
    pub search_practitioners: usize,
    /// Requests per endpoint of `availability`.
    pub availability_requests: usize,
    /// Practitioners of `mixed` (Zipf-popular).
    pub mixed_practitioners: usize,
    /// Baseline + throughput pairs to run (their ratio is reported per pair and as a median).
    pub repeat: usize,
    /// Also run the baseline that writes what the pipeline writes (hold, decision, outbox,
    /// audit) in one transaction per request.
    pub full_baseline: bool,
    /// Where to write every figure as JSON.
    pub json: Option<PathBuf>,
    /// Longest wait for the decisions of accepted requests.
    pub decision_timeout: Duration,
    /// Longest wait for the holds `mixed` leaves to expire.
    pub max_expiry_wait: Duration,
    /// Seed of the random choices of `mixed`.
    pub seed: u64,
    /// Exit non-zero when a performance target is missed, not only on broken invariants.
    pub strict: bool,
}

/// The command line, with clap: options override the environment, which overrides the
/// defaults (the environment is passed in, so tests need not set the process's).
pub fn command() -> clap::Command {
    use clap::{Arg, ArgAction, Command};
    let value = |name: &'static str, value_name: &'static str, help: &'static str| {
        Arg::new(name).long(name).value_name(value_name).help(help)
    };
    Command::new("slotq-loadtest")
        .about("Load scenarios against a running slotq and the single-row baseline")
        .override_usage(
            "slotq-loadtest [all|throughput|baseline|latency|storm|mixed|availability]... [options]",
        )
        .help_template("usage: {usage}\n\n{about}\n\n{all-args}{after-help}")
        .after_help(
            "Exit status: 0 all invariants hold, 1 an invariant failed (or a target with --strict),\n2 usage or set-up error.",
        )
        .arg(
            Arg::new("scenarios")
                .value_name("SCENARIO")
                .num_args(0..)
                .help("all, throughput, baseline, latency, storm, mixed, availability"),
        )
        .arg(value("url", "URL", "ingress (env SLOTQ_URL, default http://127.0.0.1:8080)"))
        .arg(value("database-url", "URL", "the stack's database (env DATABASE_URL)"))
        .arg(value("token", "JWT", "service token (env SLOTQ_TOKEN; else minted from JWT_HS256_SECRET)"))
        .arg(value("payment-secret", "S", "webhook secret (env PAYMENT_WEBHOOK_SECRET), for mixed"))
        .arg(value("duration", "SECS", "throughput, baseline, mixed (default 10)"))
        .arg(value("latency-duration", "SECS", "latency (default: --duration)"))
        .arg(value("concurrency", "N", "clients / connections (default 32)"))
        .arg(value("rate", "R", "latency arrivals per second (default 90)"))
        .arg(value("storm", "K", "storm requests (default 10000)"))
        .arg(value("storm-concurrency", "C", "storm requests in flight (default 256)"))
        .arg(value("practitioners", "P", "throughput grid (default 200)"))
        .arg(value("search-practitioners", "S", "availability search breadth (default 1000)"))
        .arg(value("availability-requests", "M", "requests per availability endpoint (default 200)"))
        .arg(value("mixed-practitioners", "P", "mixed (default 100)"))
        .arg(value("repeat", "R", "baseline/throughput pairs (default 1)"))
        .arg(
            Arg::new("no-full-baseline")
                .long("no-full-baseline")
                .action(ArgAction::SetTrue)
                .help("skip the baseline writing all four rows per request"),
        )
        .arg(value("json", "FILE", "write every figure as JSON"))
        .arg(value("decision-timeout", "SECS", "default 120"))
        .arg(value("max-expiry-wait", "SECS", "mixed: longest wait for holds to expire (default 60)"))
        .arg(value("seed", "N", "default 42"))
        .arg(
            Arg::new("strict")
                .long("strict")
                .action(ArgAction::SetTrue)
                .help("also exit 1 when a target is missed"),
        )
}

impl Settings {
    /// Defaults, overridden by `vars` (environment) then by `args` (without the program name).
    pub fn parse(args: &[String], vars: &HashMap<String, String>) -> anyhow::Result<Self> {
        let var = |k: &str| vars.get(k).filter(|v| !v.is_empty()).cloned();
        let mut s = Settings {
            scenarios: vec![],
            url: var("SLOTQ_URL").unwrap_or_else(|| "http://127.0.0.1:8080".into()),
            database_url: var("DATABASE_URL")
                .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/slotq".into()),
            token: var("SLOTQ_TOKEN").unwrap_or_default(),
            payment_secret: var("PAYMENT_WEBHOOK_SECRET"),
            duration: Duration::from_secs(10),
            latency_duration: Duration::ZERO,
            concurrency: 32,
            rate: 90.0,
            storm: 10_000,
            storm_concurrency: 256,
            practitioners: 200,
            search_practitioners: 1000,
            availability_requests: 200,
            mixed_practitioners: 100,
            repeat: 1,
            full_baseline: true,
            json: None,
            decision_timeout: Duration::from_secs(120),
            max_expiry_wait: Duration::from_secs(60),
            seed: 42,
            strict: false,
        };
        let m = command()
            .try_get_matches_from(
                std::iter::once("slotq-loadtest").chain(args.iter().map(String::as_str)),
            )
            .map_err(|e| anyhow::anyhow!("{}", e.render()))?;
        let text = |name: &str| m.get_one::<String>(name).cloned();
        let secs = |name: &str| -> anyhow::Result<Option<Duration>> {
            let Some(v) = text(name) else { return Ok(None) };
            let f: f64 = v
                .parse()
                .with_context(|| format!("--{name}: not a number"))?;
            anyhow::ensure!(f.is_finite() && f >= 0.0, "--{name}: must be ≥ 0");
            Ok(Some(Duration::from_secs_f64(f)))
        };
        let counted = |name: &str| -> anyhow::Result<Option<usize>> {
            text(name).map(|v| count(name, &v)).transpose()
        };
        for raw in m.get_many::<String>("scenarios").into_iter().flatten() {
            match raw.as_str() {
                "all" => s.scenarios.extend(Scenario::ALL),
                other => s.scenarios.push(other.parse()?),
            }
        }
        if let Some(v) = text("url") {
            s.url = v;
        }
        if let Some(v) = text("database-url") {
            s.database_url = v;
        }
        if let Some(v) = text("token") {
            s.token = v;
        }
        if let Some(v) = text("payment-secret") {
            s.payment_secret = Some(v);
        }
        s.duration = secs("duration")?.unwrap_or(s.duration);
        s.latency_duration = secs("latency-duration")?.unwrap_or(s.latency_duration);
        s.decision_timeout = secs("decision-timeout")?.unwrap_or(s.decision_timeout);
        s.max_expiry_wait = secs("max-expiry-wait")?.unwrap_or(s.max_expiry_wait);
        s.concurrency = counted("concurrency")?.unwrap_or(s.concurrency);
        s.storm = counted("storm")?.unwrap_or(s.storm);
        s.storm_concurrency = counted("storm-concurrency")?.unwrap_or(s.storm_concurrency);
        s.practitioners = counted("practitioners")?.unwrap_or(s.practitioners);
        s.search_practitioners = counted("search-practitioners")?.unwrap_or(s.search_practitioners);
        s.availability_requests =
            counted("availability-requests")?.unwrap_or(s.availability_requests);
        s.mixed_practitioners = counted("mixed-practitioners")?.unwrap_or(s.mixed_practitioners);
        s.repeat = counted("repeat")?.unwrap_or(s.repeat);
        if let Some(v) = text("rate") {
            s.rate = v.parse().context("--rate: not a number")?;
            anyhow::ensure!(s.rate > 0.0 && s.rate.is_finite(), "--rate must be > 0");
        }
        if let Some(v) = text("seed") {
            s.seed = v.parse().context("--seed: not a number")?;
        }
        s.json = text("json").map(PathBuf::from);
        s.full_baseline = !m.get_flag("no-full-baseline");
        s.strict = m.get_flag("strict");
        if s.scenarios.is_empty() {
            bail!("name a scenario (or all)\n\n{}", command().render_help());
        }
        // `throughput` is reported as a ratio to the baseline measured in the same run.
        if s.scenarios.contains(&Scenario::Throughput) && !s.scenarios.contains(&Scenario::Baseline)
        {
            let at = s
                .scenarios
                .iter()
                .position(|x| *x == Scenario::Throughput)
                .unwrap_or(0);
            s.scenarios.insert(at, Scenario::Baseline);
        }
        let mut seen = std::collections::HashSet::new();
        s.scenarios.retain(|x| seen.insert(*x));
        if s.latency_duration.is_zero() {
            s.latency_duration = s.duration;
        }
        if s.token.is_empty() {
            s.token = mint_token(vars)?;
        }
        Ok(s)
    }
}

fn count(flag: &str, v: &str) -> anyhow::Result<usize> {
    let n: usize = v
        .parse()
        .with_context(|| format!("--{flag}: not a count"))?;
    anyhow::ensure!(n > 0, "--{flag} must be at least 1");
    Ok(n)
}

/// A one-day `service` token signed with the stack's `JWT_HS256_SECRET`.
fn mint_token(vars: &HashMap<String, String>) -> anyhow::Result<String> {
    use slotq_security::auth::{AuthConfig, Role, claims, mint_hs256};
    let get = |k: &str, d: &str| {
        vars.get(k)
            .filter(|v| !v.is_empty())
            .cloned()
            .unwrap_or_else(|| d.to_owned())
    };
    let secret = vars
        .get("JWT_HS256_SECRET")
        .filter(|v| !v.is_empty())
        .context("no token: pass --token / SLOTQ_TOKEN, or set JWT_HS256_SECRET to mint one")?;
    let config = AuthConfig {
        hs256_secret: Some(secret.as_str().into()),
        jwks: None,
        issuer: get("JWT_ISSUER", "slotq"),
        audience: get("JWT_AUDIENCE", "slotq-api"),
        leeway: Duration::from_secs(30),
    };
    let c = claims(
        &config,
        Role::Service,
        "loadtest",
        None,
        None,
        Duration::from_secs(86_400),
    );
    Ok(mint_hs256(secret, &c)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    fn vars() -> HashMap<String, String> {
        HashMap::from([("SLOTQ_TOKEN".into(), "t".into())])
    }

    #[test]
    fn throughput_brings_its_baseline_and_all_runs_every_scenario_once() {
        let s = Settings::parse(&args("throughput --duration 3"), &vars()).expect("parses");
        assert_eq!(s.scenarios, vec![Scenario::Baseline, Scenario::Throughput]);
        assert_eq!(s.duration, Duration::from_secs(3));
        assert_eq!(s.latency_duration, Duration::from_secs(3));
        let s = Settings::parse(&args("all storm"), &vars()).expect("parses");
        assert_eq!(s.scenarios, Scenario::ALL.to_vec());
    }

    #[test]
    fn bad_input_is_refused_with_the_usage() {
        assert!(Settings::parse(&args(""), &vars()).is_err());
        assert!(Settings::parse(&args("nope"), &vars()).is_err());
        assert!(Settings::parse(&args("storm --storm 0"), &vars()).is_err());
        assert!(Settings::parse(&args("storm --rate"), &vars()).is_err());
        assert!(Settings::parse(&args("storm --bogus 1"), &vars()).is_err());
        assert!(
            Settings::parse(&args("storm"), &HashMap::new()).is_err(),
            "no token"
        );
    }

    #[test]
    fn a_token_is_minted_from_the_hs256_secret() {
        let v = HashMap::from([("JWT_HS256_SECRET".into(), "s".into())]);
        let s = Settings::parse(&args("storm"), &v).expect("parses");
        assert_eq!(s.token.split('.').count(), 3);
    }
}
