//! Who may do what — authentication, rate limits and authorization, each in one place.
//!
//! - [`guard`] (middleware on every route): `/v1/*` except the payment webhook needs a valid
//!   Bearer JWT (401 otherwise); the caller's [`Principal`] goes into the request extensions.
//!   Then the rate limits: per patient for patient tokens, per client IP for everyone else
//!   except trusted `service` back ends; 429 with `Retry-After` and `RateLimit-*` headers.
//! - [`Caller`]: the extractor handlers use to get the principal.
//! - [`authorize`]: the whole access policy, one `match` over [`Action`]. A patient asking for
//!   another patient's resource gets 404, exactly as for an id that does not exist, so ids
//!   cannot be probed; a caller who may see a resource but not change it gets 403.

use std::net::SocketAddr;

use axum::{
    extract::{ConnectInfo, FromRequestParts, Request, State},
    http::{HeaderValue, Method, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};
use slotq_redis::rate_limit::{self, Limit};
use slotq_security::auth::{AuthError, Principal, Role};
use uuid::Uuid;

use crate::{AppState, error::ApiError};

/// The authenticated caller of a `/v1` route.
pub struct Caller(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Caller)
            .ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))
    }
}

fn needs_token(path: &str) -> bool {
    path.starts_with("/v1/") && path != "/v1/payments/webhook"
}

enum Class {
    Read,
    Write,
}

fn is_booking_change(method: &Method, path: &str) -> bool {
    method == Method::POST
        && (path == "/v1/booking-requests"
            || path.ends_with("/cancel")
            || path.ends_with("/reschedule"))
        && (path.starts_with("/v1/booking-requests") || path.starts_with("/v1/bookings/"))
}

/// Authentication, then rate limits (see the module docs).
pub async fn guard(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    // No route takes OPTIONS: the router answers 405 with `Allow`, token or not (a browser's
    // CORS preflight never carries one; the API has no CORS support).
    if !needs_token(&path) || req.method() == axum::http::Method::OPTIONS {
        return next.run(req).await;
    }
    let header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    let principal = match s.verifier.verify_header(header).await {
        Ok(p) => p,
        Err(e) => {
            // RFC 6750 §3: a bad token gets `error="invalid_token"`; no token, just the scheme.
            let challenge = match e {
                AuthError::Invalid(_) => r#"Bearer error="invalid_token""#,
                AuthError::Missing | AuthError::NotConfigured => "Bearer",
            };
            let detail = match e {
                AuthError::NotConfigured => {
                    "authentication is not configured (set JWT_HS256_SECRET or JWT_JWKS)".to_owned()
                }
                other => other.to_string(),
            };
            let mut res = ApiError::Unauthorized(detail).into_response();
            res.headers_mut()
                .insert("www-authenticate", HeaderValue::from_static(challenge));
            return res;
        }
    };
    let limits = &s.config.rate_limits;
    if limits.enabled && principal.role != Role::Service {
        let ip = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string())
            .unwrap_or_else(|| "unknown".into());
        let class = if req.method() == Method::GET {
            Class::Read
        } else {
            Class::Write
        };
        let (who, limit, name) = match (&principal.patient_id, principal.role) {
            (Some(p), Role::Patient) => (
                format!("patient:{p}"),
                pick(limits, &class),
                class_name(&class),
            ),
            _ => (format!("ip:{ip}"), pick(limits, &class), class_name(&class)),
        };
        let mut checks = vec![(
            format!("{}:rl:{name}:{who}", s.config.redis_namespace),
            limit,
        )];
        if is_booking_change(req.method(), &path)
            && let (Some(p), Role::Patient) = (&principal.patient_id, principal.role)
        {
            checks.push((
                format!("{}:rl:booking:patient:{p}", s.config.redis_namespace),
                limits.booking,
            ));
        }
        let mut conn = s.redis.clone();
        let mut last = None;
        for (key, limit) in checks {
            match rate_limit::check(&mut conn, &key, limit).await {
                Ok(d) if !d.allowed => return too_many(d),
                Ok(d) => last = Some(d),
                // The limiter must not take the API down with it: fail open, loudly.
                Err(e) => {
                    tracing::warn!(error = %e, "rate limiter unavailable; request let through")
                }
            }
        }
        req.extensions_mut().insert(principal);
        let mut res = next.run(req).await;
        if let Some(d) = last {
            set_headers(&mut res, &d);
        }
        return res;
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

fn pick(l: &rate_limit::RateLimits, c: &Class) -> Limit {
    match c {
        Class::Read => l.read,
        Class::Write => l.write,
    }
}

fn class_name(c: &Class) -> &'static str {
    match c {
        Class::Read => "read",
        Class::Write => "write",
    }
}

fn set_headers(res: &mut Response, d: &rate_limit::Decision) {
    let h = res.headers_mut();
    h.insert("ratelimit-limit", HeaderValue::from(d.limit));
    h.insert("ratelimit-remaining", HeaderValue::from(d.remaining));
    h.insert(
        "ratelimit-reset",
        HeaderValue::from(d.reset.as_secs_f64().ceil() as u64),
    );
}

fn too_many(d: rate_limit::Decision) -> Response {
    let retry = d.retry_after.as_secs_f64().ceil().max(1.0) as u64;
    let mut res = ApiError::TooManyRequests { retry_after: retry }.into_response();
    set_headers(&mut res, &d);
    res
}

/// Everything the policy needs to know about a request.
#[derive(Clone, Copy, Debug)]
pub enum Action {
    /// Create a clinic.
    CreateClinic,
    /// Public directory: clinics, practitioners, hours, availability, search.
    ReadDirectory,
    /// Create a practitioner in, or change the hours / conflicts of, this clinic.
    ManageClinic(Uuid),
    /// Read this clinic's private data (day sheet, conflicts) or rebuild its availability.
    ReadClinic(Uuid),
    /// Register a patient.
    CreatePatient,
    /// Read this patient's record or bookings.
    ReadPatient(Uuid),
    /// Submit a booking request for (patient, clinic of the practitioner).
    Submit {
        /// The patient.
        patient: Uuid,
        /// The practitioner's clinic.
        clinic: Uuid,
    },
    /// Read a request or booking of (patient, clinic).
    ReadBooking {
        /// The patient.
        patient: Uuid,
        /// The practitioner's clinic.
        clinic: Uuid,
    },
    /// Cancel or reschedule a booking of (patient, clinic).
    ChangeBooking {
        /// The patient.
        patient: Uuid,
        /// The practitioner's clinic.
        clinic: Uuid,
    },
    /// Record a visit outcome for a booking at this clinic (patient given for visibility).
    VisitOutcome {
        /// The patient.
        patient: Uuid,
        /// The practitioner's clinic.
        clinic: Uuid,
    },
    /// Read a booking's audit trail.
    ReadAudit {
        /// The patient.
        patient: Uuid,
        /// The practitioner's clinic.
        clinic: Uuid,
    },
    /// Manage outbound webhook subscriptions.
    ManageWebhooks,
}

fn forbidden() -> ApiError {
    ApiError::Forbidden("your role may not do this".into())
}

fn hidden() -> ApiError {
    ApiError::NotFound("no such resource".into())
}

/// The access policy of slotq, in one place. `Ok` means allowed.
pub fn authorize(p: &Principal, action: Action) -> Result<(), ApiError> {
    use Role::*;
    let own_patient = |id: Uuid| p.role == Patient && p.patient_id == Some(id);
    let own_clinic = |id: Uuid| p.role == ClinicAdmin && p.clinic_id == Some(id);
    let allowed = match action {
        Action::ReadDirectory => true,
        Action::CreateClinic | Action::CreatePatient => p.role == Service,
        Action::ManageClinic(c) => p.role == Service || own_clinic(c),
        Action::ReadClinic(c) => matches!(p.role, Service | Ops) || own_clinic(c),
        Action::ManageWebhooks => matches!(p.role, Service | Ops),
        Action::ReadPatient(id) => {
            if matches!(p.role, Service | Ops) || own_patient(id) {
                true
            } else {
                return Err(hidden());
            }
        }
        Action::Submit { patient, clinic } => match p.role {
            Service => true,
            Patient if own_patient(patient) => true,
            // Another patient's id is answered like an unknown one.
            Patient => return Err(hidden()),
            ClinicAdmin => own_clinic(clinic),
            Ops => false,
        },
        Action::ReadBooking { patient, clinic } => {
            if matches!(p.role, Service | Ops) || own_patient(patient) || own_clinic(clinic) {
                true
            } else {
                return Err(hidden());
            }
        }
        Action::ChangeBooking { patient, clinic } => {
            if p.role == Service || own_patient(patient) || own_clinic(clinic) {
                true
            } else if p.role == Ops {
                false
            } else {
                return Err(hidden());
            }
        }
        Action::VisitOutcome { patient, clinic } | Action::ReadAudit { patient, clinic } => {
            let audit = matches!(action, Action::ReadAudit { .. });
            if p.role == Service || own_clinic(clinic) || (audit && p.role == Ops) {
                true
            } else if own_patient(patient) || p.role == Ops {
                false
            } else {
                return Err(hidden());
            }
        }
    };
    if allowed { Ok(()) } else { Err(forbidden()) }
}

/// Whose bookings `GET /v1/patients/{id}/bookings` lists for this caller: a clinic admin sees
/// the patient's bookings at their own clinic only (the patient's record and other bookings
/// stay hidden); everyone else needs [`Action::ReadPatient`].
pub fn patient_bookings_scope(
    p: &Principal,
    patient: Uuid,
) -> Result<slotq_store::bookings::ListOwner, ApiError> {
    use slotq_store::bookings::ListOwner;
    match (p.role, p.clinic_id) {
        (Role::ClinicAdmin, Some(clinic)) => Ok(ListOwner::PatientAtClinic { patient, clinic }),
        _ => authorize(p, Action::ReadPatient(patient)).map(|()| ListOwner::Patient(patient)),
    }
}

/// The audit-log actor for a caller.
pub fn actor(p: &Principal, request_id: Option<String>) -> slotq_store::bookings::Actor {
    slotq_store::bookings::Actor {
        name: p.sub.clone(),
        role: p.role.as_str().to_owned(),
        request_id,
    }
}

/// The clinic of a practitioner (404 when unknown).
pub async fn clinic_of(s: &AppState, practitioner: Uuid) -> Result<Uuid, ApiError> {
    Ok(s.lookup
        .schedule(practitioner)
        .await?
        .ok_or_else(|| ApiError::not_found("practitioner", practitioner))?
        .clinic_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(role: Role, clinic: Option<Uuid>, patient: Option<Uuid>) -> Principal {
        Principal {
            sub: "t".into(),
            role,
            clinic_id: clinic,
            patient_id: patient,
        }
    }

    #[test]
    fn the_policy_hides_other_patients_and_scopes_clinic_admins() {
        let (a, b, c1, c2) = (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        );
        let pa = who(Role::Patient, None, Some(a));
        let admin = who(Role::ClinicAdmin, Some(c1), None);
        let ops = who(Role::Ops, None, None);
        let svc = who(Role::Service, None, None);
        let mine = Action::ReadBooking {
            patient: a,
            clinic: c1,
        };
        let theirs = Action::ReadBooking {
            patient: b,
            clinic: c2,
        };
        assert!(authorize(&pa, mine).is_ok());
        assert!(matches!(authorize(&pa, theirs), Err(ApiError::NotFound(_))));
        assert!(authorize(&admin, mine).is_ok());
        assert!(matches!(
            authorize(&admin, theirs),
            Err(ApiError::NotFound(_))
        ));
        assert!(authorize(&ops, theirs).is_ok());
        assert!(matches!(
            authorize(
                &ops,
                Action::ChangeBooking {
                    patient: b,
                    clinic: c2
                }
            ),
            Err(ApiError::Forbidden(_))
        ));
        assert!(matches!(
            authorize(
                &pa,
                Action::VisitOutcome {
                    patient: a,
                    clinic: c1
                }
            ),
            Err(ApiError::Forbidden(_))
        ));
        assert!(
            authorize(
                &admin,
                Action::VisitOutcome {
                    patient: b,
                    clinic: c1
                }
            )
            .is_ok()
        );
        assert!(matches!(
            authorize(
                &pa,
                Action::Submit {
                    patient: b,
                    clinic: c1
                }
            ),
            Err(ApiError::NotFound(_))
        ));
        assert!(authorize(&svc, Action::CreateClinic).is_ok());
        assert!(matches!(
            authorize(&ops, Action::CreateClinic),
            Err(ApiError::Forbidden(_))
        ));
        assert!(authorize(&ops, Action::ManageWebhooks).is_ok());
        assert!(matches!(
            authorize(&admin, Action::ManageClinic(c2)),
            Err(ApiError::Forbidden(_))
        ));
    }
}
