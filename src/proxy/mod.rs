//! The `ProxyHttp` implementation: a thin layer that hands each phase to
//! its module.
//!
//! - `early_request_filter`: the head is parsed: stop the head's deadline
//!   ([`crate::downstream::gate`]), refuse ambiguous framing ([`framing`])
//!   and bound the body's reads ([`pace`]).
//! - `request_filter`: find the session key ([`crate::affinity::keys`]),
//!   and read the body whole ([`body`]) when a JSON source needs it, when
//!   streams are held, or when a body too big for Pingora's retry buffer
//!   may have to be sent again. A streaming request (`"stream": true`) is
//!   then served here, by [`held`], and never reaches the phases below.
//! - `upstream_peer`: choose the upstream ([`route`]) and clone its peer.
//! - `fail_to_connect`, `error_while_proxy`: passive failure, then a retry
//!   as [`retry`] decides.
//! - `upstream_request_filter`: `X-Forwarded-For`.
//! - `request_body_filter`: put back a body that was read early.
//! - `upstream_response_filter`: an answer with a retried status is left
//!   for another upstream (within [`retry_budget`]); failure-coded answers
//!   count as failures; a draining process closes the connection after the
//!   response.
//! - `response_filter`: the affinity outcome header;
//!   `response_body_filter`: a JSON answer's token usage ([`sse`]).
//! - `logging`: counters and metrics, once per request: a client that left
//!   is a 499 and a client error, a response the upstream cut after its
//!   head a 502 and an upstream failure; then the access log's entry
//!   ([`access`]), handed to its writer.
//! - `fail_to_proxy`: a short JSON error when nothing could answer, and the
//!   failure counted by cause.
//!
//! Every request holds an [`InFlight`] guard from its context's creation to
//! its end, so a drain waits for it whatever generation it runs on.

pub mod access;
pub mod body;
pub mod errors;
pub mod forwarded;
pub mod framing;
pub mod held;
pub mod hop;
pub mod pace;
pub mod retry;
pub mod route;
pub mod sse;

use crate::affinity::keys::HeadLookup;
use crate::affinity::store::SessionRecord;
use crate::affinity::SessionId;
use crate::clock;
use crate::config::MovePin;
use crate::drain::InFlight;
use crate::outcome::{AbandonReason, AffinityOutcome, ClientError, RepinReason};
use crate::state::{Edge, State};
use crate::upstream::select::Tried;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// The proxy of one set of threads: with `thread_model: workers`, one per
/// worker, so that each worker's upstream pools are its own.
pub struct EdgeProxy {
    edge: Arc<Edge>,
    /// The connection pool of streaming requests held until their first
    /// event (`held`); Pingora's own pool (in `HttpProxy`) serves the rest.
    held_connector: pingora_core::connectors::http::v1::Connector,
}

impl EdgeProxy {
    pub fn new(edge: Arc<Edge>) -> Self {
        let pool_size = edge.state().config.server.pool_size;
        EdgeProxy {
            edge,
            held_connector: pingora_core::connectors::http::v1::Connector::new(Some(
                pingora_core::connectors::ConnectorOptions::new(pool_size),
            )),
        }
    }

    /// The attempt's upstream failed and the request leaves it: count the
    /// failure, and say whether another upstream may be tried.
    fn leave_upstream(&self, ctx: &mut RequestCtx, because: RepinReason) -> bool {
        let Some(state) = ctx.state.clone() else {
            return false;
        };
        if let Some(i) = ctx.upstream.take() {
            if let Some(u) = state.upstreams.get(i) {
                u.end_request();
                u.stats.errors.fetch_add(1, Ordering::Relaxed);
            }
            state.upstreams.record_failure(i);
        }
        ctx.left_because = Some(because);
        let may_retry = ctx.tried.len() <= state.config.max_retries
            && ctx.tried.len() < state.upstreams.all().len();
        if may_retry {
            self.edge.metrics.retries.inc();
        }
        may_retry
    }

    /// After `e` on an established connection (no answer yet): retry, as
    /// [`retry::after_send`] decides? Once on a fresh connection to the same
    /// upstream (`fresh_next`), or elsewhere (the upstream is left).
    fn retry_after_send(&self, ctx: &mut RequestCtx, e: &Error, facts: retry::Attempt) -> bool {
        match retry::after_send(e, facts) {
            retry::AfterSend::Fail => false,
            retry::AfterSend::SameUpstreamFresh => {
                ctx.fresh_retried = true;
                ctx.fresh_next = true;
                ctx.left_because = Some(RepinReason::ConnectionLost);
                self.edge.metrics.retries.inc();
                true
            }
            retry::AfterSend::Elsewhere => self.leave_upstream(ctx, RepinReason::ConnectionLost),
        }
    }

    /// May the current attempt's answer (not yet sent) be left for another
    /// upstream? The request must be replayable, within
    /// `failover.max_retries`, with another usable upstream, and within the
    /// retry budget (taken here).
    fn may_abandon(&self, session: &Session, ctx: &RequestCtx, state: &State) -> bool {
        let now = clock::now_ms();
        if !ctx.replayable
            || session.as_ref().retry_buffer_truncated()
            || ctx.tried.len() > state.config.max_retries
            || crate::upstream::select::least_loaded(&state.upstreams, &ctx.tried, now).is_none()
        {
            return false;
        }
        let f = &state.config.failover;
        if self
            .edge
            .retry_budget
            .try_retry(now, f.retry_budget, f.retry_budget_min)
        {
            true
        } else {
            self.edge.metrics.retry_budget_exhausted.inc();
            false
        }
    }

    /// Leave the current attempt's answer for another upstream: count it
    /// (`reason`), decide whether the session's pin moves with it
    /// (`failover.move_pin`), and feed passive health.
    fn abandon(&self, ctx: &mut RequestCtx, state: &State, reason: AbandonReason) {
        if let Some(u) = ctx.upstream.and_then(|i| state.upstreams.get(i)) {
            u.metrics.abandoned(reason);
            // Only a failure of the pinned upstream counts towards moving it.
            let pinned = ctx.record.as_ref().filter(|r| r.upstream == u.id);
            ctx.keep_pin = match (state.config.failover.move_pin, pinned) {
                (_, None) => ctx.keep_pin,
                (MovePin::Never, _) => true,
                (MovePin::AtOnce, _) => false,
                (MovePin::AfterFailures(n), Some(r)) => r.failed_answer() < n,
            };
        }
        ctx.abandoning = true;
        ctx.answer_retried = true;
        self.leave_upstream(ctx, RepinReason::ErrorAnswer);
    }
}

/// Say what affinity did, in `affinity.outcome_header`.
fn affinity_header(ctx: &RequestCtx, response: &mut ResponseHeader) -> Result<()> {
    let Some(name) = ctx
        .state
        .as_ref()
        .and_then(|s| s.config.affinity.outcome_header.clone())
    else {
        return Ok(());
    };
    if let Some(outcome) = ctx.affinity {
        response.insert_header(name, outcome.label())?;
    }
    Ok(())
}

/// The answer goes to the client as it is. Unless it is a failure, or an
/// earlier answer of this request was left, the session's count of answers
/// left in a row starts over (`failover.move_pin: after_failures`). Done
/// here, with the head, not in `logging`: a client may send its next
/// request before this one's logging phase has run.
fn note_answer_kept(ctx: &RequestCtx) {
    if let Some(record) = &ctx.record {
        if !ctx.answer_retried && !ctx.failed_upstream {
            record.answered_well();
        }
    }
}

/// Per-request state that crosses phases.
pub struct RequestCtx {
    state: Option<Arc<State>>,
    pub session: Option<SessionId>,
    pub record: Option<Arc<SessionRecord>>,
    /// The whole body, when it was read early for its key, with its share
    /// of the edge's budget; dropped once the upstream has it all and answered.
    body: Option<body::EarlyBody>,
    /// The whole body went to the upstream on this attempt.
    body_sent: bool,
    /// The pace of a body that streams through (not read early).
    pace: Option<pace::BodyPace>,
    /// The upstream's response head was taken (nothing is retried after it).
    upstream_answered: bool,
    /// The upstream of the current attempt (its in-flight count is held).
    upstream: Option<usize>,
    pub tried: Tried,
    started: Instant,
    connect_started: Instant,
    failed_upstream: bool,
    /// Why the last attempt's upstream was left (the re-pin reason).
    left_because: Option<RepinReason>,
    /// The one retry on a fresh connection after a pooled one failed was used.
    fresh_retried: bool,
    /// The next attempt is that retry (same upstream, fresh); read by the
    /// held path (Pingora's path knows it by the upstream still held).
    fresh_next: bool,
    /// The request can be sent again whole (no body, or its body is kept).
    replayable: bool,
    /// The current attempt's answer is being left for another upstream
    /// (its status, before the client saw any of it).
    abandoning: bool,
    /// An answer of this request was left for another upstream.
    answer_retried: bool,
    /// The next attempt goes elsewhere without moving the session's pin
    /// (`failover.move_pin`).
    pub keep_pin: bool,
    /// The tail of a JSON answer, read for its token `usage`.
    json_tail: Option<sse::JsonTail>,
    /// What affinity did for the attempt that answered
    /// (`affinity.outcome_header`); none without a session.
    pub affinity: Option<AffinityOutcome>,
    /// Why it was `Moved`.
    pub moved_reason: Option<RepinReason>,
    /// Upstream attempts made.
    pub attempts: u32,
    /// The upstream's response head, and a stream's first event (or an
    /// answer's first body bytes), from the request's start.
    pub upstream_head: Option<std::time::Duration>,
    pub first_event: Option<std::time::Duration>,
    /// The answer is an SSE stream (Pingora's path: its first bytes are timed).
    sse: bool,
    /// How a stream ended.
    pub stream: Option<crate::outcome::StreamOutcome>,
    /// The token usage the answer reported.
    pub usage: Option<crate::outcome::Usage>,
    _in_flight: InFlight,
}

impl RequestCtx {
    fn state<'a>(&'a mut self, edge: &Edge) -> &'a Arc<State> {
        self.state.get_or_insert_with(|| edge.state())
    }
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestCtx;

    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {
        // Pingora's default adds a response-compression module, disabled,
        // that still runs on every request. relay-edge never compresses.
    }

    fn new_ctx(&self) -> RequestCtx {
        let now = Instant::now();
        RequestCtx {
            state: None,
            session: None,
            record: None,
            body: None,
            body_sent: false,
            pace: None,
            upstream_answered: false,
            upstream: None,
            tried: Tried::default(),
            started: now,
            connect_started: now,
            failed_upstream: false,
            left_because: None,
            fresh_retried: false,
            fresh_next: false,
            replayable: false,
            abandoning: false,
            answer_retried: false,
            keep_pin: false,
            affinity: None,
            moved_reason: None,
            attempts: 0,
            upstream_head: None,
            first_event: None,
            sse: false,
            stream: None,
            usage: None,
            json_tail: None,
            _in_flight: self.edge.drain.enter(),
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        crate::downstream::gate::stop_watching(session.as_downstream().stream());
        let downstream = session.as_downstream();
        if let Some(h1) = downstream.as_http1() {
            if framing::ambiguous(downstream.req_header(), || h1.get_headers_raw_bytes()) {
                session.set_keepalive(None);
                return Err(Error::explain(
                    ErrorType::InvalidHTTPHeader,
                    "both Transfer-Encoding and Content-Length (RFC 9112 6.1)",
                )
                .into_down());
            }
        }
        let state = ctx.state(&self.edge);
        let timeouts = &state.config.timeouts;
        session
            .as_downstream_mut()
            .set_read_timeout(Some(timeouts.client_body));
        ctx.pace = Some(pace::BodyPace::new(
            Instant::now(),
            timeouts.client_body,
            state.config.limits.min_body_rate,
        ));
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let state = ctx.state(&self.edge).clone();
        // Pingora keeps a keep-alive connection forever after its first
        // request (cloudflare/pingora#447): bound the wait for the next one,
        // and end the connection after this response once draining; never
        // keep one Pingora would close ([`framing::keepalive`]).
        let keepalive = framing::keepalive(
            session.as_downstream().get_keepalive(),
            state.config.timeouts.client_idle.as_secs(),
            self.edge.drain.is_draining(),
        );
        session.set_keepalive(keepalive);
        self.edge.retry_budget.note_request(clock::now_ms());
        let config = &state.config;
        let early = |pace: Option<pace::BodyPace>| body::EarlyRead {
            max_body: config.affinity.max_body_bytes,
            budget: &self.edge.body_budget,
            budget_limit: config.limits.body_read_memory,
            // A body that is not read early streams through on the same pace.
            pace: pace.unwrap_or_else(|| {
                pace::BodyPace::new(Instant::now(), config.timeouts.client_body, 0)
            }),
        };
        ctx.session = match state.keys.from_head(session.req_header()) {
            HeadLookup::Found(id) => Some(id),
            HeadLookup::Absent => None,
            HeadLookup::NeedBody { from } => {
                ctx.body = body::read_whole(session, early(ctx.pace.clone())).await?;
                let bytes = ctx.body.as_ref().map(|b| &b.bytes[..]);
                state
                    .keys
                    .resume_with_body(session.req_header(), bytes, from)
            }
        };
        ctx.replayable = ctx.body.is_some() || body::keep_for_retry(session);
        let hold = config.streams.hold_first_event;
        if ctx.body.is_none()
            && (hold || !ctx.replayable && config.failover.may_retry_answers(config.max_retries))
        {
            // Read it whole, within the budget (as nginx buffers request
            // bodies by default): to see whether it asks for a stream, to be
            // held, and so that one too big for Pingora's retry buffer (a
            // Claude Code request is over 64 KiB) can be sent again when an
            // overloaded relay's answer is tried elsewhere.
            ctx.body = body::read_whole(session, early(ctx.pace.clone())).await?;
            ctx.replayable |= ctx.body.is_some();
        }
        if let Some(whole) = ctx.body.as_ref().map(|b| b.bytes.clone()) {
            if config.streams.hold_first_event && held::wants_stream(&whole) {
                // Boxed: the futures of every request's `request_filter`
                // are as large as the largest path through it.
                Box::pin(held::serve(self, session, ctx, whole)).await?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let state = ctx.state(&self.edge).clone();
        let now = clock::now_ms();
        ctx.attempts += 1;
        // Still holding an upstream: Pingora retries after a reused (pooled)
        // connection failed mid-request. The upstream is not at fault: try
        // it again on a fresh connection (not another pooled one, which may
        // be as dead) rather than move the session.
        if let Some(previous) = ctx.upstream.take() {
            if let Some(u) = state.upstreams.get(previous) {
                u.end_request();
                if u.is_usable(now) {
                    ctx.upstream = Some(previous);
                    ctx.connect_started = Instant::now();
                    u.start_request();
                    return Ok(u.fresh_peer());
                }
            }
        }
        let index = route::choose(&self.edge, &state, ctx, now).await?;
        let upstream = state.upstreams.get(index).ok_or_else(route::no_upstream)?;
        ctx.tried.add(index);
        ctx.upstream = Some(index);
        ctx.connect_started = Instant::now();
        upstream.start_request();
        Ok(upstream.peer())
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(state), Some(i)) = (&ctx.state, ctx.upstream) {
            if let Some(u) = state.upstreams.get(i) {
                u.note_connection(reused, ctx.connect_started.elapsed());
            }
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let may_retry = self.leave_upstream(ctx, RepinReason::ConnectFailure);
        e.set_retry(may_retry);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if std::mem::take(&mut ctx.abandoning) {
            // Its answer was left in `upstream_response_filter`.
            e.set_retry(true);
            return e;
        }
        let req = session.req_header();
        let attempt = retry::Attempt {
            responded: session.response_written().is_some(),
            replayable: ctx.replayable && !session.as_ref().retry_buffer_truncated(),
            idempotent: req.method.is_idempotent(),
            reused: client_reused,
            fresh_retried: ctx.fresh_retried,
        };
        let again = self.retry_after_send(ctx, &e, attempt);
        e.set_retry(again);
        e
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // The replayed retry-buffer tail of an early-read body: send it whole.
        if let Some(whole) = &ctx.body {
            if end_of_stream && body.is_some() {
                *body = Some(whole.bytes.clone());
                ctx.body_sent = true;
            }
            return Ok(());
        }
        // A body that streams through: held to its pace.
        if let (Some(pace), Some(chunk)) = (&mut ctx.pace, body.as_ref()) {
            if !pace.note(chunk.len(), Instant::now()) {
                return Err(body::too_slow());
            }
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        hop::strip(upstream_request);
        if let Some(addr) = session.client_addr().and_then(|a| a.as_inet()) {
            let value =
                forwarded::append(upstream_request.headers.get(forwarded::HEADER), addr.ip());
            upstream_request.insert_header(forwarded::NAME, value)?;
        }
        if ctx.body.is_some() {
            // The client already got its 100 Continue from us.
            upstream_request.remove_header(&http::header::EXPECT);
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let (Some(state), Some(i)) = (&ctx.state, ctx.upstream) else {
            return Ok(());
        };
        if self.edge.drain.is_draining() {
            // Heads written after the drain began close their connection too.
            session.set_keepalive(None);
        }
        let code = upstream_response.status.as_u16();
        if state.config.failover.retry_on_status.contains(&code) {
            let state = state.clone();
            if self.may_abandon(session, ctx, &state) {
                self.abandon(ctx, &state, AbandonReason::Status);
                return Error::e_explain(
                    ErrorType::HTTPStatus(code),
                    "the upstream's answer is tried on another upstream",
                )
                .map_err(|e| e.into_up());
            }
        }
        ctx.upstream_answered = true;
        ctx.upstream_head = Some(ctx.started.elapsed());
        let content_type = upstream_response
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.as_bytes());
        ctx.sse = content_type.is_some_and(|t| t.starts_with(b"text/event-stream"));
        let json = content_type.is_some_and(|t| t.starts_with(b"application/json"));
        // Token usage comes in answers to Messages calls, which are POSTs.
        if json && code == 200 && session.req_header().method == http::Method::POST {
            ctx.json_tail = Some(sse::JsonTail::default());
        }
        if ctx.body_sent {
            // Nothing is retried once the upstream answered: an SSE stream
            // need not hold its request body (or the budget) for minutes.
            ctx.body = None;
        }
        if state.upstreams.passive().failure_codes.contains(&code) {
            ctx.failed_upstream = true;
            state.upstreams.record_failure(i);
        }
        note_answer_kept(ctx);
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        affinity_header(ctx, response)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        if ctx.sse && ctx.first_event.is_none() && body.as_ref().is_some_and(|b| !b.is_empty()) {
            ctx.first_event = Some(ctx.started.elapsed());
        }
        if let Some(tail) = &mut ctx.json_tail {
            if let Some(chunk) = body {
                tail.feed(chunk);
            }
            if end_of_stream {
                ctx.usage = ctx.json_tail.take().and_then(|t| t.usage());
                let upstream = ctx
                    .upstream
                    .and_then(|i| ctx.state.as_ref()?.upstreams.get(i).cloned());
                if let (Some(usage), Some(u)) = (&ctx.usage, upstream) {
                    u.metrics.count_usage(usage);
                }
            }
        }
        Ok(None)
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &RequestCtx,
        error: &Error,
        _context: pingora_proxy::ProxyWarnLogContext,
    ) -> bool {
        // An answer left for another upstream is counted, not a warning.
        matches!(error.etype(), ErrorType::HTTPStatus(_))
            && error.esource() == &ErrorSource::Upstream
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        // A client that went away or misbehaved is not an error of ours: it
        // is counted by reason in `logging` instead.
        error.esource() == &ErrorSource::Downstream
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let mid_response = session.response_written().is_some();
        if let Some(cause) = errors::cause(e, mid_response) {
            self.edge.metrics.client_failure(cause);
        }
        errors::respond(session, e).await
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let written = session.response_written().map(|r| r.status.as_u16());
        // A client that went away or misbehaved is not an upstream error.
        let upstream_error = e.is_some_and(|e| e.esource() == &ErrorSource::Upstream);
        let client_error = e.and_then(errors::client_error);
        if let Some(reason) = client_error {
            self.edge.metrics.client_error(reason);
        }
        let cut = upstream_error && ctx.upstream_answered;
        let code = match (client_error, cut) {
            (Some(ClientError::ClosedEarly), _) => errors::CLIENT_CLOSED,
            (_, true) => 502,
            _ => written.unwrap_or(0),
        };
        if let (true, Some(state), Some(i)) = (cut, &ctx.state, ctx.upstream) {
            state.upstreams.record_failure(i);
        }
        let failed = upstream_error || code >= 500 || ctx.failed_upstream;
        let upstream = ctx
            .upstream
            .take()
            .and_then(|i| ctx.state.as_ref()?.upstreams.get(i).cloned());
        match &upstream {
            Some(u) => {
                u.end_request();
                u.stats.requests.fetch_add(1, Ordering::Relaxed);
                if failed {
                    u.stats.errors.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(outcome) = ctx.affinity {
                    u.stats.keyed.fetch_add(1, Ordering::Relaxed);
                    if outcome == AffinityOutcome::Hit {
                        u.stats.affinity_hits.fetch_add(1, Ordering::Relaxed);
                    }
                }
                u.metrics.count_response(code);
                u.metrics
                    .duration
                    .observe(ctx.started.elapsed().as_secs_f64());
            }
            None => self.edge.metrics.count_unrouted(code),
        }
        if let Some(outcome) = ctx.affinity {
            self.edge.metrics.affinity_request(outcome);
            if outcome == AffinityOutcome::Moved {
                self.edge.metrics.cold_moves.inc();
            }
        }
        if let Some(state) = &ctx.state {
            let spec = &state.config.access_log;
            if crate::access_log::AccessLog::wants(spec) {
                let entry = access::entry(session, ctx, code, upstream.map(|u| u.id.clone()), spec);
                self.edge.access_log.send(entry, spec.format);
            }
        }
        if let Some(record) = &ctx.record {
            record.record(failed);
        }
    }
}
