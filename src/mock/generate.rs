//! What both API surfaces of the mock share: the generated tokens and their schedule, the SSE
//! writer, and the failure modes that act the same whichever API is spoken (error statuses,
//! slow headers, HTML, empty, dropped, truncated and silent bodies, garbage and endless
//! events). The API modules only build their JSON and name their events.

use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::config::{Failure, MockConfig};
use super::error::{ApiError, CONTENT_TYPE_JSON};
use super::http::{full_response, response_head, Conn, ResponseBody};

/// Upper bound on any simulated delay, so absurd configurations cannot overflow a deadline.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(365 * 24 * 3600);

/// What to do with the connection after a response.
pub(crate) enum Next {
    /// Serve the next request, if the client allows it.
    KeepAlive,
    /// Close the connection in an orderly way (TLS `close_notify`, FIN).
    Close,
    /// Drop the connection on the spot, as a crashing backend would.
    Abort,
}

/// Content token `index`: `tok0`, ` tok1`, ` tok2`, … (so the whole reads "tok0 tok1 …").
/// The input (arguments) of every tool call the mock makes.
pub(crate) const TOOL_INPUT: &str = r#"{"arg":"value"}"#;
/// How many stream events carry [`TOOL_INPUT`]: several, so clients must join the pieces
/// before parsing.
pub(crate) const TOOL_INPUT_PIECES: usize = 3;

/// [`TOOL_INPUT`] cut into [`TOOL_INPUT_PIECES`] pieces of about equal length (it is ASCII, so
/// every byte offset is a character boundary).
pub(crate) fn tool_input_pieces() -> Vec<&'static str> {
    let len = TOOL_INPUT.len();
    (0..TOOL_INPUT_PIECES)
        .map(|i| {
            let start = len * i / TOOL_INPUT_PIECES;
            let end = len * (i + 1) / TOOL_INPUT_PIECES;
            TOOL_INPUT.get(start..end).unwrap_or_default()
        })
        .collect()
}

pub(crate) fn token(index: u32) -> String {
    if index == 0 {
        "tok0".to_owned()
    } else {
        format!(" tok{index}")
    }
}

/// The first `count` tokens as one text.
pub(crate) fn text(count: u32) -> String {
    (0..count).map(token).collect()
}

/// Prompt size estimate: a token per four bytes of request body, at least one.
pub(crate) fn prompt_tokens(body: &[u8]) -> u64 {
    u64::try_from(body.len() / 4).unwrap_or(u64::MAX).max(1)
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Time to decode `tokens` tokens at `rate` tokens per second; zero for a non-positive or
/// non-finite rate.
pub(crate) fn decode_time(tokens: u32, rate: f64) -> Duration {
    if !(rate.is_finite() && rate > 0.0) {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(f64::from(tokens) / rate).unwrap_or(MAX_DELAY)
}

/// `start + offset`, with `offset` capped at [`MAX_DELAY`].
fn deadline(start: Instant, offset: Duration) -> Instant {
    start + offset.min(MAX_DELAY)
}

/// Sleeps until `at`, returning at once when it is not in the future: tokio rounds timer
/// deadlines up to its next millisecond tick, which would make an "immediate" mock answer
/// take ~1 ms and inflate every baseline measured against it.
pub(crate) async fn wait_until(at: Instant) {
    if at > Instant::now() {
        tokio::time::sleep_until(at).await;
    }
}

/// Acts on the failure modes that replace the answer before any generation: error statuses
/// (in `cfg.api`'s shape), HTML and empty answers. Slow headers wait here, then let the answer
/// proceed. `Some` means the response has been sent.
pub(crate) async fn answer_failure<S>(
    conn: &mut Conn<S>,
    cfg: &MockConfig,
    keep_alive: bool,
) -> io::Result<Option<Next>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match cfg.failure {
        Failure::Status500 => {
            ApiError::server_error()
                .send(conn, cfg.api, &[], keep_alive)
                .await?;
        }
        Failure::Status429 { retry_after_s } => {
            let retry_after = retry_after_s.to_string();
            ApiError::rate_limited()
                .send(conn, cfg.api, &[("retry-after", &retry_after)], keep_alive)
                .await?;
        }
        Failure::Overloaded => {
            ApiError::overloaded()
                .send(conn, cfg.api, &[], keep_alive)
                .await?;
        }
        Failure::SlowHeaders { delay_ms } => {
            wait_until(deadline(Instant::now(), Duration::from_millis(delay_ms))).await;
            return Ok(None);
        }
        Failure::HtmlAnswer => {
            let page = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>";
            let headers = [("content-type", "text/html; charset=utf-8")];
            conn.write(&full_response(200, &headers, page, keep_alive))
                .await?;
        }
        Failure::EmptyAnswer => {
            conn.write(&full_response(200, &[CONTENT_TYPE_JSON], b"", keep_alive))
                .await?;
        }
        Failure::None
        | Failure::Refuse
        | Failure::DropMidStream { .. }
        | Failure::GarbageSse { .. }
        | Failure::TruncatedAnswer { .. }
        | Failure::SilentBody
        | Failure::EndlessEvent { .. } => return Ok(None),
    }
    Ok(Some(Next::KeepAlive))
}

/// Non-streaming answer: waits for the generation of `generated` tokens (TTFT included), then
/// sends `body` as a 200 — or what the failure mode makes of it (garbage, no body, a
/// truncated one, silence).
pub(crate) async fn send_whole<S>(
    conn: &mut Conn<S>,
    cfg: &MockConfig,
    generated: u32,
    body: Vec<u8>,
    keep_alive: bool,
) -> io::Result<Next>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let generation =
        Duration::from_millis(cfg.ttft_ms).saturating_add(decode_time(generated, cfg.tokens_per_s));
    wait_until(deadline(Instant::now(), generation)).await;
    let body = match cfg.failure {
        Failure::GarbageSse { .. } => b"{{{garbage".to_vec(),
        _ => body,
    };
    let head = || {
        response_head(
            200,
            &[CONTENT_TYPE_JSON],
            ResponseBody::Length(body.len()),
            keep_alive,
        )
    };
    match cfg.failure {
        Failure::DropMidStream { .. } => {
            conn.write(&head()).await?;
            return Ok(Next::Abort);
        }
        Failure::TruncatedAnswer { sent_bytes } => {
            let sent = usize::try_from(sent_bytes)
                .unwrap_or(usize::MAX)
                .min(body.len().saturating_sub(1));
            let mut partial = head();
            partial.extend_from_slice(&body[..sent]);
            conn.write(&partial).await?;
            return Ok(Next::Abort);
        }
        Failure::SilentBody => {
            conn.write(&head()).await?;
            wait_until(deadline(Instant::now(), MAX_DELAY)).await;
            return Ok(Next::Abort);
        }
        _ => {}
    }
    conn.write(&full_response(200, &[CONTENT_TYPE_JSON], &body, keep_alive))
        .await?;
    Ok(Next::KeepAlive)
}

/// A streamed answer in progress: the SSE framing, the token schedule and the failure that
/// will cut it short. Events go out one HTTP chunk each, each flushed on its own.
pub(crate) struct EventStream {
    failure: Failure,
    eol: &'static str,
    /// Emit a `: keep-alive` comment block between events.
    comments: bool,
    /// Split content events across two `data:` lines.
    multiline: bool,
    /// Events sent so far.
    events: usize,
    /// When the headers went out; token `i` is due at `start + ttft + i / rate`.
    start: Instant,
    ttft: Duration,
    rate: f64,
    interval: Duration,
    last_sent: Option<Instant>,
}

impl EventStream {
    /// Sends the SSE response head. `None` when the failure mode is [`Failure::SilentBody`]: the
    /// head was sent, then nothing until the client left; the connection is to be dropped.
    pub(crate) async fn open<S>(
        conn: &mut Conn<S>,
        cfg: &MockConfig,
        keep_alive: bool,
    ) -> io::Result<Option<Self>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // The garbage case ends the body cleanly and then closes; announce it so pooling
        // clients do not race the close.
        let keep_alive = keep_alive && !matches!(cfg.failure, Failure::GarbageSse { .. });
        let headers = [
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
        ];
        conn.write(&response_head(
            200,
            &headers,
            ResponseBody::Chunked,
            keep_alive,
        ))
        .await?;
        if cfg.failure == Failure::SilentBody {
            wait_until(deadline(Instant::now(), MAX_DELAY)).await;
            return Ok(None);
        }
        Ok(Some(Self {
            failure: cfg.failure,
            eol: cfg.sse_framing.eol(),
            comments: cfg.sse_comments,
            multiline: cfg.multiline_data,
            events: 0,
            start: Instant::now(),
            ttft: Duration::from_millis(cfg.ttft_ms),
            rate: cfg.tokens_per_s,
            interval: decode_time(1, cfg.tokens_per_s),
            last_sent: None,
        }))
    }

    /// How many of `planned` content events to send before the failure mode cuts in.
    pub(crate) fn content_events(&self, planned: u32) -> u32 {
        match self.failure {
            Failure::DropMidStream { after_tokens }
            | Failure::GarbageSse { after_tokens }
            | Failure::EndlessEvent { after_tokens } => after_tokens.min(planned),
            _ => planned,
        }
    }

    /// Waits until content event `index` is due: TTFT after the headers, then one per decode
    /// interval.
    pub(crate) async fn pace(&mut self, index: u32) {
        let due = deadline(
            self.start,
            self.ttft.saturating_add(decode_time(index, self.rate)),
        );
        // Never catch up on a late token with a burst: a token is sent at least one decode
        // interval after the previous one, so the spacing clients see is guaranteed at the
        // source even on a loaded machine (the long-run rate then drifts slightly low).
        let due = self
            .last_sent
            .map_or(due, |prev| due.max(prev + self.interval.min(MAX_DELAY)));
        wait_until(due).await;
        self.last_sent = Some(Instant::now());
    }

    /// Sends `value` as one event, named `event` if given; `content` events are split across
    /// two `data:` lines when multi-line data is configured.
    pub(crate) async fn send<S>(
        &mut self,
        conn: &mut Conn<S>,
        event: Option<&str>,
        value: &Value,
        content: bool,
    ) -> io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let data = value.to_string();
        match split_point(&data).filter(|_| content && self.multiline) {
            Some(at) => {
                let (first, second) = data.split_at(at);
                self.send_lines(conn, event, &[first, second]).await
            }
            None => self.send_lines(conn, event, &[&data]).await,
        }
    }

    /// Sends one event made of an optional `event:` line and the given `data:` lines (none may
    /// contain a line break), preceded by a `: keep-alive` comment block if configured and this
    /// is not the first event.
    pub(crate) async fn send_lines<S>(
        &mut self,
        conn: &mut Conn<S>,
        name: Option<&str>,
        lines: &[&str],
    ) -> io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let eol = self.eol;
        if self.comments && self.events > 0 {
            conn.write_chunk(format!(": keep-alive{eol}{eol}").as_bytes())
                .await?;
        }
        let mut event = String::new();
        if let Some(name) = name {
            event.push_str("event: ");
            event.push_str(name);
            event.push_str(eol);
        }
        for line in lines {
            event.push_str("data: ");
            event.push_str(line);
            event.push_str(eol);
        }
        event.push_str(eol);
        conn.write_chunk(event.as_bytes()).await?;
        self.events += 1;
        Ok(())
    }

    /// After the content events: carries out a mid-stream failure (drop, garbage event named
    /// `event`, endless event). `Some` means the stream is over.
    pub(crate) async fn fail<S>(
        &mut self,
        conn: &mut Conn<S>,
        event: Option<&str>,
    ) -> io::Result<Option<Next>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match self.failure {
            Failure::DropMidStream { .. } => Ok(Some(Next::Abort)),
            Failure::GarbageSse { .. } => {
                self.send_lines(conn, event, &["{{{garbage"]).await?;
                conn.finish_chunked().await?;
                Ok(Some(Next::Close))
            }
            Failure::EndlessEvent { .. } => {
                let eol = self.eol;
                if let Some(name) = event {
                    conn.write_chunk(format!("event: {name}{eol}").as_bytes())
                        .await?;
                }
                let line = format!("data: {}{eol}", "x".repeat(1018));
                loop {
                    // Ends with an error once the client has gone away.
                    conn.write_chunk(line.as_bytes()).await?;
                }
            }
            _ => Ok(None),
        }
    }

    /// Ends the HTTP body; the connection may serve the next request.
    pub(crate) async fn finish<S>(self, conn: &mut Conn<S>) -> io::Result<Next>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        conn.finish_chunked().await?;
        Ok(Next::KeepAlive)
    }
}

/// A byte offset just after a `,` outside any JSON string, as close to the middle of `json` as
/// possible: splitting there and re-joining with `\n` yields equivalent JSON.
fn split_point(json: &str) -> Option<usize> {
    let middle = json.len() / 2;
    let mut best: Option<usize> = None;
    let (mut in_string, mut escaped) = (false, false);
    for (i, byte) in json.bytes().enumerate() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else if byte == b'"' {
            in_string = true;
        } else if byte == b',' {
            let candidate = i + 1;
            if best.is_none_or(|b| candidate.abs_diff(middle) < b.abs_diff(middle)) {
                best = Some(candidate);
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_point_keeps_json_valid() {
        let json = r#"{"a":"x,y\",z","b":[1,2],"c":{"d":"e"}}"#;
        let at = split_point(json).expect("a comma outside strings");
        let joined = format!("{}\n{}", &json[..at], &json[at..]);
        let reparsed: Value = serde_json::from_str(&joined).expect("valid JSON");
        assert_eq!(
            reparsed,
            serde_json::from_str::<Value>(json).expect("valid JSON")
        );
        assert_eq!(split_point(r#"{"a":"b,c"}"#), None);
    }

    #[test]
    fn decode_time_tolerates_odd_rates() {
        assert_eq!(decode_time(10, 0.0), Duration::ZERO);
        assert_eq!(decode_time(10, f64::NAN), Duration::ZERO);
        assert_eq!(decode_time(10, -1.0), Duration::ZERO);
        assert_eq!(decode_time(10, 1e-300), MAX_DELAY);
        assert_eq!(decode_time(4, 8.0), Duration::from_millis(500));
    }

    #[test]
    fn tokens_read_as_one_text() {
        assert_eq!(text(3), "tok0 tok1 tok2");
        assert_eq!(text(0), "");
        assert_eq!(prompt_tokens(b""), 1);
        assert_eq!(prompt_tokens(&[b'x'; 40]), 10);
    }
}
