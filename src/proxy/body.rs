//! Reading a request body early, to find a session key in it, without
//! losing it.
//!
//! Pingora replays a body read before `upstream_peer` only from its 64 KiB
//! retry buffer. So the body is read here in full (it has a Content-Length
//! within the limit), and the retry buffer gets only the body's last byte
//! (all of a body that fits in it, which may come with the head): Pingora
//! replays that through `request_body_filter` (on every attempt, retries
//! included), and the proxy swaps the whole body in there. The upstream
//! gets the client's bytes unchanged. Pingora keeps the retry buffer for
//! as long as the request lasts, minutes for a stream: reading the last
//! byte alone costs a read, and saves a copy of up to 64 KiB per request.
//!
//! Bodies without a Content-Length (chunked), over the limit, or behind a
//! header block so large that the whole body could arrive with it, are not
//! read early: the key walk falls through to the next source.
//!
//! Memory is bounded: a body read early keeps at most
//! `limits.body_memory_per_request` bytes in memory and the rest in an
//! unlinked temporary file ([`super::spill`]), as nginx does. Bodies read
//! early hold, at once, at most `limits.body_read_memory` bytes of memory
//! and `limits.body_disk` bytes of disk edge-wide ([`BodyBudget`], each
//! counted at the declared length). A body that finds no room within a
//! second is not read early: it falls through the same way and is
//! forwarded intact, never truncated. The in-memory buffer is allocated
//! once, at its share (the declared length, up to
//! `limits.body_memory_per_request`): its pages are resident only once
//! written, so a client that declares 32 MiB and stalls holds what it sent
//! of its share, until [`super::pace`] cuts it, and a body is never copied
//! from a buffer it outgrew.
//!
//! A body that spills is scanned for its key (and its `"stream": true`) as
//! it arrives ([`StreamScan`]), so the file is never read back for it; one
//! that stays in memory is scanned whole afterwards, by the faster
//! `json_scan::find`. On Pingora's path the whole body is put back
//! together for each attempt ([`EarlyBody::whole`]); the held path sends it
//! from memory and file in [`spill::SEND_CHUNK`] pieces ([`EarlyBody::write_to`]).

use super::pace::{BodyPace, Cut};
use super::spill::{self, Spill};
use crate::affinity::json_scan::stream::StreamScan;
use crate::affinity::keys::KeyChain;
use crate::budgets::{BodyBudget, BudgetHold};
use crate::downstream::gate;
use bytes::Bytes;
use pingora_core::protocols::http::v1::client::HttpSession as UpstreamSession;
use pingora_core::{Error, ErrorType, Result};
use pingora_proxy::Session;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Pingora's retry buffer size (`BODY_BUF_LIMIT`).
const RETRY_BUFFER: usize = 64 * 1024;
/// Above this header size, Pingora's header read may already hold the whole body.
const MAX_HEADER_FOR_EARLY_READ: usize = 16 * 1024;
/// How long a body waits for room in the budget before it falls through.
const BUDGET_WAIT: Duration = Duration::from_secs(1);
/// A JSON value in a spilled body longer than this is no key (it would be
/// held in memory whole).
const MAX_SPILLED_VALUE: usize = 64 * 1024;

/// An edge-wide budget and its limit.
pub struct Budget<'a> {
    pub budget: &'a Arc<BodyBudget>,
    pub limit: usize,
}

/// What an early read may use.
pub struct EarlyRead<'a> {
    /// `affinity.max_body_bytes`.
    pub max_body: usize,
    /// `limits.body_read_memory`.
    pub memory: Budget<'a>,
    /// `limits.body_memory_per_request`.
    pub memory_per_request: usize,
    /// `limits.body_disk`, in `limits.body_spill_dir`.
    pub disk: Budget<'a>,
    pub spill_dir: &'a Path,
    /// `timeouts.client_body` and `limits.min_body_rate`.
    pub pace: BodyPace,
    /// What a body that spills is scanned for as it arrives.
    pub scan: ScanFor<'a>,
}

/// The values a spilled body is scanned for: the JSON key sources from
/// `keys_from` on, and `/stream` when streams are held.
pub struct ScanFor<'a> {
    pub keys: &'a KeyChain,
    pub keys_from: Option<usize>,
    pub stream: bool,
}

/// What the scan of a spilled body found.
pub struct Scanned {
    /// The values at the key sources' pointers, from `keys_from` on.
    pub keys: Vec<Option<String>>,
    /// `"stream": true` at the top level.
    pub stream: bool,
}

/// A body read early, with its shares of the budgets (given back with it).
pub struct EarlyBody {
    /// The first `limits.body_memory_per_request` bytes; all of them when
    /// nothing spilled.
    pub head: Bytes,
    /// The rest, on disk.
    spill: Option<spill::Shared>,
    /// What was found as a spilled body arrived (`None`: it did not spill).
    pub scanned: Option<Scanned>,
    _hold: BudgetHold,
}

/// How a body of `length` bytes is held: `(in memory, on disk)`, or `None`
/// if it cannot be read early (over the memory share, with no disk).
pub fn split(
    length: usize,
    memory_per_request: usize,
    disk_limit: usize,
) -> Option<(usize, usize)> {
    if length <= memory_per_request {
        return Some((length, 0));
    }
    (disk_limit > 0).then(|| (memory_per_request, length - memory_per_request))
}

impl EarlyBody {
    pub fn len(&self) -> usize {
        self.head.len() + self.spill.as_ref().map_or(0, |s| s.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether part of the body is on disk.
    pub fn spilled(&self) -> bool {
        self.spill.is_some()
    }

    /// The whole body in one buffer, for Pingora's path (which sends one
    /// buffer in place of the replayed tail). A spilled body is read back
    /// for each attempt: it takes its length in memory until it is sent.
    pub async fn whole(&self) -> Result<Bytes> {
        let Some(spill) = &self.spill else {
            return Ok(self.head.clone());
        };
        let mut rest = spill::read(spill, 0, spill.len()).await?;
        let mut whole = Vec::with_capacity(self.head.len() + rest.len());
        whole.extend_from_slice(&self.head);
        whole.append(&mut rest);
        Ok(Bytes::from(whole))
    }

    /// Write the whole body to a relay (the held path): memory first, then
    /// the file in [`spill::SEND_CHUNK`] pieces, one read ahead of none.
    pub async fn write_to(&self, up: &mut UpstreamSession) -> Result<()> {
        up.write_body(&self.head).await.map_err(|e| e.into_up())?;
        if let Some(spill) = &self.spill {
            let mut at = 0;
            while at < spill.len() {
                let n = spill::SEND_CHUNK.min(spill.len() - at);
                let chunk = spill::read(spill, at, n).await?;
                up.write_body(&Bytes::from(chunk))
                    .await
                    .map_err(|e| e.into_up())?;
                at += n;
            }
        }
        Ok(())
    }
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

/// The shares of the budgets a body of `length` takes, or `None` (it falls
/// through).
async fn take_room(
    with: &EarlyRead<'_>,
    length: usize,
) -> Option<(BudgetHold, Option<BudgetHold>)> {
    let (memory, disk) = split(length, with.memory_per_request, with.disk.limit)?;
    let disk = match disk {
        0 => None,
        n => Some(
            with.disk
                .budget
                .take(n, with.disk.limit, BUDGET_WAIT)
                .await?,
        ),
    };
    let memory = with
        .memory
        .budget
        .take(memory, with.memory.limit, BUDGET_WAIT)
        .await?;
    Some((memory, disk))
}

/// Where the bytes of a body being read go.
struct Sink {
    head: Vec<u8>,
    head_max: usize,
    spill: Option<Spill>,
    scan: Option<StreamScan>,
}

impl Sink {
    async fn put(&mut self, mut chunk: Bytes) -> Result<()> {
        if let Some(scan) = &mut self.scan {
            scan.feed(&chunk);
        }
        let room = self.head_max - self.head.len();
        if room > 0 {
            // Within the capacity allocated at the start: no copy.
            let now = chunk.split_to(room.min(chunk.len()));
            self.head.extend_from_slice(&now);
        }
        if !chunk.is_empty() {
            let Some(spill) = self.spill.take() else {
                return Error::e_explain(ErrorType::InternalError, "a body outgrew its share");
            };
            self.spill = Some(spill.append(chunk).await?);
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.head.len() + self.spill.as_ref().map_or(0, Spill::len)
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
    let Some((hold, disk)) = take_room(&with, length).await else {
        log::debug!("no room to read a {length}-byte body for its key: it streams through");
        return Ok(None);
    };
    let head_max = with.memory_per_request.min(length);
    let mut sink = Sink {
        // Its whole share at once: pages are resident only once written.
        head: Vec::with_capacity(head_max),
        head_max,
        spill: None,
        scan: None,
    };
    if let Some(disk) = disk {
        match Spill::create(with.spill_dir, disk).await {
            Ok(spill) => sink.spill = Some(spill),
            Err(e) => {
                log::warn!("a {length}-byte body streams through unread: {e}");
                return Ok(None);
            }
        }
        let mut pointers = with
            .scan
            .keys_from
            .map(|from| with.scan.keys.body_pointers(from))
            .unwrap_or_default();
        if with.scan.stream {
            pointers.push(vec!["stream".to_string()]);
        }
        if !pointers.is_empty() {
            sink.scan = StreamScan::new(pointers, MAX_SPILLED_VALUE);
        }
    }
    if expects_continue {
        // Pingora would mark the connection close-after-response because the
        // body is still unread when the 100 goes out; it is about to be read.
        let downstream = session.as_downstream_mut();
        downstream.set_close_on_response_before_downstream_finish(false);
        let sent = downstream.write_continue_response().await;
        downstream.set_close_on_response_before_downstream_finish(true);
        sent.map_err(|e| e.into_down())?;
    }

    let mut last_read = Instant::now();
    let mut buffering = false;
    let gated = gate::limit_reads(session.as_downstream().stream(), None);
    while sink.len() < length {
        // Pingora needs a retry buffer that is not empty, and the proxy
        // sends the whole body in its place: it gets as few bytes as can
        // be. The first read may come whole from what arrived with the
        // head, so a body that fits is buffered from its start; a longer
        // one is read to one byte short of its end, and that byte is read
        // alone, into the buffer. On a connection whose reads cannot be
        // limited (none the edge serves today) the buffer takes the tail.
        let left = length - sink.len();
        let tail_whole = left <= RETRY_BUFFER && (sink.len() == 0 || !gated);
        if !buffering && (left == 1 || tail_whole) {
            session.as_downstream_mut().enable_retry_buffering();
            buffering = true;
        }
        let at_most = if buffering {
            None
        } else {
            NonZeroUsize::new(left - 1)
        };
        gate::limit_reads(session.as_downstream().stream(), at_most);
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
        let n = chunk.len();
        sink.put(chunk).await?;
        if !with.pace.note(n, Instant::now()) {
            return Err(too_slow());
        }
    }
    gate::limit_reads(session.as_downstream().stream(), None);
    if sink.len() != length {
        return Error::e_explain(
            ErrorType::ConnectionClosed,
            format!("request body ended after {} of {length} bytes", sink.len()),
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
    let Sink {
        head,
        head_max: _,
        spill,
        scan,
    } = sink;
    let scanned = scan.map(|scan| {
        let mut keys = scan.finish();
        let stream = with.scan.stream && keys.pop().flatten().as_deref() == Some("true");
        Scanned { keys, stream }
    });
    Ok(Some(EarlyBody {
        head: Bytes::from(head),
        spill: spill.map(Arc::new),
        scanned,
        _hold: hold,
    }))
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn a_body_is_split_between_memory_and_disk() {
        const MIB: usize = 1 << 20;
        // (length, memory per request, disk limit) -> (memory, disk)
        type Case = (usize, usize, usize, Option<(usize, usize)>);
        let cases: &[Case] = &[
            (1000, MIB, 4 << 30, Some((1000, 0))),
            (MIB, MIB, 4 << 30, Some((MIB, 0))),
            (MIB + 1, MIB, 4 << 30, Some((MIB, 1))),
            (32 * MIB, MIB, 4 << 30, Some((MIB, 31 * MIB))),
            (
                4 * MIB,
                64 * 1024,
                4 << 30,
                Some((64 * 1024, 4 * MIB - 64 * 1024)),
            ),
            // No disk: what fits stays in memory, the rest is not read early.
            (1000, MIB, 0, Some((1000, 0))),
            (MIB + 1, MIB, 0, None),
        ];
        for &(length, per_request, disk, want) in cases {
            assert_eq!(
                split(length, per_request, disk),
                want,
                "{length} {per_request} {disk}"
            );
        }
    }
}
