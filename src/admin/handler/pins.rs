//! Pins changed in bulk from the admin API:
//!
//! ```text
//! DELETE /api/sessions?upstream=ID | ?tenant=HASH | ?all=true
//!                                 purge those pins, on every edge of a shared table:
//!                                 200 {purged, removed, local, shared}; exactly one
//!                                 selector, else 400; 503 if Redis stopped answering
//! POST   /api/upstreams/{id}/drain
//!                                 with upstreams[].on_remove: purge, the drain purges
//!                                 the relay's pins at once (`purged` in the answer)
//! ```

use super::{query_param, AdminResponse};
use crate::admin::views::{DrainView, PurgeView};
use crate::affinity::store::{Purged, Selector};
use crate::outcome::PurgeReason;
use crate::state::Edge;
use crate::tenants::TenantId;
use http::StatusCode;
use std::sync::Arc;

pub(super) const BAD_TENANT: &str =
    "tenant must be a tenant's hash: 16 hex digits, as /api/stats shows it";

const NO_SELECTOR: &str =
    "say which pins to purge: ?upstream=ID, ?tenant=HASH or ?all=true (one of them)";

/// The pins a purge's query selects, or why it selects none.
fn selector(query: Option<&str>) -> Result<Selector, &'static str> {
    let upstream = query_param(query, "upstream");
    let tenant = query_param(query, "tenant");
    let all = query_param(query, "all");
    match (upstream, tenant, all) {
        // An id that no config could hold has no pins.
        (Some(id), None, None) => match crate::config::upstream_id_problem(&id) {
            None => Ok(Selector::Upstream(Arc::from(&*id))),
            Some(_) => {
                Err("upstream must be an upstream id: 1 to 128 characters, without spaces or '/'")
            }
        },
        (None, Some(hex), None) => TenantId::from_hex(&hex)
            .map(Selector::Tenant)
            .ok_or(BAD_TENANT),
        (None, None, Some(all)) if all == "true" => Ok(Selector::All),
        (None, None, Some(_)) => Err("all must be true: ?all=true purges every pin"),
        _ => Err(NO_SELECTOR),
    }
}

/// `DELETE /api/sessions?...`: purge the pins the query selects.
pub(super) async fn purge(edge: &Edge, query: Option<&str>) -> AdminResponse {
    let which = match selector(query) {
        Ok(which) => which,
        Err(why) => return AdminResponse::error(StatusCode::BAD_REQUEST, why),
    };
    match edge.purge(&which, PurgeReason::Admin).await {
        Ok(done) => AdminResponse::ok(&view(&which, done)),
        Err(e) => AdminResponse::error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "the purge of {which} stopped: {e}; this edge dropped its own {} (run it again once redis answers)",
                e.done.local
            ),
        ),
    }
}

fn view(which: &Selector, done: Purged) -> PurgeView {
    PurgeView {
        purged: which.to_string(),
        removed: done.removed(),
        local: done.local,
        shared: done.shared.is_some(),
    }
}

/// `POST /api/upstreams/{id}/drain` and `/undrain`; a drain of a relay with
/// `on_remove: purge` purges its pins.
pub(super) async fn drain(edge: &Edge, id: &str, on: bool) -> AdminResponse {
    let state = edge.state();
    let Some(u) = state
        .upstreams
        .index_of(id)
        .and_then(|i| state.upstreams.get(i))
    else {
        return AdminResponse::error(StatusCode::NOT_FOUND, "no such upstream");
    };
    u.set_draining(on);
    let shared = edge.store.share_drain(&u.id, on).await;
    log::info!(
        "upstream {} {}",
        u.id,
        if on { "draining" } else { "undrained" }
    );
    let purge = match on {
        true => edge.purge_on_remove(&state.config, &u.id).await,
        false => None,
    };
    AdminResponse::ok(&DrainView {
        id: u.id.to_string(),
        draining: on,
        shared,
        purged: purge.as_ref().map(|r| match r {
            Ok(done) => done.removed(),
            Err(e) => e.done.removed(),
        }),
        purge_error: purge.and_then(|r| r.err()).map(|e| e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each query: the pins it selects, or the start of the refusal.
    #[test]
    fn a_purge_names_exactly_one_selector() {
        let t = TenantId(0x0123_4567_89ab_cdef);
        let cases: &[(Option<&str>, Result<Selector, &str>)] = &[
            (
                Some("upstream=relay-a"),
                Ok(Selector::Upstream(Arc::from("relay-a"))),
            ),
            (
                Some("upstream=relay%2Da"),
                Ok(Selector::Upstream(Arc::from("relay-a"))),
            ),
            (Some("tenant=0123456789abcdef"), Ok(Selector::Tenant(t))),
            (Some("all=true"), Ok(Selector::All)),
            (None, Err("say which")),
            (Some(""), Err("say which")),
            (Some("limit=5"), Err("say which")),
            (Some("upstream=a&all=true"), Err("say which")),
            (Some("upstream=a&tenant=0123456789abcdef"), Err("say which")),
            (Some("all=false"), Err("all must be true")),
            (Some("all"), Err("all must be true")),
            (Some("upstream="), Err("upstream must be")),
            (Some("upstream=a%2Fb"), Err("upstream must be")),
            (Some("upstream=a%20b"), Err("upstream must be")),
            (Some("tenant=xyz"), Err("tenant must be")),
            (Some("tenant=0123456789ABCDEG"), Err("tenant must be")),
        ];
        for (query, want) in cases {
            match (selector(*query), want) {
                (Ok(got), Ok(want)) => assert_eq!(&got, want, "{query:?}"),
                (Err(got), Err(start)) => assert!(got.starts_with(start), "{query:?}: {got}"),
                (got, want) => panic!("{query:?}: {got:?}, wanted {want:?}"),
            }
        }
    }
}
