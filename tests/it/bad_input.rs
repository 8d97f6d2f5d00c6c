//! Bad input never panics, hangs or leaks: the edge keeps serving.

use crate::common::*;
use std::time::Duration;
use tokio::io::AsyncReadExt;

async fn still_serves(edge: &mut Edge) {
    assert!(edge.alive(), "relay-edge died:\n{}", edge.log());
    let r = edge.get("/v1/x", &[("x-session-id", "alive")]).await;
    assert_eq!(r.status, 200);
    assert!(!edge.log().contains("panicked"), "{}", edge.log());
}

/// Send raw bytes and return whatever comes back before the connection closes.
async fn raw_exchange(edge: &Edge, bytes: &[u8]) -> String {
    let mut conn = tokio::net::TcpStream::connect(edge.addr)
        .await
        .expect("connect");
    use tokio::io::AsyncWriteExt;
    let _ = conn.write_all(bytes).await;
    let _ = conn.shutdown().await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_huge_headers_and_truncated_bodies() {
    let ups = upstreams(&["relay-a"]).await;
    let mut edge = TestEdge::new(&format!(
        "{}affinity: {{keys: [{{json: /metadata/user_id}}, {{header: x-session-id}}]}}\n",
        upstreams_yaml(&ups)
    ))
    .start()
    .await;

    let garbage = raw_exchange(&edge, b"\x16\x03\x01 not http at all\r\n\r\n").await;
    assert!(
        garbage.is_empty() || garbage.starts_with("HTTP/1.1 4"),
        "{garbage}"
    );
    still_serves(&mut edge).await;

    let huge = format!(
        "GET / HTTP/1.1\r\nhost: t\r\nx-big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let answer = raw_exchange(&edge, huge.as_bytes()).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
    still_serves(&mut edge).await;

    // A body that promises 100000 bytes and stops after 10.
    let truncated = raw_exchange(
        &edge,
        b"POST /v1/messages HTTP/1.1\r\nhost: t\r\ncontent-length: 100000\r\n\r\n{\"metadata\"",
    )
    .await;
    assert!(!truncated.contains("200 OK"), "{truncated}");
    still_serves(&mut edge).await;

    // Invalid JSON with a JSON key configured is forwarded, not rejected.
    let r = edge
        .post("/v1/messages", &[("x-session-id", "k")], b"{{{ not json")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        ups[0].recorded().pop().expect("recorded").body,
        b"{{{ not json"
    );
    still_serves(&mut edge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_upstreams_that_vanish_mid_stream() {
    let ups = upstreams(&["relay-a"]).await;
    let mut edge = TestEdge::new(&upstreams_yaml(&ups)).start().await;

    // A client that disconnects in the middle of a slow SSE stream.
    for _ in 0..5 {
        let mut conn = Conn::open(edge.addr).await.expect("connect");
        conn.send_raw(&raw_request(
            "GET",
            "/v1/messages?sse=20&gap_ms=100",
            &[],
            b"",
        ))
        .await
        .expect("send");
        // Read until the first event is in, then go away.
        let mut seen = false;
        let _ = tokio::time::timeout(
            Duration::from_millis(400),
            conn.read_response(|d| seen |= !d.is_empty()),
        )
        .await;
        assert!(seen, "the stream started");
        drop(conn);
    }
    eventually(
        Duration::from_secs(10),
        "in-flight back to zero",
        || async { edge.upstream("relay-a").await["inflight"] == 0 },
    )
    .await;
    still_serves(&mut edge).await;

    // An upstream that resets in the middle of its answer.
    let mut conn = Conn::open(edge.addr).await.expect("connect");
    let r = conn.request("GET", "/reset", &[], b"").await;
    match r {
        Ok(resp) => assert!(
            !resp.text().contains("message_stop"),
            "a cut stream must not look complete"
        ),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}"),
    }
    still_serves(&mut edge).await;

    // An upstream that hangs does not hang the edge for other requests.
    let hang = tokio::spawn({
        let addr = edge.addr;
        async move {
            tokio::time::timeout(
                Duration::from_millis(500),
                request(addr, "GET", "/hang", &[], b""),
            )
            .await
        }
    });
    still_serves(&mut edge).await;
    assert!(
        hang.await.expect("task").is_err(),
        "the hanging request is still waiting on its upstream"
    );
    eventually(
        Duration::from_secs(10),
        "in-flight back to zero",
        || async { edge.upstream("relay-a").await["inflight"] == 0 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_is_survived_and_sigterm_lets_open_streams_finish() {
    let ups = upstreams(&["relay-a"]).await;
    let mut edge = TestEdge::new(&upstreams_yaml(&ups))
        .threads(2)
        .grace("20s")
        .start()
        .await;
    // SIGHUP's default action would kill the process.
    edge.signal("HUP");
    eventually(Duration::from_secs(5), "SIGHUP logged", || async {
        edge.log().contains("SIGHUP received")
    })
    .await;
    still_serves(&mut edge).await;

    // An SSE stream of about 1.5 s, then SIGTERM while it runs.
    let stream = open_stream(edge.addr, "/v1/messages?sse=5&gap_ms=250", &[]).await;
    edge.signal("TERM");
    let r = stream
        .await
        .expect("task")
        .expect("the stream must finish during the drain");
    assert!(r.text().contains("message_stop"), "{}", r.text());
    // Drained: it leaves as soon as nothing is in flight, long before the 20 s grace period.
    let code = tokio::task::block_in_place(|| edge.wait_exit(Duration::from_secs(10)));
    assert_eq!(
        code,
        Some(0),
        "relay-edge must exit once drained:\n{}",
        edge.log()
    );
}
