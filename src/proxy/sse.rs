//! What the edge reads of an Anthropic SSE stream as it passes: where its
//! first event ends and what it says, whether `message_stop` came, and the
//! token `usage` of `message_start` and `message_delta`.
//!
//! The stream itself is never buffered or copied: [`StreamScan`] looks at
//! each chunk in place and keeps only an unfinished line that may matter
//! (a `data:` or `event:` line cut by a chunk boundary), at most
//! [`MAX_LINE`] bytes of it.

use memchr::memmem;

/// The longest line kept across chunks; a longer one is not read.
const MAX_LINE: usize = 64 * 1024;

/// The first event of a stream, once whole.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstEvent {
    /// Not whole yet.
    Incomplete,
    /// `event: error`, with its `error.type` (empty if it has none).
    Error(String),
    /// Anything else: the stream is under way.
    Other,
}

/// The first event in `buf` (the body so far), and where it ends.
pub fn first_event(buf: &[u8]) -> (FirstEvent, usize) {
    let Some((end, sep)) = [&b"\n\n"[..], b"\r\n\r\n"]
        .iter()
        .filter_map(|sep| memmem::find(buf, sep).map(|i| (i, sep.len())))
        .min()
    else {
        return (FirstEvent::Incomplete, 0);
    };
    let event = &buf[..end];
    let mut name: &[u8] = b"message";
    let mut data: Vec<u8> = Vec::new();
    for line in event.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(v) = field(line, b"event") {
            name = v;
        } else if let Some(v) = field(line, b"data") {
            data.extend_from_slice(v);
        }
    }
    if name != b"error" {
        return (FirstEvent::Other, end + sep);
    }
    let kind = serde_json::from_slice::<serde_json::Value>(&data)
        .ok()
        .and_then(|v| v["error"]["type"].as_str().map(str::to_string))
        .unwrap_or_default();
    (FirstEvent::Error(kind), end + sep)
}

/// The value of `name: value` (one optional space after the colon).
fn field<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let rest = line.strip_prefix(name)?.strip_prefix(b":")?;
    Some(rest.strip_prefix(b" ").unwrap_or(rest))
}

/// Tokens a stream (or a JSON answer) reported.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub cache_read: u64,
    pub cache_creation: u64,
    pub output: u64,
}

impl Usage {
    /// Read `usage` (an Anthropic usage object); fields it lacks stay.
    fn read(&mut self, usage: &serde_json::Value) {
        let get = |k: &str| usage.get(k).and_then(serde_json::Value::as_u64);
        if let Some(n) = get("input_tokens") {
            self.input = n;
        }
        if let Some(n) = get("cache_read_input_tokens") {
            self.cache_read = n;
        }
        if let Some(n) = get("cache_creation_input_tokens") {
            self.cache_creation = n;
        }
        if let Some(n) = get("output_tokens") {
            self.output = n;
        }
    }

    /// The `usage` object in the tail of a non-streaming JSON answer (an
    /// Anthropic message ends with it): the last `"usage":` and the object
    /// after it.
    pub fn of_json_tail(tail: &[u8]) -> Option<Usage> {
        let at = memmem::rfind(tail, b"\"usage\"")? + b"\"usage\"".len();
        let rest = &tail[at..];
        let colon = rest.iter().position(|b| !b.is_ascii_whitespace())?;
        let rest = rest.get(colon..)?.strip_prefix(b":")?;
        let object = serde_json::Deserializer::from_slice(rest)
            .into_iter::<serde_json::Value>()
            .next()?
            .ok()?;
        let mut u = Usage::default();
        u.read(&object);
        Some(u)
    }
}

/// The last bytes of a JSON answer, where its `usage` is: a copy of at most
/// [`JsonTail::KEEP`] bytes, whatever the answer's size.
#[derive(Debug, Default)]
pub struct JsonTail {
    tail: Vec<u8>,
}

impl JsonTail {
    const KEEP: usize = 4096;

    pub fn feed(&mut self, chunk: &[u8]) {
        let chunk = &chunk[chunk.len().saturating_sub(Self::KEEP)..];
        let over = (self.tail.len() + chunk.len()).saturating_sub(Self::KEEP);
        self.tail.drain(..over.min(self.tail.len()));
        self.tail.extend_from_slice(chunk);
    }

    pub fn usage(&self) -> Option<Usage> {
        Usage::of_json_tail(&self.tail)
    }
}

/// A stream read as it passes, chunk by chunk.
#[derive(Debug, Default)]
pub struct StreamScan {
    /// The unfinished last line of the chunks so far, when it may matter.
    partial: Vec<u8>,
    /// `partial` is a line too long to keep: skip to its end.
    skipping: bool,
    pub usage: Usage,
    /// `message_stop` was seen: the stream is complete.
    pub completed: bool,
}

impl StreamScan {
    /// Look at the next chunk of the stream.
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            let line = &rest[..nl];
            if self.skipping {
                self.skipping = false;
            } else if self.partial.is_empty() {
                self.line(line);
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                self.line(&whole);
            }
            rest = &rest[nl + 1..];
        }
        if rest.is_empty() || self.skipping {
            return;
        }
        if self.partial.len() + rest.len() > MAX_LINE {
            self.partial.clear();
            self.skipping = true;
        } else {
            self.partial.extend_from_slice(rest);
        }
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line == b"event: message_stop" || line == b"event:message_stop" {
            self.completed = true;
            return;
        }
        let Some(data) = field(line, b"data") else {
            return;
        };
        // Only two events per stream carry usage: parse just those. The
        // API writes `type` first; anything else is searched.
        let kind = data
            .strip_prefix(b"{\"type\":\"")
            .and_then(|rest| rest.get(..memchr::memchr(b'"', rest)?));
        let (starts, delta, stop) = match kind {
            Some(kind) => (
                kind == b"message_start",
                kind == b"message_delta",
                kind == b"message_stop",
            ),
            None => (
                memmem::find(data, b"\"message_start\"").is_some(),
                memmem::find(data, b"\"message_delta\"").is_some(),
                memmem::find(data, b"\"message_stop\"").is_some(),
            ),
        };
        if stop {
            self.completed = true;
        }
        if !starts && !delta {
            return;
        }
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
            let usage = if starts {
                &v["message"]["usage"]
            } else {
                &v["usage"]
            };
            if usage.is_object() {
                self.usage.read(usage);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_event_is_found_whole_and_classified() {
        assert_eq!(
            first_event(b"event: message_start\ndata: {"),
            (FirstEvent::Incomplete, 0)
        );
        let ok = b"event: message_start\ndata: {}\n\nevent: ping\n";
        assert_eq!(first_event(ok), (FirstEvent::Other, 31));
        let err = b"event: error\r\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}\r\n\r\n";
        assert_eq!(
            first_event(err),
            (FirstEvent::Error("overloaded_error".into()), err.len())
        );
        assert_eq!(
            first_event(b"event: error\ndata: nonsense\n\n").0,
            FirstEvent::Error(String::new())
        );
        assert_eq!(first_event(b": comment\n\n").0, FirstEvent::Other);
    }

    #[test]
    fn usage_and_the_stop_are_read_across_any_chunk_boundaries() {
        let stream = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":100,\"cache_creation_input_tokens\":5,\"cache_read_input_tokens\":900,\"output_tokens\":1}}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"hi\"}}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":42}}\n\n",
            "event: message_stop\n",
            "data: {\"type\":\"message_stop\"}\n\n",
        )
        .as_bytes();
        let want = Usage {
            input: 100,
            cache_read: 900,
            cache_creation: 5,
            output: 42,
        };
        for size in [1, 2, 7, 64, stream.len()] {
            let mut scan = StreamScan::default();
            for chunk in stream.chunks(size) {
                scan.feed(chunk);
            }
            assert_eq!(scan.usage, want, "chunks of {size}");
            assert!(scan.completed, "chunks of {size}");
        }
        let mut cut = StreamScan::default();
        cut.feed(&stream[..stream.len() - 60]);
        assert!(!cut.completed);
    }

    #[test]
    fn events_whose_type_is_not_first_are_read_too() {
        let mut scan = StreamScan::default();
        scan.feed(
            b"data: {\"message\":{\"usage\":{\"input_tokens\":7}},\"type\":\"message_start\"}\n\n",
        );
        scan.feed(b"data: {\"x\":1,\"type\":\"message_stop\"}\n\n");
        assert_eq!(scan.usage.input, 7);
        assert!(scan.completed);
    }

    #[test]
    fn a_huge_line_is_skipped_not_kept() {
        let mut scan = StreamScan::default();
        scan.feed(b"data: ");
        scan.feed(&vec![b'x'; MAX_LINE + 10]);
        assert!(scan.partial.is_empty() && scan.skipping);
        scan.feed(b"x\nevent: message_stop\n");
        assert!(scan.completed);
    }

    #[test]
    fn a_json_answer_has_usage_in_its_tail() {
        let body = format!(
            r#"{{"type":"message","content":[{{"type":"text","text":"{}"}}],"usage": {{"input_tokens":3,"cache_read_input_tokens":7,"output_tokens":4}}}}"#,
            "x".repeat(100_000)
        );
        let want = Usage {
            input: 3,
            cache_read: 7,
            output: 4,
            ..Usage::default()
        };
        for size in [1, 10, 4000, 5000, body.len()] {
            let mut tail = JsonTail::default();
            for chunk in body.as_bytes().chunks(size) {
                tail.feed(chunk);
            }
            assert!(tail.tail.len() <= JsonTail::KEEP);
            assert_eq!(tail.usage(), Some(want), "chunks of {size}");
        }
        assert_eq!(Usage::of_json_tail(br#"{"usage": nonsense"#), None);
        assert_eq!(Usage::of_json_tail(b"{}"), None);
    }
}
