//! The connection guard: what happens on a client connection before (and between) the
//! requests the handlers see. pingora 0.9 puts only a per-read timeout on a request head (a
//! client sending one byte every few seconds holds its connection forever), keeps an idle
//! HTTP/1.1 keep-alive connection open without limit, and answers a head it cannot parse
//! with a bare 400 that has no body. So every HTTP/1 connection's stream is wrapped in a
//! [`GuardedIo`] that
//! - puts one deadline on each request head, from its first byte ([`ExchangeLimits`]'
//!   `client_header_timeout`, default 10 s): past it the client gets an OpenAI-shaped 408 and
//!   the connection closes;
//! - closes a connection that carries no request for `client_idle_timeout` (default 60 s),
//!   new or kept alive — quietly, as an idle close should be;
//! - replaces pingora's bare answers to a head no handler saw (400 malformed, 405 `CONNECT`)
//!   with the OpenAI-shaped JSON body;
//! - when asked ([`hold_next_write`]), holds the next write (a whole answer's head) and sends
//!   it with the write after it (the body) as one vectored write: pingora writes a response
//!   head and its body separately, and without a write buffer under it (none is kept per
//!   connection, see `server::PLAIN_L4_BUFFER`) each would be its own system call and its
//!   own wake-up of the client.
//!
//! The request phases tell the guard where a connection is: [`head_received`] when a
//! handler starts (reads from then on are body reads, bounded by the handlers' own body
//! timeout) and [`request_done`] when pingora logs the request (the next read starts the next
//! head). HTTP/2 connections are not guarded: streams are multiplexed, and h2 has its own
//! flow control and pingora's `h2_idle_timeout`. Over TLS that is known from ALPN before any
//! byte; on a cleartext listener (h2c with prior knowledge) pingora peeks for the HTTP/2
//! preface, and the guard answers that peek itself ([`GuardedIo`]'s `try_peek`) under the
//! same idle and head deadlines, stopping at the first byte that is not the preface — pingora's
//! own peek waits for 24 bytes, which would hold a short or trickled HTTP/1.1 head, or an idle
//! connection, without any deadline.
//!
//! [`ExchangeLimits`]: crate::upstream::ExchangeLimits

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use prometheus::IntCounterVec;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::api::error::ApiError;
use crate::proxy::Gateway;

/// Where a connection is, as the request phases report it.
const AWAITING_HEAD: u8 = 0;
const IN_REQUEST: u8 = 1;
const BETWEEN: u8 = 2;
/// In a request, and the next write is to be held until the one after it.
const IN_REQUEST_HOLD: u8 = 3;

/// Wraps a pingora server app so every HTTP/1 connection it serves is guarded.
pub struct Guarded<A> {
    pub inner: Arc<A>,
    pub gateway: Arc<Gateway>,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.inner.process_new(stream, shutdown).await;
        }
        // One load per connection: a reload applies to connections opened after it.
        let (head, idle) = {
            let world = self.gateway.world.load();
            (world.limits.client_header_timeout, world.limits.client_idle_timeout)
        };
        let guarded = GuardedIo::new(stream, head, idle, self.gateway.metrics.connections_closed.clone());
        self.inner.process_new(Box::new(guarded), shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// The request head is in: reads from now on are this request's body. Call when a handler
/// starts. No-op on a connection that is not guarded (HTTP/2).
pub fn head_received(stream: Option<&Stream>) {
    set_phase(stream, IN_REQUEST);
}

/// The request is over (pingora may still flush and drain it): the next read starts the next
/// head, under the idle deadline until its first byte.
pub fn request_done(stream: Option<&Stream>) {
    set_phase(stream, BETWEEN);
}

/// The next write on the connection (a response head) is held and goes out with the write
/// after it, or at the next flush. The caller must write or flush after that next write
/// (pingora's end of body flushes). No-op outside a request and on HTTP/2.
pub fn hold_next_write(stream: Option<&Stream>) {
    if let Some(g) = stream.and_then(|s| s.as_ref().as_any().downcast_ref::<GuardedIo>()) {
        let _ = g.phase.compare_exchange(IN_REQUEST, IN_REQUEST_HOLD, Ordering::AcqRel, Ordering::Acquire);
    }
}

fn set_phase(stream: Option<&Stream>, phase: u8) {
    if let Some(g) = stream.and_then(|s| s.as_ref().as_any().downcast_ref::<GuardedIo>()) {
        g.phase.store(phase, Ordering::Release);
    }
}

/// A client stream with deadlines on request heads and idle time, and OpenAI-shaped bodies
/// for what pingora answers before any handler.
pub struct GuardedIo {
    inner: Stream,
    phase: Arc<AtomicU8>,
    /// Bytes of the current head have arrived (the head deadline runs, not the idle one).
    started: bool,
    /// HTTP/2 prior knowledge (h2c): not ours to guard.
    passthrough: bool,
    timer: Pin<Box<tokio::time::Sleep>>,
    head_timeout: Duration,
    idle_timeout: Duration,
    /// Our answer replacing pingora's bare one, and how much of it is written.
    replacement: Option<(Vec<u8>, usize)>,
    closed: IntCounterVec,
    /// Bytes read while answering pingora's peek, served again before the stream's.
    peeked: Vec<u8>,
    /// A held write ([`hold_next_write`]) and how much of it has gone out.
    held: Vec<u8>,
    held_at: usize,
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl std::fmt::Debug for GuardedIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedIo").field("inner", &self.inner).field("phase", &self.phase).finish_non_exhaustive()
    }
}

impl GuardedIo {
    fn new(inner: Stream, head_timeout: Duration, idle_timeout: Duration, closed: IntCounterVec) -> Self {
        GuardedIo {
            inner,
            phase: Arc::new(AtomicU8::new(AWAITING_HEAD)),
            started: false,
            passthrough: false,
            timer: Box::pin(tokio::time::sleep(idle_timeout)),
            head_timeout,
            idle_timeout,
            replacement: None,
            closed,
            peeked: Vec::new(),
            held: Vec::new(),
            held_at: 0,
        }
    }

    /// The first bytes of the connection, read under the idle deadline (then the head
    /// deadline) until they are the HTTP/2 preface or cannot be.
    async fn peek_preface(&mut self) -> io::Result<()> {
        use tokio::io::AsyncReadExt;
        while self.peeked.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&self.peeked) {
            let mut chunk = [0u8; 24];
            let want = H2_PREFACE.len() - self.peeked.len();
            let n = tokio::select! {
                r = self.inner.read(&mut chunk[..want]) => r?,
                () = self.timer.as_mut() => {
                    let reason = if self.started { "head_timeout" } else { "idle_timeout" };
                    self.closed.with_label_values(&[reason]).inc();
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "no request in time"));
                }
            };
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if !self.started {
                self.started = true;
                self.arm(self.head_timeout);
            }
            self.peeked.extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
        self.passthrough = self.peeked == H2_PREFACE;
        Ok(())
    }

    fn arm(&mut self, after: Duration) {
        self.timer.as_mut().reset(tokio::time::Instant::now() + after);
    }

    /// Follows the phase the request phases set; returns the current one.
    fn sync_phase(&mut self) -> u8 {
        let phase = self.phase.load(Ordering::Acquire);
        if phase == BETWEEN {
            // The first read after a request: the next head (or pingora draining an unread
            // body, which the same deadline bounds). A request without a body may never
            // have read in between, so this is the transition to act on.
            self.phase.store(AWAITING_HEAD, Ordering::Release);
            self.started = false;
            self.arm(self.idle_timeout);
            return AWAITING_HEAD;
        }
        phase
    }

    /// Writes as much of `bytes` as the socket takes now, without waiting: the connection is
    /// being given up, and a client too slow to read its 408 does not get to hold it.
    fn write_now(&mut self, cx: &mut Context<'_>, bytes: &[u8]) {
        let mut at = 0;
        while at < bytes.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[at..]) {
                Poll::Ready(Ok(n)) if n > 0 => at += n,
                _ => return,
            }
        }
        let _ = Pin::new(&mut self.inner).poll_flush(cx);
    }

    /// Writes the held bytes and then `bufs`, in one vectored write where the stream allows;
    /// the count returned is of `bufs`' bytes only.
    fn poll_write_held(&mut self, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        while self.held_at < self.held.len() {
            let held = self.held.get(self.held_at..).unwrap_or_default();
            let mut slices = [io::IoSlice::new(&[]); 4];
            let n = match slices.get_mut(1..=bufs.len()) {
                Some(rest) => {
                    rest.copy_from_slice(bufs);
                    slices[0] = io::IoSlice::new(held);
                    ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, &slices[..=bufs.len()]))?
                }
                None => ready!(Pin::new(&mut self.inner).poll_write(cx, held))?,
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let from_held = n.min(held.len());
            self.held_at += from_held;
            if self.held_at >= self.held.len() {
                // Freed, not kept: a stream or an idle keep-alive connection holds nothing.
                (self.held, self.held_at) = (Vec::new(), 0);
                if n > from_held {
                    return Poll::Ready(Ok(n - from_held));
                }
            }
        }
        if bufs.iter().all(|b| b.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    /// Writes out what is held; `Ready(Ok)` once nothing is.
    fn poll_drain_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.held_at < self.held.len() {
            ready!(self.poll_write_held(cx, &[]))?;
        }
        Poll::Ready(Ok(()))
    }

    /// A write the held-write mechanism takes: held itself when a hold was asked for, or sent
    /// after what is held; `None` when neither applies.
    fn poll_through_held(&mut self, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Option<Poll<io::Result<usize>>> {
        if let Some(n) = self.hold(bufs) {
            return Some(Poll::Ready(Ok(n)));
        }
        (self.held_at < self.held.len()).then(|| self.poll_write_held(cx, bufs))
    }

    /// Takes `bufs` as the held write when one is asked for; `None` otherwise.
    fn hold(&mut self, bufs: &[io::IoSlice<'_>]) -> Option<usize> {
        if self.held_at < self.held.len() || self.phase.load(Ordering::Acquire) != IN_REQUEST_HOLD {
            return None;
        }
        self.phase.store(IN_REQUEST, Ordering::Release);
        self.held.clear();
        self.held_at = 0;
        for b in bufs {
            self.held.extend_from_slice(b);
        }
        Some(self.held.len())
    }

    /// Drives our replacement answer out; `Ready(Ok)` once all of it is written.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, at)) = self.replacement.as_mut() {
            if *at >= bytes.len() {
                return Poll::Ready(Ok(()));
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *at += n;
        }
        Poll::Ready(Ok(()))
    }
}

/// A whole HTTP/1.1 response carrying `err`'s OpenAI-shaped body, closing the connection.
fn answer(err: &ApiError) -> Vec<u8> {
    let body = err.body();
    let status = err.status();
    let reason = http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
    let allow = err.allow().map(|a| format!("allow: {a}\r\n")).unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{allow}cache-control: private, no-store\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// What pingora's own answer (its status line in `written`) becomes, if we know it.
fn replacement_for(written: &[u8]) -> Option<ApiError> {
    let status = written.strip_prefix(b"HTTP/1.1 ").or_else(|| written.strip_prefix(b"HTTP/1.0 "))?.get(..3)?;
    match status {
        b"400" => Some(ApiError::MalformedHead),
        b"405" => Some(ApiError::MethodNotAllowed { method: "CONNECT".into(), path: "this gateway".into(), allow: "GET, POST".into() }),
        _ => None,
    }
}

impl AsyncRead for GuardedIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.peeked.is_empty() {
            let n = this.peeked.len().min(buf.remaining());
            buf.put_slice(this.peeked.get(..n).unwrap_or_default());
            this.peeked.drain(..n);
            return Poll::Ready(Ok(()));
        }
        if this.passthrough || matches!(this.sync_phase(), IN_REQUEST | IN_REQUEST_HOLD) {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        if let Poll::Ready(r) = Pin::new(&mut this.inner).poll_read(cx, buf) {
            let fresh = &buf.filled()[before..];
            if !fresh.is_empty() && !this.started {
                this.started = true;
                if fresh.starts_with(b"PRI ") {
                    // The HTTP/2 connection preface (h2c with prior knowledge).
                    this.passthrough = true;
                } else {
                    this.arm(this.head_timeout);
                }
            }
            return Poll::Ready(r);
        }
        ready!(this.timer.as_mut().poll(cx));
        if this.started {
            this.closed.with_label_values(&["head_timeout"]).inc();
            this.write_now(cx, &answer(&ApiError::HeadTimeout));
            this.replacement = Some((Vec::new(), 0)); // whatever pingora answers now is moot
            Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "request head deadline passed")))
        } else {
            this.closed.with_label_values(&["idle_timeout"]).inc();
            Poll::Ready(Ok(())) // end of stream: pingora closes the idle connection quietly
        }
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.passthrough {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        if let Some(p) = this.poll_through_held(cx, &[io::IoSlice::new(buf)]) {
            return p;
        }
        if this.replacement.is_none() && this.phase.load(Ordering::Acquire) == AWAITING_HEAD {
            // No handler has seen this request: the only writer is pingora refusing its head.
            match replacement_for(buf) {
                Some(err) => {
                    this.closed.with_label_values(&["malformed_head"]).inc();
                    this.replacement = Some((answer(&err), 0));
                }
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        if this.replacement.is_some() {
            // Ours replaces all of pingora's answer; the rest of what it writes is dropped.
            ready!(this.poll_replacement(cx))?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    /// A handler's writes (pingora's chunked body pieces: size line, data, CRLF) pass through
    /// as one vectored write; anything written while no handler has the request goes through
    /// `poll_write`, which may replace it.
    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.passthrough {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        if let Some(p) = this.poll_through_held(cx, bufs) {
            return p;
        }
        if this.replacement.is_none() && this.phase.load(Ordering::Acquire) != AWAITING_HEAD {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &**b);
        Pin::new(this).poll_write(cx, first)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain_held(cx))?;
        ready!(this.poll_replacement(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain_held(cx))?;
        ready!(this.poll_replacement(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for GuardedIo {
    async fn shutdown(&mut self) {
        let _ = std::future::poll_fn(|cx| self.poll_drain_held(cx)).await;
        let _ = std::future::poll_fn(|cx| self.poll_replacement(cx)).await;
        self.inner.shutdown().await;
    }
}

impl UniqueID for GuardedIo {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedIo {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedIo {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedIo {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for GuardedIo {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for GuardedIo {
    /// Answers pingora's h2c check: `buf` holds the preface only when the client sent it.
    /// What was read is served again by `poll_read`.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.peek_preface().await?;
        buf.fill(0);
        let n = self.peeked.len().min(buf.len());
        buf.get_mut(..n).unwrap_or_default().copy_from_slice(self.peeked.get(..n).unwrap_or_default());
        Ok(true)
    }
}

#[cfg(test)]
mod tests;
