//! In-process reload: build to one side, swap, reject bad files whole.

use crate::common::*;
use std::time::Duration;

const KEYED: &str = "affinity: {keys: [{header: x-session-id}]}\n";

fn rewrite(edge: &Edge, from: &str, to: &str) {
    let path = edge.config_path();
    let text = std::fs::read_to_string(&path).expect("read config");
    assert!(text.contains(from), "config lacks {from:?}");
    std::fs::write(&path, text.replace(from, to)).expect("write config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_upstreams_and_rejects_a_bad_file_whole() {
    let ups = upstreams(&["relay-a", "relay-b", "relay-c"]).await;
    let (ab, ac) = (
        upstreams_yaml(&ups[..2]),
        upstreams_yaml([&ups[0], &ups[2]]),
    );
    let edge = Edge::start(&format!("{ab}{KEYED}")).await;
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

    rewrite(&edge, &ab, &ac);
    let (code, report) = edge.admin_json("POST", "/api/reload", b"").await;
    assert_eq!(code, 200, "{report}");
    assert_eq!(report["generation"], 2);
    assert_eq!(report["added"], serde_json::json!(["relay-c"]));
    assert_eq!(report["removed"], serde_json::json!(["relay-b"]));
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

    // A broken file is rejected whole; the running config stays.
    rewrite(&edge, &format!("addr: {}", ups[2].addr), "addr: nowhere");
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
    rewrite(&edge, "addr: nowhere", &format!("addr: {}", ups[2].addr));
    assert_eq!(edge.admin_json("POST", "/api/reload", b"").await.0, 200);
    assert!(
        edge.admin_json("GET", "/api/stats", b"").await.1["config"]["last_reload_error"].is_null()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_listener_changes_are_reported_as_needing_an_upgrade() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let a_only = upstreams_yaml(&ups[..1]);
    let edge = Edge::start(&format!("{a_only}{KEYED}")).await;
    rewrite(&edge, &a_only, &upstreams_yaml(&ups));
    edge.signal("HUP");
    eventually(
        Duration::from_secs(5),
        "generation 2 after SIGHUP",
        || async { edge.admin_json("GET", "/api/stats", b"").await.1["config"]["generation"] == 2 },
    )
    .await;
    let new_port = free_port();
    rewrite(
        &edge,
        &format!("addr: {}}}]\nadmin", edge.addr),
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
    let edge = Edge::start(&format!("{both}{KEYED}")).await;
    let home = edge
        .get("/v1/x", &[("x-session-id", "streamer")])
        .await
        .upstream();
    let mut conn = Conn::open(edge.addr).await.expect("connect");
    conn.send_raw(&raw_request(
        "GET",
        "/v1/messages?sse=6&gap_ms=200",
        &[("x-session-id", "streamer")],
        b"",
    ))
    .await
    .expect("send");
    let stream = tokio::spawn(async move { conn.read_response(|_| {}).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let keep = ups.iter().filter(|u| u.name != home).collect::<Vec<_>>();
    let remaining = upstreams_yaml([keep[0]]);
    rewrite(&edge, &both, &remaining);
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
    let edge = Edge::start(&format!(
        "{a_only}{KEYED}reload: {{watch: true, debounce: 200ms}}\n"
    ))
    .await;
    rewrite(&edge, &a_only, &upstreams_yaml(&ups));
    eventually(
        Duration::from_secs(5),
        "generation 2 after the file changed",
        || async { edge.admin_json("GET", "/api/stats", b"").await.1["config"]["generation"] == 2 },
    )
    .await;
    assert_eq!(edge.upstream("relay-b").await["healthy"], true);
}
