//! The small admin listener of the workers and the scheduler: `/metrics`, `/healthz`,
//! `/readyz` (PostgreSQL and Redis reachable, not shutting down).

use std::{net::SocketAddr, sync::Arc};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// What the admin endpoints look at.
#[derive(Clone)]
pub struct AdminState {
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    /// Problems the process's own components report (e.g. a missing Kafka topic).
    pub readiness: Readiness,
    /// Database pool.
    pub pool: PgPool,
    /// Redis connection.
    pub redis: ConnectionManager,
}

/// Problems that make a process unready besides its connections, set and cleared by the
/// component that finds them, each under its own key. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<std::sync::Mutex<std::collections::BTreeMap<&'static str, String>>>);

impl Readiness {
    /// Reports a problem under `key` (replacing an earlier one).
    pub fn set(&self, key: &'static str, problem: String) {
        if let Ok(mut p) = self.0.lock() {
            p.insert(key, problem);
        }
    }

    /// The problem under `key` is gone.
    pub fn clear(&self, key: &'static str) {
        if let Ok(mut p) = self.0.lock() {
            p.remove(key);
        }
    }

    /// Every problem reported, one per line; `None` when there is none.
    pub fn problems(&self) -> Option<String> {
        let p = self.0.lock().ok()?;
        (!p.is_empty()).then(|| p.values().cloned().collect::<Vec<_>>().join("\n"))
    }
}

/// Readiness: both dependencies answer and the process is not draining.
pub async fn dependencies_ready(pool: &PgPool, redis: &ConnectionManager) -> Result<(), String> {
    let pg = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(pool),
    )
    .await;
    if !matches!(pg, Ok(Ok(_))) {
        return Err("postgresql unreachable".into());
    }
    let ping = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        redis::cmd("PING").query_async::<String>(&mut redis.clone()),
    )
    .await;
    if !matches!(ping, Ok(Ok(_))) {
        return Err("redis unreachable".into());
    }
    Ok(())
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    s.metrics.observe_pool(&s.pool);
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn ready(State(s): State<AdminState>) -> impl IntoResponse {
    if s.metrics.shutting_down.get() == 1 {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down".to_string());
    }
    if let Some(problems) = s.readiness.problems() {
        return (StatusCode::SERVICE_UNAVAILABLE, problems);
    }
    match dependencies_ready(&s.pool, &s.redis).await {
        Ok(()) => (StatusCode::OK, "ready".to_string()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// Binds `addr` and serves the admin endpoints in a background task until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "admin listener failed");
        }
    });
    Ok(bound)
}
