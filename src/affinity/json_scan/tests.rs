//! The JSON scan's tests: found, absent and hostile documents.

use super::find;

pub(super) fn p(s: &str) -> Vec<String> {
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
        (r#"{"e":"\ud83d\ude00"}"#, "/e", Some("😀")),
        (r#"{"e":"\ud83d"}"#, "/e", None),
        ("{\"e\":\"raw\u{1}control\"}", "/e", None),
        (r#"{"a":1}"#, "/b", None),
        (r#"{"a":1"#, "/a", None),
        (r#"{"a":1} trailing"#, "/a", None),
        ("not json", "/a", None),
        ("", "/a", None),
        // Array indexes as RFC 6901 has them (found by the fuzz target).
        ("[11]", "/000000", None),
        ("[11]", "/00", None),
        ("[11,12]", "/+1", None),
        ("[11,12]", "/1", Some("12")),
        ("[11,12]", "/0", Some("11")),
    ];
    for (body, ptr, want) in cases {
        assert_eq!(
            find(body.as_bytes(), &p(ptr)).as_deref(),
            *want,
            "{body} {ptr}"
        );
    }
}

/// The reference: parse the whole document with serde_json.
fn reference(body: &[u8], tokens: &[String]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let pointer: String = tokens.iter().map(|t| format!("/{t}")).collect();
    match v.pointer(&pointer)? {
        serde_json::Value::String(s) => Some(s.clone()),
        // As the scanner prints numbers (Rust's Display, not serde_json's).
        serde_json::Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => Some(u.to_string()),
            (_, Some(i), _) => Some(i.to_string()),
            (_, _, f) => f.map(|f| f.to_string()),
        },
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A random JSON value; object keys are distinct (serde_json's `Value`
/// keeps the last of duplicates, `find` the first, as the old scanner).
/// No surrogate escapes: `Value` checks their pairing in every string,
/// while skipped strings (here, and in serde_json's `IgnoredAny`) are
/// only checked for four hex digits.
fn random_value(rng: &mut fastrand::Rng, depth: usize, out: &mut String) {
    const STRINGS: &[&str] = &[
        r#""a""#,
        r#""""#,
        r#""x\"y""#,
        r#""tab\there""#,
        r#""\u00e9t\u00e9""#,
        r#""été 😀""#,
        r#""back\\slash""#,
        r#""sl\/ash""#,
    ];
    const NUMBERS: &[&str] = &[
        "0",
        "-0",
        "7",
        "-12",
        "1.50",
        "2e3",
        "-1.25E-2",
        "18446744073709551615",
    ];
    match if depth > 3 {
        rng.usize(0..4)
    } else {
        rng.usize(0..6)
    } {
        0 => out.push_str(STRINGS[rng.usize(..STRINGS.len())]),
        1 => out.push_str(NUMBERS[rng.usize(..NUMBERS.len())]),
        2 => out.push_str(["true", "false", "null"][rng.usize(..3)]),
        3 => {
            // A long plain string: the fast path.
            out.push('"');
            out.push_str(&"lorem ipsum ".repeat(rng.usize(0..40)));
            out.push('"');
        }
        4 => random_object(rng, depth, out),
        _ => {
            out.push('[');
            for i in 0..rng.usize(0..4) {
                if i > 0 {
                    out.push(',');
                }
                random_value(rng, depth + 1, out);
            }
            out.push(']');
        }
    }
}

/// A random object with some of the keys, in a random order.
/// A random object, as often as not broken: cut short, with a byte of
/// noise (invalid UTF-8 among them), or with something after it.
pub(super) fn random_document(rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut doc = String::new();
    random_object(rng, 0, &mut doc);
    let mut body = doc.into_bytes();
    match rng.usize(0..6) {
        0 if !body.is_empty() => body.truncate(rng.usize(0..body.len())),
        1 if !body.is_empty() => {
            let at = rng.usize(0..body.len());
            let noise = b"{}[],:\"\\x0\x01 \xc3";
            body.insert(at, noise[rng.usize(..noise.len())]);
        }
        2 => body.extend_from_slice(b" x"),
        3 => body.extend_from_slice(b" \n"),
        _ => {}
    }
    body
}

pub(super) fn random_object(rng: &mut fastrand::Rng, depth: usize, out: &mut String) {
    const KEYS: &[&str] = &["a", "b", r"k\u0062", "0", "1", "é"];
    let mut keys = KEYS.to_vec();
    rng.shuffle(&mut keys);
    out.push('{');
    for (i, key) in keys.iter().take(rng.usize(0..=KEYS.len())).enumerate() {
        if i > 0 {
            out.push_str(if rng.bool() { ", " } else { "," });
        }
        out.push_str(&format!("\"{key}\":"));
        random_value(rng, depth + 1, out);
    }
    out.push('}');
}

#[test]
fn agrees_with_serde_json_on_random_and_broken_documents() {
    let mut rng = fastrand::Rng::with_seed(7);
    let paths: Vec<Vec<String>> = [
        "/a", "/b", "/a/b", "/kb", "/0", "/1/a", "/a/0", "/é", "/b/kb/1",
    ]
    .iter()
    .map(|s| p(s))
    .collect();
    let (mut checked, mut found) = (0, 0);
    for _ in 0..4000 {
        let body = random_document(&mut rng);
        for path in &paths {
            let want = reference(&body, path);
            assert_eq!(
                find(&body, path),
                want,
                "{} at {path:?}",
                String::from_utf8_lossy(&body)
            );
            checked += 1;
            found += usize::from(want.is_some());
        }
    }
    assert_eq!(checked, 36_000);
    assert!(found > 1_000, "too few values found to compare: {found}");
}

#[test]
fn nesting_is_allowed_to_serde_json_s_limit() {
    for depth in [126, 127, 128] {
        let doc = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let path = vec!["0".to_string(); depth];
        assert_eq!(
            find(doc.as_bytes(), &path),
            reference(doc.as_bytes(), &path),
            "{depth}"
        );
    }
}

#[test]
fn special_bytes_are_found_at_every_position() {
    for len in 0..40 {
        for at in 0..len {
            for c in [b'"', b'\\', 0x01, 0x1f] {
                let mut bytes = vec![b'a'; len];
                // Bytes that are near misses of the test, before the hit.
                for (i, b) in bytes.iter_mut().enumerate().take(at) {
                    *b = [0x20, 0x21, 0x5b, 0x5d, 0x80, 0xff][i % 6];
                }
                bytes[at] = c;
                assert_eq!(super::special(&bytes), Some(at), "{len} {at} {c}");
            }
        }
        assert_eq!(super::special(&vec![b' '; len]), None);
    }
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    let deep = "[".repeat(200_000);
    assert_eq!(find(deep.as_bytes(), &p("/a")), None);
    let deep_objects = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
    assert_eq!(find(deep_objects.as_bytes(), &p("/a/a")), None);
}
