//! `GET /v1/bookings/{id}` and `POST /v1/bookings/{id}/cancel`.

use axum::{Json, extract::State, response::IntoResponse};
use serde::Deserialize;
use slotq_common::db::bookings::{self, Actor};
use tower_http::request_id::RequestId;

use crate::{
    AppState,
    error::ApiError,
    extract::{IdPath, RawBody},
};

/// `GET /v1/bookings/{id}`.
pub async fn get(
    State(s): State<AppState>,
    IdPath(id): IdPath,
) -> Result<impl IntoResponse, ApiError> {
    let b = bookings::get_booking(&s.pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found("booking", id))?;
    Ok(Json(b))
}

/// Optional cancel body.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    reason: Option<String>,
}

/// `POST /v1/bookings/{id}/cancel` (optional body `{reason}`): frees the slot at once.
pub async fn cancel(
    State(s): State<AppState>,
    IdPath(id): IdPath,
    request_id: Option<axum::Extension<RequestId>>,
    RawBody(body): RawBody,
) -> Result<impl IntoResponse, ApiError> {
    let body: CancelBody = if body.iter().all(u8::is_ascii_whitespace) {
        CancelBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => {
                ApiError::invalid_field("body", "invalid", e.to_string())
            }
            _ => ApiError::BadRequest(format!("malformed JSON: {e}")),
        })?
    };
    let reason = match body
        .reason
        .as_deref()
        .map(|r| slotq_common::domain::fields::name(r, 500))
    {
        Some(Err(e)) => return Err(ApiError::invalid_field("reason", "invalid", e)),
        Some(Ok(r)) => Some(r),
        None => None,
    };
    let actor = Actor {
        name: "api".into(),
        request_id: request_id.and_then(|r| r.0.header_value().to_str().ok().map(str::to_owned)),
    };
    let booking = bookings::cancel(&s.pool, id, reason.as_deref(), &actor).await?;
    if let Err(e) = s
        .fast
        .booking_changed(&[(
            booking.request_id,
            booking.practitioner_id,
            booking.slot_start,
            true,
        )])
        .await
    {
        tracing::warn!(error = %e, "could not update the Redis fast path after a cancel");
    }
    Ok(Json(booking))
}
