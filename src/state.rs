//! What the proxy, the admin API and the background services share.
//!
//! [`State`] is everything built from one config generation: the validated
//! config, the upstream set and the key chain. [`Edge`] holds the current
//! `State` behind an `ArcSwap` (so a reload can build a new one to the side
//! and swap it in one store), plus what outlives a generation: the affinity
//! table, the metrics, the in-flight count, the budgets, the history, the
//! readiness latch and what the last reload did ([`LastReload`]).
//!
//! [`Edge::new`] builds one from a config alone (no thread, no file, the
//! in-process table): the seam the unit tests of routing and the attempt
//! stand on. The server builds its own with [`Edge::with_parts`].

use crate::access_log::AccessLog;
use crate::affinity::keys::KeyChain;
use crate::affinity::redis_store::RedisStore;
use crate::affinity::store::{LocalStore, SessionStore};
use crate::affinity::KeyHasher;
use crate::certificates::Certificates;
use crate::clock;
use crate::config::Config;
use crate::drain::Drain;
use crate::metrics::Metrics;
use crate::upstream::health::CheckConnectors;
use crate::upstream::{Upstream, UpstreamSet};
use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
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
                    config.capacity.queue_max,
                ))
            })
            .collect();
        State::assemble(config, upstreams, generation)
    }

    /// Put a generation together from upstreams built (or carried over) already.
    pub fn assemble(config: Config, upstreams: Vec<Arc<Upstream>>, generation: u64) -> State {
        let c = &config.capacity;
        for u in &upstreams {
            if let (Some(capacity), Some(cap)) = (&u.capacity, u.spec.max_inflight) {
                capacity.configure(cap, c.queue_max, config.redis.is_some(), c.on_redis_down);
            }
        }
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

/// What a successful reload did.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ReloadReport {
    pub generation: u64,
    /// From the start of the reload (signal, request or file change) to the swap.
    pub took_ms: f64,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    /// Settings that differ but need a restart or a graceful upgrade.
    pub needs_upgrade: Vec<String>,
    /// TLS listeners whose certificate files now hold another certificate,
    /// served to new handshakes from now on.
    pub certificates_renewed: Vec<String>,
}

/// The last reload, whatever its result: for the dashboard.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LastReload {
    pub at_ms: u64,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<ReloadReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<String>>,
}

/// What the process gives its edge: the file a reload reads, the TLS
/// listeners' certificates, the metrics, and the access log with its
/// writer thread started (by `server::build`, not by a constructor).
pub struct Parts {
    pub config_path: Option<std::path::PathBuf>,
    pub certificates: Certificates,
    pub metrics: Arc<Metrics>,
    pub access_log: AccessLog,
}

pub struct Edge {
    current: ArcSwap<State>,
    /// The file `reload` reads; set once at start-up.
    pub config_path: Option<std::path::PathBuf>,
    pub(crate) reload_lock: tokio::sync::Mutex<()>,
    /// The errors of the last rejected reload, until one succeeds.
    pub last_reload_error: arc_swap::ArcSwapOption<Vec<String>>,
    /// The last reload, whatever its result (for the dashboard).
    pub last_reload: arc_swap::ArcSwapOption<LastReload>,
    /// One line per request, written off the request path.
    pub access_log: AccessLog,
    /// The last 15 minutes, for the dashboard and the indicators.
    pub history: crate::history::History,
    /// Sessions created within the last TTL (session survival).
    pub births: crate::indicators::Births,
    /// Connectors every health check shares, across generations.
    pub(crate) checks: Arc<CheckConnectors>,
    /// The Redis-backed table, when configured (also `store`).
    pub redis: Option<Arc<RedisStore>>,
    /// Every request in flight in this process, across generations.
    pub drain: Arc<Drain>,
    /// Bodies read early for their keys, edge-wide.
    pub body_budget: Arc<crate::budgets::BodyBudget>,
    /// ... and the parts of them spilled to disk.
    pub body_disk_budget: Arc<crate::budgets::BodyBudget>,
    /// Retries of answered attempts, edge-wide (`failover.retry_budget`).
    pub retry_budget: crate::budgets::RetryBudget,
    pub store: Arc<dyn SessionStore>,
    /// The in-process table, when there is no Redis (also `store`): a
    /// graceful upgrade hands it to the next process.
    pub local: Option<Arc<LocalStore>>,
    pub metrics: Arc<Metrics>,
    /// The first health-check round has finished.
    pub health_known: tokio::sync::watch::Sender<bool>,
    ready: AtomicBool,
    pub started: SystemTime,
    /// The TLS listeners' certificates, re-read by every reload.
    pub certificates: Certificates,
    /// Tenants' in-flight slots, local new-session counts and the top table.
    pub tenants: crate::tenants::Tenants,
    /// Told the id of each relay this edge ejects (`failover.on_eject`).
    ejected: tokio::sync::mpsc::UnboundedSender<Arc<str>>,
    /// ... which the ejections' service takes, once.
    ejected_rx: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Arc<str>>>>,
}

impl Edge {
    /// An edge on `config` alone, as a test builds it: its own metrics, an
    /// access log with no writer thread, no config file to reload and no
    /// TLS listener. With no `redis` its table is in-process.
    pub fn new(config: Config) -> Arc<Edge> {
        let metrics = Arc::new(Metrics::new());
        let access_log =
            AccessLog::unwritten(&config.access_log, metrics.access_log_dropped.clone());
        Edge::with_parts(
            config,
            Parts {
                config_path: None,
                certificates: Certificates::default(),
                metrics,
                access_log,
            },
        )
    }

    /// An edge on `config` with what the server gives it (`server::build`).
    pub fn with_parts(config: Config, parts: Parts) -> Arc<Edge> {
        let Parts {
            config_path,
            certificates,
            metrics,
            access_log,
        } = parts;
        let redis = config
            .redis
            .clone()
            .map(|spec| Arc::new(RedisStore::new(spec, config.affinity.ttl, metrics.clone())));
        let (store, local): (Arc<dyn SessionStore>, _) = match &redis {
            Some(r) => (r.clone(), None),
            None => {
                let table = LocalStore::new(config.affinity.max_sessions, config.affinity.ttl);
                table.observe_durations(metrics.session_duration.clone());
                let table = Arc::new(table);
                (table.clone(), Some(table))
            }
        };
        let checks = CheckConnectors::new();
        let state = State::build_with(config, &metrics, &checks, 1);
        let (ejected, ejected_rx) = tokio::sync::mpsc::unbounded_channel();
        state.upstreams.report_ejections(ejected.clone());
        metrics.config_generation.set(1);
        let edge = Arc::new(Edge {
            current: ArcSwap::from_pointee(state),
            config_path,
            reload_lock: tokio::sync::Mutex::new(()),
            last_reload_error: arc_swap::ArcSwapOption::empty(),
            last_reload: arc_swap::ArcSwapOption::empty(),
            access_log,
            history: Default::default(),
            births: Default::default(),
            checks,
            redis,
            drain: Drain::new(),
            body_budget: Arc::default(),
            body_disk_budget: Arc::default(),
            retry_budget: Default::default(),
            store,
            local,
            metrics,
            health_known: tokio::sync::watch::Sender::new(false),
            ready: AtomicBool::new(false),
            started: SystemTime::now(),
            certificates,
            tenants: Default::default(),
            ejected,
            ejected_rx: std::sync::Mutex::new(Some(ejected_rx)),
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
        state.upstreams.report_ejections(self.ejected.clone());
        self.current.store(Arc::new(state));
    }

    /// The ids of the relays this edge ejects, as it ejects them: for the
    /// one service that acts on them (`None` once taken).
    pub fn take_ejections(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Arc<str>>> {
        self.ejected_rx.lock().ok()?.take()
    }

    /// The current generation.
    pub fn state(&self) -> Arc<State> {
        self.current.load_full()
    }

    /// Latch readiness (see `services::Readiness`); true the first time.
    pub fn mark_ready(&self) -> bool {
        !self.ready.swap(true, Ordering::Relaxed)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The counters the dashboard's history and the indicators read, now.
    pub fn sample(&self) -> crate::history::Sample {
        crate::history::Sample::take(self.state().upstreams.all(), &self.metrics)
    }

    /// The indicators against their thresholds, now (`/api/stats`).
    pub fn indicators(&self) -> Vec<crate::indicators::Reading> {
        self.refresh_scrape_gauges();
        let window = self.history.window(&self.sample());
        crate::indicators::readings(&window, &self.metrics)
    }

    /// Requests in flight in this process, on any generation.
    pub fn in_flight(&self) -> i64 {
        self.drain.in_flight()
    }

    /// A session was placed for the first time.
    pub fn session_created(&self) {
        self.metrics.sessions_created.inc();
        let ttl = self.state().config.affinity.ttl.as_millis() as u64;
        self.births.note(clock::now_ms(), ttl);
    }

    /// Set the gauges that are states, not counts: the per-upstream session
    /// counts, live sessions and their survival, the healthy ratio, and the
    /// use of the connection cap. Called before each scrape and health round.
    pub fn refresh_scrape_gauges(&self) {
        let state = self.state();
        let counts = self.store.counts();
        let mut live = 0;
        for u in state.upstreams.all() {
            let n = counts.get(&u.id).copied().unwrap_or(0);
            live += n;
            u.metrics.sessions.set(n as i64);
        }
        let m = &self.metrics;
        let now = clock::now_ms();
        m.sessions_live.set(live as i64);
        let ttl = state.config.affinity.ttl.as_millis() as u64;
        m.session_survival.set(crate::indicators::session_survival(
            live,
            self.births.within(now, ttl),
        ));
        m.upstream_healthy_ratio
            .set(state.upstreams.healthy_ratio(now));
        let cap = state.config.limits.max_connections;
        m.client_connections_max.set(cap as i64);
        m.pool_utilisation
            .set(m.client_connections.get().max(0) as f64 / cap.max(1) as f64);
        m.bodies.memory.set(self.body_budget.held() as i64);
        m.bodies.spill.set(self.body_disk_budget.held() as i64);
    }
}
