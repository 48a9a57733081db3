//! `/healthz` and `/readyz` on the public listener. `/metrics` is served on the admin
//! listener only (`ADMIN_ADDR`, see `slotq_runtime::admin`).

use axum::{extract::State, http::StatusCode, response::IntoResponse};

use crate::AppState;

/// The process is alive.
#[utoipa::path(get, path = "/healthz", security(()), responses((status = 200, description = "alive", body = String, content_type = "text/plain")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Ready to take traffic: PostgreSQL and Redis answer, and not draining (`shutting_down` is
/// set on SIGTERM, `SHUTDOWN_DELAY_MS` before the listener closes).
#[utoipa::path(get, path = "/readyz", security(()), responses((status = 200, description = "ready", body = String, content_type = "text/plain"), (status = 503, description = "not ready", body = String, content_type = "text/plain")))]
pub async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    if s.shutdown.is_stopping() || s.metrics.shutting_down.get() == 1 {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down".to_string());
    }
    match slotq_runtime::admin::dependencies_ready(&s.pool, &s.redis).await {
        Ok(()) => (StatusCode::OK, "ready".to_string()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e),
    }
}
