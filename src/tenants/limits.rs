//! The per-tenant limits and their counters.
//!
//! - `max_inflight_per_session`: [`SessionSlots`] counts the requests of
//!   each (namespaced) session in flight on this edge. A request holds a
//!   [`SessionSlot`] from its admission to the end of its context; the slot
//!   is given back by its drop, so no path can leak it, and a session's
//!   entry is removed when its count reaches 0 (the map holds only sessions
//!   with work in flight).
//! - `max_new_sessions_per_hour`: counted per clock hour (a fixed window,
//!   [`window`]). With Redis the count is shared (one key per tenant and
//!   hour, see the store's `count_new_session`); without it, or while Redis
//!   cannot answer, [`LocalHourly`] counts on this edge: this limit never
//!   fails closed.

use super::TenantId;
use crate::affinity::SessionId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use crate::outcome::RejectReason;

/// A refused request: why, and when to try again (seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub reason: RejectReason,
    pub retry_after: u64,
}

/// The length of the new-session window.
pub const WINDOW_SECS: u64 = crate::affinity::store::NEW_SESSION_WINDOW_SECS;

/// The hour number of `unix_secs`, and the seconds left in it (at least 1).
pub fn window(unix_secs: u64) -> (u64, u64) {
    (
        unix_secs / WINDOW_SECS,
        WINDOW_SECS - unix_secs % WINDOW_SECS,
    )
}

/// How long a client refused for in-flight work waits: one second, about
/// a short request's length.
pub const INFLIGHT_RETRY_AFTER: u64 = 1;

const SHARDS: usize = 16;

/// Requests in flight per session, on this edge.
#[derive(Default)]
pub struct SessionSlots {
    shards: Arc<[Mutex<HashMap<SessionId, u32>>; SHARDS]>,
}

/// One request's place among its session's in-flight requests.
pub struct SessionSlot {
    shards: Arc<[Mutex<HashMap<SessionId, u32>>; SHARDS]>,
    id: SessionId,
}

impl std::fmt::Debug for SessionSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionSlot({})", self.id.to_hex())
    }
}

fn shard(id: SessionId) -> usize {
    (id.0 as usize) % SHARDS
}

impl SessionSlots {
    /// A slot for one more request of `id`, unless `limit` are in flight.
    pub fn try_take(&self, id: SessionId, limit: u32) -> Option<SessionSlot> {
        let mut map = self.shards[shard(id)].lock().ok()?;
        let n = map.entry(id).or_insert(0);
        if *n >= limit {
            if *n == 0 {
                map.remove(&id);
            }
            return None;
        }
        *n += 1;
        Some(SessionSlot {
            shards: self.shards.clone(),
            id,
        })
    }

    /// Requests of `id` in flight now.
    pub fn in_flight(&self, id: SessionId) -> u32 {
        self.shards[shard(id)]
            .lock()
            .map_or(0, |m| m.get(&id).copied().unwrap_or(0))
    }

    /// Sessions with a request in flight.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |m| m.len()))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        // A poisoned shard's map is still sound: counts are plain integers.
        let mut map = match self.shards[shard(self.id)].lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(n) = map.get_mut(&self.id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.id);
            }
        }
    }
}

/// The most tenants [`LocalHourly`] counts in one hour; past it, a new
/// tenant's sessions are admitted uncounted (never failing closed).
pub const LOCAL_HOURLY_CAPACITY: usize = 100_000;

/// New sessions per tenant in the current hour, on this edge.
pub struct LocalHourly {
    map: Mutex<HashMap<TenantId, (u64, u64)>>,
    capacity: usize,
}

impl Default for LocalHourly {
    fn default() -> Self {
        LocalHourly::with_capacity(LOCAL_HOURLY_CAPACITY)
    }
}

impl LocalHourly {
    pub fn with_capacity(capacity: usize) -> Self {
        LocalHourly {
            map: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// Count one new session of `tenant` in hour `hour`, unless `limit`
    /// were counted already; true if admitted.
    pub fn admit(&self, tenant: TenantId, hour: u64, limit: u64) -> bool {
        let Ok(mut map) = self.map.lock() else {
            return true;
        };
        if !map.contains_key(&tenant) && map.len() >= self.capacity {
            // Only this hour's counts matter.
            map.retain(|_, (h, _)| *h == hour);
            if map.len() >= self.capacity {
                return true;
            }
        }
        let entry = map.entry(tenant).or_insert((hour, 0));
        if entry.0 != hour {
            *entry = (hour, 0);
        }
        if entry.1 >= limit {
            return false;
        }
        entry.1 += 1;
        true
    }

    pub fn len(&self) -> usize {
        self.map.lock().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_holds_at_most_its_limit_and_the_map_empties() {
        let slots = SessionSlots::default();
        let (a, b) = (SessionId(1), SessionId(2));
        let first = slots.try_take(a, 2).expect("1 of 2");
        let second = slots.try_take(a, 2).expect("2 of 2");
        assert!(slots.try_take(a, 2).is_none(), "a third is refused");
        let other = slots.try_take(b, 2).expect("another session has its own");
        assert_eq!((slots.in_flight(a), slots.len()), (2, 2));
        drop(first);
        let third = slots.try_take(a, 2).expect("a slot came back");
        drop((second, third, other));
        assert_eq!(slots.len(), 0, "no entry is left at 0");
        assert!(slots.try_take(a, 0).is_none(), "a limit of 0 admits none");
        assert!(slots.is_empty(), "a refusal leaves no entry");
    }

    /// (case, unix seconds, hour, seconds left)
    #[test]
    fn the_window_is_the_clock_hour() {
        let cases = [
            ("the hour's start", 7200, 2, 3600),
            ("its middle", 7200 + 1800, 2, 1800),
            ("its last second", 7200 + 3599, 2, 1),
            ("the epoch", 0, 0, 3600),
        ];
        for (name, secs, hour, left) in cases {
            assert_eq!(window(secs), (hour, left), "{name}");
        }
    }

    /// Each step: (tenant, hour, admitted?) with a limit of 2 and room for
    /// 2 tenants.
    #[test]
    fn local_counts_per_tenant_per_hour_and_stay_bounded() {
        let local = LocalHourly::with_capacity(2);
        let (a, b, c) = (TenantId(1), TenantId(2), TenantId(3));
        let steps = [
            ("a 1 of 2", a, 5, true),
            ("a 2 of 2", a, 5, true),
            ("a over", a, 5, false),
            ("b has its own count", b, 5, true),
            ("full, this hour: c is admitted uncounted", c, 5, true),
            ("still uncounted", c, 5, true),
            ("the next hour: a starts over", a, 6, true),
            ("old hours pruned: c counted now", c, 6, true),
            ("c 2 of 2", c, 6, true),
            ("c over", c, 6, false),
        ];
        for (name, t, hour, want) in steps {
            assert_eq!(local.admit(t, hour, 2), want, "{name}");
            assert!(local.len() <= 2, "{name}: bounded");
        }
    }
}
