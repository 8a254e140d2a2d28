//! JSON reading helpers shared by the readers of request and answer bodies.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, Visitor};

/// A JSON string that borrows from the input when it has no escapes, and is copied only when
/// it has. serde's own `Cow<str>` always copies (its borrowing form is private to derives, and
/// does not reach `Option<Cow<str>>` or map keys), which cost an allocation per member name
/// on every request and answer read.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Str<'a>(pub Cow<'a, str>);

impl Str<'_> {
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text as an owned string (copied only if borrowed).
    pub fn into_owned(self) -> String {
        self.0.into_owned()
    }
}

impl PartialEq<str> for Str<'_> {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for Str<'_> {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl std::ops::Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrows_plain_strings_and_copies_escaped_ones() {
        let plain: Str = serde_json::from_str(r#""model""#).unwrap();
        assert!(matches!(plain.0, Cow::Borrowed("model")));
        let escaped: Str = serde_json::from_str(r#""mo\u0064el""#).unwrap();
        assert!(matches!(&escaped.0, Cow::Owned(s) if s == "model"));
        let keys: std::collections::BTreeMap<Str, u8> = serde_json::from_str(r#"{"a": 1, "b\n": 2}"#).unwrap();
        assert!(matches!(keys.keys().next().map(|k| &k.0), Some(Cow::Borrowed("a"))));
        assert!(keys.contains_key(&Str(Cow::Borrowed("b\n"))));
        assert!(serde_json::from_str::<Str>("1").is_err());
    }
}
