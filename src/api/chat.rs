//! The chat-completions request on the wire: validation of the fields the gateway relies on
//! and the byte-level rewrite sent upstream. The body is never re-serialised: only the `model`
//! value (and, for streams, `stream_options`) is spliced, so everything else reaches the
//! upstream byte-exact, whatever its size.

use std::fmt;
use std::ops::Range;

use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::error::ApiError;
use super::json::Str;

/// What the gateway needs from a chat-completions body.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The requested model, tags included (`llama-3.1-8b-instruct@price`).
    pub model: String,
    /// `stream: true`.
    pub stream: bool,
    /// The client asked for the usage chunk (`stream_options.include_usage: true`).
    pub include_usage: bool,
    model_span: Range<usize>,
    stream_options: Option<StreamOptions>,
    object_end: usize,
}

/// Where `stream_options` sits in the body, as far as the rewrite needs to know.
#[derive(Debug, Clone)]
enum StreamOptions {
    /// `null`: replaced whole.
    Null(Range<usize>),
    /// An object: `open` is just after its `{`, `include_usage` the span of that member's
    /// value if present, `empty` when it has no members.
    Object { open: usize, include_usage: Option<Range<usize>>, empty: bool },
}

/// The top-level members joule reads, borrowed from the body. Every other member is skipped
/// by the parser without being built, so inspecting a body costs no memory beyond a few
/// references, however the body is shaped.
#[derive(Default)]
struct TopLevel<'a> {
    model: Option<&'a RawValue>,
    messages: Option<&'a RawValue>,
    stream: Option<&'a RawValue>,
    stream_options: Option<&'a RawValue>,
    /// A member joule reads given twice: which one.
    duplicate: Option<&'static str>,
}

impl<'de> serde::Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TopLevel<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut top = TopLevel::default();
                while let Some(k) = map.next_key::<Str<'de>>()? {
                    let (slot, name) = match k.as_str() {
                        "model" => (&mut top.model, "model"),
                        "messages" => (&mut top.messages, "messages"),
                        "stream" => (&mut top.stream, "stream"),
                        "stream_options" => (&mut top.stream_options, "stream_options"),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    let value: &'de RawValue = map.next_value()?;
                    if slot.replace(value).is_some() {
                        top.duplicate.get_or_insert(name);
                    }
                }
                Ok(top)
            }
        }
        d.deserialize_map(V)
    }
}

/// `messages` checked element by element as the parser passes them (never collected): the
/// number of messages, or the index of the first one that is not an object with a string
/// `role`.
struct MessagesCheck(Result<usize, usize>);

impl<'de> serde::Deserialize<'de> for MessagesCheck {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MessagesCheck;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut count = 0;
                let mut bad = None;
                while let Some(raw) = seq.next_element::<&'de RawValue>()? {
                    if bad.is_none() && !is_message(raw) {
                        bad = Some(count);
                    }
                    count += 1;
                }
                Ok(MessagesCheck(bad.map_or(Ok(count), Err)))
            }
        }
        d.deserialize_seq(V)
    }
}

/// An object with a string `role` (other members skipped unbuilt).
fn is_message(raw: &RawValue) -> bool {
    #[derive(serde::Deserialize)]
    struct Msg<'a> {
        #[serde(borrow)]
        role: Option<Str<'a>>,
    }
    raw.get().starts_with('{') && matches!(serde_json::from_str::<Msg>(raw.get()), Ok(Msg { role: Some(_) }))
}

fn span_of(body: &[u8], raw: &RawValue) -> Range<usize> {
    let s = raw.get();
    let start = s.as_ptr() as usize - body.as_ptr() as usize;
    start..start + s.len()
}

fn type_error(param: &'static str, expected: &str) -> ApiError {
    ApiError::invalid(format!("Invalid type for '{param}': expected {expected}."), Some(param))
}

/// `stream_options`: `null` or an object whose `include_usage` is absent, `null` or a boolean.
fn stream_options_of(body: &[u8], raw: &RawValue) -> Result<(bool, StreamOptions), ApiError> {
    let text = raw.get();
    if text == "null" {
        return Ok((false, StreamOptions::Null(span_of(body, raw))));
    }
    /// The raw `include_usage` member (`null` included); a duplicate fails the parse.
    struct Opts<'a> {
        include_usage: Option<&'a RawValue>,
    }
    impl<'de> serde::Deserialize<'de> for Opts<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Opts<'de>;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                    let mut include_usage = None;
                    while let Some(k) = map.next_key::<Str<'de>>()? {
                        if k.as_str() == "include_usage" {
                            let raw: &'de RawValue = map.next_value()?;
                            if include_usage.replace(raw).is_some() {
                                return Err(serde::de::Error::duplicate_field("include_usage"));
                            }
                        } else {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                    Ok(Opts { include_usage })
                }
            }
            d.deserialize_map(V)
        }
    }
    let not_object = || type_error("stream_options", "an object");
    let opts: Opts = serde_json::from_str(text).map_err(|_| not_object())?;
    let include = match opts.include_usage.map(RawValue::get) {
        None | Some("null") => false,
        Some("true") => true,
        Some("false") => false,
        Some(_) => return Err(type_error("stream_options.include_usage", "a boolean")),
    };
    let span = span_of(body, raw);
    let empty = text[1..].trim_start().starts_with('}');
    Ok((include, StreamOptions::Object { open: span.start + 1, include_usage: opts.include_usage.map(|r| span_of(body, r)), empty }))
}

/// Parses and checks a chat-completions body.
///
/// Memory: the body's own bytes plus a constant; nothing of the body is built into a tree.
///
/// # Errors
/// 400 `invalid_request_error` for invalid JSON, a non-object body, a missing or non-string
/// `model`, missing/empty/non-array `messages` or messages without a string `role`, a
/// non-boolean `stream`, a non-object `stream_options`, or a duplicated `model`, `messages`,
/// `stream` or `stream_options` (the members joule reads; an upstream could read the other
/// copy). Duplicates of other members pass through as sent.
pub fn inspect(body: &[u8]) -> Result<ChatRequest, ApiError> {
    // Members joule does not read are skipped without looking into their strings, so UTF-8
    // (which JSON text must be) is checked for the whole body here, in one fast pass.
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::invalid(format!("We could not parse the JSON body of your request: it is not UTF-8 (byte {}).", e.valid_up_to()), None)
    })?;
    let top: TopLevel = serde_json::from_str(text).map_err(|e| {
        ApiError::invalid(format!("We could not parse the JSON body of your request: {e}."), None)
    })?;
    if let Some(k) = top.duplicate {
        return Err(ApiError::invalid(format!("Duplicate key '{k}' in the request body."), None));
    }
    let model_raw = top.model.ok_or_else(|| ApiError::invalid("Missing required parameter: 'model'.", Some("model")))?;
    let model_name: String = serde_json::from_str(model_raw.get()).map_err(|_| type_error("model", "a string"))?;
    let messages = top.messages.ok_or_else(|| ApiError::invalid("Missing required parameter: 'messages'.", Some("messages")))?;
    match serde_json::from_str::<MessagesCheck>(messages.get()).map_err(|_| type_error("messages", "an array"))?.0 {
        Ok(0) => return Err(ApiError::invalid("'messages' must contain at least one message.", Some("messages"))),
        Ok(_) => {}
        Err(i) => {
            return Err(ApiError::invalid(
                format!("Invalid 'messages[{i}]': expected an object with a string 'role'."),
                Some("messages"),
            ))
        }
    }
    let stream_flag = match top.stream {
        None => false,
        Some(raw) => match serde_json::from_str::<Option<bool>>(raw.get()) {
            Ok(b) => b.unwrap_or(false),
            Err(_) => return Err(type_error("stream", "a boolean")),
        },
    };
    let (include_usage, stream_options) = match top.stream_options {
        None => (false, None),
        Some(raw) => {
            let (include, at) = stream_options_of(body, raw)?;
            (include, Some(at))
        }
    };
    let object_end = body.iter().rposition(|&b| b == b'}').unwrap_or(body.len());
    Ok(ChatRequest {
        model: model_name,
        stream: stream_flag,
        include_usage,
        model_span: span_of(body, model_raw),
        stream_options,
        object_end,
    })
}

impl ChatRequest {
    /// The body to send upstream: `model` replaced by `upstream_model`; for streams,
    /// `stream_options.include_usage` forced on so the gateway can account tokens.
    pub fn upstream_body(&self, body: &[u8], upstream_model: &str) -> Vec<u8> {
        let model_json = serde_json::Value::String(upstream_model.to_string()).to_string();
        let mut edits: Vec<(Range<usize>, Vec<u8>)> = vec![(self.model_span.clone(), model_json.into_bytes())];
        if self.stream && !self.include_usage {
            let on = br#""include_usage":true"#;
            edits.push(match &self.stream_options {
                Some(StreamOptions::Null(span)) => (span.clone(), [&b"{"[..], on, b"}"].concat()),
                Some(StreamOptions::Object { include_usage: Some(value), .. }) => (value.clone(), b"true".to_vec()),
                Some(StreamOptions::Object { open, include_usage: None, empty }) => {
                    (*open..*open, if *empty { on.to_vec() } else { [on, &b","[..]].concat() })
                }
                None => (self.object_end..self.object_end, br#","stream_options":{"include_usage":true}"#.to_vec()),
            });
        }
        edits.sort_by_key(|(r, _)| r.start);
        let mut out = Vec::with_capacity(body.len() + 64);
        let mut pos = 0;
        for (range, bytes) in edits {
            out.extend_from_slice(&body[pos..range.start]);
            out.extend_from_slice(&bytes);
            pos = range.end;
        }
        out.extend_from_slice(&body[pos..]);
        out
    }
}

/// One upstream SSE event of a chat stream, classified once for everyone who looks at it
/// (failover before the first token, the relay after it).
#[derive(Debug)]
pub enum StreamEvent {
    /// `data: [DONE]`: the stream is complete.
    Done,
    /// Not JSON: the upstream is broken.
    Malformed,
    /// A JSON chunk.
    Chunk(Chunk),
}

/// What joule reads of an upstream chat document (a whole answer) or chunk (one stream
/// event). Read from the text with every other member skipped unbuilt, so a hostile document
/// costs no memory beyond its own bytes (a tree of values can take 16× more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// It carries generated content (text, tool calls or a refusal), not just a role.
    pub content: bool,
    /// It is an error object (`{"error": …}`): the upstream failed mid-stream.
    pub error: bool,
    /// Its `usage` (prompt, completion tokens), if present.
    pub usage: Option<Usage>,
    /// The usage-only chunk (`choices: []` with `usage`), which reaches the client only if it
    /// asked for usage.
    pub usage_only: bool,
    /// Where the top-level `model` string (quotes included) sits in the text, if there is one:
    /// the upstream's model name, which the relay replaces with the catalog's.
    pub model: Option<(usize, usize)>,
    /// Where the top-level `usage` object sits in the text, if it is one: the relay sets
    /// `cost` in it without parsing the document again.
    pub usage_at: Option<(usize, usize)>,
}

impl Chunk {
    /// A chunk that says nothing but what is given.
    pub fn plain(content: bool, error: bool, usage: Option<Usage>) -> Self {
        Chunk { content, error, usage, usage_only: false, model: None, usage_at: None }
    }
}

/// Classifies one event's `data`.
pub fn classify(data: &str) -> StreamEvent {
    if data.trim() == "[DONE]" {
        return StreamEvent::Done;
    }
    match read_doc(data.as_bytes()) {
        Some(chunk) => StreamEvent::Chunk(chunk),
        None => StreamEvent::Malformed,
    }
}

/// Reads an upstream chat document or chunk; `None` when it is not one JSON object in UTF-8.
pub fn read_doc(text: &[u8]) -> Option<Chunk> {
    // UTF-8 for the whole text: skipped members are not looked into (see `inspect`).
    let text = std::str::from_utf8(text).ok()?;
    let top: DocMembers = serde_json::from_str(text).ok()?;
    let span = |v: &RawValue| {
        let start = v.get().as_ptr() as usize - text.as_ptr() as usize;
        (start, start + v.get().len())
    };
    let model = top.model.filter(|m| m.get().starts_with('"')).map(span);
    let usage_at = top.usage.filter(|u| u.get().starts_with('{')).map(span);
    let usage = top.usage.and_then(usage_of);
    let choices = top.choices.unwrap_or_default();
    let usage_only = choices.empty_array && top.usage.is_some_and(|u| u.get() != "null");
    Some(Chunk { content: choices.content, error: top.error, usage, usage_only, model, usage_at })
}

/// The top-level members of an upstream document joule reads (the last of duplicates, as a
/// JSON tree would keep).
#[derive(Default)]
struct DocMembers<'a> {
    choices: Option<Choices>,
    usage: Option<&'a RawValue>,
    model: Option<&'a RawValue>,
    error: bool,
}

impl<'de> serde::Deserialize<'de> for DocMembers<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DocMembers<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut doc = DocMembers::default();
                while let Some(k) = map.next_key::<Str<'de>>()? {
                    match k.as_str() {
                        "choices" => doc.choices = Some(map.next_value()?),
                        "usage" => doc.usage = Some(map.next_value()?),
                        "model" => doc.model = Some(map.next_value()?),
                        "error" => {
                            map.next_value::<IgnoredAny>()?;
                            doc.error = true;
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(doc)
            }
        }
        d.deserialize_map(V)
    }
}

/// What joule reads from a document's `choices` member, in the same pass as the rest of the
/// document (each choice and its `delta` used to be captured raw and parsed again: four
/// passes over every event's bytes): whether it is an empty array, and whether any choice's
/// `delta` carries content — non-empty text `content`, non-null `tool_calls` or non-empty
/// text `refusal`. A choice or delta that is not an object, or that repeats one of these
/// members, carries none (a strict reader refuses it).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Choices {
    empty_array: bool,
    content: bool,
}

/// The kind of a JSON value, the value itself skipped (arrays and objects consumed whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Null,
    NonEmptyString,
    Other,
}

impl<'de> serde::Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Kind;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Kind, E> {
                Ok(Kind::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Kind, E> {
                Ok(Kind::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Kind, E> {
                Ok(Kind::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Kind, E> {
                Ok(Kind::Other)
            }
            fn visit_str<E>(self, v: &str) -> Result<Kind, E> {
                Ok(if v.is_empty() { Kind::Other } else { Kind::NonEmptyString })
            }
            fn visit_unit<E>(self) -> Result<Kind, E> {
                Ok(Kind::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Kind, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Kind::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Kind, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Kind::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// The `visit_*` methods for scalars, each reading as `Self::Value::default()`.
macro_rules! scalars_read_as_default {
    () => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
    };
}

/// An object read member by member in one pass: the members it reads, each with its own bit
/// (an object that repeats one reads as the default: a strict reader refuses it).
trait ObjectScan: Default {
    /// Reads the value of member `name` if it is one this scan reads, returning its bit.
    fn member<'de, A: MapAccess<'de>>(&mut self, name: &str, map: &mut A) -> Result<Option<u32>, A::Error>;
}

/// Reads any JSON value as the [`ObjectScan`] `T`: an object member by member, anything else
/// (consumed whole) as `T::default()`.
struct ScanVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: ObjectScan> Visitor<'de> for ScanVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let (mut scan, mut seen, mut repeated) = (T::default(), 0u32, false);
        while let Some(k) = map.next_key::<Str<'de>>()? {
            match scan.member(k.as_str(), &mut map)? {
                Some(bit) => {
                    repeated |= seen & (1 << bit) != 0;
                    seen |= 1 << bit;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(if repeated { T::default() } else { scan })
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(T::default())
    }
    scalars_read_as_default!();
}

/// One choice: whether its `delta` carries content.
#[derive(Default)]
struct ChoiceContent(bool);

impl ObjectScan for ChoiceContent {
    fn member<'de, A: MapAccess<'de>>(&mut self, name: &str, map: &mut A) -> Result<Option<u32>, A::Error> {
        if name != "delta" {
            return Ok(None);
        }
        self.0 = map.next_value::<DeltaContent>()?.0;
        Ok(Some(0))
    }
}

/// A choice's `delta`: whether it carries content.
#[derive(Default)]
struct DeltaContent(bool);

impl ObjectScan for DeltaContent {
    fn member<'de, A: MapAccess<'de>>(&mut self, name: &str, map: &mut A) -> Result<Option<u32>, A::Error> {
        let (bit, carries) = match name {
            "content" => (0, map.next_value::<Kind>()? == Kind::NonEmptyString),
            "tool_calls" => (1, map.next_value::<Kind>()? != Kind::Null),
            "refusal" => (2, map.next_value::<Kind>()? == Kind::NonEmptyString),
            _ => return Ok(None),
        };
        self.0 |= carries;
        Ok(Some(bit))
    }
}

impl<'de> serde::Deserialize<'de> for ChoiceContent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScanVisitor(std::marker::PhantomData))
    }
}

impl<'de> serde::Deserialize<'de> for DeltaContent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScanVisitor(std::marker::PhantomData))
    }
}

impl<'de> serde::Deserialize<'de> for Choices {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Choices;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("choices")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Choices, A::Error> {
                let (mut any, mut content) = (false, false);
                while let Some(c) = seq.next_element::<ChoiceContent>()? {
                    any = true;
                    content |= c.0;
                }
                Ok(Choices { empty_array: !any, content })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Choices, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Choices::default())
            }
            scalars_read_as_default!();
        }
        d.deserialize_any(V)
    }
}

/// The most tokens one request may report per direction (prompt, completion): 10 million,
/// beyond any context window served today. Upstream numbers are untrusted input: a usage
/// above it is not believed (see [`Usage::Invalid`]).
pub const MAX_USAGE_TOKENS: u64 = 10_000_000;

/// The error label of a request whose upstream reported unbelievable usage: it goes into
/// the usage record's `outcome`, and the deployment is counted as failing
/// (`joule_upstream_failures_total{kind="invalid_usage"}`, its breaker).
pub const USAGE_INVALID: &str = "upstream_usage_invalid";

/// What an upstream said a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// Prompt and completion tokens, each a non-negative integer within [`MAX_USAGE_TOKENS`].
    Tokens(TokenCounts),
    /// A token count that is negative, fractional, not a number, or above
    /// [`MAX_USAGE_TOKENS`]: no tokens are recorded and no cost is computed from it.
    Invalid,
}

/// The tokens of one request. The cache counts are parts of `prompt`: prompt tokens read from
/// the provider's prompt cache, and written into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenCounts {
    pub prompt: u64,
    pub completion: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

impl TokenCounts {
    /// Prompt and completion tokens, nothing cached.
    pub fn new(prompt: u64, completion: u64) -> Self {
        TokenCounts { prompt, completion, cache_read: 0, cache_write: 0 }
    }
}

/// A `usage` member: `prompt_tokens` and `completion_tokens`, and the cache parts of the
/// prompt — `prompt_tokens_details.cached_tokens` (OpenAI's cache reads) and
/// `cache_creation_input_tokens` (cache writes, as LiteLLM and joule's Anthropic conversion
/// report them). `None` for `null`, a non-object, or either main count absent (or `null`);
/// [`Usage::Invalid`] when a main count is present but not believable. A cache count that is
/// not a believable number counts as 0, and the cache parts are capped at the prompt (a
/// cached token is never billed twice). The one place upstream usage numbers are read.
fn usage_of(usage: &RawValue) -> Option<Usage> {
    #[derive(serde::Deserialize)]
    struct Counts<'a> {
        #[serde(borrow)]
        prompt_tokens: Option<&'a RawValue>,
        #[serde(borrow)]
        completion_tokens: Option<&'a RawValue>,
        #[serde(borrow)]
        prompt_tokens_details: Option<&'a RawValue>,
        #[serde(borrow)]
        cache_creation_input_tokens: Option<&'a RawValue>,
    }
    #[derive(serde::Deserialize)]
    struct Details<'a> {
        #[serde(borrow)]
        cached_tokens: Option<&'a RawValue>,
    }
    if !usage.get().starts_with('{') {
        return None;
    }
    let counts: Counts = serde_json::from_str(usage.get()).ok()?;
    let (p, c) = (counts.prompt_tokens?, counts.completion_tokens?);
    let valid = |x: &RawValue| serde_json::from_str::<u64>(x.get()).ok().filter(|n| *n <= MAX_USAGE_TOKENS);
    let (Some(prompt), Some(completion)) = (valid(p), valid(c)) else { return Some(Usage::Invalid) };
    let read = counts
        .prompt_tokens_details
        .filter(|d| d.get().starts_with('{'))
        .and_then(|d| serde_json::from_str::<Details>(d.get()).ok())
        .and_then(|d| d.cached_tokens)
        .and_then(valid)
        .unwrap_or(0)
        .min(prompt);
    let write = counts.cache_creation_input_tokens.and_then(valid).unwrap_or(0).min(prompt - read);
    Some(Usage::Tokens(TokenCounts { prompt, completion, cache_read: read, cache_write: write }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The multi-pass reading `Choices` replaced (each choice and delta captured raw and
    /// parsed again), kept as the oracle of what content and an empty array mean.
    fn oracle(choices: &str) -> (bool, bool) {
        #[derive(serde::Deserialize)]
        struct Choice<'a> {
            #[serde(borrow)]
            delta: Option<&'a RawValue>,
        }
        #[derive(serde::Deserialize)]
        struct Delta<'a> {
            #[serde(borrow)]
            content: Option<&'a RawValue>,
            #[serde(borrow)]
            tool_calls: Option<&'a RawValue>,
            #[serde(borrow)]
            refusal: Option<&'a RawValue>,
        }
        let text = |r: Option<&RawValue>| r.is_some_and(|r| r.get().starts_with('"') && r.get() != "\"\"");
        let choice_has_content = |choice: &str| {
            let Ok(Choice { delta: Some(delta) }) = serde_json::from_str::<Choice>(choice) else { return false };
            delta.get().starts_with('{')
                && serde_json::from_str::<Delta>(delta.get()).is_ok_and(|d| text(d.content) || d.tool_calls.is_some() || text(d.refusal))
        };
        let content = serde_json::from_str::<Vec<&RawValue>>(choices)
            .is_ok_and(|cs| cs.iter().any(|c| c.get().starts_with('{') && choice_has_content(c.get())));
        let empty = choices.starts_with('[') && choices[1..].trim_start().starts_with(']');
        (content, empty)
    }

    #[test]
    fn choices_read_in_one_pass_mean_what_the_raw_reading_meant() {
        let values = ["null", "1", "true", "\"\"", "\"a\"", "\"\\u0000\"", "[]", "[1]", "{}", "{\"a\":1}"];
        let mut deltas: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        for member in ["content", "tool_calls", "refusal", "role"] {
            for v in values {
                deltas.push(format!("{{\"{member}\":{v}}}"));
                deltas.push(format!("{{\"{member}\":{v},\"{member}\":\"x\"}}"));
                deltas.push(format!("{{ \"x\" : [ {{}} ] , \"{member}\" : {v} }}"));
            }
        }
        deltas.push(r#"{"content":"","tool_calls":null,"refusal":"no"}"#.into());
        let mut choices: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        choices.push("[ ]".into());
        for d in &deltas {
            choices.push(format!("[{{\"delta\":{d}}}]"));
            choices.push(format!("[{{\"index\":0,\"delta\":{d},\"finish_reason\":null}}, 2]"));
            choices.push(format!("[{{\"delta\":{d},\"delta\":{{\"content\":\"x\"}}}}]"));
            choices.push(format!("[{{\"delta\":{{}}}}, {{\"delta\":{d}}}]"));
        }
        for c in &choices {
            for usage in ["", r#","usage":{"prompt_tokens":1}"#, r#","usage":null"#] {
                let doc = format!(r#"{{"model":"m","choices":{c}{usage}}}"#);
                let chunk = read_doc(doc.as_bytes()).unwrap_or_else(|| panic!("{doc}"));
                let (content, empty) = oracle(c);
                assert_eq!(chunk.content, content, "{doc}");
                assert_eq!(chunk.usage_only, empty && usage.contains('{'), "{doc}");
            }
        }
        assert!(read_doc(br#"{"choices":[{"delta":{"content":"x"}]}"#).is_none(), "malformed JSON is still refused");
    }

    fn json(b: &[u8]) -> serde_json::Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn rewrites_only_model() {
        let body = br#"{ "model" : "m@price", "messages":[{"role":"user","content":"h\u00e9"}],  "x": 1.50 }"#;
        let r = inspect(body).unwrap();
        assert_eq!(r.model, "m@price");
        assert!(!r.stream);
        let out = r.upstream_body(body, "up/\"m\"");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{ "model" : "up/\"m\"", "messages":[{"role":"user","content":"h\u00e9"}],  "x": 1.50 }"#
        );
    }

    #[test]
    fn stream_gets_usage() {
        let body = br#"{"model":"m","stream":true,"messages":[{"role":"user"}]}"#;
        let r = inspect(body).unwrap();
        assert!(r.stream && !r.include_usage);
        let v = json(&r.upstream_body(body, "u"));
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], "u");

        let body = br#"{"model":"m","stream":true,"stream_options":{"include_usage":false,"k":2},"messages":[{"role":"user"}]}"#;
        let r = inspect(body).unwrap();
        let v = json(&r.upstream_body(body, "u"));
        assert_eq!(v["stream_options"], serde_json::json!({"include_usage":true,"k":2}));

        let body = br#"{"model":"m","stream":true,"stream_options":null,"messages":[{"role":"user"}]}"#;
        let v = json(&inspect(body).unwrap().upstream_body(body, "u"));
        assert_eq!(v["stream_options"]["include_usage"], true);

        let body = br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user"}]}"#;
        let r = inspect(body).unwrap();
        assert!(r.include_usage);
        assert_eq!(r.upstream_body(body, "m"), body.to_vec());
    }

    #[test]
    fn stream_options_are_spliced_not_rebuilt() {
        for (opts, kept) in [
            ("{}", serde_json::json!({})),
            ("{ }", serde_json::json!({})),
            ("{\"include_usage\":null}", serde_json::json!({})),
            ("{ \"k\" : [1, {\"a\":2}] }", serde_json::json!({"k":[1,{"a":2}]})),
            ("{\"k\":2,\"include_usage\":false,\"z\":\"\\u00e9\"}", serde_json::json!({"k":2,"z":"é"})),
            ("null", serde_json::json!({})),
        ] {
            let body = format!("{{\"model\":\"m\",\"stream\":true,\"stream_options\":{opts},\"messages\":[{{\"role\":\"user\"}}]}}");
            let out = inspect(body.as_bytes()).unwrap().upstream_body(body.as_bytes(), "u");
            let v = json(&out);
            let mut want = kept.as_object().unwrap().clone();
            want.insert("include_usage".into(), true.into());
            assert_eq!(v["stream_options"], serde_json::Value::Object(want), "{opts} → {}", String::from_utf8_lossy(&out));
            assert_eq!(v["model"], "u");
        }
        for bad in ["[true]", "3", "\"x\"", "{\"include_usage\":1}", "{\"include_usage\":true,\"include_usage\":false}"] {
            let body = format!("{{\"model\":\"m\",\"stream_options\":{bad},\"messages\":[{{\"role\":\"user\"}}]}}");
            assert_eq!(inspect(body.as_bytes()).unwrap_err().status(), 400, "{bad}");
        }
    }

    #[test]
    fn messages_are_checked_one_by_one() {
        let check = |m: &str| inspect(format!("{{\"model\":\"m\",\"messages\":{m}}}").as_bytes()).map(|_| ()).map_err(|e| String::from_utf8(e.body()).unwrap());
        assert!(check("[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"x\"}]}]").is_ok());
        assert!(check("[{\"role\":\"user\"},0]").unwrap_err().contains("messages[1]"));
        assert!(check("[[\"user\"]]").unwrap_err().contains("messages[0]"), "an array is not a message object");
        assert!(check("[{\"role\":\"user\"},{\"role\":7},{\"x\":1}]").unwrap_err().contains("messages[1]"));
        assert!(check("[]").unwrap_err().contains("at least one"));
        // Duplicates of members joule does not read pass through; of those it reads, not.
        assert!(inspect(br#"{"model":"m","x":1,"x":2,"messages":[{"role":"user"}]}"#).is_ok());
        assert!(inspect(br#"{"model":"m","messages":[{"role":"user"}],"stream":true,"stream":false}"#).is_err());
    }

    #[test]
    fn chunks_are_classified_without_building_them() {
        let c = |s: &str| match classify(s) {
            StreamEvent::Chunk(c) => c,
            other => panic!("{s}: {other:?}"),
        };
        let role = r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#;
        assert!(!c(role).content);
        assert!(c(r#"{"choices":[{"delta":{"content":"hi"}}]}"#).content);
        assert!(c(r#"{"choices":[{"delta":{}},{"delta":{"tool_calls":[{"index":0}]}}]}"#).content);
        assert!(c(r#"{"choices":[{"delta":{"refusal":"no"}}]}"#).content);
        assert!(!c(r#"{"choices":[{"delta":{"tool_calls":null,"refusal":""}}]}"#).content);
        assert!(!c(r#"{"choices":[{"delta":["content"]},0,"x"]}"#).content, "odd shapes carry nothing");
        assert!(!c(r#"{"choices":{"delta":{"content":"x"}}}"#).content);
        let u = c(r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#);
        assert!(u.usage_only && u.usage == Some(Usage::Tokens(TokenCounts::new(1, 2))));
        assert!(!c(r#"{"choices":[ ],"usage":null}"#).usage_only);
        assert!(c(r#"{"error":{"message":"x"}}"#).error);
        for bad in ["[1]", "\"x\"", "{\"a\":", "{} x", ""] {
            assert!(matches!(classify(bad), StreamEvent::Malformed), "{bad}");
        }
        assert!(matches!(classify(" [DONE] "), StreamEvent::Done));
    }

    #[test]
    fn upstream_usage_is_validated() {
        let u = |s: &str| read_doc(s.as_bytes()).unwrap().usage;
        assert_eq!(u(r#"{"usage":{"prompt_tokens":3,"completion_tokens":0}}"#), Some(Usage::Tokens(TokenCounts::new(3, 0))));
        // Cache parts: OpenAI's cached_tokens and the cache writes, capped at the prompt.
        let t = |read: u64, write: u64| Some(Usage::Tokens(TokenCounts { prompt: 100, completion: 5, cache_read: read, cache_write: write }));
        let with = |details: &str, extra: &str| u(&format!(r#"{{"usage":{{"prompt_tokens":100,"completion_tokens":5,"prompt_tokens_details":{details}{extra}}}}}"#));
        assert_eq!(with(r#"{"cached_tokens":60}"#, r#","cache_creation_input_tokens":30"#), t(60, 30));
        assert_eq!(with(r#"{"cached_tokens":60}"#, r#","cache_creation_input_tokens":90"#), t(60, 40));
        assert_eq!(with(r#"{"cached_tokens":600}"#, ""), t(100, 0));
        assert_eq!(with(r#"{"cached_tokens":-1}"#, r#","cache_creation_input_tokens":"x""#), t(0, 0));
        assert_eq!(with("null", ""), t(0, 0));
        assert_eq!(with("[1]", r#","cache_creation_input_tokens":1e400"#), t(0, 0));
        assert_eq!(u(r#"{"usage":{"prompt_tokens":10000000,"completion_tokens":10000000}}"#), Some(Usage::Tokens(TokenCounts::new(MAX_USAGE_TOKENS, MAX_USAGE_TOKENS))));
        for absent in [r#"{}"#, r#"{"usage":null}"#, r#"{"usage":{}}"#, r#"{"usage":{"prompt_tokens":3}}"#, r#"{"usage":{"prompt_tokens":3,"completion_tokens":null}}"#] {
            assert_eq!(u(absent), None, "{absent}");
        }
        for bad in [
            r#"{"usage":{"prompt_tokens":18446744073709551615,"completion_tokens":18446744073709551615}}"#,
            r#"{"usage":{"prompt_tokens":10000001,"completion_tokens":1}}"#,
            r#"{"usage":{"prompt_tokens":1,"completion_tokens":-1}}"#,
            r#"{"usage":{"prompt_tokens":1.5,"completion_tokens":1}}"#,
            r#"{"usage":{"prompt_tokens":1,"completion_tokens":2.0}}"#,
            r#"{"usage":{"prompt_tokens":1e300,"completion_tokens":1}}"#,
            r#"{"usage":{"prompt_tokens":"5","completion_tokens":1}}"#,
            r#"{"usage":{"prompt_tokens":true,"completion_tokens":1}}"#,
            r#"{"usage":{"prompt_tokens":1,"completion_tokens":99999999999999999999999}}"#,
        ] {
            assert_eq!(u(bad), Some(Usage::Invalid), "{bad}");
        }
    }

    #[test]
    fn bad_bodies_are_400() {
        for (body, needle) in [
            (&b"not json"[..], "parse"),
            (b"[1]", "parse"),
            (br#"{"messages":[{"role":"user"}]}"#, "'model'"),
            (br#"{"model":1,"messages":[{"role":"user"}]}"#, "'model'"),
            (br#"{"model":"m"}"#, "'messages'"),
            (br#"{"model":"m","messages":"hi"}"#, "'messages'"),
            (br#"{"model":"m","messages":[]}"#, "'messages'"),
            (br#"{"model":"m","messages":[{"content":"x"}]}"#, "messages[0]"),
            (br#"{"model":"m","messages":[{"role":"user"}],"stream":"yes"}"#, "'stream'"),
            (br#"{"model":"m","messages":[{"role":"user"}],"stream_options":3}"#, "stream_options"),
            (br#"{"model":"m","model":"n","messages":[{"role":"user"}]}"#, "Duplicate"),
            (b"{\"model\":\"m\",\"x\":\"\xde\",\"messages\":[{\"role\":\"user\"}]}", "UTF-8"),
        ] {
            let e = inspect(body).unwrap_err();
            assert_eq!(e.status(), 400);
            let msg = String::from_utf8(e.body()).unwrap();
            assert!(msg.contains(needle), "{msg} lacks {needle}");
        }
    }
}
