//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>).
//!
//! A subscription's secret is `whsec_` followed by the base64 of 32 random bytes; the HMAC
//! key is the decoded bytes. Each request carries `webhook-id` (the event id, the same on every
//! retry), `webhook-timestamp` (unix seconds of this attempt) and
//! `webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<raw body>")>`. Receivers
//! verify with any Standard Webhooks library, or [`verify`].

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The prefix of every signing secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// A signing secret (the decoded key bytes).
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Why a secret or a signature was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// Not `whsec_<base64>`.
    #[error("the secret is not whsec_<base64>")]
    BadSecret,
    /// The operating system's random source failed.
    #[error("no randomness available for a new secret")]
    NoRandomness,
    /// A header is missing or not a number.
    #[error("missing or malformed webhook-id / webhook-timestamp / webhook-signature")]
    Malformed,
    /// Timestamp too far from now (replay protection).
    #[error("webhook-timestamp outside the tolerated window")]
    Stale,
    /// No `v1,` signature matches.
    #[error("no signature matches")]
    Mismatch,
}

impl Secret {
    /// A new random secret (32 bytes from the operating system).
    pub fn generate() -> Result<Self, SignatureError> {
        let mut key = vec![0u8; 32];
        getrandom::fill(&mut key).map_err(|_| SignatureError::NoRandomness)?;
        Ok(Secret(key))
    }

    /// Parses `whsec_<base64>`.
    pub fn parse(s: &str) -> Result<Self, SignatureError> {
        let b64 = s
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SignatureError::BadSecret)?;
        let key = STANDARD
            .decode(b64)
            .map_err(|_| SignatureError::BadSecret)?;
        if key.is_empty() {
            return Err(SignatureError::BadSecret);
        }
        Ok(Secret(key))
    }

    /// The `whsec_<base64>` form (what the client is shown once, and what is stored).
    pub fn encoded(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.0))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
        let mut mac = HmacSha256::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` header value for `body` sent as message `id` at `timestamp`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        format!(
            "v1,{}",
            STANDARD.encode(self.mac(id, timestamp, body).finalize().into_bytes())
        )
    }

    /// Verifies the three headers against the raw body at `now` (unix seconds), as a receiver
    /// does: one of the space-separated `v1,` signatures must match (constant-time), and the
    /// timestamp must be within `tolerance_secs` of `now`.
    pub fn verify(
        &self,
        id: &str,
        timestamp: &str,
        signatures: &str,
        body: &[u8],
        now: i64,
        tolerance_secs: i64,
    ) -> Result<(), SignatureError> {
        let t: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| SignatureError::Malformed)?;
        if id.is_empty() {
            return Err(SignatureError::Malformed);
        }
        // `abs_diff`: `now - t` overflows for timestamps near i64::MIN / i64::MAX.
        if now.abs_diff(t) > u64::try_from(tolerance_secs).unwrap_or(0) {
            return Err(SignatureError::Stale);
        }
        let expected = self.mac(id, t, body);
        let matched = signatures
            .split_whitespace()
            .filter_map(|s| s.strip_prefix("v1,"))
            .filter_map(|s| STANDARD.decode(s).ok())
            .any(|sig| expected.clone().verify_slice(&sig).is_ok());
        if matched {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_standard_webhooks_test_vector() {
        // The vector published with the Standard Webhooks reference libraries: reproducing it
        // is what says a receiver's off-the-shelf library accepts our signatures.
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("valid");
        let body = br#"{"test": 2432232314}"#;
        let sig = secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert_eq!(
            secret.verify(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                "1614265330",
                &format!("v1,bm9wZQ== {sig}"),
                body,
                1_614_265_400,
                300
            ),
            Ok(())
        );
    }

    #[test]
    fn tampering_staleness_and_wrong_secrets_are_refused() {
        let secret = Secret::generate().expect("random");
        let other = Secret::generate().expect("random");
        let sig = secret.sign("evt", 1_000, b"{}");
        assert_eq!(
            secret.verify("evt", "1000", &sig, b"{}", 1_000, 300),
            Ok(())
        );
        assert_eq!(
            secret.verify("evt", "1000", &sig, b"{ }", 1_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            secret.verify("evt2", "1000", &sig, b"{}", 1_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            other.verify("evt", "1000", &sig, b"{}", 1_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            secret.verify("evt", "1000", &sig, b"{}", 1_301, 300),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            secret.verify("evt", "soon", &sig, b"{}", 1_000, 300),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn extreme_timestamps_are_stale_not_an_overflow() {
        let secret = Secret::generate().expect("random");
        for t in [i64::MIN, i64::MIN + 1, i64::MAX] {
            let sig = secret.sign("evt", t, b"{}");
            for now in [0, 1_700_000_000, i64::MIN, i64::MAX] {
                if now.abs_diff(t) <= 300 {
                    continue;
                }
                assert_eq!(
                    secret.verify("evt", &t.to_string(), &sig, b"{}", now, 300),
                    Err(SignatureError::Stale),
                    "t={t} now={now}"
                );
            }
        }
        let sig = secret.sign("evt", 1_000, b"{}");
        assert_eq!(
            secret.verify("evt", "1000", &sig, b"{}", 1_300, 300),
            Ok(())
        );
    }

    #[test]
    fn secrets_round_trip_through_their_encoded_form() {
        let s = Secret::generate().expect("random");
        let encoded = s.encoded();
        assert!(encoded.starts_with("whsec_"));
        let back = Secret::parse(&encoded).expect("parses");
        assert_eq!(back.sign("a", 1, b"x"), s.sign("a", 1, b"x"));
        assert_ne!(
            Secret::generate().expect("random").encoded(),
            encoded,
            "secrets are random"
        );
        assert_eq!(
            Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").err(),
            Some(SignatureError::BadSecret)
        );
        assert_eq!(
            Secret::parse("whsec_!!!").err(),
            Some(SignatureError::BadSecret)
        );
    }
}
