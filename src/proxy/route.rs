//! Choosing the upstream of one attempt: the pin if it can serve, otherwise
//! a new placement that becomes the pin.
//!
//! A session's request waits while the shared table is still being
//! connected at start-up (bounded by `redis.connect_wait`).
//!
//! First attempt: look the session up (local cache first, no I/O on a hit).
//! A usable pin is followed. A pin on an unhealthy, ejected, draining or
//! removed upstream is moved (compare-and-set on the old pin). A session
//! with no pin is placed and claimed; if another claimant won, its pin is
//! adopted. Retries after a connect failure never revisit an upstream this
//! request tried, and re-pin the session where the request lands.

use super::RequestCtx;
use crate::affinity::store::LookupSource;
use crate::affinity::SessionId;
use crate::config::Balance;
use crate::outcome::{AffinityOutcome, RepinReason};
use crate::state::{Edge, State};
use crate::upstream::select;
use pingora_core::{Error, ErrorType, Result};

pub fn no_upstream() -> Box<Error> {
    Error::explain(
        ErrorType::HTTPStatus(503),
        "no healthy upstream can take this request",
    )
}

/// Place a session (or a keyless request). Consistent hashing when
/// configured, and also while the shared table is unreachable, so that
/// edges still mostly agree.
fn place(
    edge: &Edge,
    state: &State,
    id: Option<SessionId>,
    ctx: &RequestCtx,
    now: u64,
) -> Option<usize> {
    let aff = &state.config.affinity;
    let consistent = aff.balance == Balance::Consistent || edge.store.degraded();
    match id {
        Some(id) if consistent => select::consistent(
            &state.upstreams,
            id,
            aff.load_factor,
            &ctx.attempts.tried,
            now,
        ),
        _ => select::least_loaded(&state.upstreams, &ctx.attempts.tried, now),
    }
}

/// The upstream index for this attempt.
pub async fn choose(edge: &Edge, state: &State, ctx: &mut RequestCtx, now: u64) -> Result<usize> {
    let ups = &state.upstreams;
    let Some(id) = ctx.session else {
        return place(edge, state, None, ctx, now).ok_or_else(no_upstream);
    };
    if !edge.store.settled() {
        // Just started: the shared table is being connected. A short wait
        // costs less than a session placed without it (a lost prompt cache).
        edge.store.until_settled().await;
    }

    if ctx.attempts.keep_pin && !ctx.attempts.tried.is_empty() {
        // An answer retried elsewhere whose pin stays (`failover.move_pin`).
        ctx.seen.affinity = Some(AffinityOutcome::Moved);
        ctx.seen.moved_reason = Some(
            ctx.attempts
                .left_because
                .unwrap_or(RepinReason::ErrorAnswer),
        );
        return place(edge, state, Some(id), ctx, now).ok_or_else(no_upstream);
    }
    let (from, reason) = if let Some(last) = ctx.attempts.tried.last() {
        (
            ups.get(last).map(|u| u.id.clone()),
            ctx.attempts
                .left_because
                .unwrap_or(RepinReason::ConnectFailure),
        )
    } else {
        let found = match edge.store.lookup_local(id) {
            Some(r) => Some((r, LookupSource::Local)),
            None => edge.store.lookup(id).await,
        };
        let record = match found {
            Some((r, source)) => {
                match source {
                    LookupSource::Local => edge.metrics.lookup_local_hit.inc(),
                    LookupSource::Shared => edge.metrics.lookup_shared_hit.inc(),
                }
                r
            }
            None => {
                edge.metrics.lookup_miss.inc();
                ctx.seen.affinity = Some(AffinityOutcome::New);
                edge.session_created();
                let index = place(edge, state, Some(id), ctx, now).ok_or_else(no_upstream)?;
                let record = edge.store.claim(id, ups.all()[index].id.clone()).await;
                let winner = ups
                    .index_of(&record.upstream)
                    .filter(|&i| ups.all()[i].is_usable(now));
                ctx.record = Some(record);
                return Ok(winner.unwrap_or(index));
            }
        };
        let reason = match ups.index_of(&record.upstream) {
            Some(i) => match ups.all()[i].unusable(now) {
                None => {
                    ctx.record = Some(record);
                    ctx.seen.affinity = Some(AffinityOutcome::Hit);
                    return Ok(i);
                }
                Some(reason) => reason,
            },
            None => RepinReason::Removed,
        };
        (Some(record.upstream.clone()), reason)
    };

    let index = place(edge, state, Some(id), ctx, now).ok_or_else(no_upstream)?;
    let to = ups.all()[index].id.clone();
    let record = match &from {
        Some(from) => edge.store.repin(id, from, to).await,
        None => edge.store.claim(id, to).await,
    };
    // Another instance may have moved the session first: follow it if we can.
    let landed = ups
        .index_of(&record.upstream)
        .filter(|&i| !ctx.attempts.tried.contains(i) && ups.all()[i].is_usable(now))
        .unwrap_or(index);
    if from.is_some() {
        ctx.seen.affinity = Some(AffinityOutcome::Moved);
        ctx.seen.moved_reason = Some(reason);
    } else {
        ctx.seen.affinity = Some(AffinityOutcome::New);
        edge.session_created();
    }
    if from.as_deref() != Some(&*ups.all()[landed].id) {
        edge.metrics.repin(reason);
        log::debug!(
            "session {} moved from {:?} to {} ({})",
            id.to_hex(),
            from,
            ups.all()[landed].id,
            reason.label()
        );
    }
    ctx.record = Some(record);
    Ok(landed)
}
