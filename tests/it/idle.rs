//! Keep-alive connections between requests: they wait outside Pingora
//! (`downstream::idle`), holding little, and lose nothing of what the
//! client sends next.

use crate::common::*;
use std::time::Duration;

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("its status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_request_after_an_idle_wait_reaches_the_relay_whole_however_it_arrives() {
    let ups = upstreams(&["relay-a"]).await;
    let edge = TestEdge::new(&upstreams_yaml(&ups)).start().await;
    let mut conn = Conn::open(edge.addr).await.expect("connect");
    let first = conn.request("GET", "/v1/x", &[], b"").await.expect("first");
    assert_eq!(first.status, 200);
    // The connection is idle; then the next request comes in three pieces,
    // the first of them a single byte (what the edge reads ahead).
    let body = br#"{"model":"m","messages":[{"role":"user","content":"after a pause"}]}"#;
    let next = raw_request("POST", "/v1/messages", &[("x-session-id", "pieces")], body);
    let (one, rest) = next.split_at(1);
    let (two, three) = rest.split_at(rest.len() / 2);
    for piece in [one, two, three] {
        // Shaping the client's traffic, not waiting for the edge.
        tokio::time::sleep(Duration::from_millis(100)).await;
        conn.send_raw(piece).await.expect("send a piece");
    }
    let second = conn.read_response(|_| {}).await.expect("second");
    assert_eq!(second.status, 200);
    let seen = ups[0].recorded();
    let last = seen.last().expect("the relay saw it");
    assert_eq!(
        (last.method.as_str(), last.path.as_str()),
        ("POST", "/v1/messages")
    );
    assert_eq!(last.header("x-session-id"), Some("pieces"));
    assert_eq!(last.body, body, "byte for byte");
    // And the one after that, sent whole, on the same connection.
    let third = conn.request("GET", "/v1/x", &[], b"").await.expect("third");
    assert_eq!(third.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed_when_the_drain_ends() {
    let ups = upstreams(&["relay-a"]).await;
    let mut edge = TestEdge::new(&upstreams_yaml(&ups))
        .grace("30s")
        .start()
        .await;
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut conn = Conn::open(edge.addr).await.expect("connect");
        let r = conn
            .request("GET", "/v1/x", &[], b"")
            .await
            .expect("served");
        assert_eq!(r.header("connection"), Some("keep-alive"));
        conns.push(conn);
    }
    edge.signal("TERM");
    for mut conn in conns {
        let closed = tokio::time::timeout(Duration::from_secs(20), conn.read_eof()).await;
        assert!(
            matches!(closed, Ok(true)),
            "the drain closes an idle connection"
        );
    }
    let code = tokio::task::block_in_place(|| edge.wait_exit(Duration::from_secs(30)));
    assert_eq!(code, Some(0), "it exits once drained:\n{}", edge.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_holds_under_8_kib() {
    let ups = upstreams(&["relay-a"]).await;
    let edge = TestEdge::new(&format!(
        "{}limits: {{max_connections: 10000}}\n",
        upstreams_yaml(&ups)
    ))
    .start()
    .await;
    let pid = edge.pid();
    async fn idle_clients(edge: &Edge, n: usize) -> Vec<Conn> {
        let mut conns = Vec::new();
        for _ in 0..n {
            let mut conn = Conn::open(edge.addr).await.expect("connect");
            let r = conn
                .request("GET", "/v1/x", &[], b"")
                .await
                .expect("served");
            assert_eq!(r.status, 200);
            conns.push(conn);
        }
        conns
    }
    // Warm: the allocator's caches, the relay's pool.
    drop(idle_clients(&edge, 100).await);
    let n = 500;
    let before = rss_kib(pid);
    let conns = idle_clients(&edge, n).await;
    let per_client = (rss_kib(pid).saturating_sub(before)) as f64 / n as f64;
    assert!(
        per_client < 8.0,
        "{per_client:.2} KiB per idle keep-alive client"
    );
    drop(conns);
}
