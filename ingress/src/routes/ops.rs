//! `/healthz`, `/readyz`, `/metrics`.

use axum::{extract::State, http::StatusCode, response::IntoResponse};

use crate::AppState;

/// The process is alive.
pub async fn healthz() -> &'static str {
    "ok"
}

/// Ready to take traffic: PostgreSQL and Redis answer, and not draining.
pub async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    if s.shutdown.is_stopping() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down".to_string());
    }
    match slotq_common::admin::dependencies_ready(&s.pool, &s.redis).await {
        Ok(()) => (StatusCode::OK, "ready".to_string()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// Prometheus text exposition.
pub async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    s.metrics.observe_pool(&s.pool);
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}
