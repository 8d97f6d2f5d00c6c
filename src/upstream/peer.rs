//! Builds the `HttpPeer` of an upstream: the one place where one is made.
//!
//! Pingora reuses a pooled connection only for an identical peer (address,
//! scheme, SNI, verify flags, group key), so every request to an upstream
//! clones this template instead of building its own. A relay behind a
//! proxy gets its [`Tunnel`] and pool key here, for requests and health
//! checks alike.

use super::tunnel::{self, Tunnel};
use crate::config::{Timeouts, UpstreamSpec};
use pingora_core::upstreams::peer::{HttpPeer, HttpUpstreamRequestPolicy};
use std::sync::Arc;
use std::time::Duration;

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
    through_proxy(&mut peer, spec, timeouts.connect);
    peer
}

/// When `spec`'s relay is behind a proxy, connect `peer` through it (the
/// peer's address is already the proxy's), dialing and handshaking within
/// `within`, and pool its connections apart from any other relay's or
/// user's.
pub fn through_proxy(peer: &mut HttpPeer, spec: &UpstreamSpec, within: Duration) {
    if let Some(proxy) = &spec.proxy {
        peer.group_key = tunnel::group_key(&spec.id, proxy);
        peer.options.custom_l4 = Some(Arc::new(Tunnel::new(proxy.clone(), within)));
    }
}
