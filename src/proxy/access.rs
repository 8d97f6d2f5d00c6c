//! The access log's entry for one request, from what its context gathered
//! (the log itself, and its writer, are [`crate::access_log`]).

use super::RequestCtx;
use crate::access_log::Entry;
use crate::config::model::{AccessLogFormat, AccessLogSpec};
use pingora_proxy::Session;
use std::sync::Arc;
use std::time::SystemTime;

pub fn entry(
    session: &Session,
    ctx: &RequestCtx,
    status: u16,
    upstream: Option<Arc<str>>,
    spec: &AccessLogSpec,
) -> Entry {
    let req = session.req_header();
    let header = |name: http::header::HeaderName| {
        (spec.format == AccessLogFormat::Combined)
            .then(|| req.headers.get(name))
            .flatten()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let target = match (spec.query, req.uri.path_and_query()) {
        (true, Some(pq)) => pq.as_str(),
        _ => req.uri.path(),
    };
    let downstream = session.as_downstream();
    Entry {
        at: SystemTime::now(),
        client: session.client_addr().and_then(|a| a.as_inet()).copied(),
        method: req.method.clone(),
        version: req.version,
        target: smallvec::SmallVec::from_slice(target.as_bytes()),
        status,
        upstream,
        session: ctx.session,
        affinity: ctx.seen.affinity,
        moved_reason: ctx.seen.moved_reason,
        attempts: ctx.attempts.made,
        bytes_in: downstream.body_bytes_read() as u64,
        bytes_out: downstream.body_bytes_sent() as u64,
        upstream_head: ctx.seen.upstream_head,
        first_event: ctx.seen.first_event,
        total: ctx.elapsed(),
        stream: ctx.seen.stream,
        usage: ctx.seen.usage,
        referer: header(http::header::REFERER),
        user_agent: header(http::header::USER_AGENT),
    }
}
