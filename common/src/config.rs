//! Configuration from environment variables.
//!
//! Every knob has a local default so `cargo run` works on a developer machine; the names are
//! part of the public contract (scripts, the Helm chart and the README use them). The whole
//! configuration is parsed and validated before any port is bound: a bad value stops the
//! process with exit code 64 (`EX_USAGE`) and a message naming the variable.

use std::{collections::HashMap, fmt::Display, net::SocketAddr, str::FromStr, time::Duration};

/// Exit code for a configuration error (BSD `EX_USAGE`).
pub const EXIT_CONFIG: i32 = 64;

/// Which process reads the configuration: it decides the default admin port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The REST API.
    Ingress,
    /// The hold-committing worker pool.
    Workers,
    /// Expiry and maintenance.
    Scheduler,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The whole configuration of a slotq process.
#[derive(Clone, Debug)]
pub struct Config {
    /// PostgreSQL connection URL.
    pub database_url: String,
    /// Maximum connections in this process's PostgreSQL pool.
    pub db_max_connections: u32,
    /// Redis connection URL (queue, fast status, availability, idempotency).
    pub redis_url: String,
    /// Prefix of every Redis key and of the queue name.
    pub redis_namespace: String,
    /// Ingress listen address.
    pub http_addr: SocketAddr,
    /// Admin listener (`/metrics`, `/healthz`, `/readyz`) of workers and scheduler.
    pub admin_addr: SocketAddr,
    /// How long a hold lasts before the scheduler expires it.
    pub hold_ttl: Duration,
    /// HMAC secret shared with the payment provider; `None` refuses every webhook.
    pub payment_webhook_secret: Option<String>,
    /// Tolerated distance between a webhook's timestamp and our clock.
    pub payment_webhook_tolerance: Duration,
    /// Jobs a worker process runs at once (must be at least `batch_max` to fill batches).
    pub worker_concurrency: usize,
    /// Holds committed per transaction at most.
    pub batch_max: usize,
    /// How long the batcher waits for more jobs once it has one.
    pub batch_linger: Duration,
    /// Batches committed in parallel by one worker process.
    pub committers: usize,
    /// Ready jobs above which ingress sheds load with 503.
    pub max_queue_depth: u64,
    /// How far ahead slots can be booked.
    pub booking_horizon_days: u32,
    /// Whether ingress checks the Redis availability bitmap before enqueueing.
    pub precheck: bool,
    /// Apply migrations at start-up.
    pub auto_migrate: bool,
    /// Log format.
    pub log_format: LogFormat,
    /// apalis heartbeat interval of worker processes.
    pub heartbeat_interval: Duration,
    /// Missed heartbeats after which a worker's jobs are handed to others.
    pub missed_heartbeats: usize,
    /// Scheduler sweep interval.
    pub expiry_interval: Duration,
    /// Holds expired per scheduler transaction at most.
    pub expiry_batch: i64,
    /// Longest `?wait=` accepted on the poll endpoint.
    pub max_poll_wait: Duration,
    /// Largest request body ingress accepts.
    pub max_body_bytes: usize,
}

/// A configuration problem, naming the variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {var}={value:?}: {problem}")]
pub struct ConfigError {
    /// The environment variable.
    pub var: &'static str,
    /// The value found.
    pub value: String,
    /// What is wrong with it.
    pub problem: String,
}

impl Config {
    /// Reads the configuration of `role` from the process environment.
    pub fn from_env(role: Role) -> Result<Self, ConfigError> {
        Self::from_vars(role, &std::env::vars().collect())
    }

    /// Reads the configuration from a map of variables (tests build one directly).
    pub fn from_vars(role: Role, vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let env = Env(vars);
        let default_admin = match role {
            Role::Scheduler => "127.0.0.1:9091",
            _ => "127.0.0.1:9090",
        };
        let batch_max: usize = env.parse("BATCH_MAX", "128")?;
        let config = Config {
            database_url: env.string("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/slotq"),
            db_max_connections: env.parse("DB_MAX_CONNECTIONS", "16")?,
            redis_url: env.string("REDIS_URL", "redis://127.0.0.1:6379"),
            redis_namespace: env.string("REDIS_NAMESPACE", "slotq"),
            http_addr: env.parse("HTTP_ADDR", "127.0.0.1:8080")?,
            admin_addr: env.parse("ADMIN_ADDR", default_admin)?,
            hold_ttl: Duration::from_secs(env.parse("HOLD_TTL_SECS", "300")?),
            payment_webhook_secret: env
                .0
                .get("PAYMENT_WEBHOOK_SECRET")
                .filter(|s| !s.is_empty())
                .cloned(),
            payment_webhook_tolerance: Duration::from_secs(
                env.parse("PAYMENT_WEBHOOK_TOLERANCE_SECS", "300")?,
            ),
            worker_concurrency: env.parse("WORKER_CONCURRENCY", &(batch_max * 4).to_string())?,
            batch_max,
            batch_linger: Duration::from_millis(env.parse("BATCH_LINGER_MS", "2")?),
            committers: env.parse("BATCH_COMMITTERS", "2")?,
            max_queue_depth: env.parse("MAX_QUEUE_DEPTH", "100000")?,
            booking_horizon_days: env.parse("BOOKING_HORIZON_DAYS", "60")?,
            precheck: env.flag("PRECHECK", true)?,
            auto_migrate: env.flag("AUTO_MIGRATE", false)?,
            log_format: match env.string("LOG_FORMAT", "text").as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(ConfigError::new(
                        "LOG_FORMAT",
                        other,
                        "expected text or json",
                    ));
                }
            },
            heartbeat_interval: Duration::from_millis(env.parse("WORKER_HEARTBEAT_MS", "2000")?),
            missed_heartbeats: env.parse("WORKER_MISSED_HEARTBEATS", "4")?,
            expiry_interval: Duration::from_millis(env.parse("EXPIRY_INTERVAL_MS", "1000")?),
            expiry_batch: env.parse("EXPIRY_BATCH", "500")?,
            max_poll_wait: Duration::from_secs(30),
            max_body_bytes: env.parse("MAX_BODY_BYTES", "65536")?,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("BATCH_MAX", self.batch_max),
            ("WORKER_CONCURRENCY", self.worker_concurrency),
            ("BATCH_COMMITTERS", self.committers),
            ("DB_MAX_CONNECTIONS", self.db_max_connections as usize),
            ("BOOKING_HORIZON_DAYS", self.booking_horizon_days as usize),
            ("WORKER_MISSED_HEARTBEATS", self.missed_heartbeats),
            ("MAX_BODY_BYTES", self.max_body_bytes),
        ];
        for (var, value) in positive {
            if value == 0 {
                return Err(ConfigError::new(var, "0", "must be at least 1"));
            }
        }
        if self.hold_ttl.is_zero() {
            return Err(ConfigError::new("HOLD_TTL_SECS", "0", "must be at least 1"));
        }
        if self.expiry_batch < 1 {
            return Err(ConfigError::new(
                "EXPIRY_BATCH",
                self.expiry_batch,
                "must be at least 1",
            ));
        }
        if self.heartbeat_interval < Duration::from_millis(100) {
            return Err(ConfigError::new(
                "WORKER_HEARTBEAT_MS",
                self.heartbeat_interval.as_millis(),
                "must be at least 100",
            ));
        }
        if self.redis_namespace.is_empty() || self.redis_namespace.contains(char::is_whitespace) {
            return Err(ConfigError::new(
                "REDIS_NAMESPACE",
                &self.redis_namespace,
                "must be non-empty without spaces",
            ));
        }
        Ok(())
    }

    /// The apalis queue name of hold jobs, inside the namespace.
    pub fn holds_queue(&self) -> String {
        format!("{}:holds", self.redis_namespace)
    }
}

impl ConfigError {
    fn new(var: &'static str, value: impl Display, problem: &str) -> Self {
        Self {
            var,
            value: value.to_string(),
            problem: problem.to_owned(),
        }
    }
}

struct Env<'a>(&'a HashMap<String, String>);

impl Env<'_> {
    fn string(&self, var: &str, default: &str) -> String {
        self.0
            .get(var)
            .filter(|s| !s.is_empty())
            .cloned()
            .unwrap_or_else(|| default.to_owned())
    }

    fn parse<T: FromStr>(&self, var: &'static str, default: &str) -> Result<T, ConfigError>
    where
        T::Err: Display,
    {
        let raw = self.string(var, default);
        raw.trim()
            .parse()
            .map_err(|e: T::Err| ConfigError::new(var, &raw, &e.to_string()))
    }

    fn flag(&self, var: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self
            .0
            .get(var)
            .map(|s| s.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("") => Ok(default),
            Some("1" | "true" | "yes" | "on") => Ok(true),
            Some("0" | "false" | "no" | "off") => Ok(false),
            Some(other) => Err(ConfigError::new(var, other, "expected 1 or 0")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_documented_contract() {
        let c = Config::from_vars(Role::Workers, &HashMap::new()).expect("defaults are valid");
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.admin_addr.to_string(), "127.0.0.1:9090");
        assert_eq!(c.hold_ttl, Duration::from_secs(300));
        assert_eq!(c.max_queue_depth, 100_000);
        assert_eq!(c.booking_horizon_days, 60);
        assert!(c.payment_webhook_secret.is_none());
        assert!(!c.auto_migrate);
        assert_eq!(c.holds_queue(), "slotq:holds");
        let s = Config::from_vars(Role::Scheduler, &HashMap::new()).expect("defaults are valid");
        assert_eq!(s.admin_addr.to_string(), "127.0.0.1:9091");
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err =
            Config::from_vars(Role::Ingress, &vars(&[("HOLD_TTL_SECS", "soon")])).unwrap_err();
        assert_eq!(err.var, "HOLD_TTL_SECS");
        let err = Config::from_vars(Role::Ingress, &vars(&[("BATCH_MAX", "0")])).unwrap_err();
        assert_eq!(err.var, "BATCH_MAX");
        let err =
            Config::from_vars(Role::Ingress, &vars(&[("AUTO_MIGRATE", "maybe")])).unwrap_err();
        assert_eq!(err.var, "AUTO_MIGRATE");
    }
}
