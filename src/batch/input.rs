//! An uploaded batch input file, checked line by line before it is stored: the OpenAI batch
//! line format (`{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}`),
//! the size limits, unique `custom_id`s, one model for the whole file (as OpenAI requires),
//! a model the caller accepts (tags allowed), and every body passing the same inspection as a
//! chat request. The first bad line refuses the file, naming its number and the reason.
//!
//! The result also carries what the scheduler needs to plan: the estimated tokens of each
//! line (input ≈ body bytes ÷ 4; output = `max_completion_tokens`, else `max_tokens`, else the
//! configured default).

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::api::chat;

/// The endpoint every line must name.
pub const CHAT_URL: &str = "/v1/chat/completions";
/// Longest `custom_id`, in bytes.
pub const MAX_CUSTOM_ID: usize = 512;

/// Limits on an input file. Defaults are OpenAI's: 50 000 lines, 200 MB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputLimits {
    pub max_lines: usize,
    pub max_bytes: usize,
    /// Output tokens assumed for a line that sets no `max_tokens`. Default 256.
    pub default_output_tokens: u32,
}

impl Default for InputLimits {
    fn default() -> Self {
        InputLimits { max_lines: 50_000, max_bytes: 200 * 1000 * 1000, default_output_tokens: 256 }
    }
}

/// Why a file was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InputError {
    #[error("the file is {bytes} bytes; at most {limit} are allowed")]
    TooLarge { bytes: usize, limit: usize },
    #[error("the file has more than {limit} lines")]
    TooManyLines { limit: usize },
    #[error("the file has no requests")]
    Empty,
    #[error("the file is not UTF-8 text")]
    NotText,
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: String },
}

/// One checked line.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedLine {
    /// 1-based line number.
    pub line: usize,
    pub custom_id: String,
    /// The request body, as sent (JSON text).
    pub body: String,
    pub input_tokens: f64,
    pub output_tokens: f64,
}

/// A checked file.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedFile {
    /// The `model` every line names (tags included).
    pub model: String,
    pub lines: Vec<CheckedLine>,
}

impl CheckedFile {
    /// Total estimated (input, output) tokens.
    pub fn tokens(&self) -> (f64, f64) {
        self.lines.iter().fold((0.0, 0.0), |(i, o), l| (i + l.input_tokens, o + l.output_tokens))
    }
}

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    custom_id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<&'a RawValue>,
    #[serde(borrow)]
    url: Option<&'a RawValue>,
    #[serde(borrow)]
    body: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct Budget {
    max_tokens: Option<serde_json::Value>,
    max_completion_tokens: Option<serde_json::Value>,
}

fn string(v: Option<&RawValue>) -> Option<String> {
    v.and_then(|v| serde_json::from_str::<String>(v.get()).ok())
}

/// Checks a file. `model_ok` says whether a `model` (tags included) may be used, or why not.
///
/// # Errors
/// See [`InputError`]; the first problem found.
pub fn check(content: &[u8], limits: &InputLimits, model_ok: &dyn Fn(&str) -> Result<(), String>) -> Result<CheckedFile, InputError> {
    if content.len() > limits.max_bytes {
        return Err(InputError::TooLarge { bytes: content.len(), limit: limits.max_bytes });
    }
    let text = std::str::from_utf8(content).map_err(|_| InputError::NotText)?;
    let mut seen = std::collections::HashSet::new();
    let mut model: Option<String> = None;
    let mut lines = Vec::new();
    let raw: Vec<&str> = text.split('\n').collect();
    // A final newline ends the last line; it does not start an empty one.
    let count = if raw.last() == Some(&"") { raw.len() - 1 } else { raw.len() };
    for (i, l) in raw[..count].iter().enumerate() {
        let n = i + 1;
        let bad = |reason: String| InputError::Line { line: n, reason };
        let l = l.strip_suffix('\r').unwrap_or(l);
        if l.trim().is_empty() {
            return Err(bad("empty line (every line must be one request)".into()));
        }
        if lines.len() >= limits.max_lines {
            return Err(InputError::TooManyLines { limit: limits.max_lines });
        }
        let parsed: Line<'_> = serde_json::from_str(l).map_err(|e| bad(format!("not a JSON object: {e}")))?;
        let custom_id = string(parsed.custom_id).ok_or_else(|| bad("`custom_id` must be a string".into()))?;
        if custom_id.is_empty() || custom_id.len() > MAX_CUSTOM_ID {
            return Err(bad(format!("`custom_id` must be 1 to {MAX_CUSTOM_ID} bytes")));
        }
        if string(parsed.method).as_deref() != Some("POST") {
            return Err(bad("`method` must be \"POST\"".into()));
        }
        if string(parsed.url).as_deref() != Some(CHAT_URL) {
            return Err(bad(format!("`url` must be \"{CHAT_URL}\" (the only endpoint batches support)")));
        }
        let body = parsed.body.ok_or_else(|| bad("`body` is missing".into()))?;
        let req = chat::inspect(body.get().as_bytes()).map_err(|e| bad(format!("body: {}", e.message())))?;
        if req.stream {
            return Err(bad("body: `stream` must be false or absent in a batch".into()));
        }
        match &model {
            None => {
                model_ok(&req.model).map_err(|m| bad(format!("body: {m}")))?;
                model = Some(req.model.clone());
            }
            Some(m) if *m != req.model => {
                return Err(bad(format!("body: every line of a batch must use the same model; line 1 uses `{m}`, this one `{}`", clip(&req.model))));
            }
            Some(_) => {}
        }
        if !seen.insert(custom_id.clone()) {
            return Err(bad(format!("duplicate custom_id `{}`", clip(&custom_id))));
        }
        let budget: Budget = serde_json::from_str(body.get()).unwrap_or_default();
        let cap = |v: Option<serde_json::Value>| v.and_then(|v| v.as_u64());
        let output = cap(budget.max_completion_tokens).or(cap(budget.max_tokens)).unwrap_or(u64::from(limits.default_output_tokens));
        lines.push(CheckedLine {
            line: n,
            custom_id,
            body: body.get().to_string(),
            input_tokens: (body.get().len() as f64 / 4.0).ceil(),
            output_tokens: output as f64,
        });
    }
    match model {
        Some(model) => Ok(CheckedFile { model, lines }),
        None => Err(InputError::Empty),
    }
}

fn clip(s: &str) -> String {
    s.chars().take(100).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, model: &str) -> String {
        format!(r#"{{"custom_id":"{id}","method":"POST","url":"/v1/chat/completions","body":{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"max_tokens":50}}}}"#)
    }

    fn ok(_: &str) -> Result<(), String> {
        Ok(())
    }

    fn err(content: &str) -> InputError {
        check(content.as_bytes(), &InputLimits::default(), &|m| if m.starts_with("m") { Ok(()) } else { Err(format!("model `{m}` does not exist")) })
            .unwrap_err()
    }

    #[test]
    fn a_good_file_reads_every_line() {
        let text = format!("{}\n{}\r\n{}\n", line("a", "m@price"), line("b", "m@price"), line("c", "m@price"));
        let f = check(text.as_bytes(), &InputLimits::default(), &ok).unwrap();
        assert_eq!(f.model, "m@price");
        assert_eq!(f.lines.len(), 3);
        assert_eq!(f.lines[1].custom_id, "b");
        assert_eq!(f.lines[2].line, 3);
        assert_eq!(f.lines[0].output_tokens, 50.0);
        assert!(f.lines[0].body.starts_with("{\"model\""));
        // Without a final newline too.
        assert_eq!(check(line("a", "m").as_bytes(), &InputLimits::default(), &ok).unwrap().lines.len(), 1);
    }

    #[test]
    fn every_bad_line_is_named_with_its_reason() {
        let l = |n: usize, s: &str| match err(s) {
            InputError::Line { line, reason } => {
                assert_eq!(line, n, "{reason}");
                reason
            }
            e => panic!("{e:?}"),
        };
        assert!(l(2, &format!("{}\n{}\n", line("a", "m"), line("a", "m"))).contains("duplicate custom_id `a`"));
        assert!(l(1, &line("a", "gpt-nope")).contains("model `gpt-nope` does not exist"));
        assert!(l(2, &format!("{}\n{}\n", line("a", "m1"), line("b", "m2"))).contains("same model"));
        assert!(l(1, "not json").contains("not a JSON object"));
        assert!(l(1, "[1]").contains("not a JSON object"));
        assert!(l(2, &format!("{}\n\n{}", line("a", "m"), line("b", "m"))).contains("empty line"));
        let wrong = line("a", "m").replace("/v1/chat/completions", "/v1/embeddings");
        assert!(l(1, &wrong).contains("`url` must be"));
        assert!(l(1, &line("a", "m").replace("POST", "GET")).contains("`method`"));
        assert!(l(1, &line("a", "m").replace("\"custom_id\":\"a\"", "\"custom_id\":7")).contains("custom_id"));
        assert!(l(1, &line("a", "m").replace("\"messages\"", "\"msgs\"")).contains("body:"));
        assert!(l(1, &line("a", "m").replace("\"max_tokens\":50", "\"stream\":true")).contains("stream"));
        assert!(l(1, r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions"}"#).contains("`body` is missing"));
    }

    #[test]
    fn limits_and_empty_files_are_refused() {
        let limits = InputLimits { max_lines: 2, max_bytes: 10_000, default_output_tokens: 7 };
        let three = format!("{}\n{}\n{}\n", line("a", "m"), line("b", "m"), line("c", "m"));
        assert_eq!(check(three.as_bytes(), &limits, &ok), Err(InputError::TooManyLines { limit: 2 }));
        let big = "x".repeat(10_001);
        assert_eq!(check(big.as_bytes(), &limits, &ok), Err(InputError::TooLarge { bytes: 10_001, limit: 10_000 }));
        assert_eq!(check(b"", &limits, &ok), Err(InputError::Empty));
        assert_eq!(check(&[0xff, 0xfe], &limits, &ok), Err(InputError::NotText));
        let no_cap = line("a", "m").replace(",\"max_tokens\":50", "");
        assert_eq!(check(no_cap.as_bytes(), &limits, &ok).unwrap().lines[0].output_tokens, 7.0);
    }
}
