//! Translation between joule's wire API (OpenAI chat completions) and the wire APIs of
//! upstream providers that speak something else. Each provider has one file holding its wire
//! types and pure conversion functions: bytes in, bytes out, no I/O, no clocks, no settings.
//! The pipeline decides when to call them; this module only knows the formats.
//!
//! - [`anthropic`]: the Anthropic Messages API (requests out, answers, errors and streams back;
//!   and `anthropic::inbound`, the same API spoken by clients);
//! - [`responses`]: OpenAI's Responses API spoken by clients, over chat completions.
//!
//! Input on both sides is untrusted (the client's body, the upstream's answer): every
//! conversion returns a [`TranslateError`] instead of panicking, and request bodies are read
//! as borrowed raw JSON, member by member, never built into a tree.

pub mod anthropic;
pub mod responses;

/// Why a conversion failed. The request-side variants are the client's fault (400); the
/// answer-side ones are the upstream's (the caller treats them like any broken upstream).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// 400: a request parameter the target API has no equivalent for (`n: 2`,
    /// `logprobs: true`, …); `param` names it as the client sent it.
    #[error("The parameter '{param}' is not supported by this model's provider.")]
    Unsupported { param: String },
    /// 400: a request member of a shape the conversion cannot read (a message without a
    /// role, content of the wrong type, unparsable tool-call arguments, …).
    #[error("Invalid '{param}': {message}")]
    Invalid { param: String, message: String },
    /// The upstream's answer (a whole body, or one stream event) is not what its protocol
    /// says: not JSON, missing members, or an event out of order.
    #[error("the upstream answer could not be translated: {message}")]
    Malformed { message: String },
    /// The upstream reported an error in the middle of a stream (an `error` event); the
    /// message is the upstream's, truncated.
    #[error("the upstream failed mid-stream: {message}")]
    UpstreamStream { message: String },
}

impl TranslateError {
    /// The HTTP status a client should see for this error when nothing has been sent yet:
    /// 400 for the request-side variants, 502 for the upstream-side ones.
    pub fn status(&self) -> u16 {
        match self {
            TranslateError::Unsupported { .. } | TranslateError::Invalid { .. } => 400,
            TranslateError::Malformed { .. } | TranslateError::UpstreamStream { .. } => 502,
        }
    }

    /// The OpenAI-shaped error body `{"error":{"message","type","param","code"}}` for this
    /// error (`param` set for the request-side variants).
    pub fn body(&self) -> Vec<u8> {
        let (kind, param, code) = match self {
            TranslateError::Unsupported { param } => ("invalid_request_error", Some(param.as_str()), "unsupported_parameter"),
            TranslateError::Invalid { param, .. } => ("invalid_request_error", Some(param.as_str()), "invalid_value"),
            TranslateError::Malformed { .. } => ("upstream_error", None, "upstream_malformed"),
            TranslateError::UpstreamStream { .. } => ("upstream_error", None, "upstream_error"),
        };
        let body = serde_json::json!({
            "error": { "message": self.to_string(), "type": kind, "param": param, "code": code }
        });
        body.to_string().into_bytes()
    }
}

/// A 400 naming `param`.
pub(crate) fn invalid(param: impl Into<String>, message: impl Into<String>) -> TranslateError {
    TranslateError::Invalid { param: param.into(), message: message.into() }
}

/// A 400 naming what has no equivalent in the target API.
pub(crate) fn unsupported(param: impl Into<String>) -> TranslateError {
    TranslateError::Unsupported { param: param.into() }
}

/// Parses a member into `T`, naming `param` if it does not fit.
pub(crate) fn read<'a, T: serde::Deserialize<'a>>(raw: &'a serde_json::value::RawValue, param: &str, expected: &str) -> Result<T, TranslateError> {
    serde_json::from_str(raw.get()).map_err(|_| invalid(param, format!("expected {expected}.")))
}

/// A raw JSON value that is a string.
pub(crate) fn is_string(raw: &serde_json::value::RawValue) -> bool {
    raw.get().starts_with('"')
}

/// Appends `s` as a JSON string literal. Infallible, unlike `serde_json::to_writer`'s
/// signature, so callers need no error path for writing into a `Vec`.
pub(crate) fn write_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0..=0x1f => None,
            _ => continue,
        };
        out.extend_from_slice(bytes.get(start..i).unwrap_or_default());
        match escape {
            Some(e) => out.extend_from_slice(e),
            None => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
        }
        start = i + 1;
    }
    out.extend_from_slice(bytes.get(start..).unwrap_or_default());
    out.push(b'"');
}

/// `s` as a JSON string literal.
pub(crate) fn json_str(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len() + 2);
    write_json_str(&mut out, s);
    // Only ASCII escapes were inserted between whole UTF-8 sequences of `s`.
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_round_trip() {
        for s in ["", "plain", "q\"b\\s", "nl\n\r\t", "\u{0}\u{1f}\u{7f}", "é✓😀", "</script>"] {
            let enc = json_str(s);
            assert_eq!(serde_json::from_str::<String>(&enc).unwrap(), s, "{enc}");
        }
    }

    #[test]
    fn error_bodies_are_openai_shaped() {
        let e = TranslateError::Unsupported { param: "n".into() };
        assert_eq!(e.status(), 400);
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["param"], "n");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["message"].as_str().unwrap().contains("'n'"));
        let e = TranslateError::Malformed { message: "x".into() };
        assert_eq!(e.status(), 502);
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert!(v["error"]["param"].is_null());
    }
}
