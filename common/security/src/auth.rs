//! Authentication: Bearer JWTs.
//!
//! Production verifies RS256/ES256 tokens against a JWKS (a file or an URL, cached, re-read
//! when a token names an unknown `kid`, at most every 30 s); local runs verify HS256 tokens
//! with `JWT_HS256_SECRET`. `iss`, `aud`, `exp` and `nbf` are always checked, with a small
//! leeway. `alg: none` and algorithm confusion are impossible: the accepted algorithm is
//! fixed by the key, never taken from the token.
//!
//! Longer than most modules: verification, its cache and the claims it checks are one trust boundary.

use secrecy::{ExposeSecret, SecretString};
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode,
    jwk::JwkSet,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Who is calling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A patient: their own requests, bookings and record.
    Patient,
    /// A clinic administrator: their clinic's practitioners, hours, day sheets, outcomes.
    ClinicAdmin,
    /// Operations: read everything, manage webhook subscriptions.
    Ops,
    /// A trusted back end acting for any patient and clinic.
    Service,
}

impl Role {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Patient => "patient",
            Role::ClinicAdmin => "clinic_admin",
            Role::Ops => "ops",
            Role::Service => "service",
        }
    }
}

/// The key set could not be loaded: the operator gets the cause in the log, the client a
/// message without server paths or addresses.
fn keys_unavailable(e: &dyn std::fmt::Display) -> AuthError {
    tracing::error!(error = %e, "JWT_JWKS: the key set cannot be loaded; every token is refused");
    AuthError::Invalid("the signing keys are unavailable".into())
}

/// The token's claims.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    /// Subject.
    pub sub: String,
    /// Role.
    pub role: Role,
    /// For clinic admins: their clinic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clinic_id: Option<Uuid>,
    /// For patients: their patient record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_id: Option<Uuid>,
    /// Issuer.
    pub iss: String,
    /// Audience: one string or an array of strings (RFC 7519 §4.1.3); validation requires
    /// ours among them.
    pub aud: Audience,
    /// Expiry (unix seconds; a fractional NumericDate is read rounded down).
    #[serde(deserialize_with = "numeric_date::floor")]
    pub exp: i64,
    /// Not before (unix seconds; a fractional one is read rounded up).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "numeric_date::ceil_opt"
    )]
    pub nbf: Option<i64>,
    /// Issued at (unix seconds).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "numeric_date::floor_opt"
    )]
    pub iat: Option<i64>,
}

/// RFC 7519 NumericDate: seconds since the epoch, which may be fractional (`1767225600.5`).
/// jsonwebtoken reads `exp`/`nbf` as integers only, so slotq reads them here and checks them
/// itself (rounded the safe way: an expiry down, a not-before up).
mod numeric_date {
    use serde::{Deserialize, Deserializer, de::Error};

    fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        let v = f64::deserialize(d)?;
        if v.is_finite() {
            Ok(v)
        } else {
            Err(D::Error::custom("not a NumericDate"))
        }
    }

    pub fn floor<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        seconds(d).map(|v| v.floor() as i64)
    }

    pub fn floor_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        floor(d).map(Some)
    }

    pub fn ceil_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        seconds(d).map(|v| Some(v.ceil() as i64))
    }
}

/// The `aud` claim as issued: identity providers send a string or an array.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// `"aud": "slotq-api"`.
    One(String),
    /// `"aud": ["slotq-api", …]`.
    Many(Vec<String>),
}

impl From<String> for Audience {
    fn from(a: String) -> Self {
        Audience::One(a)
    }
}

impl From<&str> for Audience {
    fn from(a: &str) -> Self {
        Audience::One(a.to_owned())
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Subject.
    pub sub: String,
    /// Role.
    pub role: Role,
    /// Clinic of a clinic admin.
    pub clinic_id: Option<Uuid>,
    /// Patient record of a patient.
    pub patient_id: Option<Uuid>,
}

/// Why a token was refused (the message is safe to show).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No or malformed `Authorization` header.
    #[error("missing bearer token")]
    Missing,
    /// Signature, claims or key problem.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Neither a JWKS nor an HS256 secret is configured.
    #[error("authentication is not configured")]
    NotConfigured,
}

/// Where verification keys come from.
#[derive(Clone, Debug, Default)]
pub struct AuthConfig {
    /// HS256 secret for local runs (redacted in `Debug`, never logged).
    pub hs256_secret: Option<SecretString>,
    /// JWKS location: a file path or an `http(s)://` URL.
    pub jwks: Option<String>,
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud`.
    pub audience: String,
    /// Clock leeway for `exp` / `nbf`.
    pub leeway: Duration,
}

struct Jwks {
    keys: HashMap<String, (DecodingKey, Algorithm)>,
    loaded: Option<Instant>,
}

/// Verifies tokens.
pub struct Verifier {
    config: AuthConfig,
    hs256: Option<DecodingKey>,
    jwks: Mutex<Jwks>,
    http: reqwest::Client,
    verified: Mutex<HashMap<String, Verified>>,
}

/// A token that passed every check, remembered so the next request with the same token (a
/// client sends one many times) skips the signature and the claims' decoding: that was a
/// fifth of ingress' instructions per submission.
/// What depends on the clock (`exp`, `nbf`) is checked again on every use, and an entry is
/// dropped after [`VERIFIED_FOR`], so a key removed from the JWKS is honoured no longer than
/// that beyond what the JWKS cache already allows.
struct Verified {
    principal: Principal,
    exp: i64,
    nbf: Option<i64>,
    at: std::time::Instant,
}

/// How long a verified token is remembered.
const VERIFIED_FOR: Duration = Duration::from_secs(60);
/// Tokens remembered at most (the map starts over above it).
const VERIFIED_MAX: usize = 10_000;

const JWKS_MIN_REFRESH: Duration = Duration::from_secs(30);

impl Verifier {
    /// A verifier for `config`.
    pub fn new(config: AuthConfig) -> Self {
        let hs256 = config
            .hs256_secret
            .as_ref()
            .map(|s| DecodingKey::from_secret(s.expose_secret().as_bytes()));
        Self {
            config,
            hs256,
            jwks: Mutex::new(Jwks {
                keys: HashMap::new(),
                loaded: None,
            }),
            http: reqwest::Client::new(),
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// `exp` and `nbf` against the clock, with the configured leeway.
    fn check_times(&self, exp: i64, nbf: Option<i64>) -> Result<(), AuthError> {
        let now = chrono::Utc::now().timestamp();
        let leeway = i64::try_from(self.config.leeway.as_secs()).unwrap_or(i64::MAX);
        if exp < now.saturating_sub(leeway) {
            return Err(AuthError::Invalid("the token has expired".into()));
        }
        if nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
            return Err(AuthError::Invalid(
                "the token is not valid yet (nbf)".into(),
            ));
        }
        Ok(())
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.set_issuer(&[&self.config.issuer]);
        v.set_audience(&[&self.config.audience]);
        // `exp` and `nbf` are checked in `verify` (they may be fractional, see `numeric_date`);
        // `exp` is required by the `Claims` type itself.
        v.validate_exp = false;
        v.validate_nbf = false;
        v.set_required_spec_claims(&["iss", "aud", "sub"]);
        v
    }

    /// Verifies the value of an `Authorization` header.
    pub async fn verify_header(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        let token = header
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        self.verify(token).await
    }

    /// Verifies a token.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let remembered = {
            let verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            verified
                .get(token)
                .filter(|v| v.at.elapsed() < VERIFIED_FOR)
                .map(|v| (v.principal.clone(), v.exp, v.nbf))
        };
        if let Some((principal, exp, nbf)) = remembered {
            self.check_times(exp, nbf)?;
            return Ok(principal);
        }
        let (principal, exp, nbf) = self.verify_fully(token).await?;
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        // When full, the expired entries go first; only a full map of live ones is emptied.
        if verified.len() >= VERIFIED_MAX {
            verified.retain(|_, v| v.at.elapsed() < VERIFIED_FOR);
            if verified.len() >= VERIFIED_MAX {
                verified.clear();
            }
        }
        verified.insert(
            token.to_owned(),
            Verified {
                principal: principal.clone(),
                exp,
                nbf,
                at: std::time::Instant::now(),
            },
        );
        Ok(principal)
    }

    /// Verifies a token's signature and claims; also returns its `exp` and `nbf`.
    async fn verify_fully(&self, token: &str) -> Result<(Principal, i64, Option<i64>), AuthError> {
        let header = decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let (key, alg) = match header.alg {
            Algorithm::HS256 => match &self.hs256 {
                Some(k) => (k.clone(), Algorithm::HS256),
                None if self.config.jwks.is_some() => {
                    return Err(AuthError::Invalid("HS256 is not accepted".into()));
                }
                None => return Err(AuthError::NotConfigured),
            },
            Algorithm::RS256 | Algorithm::ES256 => {
                let kid = header
                    .kid
                    .clone()
                    .ok_or_else(|| AuthError::Invalid("token has no kid".into()))?;
                let (key, alg) = self.jwks_key(&kid).await?;
                if alg != header.alg {
                    return Err(AuthError::Invalid(
                        "algorithm does not match the key".into(),
                    ));
                }
                (key, alg)
            }
            other => {
                return Err(AuthError::Invalid(format!(
                    "algorithm {other:?} is not accepted"
                )));
            }
        };
        let data = decode::<Claims>(token, &key, &self.validation(alg))
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let c = data.claims;
        self.check_times(c.exp, c.nbf)?;
        match (c.role, c.clinic_id, c.patient_id) {
            (Role::ClinicAdmin, None, _) => {
                return Err(AuthError::Invalid(
                    "clinic_admin token without clinic_id".into(),
                ));
            }
            (Role::Patient, _, None) => {
                return Err(AuthError::Invalid(
                    "patient token without patient_id".into(),
                ));
            }
            _ => {}
        }
        if c.sub.trim().is_empty() {
            // The subject is the audit actor and the idempotency scope: it must name someone.
            return Err(AuthError::Invalid("token has an empty sub".into()));
        }
        Ok((
            Principal {
                sub: c.sub,
                role: c.role,
                clinic_id: c.clinic_id,
                patient_id: c.patient_id,
            },
            c.exp,
            c.nbf,
        ))
    }

    async fn jwks_key(&self, kid: &str) -> Result<(DecodingKey, Algorithm), AuthError> {
        let source = self
            .config
            .jwks
            .clone()
            .ok_or(AuthError::Invalid("no JWKS configured".into()))?;
        {
            let jwks = self.jwks.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(k) = jwks.keys.get(kid) {
                return Ok(k.clone());
            }
            if jwks
                .loaded
                .is_some_and(|at| at.elapsed() < JWKS_MIN_REFRESH)
            {
                return Err(AuthError::Invalid("unknown key id".into()));
            }
        }
        let text = if source.starts_with("http://") || source.starts_with("https://") {
            let res = self
                .http
                .get(&source)
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            match res {
                Ok(r) => r.text().await.map_err(|e| keys_unavailable(&e))?,
                Err(e) => return Err(keys_unavailable(&e)),
            }
        } else {
            tokio::fs::read_to_string(&source)
                .await
                .map_err(|e| keys_unavailable(&e))?
        };
        let set: JwkSet = serde_json::from_str(&text).map_err(|e| keys_unavailable(&e))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(id) = jwk.common.key_id.clone() else {
                continue;
            };
            let alg = match &jwk.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                _ => continue,
            };
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.insert(id, (key, alg));
            }
        }
        let mut jwks = self.jwks.lock().unwrap_or_else(|p| p.into_inner());
        jwks.keys = keys;
        jwks.loaded = Some(Instant::now());
        jwks.keys
            .get(kid)
            .cloned()
            .ok_or_else(|| AuthError::Invalid("unknown key id".into()))
    }
}

/// Signs an HS256 token (local runs, tests, scripts).
pub fn mint_hs256(secret: &str, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// Claims for `role`/`sub` valid for `ttl` from now.
pub fn claims(
    config: &AuthConfig,
    role: Role,
    sub: &str,
    clinic_id: Option<Uuid>,
    patient_id: Option<Uuid>,
    ttl: Duration,
) -> Claims {
    let now = chrono::Utc::now().timestamp();
    Claims {
        sub: sub.to_owned(),
        role,
        clinic_id,
        patient_id,
        iss: config.issuer.clone(),
        aud: config.audience.clone().into(),
        exp: now + ttl.as_secs() as i64,
        nbf: Some(now),
        iat: Some(now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AuthConfig {
        AuthConfig {
            hs256_secret: Some("s3cret".into()),
            jwks: None,
            issuer: "slotq".into(),
            audience: "slotq-api".into(),
            leeway: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn a_remembered_token_still_expires_and_only_that_exact_token_is_remembered() {
        let c = AuthConfig {
            leeway: Duration::ZERO,
            ..config()
        };
        let v = Verifier::new(c.clone());
        let token = mint_hs256(
            "s3cret",
            &claims(&c, Role::Ops, "ann", None, None, Duration::from_secs(1)),
        )
        .unwrap();
        assert_eq!(v.verify(&token).await.unwrap().sub, "ann");
        assert_eq!(v.verify(&token).await.unwrap().sub, "ann", "from memory");
        // The same claims with a broken signature: not the remembered token.
        let (head, sig) = token.rsplit_once('.').unwrap();
        let flipped = if sig.starts_with('A') { 'B' } else { 'A' };
        let forged = format!("{head}.{flipped}{}", &sig[1..]);
        assert!(v.verify(&forged).await.is_err());
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let err = v.verify(&token).await.unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
    }

    #[tokio::test]
    async fn good_tokens_pass_and_bad_ones_are_refused() {
        let c = config();
        let v = Verifier::new(c.clone());
        let ok = mint_hs256(
            "s3cret",
            &claims(&c, Role::Ops, "ann", None, None, Duration::from_secs(60)),
        )
        .unwrap();
        let p = v
            .verify_header(Some(&format!("Bearer {ok}")))
            .await
            .unwrap();
        assert_eq!((p.role, p.sub.as_str()), (Role::Ops, "ann"));

        let mut expired = claims(&c, Role::Ops, "ann", None, None, Duration::from_secs(60));
        expired.exp = chrono::Utc::now().timestamp() - 60;
        let mut wrong_aud = claims(&c, Role::Ops, "ann", None, None, Duration::from_secs(60));
        wrong_aud.aud = "other".into();
        let mut wrong_iss = claims(&c, Role::Ops, "ann", None, None, Duration::from_secs(60));
        wrong_iss.iss = "evil".into();
        let mut not_yet = claims(&c, Role::Ops, "ann", None, None, Duration::from_secs(600));
        not_yet.nbf = Some(chrono::Utc::now().timestamp() + 300);
        let mut other_auds = claims(&c, Role::Ops, "ann", None, None, Duration::from_secs(60));
        other_auds.aud = Audience::Many(vec!["a".into(), "b".into()]);
        let mut empty_sub = claims(&c, Role::Ops, " ", None, None, Duration::from_secs(60));
        empty_sub.sub = String::new();
        for bad in [
            expired, wrong_aud, wrong_iss, not_yet, other_auds, empty_sub,
        ] {
            let t = mint_hs256("s3cret", &bad).unwrap();
            assert!(v.verify(&t).await.is_err(), "{bad:?}");
        }
        // Identity providers often issue `aud` as an array: ours among others passes.
        let mut auds = claims(&c, Role::Ops, "ann", None, None, Duration::from_secs(60));
        auds.aud = Audience::Many(vec!["other".into(), c.audience.clone()]);
        let t = mint_hs256("s3cret", &auds).unwrap();
        assert_eq!(v.verify(&t).await.unwrap().sub, "ann");
        let wrong_key = mint_hs256(
            "other",
            &claims(&c, Role::Ops, "ann", None, None, Duration::from_secs(60)),
        )
        .unwrap();
        assert!(v.verify(&wrong_key).await.is_err());
        // alg: none, and a patient token without patient_id.
        let payload = ok.split('.').nth(1).unwrap();
        assert!(
            v.verify(&format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}."))
                .await
                .is_err()
        );
        let no_patient = mint_hs256(
            "s3cret",
            &claims(&c, Role::Patient, "p", None, None, Duration::from_secs(60)),
        )
        .unwrap();
        assert!(v.verify(&no_patient).await.is_err());
        assert!(matches!(
            v.verify_header(None).await,
            Err(AuthError::Missing)
        ));
        assert!(matches!(
            v.verify_header(Some("Basic abc")).await,
            Err(AuthError::Missing)
        ));
    }

    #[tokio::test]
    async fn numeric_dates_may_be_fractional_and_exp_is_required() {
        let c = config();
        let v = Verifier::new(c.clone());
        let now = chrono::Utc::now().timestamp() as f64;
        let sign = |claims: serde_json::Value| {
            encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(b"s3cret"),
            )
            .unwrap()
        };
        let with = |exp: Option<f64>, nbf: Option<f64>| {
            let mut claims = serde_json::json!({"sub": "ann", "role": "ops", "iss": "slotq",
                "aud": "slotq-api", "iat": now + 0.25});
            if let Some(exp) = exp {
                claims["exp"] = exp.into();
            }
            if let Some(nbf) = nbf {
                claims["nbf"] = nbf.into();
            }
            sign(claims)
        };
        // RFC 7519 NumericDate: fractional seconds are allowed.
        assert!(
            v.verify(&with(Some(now + 60.5), Some(now - 0.5)))
                .await
                .is_ok()
        );
        // Expired beyond the leeway (5 s), or not yet valid beyond it: refused.
        assert!(v.verify(&with(Some(now - 6.5), None)).await.is_err());
        assert!(
            v.verify(&with(Some(now + 600.0), Some(now + 6.5)))
                .await
                .is_err()
        );
        // Within the leeway: accepted.
        assert!(v.verify(&with(Some(now - 3.5), None)).await.is_ok());
        // No expiry at all, or not a number: refused.
        assert!(v.verify(&with(None, None)).await.is_err());
        let mut odd = serde_json::json!({"sub": "ann", "role": "ops", "iss": "slotq",
            "aud": "slotq-api", "exp": "tomorrow"});
        assert!(v.verify(&sign(odd.clone())).await.is_err());
        odd["exp"] = serde_json::json!(null);
        assert!(v.verify(&sign(odd)).await.is_err());
    }
}
