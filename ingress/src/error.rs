//! The error policy of the API, in one place.
//!
//! Every error leaves as RFC 9457 `application/problem+json` with `type`, `title`, `status`,
//! `detail` and, for field problems, `errors[]` (`{field, code, detail}`):
//! - client mistakes are 4xx and say exactly what is wrong; they change nothing;
//! - dependencies down (PostgreSQL pool exhausted, Redis unreachable, queue full) are 503 with
//!   `Retry-After`, so clients and load balancers back off instead of failing hard;
//! - anything else is a 500 whose body reveals nothing; the cause is logged once, here,
//!   inside the request's span (which carries the request id).

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

/// One problem with one input field.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// The field, as a dotted path (`weekly[2].start`).
    pub field: String,
    /// Machine-readable code (`invalid`, `in_past`, `invalid_slot`, `unknown`, …).
    pub code: String,
    /// Human-readable explanation.
    pub detail: String,
}

impl FieldError {
    /// A field error.
    pub fn new(
        field: impl Into<String>,
        code: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            code: code.into(),
            detail: detail.into(),
        }
    }
}

/// Collects field problems while parsing a request, so one 422 lists them all.
#[derive(Default)]
pub struct Fields(pub Vec<FieldError>);

impl Fields {
    /// Keeps the value, or records why `field` is invalid.
    pub fn check<T>(&mut self, field: &str, r: Result<T, String>) -> Option<T> {
        r.map_err(|e| self.0.push(FieldError::new(field, "invalid", e)))
            .ok()
    }

    /// Parses an optional parameter, recording why it is invalid.
    pub fn optional<T>(
        &mut self,
        field: &str,
        raw: Option<&str>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        raw.and_then(|r| self.check(field, parse(r)))
    }

    /// 422 with every recorded problem, if any.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(self.0))
        }
    }
}

/// Every error an API handler can return.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request cannot be parsed (JSON syntax, bad query string, bad header).
    #[error("{0}")]
    BadRequest(String),
    /// 401: authentication failed (payment webhook signature).
    #[error("{0}")]
    Unauthorized(String),
    /// 403: authenticated, but the role may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 429: over the rate limit; retry after this many seconds.
    #[error("too many requests; retry after {retry_after} s")]
    TooManyRequests {
        /// Seconds for `Retry-After`.
        retry_after: u64,
    },
    /// 404: no such resource.
    #[error("{0}")]
    NotFound(String),
    /// 405: the path exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: the request conflicts with the current state.
    #[error("{detail}")]
    Conflict {
        /// Machine-readable code (`slot_taken`, `email_taken`, `illegal_transition`).
        code: &'static str,
        /// Explanation.
        detail: String,
    },
    /// 413: body too large.
    #[error("request body too large")]
    PayloadTooLarge,
    /// 415: not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: well-formed but invalid input.
    #[error("{detail}")]
    Unprocessable {
        /// Summary.
        detail: String,
        /// Per-field problems.
        errors: Vec<FieldError>,
    },
    /// 503: shedding load or a dependency is down; retry after this many seconds.
    #[error("{detail}")]
    Unavailable {
        /// Explanation.
        detail: String,
        /// Seconds for `Retry-After`.
        retry_after: u64,
    },
    /// 500: a bug or an unexpected failure; details are logged, not returned.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// 422 with field errors.
    pub fn invalid(errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [one] => format!("{}: {}", one.field, one.detail),
            _ => format!("{} fields are invalid", errors.len()),
        };
        ApiError::Unprocessable { detail, errors }
    }

    /// 422 for one field.
    pub fn invalid_field(field: &str, code: &str, detail: impl Into<String>) -> Self {
        Self::invalid(vec![FieldError::new(field, code, detail)])
    }

    /// 404 for a resource kind and id.
    pub fn not_found(kind: &str, id: impl std::fmt::Display) -> Self {
        ApiError::NotFound(format!("no {kind} with id {id}"))
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            ApiError::TooManyRequests { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
            ),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            ApiError::Conflict { .. } => (StatusCode::CONFLICT, "conflict", "Conflict"),
            ApiError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            ApiError::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            ApiError::Unprocessable { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "Invalid input",
            ),
            ApiError::Unavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal server error",
            ),
        }
    }
}

/// An RFC 9457 problem: the body of every error of the API, and its schema in the OpenAPI
/// document (the shared `default` response of every operation).
#[derive(Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary.
    pub title: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, for this request.
    pub detail: String,
    /// Machine-readable code of a conflict (`slot_taken`, `email_taken`, `illegal_transition`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub code: Option<&'static str>,
    /// Field problems of a 422.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub errors: Option<Vec<FieldError>>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title) = self.parts();
        let detail = match &self {
            ApiError::Internal(e) => {
                tracing::error!(error = ?e, "internal error");
                "an unexpected error occurred; it has been logged".to_owned()
            }
            other => other.to_string(),
        };
        let (code, errors) = match &self {
            ApiError::Conflict { code, .. } => (Some(*code), None),
            ApiError::Unprocessable { errors, .. } => (None, Some(errors.clone())),
            _ => (None, None),
        };
        let body = Problem {
            kind: format!("https://slotq.dev/problems/{slug}"),
            title,
            status: status.as_u16(),
            detail,
            code,
            errors,
        };
        let mut res = (status, Json(body)).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let ApiError::Unavailable { retry_after, .. }
        | ApiError::TooManyRequests { retry_after } = self
        {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        res
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::Unavailable {
                    detail: "the database is unavailable, retry shortly".into(),
                    retry_after: 2,
                }
            }
            other => ApiError::Internal(other.into()),
        }
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(e: redis::RedisError) -> Self {
        tracing::warn!(error = %e, "redis unavailable");
        ApiError::Unavailable {
            detail: "the queue is unavailable, retry shortly".into(),
            retry_after: 2,
        }
    }
}

impl From<slotq_redis::availability::AvailabilityError> for ApiError {
    fn from(e: slotq_redis::availability::AvailabilityError) -> Self {
        match e {
            slotq_redis::availability::AvailabilityError::Db(e) => e.into(),
            slotq_redis::availability::AvailabilityError::Redis(e) => e.into(),
        }
    }
}

impl From<slotq_store::bookings::TransitionError> for ApiError {
    fn from(e: slotq_store::bookings::TransitionError) -> Self {
        use slotq_store::bookings::TransitionError as T;
        match e {
            T::NotFound => ApiError::NotFound("no such booking".into()),
            T::Illegal(t) => ApiError::Conflict {
                code: "illegal_transition",
                detail: format!("the booking is {}: {t}", t.from),
            },
            T::Db(e) => e.into(),
        }
    }
}
