//! The access log: one line per request, in JSON (the default) or in
//! nginx's combined format followed by relay-edge's own fields.
//!
//! The request path only builds an [`Entry`] and offers it to a bounded
//! queue: it never formats, never writes and never waits. When the queue is
//! full the entry is dropped and counted
//! (`relay_edge_access_log_dropped_total`). One writer thread formats and
//! writes, and flushes whenever the queue runs empty. SIGUSR1 makes it
//! reopen its file, as nginx does for logrotate.

use crate::affinity::SessionId;
use crate::config::model::{AccessLogFormat, AccessLogPath, AccessLogSpec};
use crate::metrics::{AffinityOutcome, RepinReason, StreamOutcome};
use crate::proxy::sse::Usage;
use prometheus::IntCounter;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One request, as the log records it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub at: SystemTime,
    pub client: Option<SocketAddr>,
    pub method: http::Method,
    pub version: http::Version,
    /// The path, and the query too with `access_log.query`.
    pub path: String,
    pub status: u16,
    pub upstream: Option<Arc<str>>,
    pub session: Option<SessionId>,
    /// None without a session key.
    pub affinity: Option<AffinityOutcome>,
    /// Why it was `Moved`.
    pub moved_reason: Option<RepinReason>,
    /// Upstream attempts made (0 when none was reached).
    pub attempts: u32,
    /// Request body bytes read from the client; response body bytes sent.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// From the request's start to the upstream's response head.
    pub upstream_head: Option<Duration>,
    /// From the request's start to a stream's first event (or body bytes).
    pub first_event: Option<Duration>,
    pub total: Duration,
    pub stream: Option<StreamOutcome>,
    pub usage: Option<Usage>,
    /// For the combined format only.
    pub referer: Option<String>,
    pub user_agent: Option<String>,
}

/// The first 12 hex digits of a session's keyed hash: enough to grep one
/// session's lines, never the key itself.
pub fn short_session(id: SessionId) -> String {
    let mut hex = id.to_hex();
    hex.truncate(12);
    hex
}

/// How often the writer takes what was queued. The request path never
/// wakes it: a wake-up per line would cost more than the line.
const TICK: Duration = Duration::from_millis(25);

/// What the request path and the writer share, besides the queue.
#[derive(Default)]
struct Shared {
    /// Reopen the file (SIGUSR1).
    reopen: AtomicBool,
    /// Rounds the writer has finished (each drains the queue and flushes).
    rounds: Mutex<u64>,
    round_done: Condvar,
}

/// The handle the request path holds.
pub struct AccessLog {
    queue: SyncSender<(Box<Entry>, AccessLogFormat)>,
    shared: Arc<Shared>,
    writer: Option<std::thread::Thread>,
    dropped: IntCounter,
}

impl AccessLog {
    /// Start the writer thread. A file that cannot be opened is reported
    /// by the writer and tried again on every reopen; `main` checks it
    /// first ([`check_path`]), so that the edge does not start without its log.
    pub fn start(spec: &AccessLogSpec, lines: IntCounter, dropped: IntCounter) -> AccessLog {
        let (mut log, rx) = AccessLog::queue(spec.buffer, dropped);
        let writer = Writer {
            path: spec.path.clone(),
            out: None,
            failing: false,
            line: String::with_capacity(512),
            lines,
        };
        let shared = log.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("relay-edge access log".into())
            .spawn(move || writer.run(rx, &shared));
        match spawned {
            Ok(handle) => log.writer = Some(handle.thread().clone()),
            Err(e) => log::error!("access log: cannot start its writer thread: {e}"),
        }
        log
    }

    /// The handle and the queue's far end, without a writer.
    fn queue(
        buffer: usize,
        dropped: IntCounter,
    ) -> (AccessLog, Receiver<(Box<Entry>, AccessLogFormat)>) {
        let (queue, rx) = sync_channel(buffer);
        let log = AccessLog {
            queue,
            shared: Arc::default(),
            writer: None,
            dropped,
        };
        (log, rx)
    }

    /// Should this request be logged, by `access_log.enabled` and `.sample`?
    pub fn wants(spec: &AccessLogSpec) -> bool {
        spec.enabled && (spec.sample >= 1.0 || fastrand::f64() < spec.sample)
    }

    /// Queue one line; never blocks and never wakes the writer. A full
    /// queue drops it and counts it.
    pub fn send(&self, entry: Entry, format: AccessLogFormat) {
        if self.queue.try_send((Box::new(entry), format)).is_err() {
            self.dropped.inc();
        }
    }

    /// Reopen the file (SIGUSR1), after logrotate moved it away.
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Relaxed);
        self.wake();
    }

    /// Wait, at most `within`, until every line queued so far is written
    /// and flushed: before the process exits.
    pub fn flush(&self, within: Duration) {
        let Ok(rounds) = self.shared.rounds.lock() else {
            return;
        };
        // The round under way may have drained the queue before our last
        // lines came: the one after it has them.
        let until = *rounds + 2;
        self.wake();
        let _ = self
            .shared
            .round_done
            .wait_timeout_while(rounds, within, |r| *r < until);
    }

    fn wake(&self) {
        if let Some(writer) = &self.writer {
            writer.unpark();
        }
    }
}

/// Check, before start and in `--check`, that the log's file can be
/// opened for appending (as `nginx -t` opens its logs).
pub fn check_path(spec: &AccessLogSpec) -> Result<(), String> {
    match &spec.path {
        AccessLogPath::Stdout => Ok(()),
        AccessLogPath::File(p) => open(p).map(drop).map_err(|e| {
            format!(
                "access_log.path: cannot open {} for appending: {e}",
                p.display()
            )
        }),
    }
}

fn open(path: &std::path::Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

struct Writer {
    path: AccessLogPath,
    out: Option<BufWriter<Box<dyn Write + Send>>>,
    /// The last write or open failed (logged once until one succeeds).
    failing: bool,
    /// The line being formatted, reused.
    line: String,
    lines: IntCounter,
}

impl Writer {
    fn run(mut self, rx: Receiver<(Box<Entry>, AccessLogFormat)>, shared: &Shared) {
        self.open();
        loop {
            std::thread::park_timeout(TICK);
            if shared.reopen.swap(false, Ordering::Relaxed) {
                self.flush();
                self.open();
            }
            let open = loop {
                match rx.try_recv() {
                    Ok((entry, format)) => self.take(&entry, format),
                    Err(TryRecvError::Empty) => break true,
                    Err(TryRecvError::Disconnected) => break false,
                }
            };
            self.flush();
            if let Ok(mut rounds) = shared.rounds.lock() {
                *rounds += 1;
                shared.round_done.notify_all();
            }
            if !open {
                return;
            }
        }
    }

    fn open(&mut self) {
        let out: Box<dyn Write + Send> = match &self.path {
            AccessLogPath::Stdout => Box::new(io::stdout()),
            AccessLogPath::File(p) => match open(p) {
                Ok(f) => Box::new(f),
                Err(e) => {
                    let what = format!("cannot open {}: {e}", p.display());
                    self.failed(format_args!("{what}"));
                    self.out = None;
                    return;
                }
            },
        };
        self.out = Some(BufWriter::with_capacity(64 * 1024, out));
    }

    fn take(&mut self, entry: &Entry, format: AccessLogFormat) {
        let Some(out) = &mut self.out else { return };
        self.line.clear();
        match format {
            AccessLogFormat::Json => json_line(entry, &mut self.line),
            AccessLogFormat::Combined => combined_line(entry, &mut self.line),
        }
        match out.write_all(self.line.as_bytes()) {
            Ok(()) => {
                self.lines.inc();
                self.failing = false;
            }
            Err(e) => self.failed(format_args!("write failed: {e}")),
        }
    }

    fn flush(&mut self) {
        if let Some(out) = &mut self.out {
            if let Err(e) = out.flush() {
                self.failed(format_args!("write failed: {e}"));
            }
        }
    }

    fn failed(&mut self, what: std::fmt::Arguments) {
        if !std::mem::replace(&mut self.failing, true) {
            log::error!("access log: {what}");
        }
    }
}

/// `hit`, `new`, `moved:<reason>`, or `none` without a session key.
fn affinity_label(e: &Entry) -> String {
    match (e.affinity, e.moved_reason) {
        (None, _) => "none".into(),
        (Some(AffinityOutcome::Moved), Some(reason)) => format!("moved:{}", reason.label()),
        (Some(outcome), _) => outcome.label().into(),
    }
}

/// `"text"`, escaped for JSON.
fn json_str(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Milliseconds with microseconds, or null.
fn json_ms(out: &mut String, d: Option<Duration>) {
    match d {
        Some(d) => {
            let micros = d.as_micros();
            let _ = write!(out, "{}.{:03}", micros / 1000, micros % 1000);
        }
        None => out.push_str("null"),
    }
}

fn json_opt<T: std::fmt::Display>(out: &mut String, v: Option<T>) {
    match v {
        Some(v) => {
            let _ = write!(out, "{v}");
        }
        None => out.push_str("null"),
    }
}

/// One JSON object and a newline, its fields in the documented order.
pub fn json_line(e: &Entry, out: &mut String) {
    out.push_str("{\"time\":");
    json_str(out, &humantime::format_rfc3339_millis(e.at).to_string());
    out.push_str(",\"client\":");
    match e.client {
        Some(c) => json_str(out, &c.to_string()),
        None => out.push_str("null"),
    }
    out.push_str(",\"method\":");
    json_str(out, e.method.as_str());
    out.push_str(",\"path\":");
    json_str(out, &e.path);
    let _ = write!(out, ",\"status\":{},\"upstream\":", e.status);
    match &e.upstream {
        Some(u) => json_str(out, u),
        None => out.push_str("null"),
    }
    out.push_str(",\"session\":");
    match e.session {
        Some(s) => json_str(out, &short_session(s)),
        None => out.push_str("null"),
    }
    out.push_str(",\"affinity\":");
    json_str(out, &affinity_label(e));
    let _ = write!(
        out,
        ",\"attempts\":{},\"bytes_in\":{},\"bytes_out\":{},\"upstream_head_ms\":",
        e.attempts, e.bytes_in, e.bytes_out
    );
    json_ms(out, e.upstream_head);
    out.push_str(",\"first_event_ms\":");
    json_ms(out, e.first_event);
    out.push_str(",\"total_ms\":");
    json_ms(out, Some(e.total));
    out.push_str(",\"stream\":");
    match e.stream {
        Some(s) => json_str(out, s.label()),
        None => out.push_str("null"),
    }
    for (name, value) in [
        ("input_tokens", e.usage.map(|u| u.input)),
        ("cache_read_tokens", e.usage.map(|u| u.cache_read)),
        ("cache_creation_tokens", e.usage.map(|u| u.cache_creation)),
        ("output_tokens", e.usage.map(|u| u.output)),
    ] {
        let _ = write!(out, ",\"{name}\":");
        json_opt(out, value);
    }
    out.push_str("}\n");
}

/// nginx's combined format, then `key=value` fields (`-` when absent).
pub fn combined_line(e: &Entry, line: &mut String) {
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let quoted = |v: &Option<String>| match v {
        Some(v) => escape(v),
        None => "-".into(),
    };
    let ms = |d: Option<Duration>| dash(d.map(|d| format!("{:.3}", d.as_secs_f64() * 1e3)));
    let _ = write!(
        line,
        "{} - - [{}] \"{} {} {:?}\" {} {} \"{}\" \"{}\"",
        dash(e.client.map(|c| c.ip().to_string())),
        clf_time(e.at),
        e.method,
        escape(&e.path),
        e.version,
        e.status,
        e.bytes_out,
        quoted(&e.referer),
        quoted(&e.user_agent),
    );
    let _ = write!(
        line,
        " upstream={} session={} affinity={} attempts={} bytes_in={} upstream_head_ms={} first_event_ms={} total_ms={:.3} stream={} cache_read_tokens={} input_tokens={}\n",
        dash(e.upstream.as_deref().map(str::to_string)),
        dash(e.session.map(short_session)),
        affinity_label(e),
        e.attempts,
        e.bytes_in,
        ms(e.upstream_head),
        ms(e.first_event),
        e.total.as_secs_f64() * 1e3,
        e.stream.map_or("-", StreamOutcome::label),
        dash(e.usage.map(|u| u.cache_read.to_string())),
        dash(e.usage.map(|u| u.input.to_string())),
    );
}

/// A client's text inside quotes: `"`, `\` and control bytes escaped as
/// nginx does (`\xHH`), so that one line stays one line.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'"' | b'\\' | 0..=0x1f | 0x7f.. => out.push_str(&format!("\\x{b:02X}")),
            _ => out.push(b as char),
        }
    }
    out
}

/// `04/Dec/2026:21:19:28 +0000`, in UTC.
fn clf_time(at: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days-to-civil, for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            at: UNIX_EPOCH + Duration::from_secs(1_796_419_168),
            client: "10.0.0.7:51234".parse().ok(),
            method: http::Method::POST,
            version: http::Version::HTTP_11,
            path: "/v1/messages".into(),
            status: 200,
            upstream: Some("relay-a".into()),
            session: Some(SessionId(0xabcdef0123456789_u128 << 64)),
            affinity: Some(AffinityOutcome::Moved),
            moved_reason: Some(RepinReason::Draining),
            attempts: 2,
            bytes_in: 90_000,
            bytes_out: 4_096,
            upstream_head: Some(Duration::from_micros(2_500)),
            first_event: None,
            total: Duration::from_millis(40),
            stream: Some(StreamOutcome::Completed),
            usage: Some(Usage {
                input: 10,
                cache_read: 900,
                cache_creation: 0,
                output: 5,
            }),
            referer: None,
            user_agent: Some("claude-cli/2.0 \"x\"".into()),
        }
    }

    #[test]
    fn json_lines_name_every_field() {
        let mut line = String::new();
        json_line(&entry(), &mut line);
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(v["time"], "2026-12-04T21:19:28.000Z");
        assert_eq!(v["client"], "10.0.0.7:51234");
        assert_eq!(v["session"], "abcdef012345");
        assert_eq!(v["affinity"], "moved:draining");
        assert_eq!(v["upstream_head_ms"], 2.5);
        assert_eq!(v["first_event_ms"], serde_json::Value::Null);
        assert_eq!(v["stream"], "completed");
        assert_eq!(v["cache_read_tokens"], 900);
    }

    #[test]
    fn combined_lines_are_nginx_combined_then_fields() {
        let mut line = String::new();
        combined_line(&entry(), &mut line);
        assert_eq!(
            line,
            "10.0.0.7 - - [04/Dec/2026:21:19:28 +0000] \"POST /v1/messages HTTP/1.1\" 200 4096 \"-\" \"claude-cli/2.0 \\x22x\\x22\" upstream=relay-a session=abcdef012345 affinity=moved:draining attempts=2 bytes_in=90000 upstream_head_ms=2.500 first_event_ms=- total_ms=40.000 stream=completed cache_read_tokens=900 input_tokens=10\n"
        );
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let dropped = IntCounter::new("d", "d").expect("counter");
        let (log, rx) = AccessLog::queue(16, dropped.clone());
        for _ in 0..20 {
            log.send(entry(), AccessLogFormat::Json);
        }
        assert_eq!(dropped.get(), 4);
        assert_eq!(rx.try_iter().count(), 16);
    }

    #[test]
    fn hostile_paths_stay_one_valid_json_line() {
        let mut e = entry();
        e.path = "/v1/\"quoted\"\\back\nnew\u{1}line\u{7f}é".into();
        let mut line = String::new();
        json_line(&e, &mut line);
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(v["path"], e.path.as_str());
    }

    #[test]
    fn flush_waits_until_every_queued_line_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.log");
        let spec = AccessLogSpec {
            enabled: true,
            format: AccessLogFormat::Json,
            path: AccessLogPath::File(path.clone()),
            sample: 1.0,
            query: false,
            buffer: 1024,
        };
        let counter = |n: &str| IntCounter::new(n, n).expect("counter");
        let log = AccessLog::start(&spec, counter("lines"), counter("dropped"));
        for _ in 0..500 {
            log.send(entry(), AccessLogFormat::Json);
        }
        log.flush(Duration::from_secs(10));
        let text = std::fs::read_to_string(&path).expect("the log");
        assert_eq!(text.lines().count(), 500);
    }

    #[test]
    fn civil_dates_across_leap_years() {
        let at = |s: u64| clf_time(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "01/Jan/1970:00:00:00 +0000");
        assert_eq!(at(951_782_400), "29/Feb/2000:00:00:00 +0000");
        assert_eq!(at(1_709_251_199), "29/Feb/2024:23:59:59 +0000");
    }
}
