//! The queue between the request threads and the writer: a bounded
//! channel that never blocks a request. A line that finds it full is
//! dropped and counted (`relay_edge_access_log_dropped_total`). The handle,
//! [`AccessLog`], also asks the writer to reopen its file and waits for it
//! to flush.

use super::writer::{self, Shared};
use super::{Entry, Queued};
use crate::config::model::{AccessLogFormat, AccessLogSpec};
use prometheus::IntCounter;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Duration;

/// The handle the request path holds.
pub struct AccessLog {
    queue: SyncSender<Queued>,
    shared: Arc<Shared>,
    writer: Option<std::thread::Thread>,
    dropped: IntCounter,
}

impl AccessLog {
    /// A log with no writer: lines queue until the buffer is full, then
    /// are dropped and counted. For an edge built without a server (tests,
    /// fuzzing), which starts no thread.
    pub fn unwritten(spec: &AccessLogSpec, dropped: IntCounter) -> AccessLog {
        AccessLog::queue(spec.buffer, dropped).0
    }

    /// Start the writer thread. A file that cannot be opened is reported
    /// by the writer and tried again on every reopen; `main` checks it
    /// first ([`super::check_path`]), so that the edge does not start without its log.
    pub fn start(spec: &AccessLogSpec, lines: IntCounter, dropped: IntCounter) -> AccessLog {
        let (mut log, rx) = AccessLog::queue(spec.buffer, dropped);
        match writer::spawn(spec.path.clone(), rx, log.shared.clone(), lines) {
            Ok(thread) => log.writer = Some(thread),
            Err(e) => log::error!("access log: cannot start its writer thread: {e}"),
        }
        log
    }

    /// The handle and the queue's far end, without a writer.
    fn queue(buffer: usize, dropped: IntCounter) -> (AccessLog, Receiver<Queued>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let dropped = IntCounter::new("d", "d").expect("counter");
        let (log, rx) = AccessLog::queue(16, dropped.clone());
        for _ in 0..20 {
            log.send(Entry::example(), AccessLogFormat::Json);
        }
        assert_eq!(dropped.get(), 4);
        assert_eq!(rx.try_iter().count(), 16);
    }
}
