//! OpenAI's Responses API (`POST /v1/responses`) as a client-facing API over chat completions:
//!
//! - [`request_to_chat`]: a Responses request (with the conversation of a previous response,
//!   if it continues one) → a chat-completions request, and what the response object echoes;
//! - [`response_from_chat`]: a `chat.completion` → a `response` object, and the conversation
//!   to keep for a follow-up request;
//! - [`ResponseStream`]: `chat.completion.chunk` payloads → the Responses event stream
//!   (`response.created` … `response.completed`), one chunk at a time, every event numbered.
//!
//! Conversations are kept as chat messages (a JSON array), so a follow-up request is the kept
//! messages followed by its own input.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::{write_json_str, TranslateError};
use crate::api::json::Str;

use super::{invalid, is_string, read, unsupported};

// ---------------------------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------------------------

/// A Responses request in the pipeline's form.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponsesRequest {
    /// The equivalent chat-completions body (a stream asks for the usage chunk).
    pub chat: Vec<u8>,
    pub stream: bool,
    /// `store` (default true, as OpenAI's): keep the response for `GET` and follow-ups.
    pub store: bool,
    /// `previous_response_id`, when the request continues a stored conversation.
    pub previous_response_id: Option<String>,
    /// The conversation so far as chat messages (the kept one, then this request's input,
    /// without the instructions): what a follow-up continues from, once the answer is added.
    pub conversation: Vec<u8>,
    /// What the response object repeats of the request.
    pub echo: Echo,
}

/// The request parameters a response object carries back.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Echo {
    pub instructions: Value,
    pub max_output_tokens: Value,
    pub metadata: Value,
    pub parallel_tool_calls: Value,
    pub temperature: Value,
    pub top_p: Value,
    pub text: Value,
    pub tool_choice: Value,
    pub tools: Value,
    pub user: Value,
    pub store: bool,
    pub previous_response_id: Value,
}

#[derive(Deserialize)]
struct Top<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
    #[serde(borrow)]
    instructions: Option<&'a RawValue>,
    #[serde(borrow)]
    tools: Option<&'a RawValue>,
    #[serde(borrow)]
    tool_choice: Option<&'a RawValue>,
    #[serde(borrow)]
    text: Option<&'a RawValue>,
    #[serde(borrow)]
    max_output_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    temperature: Option<&'a RawValue>,
    #[serde(borrow)]
    top_p: Option<&'a RawValue>,
    #[serde(borrow)]
    metadata: Option<&'a RawValue>,
    #[serde(borrow)]
    stream: Option<&'a RawValue>,
    #[serde(borrow)]
    store: Option<&'a RawValue>,
    #[serde(borrow)]
    previous_response_id: Option<&'a RawValue>,
    #[serde(borrow)]
    parallel_tool_calls: Option<&'a RawValue>,
    #[serde(borrow)]
    user: Option<&'a RawValue>,
    #[serde(borrow)]
    background: Option<&'a RawValue>,
    #[serde(borrow)]
    conversation: Option<&'a RawValue>,
    #[serde(borrow)]
    prompt: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Item<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Str<'a>>,
    #[serde(borrow)]
    role: Option<Str<'a>>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    #[serde(borrow)]
    call_id: Option<&'a RawValue>,
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    arguments: Option<&'a RawValue>,
    #[serde(borrow)]
    output: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Str<'a>>,
    #[serde(borrow)]
    text: Option<&'a RawValue>,
    #[serde(borrow)]
    refusal: Option<&'a RawValue>,
    #[serde(borrow)]
    image_url: Option<&'a RawValue>,
    #[serde(borrow)]
    detail: Option<&'a RawValue>,
    #[serde(borrow)]
    file_id: Option<&'a RawValue>,
}

/// Chat messages being written: consecutive assistant text and function calls become one
/// assistant message (the chat form's parallel tool calls).
#[derive(Default)]
struct Messages {
    out: Vec<u8>,
    count: usize,
    /// An assistant message not yet written: its text and tool calls.
    assistant: Option<(String, Vec<u8>)>,
}

impl Messages {
    fn push_raw(&mut self, message: &[u8]) {
        self.flush();
        self.write(message);
    }

    fn write(&mut self, message: &[u8]) {
        if self.count > 0 {
            self.out.push(b',');
        }
        self.out.extend_from_slice(message);
        self.count += 1;
    }

    fn assistant(&mut self) -> &mut (String, Vec<u8>) {
        self.assistant.get_or_insert_with(|| (String::new(), Vec::new()))
    }

    fn flush(&mut self) {
        let Some((text, calls)) = self.assistant.take() else { return };
        let mut m = b"{\"role\":\"assistant\",\"content\":".to_vec();
        if text.is_empty() {
            m.extend_from_slice(b"null");
        } else {
            write_json_str(&mut m, &text);
        }
        if !calls.is_empty() {
            m.extend_from_slice(b",\"tool_calls\":[");
            m.extend_from_slice(&calls);
            m.push(b']');
        }
        m.push(b'}');
        self.write(&m);
    }
}

/// The text of an `output_text`/`input_text` part list or string (assistant history).
fn text_of(raw: &RawValue, param: &str) -> Result<String, TranslateError> {
    if is_string(raw) {
        return read::<Cow<str>>(raw, param, "a string").map(Cow::into_owned);
    }
    let parts: Vec<&RawValue> = read(raw, param, "a string or an array of content parts")?;
    let mut text = String::new();
    for (j, p) in parts.iter().enumerate() {
        let part: Part = read(p, &format!("{param}[{j}]"), "a content part")?;
        match (part.kind.as_deref(), part.text.or(part.refusal)) {
            (Some("output_text" | "input_text" | "text" | "refusal"), Some(t)) => text.push_str(&read::<Cow<str>>(t, param, "a string")?),
            (Some(other), _) => return Err(unsupported(format!("content part type '{other}'"))),
            (None, _) => return Err(invalid(format!("{param}[{j}].type"), "missing.")),
        }
    }
    Ok(text)
}

/// User, system or developer content → chat content (a raw string, or parts).
fn user_content(out: &mut Vec<u8>, raw: &RawValue, param: &str) -> Result<(), TranslateError> {
    if is_string(raw) {
        out.extend_from_slice(raw.get().as_bytes());
        return Ok(());
    }
    let parts: Vec<&RawValue> = read(raw, param, "a string or an array of content parts")?;
    out.push(b'[');
    for (j, p) in parts.iter().enumerate() {
        let pp = format!("{param}[{j}]");
        let part: Part = read(p, &pp, "a content part")?;
        if j > 0 {
            out.push(b',');
        }
        match part.kind.as_deref() {
            Some("input_text" | "output_text" | "text") => {
                let t = part.text.filter(|t| is_string(t)).ok_or_else(|| invalid(format!("{pp}.text"), "expected a string."))?;
                out.extend_from_slice(b"{\"type\":\"text\",\"text\":");
                out.extend_from_slice(t.get().as_bytes());
                out.push(b'}');
            }
            Some("input_image") => {
                if part.file_id.is_some() {
                    return Err(unsupported("input_image.file_id"));
                }
                let url = part.image_url.filter(|u| is_string(u)).ok_or_else(|| invalid(format!("{pp}.image_url"), "expected a URL string."))?;
                out.extend_from_slice(b"{\"type\":\"image_url\",\"image_url\":{\"url\":");
                out.extend_from_slice(url.get().as_bytes());
                if let Some(d) = part.detail.filter(|d| is_string(d)) {
                    out.extend_from_slice(b",\"detail\":");
                    out.extend_from_slice(d.get().as_bytes());
                }
                out.extend_from_slice(b"}}");
            }
            Some(other) => return Err(unsupported(format!("content part type '{other}'"))),
            None => return Err(invalid(format!("{pp}.type"), "missing.")),
        }
    }
    out.push(b']');
    Ok(())
}

/// Earlier output items that `item_reference` input items name, by item id (the raw item
/// JSON as its response kept it).
pub type References = std::collections::HashMap<String, String>;

/// The ids `item_reference` items of a request's `input` name (to look up before
/// [`request_to_chat`]); empty when the body is not readable.
pub fn referenced_ids(body: &[u8]) -> Vec<String> {
    #[derive(Deserialize)]
    struct Input<'a> {
        #[serde(borrow)]
        input: Option<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct Ref<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<Str<'a>>,
        id: Option<String>,
    }
    let Some(input) = serde_json::from_slice::<Input>(body).ok().and_then(|i| i.input) else { return Vec::new() };
    let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(input.get()) else { return Vec::new() };
    items
        .into_iter()
        .filter_map(|i| serde_json::from_str::<Ref>(i.get()).ok())
        .filter(|r| r.kind.as_deref() == Some("item_reference"))
        .filter_map(|r| r.id)
        .collect()
}

fn input_items(m: &mut Messages, raw: &RawValue, refs: &References) -> Result<(), TranslateError> {
    if is_string(raw) {
        let mut msg = b"{\"role\":\"user\",\"content\":".to_vec();
        msg.extend_from_slice(raw.get().as_bytes());
        msg.push(b'}');
        m.push_raw(&msg);
        return Ok(());
    }
    let items: Vec<&RawValue> = read(raw, "input", "a string or an array of input items")?;
    for (i, raw) in items.iter().enumerate() {
        let param = format!("input[{i}]");
        let item: Item = read(raw, &param, "an input item")?;
        if item.kind.as_deref() == Some("item_reference") {
            #[derive(Deserialize)]
            struct Ref {
                id: Option<String>,
            }
            let id = read::<Ref>(raw, &param, "an item reference")?.id.ok_or_else(|| invalid(format!("{param}.id"), "missing."))?;
            let Some(referenced) = refs.get(&id) else {
                return Err(invalid(format!("{param}.id"), format!("no kept item '{}' (items of kept responses only).", id.chars().take(100).collect::<String>())));
            };
            let raw: &RawValue = serde_json::from_str(referenced).map_err(|_| invalid(format!("{param}.id"), "the kept item is unreadable."))?;
            input_item(m, raw, &param)?;
            continue;
        }
        input_item(m, raw, &param)?;
    }
    m.flush();
    Ok(())
}

/// One input item (not a reference).
fn input_item(m: &mut Messages, raw: &RawValue, param: &str) -> Result<(), TranslateError> {
    let param = param.to_string();
    let item: Item = read(raw, &param, "an input item")?;
    {
        match (item.kind.as_deref(), item.role.as_deref()) {
            (Some("message") | None, Some(role)) => {
                let content = item.content.ok_or_else(|| invalid(format!("{param}.content"), "missing."))?;
                match role {
                    "assistant" => {
                        let text = text_of(content, &format!("{param}.content"))?;
                        m.assistant().0.push_str(&text);
                    }
                    "user" | "system" | "developer" => {
                        // `developer` is the newer name of `system`; backends know the latter.
                        let role = if role == "user" { "user" } else { "system" };
                        let mut msg = format!("{{\"role\":\"{role}\",\"content\":").into_bytes();
                        user_content(&mut msg, content, &format!("{param}.content"))?;
                        msg.push(b'}');
                        m.push_raw(&msg);
                    }
                    _ => return Err(invalid(format!("{param}.role"), "expected 'user', 'assistant', 'system' or 'developer'.")),
                }
            }
            (Some("function_call"), _) => {
                let id = item.call_id.filter(|c| is_string(c)).ok_or_else(|| invalid(format!("{param}.call_id"), "expected a string."))?;
                let name = item.name.filter(|c| is_string(c)).ok_or_else(|| invalid(format!("{param}.name"), "expected a string."))?;
                let args = item.arguments.filter(|c| is_string(c)).ok_or_else(|| invalid(format!("{param}.arguments"), "expected a string."))?;
                let calls = &mut m.assistant().1;
                if !calls.is_empty() {
                    calls.push(b',');
                }
                calls.extend_from_slice(format!("{{\"id\":{},\"type\":\"function\",\"function\":{{\"name\":{},\"arguments\":{}}}}}", id.get(), name.get(), args.get()).as_bytes());
            }
            (Some("function_call_output"), _) => {
                let id = item.call_id.filter(|c| is_string(c)).ok_or_else(|| invalid(format!("{param}.call_id"), "expected a string."))?;
                let output = item.output.ok_or_else(|| invalid(format!("{param}.output"), "missing."))?;
                let mut msg = format!("{{\"role\":\"tool\",\"tool_call_id\":{},\"content\":", id.get()).into_bytes();
                if is_string(output) {
                    msg.extend_from_slice(output.get().as_bytes());
                } else {
                    write_json_str(&mut msg, &text_of(output, &format!("{param}.output"))?);
                }
                msg.push(b'}');
                m.push_raw(&msg);
            }
            // The model's own reasoning has no chat equivalent; the answer is the same without it.
            (Some("reasoning"), _) => {}
            (Some(other), _) => return Err(unsupported(format!("input item type '{other}'"))),
            (None, None) => return Err(invalid(format!("{param}.type"), "missing.")),
        }
    }
    Ok(())
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
    parameters: Option<&'a RawValue>,
    strict: Option<bool>,
}

fn write_tools(out: &mut Vec<u8>, raw: &RawValue) -> Result<(), TranslateError> {
    let tools: Vec<&RawValue> = read(raw, "tools", "an array of tools")?;
    if tools.is_empty() {
        return Ok(());
    }
    out.extend_from_slice(b",\"tools\":[");
    for (k, t) in tools.iter().enumerate() {
        let param = format!("tools[{k}]");
        let tool: InTool = read(t, &param, "a tool object")?;
        match tool.kind.as_deref() {
            Some("function") => {}
            // Hosted tools (web search, file search, computer use, MCP, …) run at OpenAI.
            Some(other) => return Err(unsupported(format!("tool type '{other}'"))),
            None => return Err(invalid(format!("{param}.type"), "missing.")),
        }
        let name = tool.name.filter(|n| is_string(n)).ok_or_else(|| invalid(format!("{param}.name"), "expected a string."))?;
        if k > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"type\":\"function\",\"function\":{\"name\":");
        out.extend_from_slice(name.get().as_bytes());
        if let Some(d) = tool.description.filter(|d| is_string(d)) {
            out.extend_from_slice(b",\"description\":");
            out.extend_from_slice(d.get().as_bytes());
        }
        if let Some(p) = tool.parameters.filter(|p| p.get().starts_with('{')) {
            out.extend_from_slice(b",\"parameters\":");
            out.extend_from_slice(p.get().as_bytes());
        }
        if let Some(s) = tool.strict {
            out.extend_from_slice(format!(",\"strict\":{s}").as_bytes());
        }
        out.extend_from_slice(b"}}");
    }
    out.push(b']');
    Ok(())
}

fn write_tool_choice(out: &mut Vec<u8>, raw: &RawValue) -> Result<(), TranslateError> {
    out.extend_from_slice(b",\"tool_choice\":");
    if is_string(raw) {
        match read::<Cow<str>>(raw, "tool_choice", "a string")?.as_ref() {
            "auto" | "none" | "required" => out.extend_from_slice(raw.get().as_bytes()),
            _ => return Err(invalid("tool_choice", "expected 'auto', 'none', 'required' or a function.")),
        }
        return Ok(());
    }
    #[derive(Deserialize)]
    struct Choice<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<Str<'a>>,
        #[serde(borrow)]
        name: Option<&'a RawValue>,
    }
    let c: Choice = read(raw, "tool_choice", "a string or an object")?;
    match (c.kind.as_deref(), c.name.filter(|n| is_string(n))) {
        (Some("function"), Some(name)) => {
            out.extend_from_slice(format!("{{\"type\":\"function\",\"function\":{{\"name\":{}}}}}", name.get()).as_bytes());
            Ok(())
        }
        (Some("function"), None) => Err(invalid("tool_choice.name", "expected a string.")),
        (Some(other), _) => Err(unsupported(format!("tool_choice type '{other}'"))),
        (None, _) => Err(invalid("tool_choice.type", "missing.")),
    }
}

/// `text.format` → `response_format`.
fn write_text_format(out: &mut Vec<u8>, raw: &RawValue) -> Result<(), TranslateError> {
    #[derive(Deserialize)]
    struct Text<'a> {
        #[serde(borrow)]
        format: Option<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct Format<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<Str<'a>>,
        #[serde(borrow)]
        name: Option<&'a RawValue>,
        #[serde(borrow)]
        schema: Option<&'a RawValue>,
        #[serde(borrow)]
        description: Option<&'a RawValue>,
        strict: Option<bool>,
    }
    let text: Text = read(raw, "text", "an object")?;
    let Some(format) = text.format else { return Ok(()) };
    let f: Format = read(format, "text.format", "an object")?;
    match f.kind.as_deref() {
        Some("text") => Ok(()),
        Some("json_object") => {
            out.extend_from_slice(b",\"response_format\":{\"type\":\"json_object\"}");
            Ok(())
        }
        Some("json_schema") => {
            let name = f.name.filter(|n| is_string(n)).ok_or_else(|| invalid("text.format.name", "expected a string."))?;
            let schema = f.schema.filter(|s| s.get().starts_with('{')).ok_or_else(|| invalid("text.format.schema", "expected an object."))?;
            out.extend_from_slice(b",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":");
            out.extend_from_slice(name.get().as_bytes());
            out.extend_from_slice(b",\"schema\":");
            out.extend_from_slice(schema.get().as_bytes());
            if let Some(d) = f.description.filter(|d| is_string(d)) {
                out.extend_from_slice(b",\"description\":");
                out.extend_from_slice(d.get().as_bytes());
            }
            if let Some(s) = f.strict {
                out.extend_from_slice(format!(",\"strict\":{s}").as_bytes());
            }
            out.extend_from_slice(b"}}");
            Ok(())
        }
        Some(other) => Err(unsupported(format!("text.format type '{other}'"))),
        None => Err(invalid("text.format.type", "missing.")),
    }
}

fn value_of(raw: Option<&RawValue>) -> Value {
    raw.and_then(|r| serde_json::from_str(r.get()).ok()).unwrap_or(Value::Null)
}

/// Converts a Responses request into the chat-completions request joule routes; `history` is
/// the kept conversation of `previous_response_id` (chat messages, a JSON array), if any.
///
/// Mapping: `instructions` → a `system` message first (a previous response's instructions are
/// not carried over, as OpenAI does); then the history; then `input` — a string is one user
/// message; items: messages (`input_text` → text parts, `input_image` with a URL →
/// `image_url` parts, `developer` → `system`; assistant `output_text` joined into one
/// string), `function_call` items (consecutive ones, and assistant text before them, form one
/// assistant message with `tool_calls`), `function_call_output` → `tool` messages;
/// `reasoning` items are dropped; an `item_reference` is the kept output item it names (from
/// `refs`, which the caller looked up: [`referenced_ids`]). `tools` (function tools only), `tool_choice`
/// (`auto`/`none`/`required`/a function), `text.format` (`json_schema` → `response_format`
/// `json_schema`, `json_object` likewise, `text` nothing), `max_output_tokens` →
/// `max_tokens`, `temperature`, `top_p`, `parallel_tool_calls`, `user`, and `stream` (with
/// the usage chunk). `metadata` is only echoed; `reasoning`, `include`, `truncation`,
/// `service_tier` and other members are ignored.
///
/// # Errors
/// [`TranslateError::Invalid`] for a body that is not a JSON object, a missing or non-string
/// `model`, missing `input` (without `previous_response_id`), items or parts lacking what
/// their type needs, or members of the wrong type; [`TranslateError::Unsupported`] naming a
/// hosted tool type (`web_search_preview`, `file_search`, …), an input item or content part
/// type other than those above (an `item_reference` not in `refs` is [`TranslateError::Invalid`]), `input_image` by `file_id`, `background: true`,
/// `conversation` and `prompt`.
pub fn request_to_chat(body: &[u8], history: Option<&[u8]>, refs: &References) -> Result<ResponsesRequest, TranslateError> {
    let text = std::str::from_utf8(body).map_err(|e| invalid("body", format!("not UTF-8 (byte {}).", e.valid_up_to())))?;
    if !text.trim_start().starts_with('{') {
        return Err(invalid("body", "expected a JSON object."));
    }
    let top: Top = serde_json::from_str(text).map_err(|e| invalid("body", format!("could not be parsed: {e}.")))?;
    let model = top.model.filter(|m| is_string(m)).ok_or_else(|| invalid("model", "missing; expected a string."))?;
    for (name, raw) in [("conversation", top.conversation), ("prompt", top.prompt)] {
        if raw.is_some() {
            return Err(unsupported(name));
        }
    }
    if top.background.is_some_and(|b| b.get() == "true") {
        return Err(unsupported("background"));
    }
    let flag = |raw: Option<&RawValue>, name: &str, default: bool| -> Result<bool, TranslateError> {
        match raw {
            None => Ok(default),
            Some(r) => read::<Option<bool>>(r, name, "a boolean").map(|b| b.unwrap_or(default)),
        }
    };
    let stream = flag(top.stream, "stream", false)?;
    let store = flag(top.store, "store", true)?;
    let previous_response_id = match top.previous_response_id {
        Some(r) if r.get() != "null" => Some(read::<String>(r, "previous_response_id", "a string")?),
        _ => None,
    };

    let mut conv = Messages::default();
    if let Some(h) = history {
        let kept: Vec<&RawValue> = serde_json::from_slice(h).map_err(|_| invalid("previous_response_id", "the kept conversation is unreadable."))?;
        for m in kept {
            conv.push_raw(m.get().as_bytes());
        }
    }
    match top.input {
        Some(raw) => input_items(&mut conv, raw, refs)?,
        None if previous_response_id.is_none() => return Err(invalid("input", "missing.")),
        None => {}
    }
    conv.flush();
    if conv.count == 0 {
        return Err(invalid("input", "at least one input item is required."));
    }

    let mut out = Vec::with_capacity(body.len() + 256);
    out.extend_from_slice(b"{\"model\":");
    out.extend_from_slice(model.get().as_bytes());
    out.extend_from_slice(b",\"messages\":[");
    if let Some(i) = top.instructions.filter(|i| i.get() != "null") {
        if !is_string(i) {
            return Err(invalid("instructions", "expected a string."));
        }
        out.extend_from_slice(b"{\"role\":\"system\",\"content\":");
        out.extend_from_slice(i.get().as_bytes());
        out.extend_from_slice(b"},");
    }
    out.extend_from_slice(&conv.out);
    out.push(b']');
    if let Some(raw) = top.max_output_tokens.filter(|r| r.get() != "null") {
        match serde_json::from_str::<u64>(raw.get()) {
            Ok(n) if n >= 1 => out.extend_from_slice(format!(",\"max_tokens\":{n}").as_bytes()),
            _ => return Err(invalid("max_output_tokens", "expected a positive integer.")),
        }
    }
    for (name, raw) in [("temperature", top.temperature), ("top_p", top.top_p)] {
        if let Some(r) = raw.filter(|r| r.get() != "null") {
            read::<f64>(r, name, "a number")?;
            out.extend_from_slice(format!(",\"{name}\":{}", r.get()).as_bytes());
        }
    }
    if let Some(r) = top.parallel_tool_calls.filter(|r| r.get() != "null") {
        read::<bool>(r, "parallel_tool_calls", "a boolean")?;
        out.extend_from_slice(format!(",\"parallel_tool_calls\":{}", r.get()).as_bytes());
    }
    if let Some(u) = top.user.filter(|u| is_string(u)) {
        out.extend_from_slice(b",\"user\":");
        out.extend_from_slice(u.get().as_bytes());
    }
    if let Some(t) = top.tools {
        write_tools(&mut out, t)?;
    }
    if let Some(t) = top.tool_choice.filter(|r| r.get() != "null") {
        write_tool_choice(&mut out, t)?;
    }
    if let Some(t) = top.text.filter(|r| r.get() != "null") {
        write_text_format(&mut out, t)?;
    }
    if stream {
        out.extend_from_slice(b",\"stream\":true,\"stream_options\":{\"include_usage\":true}");
    }
    out.push(b'}');

    let mut conversation = b"[".to_vec();
    conversation.extend_from_slice(&conv.out);
    conversation.push(b']');
    let text_echo = match value_of(top.text) {
        Value::Null => json!({"format": {"type": "text"}}),
        v => v,
    };
    let echo = Echo {
        instructions: value_of(top.instructions),
        max_output_tokens: value_of(top.max_output_tokens),
        metadata: match value_of(top.metadata) {
            Value::Null => json!({}),
            v => v,
        },
        parallel_tool_calls: match value_of(top.parallel_tool_calls) {
            Value::Null => Value::Bool(true),
            v => v,
        },
        temperature: value_of(top.temperature),
        top_p: value_of(top.top_p),
        text: text_echo,
        tool_choice: match value_of(top.tool_choice) {
            Value::Null => json!("auto"),
            v => v,
        },
        tools: match value_of(top.tools) {
            Value::Null => json!([]),
            v => v,
        },
        user: value_of(top.user),
        store,
        previous_response_id: previous_response_id.clone().map_or(Value::Null, Value::String),
    };
    Ok(ResponsesRequest { chat: out, stream, store, previous_response_id, conversation, echo })
}

// ---------------------------------------------------------------------------------------------
// Response objects
// ---------------------------------------------------------------------------------------------

/// Who the response is, as the caller decides: its id, time and the model the client asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    /// `resp_…`.
    pub id: String,
    /// Unix seconds.
    pub created_at: u64,
    /// The catalog model.
    pub model: String,
    pub echo: Echo,
}

/// What an answer said, accumulated (whole or from a stream).
#[derive(Debug, Clone, Default, PartialEq)]
struct Said {
    text: String,
    /// (call id, name, arguments) per tool call, in order.
    calls: Vec<(String, String, String)>,
    finish: Option<String>,
    usage: Option<Value>,
}

impl Meta {
    /// The id of the output message item.
    fn message_id(&self) -> String {
        format!("msg_{}", self.id.trim_start_matches("resp_"))
    }

    fn call_item_id(&self, k: usize) -> String {
        format!("fc_{}_{k}", self.id.trim_start_matches("resp_"))
    }

    fn message_item(&self, text: &str, status: &str) -> Value {
        let content = if status == "in_progress" {
            json!([])
        } else {
            json!([{"type": "output_text", "text": text, "annotations": [], "logprobs": []}])
        };
        json!({"type": "message", "id": self.message_id(), "status": status, "role": "assistant", "content": content})
    }

    fn call_item(&self, k: usize, call: &(String, String, String), status: &str) -> Value {
        json!({"type": "function_call", "id": self.call_item_id(k), "call_id": call.0, "name": call.1, "arguments": call.2, "status": status})
    }

    /// The response object; `said` is `None` while in progress.
    fn object(&self, said: Option<&Said>) -> Value {
        let e = &self.echo;
        let (status, incomplete, output, usage) = match said {
            None => ("in_progress", Value::Null, json!([]), Value::Null),
            Some(s) => {
                let (status, incomplete) = match s.finish.as_deref() {
                    Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
                    Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
                    _ => ("completed", Value::Null),
                };
                let mut output = Vec::new();
                if !s.text.is_empty() || s.calls.is_empty() {
                    output.push(self.message_item(&s.text, "completed"));
                }
                for (k, c) in s.calls.iter().enumerate() {
                    output.push(self.call_item(k, c, "completed"));
                }
                (status, incomplete, Value::Array(output), s.usage.clone().unwrap_or(Value::Null))
            }
        };
        json!({
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "background": false, "error": null, "incomplete_details": incomplete,
            "instructions": e.instructions, "max_output_tokens": e.max_output_tokens,
            "model": self.model, "output": output, "parallel_tool_calls": e.parallel_tool_calls,
            "previous_response_id": e.previous_response_id, "reasoning": {"effort": null, "summary": null},
            "service_tier": "default", "store": e.store, "temperature": e.temperature.as_f64().map_or(json!(1.0), |t| json!(t)),
            "text": e.text, "tool_choice": e.tool_choice, "tools": e.tools,
            "top_p": e.top_p.as_f64().map_or(json!(1.0), |t| json!(t)), "truncation": "disabled",
            "usage": usage, "user": e.user, "metadata": e.metadata,
        })
    }
}

/// The Responses `usage` for a chat `usage` object: tokens renamed, cached tokens in the
/// details, joule's `cost` and `cost_details` carried over.
fn usage_of(chat: &Value) -> Option<Value> {
    let u = chat.as_object()?;
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let (input, output) = (n("prompt_tokens"), n("completion_tokens"));
    let cached = u.get("prompt_tokens_details").and_then(|d| d.get("cached_tokens")).and_then(Value::as_u64).unwrap_or(0);
    let reasoning = u.get("completion_tokens_details").and_then(|d| d.get("reasoning_tokens")).and_then(Value::as_u64).unwrap_or(0);
    let mut usage = Map::new();
    usage.insert("input_tokens".into(), json!(input));
    usage.insert("input_tokens_details".into(), json!({"cached_tokens": cached}));
    usage.insert("output_tokens".into(), json!(output));
    usage.insert("output_tokens_details".into(), json!({"reasoning_tokens": reasoning}));
    usage.insert("total_tokens".into(), json!(input.saturating_add(output)));
    for k in ["cost", "cost_details"] {
        if let Some(v) = u.get(k) {
            usage.insert(k.into(), v.clone());
        }
    }
    Some(Value::Object(usage))
}

#[derive(Deserialize)]
struct Completion<'a> {
    #[serde(borrow)]
    choices: Option<Vec<&'a RawValue>>,
    usage: Option<Value>,
}

#[derive(Deserialize)]
struct ChoiceOut<'a> {
    #[serde(borrow)]
    message: Option<&'a RawValue>,
    #[serde(borrow)]
    delta: Option<&'a RawValue>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct MessageOut<'a> {
    #[serde(borrow)]
    content: Option<Str<'a>>,
    #[serde(borrow)]
    refusal: Option<Str<'a>>,
    tool_calls: Option<Vec<CallOut>>,
}

#[derive(Deserialize)]
struct CallOut {
    index: Option<u64>,
    id: Option<String>,
    function: Option<FunctionOut>,
}

#[derive(Deserialize)]
struct FunctionOut {
    name: Option<String>,
    arguments: Option<String>,
}

/// The chat message of an answer, for the kept conversation.
fn assistant_message(said: &Said) -> Vec<u8> {
    let calls: Vec<Value> = said
        .calls
        .iter()
        .map(|(id, name, args)| json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}}))
        .collect();
    let mut m = json!({"role": "assistant", "content": if said.text.is_empty() { Value::Null } else { Value::String(said.text.clone()) }});
    if !calls.is_empty() {
        m["tool_calls"] = Value::Array(calls);
    }
    m.to_string().into_bytes()
}

/// A finished response: the object the client gets, and the conversation to keep.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub object: Vec<u8>,
    /// The request's conversation with the answer appended (chat messages).
    pub conversation: Vec<u8>,
}

fn finished(meta: &Meta, said: &Said, conversation: &[u8]) -> Finished {
    let object = meta.object(Some(said)).to_string().into_bytes();
    // `conversation` is a JSON array written by `request_to_chat`: `[…]`.
    let mut conv = conversation.strip_suffix(b"]").unwrap_or(b"[").to_vec();
    if conv.len() > 1 {
        conv.push(b',');
    }
    conv.extend_from_slice(&assistant_message(said));
    conv.push(b']');
    Finished { object, conversation: conv }
}

/// Converts a `chat.completion` (2xx) into a response object: the first choice's text (or
/// refusal) as one `message` item with an `output_text` part, its tool calls as
/// `function_call` items; `status` `completed`, or `incomplete` with `incomplete_details.reason`
/// `max_output_tokens` (finish `length`) or `content_filter`; `usage` with `input_tokens`,
/// `output_tokens`, `total_tokens`, their details, and joule's cost.
///
/// # Errors
/// [`TranslateError::Malformed`] when the body is not a chat completion with a `choices` array.
pub fn response_from_chat(body: &[u8], meta: &Meta, conversation: &[u8]) -> Result<Finished, TranslateError> {
    let malformed = |m: &str| TranslateError::Malformed { message: m.to_string() };
    let c: Completion = serde_json::from_slice(body).map_err(|_| malformed("the answer is not a chat completion"))?;
    let choices = c.choices.ok_or_else(|| malformed("the answer has no 'choices'"))?;
    let mut said = Said { usage: c.usage.as_ref().and_then(usage_of), ..Said::default() };
    if let Some(raw) = choices.first() {
        let choice: ChoiceOut = serde_json::from_str(raw.get()).map_err(|_| malformed("a choice could not be read"))?;
        said.finish = choice.finish_reason;
        if let Some(m) = choice.message {
            let m: MessageOut = serde_json::from_str(m.get()).map_err(|_| malformed("the message could not be read"))?;
            said.text = m.content.or(m.refusal).map(Str::into_owned).unwrap_or_default();
            for (k, call) in m.tool_calls.unwrap_or_default().into_iter().enumerate() {
                let f = call.function.unwrap_or(FunctionOut { name: None, arguments: None });
                said.calls.push((call.id.unwrap_or_else(|| format!("call_{k}")), f.name.unwrap_or_default(), f.arguments.unwrap_or_default()));
            }
        }
    }
    Ok(finished(meta, &said, conversation))
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

/// The open output item of a [`ResponseStream`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    None,
    Message,
    /// A function call: its index in `Said::calls`.
    Call(usize),
}

/// Converts a stream of `chat.completion.chunk` payloads into the Responses event stream as
/// each chunk arrives: `response.created` and `response.in_progress` first; text → a
/// `message` item (`response.output_item.added`, `response.content_part.added`, then one
/// `response.output_text.delta` per chunk); a tool call → a `function_call` item
/// (`response.output_item.added`, `response.function_call_arguments.delta` per piece); an
/// item is finished (`…text.done`, `…content_part.done` / `…arguments.done`, then
/// `response.output_item.done`) when another starts or the stream ends; at `[DONE]`,
/// `response.completed` (or `response.incomplete`) with the whole response and usage. Every
/// event carries its `sequence_number`.
#[derive(Debug)]
pub struct ResponseStream {
    meta: Meta,
    conversation: Vec<u8>,
    seq: u64,
    started: bool,
    open: Open,
    said: Said,
    /// Output index of each item so far (message first if it came first).
    items: Vec<Open>,
    /// Said::calls index by the chunk's tool-call index.
    call_index: Vec<(u64, usize)>,
}

impl ResponseStream {
    /// A stream for the response `meta`, continuing `conversation` (from the request).
    pub fn new(meta: Meta, conversation: Vec<u8>) -> Self {
        ResponseStream { meta, conversation, seq: 0, started: false, open: Open::None, said: Said::default(), items: Vec::new(), call_index: Vec::new() }
    }

    fn emit(&mut self, out: &mut Vec<u8>, kind: &str, mut data: Value) {
        if let Some(o) = data.as_object_mut() {
            o.insert("type".into(), json!(kind));
            o.insert("sequence_number".into(), json!(self.seq));
        }
        self.seq += 1;
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        out.extend_from_slice(data.to_string().as_bytes());
        out.extend_from_slice(b"\n\n");
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        let r = self.meta.object(None);
        self.emit(out, "response.created", json!({"response": r}));
        self.emit(out, "response.in_progress", json!({"response": r}));
    }

    fn output_index(&self, item: Open) -> usize {
        self.items.iter().position(|i| *i == item).unwrap_or(self.items.len())
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        let open = std::mem::replace(&mut self.open, Open::None);
        let index = self.output_index(open);
        match open {
            Open::None => {}
            Open::Message => {
                let id = self.meta.message_id();
                let text = self.said.text.clone();
                let part = json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
                self.emit(out, "response.output_text.done", json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": []}));
                self.emit(out, "response.content_part.done", json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}));
                let item = self.meta.message_item(&text, "completed");
                self.emit(out, "response.output_item.done", json!({"output_index": index, "item": item}));
            }
            Open::Call(k) => {
                let call = self.said.calls.get(k).cloned().unwrap_or_default();
                let id = self.meta.call_item_id(k);
                self.emit(out, "response.function_call_arguments.done", json!({"item_id": id, "output_index": index, "name": call.1, "arguments": call.2}));
                let item = self.meta.call_item(k, &call, "completed");
                self.emit(out, "response.output_item.done", json!({"output_index": index, "item": item}));
            }
        }
    }

    fn text(&mut self, out: &mut Vec<u8>, delta: &str) {
        if delta.is_empty() {
            return;
        }
        if self.open != Open::Message {
            if self.items.contains(&Open::Message) {
                // Text after a tool call: OpenAI's grammar has one message item; its text
                // goes on in the item already finished — here it starts no new item.
                self.said.text.push_str(delta);
                return;
            }
            self.close(out);
            self.items.push(Open::Message);
            self.open = Open::Message;
            let index = self.output_index(Open::Message);
            let id = self.meta.message_id();
            let item = self.meta.message_item("", "in_progress");
            self.emit(out, "response.output_item.added", json!({"output_index": index, "item": item}));
            self.emit(out, "response.content_part.added", json!({"item_id": id, "output_index": index, "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}));
        }
        self.said.text.push_str(delta);
        let index = self.output_index(Open::Message);
        let id = self.meta.message_id();
        self.emit(out, "response.output_text.delta", json!({"item_id": id, "output_index": index, "content_index": 0, "delta": delta, "logprobs": []}));
    }

    fn call(&mut self, out: &mut Vec<u8>, call: CallOut) {
        let key = call.index.unwrap_or(0);
        let f = call.function.unwrap_or(FunctionOut { name: None, arguments: None });
        let k = match self.call_index.iter().find(|(i, _)| *i == key) {
            Some((_, k)) => *k,
            None => {
                self.close(out);
                let k = self.said.calls.len();
                self.said.calls.push((call.id.unwrap_or_else(|| format!("call_{k}")), f.name.clone().unwrap_or_default(), String::new()));
                self.call_index.push((key, k));
                self.items.push(Open::Call(k));
                self.open = Open::Call(k);
                let index = self.output_index(Open::Call(k));
                let item = self.meta.call_item(k, &self.said.calls[k], "in_progress");
                self.emit(out, "response.output_item.added", json!({"output_index": index, "item": item}));
                k
            }
        };
        if let Some(piece) = f.arguments.filter(|a| !a.is_empty()) {
            if let Some(c) = self.said.calls.get_mut(k) {
                c.2.push_str(&piece);
            }
            let index = self.output_index(Open::Call(k));
            let id = self.meta.call_item_id(k);
            self.emit(out, "response.function_call_arguments.delta", json!({"item_id": id, "output_index": index, "delta": piece}));
        }
    }

    /// The events for one chunk's `data` (possibly none).
    pub fn chunk(&mut self, data: &str) -> Vec<u8> {
        let mut out = Vec::new();
        self.chunk_into(data, &mut out);
        out
    }

    /// [`ResponseStream::chunk`], appended to `out`.
    pub fn chunk_into(&mut self, data: &str, out: &mut Vec<u8>) {
        self.start(out);
        let Ok(c) = serde_json::from_str::<Completion>(data) else { return };
        if let Some(u) = c.usage.as_ref().and_then(usage_of) {
            self.said.usage = Some(u);
        }
        let Some(raw) = c.choices.as_ref().and_then(|cs| cs.first().copied()) else { return };
        let Ok(choice) = serde_json::from_str::<ChoiceOut>(raw.get()) else { return };
        if let Some(d) = choice.delta.and_then(|d| serde_json::from_str::<MessageOut>(d.get()).ok()) {
            if let Some(t) = d.content.as_deref().or(d.refusal.as_deref()) {
                self.text(out, t);
            }
            for call in d.tool_calls.unwrap_or_default() {
                self.call(out, call);
            }
        }
        if let Some(f) = choice.finish_reason {
            self.said.finish = Some(f);
        }
    }

    /// The closing events at the chat stream's `[DONE]`, and the finished response.
    pub fn done(&mut self) -> (Vec<u8>, Finished) {
        let mut out = Vec::new();
        self.start(&mut out);
        self.close(&mut out);
        let f = finished(&self.meta, &self.said, &self.conversation);
        let kind = match self.said.finish.as_deref() {
            Some("length" | "content_filter") => "response.incomplete",
            _ => "response.completed",
        };
        let object: Value = serde_json::from_slice(&f.object).unwrap_or(Value::Null);
        self.emit(&mut out, kind, json!({"response": object}));
        (out, f)
    }

    /// The `error` event ending a stream that failed after it started.
    pub fn error(&mut self, message: &str, code: &str) -> Vec<u8> {
        let mut out = Vec::new();
        self.start(&mut out);
        self.emit(&mut out, "error", json!({"code": code, "message": message, "param": null}));
        let mut failed = self.meta.object(Some(&self.said));
        failed["status"] = json!("failed");
        failed["error"] = json!({"code": "server_error", "message": message});
        self.emit(&mut out, "response.failed", json!({"response": failed}));
        out
    }
}

#[cfg(test)]
mod tests;
