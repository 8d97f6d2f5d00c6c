//! The in-process affinity table, [`LocalStore`]: a bounded `quick_cache`
//! (CLOCK-style eviction: a hit only sets a bit, with no per-read
//! bookkeeping; see `benches/RESULTS.md` for what moka cost here) with the
//! TTL checked on each use and swept now and then. Without Redis it is the
//! table; the Redis store keeps one in front of the shared table, with what
//! [`front`] adds for that use.

mod front;

use super::{HandedSession, LiveDuration, LookupSource, SessionInfo, SessionRecord, SessionStore};
use crate::affinity::SessionId;
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

    pub(super) fn up(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    pub(super) fn block<F: std::future::Future>(f: F) -> F::Output {
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
