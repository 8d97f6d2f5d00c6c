//! The streaming scan against `find`: the same answers for every pointer,
//! however the body is cut into chunks.

use super::super::find;
use super::super::tests::{p, random_document};
use super::StreamScan;

/// Every pointer's answer from a scan fed `body` in chunks of `sizes` (cycled).
fn streamed(body: &[u8], pointers: &[Vec<String>], sizes: &[usize]) -> Vec<Option<String>> {
    let mut scan = StreamScan::new(pointers.to_vec(), usize::MAX).expect("few pointers");
    let mut at = 0;
    for size in sizes.iter().cycle() {
        if at >= body.len() {
            break;
        }
        let end = (at + size.max(&1)).min(body.len());
        scan.feed(&body[at..end]);
        at = end;
    }
    scan.finish()
}

/// Compare with `find` for one whole body, fed whole, byte by byte, and in
/// uneven pieces.
fn agree(body: &[u8], pointers: &[Vec<String>], seed: u64) {
    let want: Vec<Option<String>> = pointers.iter().map(|ptr| find(body, ptr)).collect();
    let mut rng = fastrand::Rng::with_seed(seed);
    let uneven: Vec<usize> = (0..7).map(|_| rng.usize(1..40)).collect();
    for sizes in [&[usize::MAX][..], &[1], &[2, 3, 5], &uneven] {
        assert_eq!(
            streamed(body, pointers, sizes),
            want,
            "{:?} in {sizes:?} pieces",
            String::from_utf8_lossy(body)
        );
    }
}

fn pointers(list: &[&str]) -> Vec<Vec<String>> {
    list.iter()
        .map(|s| if s.is_empty() { vec![] } else { p(s) })
        .collect()
}

#[test]
fn agrees_with_find_on_the_cases_of_find() {
    let ptrs = pointers(&[
        "/metadata/user_id",
        "/a",
        "/a/2/k",
        "/a/k",
        "/ab",
        "/e",
        "/b",
        "/0",
        "/1",
        "/00",
        "/+1",
        "",
        "/stream",
    ]);
    for body in [
        r#"{"metadata":{"user_id":"u1"}}"#,
        r#"{"messages":[{"a":1},{"b":[2,3]}],"metadata":{"x":null,"user_id":"u\"2"}}"#,
        r#"{"a":[10,20,{"k":7}]}"#,
        r#"{"a":{"k":true}}"#,
        r#"{"a":{"k":{"deep":1}}}"#,
        r#"{"a":{"k":null}}"#,
        r#"{"a":"str"}"#,
        r#"{"a\u0062":"escaped key"}"#,
        r#"{"e":"\ud83d\ude00"}"#,
        r#"{"e":"\ud83d","a":1}"#,
        "{\"e\":\"raw\u{1}control\"}",
        r#"{"a":1"#,
        r#"{"a":1} trailing"#,
        "not json",
        "",
        "[11]",
        "[11,12]",
        " 7 ",
        "-0.5e+3",
        "01",
        "1.",
        "-",
        "true",
        "nul",
        r#""top""#,
        r#"{"a":1,"a":2}"#,
        r#"{"a":null,"a":{"k":1},"a":"third"}"#,
        r#"{"a":{"k":null},"a":{"k":"second"}}"#,
        r#"{"a":1e400,"a":3}"#,
        r#"{"stream":true,"metadata":{"user_id":"é😀"}}"#,
        r#"{"a":[],"b":{},"0":[[]],"1":{"a":[{}]}}"#,
        r#"{"a":"x","b":"\q"}"#,
        r#"{"a":"x","b":"\u12G4"}"#,
        "{\"a\":\"\u{e9}\"}\n",
        "{\"a\":1,}",
        "[1,]",
        "{\"a\" 1}",
        "{,}",
    ] {
        agree(body.as_bytes(), &ptrs, 1);
    }
}

#[test]
fn agrees_with_find_on_random_and_broken_documents() {
    let mut rng = fastrand::Rng::with_seed(11);
    let ptrs = pointers(&[
        "/a", "/b", "/a/b", "/kb", "/0", "/1/a", "/a/0", "/é", "/b/kb/1", "",
    ]);
    let mut found = 0;
    for n in 0..3000 {
        let body = random_document(&mut rng);
        found += ptrs.iter().filter(|ptr| find(&body, ptr).is_some()).count();
        agree(&body, &ptrs, n);
    }
    assert!(found > 1_000, "too few values found to compare: {found}");
}

#[test]
fn agrees_with_find_on_the_fuzz_corpus() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/json_scan");
    let ptrs = pointers(&["/a", "/b", "/0", "/a/0", "/1", "", "/x", "/é"]);
    let mut files = 0;
    for entry in std::fs::read_dir(dir).expect("the fuzz corpus is in the repository") {
        let bytes = std::fs::read(entry.expect("entry").path()).expect("readable");
        files += 1;
        // The corpus holds a pointer then a body: try every start of a value.
        for (at, _) in bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| matches!(b, b'{' | b'[' | b'"'))
            .take(4)
        {
            agree(&bytes[at..], &ptrs, files);
        }
        agree(&bytes, &ptrs, files);
    }
    assert!(files > 100, "the corpus has {files} files");
}

#[test]
fn nesting_limit_and_utf8_cut_between_chunks() {
    for depth in [126, 127, 128] {
        let doc = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        agree(doc.as_bytes(), &[vec!["0".to_string(); depth]], 3);
    }
    let deep = "[".repeat(20_000);
    agree(deep.as_bytes(), &pointers(&["/a"]), 4);
    // A four-byte character and a bad one, cut at every place.
    agree("{\"a\":\"😀\"}".as_bytes(), &pointers(&["/a"]), 5);
    agree(b"{\"a\":\"\xf0\x9f\x98\"}", &pointers(&["/a"]), 6);
    agree(b"{\"a\":\"x\"}\xc3", &pointers(&["/a"]), 7);
}

#[test]
fn a_value_past_the_bound_is_absent_and_held_nowhere() {
    let long = "x".repeat(1000);
    let body = format!(r#"{{"a":"{long}","b":"short","c":{}}}"#, "9".repeat(1000));
    let mut scan = StreamScan::new(pointers(&["/a", "/b", "/c"]), 100).expect("few");
    scan.feed(body.as_bytes());
    assert!(scan.raw.capacity() <= 1024, "the long value was not held");
    assert_eq!(scan.finish(), vec![None, Some("short".to_string()), None]);
}

#[test]
fn a_claude_code_body_cut_in_network_sized_chunks() {
    let body = crate::affinity::json_scan::stream::tests::claude_body(300_000);
    let ptrs = pointers(&["/metadata/user_id", "/stream"]);
    let want = vec![
        Some(r#"{"session_id":"s-1"}"#.to_string()),
        Some("true".to_string()),
    ];
    assert_eq!(
        ptrs.iter().map(|q| find(&body, q)).collect::<Vec<_>>(),
        want
    );
    assert_eq!(streamed(&body, &ptrs, &[16 * 1024, 1500, 65536]), want);
}

/// A body shaped as Claude Code's: large arrays first, `metadata` near the end.
pub(crate) fn claude_body(size: usize) -> Vec<u8> {
    let mut messages = String::new();
    let mut n = 0;
    while messages.len() < size {
        if n > 0 {
            messages.push(',');
        }
        messages.push_str(&format!(
            r#"{{"role":"user","content":[{{"type":"text","text":"turn {n}: lorem ipsum \"quoted\" dolor sit amet \u00e9"}}]}}"#
        ));
        n += 1;
    }
    format!(
        r#"{{"model":"m","messages":[{messages}],"system":[{{"type":"text","text":"sys"}}],"tools":[],"metadata":{{"user_id":"{{\"session_id\":\"s-1\"}}"}},"max_tokens":10,"stream":true}}"#
    )
    .into_bytes()
}
