//! The chat-completions request on the wire: validation of the fields the gateway relies on
//! and the byte-level rewrite sent upstream. The body is never re-serialised: only the `model`
//! value (and, for streams, `stream_options`) is spliced, so everything else reaches the
//! upstream byte-exact, whatever its size.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::error::ApiError;

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

/// Where `stream_options` sits in the body, and its members when it is an object.
type StreamOptions = (Range<usize>, Option<serde_json::Map<String, serde_json::Value>>);

struct TopLevel<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TopLevel<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some(k) = map.next_key::<Cow<'de, str>>()? {
                    let val: &'de RawValue = map.next_value()?;
                    v.push((k, val));
                }
                Ok(TopLevel(v))
            }
        }
        d.deserialize_map(V)
    }
}

fn span_of(body: &[u8], raw: &RawValue) -> Range<usize> {
    let s = raw.get();
    let start = s.as_ptr() as usize - body.as_ptr() as usize;
    start..start + s.len()
}

fn type_error(param: &'static str, expected: &str) -> ApiError {
    ApiError::invalid(format!("Invalid type for '{param}': expected {expected}."), Some(param))
}

/// Parses and checks a chat-completions body.
///
/// # Errors
/// 400 `invalid_request_error` for invalid JSON, a non-object body, a missing or non-string
/// `model`, missing/empty/non-array `messages` or messages without a string `role`, a
/// non-boolean `stream`, a non-object `stream_options`, or a duplicated top-level key.
pub fn inspect(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let top: TopLevel = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(format!("We could not parse the JSON body of your request: {e}."), None)
    })?;
    let mut model = None;
    let mut messages = None;
    let mut stream = None;
    let mut stream_options = None;
    let mut seen = std::collections::HashSet::new();
    for (k, v) in &top.0 {
        if !seen.insert(k.as_ref()) {
            return Err(ApiError::invalid(format!("Duplicate key '{k}' in the request body."), None));
        }
        match k.as_ref() {
            "model" => model = Some(*v),
            "messages" => messages = Some(*v),
            "stream" => stream = Some(*v),
            "stream_options" => stream_options = Some(*v),
            _ => {}
        }
    }
    let model_raw = model.ok_or_else(|| ApiError::invalid("Missing required parameter: 'model'.", Some("model")))?;
    let model_name: String = serde_json::from_str(model_raw.get()).map_err(|_| type_error("model", "a string"))?;
    let messages = messages.ok_or_else(|| ApiError::invalid("Missing required parameter: 'messages'.", Some("messages")))?;
    let list: Vec<&RawValue> = serde_json::from_str(messages.get()).map_err(|_| type_error("messages", "an array"))?;
    if list.is_empty() {
        return Err(ApiError::invalid("'messages' must contain at least one message.", Some("messages")));
    }
    #[derive(serde::Deserialize)]
    struct Msg<'a> {
        #[serde(borrow)]
        role: Option<Cow<'a, str>>,
    }
    for (i, m) in list.iter().enumerate() {
        match serde_json::from_str::<Msg>(m.get()) {
            Ok(Msg { role: Some(_) }) => {}
            _ => {
                return Err(ApiError::invalid(
                    format!("Invalid 'messages[{i}]': expected an object with a string 'role'."),
                    Some("messages"),
                ))
            }
        }
    }
    let stream_flag = match stream {
        None => false,
        Some(raw) => match serde_json::from_str::<Option<bool>>(raw.get()) {
            Ok(b) => b.unwrap_or(false),
            Err(_) => return Err(type_error("stream", "a boolean")),
        },
    };
    let (include_usage, stream_options) = match stream_options {
        None => (false, None),
        Some(raw) => {
            let parsed: Option<serde_json::Map<String, serde_json::Value>> =
                serde_json::from_str(raw.get()).map_err(|_| type_error("stream_options", "an object"))?;
            let include = match parsed.as_ref().and_then(|m| m.get("include_usage")) {
                None | Some(serde_json::Value::Null) => false,
                Some(serde_json::Value::Bool(b)) => *b,
                Some(_) => return Err(type_error("stream_options.include_usage", "a boolean")),
            };
            (include, Some((span_of(body, raw), parsed)))
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
            match &self.stream_options {
                Some((span, map)) => {
                    let mut map = map.clone().unwrap_or_default();
                    map.insert("include_usage".into(), serde_json::Value::Bool(true));
                    let json = serde_json::Value::Object(map).to_string();
                    edits.push((span.clone(), json.into_bytes()));
                }
                None => edits.push((
                    self.object_end..self.object_end,
                    br#","stream_options":{"include_usage":true}"#.to_vec(),
                )),
            }
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

/// A parsed chunk and what matters about it.
#[derive(Debug)]
pub struct Chunk {
    pub value: serde_json::Value,
    /// It carries generated content (text, tool calls or a refusal), not just a role.
    pub content: bool,
    /// It is an error object (`{"error": …}`): the upstream failed mid-stream.
    pub error: bool,
    /// Its `usage` (prompt, completion tokens), if present.
    pub usage: Option<Usage>,
    /// The usage-only chunk (`choices: []` with `usage`), which reaches the client only if it
    /// asked for usage.
    pub usage_only: bool,
}

/// Classifies one event's `data`.
pub fn classify(data: &str) -> StreamEvent {
    if data.trim() == "[DONE]" {
        return StreamEvent::Done;
    }
    let Ok(value) = serde_json::from_str::<serde_json::Value>(data) else {
        return StreamEvent::Malformed;
    };
    let usage_only = value.get("choices").and_then(|c| c.as_array()).is_some_and(|c| c.is_empty())
        && value.get("usage").is_some_and(|u| !u.is_null());
    StreamEvent::Chunk(Chunk {
        content: has_content(&value),
        error: value.get("error").is_some(),
        usage: usage_of(&value),
        usage_only,
        value,
    })
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
    Tokens(u64, u64),
    /// A token count that is negative, fractional, not a number, or above
    /// [`MAX_USAGE_TOKENS`]: no tokens are recorded and no cost is computed from it.
    Invalid,
}

/// `usage.prompt_tokens` and `usage.completion_tokens` of a chat document or chunk: `None`
/// without a usage object or with either count absent (or `null`), [`Usage::Invalid`] when a
/// count is present but not believable. The one place upstream usage numbers are read.
pub fn usage_of(v: &serde_json::Value) -> Option<Usage> {
    let u = v.get("usage").filter(|u| !u.is_null())?;
    let count = |k: &str| u.get(k).filter(|x| !x.is_null());
    let (p, c) = (count("prompt_tokens")?, count("completion_tokens")?);
    let valid = |x: &serde_json::Value| x.as_u64().filter(|n| *n <= MAX_USAGE_TOKENS);
    Some(match (valid(p), valid(c)) {
        (Some(p), Some(c)) => Usage::Tokens(p, c),
        _ => Usage::Invalid,
    })
}

/// True for a chunk carrying generated content (not the role-only first chunk).
fn has_content(v: &serde_json::Value) -> bool {
    v.get("choices").and_then(|c| c.as_array()).is_some_and(|choices| {
        choices.iter().any(|c| {
            let d = &c["delta"];
            d.get("content").and_then(|x| x.as_str()).is_some_and(|s| !s.is_empty())
                || d.get("tool_calls").is_some_and(|t| !t.is_null())
                || d.get("refusal").and_then(|x| x.as_str()).is_some_and(|s| !s.is_empty())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn upstream_usage_is_validated() {
        let u = |s: &str| usage_of(&serde_json::from_str(s).unwrap());
        assert_eq!(u(r#"{"usage":{"prompt_tokens":3,"completion_tokens":0}}"#), Some(Usage::Tokens(3, 0)));
        assert_eq!(u(r#"{"usage":{"prompt_tokens":10000000,"completion_tokens":10000000}}"#), Some(Usage::Tokens(MAX_USAGE_TOKENS, MAX_USAGE_TOKENS)));
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
        ] {
            let e = inspect(body).unwrap_err();
            assert_eq!(e.status(), 400);
            let msg = String::from_utf8(e.body()).unwrap();
            assert!(msg.contains(needle), "{msg} lacks {needle}");
        }
    }
}
