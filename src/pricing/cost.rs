//! The cost of one request for the client: `usage.cost`, the total in US$ as a number (the
//! convention OpenRouter set and clients such as LiteLLM read), and `usage.cost_details`, what
//! the input and output tokens cost at the chosen deployment's price at decision time, how
//! much of that is energy and how much the routing fee. Also the byte-level insertion of both
//! into an upstream's usage object, so the rest of the upstream JSON reaches the client as
//! sent.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::api::chat::TokenCounts;
use crate::api::json::Str;
use crate::catalog::{CacheQuote, Quote};

/// Itemised cost of a request in US$. `total = input + output`; `energy` and `routing_fee`
/// are the parts of `total` due to energy (negative when energy prices were) and to the
/// third-party routing fee; `cache_read` and `cache_write` (present only when the route prices
/// cached prompt tokens apart) are the parts of `input` paid for prompt tokens read from and
/// written into the provider's cache.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Cost {
    pub total: f64,
    pub input: f64,
    pub output: f64,
    pub energy: f64,
    pub routing_fee: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<f64>,
    pub currency: &'static str,
}

fn usd(tokens: u64, per_mtok: f64) -> f64 {
    tokens as f64 * per_mtok / 1e6
}

/// Rounds to a nano-dollar so sums print without float noise.
fn round(x: f64) -> f64 {
    (x * 1e9).round() / 1e9
}

impl Cost {
    /// The cost of `t`'s tokens at quote `q`: prompt tokens at the input price — except,
    /// when the quote prices the cache apart, the cached ones at the cache read and write
    /// prices — and completion tokens at the output price. Free models' quotes are 0, so their
    /// cost is 0.
    pub fn of(q: &Quote, t: &TokenCounts) -> Cost {
        let (uncached, read, write, cache) = match &q.cache {
            Some(c) => (t.prompt.saturating_sub(t.cache_read).saturating_sub(t.cache_write), t.cache_read, t.cache_write, c),
            None => (t.prompt, 0, 0, &CacheQuote::default()),
        };
        let cache_read = usd(read, cache.price.read);
        let cache_write = usd(write, cache.price.write);
        let input = usd(uncached, q.price.input) + cache_read + cache_write;
        let output = usd(t.completion, q.price.output);
        let fee = usd(uncached, q.fee.input) + usd(read, cache.fee.read) + usd(write, cache.fee.write) + usd(t.completion, q.fee.output);
        Cost {
            total: round(input + output),
            input: round(input),
            output: round(output),
            energy: round(usd(t.prompt, q.energy.input) + usd(t.completion, q.energy.output)),
            routing_fee: round(fee),
            cache_read: q.cache.map(|_| round(cache_read)),
            cache_write: q.cache.map(|_| round(cache_write)),
            currency: "USD",
        }
    }

    /// The breakdown as the JSON object sent as `usage.cost_details` (every member but the
    /// total).
    pub fn details_json(&self) -> String {
        let mut out = Vec::with_capacity(160);
        self.write_details(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// The two usage members, `"cost":<total>,"cost_details":{…}`, written into one buffer.
    pub fn members_json(&self) -> String {
        let mut out = Vec::with_capacity(200);
        out.extend_from_slice(b"\"cost\":");
        // A number always serialises (a non-finite one as `null`, as before).
        let _ = serde_json::to_writer(&mut out, &self.total);
        out.extend_from_slice(b",\"cost_details\":");
        self.write_details(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    fn write_details(&self, out: &mut Vec<u8>) {
        #[derive(Serialize)]
        struct Details<'a> {
            input: f64,
            output: f64,
            energy: f64,
            routing_fee: f64,
            #[serde(skip_serializing_if = "Option::is_none")]
            cache_read: Option<f64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            cache_write: Option<f64>,
            currency: &'a str,
        }
        let d = Details {
            input: self.input,
            output: self.output,
            energy: self.energy,
            routing_fee: self.routing_fee,
            cache_read: self.cache_read,
            cache_write: self.cache_write,
            currency: self.currency,
        };
        // A struct of numbers and a string always serialises.
        let _ = serde_json::to_writer(out, &d);
    }
}

/// Inserts `"cost": <total>, "cost_details": {…}` into the top-level `usage` object of a JSON
/// document, leaving every other byte as it was. `None` when the document has no usage
/// object. A `cost` or `cost_details` the upstream put there itself is replaced (only the usage
/// object is then rewritten, member by member).
pub fn insert_cost(doc: &[u8], cost: &Cost) -> Option<Vec<u8>> {
    set_cost(doc, Some(cost))
}

/// Removes a `cost` (and `cost_details`) the upstream put into the top-level `usage` object
/// itself (which the client would take for joule's), for answers joule computes no cost for. `None` when there is none
/// (the document is then unchanged); otherwise only the usage object is rewritten.
pub fn remove_cost(doc: &[u8]) -> Option<Vec<u8>> {
    set_cost(doc, None)
}

fn set_cost(doc: &[u8], cost: Option<&Cost>) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(doc).ok()?;
    let mut usage = None;
    // The last `usage` member, as a JSON tree would keep it.
    visit_members(text, |k, v| {
        if k == "usage" {
            usage = Some(v);
        }
    })?;
    let usage = usage?.get();
    let start = usage.as_ptr() as usize - text.as_ptr() as usize;
    let end = start + usage.len();
    let rewritten = usage_with_cost(usage, cost)?;
    Some([&doc[..start], rewritten.as_bytes(), &doc[end..]].concat())
}

/// The JSON object `usage` (a document's usage object, as its text) with joule's `cost` and
/// `cost_details` set (`Some`), or an upstream's own removed (`None`). `None` when nothing
/// changes (nothing to set and nothing to remove) or `usage` is not one JSON object. Members
/// other than those two keep their bytes; when the upstream wrote neither, the new members
/// go in before the closing brace and nothing else is touched.
pub fn usage_with_cost(usage: &str, cost: Option<&Cost>) -> Option<String> {
    if !usage.starts_with('{') {
        return None;
    }
    let (mut members, mut has_cost) = (0usize, false);
    visit_members(usage, |k, _| {
        members += 1;
        has_cost |= is_cost(&k);
    })?;
    if cost.is_none() && !has_cost {
        return None;
    }
    let cost_json = cost.map(Cost::members_json);
    let mut out = String::with_capacity(usage.len() + cost_json.as_ref().map_or(0, String::len) + 2);
    if has_cost {
        // Rewritten member by member (values as sent), without the upstream's `cost`.
        out.push('{');
        let mut first = true;
        visit_members(usage, |k, v| {
            if !is_cost(&k) {
                if !std::mem::take(&mut first) {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(&k).unwrap_or_default());
                out.push(':');
                out.push_str(v.get());
            }
        })?;
        if let Some(c) = &cost_json {
            if !first {
                out.push(',');
            }
            out.push_str(c);
        }
        out.push('}');
    } else if let Some(c) = &cost_json {
        // `usage` is one object (parsed above), so it ends with `}`; insert before it.
        out.push_str(usage.get(..usage.len() - 1)?);
        if members > 0 {
            out.push(',');
        }
        out.push_str(c);
        out.push('}');
    }
    Some(out)
}

/// The usage members joule writes, and so removes when an upstream wrote them.
fn is_cost(key: &str) -> bool {
    key == "cost" || key == "cost_details"
}

/// Calls `f` with each member of the JSON object `text` in order, its value borrowed raw:
/// nothing is collected, so a document of any shape costs no memory beyond its bytes. `None`
/// when `text` is not one JSON object.
fn visit_members<'a>(text: &'a str, f: impl FnMut(Cow<'a, str>, &'a RawValue)) -> Option<()> {
    struct V<F>(F);
    impl<'de, F: FnMut(Cow<'de, str>, &'de RawValue)> Visitor<'de> for V<F> {
        type Value = ();
        fn expecting(&self, out: &mut fmt::Formatter) -> fmt::Result {
            out.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
            while let Some(k) = map.next_key::<Str<'de>>()? {
                let v: &'de RawValue = map.next_value()?;
                (self.0)(k.0, v);
            }
            Ok(())
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_map(V(f)).ok()?;
    de.end().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::TokenPrice;

    fn tp(i: f64, o: f64) -> TokenPrice {
        TokenPrice { input: i, output: o }
    }

    #[test]
    fn cost_items_add_up() {
        let q = Quote { price: tp(0.2, 0.6), fee: TokenPrice::default(), cost: tp(0.2, 0.6), energy: tp(0.05, 0.2), stale: false, cache: None };
        let c = Cost::of(&q, &TokenCounts::new(1_000_000, 500_000));
        assert_eq!((c.input, c.output, c.total), (0.2, 0.3, 0.5));
        assert!((c.energy - 0.15).abs() < 1e-12);
        assert_eq!(c.routing_fee, 0.0);
        // Provider route: list 1.0/2.0 + 5%.
        let q = Quote { price: tp(1.05, 2.1), fee: tp(0.05, 0.1), cost: tp(1.05, 2.1), ..Quote::default() };
        let c = Cost::of(&q, &TokenCounts::new(2_000, 1_000));
        assert_eq!((c.total, c.routing_fee, c.energy), (0.0042, 0.0002, 0.0));
        assert_eq!((c.cache_read, c.cache_write), (None, None), "no cache prices, no cache items");
        // Cached tokens without cache prices cost what input costs.
        let cached = TokenCounts { prompt: 2_000, completion: 1_000, cache_read: 1_500, cache_write: 100 };
        assert_eq!(Cost::of(&q, &cached), c);
        // Free model: the quote is 0.
        let c = Cost::of(&Quote { cost: tp(0.1, 0.2), ..Quote::default() }, &TokenCounts::new(10_000, 10_000));
        assert_eq!((c.total, c.input, c.output, c.energy), (0.0, 0.0, 0.0, 0.0));
        // Negative energy lowers the total below the base.
        let q = Quote { price: tp(0.09, 0.08), cost: tp(0.09, 0.08), energy: tp(-0.01, -0.02), ..Quote::default() };
        assert_eq!(Cost::of(&q, &TokenCounts::new(1_000_000, 1_000_000)).energy, -0.03);
    }

    #[test]
    fn cache_prices_itemise_the_cached_prompt_tokens() {
        use crate::catalog::{CachePrice, CacheQuote};
        // Anthropic-like list prices 3 in / 15 out / 0.30 cache read / 3.75 cache write, + 5%.
        let q = Quote {
            price: tp(3.15, 15.75),
            fee: tp(0.15, 0.75),
            cost: tp(3.15, 15.75),
            cache: Some(CacheQuote { price: CachePrice { read: 0.315, write: 3.9375 }, fee: CachePrice { read: 0.015, write: 0.1875 } }),
            ..Quote::default()
        };
        let t = TokenCounts { prompt: 1_000_000, completion: 100_000, cache_read: 600_000, cache_write: 200_000 };
        let c = Cost::of(&q, &t);
        // 200k uncached × 3.15 + 600k × 0.315 + 200k × 3.9375 = 0.63 + 0.189 + 0.7875
        assert_eq!((c.cache_read, c.cache_write), (Some(0.189), Some(0.7875)));
        assert_eq!(c.input, 1.6065);
        assert_eq!(c.output, 1.575);
        assert_eq!(c.total, 3.1815);
        // Fee: 200k × 0.15 + 600k × 0.015 + 200k × 0.1875 + 100k × 0.75 = 0.03 + 0.009 + 0.0375 + 0.075
        assert_eq!(c.routing_fee, 0.1515);
        let v: serde_json::Value = serde_json::from_str(&c.details_json()).unwrap();
        assert_eq!(v["cache_read"], 0.189);
        assert!(v.get("total").is_none(), "the total is usage.cost itself");
        // Nothing cached: the items are there, at 0.
        let c = Cost::of(&q, &TokenCounts::new(1_000_000, 0));
        assert_eq!((c.input, c.cache_read, c.cache_write), (3.15, Some(0.0), Some(0.0)));
    }

    #[test]
    fn insert_keeps_the_rest_byte_exact() {
        let c = Cost { total: 1.5, input: 0.5, output: 1.0, energy: 0.25, routing_fee: 0.0, cache_read: None, cache_write: None, currency: "USD" };
        let doc = br#"{"id":"x", "usage": {"prompt_tokens": 3 ,"completion_tokens":4}, "z":[1, 2.50]}"#;
        let out = String::from_utf8(insert_cost(doc, &c).unwrap()).unwrap();
        assert_eq!(
            out,
            r#"{"id":"x", "usage": {"prompt_tokens": 3 ,"completion_tokens":4,"cost":1.5,"cost_details":{"input":0.5,"output":1.0,"energy":0.25,"routing_fee":0.0,"currency":"USD"}}, "z":[1, 2.50]}"#
        );
        let empty = insert_cost(br#"{"usage":{}}"#, &c).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&empty).unwrap();
        assert_eq!(v["usage"]["cost"], 1.5);
        let replaced = insert_cost(br#"{"usage":{"cost":7,"cost_details":{"x":1},"prompt_tokens":1}}"#, &c).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&replaced).unwrap();
        assert_eq!((v["usage"]["cost"].as_f64(), v["usage"]["prompt_tokens"].as_u64()), (Some(1.5), Some(1)));
        assert_eq!(v["usage"]["cost_details"]["output"], 1.0);
        assert!(v["usage"]["cost_details"].get("x").is_none(), "{v}");
        assert!(insert_cost(br#"{"usage":null}"#, &c).is_none());
        assert!(insert_cost(br#"{"choices":[]}"#, &c).is_none());
        assert!(insert_cost(b"not json", &c).is_none());
        // An upstream's own cost is removed where joule computes none.
        let removed = remove_cost(br#"{"usage":{"cost":1e13,"prompt_tokens":-1}, "z":[1, 2.50]}"#).unwrap();
        assert_eq!(String::from_utf8(removed).unwrap(), r#"{"usage":{"prompt_tokens":-1}, "z":[1, 2.50]}"#);
        assert!(remove_cost(br#"{"usage":{"prompt_tokens":-1}}"#).is_none());
        assert!(remove_cost(br#"{"usage":null}"#).is_none());
    }
}
