//! Extractors that turn axum's rejections into our problem+json errors.

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request},
    http::{HeaderMap, StatusCode, header, request::Parts},
};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::error::ApiError;

/// JSON body: syntax errors → 400, wrong types / missing or unknown fields → 422 naming the
/// field (`weekly[0].start`), wrong content type → 415, too large → 413.
pub struct AppJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for AppJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "expected Content-Type: application/json".into(),
            ));
        }
        let RawBody(body) = RawBody::from_request(req, state).await?;
        parse_json(&body).map(AppJson)
    }
}

/// Whether `Content-Type` is JSON (`application/json` or `application/*+json`).
pub fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json"))
}

/// Parses a JSON body: malformed JSON → 400; a value that does not fit → 422 with the field's
/// path and a message that names JSON types, not the server's.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // Every body of this API is an object (serde would also read an array as a struct's
    // fields in order, and then name a field `[0]`).
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Ok(_) => ApiError::invalid_field("body", "invalid", "must be a JSON object"),
                Err(e) => ApiError::BadRequest(format!("malformed JSON: {e}")),
            },
        );
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.classify() == serde_json::error::Category::Data {
            data_error(&path, &inner)
        } else {
            ApiError::BadRequest(format!("malformed JSON: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
    Ok(value)
}

/// A field error for serde's data error `e` at `path` (`.` is the body itself).
fn data_error(path: &str, e: &serde_json::Error) -> ApiError {
    let message = e.to_string();
    // serde_json appends the position; the field path says more.
    let message = message
        .rsplit_once(" at line ")
        .map_or(message.as_str(), |(m, _)| m);
    let join = |name: &str| {
        if path == "." || path.is_empty() {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        }
    };
    let quoted = |m: &str| m.split('`').nth(1).map(str::to_owned);
    if let Some(name) = message.strip_prefix("missing field ").and_then(quoted) {
        return ApiError::invalid_field(&join(&name), "required", "required");
    }
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let name = quoted(rest).unwrap_or_default();
        let expected = rest
            .split_once(", expected ")
            .map(|(_, e)| e.replace('`', "\""));
        let detail = match expected {
            Some(e) => format!("not a field of this body (expected {e})"),
            None => "not a field of this body".to_owned(),
        };
        // The path already ends at the unknown key.
        let field = if path.ends_with(name.as_str()) {
            path.to_owned()
        } else {
            join(&name)
        };
        return ApiError::invalid_field(&field, "unknown_field", detail);
    }
    let field = if path == "." || path.is_empty() {
        "body"
    } else {
        path
    };
    ApiError::invalid_field(field, "invalid", plain_types(message))
}

/// serde names the server's types (`struct ClinicBody`, `struct ClinicBody with 5 elements`);
/// a client knows JSON's.
fn plain_types(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("struct ") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "struct ".len()..];
        let name_len = after
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let after = &after[name_len..];
        out.push_str("an object");
        rest = after
            .strip_prefix(" with ")
            .and_then(|r| {
                r.split_once(" element")
                    .map(|(_, t)| t.trim_start_matches('s'))
            })
            .unwrap_or(after);
    }
    out.push_str(rest);
    // …and Rust's number types (`expected i64`).
    for (rust, json) in [
        ("i8", "an integer"),
        ("i16", "an integer"),
        ("i32", "an integer"),
        ("i64", "an integer"),
        ("u8", "a non-negative integer"),
        ("u16", "a non-negative integer"),
        ("u32", "a non-negative integer"),
        ("u64", "a non-negative integer"),
        ("usize", "a non-negative integer"),
        ("f32", "a number"),
        ("f64", "a number"),
    ] {
        if let Some(head) = out.strip_suffix(&format!("expected {rust}")) {
            out = format!("{head}expected {json}");
            break;
        }
    }
    out
}

/// The raw body (for signature checks), with the body limit's 413 as problem+json.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|r| {
                if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge
                } else {
                    ApiError::BadRequest(r.body_text())
                }
            })
    }
}

/// A UUID path parameter; anything that is not a UUID cannot name a resource → 404.
pub struct IdPath(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        parse_id(&raw).map(IdPath).ok_or_else(|| {
            ApiError::NotFound(format!("{raw:?} is not a valid id (expected a UUID)"))
        })
    }
}

/// A UUID in its hyphenated form, the one this API writes (one URL per resource: the simple,
/// braced and URN forms the `uuid` crate also reads are not accepted).
pub fn parse_id(raw: &str) -> Option<Uuid> {
    if raw.len() != 36 {
        return None;
    }
    Uuid::try_parse(raw).ok()
}

/// Query string: a parameter of the wrong type, or given twice → 422 naming it (like a body
/// field); unknown parameters are ignored.
pub struct AppQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for AppQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(AppQuery)
            .map_err(|e| {
                let path = e.path().to_string();
                let message = e.into_inner().to_string();
                if let Some(name) = message
                    .strip_prefix("duplicate field ")
                    .and_then(|m| m.split('`').nth(1))
                {
                    return ApiError::invalid_field(name, "duplicate", "given more than once");
                }
                let field = if path == "." || path.is_empty() {
                    "query"
                } else {
                    path.as_str()
                };
                ApiError::invalid_field(field, "invalid", plain_types(&message))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "only parsed")]
    struct Inner {
        start: String,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "only parsed")]
    struct Body {
        name: String,
        weekly: Vec<Inner>,
    }

    fn field_error(raw: &str) -> (String, String, String) {
        match parse_json::<Body>(raw.as_bytes()) {
            Err(ApiError::Unprocessable { errors, .. }) => {
                let e = &errors[0];
                (e.field.clone(), e.code.clone(), e.detail.clone())
            }
            other => panic!("{raw}: {other:?}"),
        }
    }

    #[test]
    fn json_errors_name_the_field_and_json_types() {
        let (f, c, _) = field_error(r#"{"weekly": []}"#);
        assert_eq!((f.as_str(), c.as_str()), ("name", "required"));
        let (f, c, _) = field_error(r#"{"name": "x", "weekly": [{}]}"#);
        assert_eq!((f.as_str(), c.as_str()), ("weekly[0].start", "required"));
        let (f, c, d) = field_error(r#"{"name": "x", "weekly": [{"start": 9}]}"#);
        assert_eq!((f.as_str(), c.as_str()), ("weekly[0].start", "invalid"));
        assert!(
            d.starts_with("invalid type: integer `9`, expected a string"),
            "{d}"
        );
        let (f, c, d) = field_error(r#"{"name": "x", "weekly": [], "extra": 1}"#);
        assert_eq!((f.as_str(), c.as_str()), ("extra", "unknown_field"));
        assert!(d.contains(r#""name""#), "{d}");
        let (f, _, d) = field_error("[1, 2]");
        assert_eq!((f.as_str(), d.as_str()), ("body", "must be a JSON object"));
        let (f, _, d) = field_error(r#"{"name": "x", "weekly": [[]]}"#);
        assert_eq!(f, "weekly[0]");
        assert!(!d.contains("Inner"), "no server type names: {d}");
        assert!(d.contains("an object"), "{d}");
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code, reason = "only parsed")]
        struct Numbers {
            n: i64,
        }
        match parse_json::<Numbers>(br#"{"n": "1"}"#) {
            Err(ApiError::Unprocessable { errors, .. }) => {
                assert_eq!(
                    errors[0].detail,
                    r#"invalid type: string "1", expected an integer"#
                );
            }
            other => panic!("{other:?}"),
        }
        let (f, _, d) = field_error(r#"{"name": null, "weekly": []}"#);
        assert_eq!(f, "name");
        assert!(!d.contains("line"), "{d}");
        assert!(matches!(
            parse_json::<Body>(br#"{"name": "x""#),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            parse_json::<Body>(br#"{"name": "x", "weekly": []} trailing"#),
            Err(ApiError::BadRequest(_))
        ));
    }
}
