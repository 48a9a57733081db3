//! slotq-ingress: the REST API.
//!
//! Handlers are thin: extract → parse into domain values → one call into `slotq-common` →
//! response. The booking path never takes a database lock: it validates (cached reads),
//! registers the request in Redis (idempotency, availability pre-check, `queued` status),
//! pushes the job and answers 202. See `ARCHITECTURE.md` for the whole data path.
//!
//! Longer than most modules: it is the process's state, its middleware stack and its serving, which change together.

pub mod admitter;
pub mod auth;
pub mod decisions;
pub mod error;
pub mod extract;
pub mod openapi;
pub mod routes;
pub mod views;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    middleware::{self, Next},
    response::Response,
};
use slotq_redis::fast_path::FastPath;
use slotq_redis::queue::HoldQueue;
use slotq_runtime::config::Config;
use slotq_runtime::metrics::Metrics;
use slotq_runtime::shutdown::Shutdown;
use slotq_runtime::tasks::Tasks;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    trace::TraceLayer,
};

/// Everything a handler may use.
///
/// Cheap to clone (one `Arc`): axum clones the state for every extractor and middleware of
/// every request; cloning the fields themselves (scripts, key strings, pools) was ~10 % of the
/// ingress CPU under load.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Shared {
    /// Configuration.
    pub config: Arc<Config>,
    /// PostgreSQL.
    pub pool: PgPool,
    /// Redis for the fast path.
    pub redis: redis::aio::ConnectionManager,
    /// Status cache, idempotency, availability.
    pub fast: FastPath,
    /// Admits submissions and queues them, several per Redis call.
    pub admitter: admitter::Admitter,
    /// Cached validation look-ups.
    pub lookup: slotq_store::lookup::Lookup,
    /// Decided request ids announced by the workers.
    pub decided: decisions::Decided,
    /// Booking requests accepted and not yet decided, refreshed in the background (load
    /// shedding).
    pub pending_requests: Arc<AtomicU64>,
    /// Metrics of this process.
    pub metrics: Arc<Metrics>,
    /// Set when the process drains.
    pub shutdown: Shutdown,
    /// The supervised background tasks (admitter, decisions listener, depth refresher).
    pub tasks: Tasks,
    /// Verifies Bearer tokens.
    pub verifier: Arc<slotq_security::auth::Verifier>,
    /// Personal-data encryption keys.
    pub pii: Arc<slotq_security::pii::PiiKeys>,
}

impl AppState {
    /// Connects to PostgreSQL and Redis and starts the background tasks (decision listener,
    /// queue-depth refresher).
    pub async fn connect(config: Config, shutdown: Shutdown) -> anyhow::Result<Self> {
        let (pool, redis) =
            slotq_runtime::process::connect(&config, config.db_max_connections).await?;
        // The decisions listener's pub/sub needs a connection of its own.
        let client = redis::Client::open(config.redis_url.as_str()).context("parsing REDIS_URL")?;
        let fast = FastPath::new(redis.clone(), &config.redis_namespace);
        let metrics = Arc::new(Metrics::for_component(
            slotq_runtime::metrics::Component::Ingress,
        ));
        let tasks = Tasks::new(shutdown.clone(), metrics.task_failures.clone());
        let admitter = admitter::Admitter::start(
            fast.clone(),
            HoldQueue::new(redis.clone(), &config.queue()),
            &tasks,
        );
        let pii = match &config.pii {
            Some(keys) => keys.clone(),
            None => {
                tracing::warn!(
                    "PII_KEYS is unset: patient data is encrypted with a development key; never do this in production"
                );
                slotq_security::pii::PiiKeys::parse(
                    slotq_security::pii::DEV_KEYS,
                    slotq_security::pii::DEV_INDEX_KEY,
                )?
            }
        };
        let changed = slotq_store::directory::encrypt_patients_at_rest(&pool, &pii)
            .await
            .context("encrypting patient data at rest")?;
        if changed > 0 {
            tracing::info!(
                rows = changed,
                "patient data encrypted with the current key"
            );
        }
        if config.auth.hs256_secret.is_none() && config.auth.jwks.is_none() {
            tracing::warn!(
                "neither JWT_HS256_SECRET nor JWT_JWKS is set: every /v1 request except the payment webhook will be refused"
            );
        }
        let verifier = Arc::new(slotq_security::auth::Verifier::new(config.auth.clone()));
        let (decided, _) = tokio::sync::broadcast::channel(8192);
        decisions::listen(
            client,
            fast.keys().decided_channel(),
            decided.clone(),
            &tasks,
        );
        let state = AppState(Arc::new(Shared {
            lookup: slotq_store::lookup::Lookup::new(pool.clone()),
            config: Arc::new(config),
            pool,
            redis,
            fast,
            admitter,
            decided,
            pending_requests: Arc::new(AtomicU64::new(0)),
            metrics,
            shutdown,
            tasks,
            verifier,
            pii: Arc::new(pii),
        }));
        state
            .metrics
            .queue_max_depth
            .set(i64::try_from(state.config.max_queue_depth).unwrap_or(i64::MAX));
        state.spawn_depth_refresher();
        Ok(state)
    }

    fn spawn_depth_refresher(&self) {
        let this = self.clone();
        self.tasks
            .spawn_restarting("queue depth refresher", move || {
                let state = this.clone();
                async move {
                    let mut conn = state.redis.clone();
                    let mut tick = tokio::time::interval(Duration::from_millis(100));
                    while !state.shutdown.is_stopping() {
                        tick.tick().await;
                        match slotq_redis::queue::depth(&mut conn, &state.config.queue()).await {
                            Ok(d) => {
                                state
                                    .pending_requests
                                    .store(d.pending_requests, Ordering::Relaxed);
                                state.metrics.observe_queue(&d);
                            }
                            Err(e) => tracing::debug!(error = %e, "queue depth unavailable"),
                        }
                    }
                }
            });
    }
}

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    layered(routes::router(), state)
}

/// The middleware stack of [`app`] around `routes` (tests put routes of their own in it).
pub fn layered(routes: Router<AppState>, state: AppState) -> Router {
    let request_id = axum::http::HeaderName::from_static("x-request-id");
    routes
        // A panicking handler answers 500 problem+json (metrics and trace see it) instead of
        // dropping the connection.
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn_with_state(state.clone(), auth::guard))
        // Metrics, the declared-length check and the time limit, in that order from the
        // outside, in one middleware: each `from_fn` layer clones and boxes the service
        // inside it for every request.
        .layer(middleware::from_fn_with_state(state.clone(), edge))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        // The same for a panic in the middleware above.
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request| {
                let id = req.extensions().get::<RequestId>().and_then(|r| r.header_value().to_str().ok()).unwrap_or("-");
                tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
            })
            // A 503 is a state the service announces on purpose (draining, shedding, a
            // dependency down: each has its own metric), not a fault: WARN, not ERROR.
            .on_failure(
                |class: tower_http::classify::ServerErrorsFailureClass,
                 latency: std::time::Duration,
                 _span: &tracing::Span| {
                    let ms = latency.as_millis() as u64;
                    match class {
                        tower_http::classify::ServerErrorsFailureClass::StatusCode(code)
                            if code == axum::http::StatusCode::SERVICE_UNAVAILABLE =>
                        {
                            tracing::warn!(latency_ms = ms, "503 service unavailable");
                        }
                        other => tracing::error!(latency_ms = ms, failure = %other, "response failed"),
                    }
                },
            ),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .layer(middleware::from_fn(hygiene))
        .with_state(state)
}

/// The longest client-chosen `x-request-id` kept (it is echoed and logged).
const MAX_REQUEST_ID: usize = 128;

/// A client's `x-request-id` is kept only when short and made of `[A-Za-z0-9._:-]`; otherwise
/// a fresh one is made (it is echoed in the response and written to every log line). API
/// answers carry personal data or secrets: `Cache-Control: no-store` unless a handler set one.
async fn hygiene(mut req: Request, next: Next) -> Response {
    let headers = req.headers_mut();
    let acceptable = |v: &axum::http::HeaderValue| {
        let b = v.as_bytes();
        !b.is_empty()
            && b.len() <= MAX_REQUEST_ID
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"._:-".contains(c))
    };
    let ids = headers.get_all("x-request-id");
    if ids.iter().count() > 1 || ids.iter().any(|v| !acceptable(v)) {
        headers.remove("x-request-id");
    }
    let api = req.uri().path().starts_with("/v1/");
    let mut res = next.run(req).await;
    if api {
        res.headers_mut()
            .entry(axum::http::header::CACHE_CONTROL)
            .or_insert(axum::http::HeaderValue::from_static("no-store"));
    }
    res
}

/// A panic, as a 500 problem; the message is logged (in the request's span), not returned.
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    axum::response::IntoResponse::into_response(error::ApiError::Internal(anyhow::anyhow!(
        "a request handler panicked: {message}"
    )))
}

/// Counts and times every request by route template (not raw path: ids would explode the
/// label set), around [`declared_length`] and [`time_limit`].
async fn edge(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let res = match declared_length(&state, &req) {
        Some(too_large) => too_large,
        None => time_limit(&state, req, next).await,
    };
    let m = &state.metrics;
    m.http_requests
        .with_label_values(&[&route, &method, res.status().as_str()])
        .inc();
    m.http_duration
        .with_label_values(&[&route, &method])
        .observe(started.elapsed().as_secs_f64());
    res
}

/// 413 at once when the declared `Content-Length` exceeds `MAX_BODY_BYTES`: without it the
/// body limit only trips on bytes that arrive, and a client declaring more than it sends
/// holds the request until the time limit. Chunked bodies keep the streaming limit
/// ([`DefaultBodyLimit`]).
fn declared_length(state: &AppState, req: &Request) -> Option<Response> {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_none_or(|n| n <= state.config.max_body_bytes as u64) {
        return None;
    }
    // The body is not read, so the connection cannot carry another request: say so, or a
    // keep-alive client reuses it and its next request fails.
    let mut res = axum::response::IntoResponse::into_response(error::ApiError::PayloadTooLarge);
    res.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    Some(res)
}

/// Bounds every request's time (`REQUEST_TIMEOUT_SECS`); long-polls get their wait on top.
async fn time_limit(state: &AppState, req: Request, next: Next) -> Response {
    let long_poll = req.method() == axum::http::Method::GET
        && req.uri().path().starts_with("/v1/booking-requests/");
    let limit = if long_poll {
        state.config.request_timeout + state.config.max_poll_wait
    } else {
        state.config.request_timeout
    };
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(res) => res,
        Err(_) => {
            tracing::warn!(limit_ms = limit.as_millis() as u64, "request timed out");
            axum::response::IntoResponse::into_response(error::ApiError::Unavailable {
                detail: "the request took too long; retry shortly".into(),
                retry_after: 1,
            })
        }
    }
}

/// A running ingress (tests start it in-process).
pub struct Running {
    /// The bound address.
    pub addr: SocketAddr,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`), kept off the public one.
    pub admin_addr: SocketAddr,
    /// The shared state.
    pub state: AppState,
    /// Resolves when the server has stopped.
    pub handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Binds `listener` and serves until `shutdown` fires; in-flight requests finish first.
pub async fn serve(listener: TcpListener, state: AppState) -> anyhow::Result<Running> {
    let addr = listener.local_addr()?;
    let admin = slotq_runtime::admin::AdminState {
        metrics: state.metrics.clone(),
        readiness: Default::default(),
        pool: state.pool.clone(),
        redis: state.redis.clone(),
    };
    let admin_addr = slotq_runtime::admin::serve(
        state.config.admin_addr,
        admin,
        state.shutdown.clone().wait(),
    )
    .await
    .context("binding ADMIN_ADDR")?;
    let app = app(state.clone());
    let shutdown = state.shutdown.clone();
    let metrics = state.metrics.clone();
    let handle = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            shutdown.wait().await;
            metrics.shutting_down.set(1);
        })
        .await
        .context("serving HTTP")
    });
    Ok(Running {
        addr,
        admin_addr,
        state,
        handle,
    })
}
