//! Framing and connection ends as RFC 9112 says, with pipelining on: an
//! ambiguous request is refused and its connection closed, nothing after it
//! is read as a request, HTTP/1.0 stays single-request unless it asks, and
//! an answer its relay cut reaches the client as far as it came.

use crate::common::*;
use relay_edge::demo::Fault;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Everything the edge sends until it closes the connection, and whether it
/// closed within `within` (false: still open then).
async fn read_until_closed(conn: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let closed = tokio::time::timeout(within, conn.read_to_end(&mut out))
        .await
        .is_ok();
    (out, closed)
}

/// The status of every response in `answers` (a body here never holds a
/// status line, and one may end without a line break before the next).
fn statuses(answers: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(answers);
    text.match_indices("HTTP/1.1 ")
        .map(|(at, _)| text[at + 9..].chars().take(3).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_both_lengths_is_refused_and_what_follows_it_is_never_a_request() {
    let ups = upstreams(&["relay-a"]).await;
    let edge = TestEdge::new(&upstreams_yaml(&ups)).start().await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n";
    let heads = [
        "POST /v1/x HTTP/1.1\r\nhost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST /v1/x HTTP/1.1\r\nhost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
    ];
    for head in heads {
        let mut conn = TcpStream::connect(edge.addr).await.expect("connect");
        let packet = format!("{head}0\r\n\r\n{smuggled}");
        conn.write_all(packet.as_bytes()).await.expect("send");
        let (answers, closed) = read_until_closed(&mut conn, Duration::from_secs(20)).await;
        assert!(closed, "the connection stays open after {head:?}");
        assert_eq!(
            statuses(&answers),
            ["400"],
            "{head:?}: {}",
            String::from_utf8_lossy(&answers)
        );
        let text = String::from_utf8_lossy(&answers);
        assert!(text.contains("invalid_request_error"), "{text}");
        assert!(!text.to_ascii_lowercase().contains("keep-alive"), "{text}");
    }
    assert!(
        ups[0].recorded().is_empty(),
        "the relay got {:?}",
        ups[0]
            .recorded()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect::<Vec<_>>()
    );
    // A chunked request alone is fine, and so are pipelined ones after it.
    let mut conn = TcpStream::connect(edge.addr).await.expect("connect");
    let packet = format!(
        "POST /v1/x HTTP/1.1\r\nhost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n{}",
        "GET /v1/y HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    );
    conn.write_all(packet.as_bytes()).await.expect("send");
    let (answers, closed) = read_until_closed(&mut conn, Duration::from_secs(20)).await;
    assert!(closed);
    assert_eq!(statuses(&answers), ["200", "200"]);
    let paths: Vec<String> = ups[0].recorded().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/v1/x", "/v1/y"]);
    assert_eq!(ups[0].recorded()[0].body, b"abcd");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_is_one_request_a_connection_unless_it_asks_for_more() {
    let ups = upstreams(&["relay-a"]).await;
    // A long idle bound, so that "closed" can only be the edge's decision.
    let edge = TestEdge::new(&format!(
        "{}timeouts: {{client_idle: 300s}}\n",
        upstreams_yaml(&ups)
    ))
    .start()
    .await;
    let open_after = |head: &'static str| async move {
        let mut conn = TcpStream::connect(edge.addr).await.expect("connect");
        conn.write_all(head.as_bytes()).await.expect("send");
        read_until_closed(&mut conn, Duration::from_secs(10)).await
    };
    // HTTP/1.0 without keep-alive, and HTTP/1.1 with close: closed after one.
    for head in [
        "GET /v1/x HTTP/1.0\r\n\r\n",
        "GET /v1/x HTTP/1.0\r\nhost: x\r\n\r\n",
        "GET /v1/x HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    ] {
        let (answer, closed) = open_after(head).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(closed, "{head:?} left open: {text}");
        assert_eq!(statuses(&answer), ["200"], "{head:?}: {text}");
        assert!(
            !text.to_ascii_lowercase().contains("connection: keep-alive"),
            "{head:?}: {text}"
        );
    }
    // HTTP/1.0 that asks for keep-alive, and plain HTTP/1.1: kept open.
    for head in [
        "GET /v1/x HTTP/1.0\r\nconnection: keep-alive\r\n\r\n",
        "GET /v1/x HTTP/1.1\r\nhost: x\r\n\r\n",
    ] {
        let (answer, closed) = open_after(head).await;
        assert!(
            !closed,
            "{head:?} closed: {}",
            String::from_utf8_lossy(&answer)
        );
        assert_eq!(statuses(&answer), ["200"], "{head:?}");
    }
}

/// The head and body bytes a client got for a request whose relay sends
/// `sent` bytes of a 100,000-byte answer and closes, and whether the
/// connection then closed.
async fn cut_answer(edge: &Edge, path: &str, body: &[u8]) -> (u16, Vec<u8>, bool) {
    let mut conn = TcpStream::connect(edge.addr).await.expect("connect");
    conn.write_all(&raw_request(
        "POST",
        path,
        &[("content-type", "application/json")],
        body,
    ))
    .await
    .expect("send");
    let (got, closed) = read_until_closed(&mut conn, Duration::from_secs(20)).await;
    let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (0, got, closed);
    };
    let head = String::from_utf8_lossy(&got[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(
        head.to_ascii_lowercase().contains("content-length: 100000"),
        "{head}"
    );
    (status, got[end + 4..].to_vec(), closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_its_relay_cut_reaches_the_client_as_far_as_it_came() {
    let ups = upstreams(&["relay-a"]).await;
    let edge = TestEdge::new(&format!(
        "{}failover: {{retry_on_status: []}}\npassive_health: {{max_failures: 1000}}\n",
        upstreams_yaml(&ups)
    ))
    .start()
    .await;
    let stream = br#"{"model":"m","stream":true,"messages":[]}"#;
    // Below and above the gate's write buffer (4 KiB), on Pingora's path
    // (a plain POST) and on the held path (a streaming request).
    for (path, body) in [("/v1/plain", &b"{}"[..]), ("/v1/held", &stream[..])] {
        for sent in [1_000, 5_000, 70_000] {
            ups[0].fail_next(
                1,
                Fault::CutBody {
                    declared: 100_000,
                    sent,
                },
            );
            let (status, got, closed) = cut_answer(&edge, path, body).await;
            assert_eq!(
                status,
                200,
                "{path} {sent}: {}",
                String::from_utf8_lossy(&got)
            );
            assert!(
                closed,
                "{path} {sent}: the short answer's connection closes"
            );
            assert_eq!(
                got,
                relay_edge::demo::cut_body(sent),
                "{path} {sent}: got {} bytes",
                got.len()
            );
        }
    }
}
