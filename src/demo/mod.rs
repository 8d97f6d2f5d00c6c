//! A tiny HTTP/1.1 relay stand-in: the upstream of the README demo and of
//! the integration tests.
//!
//! It counts connections and requests, records what it received (body
//! included, byte for byte), and behaves by path:
//!
//! - `GET /health`: 200, or 503 after `set_healthy(false)`.
//! - `/status/{code}`: answers that status.
//! - `/hang`: reads the request and never answers.
//! - `/close`: reads the request and closes the connection without answering
//!   (any path, for the next requests, after `drop_next`).
//! - `/reset`: starts an SSE stream, then drops the connection.
//! - `?sse=N&gap_ms=M` (or a JSON body with `"stream": true`): an Anthropic
//!   style SSE stream of N deltas, M ms apart, with token usage (with
//!   `&burst=1`: the whole answer, head and end included, in one write). On
//!   `/v1/responses` it is an OpenAI Responses stream (ending with
//!   `response.completed`), on `/v1/chat/completions` a Chat Completions
//!   stream (ending with `data: [DONE]`), on `/v1/other` events of no known
//!   protocol; each ends with the chunked terminator. A Responses answer
//!   carries an `x-codex-turn-state` token ([`codex_turn_state`]).
//! - a stream whose prompt says [`TASK_TRIGGER`] or [`SPAWN_TRIGGER`]: the
//!   tool calls with which OpenCode and the Codex CLI run a subagent, then
//!   text (see `agent`).
//! - `?hold_ms=N`: the answer starts N ms after the request (a relay busy
//!   with it); [`DemoUpstream::max_in_flight`] is the most requests it had
//!   in hand at once (read, answer not begun), as a capped relay's own count.
//! - `?overloaded=NAME`: the relay called NAME answers as an overloaded one
//!   does (a stream's first event is `overloaded_error`; else a 529).
//! - anything else: 200 JSON naming this upstream.
//! - `fail_next(n, fault)`: the next `n` requests (health checks excluded)
//!   misbehave as a [`Fault`] says: an overload status, an SSE stream whose
//!   first event is an error, silence, a cut.
//!
//! Every answer carries `x-upstream: <name>`.

mod agent;
mod openai;
mod request;

pub use agent::{SPAWN_TRIGGER, TASK_TRIGGER};
pub use openai::codex_turn_state;

use openai::{openai_sse, OpenAiStream};
use request::read_request;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// One request as the upstream received it (header names as sent).
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The address it came from: the edge's, or its proxy's.
    pub peer: Option<SocketAddr>,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// Parsed headers as owned `(lower-case name, value)` pairs.
pub fn owned_headers(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

/// The value of header `name` (any case) in a list of header pairs.
pub fn find_header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[derive(Default)]
struct Inner {
    connections: AtomicUsize,
    proxied_connections: AtomicUsize,
    requests: AtomicUsize,
    /// Requests (health checks excluded) in hand now, and the most at once.
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    unhealthy: AtomicBool,
    /// This many more requests (health checks excluded) are read and then
    /// dropped with their connection, unanswered.
    drop_next: AtomicUsize,
    /// This many more requests are read and then answered with a TCP reset.
    reset_next: AtomicUsize,
    /// This many more requests misbehave so.
    faults: Mutex<Option<(usize, Fault)>>,
    recorded: Mutex<Vec<Recorded>>,
    tasks: Mutex<Vec<AbortHandle>>,
}

/// A request in hand, counted until it drops.
struct InHand(Arc<Inner>);

impl InHand {
    fn new(inner: &Arc<Inner>) -> InHand {
        let now = inner.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        inner.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InHand(inner.clone())
    }
}

impl Drop for InHand {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How a relay misbehaves (see [`DemoUpstream::fail_next`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// This status, with an Anthropic error body (529: `overloaded_error`).
    Status(u16),
    /// `200 text/event-stream` whose first event is `event: error` of this type.
    FirstEventError(String),
    /// The stream's head, then nothing (until the connection is closed).
    SilentBeforeFirstEvent,
    /// The stream's head, then the connection closes.
    CloseBeforeFirstEvent,
    /// This many events, then the connection closes (no `message_stop`).
    CutAfter(u64),
    /// This many events, then silence.
    SilentAfter(u64),
    /// This many events, then `event: error` (`overloaded_error`) and the end.
    ErrorAfter(u64),
    /// Reads the request and sends nothing at all, not even a head.
    NoHead,
    /// `200` JSON with `Content-Length: declared`, `sent` bytes of it, then
    /// the connection closes.
    CutBody { declared: usize, sent: usize },
}

pub struct DemoUpstream {
    pub name: String,
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

impl DemoUpstream {
    /// Listen on `addr` (port 0 for any free port) on the current tokio runtime.
    pub async fn start(name: &str, addr: SocketAddr) -> std::io::Result<DemoUpstream> {
        let listener = TcpListener::bind(addr).await?;
        let up = DemoUpstream {
            name: name.to_string(),
            addr: listener.local_addr()?,
            inner: Arc::new(Inner::default()),
        };
        up.serve(listener);
        Ok(up)
    }

    fn serve(&self, listener: TcpListener) {
        let inner = self.inner.clone();
        let name: Arc<str> = Arc::from(self.name.as_str());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                inner.connections.fetch_add(1, Ordering::SeqCst);
                // As relays do: an event is sent when written, not after
                // the previous one's ACK (Nagle).
                let _ = stream.set_nodelay(true);
                let conn = tokio::spawn(connection(stream, inner.clone(), name.clone()));
                if let Ok(mut tasks) = inner.tasks.lock() {
                    tasks.retain(|t| !t.is_finished());
                    tasks.push(conn.abort_handle());
                }
            }
        });
        if let Ok(mut tasks) = self.inner.tasks.lock() {
            tasks.push(task.abort_handle());
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.inner.connections.load(Ordering::SeqCst)
    }

    /// Connections that carried at least one request other than a health check.
    pub fn proxied_connections(&self) -> usize {
        self.inner.proxied_connections.load(Ordering::SeqCst)
    }

    /// Requests (health checks excluded) answered or started so far.
    pub fn requests(&self) -> usize {
        self.inner.requests.load(Ordering::SeqCst)
    }

    /// Requests (health checks excluded) in hand now: read, their answer
    /// not begun.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests it had in hand at once.
    pub fn max_in_flight(&self) -> usize {
        self.inner.max_in_flight.load(Ordering::SeqCst)
    }

    /// Read the next `n` requests (health checks excluded), then close their
    /// connections without an answer: a relay dying with requests in hand,
    /// or closing a pooled connection as it is reused, while its health
    /// checks still pass.
    pub fn drop_next(&self, n: usize) {
        self.inner.drop_next.store(n, Ordering::SeqCst);
    }

    /// Read the next `n` requests (health checks excluded), then reset their
    /// connections (RST, no answer): a relay process killed with the
    /// request still unread looks like this to the proxy.
    pub fn reset_next(&self, n: usize) {
        self.inner.reset_next.store(n, Ordering::SeqCst);
    }

    /// The next `n` requests (health checks excluded) misbehave as `fault` says.
    pub fn fail_next(&self, n: usize, fault: Fault) {
        if let Ok(mut f) = self.inner.faults.lock() {
            *f = Some((n, fault));
        }
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.inner.unhealthy.store(!healthy, Ordering::SeqCst);
    }

    /// The requests (health checks excluded) received so far.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.inner
            .recorded
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Die: close the listener and every open connection.
    pub fn kill(&self) {
        if let Ok(mut tasks) = self.inner.tasks.lock() {
            for t in tasks.drain(..) {
                t.abort();
            }
        }
    }

    /// Come back on the same address.
    pub async fn revive(&self) -> std::io::Result<()> {
        let listener = TcpListener::bind(self.addr).await?;
        self.serve(listener);
        Ok(())
    }
}

fn query_num(query: &str, name: &str) -> Option<u64> {
    query
        .split('&')
        .find_map(|p| p.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}

async fn connection(stream: TcpStream, inner: Arc<Inner>, name: Arc<str>) {
    let peer = stream.peer_addr().ok();
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    let mut proxied = false;
    while let Some(req) = read_request(&mut reader, &mut buf).await {
        let health = req.path == "/health";
        if !health && !proxied {
            proxied = true;
            inner.proxied_connections.fetch_add(1, Ordering::SeqCst);
        }
        if !health {
            inner.requests.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut r) = inner.recorded.lock() {
                r.push(Recorded {
                    peer,
                    method: req.method.clone(),
                    path: req.path.clone(),
                    headers: req.headers.clone(),
                    body: req.body.clone(),
                });
            }
        }
        let in_hand = (!health).then(|| InHand::new(&inner));
        if let Some(ms) = query_num(&req.query, "hold_ms").filter(|_| !health) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        // Counted until its answer begins: once the last byte is written,
        // the edge may send the next request before this task runs again.
        drop(in_hand);
        let take = |n: &AtomicUsize| {
            n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        };
        if !health && take(&inner.drop_next) {
            return;
        }
        if !health && take(&inner.reset_next) {
            // A zero linger never blocks: the close sends RST at once.
            #[allow(deprecated)]
            let _ = reader.get_mut().set_linger(Some(Duration::ZERO));
            return;
        }
        let stream = reader.get_mut();
        let wants_stream =
            req.body.windows(13).any(|w| w == b"\"stream\":true") || req.query.contains("sse=");
        // `?overloaded=relay-a`: that relay answers as an overloaded one does.
        let named = req
            .query
            .split('&')
            .any(|p| p.strip_prefix("overloaded=") == Some(&*name));
        let fault = match (health, named) {
            (true, _) => None,
            (false, true) if wants_stream => {
                Some(Fault::FirstEventError("overloaded_error".into()))
            }
            (false, true) => Some(Fault::Status(529)),
            (false, false) => take_fault(&inner),
        };
        if let Some(fault) = fault {
            if !misbehave(stream, &name, fault).await {
                return;
            }
            continue;
        }
        let ok = if health {
            let code = if inner.unhealthy.load(Ordering::SeqCst) {
                503
            } else {
                200
            };
            respond(
                stream,
                code,
                &name,
                br#"{"status":"ok","components":{"redis":{"status":"up"}}}"#,
            )
            .await
        } else if let Some(code) = req
            .path
            .strip_prefix("/status/")
            .and_then(|c| c.parse::<u16>().ok())
        {
            respond(
                stream,
                code,
                &name,
                format!(r#"{{"upstream":"{name}","status":{code}}}"#).as_bytes(),
            )
            .await
        } else if req.path == "/hang" {
            std::future::pending::<()>().await;
            false
        } else if req.path == "/close" {
            return;
        } else if req.path == "/reset" {
            let _ = sse(stream, &name, 3, 0, false).await;
            return;
        } else if wants_stream {
            let events = query_num(&req.query, "sse").unwrap_or(5);
            let gap = query_num(&req.query, "gap_ms").unwrap_or(0);
            match (
                agent::next_call(&req.path, &req.body),
                OpenAiStream::of_path(&req.path),
            ) {
                (Some(call), _) => agent::answer(stream, &name, &call).await,
                (None, Some(shape)) => openai_sse(stream, &name, shape, events).await,
                (None, None) if req.query.contains("burst=1") => {
                    sse_in_one_write(stream, &name, events).await
                }
                (None, None) => sse(stream, &name, events, gap, true).await,
            }
        } else {
            let body = format!(
                r#"{{"upstream":"{name}","method":"{}","path":"{}","body_bytes":{},"usage":{{"input_tokens":100,"cache_read_input_tokens":900,"output_tokens":10}}}}"#,
                req.method,
                req.path,
                req.body.len()
            );
            respond(stream, 200, &name, body.as_bytes()).await
        };
        if !ok || req.close {
            return;
        }
    }
}

fn take_fault(inner: &Inner) -> Option<Fault> {
    let mut faults = inner.faults.lock().ok()?;
    let (n, fault) = faults.as_mut()?;
    let fault = fault.clone();
    *n -= 1;
    if *n == 0 {
        *faults = None;
    }
    Some(fault)
}

/// Answer as `fault` says; false once the connection is done with.
async fn misbehave(stream: &mut TcpStream, name: &str, fault: Fault) -> bool {
    let events = |n: u64| (0..n).map(|i| event(name, i, n + 10)).collect::<String>();
    match fault {
        Fault::Status(code) => {
            let kind = if code == 529 {
                "overloaded_error"
            } else {
                "api_error"
            };
            let body = format!(
                r#"{{"type":"error","error":{{"type":"{kind}","message":"{name} says {code}"}}}}"#
            );
            respond(stream, code, name, body.as_bytes()).await
        }
        Fault::FirstEventError(kind) => {
            let error = format!("event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"{kind}\",\"message\":\"{name} is overloaded\"}}}}\n\n");
            sse_head(stream, name).await && chunk(stream, &error).await && chunk(stream, "").await
        }
        Fault::SilentBeforeFirstEvent => {
            if sse_head(stream, name).await {
                std::future::pending::<()>().await;
            }
            false
        }
        Fault::CloseBeforeFirstEvent => {
            let _ = sse_head(stream, name).await;
            false
        }
        Fault::CutAfter(n) => {
            let _ = sse_head(stream, name).await && chunk(stream, &events(n)).await;
            false
        }
        Fault::SilentAfter(n) => {
            if sse_head(stream, name).await && chunk(stream, &events(n)).await {
                std::future::pending::<()>().await;
            }
            false
        }
        Fault::NoHead => std::future::pending::<bool>().await,
        Fault::CutBody { declared, sent } => {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {declared}\r\nx-upstream: {name}\r\n\r\n"
            );
            let _ = stream.write_all(head.as_bytes()).await.is_ok()
                && stream.write_all(&cut_body(sent)).await.is_ok();
            false
        }
        Fault::ErrorAfter(n) => {
            let error = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
            sse_head(stream, name).await
                && chunk(stream, &events(n)).await
                && chunk(stream, error).await
                && chunk(stream, "").await
        }
    }
}

async fn sse_head(stream: &mut TcpStream, name: &str) -> bool {
    sse_head_with(stream, name, "").await
}

/// An SSE answer's head, with `extra` header lines (each ending in CRLF).
async fn sse_head_with(stream: &mut TcpStream, name: &str, extra: &str) -> bool {
    stream
        .write_all(sse_head_text(name, extra).as_bytes())
        .await
        .is_ok()
}

fn sse_head_text(name: &str, extra: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\nx-upstream: {name}\r\n{extra}\r\n"
    )
}

/// One chunk of a chunked body; the empty one ends it.
async fn chunk(stream: &mut TcpStream, data: &str) -> bool {
    stream.write_all(chunk_text(data).as_bytes()).await.is_ok()
}

fn chunk_text(data: &str) -> String {
    if data.is_empty() {
        "0\r\n\r\n".to_string()
    } else {
        format!("{:x}\r\n{data}\r\n", data.len())
    }
}

/// Event `i` of a stream whose last event is `last`, as the Messages API
/// sends them: `message_start` (with the prompt's usage: 1000 input tokens,
/// 900 of them read from the cache) and the text block's
/// `content_block_start`, deltas that say when they were sent (µs since the
/// epoch, so that a client can measure what a proxy adds per event), then
/// `content_block_stop`, `message_delta` (10 output tokens) and
/// `message_stop`. SDKs that assemble the message (the AI SDK that OpenCode
/// runs) need the block opened before its deltas.
fn event(name: &str, i: u64, last: u64) -> String {
    match i {
        0 => format!("event: message_start\ndata: {{\"type\":\"message_start\",\"upstream\":\"{name}\",\"message\":{{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":[],\"stop_reason\":null,\"usage\":{{\"input_tokens\":100,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":900,\"output_tokens\":1}}}}}}\n\nevent: content_block_start\ndata: {{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{{\"type\":\"text\",\"text\":\"\"}}}}\n\n"),
        i if i == last => "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":10}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_string(),
        i => format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"sent_us\":{},\"delta\":{{\"type\":\"text_delta\",\"text\":\"{} \"}}}}\n\n",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros()),
            i - 1
        ),
    }
}

async fn respond(stream: &mut TcpStream, code: u16, name: &str, body: &[u8]) -> bool {
    let head = format!(
        "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-upstream: {name}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.is_ok() && stream.write_all(body).await.is_ok()
}

/// An Anthropic-style SSE stream, chunked; `finish: false` drops it midway.
async fn sse(stream: &mut TcpStream, name: &str, deltas: u64, gap_ms: u64, finish: bool) -> bool {
    if !sse_head(stream, name).await {
        return false;
    }
    let last = deltas + 1;
    for i in 0..=last {
        if i > 0 && gap_ms > 0 {
            tokio::time::sleep(Duration::from_millis(gap_ms)).await;
        }
        if !finish && i == 2 {
            return false;
        }
        if !chunk(stream, &event(name, i, last)).await {
            return false;
        }
    }
    chunk(stream, "").await
}

/// The stream of [`sse`] with no gap, its head and its end included, in
/// one write: a relay whose provider sent the whole answer at once.
async fn sse_in_one_write(stream: &mut TcpStream, name: &str, deltas: u64) -> bool {
    let last = deltas + 1;
    let mut all = sse_head_text(name, "");
    for i in 0..=last {
        all.push_str(&chunk_text(&event(name, i, last)));
    }
    all.push_str(&chunk_text(""));
    stream.write_all(all.as_bytes()).await.is_ok()
}

/// The first `n` bytes of a JSON answer (`{"text":"xxx…`), as a relay that
/// is cut short sends them.
pub fn cut_body(n: usize) -> Vec<u8> {
    let mut body = br#"{"text":""#.to_vec();
    body.resize(n.max(body.len()), b'x');
    body.truncate(n);
    body
}
