//! Key extraction: walks the configured key sources in order and returns the
//! [`SessionId`] of the first key present.
//!
//! Header, cookie and query sources are read from the request head with no
//! allocation in the common case. A JSON source needs the body: the walk
//! stops there with [`HeadLookup::NeedBody`], and the proxy resumes it with
//! [`KeyChain::resume_with_body`] once the body is read (or with `None` when
//! the body is over the limit, not JSON, or not readable early), in which
//! case the walk falls through to the next source.

use super::{json_scan, KeyHasher, SessionId};
use crate::config::{Extract, KeySourceSpec, KeySpec};
use percent_encoding::percent_decode;
use pingora_http::RequestHeader;
use regex::Regex;
use std::borrow::Cow;
use std::sync::OnceLock;

/// What the request head alone tells about the session key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadLookup {
    Found(SessionId),
    /// Source `from` is a JSON body source and no earlier source had a key.
    NeedBody {
        from: usize,
    },
    Absent,
}

/// The ordered key sources of a config, with the hasher that turns keys into ids.
pub struct KeyChain {
    sources: Vec<KeySpec>,
    hasher: KeyHasher,
}

impl KeyChain {
    pub fn new(sources: Vec<KeySpec>, hasher: KeyHasher) -> Self {
        KeyChain { sources, hasher }
    }

    pub fn hasher(&self) -> &KeyHasher {
        &self.hasher
    }

    pub fn has_body_source(&self) -> bool {
        self.sources
            .iter()
            .any(|s| matches!(s.source, KeySourceSpec::Json(_)))
    }

    /// Walk the sources from the first, stopping at a JSON source.
    pub fn from_head(&self, req: &RequestHeader) -> HeadLookup {
        self.walk(req, None, 0)
    }

    /// Continue the walk at source `from` with the body (or `None`: no usable body).
    pub fn resume_with_body(
        &self,
        req: &RequestHeader,
        body: Option<&[u8]>,
        from: usize,
    ) -> Option<SessionId> {
        match self.walk(req, Some(Body::Bytes(body)), from) {
            HeadLookup::Found(id) => Some(id),
            _ => None,
        }
    }

    /// The JSON pointers of the sources from `from` on, in order: what a
    /// body that is scanned as it arrives is scanned for.
    pub fn body_pointers(&self, from: usize) -> Vec<Vec<String>> {
        self.sources
            .iter()
            .skip(from)
            .filter_map(|s| match &s.source {
                KeySourceSpec::Json(pointer) => Some(pointer.clone()),
                _ => None,
            })
            .collect()
    }

    /// Continue the walk at source `from` with the values a scan found at
    /// [`Self::body_pointers`]`(from)`, in the same order.
    pub fn resume_with_values(
        &self,
        req: &RequestHeader,
        values: &[Option<String>],
        from: usize,
    ) -> Option<SessionId> {
        match self.walk(req, Some(Body::Scanned(values)), from) {
            HeadLookup::Found(id) => Some(id),
            _ => None,
        }
    }

    fn walk(&self, req: &RequestHeader, body: Option<Body<'_>>, from: usize) -> HeadLookup {
        let mut json_sources = 0;
        for (i, spec) in self.sources.iter().enumerate().skip(from) {
            let key = match &spec.source {
                KeySourceSpec::Header(name) => {
                    header_value(req, name).and_then(|v| apply(&spec.extract, Cow::Borrowed(v)))
                }
                KeySourceSpec::Cookie(name) => {
                    cookie_value(req, name).and_then(|v| apply(&spec.extract, Cow::Borrowed(v)))
                }
                KeySourceSpec::Query(name) => {
                    query_value(req, name).and_then(|v| apply(&spec.extract, v))
                }
                KeySourceSpec::Json(pointer) => {
                    let nth = json_sources;
                    json_sources += 1;
                    let value = match body {
                        None => return HeadLookup::NeedBody { from: i },
                        Some(Body::Bytes(None)) => None,
                        Some(Body::Bytes(Some(bytes))) => json_scan::find(bytes, pointer),
                        Some(Body::Scanned(values)) => values.get(nth).cloned().flatten(),
                    };
                    value.and_then(|v| {
                        apply(&spec.extract, Cow::Owned(v.into_bytes()))
                            .map(|k| Cow::Owned(k.into_owned()))
                    })
                }
            };
            if let Some(key) = key {
                return HeadLookup::Found(self.hasher.id(&key));
            }
        }
        HeadLookup::Absent
    }
}

/// The body, as the walk gets it.
#[derive(Clone, Copy)]
enum Body<'a> {
    /// Whole (or `None`: no usable body).
    Bytes(Option<&'a [u8]>),
    /// The values at the JSON sources' pointers, scanned as it arrived.
    Scanned(&'a [Option<String>]),
}

fn non_empty(v: &[u8]) -> Option<&[u8]> {
    let v = v.trim_ascii();
    (!v.is_empty()).then_some(v)
}

fn header_value<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a [u8]> {
    req.headers.get(name).and_then(|v| non_empty(v.as_bytes()))
}

fn cookie_value<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a [u8]> {
    for header in req.headers.get_all(http::header::COOKIE) {
        for pair in header.as_bytes().split(|b| *b == b';') {
            let pair = pair.trim_ascii();
            if let Some(eq) = pair.iter().position(|b| *b == b'=') {
                if &pair[..eq] == name.as_bytes() {
                    let value = pair[eq + 1..].trim_ascii();
                    let value = value
                        .strip_prefix(b"\"")
                        .and_then(|v| v.strip_suffix(b"\""))
                        .unwrap_or(value);
                    return non_empty(value);
                }
            }
        }
    }
    None
}

fn query_value<'a>(req: &'a RequestHeader, name: &str) -> Option<Cow<'a, [u8]>> {
    let query = req.uri.query()?;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(k.as_bytes()).eq(name.bytes()) {
            let v: Cow<'a, [u8]> = percent_decode(v.as_bytes()).into();
            return (!v.is_empty()).then_some(v);
        }
    }
    None
}

/// Apply a source's extraction to its raw value.
fn apply<'a>(extract: &Extract, raw: Cow<'a, [u8]>) -> Option<Cow<'a, [u8]>> {
    match extract {
        Extract::Whole => Some(raw),
        Extract::Regex(re) => {
            let text = std::str::from_utf8(&raw).ok()?;
            capture(re, text).map(|k| Cow::Owned(k.as_bytes().to_vec()))
        }
        Extract::ClaudeUserId => {
            let text = std::str::from_utf8(&raw).ok()?;
            claude_session(text).map(|k| Cow::Owned(k.into_bytes()))
        }
    }
}

fn capture<'t>(re: &Regex, text: &'t str) -> Option<&'t str> {
    let caps = re.captures(text)?;
    caps.get(1)
        .or_else(|| caps.get(0))
        .map(|m| m.as_str())
        .filter(|s| !s.is_empty())
}

/// The session part of Claude Code's `metadata.user_id`, in either shape; a
/// `user_id` of another shape is itself the key.
pub fn claude_session(user_id: &str) -> Option<String> {
    static LEGACY: OnceLock<Option<Regex>> = OnceLock::new();
    let trimmed = user_id.trim();
    if trimmed.starts_with('{') {
        if let Some(id) = json_scan::find(trimmed.as_bytes(), &["session_id".to_string()]) {
            return (!id.is_empty()).then_some(id);
        }
    }
    let legacy = LEGACY.get_or_init(|| Regex::new(r"_session_([0-9a-fA-F-]{36})$").ok());
    if let Some(k) = legacy.as_ref().and_then(|re| capture(re, trimmed)) {
        return Some(k.to_string());
    }
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::json_pointer;

    fn req(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", uri.as_bytes(), None).expect("valid");
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).expect("valid header");
        }
        r
    }

    fn spec(source: KeySourceSpec, extract: Extract) -> KeySpec {
        KeySpec { source, extract }
    }

    fn chain(specs: Vec<KeySpec>) -> KeyChain {
        KeyChain::new(specs, KeyHasher::new("test"))
    }

    fn id(key: &str) -> SessionId {
        KeyHasher::new("test").id(key.as_bytes())
    }

    #[test]
    fn head_sources_in_order_first_present_wins() {
        let c = chain(vec![
            spec(KeySourceSpec::Header("x-session-id".into()), Extract::Whole),
            spec(KeySourceSpec::Cookie("session_id".into()), Extract::Whole),
            spec(KeySourceSpec::Query("sid".into()), Extract::Whole),
        ]);
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], HeadLookup);
        let cases: &[Case] = &[
            (
                "/",
                &[("x-session-id", "h1"), ("cookie", "session_id=c1")],
                HeadLookup::Found(id("h1")),
            ),
            (
                "/",
                &[("x-session-id", "  "), ("cookie", "a=b; session_id=c1")],
                HeadLookup::Found(id("c1")),
            ),
            (
                "/",
                &[("cookie", "a=b"), ("cookie", "session_id=\"c2\"")],
                HeadLookup::Found(id("c2")),
            ),
            (
                "/v1/messages?beta=true&sid=q%201",
                &[],
                HeadLookup::Found(id("q 1")),
            ),
            ("/?sidx=1&sid=", &[], HeadLookup::Absent),
            ("/", &[("cookie", "session_idx=1")], HeadLookup::Absent),
            ("/", &[], HeadLookup::Absent),
        ];
        for (uri, headers, want) in cases {
            assert_eq!(c.from_head(&req(uri, headers)), *want, "{uri} {headers:?}");
        }
    }

    #[test]
    fn json_source_waits_for_body_and_falls_through() {
        let c = chain(vec![
            spec(KeySourceSpec::Header("x-a".into()), Extract::Whole),
            spec(
                KeySourceSpec::Json(json_pointer("/metadata/user_id").expect("ptr")),
                Extract::Whole,
            ),
            spec(KeySourceSpec::Header("x-b".into()), Extract::Whole),
        ]);
        let r = req("/", &[("x-b", "late")]);
        assert_eq!(c.from_head(&r), HeadLookup::NeedBody { from: 1 });
        let body = br#"{"messages":[],"metadata":{"user_id":"u-1"}}"#;
        assert_eq!(c.resume_with_body(&r, Some(body), 1), Some(id("u-1")));
        assert_eq!(
            c.resume_with_body(&r, Some(b"not json"), 1),
            Some(id("late"))
        );
        assert_eq!(c.resume_with_body(&r, None, 1), Some(id("late")));
        assert_eq!(
            c.from_head(&req("/", &[("x-a", "early")])),
            HeadLookup::Found(id("early"))
        );
    }

    #[test]
    fn values_scanned_as_the_body_arrived_key_it_as_the_whole_body_does() {
        let json = |p: &str| KeySourceSpec::Json(json_pointer(p).expect("ptr"));
        let c = chain(vec![
            spec(KeySourceSpec::Header("x-a".into()), Extract::Whole),
            spec(json("/metadata/user_id"), Extract::ClaudeUserId),
            spec(KeySourceSpec::Header("x-b".into()), Extract::Whole),
            spec(json("/conversation"), Extract::Whole),
        ]);
        assert_eq!(
            c.body_pointers(1),
            vec![
                json_pointer("/metadata/user_id").expect("ptr"),
                json_pointer("/conversation").expect("ptr")
            ]
        );
        assert_eq!(
            c.body_pointers(3),
            vec![json_pointer("/conversation").expect("ptr")]
        );
        let sid = r#"{\"session_id\":\"s-9\"}"#;
        let bodies = [
            format!(r#"{{"metadata":{{"user_id":"{sid}"}},"conversation":"c-1"}}"#),
            r#"{"metadata":{"user_id":""},"conversation":"c-2"}"#.to_string(),
            r#"{"conversation":"c-3"}"#.to_string(),
            r#"{"conversation":"#.to_string(),
            "{}".to_string(),
        ];
        for headers in [&[][..], &[("x-b", "late")][..]] {
            let r = req("/", headers);
            for body in &bodies {
                let values: Vec<Option<String>> = c
                    .body_pointers(1)
                    .iter()
                    .map(|p| json_scan::find(body.as_bytes(), p))
                    .collect();
                assert_eq!(
                    c.resume_with_values(&r, &values, 1),
                    c.resume_with_body(&r, Some(body.as_bytes()), 1),
                    "{body} {headers:?}"
                );
            }
        }
        let r = req("/", &[]);
        let values = [Some(r#"{"session_id":"s-9"}"#.to_string()), None];
        assert_eq!(c.resume_with_values(&r, &values, 1), Some(id("s-9")));
    }

    #[test]
    fn regex_takes_first_group() {
        let re = Regex::new("session_([0-9a-f-]{36})").expect("regex");
        let c = chain(vec![spec(
            KeySourceSpec::Header("x-u".into()),
            Extract::Regex(re),
        )]);
        let uid = "user_abc_account_11111111-2222-3333-4444-555555555555_session_aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
        assert_eq!(
            c.from_head(&req("/", &[("x-u", uid)])),
            HeadLookup::Found(id("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"))
        );
        assert_eq!(
            c.from_head(&req("/", &[("x-u", "no match")])),
            HeadLookup::Absent
        );
    }

    #[test]
    fn claude_user_id_both_shapes() {
        let sid = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
        let legacy = format!(
            "user_{}_account_11111111-2222-3333-4444-555555555555_session_{sid}",
            "f".repeat(64)
        );
        let modern = format!(
            r#"{{"device_id":"{}","account_uuid":"","session_id":"{sid}"}}"#,
            "f".repeat(64)
        );
        assert_eq!(claude_session(&legacy).as_deref(), Some(sid));
        assert_eq!(claude_session(&modern).as_deref(), Some(sid));
        assert_eq!(claude_session("plain-user").as_deref(), Some("plain-user"));
        assert_eq!(claude_session("").as_deref(), None);
    }
}
