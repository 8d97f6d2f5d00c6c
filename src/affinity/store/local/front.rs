//! What a [`LocalStore`] adds as the cache in front of a shared table. A
//! pin read from the shared table is trusted only if no invalidation or
//! re-validation came while it was read (the ticket); a re-validation of
//! the whole cache makes every pin be asked again (the floor); and an entry
//! past `local_ttl` is kept, stale, for when the shared table cannot answer.

use super::LocalStore;
use crate::affinity::store::SessionRecord;
use crate::affinity::{SessionId, TenantId};
use crate::clock::unix_ms;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

impl LocalStore {
    /// A cache in front of a shared table: entries are dropped `refresh`
    /// after they were loaded, so a lost invalidation is stale that long at
    /// most. `ttl` is the shared table's TTL (for display).
    pub fn front_cache(max_entries: u64, ttl: Duration, refresh: Duration) -> Self {
        Self::build(max_entries, ttl, Some(refresh))
    }

    /// A front cache's `local_ttl`, from a reload.
    pub fn set_refresh(&self, refresh: Duration) {
        if !self.sliding {
            self.span.set(refresh);
        }
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

    /// Put a pin learnt from the shared table now.
    pub fn put(
        &self,
        id: SessionId,
        upstream: Arc<str>,
        tenant: Option<TenantId>,
        created_ms: u64,
    ) -> Arc<SessionRecord> {
        self.put_confirmed(id, upstream, tenant, created_ms, self.ticket())
    }

    /// Put a pin read from the shared table after taking `ticket`. The
    /// cached record is kept (with its counters and renewal state) if it
    /// names the same pin.
    pub fn put_confirmed(
        &self,
        id: SessionId,
        upstream: Arc<str>,
        tenant: Option<TenantId>,
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
                tenant,
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
}

#[cfg(test)]
mod tests {
    use super::super::tests::{block, up};
    use super::*;
    use crate::affinity::store::SessionStore;

    #[test]
    fn a_front_cache_trusts_a_pin_until_revalidation_and_keeps_it_stale() {
        let s = LocalStore::front_cache(100, Duration::from_secs(3600), Duration::from_secs(600));
        let (a, b) = (SessionId(1), SessionId(2));
        let ticket = s.ticket();
        let first = s.put_confirmed(a, up("x"), None, 5, ticket);
        assert!(
            s.lookup_local(a).is_some(),
            "confirmed: used without asking"
        );
        // Confirmed again with the same pin: the same record (counters,
        // renewal state) is kept.
        first.record(false);
        let again = s.put_confirmed(a, up("x"), None, 5, s.ticket());
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
        s.put_confirmed(b, up("y"), None, 6, before);
        assert!(
            s.lookup_local(b).is_none(),
            "read before a change: ask again"
        );
        assert!(s.stale(b).is_some());
        // So is a pin made here without the shared table.
        block(s.claim(SessionId(3), None, up("z")));
        assert!(s.lookup_local(SessionId(3)).is_none());
    }

    #[test]
    fn a_front_cache_asks_again_after_local_ttl() {
        let s = LocalStore::front_cache(100, Duration::from_secs(3600), Duration::from_millis(30));
        let id = SessionId(4);
        s.put(id, up("x"), None, 1);
        assert!(s.lookup_local(id).is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(s.lookup_local(id).is_none(), "older than local_ttl");
        assert!(s.stale(id).is_some());
    }
}
