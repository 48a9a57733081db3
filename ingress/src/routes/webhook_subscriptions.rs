//! Client webhook subscriptions and their deliveries.
//!
//! `POST` answers the signing secret once (`whsec_…`); it is never shown again. The URL must be
//! http(s) and, unless `WEBHOOK_ALLOW_PRIVATE=1`, neither be nor resolve to a private or
//! loopback address (the dispatcher checks again at every connection). Deliveries are made by
//! `slotq-workers` (`webhook_dispatcher.rs`); a dead-lettered one is sent again with one call.

use axum::{
    Json,
    extract::{FromRequestParts, State},
    http::{StatusCode, header, request::Parts},
    response::IntoResponse,
};
use serde::Deserialize;
use slotq_domain::events::is_event_type;
use slotq_domain::events::types::ALL as EVENT_TYPES;
use slotq_security::webhooks::signature::Secret;
use slotq_security::webhooks::target;
use slotq_store::webhooks::{self, RedeliverError};
use uuid::Uuid;

use crate::{
    AppState,
    auth::{Action, Caller, authorize},
    error::{ApiError, FieldError},
    extract::{AppJson, AppQuery, IdPath, parse_id},
};

/// `POST /v1/webhook-subscriptions` body.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    /// `http(s)://…`, no credentials, no fragment.
    #[schema(min_length = 1)]
    url: String,
    /// At least one event type.
    #[schema(min_items = 1, inline, value_type = Vec<crate::openapi::EventType>)]
    events: Vec<String>,
}

/// `POST /v1/webhook-subscriptions` → 201 with the secret (shown once).
#[utoipa::path(post, path = "/v1/webhook-subscriptions", operation_id = "create_webhook_subscription", request_body = CreateBody, responses((status = 201, description = "the subscription with its signing secret (shown once)", body = crate::views::SubscriptionCreated)))]
pub async fn create(
    State(s): State<AppState>,
    Caller(caller): Caller,
    AppJson(b): AppJson<CreateBody>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&caller, Action::ManageWebhooks)?;
    let allow_private = s.config.webhooks.allow_private;
    let mut errors = Vec::new();
    let url = match target::parse(&b.url, allow_private) {
        Ok(url) => match target::check_resolved(&url, allow_private).await {
            Ok(()) => Some(url),
            Err(e) => {
                errors.push(FieldError::new("url", e.code(), e.to_string()));
                None
            }
        },
        Err(e) => {
            errors.push(FieldError::new("url", e.code(), e.to_string()));
            None
        }
    };
    let mut events: Vec<String> = Vec::new();
    if b.events.is_empty() {
        errors.push(FieldError::new(
            "events",
            "invalid",
            "name at least one event type",
        ));
    }
    for (i, e) in b.events.iter().enumerate() {
        if !is_event_type(e) {
            errors.push(FieldError::new(
                format!("events[{i}]"),
                "unknown_event_type",
                format!("{e:?} is not one of {}", EVENT_TYPES.join(", ")),
            ));
        } else if !events.contains(e) {
            events.push(e.clone());
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let Some(url) = url else {
        return Err(anyhow::anyhow!("a parsed URL had no value").into());
    };
    let secret = Secret::generate().map_err(anyhow::Error::from)?.encoded();
    let sub =
        webhooks::insert_subscription(&s.pool, Uuid::now_v7(), url.as_str(), &events, &secret)
            .await?;
    let id = sub.id;
    let body = crate::views::SubscriptionCreated {
        subscription: sub,
        secret,
    };
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/v1/webhook-subscriptions/{id}"))],
        Json(body),
    ))
}

/// `?limit=&cursor=` of the subscription listing.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1–200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    cursor: Option<String>,
}

/// `?status=&limit=&cursor=` of the delivery listing.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// 1–200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    cursor: Option<String>,
    status: Option<String>,
}

fn limit_and_cursor(
    limit: Option<i64>,
    cursor: Option<&str>,
) -> Result<(i64, Option<Uuid>), ApiError> {
    let mut errors = Vec::new();
    let limit = limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        errors.push(FieldError::new(
            "limit",
            "invalid",
            "must be between 1 and 200",
        ));
    }
    let cursor = match cursor.map(str::parse::<Uuid>) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(_)) => {
            errors.push(FieldError::new(
                "cursor",
                "invalid",
                "not a cursor returned by this endpoint",
            ));
            None
        }
    };
    if errors.is_empty() {
        Ok((limit, cursor))
    } else {
        Err(ApiError::invalid(errors))
    }
}

/// `GET /v1/webhook-subscriptions?limit=&cursor=` (oldest first).
#[utoipa::path(get, path = "/v1/webhook-subscriptions", operation_id = "list_webhook_subscriptions", params(PageQuery), responses((status = 200, body = crate::views::SubscriptionPage)))]
pub async fn list(
    State(s): State<AppState>,
    Caller(caller): Caller,
    AppQuery(q): AppQuery<PageQuery>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&caller, Action::ManageWebhooks)?;
    let (limit, after) = limit_and_cursor(q.limit, q.cursor.as_deref())?;
    let items = webhooks::list_subscriptions(&s.pool, after, limit + 1).await?;
    let (items, next_cursor) = super::page(items, limit as usize, |i| i.id);
    Ok(Json(crate::views::SubscriptionPage { items, next_cursor }))
}

/// `GET /v1/webhook-subscriptions/{id}` (without the secret).
#[utoipa::path(get, path = "/v1/webhook-subscriptions/{id}", operation_id = "get_webhook_subscription", params(("id" = String, Path, description = "subscription id (a UUID)")), responses((status = 200, body = slotq_store::webhooks::Subscription)))]
pub async fn get(
    State(s): State<AppState>,
    Caller(caller): Caller,
    IdPath(id): IdPath,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&caller, Action::ManageWebhooks)?;
    let sub = webhooks::get_subscription(&s.pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook subscription", id))?;
    Ok(Json(sub))
}

/// `DELETE /v1/webhook-subscriptions/{id}` → 204; its deliveries go with it.
#[utoipa::path(delete, path = "/v1/webhook-subscriptions/{id}", operation_id = "delete_webhook_subscription", params(("id" = String, Path, description = "subscription id (a UUID)")), responses((status = 204, description = "deleted")))]
pub async fn delete(
    State(s): State<AppState>,
    Caller(caller): Caller,
    IdPath(id): IdPath,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&caller, Action::ManageWebhooks)?;
    if webhooks::delete_subscription(&s.pool, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("webhook subscription", id))
    }
}

/// `GET /v1/webhook-subscriptions/{id}/deliveries?status=&limit=&cursor=` (newest first).
#[utoipa::path(get, path = "/v1/webhook-subscriptions/{id}/deliveries", params(("id" = String, Path, description = "subscription id (a UUID)"), ListQuery), operation_id = "list_webhook_deliveries", responses((status = 200, body = crate::views::DeliveryPage)))]
pub async fn deliveries(
    State(s): State<AppState>,
    Caller(caller): Caller,
    IdPath(id): IdPath,
    AppQuery(q): AppQuery<ListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&caller, Action::ManageWebhooks)?;
    let status = match q.status.as_deref() {
        None => None,
        Some(st @ ("pending" | "delivered" | "dead")) => Some(st),
        Some(_) => {
            return Err(ApiError::invalid_field(
                "status",
                "invalid",
                "must be pending, delivered or dead",
            ));
        }
    };
    let (limit, before) = limit_and_cursor(q.limit, q.cursor.as_deref())?;
    if webhooks::get_subscription(&s.pool, id).await?.is_none() {
        return Err(ApiError::not_found("webhook subscription", id));
    }
    let items = webhooks::list_deliveries(&s.pool, id, status, before, limit + 1).await?;
    let (items, next_cursor) = super::page(items, limit as usize, |i| i.id);
    Ok(Json(crate::views::DeliveryPage { items, next_cursor }))
}

/// `GET /v1/webhook-subscriptions/{id}/deliveries/{delivery_id}`: the delivery and every
/// attempt (`history`).
#[utoipa::path(get, path = "/v1/webhook-subscriptions/{id}/deliveries/{delivery_id}", operation_id = "get_webhook_delivery", params(("id" = String, Path, description = "subscription id (a UUID)"), ("delivery_id" = String, Path, description = "delivery id (a UUID)")), responses((status = 200, body = crate::views::DeliveryDetail)))]
pub async fn delivery(
    State(s): State<AppState>,
    Caller(caller): Caller,
    IdPair(sub, id): IdPair,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&caller, Action::ManageWebhooks)?;
    let d = webhooks::get_delivery(&s.pool, sub, id)
        .await?
        .ok_or_else(|| ApiError::not_found("delivery", id))?;
    let history = webhooks::attempts(&s.pool, id).await?;
    Ok(Json(crate::views::DeliveryDetail {
        delivery: d,
        history,
    }))
}

/// `POST /v1/webhook-subscriptions/{id}/deliveries/{delivery_id}/redeliver` → 202: a
/// dead-lettered delivery is due again at once, with a fresh retry window.
#[utoipa::path(post, path = "/v1/webhook-subscriptions/{id}/deliveries/{delivery_id}/redeliver", params(("id" = String, Path, description = "subscription id (a UUID)"), ("delivery_id" = String, Path, description = "delivery id (a UUID)")), operation_id = "redeliver_webhook_delivery", responses((status = 202, body = slotq_store::webhooks::Delivery)))]
pub async fn redeliver(
    State(s): State<AppState>,
    Caller(caller): Caller,
    IdPair(sub, id): IdPair,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&caller, Action::ManageWebhooks)?;
    match webhooks::redeliver(&s.pool, sub, id).await {
        Ok(d) => Ok((StatusCode::ACCEPTED, Json(d))),
        Err(RedeliverError::NotFound) => Err(ApiError::not_found("delivery", id)),
        Err(e @ RedeliverError::NotDead(_)) => Err(ApiError::Conflict {
            code: "not_dead_lettered",
            detail: e.to_string(),
        }),
        Err(e @ RedeliverError::SubscriptionDisabled) => Err(ApiError::Conflict {
            code: "subscription_disabled",
            detail: e.to_string(),
        }),
        Err(RedeliverError::Db(e)) => Err(e.into()),
    }
}

/// `{id}/…/{delivery_id}` path parameters; anything that is not a UUID names nothing → 404.
pub struct IdPair(pub Uuid, pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for IdPair {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path((a, b)) =
            axum::extract::Path::<(String, String)>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        match (parse_id(&a), parse_id(&b)) {
            (Some(a), Some(b)) => Ok(IdPair(a, b)),
            _ => Err(ApiError::NotFound("not a valid id (expected UUIDs)".into())),
        }
    }
}
