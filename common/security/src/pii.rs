//! Personal data at rest: patient name, e-mail and phone are stored encrypted with
//! AES-256-GCM; e-mail uniqueness uses a keyed HMAC-SHA256 "blind index" of the normalised
//! address, so PostgreSQL can enforce it without seeing the address.
//!
//! Keys come from `PII_KEYS` = `id1:base64key,id2:base64key` (32-byte keys). The first key
//! encrypts; every listed key decrypts, so rotating means putting the new key first and keeping
//! the old ones until rows are re-encrypted. Each value carries the id of its key:
//! `[id length][id][12-byte nonce][ciphertext + tag]`. The blind index key is
//! `PII_INDEX_KEY` (base64, ≥ 32 bytes); it cannot be rotated without re-indexing.

use aes_gcm::{
    Aes256Gcm, Key, Nonce,
    aead::{Aead, AeadCore, KeyInit, OsRng},
};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A PII configuration problem.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PiiError(pub String);

/// Encryption keys and the blind-index key.
#[derive(Clone)]
pub struct PiiKeys {
    keys: Vec<(String, Aes256Gcm)>,
    index_key: Vec<u8>,
}

impl std::fmt::Debug for PiiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("PiiKeys")
            .field("key_ids", &ids)
            .finish_non_exhaustive()
    }
}

/// Development-only keys, used when `PII_KEYS` is unset (ingress warns loudly).
pub const DEV_KEYS: &str = "dev:ZGV2LW9ubHktcGlpLWtleS1ub3QtZm9yLXByb2QhISE=";
/// Development-only blind-index key.
pub const DEV_INDEX_KEY: &str = "ZGV2LW9ubHktYmxpbmQtaW5kZXgta2V5LW5vdC1mb3ItcHJvZCE=";

impl PiiKeys {
    /// Parses `PII_KEYS` and `PII_INDEX_KEY`.
    pub fn parse(keys: &str, index_key: &str) -> Result<Self, PiiError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut parsed = Vec::new();
        for part in keys.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (id, key) = part
                .split_once(':')
                .ok_or_else(|| PiiError("expected id:base64key".into()))?;
            if id.is_empty()
                || id.len() > 32
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(PiiError(format!(
                    "key id {id:?} must be 1-32 of [A-Za-z0-9_-]"
                )));
            }
            let bytes = b64
                .decode(key)
                .map_err(|_| PiiError(format!("key {id} is not base64")))?;
            if bytes.len() != 32 {
                return Err(PiiError(format!(
                    "key {id} must be 32 bytes, got {}",
                    bytes.len()
                )));
            }
            parsed.push((
                id.to_owned(),
                Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes)),
            ));
        }
        if parsed.is_empty() {
            return Err(PiiError("no key".into()));
        }
        let index_key = b64
            .decode(index_key.trim())
            .map_err(|_| PiiError("index key is not base64".into()))?;
        if index_key.len() < 32 {
            return Err(PiiError("index key must be at least 32 bytes".into()));
        }
        Ok(Self {
            keys: parsed,
            index_key,
        })
    }

    /// Encrypts with the current (first) key.
    pub fn encrypt(&self, plain: &str) -> Vec<u8> {
        let (id, cipher) = &self.keys[0];
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        // Encryption with a valid key and a fresh nonce does not fail for inputs this size.
        let sealed = cipher.encrypt(&nonce, plain.as_bytes()).unwrap_or_default();
        let mut out = Vec::with_capacity(1 + id.len() + 12 + sealed.len());
        out.push(id.len() as u8);
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Decrypts a value sealed by any configured key.
    pub fn decrypt(&self, sealed: &[u8]) -> Result<String, PiiError> {
        let id_len = *sealed
            .first()
            .ok_or_else(|| PiiError("empty value".into()))? as usize;
        let id = sealed
            .get(1..1 + id_len)
            .ok_or_else(|| PiiError("truncated value".into()))?;
        let nonce = sealed
            .get(1 + id_len..13 + id_len)
            .ok_or_else(|| PiiError("truncated value".into()))?;
        let body = &sealed[13 + id_len..];
        let (_, cipher) = self
            .keys
            .iter()
            .find(|(k, _)| k.as_bytes() == id)
            .ok_or_else(|| {
                PiiError(format!(
                    "no key {:?} to decrypt with",
                    String::from_utf8_lossy(id)
                ))
            })?;
        let plain = cipher
            .decrypt(Nonce::from_slice(nonce), body)
            .map_err(|_| PiiError("value does not decrypt".into()))?;
        String::from_utf8(plain).map_err(|_| PiiError("value is not text".into()))
    }

    /// The blind index of an e-mail address (case-insensitive).
    pub fn email_index(&self, email: &str) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.index_key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(email.trim().to_lowercase().as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// The id of the current (encrypting) key.
    pub fn current_id(&self) -> &str {
        &self.keys[0].0
    }

    /// Whether a value was sealed with the current key (rows with older keys can be re-encrypted).
    pub fn is_current(&self, sealed: &[u8]) -> bool {
        let id = &self.keys[0].0;
        sealed.first().map(|l| *l as usize) == Some(id.len())
            && sealed.get(1..1 + id.len()) == Some(id.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> String {
        base64::engine::general_purpose::STANDARD.encode([byte; 32])
    }

    #[test]
    fn values_round_trip_and_rotation_keeps_old_values_readable() {
        let old = PiiKeys::parse(&format!("k1:{}", key(1)), &key(9)).unwrap();
        let sealed = old.encrypt("Ada Lovelace");
        assert!(!String::from_utf8_lossy(&sealed).contains("Ada"));
        assert_eq!(old.decrypt(&sealed).unwrap(), "Ada Lovelace");
        assert_ne!(old.encrypt("Ada Lovelace"), sealed, "fresh nonce each time");

        let rotated = PiiKeys::parse(&format!("k2:{},k1:{}", key(2), key(1)), &key(9)).unwrap();
        assert_eq!(rotated.decrypt(&sealed).unwrap(), "Ada Lovelace");
        assert!(!rotated.is_current(&sealed));
        assert!(rotated.is_current(&rotated.encrypt("x")));
        let only_new = PiiKeys::parse(&format!("k2:{}", key(2)), &key(9)).unwrap();
        assert!(only_new.decrypt(&sealed).is_err());

        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(old.decrypt(&tampered).is_err());
        assert_eq!(
            old.email_index("Ada@Example.org "),
            rotated.email_index("ada@example.org")
        );
        assert!(PiiKeys::parse("k1:short", &key(9)).is_err());
        assert!(PiiKeys::parse(&format!("k1:{}", key(1)), "c2hvcnQ=").is_err());
        assert!(PiiKeys::parse(DEV_KEYS, DEV_INDEX_KEY).is_ok());
    }
}
