//! The gate's write gathering and read limit, against a connection that
//! records each write passed on to it.

use super::*;
use pingora_core::protocols::{raw_connect::ProxyDigest, UniqueIDType};
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A connection that records the writes it is given, one entry each, and
/// has `incoming` to be read.
#[derive(Debug, Default)]
struct Recorder {
    writes: Arc<Mutex<Vec<usize>>>,
    incoming: Vec<u8>,
}

impl AsyncRead for Recorder {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = this.incoming.len().min(buf.remaining());
        buf.put_slice(&this.incoming[..n]);
        this.incoming.drain(..n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Recorder {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.writes.lock().expect("writes").push(buf.len());
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[async_trait]
impl Shutdown for Recorder {
    async fn shutdown(&mut self) {}
}
impl UniqueID for Recorder {
    fn id(&self) -> UniqueIDType {
        0
    }
}
impl Ssl for Recorder {}
impl GetTimingDigest for Recorder {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        vec![]
    }
}
impl GetProxyDigest for Recorder {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        None
    }
}
impl GetSocketDigest for Recorder {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        None
    }
}
impl Peek for Recorder {}

const LIMITS: HeadLimits = HeadLimits {
    max_head: 16 * 1024,
    max_uri: 8 * 1024,
    deadline: Duration::from_secs(10),
};

/// A gated connection over a recorder, with a write buffer of `buffer`
/// bytes; and the recorder's writes.
fn gated(buffer: usize, incoming: &[u8]) -> (Stream, Arc<Mutex<Vec<usize>>>) {
    let writes = Arc::new(Mutex::new(Vec::new()));
    let recorder = Recorder {
        writes: writes.clone(),
        incoming: incoming.to_vec(),
    };
    let stream: Stream = Box::new(GatedStream::new(
        Box::new(recorder),
        LIMITS,
        Arc::new(Metrics::new()),
        buffer,
    ));
    (stream, writes)
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Write(usize),
    Flush,
    Set(Gather),
}
use Op::*;

#[tokio::test]
async fn writes_gather_as_the_held_path_asks() {
    let cases: [(&str, usize, &[Op], &[usize]); 8] = [
        (
            "small writes gather until a flush",
            1460,
            &[Write(300), Write(100), Flush],
            &[400],
        ),
        (
            "a large write passes what is gathered, then goes itself",
            1460,
            &[Write(300), Write(5000), Flush],
            &[300, 5000],
        ),
        (
            "a stream's head and first read: one write",
            1460,
            &[
                Set(Gather::Holding),
                Write(300),
                Flush,
                Set(Gather::UntilFlush),
                Write(5000),
                Flush,
            ],
            &[5300],
        ),
        (
            "head, read and end: one write",
            1460,
            &[
                Set(Gather::Holding),
                Write(300),
                Flush,
                Write(5000),
                Flush,
                Set(Gather::UntilFlush),
                Write(5),
                Flush,
            ],
            &[5305],
        ),
        (
            "gathering ends at the flush that passes it on",
            1460,
            &[
                Set(Gather::UntilFlush),
                Write(300),
                Write(5000),
                Flush,
                Write(300),
                Write(5000),
                Flush,
            ],
            &[5300, 300, 5000],
        ),
        (
            "past GATHER_MAX what is gathered goes first",
            1460,
            &[
                Set(Gather::Holding),
                Write(300),
                Flush,
                Set(Gather::UntilFlush),
                Write(80_000),
                Flush,
            ],
            &[300, 80_000],
        ),
        (
            "off: what is held goes at the next flush",
            1460,
            &[
                Set(Gather::Holding),
                Write(300),
                Flush,
                Set(Gather::Off),
                Flush,
            ],
            &[300],
        ),
        (
            "no write buffer (Pingora's listeners): nothing is gathered or held",
            0,
            &[Set(Gather::Holding), Write(300), Flush, Write(5000), Flush],
            &[300, 5000],
        ),
    ];
    for (what, buffer, ops, want) in cases {
        let (mut stream, writes) = gated(buffer, b"");
        for op in ops {
            match *op {
                Write(n) => stream.write_all(&vec![b'x'; n]).await.expect("write"),
                Flush => stream.flush().await.expect("flush"),
                Set(how) => gather(Some(&stream), how),
            }
        }
        let got = writes.lock().expect("writes").clone();
        assert_eq!(got, want, "{what}");
    }
}

#[tokio::test]
async fn a_read_limit_holds_until_the_next_head() {
    let incoming = vec![b'b'; 100];
    let (mut stream, _) = gated(1460, &incoming);
    stop_watching(Some(&stream));
    let mut buf = [0u8; 64];
    limit_reads(Some(&stream), std::num::NonZeroUsize::new(5));
    assert_eq!(stream.read(&mut buf).await.expect("read"), 5, "limited");
    assert_eq!(
        stream.read(&mut buf).await.expect("read"),
        5,
        "still limited"
    );
    limit_reads(Some(&stream), None);
    assert_eq!(stream.read(&mut buf).await.expect("read"), 64, "unlimited");
    limit_reads(Some(&stream), std::num::NonZeroUsize::new(1));
    let gated = (*stream)
        .as_any()
        .downcast_ref::<GatedStream>()
        .expect("a gated stream");
    assert_eq!(gated.read_limit.load(Ordering::Relaxed), 1);
    let mut stream = stream.into_any().downcast::<GatedStream>().expect("gated");
    stream.watch_next_head(LIMITS);
    assert_eq!(
        stream.read_limit.load(Ordering::Relaxed),
        0,
        "a new head reads freely"
    );
}
