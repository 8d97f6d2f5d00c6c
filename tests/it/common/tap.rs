//! A recording tap between a real client and the edge: it forwards every
//! connection both ways and keeps the bytes the client wrote, so that a test
//! can hold what a relay received against what the client sent, header by
//! header, byte for byte.

use relay_edge::demo::Recorded;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// One request as the client wrote it.
#[derive(Debug, Clone)]
pub struct Sent {
    pub target: String,
    /// Header lines as written: name and value, case and all.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The hop-by-hop headers (RFC 9110 §7.6.1), which a proxy answers for
/// itself rather than passes on.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

type Written = Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>>;

pub struct Tap {
    pub addr: SocketAddr,
    written: Written,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Tap {
    /// Listen on a free loopback port; every connection goes on to `to`.
    pub async fn start(to: SocketAddr) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("tap listens");
        let addr = listener.local_addr().expect("tap address");
        let written: Written = Arc::default();
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (w, t) = (written.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let log = Arc::new(Mutex::new(Vec::new()));
                w.lock().expect("tap log").push(log.clone());
                let conn = tokio::spawn(forward(client, to, log));
                t.lock().expect("tap tasks").push(conn.abort_handle());
            }
        });
        tasks.lock().expect("tap tasks").push(accept.abort_handle());
        Tap {
            addr,
            written,
            tasks,
        }
    }

    /// Every request the client wrote so far, connection by connection.
    pub fn sent(&self) -> Vec<Sent> {
        let conns: Vec<Vec<u8>> = self
            .written
            .lock()
            .expect("tap log")
            .iter()
            .map(|c| c.lock().expect("tap log").clone())
            .collect();
        conns.iter().flat_map(|bytes| parse_all(bytes)).collect()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.lock() {
            for t in tasks.iter() {
                t.abort();
            }
        }
    }
}

async fn forward(client: TcpStream, to: SocketAddr, log: Arc<Mutex<Vec<u8>>>) {
    let Ok(upstream) = TcpStream::connect(to).await else {
        return;
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let up = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    log.lock().expect("tap log").extend_from_slice(&buf[..n]);
                    if uw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = uw.shutdown().await;
    };
    let down = async move {
        let _ = tokio::io::copy(&mut ur, &mut cw).await;
        let _ = cw.shutdown().await;
    };
    tokio::join!(up, down);
}

/// The requests in one connection's bytes (Content-Length or chunked
/// bodies); a request cut short is left out.
fn parse_all(mut bytes: &[u8]) -> Vec<Sent> {
    let mut out = Vec::new();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(head)) = req.parse(bytes) else {
            return out;
        };
        let target = req.path.unwrap_or("").to_string();
        let headers: Vec<(String, String)> = req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let get = |name: &str| relay_edge::demo::find_header(&headers, name);
        let rest = &bytes[head..];
        let (body, used) = if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            match dechunk(rest) {
                Some(b) => b,
                None => return out,
            }
        } else {
            let len: usize = get("content-length")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if rest.len() < len {
                return out;
            }
            (rest[..len].to_vec(), len)
        };
        out.push(Sent {
            target,
            headers,
            body,
        });
        bytes = &rest[used..];
    }
}

/// A chunked body and the bytes it took, trailers included.
fn dechunk(mut rest: &[u8]) -> Option<(Vec<u8>, usize)> {
    let total = rest.len();
    let mut body = Vec::new();
    loop {
        let line = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line + 2..];
        if size == 0 {
            loop {
                let end = rest.windows(2).position(|w| w == b"\r\n")?;
                rest = &rest[end + 2..];
                if end == 0 {
                    return Some((body, total - rest.len()));
                }
            }
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

/// Every request the client sent reached a relay with each of its
/// end-to-end headers as the client wrote it, name and value, byte for byte
/// (a record with the same body and all of them; two requests may share a
/// body).
pub fn assert_each_header_reached_as_sent(sent: &[Sent], recorded: &[Recorded]) {
    assert!(!sent.is_empty(), "the client sent nothing through the tap");
    for s in sent {
        let end_to_end: Vec<&(String, String)> = s
            .headers
            .iter()
            .filter(|(name, _)| !HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name)))
            .collect();
        let same_body: Vec<&Recorded> = recorded.iter().filter(|r| r.body == s.body).collect();
        assert!(
            same_body.iter().any(|r| end_to_end
                .iter()
                .all(|(name, value)| r.headers.iter().any(|(k, v)| k == name && v == value))),
            "{} {end_to_end:?} did not reach a relay as sent; with its body, relays received {:?}",
            s.target,
            same_body.iter().map(|r| &r.headers).collect::<Vec<_>>()
        );
    }
}
