//! In-process reload: build to one side, swap, reject bad files whole.

use crate::common::*;
use std::time::Duration;

const KEYED: &str = "affinity: {keys: [{header: x-session-id}]}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_upstreams_and_rejects_a_bad_file_whole() {
    let ups = upstreams(&["relay-a", "relay-b", "relay-c"]).await;
    let (ab, ac) = (
        upstreams_yaml(&ups[..2]),
        upstreams_yaml([&ups[0], &ups[2]]),
    );
    let edge = TestEdge::new(&format!("{ab}{KEYED}")).start().await;
    let mut on_b = Vec::new();
    for i in 0..40 {
        let key = format!("r{i}");
        if edge
            .get("/v1/x", &[("x-session-id", &key)])
            .await
            .upstream()
            == "relay-b"
        {
            on_b.push(key);
        }
    }
    assert!(!on_b.is_empty());

    edge.rewrite(&ab, &ac);
    let (code, report) = edge.admin_json("POST", "/api/reload", b"").await;
    assert_eq!(code, 200, "{report}");
    assert_eq!(report["generation"], 2);
    assert_eq!(report["added"], serde_json::json!(["relay-c"]));
    assert_eq!(report["removed"], serde_json::json!(["relay-b"]));
    let served_by_b = ups[1].requests();
    for key in &on_b {
        let u = edge.get("/v1/x", &[("x-session-id", key)]).await.upstream();
        assert!(
            u == "relay-a" || u == "relay-c",
            "{key} must leave the removed relay, got {u}"
        );
    }
    let mut reached_c = false;
    for i in 0..40 {
        reached_c |= edge
            .get("/v1/x", &[("x-session-id", &format!("n{i}"))])
            .await
            .upstream()
            == "relay-c";
    }
    assert!(reached_c, "the added relay takes new sessions");
    assert_eq!(
        ups[1].requests(),
        served_by_b,
        "the removed relay gets no request after the reload"
    );

    // A broken file is rejected whole; the running config stays.
    edge.rewrite(&format!("addr: {}", ups[2].addr), "addr: nowhere");
    let (code, body) = edge.admin_json("POST", "/api/reload", b"").await;
    assert_eq!(code, 400, "{body}");
    let errors = body["errors"].to_string();
    assert!(
        errors.contains("upstreams[1].addr: invalid socket address \\\"nowhere\\\""),
        "{errors}"
    );
    assert_eq!(
        edge.get("/v1/x", &[("x-session-id", "still")]).await.status,
        200
    );
    let (_, stats) = edge.admin_json("GET", "/api/stats", b"").await;
    assert_eq!(stats["config"]["generation"], 2);
    assert!(
        stats["config"]["last_reload_error"]
            .to_string()
            .contains("nowhere"),
        "{stats}"
    );
    let metrics = request(edge.admin, "GET", "/metrics", &[], b"")
        .await
        .expect("metrics")
        .text();
    assert!(
        metrics.contains("relay_edge_config_reloads_total{result=\"error\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("relay_edge_config_reloads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("relay_edge_config_generation 2"),
        "{metrics}"
    );

    // Fixed again: accepted, and the error is cleared.
    edge.rewrite("addr: nowhere", &format!("addr: {}", ups[2].addr));
    assert_eq!(edge.admin_json("POST", "/api/reload", b"").await.0, 200);
    assert!(
        edge.admin_json("GET", "/api/stats", b"").await.1["config"]["last_reload_error"].is_null()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_listener_changes_are_reported_as_needing_an_upgrade() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let a_only = upstreams_yaml(&ups[..1]);
    let edge = TestEdge::new(&format!("{a_only}{KEYED}")).start().await;
    edge.rewrite(&a_only, &upstreams_yaml(&ups));
    edge.signal("HUP");
    eventually(
        Duration::from_secs(5),
        "generation 2 after SIGHUP",
        || async { edge.admin_json("GET", "/api/stats", b"").await.1["config"]["generation"] == 2 },
    )
    .await;
    let new_port = free_port();
    // The file names port 0, as every test edge's: it binds the port it gets.
    edge.rewrite(
        "addr: 127.0.0.1:0}]\nadmin",
        &format!("addr: 127.0.0.1:{new_port}}}]\nadmin"),
    );
    let (code, report) = edge.admin_json("POST", "/api/reload", b"").await;
    assert_eq!(code, 200, "{report}");
    assert_eq!(report["needs_upgrade"], serde_json::json!(["listen"]));
    assert_eq!(
        edge.get("/v1/x", &[]).await.status,
        200,
        "the old listener keeps serving"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_stream_to_a_removed_relay_finishes() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let both = upstreams_yaml(&ups);
    let edge = TestEdge::new(&format!("{both}{KEYED}")).start().await;
    let home = edge
        .get("/v1/x", &[("x-session-id", "streamer")])
        .await
        .upstream();
    let stream = open_stream(
        edge.addr,
        "/v1/messages?sse=6&gap_ms=200",
        &[("x-session-id", "streamer")],
    )
    .await;
    let keep = ups.iter().filter(|u| u.name != home).collect::<Vec<_>>();
    let remaining = upstreams_yaml([keep[0]]);
    edge.rewrite(&both, &remaining);
    assert_eq!(edge.admin_json("POST", "/api/reload", b"").await.0, 200);
    let r = stream
        .await
        .expect("task")
        .expect("the stream must not be cut by the reload");
    assert!(r.text().contains("message_stop"), "{}", r.text());
    assert_eq!(r.upstream(), home);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_file_reloads_by_itself() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let a_only = upstreams_yaml(&ups[..1]);
    let edge = TestEdge::new(&format!(
        "{a_only}{KEYED}reload: {{watch: true, debounce: 200ms}}\n"
    ))
    .start()
    .await;
    edge.rewrite(&a_only, &upstreams_yaml(&ups));
    eventually(
        Duration::from_secs(5),
        "generation 2 after the file changed",
        || async { edge.admin_json("GET", "/api/stats", b"").await.1["config"]["generation"] == 2 },
    )
    .await;
    assert_eq!(edge.upstream("relay-b").await["healthy"], true);
}

/// What the load saw.
#[derive(Debug)]
pub struct LoadReport {
    pub requests: usize,
    pub failures: usize,
    /// Requests resent on a new connection after a draining server closed
    /// the idle keep-alive connection they were sent on.
    pub retried: usize,
    pub streams: usize,
    pub broken: usize,
    /// Sessions that left an upstream listed as stable.
    pub moved: usize,
}

/// Keyed keep-alive clients (8) and SSE clients (3) run while `during` does.
pub async fn under_load<F, Fut>(
    edge_addr: std::net::SocketAddr,
    stable: &'static [&'static str],
    during: F,
) -> LoadReport
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    let (requests, failures, moved) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let (streams, broken) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let retried = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for client in 0..8 {
        let (stop, requests, failures, moved) = (
            stop.clone(),
            requests.clone(),
            failures.clone(),
            moved.clone(),
        );
        let retried = retried.clone();
        tasks.push(tokio::spawn(async move {
            let mut homes = std::collections::HashMap::new();
            let mut conn = Conn::open(edge_addr).await.expect("connect");
            let mut used = false;
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("load-{client}-{}", i % 20);
                i += 1;
                match conn
                    .request("GET", "/v1/x", &[("x-session-id", &key)], b"")
                    .await
                {
                    Ok(r) if r.status == 200 => {
                        requests.fetch_add(1, Ordering::Relaxed);
                        used = true;
                        if r.header("connection")
                            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                        {
                            // The server is done with this connection (a drain): open another.
                            conn = Conn::open(edge_addr).await.expect("reconnect");
                            used = false;
                        }
                        let up = r.upstream();
                        let home = homes.entry(key).or_insert_with(|| up.clone());
                        if *home != up && stable.contains(&home.as_str()) {
                            moved.fetch_add(1, Ordering::Relaxed);
                        }
                        *home = up;
                    }
                    Err(e)
                        if used
                            && matches!(
                                e.kind(),
                                std::io::ErrorKind::UnexpectedEof
                                    | std::io::ErrorKind::ConnectionReset
                            ) =>
                    {
                        // An idle keep-alive connection closed by a draining
                        // server before any answer: what every HTTP client
                        // retries on a new connection. Counted apart.
                        retried.fetch_add(1, Ordering::Relaxed);
                        conn = Conn::open(edge_addr).await.expect("reconnect");
                        used = false;
                        continue;
                    }
                    other => {
                        eprintln!(
                            "load failure: {:?}",
                            other.as_ref().map(|r| r.status).map_err(|e| e.kind())
                        );
                        failures.fetch_add(1, Ordering::Relaxed);
                        conn = Conn::open(edge_addr).await.expect("reconnect");
                    }
                }
            }
        }));
    }
    for _ in 0..3 {
        let (stop, streams, broken) = (stop.clone(), streams.clone(), broken.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let mut conn = Conn::open(edge_addr).await.expect("connect");
                let r = conn
                    .request("GET", "/v1/messages?sse=8&gap_ms=250", &[], b"")
                    .await;
                streams.fetch_add(1, Ordering::Relaxed);
                if !r.is_ok_and(|r| r.status == 200 && r.text().contains("message_stop")) {
                    broken.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    during().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("load task");
    }
    let get = |a: &Arc<AtomicUsize>| a.load(Ordering::Relaxed);
    LoadReport {
        requests: get(&requests),
        failures: get(&failures),
        retried: get(&retried),
        streams: get(&streams),
        broken: get(&broken),
        moved: get(&moved),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_drop_nothing() {
    let ups = upstreams(&["relay-a", "relay-b", "relay-c", "relay-d"]).await;
    let set = |odd: bool| {
        let (third, weight, connect) = if odd {
            (&ups[3], 2, "2s")
        } else {
            (&ups[2], 1, "3s")
        };
        format!(
            "upstreams:\n  - {{id: relay-a, addr: {}}}\n  - {{id: relay-b, addr: {}, weight: {weight}}}\n  - {{id: {}, addr: {}}}\ntimeouts: {{connect: {connect}}}\n",
            ups[0].addr, ups[1].addr, third.name, third.addr
        )
    };
    let first = set(false);
    let edge = TestEdge::new(&format!("{first}{KEYED}")).start().await;
    let path = edge.config_path();
    let admin = edge.admin;
    let load = under_load(edge.addr, &["relay-a", "relay-b"], || async {
        let mut current = first.clone();
        for n in 0..20 {
            let next = set(n % 2 == 0);
            let text = std::fs::read_to_string(&path)
                .expect("read")
                .replace(&current, &next);
            std::fs::write(&path, text).expect("write");
            current = next;
            let r = request(admin, "POST", "/api/reload", &[], b"")
                .await
                .expect("reload answers");
            assert_eq!(r.status, 200, "reload {n}: {}", r.text());
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        // An invalid file under load: refused, nothing changes.
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::write(&path, text.replace("weight:", "weigth:")).expect("write");
        let r = request(admin, "POST", "/api/reload", &[], b"")
            .await
            .expect("reload answers");
        assert_eq!(r.status, 400, "{}", r.text());
    })
    .await;
    eprintln!("reloads under load: {load:?}");
    assert!(load.requests > 100, "the load ran: {load:?}");
    assert_eq!(
        (load.failures, load.retried, load.broken, load.moved),
        (0, 0, 0, 0),
        "{load:?}"
    );
    assert!(load.streams >= 3);
    let (_, stats) = edge.admin_json("GET", "/api/stats", b"").await;
    assert_eq!(stats["config"]["generation"], 21);
    assert!(!stats["config"]["last_reload_error"].is_null());
}
