//! The answer a client gets when no upstream could: a status and a short
//! JSON body in the Anthropic error shape, so SDKs parse and retry it.

use super::sse::Protocol;
use crate::outcome::{ClientError, FailureCause};
use crate::tenants::limits::Refusal;
use bytes::Bytes;
use pingora_core::{Error, ErrorSource, ErrorType};
use pingora_http::ResponseHeader;
use pingora_proxy::{FailToProxy, Session};

/// nginx's code for a client that closed its connection before the answer.
pub const CLIENT_CLOSED: u16 = 499;

/// The client's part in `e`, if it was the client's doing.
pub fn client_error(e: &Error) -> Option<ClientError> {
    use ErrorType::*;
    if e.esource() != &ErrorSource::Downstream {
        return None;
    }
    Some(match e.etype() {
        ConnectionClosed | ReadError | WriteError => ClientError::ClosedEarly,
        ReadTimedout => ClientError::BodyTimeout,
        HTTPStatus(408) => ClientError::BodyTooSlow,
        _ => ClientError::Malformed,
    })
}

/// The status for an error: its own HTTP status, 502 for an upstream
/// failure, 0 (nothing to send) for a client that is gone.
pub fn status_for(e: &Error) -> u16 {
    match e.etype() {
        ErrorType::HTTPStatus(code) => *code,
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
            if e.esource() == &ErrorSource::Upstream =>
        {
            504
        }
        ErrorType::ReadTimedout if e.esource() == &ErrorSource::Downstream => 408,
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

/// Why the client gets `e`, or `None` when it is gone and sees nothing.
/// `mid_response`: the response head had already been sent.
pub fn cause(e: &Error, mid_response: bool) -> Option<FailureCause> {
    use ErrorType::*;
    let cause = match (e.esource(), e.etype()) {
        (ErrorSource::Downstream, WriteError | ReadError | ConnectionClosed) => return None,
        (_, HTTPStatus(503)) => FailureCause::NoUpstream,
        // The edge's own 529 (a relay's 529 is the relay's answer).
        (ErrorSource::Unset | ErrorSource::Internal, HTTPStatus(529)) => FailureCause::Capacity,
        (ErrorSource::Upstream, _) if mid_response => FailureCause::Cut,
        (ErrorSource::Downstream, _) => FailureCause::BadRequest,
        (ErrorSource::Upstream, ConnectProxyFailure) => FailureCause::Proxy,
        (
            ErrorSource::Upstream,
            ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError | TLSHandshakeFailure
            | TLSHandshakeTimedout | InvalidCert | SocketError | BindError,
        ) => FailureCause::Connect,
        (ErrorSource::Upstream, ReadTimedout | WriteTimedout) => FailureCause::Timeout,
        (ErrorSource::Upstream, ConnectionClosed | ReadError | WriteError) => {
            FailureCause::ConnectionLost
        }
        (ErrorSource::Upstream, _) => FailureCause::BadUpstreamResponse,
        _ => FailureCause::Internal,
    };
    Some(cause)
}

pub fn body_for(code: u16) -> String {
    let (kind, message) = match code {
        429 => ("rate_limit_error", "relay-edge: rate limited"),
        400 => ("invalid_request_error", "relay-edge: malformed request"),
        408 => (
            "invalid_request_error",
            "relay-edge: the request did not arrive in time",
        ),
        414 => (
            "invalid_request_error",
            "relay-edge: request target too long",
        ),
        431 => (
            "invalid_request_error",
            "relay-edge: request header fields too large",
        ),
        502 => ("api_error", "relay-edge: upstream failed"),
        503 => ("overloaded_error", "relay-edge: no healthy upstream"),
        529 => (
            "overloaded_error",
            "relay-edge: the relay is at its capacity; retry later",
        ),
        504 => ("api_error", "relay-edge: upstream timed out"),
        _ => ("api_error", "relay-edge: internal error"),
    };
    body_with(kind, message)
}

/// An Anthropic error body (`message` is the edge's own text: no quoting).
pub fn body_with(kind: &str, message: &str) -> String {
    format!(r#"{{"type":"error","error":{{"type":"{kind}","message":"{message}"}}}}"#)
}

/// Refuse a tenant's request ([`super::tenant_admission`]): 429 with
/// `Retry-After` and a `rate_limit_error` body, which the SDKs and Claude
/// Code retry after that wait. The connection is not kept: the request's
/// body may be unread.
pub async fn refuse(session: &mut Session, refusal: Refusal) {
    let body = Bytes::from(body_with("rate_limit_error", refusal.reason.message()));
    session.set_keepalive(None);
    let written = async {
        let mut resp = ResponseHeader::build(429, Some(4))?;
        resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
        resp.insert_header(http::header::RETRY_AFTER, refusal.retry_after.max(1))?;
        session
            .as_downstream_mut()
            .write_error_response(resp, body)
            .await
    };
    if let Err(err) = written.await {
        log::debug!("could not send the 429: {err}");
    }
}

/// The error that ends a stream the edge had to cut, in the stream's own
/// protocol: OpenAI Responses' `error` event, a Chat Completions `error`
/// chunk, else Anthropic's `event: error`.
pub fn sse_error_event_in(protocol: Protocol, kind: &str, message: &str) -> String {
    match protocol {
        Protocol::OpenAiResponses => format!(
            "event: error\ndata: {{\"type\":\"error\",\"code\":\"{kind}\",\"message\":\"{message}\"}}\n\n"
        ),
        Protocol::OpenAiChat => format!(
            "data: {{\"error\":{{\"type\":\"{kind}\",\"message\":\"{message}\"}}}}\n\n"
        ),
        Protocol::Anthropic | Protocol::Unknown => sse_error_event(kind, message),
    }
}

/// An Anthropic `event: error` that ends a stream the edge had to cut.
pub fn sse_error_event(kind: &str, message: &str) -> String {
    format!(
        "event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"{kind}\",\"message\":\"{message}\"}}}}\n\n"
    )
}

/// Answer `e` with its status and body; `retry_after` (seconds) for a
/// refusal the client should retry later (529, 429).
pub async fn respond(session: &mut Session, e: &Error, retry_after: Option<u64>) -> FailToProxy {
    let code = status_for(e);
    if code > 0 {
        let body = Bytes::from(body_for(code));
        let written = async {
            let mut resp = ResponseHeader::build(code, Some(4))?;
            resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
            resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
            if let Some(seconds) = retry_after {
                resp.insert_header(http::header::RETRY_AFTER, seconds)?;
            }
            session
                .as_downstream_mut()
                .write_error_response(resp, body)
                .await
        };
        if let Err(err) = written.await {
            log::debug!("could not send error response: {err}");
        }
    }
    FailToProxy {
        error_code: code,
        can_reuse_downstream: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorSource::{Downstream as Client, Internal, Upstream as Relay};
    use ErrorType::*;

    fn error(source: ErrorSource, etype: ErrorType) -> Box<Error> {
        let mut e = Error::new(etype);
        e.esource = source;
        e
    }

    /// Each error: the status the client gets, why (the failure cause,
    /// before and after the response head went out), and whether it was
    /// the client's doing.
    #[test]
    fn each_error_has_its_status_cause_and_client_reason() {
        use ClientError as C;
        use FailureCause as F;
        #[rustfmt::skip]
        type Row = (ErrorSource, ErrorType, u16, Option<F>, Option<F>, Option<C>);
        let cases: &[Row] = &[
            // The client went away: nothing to send, nothing to blame.
            (
                Client,
                ConnectionClosed,
                0,
                None,
                None,
                Some(C::ClosedEarly),
            ),
            (Client, ReadError, 0, None, None, Some(C::ClosedEarly)),
            (Client, WriteError, 0, None, None, Some(C::ClosedEarly)),
            // The client was too slow, or sent what cannot be served.
            (
                Client,
                ReadTimedout,
                408,
                Some(F::BadRequest),
                Some(F::BadRequest),
                Some(C::BodyTimeout),
            ),
            (
                Client,
                HTTPStatus(408),
                408,
                Some(F::BadRequest),
                Some(F::BadRequest),
                Some(C::BodyTooSlow),
            ),
            (
                Client,
                InvalidHTTPHeader,
                400,
                Some(F::BadRequest),
                Some(F::BadRequest),
                Some(C::Malformed),
            ),
            (
                Client,
                HTTPStatus(400),
                400,
                Some(F::BadRequest),
                Some(F::BadRequest),
                Some(C::Malformed),
            ),
            // No relay could take it.
            (
                Relay,
                HTTPStatus(503),
                503,
                Some(F::NoUpstream),
                Some(F::NoUpstream),
                None,
            ),
            (
                Internal,
                HTTPStatus(503),
                503,
                Some(F::NoUpstream),
                Some(F::NoUpstream),
                None,
            ),
            // The relay failed: before its head, by kind; after it, a cut.
            (
                Relay,
                ConnectRefused,
                502,
                Some(F::Connect),
                Some(F::Cut),
                None,
            ),
            (
                Relay,
                ConnectProxyFailure,
                502,
                Some(F::Proxy),
                Some(F::Cut),
                None,
            ),
            (
                Relay,
                ConnectTimedout,
                504,
                Some(F::Connect),
                Some(F::Cut),
                None,
            ),
            (
                Relay,
                TLSHandshakeFailure,
                502,
                Some(F::Connect),
                Some(F::Cut),
                None,
            ),
            (
                Relay,
                ReadTimedout,
                504,
                Some(F::Timeout),
                Some(F::Cut),
                None,
            ),
            (
                Relay,
                WriteTimedout,
                504,
                Some(F::Timeout),
                Some(F::Cut),
                None,
            ),
            (
                Relay,
                ConnectionClosed,
                502,
                Some(F::ConnectionLost),
                Some(F::Cut),
                None,
            ),
            (
                Relay,
                ReadError,
                502,
                Some(F::ConnectionLost),
                Some(F::Cut),
                None,
            ),
            (
                Relay,
                InvalidHTTPHeader,
                502,
                Some(F::BadUpstreamResponse),
                Some(F::Cut),
                None,
            ),
            (
                Relay,
                HTTPStatus(529),
                529,
                Some(F::BadUpstreamResponse),
                Some(F::Cut),
                None,
            ),
            // A capped relay's queue refused it: the edge's own 529.
            (
                ErrorSource::Unset,
                HTTPStatus(529),
                529,
                Some(F::Capacity),
                Some(F::Capacity),
                None,
            ),
            // Our own fault.
            (
                Internal,
                InternalError,
                500,
                Some(F::Internal),
                Some(F::Internal),
                None,
            ),
            (
                ErrorSource::Unset,
                UnknownError,
                500,
                Some(F::Internal),
                Some(F::Internal),
                None,
            ),
        ];
        for (source, etype, status, before, after, client) in cases {
            let e = error(source.clone(), etype.clone());
            let case = format!("{source:?} {etype:?}");
            assert_eq!(status_for(&e), *status, "status of {case}");
            assert_eq!(cause(&e, false), *before, "cause of {case} before the head");
            assert_eq!(cause(&e, true), *after, "cause of {case} after the head");
            assert_eq!(client_error(&e), *client, "client part of {case}");
        }
    }

    /// Every status the edge sends has an Anthropic error body whose type
    /// the SDKs retry or report as the right kind.
    #[test]
    fn each_status_has_an_anthropic_error_body() {
        let cases = [
            (400, "invalid_request_error"),
            (408, "invalid_request_error"),
            (414, "invalid_request_error"),
            (431, "invalid_request_error"),
            (429, "rate_limit_error"),
            (502, "api_error"),
            (503, "overloaded_error"),
            (504, "api_error"),
            (500, "api_error"),
            (418, "api_error"),
        ];
        for (code, kind) in cases {
            let body: serde_json::Value =
                serde_json::from_str(&body_for(code)).expect("the body is JSON");
            assert_eq!(body["type"], "error", "{code}");
            assert_eq!(body["error"]["type"], kind, "{code}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("relay-edge: ")),
                "{code}"
            );
        }
    }
}
