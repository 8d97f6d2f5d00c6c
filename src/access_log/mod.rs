//! The access log: one line per request, in JSON (the default) or in
//! nginx's combined format followed by relay-edge's own fields.
//!
//! The request path only builds an [`Entry`] and offers it to a bounded
//! queue: it never formats, never writes and never waits. When the queue is
//! full the entry is dropped and counted
//! (`relay_edge_access_log_dropped_total`). One writer thread formats and
//! writes, and flushes whenever the queue runs empty. SIGUSR1 makes it
//! reopen its file, as nginx does for logrotate.
//!
//! ```text
//! request path ──Entry──► queue.rs (AccessLog: bounded, drops and counts when full)
//!                            │
//!                            ▼
//!                         writer.rs (its thread: the file, flushes, SIGUSR1 reopen)
//!                            │ format.rs (JSON and combined lines; fields.rs writes each field)
//!                            ▼
//!                         stdout or the file
//! ```

mod fields;
mod format;
mod queue;
mod writer;

pub use format::Formatter;
pub use queue::AccessLog;
pub use writer::check_path;

use crate::affinity::SessionId;
use crate::config::model::AccessLogFormat;
use crate::outcome::Usage;
use crate::outcome::{AffinityOutcome, RepinReason, StreamOutcome};
use smallvec::SmallVec;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// What the queue carries: a line to be, and the format it is written in.
type Queued = (Box<Entry>, AccessLogFormat);

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

    /// A request with every field set (some to none), for the tests.
    #[cfg(test)]
    pub(crate) fn example() -> Entry {
        Entry {
            at: std::time::UNIX_EPOCH + Duration::from_secs(1_796_419_168),
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
}
