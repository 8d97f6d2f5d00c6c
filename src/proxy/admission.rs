//! Admission: where an attempt goes, and its slot there when the relay is
//! capped (`max_inflight`), for Pingora's path and the held path alike.
//!
//! - A relay with room admits at once. Placement ([`route::choose`], and
//!   below it [`crate::upstream::select`]) prefers relays with room, so a
//!   new session never lands on a full relay while another has room.
//! - A session's pinned relay that is full is waited for up to
//!   `affinity.pin_wait` (its prompt cache is there) while another relay
//!   has room; then the request spills: the session is re-pinned where it
//!   lands, once, by the same compare-and-set as any move (reason
//!   `capacity`).
//! - Otherwise the request queues at its relay, fair across tenants, up to
//!   `capacity.queue_timeout`; a full queue, a wait past its deadline, or
//!   recent waits past `capacity.fast_fail_wait` give 529 with
//!   `Retry-After`. A client that goes away while queued leaves the queue
//!   at once (watched when its body has been read whole; a body still
//!   streaming in cannot be watched without reading it).

use super::{route, RequestCtx};
use crate::capacity::queue::{Refused, Slot};
use crate::capacity::RelayCapacity;
use crate::outcome::{AffinityOutcome, RepinReason};
use crate::state::{Edge, State};
use pingora_core::{Error, ErrorType, Result};
use pingora_proxy::Session;
use std::future::Future;
use std::sync::Arc;

/// The upstream index of this attempt, and its slot if the relay is capped.
pub async fn route_and_admit(
    edge: &Edge,
    state: &State,
    session: &mut Session,
    ctx: &mut RequestCtx,
    now: u64,
) -> Result<(usize, Option<Slot>)> {
    let index = route::choose(edge, state, ctx, now).await?;
    let Some(capacity) = capacity_of(state, index) else {
        return Ok((index, None));
    };
    if let Some(slot) = capacity.try_admit() {
        return Ok((index, Some(slot)));
    }
    let tenant = tenant_of(ctx);
    let pin_wait = state.config.affinity.pin_wait;
    let pinned = ctx.seen.affinity == Some(AffinityOutcome::Hit);
    let (index, capacity) = if pinned && another_has_room(state, ctx, index, now) {
        let waited = watching_client(session, capacity.wait_for(tenant, pin_wait)).await?;
        if let Some(slot) = waited {
            edge.metrics.pin_waits.with_label_values(&["served"]).inc();
            return Ok((index, Some(slot)));
        }
        edge.metrics.pin_waits.with_label_values(&["spilled"]).inc();
        // Moved as after a failure of its relay: the pin follows once.
        ctx.attempts.tried.add(index);
        ctx.attempts.left_because = Some(RepinReason::Capacity);
        let index = route::choose(edge, state, ctx, crate::clock::now_ms()).await?;
        match capacity_of(state, index) {
            None => return Ok((index, None)),
            Some(capacity) => (index, capacity),
        }
    } else {
        (index, capacity)
    };
    let c = &state.config.capacity;
    let admitted = watching_client(
        session,
        capacity.admit(tenant, c.queue_timeout, c.fast_fail_wait),
    )
    .await?;
    match admitted {
        Ok(slot) => Ok((index, Some(slot))),
        Err(why) => {
            ctx.seen.retry_after = Some(capacity.retry_after());
            Err(overloaded(why))
        }
    }
}

fn capacity_of(state: &State, index: usize) -> Option<Arc<RelayCapacity>> {
    state.upstreams.get(index)?.capacity.clone()
}

/// The tenant whose turn a queued request takes (round robin between
/// tenants): its hash ([`crate::tenants`]); requests without a tenant
/// share one turn.
fn tenant_of(ctx: &RequestCtx) -> u64 {
    ctx.tenant.map_or(0, |t| t.0)
}

/// Could a relay other than `index` take this request now?
fn another_has_room(state: &State, ctx: &RequestCtx, index: usize, now: u64) -> bool {
    state.upstreams.all().iter().enumerate().any(|(i, u)| {
        i != index && !ctx.attempts.tried.contains(i) && u.is_usable(now) && u.has_room()
    })
}

/// Wait for `admission` while watching the client: one that closes its
/// connection leaves the queue at once (its error ends the request). Only
/// a client whose body has been read whole is watched.
async fn watching_client<T>(
    session: &mut Session,
    admission: impl Future<Output = T>,
) -> Result<T> {
    if !session.is_body_done() {
        return Ok(admission.await);
    }
    let mut admission = std::pin::pin!(admission);
    let downstream = session.as_downstream_mut();
    tokio::select! {
        admitted = &mut admission => Ok(admitted),
        // Pipelined bytes are kept for the next request and this stays
        // pending; only a close (or a read error) ends it.
        gone = downstream.read_body_or_idle(true) => match gone {
            Err(e) => Err(e.into_down()),
            Ok(_) => Ok(admission.await),
        },
    }
}

/// The 529 a refused request gets.
pub fn overloaded(why: Refused) -> Box<Error> {
    Error::explain(
        ErrorType::HTTPStatus(529),
        match why {
            Refused::QueueFull => "the relay is at its cap and its queue is full",
            Refused::TimedOut => "the relay stayed at its cap for capacity.queue_timeout",
            Refused::FastFail => "the relay's recent waits are past capacity.fast_fail_wait",
            Refused::RedisDown => {
                "the relay's cap cannot be shared without Redis (on_redis_down: closed)"
            }
        },
    )
}
