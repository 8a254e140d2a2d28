//! The OpenAI-compatible surface of the mock upstream: the answers to
//! `POST /v1/chat/completions` and `GET /v1/models` (routed by [`server`](super::server)), and
//! the rendering of `chat.completion` objects and SSE `chat.completion.chunk` streams. Timing, SSE framing and the failure modes come from
//! [`generate`](super::generate).

use std::io;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};

use super::config::MockConfig;
use super::error::ApiError;
use super::generate::{self, answer_failure, send_whole, unix_now, EventStream, Next};
use super::http::{Conn, Request};

/// The generation route.
pub(crate) const CHAT_PATH: &str = "/v1/chat/completions";

/// The key of `Authorization: Bearer <key>`, if the header holds one.
pub(crate) fn credential(request: &Request) -> Option<&str> {
    crate::api::bearer::bearer_token(request.header("authorization").map(str::as_bytes)).ok()
}

/// `GET /v1/models`.
pub(crate) fn models(cfg: &MockConfig) -> Value {
    let created = unix_now();
    let data: Vec<Value> = cfg
        .models
        .iter()
        .map(
            |id| json!({"id": id, "object": "model", "created": created, "owned_by": "joule-mock"}),
        )
        .collect();
    json!({"object": "list", "data": data})
}

/// The fields of a chat-completion request the mock looks at; everything else is ignored.
#[derive(Deserialize)]
struct ChatRequest {
    model: String,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// Answers the generation route.
pub(crate) async fn chat<S>(conn: &mut Conn<S>, request: &Request, cfg: &MockConfig) -> io::Result<Next>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let keep_alive = request.keep_alive;
    let parsed: ChatRequest = match serde_json::from_slice(&request.body) {
        Ok(parsed) => parsed,
        Err(e) => {
            let message = format!("We could not parse the JSON body of your request: {e}");
            ApiError::invalid_request(400, message)
                .send(conn, cfg.api, &[], keep_alive)
                .await?;
            return Ok(Next::KeepAlive);
        }
    };
    if let Some(next) = answer_failure(conn, cfg, keep_alive).await? {
        return Ok(next);
    }
    let completion = Completion {
        id: format!("chatcmpl-mock{:016x}", rand::random::<u64>()),
        created: unix_now(),
        model: parsed.model,
        tokens: cfg.tokens,
        prompt_tokens: generate::prompt_tokens(&request.body),
        include_usage: parsed
            .stream_options
            .and_then(|options| options.include_usage)
            .unwrap_or(false),
        reported_usage: cfg.reported_usage.clone(),
    };
    if parsed.stream.unwrap_or(false) {
        stream(conn, &completion, cfg, keep_alive).await
    } else {
        let body = completion.response().to_string().into_bytes();
        send_whole(conn, cfg, cfg.tokens, body, keep_alive).await
    }
}

/// Streaming answer: role chunk at once, content chunk `i` at `ttft + i / tokens_per_s` after
/// the headers, then the finish chunk, the optional usage chunk and `[DONE]`.
async fn stream<S>(
    conn: &mut Conn<S>,
    completion: &Completion,
    cfg: &MockConfig,
    keep_alive: bool,
) -> io::Result<Next>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(mut events) = EventStream::open(conn, cfg, keep_alive).await? else {
        return Ok(Next::Abort);
    };
    events.send(conn, None, &completion.role_chunk(), false).await?;
    for index in 0..events.content_events(completion.tokens) {
        events.pace(index).await;
        events
            .send(conn, None, &completion.content_chunk(index), true)
            .await?;
    }
    if let Some(next) = events.fail(conn, None).await? {
        return Ok(next);
    }
    events.send(conn, None, &completion.finish_chunk(), false).await?;
    if completion.include_usage {
        events.send(conn, None, &completion.usage_chunk(), false).await?;
    }
    events.send_lines(conn, None, &["[DONE]"]).await?;
    events.finish(conn).await
}

/// One generated completion: everything needed to render it as a whole or as chunks.
struct Completion {
    id: String,
    created: u64,
    model: String,
    tokens: u32,
    prompt_tokens: u64,
    include_usage: bool,
    /// [`MockConfig::reported_usage`].
    reported_usage: Option<Value>,
}

impl Completion {
    fn usage(&self) -> Value {
        if let Some(u) = &self.reported_usage {
            return u.clone();
        }
        let completion_tokens = u64::from(self.tokens);
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens.saturating_add(completion_tokens),
        })
    }

    /// The non-streaming `chat.completion` object.
    fn response(&self) -> Value {
        let content = generate::text(self.tokens);
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": null},
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": self.usage(),
        })
    }

    /// A `chat.completion.chunk`; when usage was requested every chunk carries `usage`, `null`
    /// except in the final usage chunk (as OpenAI does).
    fn chunk(&self, choices: Value, usage: Value) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
        });
        if self.include_usage {
            if let Some(fields) = chunk.as_object_mut() {
                fields.insert("usage".to_owned(), usage);
            }
        }
        chunk
    }

    fn delta_chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        let choice = json!({
            "index": 0,
            "delta": delta,
            "logprobs": null,
            "finish_reason": finish_reason,
        });
        self.chunk(json!([choice]), Value::Null)
    }

    fn role_chunk(&self) -> Value {
        self.delta_chunk(json!({"role": "assistant", "content": ""}), None)
    }

    fn content_chunk(&self, index: u32) -> Value {
        self.delta_chunk(json!({"content": generate::token(index)}), None)
    }

    fn finish_chunk(&self) -> Value {
        self.delta_chunk(json!({}), Some("stop"))
    }

    fn usage_chunk(&self) -> Value {
        self.chunk(json!([]), self.usage())
    }
}
