//! Active health checks: one check, and one upstream's verdict.
//!
//! A check is an HTTP GET of `path` expecting 2xx, or a TCP (TLS for TLS
//! upstreams) connect without a path. The checks implement Pingora's
//! `HealthCheck` and share one set of connectors. `healthy_after`
//! consecutive successes make an upstream healthy, `unhealthy_after`
//! consecutive failures unhealthy; new upstreams start healthy. A round
//! over the fleet is [`super::UpstreamSet::check_round`]; the service that
//! runs it every `interval` is [`crate::services`].

use crate::config::{HealthSpec, UpstreamSpec};
use crate::outcome::RelayFailure;
use async_trait::async_trait;
use pingora_core::connectors::http::Connector as HttpConnector;
use pingora_core::connectors::TransportConnector;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::RequestHeader;
use pingora_load_balancing::health_check::HealthCheck;
use pingora_load_balancing::Backend;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

/// The active-check verdict of one upstream.
pub struct HealthState {
    healthy: AtomicBool,
    successes: AtomicUsize,
    failures: AtomicUsize,
    /// Why the last check failed: 1 + its index in [`RelayFailure::ALL`],
    /// or 0 when it passed (or none ran).
    last_failure: AtomicU8,
}

impl Default for HealthState {
    fn default() -> Self {
        HealthState {
            healthy: AtomicBool::new(true),
            successes: AtomicUsize::new(0),
            failures: AtomicUsize::new(0),
            last_failure: AtomicU8::new(0),
        }
    }
}

impl HealthState {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Why the last check failed; `None` if it passed.
    pub fn last_failure(&self) -> Option<RelayFailure> {
        let n = self.last_failure.load(Ordering::Relaxed);
        RelayFailure::ALL
            .get(usize::from(n).checked_sub(1)?)
            .copied()
    }

    /// Record one check's result (`Err`: why it failed); returns the new
    /// verdict if it flipped.
    pub fn record(
        &self,
        result: std::result::Result<(), RelayFailure>,
        healthy_after: usize,
        unhealthy_after: usize,
    ) -> Option<bool> {
        let code = match result {
            Ok(()) => 0,
            Err(why) => RelayFailure::ALL
                .iter()
                .position(|&f| f == why)
                .map_or(0, |i| i as u8 + 1),
        };
        self.last_failure.store(code, Ordering::Relaxed);
        self.observe(result.is_ok(), healthy_after, unhealthy_after)
    }

    /// Set the verdict outright (a new upstream's first check, a carried-over one).
    pub fn set(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
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

/// The connectors every check shares. Pingora's stock checks build one per
/// upstream, which costs milliseconds each (TLS context) and a pool each.
pub struct CheckConnectors {
    http: HttpConnector,
    tcp: TransportConnector,
}

impl CheckConnectors {
    pub fn new() -> Arc<CheckConnectors> {
        Arc::new(CheckConnectors {
            http: HttpConnector::new(None),
            tcp: TransportConnector::new(None),
        })
    }
}

/// An HTTP GET of `path` expecting 2xx, or a TCP (TLS for TLS upstreams)
/// connect when no path is set. Implements Pingora's `HealthCheck`.
pub struct Check {
    connectors: Arc<CheckConnectors>,
    peer: HttpPeer,
    /// `None`: a connect check.
    request: Option<RequestHeader>,
}

/// Build the check of one upstream.
pub fn checker(
    spec: &UpstreamSpec,
    health: &HealthSpec,
    connectors: &Arc<CheckConnectors>,
) -> Check {
    let sni = spec.tls.as_ref().map(|t| t.sni.clone());
    let mut peer = HttpPeer::new(spec.addr, sni.is_some(), sni.clone().unwrap_or_default());
    let o = &mut peer.options;
    o.connection_timeout = Some(health.timeout);
    o.total_connection_timeout = Some(health.timeout);
    o.read_timeout = Some(health.timeout);
    o.write_timeout = Some(health.timeout);
    o.idle_timeout = Some(health.interval.saturating_mul(3));
    if let Some(t) = &spec.tls {
        o.verify_cert = t.verify;
        o.verify_hostname = t.verify;
    }
    super::peer::through_proxy(&mut peer, spec, health.timeout);
    let request = health.path.as_ref().and_then(|path| {
        let host = health
            .host
            .clone()
            .or(sni)
            .unwrap_or_else(|| spec.relay_addr());
        let mut req = RequestHeader::build("GET", path.as_bytes(), None).ok()?;
        req.insert_header(http::header::HOST, host).ok()?;
        req.insert_header(http::header::USER_AGENT, "relay-edge-health-check")
            .ok()?;
        Some(req)
    });
    Check {
        connectors: connectors.clone(),
        peer,
        request,
    }
}

#[async_trait]
impl HealthCheck for Check {
    async fn check(&self, _target: &Backend) -> Result<()> {
        let Some(request) = &self.request else {
            self.connectors.tcp.new_stream(&self.peer).await?;
            return Ok(());
        };
        let (mut session, _reused) = self.connectors.http.get_http_session(&self.peer).await?;
        session.set_write_timeout(self.peer.options.write_timeout);
        session
            .write_request_header(Box::new(request.clone()))
            .await?;
        session.finish_request_body().await?;
        session.set_read_timeout(self.peer.options.read_timeout);
        session.read_response_header().await?;
        let status = session.response_header().map_or(0, |r| r.status.as_u16());
        while session.read_response_body().await?.is_some() {}
        if !(200..300).contains(&status) {
            return Error::e_explain(
                ErrorType::CustomCode("non 2xx health check", status),
                "during http health check",
            );
        }
        self.connectors
            .http
            .release_http_session(session, &self.peer, self.peer.options.idle_timeout)
            .await;
        Ok(())
    }

    fn health_threshold(&self, _success: bool) -> usize {
        // Thresholds are applied by `HealthState::observe`.
        1
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
