//! The one place that knows pingora's HTTP session API: an `HttpServerApp` that reads each
//! request head, hands the session, wrapped as a [`Downstream`], to the pingora-free handlers,
//! then hands the finished request to `proxy::finish` and the connection back for reuse. The
//! gateway drives upstream exchanges itself (see `crate::upstream`), so pingora's proxy
//! (`pingora-proxy`'s `HttpProxy`) is not used: its per-request machinery (modules, cache and
//! subrequest hooks, a 15 KiB future held for the life of every stream) did nothing for joule.
//! What it did that joule needs is here: a bare 400 for an unparsable head, 405 for CONNECT,
//! idle keep-alive connections dropped when the server shuts down.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession as Session;
use pingora::server::ShutdownWatch;

use super::guard;
use crate::admin;
use crate::proxy::{self, Downstream, DownstreamError, Gateway, InFlight, Record, RequestHead, ResponseHead};

pub use crate::proxy::Surface as Role;

/// The pingora application.
pub struct JouleApp {
    pub gateway: Arc<Gateway>,
    pub role: Role,
    /// h2c on plain listeners.
    pub options: HttpServerOptions,
}

/// Per-request state.
struct Ctx {
    rec: Record,
    /// The request's head, once read (the access log's method and path).
    head: Option<RequestHead>,
    _in_flight: Option<InFlight>,
}

struct SessionIo<'a> {
    session: &'a mut Session,
    /// The client sent `Expect: 100-continue` and has not had `100 Continue` yet.
    awaits_continue: bool,
    /// The client sent bytes while its answer was streaming (pipelining): they were not
    /// kept, the connection closes after this answer and nothing more is watched.
    unwatched: bool,
}

/// `Expect: 100-continue` on an HTTP/1.1 request (RFC 9110 §10.1.1). HTTP/2 clients are not
/// held back by it in practice, and pingora's h2 session cannot send an informational head.
fn expects_continue(req: &pingora::http::RequestHeader) -> bool {
    req.version == http::Version::HTTP_11
        && req.headers.get(http::header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

// pingora hands its errors over boxed; taking the box keeps `map_err(io_err)` direct.
#[allow(clippy::boxed_local)]
fn io_err(e: Box<pingora::Error>) -> DownstreamError {
    DownstreamError(e.etype().as_str().to_string())
}

#[async_trait]
impl Downstream for SessionIo<'_> {
    async fn read_body(&mut self) -> Result<Option<Bytes>, DownstreamError> {
        match self.session.read_request_body().await {
            Ok(chunk) => Ok(chunk),
            Err(e) => {
                // pingora marks a body it failed to parse (a bad chunk size, a chunk without
                // its CRLF) as done and would reuse the connection: the bytes after the error
                // would be read as the next request. Never reuse a connection whose body broke.
                self.session.set_keepalive(None);
                Err(io_err(e))
            }
        }
    }

    async fn send_head(&mut self, head: ResponseHead) -> Result<(), DownstreamError> {
        self.session.write_response_header(Box::new(response_header(head)?)).await.map_err(io_err)
    }

    async fn send_body(&mut self, chunk: Bytes, end: bool) -> Result<(), DownstreamError> {
        self.session.write_response_body(chunk, end).await.map_err(io_err)
    }

    async fn send_whole(&mut self, status: u16, headers: Vec<(&'static str, String)>, body: Bytes) -> Result<(), DownstreamError> {
        if !body.is_empty() {
            // The head pingora writes next waits in the guard and leaves with the body's
            // write; the body's end flushes whatever is held (and a session that wrote no
            // body, a HEAD answer, flushed with the head).
            guard::hold_next_write(self.session.stream());
        }
        self.send_head(ResponseHead { status, headers, content_length: Some(body.len()) }).await?;
        self.send_body(body, true).await
    }

    async fn send_start(&mut self, head: ResponseHead, first: Bytes) -> Result<(), DownstreamError> {
        if first.is_empty() {
            return self.send_head(head).await;
        }
        // As in `send_whole`: the head waits in the guard for the first chunk's write.
        guard::hold_next_write(self.session.stream());
        self.send_head(head).await?;
        self.send_body(first, false).await
    }

    fn close_after(&mut self) {
        self.session.set_keepalive(None);
    }

    async fn closed(&mut self) {
        if !self.unwatched {
            match self.session.read_body_or_idle(true).await {
                // pingora's word for bytes after the request: not a departure.
                Err(e) if *e.etype() == pingora::ErrorType::ConnectError => {}
                Err(_) => return,
                Ok(_) => {}
            }
            self.session.set_keepalive(None);
            self.unwatched = true;
        }
        std::future::pending::<()>().await;
    }

    async fn accept_body(&mut self) -> Result<(), DownstreamError> {
        if std::mem::take(&mut self.awaits_continue) {
            // pingora turns keep-alive off for any head written before the request body is
            // done, the interim `100` included; it says nothing about the final answer.
            let keepalive = self.session.get_keepalive();
            self.session.write_continue_response().await.map_err(io_err)?;
            self.session.set_keepalive(keepalive);
        }
        Ok(())
    }
}

/// pingora's response head for `head`, built as `http` parts: pingora's own `insert_header`
/// copies every name that is not a standard one (`x-request-id`, `x-joule-*`) into a new
/// allocation, where a lowercase `&'static str` name can be used as it is. Without the
/// case-preserving copy of the names (joule's are lowercase): the head is kept for the whole
/// answer, a stream's whole life.
///
/// # Errors
/// A status outside 100..=999 or a value with bytes a header cannot carry.
fn response_header(head: ResponseHead) -> Result<ResponseHeader, DownstreamError> {
    let bad = |what: &str| DownstreamError(format!("invalid response {what}"));
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = http::StatusCode::from_u16(head.status).map_err(|_| bad("status"))?;
    parts.headers.reserve(head.headers.len() + 1);
    for (name, value) in head.headers {
        let value = http::HeaderValue::try_from(value).map_err(|_| bad("header value"))?;
        parts.headers.insert(header_name(name).ok_or_else(|| bad("header name"))?, value);
    }
    match head.content_length {
        Some(n) => parts.headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(n)),
        // Chunked on HTTP/1.1 keeps the connection reusable; h2 drops the header itself.
        None => parts.headers.insert(http::header::TRANSFER_ENCODING, http::HeaderValue::from_static("chunked")),
    };
    Ok(ResponseHeader::from(parts))
}

/// A header name from a name written in the code: used as it is when it is already in the
/// form `HeaderName::from_static` takes (lowercase token characters), else parsed.
fn header_name(name: &'static str) -> Option<http::HeaderName> {
    let canonical = !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if canonical {
        Some(http::HeaderName::from_static(name))
    } else {
        http::HeaderName::from_bytes(name.as_bytes()).ok()
    }
}

/// The first 200 characters of a path: as much as the access log shows.
fn clipped(path: &str) -> &str {
    path.char_indices().nth(200).map_or(path, |(at, _)| path.get(..at).unwrap_or(path))
}

fn request_head(session: &Session) -> RequestHead {
    let req = session.req_header();
    RequestHead {
        method: req.method.clone(),
        path: req.uri.path().to_string(),
        query: req.uri.query().map(str::to_string),
        authorization: req.headers.get(http::header::AUTHORIZATION).map(|v| v.as_bytes().to_vec()),
        api_key: req.headers.get("x-api-key").map(|v| v.as_bytes().to_vec()),
        if_none_match: req.headers.get(http::header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).map(str::to_string),
        content_length: req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok()),
        content_type: req.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string),
        explain: req.headers.get("x-joule-explain").is_some_and(|v| v.as_bytes() == b"1"),
        anthropic_beta: req.headers.get("anthropic-beta").and_then(|v| v.to_str().ok()).map(str::to_string),
    }
}

#[async_trait]
impl HttpServerApp for JouleApp {
    async fn process_new_http(self: &Arc<Self>, mut session: Session, shutdown: &ShutdownWatch) -> Option<ReusedHttpStream> {
        let mut stopping = shutdown.clone();
        let read = tokio::select! {
            // Biased: a request already buffered is served, not dropped.
            biased;
            read = session.read_request() => read,
            _ = stopping.wait_for(|s| *s) => return None,
        };
        match read {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                if *e.etype() == pingora::ErrorType::InvalidHTTPHeader {
                    // The guard turns pingora's bare error page into JSON.
                    let _ = session.respond_error(400).await;
                }
                session.shutdown().await;
                return None;
            }
        }
        if session.req_header().method == http::Method::CONNECT {
            let _ = session.respond_error(405).await;
            session.shutdown().await;
            return None;
        }
        if *shutdown.borrow() {
            session.set_keepalive(None);
        }
        let mut ctx = Ctx { rec: Record::new(), head: None, _in_flight: None };
        self.serve(&mut session, &mut ctx).await;
        guard::request_done(session.stream());
        let (method, path) = ctx.head.as_ref().map_or(("", ""), |h| (h.method.as_str(), clipped(&h.path)));
        proxy::finish::finish(&self.gateway, self.role, &ctx.rec, method, path);
        drop(ctx);
        let settings = HttpPersistentSettings::for_session(&session);
        session.finish().await.ok().flatten().map(|s| ReusedHttpStream::from_reusable_stream(s, settings))
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }
}

impl JouleApp {
    async fn serve(&self, session: &mut Session, ctx: &mut Ctx) {
        ctx._in_flight = Some(self.gateway.enter());
        guard::head_received(session.stream());
        if self.gateway.is_draining() {
            session.set_keepalive(None);
        }
        let head = ctx.head.insert(request_head(session));
        let awaits_continue = expects_continue(session.req_header());
        let mut io = SessionIo { session, awaits_continue, unwatched: false };
        let result = match self.role {
            Role::Api => proxy::handle(&self.gateway, head, &mut io, &mut ctx.rec).await,
            Role::Admin => Box::pin(admin::handle(&self.gateway, head, &mut io, &mut ctx.rec)).await,
        };
        if io.awaits_continue {
            // Answered without `100 Continue`: the client may never send the body it
            // announced, and draining it for reuse would wait on a body that is not coming.
            io.session.set_keepalive(None);
        }
        if let Err(e) = result {
            // The client went away or broke the protocol: nothing more can be sent.
            tracing::debug!(request_id = %ctx.rec.request_id, error = %e, "downstream failed");
            if ctx.rec.error.is_none() {
                ctx.rec.error = Some("client_disconnected");
            }
            if ctx.rec.status == 0 {
                ctx.rec.status = 499;
            }
            session.set_keepalive(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(headers: Vec<(&'static str, String)>, content_length: Option<usize>) -> ResponseHead {
        ResponseHead { status: 200, headers, content_length }
    }

    #[test]
    fn the_response_head_carries_every_header_and_the_framing() {
        let h = response_header(head(vec![("content-type", "application/json".into()), ("x-joule-data-center", "dc-1".into())], Some(12))).unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.headers["x-joule-data-center"], "dc-1");
        assert_eq!(h.headers["content-type"], "application/json");
        assert_eq!(h.headers["content-length"], "12");
        let streamed = response_header(head(vec![], None)).unwrap();
        assert_eq!(streamed.headers["transfer-encoding"], "chunked");
    }

    #[test]
    fn names_not_in_static_form_are_parsed_and_bad_input_is_an_error() {
        assert_eq!(header_name("X-Odd-Case").unwrap().as_str(), "x-odd-case");
        assert_eq!(header_name("x_under-9").unwrap().as_str(), "x_under-9");
        assert!(header_name("").is_none());
        assert!(header_name("bad name").is_none());
        assert!(response_header(head(vec![("x-a", "line\nbreak".into())], Some(0))).is_err());
        assert!(response_header(ResponseHead { status: 1000, headers: vec![], content_length: Some(0) }).is_err());
    }
}
