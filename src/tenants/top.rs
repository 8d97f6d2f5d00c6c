//! The most active tenants of this edge, for `/api/stats` and the
//! dashboard: per tenant, its requests, its requests in flight, its
//! rejections (429s) and the sessions it created, since it entered the table.
//!
//! Bounded: at most [`CAPACITY`] tenants. A new tenant arriving at a full
//! table evicts the least recently seen tenant that has nothing in flight;
//! if every tenant has work in flight, the newcomer is not tracked (its
//! requests are served all the same). No per-tenant metric labels exist:
//! this table is the only per-tenant view, and it holds hashes only.

use super::TenantId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// The most tenants one edge tracks.
pub const CAPACITY: usize = 4096;

/// One tenant's counters.
#[derive(Debug, Default)]
pub struct Counters {
    requests: AtomicU64,
    inflight: AtomicI64,
    rejections: AtomicU64,
    sessions: AtomicU64,
    last_seen_ms: AtomicU64,
}

/// What a tenant's counters read now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub requests: u64,
    pub inflight: u64,
    pub rejections: u64,
    pub sessions_created: u64,
}

impl Counters {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            requests: self.requests.load(Relaxed),
            inflight: self.inflight.load(Relaxed).max(0) as u64,
            rejections: self.rejections.load(Relaxed),
            sessions_created: self.sessions.load(Relaxed),
        }
    }
}

/// One request of a tracked tenant, in flight until dropped.
#[derive(Debug)]
pub struct Active(Arc<Counters>);

impl Active {
    /// The request was refused (429).
    pub fn rejected(&self) {
        self.0.rejections.fetch_add(1, Relaxed);
    }

    /// The request created a session.
    pub fn session_created(&self) {
        self.0.sessions.fetch_add(1, Relaxed);
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Relaxed);
    }
}

/// The table.
pub struct TopTenants {
    map: Mutex<HashMap<TenantId, Arc<Counters>>>,
    capacity: usize,
}

impl Default for TopTenants {
    fn default() -> Self {
        TopTenants::with_capacity(CAPACITY)
    }
}

impl TopTenants {
    pub fn with_capacity(capacity: usize) -> Self {
        TopTenants {
            map: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// A request of `tenant` begins: counted, and in flight until the
    /// returned guard drops. `None`: the table is full of busy tenants.
    pub fn enter(&self, tenant: TenantId, now_ms: u64) -> Option<Active> {
        let counters = {
            let mut map = self.map.lock().ok()?;
            match map.get(&tenant) {
                Some(c) => c.clone(),
                None => {
                    if map.len() >= self.capacity && !evict_one(&mut map) {
                        return None;
                    }
                    map.entry(tenant).or_default().clone()
                }
            }
        };
        counters.requests.fetch_add(1, Relaxed);
        counters.inflight.fetch_add(1, Relaxed);
        counters.last_seen_ms.store(now_ms, Relaxed);
        Some(Active(counters))
    }

    /// Tenants tracked now.
    pub fn len(&self) -> usize {
        self.map.lock().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Every tracked tenant's counters, now.
    pub fn snapshot(&self) -> Vec<(TenantId, Snapshot)> {
        self.map.lock().map_or_else(
            |_| Vec::new(),
            |m| m.iter().map(|(t, c)| (*t, c.snapshot())).collect(),
        )
    }
}

/// Evict the least recently seen tenant with nothing in flight; false if
/// every one has work in flight.
fn evict_one(map: &mut HashMap<TenantId, Arc<Counters>>) -> bool {
    let victim = map
        .iter()
        .filter(|(_, c)| c.inflight.load(Relaxed) <= 0)
        .min_by_key(|(_, c)| c.last_seen_ms.load(Relaxed))
        .map(|(t, _)| *t);
    match victim {
        Some(t) => {
            map.remove(&t);
            true
        }
        None => false,
    }
}

/// The first `n` tenants by `measure`, highest first (ties by hash), leaving
/// out those at zero.
pub fn top_by(
    all: &[(TenantId, Snapshot)],
    n: usize,
    measure: impl Fn(&Snapshot) -> u64,
) -> Vec<(TenantId, Snapshot)> {
    let mut ranked: Vec<_> = all
        .iter()
        .filter(|(_, s)| measure(s) > 0)
        .copied()
        .collect();
    ranked.sort_by(|a, b| measure(&b.1).cmp(&measure(&a.1)).then(a.0.cmp(&b.0)));
    ranked.truncate(n);
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_in_flight_work_until_the_guard_drops() {
        let top = TopTenants::with_capacity(4);
        let a = top.enter(TenantId(1), 10).expect("tracked");
        let b = top.enter(TenantId(1), 11).expect("tracked");
        a.rejected();
        b.session_created();
        let snap = |top: &TopTenants| top.snapshot().into_iter().collect::<HashMap<_, _>>();
        assert_eq!(
            snap(&top)[&TenantId(1)],
            Snapshot {
                requests: 2,
                inflight: 2,
                rejections: 1,
                sessions_created: 1
            }
        );
        drop((a, b));
        assert_eq!(snap(&top)[&TenantId(1)].inflight, 0);
        assert_eq!(snap(&top)[&TenantId(1)].requests, 2);
    }

    /// (case, tenants entered as (id, time, kept in flight), the newcomer,
    /// tracked?, who is left)
    #[test]
    fn a_full_table_evicts_the_least_recently_seen_idle_tenant() {
        type Case = (&'static str, Vec<(u64, u64, bool)>, bool, Vec<u64>);
        let cases: Vec<Case> = vec![
            ("room: kept", vec![(1, 10, false)], true, vec![1, 9]),
            (
                "full: the oldest idle goes",
                vec![(1, 30, false), (2, 10, false), (3, 20, false)],
                true,
                vec![1, 3, 9],
            ),
            (
                "full: a busy one stays even if older",
                vec![(1, 30, false), (2, 10, true), (3, 20, false)],
                true,
                vec![1, 2, 9],
            ),
            (
                "full of busy tenants: the newcomer is not tracked",
                vec![(1, 30, true), (2, 10, true), (3, 20, true)],
                false,
                vec![1, 2, 3],
            ),
        ];
        for (name, entered, tracked, left) in cases {
            let top = TopTenants::with_capacity(3);
            let mut held = Vec::new();
            for (id, at, busy) in entered {
                let g = top.enter(TenantId(id), at).expect("room");
                if busy {
                    held.push(g);
                }
            }
            let newcomer = top.enter(TenantId(9), 100);
            assert_eq!(newcomer.is_some(), tracked, "{name}: tracked");
            let mut ids: Vec<u64> = top.snapshot().iter().map(|(t, _)| t.0).collect();
            ids.sort();
            assert_eq!(ids, left, "{name}: left");
            assert!(top.len() <= top.capacity(), "{name}: bounded");
        }
    }

    #[test]
    fn rankings_are_highest_first_without_zeros() {
        let s = |requests, rejections| Snapshot {
            requests,
            rejections,
            ..Snapshot::default()
        };
        let all = vec![
            (TenantId(1), s(5, 0)),
            (TenantId(2), s(9, 1)),
            (TenantId(3), s(5, 3)),
            (TenantId(4), s(1, 0)),
        ];
        let ids = |v: Vec<(TenantId, Snapshot)>| v.iter().map(|(t, _)| t.0).collect::<Vec<_>>();
        assert_eq!(ids(top_by(&all, 3, |s| s.requests)), vec![2, 1, 3]);
        assert_eq!(ids(top_by(&all, 10, |s| s.rejections)), vec![3, 2]);
        assert_eq!(ids(top_by(&all, 10, |s| s.inflight)), Vec::<u64>::new());
    }
}
