//! Whether a request asks for a stream: `"stream": true` at the top level
//! of its body, which sends it to the held path ([`super::held`]).

/// Is this request's body an Anthropic streaming request (`"stream": true`
/// at its top level)? Most bodies are ruled out by one SIMD search for a
/// `"stream"` followed by `: true` anywhere (inside a JSON string a quote is
/// escaped, so a raw one there is a key or a whole value). Claude Code puts
/// that member last: one followed by nothing but the close of the object
/// the body opens with is a top-level member, and is taken without a parse.
/// Any other is parsed to see that it is the top-level member.
///
/// A body that is not JSON may be taken by the first rule: the relay then
/// refuses it, and its answer is relayed as any answer on the held path.
pub fn wants_stream(body: &[u8]) -> bool {
    const KEY: &[u8] = b"\"stream\"";
    let after_true = |at: usize| {
        let rest = body[at + KEY.len()..].trim_ascii_start();
        rest.strip_prefix(b":")
            .and_then(|v| v.trim_ascii_start().strip_prefix(b"true"))
    };
    let mut candidates = memchr::memmem::rfind_iter(body, KEY).filter_map(after_true);
    let Some(last) = candidates.next() else {
        return false;
    };
    let closes_the_body = last
        .trim_ascii()
        .strip_prefix(b"}")
        .is_some_and(<[u8]>::is_empty);
    if closes_the_body && body.trim_ascii_start().starts_with(b"{") {
        return true;
    }
    static POINTER: std::sync::LazyLock<[String; 1]> =
        std::sync::LazyLock::new(|| ["stream".to_string()]);
    crate::affinity::json_scan::find(body, &*POINTER).as_deref() == Some("true")
}

#[cfg(test)]
mod tests {
    use super::wants_stream;

    #[test]
    fn only_a_top_level_stream_true_is_a_streaming_request() {
        assert!(wants_stream(br#"{"model":"m","stream":true}"#));
        assert!(wants_stream(b"{\"messages\":[],\n  \"stream\" :\ttrue }"));
        assert!(!wants_stream(br#"{"model":"m","stream":false}"#));
        assert!(!wants_stream(
            br#"{"tools":[{"input":{"stream":true}}],"stream":false}"#
        ));
        assert!(!wants_stream(
            br#"{"content":"say \"stream\": true","stream":false}"#
        ));
        assert!(!wants_stream(br#"{"stream":true"#), "not JSON");
        assert!(!wants_stream(b""));
        // Claude Code's order: the member last, taken without a parse.
        assert!(wants_stream(
            b"{\"model\":\"m\",\"messages\":[],\"stream\": true }\n"
        ));
        assert!(wants_stream(br#"{"x":{"stream":false},"stream":true}"#));
        // Last, but not at the top level: parsed, and refused.
        assert!(!wants_stream(br#"{"x":{"stream":true}}"#));
        assert!(!wants_stream(br#"[{"stream":true}]"#));
        assert!(!wants_stream(br#"{"x":[{"stream":true}]}"#));
        assert!(!wants_stream(br#"{"stream":true,"x":1}x"#), "not JSON");
        // A top-level member before a nested one is still found.
        assert!(wants_stream(br#"{"stream":true,"x":{"stream":true}}"#));
        assert!(!wants_stream(br#"{"stream":truex}"#), "not JSON");
    }
}
