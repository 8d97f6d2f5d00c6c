//! Finds the value at a JSON pointer in a body without building the document.
//!
//! A `serde` seed walks the pointer's tokens and skips every other value with
//! `IgnoredAny`, so a multi-megabyte Messages body costs one pass and no
//! allocation beyond the result. Strings, numbers and booleans are returned
//! as text; objects, arrays and null count as absent.

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// The value at `pointer` (unescaped tokens) in `body`, if `body` is JSON and
/// the value is a string, number or boolean.
pub fn find(body: &[u8], pointer: &[String]) -> Option<String> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let found = PointerSeed { path: pointer }.deserialize(&mut de).ok()?;
    // Trailing garbage makes the body invalid JSON as a whole.
    de.end().ok()?;
    found
}

struct PointerSeed<'p> {
    path: &'p [String],
}

impl<'de> DeserializeSeed<'de> for PointerSeed<'_> {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        if self.path.is_empty() {
            d.deserialize_any(LeafVisitor)
        } else {
            d.deserialize_any(self)
        }
    }
}

impl<'de> Visitor<'de> for PointerSeed<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (head, rest) = (&self.path[0], &self.path[1..]);
        let mut found = None;
        while let Some(key) = map.next_key::<KeyMatch>()? {
            // serde_json borrows keys without escapes; others are compared owned.
            if found.is_none() && key.matches(head) {
                found = map.next_value_seed(PointerSeed { path: rest })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let wanted: Option<usize> = self.path[0].parse().ok();
        let rest = &self.path[1..];
        let mut found = None;
        let mut index = 0usize;
        loop {
            if Some(index) == wanted {
                match seq.next_element_seed(PointerSeed { path: rest })? {
                    Some(v) => found = v,
                    None => break,
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            index += 1;
        }
        Ok(found)
    }

    // Scalars where the pointer wants to go deeper: absent.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// A map key, borrowed when the input allows it.
enum KeyMatch<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl KeyMatch<'_> {
    fn matches(&self, want: &str) -> bool {
        match self {
            KeyMatch::Borrowed(s) => *s == want,
            KeyMatch::Owned(s) => s == want,
        }
    }
}

impl<'de> de::Deserialize<'de> for KeyMatch<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyMatch<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(KeyMatch::Borrowed(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(KeyMatch::Owned(v.to_string()))
            }
        }
        d.deserialize_str(V)
    }
}

struct LeafVisitor;

impl<'de> Visitor<'de> for LeafVisitor {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::find;

    fn p(s: &str) -> Vec<String> {
        s.trim_start_matches('/')
            .split('/')
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn finds_values_anywhere() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            (
                r#"{"metadata":{"user_id":"u1"}}"#,
                "/metadata/user_id",
                Some("u1"),
            ),
            (
                r#"{"messages":[{"a":1},{"b":[2,3]}],"metadata":{"x":null,"user_id":"u\"2"}}"#,
                "/metadata/user_id",
                Some("u\"2"),
            ),
            (r#"{"a":[10,20,{"k":7}]}"#, "/a/2/k", Some("7")),
            (r#"{"a":{"k":true}}"#, "/a/k", Some("true")),
            (r#"{"a":{"k":{"deep":1}}}"#, "/a/k", None),
            (r#"{"a":{"k":null}}"#, "/a/k", None),
            (r#"{"a":"str"}"#, "/a/k", None),
            (r#"{"a\u0062":"escaped key"}"#, "/ab", Some("escaped key")),
            (r#"{"a":1}"#, "/b", None),
            (r#"{"a":1"#, "/a", None),
            (r#"{"a":1} trailing"#, "/a", None),
            ("not json", "/a", None),
            ("", "/a", None),
        ];
        for (body, ptr, want) in cases {
            assert_eq!(
                find(body.as_bytes(), &p(ptr)).as_deref(),
                *want,
                "{body} {ptr}"
            );
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let deep = "[".repeat(200_000);
        assert_eq!(find(deep.as_bytes(), &p("/a")), None);
        let deep_objects = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
        assert_eq!(find(deep_objects.as_bytes(), &p("/a/a")), None);
    }
}
