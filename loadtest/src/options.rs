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

/// Usage text.
pub const USAGE: &str = "\
usage: slotq-loadtest [all|throughput|baseline|latency|storm|mixed|availability]... [options]

  --url URL                 ingress (env SLOTQ_URL, default http://127.0.0.1:8080)
  --database-url URL        the stack's database (env DATABASE_URL)
  --token JWT               service token (env SLOTQ_TOKEN; else minted from JWT_HS256_SECRET)
  --payment-secret S        webhook secret (env PAYMENT_WEBHOOK_SECRET), for mixed
  --duration SECS           throughput, baseline, mixed (default 10)
  --latency-duration SECS   latency (default: --duration)
  --concurrency N           clients / connections (default 32)
  --rate R                  latency arrivals per second (default 90)
  --storm K                 storm requests (default 10000)
  --storm-concurrency C     storm requests in flight (default 256)
  --practitioners P         throughput grid (default 200)
  --search-practitioners S  availability search breadth (default 1000)
  --availability-requests M requests per availability endpoint (default 200)
  --mixed-practitioners P   mixed (default 100)
  --repeat R                baseline/throughput pairs (default 1)
  --no-full-baseline        skip the baseline writing all four rows per request
  --json FILE               write every figure as JSON
  --decision-timeout SECS   default 120
  --max-expiry-wait SECS    mixed: longest wait for holds to expire (default 60)
  --seed N                  default 42
  --strict                  also exit 1 when a target is missed

Exit status: 0 all invariants hold, 1 an invariant failed (or a target with --strict),
2 usage or set-up error.";

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
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || {
                it.next()
                    .cloned()
                    .with_context(|| format!("{a} needs a value"))
            };
            let secs = |v: String| -> anyhow::Result<Duration> {
                let f: f64 = v.parse().with_context(|| format!("{a}: not a number"))?;
                anyhow::ensure!(f.is_finite() && f >= 0.0, "{a}: must be ≥ 0");
                Ok(Duration::from_secs_f64(f))
            };
            match a.as_str() {
                "all" => s.scenarios.extend(Scenario::ALL),
                "--url" => s.url = value()?,
                "--database-url" => s.database_url = value()?,
                "--token" => s.token = value()?,
                "--payment-secret" => s.payment_secret = Some(value()?),
                "--duration" => s.duration = secs(value()?)?,
                "--latency-duration" => s.latency_duration = secs(value()?)?,
                "--concurrency" => s.concurrency = count(a, &value()?)?,
                "--rate" => {
                    s.rate = value()?.parse().context("--rate: not a number")?;
                    anyhow::ensure!(s.rate > 0.0 && s.rate.is_finite(), "--rate must be > 0");
                }
                "--storm" => s.storm = count(a, &value()?)?,
                "--storm-concurrency" => s.storm_concurrency = count(a, &value()?)?,
                "--practitioners" => s.practitioners = count(a, &value()?)?,
                "--search-practitioners" => s.search_practitioners = count(a, &value()?)?,
                "--availability-requests" => s.availability_requests = count(a, &value()?)?,
                "--mixed-practitioners" => s.mixed_practitioners = count(a, &value()?)?,
                "--repeat" => s.repeat = count(a, &value()?)?,
                "--no-full-baseline" => s.full_baseline = false,
                "--json" => s.json = Some(PathBuf::from(value()?)),
                "--decision-timeout" => s.decision_timeout = secs(value()?)?,
                "--max-expiry-wait" => s.max_expiry_wait = secs(value()?)?,
                "--seed" => s.seed = value()?.parse().context("--seed: not a number")?,
                "--strict" => s.strict = true,
                "-h" | "--help" => bail!("{USAGE}"),
                other if other.starts_with('-') => bail!("unknown option {other:?}\n\n{USAGE}"),
                other => s.scenarios.push(other.parse()?),
            }
        }
        if s.scenarios.is_empty() {
            bail!("name a scenario (or all)\n\n{USAGE}");
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
    let n: usize = v.parse().with_context(|| format!("{flag}: not a count"))?;
    anyhow::ensure!(n > 0, "{flag} must be at least 1");
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
