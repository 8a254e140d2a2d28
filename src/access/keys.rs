//! Authentication: `Authorization: Bearer <key>` → SHA-256 → in-memory key snapshot →
//! principal. Keys are only ever held hashed; API keys are high-entropy random strings, so a
//! fast unsalted hash is enough to make a leaked table useless (no password-style stretching).
//!
//! The snapshot is built by [`super::projects`] from the config's `[[keys]]` and the store's
//! keys, each key carrying its limits and project.

use std::collections::HashMap;
use std::sync::Arc;

use super::limits::RateLimits;
use super::projects::{ProjectPolicy, CONFIG_KEY_PREFIX};
use crate::api::bearer::{bearer_token, AuthError};
use crate::routing::tags::StrategySet;
use crate::secret::KeyHash;

/// A configured key: its name, hash and optional project (by name).
#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub name: String,
    pub hash: KeyHash,
    pub project: Option<String>,
}

/// Who is calling: the key, its own limits and its project. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Principal {
    pub key_name: Arc<str>,
    /// Store key id (`key_…`), or `config:<name>` for a key from the config.
    pub key_id: Arc<str>,
    /// The key's own rate limits.
    pub limits: Option<Arc<RateLimits>>,
    pub project: Option<Arc<ProjectPolicy>>,
}

impl Principal {
    /// A key from the config without project or limits.
    pub fn config_key(name: &str) -> Self {
        Principal {
            key_name: Arc::from(name),
            key_id: Arc::from(format!("{CONFIG_KEY_PREFIX}{name}")),
            limits: None,
            project: None,
        }
    }

    /// The principal batch work runs as: the project's allow-list and budget apply, the key's
    /// and project's interactive rate limits do not (batches have their own limit).
    pub fn for_batch(&self) -> Principal {
        Principal {
            key_name: self.key_name.clone(),
            key_id: self.key_id.clone(),
            limits: None,
            project: self.project.as_ref().map(|p| Arc::new(p.without_rate_limits())),
        }
    }

    /// Whether the key may use `model` (a base model id). Keys without a project may use all.
    pub fn may_use(&self, model: &str) -> bool {
        self.project.as_ref().is_none_or(|p| p.may_use(model))
    }

    /// The project's default strategy, else `fallback` (the config default).
    pub fn default_strategy<'a>(&'a self, fallback: &'a StrategySet) -> &'a StrategySet {
        self.project.as_ref().and_then(|p| p.default_strategy.as_ref()).unwrap_or(fallback)
    }
}

/// The keys the gateway accepts right now. Immutable; replaced whole.
#[derive(Debug, Default)]
pub struct KeySnapshot {
    by_hash: HashMap<KeyHash, Principal>,
}

impl KeySnapshot {
    /// Builds a snapshot from configured keys, ignoring their projects.
    pub fn new(keys: &[KeyEntry]) -> Self {
        Self::from_principals(keys.iter().map(|k| (k.hash, Principal::config_key(&k.name))))
    }

    /// Builds a snapshot; the first principal of a hash wins.
    pub fn from_principals(keys: impl IntoIterator<Item = (KeyHash, Principal)>) -> Self {
        let mut by_hash = HashMap::new();
        for (h, p) in keys {
            by_hash.entry(h).or_insert(p);
        }
        KeySnapshot { by_hash }
    }

    /// The principal of a key by its id (`key_…` or `config:<name>`); `None` once revoked.
    pub fn by_id(&self, id: &str) -> Option<&Principal> {
        self.by_hash.values().find(|p| &*p.key_id == id)
    }

    /// Every key's principal.
    pub fn principals(&self) -> impl Iterator<Item = &Principal> {
        self.by_hash.values()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether there is no key at all.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Authenticates the raw `Authorization` header value (if any).
    ///
    /// # Errors
    /// [`AuthError`] for a missing, malformed or unknown key.
    pub fn authenticate(&self, header: Option<&[u8]>) -> Result<Principal, AuthError> {
        let key = bearer_token(header)?;
        self.by_hash.get(&KeyHash::of(key)).cloned().ok_or(AuthError::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authenticates_by_hash_only() {
        let snap = KeySnapshot::new(&[KeyEntry { name: "dev".into(), hash: KeyHash::of("sk-1"), project: None }]);
        assert_eq!(&*snap.authenticate(Some(b"Bearer sk-1")).unwrap().key_name, "dev");
        assert_eq!(&*snap.authenticate(Some(b"bearer  sk-1 ")).unwrap().key_name, "dev");
        assert_eq!(snap.authenticate(Some(b"Bearer sk-2")).unwrap_err(), AuthError::Unknown);
        assert_eq!(snap.authenticate(None).unwrap_err(), AuthError::Missing);
        assert_eq!(snap.authenticate(Some(b"Basic abc")).unwrap_err(), AuthError::Malformed);
        assert_eq!(snap.authenticate(Some(b"Bearer ")).unwrap_err(), AuthError::Missing);
        assert_eq!(snap.authenticate(Some(&[0xff, 0xfe])).unwrap_err(), AuthError::Malformed);
    }

    #[test]
    fn bearer_tokens_are_verified_against_the_hash() {
        use crate::api::bearer::verify_bearer;
        let h = KeyHash::of("s3cret");
        assert!(verify_bearer(&h, Some(b"Bearer s3cret")));
        assert!(verify_bearer(&h, Some(b"bearer  s3cret ")), "scheme case-insensitive (RFC 7235)");
        assert!(!verify_bearer(&h, Some(b"Bearer s3cre")));
        assert!(!verify_bearer(&h, Some(b"s3cret")));
        assert!(!verify_bearer(&h, Some(b"Basic s3cret")));
        assert!(!verify_bearer(&h, Some(b"Bearer ")));
        assert!(!verify_bearer(&h, None));
        assert!(!verify_bearer(&KeyHash::of(""), None), "an empty token is never presented");
    }

    #[test]
    fn hex_round_trip() {
        let h = KeyHash::of("sk-joule-demo");
        assert_eq!(KeyHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(KeyHash::from_hex("zz"), None);
    }
}
