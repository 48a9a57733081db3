//! Bookings: read, cancel, reschedule, visit outcomes, and the per-patient / per-practitioner
//! listings.
//!
//! Longer than most modules: each handler with its request and response types and their documentation.

use axum::{Json, extract::State, http::HeaderMap, response::IntoResponse};
use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;
use slotq_domain::status::{BookingEvent, BookingStatus};
use slotq_security::auth::Principal;
use slotq_store::bookings::{self, Booking, ListFilter, ListOwner};
use tower_http::request_id::RequestId;
use uuid::Uuid;

use super::booking_requests::{NewRequest, accepted, body_hash, enqueue, idempotency_key, replay};
use crate::{
    AppState,
    auth::{Action, Caller, actor, authorize, clinic_of},
    error::{ApiError, FieldError, Fields},
    extract::{AppJson, AppQuery, IdPath, RawBody},
};

/// `GET /v1/bookings/{id}`.
#[utoipa::path(get, path = "/v1/bookings/{id}", operation_id = "get_booking", params(("id" = String, Path, description = "id (a UUID)")), responses((status = 200, body = slotq_store::bookings::Booking)))]
pub async fn get(
    State(s): State<AppState>,
    Caller(caller): Caller,
    IdPath(id): IdPath,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(load(&s, &caller, id, Access::Read).await?))
}

/// What the caller wants to do with a booking.
#[derive(Clone, Copy)]
enum Access {
    Read,
    Change,
    Outcome,
    Audit,
}

/// Loads a booking the caller may act on (404 for unknown and for hidden ones alike).
async fn load(
    s: &AppState,
    caller: &Principal,
    id: Uuid,
    access: Access,
) -> Result<Booking, ApiError> {
    let b = bookings::get_booking(&s.pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found("booking", id))?;
    let (patient, clinic) = (b.patient_id, clinic_of(s, b.practitioner_id).await?);
    let action = match access {
        Access::Read => Action::ReadBooking { patient, clinic },
        Access::Change => Action::ChangeBooking { patient, clinic },
        Access::Outcome => Action::VisitOutcome { patient, clinic },
        Access::Audit => Action::ReadAudit { patient, clinic },
    };
    authorize(caller, action).map_err(|e| match e {
        ApiError::NotFound(_) => ApiError::not_found("booking", id),
        other => other,
    })?;
    Ok(b)
}

/// `GET /v1/bookings/{id}/audit`: the booking's status history (ops, its clinic, service).
#[utoipa::path(get, path = "/v1/bookings/{id}/audit", params(("id" = String, Path, description = "id (a UUID)")), responses((status = 200, body = crate::views::AuditTrail)))]
pub async fn audit(
    State(s): State<AppState>,
    Caller(caller): Caller,
    IdPath(id): IdPath,
) -> Result<impl IntoResponse, ApiError> {
    load(&s, &caller, id, Access::Audit).await?;
    let items = slotq_store::events::audit_trail(&s.pool, id).await?;
    Ok(Json(crate::views::AuditTrail {
        booking_id: id,
        items,
    }))
}

/// Optional body of cancel / complete / no-show. Who did it is the caller (audit log).
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeBody {
    reason: Option<String>,
}

/// No body (or only white space) is fine; a body must be JSON, like every other JSON body
/// (`null` counts as no body, as the OpenAPI document's optional body allows).
fn parse_optional_body(headers: &HeaderMap, body: &[u8]) -> Result<ChangeBody, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(ChangeBody::default());
    }
    if !crate::extract::is_json(headers) {
        return Err(ApiError::UnsupportedMediaType(
            "expected Content-Type: application/json".into(),
        ));
    }
    if body.trim_ascii() == b"null" {
        return Ok(ChangeBody::default());
    }
    crate::extract::parse_json(body)
}

fn request_id(r: Option<axum::Extension<RequestId>>) -> Option<String> {
    r.and_then(|r| r.0.header_value().to_str().ok().map(str::to_owned))
}

/// After a status change: drop the cached request status and free the slot when it is free.
pub(crate) async fn after_change(s: &AppState, b: &Booking) {
    let freed = !b.status.is_active();
    if let Err(e) = s
        .fast
        .booking_changed(&[(b.request_id, b.practitioner_id, b.slot_start, freed)])
        .await
    {
        tracing::warn!(error = %e, "could not update the Redis fast path after a status change");
    }
}

async fn change(
    s: &AppState,
    caller: &Principal,
    id: Uuid,
    event: BookingEvent,
    trace: Option<axum::Extension<RequestId>>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Json<Booking>, ApiError> {
    let access = if event == BookingEvent::Cancel {
        Access::Change
    } else {
        Access::Outcome
    };
    load(s, caller, id, access).await?;
    let body = parse_optional_body(headers, body)?;
    let reason = match body
        .reason
        .as_deref()
        .map(|r| slotq_domain::fields::name(r, 500))
    {
        Some(Err(e)) => return Err(ApiError::invalid_field("reason", "invalid", e)),
        Some(Ok(r)) => Some(r),
        None => None,
    };
    let actor = actor(caller, request_id(trace));
    let booking = bookings::change_status(&s.pool, id, event, reason.as_deref(), &actor).await?;
    after_change(s, &booking).await;
    Ok(Json(booking))
}

/// `POST /v1/bookings/{id}/cancel` (optional `{reason}`): frees the slot at once.
#[utoipa::path(post, path = "/v1/bookings/{id}/cancel", params(("id" = String, Path, description = "id (a UUID)")), request_body(content = Option<ChangeBody>, content_type = "application/json"), responses((status = 200, body = slotq_store::bookings::Booking)))]
pub async fn cancel(
    State(s): State<AppState>,
    Caller(caller): Caller,
    IdPath(id): IdPath,
    trace: Option<axum::Extension<RequestId>>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<impl IntoResponse, ApiError> {
    change(
        &s,
        &caller,
        id,
        BookingEvent::Cancel,
        trace,
        &headers,
        &body,
    )
    .await
}

/// `POST /v1/bookings/{id}/complete`: the visit took place (confirmed, after its start).
#[utoipa::path(post, path = "/v1/bookings/{id}/complete", params(("id" = String, Path, description = "id (a UUID)")), request_body(content = Option<ChangeBody>, content_type = "application/json"), responses((status = 200, body = slotq_store::bookings::Booking)))]
pub async fn complete(
    State(s): State<AppState>,
    Caller(caller): Caller,
    IdPath(id): IdPath,
    trace: Option<axum::Extension<RequestId>>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<impl IntoResponse, ApiError> {
    change(
        &s,
        &caller,
        id,
        BookingEvent::Complete,
        trace,
        &headers,
        &body,
    )
    .await
}

/// `POST /v1/bookings/{id}/no-show`: the patient did not come (confirmed, after its start).
#[utoipa::path(post, path = "/v1/bookings/{id}/no-show", params(("id" = String, Path, description = "id (a UUID)")), request_body(content = Option<ChangeBody>, content_type = "application/json"), responses((status = 200, body = slotq_store::bookings::Booking)))]
pub async fn no_show(
    State(s): State<AppState>,
    Caller(caller): Caller,
    IdPath(id): IdPath,
    trace: Option<axum::Extension<RequestId>>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<impl IntoResponse, ApiError> {
    change(
        &s,
        &caller,
        id,
        BookingEvent::NoShow,
        trace,
        &headers,
        &body,
    )
    .await
}

/// `POST /v1/bookings/{id}/reschedule` body.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RescheduleBody {
    slot_start: DateTime<Utc>,
}

/// `POST /v1/bookings/{id}/reschedule {slot_start}` → 202: a request of kind `reschedule`;
/// the worker moves the booking in one transaction, or changes nothing.
#[utoipa::path(post, path = "/v1/bookings/{id}/reschedule", params(("id" = String, Path, description = "id (a UUID)"), ("Idempotency-Key" = Option<String>, Header, description = "Stripe-style idempotency key")), request_body = RescheduleBody, responses((status = 202, body = slotq_store::requests::RequestView)))]
pub async fn reschedule(
    State(s): State<AppState>,
    Caller(caller): Caller,
    IdPath(id): IdPath,
    trace: Option<axum::Extension<RequestId>>,
    headers: HeaderMap,
    AppJson(body): AppJson<RescheduleBody>,
) -> Result<impl IntoResponse, ApiError> {
    let key = idempotency_key(&headers, &caller)?;
    let booking = load(&s, &caller, id, Access::Change).await?;
    let hash = body_hash(
        booking.patient_id,
        booking.practitioner_id,
        body.slot_start,
        Some(id),
    );
    // A retry answers like the original, even after the booking has moved (see `replay`).
    if let Some(original) = replay(&s, key.as_deref(), &hash).await? {
        return Ok(accepted(original));
    }
    let now = Utc::now();
    booking
        .status
        .apply_at(BookingEvent::Reschedule, booking.slot_start, now)
        .map_err(|t| ApiError::Conflict {
            code: "illegal_transition",
            detail: format!(
                "{} {} booking cannot be rescheduled: {t}",
                article(booking.status.as_str()),
                booking.status
            ),
        })?;
    if body.slot_start == booking.slot_start {
        return Err(ApiError::invalid_field(
            "slot_start",
            "same_slot",
            "the booking is already at this slot",
        ));
    }
    let schedule = s
        .lookup
        .schedule(booking.practitioner_id)
        .await?
        .ok_or_else(|| ApiError::not_found("practitioner", booking.practitioner_id))?;
    if let Err(problem) =
        schedule
            .schedule
            .check(body.slot_start, now, s.config.booking_horizon_days)
    {
        return Err(ApiError::invalid(vec![FieldError::new(
            "slot_start",
            problem.reason().as_str(),
            problem.to_string(),
        )]));
    }
    let request = NewRequest {
        caller: caller.clone(),
        patient_id: booking.patient_id,
        practitioner_id: booking.practitioner_id,
        slot_start: body.slot_start,
        reschedule: Some(id),
    };
    Ok(enqueue(&s, request, key, &hash, trace)
        .await?
        .into_accepted())
}

/// "a" or "an" before `word` (by its first letter, enough for the status names).
fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// Listing parameters.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    status: Option<String>,
    from: Option<String>,
    to: Option<String>,
    /// 1–200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    cursor: Option<String>,
}

/// A date (`YYYY-MM-DD`, midnight UTC) or an RFC 3339 instant.
pub(crate) fn parse_instant(raw: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(d) = NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        return Ok(d.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| "must be a date YYYY-MM-DD or an RFC 3339 time".to_owned())
}

/// An exclusive upper bound `to`: a date includes that whole day (`to=2026-12-08` ends at
/// 2026-12-09T00:00Z), an RFC 3339 time is taken as given.
pub(crate) fn parse_upper_bound(raw: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(d) = NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        return d
            .succ_opt()
            .map(|next| next.and_time(chrono::NaiveTime::MIN).and_utc())
            .ok_or_else(|| "date out of range".to_owned());
    }
    parse_instant(raw)
}

fn cursor_of(b: &Booking) -> String {
    format!("{}_{}", b.slot_start.timestamp_micros(), b.id)
}

fn parse_cursor(raw: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let (micros, id) = raw.split_once('_')?;
    Some((
        DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        id.parse().ok()?,
    ))
}

fn filter(q: &ListQuery) -> Result<ListFilter, ApiError> {
    let mut f = Fields::default();
    let status = f.optional("status", q.status.as_deref(), |raw| {
        raw.parse::<BookingStatus>()
    });
    let from = f.optional("from", q.from.as_deref(), parse_instant);
    let to = f.optional("to", q.to.as_deref(), parse_upper_bound);
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        f.0.push(FieldError::new(
            "limit",
            "invalid",
            "must be between 1 and 200",
        ));
    }
    let after = f.optional("cursor", q.cursor.as_deref(), |c| {
        parse_cursor(c).ok_or_else(not_a_cursor)
    });
    if let (Some(from), Some(to)) = (from, to)
        && to < from
    {
        f.0.push(FieldError::new("to", "invalid", "must not be before from"));
    }
    f.finish()?;
    Ok(ListFilter {
        status,
        from,
        to,
        after,
        limit,
    })
}

/// The message for a cursor this API did not hand out.
pub(crate) fn not_a_cursor() -> String {
    "not a cursor returned by this endpoint".to_owned()
}

async fn list(
    s: &AppState,
    owner: ListOwner,
    q: &ListQuery,
) -> Result<impl IntoResponse + use<>, ApiError> {
    let f = filter(q)?;
    let probe = bookings::ListFilter {
        limit: f.limit + 1,
        ..f.clone()
    };
    let items = bookings::list(&s.pool, owner, &probe).await?;
    let (items, next_cursor) = super::page(items, f.limit as usize, cursor_of);
    Ok(Json(crate::views::BookingPage { items, next_cursor }))
}

/// `GET /v1/patients/{id}/bookings?status=&from=&to=&limit=&cursor=`.
#[utoipa::path(get, path = "/v1/patients/{id}/bookings", params(("id" = String, Path, description = "id (a UUID)"), ListQuery), responses((status = 200, body = crate::views::BookingPage)))]
pub async fn by_patient(
    State(s): State<AppState>,
    Caller(caller): Caller,
    IdPath(id): IdPath,
    AppQuery(q): AppQuery<ListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let owner = crate::auth::patient_bookings_scope(&caller, id)?;
    if !slotq_store::directory::patient_exists(&s.pool, id).await? {
        return Err(ApiError::not_found("patient", id));
    }
    list(&s, owner, &q).await
}

/// `GET /v1/practitioners/{id}/bookings?status=&from=&to=&limit=&cursor=` (the day sheet).
#[utoipa::path(get, path = "/v1/practitioners/{id}/bookings", params(("id" = String, Path, description = "id (a UUID)"), ListQuery), responses((status = 200, body = crate::views::BookingPage)))]
pub async fn by_practitioner(
    State(s): State<AppState>,
    Caller(caller): Caller,
    IdPath(id): IdPath,
    AppQuery(q): AppQuery<ListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&caller, Action::ReadClinic(clinic_of(&s, id).await?))?;
    list(&s, ListOwner::Practitioner(id), &q).await
}
