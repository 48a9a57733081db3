//! Payment-webhook signatures: `Payment-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
//! "<t>.<raw body>")>`. Several `v1=` entries may be present (secret rotation); one must match.
//! Comparison is constant-time (`hmac`'s `verify_slice`).

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a signature was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No header.
    #[error("missing Payment-Signature header")]
    Missing,
    /// Not `t=…,v1=…`.
    #[error("malformed Payment-Signature header")]
    Malformed,
    /// Timestamp too far from now.
    #[error("signature timestamp outside the tolerated window")]
    Stale,
    /// No `v1` matches.
    #[error("signature does not match")]
    Mismatch,
}

fn mac(secret: &[u8], t: i64, body: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = HmacSha256::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value for `body` signed at `t` (what the payment provider sends).
pub fn sign(secret: &[u8], t: i64, body: &[u8]) -> String {
    format!(
        "t={t},v1={}",
        hex::encode(mac(secret, t, body).finalize().into_bytes())
    )
}

/// Verifies a header against the raw body at `now` (unix seconds).
pub fn verify(
    header: Option<&str>,
    secret: &[u8],
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.parse::<i64>().map_err(|_| SignatureError::Malformed)?),
            Some(("v1", v)) => sigs.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?),
            Some(_) => {} // other schemes are ignored, as providers add them over time
            None => return Err(SignatureError::Malformed),
        }
    }
    let t = t.ok_or(SignatureError::Malformed)?;
    if sigs.is_empty() {
        return Err(SignatureError::Malformed);
    }
    // `abs_diff`: `now - t` overflows for timestamps near i64::MIN / i64::MAX.
    if now.abs_diff(t) > u64::try_from(tolerance_secs).unwrap_or(0) {
        return Err(SignatureError::Stale);
    }
    let expected = mac(secret, t, body);
    if sigs
        .iter()
        .any(|s| expected.clone().verify_slice(s).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_body_verifies_and_tampering_is_refused() {
        let body = br#"{"id":"evt_1"}"#;
        let header = sign(b"s3cret", 1_000, body);
        assert_eq!(verify(Some(&header), b"s3cret", body, 1_100, 300), Ok(()));
        assert_eq!(
            verify(Some(&header), b"other", body, 1_100, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(&header), b"s3cret", b"{}", 1_100, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(&header), b"s3cret", body, 1_301, 300),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(Some(&header), b"s3cret", body, 699, 300),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(None, b"s3cret", body, 1_000, 300),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(Some("garbage"), b"s3cret", body, 1_000, 300),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(Some("t=1000,v1=zz"), b"s3cret", body, 1_000, 300),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(Some("t=1000"), b"s3cret", body, 1_000, 300),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn extreme_timestamps_are_stale_not_an_overflow() {
        let body = b"x";
        for t in [i64::MIN, i64::MIN + 1, i64::MAX, -1_000_000] {
            let header = sign(b"s", t, body);
            for now in [0, 1_000, i64::MAX, i64::MIN] {
                if now.abs_diff(t) <= 300 {
                    continue;
                }
                assert_eq!(
                    verify(Some(&header), b"s", body, now, 300),
                    Err(SignatureError::Stale),
                    "t={t} now={now}"
                );
            }
            assert_eq!(
                verify(
                    Some(&format!("t={t},v1=00")),
                    b"s",
                    body,
                    1_700_000_000,
                    300
                ),
                Err(SignatureError::Stale)
            );
        }
        // Exactly at the edge of the window still counts as fresh.
        let header = sign(b"s", 1_000, body);
        assert_eq!(verify(Some(&header), b"s", body, 1_300, 300), Ok(()));
        assert_eq!(verify(Some(&header), b"s", body, 700, 300), Ok(()));
    }

    #[test]
    fn any_of_several_v1_signatures_may_match() {
        let body = b"x";
        let good = sign(b"new", 50, body);
        let v1 = good.split_once("v1=").map(|(_, v)| v).unwrap_or_default();
        let header = format!("t=50,v1={},v1={v1}", "00".repeat(32));
        assert_eq!(verify(Some(&header), b"new", body, 50, 300), Ok(()));
    }
}
