//! The JSON scanner against serde_json, on any bytes and any pointer: it
//! finds what serde_json finds, and nothing in a document serde_json
//! refuses. (The unit test `agrees_with_serde_json_on_random_and_broken_documents`
//! is the same comparison on generated documents.)
//!
//! Where the two are meant to differ, nothing is compared: a document with
//! a repeated key (`find` takes the first, serde_json's `Value` the last),
//! and a string with an unpaired surrogate escape (skipped strings are only
//! checked for four hex digits, as by serde_json's `IgnoredAny`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_edge::affinity::json_scan::find;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::collections::HashSet;

fuzz_target!(|data: (&str, &[u8])| {
    let (pointer, body) = data;
    let Some(tokens) = relay_edge::config::json_pointer(pointer) else {
        return;
    };
    let found = find(body, &tokens);
    if serde_json::from_slice::<IgnoredAny>(body).is_err() {
        assert_eq!(
            found, None,
            "found a value in a document serde_json refuses"
        );
        return;
    }
    if serde_json::from_slice::<NoRepeatedKeys>(body).is_err() {
        return;
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    let path: String = tokens
        .iter()
        .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
        .collect();
    let want = match value.pointer(&path) {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => Some(u.to_string()),
            (_, Some(i), _) => Some(i.to_string()),
            (_, _, f) => f.map(|f| f.to_string()),
        },
        Some(serde_json::Value::Bool(b)) => Some(b.to_string()),
        _ => None,
    };
    assert_eq!(found, want, "pointer {path:?}");
});

/// Deserializes only a document in which no object repeats a key.
struct NoRepeatedKeys;

impl<'de> Deserialize<'de> for NoRepeatedKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoRepeatedKeysVisitor)
    }
}

struct NoRepeatedKeysVisitor;

impl<'de> Visitor<'de> for NoRepeatedKeysVisitor {
    type Value = NoRepeatedKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(NoRepeatedKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(NoRepeatedKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(NoRepeatedKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(NoRepeatedKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(NoRepeatedKeys)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(NoRepeatedKeys)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<NoRepeatedKeys>()?.is_some() {}
        Ok(NoRepeatedKeys)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key) {
                return Err(serde::de::Error::custom("repeated key"));
            }
            map.next_value::<NoRepeatedKeys>()?;
        }
        Ok(NoRepeatedKeys)
    }
}
