//! Pins forgotten or moved in bulk, and why:
//!
//! - an operator's purge: `DELETE /api/sessions?upstream=ID | ?tenant=HASH
//!   | ?all=true`, or `relay-edge ctl purge` (reason `admin`);
//! - a relay with `upstreams[].on_remove: purge` that a reload removes or
//!   an operator drains: its pins are purged at once (reason `on_remove`);
//!   with `move` (the default) each session moves at its next request;
//! - a relay this edge ejects, with `failover.on_eject: move`: every
//!   session pinned to it is re-pinned at once, spread over the usable
//!   relays by consistent hashing on its id (re-pin reason `ejected`);
//!   with `keep` (the default) nothing happens at the ejection.
//!
//! The table does the work ([`SessionStore::purge`], `move_all`): with
//! Redis, in bounded batches, for every edge that shares it. Here each
//! is logged once, at info, and counted
//! (`relay_edge_affinity_purged_total{reason}`,
//! `relay_edge_affinity_repins_total{reason="ejected"}`).

use crate::affinity::store::{Interrupted, Purged, Selector};
use crate::affinity::SessionId;
use crate::clock;
use crate::config::{Config, OnEject, OnRemove};
use crate::outcome::{PurgeReason, RepinReason};
use crate::state::Edge;
use crate::upstream::select::{self, Tried};
use std::sync::Arc;

/// What a bulk change reports: in the shared table, or this edge's table.
fn said(done: &Purged) -> String {
    match done.shared {
        Some(n) => format!("{n} in redis, {} cached here", done.local),
        None => format!("{} in this edge's table", done.local),
    }
}

impl Edge {
    /// Forget every pin `which` selects, on every edge of a shared table;
    /// logged once and counted under `reason`.
    pub async fn purge(
        &self,
        which: &Selector,
        reason: PurgeReason,
    ) -> Result<Purged, Interrupted> {
        let result = self.store.purge(which).await;
        let done = match &result {
            Ok(done) => *done,
            Err(e) => e.done,
        };
        self.metrics.purged(reason, done.removed());
        match &result {
            Ok(_) => log::info!(
                "pins purged ({}): {which}: {} removed ({})",
                reason.label(),
                done.removed(),
                said(&done)
            ),
            Err(e) => log::warn!(
                "pins purge ({}) of {which} incomplete: {e} ({}); run it again",
                reason.label(),
                said(&done)
            ),
        }
        result
    }

    /// Upstream `id` left placement (a reload of `config` removed it, or it
    /// was drained): with `on_remove: purge`, purge its pins now.
    pub async fn purge_on_remove(
        &self,
        config: &Config,
        id: &str,
    ) -> Option<Result<Purged, Interrupted>> {
        match config.on_remove(id) {
            OnRemove::Move => None,
            OnRemove::Purge => Some(
                self.purge(&Selector::Upstream(Arc::from(id)), PurgeReason::OnRemove)
                    .await,
            ),
        }
    }

    /// This edge ejected upstream `id`: with `failover.on_eject: move`,
    /// re-pin every session pinned to it. How many moved (`None`: kept).
    pub async fn ejected(&self, id: &str) -> Option<Result<Purged, Interrupted>> {
        let state = self.state();
        if state.config.failover.on_eject == OnEject::Keep {
            return None;
        }
        let now = clock::now_ms();
        let load_factor = state.config.affinity.load_factor;
        let (set, tried) = (&state.upstreams, Tried::default());
        let place = |session: SessionId| {
            select::consistent(set, session, load_factor, &tried, &[], now)
                .and_then(|i| set.get(i))
                .map(|u| u.id.clone())
        };
        let result = self.store.move_all(id, &place).await;
        let done = match &result {
            Ok(done) => *done,
            Err(e) => e.done,
        };
        self.metrics.repins(RepinReason::Ejected, done.removed());
        match &result {
            Ok(_) => log::info!(
                "upstream {id} ejected: {} sessions re-pinned at once ({}; failover.on_eject: move)",
                done.removed(),
                said(&done)
            ),
            Err(e) => log::warn!("upstream {id} ejected: moving its sessions stopped: {e}"),
        }
        Some(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::affinity::TenantId;
    use std::time::Duration;

    fn edge(extra: &str) -> Arc<Edge> {
        Edge::new(
            crate::config::parse(&format!(
                "listen: [{{addr: 127.0.0.1:8080}}]\n\
                 upstreams: [{{id: a, addr: 127.0.0.1:9001, on_remove: purge}}, {{id: b, addr: 127.0.0.1:9002}}, {{id: c, addr: 127.0.0.1:9003}}]\n{extra}"
            ))
            .expect("a valid config"),
        )
    }

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(f)
    }

    /// Session `i`, its id spread over the ring as a keyed hash's would be.
    fn session(i: u128) -> SessionId {
        SessionId(i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))
    }

    /// Twenty sessions on `a` (of tenant 1) and ten on `b`.
    fn pin(edge: &Edge) {
        for i in 0..30u128 {
            let (to, tenant) = if i < 20 {
                ("a", Some(TenantId(1)))
            } else {
                ("b", None)
            };
            block(edge.store.claim(session(i), tenant, Arc::from(to)));
        }
    }

    fn pinned_to(edge: &Edge, to: &str) -> usize {
        (0..30u128)
            .filter(|&i| {
                edge.store
                    .lookup_local(session(i))
                    .is_some_and(|r| &*r.upstream == to)
            })
            .count()
    }

    /// `failover.on_eject`: what the ejection of `a` does to its pins.
    #[test]
    fn an_ejection_moves_the_relays_pins_only_when_told_to() {
        for (on_eject, moved) in [("", false), ("keep", false), ("move", true)] {
            let e = edge(&match on_eject {
                "" => String::new(),
                mode => format!("failover: {{on_eject: {mode}}}\n"),
            });
            pin(&e);
            e.state().upstreams.all()[0]
                .ejection
                .eject(Duration::from_secs(60));
            let result = block(e.ejected("a"));
            assert_eq!(result.is_some(), moved, "{on_eject:?}");
            let left = if moved { 0 } else { 20 };
            assert_eq!(pinned_to(&e, "a"), left, "{on_eject:?}");
            assert_eq!(pinned_to(&e, "b") + pinned_to(&e, "c"), 30 - left);
            if moved {
                assert!(pinned_to(&e, "c") > 0, "spread over the usable relays");
            }
            let repins = e.metrics.repins_total();
            assert_eq!(repins, if moved { 20 } else { 0 }, "{on_eject:?}");
        }
    }

    /// `upstreams[].on_remove`: `a` purges, `b` (the default) moves.
    #[test]
    fn a_removed_relay_is_purged_only_with_on_remove_purge() {
        let e = edge("");
        pin(&e);
        let config = e.state().config.clone();
        assert!(block(e.purge_on_remove(&config, "b")).is_none());
        assert_eq!(pinned_to(&e, "b"), 10, "on_remove: move keeps them");
        let purged = block(e.purge_on_remove(&config, "a")).map(|r| r.map(|p| p.removed()));
        assert_eq!(purged, Some(Ok(20)));
        assert_eq!(pinned_to(&e, "a"), 0);
        let text = String::from_utf8(e.metrics.render()).expect("text");
        assert!(
            text.contains("relay_edge_affinity_purged_total{reason=\"on_remove\"} 20"),
            "{text}"
        );
    }
}
