//! OpenAI chat completions ⇄ Anthropic Messages API, for an upstream provider that speaks
//! Anthropic (joule speaks OpenAI to its clients and converts on the way out and back):
//!
//! - [`request_to_anthropic`]: a chat-completions request body → a Messages request body;
//! - [`response_from_anthropic`]: a Messages answer → a `chat.completion` body;
//! - [`error_from_anthropic`]: an Anthropic error body → an OpenAI-shaped error body;
//! - [`StreamConverter`]: Messages stream events → `chat.completion.chunk` payloads, one
//!   event at a time.
//!
//! Request bodies can be several MiB of conversation: they are read as borrowed `&RawValue`
//! members, and message text is copied into the output as the raw JSON string the client
//! sent (never decoded and re-encoded), so a conversion costs about one copy of the body.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{json_str, write_json_str, TranslateError};
use crate::api::json::Str;

/// Longest upstream error message passed on to a client, in characters.
pub const MAX_ERROR_MESSAGE: usize = 1000;

/// Most content blocks a stream may hold open at once. Anthropic opens them one after the
/// other; the cap only bounds what a broken upstream can make the converter remember.
const MAX_OPEN_BLOCKS: usize = 64;

// ---------------------------------------------------------------------------------------------
// Request: OpenAI chat completions → Anthropic Messages
// ---------------------------------------------------------------------------------------------

/// A converted request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnthropicRequest {
    /// The Messages API request body (JSON).
    pub body: Vec<u8>,
    /// The name of the tool that stands in for `response_format: json_schema`, if the client
    /// asked for one. Pass it to [`response_from_anthropic`] or [`StreamConverter::new`]: that
    /// tool's input is the answer, and is turned back into `message.content`.
    pub forced_json_tool: Option<String>,
}

/// The top-level members of a chat request the conversion reads; every other member is
/// skipped unbuilt. `null` reads as absent. A duplicated member is refused (which copy an
/// upstream would have used is unknowable).
#[derive(Deserialize)]
struct Top<'a> {
    #[serde(borrow)]
    messages: Option<&'a RawValue>,
    #[serde(borrow)]
    stream: Option<&'a RawValue>,
    #[serde(borrow)]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    max_completion_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    temperature: Option<&'a RawValue>,
    #[serde(borrow)]
    top_p: Option<&'a RawValue>,
    #[serde(borrow)]
    stop: Option<&'a RawValue>,
    #[serde(borrow)]
    user: Option<&'a RawValue>,
    #[serde(borrow)]
    tools: Option<&'a RawValue>,
    #[serde(borrow)]
    tool_choice: Option<&'a RawValue>,
    #[serde(borrow)]
    parallel_tool_calls: Option<&'a RawValue>,
    #[serde(borrow)]
    response_format: Option<&'a RawValue>,
    #[serde(borrow)]
    n: Option<&'a RawValue>,
    #[serde(borrow)]
    logprobs: Option<&'a RawValue>,
    #[serde(borrow)]
    top_logprobs: Option<&'a RawValue>,
    #[serde(borrow)]
    presence_penalty: Option<&'a RawValue>,
    #[serde(borrow)]
    frequency_penalty: Option<&'a RawValue>,
    #[serde(borrow)]
    logit_bias: Option<&'a RawValue>,
    #[serde(borrow)]
    audio: Option<&'a RawValue>,
    #[serde(borrow)]
    modalities: Option<&'a RawValue>,
    #[serde(borrow)]
    prediction: Option<&'a RawValue>,
    #[serde(borrow)]
    functions: Option<&'a RawValue>,
    #[serde(borrow)]
    function_call: Option<&'a RawValue>,
}

/// One chat message, members borrowed. `name` and anything else is skipped.
#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    role: Option<&'a RawValue>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    #[serde(borrow)]
    tool_calls: Option<&'a RawValue>,
    #[serde(borrow)]
    tool_call_id: Option<&'a RawValue>,
}

/// One content part (`{"type":"text","text":…}`, `{"type":"image_url","image_url":…}`, …).
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
}

#[derive(Deserialize)]
struct ImageUrl<'a> {
    #[serde(borrow)]
    url: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct ToolCall<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(rename = "type", borrow)]
    kind: Option<Str<'a>>,
    #[serde(borrow)]
    function: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct FunctionCall<'a> {
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    arguments: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct Tool<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Str<'a>>,
    #[serde(borrow)]
    function: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct FunctionDef<'a> {
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    description: Option<&'a RawValue>,
    #[serde(borrow)]
    parameters: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ResponseFormat<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Str<'a>>,
    #[serde(borrow)]
    json_schema: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct JsonSchema<'a> {
    #[serde(borrow)]
    name: Option<Str<'a>>,
    #[serde(borrow)]
    description: Option<&'a RawValue>,
    #[serde(borrow)]
    schema: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct NamedChoice<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Str<'a>>,
    #[serde(borrow)]
    function: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct NameOnly<'a> {
    #[serde(borrow)]
    name: Option<&'a RawValue>,
}

use super::{invalid, is_string, read, unsupported};

/// A raw JSON string, or a 400 naming `param`.
fn string<'a>(raw: Option<&'a RawValue>, param: &str) -> Result<&'a RawValue, TranslateError> {
    match raw {
        Some(r) if is_string(r) => Ok(r),
        Some(_) => Err(invalid(param, "expected a string.")),
        None => Err(invalid(param, "missing; expected a string.")),
    }
}

/// A number, or a 400 naming `param`.
fn number(raw: &RawValue, param: &str) -> Result<f64, TranslateError> {
    read::<f64>(raw, param, "a number")
}

/// Whether a penalty-like member asks for something other than the default (0).
fn non_zero(raw: Option<&RawValue>, param: &str) -> Result<bool, TranslateError> {
    match raw {
        None => Ok(false),
        Some(r) => Ok(number(r, param)? != 0.0),
    }
}

/// Where the chat messages go: Anthropic's `messages` array of turns, written straight into
/// the output as blocks arrive. A turn is opened only when its first block is written, so a
/// message that yields no block (an empty assistant message) leaves no empty turn behind,
/// and consecutive messages whose turns have the same role merge into one turn.
struct Turns {
    out: Vec<u8>,
    /// The role of the open turn.
    open: Option<&'static str>,
    turns: usize,
}

impl Turns {
    /// Starts a block in a turn of `role`; the caller writes the block itself.
    fn block(&mut self, role: &'static str) -> &mut Vec<u8> {
        if self.open == Some(role) {
            self.out.push(b',');
        } else {
            if self.open.is_some() {
                self.out.extend_from_slice(b"]},");
            }
            self.out.extend_from_slice(b"{\"role\":\"");
            self.out.extend_from_slice(role.as_bytes());
            self.out.extend_from_slice(b"\",\"content\":[");
            self.open = Some(role);
            self.turns += 1;
        }
        &mut self.out
    }

    fn close(&mut self) {
        if self.open.take().is_some() {
            self.out.extend_from_slice(b"]}");
        }
    }
}

/// One content block of a message, borrowed from the request.
enum Block<'a> {
    /// A text block; the raw JSON string as the client sent it.
    Text(&'a RawValue),
    /// `data:<media type>;base64,<data>`, already checked by [`data_url`].
    ImageData(Cow<'a, str>),
    /// An `http(s)` image URL.
    ImageUrl(Cow<'a, str>),
}

/// Splits `data:<media type>;base64,<data>` into media type and data.
fn data_url(url: &str) -> Option<(&str, &str)> {
    let (head, data) = url.strip_prefix("data:")?.split_once(',')?;
    let media = head.strip_suffix(";base64")?;
    (!media.is_empty()).then_some((media, data))
}

fn write_block(out: &mut Vec<u8>, block: &Block) {
    match block {
        Block::Text(text) => {
            out.extend_from_slice(b"{\"type\":\"text\",\"text\":");
            out.extend_from_slice(text.get().as_bytes());
            out.push(b'}');
        }
        Block::ImageData(url) => {
            // Checked when the block was made; an unreachable miss writes an empty image
            // rather than panicking.
            let (media, data) = data_url(url).unwrap_or_default();
            out.extend_from_slice(b"{\"type\":\"image\",\"source\":{\"type\":\"base64\",\"media_type\":");
            write_json_str(out, media);
            out.extend_from_slice(b",\"data\":");
            write_json_str(out, data);
            out.extend_from_slice(b"}}");
        }
        Block::ImageUrl(url) => {
            out.extend_from_slice(b"{\"type\":\"image\",\"source\":{\"type\":\"url\",\"url\":");
            write_json_str(out, url);
            out.extend_from_slice(b"}}");
        }
    }
}

/// Which part types a role's content may hold.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PartsOf {
    /// System/developer: text only.
    System,
    /// User and tool results: text and images.
    User,
    /// Assistant: text and refusals (a refusal part becomes text).
    Assistant,
}

/// The blocks of one message's `content` (a string or an array of parts), in order. Empty
/// text is dropped: Anthropic refuses empty text blocks, and they carry nothing.
fn content_blocks<'a>(content: &'a RawValue, param: &str, of: PartsOf) -> Result<Vec<Block<'a>>, TranslateError> {
    let text = content.get();
    if text.starts_with('"') {
        return Ok(if text == "\"\"" { Vec::new() } else { vec![Block::Text(content)] });
    }
    if !text.starts_with('[') {
        return Err(invalid(param, "expected a string or an array of content parts."));
    }
    let parts: Vec<&'a RawValue> = read(content, param, "an array of content parts")?;
    let mut blocks = Vec::with_capacity(parts.len());
    for (j, raw) in parts.into_iter().enumerate() {
        let param = format!("{param}[{j}]");
        let part: Part = read(raw, &param, "a content part object")?;
        let kind = part.kind.ok_or_else(|| invalid(&param, "missing 'type'."))?;
        let block = match (kind.as_ref(), of) {
            ("text", _) => Block::Text(string(part.text, &format!("{param}.text"))?),
            ("refusal", PartsOf::Assistant) => Block::Text(string(part.refusal, &format!("{param}.refusal"))?),
            ("image_url", PartsOf::User) => image_block(part.image_url, &format!("{param}.image_url"))?,
            ("input_audio" | "file", PartsOf::User) => return Err(unsupported(format!("{param}.type"))),
            (other, _) => return Err(invalid(format!("{param}.type"), format!("content part type '{other}' is not allowed here."))),
        };
        if matches!(block, Block::Text(t) if t.get() == "\"\"") {
            continue;
        }
        blocks.push(block);
    }
    Ok(blocks)
}

/// `image_url: {"url": …}` (or, leniently, a bare string): a base64 data URL or an http(s) URL.
fn image_block<'a>(raw: Option<&'a RawValue>, param: &str) -> Result<Block<'a>, TranslateError> {
    let raw = raw.ok_or_else(|| invalid(param, "missing."))?;
    let url: Cow<'a, str> = if is_string(raw) {
        read(raw, param, "a string")?
    } else {
        read::<ImageUrl>(raw, param, "an object with a string 'url'")?.url.ok_or_else(|| invalid(format!("{param}.url"), "missing."))?.0
    };
    if url.starts_with("data:") {
        if data_url(&url).is_none() {
            return Err(invalid(format!("{param}.url"), "a data URL must be 'data:<media type>;base64,<data>'."));
        }
        return Ok(Block::ImageData(url));
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(Block::ImageUrl(url));
    }
    Err(invalid(format!("{param}.url"), "expected an http(s) URL or a base64 data URL."))
}

/// Writes the `tool_use` blocks of an assistant message's `tool_calls`.
fn write_tool_uses(turns: &mut Turns, raw: &RawValue, param: &str) -> Result<(), TranslateError> {
    let calls: Vec<&RawValue> = read(raw, param, "an array of tool calls")?;
    for (j, raw) in calls.into_iter().enumerate() {
        let param_j = format!("{param}[{j}]");
        let call: ToolCall = read(raw, &param_j, "a tool call object")?;
        if let Some(kind) = &call.kind {
            if kind != "function" {
                return Err(unsupported(format!("{param_j}.type")));
            }
        }
        let id = string(call.id, &format!("{param_j}.id"))?;
        let function: FunctionCall = read(
            call.function.ok_or_else(|| invalid(format!("{param_j}.function"), "missing."))?,
            &format!("{param_j}.function"),
            "an object with 'name' and 'arguments'",
        )?;
        let name = string(function.name, &format!("{param_j}.function.name"))?;
        // `arguments` is JSON text inside a JSON string; Anthropic wants the object itself.
        // An empty string (sent by some clients for a call without arguments) means `{}`.
        let arguments = function.arguments.unwrap_or_default();
        let bad_args = || invalid(param, format!("tool call {j}: 'function.arguments' must be a JSON object encoded as a string."));
        let parsed: Option<&RawValue> = if arguments.trim().is_empty() {
            None
        } else {
            Some(serde_json::from_str(&arguments).map_err(|_| bad_args())?)
        };
        let input_text = parsed.map_or("{}", RawValue::get);
        if !input_text.starts_with('{') {
            return Err(bad_args());
        }
        let out = turns.block("assistant");
        out.extend_from_slice(b"{\"type\":\"tool_use\",\"id\":");
        out.extend_from_slice(id.get().as_bytes());
        out.extend_from_slice(b",\"name\":");
        out.extend_from_slice(name.get().as_bytes());
        out.extend_from_slice(b",\"input\":");
        out.extend_from_slice(input_text.as_bytes());
        out.push(b'}');
    }
    Ok(())
}

/// What `tool_choice` asked for.
enum Choice<'a> {
    Auto,
    None,
    Required,
    /// A named function (its raw JSON name).
    Named(&'a RawValue),
}

fn tool_choice(raw: &RawValue) -> Result<Choice<'_>, TranslateError> {
    const P: &str = "tool_choice";
    match raw.get() {
        "\"auto\"" => return Ok(Choice::Auto),
        "\"none\"" => return Ok(Choice::None),
        "\"required\"" => return Ok(Choice::Required),
        s if s.starts_with('"') => return Err(invalid(P, "expected 'auto', 'none', 'required' or a named function.")),
        _ => {}
    }
    let named: NamedChoice = read(raw, P, "a string or an object")?;
    if named.kind.as_deref() != Some("function") {
        return Err(unsupported("tool_choice.type"));
    }
    let function = named.function.ok_or_else(|| invalid("tool_choice.function", "missing."))?;
    let name = read::<NameOnly>(function, "tool_choice.function", "an object with a 'name'")?.name;
    Ok(Choice::Named(string(name, "tool_choice.function.name")?))
}

/// Writes Anthropic's `tools` members for the request's `tools`; returns the raw names.
fn write_tools<'a>(out: &mut Vec<u8>, raw: &'a RawValue) -> Result<Vec<&'a RawValue>, TranslateError> {
    let tools: Vec<&'a RawValue> = read(raw, "tools", "an array of tools")?;
    let mut names = Vec::with_capacity(tools.len());
    for (i, raw) in tools.into_iter().enumerate() {
        let param = format!("tools[{i}]");
        let tool: Tool = read(raw, &param, "a tool object")?;
        if tool.kind.as_deref() != Some("function") {
            return Err(unsupported(format!("{param}.type")));
        }
        let function = tool.function.ok_or_else(|| invalid(format!("{param}.function"), "missing."))?;
        let def: FunctionDef = read(function, &format!("{param}.function"), "a function definition object")?;
        let name = string(def.name, &format!("{param}.function.name"))?;
        if !names.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"name\":");
        out.extend_from_slice(name.get().as_bytes());
        if let Some(d) = def.description {
            out.extend_from_slice(b",\"description\":");
            out.extend_from_slice(string(Some(d), &format!("{param}.function.description"))?.get().as_bytes());
        }
        out.extend_from_slice(b",\"input_schema\":");
        match def.parameters {
            Some(p) if p.get().starts_with('{') => out.extend_from_slice(p.get().as_bytes()),
            Some(_) => return Err(invalid(format!("{param}.function.parameters"), "expected a JSON Schema object.")),
            // Anthropic requires a schema; a function without parameters takes an empty object.
            None => out.extend_from_slice(b"{\"type\":\"object\"}"),
        }
        out.push(b'}');
        names.push(name);
    }
    Ok(names)
}

/// The tool standing in for `response_format: json_schema`: its name, description and schema.
struct JsonTool<'a> {
    name: String,
    description: Option<&'a RawValue>,
    schema: Option<&'a RawValue>,
}

fn response_format(raw: &RawValue) -> Result<Option<JsonTool<'_>>, TranslateError> {
    let format: ResponseFormat = read(raw, "response_format", "an object with a 'type'")?;
    match format.kind.as_deref() {
        Some("text") => Ok(None),
        Some("json_schema") => {
            let raw = format.json_schema.ok_or_else(|| invalid("response_format.json_schema", "missing."))?;
            let schema: JsonSchema = read(raw, "response_format.json_schema", "an object with 'name' and 'schema'")?;
            let name = schema.name.ok_or_else(|| invalid("response_format.json_schema.name", "missing."))?;
            if name.is_empty() {
                return Err(invalid("response_format.json_schema.name", "must not be empty."));
            }
            if let Some(s) = schema.schema {
                if !s.get().starts_with('{') {
                    return Err(invalid("response_format.json_schema.schema", "expected a JSON Schema object."));
                }
            }
            if let Some(d) = schema.description {
                string(Some(d), "response_format.json_schema.description")?;
            }
            Ok(Some(JsonTool { name: name.into_owned(), description: schema.description, schema: schema.schema }))
        }
        // Anthropic has no "any JSON object" mode, and a made-up schema would silently change
        // what the client asked for.
        Some("json_object") => Err(unsupported("response_format")),
        _ => Err(invalid("response_format.type", "expected 'text', 'json_schema' or 'json_object'.")),
    }
}

/// Converts an OpenAI chat-completions request body into an Anthropic Messages request body
/// for `upstream_model`.
///
/// `body` is expected to have passed `api::chat::inspect` (a JSON object with `model` and
/// `messages`); everything else is checked here. Mapping rules:
///
/// - `system` and `developer` messages, wherever they are in the conversation, become the
///   top-level `system` as an array of text blocks, one per message (or per text part), in
///   order. Anthropic has no mid-conversation system turn.
/// - `user`, `assistant` and `tool` messages become turns in order; consecutive messages
///   whose turns have the same role merge into one turn, their blocks concatenated. `tool`
///   messages become `tool_result` blocks of a user turn, so consecutive tool results and a
///   following user message share one turn. A message `name` is dropped (no equivalent).
/// - Content: a string becomes one text block; parts `text` → text, `image_url` with
///   `data:<media>;base64,<data>` → a base64 image, with an http(s) URL → a URL image
///   (`detail` dropped); an assistant `refusal` part → text. Empty text is dropped (Anthropic
///   refuses empty text blocks) and a message left with no block adds nothing.
/// - Assistant `tool_calls` → `tool_use` blocks after the message's text, `input` being the
///   parsed `arguments` (an empty string reads as `{}`).
/// - `tools` (type `function`) → `{name, description, input_schema}` (missing `parameters`
///   → `{"type":"object"}`); `tool_choice` `auto`/`none`/`required`/named →
///   `auto`/`none`/`any`/`tool`; `parallel_tool_calls: false` →
///   `disable_parallel_tool_use: true` (not on `none`). Without tools, `tool_choice` and
///   `parallel_tool_calls` are dropped.
/// - `response_format` `json_schema` → an extra tool named after the schema, forced with
///   `tool_choice: {"type":"tool"}`; if the client also sent tools, `auto`/`required`
///   become `any` (call a tool or give the answer), a named choice stays, `none` forces the
///   answer tool. Its name is returned in [`AnthropicRequest::forced_json_tool`].
///   `text` → nothing.
/// - `max_completion_tokens`, else `max_tokens`, else `default_max_tokens` → `max_tokens`;
///   `temperature` (above 1, Anthropic's maximum, it is clamped to 1), `top_p`; `stop` (a
///   string or an array) → `stop_sequences`; `user` → `metadata.user_id`; `stream` →
///   `stream`.
/// - Dropped without error: `seed`, `stream_options` (the stream converter reports usage
///   itself), `service_tier`, `store`, `metadata`, `n: 1`, zero penalties, empty
///   `logit_bias`, `modalities: ["text"]`, `logprobs: false`, and any member not named in
///   this list (`model` is replaced by `upstream_model`).
///
/// Memory: the output is about the size of the input; message text is copied once, as the
/// raw JSON the client sent.
///
/// # Errors
/// [`TranslateError::Unsupported`] naming the parameter for `n` > 1, `logprobs: true`,
/// `top_logprobs`, a non-zero `presence_penalty`/`frequency_penalty`, a non-empty
/// `logit_bias`, `audio`, `modalities` other than text, `prediction`, the deprecated
/// `functions`/`function_call`, `response_format: json_object`, non-function tools and tool
/// choices, and `input_audio`/`file` content parts. [`TranslateError::Invalid`] for shapes
/// it cannot read: a message without a string role or with an unknown role, content that is
/// not a string or an array of known parts, tool calls whose `arguments` are not a JSON
/// object (naming `messages[i].tool_calls`), a tool message without `tool_call_id`,
/// parameters of the wrong type, duplicated members, or no user/assistant message at all.
pub fn request_to_anthropic(
    body: &[u8],
    upstream_model: &str,
    default_max_tokens: u32,
) -> Result<AnthropicRequest, TranslateError> {
    let top: Top = serde_json::from_slice(body).map_err(|e| invalid("body", format!("the request body could not be read: {e}.")))?;

    // Parameters Anthropic cannot honour are refused before any work.
    if let Some(n) = top.n {
        if read::<u64>(n, "n", "a positive integer")? > 1 {
            return Err(unsupported("n"));
        }
    }
    if let Some(l) = top.logprobs {
        if read::<bool>(l, "logprobs", "a boolean")? {
            return Err(unsupported("logprobs"));
        }
    }
    if top.top_logprobs.is_some() {
        return Err(unsupported("top_logprobs"));
    }
    if non_zero(top.presence_penalty, "presence_penalty")? {
        return Err(unsupported("presence_penalty"));
    }
    if non_zero(top.frequency_penalty, "frequency_penalty")? {
        return Err(unsupported("frequency_penalty"));
    }
    if let Some(b) = top.logit_bias {
        if !b.get().starts_with('{') {
            return Err(invalid("logit_bias", "expected an object."));
        }
        if !b.get().get(1..).unwrap_or_default().trim_start().starts_with('}') {
            return Err(unsupported("logit_bias"));
        }
    }
    if top.audio.is_some() {
        return Err(unsupported("audio"));
    }
    if let Some(m) = top.modalities {
        let modalities: Vec<Cow<str>> = read(m, "modalities", "an array of strings")?;
        if modalities.iter().any(|m| m != "text") {
            return Err(unsupported("modalities"));
        }
    }
    if top.prediction.is_some() {
        return Err(unsupported("prediction"));
    }
    if top.functions.is_some() {
        return Err(unsupported("functions"));
    }
    if top.function_call.is_some() {
        return Err(unsupported("function_call"));
    }
    let json_tool = match top.response_format {
        Some(r) => response_format(r)?,
        None => None,
    };

    let max_tokens = match top.max_completion_tokens.or(top.max_tokens) {
        Some(raw) => {
            let param = if top.max_completion_tokens.is_some() { "max_completion_tokens" } else { "max_tokens" };
            let n = read::<u64>(raw, param, "a positive integer")?;
            if n == 0 {
                return Err(invalid(param, "must be at least 1."));
            }
            n
        }
        None => u64::from(default_max_tokens),
    };

    // Anthropic's shape adds a few dozen bytes per message (turn and block wrappers); with an
    // eighth of headroom a large body is written without the buffer doubling.
    let mut turns = Turns { out: Vec::with_capacity(body.len() + body.len() / 8 + 1024), open: None, turns: 0 };
    turns.out.extend_from_slice(b"{\"model\":");
    write_json_str(&mut turns.out, upstream_model);
    turns.out.extend_from_slice(format!(",\"max_tokens\":{max_tokens},\"messages\":[").as_bytes());

    // System blocks go to a buffer of their own, appended after `messages` (member order is
    // free in JSON, and this keeps the large part written once, in place).
    let mut system: Vec<u8> = Vec::new();
    let messages_raw = top.messages.ok_or_else(|| invalid("messages", "missing."))?;
    let messages: Vec<&RawValue> = read(messages_raw, "messages", "an array of messages")?;
    for (i, raw) in messages.into_iter().enumerate() {
        let param = format!("messages[{i}]");
        let msg: Message = read(raw, &param, "a message object")?;
        let role_raw = string(msg.role, &format!("{param}.role"))?;
        let role: Cow<str> = read(role_raw, &format!("{param}.role"), "a string")?;
        let content_param = format!("{param}.content");
        match role.as_ref() {
            "system" | "developer" => {
                let content = msg.content.ok_or_else(|| invalid(&content_param, "missing."))?;
                for block in content_blocks(content, &content_param, PartsOf::System)? {
                    if !system.is_empty() {
                        system.push(b',');
                    }
                    write_block(&mut system, &block);
                }
            }
            "user" => {
                let content = msg.content.ok_or_else(|| invalid(&content_param, "missing."))?;
                for block in content_blocks(content, &content_param, PartsOf::User)? {
                    write_block(turns.block("user"), &block);
                }
            }
            "assistant" => {
                if let Some(content) = msg.content {
                    for block in content_blocks(content, &content_param, PartsOf::Assistant)? {
                        write_block(turns.block("assistant"), &block);
                    }
                }
                if let Some(calls) = msg.tool_calls {
                    write_tool_uses(&mut turns, calls, &format!("{param}.tool_calls"))?;
                }
            }
            "tool" => {
                let id = string(msg.tool_call_id, &format!("{param}.tool_call_id"))?;
                let blocks = match msg.content {
                    Some(c) => content_blocks(c, &content_param, PartsOf::User)?,
                    None => Vec::new(),
                };
                let out = turns.block("user");
                out.extend_from_slice(b"{\"type\":\"tool_result\",\"tool_use_id\":");
                out.extend_from_slice(id.get().as_bytes());
                if !blocks.is_empty() {
                    out.extend_from_slice(b",\"content\":[");
                    for (k, block) in blocks.iter().enumerate() {
                        if k > 0 {
                            out.push(b',');
                        }
                        write_block(out, block);
                    }
                    out.push(b']');
                }
                out.push(b'}');
            }
            other => {
                return Err(invalid(format!("{param}.role"), format!("unknown role '{other}'; expected system, developer, user, assistant or tool.")))
            }
        }
    }
    turns.close();
    if turns.turns == 0 {
        return Err(invalid("messages", "at least one user or assistant message is required."));
    }
    let mut out = turns.out;
    out.push(b']');
    if !system.is_empty() {
        out.extend_from_slice(b",\"system\":[");
        out.extend_from_slice(&system);
        out.push(b']');
    }

    // Tools, the answer tool, and the choice between them.
    let mut tools_out = Vec::new();
    let names = match top.tools {
        Some(t) => write_tools(&mut tools_out, t)?,
        None => Vec::new(),
    };
    let choice = match top.tool_choice {
        Some(c) => Some(tool_choice(c)?),
        None => None,
    };
    // Without tools of the client's own there is nothing to choose between.
    let choice = if names.is_empty() { None } else { choice };
    let no_parallel = match top.parallel_tool_calls {
        Some(p) => !read::<bool>(p, "parallel_tool_calls", "a boolean")?,
        None => false,
    };
    if let Some(Choice::Named(name)) = &choice {
        if !names.iter().any(|n| n.get() == name.get()) {
            return Err(invalid("tool_choice.function.name", "names no tool in 'tools'."));
        }
    }
    let forced_json_tool = match &json_tool {
        Some(t) => {
            let encoded = json_str(&t.name);
            if names.iter().any(|n| n.get() == encoded) {
                return Err(invalid("response_format.json_schema.name", "is also the name of a tool in 'tools'."));
            }
            if !names.is_empty() {
                tools_out.push(b',');
            }
            tools_out.extend_from_slice(b"{\"name\":");
            tools_out.extend_from_slice(encoded.as_bytes());
            if let Some(d) = t.description {
                tools_out.extend_from_slice(b",\"description\":");
                tools_out.extend_from_slice(d.get().as_bytes());
            }
            tools_out.extend_from_slice(b",\"input_schema\":");
            tools_out.extend_from_slice(t.schema.map_or("{\"type\":\"object\"}", RawValue::get).as_bytes());
            tools_out.push(b'}');
            Some(t.name.clone())
        }
        None => None,
    };
    if !tools_out.is_empty() {
        out.extend_from_slice(b",\"tools\":[");
        out.extend_from_slice(&tools_out);
        out.push(b']');
        let forced = forced_json_tool.as_deref().map(json_str);
        let (kind, name): (&str, Option<String>) = match (&choice, forced) {
            (Some(Choice::Named(n)), _) => ("tool", Some(n.get().to_string())),
            (Some(Choice::None), Some(f)) => ("tool", Some(f)),
            (_, Some(f)) if names.is_empty() => ("tool", Some(f)),
            (_, Some(_)) => ("any", None),
            (Some(Choice::None), None) => ("none", None),
            (Some(Choice::Required), None) => ("any", None),
            (Some(Choice::Auto) | None, None) => ("auto", None),
        };
        // Anthropic's default is `auto` with parallel use allowed: say nothing when that is
        // what was asked.
        if choice.is_some() || json_tool.is_some() || no_parallel {
            out.extend_from_slice(b",\"tool_choice\":{\"type\":\"");
            out.extend_from_slice(kind.as_bytes());
            out.push(b'"');
            if let Some(n) = name {
                out.extend_from_slice(b",\"name\":");
                out.extend_from_slice(n.as_bytes());
            }
            if no_parallel && kind != "none" {
                out.extend_from_slice(b",\"disable_parallel_tool_use\":true");
            }
            out.push(b'}');
        }
    }

    if let Some(t) = top.temperature {
        let value = number(t, "temperature")?;
        if value < 0.0 {
            return Err(invalid("temperature", "must be at least 0."));
        }
        if value > 1.0 {
            out.extend_from_slice(b",\"temperature\":1");
        } else {
            out.extend_from_slice(b",\"temperature\":");
            out.extend_from_slice(t.get().as_bytes());
        }
    }
    if let Some(p) = top.top_p {
        number(p, "top_p")?;
        out.extend_from_slice(b",\"top_p\":");
        out.extend_from_slice(p.get().as_bytes());
    }
    if let Some(stop) = top.stop {
        if is_string(stop) {
            out.extend_from_slice(b",\"stop_sequences\":[");
            out.extend_from_slice(stop.get().as_bytes());
            out.push(b']');
        } else {
            let list: Vec<&RawValue> = read(stop, "stop", "a string or an array of strings")?;
            if list.iter().any(|s| !is_string(s)) {
                return Err(invalid("stop", "expected a string or an array of strings."));
            }
            if !list.is_empty() {
                out.extend_from_slice(b",\"stop_sequences\":");
                out.extend_from_slice(stop.get().as_bytes());
            }
        }
    }
    if let Some(user) = top.user {
        out.extend_from_slice(b",\"metadata\":{\"user_id\":");
        out.extend_from_slice(string(Some(user), "user")?.get().as_bytes());
        out.push(b'}');
    }
    if let Some(s) = top.stream {
        let stream = read::<bool>(s, "stream", "a boolean")?;
        out.extend_from_slice(if stream { b",\"stream\":true" } else { b",\"stream\":false" });
    }
    out.push(b'}');
    Ok(AnthropicRequest { body: out, forced_json_tool })
}

// ---------------------------------------------------------------------------------------------
// Answers: Anthropic Messages → OpenAI chat completions
// ---------------------------------------------------------------------------------------------

/// An Anthropic `usage` object (other members, like `cache_creation` or `service_tier`,
/// skipped). A count that is not a non-negative integer fails the read.
#[derive(Deserialize, Default, Clone, Copy)]
struct AnthropicUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
}

/// Token counts in OpenAI's terms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    input: u64,
    cache_read: u64,
    cache_creation: u64,
    output: u64,
}

impl Counts {
    /// Takes every count `usage` reports (a later report replaces an earlier one: Anthropic's
    /// counts are cumulative).
    fn update(&mut self, usage: &AnthropicUsage) {
        self.input = usage.input_tokens.unwrap_or(self.input);
        self.cache_read = usage.cache_read_input_tokens.unwrap_or(self.cache_read);
        self.cache_creation = usage.cache_creation_input_tokens.unwrap_or(self.cache_creation);
        self.output = usage.output_tokens.unwrap_or(self.output);
    }

    /// OpenAI's `usage`: every input token, cached or not, is a prompt token (Anthropic's
    /// `input_tokens` counts only those after the last cache breakpoint); the cache reads are
    /// `prompt_tokens_details.cached_tokens` as OpenAI reports them, and both cache counts
    /// are also given under Anthropic's names (`cache_read_input_tokens`,
    /// `cache_creation_input_tokens`), as LiteLLM does, since OpenAI's form has no place for
    /// cache writes.
    fn json(&self) -> String {
        let prompt = self.input.saturating_add(self.cache_read).saturating_add(self.cache_creation);
        format!(
            "{{\"prompt_tokens\":{prompt},\"completion_tokens\":{},\"total_tokens\":{},\"prompt_tokens_details\":{{\"cached_tokens\":{}}},\"cache_read_input_tokens\":{},\"cache_creation_input_tokens\":{}}}",
            self.output,
            prompt.saturating_add(self.output),
            self.cache_read,
            self.cache_read,
            self.cache_creation
        )
    }
}

/// OpenAI's `finish_reason` for Anthropic's `stop_reason`:
/// `end_turn`, `stop_sequence` → `stop`; `max_tokens` and `model_context_window_exceeded`
/// → `length`; `tool_use` → `tool_calls`; `refusal` → `content_filter`; `pause_turn` (a
/// server tool paused a long turn; OpenAI has no "continue me") → `stop`; `null` or any
/// other value → `stop`.
pub fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}

fn malformed(message: impl Into<String>) -> TranslateError {
    TranslateError::Malformed { message: message.into() }
}

#[derive(Deserialize)]
struct AnthropicMessage<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    #[serde(borrow)]
    stop_reason: Option<Str<'a>>,
    usage: Option<AnthropicUsage>,
}

#[derive(Deserialize)]
struct AnthropicBlock<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Str<'a>>,
    #[serde(borrow)]
    text: Option<Str<'a>>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    name: Option<Str<'a>>,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
}

/// A raw JSON string member, or `""` when absent.
fn string_or_empty<'a>(raw: Option<&'a RawValue>, what: &str) -> Result<&'a str, TranslateError> {
    match raw {
        None => Ok("\"\""),
        Some(r) if is_string(r) => Ok(r.get()),
        Some(_) => Err(malformed(format!("'{what}' is not a string"))),
    }
}

/// Converts an Anthropic Messages answer (non-stream, 2xx) into an OpenAI `chat.completion`
/// body with one choice.
///
/// `id` and `model` are the upstream's; `created` is the caller's clock. The message's
/// `content` is its text blocks concatenated (`null` if there are none); `tool_use` blocks
/// become `tool_calls` whose `arguments` are the input serialised as a JSON string. With
/// `forced_json_tool` (see [`AnthropicRequest`]), that tool's input becomes the content
/// (text blocks are dropped whether or not the answer tool is called — they would break
/// the JSON, and a stream drops them too) and a
/// `tool_use` stop becomes `stop` unless other tools were called. Other block types
/// (`thinking`, `redacted_thinking`, `server_tool_use`, web search results, anything newer)
/// are skipped: OpenAI's message has no place for them, and thinking must never leak into
/// content. `finish_reason` follows [`finish_reason`]. `usage` (omitted if the answer has
/// none): `prompt_tokens` = input + cache read + cache creation tokens,
/// `completion_tokens` = output tokens, `prompt_tokens_details.cached_tokens` = cache read.
///
/// # Errors
/// [`TranslateError::Malformed`] when the body is not a JSON object, has no `content`
/// array, a block without a type, a `tool_use` block without a string `id` and `name` or an
/// object `input`, a non-string `id`/`model`, or a usage count that is not a non-negative
/// integer.
pub fn response_from_anthropic(body: &[u8], forced_json_tool: Option<&str>, created: u64) -> Result<Vec<u8>, TranslateError> {
    if body.iter().find(|b| !b.is_ascii_whitespace()).is_none_or(|b| *b != b'{') {
        return Err(malformed("the answer is not a JSON object"));
    }
    let msg: AnthropicMessage = serde_json::from_slice(body).map_err(|e| malformed(format!("the answer could not be read: {e}")))?;
    let content = msg.content.ok_or_else(|| malformed("the answer has no 'content'"))?;
    let blocks: Vec<&RawValue> = serde_json::from_str(content.get()).map_err(|_| malformed("'content' is not an array"))?;
    let id = string_or_empty(msg.id, "id")?;
    let model = string_or_empty(msg.model, "model")?;

    let mut text = String::new();
    let mut json_answer: Option<&str> = None;
    let mut calls: Vec<u8> = Vec::new();
    let mut call_count = 0usize;
    for raw in blocks {
        let block: AnthropicBlock = serde_json::from_str(raw.get()).map_err(|_| malformed("a content block could not be read"))?;
        match block.kind.as_deref() {
            // With structured output the content is the JSON answer only, as in a stream
            // (which cannot hold text back until it knows whether the answer tool follows).
            Some("text") if forced_json_tool.is_some() => {}
            Some("text") => text.push_str(block.text.as_deref().unwrap_or_default()),
            Some("tool_use") => {
                let name = block.name.ok_or_else(|| malformed("a tool_use block has no name"))?;
                let input = block.input.filter(|i| i.get().starts_with('{')).ok_or_else(|| malformed("a tool_use block has no object input"))?;
                if forced_json_tool == Some(name.as_ref()) {
                    json_answer = Some(input.get());
                    continue;
                }
                let id = match block.id {
                    Some(i) if is_string(i) => i.get(),
                    _ => return Err(malformed("a tool_use block has no string id")),
                };
                if call_count > 0 {
                    calls.push(b',');
                }
                calls.extend_from_slice(b"{\"id\":");
                calls.extend_from_slice(id.as_bytes());
                calls.extend_from_slice(b",\"type\":\"function\",\"function\":{\"name\":");
                write_json_str(&mut calls, &name);
                calls.extend_from_slice(b",\"arguments\":");
                write_json_str(&mut calls, input.get());
                calls.extend_from_slice(b"}}");
                call_count += 1;
            }
            Some(_) => {} // thinking, server tools, future types: skipped (see above)
            None => return Err(malformed("a content block has no type")),
        }
    }

    let mut finish = finish_reason(msg.stop_reason.as_deref());
    if json_answer.is_some() && call_count == 0 && finish == "tool_calls" {
        finish = "stop";
    }
    let mut out = Vec::with_capacity(body.len() + 256);
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(format!(",\"object\":\"chat.completion\",\"created\":{created},\"model\":").as_bytes());
    out.extend_from_slice(model.as_bytes());
    out.extend_from_slice(b",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":");
    match json_answer {
        Some(json) => write_json_str(&mut out, json),
        None if text.is_empty() => out.extend_from_slice(b"null"),
        None => write_json_str(&mut out, &text),
    }
    out.extend_from_slice(b",\"refusal\":null");
    if call_count > 0 {
        out.extend_from_slice(b",\"tool_calls\":[");
        out.extend_from_slice(&calls);
        out.push(b']');
    }
    out.extend_from_slice(b"},\"logprobs\":null,\"finish_reason\":\"");
    out.extend_from_slice(finish.as_bytes());
    out.extend_from_slice(b"\"}]");
    if let Some(usage) = &msg.usage {
        let mut counts = Counts::default();
        counts.update(usage);
        out.extend_from_slice(b",\"usage\":");
        out.extend_from_slice(counts.json().as_bytes());
    }
    out.push(b'}');
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Str<'a>>,
    #[serde(borrow)]
    error: Option<ErrorInner<'a>>,
}

#[derive(Deserialize)]
struct ErrorInner<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Str<'a>>,
    #[serde(borrow)]
    message: Option<Str<'a>>,
}

/// At most [`MAX_ERROR_MESSAGE`] characters of `message`, with `…` when cut.
fn clip(message: &str) -> Cow<'_, str> {
    match message.char_indices().nth(MAX_ERROR_MESSAGE) {
        None => Cow::Borrowed(message),
        Some((at, _)) => Cow::Owned(format!("{}…", message.get(..at).unwrap_or_default())),
    }
}

/// OpenAI's error `type` for an Anthropic error type; unknown types by status.
fn openai_error_type(anthropic: Option<&str>, status: u16) -> &'static str {
    match anthropic {
        Some("invalid_request_error" | "authentication_error" | "permission_error" | "not_found_error" | "request_too_large") => {
            "invalid_request_error"
        }
        Some("rate_limit_error") => "rate_limit_error",
        Some("api_error" | "overloaded_error") => "server_error",
        _ if status == 429 => "rate_limit_error",
        _ if (400..500).contains(&status) => "invalid_request_error",
        _ => "server_error",
    }
}

/// Converts an Anthropic error answer (`{"type":"error","error":{"type","message"}}`) into
/// an OpenAI-shaped body `{"error":{"message","type","param":null,"code"}}`.
///
/// `type`: `invalid_request_error`, `authentication_error`, `permission_error`,
/// `not_found_error` and `request_too_large` → `invalid_request_error`; `rate_limit_error`
/// → `rate_limit_error`; `api_error` and `overloaded_error` → `server_error`; other types
/// by `status` (429 → `rate_limit_error`, other 4xx → `invalid_request_error`, else
/// `server_error`). `code` is the Anthropic error type. The message is the upstream's,
/// clipped to [`MAX_ERROR_MESSAGE`] characters; nothing else of the body (request ids and
/// the like) is passed on. A body of any other shape gives a generic message naming the
/// status, and never echoes the body. Never fails.
pub fn error_from_anthropic(status: u16, body: &[u8]) -> Vec<u8> {
    let parsed = serde_json::from_slice::<ErrorBody>(body).ok().filter(|b| b.kind.as_deref() == Some("error"));
    let (message, kind, code) = match parsed.and_then(|b| b.error) {
        Some(ErrorInner { kind, message }) => {
            let message = match message.as_deref() {
                Some(m) if !m.is_empty() => clip(m).into_owned(),
                _ => format!("The upstream provider returned HTTP {status}."),
            };
            let openai = openai_error_type(kind.as_deref(), status);
            (message, openai, kind.map(|k| clip(&k).into_owned()))
        }
        None => (format!("The upstream provider returned HTTP {status}."), openai_error_type(None, status), None),
    };
    let body = serde_json::json!({ "error": { "message": message, "type": kind, "param": null, "code": code } });
    body.to_string().into_bytes()
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

/// What an open content block is, for its deltas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    Text,
    /// A client tool call: its `tool_calls` index.
    Tool(u32),
    /// The tool standing in for `response_format`: its input is content.
    JsonAnswer,
    /// Thinking, server tools, unknown types: deltas are dropped.
    Skipped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before `message_start`.
    Start,
    /// Content blocks may come.
    Content,
    /// `message_delta` gave the finish reason.
    Finished,
    /// `message_stop`: nothing more may come.
    Done,
}

#[derive(Deserialize)]
struct StreamEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Str<'a>>,
    #[serde(borrow)]
    message: Option<&'a RawValue>,
    index: Option<u64>,
    #[serde(borrow)]
    content_block: Option<&'a RawValue>,
    #[serde(borrow)]
    delta: Option<&'a RawValue>,
    usage: Option<AnthropicUsage>,
    #[serde(borrow)]
    error: Option<ErrorInner<'a>>,
}

#[derive(Deserialize)]
struct StartMessage<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    usage: Option<AnthropicUsage>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Str<'a>>,
    #[serde(borrow)]
    text: Option<&'a RawValue>,
    #[serde(borrow)]
    partial_json: Option<&'a RawValue>,
    #[serde(borrow)]
    stop_reason: Option<Str<'a>>,
}

/// Converts an Anthropic Messages stream into OpenAI `chat.completion.chunk` payloads, one
/// upstream event at a time, with nothing held back: each event's chunks are returned as
/// soon as it arrives.
///
/// Mapping: `message_start` → the role chunk (`delta: {"role":"assistant","content":""}`);
/// `content_block_start` of a `tool_use` → a `tool_calls` chunk with its `id`, `name` and
/// empty `arguments` (tool calls are indexed from 0 in the order they start), of `text` →
/// nothing (or its text, if it starts with some); `text_delta` → a content chunk;
/// `input_json_delta` → a `tool_calls` chunk carrying the piece of `arguments`;
/// `content_block_stop` → nothing; `message_delta` → a chunk with the `finish_reason` (see
/// [`finish_reason`]) and an empty delta, then the usage-only chunk (`choices: []` with
/// `usage`, counted as in [`response_from_anthropic`]); `message_stop` → `[DONE]`; `ping` →
/// nothing. With a forced JSON tool, that tool's `input_json_delta` pieces become content,
/// text blocks are dropped (as in a whole answer: the content is the JSON answer only), and
/// its `tool_use` stop becomes `stop` (unless other tools were called). Thinking,
/// server-tool and unknown block types, and unknown delta types (`thinking_delta`,
/// `signature_delta`, `citations_delta`, …), are dropped; unknown event types are skipped.
/// Empty deltas yield no chunk.
#[derive(Debug)]
pub struct StreamConverter {
    created: u64,
    forced_json_tool: Option<String>,
    phase: Phase,
    /// `{"id":…,"object":"chat.completion.chunk","created":…,"model":…,` — every chunk's start.
    prefix: String,
    /// Open content blocks by Anthropic index.
    open: Vec<(u64, BlockKind)>,
    /// Client tool calls started so far (the next `tool_calls` index).
    tools: u32,
    counts: Counts,
    usage_seen: bool,
}

impl StreamConverter {
    /// A converter for one stream; `created` goes into every chunk, `forced_json_tool` is
    /// [`AnthropicRequest::forced_json_tool`].
    pub fn new(created: u64, forced_json_tool: Option<String>) -> Self {
        StreamConverter {
            created,
            forced_json_tool,
            phase: Phase::Start,
            prefix: String::new(),
            open: Vec::new(),
            tools: 0,
            counts: Counts::default(),
            usage_seen: false,
        }
    }

    /// True once `message_stop` has been converted: the stream ended properly. A stream
    /// that ends without it was cut off.
    pub fn done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Converts one upstream SSE event (its `event:` name, if any, and its `data:`) into the
    /// `data` payloads to send the client now, in order: JSON chunks, and the literal
    /// `[DONE]` after `message_stop`.
    ///
    /// # Errors
    /// [`TranslateError::UpstreamStream`] for an `error` event (its message, clipped; the
    /// caller ends the client's stream with an error event). [`TranslateError::Malformed`]
    /// for data that is not a JSON object with a `type`, an `event:` name that differs from
    /// that type, a known event missing what it carries, or an event out of order (content
    /// before `message_start` or after `message_delta`, a delta or stop for a block that is
    /// not open, a text delta on a tool block, a second `message_delta`, `message_stop`
    /// without `message_delta`, anything after `message_stop`). After an error the stream
    /// should be abandoned.
    pub fn event(&mut self, event: Option<&str>, data: &str) -> Result<Vec<String>, TranslateError> {
        let ev: StreamEvent = serde_json::from_str(data).map_err(|e| malformed(format!("a stream event could not be read: {e}")))?;
        let kind = ev.kind.as_deref().ok_or_else(|| malformed("a stream event has no type"))?;
        if let Some(name) = event {
            if name != kind {
                return Err(malformed(format!("event '{}' carries data of type '{}'", clip(name), clip(kind))));
            }
        }
        if kind == "error" {
            let (t, m) = match &ev.error {
                Some(ErrorInner { kind, message }) => (kind.as_deref().unwrap_or("error"), message.as_deref().unwrap_or("")),
                None => ("error", ""),
            };
            return Err(TranslateError::UpstreamStream { message: clip(&format!("{t}: {m}")).into_owned() });
        }
        if kind == "ping" {
            return Ok(Vec::new());
        }
        if self.phase == Phase::Done {
            return Err(malformed(format!("'{}' after message_stop", clip(kind))));
        }
        match kind {
            "message_start" => self.message_start(&ev),
            "content_block_start" => self.block_start(&ev),
            "content_block_delta" => self.block_delta(&ev),
            "content_block_stop" => {
                self.expect(Phase::Content, kind)?;
                let index = ev.index.ok_or_else(|| malformed("content_block_stop has no index"))?;
                let at = self.open.iter().position(|(i, _)| *i == index).ok_or_else(|| malformed("content_block_stop for a block that is not open"))?;
                self.open.swap_remove(at);
                Ok(Vec::new())
            }
            "message_delta" => self.message_delta(&ev),
            "message_stop" => {
                self.expect(Phase::Finished, kind)?;
                self.phase = Phase::Done;
                Ok(vec!["[DONE]".to_string()])
            }
            // New event types are ignored, as Anthropic's versioning policy asks of clients.
            _ => Ok(Vec::new()),
        }
    }

    fn expect(&self, phase: Phase, kind: &str) -> Result<(), TranslateError> {
        if self.phase == phase {
            Ok(())
        } else {
            Err(malformed(format!("'{kind}' out of order")))
        }
    }

    /// One chunk with a single choice whose delta is `delta` (JSON) and finish reason `finish`.
    fn chunk(&self, delta: &str, finish: Option<&str>) -> String {
        let finish = finish.map_or_else(|| "null".to_string(), |f| format!("\"{f}\""));
        format!("{}\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}", self.prefix)
    }

    /// A content chunk for a raw JSON string, or nothing for an empty one.
    fn content(&self, text: &RawValue) -> Vec<String> {
        if text.get() == "\"\"" {
            return Vec::new();
        }
        vec![self.chunk(&format!("{{\"content\":{}}}", text.get()), None)]
    }

    fn message_start(&mut self, ev: &StreamEvent) -> Result<Vec<String>, TranslateError> {
        self.expect(Phase::Start, "message_start")?;
        let raw = ev.message.ok_or_else(|| malformed("message_start has no message"))?;
        let message: StartMessage = serde_json::from_str(raw.get()).map_err(|_| malformed("message_start's message could not be read"))?;
        let id = string_or_empty(message.id, "id")?;
        let model = string_or_empty(message.model, "model")?;
        if let Some(u) = &message.usage {
            self.counts.update(u);
            self.usage_seen = true;
        }
        self.prefix = format!("{{\"id\":{id},\"object\":\"chat.completion.chunk\",\"created\":{},\"model\":{model},", self.created);
        self.phase = Phase::Content;
        Ok(vec![self.chunk("{\"role\":\"assistant\",\"content\":\"\"}", None)])
    }

    fn block_start(&mut self, ev: &StreamEvent) -> Result<Vec<String>, TranslateError> {
        self.expect(Phase::Content, "content_block_start")?;
        let index = ev.index.ok_or_else(|| malformed("content_block_start has no index"))?;
        if self.open.iter().any(|(i, _)| *i == index) {
            return Err(malformed("content_block_start for a block already open"));
        }
        if self.open.len() >= MAX_OPEN_BLOCKS {
            return Err(malformed("too many content blocks open at once"));
        }
        let raw = ev.content_block.ok_or_else(|| malformed("content_block_start has no content_block"))?;
        #[derive(Deserialize)]
        struct StartBlock<'a> {
            #[serde(rename = "type", borrow)]
            kind: Option<Str<'a>>,
            #[serde(borrow)]
            text: Option<&'a RawValue>,
            #[serde(borrow)]
            id: Option<&'a RawValue>,
            #[serde(borrow)]
            name: Option<Str<'a>>,
        }
        let block: StartBlock = serde_json::from_str(raw.get()).map_err(|_| malformed("a content block could not be read"))?;
        let mut out = Vec::new();
        let kind = match block.kind.as_deref() {
            // Structured output: the content is the JSON answer only (as in a whole answer).
            Some("text") if self.forced_json_tool.is_some() => BlockKind::Skipped,
            Some("text") => {
                if let Some(t) = block.text.filter(|t| is_string(t)) {
                    out = self.content(t);
                }
                BlockKind::Text
            }
            Some("tool_use") => {
                let name = block.name.ok_or_else(|| malformed("a tool_use block has no name"))?;
                if self.forced_json_tool.as_deref() == Some(name.as_ref()) {
                    BlockKind::JsonAnswer
                } else {
                    let id = match block.id {
                        Some(i) if is_string(i) => i.get(),
                        _ => return Err(malformed("a tool_use block has no string id")),
                    };
                    let k = self.tools;
                    self.tools = self.tools.saturating_add(1);
                    let delta = format!(
                        "{{\"tool_calls\":[{{\"index\":{k},\"id\":{id},\"type\":\"function\",\"function\":{{\"name\":{},\"arguments\":\"\"}}}}]}}",
                        json_str(&name)
                    );
                    out.push(self.chunk(&delta, None));
                    BlockKind::Tool(k)
                }
            }
            Some(_) => BlockKind::Skipped,
            None => return Err(malformed("a content block has no type")),
        };
        self.open.push((index, kind));
        Ok(out)
    }

    fn block_delta(&mut self, ev: &StreamEvent) -> Result<Vec<String>, TranslateError> {
        self.expect(Phase::Content, "content_block_delta")?;
        let index = ev.index.ok_or_else(|| malformed("content_block_delta has no index"))?;
        let kind = self.open.iter().find(|(i, _)| *i == index).map(|(_, k)| *k).ok_or_else(|| malformed("content_block_delta for a block that is not open"))?;
        let raw = ev.delta.ok_or_else(|| malformed("content_block_delta has no delta"))?;
        let delta: Delta = serde_json::from_str(raw.get()).map_err(|_| malformed("a delta could not be read"))?;
        fn piece<'a>(r: Option<&'a RawValue>, what: &str) -> Result<&'a RawValue, TranslateError> {
            match r {
                Some(r) if is_string(r) => Ok(r),
                _ => Err(malformed(format!("{what} has no string"))),
            }
        }
        match (delta.kind.as_deref(), kind) {
            (_, BlockKind::Skipped) => Ok(Vec::new()),
            (Some("text_delta"), BlockKind::Text) => Ok(self.content(piece(delta.text, "text_delta")?)),
            (Some("input_json_delta"), BlockKind::JsonAnswer) => Ok(self.content(piece(delta.partial_json, "input_json_delta")?)),
            (Some("input_json_delta"), BlockKind::Tool(k)) => {
                let part = piece(delta.partial_json, "input_json_delta")?;
                if part.get() == "\"\"" {
                    return Ok(Vec::new());
                }
                let d = format!("{{\"tool_calls\":[{{\"index\":{k},\"function\":{{\"arguments\":{}}}}}]}}", part.get());
                Ok(vec![self.chunk(&d, None)])
            }
            (Some("text_delta" | "input_json_delta"), _) => Err(malformed("a delta does not match its block's type")),
            (Some(_), _) => Ok(Vec::new()), // citations, thinking, signatures, newer delta types
            (None, _) => Err(malformed("a delta has no type")),
        }
    }

    fn message_delta(&mut self, ev: &StreamEvent) -> Result<Vec<String>, TranslateError> {
        self.expect(Phase::Content, "message_delta")?;
        let raw = ev.delta.ok_or_else(|| malformed("message_delta has no delta"))?;
        let delta: Delta = serde_json::from_str(raw.get()).map_err(|_| malformed("message_delta's delta could not be read"))?;
        if let Some(u) = &ev.usage {
            self.counts.update(u);
            self.usage_seen = true;
        }
        let mut finish = finish_reason(delta.stop_reason.as_deref());
        if finish == "tool_calls" && self.tools == 0 && self.forced_json_tool.is_some() {
            finish = "stop";
        }
        self.phase = Phase::Finished;
        let mut out = vec![self.chunk("{}", Some(finish))];
        if self.usage_seen {
            out.push(format!("{}\"choices\":[],\"usage\":{}}}", self.prefix, self.counts.json()));
        }
        Ok(out)
    }
}

pub mod inbound;

#[cfg(test)]
mod tests;
