//! A raw HTTP/1.1 client: requests written byte for byte, responses read
//! as they arrive (content-length, chunked, or to the close), so that a
//! test sees exactly what the edge sent.

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        relay_edge::demo::find_header(&self.headers, name)
    }

    /// Which demo upstream answered.
    pub fn upstream(&self) -> String {
        self.header("x-upstream").unwrap_or("none").to_string()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client connection that can carry several requests (keep-alive).
pub struct Conn {
    stream: BufReader<TcpStream>,
    buf: Vec<u8>,
}

pub fn raw_request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        out.push_str("host: relay.test\r\n");
    }
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"))
        && (method != "GET" || !body.is_empty())
    {
        out.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        Ok(Conn {
            stream: BufReader::new(TcpStream::connect(addr).await?),
            buf: Vec::new(),
        })
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.get_mut().write_all(bytes).await
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        self.send_raw(&raw_request(method, path, headers, body))
            .await?;
        self.read_response(|_| {}).await
    }

    /// Wait for the server to close the connection; true on a clean close.
    pub async fn read_eof(&mut self) -> bool {
        loop {
            match self.fill().await {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 16384];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Read one response; `on_data` sees each piece of body as it arrives.
    pub async fn read_response(
        &mut self,
        mut on_data: impl FnMut(&[u8]),
    ) -> std::io::Result<Response> {
        let eof = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed");
        let (status, headers, head_len) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut hs);
            if let Ok(httparse::Status::Complete(n)) = resp.parse(&self.buf) {
                let headers = relay_edge::demo::owned_headers(resp.headers);
                break (resp.code.unwrap_or(0), headers, n);
            }
            if self.fill().await? == 0 {
                return Err(eof());
            }
        };
        self.buf.drain(..head_len);
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let line_end = loop {
                    if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break p;
                    }
                    if self.fill().await? == 0 {
                        return Err(eof());
                    }
                };
                let size = usize::from_str_radix(
                    String::from_utf8_lossy(&self.buf[..line_end])
                        .split(';')
                        .next()
                        .unwrap_or("")
                        .trim(),
                    16,
                )
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk size")
                })?;
                self.buf.drain(..line_end + 2);
                while self.buf.len() < size + 2 {
                    if self.fill().await? == 0 {
                        return Err(eof());
                    }
                }
                if size == 0 {
                    self.buf.drain(..2);
                    break;
                }
                on_data(&self.buf[..size]);
                body.extend_from_slice(&self.buf[..size]);
                self.buf.drain(..size + 2);
            }
        } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            while self.buf.len() < len {
                if self.fill().await? == 0 {
                    return Err(eof());
                }
            }
            body = self.buf.drain(..len).collect();
            on_data(&body);
        } else if status != 204 && status != 304 && !(100..200).contains(&status) {
            while self.fill().await? > 0 {}
            body = std::mem::take(&mut self.buf);
            on_data(&body);
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

/// Send `GET path` on a fresh connection and read the streamed response in
/// the background; returns once its first body bytes have arrived (the
/// stream is under way).
pub async fn open_stream(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> tokio::task::JoinHandle<std::io::Result<Response>> {
    open_stream_with(addr, "GET", path, headers, b"").await
}

/// [`open_stream`] with any method and body.
pub async fn open_stream_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> tokio::task::JoinHandle<std::io::Result<Response>> {
    let mut conn = Conn::open(addr).await.expect("connect");
    conn.send_raw(&raw_request(method, path, headers, body))
        .await
        .expect("send");
    let (started, on_start) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut started = Some(started);
        conn.read_response(|data| {
            if !data.is_empty() {
                if let Some(tx) = started.take() {
                    let _ = tx.send(());
                }
            }
        })
        .await
    });
    on_start.await.expect("the stream started");
    task
}

/// One request on a fresh connection.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut conn = Conn::open(addr).await?;
    conn.request(method, path, headers, body).await
}

/// A Messages-API style body of about `size` bytes with `metadata.user_id`
/// at its very end.
pub fn messages_body(size: usize, user_id: &str) -> Vec<u8> {
    let head = r#"{"model":"claude-x","messages":[{"role":"user","content":""#;
    let tail =
        format!(r#""}}],"max_tokens":16,"stream":false,"metadata":{{"user_id":"{user_id}"}}}}"#);
    let fill = size.saturating_sub(head.len() + tail.len());
    let mut body = Vec::with_capacity(size);
    body.extend_from_slice(head.as_bytes());
    body.extend((0..fill).map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789 "[i % 37]));
    body.extend_from_slice(tail.as_bytes());
    body
}
