//! The `Authorization: Bearer <token>` header, as every authenticated endpoint reads it: the
//! one parser (scheme case-insensitive, RFC 7235), why a request carries no usable token, and
//! the one constant-time check of a configured token.

use crate::secret::KeyHash;

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

/// The token of an `Authorization: Bearer <token>` header value.
///
/// # Errors
/// [`AuthError::Missing`] or [`AuthError::Malformed`].
pub fn bearer_token(header: Option<&[u8]>) -> Result<&str, AuthError> {
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
    Ok(key)
}

/// Whether the raw `Authorization` header value (if any) carries a bearer token whose SHA-256
/// is `expected`: the one check of a configured secret token (admin API, energy push). The
/// digests are compared in full, without an early exit on the first difference.
pub fn verify_bearer(expected: &KeyHash, header: Option<&[u8]>) -> bool {
    let Ok(token) = bearer_token(header) else { return false };
    let presented = KeyHash::of(token);
    presented.0.iter().zip(expected.0.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}
