//! Builds the `HttpPeer` of an upstream: the one place where one is made.
//!
//! Pingora reuses a pooled connection only for an identical peer (address,
//! scheme, SNI, verify flags, group key), so every request to an upstream
//! clones this template instead of building its own.

use crate::config::{Timeouts, UpstreamSpec};
use pingora_core::upstreams::peer::{HttpPeer, HttpUpstreamRequestPolicy};

pub fn build_peer(spec: &UpstreamSpec, timeouts: &Timeouts) -> HttpPeer {
    let (tls, sni) = match &spec.tls {
        Some(t) => (true, t.sni.clone()),
        None => (false, String::new()),
    };
    let mut peer = HttpPeer::new(spec.addr, tls, sni);
    let o = &mut peer.options;
    o.connection_timeout = Some(timeouts.connect);
    o.total_connection_timeout = Some(timeouts.connect.saturating_mul(2));
    o.read_timeout = Some(timeouts.read);
    o.write_timeout = Some(timeouts.write);
    o.idle_timeout = Some(timeouts.pool_idle);
    // Hop-by-hop fields are removed by `proxy::hop`, at less cost.
    o.http_upstream_request_policy = HttpUpstreamRequestPolicy::preserve();
    if let Some(t) = &spec.tls {
        o.verify_cert = t.verify;
        o.verify_hostname = t.verify;
    }
    peer
}
