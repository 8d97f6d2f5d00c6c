//! Failover, no move back, active and passive health, drain, no upstream.

use crate::common::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const KEYED: &str = "affinity: {keys: [{header: x-session-id}]}\n";

/// Pin `key` with a first request; its upstream's name, that relay, and the other one.
async fn pin_on_one_of_two<'u>(
    edge: &Edge,
    ups: &'u [relay_edge::demo::DemoUpstream],
    key: &str,
) -> (
    String,
    &'u relay_edge::demo::DemoUpstream,
    &'u relay_edge::demo::DemoUpstream,
) {
    let home = edge.get("/v1/x", &[("x-session-id", key)]).await.upstream();
    let (home_up, other_up) = if home == ups[0].name {
        (&ups[0], &ups[1])
    } else {
        (&ups[1], &ups[0])
    };
    (home, home_up, other_up)
}

/// Pin `n` sessions and return session -> upstream.
async fn pin_sessions(edge: &Edge, n: usize) -> HashMap<String, String> {
    let mut pins = HashMap::new();
    for i in 0..n {
        let key = format!("s{i}");
        let r = edge.get("/v1/x", &[("x-session-id", &key)]).await;
        assert_eq!(r.status, 200);
        pins.insert(key, r.upstream());
    }
    pins
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_upstream_fails_over_without_client_errors_and_never_moves_back() {
    let ups = upstreams(&["relay-a", "relay-b", "relay-c"]).await;
    let edge = TestEdge::new(&format!(
        "{}{KEYED}health_check: {{path: /health, interval: 5s, timeout: 500ms}}\n",
        upstreams_yaml(&ups)
    ))
    .own_health_check()
    .start()
    .await;
    let pins = pin_sessions(&edge, 60).await;
    assert!(pins.values().any(|u| u == "relay-a"));

    // Kill relay-a; health checks are slow (5 s), so refused connects must do it.
    ups[0].kill();
    let mut moved = HashMap::new();
    for (key, home) in &pins {
        let r = edge.get("/v1/x", &[("x-session-id", key)]).await;
        assert_eq!(r.status, 200, "session {key} saw an error: {}", r.text());
        if home == "relay-a" {
            assert_ne!(r.upstream(), "relay-a");
            moved.insert(key.clone(), r.upstream());
        } else {
            assert_eq!(&r.upstream(), home, "sessions on live upstreams must stay");
        }
    }
    // Moved sessions stay where they landed ...
    for (key, new_home) in &moved {
        assert_eq!(
            &edge.get("/v1/x", &[("x-session-id", key)]).await.upstream(),
            new_home
        );
    }
    // ... also once relay-a is back and healthy.
    ups[0].revive().await.expect("revive");
    eventually(Duration::from_secs(15), "relay-a healthy again", || async {
        edge.upstream("relay-a").await["healthy"] == true
            && edge.get("/health", &[]).await.status == 200
    })
    .await;
    for (key, new_home) in &moved {
        assert_eq!(
            &edge.get("/v1/x", &[("x-session-id", key)]).await.upstream(),
            new_home,
            "no move back"
        );
    }
    let (_, stats) = edge.admin_json("GET", "/api/stats", b"").await;
    assert!(
        stats["affinity"]["repins"].as_u64().unwrap_or(0) >= moved.len() as u64,
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_health_checks_take_an_upstream_out_and_back() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let edge = TestEdge::new(&format!(
        "{}{KEYED}health_check: {{path: /health, interval: 100ms, timeout: 200ms, unhealthy_after: 2, healthy_after: 2}}\n",
        upstreams_yaml(&ups)
    ))
    .own_health_check()
    .start()
    .await;
    ups[0].set_healthy(false);
    eventually(Duration::from_secs(10), "relay-a unhealthy", || async {
        edge.upstream("relay-a").await["healthy"] == false
    })
    .await;
    for i in 0..30 {
        let r = edge
            .get("/v1/x", &[("x-session-id", &format!("h{i}"))])
            .await;
        assert_eq!(
            r.upstream(),
            "relay-b",
            "no new session may go to an unhealthy upstream"
        );
    }
    ups[0].set_healthy(true);
    eventually(Duration::from_secs(10), "relay-a healthy", || async {
        edge.upstream("relay-a").await["healthy"] == true
    })
    .await;
    let mut reached_a = false;
    for i in 0..30 {
        reached_a |= edge
            .get("/v1/x", &[("x-session-id", &format!("n{i}"))])
            .await
            .upstream()
            == "relay-a";
    }
    assert!(reached_a, "a recovered upstream takes new sessions");
    let metrics = request(edge.admin, "GET", "/metrics", &[], b"")
        .await
        .expect("metrics")
        .text();
    assert!(
        metrics.contains("relay_edge_upstream_healthy{upstream=\"relay-a\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_ejection_backs_off_and_respects_the_cap() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let edge = TestEdge::new(&format!(
        // Failure statuses pass through here (no retry on them), to see
        // passive health alone.
        "{}{KEYED}passive_health: {{max_failures: 3, failure_window: 10s, recovery_time: 3s, max_recovery_time: 30s, max_ejected_percent: 50}}\nfailover: {{retry_on_status: []}}\n",
        upstreams_yaml(&ups)
    ))
    .start()
    .await;
    // Without a key, requests spread; 503s from both would eject both without the cap.
    for _ in 0..40 {
        let r = edge.get("/status/503", &[]).await;
        assert_eq!(r.status, 503, "upstream answers pass through");
    }
    let (a, b) = (
        edge.upstream("relay-a").await,
        edge.upstream("relay-b").await,
    );
    let ejected: Vec<_> = [&a, &b]
        .iter()
        .filter(|u| u["ejected"] == true)
        .map(|u| u["id"].clone())
        .collect();
    assert_eq!(
        ejected.len(),
        1,
        "max_ejected_percent 50 allows one of two: {a} {b}"
    );
    let victim = ejected[0].as_str().expect("id").to_string();
    let first = edge.upstream(&victim).await["ejected_for_seconds"]
        .as_f64()
        .expect("secs");
    assert!(
        first > 0.0 && first <= 3.3,
        "first ejection lasts recovery_time: {first}"
    );
    // While ejected, all traffic goes to the other upstream.
    let other = if victim == "relay-a" {
        "relay-b"
    } else {
        "relay-a"
    };
    for i in 0..10 {
        assert_eq!(
            edge.get("/v1/x", &[("x-session-id", &format!("p{i}"))])
                .await
                .upstream(),
            other
        );
    }
    // Once back, fail it again through a session pinned to it: the second
    // ejection is twice as long.
    eventually(Duration::from_secs(10), "ejection over", || async {
        edge.upstream(&victim).await["ejected"] == false
    })
    .await;
    let pin = format!(r#"{{"upstream":"{victim}"}}"#);
    assert_eq!(
        edge.admin_json("PUT", "/api/sessions/vkey", pin.as_bytes())
            .await
            .0,
        200
    );
    for _ in 0..3 {
        assert_eq!(
            edge.get("/status/502", &[("x-session-id", "vkey")])
                .await
                .upstream(),
            victim
        );
    }
    let again = edge.upstream(&victim).await;
    assert_eq!(again["ejections"], 2, "{again}");
    let second = again["ejected_for_seconds"].as_f64().expect("secs");
    assert!(second > 3.3, "second ejection must back off: {second}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_moves_sessions_off_and_takes_no_new_ones() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let edge = TestEdge::new(&format!("{}{KEYED}", upstreams_yaml(&ups)))
        .start()
        .await;
    let pins = pin_sessions(&edge, 40).await;
    let on_a: Vec<&String> = pins
        .iter()
        .filter(|(_, u)| *u == "relay-a")
        .map(|(k, _)| k)
        .collect();
    assert!(!on_a.is_empty());
    let (code, body) = edge
        .admin_json("POST", "/api/upstreams/relay-a/drain", b"")
        .await;
    assert_eq!(
        (code, body["draining"].clone()),
        (200, serde_json::json!(true))
    );
    let (_, first) = edge
        .admin_json("GET", &format!("/api/sessions/{}", on_a[0]), b"")
        .await;
    assert_eq!(first["status"], "moving: upstream draining", "{first}");
    for key in &on_a {
        assert_eq!(
            edge.get("/v1/x", &[("x-session-id", key)]).await.upstream(),
            "relay-b"
        );
    }
    for i in 0..20 {
        assert_eq!(
            edge.get("/v1/x", &[("x-session-id", &format!("new{i}"))])
                .await
                .upstream(),
            "relay-b"
        );
    }
    let (_, list) = edge
        .admin_json("GET", "/api/sessions?upstream=relay-a&limit=1000", b"")
        .await;
    assert_eq!(list["sessions"].as_array().map(Vec::len), Some(0), "{list}");
    let (code, _) = edge
        .admin_json("POST", "/api/upstreams/relay-a/undrain", b"")
        .await;
    assert_eq!(code, 200);
    assert_eq!(edge.upstream("relay-a").await["draining"], false);
    let (code, _) = edge
        .admin_json("POST", "/api/upstreams/nope/drain", b"")
        .await;
    assert_eq!(code, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_upstream_gives_a_fast_json_error() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let edge = TestEdge::new(&format!(
        "{}{KEYED}timeouts: {{connect: 1s}}\n",
        upstreams_yaml(&ups)
    ))
    .start()
    .await;
    for u in &ups {
        u.kill();
    }
    for key in ["x", "y"] {
        let start = Instant::now();
        let r = edge.get("/v1/x", &[("x-session-id", key)]).await;
        assert!(r.status == 502 || r.status == 503, "status {}", r.status);
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "took {:?}",
            start.elapsed()
        );
        let json: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON error body");
        assert_eq!(json["type"], "error", "{json}");
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    // Once health checks have marked both down, the answer is an immediate 503.
    eventually(Duration::from_secs(10), "both unhealthy", || async {
        edge.upstream("relay-a").await["healthy"] == false
            && edge.upstream("relay-b").await["healthy"] == false
    })
    .await;
    let r = edge.get("/v1/x", &[("x-session-id", "z")]).await;
    assert_eq!(r.status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_failed_after_reaching_the_upstream_is_not_retried() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let edge = TestEdge::new(&format!("{}{KEYED}", upstreams_yaml(&ups)))
        .start()
        .await;
    let r = edge
        .post("/close", &[("x-session-id", "once")], b"{\"x\":1}")
        .await;
    assert_eq!(r.status, 502, "{}", r.text());
    let delivered = ups[0].requests() + ups[1].requests();
    assert_eq!(delivered, 1, "a POST must reach at most one upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_of_500_upstreams_run_in_parallel() {
    // A relay that accepts connections and never answers: each check waits
    // out its 1 s timeout, so 500 checks in a row would take over 8 minutes.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = silent.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let mut yaml = String::from("upstreams:\n");
    for i in 0..500 {
        yaml.push_str(&format!("  - {{id: r{i}, addr: {addr}}}\n"));
    }
    yaml.push_str(
        "health_check: {path: /health, interval: 30s, timeout: 1s, unhealthy_after: 1}\n",
    );
    let start = Instant::now();
    let edge = TestEdge::new(&yaml).own_health_check().start().await;
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "first round took {:?}",
        start.elapsed()
    );
    let (_, list) = edge.admin_json("GET", "/api/upstreams", b"").await;
    let list = list.as_array().expect("list");
    assert_eq!(list.len(), 500);
    assert!(
        list.iter().all(|u| u["healthy"] == false),
        "every silent relay fails its check"
    );
    let r = edge.get("/v1/x", &[]).await;
    assert_eq!(r.status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_on_a_pooled_connection_does_not_move_the_session() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let edge = TestEdge::new(&format!("{}{KEYED}", upstreams_yaml(&ups)))
        .threads(1)
        .start()
        .await;
    let (home, home_up, other_up) = pin_on_one_of_two(&edge, &ups, "steady").await;
    let connections = home_up.connections();
    // The relay closes the pooled connection as it is reused: the request
    // is sent again on a fresh connection to the same relay, and the
    // session stays put.
    home_up.drop_next(1);
    let r = edge.get("/v1/x", &[("x-session-id", "steady")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.upstream(), home);
    assert_eq!(
        home_up.connections(),
        connections + 1,
        "one fresh connection"
    );
    assert_eq!(
        other_up.requests(),
        0,
        "the other relay must not see the session"
    );
    // A relay that drops the request on the fresh connection too is dying:
    // an idempotent request goes on to the other relay, and the session
    // moves with it.
    home_up.drop_next(2);
    let r = edge.get("/v1/x", &[("x-session-id", "steady")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_ne!(r.upstream(), home, "served by the other relay");
    assert_eq!(
        edge.get("/v1/x", &[("x-session-id", "steady")])
            .await
            .upstream(),
        r.upstream(),
        "and pinned there"
    );
    let metrics = edge.metrics().await;
    assert!(
        metrics.contains("relay_edge_affinity_repins_total{reason=\"connection_lost\"} 1"),
        "{metrics}"
    );
    eventually(Duration::from_secs(5), "in-flight back to zero", || async {
        edge.upstream(&home).await["inflight"] == 0
            && edge.upstream(&r.upstream()).await["inflight"] == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_its_relay_took_and_lost_gets_a_502_and_is_not_run_twice() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let edge = TestEdge::new(&format!("{}{KEYED}", upstreams_yaml(&ups)))
        .threads(1)
        .start()
        .await;
    let (_, home_up, other_up) = pin_on_one_of_two(&edge, &ups, "billed").await;
    // The relay reads the POST on its pooled connection, then on a fresh
    // one, and drops both: it may have run it, so it is not sent elsewhere.
    home_up.drop_next(2);
    let r = edge
        .post(
            "/v1/messages",
            &[("x-session-id", "billed")],
            b"{\"model\":\"m\"}",
        )
        .await;
    assert_eq!(r.status, 502, "{}", r.text());
    let error: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON error body");
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "api_error");
    assert_eq!(other_up.requests(), 0, "never sent to another relay");
    let posts = home_up
        .recorded()
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(
        posts, 1,
        "a POST that reached the relay whole is not sent again"
    );
    let metrics = edge.metrics().await;
    assert!(
        metrics.contains("relay_edge_client_failures_total{cause=\"connection_lost\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_its_relay_reset_unanswered_is_sent_again_byte_for_byte() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let edge = TestEdge::new(&format!("{}{KEYED}", upstreams_yaml(&ups)))
        .threads(1)
        .start()
        .await;
    let (home, home_up, other_up) = pin_on_one_of_two(&edge, &ups, "resent").await;
    let body = messages_body(20_000, "resent");
    // A reset without a byte of answer: the relay never had the whole
    // request (it would have closed with a FIN). Pooled, then fresh: the
    // POST moves on, with its body.
    home_up.reset_next(2);
    let r = edge
        .post("/v1/messages", &[("x-session-id", "resent")], &body)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_ne!(r.upstream(), home);
    let got = other_up.recorded();
    let post = got
        .iter()
        .find(|r| r.method == "POST")
        .expect("the POST arrived");
    assert_eq!(post.body, body, "byte for byte");
}
