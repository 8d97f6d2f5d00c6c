//! The writer: one thread that takes what was queued every [`TICK`],
//! formats and writes it to stdout or the file, and flushes whenever the
//! queue runs empty. On SIGUSR1 it reopens the file, as nginx does for
//! logrotate; a file it cannot open or write is reported once until it can.

use super::format::Formatter;
use super::{Entry, Queued};
use crate::config::model::{AccessLogFormat, AccessLogPath, AccessLogSpec};
use prometheus::IntCounter;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How often the writer takes what was queued. The request path never
/// wakes it: a wake-up per line would cost more than the line.
const TICK: Duration = Duration::from_millis(25);

/// What the request path and the writer share, besides the queue.
#[derive(Default)]
pub(super) struct Shared {
    /// Reopen the file (SIGUSR1).
    pub(super) reopen: AtomicBool,
    /// Rounds the writer has finished (each drains the queue and flushes).
    pub(super) rounds: Mutex<u64>,
    pub(super) round_done: Condvar,
}

/// Start the writer thread on the queue's far end; the thread, to wake it.
pub(super) fn spawn(
    path: AccessLogPath,
    rx: Receiver<Queued>,
    shared: Arc<Shared>,
    lines: IntCounter,
) -> io::Result<std::thread::Thread> {
    let writer = Writer {
        path,
        out: None,
        failing: false,
        format: Formatter::default(),
        lines,
    };
    let handle = std::thread::Builder::new()
        .name("relay-edge access log".into())
        .spawn(move || writer.run(rx, &shared))?;
    Ok(handle.thread().clone())
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
    fn run(mut self, rx: Receiver<Queued>, shared: &Shared) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access_log::AccessLog;

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
            log.send(Entry::example(), AccessLogFormat::Json);
        }
        log.flush(Duration::from_secs(10));
        let text = std::fs::read_to_string(&path).expect("the log");
        assert_eq!(text.lines().count(), 500);
    }
}
