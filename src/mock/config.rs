//! Configuration of the mock upstream: which API it speaks, how fast it "generates", how it
//! frames SSE, whether it demands credentials, and which failure it simulates. Also owns the
//! CLI-friendly parsers ([`parse_failure`], the `FromStr` of [`SseFraming`] and of
//! [`MockApi`]) used by `joule mock`.

use std::fmt;
use std::str::FromStr;

/// Behaviour of a [`MockServer`](super::MockServer). Swap it at runtime with
/// [`MockServer::set_config`](super::MockServer::set_config); the new value applies from the
/// next request on.
#[derive(Debug, Clone, PartialEq)]
pub struct MockConfig {
    /// The API the mock speaks: OpenAI chat completions, or Anthropic messages.
    pub api: MockApi,
    /// Delay before the first content token (streaming) or before the whole response
    /// (non-streaming), in milliseconds.
    pub ttft_ms: u64,
    /// Decode rate after the first token. Zero, negative or non-finite values mean "no delay".
    pub tokens_per_s: f64,
    /// Number of completion tokens to generate.
    pub tokens: u32,
    /// Failure to simulate for chat completions.
    pub failure: Failure,
    /// Line terminator used in SSE streams.
    pub sse_framing: SseFraming,
    /// Emit a `: keep-alive` comment block between SSE events.
    pub sse_comments: bool,
    /// Split each content chunk's JSON across two `data:` lines (valid SSE: the lines are joined
    /// with `\n`, and the split is made after a `,` outside any string, so the result is still
    /// valid JSON).
    pub multiline_data: bool,
    /// If set, every request must carry this key — as `Authorization: Bearer <key>` with
    /// [`MockApi::OpenAi`], as `x-api-key: <key>` with [`MockApi::Anthropic`]; otherwise it gets
    /// a 401 in the API's error shape.
    pub require_bearer: Option<String>,
    /// Model ids listed by `GET /v1/models`. Generation accepts any model regardless.
    pub models: Vec<String>,
    /// If set, the `usage` object reported (non-stream body and final stream chunk; with
    /// [`MockApi::Anthropic`], the usage of `message_start` and `message_delta`) instead of the
    /// real counts — e.g. `{"prompt_tokens": 18446744073709551615, …}`, to test that joule
    /// treats upstream numbers as untrusted.
    pub reported_usage: Option<serde_json::Value>,
    /// Answer with a call of the first tool (OpenAI: `tool_calls`; Anthropic: a `tool_use`
    /// block) whenever the request offers `tools` and its `tool_choice` is not `none`, as if
    /// `tool_choice` forced a tool. Without it, a tool is called only when `tool_choice`
    /// forces one (`required`/`any`, or a named tool).
    pub tool_use: bool,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            api: MockApi::OpenAi,
            ttft_ms: 20,
            tokens_per_s: 200.0,
            tokens: 16,
            failure: Failure::None,
            sse_framing: SseFraming::Lf,
            sse_comments: false,
            multiline_data: false,
            require_bearer: None,
            models: vec!["mock-model".to_owned()],
            reported_usage: None,
            tool_use: false,
        }
    }
}

/// The API a [`MockServer`](super::MockServer) speaks. Each answers only its own routes: the
/// other API's generation path is a 404.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MockApi {
    /// OpenAI: `POST /v1/chat/completions`, `Authorization: Bearer`, OpenAI-shaped errors.
    #[default]
    OpenAi,
    /// Anthropic: `POST /v1/messages`, `x-api-key` and `anthropic-version` headers,
    /// `{"type":"error",…}` errors, named SSE events.
    Anthropic,
}

impl FromStr for MockApi {
    type Err = String;

    /// Accepts `openai` or `anthropic` (case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "openai" => Ok(Self::OpenAi),
            "anthropic" => Ok(Self::Anthropic),
            other => Err(format!("unknown API `{other}`; expected openai|anthropic")),
        }
    }
}

impl fmt::Display for MockApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
        })
    }
}

/// A failure mode of the mock upstream.
///
/// [`Failure::Refuse`] acts on connections (and on any request arriving on an already open
/// one); the other modes act on the generation route only (`POST /v1/chat/completions`, or
/// `POST /v1/messages` with [`MockApi::Anthropic`]), after authentication and after the body
/// has been checked. Error bodies, streams and garbage take the shape of the configured API.
///
/// The `Display` form is the one [`parse_failure`] accepts, so the two round-trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Failure {
    /// Behave normally.
    #[default]
    None,
    /// Accept the TCP connection, then close it at once without a response.
    Refuse,
    /// Answer 500 with an error body (`api_error` in Anthropic mode).
    Status500,
    /// Answer 429 with a `retry-after` header and an error body (`rate_limit_error`).
    Status429 {
        /// Value of the `retry-after` header, in seconds.
        retry_after_s: u64,
    },
    /// Answer 529, Anthropic's "overloaded" status, with an `overloaded_error` body (in OpenAI
    /// mode an OpenAI-shaped `server_error` body).
    Overloaded,
    /// Wait before sending the response headers, then respond normally.
    SlowHeaders {
        /// Extra delay before the response headers, in milliseconds.
        delay_ms: u64,
    },
    /// Streaming: send the headers, the opening events (role chunk; or `message_start`,
    /// `content_block_start` and `ping`) and `after_tokens` content events, then drop
    /// the connection (no finish chunk, no `[DONE]`, no terminating HTTP chunk).
    /// Non-streaming: drop the connection right after the response headers.
    DropMidStream {
        /// Content chunks sent before the connection is dropped.
        after_tokens: u32,
    },
    /// Streaming: after `after_tokens` content chunks send a `data: {{{garbage` event (named
    /// `content_block_delta` in Anthropic mode), end the HTTP body and close the connection
    /// (announced with `connection: close`).
    /// Non-streaming: a 200 whose body is `{{{garbage`.
    GarbageSse {
        /// Content chunks sent before the garbage event.
        after_tokens: u32,
    },
    /// A 200 with `content-type: text/html` and an HTML error page (what a misconfigured
    /// proxy in front of a backend sends), streaming or not.
    HtmlAnswer,
    /// A 200 with `content-type: application/json` and an empty body, streaming or not.
    EmptyAnswer,
    /// Non-streaming: announce the whole completion's `content-length`, send its first
    /// `sent_bytes` bytes (at most all but one), then drop the connection. Streaming: normal.
    TruncatedAnswer {
        /// Body bytes sent before the connection is dropped.
        sent_bytes: u32,
    },
    /// Send the response headers (with the whole completion's `content-length`, or the SSE
    /// headers of a stream), then nothing at all, holding the connection open.
    SilentBody,
    /// Streaming: after `after_tokens` content chunks, `data:` lines of 1 KiB each, as fast as
    /// the connection takes them and never a blank line, so the event never ends; until the
    /// client goes away. Non-streaming: normal.
    EndlessEvent {
        /// Content chunks sent before the endless event.
        after_tokens: u32,
    },
}

/// Default `retry-after` for `429` given without seconds.
const DEFAULT_RETRY_AFTER_S: u64 = 1;

/// Parses a failure mode from its CLI form:
/// `none | refuse | 500 | 429[:SECS] | 529 | slow-headers:MS | drop:N | garbage:N | html | empty |
/// truncate:N | silent-body | endless-event:N`
/// (case-insensitive; `429` alone means `retry-after: 1`).
pub fn parse_failure(s: &str) -> Result<Failure, String> {
    let s = s.trim().to_ascii_lowercase();
    let (kind, arg) = match s.split_once(':') {
        Some((kind, arg)) => (kind, Some(arg)),
        None => (s.as_str(), None),
    };
    let number = |what: &str| -> Result<u64, String> {
        let arg = arg.ok_or_else(|| format!("failure `{kind}` needs a value: `{kind}:{what}`"))?;
        arg.parse::<u64>()
            .map_err(|_| format!("failure `{kind}`: `{arg}` is not a valid {what}"))
    };
    let count = |what: &str| -> Result<u32, String> {
        u32::try_from(number(what)?).map_err(|_| format!("failure `{kind}`: {what} is too large"))
    };
    let no_arg = |failure: Failure| match arg {
        None => Ok(failure),
        Some(_) => Err(format!("failure `{kind}` takes no value")),
    };
    match kind {
        "none" => no_arg(Failure::None),
        "refuse" => no_arg(Failure::Refuse),
        "500" => no_arg(Failure::Status500),
        "429" => Ok(Failure::Status429 {
            retry_after_s: match arg {
                None => DEFAULT_RETRY_AFTER_S,
                Some(_) => number("seconds")?,
            },
        }),
        "529" => no_arg(Failure::Overloaded),
        "slow-headers" => Ok(Failure::SlowHeaders {
            delay_ms: number("milliseconds")?,
        }),
        "drop" => Ok(Failure::DropMidStream {
            after_tokens: count("token count")?,
        }),
        "garbage" => Ok(Failure::GarbageSse {
            after_tokens: count("token count")?,
        }),
        "html" => no_arg(Failure::HtmlAnswer),
        "empty" => no_arg(Failure::EmptyAnswer),
        "truncate" => Ok(Failure::TruncatedAnswer {
            sent_bytes: count("byte count")?,
        }),
        "silent-body" => no_arg(Failure::SilentBody),
        "endless-event" => Ok(Failure::EndlessEvent {
            after_tokens: count("token count")?,
        }),
        other => Err(format!(
            "unknown failure `{other}`; expected none|refuse|500|429[:secs]|529|slow-headers:MS|drop:N|garbage:N|html|empty|truncate:N|silent-body|endless-event:N"
        )),
    }
}

impl FromStr for Failure {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_failure(s)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Refuse => f.write_str("refuse"),
            Self::Status500 => f.write_str("500"),
            Self::Status429 { retry_after_s } => write!(f, "429:{retry_after_s}"),
            Self::Overloaded => f.write_str("529"),
            Self::SlowHeaders { delay_ms } => write!(f, "slow-headers:{delay_ms}"),
            Self::DropMidStream { after_tokens } => write!(f, "drop:{after_tokens}"),
            Self::GarbageSse { after_tokens } => write!(f, "garbage:{after_tokens}"),
            Self::HtmlAnswer => f.write_str("html"),
            Self::EmptyAnswer => f.write_str("empty"),
            Self::TruncatedAnswer { sent_bytes } => write!(f, "truncate:{sent_bytes}"),
            Self::SilentBody => f.write_str("silent-body"),
            Self::EndlessEvent { after_tokens } => write!(f, "endless-event:{after_tokens}"),
        }
    }
}

/// Line terminator of SSE streams. Both are valid per the SSE specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SseFraming {
    /// Lines end with `\n`; events end with `\n\n`.
    #[default]
    Lf,
    /// Lines end with `\r\n`; events end with `\r\n\r\n`.
    Crlf,
}

impl SseFraming {
    /// The line terminator.
    pub fn eol(self) -> &'static str {
        match self {
            Self::Lf => "\n",
            Self::Crlf => "\r\n",
        }
    }
}

impl FromStr for SseFraming {
    type Err = String;

    /// Accepts `lf` or `crlf` (case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "lf" => Ok(Self::Lf),
            "crlf" => Ok(Self::Crlf),
            other => Err(format!("unknown SSE framing `{other}`; expected lf|crlf")),
        }
    }
}

impl fmt::Display for SseFraming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Lf => "lf",
            Self::Crlf => "crlf",
        })
    }
}
