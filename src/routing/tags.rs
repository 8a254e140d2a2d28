//! Strategy tags on the model name: `base@tag@tag…` → base id + a canonical strategy set.
//! Tags combine order-independently, so the set is kept sorted and a repeated tag counts once
//! (`@price@price` ≡ `@price`).

use std::fmt;

/// A strategy the gateway knows.
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

    fn from_tag(s: &str) -> Option<Self> {
        Strategy::ALL.into_iter().find(|x| x.tag() == s)
    }
}

/// Why a model name's tags were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    #[error("Malformed strategy tag `{0}` in the model name: tags are `@` followed by lower-case letters, digits, `-` or `_`. Available strategies: {known}.", known = known())]
    Malformed(String),
    #[error("Unknown strategy `{0}`. Available strategies: {known}.", known = known())]
    Unknown(String),
    #[error("The model name is empty.")]
    EmptyModel,
}

fn known() -> String {
    Strategy::ALL.iter().map(|s| s.tag()).collect::<Vec<_>>().join(", ")
}

/// A non-empty, sorted, duplicate-free set of strategies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StrategySet(Vec<Strategy>);

impl StrategySet {
    /// The config default: `price`.
    pub fn default_price() -> Self {
        StrategySet(vec![Strategy::Price])
    }

    /// The strategies, in canonical order.
    pub fn strategies(&self) -> &[Strategy] {
        &self.0
    }

    fn from_tags<'a>(tags: impl Iterator<Item = &'a str>) -> Result<Option<Self>, TagError> {
        let mut v = Vec::new();
        for t in tags {
            let ok = !t.is_empty()
                && t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
            if !ok {
                return Err(TagError::Malformed(t.chars().take(64).collect()));
            }
            let s = Strategy::from_tag(t).ok_or_else(|| TagError::Unknown(t.to_string()))?;
            v.push(s);
        }
        v.sort();
        v.dedup();
        Ok(if v.is_empty() { None } else { Some(StrategySet(v)) })
    }

    /// Parses a config value such as `price` or `latency@price`.
    ///
    /// # Errors
    /// Malformed or unknown tags, or an empty list.
    pub fn parse_list(s: &str) -> Result<Self, TagError> {
        Self::from_tags(s.trim_start_matches('@').split('@'))?.ok_or(TagError::Malformed(String::new()))
    }
}

impl fmt::Display for StrategySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.0.iter().map(|s| s.tag()).collect();
        f.write_str(&names.join("+"))
    }
}

/// Splits `base@tag@tag` into the base model id and the requested strategies (`None` when
/// the name has no tags).
///
/// # Errors
/// [`TagError`] for an empty base, an empty or malformed tag, or an unknown strategy.
pub fn parse_model(name: &str) -> Result<(&str, Option<StrategySet>), TagError> {
    let mut parts = name.split('@');
    let base = parts.next().unwrap_or("");
    if base.is_empty() {
        return Err(TagError::EmptyModel);
    }
    Ok((base, StrategySet::from_tags(parts)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_canonicalises() {
        let (b, s) = parse_model("llama@tokenrate@price").unwrap();
        assert_eq!(b, "llama");
        assert_eq!(s.unwrap().to_string(), "price+tokenrate");
        assert_eq!(parse_model("llama").unwrap(), ("llama", None));
        assert_eq!(parse_model("m@price@price").unwrap().1.unwrap().strategies(), &[Strategy::Price]);
        assert_eq!(parse_model("m@latency@price").unwrap().1, parse_model("m@price@latency").unwrap().1);
    }

    #[test]
    fn refuses_bad_tags() {
        assert!(matches!(parse_model("m@"), Err(TagError::Malformed(_))));
        assert!(matches!(parse_model("m@@price"), Err(TagError::Malformed(_))));
        assert!(matches!(parse_model("m@Price"), Err(TagError::Malformed(_))));
        assert!(matches!(parse_model("m@cheap"), Err(TagError::Unknown(_))));
        assert!(matches!(parse_model("@price"), Err(TagError::EmptyModel)));
        let msg = TagError::Unknown("cheap".into()).to_string();
        assert!(msg.contains("latency, price, tokenrate"), "{msg}");
    }
}
