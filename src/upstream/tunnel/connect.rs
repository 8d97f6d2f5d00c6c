//! An HTTP `CONNECT` to a relay through a proxy (RFC 9110, section 9.3.6):
//! one request, one response head, and not one byte more before the tunnel
//! is the relay's. A proxy that sends anything past a 2xx head is refused:
//! those bytes would be taken for the relay's.

use crate::config::{ProxyCredentials, ProxyTarget};
use base64::Engine;
use pingora_core::{Error, ErrorType, OrErr, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest response head taken from a proxy.
const HEAD_MAX: usize = 8 * 1024;

/// The `Proxy-Authorization` value for `c` (Basic).
pub(super) fn basic(c: &ProxyCredentials) -> String {
    let pair = format!("{}:{}", c.user, c.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// Ask the proxy on `tcp` for a tunnel to `target`; the stream is the
/// relay's once this returns.
pub(super) async fn handshake(
    mut tcp: TcpStream,
    target: &ProxyTarget,
    authorization: Option<&str>,
) -> Result<TcpStream> {
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(value) = authorization {
        request.push_str("Proxy-Authorization: ");
        request.push_str(value);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .or_err(ErrorType::ConnectProxyFailure, "writing CONNECT")?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    loop {
        let n = tcp
            .read(&mut buf)
            .await
            .or_err(ErrorType::ConnectProxyFailure, "reading the CONNECT reply")?;
        if n == 0 {
            return refuse("the proxy closed the connection before its CONNECT reply");
        }
        head.extend_from_slice(&buf[..n]);
        match reply(&head) {
            Reply::Incomplete => {}
            // Bytes already waiting behind the head are refused too.
            Reply::Tunnel => {
                return match tcp.try_read(&mut buf) {
                    Ok(0) => refuse("the proxy closed the tunnel at once"),
                    Ok(n) => refuse(&format!("{n} bytes past the CONNECT reply's head")),
                    Err(_) => Ok(tcp),
                }
            }
            Reply::Refused(why) => return refuse(&why),
        }
    }
}

fn refuse<T>(why: &str) -> Result<T> {
    Error::e_explain(ErrorType::ConnectProxyFailure, why.to_string())
}

/// What the bytes read so far from the proxy say.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    /// More bytes are needed.
    Incomplete,
    /// A 2xx head and nothing past it: the tunnel is open.
    Tunnel,
    Refused(String),
}

fn reply(bytes: &[u8]) -> Reply {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(bytes) {
        Ok(httparse::Status::Partial) if bytes.len() > HEAD_MAX => {
            Reply::Refused(format!("a CONNECT reply head over {HEAD_MAX} bytes"))
        }
        Ok(httparse::Status::Partial) => Reply::Incomplete,
        Err(e) => Reply::Refused(format!("a CONNECT reply that is not HTTP ({e})")),
        Ok(httparse::Status::Complete(end)) => match response.code.unwrap_or(0) {
            200..=299 if end == bytes.len() => Reply::Tunnel,
            200..=299 => Reply::Refused(format!(
                "{} bytes past the CONNECT reply's head",
                bytes.len() - end
            )),
            407 => Reply::Refused("the proxy refused its credentials (407)".into()),
            code => Reply::Refused(format!("the proxy answered CONNECT with {code}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each case: the bytes read so far, and what they say.
    #[test]
    fn connect_replies() {
        let refused = |s: &str| Reply::Refused(s.to_string());
        let cases: [(&[u8], Reply); 10] = [
            (
                b"HTTP/1.1 200 Connection established\r\n\r\n",
                Reply::Tunnel,
            ),
            (
                b"HTTP/1.0 200 OK\r\nProxy-Agent: tinyproxy/1.11.1\r\n\r\n",
                Reply::Tunnel,
            ),
            (b"HTTP/1.1 200 OK\r\n", Reply::Incomplete),
            (b"HTTP/1.1 2", Reply::Incomplete),
            (
                b"HTTP/1.1 200 OK\r\n\r\nHTTP/1.1 200 OK\r\n",
                refused("17 bytes past the CONNECT reply's head"),
            ),
            (
                b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n",
                refused("the proxy refused its credentials (407)"),
            ),
            (
                b"HTTP/1.1 403 Forbidden\r\n\r\n",
                refused("the proxy answered CONNECT with 403"),
            ),
            (
                b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 3\r\n\r\nbad",
                refused("the proxy answered CONNECT with 502"),
            ),
            (
                b"SSH-2.0-OpenSSH\r\n\r\n",
                refused("a CONNECT reply that is not HTTP (invalid HTTP version)"),
            ),
            (
                &[b'x'; 9000],
                refused("a CONNECT reply that is not HTTP (invalid HTTP version)"),
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                reply(bytes),
                want,
                "{:?}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(60)])
            );
        }
        let mut long = b"HTTP/1.1 200 OK\r\nX-Pad: ".to_vec();
        long.resize(HEAD_MAX + 1, b'a');
        assert_eq!(
            reply(&long),
            refused("a CONNECT reply head over 8192 bytes")
        );
    }

    #[test]
    fn basic_credentials() {
        let c = ProxyCredentials {
            user: "bob".into(),
            password: "p@ss:w".into(),
        };
        assert_eq!(basic(&c), "Basic Ym9iOnBAc3M6dw==");
    }
}
