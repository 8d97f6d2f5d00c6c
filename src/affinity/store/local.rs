//! The in-process affinity table, [`LocalStore`]: a bounded `quick_cache`
//! (CLOCK-style eviction: a hit only sets a bit, with no per-read
//! bookkeeping; see `benches/RESULTS.md` for what moka cost here) with the
//! TTL checked on each use and swept now and then. Without Redis it is the
//! table; the Redis store keeps one in front of the shared table, with what
//! [`front`] adds for that use. [`purge`] changes pins in bulk.

mod front;
mod purge;

use super::{
    HandedSession, Interrupted, LiveDuration, LookupSource, Place, Purged, Selector, SessionInfo,
    SessionRecord, SessionStore,
};
use crate::affinity::{SessionId, TenantId};
use crate::clock::unix_ms;
use async_trait::async_trait;
use quick_cache::sync::{Cache, EntryAction, EntryResult};
use quick_cache::{Lifecycle, OptionsBuilder, UnitWeighter};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

    /// Every live session, as a graceful upgrade hands it to the next
    /// process (the in-process table).
    pub fn export(&self) -> Vec<HandedSession> {
        self.records()
            .into_iter()
            .map(|(id, r)| HandedSession {
                id: id.to_hex(),
                upstream: r.upstream.to_string(),
                tenant: r.tenant.map(TenantId::to_hex),
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
            let tenant = h.tenant.as_deref().and_then(TenantId::from_hex);
            let r = self.put(id, Arc::from(h.upstream.as_str()), tenant, h.created_ms);
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

    async fn claim(
        &self,
        id: SessionId,
        tenant: Option<TenantId>,
        upstream: Arc<str>,
    ) -> Arc<SessionRecord> {
        let fresh = || {
            Arc::new(SessionRecord::new(
                upstream.clone(),
                tenant,
                unix_ms(),
                0,
                0,
            ))
        };
        self.update(id.0, |current| match current {
            Some(_) => None,
            None => Some(fresh()),
        })
        .unwrap_or_else(fresh)
    }

    async fn repin(
        &self,
        id: SessionId,
        tenant: Option<TenantId>,
        from: &str,
        to: Arc<str>,
    ) -> Arc<SessionRecord> {
        let moved = |current: Option<&Arc<SessionRecord>>| {
            let (created, requests, errors) = current.map_or((unix_ms(), 0, 0), |r| {
                (
                    r.created_ms,
                    r.requests.load(Ordering::Relaxed),
                    r.errors.load(Ordering::Relaxed),
                )
            });
            let tenant = tenant.or_else(|| current.and_then(|r| r.tenant));
            Arc::new(SessionRecord::new(
                to.clone(),
                tenant,
                created,
                requests,
                errors,
            ))
        };
        self.update(id.0, |current| match current {
            Some(r) if &*r.upstream != from => None,
            _ => Some(moved(current)),
        })
        .unwrap_or_else(|| moved(None))
    }

    async fn set(
        &self,
        id: SessionId,
        tenant: Option<TenantId>,
        upstream: Arc<str>,
        metadata: Option<String>,
    ) {
        self.update(id.0, |previous| {
            let (created, requests, errors) = previous.map_or((unix_ms(), 0, 0), |r| {
                (
                    r.created_ms,
                    r.requests.load(Ordering::Relaxed),
                    r.errors.load(Ordering::Relaxed),
                )
            });
            let tenant = tenant.or_else(|| previous.and_then(|r| r.tenant));
            let record = SessionRecord::new(upstream, tenant, created, requests, errors);
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

    async fn purge(&self, which: &Selector) -> Result<Purged, Interrupted> {
        Ok(Purged {
            shared: None,
            local: self.drop_matching(which),
        })
    }

    async fn move_all(&self, from: &str, place: Place<'_>) -> Result<Purged, Interrupted> {
        Ok(Purged {
            shared: None,
            local: self.move_local(from, place),
        })
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
mod tests;
