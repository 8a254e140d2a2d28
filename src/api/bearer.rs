//! The `Authorization: Bearer <token>` header, as every authenticated endpoint reads it: the
//! one parser (scheme case-insensitive, RFC 7235) and why a request carries no usable token.

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
