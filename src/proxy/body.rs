//! Reading a request body early, to find a session key in it, without
//! losing it.
//!
//! Pingora replays a body read before `upstream_peer` only from its 64 KiB
//! retry buffer. So the body is read here in full (it has a Content-Length
//! within the limit), and retry buffering is switched on only once at most
//! 64 KiB remain: the tail lands in the buffer whole, Pingora replays it
//! through `request_body_filter` (on every attempt, retries included), and
//! the proxy swaps the whole body in there. The upstream gets the client's
//! bytes unchanged.
//!
//! Bodies without a Content-Length (chunked), over the limit, or behind a
//! header block so large that the whole body could arrive with it, are not
//! read early: the key walk falls through to the next source.
//!
//! Memory is bounded: bodies read early hold, at once, at most
//! `limits.body_read_memory` bytes edge-wide ([`BodyBudget`], counted at
//! the declared length). A body that finds no room within a second is not
//! read early either: it falls through the same way and is forwarded
//! intact, never truncated. The buffer grows as bytes arrive (doubling, up
//! to the declared length), so a client that declares 32 MiB and stalls
//! holds what it sent, until [`super::pace`] cuts it.

use super::pace::{BodyPace, Cut};
use crate::budgets::{BodyBudget, BudgetHold};
use bytes::Bytes;
use pingora_core::{Error, ErrorType, Result};
use pingora_proxy::Session;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Pingora's retry buffer size (`BODY_BUF_LIMIT`).
const RETRY_BUFFER: usize = 64 * 1024;
/// Above this header size, Pingora's header read may already hold the whole body.
const MAX_HEADER_FOR_EARLY_READ: usize = 16 * 1024;
/// The first allocation for a body read early; it doubles from there.
const FIRST_CAPACITY: usize = 64 * 1024;
/// How long a body waits for room in the budget before it falls through.
const BUDGET_WAIT: Duration = Duration::from_secs(1);

/// What an early read may use.
pub struct EarlyRead<'a> {
    /// `affinity.max_body_bytes`.
    pub max_body: usize,
    pub budget: &'a Arc<BodyBudget>,
    /// `limits.body_read_memory`.
    pub budget_limit: usize,
    /// `timeouts.client_body` and `limits.min_body_rate`.
    pub pace: BodyPace,
}

/// A body read early, with its share of the budget (given back with it).
pub struct EarlyBody {
    pub bytes: Bytes,
    _hold: BudgetHold,
}

/// The error for a body with no byte for `timeouts.client_body` (as
/// Pingora's own read timeout gives it): 408, the client's fault.
fn gap_timeout() -> Box<Error> {
    Error::explain(
        ErrorType::ReadTimedout,
        "no request body byte for timeouts.client_body",
    )
    .into_down()
}

/// The error for a body that arrives too slowly: 408, the client's fault.
pub fn too_slow() -> Box<Error> {
    Error::explain(
        ErrorType::HTTPStatus(408),
        "request body below limits.min_body_rate",
    )
    .into_down()
}

/// Keep a copy of a body that fits Pingora's retry buffer, so that a retry
/// after a lost upstream connection can send it again. True if the request
/// can be sent again whole: it has no body, or its body is kept.
pub fn keep_for_retry(session: &mut Session) -> bool {
    let req = session.req_header();
    if req.headers.contains_key(http::header::TRANSFER_ENCODING) {
        return false;
    }
    let length = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    match length {
        0 => true,
        n if n <= RETRY_BUFFER => {
            session.as_downstream_mut().enable_retry_buffering();
            true
        }
        _ => false,
    }
}

/// Read the whole body if it can be replayed; `None` if it is not read.
pub async fn read_whole(
    session: &mut Session,
    mut with: EarlyRead<'_>,
) -> Result<Option<EarlyBody>> {
    let req = session.req_header();
    let Some(length) = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
    else {
        return Ok(None);
    };
    if length == 0
        || length > with.max_body
        || req.headers.contains_key(http::header::TRANSFER_ENCODING)
    {
        return Ok(None);
    }
    let header_size: usize = req.uri.to_string().len()
        + req
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if header_size > MAX_HEADER_FOR_EARLY_READ {
        return Ok(None);
    }
    let expects_continue = req
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let Some(hold) = with
        .budget
        .take(length, with.budget_limit, BUDGET_WAIT)
        .await
    else {
        log::debug!("no room to read a {length}-byte body for its key: it streams through");
        return Ok(None);
    };
    if expects_continue {
        // Pingora would mark the connection close-after-response because the
        // body is still unread when the 100 goes out; it is about to be read.
        let downstream = session.as_downstream_mut();
        downstream.set_close_on_response_before_downstream_finish(false);
        let sent = downstream.write_continue_response().await;
        downstream.set_close_on_response_before_downstream_finish(true);
        sent.map_err(|e| e.into_down())?;
    }

    let mut body: Vec<u8> = Vec::with_capacity(length.min(FIRST_CAPACITY));
    let mut last_read = Instant::now();
    while body.len() < length {
        if length - body.len() <= RETRY_BUFFER {
            session.as_downstream_mut().enable_retry_buffering();
        }
        let (by, cut) = with.pace.cut_at(last_read);
        let read = session.as_downstream_mut().read_request_body();
        let chunk = tokio::time::timeout_at(by.into(), read)
            .await
            .map_err(|_| match cut {
                Cut::Gap => gap_timeout(),
                Cut::TooSlow => too_slow(),
            })?
            .map_err(|e| e.into_down())?;
        last_read = Instant::now();
        let Some(chunk) = chunk else { break };
        if body.capacity() - body.len() < chunk.len() {
            let wanted = (body.capacity() * 2)
                .max(body.len() + chunk.len())
                .min(length);
            body.reserve_exact(wanted.saturating_sub(body.len()));
        }
        body.extend_from_slice(&chunk);
        if !with.pace.note(chunk.len(), Instant::now()) {
            return Err(too_slow());
        }
    }
    if body.len() != length {
        return Error::e_explain(
            ErrorType::ConnectionClosed,
            format!("request body ended after {} of {length} bytes", body.len()),
        )
        .map_err(|e| e.into_down());
    }
    if session.as_downstream().get_retry_buffer().is_none() {
        // Not reachable with the header-size guard above; refuse rather than hang.
        return Error::e_explain(
            ErrorType::HTTPStatus(503),
            "request body could not be buffered for replay",
        );
    }
    Ok(Some(EarlyBody {
        bytes: Bytes::from(body),
        _hold: hold,
    }))
}
