//! The client connection as Pingora reads it, with the head's limits in
//! front: a wrapper around the accepted stream that watches the bytes of
//! each request head as Pingora reads them ([`HeadScan`]) and, when the
//! head is too slow or too large, answers 408, 414 or 431 itself and ends
//! the read. Everything else passes straight through.
//!
//! It watches from the connection's start (its first head must arrive
//! within `timeouts.client_header` of the accept) and again after each
//! response (the next head's deadline starts at its first byte; the idle
//! wait before it is `timeouts.client_idle`, which Pingora enforces). It
//! stops watching when Pingora has the head: when the proxy's first hook
//! runs ([`stop_watching`]), or as soon as the head's end went by.
//!
//! Connections the workers accept themselves come without Pingora's L4
//! buffers (only its listeners can set them). For those the gate keeps a
//! small write buffer in their place, of Pingora's size and with its
//! semantics: writes gather until a flush or until it is full, so that a
//! response head and a short body leave in one segment. The held path
//! gathers more, across Pingora's flushes ([`gather`]): a stream's head,
//! what is already read of it, and its end if it came, in one write.
//!
//! Between two requests the connection waits outside Pingora
//! ([`super::idle`]): the gate reads the next request's first bytes itself
//! ([`GatedStream::poll_read_ahead`]) and hands them to Pingora's next read,
//! before the head's scan sees them.

use super::head::{HeadScan, Verdict};
use crate::metrics::Metrics;
use crate::outcome::ClientError;
use async_trait::async_trait;
use bytes::{Buf, Bytes};
use pingora_core::protocols::{
    tls::TlsRef, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest,
    Ssl, Stream, TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The limits one head is held to.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub max_head: usize,
    pub max_uri: usize,
    pub deadline: Duration,
}

#[derive(Debug)]
enum Phase {
    /// Watching a head; `timed`: its deadline is running (from the accept,
    /// or from its first byte).
    Watching { scan: HeadScan, timed: bool },
    /// Passing bytes through.
    Through,
    /// Writing our answer; then every read ends.
    Answering { answer: Vec<u8>, written: usize },
    /// Answered (or failed to): reads end.
    Ended,
}

pub struct GatedStream {
    inner: Stream,
    phase: Phase,
    /// The head's deadline, one timer per connection, reset for each head.
    deadline: Pin<Box<Sleep>>,
    limits: HeadLimits,
    /// Set by the proxy once Pingora has parsed the head.
    head_parsed: AtomicBool,
    /// The most one read may bring (0: what the reader has room for); set
    /// by the proxy while it reads a body early ([`limit_reads`]).
    read_limit: AtomicUsize,
    metrics: Arc<Metrics>,
    /// Bytes not yet passed on: at most `out_cap` (0: none), or GATHER_MAX.
    out: Vec<u8>,
    out_cap: usize,
    /// A [`Gather`], set by the held path.
    gather: AtomicU8,
    /// Bytes read ahead while the connection waited for its next request,
    /// given to the next reads before anything else.
    ahead: Bytes,
}

/// The most one read ahead takes: Pingora's first read of a head
/// (`INIT_HEADER_BUF_SIZE`) takes as much.
const READ_AHEAD: usize = 4096;

/// The most the gate gathers (a stream's head, its first 64 KiB read and
/// their chunk framing fit); past it, what is gathered is passed on first.
const GATHER_MAX: usize = 72 * 1024;

/// Whether writes gather past the write buffer's size, and what a flush
/// does meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Gather {
    /// Pingora's semantics (the buffer's size; a flush passes all on).
    Off = 0,
    /// Writes gather, and flushes are held.
    Holding = 1,
    /// Writes gather; the next flush passes all on, and gathering ends.
    UntilFlush = 2,
}

impl std::fmt::Debug for GatedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatedStream")
            .field("inner", &self.inner)
            .finish()
    }
}

impl GatedStream {
    /// A new connection: its first head is due `limits.deadline` from now.
    /// `write_buffer`: the bytes of small writes to gather (0: none).
    pub fn new(
        inner: Stream,
        limits: HeadLimits,
        metrics: Arc<Metrics>,
        write_buffer: usize,
    ) -> GatedStream {
        GatedStream {
            inner,
            phase: Phase::Watching {
                scan: HeadScan::new(limits.max_head, limits.max_uri),
                timed: true,
            },
            deadline: Box::pin(tokio::time::sleep(limits.deadline)),
            limits,
            head_parsed: AtomicBool::new(false),
            read_limit: AtomicUsize::new(0),
            metrics,
            out: Vec::new(),
            out_cap: write_buffer,
            gather: AtomicU8::new(Gather::Off as u8),
            ahead: Bytes::new(),
        }
    }

    /// Wait for the client's next bytes and read them ahead, into memory of
    /// their size, for the next read to take: a connection waits for its
    /// next request holding no buffer. `Ready(Ok(0))`: the client closed.
    pub fn poll_read_ahead(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if !self.ahead.is_empty() {
            return Poll::Ready(Ok(self.ahead.len()));
        }
        // On the stack, only for this poll.
        let mut space = [MaybeUninit::<u8>::uninit(); READ_AHEAD];
        let mut read = ReadBuf::uninit(&mut space);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut read))?;
        self.ahead = Bytes::copy_from_slice(read.filled());
        Poll::Ready(Ok(self.ahead.len()))
    }

    /// The connection is idle: give back the write buffer (it is empty
    /// after a response; the next response takes one again).
    pub fn release_buffers(&mut self) {
        if self.out.is_empty() {
            self.out = Vec::new();
        }
    }

    /// Pass the gathered bytes on; `Ready(Ok)` once none are left. A buffer
    /// that grew past the write buffer's size while gathering is let go.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out.drain(..n);
        }
        if self.out.capacity() > self.out_cap {
            self.out = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    fn gathering(&self) -> Gather {
        match self.gather.load(Ordering::Relaxed) {
            1 => Gather::Holding,
            2 => Gather::UntilFlush,
            _ => Gather::Off,
        }
    }

    /// Make room to gather a write of `len` bytes, passing on what is
    /// gathered when it would not fit. `Ready(true)`: gather it;
    /// `Ready(false)`: write it straight through (it is as large as the
    /// buffer, or none is kept).
    fn poll_room_for(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<bool>> {
        if self.out_cap == 0 {
            return Poll::Ready(Ok(false));
        }
        if self.gathering() != Gather::Off {
            if self.out.len() + len > GATHER_MAX {
                ready!(self.poll_write_out(cx))?;
            }
            return Poll::Ready(Ok(len <= GATHER_MAX));
        }
        if self.out.len() + len > self.out_cap {
            ready!(self.poll_write_out(cx))?;
        }
        if len >= self.out_cap {
            return Poll::Ready(Ok(false));
        }
        if self.out.capacity() == 0 {
            self.out.reserve_exact(self.out_cap);
        }
        Poll::Ready(Ok(true))
    }

    /// Watch the next head on this connection (after a response), under
    /// `limits` (a reload may have changed them).
    pub fn watch_next_head(&mut self, limits: HeadLimits) {
        self.limits = limits;
        self.head_parsed.store(false, Ordering::Relaxed);
        self.read_limit.store(0, Ordering::Relaxed);
        self.gather.store(Gather::Off as u8, Ordering::Relaxed);
        if matches!(self.phase, Phase::Watching { .. } | Phase::Through) {
            self.phase = Phase::Watching {
                scan: HeadScan::new(limits.max_head, limits.max_uri),
                timed: false,
            };
        }
    }

    fn refuse(&mut self, why: ClientError) {
        self.metrics.client_error(why);
        self.phase = Phase::Answering {
            answer: answer(why),
            written: 0,
        };
    }

    /// Write our answer; `Ready` once it is written (or cannot be).
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let Phase::Answering { answer, written } = &mut self.phase else {
                return Poll::Ready(());
            };
            if *written == answer.len() {
                let _ = ready!(Pin::new(&mut self.inner).poll_flush(cx));
                self.phase = Phase::Ended;
                return Poll::Ready(());
            }
            match ready!(Pin::new(&mut self.inner).poll_write(cx, &answer[*written..])) {
                Ok(n) if n > 0 => *written += n,
                _ => {
                    self.phase = Phase::Ended;
                    return Poll::Ready(());
                }
            }
        }
    }
}

impl Drop for GatedStream {
    /// What was written and not yet sent goes out first, as far as the
    /// socket takes it now: a connection torn down after an answer was cut
    /// (by its relay) is dropped without a flush, and the client must still
    /// see the head and the bytes that came, as nginx sends them.
    ///
    /// A head that arrived whole but never reached the proxy was refused by
    /// Pingora's parser (a 400, or a 405 for CONNECT).
    fn drop(&mut self) {
        self.send_what_is_left();
        if matches!(self.phase, Phase::Through) && !self.head_parsed.load(Ordering::Relaxed) {
            self.metrics.client_error(ClientError::Malformed);
        }
    }
}

impl GatedStream {
    /// Pass on the gathered bytes, and flush what the stream below keeps
    /// (Pingora's own write buffer, with `thread_model: pingora`), without
    /// waiting: whatever the socket does not take at once is lost with the
    /// connection, as it would be on a close.
    fn send_what_is_left(&mut self) {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        if let Poll::Ready(Ok(())) = self.poll_write_out(&mut cx) {
            let _ = Pin::new(&mut self.inner).poll_flush(&mut cx);
        }
    }
}

/// Read from the connection: first what was read ahead, then the stream;
/// at most `limit` bytes (0: as many as `buf` has room for).
fn read_below(
    inner: &mut Stream,
    ahead: &mut Bytes,
    limit: usize,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    let room = match limit {
        0 => buf.remaining(),
        n => n.min(buf.remaining()),
    };
    if !ahead.is_empty() {
        let n = ahead.len().min(room);
        buf.put_slice(&ahead[..n]);
        if n == ahead.len() {
            *ahead = Bytes::new();
        } else {
            ahead.advance(n);
        }
        return Poll::Ready(Ok(()));
    }
    if room == buf.remaining() {
        return Pin::new(inner).poll_read(cx, buf);
    }
    // As tokio's `Take` reads: into a view of `buf` cut to `room`.
    let mut part = buf.take(room);
    let start = part.filled().as_ptr();
    ready!(Pin::new(inner).poll_read(cx, &mut part))?;
    if part.filled().as_ptr() != start {
        return Poll::Ready(Err(io::Error::other("a read replaced its buffer")));
    }
    let n = part.filled().len();
    // SAFETY: `part` is a view of `buf`'s unfilled bytes, and the read
    // initialised its first `n` (checked above to be the same memory).
    unsafe { buf.assume_init(n) };
    buf.advance(n);
    Poll::Ready(Ok(()))
}

/// Let each read of this connection bring at most `at_most` bytes (`None`:
/// as many as the reader has room for), until the next head is watched.
/// The proxy reads a body early this way so that its last byte comes in a
/// read of its own ([`crate::proxy::body`]). False if the connection is not
/// one the gate holds: its reads are not limited.
pub fn limit_reads(stream: Option<&Stream>, at_most: Option<std::num::NonZeroUsize>) -> bool {
    let Some(gated) = stream.and_then(|s| (**s).as_any().downcast_ref::<GatedStream>()) else {
        return false;
    };
    gated
        .read_limit
        .store(at_most.map_or(0, usize::from), Ordering::Relaxed);
    true
}

/// Gather this connection's writes, past the write buffer's size and
/// across flushes, as `how` says, so that what the held path already has
/// leaves in one write. Nothing is gathered on a connection without the
/// gate's write buffer (Pingora's listeners: its own buffer has its own
/// semantics). The caller ends `Holding` with `UntilFlush` or `Off` before
/// its last write: a flush held is never waited out.
pub fn gather(stream: Option<&Stream>, how: Gather) {
    if let Some(gated) = stream.and_then(|s| (**s).as_any().downcast_ref::<GatedStream>()) {
        if gated.out_cap > 0 {
            gated.gather.store(how as u8, Ordering::Relaxed);
        }
    }
}

/// Called by the proxy's first hook: Pingora has the whole head.
pub fn stop_watching(stream: Option<&Stream>) {
    if let Some(gated) = stream.and_then(|s| (**s).as_any().downcast_ref::<GatedStream>()) {
        gated.head_parsed.store(true, Ordering::Relaxed);
    }
}

/// Our answer to a head refused for `why`, in the Anthropic error shape.
fn answer(why: ClientError) -> Vec<u8> {
    let code = match why {
        ClientError::HeaderTooLarge => 431,
        ClientError::UriTooLong => 414,
        _ => 408,
    };
    let body = crate::proxy::errors::body_for(code);
    let reason = http::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl AsyncRead for GatedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.head_parsed.load(Ordering::Relaxed) && matches!(this.phase, Phase::Watching { .. })
        {
            this.phase = Phase::Through;
        }
        match &mut this.phase {
            Phase::Through => {
                let limit = this.read_limit.load(Ordering::Relaxed);
                return read_below(&mut this.inner, &mut this.ahead, limit, cx, buf);
            }
            Phase::Answering { .. } => {
                ready!(this.poll_answer(cx));
                return Poll::Ready(Ok(()));
            }
            Phase::Ended => return Poll::Ready(Ok(())),
            Phase::Watching { timed, scan } => {
                if *timed && this.deadline.as_mut().poll(cx).is_ready() {
                    if scan.seen() == 0 {
                        // A connection that never sent a byte (a pre-connect,
                        // a probe) is closed without an answer it never asked
                        // for, as HAProxy's `http-ignore-probes` does.
                        this.metrics.client_error(ClientError::HeaderTimeout);
                        this.phase = Phase::Ended;
                        return Poll::Ready(Ok(()));
                    }
                    this.refuse(ClientError::HeaderTimeout);
                    ready!(this.poll_answer(cx));
                    return Poll::Ready(Ok(()));
                }
            }
        }
        let before = buf.filled().len();
        ready!(read_below(&mut this.inner, &mut this.ahead, 0, cx, buf))?;
        let Phase::Watching { scan, timed } = &mut this.phase else {
            return Poll::Ready(Ok(()));
        };
        let new = &buf.filled()[before..];
        if new.is_empty() {
            if scan.seen() > 0 {
                this.metrics.client_error(ClientError::ClosedInHeader);
                this.phase = Phase::Ended;
            }
            return Poll::Ready(Ok(()));
        }
        if !*timed {
            *timed = true;
            this.deadline
                .as_mut()
                .reset(Instant::now() + this.limits.deadline);
        }
        match scan.feed(new) {
            Verdict::Incomplete => Poll::Ready(Ok(())),
            Verdict::Complete(_) => {
                this.phase = Phase::Through;
                Poll::Ready(Ok(()))
            }
            refused => {
                buf.set_filled(before);
                this.refuse(if refused == Verdict::UriTooLong {
                    ClientError::UriTooLong
                } else {
                    ClientError::HeaderTooLarge
                });
                ready!(this.poll_answer(cx));
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncWrite for GatedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if ready!(this.poll_room_for(cx, buf.len()))? {
            this.out.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.gathering() {
            Gather::Holding => return Poll::Ready(Ok(())),
            Gather::UntilFlush => this.gather.store(Gather::Off as u8, Ordering::Relaxed),
            Gather::Off => {}
        }
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len = bufs.iter().map(|b| b.len()).sum();
        if ready!(this.poll_room_for(cx, len))? {
            for b in bufs {
                this.out.extend_from_slice(b);
            }
            return Poll::Ready(Ok(len));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

// Everything Pingora asks of a connection besides its bytes is the
// accepted stream's.

#[async_trait]
impl Shutdown for GatedStream {
    async fn shutdown(&mut self) {
        let _ = std::future::poll_fn(|cx| self.poll_write_out(cx)).await;
        self.inner.shutdown().await
    }
}

impl UniqueID for GatedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GatedStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GatedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GatedStream {
    fn get_proxy_digest(&self) -> Option<Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: pingora_core::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for GatedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for GatedStream {
    /// Not used on HTTP/1 connections (Pingora peeks for h2c only in its
    /// own loop); bytes read ahead answer it when there are enough.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        if self.ahead.is_empty() {
            return self.inner.try_peek(buf).await;
        }
        let Some(ahead) = self.ahead.get(..buf.len()) else {
            return Ok(false);
        };
        buf.copy_from_slice(ahead);
        Ok(true)
    }
}

#[cfg(test)]
mod tests;
