//! The Anthropic Messages API as a client-facing API (`POST /v1/messages`): the conversions
//! between what an Anthropic SDK sends and expects and the chat-completions form the
//! pipeline routes.
//!
//! - [`request_to_chat`]: a Messages request → a chat-completions request (what joule
//!   inspects and routes, and sends to deployments that speak OpenAI), noting the first
//!   parameter a chat deployment cannot honour ([`Inbound::unsupported`]);
//! - [`with_model`]: the client's own body with only `model` replaced, for a deployment that
//!   speaks Anthropic itself (no double translation: `cache_control`, thinking, server tools
//!   and every other member reach it as sent);
//! - [`message_from_chat`]: a `chat.completion` → a Messages answer;
//! - [`EventStream`]: `chat.completion.chunk` payloads → Messages stream events, one chunk at
//!   a time;
//! - [`error_body`], [`error_from_openai`], [`error_event`]: errors in Anthropic's shape
//!   (`{"type":"error","error":{"type","message"}}`), which the SDKs map to typed
//!   exceptions by status.
//!
//! As in the outbound direction, request bodies are read as borrowed raw JSON, member by
//! member, and message text is copied as the raw JSON string the client sent.

use std::borrow::Cow;
use std::ops::Range;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{clip, invalid, is_string, number, read, string, unsupported};
use crate::api::json::Str;
use crate::api::sse;
use crate::translate::{json_str, write_json_str, TranslateError};

// ---------------------------------------------------------------------------------------------
// Request: Anthropic Messages → OpenAI chat completions
// ---------------------------------------------------------------------------------------------

/// A Messages request in the pipeline's form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// The equivalent chat-completions body (a stream asks for the usage chunk).
    pub chat: Vec<u8>,
    /// Where the `model` value (a JSON string) sits in the client's body, for [`with_model`].
    pub model_span: Range<usize>,
    /// The first member the chat form cannot carry (a server tool, a document block,
    /// `mcp_servers`, …). A deployment that speaks OpenAI cannot be sent this request (the
    /// client gets 400 naming it if no deployment that speaks Anthropic answers instead).
    pub unsupported: Option<TranslateError>,
}

/// The top-level members the conversion reads; others are ignored (see [`request_to_chat`]).
#[derive(Deserialize)]
struct Top<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    messages: Option<&'a RawValue>,
    #[serde(borrow)]
    system: Option<&'a RawValue>,
    #[serde(borrow)]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    stream: Option<&'a RawValue>,
    #[serde(borrow)]
    temperature: Option<&'a RawValue>,
    #[serde(borrow)]
    top_p: Option<&'a RawValue>,
    #[serde(borrow)]
    top_k: Option<&'a RawValue>,
    #[serde(borrow)]
    stop_sequences: Option<&'a RawValue>,
    #[serde(borrow)]
    metadata: Option<&'a RawValue>,
    #[serde(borrow)]
    tools: Option<&'a RawValue>,
    #[serde(borrow)]
    tool_choice: Option<&'a RawValue>,
    #[serde(borrow)]
    container: Option<&'a RawValue>,
    #[serde(borrow)]
    mcp_servers: Option<&'a RawValue>,
    #[serde(borrow)]
    context_management: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct InMessage<'a> {
    #[serde(borrow)]
    role: Option<Str<'a>>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct InBlock<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Str<'a>>,
    #[serde(borrow)]
    text: Option<&'a RawValue>,
    #[serde(borrow)]
    source: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
    #[serde(borrow)]
    tool_use_id: Option<&'a RawValue>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Source<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Str<'a>>,
    #[serde(borrow)]
    media_type: Option<Str<'a>>,
    #[serde(borrow)]
    data: Option<Str<'a>>,
    #[serde(borrow)]
    url: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct InTool<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Str<'a>>,
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    description: Option<&'a RawValue>,
    #[serde(borrow)]
    input_schema: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct InToolChoice<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Str<'a>>,
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    disable_parallel_tool_use: Option<bool>,
}

#[derive(Deserialize)]
struct Metadata<'a> {
    #[serde(borrow)]
    user_id: Option<&'a RawValue>,
}

/// Records the first unsupported member; later ones are not looked for.
fn note(unsupported_slot: &mut Option<TranslateError>, param: &str) {
    if unsupported_slot.is_none() {
        *unsupported_slot = Some(unsupported(param));
    }
}

/// Text of a block list: every `text` block's text, joined by `\n` (images and other types
/// are the caller's to refuse first).
fn joined_text(blocks: &[&RawValue], param: &str) -> Result<String, TranslateError> {
    let mut text = String::new();
    for (j, raw) in blocks.iter().enumerate() {
        let block: InBlock = read(raw, &format!("{param}[{j}]"), "a content block")?;
        if block.kind.as_deref() != Some("text") {
            return Err(invalid(format!("{param}[{j}].type"), "expected 'text'."));
        }
        let t: Cow<str> = read(string(block.text, &format!("{param}[{j}].text"))?, param, "a string")?;
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&t);
    }
    Ok(text)
}

/// An OpenAI `image_url` part for an Anthropic image `source`.
fn image_part(out: &mut Vec<u8>, raw: Option<&RawValue>, param: &str, unsupported_slot: &mut Option<TranslateError>) -> Result<(), TranslateError> {
    let raw = raw.ok_or_else(|| invalid(param, "an image block needs a 'source'."))?;
    let src: Source = read(raw, param, "an image source")?;
    out.extend_from_slice(b"{\"type\":\"image_url\",\"image_url\":{\"url\":");
    match src.kind.as_deref() {
        Some("base64") => {
            let (Some(media), Some(data)) = (src.media_type, src.data) else {
                return Err(invalid(param, "a base64 image needs 'media_type' and 'data'."));
            };
            write_json_str(out, &format!("data:{};base64,{}", &*media, &*data));
        }
        Some("url") => out.extend_from_slice(string(src.url, &format!("{param}.url"))?.get().as_bytes()),
        other => {
            note(unsupported_slot, &format!("image source type '{}'", other.unwrap_or("")));
            out.extend_from_slice(b"\"\"");
        }
    }
    out.extend_from_slice(b"}}");
    Ok(())
}

/// A `tool_result` block → an OpenAI `tool` message.
fn tool_message(out: &mut Vec<u8>, block: &InBlock, param: &str, unsupported_slot: &mut Option<TranslateError>) -> Result<(), TranslateError> {
    let id = string(block.tool_use_id, &format!("{param}.tool_use_id"))?;
    out.extend_from_slice(b"{\"role\":\"tool\",\"tool_call_id\":");
    out.extend_from_slice(id.get().as_bytes());
    out.extend_from_slice(b",\"content\":");
    match block.content {
        None => out.extend_from_slice(b"\"\""),
        Some(c) if is_string(c) => out.extend_from_slice(c.get().as_bytes()),
        Some(c) => {
            let blocks: Vec<&RawValue> = read(c, &format!("{param}.content"), "a string or an array of blocks")?;
            // A tool message carries text only: an image result has no place in it.
            let mut texts = Vec::with_capacity(blocks.len());
            for raw in blocks {
                let b: InBlock = read(raw, &format!("{param}.content"), "a content block")?;
                match b.kind.as_deref() {
                    Some("text") => texts.push(raw),
                    other => note(unsupported_slot, &format!("tool_result content type '{}'", other.unwrap_or(""))),
                }
            }
            write_json_str(out, &joined_text(&texts, &format!("{param}.content"))?);
        }
    }
    out.push(b'}');
    Ok(())
}

/// The arguments string of an OpenAI tool call for an Anthropic `input` object.
fn write_arguments(out: &mut Vec<u8>, input: Option<&RawValue>, param: &str) -> Result<(), TranslateError> {
    match input {
        None => out.extend_from_slice(b"\"{}\""),
        Some(i) if i.get().starts_with('{') => write_json_str(out, i.get()),
        Some(_) => return Err(invalid(format!("{param}.input"), "expected an object.")),
    }
    Ok(())
}

/// Writes the chat messages of one Anthropic message (`messages[i]`).
fn convert_message(out: &mut Vec<u8>, first: &mut bool, raw: &RawValue, i: usize, unsupported_slot: &mut Option<TranslateError>) -> Result<(), TranslateError> {
    let param = format!("messages[{i}]");
    let msg: InMessage = read(raw, &param, "a message object")?;
    let role = match msg.role.as_deref() {
        Some(r @ ("user" | "assistant")) => r.to_string(),
        _ => return Err(invalid(format!("{param}.role"), "expected 'user' or 'assistant'.")),
    };
    let content = msg.content.ok_or_else(|| invalid(format!("{param}.content"), "missing."))?;
    let mut sep = |out: &mut Vec<u8>| {
        if !std::mem::take(first) {
            out.push(b',');
        }
    };
    if is_string(content) {
        sep(out);
        out.extend_from_slice(b"{\"role\":\"");
        out.extend_from_slice(role.as_bytes());
        out.extend_from_slice(b"\",\"content\":");
        out.extend_from_slice(content.get().as_bytes());
        out.push(b'}');
        return Ok(());
    }
    let blocks: Vec<&RawValue> = read(content, &format!("{param}.content"), "a string or an array of blocks")?;
    if role == "user" {
        // Tool results first: in the chat form they are messages of their own, which must
        // follow the assistant's tool calls directly.
        let mut parts: Vec<u8> = Vec::new();
        for (j, raw) in blocks.iter().enumerate() {
            let bp = format!("{param}.content[{j}]");
            let block: InBlock = read(raw, &bp, "a content block")?;
            match block.kind.as_deref() {
                Some("tool_result") => {
                    sep(out);
                    tool_message(out, &block, &bp, unsupported_slot)?;
                }
                Some("text") => {
                    if !parts.is_empty() {
                        parts.push(b',');
                    }
                    parts.extend_from_slice(b"{\"type\":\"text\",\"text\":");
                    parts.extend_from_slice(string(block.text, &format!("{bp}.text"))?.get().as_bytes());
                    parts.push(b'}');
                }
                Some("image") => {
                    if !parts.is_empty() {
                        parts.push(b',');
                    }
                    image_part(&mut parts, block.source, &format!("{bp}.source"), unsupported_slot)?;
                }
                Some("thinking" | "redacted_thinking") => {}
                Some(other) => note(unsupported_slot, &format!("content block type '{}'", clip(other))),
                None => return Err(invalid(format!("{bp}.type"), "missing.")),
            }
        }
        if !parts.is_empty() {
            sep(out);
            out.extend_from_slice(b"{\"role\":\"user\",\"content\":[");
            out.extend_from_slice(&parts);
            out.extend_from_slice(b"]}");
        }
        return Ok(());
    }
    // Assistant: text joined into one string, tool uses into `tool_calls`; thinking is
    // the model's own and dropped. One text block (the usual case) is copied as the raw JSON
    // string the client sent; several are decoded and joined.
    let mut texts: Vec<&RawValue> = Vec::new();
    let mut calls: Vec<u8> = Vec::new();
    for (j, raw) in blocks.iter().enumerate() {
        let bp = format!("{param}.content[{j}]");
        let block: InBlock = read(raw, &bp, "a content block")?;
        match block.kind.as_deref() {
            Some("text") => texts.push(string(block.text, &format!("{bp}.text"))?),
            Some("tool_use") => {
                if !calls.is_empty() {
                    calls.push(b',');
                }
                calls.extend_from_slice(b"{\"id\":");
                calls.extend_from_slice(string(block.id, &format!("{bp}.id"))?.get().as_bytes());
                calls.extend_from_slice(b",\"type\":\"function\",\"function\":{\"name\":");
                calls.extend_from_slice(string(block.name, &format!("{bp}.name"))?.get().as_bytes());
                calls.extend_from_slice(b",\"arguments\":");
                write_arguments(&mut calls, block.input, &bp)?;
                calls.extend_from_slice(b"}}");
            }
            Some("thinking" | "redacted_thinking") => {}
            Some(other) => note(unsupported_slot, &format!("content block type '{}'", clip(other))),
            None => return Err(invalid(format!("{bp}.type"), "missing.")),
        }
    }
    sep(out);
    out.extend_from_slice(b"{\"role\":\"assistant\",\"content\":");
    match texts.as_slice() {
        [] => out.extend_from_slice(b"null"),
        [one] => out.extend_from_slice(one.get().as_bytes()),
        many => {
            let mut text = String::new();
            for raw in many {
                text.push_str(&read::<Cow<str>>(raw, &param, "a string")?);
            }
            write_json_str(out, &text);
        }
    }
    if !calls.is_empty() {
        out.extend_from_slice(b",\"tool_calls\":[");
        out.extend_from_slice(&calls);
        out.push(b']');
    }
    out.push(b'}');
    Ok(())
}

fn write_tools(out: &mut Vec<u8>, raw: &RawValue, unsupported_slot: &mut Option<TranslateError>) -> Result<(), TranslateError> {
    let tools: Vec<&RawValue> = read(raw, "tools", "an array of tools")?;
    let mut first = true;
    out.extend_from_slice(b",\"tools\":[");
    for (k, raw) in tools.iter().enumerate() {
        let param = format!("tools[{k}]");
        let tool: InTool = read(raw, &param, "a tool object")?;
        match tool.kind.as_deref() {
            None | Some("custom") => {}
            // Server tools (web search, code execution, bash, text editor, …) run at Anthropic.
            Some(other) => {
                note(unsupported_slot, &format!("tool type '{}'", clip(other)));
                continue;
            }
        }
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"type\":\"function\",\"function\":{\"name\":");
        out.extend_from_slice(string(tool.name, &format!("{param}.name"))?.get().as_bytes());
        if let Some(d) = tool.description {
            out.extend_from_slice(b",\"description\":");
            out.extend_from_slice(string(Some(d), &format!("{param}.description"))?.get().as_bytes());
        }
        let schema = tool.input_schema.filter(|s| s.get().starts_with('{')).ok_or_else(|| invalid(format!("{param}.input_schema"), "expected an object."))?;
        out.extend_from_slice(b",\"parameters\":");
        out.extend_from_slice(schema.get().as_bytes());
        out.extend_from_slice(b"}}");
    }
    out.push(b']');
    Ok(())
}

fn write_tool_choice(out: &mut Vec<u8>, raw: &RawValue) -> Result<(), TranslateError> {
    let choice: InToolChoice = read(raw, "tool_choice", "an object with a 'type'")?;
    let value = match choice.kind.as_deref() {
        Some("auto") => "\"auto\"".to_string(),
        Some("any") => "\"required\"".to_string(),
        Some("none") => "\"none\"".to_string(),
        Some("tool") => format!("{{\"type\":\"function\",\"function\":{{\"name\":{}}}}}", string(choice.name, "tool_choice.name")?.get()),
        _ => return Err(invalid("tool_choice.type", "expected 'auto', 'any', 'tool' or 'none'.")),
    };
    out.extend_from_slice(b",\"tool_choice\":");
    out.extend_from_slice(value.as_bytes());
    if choice.disable_parallel_tool_use == Some(true) {
        out.extend_from_slice(b",\"parallel_tool_calls\":false");
    }
    Ok(())
}

/// Converts a Messages request into the chat-completions request joule routes.
///
/// Mapping: `system` (a string, or text blocks joined by `\n`) → a `system` message;
/// each message in order, with `user` content blocks split into `tool` messages (one per
/// `tool_result`, first, as the chat form requires) and one `user` message of `text` and
/// `image_url` parts (base64 sources become `data:` URLs), and `assistant` blocks into one
/// message whose `content` is the text blocks concatenated and whose `tool_calls` are the
/// `tool_use` blocks (`input` as the arguments string); `max_tokens`, `temperature`,
/// `top_p`, `top_k` (which vLLM-style backends read), `stream` (a stream asks for the
/// usage chunk), `stop_sequences` → `stop`, `metadata.user_id` → `user`, custom `tools` →
/// function tools (`input_schema` → `parameters`), `tool_choice` (`auto`, `any` →
/// `required`, `tool` → the named function, `none`; `disable_parallel_tool_use` →
/// `parallel_tool_calls: false`).
///
/// Dropped, by rule: `thinking` and `redacted_thinking` blocks and the `thinking` setting
/// (the model's own reasoning has no chat equivalent; the answer is the same without it),
/// `cache_control` on any block (a caching hint), `service_tier`, a `tool_result`'s
/// `is_error`, and top-level members not listed here. Noted as [`Inbound::unsupported`]
/// (fine for a deployment that speaks Anthropic, 400 for one that speaks OpenAI): server
/// tools (a tool `type` other than `custom`), content blocks other than text, image,
/// tool use/result and thinking (documents, search results, …), image sources other than
/// base64 and URL, images inside tool results, `container`, `mcp_servers`,
/// `context_management`.
///
/// # Errors
/// [`TranslateError::Invalid`] (400) when the body is not a JSON object; `model` is
/// missing or not a string; `messages` is missing, empty or not an array; a message has a
/// role other than `user`/`assistant` or no content; `max_tokens` is missing or not a
/// positive integer; a block lacks what its type needs; or a member has the wrong type.
pub fn request_to_chat(body: &[u8]) -> Result<Inbound, TranslateError> {
    let text = std::str::from_utf8(body).map_err(|e| invalid("body", format!("not UTF-8 (byte {}).", e.valid_up_to())))?;
    if !text.trim_start().starts_with('{') {
        return Err(invalid("body", "expected a JSON object."));
    }
    let top: Top = serde_json::from_str(text).map_err(|e| invalid("body", format!("could not be parsed: {e}.")))?;
    let model = string(top.model, "model")?;
    let model_start = model.get().as_ptr() as usize - text.as_ptr() as usize;
    let model_span = model_start..model_start + model.get().len();
    let mut unsupported_slot = None;

    let mut out = Vec::with_capacity(body.len() + 256);
    out.extend_from_slice(b"{\"model\":");
    out.extend_from_slice(model.get().as_bytes());
    out.extend_from_slice(b",\"messages\":[");
    let mut first = true;
    if let Some(system) = top.system {
        let text = if is_string(system) {
            read::<Cow<str>>(system, "system", "a string")?.into_owned()
        } else {
            let blocks: Vec<&RawValue> = read(system, "system", "a string or an array of text blocks")?;
            joined_text(&blocks, "system")?
        };
        if !text.is_empty() {
            first = false;
            out.extend_from_slice(b"{\"role\":\"system\",\"content\":");
            write_json_str(&mut out, &text);
            out.push(b'}');
        }
    }
    let messages = top.messages.ok_or_else(|| invalid("messages", "missing."))?;
    let messages: Vec<&RawValue> = read(messages, "messages", "an array of messages")?;
    if messages.is_empty() {
        return Err(invalid("messages", "at least one message is required."));
    }
    for (i, raw) in messages.iter().enumerate() {
        convert_message(&mut out, &mut first, raw, i, &mut unsupported_slot)?;
    }
    out.push(b']');

    let max_tokens = top.max_tokens.ok_or_else(|| invalid("max_tokens", "missing; the Messages API requires it."))?;
    match serde_json::from_str::<u64>(max_tokens.get()) {
        Ok(n) if n >= 1 => {}
        _ => return Err(invalid("max_tokens", "expected a positive integer.")),
    }
    out.extend_from_slice(b",\"max_tokens\":");
    out.extend_from_slice(max_tokens.get().as_bytes());
    for (name, raw) in [("temperature", top.temperature), ("top_p", top.top_p), ("top_k", top.top_k)] {
        if let Some(r) = raw {
            number(r, name)?;
            out.extend_from_slice(format!(",\"{name}\":").as_bytes());
            out.extend_from_slice(r.get().as_bytes());
        }
    }
    if let Some(raw) = top.stream {
        let stream: bool = read(raw, "stream", "a boolean")?;
        if stream {
            out.extend_from_slice(b",\"stream\":true,\"stream_options\":{\"include_usage\":true}");
        }
    }
    if let Some(raw) = top.stop_sequences {
        let _: Vec<Cow<str>> = read(raw, "stop_sequences", "an array of strings")?;
        out.extend_from_slice(b",\"stop\":");
        out.extend_from_slice(raw.get().as_bytes());
    }
    if let Some(raw) = top.metadata {
        let meta: Metadata = read(raw, "metadata", "an object")?;
        if let Some(user) = meta.user_id {
            out.extend_from_slice(b",\"user\":");
            out.extend_from_slice(string(Some(user), "metadata.user_id")?.get().as_bytes());
        }
    }
    if let Some(raw) = top.tools {
        write_tools(&mut out, raw, &mut unsupported_slot)?;
    }
    if let Some(raw) = top.tool_choice {
        write_tool_choice(&mut out, raw)?;
    }
    for (name, raw) in [("container", top.container), ("mcp_servers", top.mcp_servers), ("context_management", top.context_management)] {
        if raw.is_some() {
            note(&mut unsupported_slot, name);
        }
    }
    out.push(b'}');
    Ok(Inbound { chat: out, model_span, unsupported: unsupported_slot })
}

/// The `model` of a Messages-shaped body (a count-tokens request has no `max_tokens`, so
/// [`request_to_chat`] does not apply) and where its JSON string sits.
///
/// # Errors
/// [`TranslateError::Invalid`] when the body is not a JSON object with a string `model`.
pub fn model_of(body: &[u8]) -> Result<(String, Range<usize>), TranslateError> {
    #[derive(Deserialize)]
    struct M<'a> {
        #[serde(borrow)]
        model: Option<&'a RawValue>,
    }
    let text = std::str::from_utf8(body).map_err(|_| invalid("body", "not UTF-8."))?;
    let m: M = serde_json::from_str(text).map_err(|e| invalid("body", format!("could not be parsed: {e}.")))?;
    let raw = string(m.model, "model")?;
    let start = raw.get().as_ptr() as usize - text.as_ptr() as usize;
    let name: String = read(raw, "model", "a string")?;
    Ok((name, start..start + raw.get().len()))
}

/// The client's Messages body with `model` (at `span`, from [`Inbound::model_span`]) replaced
/// by `upstream_model`; every other byte as sent.
pub fn with_model(body: &[u8], span: &Range<usize>, upstream_model: &str) -> Vec<u8> {
    let model = json_str(upstream_model);
    let (Some(head), Some(tail)) = (body.get(..span.start), body.get(span.end..)) else {
        return body.to_vec();
    };
    let mut out = Vec::with_capacity(body.len() + model.len());
    out.extend_from_slice(head);
    out.extend_from_slice(model.as_bytes());
    out.extend_from_slice(tail);
    out
}

// ---------------------------------------------------------------------------------------------
// Answers: OpenAI chat completions → Anthropic Messages
// ---------------------------------------------------------------------------------------------

/// Anthropic's `stop_reason` for OpenAI's `finish_reason`: `stop` → `end_turn` (OpenAI does
/// not say whether a stop sequence ended it), `length` → `max_tokens`, `tool_calls` and
/// `function_call` → `tool_use`, `content_filter` → `refusal`; anything else → `end_turn`.
pub fn stop_reason(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

#[derive(Deserialize)]
struct Completion<'a> {
    #[serde(borrow)]
    id: Option<Str<'a>>,
    #[serde(borrow)]
    choices: Option<Vec<&'a RawValue>>,
    #[serde(borrow)]
    usage: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct OutChoice<'a> {
    #[serde(borrow)]
    message: Option<&'a RawValue>,
    #[serde(borrow)]
    delta: Option<&'a RawValue>,
    #[serde(borrow)]
    finish_reason: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct OutMessage<'a> {
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    #[serde(borrow)]
    refusal: Option<&'a RawValue>,
    #[serde(borrow)]
    tool_calls: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize)]
struct OutCall<'a> {
    index: Option<u64>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    function: Option<OutFunction<'a>>,
}

#[derive(Deserialize)]
struct OutFunction<'a> {
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    arguments: Option<&'a RawValue>,
}

/// What an OpenAI `usage` says, in Anthropic's terms.
#[derive(Debug, Clone, Default, PartialEq)]
struct UsageOut {
    prompt: u64,
    completion: u64,
    cached: u64,
    cache_write: u64,
    /// joule's `cost` member (and its breakdown), as written into the chat usage.
    cost: Option<String>,
    cost_details: Option<String>,
}

impl UsageOut {
    fn read(raw: &RawValue) -> Option<UsageOut> {
        #[derive(Deserialize)]
        struct U<'a> {
            prompt_tokens: Option<u64>,
            completion_tokens: Option<u64>,
            prompt_tokens_details: Option<Details>,
            cache_creation_input_tokens: Option<u64>,
            #[serde(borrow)]
            cost: Option<&'a RawValue>,
            #[serde(borrow)]
            cost_details: Option<&'a RawValue>,
        }
        #[derive(Deserialize)]
        struct Details {
            cached_tokens: Option<u64>,
        }
        let u: U = serde_json::from_str(raw.get()).ok()?;
        Some(UsageOut {
            prompt: u.prompt_tokens.unwrap_or(0),
            completion: u.completion_tokens.unwrap_or(0),
            cached: u.prompt_tokens_details.and_then(|d| d.cached_tokens).unwrap_or(0),
            cache_write: u.cache_creation_input_tokens.unwrap_or(0),
            cost: u.cost.map(|c| c.get().to_string()),
            cost_details: u.cost_details.map(|c| c.get().to_string()),
        })
    }

    /// Anthropic's `usage`: `input_tokens` counts the prompt tokens neither read from nor
    /// written into a cache.
    fn json(&self) -> String {
        let cached = self.cached.min(self.prompt);
        let written = self.cache_write.min(self.prompt - cached);
        let mut s = format!(
            "{{\"input_tokens\":{},\"output_tokens\":{},\"cache_read_input_tokens\":{cached},\"cache_creation_input_tokens\":{written}",
            self.prompt - cached - written,
            self.completion
        );
        if let Some(c) = &self.cost {
            s.push_str(",\"cost\":");
            s.push_str(c);
        }
        if let Some(c) = &self.cost_details {
            s.push_str(",\"cost_details\":");
            s.push_str(c);
        }
        s.push('}');
        s
    }
}

fn answer_malformed(message: &str) -> TranslateError {
    TranslateError::Malformed { message: message.to_string() }
}

/// An Anthropic `tool_use` block's `input` for an OpenAI arguments string: the arguments
/// themselves when they are a JSON object, `{}` when empty, and otherwise (a model that wrote
/// broken JSON) `{"_raw_arguments": "<the text>"}`, so nothing the model said is lost.
fn tool_input(arguments: &str) -> String {
    let trimmed = arguments.trim();
    if trimmed.is_empty() {
        return "{}".to_string();
    }
    if trimmed.starts_with('{') && serde_json::from_str::<serde::de::IgnoredAny>(trimmed).is_ok() {
        return trimmed.to_string();
    }
    format!("{{\"_raw_arguments\":{}}}", json_str(arguments))
}

/// Appends a string member's text, if it is one (content arrays of text parts are joined).
fn push_text(text: &mut String, raw: Option<&RawValue>) {
    let Some(raw) = raw else { return };
    if is_string(raw) {
        if let Ok(t) = serde_json::from_str::<Cow<str>>(raw.get()) {
            text.push_str(&t);
        }
    } else if let Ok(parts) = serde_json::from_str::<Vec<&RawValue>>(raw.get()) {
        for p in parts {
            if let Ok(b) = serde_json::from_str::<InBlock>(p.get()) {
                push_text(text, b.text);
            }
        }
    }
}

/// Converts a `chat.completion` (2xx) into a Messages answer: the first choice's text (its
/// `content`, or its `refusal`) as one `text` block, its `tool_calls` as `tool_use` blocks
/// (see [`tool_input`]), `stop_reason` by [`stop_reason`], `model` as given (the model the
/// client asked for), the upstream's `id`, and `usage` with `input_tokens` = prompt tokens
/// not served from a cache, `cache_read_input_tokens` = cached ones, `output_tokens`, and
/// joule's `cost` carried over.
///
/// # Errors
/// [`TranslateError::Malformed`] when the body is not a JSON object with a `choices` array.
pub fn message_from_chat(body: &[u8], model: &str) -> Result<Vec<u8>, TranslateError> {
    let c: Completion = serde_json::from_slice(body).map_err(|_| answer_malformed("the answer is not a chat completion"))?;
    let choices = c.choices.ok_or_else(|| answer_malformed("the answer has no 'choices'"))?;
    let choice = match choices.first() {
        Some(raw) => Some(serde_json::from_str::<OutChoice>(raw.get()).map_err(|_| answer_malformed("a choice could not be read"))?),
        None => None,
    };
    let mut content = String::new();
    let mut finish = None;
    let mut text = String::new();
    let mut tool_blocks = Vec::new();
    if let Some(choice) = &choice {
        finish = choice.finish_reason.as_deref();
        if let Some(m) = choice.message {
            let m: OutMessage = serde_json::from_str(m.get()).map_err(|_| answer_malformed("the message could not be read"))?;
            push_text(&mut text, m.content);
            if text.is_empty() {
                push_text(&mut text, m.refusal);
            }
            for (k, raw) in m.tool_calls.unwrap_or_default().into_iter().enumerate() {
                let call: OutCall = serde_json::from_str(raw.get()).map_err(|_| answer_malformed("a tool call could not be read"))?;
                let f = call.function.ok_or_else(|| answer_malformed("a tool call has no function"))?;
                let args: Cow<str> = match f.arguments {
                    Some(a) if is_string(a) => serde_json::from_str(a.get()).map_err(|_| answer_malformed("bad arguments"))?,
                    _ => Cow::Borrowed(""),
                };
                let id = call.id.filter(|i| is_string(i)).map_or_else(|| format!("\"toolu_joule_{k}\""), |i| i.get().to_string());
                let name = f.name.filter(|n| is_string(n)).map_or("\"\"", |n| n.get());
                tool_blocks.push(format!("{{\"type\":\"tool_use\",\"id\":{id},\"name\":{name},\"input\":{}}}", tool_input(&args)));
            }
        }
    }
    if !text.is_empty() {
        content.push_str("{\"type\":\"text\",\"text\":");
        content.push_str(&json_str(&text));
        content.push('}');
    }
    for b in tool_blocks {
        if !content.is_empty() {
            content.push(',');
        }
        content.push_str(&b);
    }
    let usage = c.usage.and_then(UsageOut::read).unwrap_or_default();
    let id = c.id.as_deref().unwrap_or("msg_joule");
    Ok(format!(
        "{{\"id\":{},\"type\":\"message\",\"role\":\"assistant\",\"model\":{},\"content\":[{content}],\"stop_reason\":\"{}\",\"stop_sequence\":null,\"usage\":{}}}",
        json_str(id),
        json_str(model),
        stop_reason(finish),
        usage.json()
    )
    .into_bytes())
}

// ---------------------------------------------------------------------------------------------
// Errors in Anthropic's shape
// ---------------------------------------------------------------------------------------------

/// Anthropic's error `type` for an HTTP status (what its SDKs and tools expect beside it).
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 | 405 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        408 | 504 => "timeout_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        s if (400..500).contains(&s) => "invalid_request_error",
        _ => "api_error",
    }
}

/// `{"type":"error","error":{"type":<by status>,"message":…}}`.
pub fn error_body(status: u16, message: &str) -> Vec<u8> {
    format!("{{\"type\":\"error\",\"error\":{{\"type\":\"{}\",\"message\":{}}}}}", error_type(status), json_str(message)).into_bytes()
}

/// An OpenAI-shaped error document from a deployment (any status) in Anthropic's shape: its
/// `error.message` (clipped), or a message naming the status for any other body. Never fails.
pub fn error_from_openai(status: u16, body: &[u8]) -> Vec<u8> {
    #[derive(Deserialize)]
    struct E<'a> {
        #[serde(borrow)]
        error: Option<M<'a>>,
    }
    #[derive(Deserialize)]
    struct M<'a> {
        #[serde(borrow)]
        message: Option<Str<'a>>,
    }
    let message = serde_json::from_slice::<E>(body)
        .ok()
        .and_then(|e| e.error)
        .and_then(|m| m.message)
        .filter(|m| !m.is_empty())
        .map_or_else(|| format!("The upstream returned HTTP {status}."), |m| clip(&m).into_owned());
    error_body(status, &message)
}

/// The SSE `error` event that ends a stream whose upstream failed after it started.
pub fn error_event(message: &str) -> Vec<u8> {
    let mut out = b"event: error\ndata: ".to_vec();
    out.extend_from_slice(&error_body(500, message));
    out.extend_from_slice(b"\n\n");
    out
}

// ---------------------------------------------------------------------------------------------
// Streams: chat.completion.chunk → Messages stream events
// ---------------------------------------------------------------------------------------------

/// The open content block of an [`EventStream`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    None,
    Text(u32),
    Tool(u32),
}

/// Converts a stream of `chat.completion.chunk` payloads into Messages stream events, as
/// each chunk arrives: `message_start` before the first event; text (or refusal) deltas →
/// a `text` block's `text_delta`s; a tool call's first delta → a `tool_use` block (its
/// `id` and `name`), its argument pieces → `input_json_delta`s; a block is closed
/// (`content_block_stop`) when a block of another kind or another tool call starts. The
/// finish reason and the usage chunk are remembered; [`EventStream::done`] (at `[DONE]`)
/// closes the open block and sends `message_delta` (stop reason by [`stop_reason`], usage as
/// in [`message_from_chat`], `cost` included) and `message_stop`. Chunks that cannot be read
/// as a chat chunk produce nothing (the relay has already classified every chunk it passes).
#[derive(Debug)]
pub struct EventStream {
    model: String,
    started: bool,
    open: Open,
    next_block: u32,
    /// Block index per OpenAI tool-call index.
    tools: Vec<(u64, u32)>,
    finish: Option<&'static str>,
    usage: Option<UsageOut>,
}

/// One named event; raw JSON copied into `data` may hold line ends as whitespace, which
/// [`sse::encode_event_into`] keeps from breaking the framing.
fn event(out: &mut Vec<u8>, name: &str, data: &str) {
    sse::encode_event_into(Some(name), data, out);
}

impl EventStream {
    /// A stream answering for `model` (the model the client asked for).
    pub fn new(model: &str) -> Self {
        EventStream { model: model.to_string(), started: false, open: Open::None, next_block: 0, tools: Vec::new(), finish: None, usage: None }
    }

    fn start(&mut self, out: &mut Vec<u8>, id: Option<&str>) {
        if self.started {
            return;
        }
        self.started = true;
        let data = format!(
            "{{\"type\":\"message_start\",\"message\":{{\"id\":{},\"type\":\"message\",\"role\":\"assistant\",\"model\":{},\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{{\"input_tokens\":0,\"output_tokens\":0}}}}}}",
            json_str(id.unwrap_or("msg_joule")),
            json_str(&self.model)
        );
        event(out, "message_start", &data);
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        match std::mem::replace(&mut self.open, Open::None) {
            Open::None => {}
            Open::Text(i) | Open::Tool(i) => event(out, "content_block_stop", &format!("{{\"type\":\"content_block_stop\",\"index\":{i}}}")),
        }
    }

    fn text(&mut self, out: &mut Vec<u8>, raw: &RawValue) {
        if !is_string(raw) || raw.get() == "\"\"" {
            return;
        }
        let index = match self.open {
            Open::Text(i) => i,
            _ => {
                self.close(out);
                let i = self.next_block;
                self.next_block += 1;
                event(out, "content_block_start", &format!("{{\"type\":\"content_block_start\",\"index\":{i},\"content_block\":{{\"type\":\"text\",\"text\":\"\"}}}}"));
                self.open = Open::Text(i);
                i
            }
        };
        event(out, "content_block_delta", &format!("{{\"type\":\"content_block_delta\",\"index\":{index},\"delta\":{{\"type\":\"text_delta\",\"text\":{}}}}}", raw.get()));
    }

    fn tool(&mut self, out: &mut Vec<u8>, call: &OutCall) {
        let k = call.index.unwrap_or(0);
        let index = match self.tools.iter().find(|(t, _)| *t == k) {
            Some((_, i)) => *i,
            None => {
                self.close(out);
                let i = self.next_block;
                self.next_block += 1;
                self.tools.push((k, i));
                let id = call.id.filter(|i| is_string(i)).map_or_else(|| format!("\"toolu_joule_{k}\""), |i| i.get().to_string());
                let name = call.function.as_ref().and_then(|f| f.name).filter(|n| is_string(n)).map_or("\"\"", |n| n.get());
                event(
                    out,
                    "content_block_start",
                    &format!("{{\"type\":\"content_block_start\",\"index\":{i},\"content_block\":{{\"type\":\"tool_use\",\"id\":{id},\"name\":{name},\"input\":{{}}}}}}"),
                );
                self.open = Open::Tool(i);
                i
            }
        };
        if let Some(args) = call.function.as_ref().and_then(|f| f.arguments).filter(|a| is_string(a) && a.get() != "\"\"") {
            event(
                out,
                "content_block_delta",
                &format!("{{\"type\":\"content_block_delta\",\"index\":{index},\"delta\":{{\"type\":\"input_json_delta\",\"partial_json\":{}}}}}", args.get()),
            );
        }
    }

    /// The events for one chunk's `data` (possibly none).
    pub fn chunk(&mut self, data: &str) -> Vec<u8> {
        let mut out = Vec::new();
        self.chunk_into(data, &mut out);
        out
    }

    /// [`EventStream::chunk`], appended to `out`.
    pub fn chunk_into(&mut self, data: &str, out: &mut Vec<u8>) {
        let Ok(c) = serde_json::from_str::<Completion>(data) else { return };
        self.start(out, c.id.as_deref());
        if let Some(u) = c.usage.and_then(UsageOut::read) {
            self.usage = Some(u);
        }
        let Some(raw) = c.choices.as_ref().and_then(|cs| cs.first().copied()) else { return };
        let Ok(choice) = serde_json::from_str::<OutChoice>(raw.get()) else { return };
        if let Some(d) = choice.delta.and_then(|d| serde_json::from_str::<OutMessage>(d.get()).ok()) {
            if let Some(t) = d.content.or(d.refusal) {
                self.text(out, t);
            }
            for raw in d.tool_calls.unwrap_or_default() {
                if let Ok(call) = serde_json::from_str::<OutCall>(raw.get()) {
                    self.tool(out, &call);
                }
            }
        }
        if let Some(f) = choice.finish_reason.as_deref() {
            self.finish = Some(stop_reason(Some(f)));
            self.close(out);
        }
    }

    /// The closing events, at the chat stream's `[DONE]`.
    pub fn done(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.start(&mut out, None);
        self.close(&mut out);
        let usage = self.usage.clone().unwrap_or_default();
        let data = format!(
            "{{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"{}\",\"stop_sequence\":null}},\"usage\":{}}}",
            self.finish.unwrap_or("end_turn"),
            usage.json()
        );
        event(&mut out, "message_delta", &data);
        event(&mut out, "message_stop", "{\"type\":\"message_stop\"}");
        out
    }
}

#[cfg(test)]
mod tests;
