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
use crate::affinity::store::{LookupSource, SessionRecord};
use crate::affinity::SessionId;
use crate::config::Balance;
use crate::outcome::{AffinityOutcome, RepinReason};
use crate::state::{Edge, State};
use crate::upstream::select;
use pingora_core::{Error, ErrorType, Result};
use std::sync::Arc;

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
    // A session avoids relays crowded with sessions while another can take it.
    let crowded = match id {
        Some(_) => {
            let counts = edge.store.counts();
            let sessions: Vec<u64> = state
                .upstreams
                .all()
                .iter()
                .map(|u| counts.get(&u.id).copied().unwrap_or(0))
                .collect();
            select::crowded(&state.upstreams, &sessions, aff.max_session_share)
        }
        None => Vec::new(),
    };
    let tried = &ctx.attempts.tried;
    match id {
        Some(id) if consistent => {
            select::consistent(&state.upstreams, id, aff.load_factor, tried, &crowded, now)
        }
        _ => select::least_loaded(&state.upstreams, tried, &crowded, now),
    }
}

/// The session's pin: the local cache first (no I/O on a hit), then the
/// shared table, once it is settled (a short wait at start-up costs less
/// than a session placed without it: a lost prompt cache).
pub async fn find_pin(edge: &Edge, id: SessionId) -> Option<(Arc<SessionRecord>, LookupSource)> {
    if !edge.store.settled() {
        edge.store.until_settled().await;
    }
    match edge.store.lookup_local(id) {
        Some(r) => Some((r, LookupSource::Local)),
        None => edge.store.lookup(id).await,
    }
}

/// The upstream index for this attempt.
pub async fn choose(edge: &Edge, state: &State, ctx: &mut RequestCtx, now: u64) -> Result<usize> {
    let ups = &state.upstreams;
    let Some(id) = ctx.session else {
        return place(edge, state, None, ctx, now).ok_or_else(no_upstream);
    };
    if !edge.store.settled() {
        // Just started: the shared table is being connected (see `find_pin`).
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
        // Admission may have looked the pin up already (`super::tenant_admission`).
        let found = match ctx.looked_up.take() {
            Some(found) => found,
            None => find_pin(edge, id).await,
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
                let record = edge
                    .store
                    .claim(id, ctx.tenant, ups.all()[index].id.clone())
                    .await;
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
        Some(from) => edge.store.repin(id, ctx.tenant, from, to).await,
        None => edge.store.claim(id, ctx.tenant, to).await,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::RepinReason as R;
    use crate::proxy::RequestCtx;
    use std::time::Duration;

    /// What a case does to the fleet (a, b, c) and to the request before it
    /// is routed.
    #[derive(Clone, Copy, Debug)]
    enum Before {
        Nothing,
        Pinned(usize),
        PinnedTo(&'static str),
        Draining(usize),
        Ejected(usize),
        Unhealthy(usize),
        /// The session's first attempt went to its relay and failed.
        Failed(usize, R),
        /// As `Failed`, with the pin kept (`failover.move_pin`).
        FailedKeepingPin(usize),
    }

    struct Want {
        to: Option<&'static str>,
        outcome: Option<AffinityOutcome>,
        moved: Option<R>,
        pinned: Option<&'static str>,
    }

    fn edge() -> Arc<Edge> {
        Edge::new(
            crate::config::parse(
                "listen: [{addr: 127.0.0.1:8080}]\n\
                 upstreams: [{id: a, addr: 127.0.0.1:9001}, {id: b, addr: 127.0.0.1:9002}, {id: c, addr: 127.0.0.1:9003}]\n\
                 affinity: {balance: consistent}\n",
            )
            .expect("a valid config"),
        )
    }

    /// Each case: the session (or none), what came before, and where the
    /// request goes, what affinity did, why it moved, and the pin after.
    #[test]
    fn each_request_goes_where_its_pin_and_the_fleet_say() {
        use AffinityOutcome::{Hit, Moved, New};
        use Before::*;
        let w = |to, outcome, moved, pinned| Want {
            to,
            outcome,
            moved,
            pinned,
        };
        let cases: Vec<(&str, bool, Before, Want)> = vec![
            (
                "no session: any relay, no pin",
                false,
                Nothing,
                w(None, None, None, None),
            ),
            (
                "a new session is placed and pinned",
                true,
                Nothing,
                w(None, Some(New), None, Some("*")),
            ),
            (
                "a pinned session stays",
                true,
                Pinned(1),
                w(Some("b"), Some(Hit), None, Some("b")),
            ),
            (
                "off a draining relay",
                true,
                Draining(1),
                w(None, Some(Moved), Some(R::Draining), Some("*")),
            ),
            (
                "off an ejected relay",
                true,
                Ejected(1),
                w(None, Some(Moved), Some(R::Ejected), Some("*")),
            ),
            (
                "off an unhealthy relay",
                true,
                Unhealthy(1),
                w(None, Some(Moved), Some(R::Unhealthy), Some("*")),
            ),
            (
                "off a relay no longer configured",
                true,
                PinnedTo("gone"),
                w(None, Some(Moved), Some(R::Removed), Some("*")),
            ),
            (
                "after its relay failed",
                true,
                Failed(1, R::ConnectFailure),
                w(None, Some(Moved), Some(R::ConnectFailure), Some("*")),
            ),
            (
                "after its relay's answer was left, pin kept",
                true,
                FailedKeepingPin(1),
                w(None, Some(Moved), Some(R::ErrorAnswer), Some("b")),
            ),
        ];
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        for (name, keyed, before, want) in cases {
            let edge = edge();
            let state = edge.state();
            let ups = state.upstreams.all();
            let id = SessionId(42);
            let mut ctx = RequestCtx::new(&edge);
            ctx.session = keyed.then_some(id);
            let pin = |to: &str| runtime.block_on(edge.store.claim(id, None, to.into()));
            let now = crate::clock::now_ms();
            let mut avoid = None;
            match before {
                Nothing => {}
                Pinned(i) => drop(pin(&ups[i].id)),
                PinnedTo(id) => drop(pin(id)),
                Draining(i) => {
                    pin(&ups[i].id);
                    ups[i].set_draining(true);
                    avoid = Some(i);
                }
                Ejected(i) => {
                    pin(&ups[i].id);
                    ups[i].ejection.eject(Duration::from_secs(60));
                    avoid = Some(i);
                }
                Unhealthy(i) => {
                    pin(&ups[i].id);
                    ups[i].health.set(false);
                    avoid = Some(i);
                }
                Failed(i, why) => {
                    ctx.record = Some(pin(&ups[i].id));
                    ctx.attempts.tried.add(i);
                    ctx.attempts.left_because = Some(why);
                    avoid = Some(i);
                }
                FailedKeepingPin(i) => {
                    ctx.record = Some(pin(&ups[i].id));
                    ctx.attempts.tried.add(i);
                    ctx.attempts.keep_pin = true;
                    avoid = Some(i);
                }
            }
            let chose = runtime.block_on(choose(&edge, &state, &mut ctx, now));
            let Ok(index) = chose else {
                panic!("{name}: no relay");
            };
            let to = &ups[index].id;
            if let Some(want_to) = want.to {
                assert_eq!(&**to, want_to, "{name}: the relay");
            }
            assert_ne!(Some(index), avoid, "{name}: the relay it had to leave");
            assert_eq!(ctx.seen.affinity, want.outcome, "{name}: the outcome");
            assert_eq!(ctx.seen.moved_reason, want.moved, "{name}: why it moved");
            let pinned = edge.store.lookup_local(id).map(|r| r.upstream.to_string());
            match want.pinned {
                None => assert_eq!(pinned, None, "{name}: no pin"),
                // Pinned where it went.
                Some("*") => assert_eq!(pinned.as_deref(), Some(&**to), "{name}: the pin"),
                Some(p) => assert_eq!(pinned.as_deref(), Some(p), "{name}: the pin"),
            }
            assert_eq!(
                ctx.record.as_ref().map(|r| r.upstream.to_string()),
                pinned,
                "{name}: the request's record is the pin"
            );
        }
    }

    #[test]
    fn a_fleet_with_no_usable_relay_gets_no_upstream() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        for keyed in [false, true] {
            let edge = edge();
            let state = edge.state();
            state
                .upstreams
                .all()
                .iter()
                .for_each(|u| u.health.set(false));
            let mut ctx = RequestCtx::new(&edge);
            ctx.session = keyed.then_some(SessionId(7));
            let chose = runtime.block_on(choose(&edge, &state, &mut ctx, crate::clock::now_ms()));
            let e = chose.expect_err("no relay can take it");
            assert_eq!(e.etype(), &ErrorType::HTTPStatus(503), "keyed: {keyed}");
        }
    }
}
