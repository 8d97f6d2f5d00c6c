//! The edge-wide budgets that bound what requests may take of the process,
//! whatever their number: the memory of bodies read early, and the share
//! of answered attempts that may be retried.
//!
//! ## The body budgets
//!
//! Bodies read early for their keys hold, at once, at most
//! `limits.body_read_memory` bytes of memory and `limits.body_disk` bytes
//! of disk edge-wide (two [`BodyBudget`]s, counted at the declared
//! length); a share is given back when its [`BudgetHold`] drops.
//!
//! ## The retry budget
//!
//! The edge-wide retry budget (Envoy's `retry_budget`): retries of attempts
//! that a relay answered (an overload status, an error event, silence) may
//! be at most a share of the requests of the last ten seconds, or a floor.
//! When a whole fleet is overloaded, each request then costs at most about
//! `1 + share` relay attempts instead of `1 + max_retries`.
//!
//! Ten one-second slots of two counters each; a slot is cleared when a new
//! second reuses it. Lock-free: a request costs one atomic add.

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The bytes of bodies read early that the edge holds at once.
#[derive(Debug, Default)]
pub struct BodyBudget {
    held: AtomicUsize,
    freed: tokio::sync::Notify,
}

/// A share of the budget, given back when dropped.
#[derive(Debug)]
pub struct BudgetHold {
    budget: Arc<BodyBudget>,
    bytes: usize,
}

impl Drop for BudgetHold {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Ordering::AcqRel);
        self.budget.freed.notify_waiters();
    }
}

impl BodyBudget {
    /// The bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    fn try_take(self: &Arc<Self>, bytes: usize, limit: usize) -> Option<BudgetHold> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|total| *total <= limit)
            })
            .ok()?;
        Some(BudgetHold {
            budget: self.clone(),
            bytes,
        })
    }

    /// `bytes` of the budget (of `limit` in all), waiting up to `wait` for
    /// room; `None` if there is none.
    pub async fn take(
        self: &Arc<Self>,
        bytes: usize,
        limit: usize,
        wait: Duration,
    ) -> Option<BudgetHold> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(hold) = self.try_take(bytes, limit) {
                return Some(hold);
            }
            if bytes > limit || tokio::time::timeout_at(deadline, freed).await.is_err() {
                return None;
            }
        }
    }
}

const SLOTS: usize = 10;

#[derive(Default)]
struct Slot {
    /// The second (since some epoch) the counts belong to.
    second: AtomicU64,
    requests: AtomicU32,
    retries: AtomicU32,
}

#[derive(Default)]
pub struct RetryBudget {
    slots: [Slot; SLOTS],
}

impl RetryBudget {
    /// The slot of `second`, cleared first if it held an older second.
    fn slot(&self, second: u64) -> &Slot {
        let slot = &self.slots[(second % SLOTS as u64) as usize];
        let held = slot.second.load(Ordering::Relaxed);
        if held != second
            && slot
                .second
                .compare_exchange(held, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            slot.requests.store(0, Ordering::Relaxed);
            slot.retries.store(0, Ordering::Relaxed);
        }
        slot
    }

    /// Count one request (its first attempt).
    pub fn note_request(&self, now_ms: u64) {
        self.slot(now_ms / 1000)
            .requests
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Take one retry if the budget allows it: the retries of the last ten
    /// seconds stay below `share` of the requests, or below `floor`.
    pub fn try_retry(&self, now_ms: u64, share: f64, floor: u32) -> bool {
        let second = now_ms / 1000;
        let (mut requests, mut retries) = (0u64, 0u64);
        for slot in &self.slots {
            let s = slot.second.load(Ordering::Relaxed);
            if s + (SLOTS as u64) > second && s <= second {
                requests += u64::from(slot.requests.load(Ordering::Relaxed));
                retries += u64::from(slot.retries.load(Ordering::Relaxed));
            }
        }
        let allowed = (requests as f64 * share).max(f64::from(floor));
        if (retries as f64) < allowed {
            self.slot(second).retries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RetryBudget;

    #[test]
    fn retries_stay_within_the_share_or_the_floor() {
        let b = RetryBudget::default();
        let t = 1_000_000;
        // No traffic: the floor alone.
        assert!((0..3).all(|_| b.try_retry(t, 0.2, 3)));
        assert!(!b.try_retry(t, 0.2, 3));
        // 100 requests: 20% of them.
        for _ in 0..100 {
            b.note_request(t + 1000);
        }
        let granted = (0..50).filter(|_| b.try_retry(t + 1000, 0.2, 3)).count();
        assert_eq!(granted, 20 - 3, "20 in all, 3 taken before");
        // Ten seconds on, the window is empty again.
        assert!(b.try_retry(t + 12_000, 0.2, 1));
        assert!(!b.try_retry(t + 12_000, 0.2, 1));
    }

    #[test]
    fn a_zero_budget_refuses_every_retry() {
        let b = RetryBudget::default();
        for _ in 0..100 {
            b.note_request(5_000);
        }
        assert!(!b.try_retry(5_000, 0.0, 0));
    }
}
