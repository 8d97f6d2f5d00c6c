//! Relay capacity (`upstreams[].max_inflight`): a cap of requests and
//! streams in flight per relay, with a fair queue in front of it, held
//! across the edges that share a Redis by leased grants.
//!
//! - [`queue`]: one relay's admission on this edge: its slots, a bounded
//!   queue fair across tenants, and [`queue::Slot`], given back by its drop.
//! - [`lease`]: the grant script and what a grant lets this edge admit.
//! - [`RelayCapacity`]: one capped relay on this edge: its gate, its cap
//!   and its lease, kept across config generations. The proxy's attempt
//!   takes a slot here and holds it until it drops (`proxy::attempt`); the
//!   lease service renews grants (`services::CapacitySync`).

pub mod lease;
pub mod queue;

use crate::config::OnRedisDown;
use crate::metrics::CapacityMetrics;
use lease::{Grant, Held, Limit};
use prometheus::{Histogram, IntCounter, IntGauge};
use queue::{Gate, Refused, Slot};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Wakes the lease service: a gate's grant is used up and work is queued.
/// One per process (a spurious wake only costs a look at each gate).
pub static SYNC_DUE: Notify = Notify::const_new();

/// One capped relay on this edge.
pub struct RelayCapacity {
    pub gate: Arc<Gate>,
    cap: AtomicU32,
    held: Mutex<Held>,
    /// Shared through Redis, and `on_redis_down` (set by `configure`).
    settings: Mutex<(bool, OnRedisDown)>,
    /// When the live grant lapses ([`crate::clock::now_ms`]); an admission
    /// at or past it sets the limit anew first, so that a lapsed grant is
    /// never used (Redis reaps it a little later).
    lapses_ms: AtomicU64,
    /// `on_redis_down: closed` and no live grant: refuse at once.
    refusing: AtomicBool,
    grant: IntGauge,
    wait: Histogram,
    rejections: [IntCounter; Refused::ALL.len()],
}

impl RelayCapacity {
    pub fn new(cap: u32, queue_max: usize, metrics: CapacityMetrics) -> Arc<RelayCapacity> {
        let gate = Gate::with_gauge(cap as usize, queue_max, Some(metrics.queue_length));
        metrics.grant.set(i64::from(cap));
        Arc::new(RelayCapacity {
            gate,
            cap: AtomicU32::new(cap),
            held: Mutex::new(Held::default()),
            settings: Mutex::new((false, OnRedisDown::Share)),
            lapses_ms: AtomicU64::new(u64::MAX),
            refusing: AtomicBool::new(false),
            grant: metrics.grant,
            wait: metrics.queue_wait,
            rejections: metrics.rejections,
        })
    }

    pub fn cap(&self) -> u32 {
        self.cap.load(Ordering::Relaxed)
    }

    /// A reloaded cap and queue bound; the limit follows at once.
    pub fn configure(&self, cap: u32, queue_max: usize, shared: bool, on_down: OnRedisDown) {
        self.cap.store(cap, Ordering::Relaxed);
        self.gate.set_max_queue(queue_max);
        *self.settings.lock().unwrap_or_else(|e| e.into_inner()) = (shared, on_down);
        self.refresh(crate::clock::now_ms());
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        // Each change is one assignment: a poisoned lock holds no torn value.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What this edge holds of the relay's lease.
    pub fn lease(&self) -> Held {
        *self.held()
    }

    /// Set the gate's limit from the cap and the lease.
    pub fn refresh(&self, now_ms: u64) {
        let (shared, on_down) = *self.settings.lock().unwrap_or_else(|e| e.into_inner());
        let held = self.lease();
        let lapses = match held.last {
            Some(g) if shared && now_ms < g.until_ms => g.until_ms,
            _ => u64::MAX,
        };
        self.lapses_ms.store(lapses, Ordering::Relaxed);
        match lease::limit(self.cap(), shared, &held, now_ms, on_down) {
            Limit::Slots(n) => {
                self.refusing.store(false, Ordering::Relaxed);
                self.gate.set_limit(n);
                self.grant.set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            Limit::Refuse => {
                self.refusing.store(true, Ordering::Relaxed);
                self.gate.set_limit(0);
                self.grant.set(0);
            }
        }
    }

    /// A sync's answer to asking for `want` at `sent_ms` (`None`: it
    /// failed), then the limit it gives.
    pub fn synced(&self, want: u32, sent_ms: u64, answer: Option<Grant>) {
        {
            let mut held = self.held();
            held.want_sent = want;
            held.sent_ms = sent_ms;
            match answer {
                Some(g) => {
                    // The script lists an edge that wants some, and only it.
                    held.listed = want > 0;
                    held.last = Some(g);
                    held.failing = false;
                }
                None => held.failing = true,
            }
        }
        self.refresh(crate::clock::now_ms());
    }

    /// The limit in force now.
    pub fn limit(&self) -> usize {
        self.gate.limit()
    }

    /// Work this edge has for the relay: (in flight, queued).
    pub fn work(&self) -> (usize, usize) {
        self.gate.counts()
    }

    /// A slot at once, if one is free and nobody waits.
    pub fn try_admit(&self) -> Option<Slot> {
        let now = crate::clock::now_ms();
        if now >= self.lapses_ms.load(Ordering::Relaxed) {
            self.refresh(now);
        }
        if self.refusing.load(Ordering::Relaxed) {
            return None;
        }
        let slot = self.gate.try_admit();
        if slot.is_some() {
            self.wait.observe(0.0);
        }
        slot
    }

    /// Admit a request of `tenant`, waiting up to `timeout`; refused at
    /// once when the queue is full, when the recent waits are longer than
    /// `fast_fail` (the 90th percentile), or when Redis is down and the
    /// policy is `closed`. Dropping the future leaves the queue.
    pub async fn admit(
        &self,
        tenant: u64,
        timeout: Duration,
        fast_fail: Duration,
    ) -> Result<Slot, Refused> {
        let admitted = self.admit_counted(tenant, timeout, fast_fail).await;
        if let Err(why) = admitted {
            self.rejections[why as usize].inc();
        }
        admitted
    }

    async fn admit_counted(
        &self,
        tenant: u64,
        timeout: Duration,
        fast_fail: Duration,
    ) -> Result<Slot, Refused> {
        if let Some(slot) = self.try_admit() {
            return Ok(slot);
        }
        if self.refusing.load(Ordering::Relaxed) {
            return Err(Refused::RedisDown);
        }
        if self.gate.recent_p90() > fast_fail {
            return Err(Refused::FastFail);
        }
        // The grant is used up and this one waits: renew it now.
        SYNC_DUE.notify_one();
        let started = tokio::time::Instant::now();
        let slot = self.gate.admit(tenant, started + timeout).await?;
        self.wait.observe(started.elapsed().as_secs_f64());
        Ok(slot)
    }

    /// Wait up to `timeout` for a slot, for a request that may go
    /// elsewhere (a pin's wait): nothing is refused or counted; `None` when
    /// no slot came (or the queue is full).
    pub async fn wait_for(&self, tenant: u64, timeout: Duration) -> Option<Slot> {
        if let Some(slot) = self.try_admit() {
            return Some(slot);
        }
        if self.refusing.load(Ordering::Relaxed) {
            return None;
        }
        SYNC_DUE.notify_one();
        let started = tokio::time::Instant::now();
        let slot = self.gate.admit(tenant, started + timeout).await.ok()?;
        self.wait.observe(started.elapsed().as_secs_f64());
        Some(slot)
    }

    /// Count a refusal made outside [`RelayCapacity::admit`].
    pub fn refused(&self, why: Refused) {
        self.rejections[why as usize].inc();
    }

    /// When a client refused now should try again, in whole seconds: the
    /// recent waits, at least one second.
    pub fn retry_after(&self) -> u64 {
        self.gate.recent_p90().as_secs().clamp(1, 60)
    }
}
