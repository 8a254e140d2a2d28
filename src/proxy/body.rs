//! Reading a request body whole: one reader for every endpoint that takes a body (chat
//! completions, the admin API, plugin uploads, the energy push), each passing its own limit.

use std::time::Duration;

use super::{send_error_as, ClientApi, Downstream, DownstreamError, Record};
use crate::api::error::ApiError;

/// Reads the whole request body, first letting a client that waits on `Expect: 100-continue`
/// send it ([`Downstream::accept_body`]): 413 once it exceeds `limit` bytes (at once, without
/// `100 Continue`, when the declared `content_length` does), 408 when it has not arrived within `timeout`, 400 when the client's
/// stream breaks or its framing is malformed (a bad chunk size, a chunk without its CRLF).
///
/// On any error part of the body may be left unread, or the framing is lost: the bytes that
/// follow cannot be trusted to start the next request (the shape of a request-smuggling
/// desync). So every error marks the connection [`Downstream::close_after`] here, before the
/// caller answers: no caller can forget it.
///
/// # Errors
/// [`ApiError::BodyTooLarge`], [`ApiError::BodyTimeout`] or [`ApiError::InvalidRequest`].
pub async fn read_body(io: &mut dyn Downstream, content_length: Option<u64>, limit: usize, timeout: Duration) -> Result<Vec<u8>, ApiError> {
    let read = read_whole(io, content_length, limit, timeout).await;
    if read.is_err() {
        io.close_after();
    }
    read
}

/// [`read_body`] for an endpoint's handler: a body that cannot be read is answered here, as
/// an error in the client's `api`, and comes back as `None` (the handler is then done).
///
/// # Errors
/// Only downstream I/O failures while answering.
pub async fn read_or_refuse(
    api: ClientApi,
    io: &mut dyn Downstream,
    rec: &mut Record,
    content_length: Option<u64>,
    limit: usize,
    timeout: Duration,
) -> Result<Option<Vec<u8>>, DownstreamError> {
    match read_body(io, content_length, limit, timeout).await {
        Ok(b) => Ok(Some(b)),
        Err(e) => send_error_as(api, io, rec, &e).await.map(|()| None),
    }
}

async fn read_whole(io: &mut dyn Downstream, content_length: Option<u64>, limit: usize, timeout: Duration) -> Result<Vec<u8>, ApiError> {
    if content_length.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    // Everything that can refuse the request without its body has passed (the caller
    // authenticated it; its declared length fits): a client waiting on `Expect:
    // 100-continue` may send it now, instead of after its own timeout (curl's is 1 s).
    if io.accept_body().await.is_err() {
        return Err(ApiError::invalid("The request body could not be read.", None));
    }
    // A declared length is only a claim: reserve at most 64 KiB up front, so a client that
    // announces a large body and stalls holds no more than that; the rest grows as it arrives.
    const RESERVE: usize = 64 * 1024;
    let mut body = Vec::with_capacity(content_length.map_or(0, |n| (n as usize).min(RESERVE)));
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

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use bytes::Bytes;

    use super::*;
    use crate::proxy::{DownstreamError, ResponseHead};

    /// A client sending `chunks`, then ending the body (or breaking, or stalling).
    struct Client {
        chunks: Vec<&'static [u8]>,
        then: Option<Result<(), ()>>,
        /// `close_after` was called.
        closed: bool,
    }

    fn client(chunks: Vec<&'static [u8]>, then: Option<Result<(), ()>>) -> Client {
        Client { chunks, then, closed: false }
    }

    #[async_trait]
    impl Downstream for Client {
        async fn read_body(&mut self) -> Result<Option<Bytes>, DownstreamError> {
            if !self.chunks.is_empty() {
                return Ok(Some(Bytes::from_static(self.chunks.remove(0))));
            }
            match self.then {
                Some(Ok(())) => Ok(None),
                Some(Err(())) => Err(DownstreamError("reset".into())),
                None => std::future::pending().await,
            }
        }
        async fn send_head(&mut self, _: ResponseHead) -> Result<(), DownstreamError> {
            Ok(())
        }
        async fn send_body(&mut self, _: Bytes, _: bool) -> Result<(), DownstreamError> {
            Ok(())
        }
        fn close_after(&mut self) {
            self.closed = true;
        }
    }

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn reads_within_the_limit_and_refuses_beyond_it() {
        let mut c = client(vec![b"ab", b"cd"], Some(Ok(())));
        assert_eq!(read_body(&mut c, None, 4, T).await.unwrap(), b"abcd");
        assert!(!c.closed, "a body read to its end leaves the connection reusable");
        let mut c = client(vec![b"ab", b"cde"], Some(Ok(())));
        assert_eq!(read_body(&mut c, None, 4, T).await.unwrap_err(), ApiError::BodyTooLarge { limit: 4 });
        assert!(c.closed);
        let mut c = client(vec![], Some(Ok(())));
        assert_eq!(read_body(&mut c, Some(5), 4, T).await.unwrap_err(), ApiError::BodyTooLarge { limit: 4 }, "declared length");
        assert!(c.closed);
    }

    #[tokio::test]
    async fn a_broken_or_malformed_body_closes_the_connection() {
        let mut c = client(vec![b"ab"], Some(Err(())));
        assert_eq!(read_body(&mut c, None, 4, T).await.unwrap_err().status(), 400);
        assert!(c.closed, "the bytes after a framing error must not be read as the next request");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_times_out() {
        let mut c = client(vec![b"ab"], None);
        assert_eq!(read_body(&mut c, None, 4, T).await.unwrap_err(), ApiError::BodyTimeout);
        assert!(c.closed);
    }
}
