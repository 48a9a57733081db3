//! `/healthz` and `/readyz` on the public listener. `/metrics` is served on the admin
//! listener only (`ADMIN_ADDR`, see `slotq_common::admin`).

use axum::{extract::State, http::StatusCode, response::IntoResponse};

use crate::AppState;

/// The process is alive.
pub async fn healthz() -> &'static str {
    "ok"
}

/// Ready to take traffic: PostgreSQL and Redis answer, and not draining (`shutting_down` is
/// set on SIGTERM, `SHUTDOWN_DELAY_MS` before the listener closes).
pub async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    if s.shutdown.is_stopping() || s.metrics.shutting_down.get() == 1 {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down".to_string());
    }
    match slotq_common::admin::dependencies_ready(&s.pool, &s.redis).await {
        Ok(()) => (StatusCode::OK, "ready".to_string()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e),
    }
}
