//! `POST /v1/booking-requests` (submit) and `GET /v1/booking-requests/{id}` (poll).
//!
//! Longer than most modules: each handler with its request and response types and their documentation.

use std::{sync::atomic::Ordering, time::Duration};

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, SubsecRound, Utc};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use slotq_domain::request::{RequestKind, RequestStatus};
use slotq_redis::fast_path::{Admission, AdmitItem};
use slotq_redis::queue::HoldJob;
use slotq_security::auth::{Principal, Role};
use slotq_store::requests::RequestView;
use tower_http::request_id::RequestId;
use uuid::Uuid;

use crate::{
    AppState,
    auth::{Action, Caller, authorize, clinic_of},
    error::{ApiError, FieldError},
    extract::{AppJson, AppQuery, IdPath},
};

/// Submit body.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    patient_id: Uuid,
    practitioner_id: Uuid,
    slot_start: DateTime<Utc>,
}

/// The request's `Idempotency-Key`, scoped to the caller (see
/// [`slotq_redis::keys::idempotency_scope`]).
pub(crate) fn idempotency_key(
    headers: &HeaderMap,
    caller: &Principal,
) -> Result<Option<String>, ApiError> {
    let mut given = headers.get_all("idempotency-key").iter();
    let Some(raw) = given.next() else {
        return Ok(None);
    };
    if given.next().is_some() {
        return Err(ApiError::BadRequest(
            "Idempotency-Key given more than once".into(),
        ));
    }
    let key = raw
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::BadRequest("Idempotency-Key must be 1 to 255 visible ASCII characters".into())
        })?;
    Ok(Some(slotq_redis::keys::idempotency_scope(
        caller.role.as_str(),
        &caller.sub,
        key,
    )))
}

/// Stripe semantics: a key seen before is answered before the request is validated again, so
/// a retry gets the original request even when the same body would be refused now (the slot
/// has passed, the hours changed, the booking has moved). `Some(original)` for the same body;
/// 422 for the same key with another body; `None` for a new key (validate, then
/// [`enqueue`], whose atomic admission still settles concurrent first uses).
pub(crate) async fn replay(
    s: &AppState,
    key: Option<&str>,
    hash: &str,
) -> Result<Option<RequestView>, ApiError> {
    let Some(key) = key else {
        return Ok(None);
    };
    match s.fast.prior(key, hash).await? {
        None => Ok(None),
        Some(Admission::Replay {
            request_id,
            same_body: true,
        }) => {
            // Without a status (only if it was lost), admission replays it.
            Ok(current_view(s, request_id).await?.map(|v| RequestView {
                id: request_id,
                ..v
            }))
        }
        // Another body, or a corrupt record that cannot be honoured.
        Some(_) => Err(key_reused()),
    }
}

fn key_reused() -> ApiError {
    ApiError::invalid_field(
        "Idempotency-Key",
        "idempotency_key_reused",
        "this Idempotency-Key was used with a different request body",
    )
}

/// `202` with the request's view and its `Location`.
pub(crate) fn accepted(view: RequestView) -> Response {
    Queued {
        view,
        replay: true,
        json: None,
    }
    .into_accepted()
}

/// What [`enqueue`] answers.
pub(crate) struct Queued {
    /// The request's view (for a replay, the original request's).
    pub view: RequestView,
    /// Whether it is an idempotent replay.
    pub replay: bool,
    /// For a new request: the view's JSON as stored in Redis, which is also the response body
    /// (serialized once: it was a tenth of ingress' instructions per submission to do it twice).
    json: Option<String>,
}

impl Queued {
    /// The `202` with the view and its `Location`.
    pub(crate) fn into_accepted(self) -> Response {
        let location = [(
            header::LOCATION,
            format!("/v1/booking-requests/{}", self.view.id),
        )];
        match self.json {
            Some(body) => (
                StatusCode::ACCEPTED,
                location,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response(),
            None => (StatusCode::ACCEPTED, location, Json(self.view)).into_response(),
        }
    }
}

/// The request's identity for idempotency: the parsed fields, so formatting does not matter.
pub(crate) fn body_hash(
    patient: Uuid,
    practitioner: Uuid,
    slot_start: DateTime<Utc>,
    reschedule: Option<Uuid>,
) -> String {
    let mut h = Sha256::new();
    h.update(patient.as_bytes());
    h.update(practitioner.as_bytes());
    h.update(slot_start.timestamp().to_be_bytes());
    if let Some(b) = reschedule {
        h.update(b.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

/// `POST /v1/booking-requests` → 202 `{id, status: "queued"}` + `Location`.
#[utoipa::path(post, path = "/v1/booking-requests", request_body = SubmitBody, params(("Idempotency-Key" = Option<String>, Header, description = "Stripe-style idempotency key")), responses((status = 202, body = slotq_store::requests::RequestView)))]
pub async fn submit(
    State(s): State<AppState>,
    Caller(caller): Caller,
    request_id: Option<axum::Extension<RequestId>>,
    headers: HeaderMap,
    AppJson(body): AppJson<SubmitBody>,
) -> Result<impl IntoResponse, ApiError> {
    let result = submit_inner(&s, &caller, request_id, &headers, body).await;
    let label = match &result {
        Ok(q) if q.replay => "replayed",
        Ok(_) => "accepted",
        Err(ApiError::Conflict { .. }) => "slot_taken",
        Err(ApiError::Unavailable { .. }) => "shed",
        Err(_) => "invalid",
    };
    s.metrics.submissions.with_label_values(&[label]).inc();
    Ok(result?.into_accepted())
}

async fn submit_inner(
    s: &AppState,
    caller: &Principal,
    trace: Option<axum::Extension<RequestId>>,
    headers: &HeaderMap,
    body: SubmitBody,
) -> Result<Queued, ApiError> {
    let key = idempotency_key(headers, caller)?;
    let now = Utc::now();
    if caller.role == Role::Patient && caller.patient_id != Some(body.patient_id) {
        // Another patient's id is answered like an unknown one: ids cannot be probed.
        return Err(ApiError::invalid_field(
            "patient_id",
            "unknown_patient",
            "no patient with this id",
        ));
    }
    // Who may submit comes before what is wrong with the request.
    if let Some(p) = s.lookup.schedule(body.practitioner_id).await? {
        authorize(
            caller,
            Action::Submit {
                patient: body.patient_id,
                clinic: p.clinic_id,
            },
        )?;
    }
    let hash = body_hash(body.patient_id, body.practitioner_id, body.slot_start, None);
    if let Some(original) = replay(s, key.as_deref(), &hash).await? {
        return Ok(Queued {
            view: original,
            replay: true,
            json: None,
        });
    }
    validate(s, &body, now).await?;
    let request = NewRequest {
        caller: caller.clone(),
        patient_id: body.patient_id,
        practitioner_id: body.practitioner_id,
        slot_start: body.slot_start,
        reschedule: None,
    };
    enqueue(s, request, key, &hash, trace).await
}

/// What [`enqueue`] queues.
pub(crate) struct NewRequest {
    /// Who asks (audited with the decision).
    pub caller: Principal,
    pub patient_id: Uuid,
    pub practitioner_id: Uuid,
    pub slot_start: DateTime<Utc>,
    /// For a reschedule: the booking to move.
    pub reschedule: Option<Uuid>,
}

/// The common tail of submissions and reschedules (after validation): load shedding, the
/// atomic Redis admission (idempotency, pre-check, `queued` status), then the job.
pub(crate) async fn enqueue(
    s: &AppState,
    r: NewRequest,
    key: Option<String>,
    hash: &str,
    trace: Option<axum::Extension<RequestId>>,
) -> Result<Queued, ApiError> {
    let ready = s.pending_requests.load(Ordering::Relaxed);
    // README: the number of requests waiting for a decision *above* which new ones are
    // refused.
    if ready > s.config.max_queue_depth {
        return Err(ApiError::Unavailable {
            detail: format!("the booking queue is full ({ready} waiting); retry shortly"),
            retry_after: 1,
        });
    }
    let view = RequestView {
        id: Uuid::now_v7(),
        status: RequestStatus::Queued,
        kind: if r.reschedule.is_some() {
            RequestKind::Reschedule
        } else {
            RequestKind::Book
        },
        booking_id: r.reschedule,
        hold_expires_at: None,
        reason: None,
        practitioner_id: r.practitioner_id,
        patient_id: r.patient_id,
        slot_start: r.slot_start,
        // PostgreSQL keeps microseconds: every view of the request shows the same instant.
        submitted_at: Utc::now().trunc_subsecs(6),
        decided_at: None,
    };
    let job = HoldJob {
        request_id: view.id,
        patient_id: view.patient_id,
        practitioner_id: view.practitioner_id,
        slot_start: view.slot_start,
        submitted_at: view.submitted_at,
        idempotency_key: key,
        reschedule: r.reschedule,
        trace_id: trace.and_then(|t| t.0.header_value().to_str().ok().map(str::to_owned)),
        actor: Some(r.caller.sub),
        actor_role: Some(r.caller.role.as_str().to_owned()),
    };
    let json = serde_json::to_string(&view).map_err(|e| ApiError::Internal(e.into()))?;
    // One atomic script (shared with whatever other submissions are waiting): idempotency,
    // pre-check, `queued` status and the job itself. If Redis fails, the client may retry.
    let admission = s
        .admitter
        .admit(AdmitItem {
            job,
            status_json: json.clone(),
            body_hash: hash.to_owned(),
            precheck: s.config.precheck,
        })
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "enqueue failed");
            ApiError::Unavailable {
                detail: "the queue is unavailable, retry shortly".into(),
                retry_after: 2,
            }
        })?;
    match admission {
        Admission::Replay {
            request_id,
            same_body: true,
        } => {
            let original = current_view(s, request_id).await?.unwrap_or(view);
            return Ok(Queued {
                view: RequestView {
                    id: request_id,
                    ..original
                },
                replay: true,
                json: None,
            });
        }
        Admission::Replay { .. } => return Err(key_reused()),
        Admission::SlotTaken => {
            return Err(ApiError::Conflict {
                code: "slot_taken",
                detail: "this slot is already taken".into(),
            });
        }
        Admission::Admitted => {}
    }
    tracing::debug!(request = %view.id, kind = %view.kind, "booking request queued");
    Ok(Queued {
        view,
        replay: false,
        json: Some(json),
    })
}

async fn validate(s: &AppState, b: &SubmitBody, now: DateTime<Utc>) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    let schedule = s.lookup.schedule(b.practitioner_id).await?;
    if schedule.is_none() {
        errors.push(FieldError::new(
            "practitioner_id",
            "unknown_practitioner",
            "no practitioner with this id",
        ));
    }
    if !s.lookup.patient_exists(b.patient_id).await? {
        errors.push(FieldError::new(
            "patient_id",
            "unknown_patient",
            "no patient with this id",
        ));
    }
    if let Some(p) = &schedule
        && let Err(problem) = p
            .schedule
            .check(b.slot_start, now, s.config.booking_horizon_days)
    {
        errors.push(FieldError::new(
            "slot_start",
            problem.reason().as_str(),
            problem.to_string(),
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(errors))
    }
}

/// Poll parameters.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PollQuery {
    /// Seconds to wait for a decision while `queued` (0–30; larger values are capped).
    #[param(minimum = 0)]
    wait: Option<f64>,
}

/// `GET /v1/booking-requests/{id}[?wait=S]`.
#[utoipa::path(get, path = "/v1/booking-requests/{id}", params(("id" = String, Path, description = "id (a UUID)"), PollQuery), responses((status = 200, body = slotq_store::requests::RequestView)))]
pub async fn poll(
    State(s): State<AppState>,
    Caller(caller): Caller,
    IdPath(id): IdPath,
    AppQuery(q): AppQuery<PollQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let wait = match q.wait {
        None => Duration::ZERO,
        // Capped before the conversion: `from_secs_f64` panics on values beyond `Duration`.
        Some(w) if w.is_finite() && w >= 0.0 => {
            Duration::from_secs_f64(w.min(s.config.max_poll_wait.as_secs_f64()))
        }
        Some(_) => {
            return Err(ApiError::invalid_field(
                "wait",
                "invalid",
                "must be a number of seconds between 0 and 30 (larger values are capped)",
            ));
        }
    };
    // Subscribe before the first read, so a decision landing in between is not missed.
    let mut decided = s.decided.subscribe();
    let mut view = current_view(&s, id)
        .await?
        .ok_or_else(|| ApiError::not_found("booking request", id))?;
    let clinic = clinic_of(&s, view.practitioner_id).await?;
    authorize(
        &caller,
        Action::ReadBooking {
            patient: view.patient_id,
            clinic,
        },
    )
    .map_err(|_| ApiError::not_found("booking request", id))?;
    let deadline = tokio::time::Instant::now() + wait;
    while view.is_queued() && tokio::time::Instant::now() < deadline && !s.shutdown.is_stopping() {
        let recheck = tokio::time::sleep(Duration::from_millis(500));
        tokio::select! {
            got = decided.recv() => match got {
                Ok(other) if other != id => continue,
                _ => {} // ours, or lagged/closed: re-read
            },
            () = recheck => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
        if let Some(v) = current_view(&s, id).await? {
            view = v;
        }
    }
    Ok(Json(view))
}

/// The freshest view: Redis first, PostgreSQL when Redis does not know, when a cached hold
/// has run out, or when a request has looked queued for a while (its cached status may have
/// been lost after the commit).
pub(crate) async fn current_view(s: &AppState, id: Uuid) -> Result<Option<RequestView>, ApiError> {
    let cached = match s.fast.status(id).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "redis status unavailable; reading PostgreSQL");
            None
        }
    };
    let now = Utc::now();
    let trust_cache = match &cached {
        None => false,
        Some(v) if v.is_queued() => now - v.submitted_at < chrono::Duration::seconds(2),
        Some(v) if v.status == RequestStatus::Held => v.hold_expires_at.is_some_and(|at| at > now),
        Some(_) => true,
    };
    if trust_cache {
        return Ok(cached);
    }
    match slotq_store::requests::decided_view(&s.pool, id).await? {
        Some(v) => Ok(Some(v)),
        None => Ok(cached),
    }
}
