//! Reading one HTTP/1.1 request off the demo relay's connection: its head
//! (with the header names as sent), then a `Content-Length` or chunked body.

use tokio::io::{AsyncReadExt, BufReader};
use tokio::net::TcpStream;

/// One request as read off the connection.
pub(super) struct Request {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) query: String,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: Vec<u8>,
    pub(super) close: bool,
}

/// The next request on `reader` (`buf` holds what was read past the last
/// one), or `None` once the connection is closed or sends what is not HTTP.
pub(super) async fn read_request(
    reader: &mut BufReader<TcpStream>,
    buf: &mut Vec<u8>,
) -> Option<Request> {
    let head_len = loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(n)) = req.parse(buf) {
            break n;
        }
        let mut chunk = [0u8; 8192];
        let n = reader.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(buf).ok()?;
    let target = req.path.unwrap_or("/").to_string();
    let (path, query) = target
        .split_once('?')
        .map_or((target.clone(), String::new()), |(p, q)| {
            (p.to_string(), q.to_string())
        });
    // Names as the client (the edge) sent them: a test checks them byte
    // for byte.
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
    let method = req.method.unwrap_or("GET").to_string();
    buf.drain(..head_len);
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let close = get("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let body =
        if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
            read_chunked(reader, buf).await?
        } else {
            let len: usize = get("content-length")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < len {
                let mut chunk = vec![0u8; (len - buf.len()).min(256 * 1024)];
                let n = reader.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..len).collect()
        };
    Some(Request {
        method,
        path,
        query,
        headers,
        body,
        close,
    })
}

async fn fill_line(reader: &mut BufReader<TcpStream>, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(pos) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = buf[..pos].to_vec();
            buf.drain(..pos + 2);
            return Some(line);
        }
        let mut chunk = [0u8; 8192];
        let n = reader.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn read_chunked(reader: &mut BufReader<TcpStream>, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = fill_line(reader, buf).await?;
        let size_text = String::from_utf8_lossy(&line);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            // Trailers end with an empty line.
            while !fill_line(reader, buf).await?.is_empty() {}
            return Some(body);
        }
        while buf.len() < size + 2 {
            let mut chunk = [0u8; 8192];
            let n = reader.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}
