//! The answer a client gets when no upstream could: a status and a short
//! JSON body in the Anthropic error shape, so SDKs parse and retry it.

use super::sse::Protocol;
use crate::outcome::{ClientError, FailureCause};
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
        (ErrorSource::Upstream, _) if mid_response => FailureCause::Cut,
        (ErrorSource::Downstream, _) => FailureCause::BadRequest,
        (
            ErrorSource::Upstream,
            ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure
            | TLSHandshakeFailure | TLSHandshakeTimedout | InvalidCert | SocketError | BindError,
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
        504 => ("api_error", "relay-edge: upstream timed out"),
        _ => ("api_error", "relay-edge: internal error"),
    };
    format!(r#"{{"type":"error","error":{{"type":"{kind}","message":"{message}"}}}}"#)
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

pub async fn respond(session: &mut Session, e: &Error) -> FailToProxy {
    let code = status_for(e);
    if code > 0 {
        let body = Bytes::from(body_for(code));
        let written = async {
            let mut resp = ResponseHeader::build(code, Some(3))?;
            resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
            resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
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
