//! The upstream relays: their runtime state and how one is chosen.
//!
//! - [`Upstream`] is one relay: its spec, its pooled-connection peer
//!   template, active health, passive ejection, drain flag and counters.
//! - [`UpstreamSet`] is the whole fleet of one config generation, indexed by
//!   id, with the consistent-hash ring.
//! - [`select`] places new sessions; [`health`] is one active check;
//!   [`ejection`] is passive health; [`peer`] builds the `HttpPeer`.

pub mod ejection;
pub mod health;
pub mod peer;
pub mod select;
pub mod tunnel;

use crate::capacity::RelayCapacity;
use crate::clock;
use crate::config::{HealthSpec, PassiveSpec, Timeouts, UpstreamSpec};
use crate::metrics::{Metrics, UpstreamMetrics};
use crate::outcome::{AffinityOutcome, RelayFailure, RepinReason};
use ejection::{Ejection, Verdict};
use health::{Check, CheckConnectors, HealthState};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_load_balancing::health_check::HealthCheck;
use pingora_load_balancing::Backend;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

/// Counters of one upstream, updated on the request path with relaxed atomics.
#[derive(Default)]
pub struct UpstreamStats {
    pub inflight: AtomicI64,
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    /// Connections newly opened (not reused from the pool).
    pub connects: AtomicU64,
    pub connect_micros: AtomicU64,
    /// Requests that went over a pooled connection.
    pub reused: AtomicU64,
    /// Keyed requests it served, and those of them it served as the
    /// session's own upstream: its affinity hit rate.
    pub keyed: AtomicU64,
    pub affinity_hits: AtomicU64,
}

pub struct Upstream {
    pub id: Arc<str>,
    pub spec: UpstreamSpec,
    peer: HttpPeer,
    pub backend: Backend,
    pub checker: Check,
    pub health: HealthState,
    pub ejection: Ejection,
    draining: AtomicBool,
    pub stats: UpstreamStats,
    pub metrics: UpstreamMetrics,
    /// Its cap, gate and lease, when it is capped (`max_inflight`); kept
    /// across generations while it stays capped.
    pub capacity: Option<Arc<RelayCapacity>>,
}

impl Upstream {
    pub fn new(
        spec: UpstreamSpec,
        timeouts: &Timeouts,
        health: &HealthSpec,
        checks: &Arc<CheckConnectors>,
        metrics: &Metrics,
        queue_max: usize,
    ) -> Upstream {
        let id: Arc<str> = Arc::from(spec.id.as_str());
        let m = metrics.for_upstream(&spec.id);
        m.healthy.set(1);
        let capacity = spec
            .max_inflight
            .map(|cap| RelayCapacity::new(cap, queue_max, metrics.for_capacity(&spec.id)));
        Upstream {
            capacity,
            peer: peer::build_peer(&spec, timeouts),
            backend: health::backend(&spec),
            checker: health::checker(&spec, health, checks),
            health: HealthState::default(),
            ejection: Ejection::default(),
            draining: AtomicBool::new(false),
            stats: UpstreamStats::default(),
            metrics: m,
            id,
            spec,
        }
    }

    /// Take over what a reload must not reset: the health verdict, the
    /// drain flag, and while it stays capped, its gate (the requests in
    /// flight and queued there) and lease.
    pub fn carry_over(&mut self, previous: &Upstream) {
        self.health.set(previous.health.is_healthy());
        self.set_draining(previous.is_draining());
        if self.capacity.is_some() && previous.capacity.is_some() {
            self.capacity = previous.capacity.clone();
        }
    }

    /// Room for one more request now: uncapped, or a free slot nobody waits for.
    pub fn has_room(&self) -> bool {
        self.capacity.as_ref().is_none_or(|c| c.gate.has_room())
    }

    /// A fresh copy of the peer template for one request.
    pub fn peer(&self) -> Box<HttpPeer> {
        Box::new(self.peer.clone())
    }

    /// A peer no pooled connection matches (a group key of its own), so
    /// Pingora must open a fresh connection: after a pooled connection
    /// failed, the others in the pool may be just as dead. The connection
    /// it opens is pooled under that key and closes after `pool_idle`.
    pub fn fresh_peer(&self) -> Box<HttpPeer> {
        let mut peer = self.peer.clone();
        peer.group_key = fastrand::u64(1..);
        Box::new(peer)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }

    /// Why this upstream may not take requests now, or `None` if it may.
    /// The one place that decides it: routing, the admin API, the healthy
    /// gauge and the dashboard all ask here.
    pub fn unusable(&self, now_ms: u64) -> Option<RepinReason> {
        if self.is_draining() {
            Some(RepinReason::Draining)
        } else if self.ejection.is_ejected(now_ms) {
            Some(RepinReason::Ejected)
        } else if !self.health.is_healthy() {
            Some(RepinReason::Unhealthy)
        } else {
            None
        }
    }

    /// Healthy, not ejected, not draining: may take new sessions.
    pub fn is_usable(&self, now_ms: u64) -> bool {
        self.unusable(now_ms).is_none()
    }

    pub fn inflight(&self) -> i64 {
        self.stats.inflight.load(Ordering::Relaxed)
    }

    /// An attempt has its connection: `reused` from the pool, or opened
    /// anew in `connect_time`.
    pub fn note_connection(&self, reused: bool, connect_time: std::time::Duration) {
        if reused {
            self.stats.reused.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.connects.fetch_add(1, Ordering::Relaxed);
            let micros = connect_time.as_micros() as u64;
            self.stats
                .connect_micros
                .fetch_add(micros, Ordering::Relaxed);
            self.metrics.connect.observe(connect_time.as_secs_f64());
        }
    }

    pub fn start_request(&self) {
        self.stats.inflight.fetch_add(1, Ordering::Relaxed);
        self.metrics.inflight.inc();
    }

    pub fn end_request(&self) {
        self.stats.inflight.fetch_sub(1, Ordering::Relaxed);
        self.metrics.inflight.dec();
    }

    /// A request ended on this upstream with `code` (`failed`: by its
    /// fault, or with a 5xx), after `took`; `affinity`: what affinity did
    /// for it, when it had a session. Counted once per request.
    pub fn record_response(
        &self,
        code: u16,
        failed: bool,
        affinity: Option<AffinityOutcome>,
        took: std::time::Duration,
    ) {
        let s = &self.stats;
        s.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            s.errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(outcome) = affinity {
            s.keyed.fetch_add(1, Ordering::Relaxed);
            if outcome == AffinityOutcome::Hit {
                s.affinity_hits.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.metrics.count_response(code);
        self.metrics.duration.observe(took.as_secs_f64());
    }

    /// Able to serve: healthy and not ejected (a drain is an operator's
    /// choice, not ill health).
    fn is_healthy_at(&self, now_ms: u64) -> bool {
        !matches!(
            self.unusable(now_ms),
            Some(RepinReason::Unhealthy | RepinReason::Ejected)
        )
    }

    fn refresh_healthy_gauge(&self) {
        let up = self.is_healthy_at(clock::now_ms());
        self.metrics.healthy.set(i64::from(up));
    }
}

/// The fleet of one config generation.
pub struct UpstreamSet {
    list: Vec<Arc<Upstream>>,
    /// Running sums of weights, for drawing an upstream in proportion to weight.
    weight_sums: Vec<u64>,
    by_id: HashMap<Arc<str>, usize>,
    ring: select::Ring,
    passive: PassiveSpec,
    /// Told the id of each upstream ejected here (see `Edge::take_ejections`).
    ejections: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<Arc<str>>>,
}

impl UpstreamSet {
    pub fn new(list: Vec<Arc<Upstream>>, passive: PassiveSpec) -> UpstreamSet {
        let by_id = list
            .iter()
            .enumerate()
            .map(|(i, u)| (u.id.clone(), i))
            .collect();
        let ring = select::Ring::new(&list);
        let weight_sums = list
            .iter()
            .scan(0u64, |sum, u| {
                *sum += u64::from(u.spec.weight);
                Some(*sum)
            })
            .collect();
        UpstreamSet {
            list,
            weight_sums,
            by_id,
            ring,
            passive,
            ejections: std::sync::OnceLock::new(),
        }
    }

    /// Send the id of each upstream this set ejects to `to` (set once).
    pub fn report_ejections(&self, to: tokio::sync::mpsc::UnboundedSender<Arc<str>>) {
        let _ = self.ejections.set(to);
    }

    pub fn all(&self) -> &[Arc<Upstream>] {
        &self.list
    }

    pub fn get(&self, index: usize) -> Option<&Arc<Upstream>> {
        self.list.get(index)
    }

    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    /// A random index, drawn in proportion to weight.
    pub fn weighted_draw(&self) -> usize {
        let total = self.weight_sums.last().copied().unwrap_or(0);
        if total == 0 {
            return 0;
        }
        let r = fastrand::u64(..total);
        self.weight_sums.partition_point(|&sum| sum <= r)
    }

    pub fn ring(&self) -> &select::Ring {
        &self.ring
    }

    pub fn passive(&self) -> &PassiveSpec {
        &self.passive
    }

    /// Record a failure of `u` (a connect failure, a failure-coded answer,
    /// a cut), ejecting it if the threshold is reached and the cap allows.
    pub fn record_failure(&self, u: &Upstream) {
        let Verdict::Eject(duration) = u.ejection.record_failure(&self.passive) else {
            return;
        };
        let now = clock::now_ms();
        let ejected = self
            .list
            .iter()
            .filter(|u| u.ejection.is_ejected(now))
            .count();
        if may_eject(ejected, self.list.len(), self.passive.max_ejected_percent) {
            u.ejection.eject(duration);
            u.metrics.ejections.inc();
            u.refresh_healthy_gauge();
            if let Some(to) = self.ejections.get() {
                let _ = to.send(u.id.clone());
            }
            log::warn!(
                "upstream {} ejected for {:?} after repeated failures",
                u.id,
                duration
            );
        } else {
            log::warn!(
                "upstream {} reached its failure threshold, but {ejected} of {} upstreams are already ejected (cap {}%)",
                u.id,
                self.list.len(),
                self.passive.max_ejected_percent
            );
        }
    }

    /// One round of active checks over every upstream, all in parallel;
    /// each verdict that flips is logged. The gauges are refreshed after.
    pub async fn check_round(&self, spec: &HealthSpec) {
        let mut tasks = tokio::task::JoinSet::new();
        for u in &self.list {
            let u = u.clone();
            let spec = spec.clone();
            tasks.spawn(async move {
                let (result, error) =
                    match tokio::time::timeout(spec.timeout, u.checker.check(&u.backend)).await {
                        Ok(Ok(())) => (Ok(()), None),
                        Ok(Err(e)) => (Err(RelayFailure::of(&e)), Some(e.to_string())),
                        Err(_) => (Err(RelayFailure::Timeout), None),
                    };
                match u
                    .health
                    .record(result, spec.healthy_after, spec.unhealthy_after)
                {
                    Some(true) => log::info!("upstream {} is healthy again", u.id),
                    Some(false) => log::warn!(
                        "upstream {} failed {} health checks in a row ({}){}",
                        u.id,
                        spec.unhealthy_after,
                        result.err().map_or("", RelayFailure::label),
                        error.map(|e| format!(": {e}")).unwrap_or_default()
                    ),
                    None => {}
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        self.refresh_gauges();
    }

    /// Refresh the healthy gauges (ejections end by time alone).
    pub fn refresh_gauges(&self) {
        for u in &self.list {
            u.refresh_healthy_gauge();
        }
    }

    /// The share of upstreams that are healthy and not ejected (a drain is
    /// an operator's choice, not ill health).
    pub fn healthy_ratio(&self, now_ms: u64) -> f64 {
        if self.list.is_empty() {
            return 0.0;
        }
        let healthy = self.list.iter().filter(|u| u.is_healthy_at(now_ms)).count();
        healthy as f64 / self.list.len() as f64
    }
}

/// May one more of `total` upstreams be ejected, with `ejected` out
/// already? Never past `passive.max_ejected_percent` of the fleet (rounded
/// down), so that passive health cannot empty it.
pub fn may_eject(ejected: usize, total: usize, max_percent: u8) -> bool {
    ejected < total * usize::from(max_percent) / 100
}

#[cfg(test)]
mod cap_tests {
    use super::may_eject;

    /// Each case: ejected already, upstreams in all, the cap in percent,
    /// and whether one more may go.
    #[test]
    fn ejection_never_takes_more_than_the_cap_of_the_fleet() {
        let cases = [
            (0, 10, 50, true),
            (4, 10, 50, true),
            (5, 10, 50, false),
            (0, 3, 50, true),
            (1, 3, 50, false),
            (0, 1, 50, false),
            (0, 1, 100, true),
            (1, 1, 100, false),
            (0, 10, 0, false),
            (9, 10, 100, true),
            (10, 10, 100, false),
            (0, 0, 100, false),
        ];
        for (ejected, total, percent, want) in cases {
            assert_eq!(
                may_eject(ejected, total, percent),
                want,
                "{ejected} of {total} at {percent}%"
            );
        }
    }
}
