//! The Anthropic surface of the mock upstream ([`MockApi::Anthropic`](super::MockApi)): the
//! answers to `POST /v1/messages` and `GET /v1/models` (routed by [`server`](super::server)),
//! the checks a Messages request must pass
//! (`anthropic-version` header, `messages`, `max_tokens`), and the rendering of `message`
//! objects and of the named SSE events of a stream (`message_start`, `content_block_start`,
//! `ping`, `content_block_delta`, `content_block_stop`, `message_delta`, `message_stop`).
//! Timing, SSE framing and the failure modes come from [`generate`](super::generate), so the
//! tokens and their pacing are those of the OpenAI mode.
//!
//! A request that offers `tools` and forces one (`tool_choice` `{"type":"any"}` or
//! `{"type":"tool","name":…}`), or any request with tools when [`MockConfig::tool_use`] is set,
//! is answered with one `tool_use` block instead of text; streamed, its input arrives in
//! [`TOOL_INPUT_PIECES`](generate::TOOL_INPUT_PIECES) `input_json_delta` pieces paced like tokens.

use std::io;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};

use super::config::MockConfig;
use super::error::ApiError;
use super::generate::{self, answer_failure, send_whole, tool_input_pieces, EventStream, Next, TOOL_INPUT};
use super::http::{Conn, Request};

/// The generation route.
pub(crate) const MESSAGES_PATH: &str = "/v1/messages";
/// Token counting (`POST /v1/messages/count_tokens`): `{"input_tokens": n}`, n counted as the
/// generation route counts a prompt.
pub(crate) const COUNT_TOKENS_PATH: &str = "/v1/messages/count_tokens";

/// The count-tokens answer for a request.
pub(crate) fn count_tokens(request: &Request) -> Value {
    json!({"input_tokens": generate::prompt_tokens(&request.body)})
}
/// `created_at` of the listed models; the mock's models have no real release date.
const MODELS_CREATED_AT: &str = "2025-01-01T00:00:00Z";

/// The key of the `x-api-key` header, if any.
pub(crate) fn credential(request: &Request) -> Option<&str> {
    request.header("x-api-key")
}

/// Anthropic's model list: `data` of `{"type":"model",…}` and the pagination fields.
pub(crate) fn models(cfg: &MockConfig) -> Value {
    let data: Vec<Value> = cfg
        .models
        .iter()
        .map(|id| {
            json!({"type": "model", "id": id, "display_name": id, "created_at": MODELS_CREATED_AT})
        })
        .collect();
    json!({
        "data": data,
        "has_more": false,
        "first_id": cfg.models.first(),
        "last_id": cfg.models.last(),
    })
}

/// The fields of a Messages request the mock looks at; everything else (`system`,
/// `temperature`, the content of `messages`…) is ignored. Required fields are `Option`s so
/// their absence gets Anthropic's "Field required" message rather than serde's.
#[derive(Deserialize)]
struct MessagesRequest {
    model: String,
    #[serde(default)]
    messages: Option<IgnoredAny>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    tools: Option<Vec<Tool>>,
    #[serde(default)]
    tool_choice: Option<ToolChoice>,
}

#[derive(Deserialize)]
struct Tool {
    name: String,
}

#[derive(Deserialize)]
struct ToolChoice {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    name: Option<String>,
}

/// Sends a 400 `invalid_request_error`.
async fn bad_request<S>(
    conn: &mut Conn<S>,
    cfg: &MockConfig,
    message: String,
    keep_alive: bool,
) -> io::Result<Next>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ApiError::invalid_request(400, message)
        .send(conn, cfg.api, &[], keep_alive)
        .await?;
    Ok(Next::KeepAlive)
}

/// Answers the generation route.
pub(crate) async fn messages<S>(
    conn: &mut Conn<S>,
    request: &Request,
    cfg: &MockConfig,
) -> io::Result<Next>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let keep_alive = request.keep_alive;
    if request.header("anthropic-version").is_none() {
        let message = "anthropic-version: header is required".to_owned();
        return bad_request(conn, cfg, message, keep_alive).await;
    }
    let parsed: MessagesRequest = match serde_json::from_slice(&request.body) {
        Ok(parsed) => parsed,
        Err(e) => {
            let message = format!("The request body is not valid JSON: {e}");
            return bad_request(conn, cfg, message, keep_alive).await;
        }
    };
    if parsed.messages.is_none() {
        let message = "messages: Field required".to_owned();
        return bad_request(conn, cfg, message, keep_alive).await;
    }
    let Some(max_tokens) = parsed.max_tokens else {
        let message = "max_tokens: Field required".to_owned();
        return bad_request(conn, cfg, message, keep_alive).await;
    };
    let tool = match called_tool(&parsed, cfg) {
        Ok(tool) => tool,
        Err(message) => return bad_request(conn, cfg, message, keep_alive).await,
    };
    if let Some(next) = answer_failure(conn, cfg, keep_alive).await? {
        return Ok(next);
    }
    let answer = match tool {
        Some(name) => Answer::ToolUse {
            id: format!("toolu_mock{:016x}", rand::random::<u64>()),
            name,
        },
        None => {
            // A budget below the configured length cuts the text, as a real model stops there.
            let budget = u32::try_from(max_tokens).unwrap_or(u32::MAX);
            Answer::Text {
                tokens: cfg.tokens.min(budget),
                cut: budget < cfg.tokens,
            }
        }
    };
    let message = Message {
        id: format!("msg_mock{:016x}", rand::random::<u64>()),
        model: parsed.model,
        input_tokens: generate::prompt_tokens(&request.body),
        answer,
        reported_usage: cfg.reported_usage.clone(),
    };
    if parsed.stream.unwrap_or(false) {
        stream(conn, &message, cfg, keep_alive).await
    } else {
        let body = message.response().to_string().into_bytes();
        send_whole(conn, cfg, message.output_tokens(), body, keep_alive).await
    }
}

/// The tool the answer calls, if any: the named one for `{"type":"tool"}`, the first offered
/// for `{"type":"any"}` (or for any choice but `none` when [`MockConfig::tool_use`] forces it).
/// Without `tools` the answer is text whatever the choice says.
fn called_tool(request: &MessagesRequest, cfg: &MockConfig) -> Result<Option<String>, String> {
    let first = request
        .tools
        .as_ref()
        .and_then(|tools| tools.first())
        .map(|tool| tool.name.clone());
    let Some(first) = first else {
        return Ok(None);
    };
    let kind = request
        .tool_choice
        .as_ref()
        .map(|choice| choice.kind.as_str());
    match kind {
        Some("tool") => request
            .tool_choice
            .as_ref()
            .and_then(|choice| choice.name.clone())
            .map(Some)
            .ok_or_else(|| "tool_choice.name: Field required".to_owned()),
        Some("any") => Ok(Some(first)),
        Some("none") => Ok(None),
        _ if cfg.tool_use => Ok(Some(first)),
        _ => Ok(None),
    }
}

/// What the assistant answers.
enum Answer {
    /// `tokens` generated tokens; `cut` when `max_tokens` stopped them.
    Text { tokens: u32, cut: bool },
    /// A call of tool `name` with input [`TOOL_INPUT`].
    ToolUse { id: String, name: String },
}

/// One generated message: everything needed to render it whole or as events.
struct Message {
    id: String,
    model: String,
    input_tokens: u64,
    answer: Answer,
    /// [`MockConfig::reported_usage`].
    reported_usage: Option<Value>,
}

impl Message {
    /// Output tokens: the text's tokens, or one per streamed piece of the tool input (which
    /// also paces a non-streamed tool call).
    fn output_tokens(&self) -> u32 {
        match &self.answer {
            Answer::Text { tokens, .. } => *tokens,
            Answer::ToolUse { .. } => tool_input_pieces().len().try_into().unwrap_or(u32::MAX),
        }
    }

    fn stop_reason(&self) -> &'static str {
        match self.answer {
            Answer::Text { cut: false, .. } => "end_turn",
            Answer::Text { cut: true, .. } => "max_tokens",
            Answer::ToolUse { .. } => "tool_use",
        }
    }

    fn usage(&self, output_tokens: u32) -> Value {
        if let Some(usage) = &self.reported_usage {
            return usage.clone();
        }
        json!({
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens,
        })
    }

    /// The message object; `complete` fills in the content, stop reason and final usage,
    /// otherwise it is the skeleton `message_start` carries.
    fn message(&self, complete: bool) -> Value {
        let (content, stop_reason, usage) = if complete {
            (
                json!([self.block(true)]),
                json!(self.stop_reason()),
                self.usage(self.output_tokens()),
            )
        } else {
            (json!([]), Value::Null, self.usage(1))
        };
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": null,
            "usage": usage,
        })
    }

    /// The non-streaming answer.
    fn response(&self) -> Value {
        self.message(true)
    }

    /// The content block, whole (`complete`) or empty as `content_block_start` opens it.
    fn block(&self, complete: bool) -> Value {
        match &self.answer {
            Answer::Text { tokens, .. } => {
                let text = if complete {
                    generate::text(*tokens)
                } else {
                    String::new()
                };
                json!({"type": "text", "text": text})
            }
            Answer::ToolUse { id, name } => {
                let input = if complete {
                    serde_json::from_str(TOOL_INPUT).unwrap_or_else(|_| json!({}))
                } else {
                    json!({})
                };
                json!({"type": "tool_use", "id": id, "name": name, "input": input})
            }
        }
    }

    /// Content delta `index`: a token, or a piece of the tool input.
    fn delta(&self, index: u32) -> Value {
        let delta = match &self.answer {
            Answer::Text { .. } => json!({"type": "text_delta", "text": generate::token(index)}),
            Answer::ToolUse { .. } => {
                let piece = usize::try_from(index)
                    .ok()
                    .and_then(|i| tool_input_pieces().get(i).copied())
                    .unwrap_or_default();
                json!({"type": "input_json_delta", "partial_json": piece})
            }
        };
        json!({"type": "content_block_delta", "index": 0, "delta": delta})
    }
}

/// Streaming answer: `message_start`, `content_block_start` and `ping` at once; content delta
/// `i` at `ttft + i / tokens_per_s` after the headers; then `content_block_stop`,
/// `message_delta` (stop reason, output tokens) and `message_stop`.
async fn stream<S>(
    conn: &mut Conn<S>,
    message: &Message,
    cfg: &MockConfig,
    keep_alive: bool,
) -> io::Result<Next>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(mut events) = EventStream::open(conn, cfg, keep_alive).await? else {
        return Ok(Next::Abort);
    };
    let start = json!({"type": "message_start", "message": message.message(false)});
    events
        .send(conn, Some("message_start"), &start, false)
        .await?;
    let block =
        json!({"type": "content_block_start", "index": 0, "content_block": message.block(false)});
    events
        .send(conn, Some("content_block_start"), &block, false)
        .await?;
    events
        .send(conn, Some("ping"), &json!({"type": "ping"}), false)
        .await?;
    for index in 0..events.content_events(message.output_tokens()) {
        events.pace(index).await;
        events
            .send(
                conn,
                Some("content_block_delta"),
                &message.delta(index),
                true,
            )
            .await?;
    }
    if let Some(next) = events.fail(conn, Some("content_block_delta")).await? {
        return Ok(next);
    }
    let stop = json!({"type": "content_block_stop", "index": 0});
    events
        .send(conn, Some("content_block_stop"), &stop, false)
        .await?;
    let usage = match &message.reported_usage {
        Some(usage) => usage.clone(),
        None => json!({"output_tokens": message.output_tokens()}),
    };
    let delta = json!({
        "type": "message_delta",
        "delta": {"stop_reason": message.stop_reason(), "stop_sequence": null},
        "usage": usage,
    });
    events
        .send(conn, Some("message_delta"), &delta, false)
        .await?;
    let end = json!({"type": "message_stop"});
    events.send(conn, Some("message_stop"), &end, false).await?;
    events.finish(conn).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mock_tool_input_pieces_join_to_the_input() {
        let pieces = tool_input_pieces();
        assert_eq!(pieces.len(), generate::TOOL_INPUT_PIECES);
        assert!(pieces.iter().all(|piece| !piece.is_empty()));
        assert_eq!(pieces.concat(), TOOL_INPUT);
        assert!(serde_json::from_str::<Value>(TOOL_INPUT).is_ok());
    }
}
