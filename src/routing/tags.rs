//! Strategy tags on the model name: `base@tag@tag…` → base id + a canonical strategy set.
//! Tags combine order-independently, so the set is kept sorted and a repeated tag counts once
//! (`@price@price` ≡ `@price`).
//!
//! Parsing checks syntax only: which tags exist depends on the plugin set loaded right now
//! ([`crate::routing::wasm::PluginSet::check`]), besides the built-in [`Strategy`] tags that
//! the native ranking always knows.

use std::fmt;
use std::sync::Arc;

/// A built-in strategy: always available, as a Wasm plugin when one is loaded for its tag and
/// natively otherwise (and as the fallback when plugins fail).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Strategy {
    /// Cheapest current token price (input + output $/Mtok).
    Price,
    /// Lowest expected time to first token.
    Latency,
    /// Highest expected decode tokens per second.
    TokenRate,
}

impl Strategy {
    /// Every built-in strategy, in canonical order.
    pub const ALL: [Strategy; 3] = [Strategy::Latency, Strategy::Price, Strategy::TokenRate];

    /// The tag spelling.
    pub fn tag(self) -> &'static str {
        match self {
            Strategy::Price => "price",
            Strategy::Latency => "latency",
            Strategy::TokenRate => "tokenrate",
        }
    }

    /// The built-in strategy with this tag.
    pub fn from_tag(s: &str) -> Option<Self> {
        Strategy::ALL.into_iter().find(|x| x.tag() == s)
    }
}

/// Longest accepted tag.
pub const MAX_TAG_LEN: usize = 32;

/// Why a model name's tags were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    #[error("Malformed strategy tag `{0}` in the model name: tags are `@` followed by 1 to 32 lower-case letters, digits, `-` or `_`.")]
    Malformed(String),
    #[error("Unknown strategy `{tag}`. Available strategies: {available}.")]
    Unknown { tag: String, available: String },
    #[error("The model name is empty.")]
    EmptyModel,
}

/// True for a well-formed tag: 1 to [`MAX_TAG_LEN`] of `a-z`, `0-9`, `-`, `_`.
pub fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= MAX_TAG_LEN
        && t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// A non-empty, sorted, duplicate-free set of strategy tags. Cloning is one reference count.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StrategySet(Arc<[Arc<str>]>);

impl StrategySet {
    /// The config default: `price`.
    pub fn default_price() -> Self {
        StrategySet(Arc::from([Arc::from("price")]))
    }

    /// The tags, sorted.
    pub fn tags(&self) -> &[Arc<str>] {
        &self.0
    }

    /// The built-in strategies among the tags, in canonical order.
    pub fn builtins(&self) -> impl Iterator<Item = Strategy> + '_ {
        self.0.iter().filter_map(|t| Strategy::from_tag(t))
    }

    fn from_tags<'a>(tags: impl Iterator<Item = &'a str>) -> Result<Option<Self>, TagError> {
        let mut v: Vec<&str> = Vec::new();
        for t in tags {
            if !valid_tag(t) {
                return Err(TagError::Malformed(t.chars().take(64).collect()));
            }
            v.push(t);
        }
        v.sort_unstable();
        v.dedup();
        Ok(if v.is_empty() { None } else { Some(StrategySet(v.into_iter().map(Arc::from).collect())) })
    }

    /// Parses a config value such as `price` or `latency@price` (syntax only).
    ///
    /// # Errors
    /// Malformed tags, or an empty list.
    pub fn parse_list(s: &str) -> Result<Self, TagError> {
        Self::from_tags(s.trim_start_matches('@').split('@'))?.ok_or(TagError::Malformed(String::new()))
    }

    /// The first tag `known` refuses, as the client-facing error listing `available`.
    ///
    /// # Errors
    /// [`TagError::Unknown`] for that tag.
    pub fn check(&self, known: impl Fn(&str) -> bool, available: impl FnOnce() -> Vec<String>) -> Result<(), TagError> {
        match self.0.iter().find(|t| !known(t)) {
            None => Ok(()),
            Some(t) => Err(TagError::Unknown { tag: t.to_string(), available: available().join(", ") }),
        }
    }
}

impl fmt::Display for StrategySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("+")?;
            }
            f.write_str(t)?;
        }
        Ok(())
    }
}

/// Splits `base@tag@tag` into the base model id and the requested strategies (`None` when
/// the name has no tags). Checks tag syntax only; see [`StrategySet::check`].
///
/// # Errors
/// [`TagError`] for an empty base or an empty or malformed tag.
pub fn parse_model(name: &str) -> Result<(&str, Option<StrategySet>), TagError> {
    let mut parts = name.split('@');
    let base = parts.next().unwrap_or("");
    if base.is_empty() {
        return Err(TagError::EmptyModel);
    }
    Ok((base, StrategySet::from_tags(parts)?))
}

/// The built-in tags, sorted: what is always available.
pub fn builtin_tags() -> Vec<String> {
    Strategy::ALL.iter().map(|s| s.tag().to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(s: &StrategySet) -> Vec<&str> {
        s.tags().iter().map(|t| &**t).collect()
    }

    #[test]
    fn parses_and_canonicalises() {
        let (b, s) = parse_model("llama@tokenrate@price").unwrap();
        assert_eq!(b, "llama");
        assert_eq!(s.unwrap().to_string(), "price+tokenrate");
        assert_eq!(parse_model("llama").unwrap(), ("llama", None));
        assert_eq!(tags(&parse_model("m@price@price").unwrap().1.unwrap()), ["price"]);
        assert_eq!(parse_model("m@latency@price").unwrap().1, parse_model("m@price@latency").unwrap().1);
        let s = parse_model("m@green@price").unwrap().1.unwrap();
        assert_eq!(tags(&s), ["green", "price"]);
        assert_eq!(s.builtins().collect::<Vec<_>>(), [Strategy::Price]);
    }

    #[test]
    fn refuses_bad_tags() {
        assert!(matches!(parse_model("m@"), Err(TagError::Malformed(_))));
        assert!(matches!(parse_model("m@@price"), Err(TagError::Malformed(_))));
        assert!(matches!(parse_model("m@Price"), Err(TagError::Malformed(_))));
        assert!(matches!(parse_model(&format!("m@{}", "a".repeat(33))), Err(TagError::Malformed(_))));
        assert!(matches!(parse_model("@price"), Err(TagError::EmptyModel)));
        let s = parse_model("m@cheap@price").unwrap().1.unwrap();
        let err = s.check(|t| Strategy::from_tag(t).is_some(), builtin_tags).unwrap_err();
        assert_eq!(err, TagError::Unknown { tag: "cheap".into(), available: "latency, price, tokenrate".into() });
        assert!(err.to_string().contains("Available strategies: latency, price, tokenrate."), "{err}");
        assert!(parse_model("m@latency@price").unwrap().1.unwrap().check(|t| Strategy::from_tag(t).is_some(), builtin_tags).is_ok());
    }
}
