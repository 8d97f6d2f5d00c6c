//! The `ProxyHttp` implementation: a thin layer that hands each phase to
//! its module.
//!
//! - `early_request_filter`: the head is parsed: stop the head's deadline
//!   ([`crate::downstream::gate`]), refuse ambiguous framing ([`framing`])
//!   and bound the body's reads ([`pace`]).
//! - `request_filter`: find the tenant and the session key, namespaced by
//!   the tenant ([`crate::tenants`], [`crate::affinity::keys`]), and admit
//!   the request against the tenant's limits (a 429 otherwise),
//!   and read the body whole ([`body`]) when a JSON source needs it, when
//!   streams are held, or when a body too big for Pingora's retry buffer
//!   may have to be sent again. A streaming request (`"stream": true`) is
//!   then served here, by [`held`], and never reaches the phases below.
//! - `upstream_peer`: choose the upstream ([`route`]), take a slot there
//!   when it is capped ([`admission`]), and clone its peer.
//! - `fail_to_connect`, `error_while_proxy`: passive failure, then a retry
//!   as [`retry`] decides.
//!
//! Each attempt at a relay is an [`attempt::Attempt`], on this path and the
//! held one alike; the request's context is [`ctx::RequestCtx`].
//! - `upstream_request_filter`: `X-Forwarded-For`.
//! - `request_body_filter`: put back a body that was read early.
//! - `upstream_response_filter`: an answer with a retried status is left
//!   for another upstream (within [`crate::budgets::RetryBudget`]); failure-coded answers
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
//! Every request holds an [`InFlight`](crate::drain::InFlight) guard from its context's creation to
//! its end, so a drain waits for it whatever generation it runs on.

pub mod access;
pub mod admission;
pub mod attempt;
pub mod body;
pub mod ctx;
pub mod errors;
pub mod forwarded;
pub mod framing;
pub mod held;
pub mod hop;
pub mod pace;
pub mod retry;
pub mod route;
pub mod spill;
pub mod sse;
pub mod stream_request;
pub mod tenant_admission;

use crate::affinity::keys::HeadLookup;
use crate::clock;
use crate::outcome::{AbandonReason, AffinityOutcome, ClientError};
use crate::state::{Edge, State};
use async_trait::async_trait;
use bytes::Bytes;
pub use ctx::RequestCtx;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
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
}

/// Can the request be sent again whole? Its body is kept (or it has
/// none), and Pingora's retry buffer did not overflow.
fn replayable(session: &Session, ctx: &RequestCtx) -> bool {
    ctx.body.replayable && !session.as_ref().retry_buffer_truncated()
}

/// May the current attempt's answer be left for another upstream
/// ([`Attempts::may_abandon`](attempt::Attempts::may_abandon))? If so, leave it for `reason`.
fn abandon_if_allowed(
    edge: &Edge,
    session: &Session,
    ctx: &mut RequestCtx,
    state: &State,
    reason: AbandonReason,
) -> bool {
    let may = ctx.attempts.may_abandon(
        replayable(session, ctx),
        state,
        &edge.retry_budget,
        &edge.metrics,
        clock::now_ms(),
    );
    if may {
        let record = ctx.record.clone();
        ctx.attempts
            .abandon(state, record.as_deref(), reason, &edge.metrics);
    }
    may
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
    if let Some(outcome) = ctx.seen.affinity {
        response.insert_header(name, outcome.label())?;
    }
    Ok(())
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestCtx;

    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {
        // Pingora's default adds a response-compression module, disabled,
        // that still runs on every request. relay-edge never compresses.
    }

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(&self.edge)
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
        ctx.body.pace = Some(pace::BodyPace::new(
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
        let limits = &config.limits;
        let early = |pace: Option<pace::BodyPace>, keys_from: Option<usize>| body::EarlyRead {
            max_body: config.affinity.max_body_bytes,
            memory: body::Budget {
                budget: &self.edge.body_budget,
                limit: limits.body_read_memory,
            },
            memory_per_request: limits.body_memory_per_request,
            disk: body::Budget {
                budget: &self.edge.body_disk_budget,
                limit: limits.body_disk,
            },
            spill_dir: &limits.body_spill_dir,
            // A body that is not read early streams through on the same pace.
            pace: pace.unwrap_or_else(|| {
                pace::BodyPace::new(Instant::now(), config.timeouts.client_body, 0)
            }),
            scan: body::ScanFor {
                keys: &state.keys,
                keys_from,
                stream: config.streams.hold_first_event,
            },
        };
        let hasher = state.keys.hasher();
        ctx.tenant = crate::tenants::tenant_of(&config.tenants.from, hasher, session.req_header());
        let key = match state.keys.from_head(session.req_header()) {
            HeadLookup::Found(id) => Some(id),
            HeadLookup::Absent => None,
            HeadLookup::NeedBody { from } => {
                let read = early(ctx.body.pace.clone(), Some(from));
                ctx.body.early = body::read_whole(session, read).await?;
                let req = session.req_header();
                match ctx.body.early.as_ref() {
                    Some(early) => match &early.scanned {
                        Some(scanned) => state.keys.resume_with_values(req, &scanned.keys, from),
                        None if early.spilled() => state.keys.resume_with_body(req, None, from),
                        None => state.keys.resume_with_body(req, Some(&early.head), from),
                    },
                    None => state.keys.resume_with_body(req, None, from),
                }
            }
        };
        ctx.session = key.map(|id| hasher.namespaced(ctx.tenant, id));
        // A tenant's limits, once, before either path routes it.
        if let Err(refusal) = tenant_admission::admit(&self.edge, &state, ctx).await {
            errors::refuse(session, refusal).await;
            return Ok(true);
        }
        ctx.body.replayable = ctx.body.early.is_some() || body::keep_for_retry(session);
        let hold = config.streams.hold_first_event;
        if ctx.body.early.is_none()
            && (hold
                || !ctx.body.replayable && config.failover.may_retry_answers(config.max_retries))
        {
            // Read it whole, within the budget (as nginx buffers request
            // bodies by default): to see whether it asks for a stream, to be
            // held, and so that one too big for Pingora's retry buffer (a
            // Claude Code request is over 64 KiB) can be sent again when an
            // overloaded relay's answer is tried elsewhere.
            ctx.body.early = body::read_whole(session, early(ctx.body.pace.clone(), None)).await?;
            ctx.body.replayable |= ctx.body.early.is_some();
        }
        let wants_stream = ctx.body.early.as_ref().is_some_and(|b| match &b.scanned {
            Some(scanned) => scanned.stream,
            None => !b.spilled() && stream_request::wants_stream(&b.head),
        });
        if config.streams.hold_first_event && wants_stream {
            // Boxed: the futures of every request's `request_filter`
            // are as large as the largest path through it.
            Box::pin(held::serve(self, session, ctx)).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let state = ctx.state(&self.edge).clone();
        let now = clock::now_ms();
        ctx.attempts.made += 1;
        // Still holding an attempt: Pingora retries after a reused (pooled)
        // connection failed mid-request. The upstream is not at fault: try
        // it again on a fresh connection (not another pooled one, which may
        // be as dead) rather than move the session.
        if let Some(previous) = ctx.attempts.current.take() {
            if previous.upstream().is_usable(now) {
                let again = attempt::Attempt::again(previous);
                let peer = again.upstream().fresh_peer();
                ctx.attempts.current = Some(again);
                return Ok(peer);
            }
        }
        let (index, slot) =
            admission::route_and_admit(&self.edge, &state, session, ctx, now).await?;
        let attempt = ctx
            .attempts
            .begin(&state.upstreams, index, slot)
            .ok_or_else(route::no_upstream)?;
        Ok(attempt.upstream().peer())
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
        if let Some(attempt) = &ctx.attempts.current {
            attempt.connected(reused);
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
        let state = ctx.state(&self.edge).clone();
        let may_retry = ctx.attempts.connect_failed(&state, &e, &self.edge.metrics);
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
        if std::mem::take(&mut ctx.attempts.abandoning) {
            // Its answer was left in `upstream_response_filter`.
            e.set_retry(true);
            return e;
        }
        let facts = retry::Attempt {
            responded: session.response_written().is_some(),
            replayable: replayable(session, ctx),
            idempotent: session.req_header().method.is_idempotent(),
            reused: client_reused,
            fresh_retried: ctx.attempts.fresh_retried,
        };
        let state = ctx.state(&self.edge).clone();
        let again = ctx
            .attempts
            .after_send(&state, &e, facts, &self.edge.metrics);
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
        if let Some(whole) = &ctx.body.early {
            if end_of_stream && body.is_some() {
                *body = Some(whole.whole().await?);
                ctx.body.sent = true;
            }
            return Ok(());
        }
        // A body that streams through: held to its pace.
        if let (Some(pace), Some(chunk)) = (&mut ctx.body.pace, body.as_ref()) {
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
        if ctx.body.early.is_some() {
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
        let Some(state) = ctx.state.clone() else {
            return Ok(());
        };
        if ctx.attempts.current.is_none() {
            return Ok(());
        }
        if self.edge.drain.is_draining() {
            // Heads written after the drain began close their connection too.
            session.set_keepalive(None);
        }
        let code = upstream_response.status.as_u16();
        if state.config.failover.retry_on_status.contains(&code)
            && abandon_if_allowed(&self.edge, session, ctx, &state, AbandonReason::Status)
        {
            return Error::e_explain(
                ErrorType::HTTPStatus(code),
                "the upstream's answer is tried on another upstream",
            )
            .map_err(|e| e.into_up());
        }
        ctx.seen.answered = true;
        ctx.seen.upstream_head = Some(ctx.elapsed());
        let content_type = upstream_response
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.as_bytes());
        ctx.seen.sse = content_type.is_some_and(|t| t.starts_with(b"text/event-stream"));
        let json = content_type.is_some_and(|t| t.starts_with(b"application/json"));
        // Token usage comes in answers to Messages calls, which are POSTs.
        if json && code == 200 && session.req_header().method == http::Method::POST {
            ctx.seen.json_tail = Some(sse::JsonTail::default());
        }
        if ctx.body.sent {
            // Nothing is retried once the upstream answered: an SSE stream
            // need not hold its request body (or the budget) for minutes.
            ctx.body.early = None;
        }
        if let Some(attempt) = &ctx.attempts.current {
            if attempt.answered(&state.upstreams, code) {
                ctx.seen.failed_upstream = true;
            }
        }
        ctx.answer_kept();
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
        let elapsed = ctx.elapsed();
        let seen = &mut ctx.seen;
        if seen.sse && seen.first_event.is_none() && body.as_ref().is_some_and(|b| !b.is_empty()) {
            seen.first_event = Some(elapsed);
        }
        if let Some(tail) = &mut seen.json_tail {
            if let Some(chunk) = body {
                tail.feed(chunk);
            }
            if end_of_stream {
                if let Some(usage) = seen.json_tail.take().and_then(|t| t.usage()) {
                    ctx.count_usage(usage);
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
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let mid_response = session.response_written().is_some();
        if let Some(cause) = errors::cause(e, mid_response) {
            self.edge.metrics.client_failure(cause);
        }
        errors::respond(session, e, ctx.seen.retry_after).await
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let written = session.response_written().map(|r| r.status.as_u16());
        // A client that went away or misbehaved is not an upstream error.
        let upstream_error = e.is_some_and(|e| e.esource() == &ErrorSource::Upstream);
        let client_error = e.and_then(errors::client_error);
        if let Some(reason) = client_error {
            self.edge.metrics.client_error(reason);
        }
        let cut = upstream_error && ctx.seen.answered;
        let code = match (client_error, cut) {
            (Some(ClientError::ClosedEarly), _) => errors::CLIENT_CLOSED,
            (_, true) => 502,
            _ => written.unwrap_or(0),
        };
        let failed = upstream_error || code >= 500 || ctx.seen.failed_upstream;
        let attempt = ctx.attempts.current.take();
        let upstream = attempt.as_ref().map(|a| a.upstream().id.clone());
        match attempt {
            Some(attempt) => {
                if let (true, Some(state)) = (cut, &ctx.state) {
                    attempt.cut(&state.upstreams);
                }
                attempt.finish(code, failed, ctx.seen.affinity, ctx.elapsed());
            }
            None => self.edge.metrics.count_unrouted(code),
        }
        if let Some(outcome) = ctx.seen.affinity {
            if let (AffinityOutcome::New, Some(active)) = (outcome, &ctx.tenant_hold.active) {
                active.session_created();
            }
            self.edge.metrics.affinity_request(outcome);
            if outcome == AffinityOutcome::Moved {
                self.edge.metrics.cold_moves.inc();
            }
        }
        if let Some(state) = &ctx.state {
            let spec = &state.config.access_log;
            if crate::access_log::AccessLog::wants(spec) {
                let entry = access::entry(session, ctx, code, upstream, spec);
                self.edge.access_log.send(entry, spec.format);
            }
        }
        if let Some(record) = &ctx.record {
            record.record(failed);
        }
    }
}
