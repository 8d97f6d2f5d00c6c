//! Pins changed in bulk in a [`LocalStore`]: those a purge selects dropped
//! at once, those of an ejected relay moved. Without Redis this is the
//! table; a front cache drops what the shared table's purges select.

use super::LocalStore;
use crate::affinity::store::{Place, Selector, SessionRecord};
use crate::affinity::SessionId;
use crate::clock::unix_ms;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

impl LocalStore {
    /// Drop every entry `which` selects; how many were live sessions.
    /// Reads under way may predate the purge: the ticket moves, so a front
    /// cache does not trust them.
    pub fn drop_matching(&self, which: &Selector) -> u64 {
        self.ticket.fetch_add(1, Ordering::AcqRel);
        let now = unix_ms();
        let dropped = AtomicU64::new(0);
        self.table.retain(|_, r| {
            if !which.matches(r) {
                return true;
            }
            self.counts.remove(&r.upstream);
            if !self.gone(r, now) {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
            false
        });
        dropped.into_inner()
    }

    /// Is `record` still the entry of `id`? (Not dropped or replaced since.)
    pub fn holds(&self, id: SessionId, record: &Arc<SessionRecord>) -> bool {
        self.table
            .peek(&id.0)
            .is_some_and(|r| Arc::ptr_eq(&r, record))
    }

    /// Move every live pin to `from` where `place` says, each only if it
    /// still names `from` when its turn comes; how many moved. The record
    /// keeps its tenant, age, counters and metadata.
    pub fn move_local(&self, from: &str, place: Place<'_>) -> u64 {
        let mut moved = 0;
        for (id, record) in self.records() {
            if &*record.upstream != from {
                continue;
            }
            let Some(to) = place(id) else { continue };
            let mut done = false;
            self.update(id.0, |current| match current {
                Some(r) if &*r.upstream == from => {
                    done = true;
                    Some(Arc::new(r.moved_to(to.clone())))
                }
                _ => None,
            });
            moved += u64::from(done);
        }
        moved
    }
}

impl SessionRecord {
    /// The same session pinned to `to`: its tenant, age, counters and
    /// metadata kept.
    fn moved_to(&self, to: Arc<str>) -> SessionRecord {
        let record = SessionRecord::new(
            to,
            self.tenant,
            self.created_ms,
            self.requests.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        );
        record.metadata.store(self.metadata.load_full());
        record
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{block, up};
    use super::*;
    use crate::affinity::store::SessionStore;
    use crate::affinity::TenantId;
    use std::time::Duration;

    /// A table of six sessions: on `a` or `b`, of tenant 1, 2 or none.
    fn table() -> LocalStore {
        let s = LocalStore::new(100, Duration::from_secs(3600));
        let pins = [
            ("a", Some(1)),
            ("a", Some(2)),
            ("a", None),
            ("b", Some(1)),
            ("b", Some(2)),
            ("b", None),
        ];
        for (i, (to, tenant)) in pins.into_iter().enumerate() {
            block(s.claim(SessionId(i as u128), tenant.map(TenantId), up(to)));
        }
        s
    }

    /// Each selector: the sessions it removes, by number; the rest stay,
    /// and the per-upstream counts follow.
    #[test]
    fn a_purge_drops_what_its_selector_names_and_nothing_else() {
        let cases: [(Selector, &[u128]); 5] = [
            (Selector::Upstream(up("a")), &[0, 1, 2]),
            (Selector::Upstream(up("zz")), &[]),
            (Selector::Tenant(TenantId(1)), &[0, 3]),
            (Selector::Tenant(TenantId(9)), &[]),
            (Selector::All, &[0, 1, 2, 3, 4, 5]),
        ];
        for (which, gone) in cases {
            let s = table();
            let purged = block(s.purge(&which)).expect("a local purge never fails");
            assert_eq!(purged.local, gone.len() as u64, "{which:?}");
            assert_eq!(purged.shared, None, "{which:?}: no shared table");
            assert_eq!(purged.removed(), gone.len() as u64, "{which:?}");
            for i in 0..6u128 {
                let kept = s.lookup_local(SessionId(i)).is_some();
                assert_eq!(kept, !gone.contains(&i), "{which:?}: session {i}");
            }
            let counted: u64 = s.counts().values().sum();
            assert_eq!(counted, 6 - gone.len() as u64, "{which:?}: the counts");
        }
    }

    #[test]
    fn a_move_takes_every_pin_of_one_upstream_where_it_is_placed() {
        let s = table();
        let one = s.lookup_local(SessionId(0)).expect("pinned");
        one.record(true);
        one.metadata
            .store(Some(Arc::new("{\"team\":\"red\"}".into())));
        // Session 1 has nowhere to go: it stays.
        let place = |id: SessionId| (id != SessionId(1)).then(|| up("c"));
        assert_eq!(s.move_local("a", &place), 2);
        let after = |i: u128| s.lookup_local(SessionId(i)).expect("pinned");
        assert_eq!(
            (0..6)
                .map(|i| after(i).upstream.to_string())
                .collect::<Vec<_>>(),
            ["c", "a", "c", "b", "b", "b"]
        );
        let moved = after(0);
        assert_eq!(moved.tenant, Some(TenantId(1)), "the tenant is kept");
        assert_eq!(
            moved.errors.load(Ordering::Relaxed),
            1,
            "so are its counters"
        );
        assert!(moved.metadata.load_full().is_some(), "and its metadata");
        assert_eq!(s.counts().get("c"), Some(&2));
        assert_eq!(
            s.move_local("a", &place),
            0,
            "what is left has nowhere to go"
        );
    }
}
