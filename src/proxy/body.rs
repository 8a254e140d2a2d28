//! The one request-body reader: every route that takes a body reads it here, each with its
//! own size limit, under the client-body timeout.

use std::time::Duration;

use super::Downstream;
use crate::api::error::ApiError;

/// Reads the whole request body, refusing it as soon as it exceeds `limit` (from the
/// announced `content_length`, before reading anything, or while reading).
///
/// # Errors
/// [`ApiError::BodyTooLarge`] over the limit, [`ApiError::BodyTimeout`] when the client takes
/// longer than `timeout` for the whole body, 400 when the body cannot be read (broken
/// framing). The caller must not reuse the connection after an error: part of the body may
/// still be unread.
pub async fn read_body(io: &mut dyn Downstream, content_length: Option<u64>, limit: usize, timeout: Duration) -> Result<Vec<u8>, ApiError> {
    if content_length.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let mut body = Vec::with_capacity(content_length.map_or(0, |n| n as usize));
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, io.read_body()).await {
            Err(_) => return Err(ApiError::BodyTimeout),
            Ok(Err(_)) => return Err(ApiError::invalid("The request body could not be read.", None)),
            Ok(Ok(None)) => return Ok(body),
            Ok(Ok(Some(chunk))) => {
                if body.len() + chunk.len() > limit {
                    return Err(ApiError::BodyTooLarge { limit });
                }
                body.extend_from_slice(&chunk);
            }
        }
    }
}
