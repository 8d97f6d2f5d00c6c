//! What a request's framing and its connection's keep-alive may be, as
//! RFC 9112 says, decided from the head alone.
//!
//! - **Ambiguous framing is refused.** A request with both
//!   `Transfer-Encoding` and `Content-Length` (§6.1: a server "MUST close the
//!   connection after responding to such a request") is answered 400 and its
//!   connection closed, as nginx and HAProxy do: whatever follows it on the
//!   connection is never read as a request, so a proxy in front that framed
//!   it by `Content-Length` cannot smuggle one through. Pingora drops the
//!   `Content-Length` before any hook runs, so it is looked for in the raw
//!   head, and only when the parsed head has a `Transfer-Encoding`.
//! - **Keep-alive is only ever shortened.** Pingora decides from the request
//!   whether its connection may carry another (an HTTP/1.0 request without
//!   `Connection: keep-alive`, `Connection: close`, ambiguous framing: no);
//!   the edge bounds the idle wait of a connection that may
//!   (`timeouts.client_idle`), and ends one while draining. It never turns
//!   a "no" into a "yes".

use pingora_http::RequestHeader;

/// Does the request (its parsed head, and its head as it came) declare its
/// body's length twice, by `Transfer-Encoding` and by `Content-Length`?
pub fn ambiguous(head: &RequestHeader, raw: impl FnOnce() -> bytes::Bytes) -> bool {
    head.headers.contains_key(http::header::TRANSFER_ENCODING)
        && (head.headers.contains_key(http::header::CONTENT_LENGTH)
            || has_field(&raw(), b"content-length"))
}

/// Is there a header field named `name` (lower case) in the raw head?
/// Field lines are those after the request line; names are compared
/// without regard to case, and end at the colon (RFC 9112 §5.1 allows no
/// whitespace before it).
fn has_field(raw: &[u8], name: &[u8]) -> bool {
    raw.split(|&b| b == b'\n').skip(1).any(|line| {
        line.len() > name.len()
            && line[name.len()] == b':'
            && line[..name.len()].eq_ignore_ascii_case(name)
    })
}

/// The keep-alive a response gets: `pingora` is what Pingora decided from
/// the request (`None`: close after it; `Some(0)`: no limit; `Some(s)`: `s`
/// seconds), `idle` the edge's bound in seconds. `None` while draining.
pub fn keepalive(pingora: Option<u64>, idle_secs: u64, draining: bool) -> Option<u64> {
    let idle = idle_secs.max(1);
    match pingora {
        _ if draining => None,
        None => None,
        Some(0) => Some(idle),
        Some(s) => Some(s.min(idle)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> (RequestHeader, bytes::Bytes) {
        let mut hs = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut hs);
        req.parse(raw.as_bytes()).expect("a head");
        let mut h = RequestHeader::build(
            req.method.expect("method"),
            req.path.expect("path").as_bytes(),
            None,
        )
        .expect("head");
        for hdr in req.headers.iter() {
            h.append_header(hdr.name.to_string(), hdr.value)
                .expect("header");
        }
        // Pingora drops Content-Length when Transfer-Encoding is present.
        if h.headers.contains_key(http::header::TRANSFER_ENCODING) {
            h.remove_header(&http::header::CONTENT_LENGTH);
        }
        (h, bytes::Bytes::copy_from_slice(raw.as_bytes()))
    }

    #[test]
    fn both_lengths_in_either_order_and_any_case_are_ambiguous() {
        let cases = [
            ("POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", true),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n", true),
            ("POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nCONTENT-LENGTH: 0\r\n\r\n", true),
            ("POST / HTTP/1.1\nTransfer-Encoding: chunked\ncontent-length:4\n\n", true),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", false),
            ("POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\n", false),
            ("GET / HTTP/1.1\r\nHost: x\r\n\r\n", false),
            // A field whose name only begins so, or a value that says so.
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Lengthy: 4\r\n\r\n", false),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nx-note: content-length: 4\r\n\r\n", false),
            // The request target is not a field line.
            ("POST /content-length:1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", false),
        ];
        for (raw, want) in cases {
            let (h, bytes) = head(raw);
            assert_eq!(ambiguous(&h, || bytes), want, "{raw:?}");
        }
    }

    #[test]
    fn keepalive_is_only_ever_shortened() {
        // (Pingora's decision, the edge's idle bound, draining) -> keep-alive
        let cases = [
            (None, 75, false, None), // HTTP/1.0, Connection: close, ambiguous framing
            (Some(0), 75, false, Some(75)), // HTTP/1.1: no limit of its own
            (Some(30), 75, false, Some(30)), // a shorter one stays
            (Some(300), 75, false, Some(75)),
            (Some(0), 0, false, Some(1)), // never "no limit" by a zero bound
            (Some(0), 75, true, None),
            (None, 75, true, None),
        ];
        for (pingora, idle, draining, want) in cases {
            assert_eq!(
                keepalive(pingora, idle, draining),
                want,
                "{pingora:?} {idle} {draining}"
            );
        }
    }
}
