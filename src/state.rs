//! What the proxy, the admin API and the background services share.
//!
//! [`State`] is everything built from one config generation: the validated
//! config, the upstream set and the key chain. [`Edge`] holds the current
//! `State` behind an `ArcSwap` (so a reload can build a new one to the side
//! and swap it in one store), plus what outlives a generation: the affinity
//! table, the metrics, the in-flight count and the readiness latch.

use crate::affinity::keys::KeyChain;
use crate::affinity::redis_store::RedisStore;
use crate::affinity::store::{LocalStore, SessionStore};
use crate::affinity::KeyHasher;
use crate::config::Config;
use crate::drain::Drain;
use crate::metrics::Metrics;
use crate::upstream::health::CheckConnectors;
use crate::upstream::{Upstream, UpstreamSet};
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

/// One config generation, built whole before it is used.
pub struct State {
    pub config: Config,
    pub upstreams: UpstreamSet,
    pub keys: KeyChain,
    pub generation: u64,
}

impl State {
    /// Build a generation from scratch, with its own check connectors.
    pub fn build(config: Config, metrics: &Metrics, generation: u64) -> State {
        State::build_with(config, metrics, &CheckConnectors::new(), generation)
    }

    /// Build a generation from scratch, its health checks sharing `checks`.
    pub fn build_with(
        config: Config,
        metrics: &Metrics,
        checks: &Arc<CheckConnectors>,
        generation: u64,
    ) -> State {
        let upstreams = config
            .upstreams
            .iter()
            .map(|spec| {
                Arc::new(Upstream::new(
                    spec.clone(),
                    &config.timeouts,
                    &config.health,
                    checks,
                    metrics,
                ))
            })
            .collect();
        State::assemble(config, upstreams, generation)
    }

    /// Put a generation together from upstreams built (or carried over) already.
    pub fn assemble(config: Config, upstreams: Vec<Arc<Upstream>>, generation: u64) -> State {
        let upstreams = UpstreamSet::new(upstreams, config.passive.clone());
        let keys = KeyChain::new(
            config.affinity.keys.clone(),
            KeyHasher::new(&config.affinity.hash_secret),
        );
        State {
            config,
            upstreams,
            keys,
            generation,
        }
    }
}

pub struct Edge {
    current: ArcSwap<State>,
    /// The file `reload` reads; set once at start-up.
    pub config_path: Option<std::path::PathBuf>,
    pub(crate) reload_lock: tokio::sync::Mutex<()>,
    /// The errors of the last rejected reload, until one succeeds.
    pub last_reload_error: arc_swap::ArcSwapOption<Vec<String>>,
    /// Connectors every health check shares, across generations.
    pub(crate) checks: Arc<CheckConnectors>,
    /// The Redis-backed table, when configured (also `store`).
    pub redis: Option<Arc<RedisStore>>,
    /// Every request in flight in this process, across generations.
    pub drain: Arc<Drain>,
    /// Bodies read early for their keys, edge-wide.
    pub body_budget: Arc<crate::proxy::body::BodyBudget>,
    /// Retries of answered attempts, edge-wide (`failover.retry_budget`).
    pub retry_budget: crate::proxy::retry_budget::RetryBudget,
    pub store: Arc<dyn SessionStore>,
    pub metrics: Arc<Metrics>,
    /// The first health-check round has finished.
    pub health_known: tokio::sync::watch::Sender<bool>,
    ready: AtomicBool,
    pub started: SystemTime,
}

impl Edge {
    pub fn new(config: Config) -> Arc<Edge> {
        Edge::with_path(config, None)
    }

    /// An edge that can reload `config_path`.
    pub fn with_path(config: Config, config_path: Option<std::path::PathBuf>) -> Arc<Edge> {
        let metrics = Arc::new(Metrics::new());
        let redis = config
            .redis
            .clone()
            .map(|spec| Arc::new(RedisStore::new(spec, config.affinity.ttl, metrics.clone())));
        let store: Arc<dyn SessionStore> = match &redis {
            Some(r) => r.clone(),
            None => Arc::new(LocalStore::new(
                config.affinity.max_sessions,
                config.affinity.ttl,
            )),
        };
        let checks = CheckConnectors::new();
        let state = State::build_with(config, &metrics, &checks, 1);
        metrics.config_generation.set(1);
        let edge = Arc::new(Edge {
            current: ArcSwap::from_pointee(state),
            config_path,
            reload_lock: tokio::sync::Mutex::new(()),
            last_reload_error: arc_swap::ArcSwapOption::empty(),
            checks,
            redis,
            drain: Drain::new(),
            body_budget: Arc::default(),
            retry_budget: Default::default(),
            store,
            metrics,
            health_known: tokio::sync::watch::Sender::new(false),
            ready: AtomicBool::new(false),
            started: SystemTime::now(),
        });
        if let Some(redis) = &edge.redis {
            redis.set_upstreams(
                edge.state()
                    .upstreams
                    .all()
                    .iter()
                    .map(|u| u.id.clone())
                    .collect(),
            );
            let weak = Arc::downgrade(&edge);
            redis.on_drains(Box::new(move |drained| {
                if let Some(edge) = weak.upgrade() {
                    edge.apply_drains(drained);
                }
            }));
        }
        edge
    }

    /// With a shared table, the drained set read from it is the truth.
    fn apply_drains(&self, drained: &std::collections::HashSet<String>) {
        for u in self.state().upstreams.all() {
            let on = drained.contains(&*u.id);
            if u.is_draining() != on {
                log::info!(
                    "upstream {} {} (shared)",
                    u.id,
                    if on { "draining" } else { "undrained" }
                );
                u.set_draining(on);
            }
        }
    }

    /// Make `state` the current generation.
    pub(crate) fn swap(&self, state: State) {
        self.current.store(Arc::new(state));
    }

    /// The current generation.
    pub fn state(&self) -> Arc<State> {
        self.current.load_full()
    }

    /// Latch readiness (see `server::Readiness`); true the first time.
    pub fn mark_ready(&self) -> bool {
        !self.ready.swap(true, Ordering::Relaxed)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Requests in flight in this process, on any generation.
    pub fn in_flight(&self) -> i64 {
        self.drain.in_flight()
    }

    /// Copy the table's per-upstream session counts into the gauges.
    pub fn refresh_session_gauges(&self) {
        let counts = self.store.counts();
        for u in self.state().upstreams.all() {
            u.metrics
                .sessions
                .set(counts.get(&u.id).copied().unwrap_or(0) as i64);
        }
    }
}
