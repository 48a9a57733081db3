//! Starts slotq in-process for integration tests, each test with its own PostgreSQL database
//! and Redis namespace, so tests run in parallel against the real engines.
//!
//! `TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`) names the
//! server; `REDIS_URL` the Redis. Databases are named `slotq_test_<random>` and dropped when
//! the test finishes normally ([`TestApp::stop`]).
//!
//! Longer than most modules: the harness every integration test shares; splitting it would scatter one API.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use chrono::{DateTime, Duration as ChronoDuration, Timelike, Utc};
use serde_json::{Value, json};
use slotq_runtime::config::{Config, Role as ConfigRole};
use slotq_runtime::shutdown::{self, Trigger};
use slotq_security::auth::Role;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

/// Which processes to start besides the ingress.
#[derive(Clone, Debug)]
pub struct Options {
    /// Start the worker pool in-process.
    pub workers: bool,
    /// Start the scheduler in-process.
    pub scheduler: bool,
    /// Extra environment variables for the configuration.
    pub env: Vec<(&'static str, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            workers: true,
            scheduler: true,
            env: vec![],
        }
    }
}

/// A running slotq.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The ingress admin listener (`/metrics`).
    pub admin: String,
    /// HTTP client, authenticated as a trusted `service` back end.
    pub http: reqwest::Client,
    /// The test's database.
    pub pool: PgPool,
    /// Redis connection.
    pub redis: redis::aio::ConnectionManager,
    /// The configuration every component runs with.
    pub config: Config,
    /// Environment variables equivalent to `config` (for child processes).
    pub env: HashMap<String, String>,
    /// Payment webhook secret.
    pub secret: String,
    db_name: String,
    trigger: Trigger,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn with_db(url: &str, db: &str) -> String {
    match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{db}"),
        None => format!("{url}/{db}"),
    }
}

/// Starts slotq with `options`.
pub async fn spawn(options: Options) -> TestApp {
    let id = Uuid::new_v4().simple().to_string();
    let db_name = format!("slotq_test_{}", &id[..16]);
    let admin = admin_url();
    let mut conn = PgConnection::connect(&admin)
        .await
        .expect("connect to PostgreSQL (is it running?)");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    conn.close().await.ok();

    let secret = format!("whsec_{}", &id[16..]);
    let mut env: HashMap<String, String> = HashMap::from([
        ("DATABASE_URL".into(), with_db(&admin, &db_name)),
        (
            "REDIS_URL".into(),
            std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        ),
        ("REDIS_NAMESPACE".into(), format!("t{}", &id[..12])),
        ("HTTP_ADDR".into(), "127.0.0.1:0".into()),
        ("ADMIN_ADDR".into(), "127.0.0.1:0".into()),
        ("PAYMENT_WEBHOOK_SECRET".into(), secret.clone()),
        ("DB_MAX_CONNECTIONS".into(), "8".into()),
        ("BATCH_MAX".into(), "64".into()),
        ("WORKER_HEARTBEAT_MS".into(), "500".into()),
        ("EXPIRY_INTERVAL_MS".into(), "200".into()),
        ("JWT_HS256_SECRET".into(), format!("jwt-{id}")),
        // Tests hammer one IP; the rate-limit test turns limits back on.
        ("RATE_LIMIT_ENABLED".into(), "0".into()),
        ("PII_KEYS".into(), format!("t1:{}", b64(&[7u8; 32]))),
        ("PII_INDEX_KEY".into(), b64(&[8u8; 32])),
    ]);
    for (k, v) in &options.env {
        env.insert((*k).to_owned(), v.clone());
    }
    let config = Config::from_vars(ConfigRole::Ingress, &env).expect("test configuration");
    let pool = slotq_store::connect(&config.database_url, 4)
        .await
        .expect("connect test database");
    slotq_store::migrate(&pool)
        .await
        .expect("migrate test database");
    let redis = slotq_redis::connect(&config.redis_url)
        .await
        .expect("connect to Redis (is it running?)");

    let (trigger, stop) = shutdown::channel();
    let mut tasks = Vec::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let state = slotq_ingress::AppState::connect(config.clone(), stop.clone())
        .await
        .expect("start ingress");
    let running = slotq_ingress::serve(listener, state).await.expect("serve");
    let addr: SocketAddr = running.addr;
    let admin_addr: SocketAddr = running.admin_addr;
    tasks.push(tokio::spawn(async move {
        let _ = running.handle.await;
    }));
    if options.workers {
        let (c, s) = (
            Config::from_vars(ConfigRole::Workers, &env).expect("config"),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            if let Err(e) = slotq_workers::run(c, s, |_| {}).await {
                eprintln!("workers failed: {e:?}");
            }
        }));
    }
    if options.scheduler {
        let (c, s) = (
            Config::from_vars(ConfigRole::Scheduler, &env).expect("config"),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            if let Err(e) = slotq_scheduler::run(c, s, |_| {}).await {
                eprintln!("scheduler failed: {e:?}");
            }
        }));
    }
    let service = mint(&config, Role::Service, "test-service", None, None);
    let http = client(&service);
    TestApp {
        base: format!("http://{addr}"),
        admin: format!("http://{admin_addr}"),
        http,
        pool,
        redis,
        config,
        env,
        secret,
        db_name,
        trigger,
        tasks,
    }
}

/// A practitioner, a patient factory and bookable slots.
pub struct Fixture {
    /// Clinic id.
    pub clinic_id: Uuid,
    /// Practitioner id (30-minute slots, every day 00:00–23:30 UTC).
    pub practitioner_id: Uuid,
    /// A patient.
    pub patient_id: Uuid,
}

/// Sends `req`, returning status, content type (empty when absent) and body (JSON or null).
pub async fn send(req: reqwest::RequestBuilder) -> (u16, String, Value) {
    let res = req.send().await.expect("the server answers");
    let status = res.status().as_u16();
    let content_type = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (
        status,
        content_type,
        res.json().await.unwrap_or(Value::Null),
    )
}

/// Sends `req`, returning status and body (JSON or null).
async fn status_and_json(req: reqwest::RequestBuilder) -> (u16, Value) {
    let (status, _, body) = send(req).await;
    (status, body)
}

impl TestApp {
    /// `POST` JSON, returning status and body (JSON or null).
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        status_and_json(self.http.post(format!("{}{path}", self.base)).json(body)).await
    }

    /// `POST /v1/bookings/{booking}/reschedule` to `slot_start`.
    pub async fn reschedule(&self, booking: Uuid, slot_start: DateTime<Utc>) -> (u16, Value) {
        self.post(
            &format!("/v1/bookings/{booking}/reschedule"),
            &serde_json::json!({"slot_start": slot_start.to_rfc3339()}),
        )
        .await
    }

    /// `PUT` JSON.
    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        status_and_json(self.http.put(format!("{}{path}", self.base)).json(body)).await
    }

    /// `GET`.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        status_and_json(self.http.get(format!("{}{path}", self.base))).await
    }

    /// Creates a clinic (UTC), a practitioner working every day 00:00–23:30 and a patient.
    pub async fn fixture(&self) -> Fixture {
        let (clinic_id, practitioner_id) = self.practitioner_in("FR").await;
        let patient_id = self.patient().await;
        Fixture {
            clinic_id,
            practitioner_id,
            patient_id,
        }
    }

    /// Creates a clinic in `country` (UTC) and a practitioner there working every day
    /// 00:00–23:30 in 30-minute slots; returns (clinic id, practitioner id).
    pub async fn practitioner_in(&self, country: &str) -> (Uuid, Uuid) {
        let (s, clinic) = self
            .post(
                "/v1/clinics",
                &json!({"name": "Test clinic", "country_code": country, "timezone": "UTC"}),
            )
            .await;
        assert_eq!(s, 201, "{clinic}");
        let clinic_id = id_of(&clinic);
        let (s, p) = self
            .post(
                &format!("/v1/clinics/{clinic_id}/practitioners"),
                &json!({"name": "Dr Test", "specialty": "gp", "slot_minutes": 30}),
            )
            .await;
        assert_eq!(s, 201, "{p}");
        let practitioner_id = id_of(&p);
        self.daily_hours(practitioner_id, "00:00", "23:30").await;
        (clinic_id, practitioner_id)
    }

    /// Replaces a practitioner's hours with `start`–`end` (local time) every day.
    pub async fn daily_hours(&self, practitioner: Uuid, start: &str, end: &str) {
        let weekly: Vec<Value> = (1..=7)
            .map(|d| json!({"weekday": d, "start": start, "end": end}))
            .collect();
        let (s, h) = self
            .put(
                &format!("/v1/practitioners/{practitioner}/hours"),
                &json!({"weekly": weekly}),
            )
            .await;
        assert_eq!(s, 200, "{h}");
    }

    /// Creates another patient.
    pub async fn patient(&self) -> Uuid {
        let email = format!("p{}@example.test", Uuid::new_v4().simple());
        let (s, p) = self
            .post(
                "/v1/patients",
                &json!({"name": "Pat", "email": email, "country_code": "FR"}),
            )
            .await;
        assert_eq!(s, 201, "{p}");
        id_of(&p)
    }

    /// Submits a booking request.
    pub async fn submit(
        &self,
        patient: Uuid,
        practitioner: Uuid,
        slot: DateTime<Utc>,
    ) -> (u16, Value) {
        self.post(
            "/v1/booking-requests",
            &json!({"patient_id": patient, "practitioner_id": practitioner, "slot_start": slot.to_rfc3339()}),
        )
        .await
    }

    /// Submits a booking request and waits until it is `held`; returns (request id, booking
    /// id).
    pub async fn hold(
        &self,
        patient: Uuid,
        practitioner: Uuid,
        slot: DateTime<Utc>,
    ) -> (Uuid, Uuid) {
        let (s, r) = self.submit(patient, practitioner, slot).await;
        assert_eq!(s, 202, "{r}");
        let request = id_of(&r);
        let d = self.decision(request, Duration::from_secs(20)).await;
        assert_eq!(d["status"], "held", "{d}");
        let booking = d["booking_id"]
            .as_str()
            .and_then(|b| b.parse().ok())
            .unwrap_or_else(|| panic!("no booking_id in {d}"));
        (request, booking)
    }

    /// Waits for each request's decision (each within `timeout`) and asserts it is `held`.
    pub async fn assert_all_held(&self, requests: &[Uuid], timeout: Duration) {
        for r in requests {
            let d = self.decision(*r, timeout).await;
            assert_eq!(d["status"], "held", "{d}");
        }
    }

    /// Polls until the request is no longer `queued` (or `timeout`), returning its view.
    pub async fn decision(&self, request_id: Uuid, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (s, v) = self
                .get(&format!("/v1/booking-requests/{request_id}?wait=5"))
                .await;
            assert_eq!(s, 200, "{v}");
            if v["status"] != "queued" || tokio::time::Instant::now() >= deadline {
                return v;
            }
        }
    }

    /// Polls until the request's status equals `status`, or panics after `timeout`.
    pub async fn wait_for_status(
        &self,
        request_id: Uuid,
        status: &str,
        timeout: Duration,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (_, v) = self
                .get(&format!("/v1/booking-requests/{request_id}"))
                .await;
            if v["status"] == status {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "request never became {status}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends a payment webhook signed at `t` with `secret`.
    pub async fn pay(&self, body: &Value, secret: &str, t: i64) -> (u16, Value) {
        let raw = serde_json::to_vec(body).expect("json");
        let sig = slotq_security::payment_signature::sign(secret.as_bytes(), t, &raw);
        status_and_json(
            self.http
                .post(format!("{}/v1/payments/webhook", self.base))
                .header("content-type", "application/json")
                .header("payment-signature", sig)
                .body(raw),
        )
        .await
    }

    /// Polls the hold queue's depth until workers have claimed every job and the jobs carry
    /// `requests` undecided booking requests, or panics after `timeout`.
    pub async fn wait_for_claimed(
        &self,
        requests: u64,
        timeout: Duration,
    ) -> slotq_redis::queue::QueueDepth {
        let mut conn = self.redis.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let d = slotq_redis::queue::depth(&mut conn, &self.config.queue())
                .await
                .expect("queue depth");
            if d.ready == 0 && d.scheduled == 0 && d.inflight > 0 && d.pending_requests == requests
            {
                return d;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the workers never claimed the jobs of {requests} requests: {d:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Rows of a `SELECT count(*)`.
    pub async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .expect("count query")
    }

    /// Stops every component and drops the test database.
    pub async fn stop(self) {
        self.trigger.fire();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        self.pool.close().await;
        // Drop the test's Redis keys (its namespace prefixes all of them).
        let mut conn = self.redis.clone();
        let pattern = format!("{}:*", self.config.redis_namespace);
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(&pattern)
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        for chunk in keys.chunks(500) {
            let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query_async(&mut conn).await;
        }
        if let Ok(mut conn) = PgConnection::connect(&admin_url()).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.db_name
            )))
            .execute(&mut conn)
            .await;
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    use std::fmt::Write;
    // Standard base64 without pulling a crate into the harness.
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                let _ = out.write_char(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A token signed with the test stack's secret.
pub fn mint(
    config: &Config,
    role: Role,
    sub: &str,
    clinic: Option<Uuid>,
    patient: Option<Uuid>,
) -> String {
    // A stack verifying only against a JWKS gets an unusable token here; such tests mint
    // their own.
    let Some(secret) = config
        .auth
        .hs256_secret
        .as_ref()
        .map(secrecy::ExposeSecret::expose_secret)
    else {
        return "no-hs256-secret".into();
    };
    let claims = slotq_security::auth::claims(
        &config.auth,
        role,
        sub,
        clinic,
        patient,
        Duration::from_secs(3600),
    );
    slotq_security::auth::mint_hs256(secret, &claims).expect("sign token")
}

/// An HTTP client sending `token` with every request.
pub fn client(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(1024)
        .build()
        .expect("http client")
}

impl TestApp {
    /// A token for this stack.
    pub fn token(
        &self,
        role: Role,
        sub: &str,
        clinic: Option<Uuid>,
        patient: Option<Uuid>,
    ) -> String {
        mint(&self.config, role, sub, clinic, patient)
    }

    /// Sends a request with `token` (or none) and returns status and JSON body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let plain = reqwest::Client::new();
        let mut req = plain.request(
            method.parse().expect("method"),
            format!("{}{path}", self.base),
        );
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        status_and_json(req).await
    }
}

/// The `id` field of a JSON object as a UUID.
pub fn id_of(v: &Value) -> Uuid {
    v["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no id in {v}"))
}

/// Runs a binary with one argument and an empty environment (no configuration at all);
/// returns its exit code and standard output.
pub fn run_bare(bin: &str, arg: &str) -> (Option<i32>, String) {
    let out = std::process::Command::new(bin)
        .env_clear()
        .arg(arg)
        .output()
        .expect("run the binary");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A bookable slot `days` days ahead at `minute_of_day` (rounded to the 30-minute grid).
pub fn slot(days: i64, minute_of_day: u32) -> DateTime<Utc> {
    let m = (minute_of_day % (23 * 60)) / 30 * 30;
    let day = (Utc::now() + ChronoDuration::days(days))
        .with_hour(0)
        .and_then(|t| t.with_minute(0));
    let day = day
        .and_then(|t| t.with_second(0))
        .and_then(|t| t.with_nanosecond(0))
        .expect("midnight");
    day + ChronoDuration::minutes(i64::from(m))
}
