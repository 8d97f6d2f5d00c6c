//! A tenant's request against its limits ([`crate::tenants`]), once, in
//! `request_filter`, before any routing, so that Pingora's path and the held
//! (streaming) path refuse alike.
//!
//! In order: the request is counted in the top table; it takes its
//! session's in-flight slot (`max_inflight_per_session`); and if its session
//! has no pin yet, the tenant's new-session count for this hour is taken
//! (`max_new_sessions_per_hour`). The pin lookup that tells a new session is
//! handed to routing ([`RequestCtx::looked_up`]), so a new session costs one
//! Redis call more than before (the count), never a second lookup; a known
//! session costs nothing more. Requests without a tenant (no credential, or
//! `tenants.from: []`) and without a session key are never limited.
//!
//! Concurrent first requests of one new session each see no pin and are
//! each counted (the count may run ahead of the sessions really created,
//! never behind).

use super::RequestCtx;
use crate::clock;
use crate::state::{Edge, State};
use crate::tenants::limits::{window, Refusal, RejectReason, INFLIGHT_RETRY_AFTER};

/// Admit the request of `ctx` (its tenant and session already found), or
/// say why not.
pub async fn admit(edge: &Edge, state: &State, ctx: &mut RequestCtx) -> Result<(), Refusal> {
    let Some(tenant) = ctx.tenant else {
        return Ok(());
    };
    let spec = &state.config.tenants;
    ctx.tenant_hold.active = edge.tenants.top.enter(tenant, clock::unix_ms());
    let Some(id) = ctx.session else {
        return Ok(());
    };
    if let Some(limit) = spec.max_inflight_per_session {
        match edge.tenants.slots.try_take(id, limit) {
            Some(slot) => ctx.tenant_hold.slot = Some(slot),
            None => {
                return Err(refused(
                    edge,
                    ctx,
                    RejectReason::SessionInflight,
                    INFLIGHT_RETRY_AFTER,
                ))
            }
        }
    }
    let Some(limit) = spec.max_new_sessions_per_hour else {
        return Ok(());
    };
    let found = super::route::find_pin(edge, id).await;
    let known = found.is_some();
    ctx.looked_up = Some(found);
    if known {
        return Ok(());
    }
    let (hour, left) = window(clock::unix_ms() / 1000);
    let admitted = match edge.store.count_new_session(tenant, hour, limit).await {
        Some(admitted) => admitted,
        None => edge.tenants.hourly.admit(tenant, hour, limit),
    };
    if admitted {
        Ok(())
    } else {
        Err(refused(edge, ctx, RejectReason::NewSessions, left))
    }
}

fn refused(edge: &Edge, ctx: &RequestCtx, reason: RejectReason, retry_after: u64) -> Refusal {
    edge.metrics.tenant_rejection(reason);
    if let Some(active) = &ctx.tenant_hold.active {
        active.rejected();
    }
    Refusal {
        reason,
        retry_after,
    }
}
