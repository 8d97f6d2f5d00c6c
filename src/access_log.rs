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
use crate::outcome::Usage;
use crate::outcome::{AffinityOutcome, RepinReason, StreamOutcome};
use prometheus::IntCounter;
use smallvec::SmallVec;
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
    /// The path, and its query with `access_log.query`; inline up to 48
    /// bytes (most API paths), so that the request path allocates nothing.
    pub target: SmallVec<[u8; 48]>,
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

impl Entry {
    /// The logged request target (always UTF-8: it was a `str`).
    pub fn target(&self) -> &str {
        std::str::from_utf8(&self.target).unwrap_or("-")
    }
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
            format: Formatter::default(),
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
    format: Formatter,
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
        let line = self.format.format(entry, format);
        match out.write_all(line.as_bytes()) {
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

/// Formats lines into one reused buffer, off the request path. The text of
/// the time is made once a second; numbers are written with `itoa`.
#[derive(Default)]
pub struct Formatter {
    line: String,
    second: Option<u64>,
    /// `2026-12-04T21:19:28` and `04/Dec/2026:21:19:28 +0000` of `second`.
    iso: String,
    clf: String,
}

impl Formatter {
    /// The line of `e` in `format`, with its newline.
    pub fn format(&mut self, e: &Entry, format: AccessLogFormat) -> &str {
        self.line.clear();
        let millis = self.time(e.at);
        match format {
            AccessLogFormat::Json => self.json(e, millis),
            AccessLogFormat::Combined => self.combined(e),
        }
        &self.line
    }

    /// Bring the cached second up to `at`; its milliseconds.
    fn time(&mut self, at: SystemTime) -> u32 {
        let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let second = since.as_secs();
        if self.second != Some(second) {
            self.second = Some(second);
            self.iso = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(second))
                .to_string()
                .trim_end_matches('Z')
                .to_string();
            self.clf = clf_time(second);
        }
        since.subsec_millis()
    }

    fn json(&mut self, e: &Entry, millis: u32) {
        let out = &mut self.line;
        out.push_str("{\"time\":\"");
        out.push_str(&self.iso);
        out.push('.');
        push_padded(out, millis as u64, 3);
        out.push_str("Z\",\"client\":");
        match e.client {
            Some(c) => {
                out.push('"');
                push_addr(out, c);
                out.push('"');
            }
            None => out.push_str("null"),
        }
        out.push_str(",\"method\":");
        json_str(out, e.method.as_str());
        out.push_str(",\"path\":");
        json_str(out, e.target());
        out.push_str(",\"status\":");
        push_int(out, e.status);
        out.push_str(",\"upstream\":");
        match &e.upstream {
            Some(u) => json_str(out, u),
            None => out.push_str("null"),
        }
        out.push_str(",\"session\":");
        match e.session {
            Some(s) => {
                out.push('"');
                push_session(out, s);
                out.push('"');
            }
            None => out.push_str("null"),
        }
        out.push_str(",\"affinity\":\"");
        push_affinity(out, e);
        out.push_str("\",\"attempts\":");
        push_int(out, e.attempts);
        out.push_str(",\"bytes_in\":");
        push_int(out, e.bytes_in);
        out.push_str(",\"bytes_out\":");
        push_int(out, e.bytes_out);
        for (name, d) in [
            (",\"upstream_head_ms\":", e.upstream_head),
            (",\"first_event_ms\":", e.first_event),
            (",\"total_ms\":", Some(e.total)),
        ] {
            out.push_str(name);
            match d {
                Some(d) => push_ms(out, d),
                None => out.push_str("null"),
            }
        }
        out.push_str(",\"stream\":");
        match e.stream {
            Some(s) => {
                out.push('"');
                out.push_str(s.label());
                out.push('"');
            }
            None => out.push_str("null"),
        }
        let usage = e.usage;
        for (name, n) in [
            (",\"input_tokens\":", usage.map(|u| u.input)),
            (",\"cache_read_tokens\":", usage.map(|u| u.cache_read)),
            (
                ",\"cache_creation_tokens\":",
                usage.map(|u| u.cache_creation),
            ),
            (",\"output_tokens\":", usage.map(|u| u.output)),
        ] {
            out.push_str(name);
            match n {
                Some(n) => push_int(out, n),
                None => out.push_str("null"),
            }
        }
        out.push_str("}\n");
    }

    /// nginx's combined format, then `key=value` fields (`-` when absent).
    fn combined(&mut self, e: &Entry) {
        let out = &mut self.line;
        match e.client {
            Some(c) => push_ip(out, c.ip()),
            None => out.push('-'),
        }
        out.push_str(" - - [");
        out.push_str(&self.clf);
        out.push_str("] \"");
        out.push_str(e.method.as_str());
        out.push(' ');
        clf_escape(out, e.target());
        out.push(' ');
        out.push_str(match e.version {
            http::Version::HTTP_09 => "HTTP/0.9",
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_2 => "HTTP/2.0",
            http::Version::HTTP_3 => "HTTP/3.0",
            _ => "HTTP/1.1",
        });
        out.push_str("\" ");
        push_int(out, e.status);
        out.push(' ');
        push_int(out, e.bytes_out);
        for header in [&e.referer, &e.user_agent] {
            out.push_str(" \"");
            match header {
                Some(v) => clf_escape(out, v),
                None => out.push('-'),
            }
            out.push('"');
        }
        out.push_str(" upstream=");
        out.push_str(e.upstream.as_deref().unwrap_or("-"));
        out.push_str(" session=");
        match e.session {
            Some(s) => push_session(out, s),
            None => out.push('-'),
        }
        out.push_str(" affinity=");
        push_affinity(out, e);
        out.push_str(" attempts=");
        push_int(out, e.attempts);
        out.push_str(" bytes_in=");
        push_int(out, e.bytes_in);
        for (name, d) in [
            (" upstream_head_ms=", e.upstream_head),
            (" first_event_ms=", e.first_event),
            (" total_ms=", Some(e.total)),
        ] {
            out.push_str(name);
            match d {
                Some(d) => push_ms(out, d),
                None => out.push('-'),
            }
        }
        out.push_str(" stream=");
        out.push_str(e.stream.map_or("-", StreamOutcome::label));
        for (name, n) in [
            (" cache_read_tokens=", e.usage.map(|u| u.cache_read)),
            (" input_tokens=", e.usage.map(|u| u.input)),
        ] {
            out.push_str(name);
            match n {
                Some(n) => push_int(out, n),
                None => out.push('-'),
            }
        }
        out.push('\n');
    }
}

fn push_int(out: &mut String, n: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// `n` with at least `width` digits.
fn push_padded(out: &mut String, n: u64, width: usize) {
    let mut digits = itoa::Buffer::new();
    let text = digits.format(n);
    for _ in text.len()..width {
        out.push('0');
    }
    out.push_str(text);
}

/// Milliseconds with microseconds: `2.500`.
fn push_ms(out: &mut String, d: Duration) {
    let micros = d.as_micros() as u64;
    push_int(out, micros / 1000);
    out.push('.');
    push_padded(out, micros % 1000, 3);
}

fn push_ip(out: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_int(out, octet);
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// `ip:port`, or `[ip]:port`.
fn push_addr(out: &mut String, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(_) => push_ip(out, addr.ip()),
        SocketAddr::V6(_) => {
            out.push('[');
            push_ip(out, addr.ip());
            out.push(']');
        }
    }
    out.push(':');
    push_int(out, addr.port());
}

/// The first 12 hex digits of the session's keyed hash: enough to grep one
/// session's lines, never the key itself.
fn push_session(out: &mut String, id: SessionId) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let top = (id.0 >> 80) as u64;
    for i in (0..12).rev() {
        out.push(HEX[((top >> (4 * i)) & 0xf) as usize] as char);
    }
}

/// `hit`, `new`, `moved:<reason>`, or `none` without a session key.
fn push_affinity(out: &mut String, e: &Entry) {
    match (e.affinity, e.moved_reason) {
        (None, _) => out.push_str("none"),
        (Some(AffinityOutcome::Moved), Some(reason)) => {
            out.push_str("moved:");
            out.push_str(reason.label());
        }
        (Some(outcome), _) => out.push_str(outcome.label()),
    }
}

/// Needs no escaping, in JSON or in the combined format.
fn plain(b: u8) -> bool {
    (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\'
}

/// `"text"`, escaped for JSON.
fn json_str(out: &mut String, text: &str) {
    out.push('"');
    if text.bytes().all(plain) {
        out.push_str(text);
    } else {
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
    }
    out.push('"');
}

/// A client's text inside quotes: `"`, `\` and bytes outside printable
/// ASCII escaped as nginx does (`\xHH`), so that one line stays one line.
fn clf_escape(out: &mut String, text: &str) {
    if text.bytes().all(plain) {
        out.push_str(text);
        return;
    }
    for b in text.bytes() {
        if plain(b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "\\x{b:02X}");
        }
    }
}

/// `04/Dec/2026:21:19:28 +0000`, in UTC, for seconds since the epoch.
fn clf_time(secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
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
            target: SmallVec::from_slice(b"/v1/messages"),
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
        let line = Formatter::default()
            .format(&entry(), AccessLogFormat::Json)
            .to_string();
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
        let line = Formatter::default()
            .format(&entry(), AccessLogFormat::Combined)
            .to_string();
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
    fn hostile_text_stays_on_one_line_in_both_formats() {
        let text = "/v1/\"quoted\"\\back\nnew\u{1}line\u{7f}é";
        let mut json = String::new();
        json_str(&mut json, text);
        assert!(!json.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        assert_eq!(v, text);
        let mut clf = String::new();
        clf_escape(&mut clf, text);
        assert_eq!(
            clf,
            "/v1/\\x22quoted\\x22\\x5Cback\\x0Anew\\x01line\\x7F\\xC3\\xA9"
        );
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
        let at = clf_time;
        assert_eq!(at(0), "01/Jan/1970:00:00:00 +0000");
        assert_eq!(at(951_782_400), "29/Feb/2000:00:00:00 +0000");
        assert_eq!(at(1_709_251_199), "29/Feb/2024:23:59:59 +0000");
    }
}
