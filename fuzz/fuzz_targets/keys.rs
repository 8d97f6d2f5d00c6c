//! Key extraction from any request head and body, through every kind of
//! source (header, cookie, query, JSON pointer, regex, Claude Code's
//! `metadata.user_id` shapes): a key or none, never a panic, and the same
//! key for the same request every time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pingora_http::RequestHeader;
use relay_edge::affinity::keys::{HeadLookup, KeyChain};
use relay_edge::affinity::KeyHasher;
use std::sync::OnceLock;

const CHAINS: [&str; 2] = [
    "affinity: {claude_code: true}",
    "affinity: {keys: [{header: x-session-id, regex: '^s-(\\w+)$'}, {cookie: session_id}, {query: sid}, {json: /metadata/user_id, regex: 'user_([0-9a-f]+)'}, {json: /a/0/b~1c}]}",
];

fn chains() -> &'static Vec<KeyChain> {
    static CHAINS_BUILT: OnceLock<Vec<KeyChain>> = OnceLock::new();
    CHAINS_BUILT.get_or_init(|| {
        CHAINS
            .iter()
            .map(|affinity| {
                let text = format!(
                    "listen: [{{addr: 127.0.0.1:1}}]\nupstreams: [{{id: a, addr: 127.0.0.1:2}}]\n{affinity}\n"
                );
                let config = relay_edge::config::parse(&text).expect("the fuzz configs are valid");
                KeyChain::new(
                    config.affinity.keys,
                    KeyHasher::new(&config.affinity.hash_secret),
                )
            })
            .collect()
    })
}

fn request(head: &[u8]) -> Option<RequestHeader> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(head).ok()?.is_complete().then_some(())?;
    let mut built =
        RequestHeader::build(req.method?, req.path?.as_bytes(), Some(req.headers.len())).ok()?;
    for h in req.headers.iter() {
        let _ = built.append_header(h.name.to_string(), h.value);
    }
    Some(built)
}

fuzz_target!(|data: &[u8]| {
    let split = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(data.len(), |p| p + 4);
    let (head, body) = data.split_at(split);
    let Some(req) = request(head) else {
        return;
    };
    for chain in chains() {
        let first = match chain.from_head(&req) {
            HeadLookup::NeedBody { from } => {
                let _ = chain.resume_with_body(&req, None, from);
                chain.resume_with_body(&req, Some(body), from)
            }
            HeadLookup::Found(id) => Some(id),
            HeadLookup::Absent => None,
        };
        let again = match chain.from_head(&req) {
            HeadLookup::NeedBody { from } => chain.resume_with_body(&req, Some(body), from),
            HeadLookup::Found(id) => Some(id),
            HeadLookup::Absent => None,
        };
        assert_eq!(first, again);
    }
});
