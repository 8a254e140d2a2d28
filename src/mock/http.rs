//! HTTP/1.1 wire handling for the mock upstream, on any byte stream (plain TCP or TLS).
//!
//! Owns request parsing (via `httparse`: keep-alive, pipelining, `Content-Length` and chunked
//! bodies, `Expect: 100-continue`, size limits) and response encoding (fixed-length heads and
//! chunked bodies). Every write is flushed at once, so what the client sees — including a
//! connection dropped mid-body — is exactly what the caller wrote.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest accepted request head (request line and headers).
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest accepted number of request headers.
const MAX_HEADERS: usize = 128;
/// Largest accepted request body, after de-chunking.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// Largest accepted chunk-size line or trailer section of a chunked body.
const MAX_CHUNK_META_BYTES: usize = 8 * 1024;
/// Read granularity.
const READ_CHUNK: usize = 16 * 1024;

/// A fully read HTTP request.
#[derive(Debug)]
pub(crate) struct Request {
    /// Method as sent, e.g. `POST`.
    pub(crate) method: String,
    /// Request target as sent, including any query string.
    pub(crate) target: String,
    /// Headers in arrival order; values decoded lossily as UTF-8.
    pub(crate) headers: Vec<(String, String)>,
    /// The body, de-chunked if it arrived chunked.
    pub(crate) body: Bytes,
    /// Whether the client allows the connection to stay open after the response.
    pub(crate) keep_alive: bool,
}

impl Request {
    /// The request target without its query string.
    pub(crate) fn path(&self) -> &str {
        self.target
            .split_once('?')
            .map_or(self.target.as_str(), |(path, _)| path)
    }

    /// The first header named `name` (case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// First value of header `name` (case-insensitive) in `headers`.
pub(crate) fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Why a request could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// The transport failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection in the middle of a request.
    #[error("connection closed mid-request")]
    UnexpectedEof,
    /// The request is not valid HTTP/1.x.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The request head is larger than [`MAX_HEAD_BYTES`] or has too many headers.
    #[error("request head too large")]
    HeadTooLarge,
    /// The body is larger than [`MAX_BODY_BYTES`].
    #[error("request body larger than {MAX_BODY_BYTES} bytes")]
    BodyTooLarge,
    /// A transfer coding other than `chunked` was used.
    #[error("unsupported transfer-encoding `{0}`")]
    UnsupportedTransferEncoding(String),
}

impl ReadError {
    /// The status to answer with before closing, or `None` if the peer cannot be answered.
    pub(crate) fn status(&self) -> Option<u16> {
        match self {
            Self::Io(_) | Self::UnexpectedEof => None,
            Self::Malformed(_) => Some(400),
            Self::HeadTooLarge => Some(431),
            Self::BodyTooLarge => Some(413),
            Self::UnsupportedTransferEncoding(_) => Some(501),
        }
    }
}

/// How a request body is delimited.
enum BodyFraming {
    Length(usize),
    Chunked,
}

/// Request line and headers, before the body is read.
struct Head {
    method: String,
    target: String,
    version: u8,
    headers: Vec<(String, String)>,
}

impl Head {
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn keep_alive(&self) -> bool {
        if self.has_token("connection", "close") {
            false
        } else {
            self.version >= 1 || self.has_token("connection", "keep-alive")
        }
    }

    fn body_framing(&self) -> Result<BodyFraming, ReadError> {
        let mut codings = Vec::new();
        let mut length: Option<usize> = None;
        for (name, value) in &self.headers {
            if name.eq_ignore_ascii_case("transfer-encoding") {
                codings.extend(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|c| !c.is_empty())
                        .map(str::to_ascii_lowercase),
                );
            } else if name.eq_ignore_ascii_case("content-length") {
                let value = value.trim();
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ReadError::Malformed(format!(
                        "bad content-length `{value}`"
                    )));
                }
                // All digits, so a parse failure can only mean overflow.
                let n = value
                    .parse::<usize>()
                    .map_err(|_| ReadError::BodyTooLarge)?;
                if length.is_some_and(|previous| previous != n) {
                    return Err(ReadError::Malformed(
                        "conflicting content-length".to_owned(),
                    ));
                }
                length = Some(n);
            }
        }
        match (codings.is_empty(), length) {
            (false, Some(_)) => Err(ReadError::Malformed(
                "both transfer-encoding and content-length".to_owned(),
            )),
            (false, None) if codings == ["chunked"] => Ok(BodyFraming::Chunked),
            (false, None) => Err(ReadError::UnsupportedTransferEncoding(codings.join(", "))),
            (true, Some(n)) if n > MAX_BODY_BYTES => Err(ReadError::BodyTooLarge),
            (true, length) => Ok(BodyFraming::Length(length.unwrap_or(0))),
        }
    }
}

/// Parses a request head from the start of `buf`; `Ok(None)` if it is not complete yet.
fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, ReadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(len)) => {
            let head = Head {
                method: req.method.unwrap_or_default().to_owned(),
                target: req.path.unwrap_or_default().to_owned(),
                version: req.version.unwrap_or(1),
                headers: req
                    .headers
                    .iter()
                    .map(|h| {
                        let value = String::from_utf8_lossy(h.value).into_owned();
                        (h.name.to_owned(), value)
                    })
                    .collect(),
            };
            Ok(Some((head, len)))
        }
        Err(httparse::Error::TooManyHeaders) => Err(ReadError::HeadTooLarge),
        Err(e) => Err(ReadError::Malformed(e.to_string())),
    }
}

/// One HTTP/1.1 server connection: the transport plus the bytes read but not yet consumed
/// (which may already hold the next pipelined request).
pub(crate) struct Conn<S> {
    io: S,
    buf: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Wraps a transport.
    pub(crate) fn new(io: S) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
        }
    }

    /// Reads the next request. `Ok(None)` means the peer closed the connection cleanly between
    /// requests.
    pub(crate) async fn read_request(&mut self) -> Result<Option<Request>, ReadError> {
        let Some(head) = self.read_head().await? else {
            return Ok(None);
        };
        let framing = head.body_framing()?;
        let expects_body = !matches!(framing, BodyFraming::Length(0));
        if expects_body && head.version >= 1 && head.has_token("expect", "100-continue") {
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        let body = match framing {
            BodyFraming::Length(n) => self.read_exact_body(n).await?,
            BodyFraming::Chunked => self.read_chunked_body().await?,
        };
        Ok(Some(Request {
            keep_alive: head.keep_alive(),
            method: head.method,
            target: head.target,
            headers: head.headers,
            body,
        }))
    }

    async fn read_head(&mut self) -> Result<Option<Head>, ReadError> {
        loop {
            if !self.buf.is_empty() {
                if let Some((head, len)) = parse_head(&self.buf)? {
                    self.buf.advance(len);
                    return Ok(Some(head));
                }
                if self.buf.len() > MAX_HEAD_BYTES {
                    return Err(ReadError::HeadTooLarge);
                }
            }
            if self.fill().await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::UnexpectedEof)
                };
            }
        }
    }

    async fn read_exact_body(&mut self, len: usize) -> Result<Bytes, ReadError> {
        self.fill_to(len).await?;
        Ok(self.buf.split_to(len).freeze())
    }

    async fn read_chunked_body(&mut self) -> Result<Bytes, ReadError> {
        let mut body = BytesMut::new();
        loop {
            let (meta_len, size) = loop {
                match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete(parsed)) => break parsed,
                    Ok(httparse::Status::Partial) if self.buf.len() > MAX_CHUNK_META_BYTES => {
                        return Err(ReadError::Malformed("chunk-size line too long".to_owned()));
                    }
                    Ok(httparse::Status::Partial) => self.fill_some().await?,
                    Err(httparse::InvalidChunkSize) => {
                        return Err(ReadError::Malformed("invalid chunk size".to_owned()));
                    }
                }
            };
            self.buf.advance(meta_len);
            if size == 0 {
                self.skip_trailers().await?;
                return Ok(body.freeze());
            }
            let size = usize::try_from(size)
                .ok()
                .filter(|size| body.len().saturating_add(*size) <= MAX_BODY_BYTES)
                .ok_or(ReadError::BodyTooLarge)?;
            self.fill_to(size + 2).await?;
            if &self.buf[size..size + 2] != b"\r\n" {
                return Err(ReadError::Malformed(
                    "chunk not followed by CRLF".to_owned(),
                ));
            }
            body.extend_from_slice(&self.buf[..size]);
            self.buf.advance(size + 2);
        }
    }

    /// Consumes the (usually empty) trailer section that ends a chunked body.
    async fn skip_trailers(&mut self) -> Result<(), ReadError> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            match httparse::parse_headers(&self.buf, &mut headers) {
                Ok(httparse::Status::Complete((len, _))) => {
                    self.buf.advance(len);
                    return Ok(());
                }
                Ok(httparse::Status::Partial) if self.buf.len() > MAX_CHUNK_META_BYTES => {
                    return Err(ReadError::HeadTooLarge);
                }
                Ok(httparse::Status::Partial) => self.fill_some().await?,
                Err(e) => return Err(ReadError::Malformed(format!("bad trailer: {e}"))),
            }
        }
    }

    /// Reads once from the transport into the buffer; returns the number of bytes read.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        self.io.read_buf(&mut self.buf).await
    }

    /// Reads at least one more byte, failing on EOF.
    async fn fill_some(&mut self) -> Result<(), ReadError> {
        match self.fill().await? {
            0 => Err(ReadError::UnexpectedEof),
            _ => Ok(()),
        }
    }

    /// Reads until the buffer holds at least `len` bytes, failing on EOF.
    async fn fill_to(&mut self, len: usize) -> Result<(), ReadError> {
        if let Some(missing) = len.checked_sub(self.buf.len()) {
            self.buf.reserve(missing);
        }
        while self.buf.len() < len {
            self.fill_some().await?;
        }
        Ok(())
    }

    /// Writes `bytes` and flushes them to the peer.
    pub(crate) async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// Writes one chunk of a chunked response body (in a single write) and flushes it.
    /// Empty `data` is skipped, since an empty chunk would end the body.
    pub(crate) async fn write_chunk(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let mut frame = format!("{:x}\r\n", data.len()).into_bytes();
        frame.reserve(data.len() + 2);
        frame.extend_from_slice(data);
        frame.extend_from_slice(b"\r\n");
        self.write(&frame).await
    }

    /// Ends a chunked response body.
    pub(crate) async fn finish_chunked(&mut self) -> io::Result<()> {
        self.write(b"0\r\n\r\n").await
    }

    /// Sends a TLS `close_notify` (if the transport is TLS) and a FIN, orderly.
    pub(crate) async fn shutdown(&mut self) -> io::Result<()> {
        self.io.shutdown().await
    }
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ResponseBody {
    /// `content-length: N`.
    Length(usize),
    /// `transfer-encoding: chunked`.
    Chunked,
}

/// Encodes a response head (status line, `headers`, framing and `connection` headers).
pub(crate) fn response_head(
    status: u16,
    headers: &[(&str, &str)],
    body: ResponseBody,
    keep_alive: bool,
) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    match body {
        ResponseBody::Length(n) => head.push_str(&format!("content-length: {n}\r\n")),
        ResponseBody::Chunked => head.push_str("transfer-encoding: chunked\r\n"),
    }
    head.push_str(if keep_alive {
        "connection: keep-alive\r\n\r\n"
    } else {
        "connection: close\r\n\r\n"
    });
    head.into_bytes()
}

/// Encodes a complete fixed-length response.
pub(crate) fn full_response(
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
    keep_alive: bool,
) -> Vec<u8> {
    let mut response = response_head(
        status,
        headers,
        ResponseBody::Length(body.len()),
        keep_alive,
    );
    response.extend_from_slice(body);
    response
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        // Not in the IANA registry: Anthropic's "overloaded".
        529 => "Overloaded",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_one(wire: &[u8]) -> Result<Option<Request>, ReadError> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        client.write_all(wire).await?;
        client.shutdown().await?;
        Conn::new(server).read_request().await
    }

    #[tokio::test]
    async fn chunked_body_with_extensions_and_trailers() {
        let wire = b"POST /x HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n\
                     3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nx-trailer: y\r\n\r\n";
        let req = read_one(wire).await.ok().flatten().expect("request");
        assert_eq!(&req.body[..], b"abcde");
        assert!(req.keep_alive);
    }

    #[tokio::test]
    async fn rejects_ambiguous_framing() {
        let wire = b"POST /x HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n";
        assert!(matches!(read_one(wire).await, Err(ReadError::Malformed(_))));
        let wire = b"POST /x HTTP/1.1\r\ncontent-length: +3\r\n\r\nabc";
        assert!(matches!(read_one(wire).await, Err(ReadError::Malformed(_))));
        let wire = b"POST /x HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n";
        assert!(matches!(
            read_one(wire).await,
            Err(ReadError::UnsupportedTransferEncoding(_))
        ));
    }

    #[tokio::test]
    async fn eof_between_and_within_requests() {
        assert!(matches!(read_one(b"").await, Ok(None)));
        assert!(matches!(
            read_one(b"POST /x HTTP/1.1\r\ncontent-length: 5\r\n\r\nab").await,
            Err(ReadError::UnexpectedEof)
        ));
    }

    #[tokio::test]
    async fn http10_closes_by_default() {
        let req = read_one(b"GET / HTTP/1.0\r\n\r\n")
            .await
            .ok()
            .flatten()
            .expect("request");
        assert!(!req.keep_alive);
    }
}
