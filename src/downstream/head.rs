//! Where a request head ends, and whether it stays within its limits, found
//! from the bytes as they arrive: no copy, no parse. Pingora's parser does
//! the real parsing once the head is whole; this only has to know when to
//! stop waiting, so that a client cannot make the edge hold a header block
//! of Pingora's own limit (about 1 MiB) or a URI of any length.
//!
//! The head ends at the first empty line after some content, as httparse
//! reads it: `\r\n\r\n` or `\n\n` (leading empty lines before the request
//! line are skipped, and count against the size). The request target is
//! the request line's second word.

/// What the bytes so far amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The head has not ended and is within its limits.
    Incomplete,
    /// The head ended after this many bytes of the last chunk fed.
    Complete(usize),
    /// The head (so far) exceeds `max_head` bytes: 431.
    TooLarge,
    /// The request target (so far) exceeds `max_uri` bytes: 414.
    UriTooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestLine {
    /// Before the first byte of content (leading empty lines).
    NotStarted,
    Method,
    Target,
    /// The protocol version, up to the end of the line.
    Rest,
    /// The request line is over: header fields follow.
    Over,
}

#[derive(Debug, Clone)]
pub struct HeadScan {
    max_head: usize,
    max_uri: usize,
    /// Bytes of this head seen so far.
    seen: usize,
    uri_len: usize,
    line: RequestLine,
    /// The current line has a byte other than `\r`.
    line_has_content: bool,
}

impl HeadScan {
    pub fn new(max_head: usize, max_uri: usize) -> HeadScan {
        HeadScan {
            max_head,
            max_uri,
            seen: 0,
            uri_len: 0,
            line: RequestLine::NotStarted,
            line_has_content: false,
        }
    }

    /// Bytes of this head seen so far.
    pub fn seen(&self) -> usize {
        self.seen
    }

    /// Feed the next bytes read from the client.
    pub fn feed(&mut self, chunk: &[u8]) -> Verdict {
        let mut at = 0;
        while at < chunk.len() {
            if self.line != RequestLine::Over {
                // The request line, a byte at a time (it is short, or too long).
                let b = chunk[at];
                at += 1;
                self.seen += 1;
                if let Some(v) = self.request_line_byte(b) {
                    return v;
                }
                continue;
            }
            let rest = &chunk[at..];
            match memchr::memchr(b'\n', rest) {
                None => {
                    self.note_segment(rest);
                    at = chunk.len();
                    self.seen += rest.len();
                }
                Some(p) => {
                    self.note_segment(&rest[..p]);
                    at += p + 1;
                    self.seen += p + 1;
                    if !self.line_has_content {
                        return self.limit_or(Verdict::Complete(at));
                    }
                    self.line_has_content = false;
                }
            }
        }
        self.limit_or(Verdict::Incomplete)
    }

    fn limit_or(&self, verdict: Verdict) -> Verdict {
        if self.seen > self.max_head {
            Verdict::TooLarge
        } else {
            verdict
        }
    }

    fn note_segment(&mut self, segment: &[u8]) {
        if !self.line_has_content {
            self.line_has_content = segment.iter().any(|&b| b != b'\r');
        }
    }

    fn request_line_byte(&mut self, b: u8) -> Option<Verdict> {
        use RequestLine::*;
        match (self.line, b) {
            (NotStarted, b'\r' | b'\n') => {}
            (NotStarted, _) => self.line = Method,
            (_, b'\n') => {
                // The request line ended (HTTP/0.9 has no version).
                self.line = Over;
                self.line_has_content = false;
            }
            (Method, b' ') => self.line = Target,
            (Target, b' ' | b'\r') => self.line = Rest,
            (Target, _) => {
                self.uri_len += 1;
                if self.uri_len > self.max_uri {
                    return Some(Verdict::UriTooLong);
                }
            }
            _ => {}
        }
        (self.seen > self.max_head).then_some(Verdict::TooLarge)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_in_pieces(head: &[u8], piece: usize) -> (Verdict, usize) {
        let mut scan = HeadScan::new(200, 40);
        let mut fed = 0;
        for chunk in head.chunks(piece) {
            match scan.feed(chunk) {
                Verdict::Incomplete => fed += chunk.len(),
                Verdict::Complete(n) => return (Verdict::Complete(n), fed + n),
                v => return (v, fed),
            }
        }
        (Verdict::Incomplete, fed)
    }

    #[test]
    fn finds_the_end_of_the_head_however_it_is_cut() {
        let cases: [(&[u8], Option<usize>); 7] = [
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY", Some(27)),
            (b"GET / HTTP/1.1\nHost: a\n\nBODY", Some(24)),
            (b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", Some(31)),
            (b"GET / HTTP/1.1\r\n\r\n", Some(18)),
            (b"GET / HTTP/1.1\r\nHost: a\r\n", None),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r", None),
            (b"GET /\r\n\r\n", Some(9)),
        ];
        for (head, want) in cases {
            for piece in 1..=head.len() {
                let (verdict, at) = scan_in_pieces(head, piece);
                match want {
                    Some(end) => assert_eq!(
                        (verdict, at),
                        (Verdict::Complete(verdict_offset(verdict)), end),
                        "{:?} in pieces of {piece}",
                        String::from_utf8_lossy(head)
                    ),
                    None => assert_eq!(verdict, Verdict::Incomplete, "{head:?} / {piece}"),
                }
            }
        }
    }

    fn verdict_offset(v: Verdict) -> usize {
        match v {
            Verdict::Complete(n) => n,
            _ => usize::MAX,
        }
    }

    #[test]
    fn a_head_or_a_target_over_its_limit_is_refused_as_it_arrives() {
        let long_uri = format!("GET /{} HTTP/1.1\r\n\r\n", "u".repeat(40));
        assert_eq!(
            scan_in_pieces(long_uri.as_bytes(), 7).0,
            Verdict::UriTooLong
        );
        let fits = format!("GET /{} HTTP/1.1\r\n\r\n", "u".repeat(39));
        assert!(matches!(
            scan_in_pieces(fits.as_bytes(), 7).0,
            Verdict::Complete(_)
        ));
        let big = format!("GET / HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "a".repeat(200));
        assert_eq!(scan_in_pieces(big.as_bytes(), 13).0, Verdict::TooLarge);
        // Endless empty lines are no way around the limit.
        assert_eq!(scan_in_pieces(&[b'\n'; 300], 5).0, Verdict::TooLarge);
        // Nor an endless request line.
        assert_eq!(scan_in_pieces(&[b'G'; 300], 5).0, Verdict::TooLarge);
        // Exactly at the limit is allowed.
        let pad = 200 - "GET / HTTP/1.1\r\nX: \r\n\r\n".len();
        let exact = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(pad));
        assert_eq!(exact.len(), 200);
        assert!(matches!(
            scan_in_pieces(exact.as_bytes(), 200).0,
            Verdict::Complete(200)
        ));
    }
}
