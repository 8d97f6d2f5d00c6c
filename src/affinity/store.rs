//! The affinity table: which upstream each session is pinned to.
//!
//! [`SessionStore`] is the interface the proxy and the admin API use. The
//! hot path calls only [`SessionStore::lookup_local`], which never does I/O
//! and never allocates; the async calls run for a session's first request, a
//! failover re-pin, or the admin API. [`LocalStore`] keeps the table in this
//! process: a bounded `quick_cache` (CLOCK-style eviction: a hit only sets a
//! bit, with no per-read bookkeeping; see `benches/RESULTS.md` for what moka
//! cost here) with the TTL checked on each use and swept now and then. The
//! Redis store puts one in front of the shared table.

use super::SessionId;
use crate::clock::unix_ms;
use async_trait::async_trait;
use quick_cache::sync::{Cache, EntryAction, EntryResult};
use quick_cache::{Lifecycle, OptionsBuilder, UnitWeighter};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

/// A session as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
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

    /// Pin `id` to `upstream` unconditionally (admin).
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

/// Sessions per upstream, kept in step with inserts and removals.
#[derive(Default)]
struct Counts(Mutex<HashMap<Arc<str>, u64>>);

impl Counts {
    fn add(&self, upstream: &Arc<str>) {
        if let Ok(mut m) = self.0.lock() {
            *m.entry(upstream.clone()).or_default() += 1;
        }
    }

    fn remove(&self, upstream: &Arc<str>) {
        if let Ok(mut m) = self.0.lock() {
            if let Some(n) = m.get_mut(upstream) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(upstream);
                }
            }
        }
    }
}

/// Keeps the per-upstream counts right when the cache evicts for room.
#[derive(Clone)]
struct Evictions(Arc<Counts>);

impl Lifecycle<u128, Arc<SessionRecord>> for Evictions {
    type RequestState = ();

    fn begin_request(&self) {}

    fn on_evict(&self, _: &mut (), _: u128, record: Arc<SessionRecord>) {
        self.0.remove(&record.upstream);
    }
}

type Table =
    Cache<u128, Arc<SessionRecord>, UnitWeighter, quick_cache::DefaultHashBuilder, Evictions>;

/// The in-process affinity table: bounded (CLOCK eviction), with a TTL
/// that is either sliding (the session TTL) or counted from loading (a
/// front cache's `local_ttl`). An expired entry is never returned; sweeps
/// remove them for the counts.
pub struct LocalStore {
    table: Table,
    counts: Arc<Counts>,
    /// The session TTL (for a front cache: the shared table's, for display).
    ttl: LiveDuration,
    /// How long entries live: `ttl`, or a front cache's `local_ttl`.
    span: LiveDuration,
    /// Entries expire `span` after their last use (the in-process table),
    /// else `span` after they were loaded.
    sliding: bool,
    /// When expired entries were last swept out.
    swept_ms: AtomicU64,
    /// A front cache's ticket: bumped by every invalidation and every
    /// re-validation of the whole cache. A read from the shared table takes
    /// the ticket before it asks; if the ticket moved meanwhile, what it
    /// read may predate a change, and is kept unconfirmed.
    ticket: AtomicU64,
    /// Pins confirmed at a ticket below this are asked again before use
    /// (set by [`LocalStore::revalidate_all`]).
    floor: AtomicU64,
    /// Observes each session's life when it ends (the in-process table).
    durations: std::sync::OnceLock<prometheus::Histogram>,
}

impl LocalStore {
    /// The in-process table: entries live `ttl` after their last use.
    pub fn new(max_sessions: u64, ttl: Duration) -> Self {
        Self::build(max_sessions, ttl, None)
    }

    /// A cache in front of a shared table: entries are dropped `refresh`
    /// after they were loaded, so a lost invalidation is stale that long at
    /// most. `ttl` is the shared table's TTL (for display).
    pub fn front_cache(max_entries: u64, ttl: Duration, refresh: Duration) -> Self {
        Self::build(max_entries, ttl, Some(refresh))
    }

    fn build(max_sessions: u64, ttl: Duration, refresh: Option<Duration>) -> Self {
        let counts = Arc::new(Counts::default());
        let capacity = max_sessions.max(1);
        let options = OptionsBuilder::new()
            .estimated_items_capacity(capacity.min(1 << 20) as usize)
            .weight_capacity(capacity)
            .build();
        let table = match options {
            Ok(options) => Cache::with_options(
                options,
                UnitWeighter,
                quick_cache::DefaultHashBuilder::default(),
                Evictions(counts.clone()),
            ),
            // Only reachable with inconsistent options; the plain form.
            Err(_) => Cache::with(
                capacity as usize,
                capacity,
                UnitWeighter,
                quick_cache::DefaultHashBuilder::default(),
                Evictions(counts.clone()),
            ),
        };
        let ttl = LiveDuration::new(ttl);
        LocalStore {
            table,
            counts,
            span: refresh.map_or_else(|| ttl.clone(), LiveDuration::new),
            ttl,
            sliding: refresh.is_none(),
            swept_ms: AtomicU64::new(unix_ms()),
            ticket: AtomicU64::new(1),
            floor: AtomicU64::new(1),
            durations: std::sync::OnceLock::new(),
        }
    }

    /// Observe in `histogram` the life of every session that expires here
    /// (`relay_edge_session_duration_seconds`; the in-process table only:
    /// a front cache's entries end with their `local_ttl`, not the session,
    /// and Redis's sessions are observed by the sweep that removes them).
    pub fn observe_durations(&self, histogram: prometheus::Histogram) {
        if self.sliding {
            let _ = self.durations.set(histogram);
        }
    }

    /// A session's record leaves the table because it expired.
    fn ended(&self, r: &SessionRecord) {
        if let Some(h) = self.durations.get() {
            let life = r.last_seen_ms().saturating_sub(r.created_ms);
            h.observe(life as f64 / 1000.0);
        }
    }

    /// The TTL a reload set. Each session's next use applies it; with a
    /// shorter TTL, a session idle longer than it is gone at that use. (For
    /// a front cache: the shared table's TTL, for display.)
    pub fn set_ttl(&self, ttl: Duration) {
        self.ttl.set(ttl);
    }

    /// A front cache's `local_ttl`, from a reload.
    pub fn set_refresh(&self, refresh: Duration) {
        if !self.sliding {
            self.span.set(refresh);
        }
    }

    /// Idle longer than the session TTL: the session is over.
    fn gone(&self, r: &SessionRecord, now: u64) -> bool {
        now.saturating_sub(r.last_seen_ms.load(Ordering::Relaxed))
            > self.ttl.get().as_millis() as u64
    }

    /// Not to be used without asking again: gone, or (in a front cache)
    /// loaded longer than `local_ttl` ago. A front cache keeps such an
    /// entry, stale, until the session is gone: it is what this edge knew
    /// when the shared table cannot answer.
    fn expired(&self, r: &SessionRecord, now: u64) -> bool {
        let since = if self.sliding {
            r.last_seen_ms.load(Ordering::Relaxed)
        } else {
            if r.confirmed_at.load(Ordering::Relaxed) < self.floor.load(Ordering::Relaxed) {
                return true;
            }
            r.confirmed_ms.load(Ordering::Relaxed)
        };
        now.saturating_sub(since) > self.span.get().as_millis() as u64
    }

    /// The ticket to take before reading a pin from the shared table, and
    /// to give [`LocalStore::put_confirmed`] with what was read.
    pub fn ticket(&self) -> u64 {
        self.ticket.load(Ordering::Acquire)
    }

    /// Every cached pin must be confirmed by the shared table again before
    /// it is used (invalidations may have been missed: a reconnect, a
    /// resubscribe). O(1): the pins stay, as stale ones, for an outage and
    /// for writing back.
    pub fn revalidate_all(&self) {
        let next = self.ticket.fetch_add(1, Ordering::AcqRel) + 1;
        self.floor.store(next, Ordering::Release);
    }

    /// Confirm `record` as read at `ticket`, unless an invalidation or a
    /// re-validation came meanwhile (then it stays as it was).
    pub fn confirm(&self, record: &SessionRecord, ticket: u64) {
        if self.ticket() == ticket {
            record.confirm(ticket);
        }
    }

    /// Remove `record` from `id` unless another has replaced it meanwhile.
    fn remove_exact(&self, id: u128, record: &Arc<SessionRecord>) {
        if let Some((_, r)) = self.table.remove_if(&id, |v| Arc::ptr_eq(v, record)) {
            self.counts.remove(&r.upstream);
        }
    }

    /// Remove expired entries, at most every `span / 8` (and 30 s), so
    /// that counts and lengths drop as sessions expire.
    fn sweep_if_due(&self) {
        let now = unix_ms();
        let every = (self.span.get().as_millis() as u64 / 8).clamp(1, 30_000);
        let last = self.swept_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < every
            || self
                .swept_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        self.table.retain(|_, r| {
            let keep = !self.gone(r, now) && (!self.sliding || !self.expired(r, now));
            if !keep {
                self.counts.remove(&r.upstream);
                self.ended(r);
            }
            keep
        });
    }

    /// Decide the entry of `id` atomically: `decide` sees the live record
    /// (none if absent or expired) and returns a record to store, or none to
    /// keep what is there. Returns the record in force, if any.
    fn update(
        &self,
        id: u128,
        decide: impl FnOnce(Option<&Arc<SessionRecord>>) -> Option<Arc<SessionRecord>>,
    ) -> Option<Arc<SessionRecord>> {
        let now = unix_ms();
        let mut decide = Some(decide);
        let mut replaced = None;
        let result = self.table.entry(&id, None, |_, current| {
            let live = (!self.expired(current, now)).then_some(&*current);
            match decide.take().and_then(|d| d(live)) {
                Some(new) => {
                    replaced = Some(std::mem::replace(current, new.clone()));
                    EntryAction::Retain(new)
                }
                None => EntryAction::Retain(current.clone()),
            }
        });
        if let Some(old) = &replaced {
            self.counts.remove(&old.upstream);
            if self.expired(old, now) {
                self.ended(old);
            }
        }
        match result {
            EntryResult::Retained(r) => {
                if replaced.is_some() {
                    self.counts.add(&r.upstream);
                }
                Some(r)
            }
            EntryResult::Vacant(guard) => {
                let new = decide.take().and_then(|d| d(None))?;
                if guard.insert(new.clone()).is_ok() {
                    self.counts.add(&new.upstream);
                }
                Some(new)
            }
            EntryResult::Removed(_, r) | EntryResult::Replaced(_, r) => {
                self.counts.remove(&r.upstream);
                None
            }
            EntryResult::Timeout => None,
        }
    }

    /// Put a pin learnt from the shared table now.
    pub fn put(&self, id: SessionId, upstream: Arc<str>, created_ms: u64) -> Arc<SessionRecord> {
        self.put_confirmed(id, upstream, created_ms, self.ticket())
    }

    /// Put a pin read from the shared table after taking `ticket`. The
    /// cached record is kept (with its counters and renewal state) if it
    /// names the same pin.
    pub fn put_confirmed(
        &self,
        id: SessionId,
        upstream: Arc<str>,
        created_ms: u64,
        ticket: u64,
    ) -> Arc<SessionRecord> {
        if let Some(r) = self.table.get(&id.0) {
            if r.upstream == upstream && r.created_ms == created_ms && !self.gone(&r, unix_ms()) {
                self.confirm(&r, ticket);
                return r;
            }
        }
        let fresh = |prior: Option<&Arc<SessionRecord>>| {
            let (requests, errors) = prior.map_or((0, 0), |r| {
                (
                    r.requests.load(Ordering::Relaxed),
                    r.errors.load(Ordering::Relaxed),
                )
            });
            Arc::new(SessionRecord::new(
                upstream.clone(),
                created_ms,
                requests,
                errors,
            ))
        };
        let record = self
            .update(id.0, |prior| Some(fresh(prior)))
            .unwrap_or_else(|| fresh(None));
        self.confirm(&record, ticket);
        record
    }

    /// Drop a cached pin (it changed elsewhere). Reads under way may
    /// predate the change: the ticket moves, so they are not trusted.
    pub fn invalidate(&self, id: SessionId) {
        self.ticket.fetch_add(1, Ordering::AcqRel);
        if let Some((_, r)) = self.table.remove(&id.0) {
            self.counts.remove(&r.upstream);
        }
    }

    /// A front cache's entry of `id` even if stale, unless the session is
    /// gone: for when the shared table cannot answer.
    pub fn stale(&self, id: SessionId) -> Option<Arc<SessionRecord>> {
        let r = self.table.get(&id.0)?;
        let now = unix_ms();
        if self.gone(&r, now) {
            return None;
        }
        r.last_seen_ms.store(now, Ordering::Relaxed);
        Some(r)
    }

    /// Every live session, as a graceful upgrade hands it to the next
    /// process (the in-process table).
    pub fn export(&self) -> Vec<HandedSession> {
        self.records()
            .into_iter()
            .map(|(id, r)| HandedSession {
                id: id.to_hex(),
                upstream: r.upstream.to_string(),
                created_ms: r.created_ms,
                last_seen_ms: r.last_seen_ms(),
                requests: r.requests.load(Ordering::Relaxed),
                errors: r.errors.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Take over sessions a previous process handed over, keeping their
    /// ages; sessions gone since, or unreadable, are skipped. How many.
    pub fn import(&self, sessions: Vec<HandedSession>) -> usize {
        let now = unix_ms();
        let ttl = self.ttl.get().as_millis() as u64;
        let mut taken = 0;
        for h in sessions {
            let Some(id) = SessionId::from_hex(&h.id) else {
                continue;
            };
            if now.saturating_sub(h.last_seen_ms) > ttl {
                continue;
            }
            let r = self.put(id, Arc::from(h.upstream.as_str()), h.created_ms);
            r.last_seen_ms.store(h.last_seen_ms, Ordering::Relaxed);
            r.requests.store(h.requests, Ordering::Relaxed);
            r.errors.store(h.errors, Ordering::Relaxed);
            taken += 1;
        }
        taken
    }

    /// Every cached session that is not gone (a front cache's stale ones too).
    pub fn records(&self) -> Vec<(SessionId, Arc<SessionRecord>)> {
        let now = unix_ms();
        self.table
            .iter()
            .filter(|(_, v)| !self.gone(v, now) && (!self.sliding || !self.expired(v, now)))
            .map(|(k, v)| (SessionId(k), v))
            .collect()
    }

    fn info(&self, id: u128, r: &SessionRecord) -> SessionInfo {
        let last = r.last_seen_ms.load(Ordering::Relaxed);
        let idle = Duration::from_millis(unix_ms().saturating_sub(last));
        SessionInfo {
            id: SessionId(id).to_hex(),
            upstream: r.upstream.to_string(),
            created_unix_ms: r.created_ms,
            last_seen_unix_ms: last,
            requests: r.requests.load(Ordering::Relaxed),
            errors: r.errors.load(Ordering::Relaxed),
            ttl_left_seconds: self.ttl.get().saturating_sub(idle).as_secs(),
            metadata: r
                .metadata
                .load_full()
                .and_then(|m| serde_json::from_str(&m).ok()),
        }
    }
}

#[async_trait]
impl SessionStore for LocalStore {
    fn lookup_local(&self, id: SessionId) -> Option<Arc<SessionRecord>> {
        let r = self.table.get(&id.0)?;
        let now = unix_ms();
        if self.gone(&r, now) || (self.sliding && self.expired(&r, now)) {
            self.remove_exact(id.0, &r);
            return None;
        }
        if self.expired(&r, now) {
            return None;
        }
        r.last_seen_ms.store(now, Ordering::Relaxed);
        Some(r)
    }

    fn apply_ttl(&self, ttl: Duration) {
        self.set_ttl(ttl);
    }

    async fn lookup(&self, id: SessionId) -> Option<(Arc<SessionRecord>, LookupSource)> {
        self.lookup_local(id).map(|r| (r, LookupSource::Local))
    }

    async fn claim(&self, id: SessionId, upstream: Arc<str>) -> Arc<SessionRecord> {
        let fresh = || Arc::new(SessionRecord::new(upstream.clone(), unix_ms(), 0, 0));
        self.update(id.0, |current| match current {
            Some(_) => None,
            None => Some(fresh()),
        })
        .unwrap_or_else(fresh)
    }

    async fn repin(&self, id: SessionId, from: &str, to: Arc<str>) -> Arc<SessionRecord> {
        let moved = |current: Option<&Arc<SessionRecord>>| {
            let (created, requests, errors) = current.map_or((unix_ms(), 0, 0), |r| {
                (
                    r.created_ms,
                    r.requests.load(Ordering::Relaxed),
                    r.errors.load(Ordering::Relaxed),
                )
            });
            Arc::new(SessionRecord::new(to.clone(), created, requests, errors))
        };
        self.update(id.0, |current| match current {
            Some(r) if &*r.upstream != from => None,
            _ => Some(moved(current)),
        })
        .unwrap_or_else(|| moved(None))
    }

    async fn set(&self, id: SessionId, upstream: Arc<str>, metadata: Option<String>) {
        self.update(id.0, |previous| {
            let (created, requests, errors) = previous.map_or((unix_ms(), 0, 0), |r| {
                (
                    r.created_ms,
                    r.requests.load(Ordering::Relaxed),
                    r.errors.load(Ordering::Relaxed),
                )
            });
            let record = SessionRecord::new(upstream, created, requests, errors);
            let metadata = metadata
                .or_else(|| previous.and_then(|r| r.metadata.load_full().map(|m| (*m).clone())));
            record.metadata.store(metadata.map(Arc::new));
            Some(Arc::new(record))
        });
    }

    async fn forget(&self, id: SessionId) -> bool {
        match self.table.remove(&id.0) {
            Some((_, r)) => {
                self.counts.remove(&r.upstream);
                !self.expired(&r, unix_ms())
            }
            None => false,
        }
    }

    async fn get(&self, id: SessionId) -> Option<SessionInfo> {
        self.table
            .peek(&id.0)
            .filter(|r| !self.expired(r, unix_ms()))
            .map(|r| self.info(id.0, &r))
    }

    async fn list(&self, upstream: Option<&str>, limit: usize) -> Vec<SessionInfo> {
        let now = unix_ms();
        self.table
            .iter()
            .filter(|(_, r)| !self.expired(r, now) && upstream.is_none_or(|u| &*r.upstream == u))
            .take(limit)
            .map(|(k, r)| self.info(k, &r))
            .collect()
    }

    fn counts(&self) -> HashMap<Arc<str>, u64> {
        self.sweep_if_due();
        self.counts.0.lock().map(|m| m.clone()).unwrap_or_default()
    }

    fn len(&self) -> u64 {
        self.sweep_if_due();
        self.table.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn claim_keeps_the_first_pin_and_counts_per_upstream() {
        let s = LocalStore::new(100, Duration::from_secs(60));
        let id = SessionId(1);
        assert!(s.lookup_local(id).is_none());
        assert_eq!(&*block(s.claim(id, up("a"))).upstream, "a");
        assert_eq!(&*block(s.claim(id, up("b"))).upstream, "a");
        assert_eq!(s.counts().get("a"), Some(&1));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn repin_is_compare_and_set() {
        let s = LocalStore::new(100, Duration::from_secs(60));
        let id = SessionId(2);
        block(s.claim(id, up("a")));
        s.lookup_local(id).expect("pinned").record(true);
        assert_eq!(&*block(s.repin(id, "zzz", up("b"))).upstream, "a");
        assert_eq!(&*block(s.repin(id, "a", up("b"))).upstream, "b");
        let info = block(s.get(id)).expect("info");
        assert_eq!(
            (info.upstream.as_str(), info.requests, info.errors),
            ("b", 1, 1)
        );
        let counts = s.counts();
        assert_eq!((counts.get("a"), counts.get("b")), (None, Some(&1)));
    }

    #[test]
    fn bounded_with_lru_eviction_and_forget() {
        let s = LocalStore::new(10, Duration::from_secs(60));
        for i in 0..100u128 {
            block(s.claim(SessionId(i), up("a")));
        }
        assert!(s.len() <= 10, "len {}", s.len());
        assert_eq!(s.counts().get("a").copied().unwrap_or(0), s.len());
        let last = SessionId(99);
        assert!(block(s.forget(last)));
        assert!(block(s.get(last)).is_none());
    }

    #[test]
    fn an_exported_table_is_imported_whole_but_for_gone_sessions() {
        let old = LocalStore::new(100, Duration::from_secs(3600));
        old.put(SessionId(1), Arc::from("a"), unix_ms() - 5_000);
        old.put(SessionId(2), Arc::from("b"), unix_ms());
        let mut handed = old.export();
        handed.push(HandedSession {
            id: SessionId(3).to_hex(),
            upstream: "a".into(),
            created_ms: 0,
            last_seen_ms: unix_ms() - 7_200_000,
            requests: 1,
            errors: 0,
        });
        handed.push(HandedSession {
            id: "not hex".into(),
            ..handed[0].clone()
        });
        let new = LocalStore::new(100, Duration::from_secs(3600));
        assert_eq!(
            new.import(handed),
            2,
            "the gone and the unreadable are skipped"
        );
        let one = new.lookup_local(SessionId(1)).expect("taken over");
        assert_eq!((&*one.upstream, one.created_ms > 0), ("a", true));
        assert_eq!(new.counts().get("b").copied(), Some(1));
        assert!(new.lookup_local(SessionId(3)).is_none());
    }

    #[test]
    fn a_front_cache_trusts_a_pin_until_revalidation_and_keeps_it_stale() {
        let s = LocalStore::front_cache(100, Duration::from_secs(3600), Duration::from_secs(600));
        let (a, b) = (SessionId(1), SessionId(2));
        let ticket = s.ticket();
        let first = s.put_confirmed(a, up("x"), 5, ticket);
        assert!(
            s.lookup_local(a).is_some(),
            "confirmed: used without asking"
        );
        // Confirmed again with the same pin: the same record (counters,
        // renewal state) is kept.
        first.record(false);
        let again = s.put_confirmed(a, up("x"), 5, s.ticket());
        assert!(Arc::ptr_eq(&first, &again));
        // A reconnect: every pin is asked again, but kept for an outage.
        s.revalidate_all();
        assert!(
            s.lookup_local(a).is_none(),
            "not trusted after a re-validation"
        );
        assert_eq!(s.stale(a).map(|r| r.upstream.clone()), Some(up("x")));
        assert_eq!(s.records().len(), 1, "kept for writing back");
        s.confirm(&first, s.ticket());
        assert!(s.lookup_local(a).is_some(), "confirmed again");
        // A read that an invalidation overtook is kept, unconfirmed.
        let before = s.ticket();
        s.invalidate(b);
        s.put_confirmed(b, up("y"), 6, before);
        assert!(
            s.lookup_local(b).is_none(),
            "read before a change: ask again"
        );
        assert!(s.stale(b).is_some());
        // So is a pin made here without the shared table.
        block(s.claim(SessionId(3), up("z")));
        assert!(s.lookup_local(SessionId(3)).is_none());
    }

    #[test]
    fn a_front_cache_asks_again_after_local_ttl() {
        let s = LocalStore::front_cache(100, Duration::from_secs(3600), Duration::from_millis(30));
        let id = SessionId(4);
        s.put(id, up("x"), 1);
        assert!(s.lookup_local(id).is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(s.lookup_local(id).is_none(), "older than local_ttl");
        assert!(s.stale(id).is_some());
    }

    #[test]
    fn sliding_ttl_expires_idle_sessions() {
        let s = LocalStore::new(10, Duration::from_millis(200));
        let id = SessionId(7);
        block(s.claim(id, up("a")));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        // Gone at once for lookups; from the counts once a sweep has run.
        while block(s.get(id)).is_some() || s.counts().contains_key("a") {
            assert!(
                std::time::Instant::now() < deadline,
                "session never expired"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_shortened_ttl_applies_at_the_next_use() {
        let s = LocalStore::new(10, Duration::from_secs(3600));
        let id = SessionId(8);
        block(s.claim(id, up("a")));
        std::thread::sleep(Duration::from_millis(30));
        assert!(s.lookup_local(id).is_some(), "used within the TTL");
        s.set_ttl(Duration::from_millis(10));
        std::thread::sleep(Duration::from_millis(30));
        assert!(s.lookup_local(id).is_none(), "idle past the new TTL");
        assert_eq!(s.counts().get("a"), None);
        s.set_ttl(Duration::from_secs(3600));
        block(s.claim(id, up("b")));
        let left = block(s.get(id)).map(|i| i.ttl_left_seconds);
        assert!(matches!(left, Some(3599..=3600)), "ttl left {left:?}");
    }
}
