//! Authentication: `Authorization: Bearer <key>` → SHA-256 → in-memory key snapshot →
//! principal. Keys are only ever held hashed; API keys are high-entropy random strings, so a
//! fast unsalted hash is enough to make a leaked table useless (no password-style stretching).

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

/// SHA-256 of an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    /// Hashes a presented key.
    pub fn of(key: &str) -> Self {
        KeyHash(Sha256::digest(key.as_bytes()).into())
    }

    /// Parses 64 hex characters; `None` otherwise.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out).ok()?;
        Some(KeyHash(out))
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// A configured key: its name and hash.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub name: String,
    pub hash: KeyHash,
}

/// Who is calling. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Principal {
    pub key_name: Arc<str>,
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing Authorization: Bearer header")]
    Missing,
    #[error("malformed Authorization header")]
    Malformed,
    #[error("unknown API key")]
    Unknown,
}

/// The keys the gateway accepts right now. Immutable; replaced whole.
#[derive(Debug, Default)]
pub struct KeySnapshot {
    by_hash: HashMap<KeyHash, Principal>,
}

impl KeySnapshot {
    /// Builds a snapshot from configured keys.
    pub fn new(keys: &[KeyEntry]) -> Self {
        let by_hash = keys
            .iter()
            .map(|k| (k.hash, Principal { key_name: Arc::from(k.name.as_str()) }))
            .collect();
        KeySnapshot { by_hash }
    }

    /// Authenticates the raw `Authorization` header value (if any).
    ///
    /// # Errors
    /// [`AuthError`] for a missing, malformed or unknown key.
    pub fn authenticate(&self, header: Option<&[u8]>) -> Result<Principal, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let header = std::str::from_utf8(header).map_err(|_| AuthError::Malformed)?;
        let header = header.trim();
        if header.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Missing);
        }
        let (scheme, key) = header.split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed);
        }
        let key = key.trim();
        if key.is_empty() {
            return Err(AuthError::Missing);
        }
        self.by_hash.get(&KeyHash::of(key)).cloned().ok_or(AuthError::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authenticates_by_hash_only() {
        let snap = KeySnapshot::new(&[KeyEntry { name: "dev".into(), hash: KeyHash::of("sk-1") }]);
        assert_eq!(&*snap.authenticate(Some(b"Bearer sk-1")).unwrap().key_name, "dev");
        assert_eq!(&*snap.authenticate(Some(b"bearer  sk-1 ")).unwrap().key_name, "dev");
        assert_eq!(snap.authenticate(Some(b"Bearer sk-2")).unwrap_err(), AuthError::Unknown);
        assert_eq!(snap.authenticate(None).unwrap_err(), AuthError::Missing);
        assert_eq!(snap.authenticate(Some(b"Basic abc")).unwrap_err(), AuthError::Malformed);
        assert_eq!(snap.authenticate(Some(b"Bearer ")).unwrap_err(), AuthError::Missing);
        assert_eq!(snap.authenticate(Some(&[0xff, 0xfe])).unwrap_err(), AuthError::Malformed);
    }

    #[test]
    fn hex_round_trip() {
        let h = KeyHash::of("sk-joule-demo");
        assert_eq!(KeyHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(KeyHash::from_hex("zz"), None);
    }
}
