//! The edge's background services, each with one job, each a Pingora
//! background service on its own thread:
//!
//! - [`HealthChecks`] runs a round of active checks every `health.interval`
//!   and says when the first round has finished;
//! - [`Readiness`] latches readiness once the first health-check round has
//!   finished and, with `redis`, the shared table is connected (or
//!   `redis.connect_wait` has passed); then `/readyz` answers 200, the pid
//!   file is written and systemd is told `READY=1`;
//! - [`HistorySampler`] samples the counters for the dashboard's history;
//! - [`Ejections`] re-pins an ejected relay's sessions at once, with
//!   `failover.on_eject: move` (`crate::purge`);
//! - [`RedisSync`] keeps the shared table in sync with Redis;
//! - [`capacity::CapacitySync`] renews this edge's grants of capped relays
//!   (with Redis);
//! - [`signals::SignalService`] answers the signals Pingora leaves to us.
//!
//! [`add_all`] adds them to a server; what they share is the [`Edge`].

pub mod capacity;
pub mod signals;

use crate::affinity::redis_store::RedisStore;
use crate::state::Edge;
use async_trait::async_trait;
use pingora_core::server::{Server, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use std::sync::Arc;

/// Add every background service of `edge` to `server`.
pub fn add_all(server: &mut Server, edge: &Arc<Edge>) {
    let e = || edge.clone();
    server.add_service(background_service(
        "relay-edge health checks",
        HealthChecks { edge: e() },
    ));
    server.add_service(background_service(
        "relay-edge signals",
        signals::SignalService::new(e()),
    ));
    server.add_service(background_service(
        "relay-edge readiness",
        Readiness { edge: e() },
    ));
    server.add_service(background_service(
        "relay-edge history",
        HistorySampler { edge: e() },
    ));
    server.add_service(background_service(
        "relay-edge ejections",
        Ejections { edge: e() },
    ));
    if let Some(redis) = &edge.redis {
        server.add_service(background_service(
            "relay-edge redis",
            RedisSync {
                store: redis.clone(),
            },
        ));
        server.add_service(background_service(
            "relay-edge capacity",
            capacity::CapacitySync {
                edge: e(),
                redis: redis.clone(),
            },
        ));
    }
}

/// Runs a round of active health checks every `health.interval`, over the
/// generation current at the round's start.
pub struct HealthChecks {
    pub edge: Arc<Edge>,
}

impl HealthChecks {
    /// One round; the first one to finish makes upstream health known.
    pub async fn run_round(&self) {
        let state = self.edge.state();
        state.upstreams.check_round(&state.config.health).await;
        self.edge.refresh_scrape_gauges();
        self.edge
            .health_known
            .send_if_modified(|known| !std::mem::replace(known, true));
    }
}

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            self.run_round().await;
            let interval = self.edge.state().config.health.interval;
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}

/// Latches readiness once upstream health and the shared table are known.
pub struct Readiness {
    pub edge: Arc<Edge>,
}

#[async_trait]
impl BackgroundService for Readiness {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let known = async {
            let _ = self.edge.health_known.subscribe().wait_for(|k| *k).await;
            self.edge.store.until_settled().await;
        };
        tokio::select! {
            _ = known => {}
            _ = shutdown.changed() => return,
        }
        if self.edge.mark_ready() {
            crate::supervision::announce_ready(&self.edge.state().config.server.pid_file);
        }
    }
}

/// Connects to Redis and keeps the shared table in sync, on its own runtime.
pub struct RedisSync {
    pub store: Arc<RedisStore>,
}

#[async_trait]
impl BackgroundService for RedisSync {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.store.clone().run(shutdown).await;
    }
}

/// Acts on each relay this edge ejects, one at a time, as
/// `failover.on_eject` says ([`Edge::ejected`]).
pub struct Ejections {
    pub edge: Arc<Edge>,
}

#[async_trait]
impl BackgroundService for Ejections {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut ejected) = self.edge.take_ejections() else {
            log::error!("the ejections' service started twice");
            return;
        };
        loop {
            tokio::select! {
                id = ejected.recv() => match id {
                    // Logged and counted there.
                    Some(id) => {
                        let _ = self.edge.ejected(&id).await;
                    }
                    None => return,
                },
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Samples the counters for the dashboard's history every
/// [`crate::history::RESOLUTION`].
pub struct HistorySampler {
    pub edge: Arc<Edge>,
}

#[async_trait]
impl BackgroundService for HistorySampler {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut every = tokio::time::interval(crate::history::RESOLUTION);
        loop {
            tokio::select! {
                _ = every.tick() => self.edge.history.record(self.edge.sample()),
                _ = shutdown.changed() => return,
            }
        }
    }
}
