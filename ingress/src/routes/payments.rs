//! `POST /v1/payments/webhook`: the payment provider confirms or fails a hold.

use axum::{Json, extract::State, http::HeaderMap, response::IntoResponse};
use serde::Deserialize;
use slotq_security::payment_signature as signature;
use slotq_store::{
    bookings::{Actor, TransitionError},
    payments::{PaymentError, PaymentNotice, apply_payment},
};
use uuid::Uuid;

use crate::{
    AppState,
    error::{ApiError, FieldError},
    extract::RawBody,
};

/// The provider's notification.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct WebhookBody {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    booking_id: Uuid,
    amount: Option<i64>,
    currency: Option<String>,
}

/// Verifies the signature, then applies the event once (idempotent on its id).
#[utoipa::path(post, path = "/v1/payments/webhook", security(()), params(("Payment-Signature" = String, Header, description = "t=<unix seconds>,v1=<hex HMAC-SHA256(secret, \"t.body\")>")), request_body = WebhookBody, responses((status = 200, body = crate::views::PaymentAnswer)))]
pub async fn webhook(
    State(s): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<impl IntoResponse, ApiError> {
    let result = handle(&s, &headers, &body).await;
    let label = match &result {
        Ok(outcome) => outcome,
        Err(ApiError::Unauthorized(_)) => "unauthorized",
        Err(ApiError::NotFound(_)) => "unknown_booking",
        Err(_) => "error",
    };
    s.metrics.payment_webhooks.with_label_values(&[label]).inc();
    let outcome = result?;
    Ok(Json(crate::views::PaymentAnswer { outcome }))
}

async fn handle(s: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<&'static str, ApiError> {
    let Some(secret) = &s.config.payment_webhook_secret else {
        return Err(ApiError::Unauthorized(
            "payment webhook is not configured (PAYMENT_WEBHOOK_SECRET unset)".into(),
        ));
    };
    let header = headers
        .get("payment-signature")
        .and_then(|v| v.to_str().ok());
    let now = chrono::Utc::now().timestamp();
    signature::verify(
        header,
        secrecy::ExposeSecret::expose_secret(secret).as_bytes(),
        body,
        now,
        i64::try_from(s.config.payment_webhook_tolerance.as_secs()).unwrap_or(i64::MAX),
    )
    .map_err(|e| ApiError::Unauthorized(e.to_string()))?;

    let b: WebhookBody = crate::extract::parse_json(body)?;
    let mut errors = Vec::new();
    if b.id.trim().is_empty() || b.id.len() > 255 {
        errors.push(FieldError::new(
            "id",
            "invalid",
            "must be 1 to 255 characters",
        ));
    }
    if b.kind.is_empty() || b.kind.len() > 100 {
        errors.push(FieldError::new(
            "type",
            "invalid",
            "must be 1 to 100 characters",
        ));
    }
    if b.currency
        .as_ref()
        .is_some_and(|c| c.len() != 3 || !c.bytes().all(|x| x.is_ascii_alphabetic()))
    {
        errors.push(FieldError::new(
            "currency",
            "invalid",
            "must be an ISO 4217 code",
        ));
    }
    // A payment's amount and currency are part of what is recorded and compared on a replay;
    // other (ignored) event types need not carry them.
    if matches!(b.kind.as_str(), "payment.succeeded" | "payment.failed") {
        for (field, missing) in [
            ("amount", b.amount.is_none()),
            ("currency", b.currency.is_none()),
        ] {
            if missing {
                errors.push(FieldError::new(
                    field,
                    "required",
                    "required for a payment event",
                ));
            }
        }
    }
    if b.amount.is_some_and(|a| a < 0) {
        errors.push(FieldError::new(
            "amount",
            "invalid",
            "must not be negative (minor units)",
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let notice = PaymentNotice {
        event_id: b.id,
        event_type: b.kind,
        booking_id: b.booking_id,
        amount: b.amount,
        currency: b.currency.map(|c| c.to_ascii_uppercase()),
    };
    let actor = Actor {
        name: "payment-provider".into(),
        role: "system".into(),
        request_id: Some(notice.event_id.clone()),
    };
    let result = apply_payment(&s.pool, &notice, &actor)
        .await
        .map_err(|e| match e {
            PaymentError::Transition(TransitionError::NotFound) => {
                ApiError::not_found("booking", notice.booking_id)
            }
            PaymentError::Transition(other) => other.into(),
            PaymentError::EventReused => ApiError::invalid_field(
                "id",
                "reused",
                "this event id was used before for a different notification (booking, type, \
                 amount or currency)",
            ),
        })?;
    if let Some(b) = &result.changed {
        crate::routes::bookings::after_change(s, b).await;
    }
    Ok(result.outcome.as_str())
}
