//! The affinity table's interface, and the records it hands out.
//!
//! [`SessionStore`] is the interface the proxy and the admin API use. The
//! hot path calls only [`SessionStore::lookup_local`], which never does I/O
//! and never allocates; the async calls run for a session's first request, a
//! failover re-pin, or the admin API. A pin and its counters are a
//! [`SessionRecord`], updated in place; the admin API shows a session as a
//! [`SessionInfo`]; a graceful upgrade hands one over as a
//! [`HandedSession`].
//!
//! [`LocalStore`] (`local`) keeps the table in this process. The Redis
//! store puts one in front of the shared table.

mod local;

pub use local::LocalStore;

use super::SessionId;
use crate::clock::unix_ms;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A duration that a reload can change while the table is in use.
#[derive(Debug, Clone)]
pub struct LiveDuration(Arc<AtomicU64>);

impl LiveDuration {
    pub fn new(d: Duration) -> Self {
        LiveDuration(Arc::new(AtomicU64::new(d.as_millis() as u64)))
    }

    pub fn get(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::Relaxed))
    }

    pub fn set(&self, d: Duration) {
        self.0.store(d.as_millis() as u64, Ordering::Relaxed);
    }
}

/// One session's pin and counters. The proxy updates the counters in place.
#[derive(Debug)]
pub struct SessionRecord {
    pub upstream: Arc<str>,
    pub created_ms: u64,
    /// When the shared table last confirmed the pin (a front cache asks
    /// again `local_ttl` later).
    confirmed_ms: AtomicU64,
    /// The front cache's ticket when the pin was confirmed (0: never): a
    /// pin confirmed before the cache's last re-validation is asked again.
    confirmed_at: AtomicU64,
    last_seen_ms: AtomicU64,
    /// When the shared table's TTL was last renewed (Redis store only).
    renewed_ms: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    /// What an admin `PUT` attached (a JSON object, serialized).
    metadata: arc_swap::ArcSwapOption<String>,
    /// Counts already written to the shared table (Redis store only).
    flushed_requests: AtomicU64,
    flushed_errors: AtomicU64,
    /// Answers of its upstream retried elsewhere in a row (this edge only):
    /// what `failover.move_pin: after_failures` counts.
    failed_answers: std::sync::atomic::AtomicU32,
}

impl SessionRecord {
    pub(crate) fn new(upstream: Arc<str>, created_ms: u64, requests: u64, errors: u64) -> Self {
        let now = unix_ms();
        SessionRecord {
            upstream,
            created_ms,
            confirmed_ms: AtomicU64::new(now),
            confirmed_at: AtomicU64::new(0),
            last_seen_ms: AtomicU64::new(now),
            renewed_ms: AtomicU64::new(now),
            requests: AtomicU64::new(requests),
            errors: AtomicU64::new(errors),
            metadata: arc_swap::ArcSwapOption::empty(),
            flushed_requests: AtomicU64::new(requests),
            flushed_errors: AtomicU64::new(errors),
            failed_answers: Default::default(),
        }
    }

    /// One more answer of its upstream retried elsewhere; how many in a row.
    pub fn failed_answer(&self) -> u32 {
        self.failed_answers.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Count one finished request of this session.
    pub fn record(&self, error: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Its upstream answered well: failed answers in a row start over.
    pub fn answered_well(&self) {
        if self.failed_answers.load(Ordering::Relaxed) != 0 {
            self.failed_answers.store(0, Ordering::Relaxed);
        }
    }

    /// Seen since its last renewal in the shared table, which is at least
    /// `every_ms` old.
    pub fn needs_renewal(&self, every_ms: u64) -> bool {
        let renewed = self.renewed_ms.load(Ordering::Relaxed);
        self.last_seen_ms.load(Ordering::Relaxed) > renewed
            && unix_ms().saturating_sub(renewed) >= every_ms
    }

    pub fn last_seen_ms(&self) -> u64 {
        self.last_seen_ms.load(Ordering::Relaxed)
    }

    /// Requests and errors counted since the last call.
    pub fn take_deltas(&self) -> (u64, u64) {
        let r = self.requests.load(Ordering::Relaxed);
        let e = self.errors.load(Ordering::Relaxed);
        let dr = r.saturating_sub(self.flushed_requests.swap(r, Ordering::Relaxed));
        let de = e.saturating_sub(self.flushed_errors.swap(e, Ordering::Relaxed));
        (dr, de)
    }

    pub fn mark_renewed(&self) {
        self.renewed_ms.store(unix_ms(), Ordering::Relaxed);
    }

    /// The shared table holds this pin as of `ticket` (see [`LocalStore::ticket`]).
    fn confirm(&self, ticket: u64) {
        self.confirmed_at.store(ticket, Ordering::Relaxed);
        self.confirmed_ms.store(unix_ms(), Ordering::Relaxed);
    }
}

/// A session as the admin API shows it (and `relay-edge ctl` reads it).
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SessionInfo {
    pub id: String,
    pub upstream: String,
    pub created_unix_ms: u64,
    pub last_seen_unix_ms: u64,
    pub requests: u64,
    pub errors: u64,
    pub ttl_left_seconds: u64,
    /// What an admin `PUT` attached to the session, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

/// One session of the in-process table, as the old process of a graceful
/// upgrade writes it for the new one.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HandedSession {
    pub id: String,
    pub upstream: String,
    pub created_ms: u64,
    pub last_seen_ms: u64,
    pub requests: u64,
    pub errors: u64,
}

/// Where a lookup found its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupSource {
    Local,
    Shared,
}

/// The window of `tenants.max_new_sessions_per_hour`: a clock hour.
pub const NEW_SESSION_WINDOW_SECS: u64 = 3600;

#[async_trait]
pub trait SessionStore: Send + Sync {
    /// The pin of `id` from local knowledge alone, renewing its TTL. No I/O.
    fn lookup_local(&self, id: SessionId) -> Option<Arc<SessionRecord>>;

    /// A TTL from a reload: each session's next use applies it.
    fn apply_ttl(&self, ttl: Duration);

    /// The pin of `id`, asking the shared table on a local miss.
    async fn lookup(&self, id: SessionId) -> Option<(Arc<SessionRecord>, LookupSource)>;

    /// Pin a new session to `upstream` unless it is already pinned; returns
    /// the pin in force (another claimant's, if it won).
    async fn claim(&self, id: SessionId, upstream: Arc<str>) -> Arc<SessionRecord>;

    /// Move `id` to `to` if its pin still names `from` (or it has none);
    /// returns the pin in force.
    async fn repin(&self, id: SessionId, from: &str, to: Arc<str>) -> Arc<SessionRecord>;

    /// Pin `id` to `upstream` unconditionally (admin), attaching `metadata`
    /// (a serialized JSON object) if given, else keeping what it had.
    async fn set(&self, id: SessionId, upstream: Arc<str>, metadata: Option<String>);

    /// Forget `id`; true if it was pinned.
    async fn forget(&self, id: SessionId) -> bool;

    async fn get(&self, id: SessionId) -> Option<SessionInfo>;

    /// Sessions, optionally only those of one upstream, at most `limit`.
    async fn list(&self, upstream: Option<&str>, limit: usize) -> Vec<SessionInfo>;

    /// Live sessions per upstream id.
    fn counts(&self) -> HashMap<Arc<str>, u64>;

    fn len(&self) -> u64;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Count one new session of `tenant` in clock hour `hour` (of
    /// [`NEW_SESSION_WINDOW_SECS`]) against
    /// `limit`, across every edge that shares the table: `Some(admitted)`
    /// when the shared table answered, `None` when there is none or it
    /// could not answer (the caller then counts on this edge).
    async fn count_new_session(
        &self,
        _tenant: crate::affinity::TenantId,
        _hour: u64,
        _limit: u64,
    ) -> Option<bool> {
        None
    }

    /// Share an admin drain with every edge; false if it could not be shared.
    async fn share_drain(&self, _upstream: &str, _on: bool) -> bool {
        false
    }

    /// The shared table is unreachable: place new sessions so that edges
    /// still agree (consistent hashing).
    fn degraded(&self) -> bool {
        false
    }

    /// The table is known: its first connection is made (or given up on
    /// after a bounded wait). Until then nothing may be placed.
    fn settled(&self) -> bool {
        true
    }

    /// Wait until [`SessionStore::settled`].
    async fn until_settled(&self) {}

    /// What `/api/stats` shows under `redis`.
    fn describe(&self) -> serde_json::Value {
        serde_json::json!({ "configured": false, "mode": "in-process table" })
    }
}
