//! What the admin API reads from a request besides its path: the query string (decoded by
//! `serde_urlencoded`, each parameter at most once) and JSON bodies (serde types that refuse
//! unknown fields), with OpenAI-shaped 400s that name the parameter or field at fault.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::clip;
use crate::api::error::ApiError;

/// A parsed query string: every parameter at most once.
pub(super) struct Query(Vec<(String, String)>);

impl Query {
    /// Decodes a query string (without `?`): `+` is a space, `%XX` a byte; refused when an
    /// escape is malformed, the bytes are not UTF-8, or a parameter is given twice.
    ///
    /// # Errors
    /// 400 `invalid_request_error`.
    pub(super) fn parse(q: Option<&str>) -> Result<Self, ApiError> {
        let q = q.unwrap_or("");
        let malformed = || ApiError::invalid("Malformed query string.", None);
        // serde_urlencoded keeps a bad escape as it is and decodes bytes that are not UTF-8
        // lossily: refuse both instead of answering for a parameter the client did not send.
        let bytes = q.as_bytes();
        let escapes_ok = bytes.iter().enumerate().filter(|&(_, &b)| b == b'%').all(|(i, _)| bytes.get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)));
        if !escapes_ok {
            return Err(malformed());
        }
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q).map_err(|_| malformed())?;
        let mut out: Vec<(String, String)> = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            if k.contains(char::REPLACEMENT_CHARACTER) || v.contains(char::REPLACEMENT_CHARACTER) {
                return Err(malformed());
            }
            if out.iter().any(|(x, _)| *x == k) {
                return Err(ApiError::invalid(format!("Query parameter `{}` given twice.", clip(&k, 64)), None));
            }
            out.push((k, v));
        }
        Ok(Query(out))
    }

    /// The value of `k`, if given.
    pub(super) fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str())
    }

    /// Refuses a parameter outside `allowed`.
    ///
    /// # Errors
    /// 400 naming the first such parameter and the allowed ones.
    pub(super) fn only(&self, allowed: &[&str]) -> Result<(), ApiError> {
        match self.0.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            Some((k, _)) => Err(ApiError::invalid(
                format!("Unknown query parameter `{}`; allowed here: {}.", clip(k, 64), if allowed.is_empty() { "none".into() } else { allowed.join(", ") }),
                None,
            )),
            None => Ok(()),
        }
    }
}

/// A JSON object body: a serde type with `#[serde(deny_unknown_fields)]` whose fields are all
/// optional (required ones are checked after parsing, with their own message).
pub(super) trait JsonBody: DeserializeOwned {
    /// The field names, in the order their errors take precedence.
    const FIELDS: &'static [&'static str];
}

/// Parses a JSON object body into `T`.
///
/// # Errors
/// 400: not JSON, not an object, an unknown field (`Unknown field `x`.`), or a field of the
/// wrong type (`` `rpm`: invalid type: … ``, with `param` naming the field).
pub(super) fn parse_json<T: JsonBody>(body: &[u8]) -> Result<T, ApiError> {
    let value = match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return Err(ApiError::invalid("The body must be a JSON object.", None)),
        Err(e) => return Err(ApiError::invalid(format!("The body is not valid JSON: {e}"), None)),
    };
    T::deserialize(&value).map_err(|e| match &value {
        Value::Object(map) => blame::<T>(map, &e),
        _ => ApiError::invalid(format!("The body does not fit: {e}"), None),
    })
}

/// The error for an object `T` refused: the first known field that fails on its own (every
/// field is optional, so one alone only fails for itself), else the first unknown field.
fn blame<T: JsonBody>(map: &Map<String, Value>, e: &serde_json::Error) -> ApiError {
    for &name in T::FIELDS {
        let Some(v) = map.get(name) else { continue };
        let alone = Value::Object(Map::from_iter([(name.to_string(), v.clone())]));
        if let Err(e) = T::deserialize(&alone) {
            return ApiError::invalid(format!("`{name}`: {e}"), Some(name));
        }
    }
    match map.keys().find(|k| !T::FIELDS.contains(&k.as_str())) {
        Some(k) => ApiError::invalid(format!("Unknown field `{}`.", clip(k, 64)), None),
        None => ApiError::invalid(format!("The body does not fit: {e}"), None),
    }
}

/// For `#[serde(default, deserialize_with = "nullable")]` on an `Option<Option<T>>` field:
/// absent → `None` (the default), `null` → `Some(None)`, a value → `Some(Some(value))`.
pub(super) fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn query_strings_decode_and_refuse_repeats() {
        let q = Query::parse(Some("model=llama%2D3&status=200&x=a+b")).unwrap();
        assert_eq!(q.get("model"), Some("llama-3"));
        assert_eq!(q.get("x"), Some("a b"));
        assert!(q.only(&["model", "status"]).is_err());
        assert!(Query::parse(Some("a=1&a=2")).is_err());
        assert!(Query::parse(Some("a=%zz")).is_err());
        assert!(Query::parse(Some("a=%ff")).is_err(), "not UTF-8");
    }

    #[test]
    fn query_messages_and_edge_cases() {
        let msg = |q: &str| Query::parse(Some(q)).err().map(|e| String::from_utf8(e.body()).unwrap());
        assert!(msg("a=1&a=2").unwrap().contains("Query parameter `a` given twice."));
        assert!(msg("a=%4").unwrap().contains("Malformed query string."));
        let q = Query::parse(None).unwrap();
        assert!(q.only(&[]).is_ok());
        let q = Query::parse(Some("&&flag&k=%E2%82%AC&=v")).unwrap();
        assert_eq!((q.get("flag"), q.get("k"), q.get("")), (Some(""), Some("€"), Some("v")));
        let e = Query::parse(Some("colour=red")).unwrap().only(&["project"]).unwrap_err();
        assert_eq!(e, ApiError::invalid("Unknown query parameter `colour`; allowed here: project.", None));
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[serde(default, deserialize_with = "nullable")]
        limit: Option<Option<u32>>,
        label: Option<String>,
    }

    impl JsonBody for Sample {
        const FIELDS: &'static [&'static str] = &["label", "limit"];
    }

    fn parse(v: Value) -> Result<Sample, ApiError> {
        parse_json(v.to_string().as_bytes())
    }

    #[test]
    fn null_and_absent_are_told_apart() {
        assert_eq!(parse(json!({"limit": null})).unwrap(), Sample { limit: Some(None), label: None });
        assert_eq!(parse(json!({"limit": 5, "label": null})).unwrap(), Sample { limit: Some(Some(5)), label: None });
        assert_eq!(parse(json!({})).unwrap(), Sample { limit: None, label: None });
    }

    #[test]
    fn unknown_fields_and_other_shapes_are_refused() {
        let e = parse(json!({"limit": 1, "surprise": 1})).unwrap_err();
        assert_eq!(e, ApiError::invalid("Unknown field `surprise`.", None));
        // A wrong type takes precedence over an unknown field, the fields in their order.
        let e = parse(json!({"zzz": 1, "limit": "x", "label": 2})).unwrap_err();
        assert_eq!(e, ApiError::invalid("`label`: invalid type: integer `2`, expected a string", Some("label")));
        let e = parse(json!({"limit": -1})).unwrap_err();
        assert_eq!(e, ApiError::invalid("`limit`: invalid value: integer `-1`, expected u32", Some("limit")));
        for (raw, want) in [("[1]", "The body must be a JSON object."), ("null", "The body must be a JSON object."), ("", "The body is not valid JSON: "), ("{", "The body is not valid JSON: ")] {
            let e = parse_json::<Sample>(raw.as_bytes()).unwrap_err();
            let ApiError::InvalidRequest { message, .. } = &e else { panic!("{e:?}") };
            assert!(message.starts_with(want), "{raw:?}: {message}");
        }
    }
}
