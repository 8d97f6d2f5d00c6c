//! What the edge reads of an SSE stream as it passes: where its first event
//! ends and what it says, which protocol it speaks and whether that
//! protocol's own end came, and the token usage it reported.
//!
//! The streams relays serve, and their ends:
//! - Anthropic Messages: `message_stop`; usage in `message_start` and
//!   `message_delta`;
//! - OpenAI Responses: `response.completed` (or `response.incomplete`, a
//!   normal end at a limit); usage in the final response's `usage`;
//!   `response.failed` is the relay's own error;
//! - OpenAI Chat Completions: `data: [DONE]`; usage in the chunk that has
//!   one.
//!
//! A stream of none of these is [`Protocol::Unknown`]: it ends cleanly with
//! its body, and only a cut before that end is the relay's failure.
//!
//! The stream itself is never buffered or copied: [`StreamScan`] looks at
//! each chunk in place and keeps only an unfinished line that may matter
//! (a `data:` or `event:` line cut by a chunk boundary), at most
//! [`MAX_LINE`] bytes of it.

use crate::outcome::Usage;
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
    if name != b"error" && name != b"response.failed" {
        return (FirstEvent::Other, end + sep);
    }
    let kind = serde_json::from_slice::<serde_json::Value>(&data)
        .ok()
        .and_then(|v| error_kind(&v))
        .unwrap_or_default();
    (FirstEvent::Error(kind), end + sep)
}

/// An error event's kind: Anthropic's `error.type`; OpenAI's
/// `error.type`, `error.code` or `code` (a Responses `error` event), or the
/// failed response's `error.code`.
fn error_kind(v: &serde_json::Value) -> Option<String> {
    let error = v.get("error").or_else(|| v.get("response")?.get("error"));
    [
        error.and_then(|e| e.get("type")),
        error.and_then(|e| e.get("code")),
        v.get("code"),
    ]
    .into_iter()
    .flatten()
    .find_map(|k| k.as_str().map(str::to_string))
}

/// The value of `name: value` (one optional space after the colon).
fn field<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let rest = line.strip_prefix(name)?.strip_prefix(b":")?;
    Some(rest.strip_prefix(b" ").unwrap_or(rest))
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

    /// Read an OpenAI usage object (Responses: `input_tokens`,
    /// `input_tokens_details.cached_tokens`, `output_tokens`; Chat
    /// Completions: `prompt_tokens`, `prompt_tokens_details.cached_tokens`,
    /// `completion_tokens`). OpenAI counts cached tokens within the input;
    /// here, as in Anthropic's, input is what was not read from the cache.
    fn read_openai(&mut self, usage: &serde_json::Value) {
        let get = |k: &str| usage.get(k).and_then(serde_json::Value::as_u64);
        let cached = |k: &str| {
            usage
                .get(k)
                .and_then(|d| d.get("cached_tokens"))
                .and_then(serde_json::Value::as_u64)
        };
        let input = get("input_tokens").or_else(|| get("prompt_tokens"));
        let cached = cached("input_tokens_details")
            .or_else(|| cached("prompt_tokens_details"))
            .unwrap_or(0);
        if let Some(n) = input {
            self.input = n.saturating_sub(cached);
            self.cache_read = cached.min(n);
        }
        if let Some(n) = get("output_tokens").or_else(|| get("completion_tokens")) {
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

/// The protocol a stream speaks, as its events show.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// None that the edge knows (yet).
    #[default]
    Unknown,
    Anthropic,
    OpenAiResponses,
    OpenAiChat,
}

/// A stream read as it passes, chunk by chunk.
#[derive(Debug, Default)]
pub struct StreamScan {
    /// The unfinished last line of the chunks so far, when it may matter.
    partial: Vec<u8>,
    /// `partial` is a line too long to keep: skip to its end.
    skipping: bool,
    pub usage: Usage,
    pub protocol: Protocol,
    /// The protocol's own end was seen (`message_stop`,
    /// `response.completed`, `[DONE]`): the stream is complete.
    pub completed: bool,
}

/// The protocol an event's name (or its data's `type`) belongs to, and
/// whether it is that protocol's end.
fn kind_of(kind: &[u8]) -> Option<(Protocol, bool)> {
    match kind {
        b"message_stop" => Some((Protocol::Anthropic, true)),
        b"response.completed" | b"response.incomplete" => Some((Protocol::OpenAiResponses, true)),
        k if k.starts_with(b"message_") || k.starts_with(b"content_block_") => {
            Some((Protocol::Anthropic, false))
        }
        k if k.starts_with(b"response.") => Some((Protocol::OpenAiResponses, false)),
        _ => None,
    }
}

/// How a stream whose relay answered ended, from what the edge read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// Its protocol's own end came.
    Completed,
    /// Its body ended cleanly, in a protocol the edge does not know: not
    /// the relay's failure.
    Unrecognised,
    /// A known protocol's body ended before that protocol's end.
    EndedShort,
}

impl StreamScan {
    /// How the stream ended, its body having ended cleanly.
    pub fn end(&self) -> StreamEnd {
        match (self.completed, self.protocol) {
            (true, _) => StreamEnd::Completed,
            (false, Protocol::Unknown) => StreamEnd::Unrecognised,
            (false, _) => StreamEnd::EndedShort,
        }
    }

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
        if let Some(name) = field(line, b"event") {
            self.event_name(name);
            return;
        }
        let Some(data) = field(line, b"data") else {
            return;
        };
        if data == b"[DONE]" {
            self.protocol = Protocol::OpenAiChat;
            self.completed = true;
            return;
        }
        // The APIs write `type` first; anything else is searched.
        let kind = data
            .strip_prefix(b"{\"type\":\"")
            .and_then(|rest| rest.get(..memchr::memchr(b'"', rest)?));
        match kind {
            Some(kind) => self.data_of_kind(kind, data),
            None => self.data_searched(data),
        }
    }

    /// An `event:` line: the end events are known by name alone.
    fn event_name(&mut self, name: &[u8]) {
        self.note_kind(name);
    }

    /// A data line whose `type` is `kind`.
    fn data_of_kind(&mut self, kind: &[u8], data: &[u8]) {
        self.note_kind(kind);
        match kind {
            b"message_start" | b"message_delta" => {
                self.anthropic_usage(kind == b"message_start", data)
            }
            b"response.completed" | b"response.incomplete" => self.openai_usage(data, true),
            _ => {}
        }
    }

    /// What an event's name or `type` says of the stream's protocol.
    fn note_kind(&mut self, kind: &[u8]) {
        if let Some((protocol, end)) = kind_of(kind) {
            self.protocol = protocol;
            self.completed |= end;
        }
    }

    /// A data line whose `type` is not first (or that has none).
    fn data_searched(&mut self, data: &[u8]) {
        let has = |needle: &[u8]| memmem::find(data, needle).is_some();
        if has(b"\"chat.completion.chunk\"") {
            self.protocol = Protocol::OpenAiChat;
            if has(b"\"usage\":{") {
                self.openai_usage(data, false);
            }
        } else if has(b"\"message_start\"") {
            self.protocol = Protocol::Anthropic;
            self.anthropic_usage(true, data);
        } else if has(b"\"message_delta\"") {
            self.protocol = Protocol::Anthropic;
            self.anthropic_usage(false, data);
        } else if has(b"\"message_stop\"") {
            self.protocol = Protocol::Anthropic;
            self.completed = true;
        } else if has(b"\"response.completed\"") || has(b"\"response.incomplete\"") {
            self.protocol = Protocol::OpenAiResponses;
            self.completed = true;
            self.openai_usage(data, true);
        }
    }

    /// Anthropic's usage: in `message_start`'s message, or in `message_delta`.
    fn anthropic_usage(&mut self, starts: bool, data: &[u8]) {
        let within: &[&str] = if starts { &["message"] } else { &[] };
        self.read_usage(data, within, Usage::read);
    }

    /// OpenAI's usage: in a final response (`in_response`), or in a chunk.
    fn openai_usage(&mut self, data: &[u8], in_response: bool) {
        let within: &[&str] = if in_response { &["response"] } else { &[] };
        self.read_usage(data, within, Usage::read_openai);
    }

    /// Read the `usage` object found at `within` in the event's JSON data.
    fn read_usage(
        &mut self,
        data: &[u8],
        within: &[&str],
        read: fn(&mut Usage, &serde_json::Value),
    ) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
            return;
        };
        let usage = within.iter().fold(&v, |at, key| &at[*key]);
        if usage["usage"].is_object() {
            read(&mut self.usage, &usage["usage"]);
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
    fn each_protocol_ends_as_its_own_end_says() {
        let responses = concat!(
            "event: response.created\n",
            "data: {\"type\":\"response.created\",\"response\":{\"id\":\"r\"}}\n\n",
            "event: response.output_text.delta\n",
            "data: {\"type\":\"response.output_text.delta\",\"delta\":\"hi\"}\n\n",
            "event: response.completed\n",
            "data: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":1000,\"input_tokens_details\":{\"cached_tokens\":900},\"output_tokens\":10}}}\n\n",
        );
        let chat = concat!(
            "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n",
            "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":1000,\"completion_tokens\":10,\"prompt_tokens_details\":{\"cached_tokens\":900}}}\n\n",
            "data: [DONE]\n\n",
        );
        let anthropic = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":100,\"cache_read_input_tokens\":900,\"output_tokens\":1}}}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":10}}\n\n",
            "event: message_stop\n",
            "data: {\"type\":\"message_stop\"}\n\n",
        );
        let unknown = "event: tick\ndata: {\"n\":1}\n\ndata: plain text\n\n";
        let want = Usage {
            input: 100,
            cache_read: 900,
            output: 10,
            ..Usage::default()
        };
        // Each stream cut just before its protocol's end.
        let before = |s: &'static str, end: &str| &s[..s.find(end).expect("the end")];
        // (stream, protocol, end, usage read)
        let cases = [
            (
                responses,
                Protocol::OpenAiResponses,
                StreamEnd::Completed,
                want,
            ),
            (chat, Protocol::OpenAiChat, StreamEnd::Completed, want),
            (anthropic, Protocol::Anthropic, StreamEnd::Completed, want),
            (
                unknown,
                Protocol::Unknown,
                StreamEnd::Unrecognised,
                Usage::default(),
            ),
            (
                before(responses, "event: response.completed"),
                Protocol::OpenAiResponses,
                StreamEnd::EndedShort,
                Usage::default(),
            ),
            (
                before(chat, "data: [DONE]"),
                Protocol::OpenAiChat,
                StreamEnd::EndedShort,
                want,
            ),
            (
                before(anthropic, "event: message_stop"),
                Protocol::Anthropic,
                StreamEnd::EndedShort,
                want,
            ),
        ];
        for (stream, protocol, end, usage) in cases {
            let stream = stream.as_bytes();
            for size in [1, 3, 64, stream.len()] {
                let mut scan = StreamScan::default();
                for chunk in stream.chunks(size) {
                    scan.feed(chunk);
                }
                let what = format!("{protocol:?} of {} bytes in chunks of {size}", stream.len());
                assert_eq!(scan.protocol, protocol, "{what}");
                assert_eq!(scan.end(), end, "{what}");
                assert_eq!(scan.usage, usage, "{what}");
            }
        }
    }

    #[test]
    fn an_openai_error_first_event_has_a_kind() {
        let cases: [(&[u8], FirstEvent); 3] = [
            (
                b"event: error\ndata: {\"type\":\"error\",\"code\":\"server_error\",\"message\":\"x\"}\n\n",
                FirstEvent::Error("server_error".into()),
            ),
            (
                b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"server_error\",\"code\":\"x\"}}\n\n",
                FirstEvent::Error("server_error".into()),
            ),
            (
                b"event: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{\"error\":{\"code\":\"server_error\"}}}\n\n",
                FirstEvent::Error("server_error".into()),
            ),
        ];
        for (stream, want) in cases {
            assert_eq!(
                first_event(stream).0,
                want,
                "{}",
                String::from_utf8_lossy(stream)
            );
        }
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
