//! The affinity table's interface, and the records it hands out.
//!
//! [`SessionStore`] is the interface the proxy and the admin API use. The
//! hot path calls only [`SessionStore::lookup_local`], which never does I/O
//! and never allocates; the async calls run for a session's first request, a
//! failover re-pin, or the admin API. A pin and its counters are a
//! [`SessionRecord`], updated in place; the admin API shows a session as a
//! [`SessionInfo`]; a graceful upgrade hands one over as a
//! [`HandedSession`]. Pins change in bulk by [`SessionStore::purge`] (what a
//! [`Selector`] names) and [`SessionStore::move_all`] (an ejected relay's).
//!
//! [`LocalStore`] (`local`) keeps the table in this process. The Redis
//! store puts one in front of the shared table.

mod local;

pub use local::LocalStore;

use super::{SessionId, TenantId};
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
    /// The tenant whose session it is (its id is namespaced by it), so
    /// that a tenant's pins can be purged; none for a session without one.
    pub tenant: Option<TenantId>,
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
    pub(crate) fn new(
        upstream: Arc<str>,
        tenant: Option<TenantId>,
        created_ms: u64,
        requests: u64,
        errors: u64,
    ) -> Self {
        let now = unix_ms();
        SessionRecord {
            upstream,
            tenant,
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
    /// The tenant's hash (hex), if the session has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub created_ms: u64,
    pub last_seen_ms: u64,
    pub requests: u64,
    pub errors: u64,
}

/// The pins a purge removes (`DELETE /api/sessions?...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Every pin to this upstream.
    Upstream(Arc<str>),
    /// Every pin of this tenant's sessions.
    Tenant(TenantId),
    /// Every pin.
    All,
}

impl Selector {
    pub fn matches(&self, r: &SessionRecord) -> bool {
        self.matches_pin(&r.upstream, r.tenant)
    }

    /// Does it select a pin to `upstream` of a session of `tenant`?
    pub fn matches_pin(&self, upstream: &str, tenant: Option<TenantId>) -> bool {
        match self {
            Selector::Upstream(u) => **u == *upstream,
            Selector::Tenant(t) => tenant == Some(*t),
            Selector::All => true,
        }
    }
}

/// As the logs, the admin API and the pub/sub messages name it:
/// `upstream relay-a`, `tenant 0123456789abcdef`, `all`.
impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::Upstream(u) => write!(f, "upstream {u}"),
            Selector::Tenant(t) => write!(f, "tenant {t}"),
            Selector::All => f.write_str("all"),
        }
    }
}

/// What a bulk change of pins did: pins removed (or moved) in the shared
/// table (`None` without one), and this edge's own pins dropped (the
/// in-process table, or the front cache).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub shared: Option<u64>,
    pub local: u64,
}

impl Purged {
    /// The pins the table in force lost: the shared table's when there is
    /// one, else this edge's.
    pub fn removed(&self) -> u64 {
        self.shared.unwrap_or(self.local)
    }
}

/// A bulk change the shared table could not finish; `done` is what it did.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the shared table stopped answering ({why}) after {} pins", .done.removed())]
pub struct Interrupted {
    pub done: Purged,
    pub why: &'static str,
}

/// Where [`SessionStore::move_all`] sends one session: an upstream id, or
/// none to leave it where it is.
pub type Place<'a> = &'a (dyn Fn(SessionId) -> Option<Arc<str>> + Send + Sync);

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

    /// Pin a new session of `tenant` to `upstream` unless it is already
    /// pinned; returns the pin in force (another claimant's, if it won).
    async fn claim(
        &self,
        id: SessionId,
        tenant: Option<TenantId>,
        upstream: Arc<str>,
    ) -> Arc<SessionRecord>;

    /// Move `id` (a session of `tenant`) to `to` if its pin still names
    /// `from` (or it has none); returns the pin in force.
    async fn repin(
        &self,
        id: SessionId,
        tenant: Option<TenantId>,
        from: &str,
        to: Arc<str>,
    ) -> Arc<SessionRecord>;

    /// Pin `id` (a session of `tenant`) to `upstream` unconditionally
    /// (admin), attaching `metadata` (a serialized JSON object) if given,
    /// else keeping what it had.
    async fn set(
        &self,
        id: SessionId,
        tenant: Option<TenantId>,
        upstream: Arc<str>,
        metadata: Option<String>,
    );

    /// Forget every pin `which` selects, on every edge that shares the
    /// table, in bounded batches.
    async fn purge(&self, which: &Selector) -> Result<Purged, Interrupted>;

    /// Move every pin to `from` where `place` says, each as a
    /// compare-and-set (a session moved meanwhile stays where it went), on
    /// every edge that shares the table, in bounded batches.
    async fn move_all(&self, from: &str, place: Place<'_>) -> Result<Purged, Interrupted>;

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
