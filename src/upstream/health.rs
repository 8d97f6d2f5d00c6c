//! Active health checks, run as one Pingora background service.
//!
//! Every `interval`, the service walks the current upstream set and checks
//! all upstreams in parallel with Pingora's checks: an HTTP GET of `path`
//! expecting 2xx, or a TCP (TLS for TLS upstreams) connect without a path.
//! `healthy_after` consecutive successes make an upstream healthy,
//! `unhealthy_after` consecutive failures unhealthy. New upstreams start
//! healthy; the edge is ready once the first round has finished.

use crate::config::{HealthSpec, UpstreamSpec};
use crate::state::Edge;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_core::upstreams::peer::Peer;
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora_load_balancing::Backend;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::task::JoinSet;

/// The active-check verdict of one upstream.
pub struct HealthState {
    healthy: AtomicBool,
    successes: AtomicUsize,
    failures: AtomicUsize,
}

impl Default for HealthState {
    fn default() -> Self {
        HealthState {
            healthy: AtomicBool::new(true),
            successes: AtomicUsize::new(0),
            failures: AtomicUsize::new(0),
        }
    }
}

impl HealthState {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Record one check; returns the new verdict if it flipped.
    pub fn observe(&self, ok: bool, healthy_after: usize, unhealthy_after: usize) -> Option<bool> {
        let (streak, other, threshold) = if ok {
            (&self.successes, &self.failures, healthy_after)
        } else {
            (&self.failures, &self.successes, unhealthy_after)
        };
        other.store(0, Ordering::Relaxed);
        let n = streak.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= threshold && self.is_healthy() != ok {
            self.healthy.store(ok, Ordering::Relaxed);
            return Some(ok);
        }
        None
    }
}

pub fn backend(spec: &UpstreamSpec) -> Backend {
    Backend {
        addr: pingora_core::protocols::l4::socket::SocketAddr::Inet(spec.addr),
        weight: spec.weight as usize,
        ext: Default::default(),
    }
}

/// Pingora's HTTP check (GET `path`, 2xx) or TCP/TLS connect check.
pub fn checker(spec: &UpstreamSpec, health: &HealthSpec) -> Box<dyn HealthCheck + Send + Sync> {
    let sni = spec.tls.as_ref().map(|t| t.sni.clone());
    match &health.path {
        Some(path) => {
            let host = health
                .host
                .clone()
                .or_else(|| sni.clone())
                .unwrap_or_else(|| spec.addr.to_string());
            let mut check = HttpHealthCheck::new(&host, sni.is_some());
            match path.parse() {
                Ok(uri) => check.req.set_uri(uri),
                Err(e) => log::error!("health check path for {}: {e}", spec.id),
            }
            let o = &mut check.peer_template.options;
            o.connection_timeout = Some(health.timeout);
            o.read_timeout = Some(health.timeout);
            o.write_timeout = Some(health.timeout);
            if let Some(t) = &spec.tls {
                o.verify_cert = t.verify;
                o.verify_hostname = t.verify;
            }
            check.reuse_connection = true;
            check.validator = Some(Box::new(|resp| {
                if resp.status.is_success() {
                    Ok(())
                } else {
                    pingora_core::Error::e_explain(
                        pingora_core::ErrorType::CustomCode(
                            "non 2xx health check",
                            resp.status.as_u16(),
                        ),
                        "during http health check",
                    )
                }
            }));
            Box::new(check)
        }
        None => {
            let mut check = match &sni {
                Some(sni) => TcpHealthCheck::new_tls(sni),
                None => TcpHealthCheck::new(),
            };
            let o = &mut check.peer_template.options;
            o.connection_timeout = Some(health.timeout);
            o.total_connection_timeout = Some(health.timeout);
            if let Some(t) = &spec.tls {
                o.verify_cert = t.verify;
                o.verify_hostname = t.verify;
            }
            debug_assert!(check.peer_template.tls() == sni.is_some());
            check
        }
    }
}

/// The background service that runs the checks.
pub struct HealthService {
    pub edge: Arc<Edge>,
}

impl HealthService {
    /// One round over the current upstream set, all checks in parallel.
    pub async fn run_round(&self) {
        let state = self.edge.state();
        let spec = state.config.health.clone();
        let mut tasks = JoinSet::new();
        for u in state.upstreams.all() {
            let u = u.clone();
            let spec = spec.clone();
            tasks.spawn(async move {
                let ok = matches!(
                    tokio::time::timeout(spec.timeout, u.checker.check(&u.backend)).await,
                    Ok(Ok(()))
                );
                match u
                    .health
                    .observe(ok, spec.healthy_after, spec.unhealthy_after)
                {
                    Some(true) => log::info!("upstream {} is healthy again", u.id),
                    Some(false) => log::warn!(
                        "upstream {} failed {} health checks in a row",
                        u.id,
                        spec.unhealthy_after
                    ),
                    None => {}
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        state.upstreams.refresh_gauges();
        self.edge.refresh_session_gauges();
        self.edge.mark_ready();
    }
}

#[async_trait]
impl BackgroundService for HealthService {
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

#[cfg(test)]
mod tests {
    use super::HealthState;

    #[test]
    fn flips_after_consecutive_results_only() {
        let h = HealthState::default();
        assert!(h.is_healthy());
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(h.observe(true, 2, 3), None); // streak broken
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(h.observe(false, 2, 3), Some(false));
        assert_eq!(h.observe(true, 2, 3), None);
        assert_eq!(h.observe(true, 2, 3), Some(true));
    }
}
