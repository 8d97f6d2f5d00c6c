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

use bytes::{Bytes, BytesMut};
use pingora_core::{Error, ErrorType, Result};
use pingora_proxy::Session;

/// Pingora's retry buffer size (`BODY_BUF_LIMIT`).
const RETRY_BUFFER: usize = 64 * 1024;
/// Above this header size, Pingora's header read may already hold the whole body.
const MAX_HEADER_FOR_EARLY_READ: usize = 16 * 1024;

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
pub async fn read_whole(session: &mut Session, limit: usize) -> Result<Option<Bytes>> {
    let req = session.req_header();
    let Some(length) = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
    else {
        return Ok(None);
    };
    if length == 0 || length > limit || req.headers.contains_key(http::header::TRANSFER_ENCODING) {
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
    if expects_continue {
        // Pingora would mark the connection close-after-response because the
        // body is still unread when the 100 goes out; it is about to be read.
        let downstream = session.as_downstream_mut();
        downstream.set_close_on_response_before_downstream_finish(false);
        let sent = downstream.write_continue_response().await;
        downstream.set_close_on_response_before_downstream_finish(true);
        sent?;
    }

    let mut body = BytesMut::with_capacity(length);
    while body.len() < length {
        if length - body.len() <= RETRY_BUFFER {
            session.as_downstream_mut().enable_retry_buffering();
        }
        match session.as_downstream_mut().read_request_body().await? {
            Some(chunk) => body.extend_from_slice(&chunk),
            None => break,
        }
    }
    if body.len() != length {
        return Error::e_explain(
            ErrorType::InvalidHTTPHeader,
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
    Ok(Some(body.freeze()))
}
