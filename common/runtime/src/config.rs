//! Configuration from environment variables.
//!
//! Every knob has a local default so `cargo run` works on a developer machine; the names are
//! part of the public contract (scripts, the Helm chart and the README use them). The whole
//! configuration is parsed and validated before any port is bound: a bad value stops the
//! process with exit code 64 (`EX_USAGE`) and a message naming the variable.
//!
//! Longer than most modules: every environment variable with its default and validation, in one place operators can read.

use secrecy::SecretString;
use std::{collections::HashMap, fmt::Display, net::SocketAddr, str::FromStr, time::Duration};

/// Exit code for a configuration error (BSD `EX_USAGE`).
pub const EXIT_CONFIG: i32 = 64;

/// Which process reads the configuration: it decides the default admin port, and which
/// settings must be usable at start-up.
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
    pub payment_webhook_secret: Option<SecretString>,
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
    /// The outbox relay to Kafka; `None` (relay off) when `KAFKA_BROKERS` is unset.
    pub kafka: Option<KafkaConfig>,
    /// Outbox polling (relay and webhook dispatcher) and retention.
    pub outbox: OutboxConfig,
    /// Outbound client webhooks.
    pub webhooks: WebhookConfig,
    /// Whether ingress checks the Redis availability bitmap before enqueueing.
    pub precheck: bool,
    /// Apply migrations at start-up.
    pub auto_migrate: bool,
    /// Log format.
    pub log_format: LogFormat,
    /// apalis heartbeat interval of worker processes.
    pub heartbeat_interval: Duration,
    /// How often an idle worker asks Redis for new jobs, ms.
    pub poll_interval_ms: u64,
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
    /// How long ingress keeps serving, with `/readyz` answering 503, between SIGTERM and
    /// closing its listener, so load balancers stop sending it traffic first.
    pub shutdown_delay: Duration,
    /// Token verification (`JWT_*`).
    pub auth: slotq_security::auth::AuthConfig,
    /// Personal-data encryption keys (`PII_KEYS`, `PII_INDEX_KEY`); `None` = development keys.
    pub pii: Option<slotq_security::pii::PiiKeys>,
    /// Request rate limits (`RATE_LIMIT_*`).
    pub rate_limits: slotq_redis::rate_limit::RateLimits,
    /// Per-request time limit of ingress (long-polls excepted).
    pub request_timeout: Duration,
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
            Role::Workers => "127.0.0.1:9090",
            Role::Scheduler => "127.0.0.1:9091",
            Role::Ingress => "127.0.0.1:9099",
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
                .map(|s| SecretString::from(s.as_str())),
            payment_webhook_tolerance: Duration::from_secs(
                env.parse("PAYMENT_WEBHOOK_TOLERANCE_SECS", "300")?,
            ),
            worker_concurrency: env
                .parse("WORKER_CONCURRENCY", &(batch_max * 4).min(4000).to_string())?,
            batch_max,
            batch_linger: Duration::from_millis(env.parse("BATCH_LINGER_MS", "2")?),
            committers: env.parse("BATCH_COMMITTERS", "2")?,
            max_queue_depth: env.parse("MAX_QUEUE_DEPTH", "100000")?,
            booking_horizon_days: env.parse("BOOKING_HORIZON_DAYS", "60")?,
            kafka: KafkaConfig::from_env(&env)?,
            outbox: OutboxConfig::from_env(&env)?,
            webhooks: WebhookConfig::from_env(&env)?,
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
            poll_interval_ms: env.parse("WORKER_POLL_MS", "5")?,
            expiry_interval: Duration::from_millis(env.parse("EXPIRY_INTERVAL_MS", "1000")?),
            expiry_batch: env.parse("EXPIRY_BATCH", "500")?,
            max_poll_wait: Duration::from_secs(30),
            max_body_bytes: env.parse("MAX_BODY_BYTES", "65536")?,
            shutdown_delay: Duration::from_millis(env.parse("SHUTDOWN_DELAY_MS", "0")?),
            auth: slotq_security::auth::AuthConfig {
                hs256_secret: env
                    .0
                    .get("JWT_HS256_SECRET")
                    .filter(|s| !s.is_empty())
                    .map(|s| SecretString::from(s.as_str())),
                jwks: env.0.get("JWT_JWKS").filter(|s| !s.is_empty()).cloned(),
                issuer: env.string("JWT_ISSUER", "slotq"),
                audience: env.string("JWT_AUDIENCE", "slotq-api"),
                leeway: Duration::from_secs(env.parse("JWT_LEEWAY_SECS", "30")?),
            },
            pii: match env.0.get("PII_KEYS").filter(|s| !s.is_empty()) {
                None => None,
                Some(keys) => {
                    let index = env.string("PII_INDEX_KEY", "");
                    Some(
                        slotq_security::pii::PiiKeys::parse(keys, &index).map_err(|e| {
                            // Name the variable the problem is in.
                            let var = if e.0.starts_with("index key") {
                                "PII_INDEX_KEY"
                            } else {
                                "PII_KEYS"
                            };
                            ConfigError::new(var, "(hidden)", &e.0)
                        })?,
                    )
                }
            },
            rate_limits: slotq_redis::rate_limit::RateLimits {
                enabled: env.flag("RATE_LIMIT_ENABLED", true)?,
                read: limit(&env, "RATE_LIMIT_READ", "50/100")?,
                write: limit(&env, "RATE_LIMIT_WRITE", "10/30")?,
                booking: limit(&env, "RATE_LIMIT_BOOKING", "1/10")?,
            },
            request_timeout: Duration::from_secs(env.parse("REQUEST_TIMEOUT_SECS", "10")?),
        };
        config.validate()?;
        // Only ingress verifies tokens. A key set file that is not there now will not be there
        // for the first request either: every token would be refused behind a ready probe.
        if role == Role::Ingress
            && let Some(path) = config.auth.jwks.as_deref()
            && !(path.starts_with("http://") || path.starts_with("https://"))
            && let Err(e) = std::fs::read_to_string(path)
        {
            return Err(ConfigError::new(
                "JWT_JWKS",
                path,
                &format!("cannot read the key set file: {e}"),
            ));
        }
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
            ("WORKER_POLL_MS", self.poll_interval_ms as usize),
        ];
        for (var, value) in positive {
            if value == 0 {
                return Err(ConfigError::new(var, "0", "must be at least 1"));
            }
        }
        // apalis' orphan recovery moves a dead worker's whole in-flight set with one Lua
        // `unpack`, which fails above ~8,000 values.
        if self.worker_concurrency > 4000 {
            return Err(ConfigError::new(
                "WORKER_CONCURRENCY",
                self.worker_concurrency,
                "must be at most 4000 (run more worker processes instead)",
            ));
        }
        if self.expiry_interval.is_zero() {
            return Err(ConfigError::new(
                "EXPIRY_INTERVAL_MS",
                "0",
                "must be at least 1",
            ));
        }
        if !(self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://"))
        {
            return Err(ConfigError::new(
                "DATABASE_URL",
                "(hidden)",
                "must be a postgres:// or postgresql:// URL",
            ));
        }
        if let Err(e) = redis::IntoConnectionInfo::into_connection_info(self.redis_url.as_str()) {
            return Err(ConfigError::new(
                "REDIS_URL",
                "(hidden)",
                &format!("not a Redis URL: {e}"),
            ));
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

    /// The hold queue's settings: namespace, batch size and heartbeats.
    pub fn queue(&self) -> slotq_redis::queue::QueueSettings {
        slotq_redis::queue::QueueSettings {
            namespace: self.redis_namespace.clone(),
            batch_max: self.batch_max,
            heartbeat_interval: self.heartbeat_interval,
            missed_heartbeats: self.missed_heartbeats,
        }
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

fn limit(
    env: &Env<'_>,
    var: &'static str,
    default: &str,
) -> Result<slotq_redis::rate_limit::Limit, ConfigError> {
    let raw = env.string(var, default);
    slotq_redis::rate_limit::Limit::parse(&raw).map_err(|e| ConfigError::new(var, &raw, &e))
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

/// The outbox relay to Kafka.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    /// `KAFKA_BROKERS`: bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// `KAFKA_TOPIC`: where booking events go.
    pub topic: String,
    /// `KAFKA_MESSAGE_TIMEOUT_MS`: how long the producer tries to deliver one batch before the
    /// relay gives up, releases the rows and backs off.
    pub message_timeout: Duration,
    /// `KAFKA_PROPERTIES`: extra librdkafka properties (`key=value,key=value`), e.g.
    /// `linger.ms=20`; they cannot turn idempotence or `acks=all` off.
    pub properties: Vec<(String, String)>,
    /// `KAFKA_CREATE_TOPIC=1`: create the topic when it is missing (off by default: most
    /// production clusters create topics by hand, with their own settings).
    pub create_topic: Option<NewTopicSettings>,
}

/// How `KAFKA_CREATE_TOPIC=1` creates the topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewTopicSettings {
    /// `KAFKA_TOPIC_PARTITIONS` (default 6): events are keyed by practitioner, so partitions
    /// bound how many consumers share the stream.
    pub partitions: i32,
    /// `KAFKA_TOPIC_REPLICATION` (default 3; 1 for a single local broker).
    pub replication: i32,
}

impl KafkaConfig {
    fn from_env(env: &Env<'_>) -> Result<Option<Self>, ConfigError> {
        let brokers = env.string("KAFKA_BROKERS", "");
        if brokers.trim().is_empty() {
            return Ok(None);
        }
        let topic = env.string("KAFKA_TOPIC", "booking-events");
        if topic.len() > 249
            || !topic
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(ConfigError::new(
                "KAFKA_TOPIC",
                &topic,
                "expected at most 249 of [A-Za-z0-9._-]",
            ));
        }
        let message_timeout =
            Duration::from_millis(env.parse("KAFKA_MESSAGE_TIMEOUT_MS", "10000")?);
        if message_timeout < Duration::from_millis(100) {
            return Err(ConfigError::new(
                "KAFKA_MESSAGE_TIMEOUT_MS",
                message_timeout.as_millis(),
                "must be at least 100",
            ));
        }
        let raw = env.string("KAFKA_PROPERTIES", "");
        let mut properties = Vec::new();
        for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    properties.push((k.trim().to_owned(), v.trim().to_owned()));
                }
                _ => {
                    return Err(ConfigError::new(
                        "KAFKA_PROPERTIES",
                        &raw,
                        "expected key=value[,key=value…]",
                    ));
                }
            }
        }
        let create_topic = if env.flag("KAFKA_CREATE_TOPIC", false)? {
            let partitions: i32 = env.parse("KAFKA_TOPIC_PARTITIONS", "6")?;
            let replication: i32 = env.parse("KAFKA_TOPIC_REPLICATION", "3")?;
            if !(1..=10_000).contains(&partitions) {
                return Err(ConfigError::new(
                    "KAFKA_TOPIC_PARTITIONS",
                    partitions,
                    "expected 1 to 10000",
                ));
            }
            if !(1..=32).contains(&replication) {
                return Err(ConfigError::new(
                    "KAFKA_TOPIC_REPLICATION",
                    replication,
                    "expected 1 to 32",
                ));
            }
            Some(NewTopicSettings {
                partitions,
                replication,
            })
        } else {
            None
        };
        Ok(Some(KafkaConfig {
            brokers: brokers.trim().to_owned(),
            topic,
            message_timeout,
            properties,
            create_topic,
        }))
    }
}

/// Outbox polling and retention.
#[derive(Clone, Debug)]
pub struct OutboxConfig {
    /// `OUTBOX_BATCH`: rows the relay and the dispatcher claim at once.
    pub batch: i64,
    /// `OUTBOX_POLL_MS`: how often an idle relay or dispatcher looks for new rows.
    pub poll_interval: Duration,
    /// `OUTBOX_RETENTION_SECS`: published (and dispatched) events older than this are deleted
    /// by the scheduler.
    pub retention: Duration,
}

impl OutboxConfig {
    fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let batch: i64 = env.parse("OUTBOX_BATCH", "500")?;
        if !(1..=10_000).contains(&batch) {
            return Err(ConfigError::new(
                "OUTBOX_BATCH",
                batch,
                "must be 1 to 10000",
            ));
        }
        let poll_ms: u64 = env.parse("OUTBOX_POLL_MS", "100")?;
        if poll_ms < 5 {
            return Err(ConfigError::new(
                "OUTBOX_POLL_MS",
                poll_ms,
                "must be at least 5",
            ));
        }
        let retention: u64 = env.parse("OUTBOX_RETENTION_SECS", "604800")?;
        if retention == 0 {
            return Err(ConfigError::new(
                "OUTBOX_RETENTION_SECS",
                0,
                "must be at least 1",
            ));
        }
        Ok(OutboxConfig {
            batch,
            poll_interval: Duration::from_millis(poll_ms),
            retention: Duration::from_secs(retention),
        })
    }
}

/// Outbound client webhooks.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// `WEBHOOK_DISPATCH`: whether this worker process runs the dispatcher.
    pub dispatch: bool,
    /// `WEBHOOK_ALLOW_PRIVATE`: allow private and loopback targets (tests, closed networks).
    pub allow_private: bool,
    /// `WEBHOOK_TIMEOUT_MS`: one attempt's limit, connection included.
    pub timeout: Duration,
    /// `WEBHOOK_CONCURRENCY`: attempts in flight per worker process.
    pub concurrency: usize,
    /// `WEBHOOK_RETRY_BASE_MS`: the first retry's delay; each next one doubles (± jitter).
    pub retry_base: Duration,
    /// `WEBHOOK_RETRY_MAX_MS`: the longest delay between two attempts.
    pub retry_max: Duration,
    /// `WEBHOOK_RETRY_WINDOW_SECS`: how long a delivery is retried before it is dead-lettered.
    pub retry_window: Duration,
}

impl WebhookConfig {
    fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let c = WebhookConfig {
            dispatch: env.flag("WEBHOOK_DISPATCH", true)?,
            allow_private: env.flag("WEBHOOK_ALLOW_PRIVATE", false)?,
            timeout: Duration::from_millis(env.parse("WEBHOOK_TIMEOUT_MS", "10000")?),
            concurrency: env.parse("WEBHOOK_CONCURRENCY", "32")?,
            retry_base: Duration::from_millis(env.parse("WEBHOOK_RETRY_BASE_MS", "5000")?),
            retry_max: Duration::from_millis(env.parse("WEBHOOK_RETRY_MAX_MS", "3600000")?),
            retry_window: Duration::from_secs(env.parse("WEBHOOK_RETRY_WINDOW_SECS", "86400")?),
        };
        let positive = [
            ("WEBHOOK_TIMEOUT_MS", c.timeout.as_millis()),
            ("WEBHOOK_CONCURRENCY", c.concurrency as u128),
            ("WEBHOOK_RETRY_BASE_MS", c.retry_base.as_millis()),
            ("WEBHOOK_RETRY_WINDOW_SECS", c.retry_window.as_secs().into()),
        ];
        for (var, value) in positive {
            if value == 0 {
                return Err(ConfigError::new(var, "0", "must be at least 1"));
            }
        }
        if c.retry_max < c.retry_base {
            return Err(ConfigError::new(
                "WEBHOOK_RETRY_MAX_MS",
                c.retry_max.as_millis(),
                "must be at least WEBHOOK_RETRY_BASE_MS",
            ));
        }
        Ok(c)
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
        assert_eq!(c.queue().holds_queue(), "slotq:holds");
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
        // Values that used to start the process (and fail, or panic, later).
        for (role, var, value) in [
            (Role::Scheduler, "EXPIRY_INTERVAL_MS", "0"),
            (Role::Workers, "DATABASE_URL", "mysql://x"),
            (Role::Workers, "REDIS_URL", "notaurl"),
            (Role::Ingress, "JWT_JWKS", "/nonexistent/jwks.json"),
        ] {
            let err = Config::from_vars(role, &vars(&[(var, value)])).unwrap_err();
            assert_eq!(err.var, var, "{value}");
        }
        // Processes that verify no token do not need the key set file.
        assert!(
            Config::from_vars(
                Role::Workers,
                &vars(&[("JWT_JWKS", "/nonexistent/jwks.json")])
            )
            .is_ok()
        );
        let key = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let err = Config::from_vars(
            Role::Ingress,
            &vars(&[("PII_KEYS", key), ("PII_INDEX_KEY", "c2hvcnQ=")]),
        )
        .unwrap_err();
        assert_eq!(err.var, "PII_INDEX_KEY");
        // A JWKS file that exists is accepted (its keys are read when a token needs one).
        let file = std::env::temp_dir().join(format!("slotq-jwks-{}.json", std::process::id()));
        std::fs::write(&file, r#"{"keys":[]}"#).unwrap();
        let c = Config::from_vars(
            Role::Ingress,
            &vars(&[("JWT_JWKS", file.to_str().unwrap())]),
        );
        std::fs::remove_file(&file).unwrap();
        assert!(c.is_ok(), "{:?}", c.err());
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let c = Config::from_vars(
            Role::Ingress,
            &vars(&[
                ("JWT_HS256_SECRET", "jwt-topsecret"),
                ("PAYMENT_WEBHOOK_SECRET", "pay-topsecret"),
            ]),
        )
        .expect("valid");
        let shown = format!("{c:?}");
        assert!(!shown.contains("topsecret"), "{shown}");
        assert!(c.payment_webhook_secret.is_some() && c.auth.hs256_secret.is_some());
    }

    #[test]
    fn kafka_is_off_unless_brokers_are_set_and_outbound_defaults_hold() {
        let c = Config::from_vars(Role::Workers, &HashMap::new()).expect("defaults are valid");
        assert!(c.kafka.is_none());
        assert_eq!(c.outbox.retention, Duration::from_secs(7 * 24 * 3600));
        assert!(c.webhooks.dispatch);
        assert!(!c.webhooks.allow_private);
        assert_eq!(c.webhooks.retry_window, Duration::from_secs(24 * 3600));
        let c = Config::from_vars(
            Role::Workers,
            &vars(&[
                ("KAFKA_BROKERS", "k1:9092,k2:9092"),
                ("KAFKA_PROPERTIES", "linger.ms=20, client.rack=eu-1a"),
            ]),
        )
        .expect("valid");
        let k = c.kafka.expect("relay on");
        assert_eq!(k.brokers, "k1:9092,k2:9092");
        assert_eq!(k.topic, "booking-events");
        assert_eq!(
            k.properties,
            vec![
                ("linger.ms".to_owned(), "20".to_owned()),
                ("client.rack".to_owned(), "eu-1a".to_owned())
            ]
        );
        assert_eq!(k.create_topic, None, "topics are not created unless asked");
        let k = Config::from_vars(
            Role::Workers,
            &vars(&[
                ("KAFKA_BROKERS", "k1:9092"),
                ("KAFKA_CREATE_TOPIC", "1"),
                ("KAFKA_TOPIC_REPLICATION", "1"),
            ]),
        )
        .expect("valid")
        .kafka
        .expect("relay on");
        assert_eq!(
            k.create_topic,
            Some(NewTopicSettings {
                partitions: 6,
                replication: 1
            })
        );
        for (var, value) in [
            ("KAFKA_TOPIC_PARTITIONS", "0"),
            ("KAFKA_TOPIC_REPLICATION", "x"),
        ] {
            let e = Config::from_vars(
                Role::Workers,
                &vars(&[
                    ("KAFKA_BROKERS", "k1:9092"),
                    ("KAFKA_CREATE_TOPIC", "1"),
                    (var, value),
                ]),
            )
            .expect_err("refused");
            assert!(e.to_string().contains(var), "{e}");
        }
        for (var, value) in [
            ("KAFKA_PROPERTIES", "linger.ms"),
            ("KAFKA_TOPIC", "booking events"),
            ("WEBHOOK_ALLOW_PRIVATE", "maybe"),
            ("WEBHOOK_RETRY_MAX_MS", "10"),
            ("OUTBOX_BATCH", "0"),
        ] {
            let err = Config::from_vars(
                Role::Workers,
                &vars(&[("KAFKA_BROKERS", "k:9092"), (var, value)]),
            )
            .unwrap_err();
            assert_eq!(err.var, var);
        }
    }
}
