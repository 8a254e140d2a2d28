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
use super::generate::{self, answer_failure, send_whole, tool_input_pieces, unix_now, EventStream, Next, TOOL_INPUT};
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
    #[serde(default)]
    tools: Option<Vec<Tool>>,
    #[serde(default)]
    tool_choice: Option<Value>,
}

#[derive(Deserialize)]
struct Tool {
    #[serde(default)]
    function: Option<Function>,
}

#[derive(Deserialize)]
struct Function {
    name: String,
}

/// The function the answer calls, if any: the named one for
/// `{"type":"function","function":{"name":…}}`, the first offered for `"required"` (or for any
/// choice but `"none"` when [`MockConfig::tool_use`] forces it). Without `tools` the answer is
/// text whatever the choice says.
fn called_function(request: &ChatRequest, cfg: &MockConfig) -> Option<String> {
    let first = request.tools.as_ref()?.first()?.function.as_ref()?.name.clone();
    match &request.tool_choice {
        Some(Value::String(s)) if s == "required" => Some(first),
        Some(Value::String(s)) if s == "none" => None,
        Some(Value::Object(o)) => o.get("function").and_then(|f| f.get("name")).and_then(Value::as_str).map(str::to_owned),
        _ if cfg.tool_use => Some(first),
        _ => None,
    }
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
    let call = called_function(&parsed, cfg);
    let completion = Completion {
        call,
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
        send_whole(conn, cfg, completion.output_tokens(), body, keep_alive).await
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
    if let Some(name) = &completion.call {
        let pieces = tool_input_pieces();
        let count = u32::try_from(pieces.len()).unwrap_or(u32::MAX);
        for index in 0..events.content_events(count) {
            events.pace(index).await;
            let piece = pieces.get(index as usize).copied().unwrap_or_default();
            events.send(conn, None, &completion.tool_chunk(name, index, piece), true).await?;
        }
    }
    for index in 0..events.content_events(completion.tokens_of_text()) {
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
    /// The function called instead of a text answer.
    call: Option<String>,
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
    /// Text tokens: none when a function is called.
    fn tokens_of_text(&self) -> u32 {
        if self.call.is_some() {
            0
        } else {
            self.tokens
        }
    }

    fn output_tokens(&self) -> u32 {
        match self.call {
            Some(_) => u32::try_from(tool_input_pieces().len()).unwrap_or(u32::MAX),
            None => self.tokens,
        }
    }

    fn finish_reason(&self) -> &'static str {
        if self.call.is_some() {
            "tool_calls"
        } else {
            "stop"
        }
    }

    fn usage(&self) -> Value {
        if let Some(u) = &self.reported_usage {
            return u.clone();
        }
        let completion_tokens = u64::from(self.output_tokens());
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens.saturating_add(completion_tokens),
        })
    }

    /// The non-streaming `chat.completion` object.
    fn response(&self) -> Value {
        let message = match &self.call {
            Some(name) => json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [{
                "id": "call_mock0", "type": "function", "function": {"name": name, "arguments": TOOL_INPUT},
            }]}),
            None => json!({"role": "assistant", "content": generate::text(self.tokens), "refusal": null}),
        };
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": self.finish_reason(),
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

    /// Piece `index` of the tool call's arguments; the first carries its id and name.
    fn tool_chunk(&self, name: &str, index: u32, piece: &str) -> Value {
        let call = if index == 0 {
            json!({"index": 0, "id": "call_mock0", "type": "function", "function": {"name": name, "arguments": piece}})
        } else {
            json!({"index": 0, "function": {"arguments": piece}})
        };
        self.delta_chunk(json!({"tool_calls": [call]}), None)
    }

    fn finish_chunk(&self) -> Value {
        self.delta_chunk(json!({}), Some(self.finish_reason()))
    }

    fn usage_chunk(&self) -> Value {
        self.chunk(json!([]), self.usage())
    }
}
