//! A small HTTP/1.1 client for plain-HTTP (`http://`) upstreams — our own GPU backends on a
//! private network, and mocks. The request's own task writes the request and reads the
//! answer: no connection task, no channel between the two, one small read buffer. With reqwest
//! (hyper) every exchange crossed two tasks and a channel, and every pooled connection held
//! about 28 KiB of buffers and task state; at thousands of open streams that was a fifth of
//! the gateway's memory, and the second task wake-up per event a good share of its CPU.
//! `https://` upstreams (providers) keep reqwest: TLS, HTTP/2 and a few slow streams there.
//!
//! Idle connections wait in a lock-free queue per origin (at most [`MAX_IDLE`], dropped after
//! [`IDLE_TIMEOUT`]); a body dropped unread goes back there too when its end has already
//! arrived (a stream ended at `[DONE]`). One taken from it is checked for a close or stray
//! bytes first, and a
//! request on a reused connection that the upstream closed before answering is sent once more
//! on a new one. Names are resolved with `tokio::net::lookup_host` (the blocking pool, never
//! the runtime). No proxies, no redirects: the answer is returned as it is.

use std::fmt::Write as _;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use crossbeam_queue::ArrayQueue;
use futures_util::stream::BoxStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Idle connections kept per origin.
pub const MAX_IDLE: usize = 256;
/// An idle connection older than this is closed instead of reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest response head (status line and headers).
pub const MAX_HEAD: usize = 64 * 1024;
/// Bytes reserved for a read at first: a response head, an SSE event or two. A read that fills
/// it doubles the next one (up to [`MAX_READ_SIZE`]), so a large answer takes few reads while
/// a stream of small events keeps one small buffer for its whole life.
const READ_SIZE: usize = 1024;
/// The largest read.
const MAX_READ_SIZE: usize = 32 * 1024;
/// Longest chunk-size or trailer line.
const MAX_LINE: usize = 4 * 1024;
/// Most response headers read.
const MAX_HEADERS: usize = 64;
/// Most body bytes a dropped reader reads past to reach the end of its answer.
const MAX_DRAIN: usize = 64 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// No connection could be opened (name resolution, refused, the connect timeout).
    #[error("connect: {0}")]
    Connect(io::Error),
    /// The connection failed while writing or reading.
    #[error("i/o: {0}")]
    Io(io::Error),
    /// The upstream closed the connection before the answer was complete.
    #[error("connection closed before the answer was complete")]
    Closed,
    /// The answer is not HTTP/1.1 as this client reads it.
    #[error("malformed answer: {0}")]
    Malformed(&'static str),
    /// A request header value holds a line break or NUL (never sent).
    #[error("invalid request header value for {0}")]
    HeaderValue(&'static str),
}

impl H1Error {
    /// The operating system's error, if there is one (for EMFILE/ENFILE).
    pub fn io(&self) -> Option<&io::Error> {
        match self {
            H1Error::Connect(e) | H1Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// One `http://` origin (host and port) and its idle connections.
pub struct Origin {
    /// `host[:port]` as in the URL: the `host` header.
    authority: String,
    /// What `lookup_host` resolves.
    host_port: String,
    connect_timeout: Duration,
    idle: ArrayQueue<(TcpStream, Instant)>,
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origin").field("authority", &self.authority).finish_non_exhaustive()
    }
}

/// A request's head, built once per attempt: request line, `host`, the given headers and
/// `content-length`.
pub struct RequestHead(BytesMut);

impl RequestHead {
    /// `POST path` to `origin` with `headers`, for a body of `content_length` bytes.
    ///
    /// # Errors
    /// A header value with CR, LF or NUL (it would split the request).
    pub fn post(origin: &Origin, path: &str, headers: &[(&'static str, &str)], content_length: usize) -> Result<Self, H1Error> {
        let mut b = BytesMut::with_capacity(256);
        b.put_slice(b"POST ");
        b.put_slice(path.as_bytes());
        b.put_slice(b" HTTP/1.1\r\nhost: ");
        b.put_slice(origin.authority.as_bytes());
        for (name, value) in headers {
            if value.bytes().any(|c| matches!(c, b'\r' | b'\n' | 0)) {
                return Err(H1Error::HeaderValue(name));
            }
            b.put_slice(b"\r\n");
            b.put_slice(name.as_bytes());
            b.put_slice(b": ");
            b.put_slice(value.as_bytes());
        }
        b.put_slice(b"\r\ncontent-length: ");
        let _ = write!(b, "{content_length}");
        b.put_slice(b"\r\n\r\n");
        Ok(RequestHead(b))
    }
}

impl Origin {
    /// The origin of an `http://` URL; `None` for any other scheme or a URL without a host.
    pub fn of(url: &reqwest::Url, connect_timeout: Duration) -> Option<Arc<Self>> {
        if url.scheme() != "http" {
            return None;
        }
        let host = url.host_str()?;
        let port = url.port_or_known_default()?;
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        // `host_str` keeps an IPv6 literal's brackets, which `lookup_host` accepts with a port.
        Some(Arc::new(Origin { authority, host_port: format!("{host}:{port}"), connect_timeout, idle: ArrayQueue::new(MAX_IDLE) }))
    }

    /// The `host[:port]` this origin is addressed as.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Sends `head` and `body` and reads the response head. A reused connection that turns out
    /// closed before any of the answer arrived is replaced by a new one, once.
    ///
    /// # Errors
    /// Connecting, writing or reading failed, or the response head is malformed.
    pub async fn send(self: &Arc<Self>, head: RequestHead, body: Bytes) -> Result<Response, H1Error> {
        let head = head.0.freeze();
        if let Some(conn) = self.checkout() {
            match exchange(self, conn, head.clone(), body.clone()).await {
                Err(Exchange::Stale) => {}
                Err(Exchange::Failed(e)) => return Err(e),
                Ok(r) => return Ok(r),
            }
        }
        let conn = self.connect().await?;
        exchange(self, conn, head, body).await.map_err(|e| match e {
            Exchange::Stale => H1Error::Closed,
            Exchange::Failed(e) => e,
        })
    }

    async fn connect(&self) -> Result<TcpStream, H1Error> {
        let attempt = async {
            let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address");
            for addr in tokio::net::lookup_host(&self.host_port).await? {
                match TcpStream::connect(addr).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = e,
                }
            }
            Err(last)
        };
        let stream = match tokio::time::timeout(self.connect_timeout, attempt).await {
            Err(_) => return Err(H1Error::Connect(io::Error::new(io::ErrorKind::TimedOut, "connect timeout"))),
            Ok(r) => r.map_err(H1Error::Connect)?,
        };
        stream.set_nodelay(true).map_err(H1Error::Connect)?;
        Ok(stream)
    }

    /// An idle connection that is still open and quiet, if one is waiting.
    fn checkout(&self) -> Option<TcpStream> {
        while let Some((conn, since)) = self.idle.pop() {
            if since.elapsed() > IDLE_TIMEOUT {
                continue;
            }
            // Readable now means closed by the peer, or bytes nobody asked for: not reusable.
            let mut probe = [0u8; 1];
            match conn.try_read(&mut probe) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(conn),
                _ => continue,
            }
        }
        None
    }

    fn checkin(&self, conn: TcpStream) {
        // Full: the connection is closed instead.
        let _ = self.idle.push((conn, Instant::now()));
    }
}

enum Exchange {
    /// A reused connection closed before any of the answer arrived.
    Stale,
    Failed(H1Error),
}

async fn exchange(origin: &Arc<Origin>, mut conn: TcpStream, head: Bytes, body: Bytes) -> Result<Response, Exchange> {
    let mut out = head.chain(body);
    if let Err(e) = conn.write_all_buf(&mut out).await {
        return Err(match e.kind() {
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => Exchange::Stale,
            _ => Exchange::Failed(H1Error::Io(e)),
        });
    }
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    loop {
        // 1xx interim answers (none are asked for) are skipped.
        match parse_head(&mut buf).map_err(Exchange::Failed)? {
            Some(parsed) if (100..200).contains(&parsed.status) => continue,
            Some(parsed) => {
                return Ok(Response {
                    status: parsed.status,
                    content_type: parsed.content_type,
                    retry_after: parsed.retry_after,
                    content_length: match parsed.framing {
                        Framing::Length(n) => Some(n),
                        _ => None,
                    },
                    body: BodyReader {
                        conn: Some(conn),
                        buf,
                        read_size: match parsed.framing {
                            Framing::Length(n) => usize::try_from(n).unwrap_or(MAX_READ_SIZE).clamp(READ_SIZE, MAX_READ_SIZE),
                            _ => READ_SIZE,
                        },
                        framing: parsed.framing,
                        keep_alive: parsed.keep_alive,
                        origin: origin.clone(),
                    },
                });
            }
            None => {}
        }
        if buf.len() >= MAX_HEAD {
            return Err(Exchange::Failed(H1Error::Malformed("response head too large")));
        }
        buf.reserve(READ_SIZE);
        match conn.read_buf(&mut buf).await {
            Ok(0) if buf.is_empty() => return Err(Exchange::Stale),
            Ok(0) => return Err(Exchange::Failed(H1Error::Closed)),
            Ok(_) => {}
            Err(e) if buf.is_empty() && e.kind() == io::ErrorKind::ConnectionReset => return Err(Exchange::Stale),
            Err(e) => return Err(Exchange::Failed(H1Error::Io(e))),
        }
    }
}

struct ParsedHead {
    status: u16,
    content_type: Option<String>,
    retry_after: Option<String>,
    framing: Framing,
    keep_alive: bool,
}

/// Parses a complete response head off the front of `buf`; `None` while it is incomplete.
fn parse_head(buf: &mut BytesMut) -> Result<Option<ParsedHead>, H1Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(H1Error::Malformed("too many headers")),
        Err(_) => return Err(H1Error::Malformed("response head")),
    };
    let status = response.code.ok_or(H1Error::Malformed("status"))?;
    let mut parsed = ParsedHead { status, content_type: None, retry_after: None, framing: Framing::Close, keep_alive: response.version == Some(1) };
    let mut length = None;
    let mut chunked = false;
    for h in response.headers.iter() {
        let value = || std::str::from_utf8(h.value).ok().map(str::trim);
        if h.name.eq_ignore_ascii_case("content-type") {
            parsed.content_type = value().map(str::to_owned);
        } else if h.name.eq_ignore_ascii_case("retry-after") {
            parsed.retry_after = value().map(str::to_owned);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n = value().and_then(|v| v.parse::<u64>().ok()).ok_or(H1Error::Malformed("content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(H1Error::Malformed("conflicting content-length"));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Only chunked is understood, and it must come last (RFC 9112 §6.3).
            let v = value().unwrap_or_default().to_ascii_lowercase();
            if !v.rsplit(',').next().is_some_and(|last| last.trim() == "chunked") {
                return Err(H1Error::Malformed("transfer-encoding"));
            }
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in value().unwrap_or_default().split(',') {
                let token = token.trim();
                if token.eq_ignore_ascii_case("close") {
                    parsed.keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") && response.version == Some(0) {
                    parsed.keep_alive = true;
                }
            }
        }
    }
    parsed.framing = if status == 204 || status == 304 || (100..200).contains(&status) {
        Framing::Length(0)
    } else if chunked {
        Framing::ChunkSize
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        // Delimited by the close: the connection cannot be reused.
        parsed.keep_alive = false;
        Framing::Close
    };
    buf.advance(len);
    Ok(Some(parsed))
}

/// An answer whose head has been read.
pub struct Response {
    pub status: u16,
    pub content_type: Option<String>,
    pub retry_after: Option<String>,
    /// The declared `content-length`, if framed by one.
    pub content_length: Option<u64>,
    body: BodyReader,
}

impl Response {
    /// The next piece of the body as it arrives; `None` at its end (the connection then goes
    /// back to the idle queue when it can carry another request).
    ///
    /// # Errors
    /// The connection broke, closed early or sent a malformed chunked framing.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, H1Error> {
        self.body.next().await
    }

    /// The body as a stream of pieces; ends after the first error.
    pub fn into_stream(self) -> BoxStream<'static, Result<Bytes, H1Error>> {
        Box::pin(futures_util::stream::unfold(Some(self.body), |state| async move {
            let mut body = state?;
            match body.next().await {
                Ok(Some(b)) => Some((Ok(b), Some(body))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        }))
    }
}

/// Where the body reader stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// `content-length`: bytes still to come.
    Length(u64),
    /// Until the upstream closes.
    Close,
    /// Chunked, expecting a chunk-size line.
    ChunkSize,
    /// Inside a chunk: bytes still to come.
    ChunkData(u64),
    /// After a chunk's data: its CRLF.
    ChunkEnd,
    /// After the last chunk: trailer lines up to an empty one.
    Trailers,
    Done,
}

struct BodyReader {
    /// `None` once returned to the idle queue or dropped.
    conn: Option<TcpStream>,
    buf: BytesMut,
    /// Bytes reserved for the next read.
    read_size: usize,
    framing: Framing,
    keep_alive: bool,
    origin: Arc<Origin>,
}

/// What the bytes already read give.
enum Step {
    /// A piece of the body.
    Data(Bytes),
    /// The body ended (the connection went back to the idle queue if it could).
    End,
    /// More bytes must be read first.
    More,
}

impl BodyReader {
    async fn next(&mut self) -> Result<Option<Bytes>, H1Error> {
        loop {
            match self.step()? {
                Step::Data(b) => return Ok(Some(b)),
                Step::End => return Ok(None),
                Step::More => {
                    if !self.fill().await? {
                        // Closed: the end of a close-delimited body, early for any other.
                        if self.framing != Framing::Close {
                            return Err(H1Error::Closed);
                        }
                        self.framing = Framing::Done;
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Advances the framing over the bytes already read, without reading.
    fn step(&mut self) -> Result<Step, H1Error> {
        loop {
            match self.framing {
                Framing::Done => return Ok(Step::End),
                Framing::Length(0) => {
                    self.finish();
                    return Ok(Step::End);
                }
                Framing::Length(left) | Framing::ChunkData(left) => {
                    if self.buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(self.buf.len());
                    let rest = left - n as u64;
                    self.framing = match self.framing {
                        Framing::Length(_) => Framing::Length(rest),
                        _ if rest == 0 => Framing::ChunkEnd,
                        _ => Framing::ChunkData(rest),
                    };
                    return Ok(Step::Data(self.buf.split_to(n).freeze()));
                }
                Framing::Close => {
                    if self.buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let n = self.buf.len();
                    return Ok(Step::Data(self.buf.split_to(n).freeze()));
                }
                Framing::ChunkSize => {
                    let Some(line) = self.line()? else { return Ok(Step::More) };
                    let digits = line.split(|&c| c == b';').next().unwrap_or_default();
                    let digits = std::str::from_utf8(digits).map_err(|_| H1Error::Malformed("chunk size"))?.trim();
                    if digits.is_empty() || digits.len() > 15 {
                        return Err(H1Error::Malformed("chunk size"));
                    }
                    let size = u64::from_str_radix(digits, 16).map_err(|_| H1Error::Malformed("chunk size"))?;
                    self.framing = if size == 0 { Framing::Trailers } else { Framing::ChunkData(size) };
                }
                Framing::ChunkEnd => {
                    let Some(line) = self.line()? else { return Ok(Step::More) };
                    if !line.is_empty() {
                        return Err(H1Error::Malformed("chunk longer than its size"));
                    }
                    self.framing = Framing::ChunkSize;
                }
                Framing::Trailers => {
                    let Some(line) = self.line()? else { return Ok(Step::More) };
                    if line.is_empty() {
                        self.finish();
                        return Ok(Step::End);
                    }
                }
            }
        }
    }

    /// The body ended cleanly: the connection goes back to the idle queue if it can.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let Some(conn) = self.conn.take() {
            if self.keep_alive && self.buf.is_empty() {
                self.origin.checkin(conn);
            }
        }
    }

    /// One CRLF-terminated line off the buffer; `None` when no line is complete yet.
    fn line(&mut self) -> Result<Option<Bytes>, H1Error> {
        if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
            let line = self.buf.split_to(end).freeze();
            self.buf.advance(2);
            return Ok(Some(line));
        }
        if self.buf.len() > MAX_LINE {
            return Err(H1Error::Malformed("chunk line too long"));
        }
        Ok(None)
    }

    /// Reads more bytes; `false` when the upstream closed the connection.
    async fn fill(&mut self) -> Result<bool, H1Error> {
        let Some(conn) = self.conn.as_mut() else { return Ok(false) };
        self.buf.reserve(self.read_size);
        let spare = self.buf.capacity() - self.buf.len();
        match conn.read_buf(&mut self.buf).await {
            Ok(0) => {
                self.conn = None;
                Ok(false)
            }
            Ok(n) => {
                self.read_size = if n == spare {
                    (self.read_size * 2).min(MAX_READ_SIZE)
                } else if n < self.read_size / 4 {
                    (self.read_size / 2).max(READ_SIZE)
                } else {
                    self.read_size
                };
                Ok(true)
            }
            Err(e) => {
                self.conn = None;
                Err(H1Error::Io(e))
            }
        }
    }
}

/// A body left unread — a stream the relay ended at its `[DONE]` event, whose terminating
/// chunk is still on the wire — is read on for what has already arrived (without waiting),
/// so that a finished answer gives its connection back to the idle queue: otherwise every
/// stream costs a new connection (a connect, a close and their wake-ups, ~15 % of a short
/// stream's CPU). Anything not yet arrived, over [`MAX_DRAIN`] or malformed drops it.
impl Drop for BodyReader {
    fn drop(&mut self) {
        if self.conn.is_none() || !self.keep_alive {
            return;
        }
        if let Framing::Length(left) | Framing::ChunkData(left) = self.framing {
            if left > MAX_DRAIN as u64 {
                return;
            }
        }
        let mut discarded = 0;
        loop {
            match self.step() {
                Ok(Step::Data(b)) => {
                    discarded += b.len();
                    if discarded > MAX_DRAIN {
                        return;
                    }
                }
                Ok(Step::More) => {
                    let Some(conn) = self.conn.as_ref() else { return };
                    self.buf.reserve(READ_SIZE);
                    // Only what has arrived: `WouldBlock`, a close or an error ends it here.
                    match conn.try_read_buf(&mut self.buf) {
                        Ok(n) if n > 0 => {}
                        _ => return,
                    }
                }
                Ok(Step::End) | Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests;
