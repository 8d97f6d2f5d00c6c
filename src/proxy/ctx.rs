//! A request's context, from its head to its access-log line, across
//! Pingora's phases and the held path: a few small parts, each with one
//! subject.
//!
//! - [`RequestCtx`]: the generation it runs on, its session and pin, and
//!   its place in the drain;
//! - [`Attempts`](super::attempt::Attempts): the attempt under way and the
//!   history of the earlier ones;
//! - [`RequestBody`]: the client's body, read early or streaming through;
//! - [`Observed`]: what the answer showed, for the metrics and the log.

use super::attempt::Attempts;
use super::{body, pace, sse};
use crate::affinity::store::{LookupSource, SessionRecord};
use crate::affinity::SessionId;
use crate::drain::InFlight;
use crate::outcome::{AffinityOutcome, RepinReason, StreamOutcome, Usage};
use crate::state::{Edge, State};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Per-request state that crosses phases.
pub struct RequestCtx {
    /// The generation the request runs on, taken at its first phase.
    pub(super) state: Option<Arc<State>>,
    /// The tenant (the keyed hash of its credential), found before the
    /// session key, which it namespaces ([`crate::tenants`]).
    pub tenant: Option<crate::tenants::TenantId>,
    pub session: Option<SessionId>,
    /// What the tenant's request holds until it ends (released by drop).
    pub(crate) tenant_hold: crate::tenants::Hold,
    /// The pin lookup admission already made (`tenants.max_new_sessions_per_hour`),
    /// for routing to use instead of looking up again.
    pub(crate) looked_up: Option<Option<(Arc<SessionRecord>, LookupSource)>>,
    /// The session's pin, once routed.
    pub record: Option<Arc<SessionRecord>>,
    pub attempts: Attempts,
    pub(super) body: RequestBody,
    pub seen: Observed,
    pub(super) started: Instant,
    _in_flight: InFlight,
}

/// The client's body.
#[derive(Default)]
pub struct RequestBody {
    /// The whole body, when it was read early for its key, with its share
    /// of the edge's budget; dropped once the relay has it all and answered.
    pub early: Option<body::EarlyBody>,
    /// The whole body went to the relay on this attempt.
    pub sent: bool,
    /// The pace of a body that streams through (not read early).
    pub pace: Option<pace::BodyPace>,
    /// The request can be sent again whole (no body, or its body is kept).
    pub replayable: bool,
}

/// What the answer showed.
#[derive(Default)]
pub struct Observed {
    /// The relay's response head was taken (nothing is retried after it).
    pub answered: bool,
    /// The edge refused the request for now (529, 429): when to come back,
    /// in seconds (`Retry-After`).
    pub retry_after: Option<u64>,
    /// A relay failed this request (a failure code, a cut, no first event).
    pub failed_upstream: bool,
    /// What affinity did for the attempt that answered
    /// (`affinity.outcome_header`); none without a session.
    pub affinity: Option<AffinityOutcome>,
    /// Why it was `Moved`.
    pub moved_reason: Option<RepinReason>,
    /// The relay's response head, and a stream's first event (or an
    /// answer's first body bytes), from the request's start.
    pub upstream_head: Option<Duration>,
    pub first_event: Option<Duration>,
    /// The answer is an SSE stream (Pingora's path: its first bytes are timed).
    pub sse: bool,
    /// How a stream ended.
    pub stream: Option<StreamOutcome>,
    /// The token usage the answer reported.
    pub usage: Option<Usage>,
    /// The tail of a JSON answer, read for its token `usage`.
    pub json_tail: Option<sse::JsonTail>,
}

impl RequestCtx {
    /// A request that has just arrived; it holds its place in `edge`'s drain.
    pub fn new(edge: &Edge) -> RequestCtx {
        RequestCtx {
            state: None,
            tenant: None,
            session: None,
            tenant_hold: Default::default(),
            looked_up: None,
            record: None,
            attempts: Attempts::default(),
            body: RequestBody::default(),
            seen: Observed::default(),
            started: Instant::now(),
            _in_flight: edge.drain.enter(),
        }
    }

    /// The generation this request runs on.
    pub(super) fn state<'a>(&'a mut self, edge: &Edge) -> &'a Arc<State> {
        self.state.get_or_insert_with(|| edge.state())
    }

    /// Since the request arrived.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The stream ended with `outcome`: counted once, on its relay.
    pub(super) fn count_stream(&mut self, outcome: StreamOutcome) {
        self.seen.stream = Some(outcome);
        if let Some(a) = &self.attempts.current {
            a.stream(outcome);
        }
    }

    /// The answer reported `usage`: counted on its relay.
    pub(super) fn count_usage(&mut self, usage: Usage) {
        if let Some(a) = &self.attempts.current {
            a.usage(&usage);
        }
        self.seen.usage = Some(usage);
    }

    /// The answer goes to the client as it is. Unless it is a failure, or
    /// an earlier answer of this request was left, the session's count of
    /// answers left in a row starts over (`failover.move_pin:
    /// after_failures`). Done with the head, not in `logging`: a client may
    /// send its next request before this one's logging phase has run.
    pub(super) fn answer_kept(&self) {
        if let Some(record) = &self.record {
            if !self.attempts.answer_retried && !self.seen.failed_upstream {
                record.answered_well();
            }
        }
    }
}
