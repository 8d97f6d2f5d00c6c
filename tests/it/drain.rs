//! Drains (SIGTERM, or SIGQUIT after a hand-over) and downstream keep-alive:
//! nothing in flight is cut, whatever generation it runs on, and a
//! keep-alive client is told to leave instead of finding its connection
//! closed under it.

use crate::common::*;
use std::time::Duration;

const KEYED: &str = "affinity: {keys: [{header: x-session-id}]}\n";

/// Append `extra` to the edge's config file and reload it by SIGHUP.
async fn reload_with(edge: &Edge, extra: &str, generation: u64) {
    let path = edge.config_path();
    let mut text = std::fs::read_to_string(&path).expect("read config");
    text.push_str(extra);
    std::fs::write(&path, text).expect("write config");
    edge.signal("HUP");
    eventually(Duration::from_secs(10), "the reload applied", || async {
        edge.admin_json("GET", "/api/stats", b"").await.1["config"]["generation"] == generation
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_after_a_reload_that_rebuilt_upstreams_cuts_no_stream() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let mut edge = TestEdge::new(&format!("{}{KEYED}", upstreams_yaml(&ups)))
        .threads(2)
        .grace("30s")
        .start()
        .await;
    let mut streams = Vec::new();
    for i in 0..4 {
        let key = format!("stream-{i}");
        streams.push(
            open_stream(
                edge.addr,
                "/v1/messages?sse=12&gap_ms=250",
                &[("x-session-id", &key)],
            )
            .await,
        );
    }
    // New timeouts rebuild every upstream: the streams run on the old ones.
    reload_with(&edge, "timeouts: {connect: 4s}\n", 2).await;
    edge.signal("TERM");
    let last = streams.pop().expect("four streams");
    for stream in streams {
        let r = stream
            .await
            .expect("task")
            .expect("the drain must not cut the stream");
        assert!(r.text().contains("message_stop"), "{}", r.text());
    }
    finishes_its_stream_and_exits(&mut edge, last).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_client_idle_when_the_drain_starts_is_served_and_told_to_leave() {
    let ups = upstreams(&["relay-a"]).await;
    let mut edge = TestEdge::new(&upstreams_yaml(&ups))
        .threads(1)
        .grace("30s")
        .start()
        .await;
    let mut conn = Conn::open(edge.addr).await.expect("connect");
    let first = conn.request("GET", "/v1/x", &[], b"").await.expect("first");
    assert_eq!(first.header("connection"), Some("keep-alive"));
    // A stream keeps the drain going; the keep-alive connection is idle.
    let stream = open_stream(edge.addr, "/v1/messages?sse=8&gap_ms=250", &[]).await;
    edge.signal("TERM");
    eventually(Duration::from_secs(5), "the drain began", || async {
        edge.log().contains("draining")
    })
    .await;
    let second = conn
        .request("GET", "/v1/x", &[], b"")
        .await
        .expect("the idle connection still serves during the drain");
    assert_eq!(second.status, 200);
    assert_eq!(
        second.header("connection"),
        Some("close"),
        "and tells the client to leave"
    );
    finishes_its_stream_and_exits(&mut edge, stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_client_idle() {
    let ups = upstreams(&["relay-a"]).await;
    let edge = TestEdge::new(&format!(
        "{}timeouts: {{client_idle: 1s}}\n",
        upstreams_yaml(&ups)
    ))
    .start()
    .await;
    let mut conn = Conn::open(edge.addr).await.expect("connect");
    // Pingora's own bound applies to the first request only: the wait after
    // the second one is what cloudflare/pingora#447 leaves unbounded.
    for _ in 0..2 {
        let r = conn
            .request("GET", "/v1/x", &[], b"")
            .await
            .expect("served");
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.read_eof()).await;
    assert!(
        matches!(closed, Ok(true)),
        "the edge closes the idle connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_request_after_a_long_stream_on_its_connection_is_served() {
    let ups = upstreams(&["relay-a"]).await;
    let mut edge = TestEdge::new(&upstreams_yaml(&ups))
        .threads(1)
        .grace("30s")
        .start()
        .await;
    let mut conn = Conn::open(edge.addr).await.expect("connect");
    conn.send_raw(&raw_request(
        "GET",
        "/v1/messages?sse=8&gap_ms=250",
        &[],
        b"",
    ))
    .await
    .expect("send");
    // The stream is under way (its head said keep-alive) when the drain begins.
    let (started, on_start) = tokio::sync::oneshot::channel();
    let mut started = Some(started);
    let reading = async {
        conn.read_response(|data| {
            if !data.is_empty() {
                if let Some(tx) = started.take() {
                    let _ = tx.send(());
                }
            }
        })
        .await
    };
    let signal = async {
        on_start.await.expect("the stream started");
        edge.signal("TERM");
    };
    let (stream, ()) = tokio::join!(reading, signal);
    let stream = stream.expect("the stream finishes");
    assert!(stream.text().contains("message_stop"));
    assert_eq!(stream.header("connection"), Some("keep-alive"));
    // It started two seconds ago, and it just ended: the process is not
    // quiet yet, and the client's next request on this connection is served.
    let next = conn
        .request("GET", "/v1/x", &[], b"")
        .await
        .expect("served after the stream, on the same connection");
    assert_eq!(next.status, 200);
    assert_eq!(next.header("connection"), Some("close"));
    let code = tokio::task::block_in_place(|| edge.wait_exit(Duration::from_secs(20)));
    assert_eq!(code, Some(0));
}
