//! Several edges sharing one affinity table in a real redis-server.

use crate::common::*;
use std::collections::HashMap;
use std::time::Duration;

fn config(ups: &[relay_edge::demo::DemoUpstream], redis: &RedisServer) -> String {
    format!(
        "{}affinity: {{keys: [{{header: x-session-id}}]}}\nredis: {{url: '{}', sync_interval: 1s}}\n",
        upstreams_yaml(ups),
        redis.url()
    )
}

/// An edge on a reachable Redis: ready means connected to it.
pub(crate) async fn shared_edge(conf: &str) -> Edge {
    let edge = TestEdge::new(conf).start().await;
    let (_, stats) = edge.admin_json("GET", "/api/stats", b"").await;
    assert_eq!(stats["redis"]["connected"], true, "ready before connected");
    edge
}

/// Pin `key` away from `current` through `via`'s admin API (with `extra`
/// JSON members), and wait until `other` routes it there; the new upstream.
async fn pin_through(
    via: &Edge,
    other: &Edge,
    key: &str,
    current: &str,
    extra: &str,
) -> &'static str {
    let target = if current == "relay-a" {
        "relay-b"
    } else {
        "relay-a"
    };
    let body = format!(r#"{{"upstream":"{target}"{extra}}}"#);
    assert_eq!(
        via.admin_json("PUT", &format!("/api/sessions/{key}"), body.as_bytes())
            .await
            .0,
        200
    );
    eventually(
        Duration::from_secs(1),
        "the other edge follows the admin pin",
        || async {
            other
                .get("/v1/x", &[("x-session-id", key)])
                .await
                .upstream()
                == target
        },
    )
    .await;
    target
}

/// Send one request of each key, one after another, through `edge`; the
/// upstream each landed on.
pub(crate) async fn pin_each(edge: &Edge, keys: &[String]) -> HashMap<String, String> {
    let mut pins = HashMap::new();
    for key in keys {
        let up = edge.get("/v1/x", &[("x-session-id", key)]).await.upstream();
        pins.insert(key.clone(), up);
    }
    pins
}

/// Send the first request of every key to both edges at the same moment.
pub(crate) async fn first_requests_at_once(
    a: &Edge,
    b: &Edge,
    keys: &[String],
) -> HashMap<String, String> {
    let mut pins = HashMap::new();
    for chunk in keys.chunks(50) {
        let mut tasks = Vec::new();
        for key in chunk {
            let (ka, kb, key) = (a.addr, b.addr, key.clone());
            tasks.push(tokio::spawn(async move {
                let h = [("x-session-id", key.as_str())];
                let (ra, rb) = tokio::join!(
                    request(ka, "GET", "/v1/x", &h, b""),
                    request(kb, "GET", "/v1/x", &h, b"")
                );
                let (ra, rb) = (ra.expect("edge a answers"), rb.expect("edge b answers"));
                assert_eq!((ra.status, rb.status), (200, 200));
                (key, ra.upstream(), rb.upstream())
            }));
        }
        for t in tasks {
            let (key, ua, ub) = t.await.expect("task");
            assert_eq!(ua, ub, "edges disagree on {key}");
            pins.insert(key, ua);
        }
    }
    pins
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_edges_agree_follow_admin_pins_and_survive_restarts() {
    let redis = RedisServer::start(None).await;
    let ups = upstreams(&["relay-a", "relay-b", "relay-c"]).await;
    let (a, b) = (
        shared_edge(&config(&ups, &redis)).await,
        shared_edge(&config(&ups, &redis)).await,
    );
    let keys: Vec<String> = (0..1000).map(|i| format!("shared-{i}")).collect();
    let pins = first_requests_at_once(&a, &b, &keys).await;
    assert_eq!(
        pins.values()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        3,
        "sessions spread over all upstreams"
    );

    // Alternating between edges never changes the upstream.
    for key in keys.iter().take(200) {
        for edge in [&a, &b, &a, &b] {
            assert_eq!(
                &edge.get("/v1/x", &[("x-session-id", key)]).await.upstream(),
                &pins[key]
            );
        }
    }

    // An admin pin through one edge is followed by the other within a second.
    let key = &keys[0];
    let target = pin_through(&a, &b, key, &pins[key], r#","metadata":{"owner":"ops"}"#).await;
    let (code, info) = b
        .admin_json("GET", &format!("/api/sessions/{key}"), b"")
        .await;
    assert_eq!((code, info["upstream"].as_str()), (200, Some(target)));
    assert_eq!(
        info["metadata"]["owner"], "ops",
        "metadata travels through Redis: {info}"
    );

    // Pins survive restarting both edges.
    drop((a, b));
    let (a, b) = (
        shared_edge(&config(&ups, &redis)).await,
        shared_edge(&config(&ups, &redis)).await,
    );
    for key in keys.iter().skip(1).take(200) {
        assert_eq!(
            &a.get("/v1/x", &[("x-session-id", key)]).await.upstream(),
            &pins[key]
        );
        assert_eq!(
            &b.get("/v1/x", &[("x-session-id", key)]).await.upstream(),
            &pins[key]
        );
    }
    let (_, stats) = a.admin_json("GET", "/api/stats", b"").await;
    assert_eq!(stats["redis"]["connected"], true, "{stats}");
    assert!(
        stats["affinity"]["redis_hits"].as_u64().unwrap_or(0) >= 200,
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_upstream_moves_each_session_once_to_one_new_upstream() {
    let redis = RedisServer::start(None).await;
    let ups = upstreams(&["relay-a", "relay-b", "relay-c"]).await;
    let (a, b) = (
        shared_edge(&config(&ups, &redis)).await,
        shared_edge(&config(&ups, &redis)).await,
    );
    let keys: Vec<String> = (0..150).map(|i| format!("failover-{i}")).collect();
    let pins = first_requests_at_once(&a, &b, &keys).await;
    let victims: Vec<&String> = keys.iter().filter(|k| pins[*k] == "relay-a").collect();
    assert!(!victims.is_empty());
    ups[0].kill();
    // Both edges see the failure at the same moment and must land together.
    let moved = first_requests_at_once(
        &a,
        &b,
        &victims.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
    )
    .await;
    for (key, upstream) in &moved {
        assert_ne!(upstream, "relay-a", "{key}");
        // Read back from Redis through the other edge's admin API.
        let (_, stored) = b
            .admin_json("GET", &format!("/api/sessions/{key}"), b"")
            .await;
        assert_eq!(
            stored["upstream"].as_str(),
            Some(upstream.as_str()),
            "redis holds the one new pin of {key}"
        );
        for edge in [&a, &b] {
            assert_eq!(
                &edge.get("/v1/x", &[("x-session-id", key)]).await.upstream(),
                upstream
            );
        }
    }
    for key in keys.iter().filter(|k| pins[*k] != "relay-a") {
        assert_eq!(
            &b.get("/v1/x", &[("x-session-id", key)]).await.upstream(),
            &pins[key],
            "others stay"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_serves_on_and_recovers_by_itself() {
    let mut redis = RedisServer::start(None).await;
    let ups = upstreams(&["relay-a", "relay-b", "relay-c"]).await;
    let (a, b) = (
        shared_edge(&config(&ups, &redis)).await,
        shared_edge(&config(&ups, &redis)).await,
    );
    let known: Vec<String> = (0..100).map(|i| format!("known-{i}")).collect();
    let pins = first_requests_at_once(&a, &b, &known).await;

    redis.kill();
    // Known sessions keep their upstream, with zero failed requests.
    for round in 0..3 {
        for key in &known {
            for edge in [&a, &b] {
                let r = edge.get("/v1/x", &[("x-session-id", key)]).await;
                assert_eq!(r.status, 200, "round {round}: {}", r.text());
                assert_eq!(
                    &r.upstream(),
                    &pins[key],
                    "round {round}: {key} moved during the outage"
                );
            }
        }
    }
    // New sessions are placed by consistent hashing: the edges still agree.
    let fresh: Vec<String> = (0..100).map(|i| format!("outage-{i}")).collect();
    let mut agree = 0;
    for key in &fresh {
        let ua = a.get("/v1/x", &[("x-session-id", key)]).await.upstream();
        let ub = b.get("/v1/x", &[("x-session-id", key)]).await.upstream();
        agree += usize::from(ua == ub);
    }
    assert!(agree >= 95, "only {agree} of 100 outage sessions agreed");
    let (_, stats) = a.admin_json("GET", "/api/stats", b"").await;
    assert_eq!(stats["redis"]["connected"], false, "{stats}");

    // Redis comes back (empty): the edges reconnect by themselves, write the
    // pins they made meanwhile, and agree again.
    redis.restart().await;
    for edge in [&a, &b] {
        eventually(Duration::from_secs(10), "reconnected", || async {
            edge.admin_json("GET", "/api/stats", b"").await.1["redis"]["connected"] == true
        })
        .await;
    }
    eventually(Duration::from_secs(10), "outage pins written", || async {
        redis.stored_sessions() >= 100
    })
    .await;
    for key in &fresh {
        let ua = a.get("/v1/x", &[("x-session-id", key)]).await.upstream();
        let ub = b.get("/v1/x", &[("x-session-id", key)]).await.upstream();
        assert_eq!(ua, ub, "{key} after recovery");
    }
    // The sessions from before the outage were lost with Redis's data; the
    // edges wrote them back, so they keep their upstream, and Redis has them.
    for key in &known {
        for edge in [&a, &b] {
            assert_eq!(
                &edge.get("/v1/x", &[("x-session-id", key)]).await.upstream(),
                &pins[key],
                "{key} after recovery"
            );
        }
    }
    let stored = redis.stored_sessions();
    assert!(
        stored >= 200,
        "both generations of sessions are back in Redis: {stored}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_the_url_works_and_is_never_logged() {
    let redis = RedisServer::start(Some("s3cret-redis-pw")).await;
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let edge = shared_edge(&config(&ups, &redis)).await;
    for i in 0..20 {
        assert_eq!(
            edge.get("/v1/x", &[("x-session-id", &format!("pw-{i}"))])
                .await
                .status,
            200
        );
    }
    assert_eq!(redis.stored_sessions(), 20);
    let (_, stats) = edge.admin_json("GET", "/api/stats", b"").await;
    assert_eq!(stats["redis"]["connected"], true);
    assert!(!stats.to_string().contains("s3cret"), "{stats}");
    assert!(
        !edge.log().contains("s3cret"),
        "the password leaked into the log"
    );

    // A wrong password: the edge still serves, and says nothing of the secret.
    let wrong = TestEdge::new(&format!(
        "{}affinity: {{keys: [{{header: x-session-id}}]}}\nredis: {{url: 'redis://:wrong-pw-9@127.0.0.1:{}/0'}}\n",
        upstreams_yaml(&ups),
        redis.port
    ))
    .start()
    .await;
    assert_eq!(
        wrong.get("/v1/x", &[("x-session-id", "w")]).await.status,
        200
    );
    assert!(!wrong.log().contains("wrong-pw-9"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_master_cluster_gives_the_same_agreement() {
    let cluster = RedisCluster::start().await;
    let ups = upstreams(&["relay-a", "relay-b", "relay-c"]).await;
    let urls: Vec<String> = cluster.urls().iter().map(|u| format!("'{u}'")).collect();
    let conf = format!(
        "{}affinity: {{keys: [{{header: x-session-id}}]}}\nredis: {{cluster: [{}], sync_interval: 1s}}\n",
        upstreams_yaml(&ups),
        urls.join(", ")
    );
    let (a, b) = (shared_edge(&conf).await, shared_edge(&conf).await);
    let keys: Vec<String> = (0..300).map(|i| format!("cluster-{i}")).collect();
    let pins = first_requests_at_once(&a, &b, &keys).await;
    for key in keys.iter().take(100) {
        for edge in [&b, &a] {
            assert_eq!(
                &edge.get("/v1/x", &[("x-session-id", key)]).await.upstream(),
                &pins[key]
            );
        }
    }
    for node in &cluster.nodes {
        let n: usize = node.cli(&["DBSIZE"]).parse().unwrap_or(0);
        assert!(n > 30, "sessions must spread over every master: {n}");
    }
    // A pin through one edge reaches the other through the cluster's pub/sub.
    let key = &keys[0];
    pin_through(&b, &a, key, &pins[key], "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_on_one_edge_reaches_the_other() {
    let redis = RedisServer::start(None).await;
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let (a, b) = (
        shared_edge(&config(&ups, &redis)).await,
        shared_edge(&config(&ups, &redis)).await,
    );
    let keys: Vec<String> = (0..40).map(|i| format!("drain-{i}")).collect();
    let pins = first_requests_at_once(&a, &b, &keys).await;
    let (code, body) = a
        .admin_json("POST", "/api/upstreams/relay-a/drain", b"")
        .await;
    assert_eq!(
        (code, body["shared"].clone()),
        (200, serde_json::json!(true)),
        "{body}"
    );
    eventually(Duration::from_secs(1), "edge b sees the drain", || async {
        b.upstream("relay-a").await["draining"] == true
    })
    .await;
    // Through the other edge: sessions move off, and new ones never land there.
    for key in keys.iter().filter(|k| pins[*k] == "relay-a") {
        assert_eq!(
            b.get("/v1/x", &[("x-session-id", key)]).await.upstream(),
            "relay-b"
        );
    }
    for i in 0..20 {
        assert_eq!(
            b.get("/v1/x", &[("x-session-id", &format!("after-{i}"))])
                .await
                .upstream(),
            "relay-b"
        );
    }
    assert_eq!(
        b.admin_json("POST", "/api/upstreams/relay-a/undrain", b"")
            .await
            .0,
        200
    );
    eventually(
        Duration::from_secs(1),
        "edge a sees the undrain",
        || async { a.upstream("relay-a").await["draining"] == false },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_reaches_a_tls_redis() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = crate::tls::self_signed(dir.path());
    let redis = RedisServer::start_tls(&cert, &key).await;
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let edge = shared_edge(&config(&ups, &redis)).await;
    for i in 0..20 {
        assert_eq!(
            edge.get("/v1/x", &[("x-session-id", &format!("tls-{i}"))])
                .await
                .status,
            200
        );
    }
    assert_eq!(redis.stored_sessions(), 20);
    assert_eq!(
        edge.admin_json("GET", "/api/stats", b"").await.1["redis"]["connected"],
        true
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_and_counts_come_from_redis_and_idle_sessions_expire_from_both() {
    let redis = RedisServer::start(None).await;
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let conf = format!(
        "{}affinity: {{keys: [{{header: x-session-id}}], ttl: 2s}}\nredis: {{url: '{}', sync_interval: 200ms, buckets: 64}}\n",
        upstreams_yaml(&ups),
        redis.url()
    );
    let (a, b) = (shared_edge(&conf).await, shared_edge(&conf).await);
    let keys: Vec<String> = (0..10).map(|i| format!("idx-{i}")).collect();
    let mut on_a = 0;
    for key in &keys {
        on_a += usize::from(a.get("/v1/x", &[("x-session-id", key)]).await.upstream() == "relay-a");
    }
    // Edge b never saw these sessions, yet lists and counts them from Redis.
    let (_, listed) = b
        .admin_json("GET", "/api/sessions?upstream=relay-a&limit=100", b"")
        .await;
    assert_eq!(
        listed["sessions"].as_array().map(Vec::len),
        Some(on_a),
        "{listed}"
    );
    eventually(Duration::from_secs(3), "counts from the index", || async {
        b.admin_json("GET", "/api/stats", b"").await.1["sessions"]["count"] == 10
    })
    .await;

    // Keep half of them busy; the idle half expires from Redis and its index.
    let (busy, idle) = keys.split_at(5);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        for key in busy {
            a.get("/v1/x", &[("x-session-id", key)]).await;
        }
        if redis.stored_sessions() == 5 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "idle sessions never expired: {}",
            redis.stored_sessions()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each expiry was swept by one edge, and its life observed there once
    // (never more: checked again at the end).
    let swept = |text: String| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix("relay_edge_session_duration_seconds_count "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    // The edge observes it as the sweep's reply comes back, just after
    // Redis dropped the records.
    eventually(
        Duration::from_secs(5),
        "5 session lives observed",
        || async { swept(a.metrics().await) + swept(b.metrics().await) == 5 },
    )
    .await;
    let (_, all) = b.admin_json("GET", "/api/sessions?limit=100", b"").await;
    let listed: Vec<&str> = all["sessions"]
        .as_array()
        .map(|l| l.iter().filter_map(|s| s["upstream"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        listed.len(),
        5,
        "the index lost the expired sessions too: {all}"
    );
    for key in idle {
        assert_eq!(
            b.admin_json("GET", &format!("/api/sessions/{key}"), b"")
                .await
                .0,
            404,
            "{key} should be gone"
        );
    }
    assert_eq!(
        swept(a.metrics().await) + swept(b.metrics().await),
        5,
        "no life observed twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_the_table_to_another_redis_and_applies_ttl_and_log_level() {
    let (old, new) = (
        RedisServer::start(None).await,
        RedisServer::start(None).await,
    );
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let conf = |redis: &RedisServer| {
        format!(
            "{}affinity: {{keys: [{{header: x-session-id}}], ttl: 1h}}\nredis: {{url: '{}', sync_interval: 200ms}}\n",
            upstreams_yaml(&ups),
            redis.url()
        )
    };
    let edge = shared_edge(&conf(&old)).await;
    let mut pins = HashMap::new();
    for i in 0..20 {
        let key = format!("move-{i}");
        let up = edge
            .get("/v1/x", &[("x-session-id", &key)])
            .await
            .upstream();
        pins.insert(key, up);
    }
    assert_eq!(old.stored_sessions(), 20);

    edge.rewrite(&old.url(), &new.url());
    edge.rewrite("ttl: 1h", "ttl: 2h");
    edge.rewrite("log_level: info", "log_level: debug");
    let (code, report) = edge.admin_json("POST", "/api/reload", b"").await;
    assert_eq!(code, 200, "{report}");
    assert_eq!(report["needs_upgrade"], serde_json::json!([]), "{report}");
    eventually(
        Duration::from_secs(10),
        "the new Redis seeded with the cached pins",
        || async { new.stored_sessions() == 20 },
    )
    .await;
    for (key, up) in &pins {
        assert_eq!(
            &edge.get("/v1/x", &[("x-session-id", key)]).await.upstream(),
            up,
            "{key} moved"
        );
    }
    let (_, session) = edge.admin_json("GET", "/api/sessions/move-0", b"").await;
    let left = session["ttl_left_seconds"].as_u64().unwrap_or(0);
    assert!(left > 3600, "the new 2h TTL applies: {session}");
    edge.get("/v1/x", &[("x-session-id", "born-after")]).await;
    assert_eq!(
        new.stored_sessions(),
        21,
        "new sessions go to the new Redis"
    );
    assert!(
        edge.log().contains("log level is now debug"),
        "{}",
        edge.log()
    );

    // Another edge on the new Redis follows every pin.
    let other = shared_edge(&conf(&new)).await;
    for (key, up) in &pins {
        assert_eq!(
            &other
                .get("/v1/x", &[("x-session-id", key)])
                .await
                .upstream(),
            up,
            "{key} differs on the second edge"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_edges_serve_every_known_session_from_their_first_request() {
    let redis = RedisServer::start(None).await;
    let ups = upstreams(&["relay-a", "relay-b", "relay-c"]).await;
    let keys: Vec<String> = (0..60).map(|i| format!("known-{i}")).collect();
    let pins = pin_each(&shared_edge(&config(&ups, &redis)).await, &keys).await;
    // Both edges start anew. Ready is the first moment they serve; from
    // there on every known session goes to its pin, none is placed anew.
    let (a, b) = (
        TestEdge::new(&config(&ups, &redis)).start().await,
        TestEdge::new(&config(&ups, &redis)).start().await,
    );
    for (i, key) in keys.iter().enumerate() {
        let edge = if i % 2 == 0 { &a } else { &b };
        assert_eq!(
            edge.get("/v1/x", &[("x-session-id", key)]).await.upstream(),
            pins[key],
            "{key} moved after the restart"
        );
    }
    let metrics = a.metrics().await;
    assert!(
        metrics.contains("relay_edge_affinity_lookups_total{result=\"miss\"} 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_is_not_ready_until_redis_answers_and_then_places_through_it() {
    let mut redis = RedisServer::unstarted();
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let conf = format!(
        "{}affinity: {{keys: [{{header: x-session-id}}]}}\nredis: {{url: '{}', connect_wait: 60s}}\n",
        upstreams_yaml(&ups),
        redis.url()
    );
    let edge = TestEdge::new(&conf).threads(1).start_unready().await;
    // The admin service answers, and says not ready, while Redis is away.
    eventually(
        Duration::from_secs(20),
        "the admin service answers",
        || async {
            request(edge.admin, "GET", "/readyz", &[], b"")
                .await
                .is_ok()
        },
    )
    .await;
    let (code, body) = edge.admin_json("GET", "/readyz", b"").await;
    assert_eq!(code, 503, "{body}");
    // A keyed request that arrives now waits for the table.
    let early = {
        let addr = edge.addr;
        tokio::spawn(async move {
            request(addr, "GET", "/v1/x", &[("x-session-id", "early")], b"").await
        })
    };
    redis.spawn().await;
    edge.wait_ready(Duration::from_secs(20)).await;
    let r = early.await.expect("task").expect("answered");
    assert_eq!(r.status, 200);
    // Its pin was claimed in Redis: another edge follows it.
    let other = shared_edge(&conf).await;
    assert_eq!(
        other
            .get("/v1/x", &[("x-session-id", "early")])
            .await
            .upstream(),
        r.upstream()
    );
    let metrics = edge.metrics().await;
    assert!(
        metrics.contains("relay_edge_affinity_lookups_total{result=\"miss\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_an_edge_serves_degraded_after_connect_wait_and_says_so() {
    let redis = RedisServer::unstarted();
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let edge = TestEdge::new(&format!(
        "{}affinity: {{keys: [{{header: x-session-id}}]}}\nredis: {{url: '{}', connect_wait: 300ms}}\n",
        upstreams_yaml(&ups),
        redis.url()
    ))
    .start()
    .await;
    let r = edge.get("/v1/x", &[("x-session-id", "alone")]).await;
    assert_eq!(r.status, 200);
    assert!(edge.log().contains("serving DEGRADED"), "{}", edge.log());
}

/// The bucket hash and the raw field of a session (by its hex id), with
/// the default prefix and `buckets` buckets.
fn bucket_of(id_hex: &str, buckets: u32) -> String {
    let top = u32::from_str_radix(&id_hex[..8], 16).expect("hex id");
    format!("relay-edge:b:{}", top % buckets)
}

const HEX_FIELD: &str =
    "local f = (string.gsub(ARGV[1], '..', function(h) return string.char(tonumber(h, 16)) end))";

/// Write `value` as the stored record of session `id_hex`.
pub(crate) fn plant(redis: &RedisServer, id_hex: &str, value: &str, buckets: u32) {
    let script = format!("{HEX_FIELD} return redis.call('HSET', KEYS[1], f, ARGV[2])");
    redis.cli(&[
        "EVAL",
        &script,
        "1",
        &bucket_of(id_hex, buckets),
        id_hex,
        value,
    ]);
}

/// The stored record of session `id_hex`.
pub(crate) fn stored(redis: &RedisServer, id_hex: &str, buckets: u32) -> String {
    let script = format!("{HEX_FIELD} return redis.call('HGET', KEYS[1], f)");
    redis.cli(&["EVAL", &script, "1", &bucket_of(id_hex, buckets), id_hex])
}

/// The hex id of `key`, as the admin API shows it.
pub(crate) async fn id_of(edge: &Edge, key: &str) -> String {
    let (code, s) = edge
        .admin_json("GET", &format!("/api/sessions/{key}"), b"")
        .await;
    assert_eq!(code, 200, "{s}");
    s["id"].as_str().expect("id").to_string()
}

fn small_table(ups: &[relay_edge::demo::DemoUpstream], redis: &RedisServer) -> String {
    format!(
        "{}affinity: {{keys: [{{header: x-session-id}}]}}\nredis: {{url: '{}', sync_interval: 200ms, buckets: 4}}\n",
        upstreams_yaml(ups),
        redis.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_record_is_one_sessions_problem_and_is_repaired() {
    let redis = RedisServer::start(None).await;
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let a = shared_edge(&small_table(&ups, &redis)).await;
    let home = a
        .get("/v1/x", &[("x-session-id", "broken")])
        .await
        .upstream();
    let (cold, cold_id) = {
        let seed = shared_edge(&small_table(&ups, &redis)).await;
        let up = seed
            .get("/v1/x", &[("x-session-id", "cold")])
            .await
            .upstream();
        (up, id_of(&seed, "cold").await)
    };
    let broken = id_of(&a, "broken").await;
    // Edge a has "broken" cached and renews it (a script on a bad value);
    // a fresh edge b reads "cold", which no running edge has cached (a
    // value that does not parse).
    plant(&redis, &broken, &format!("{home}\tx\ty\tz\tw"), 4);
    plant(&redis, &cold_id, "garbage", 4);
    let r = a.get("/v1/x", &[("x-session-id", "broken")]).await;
    assert_eq!(r.upstream(), home, "served from the cache meanwhile");
    eventually(
        Duration::from_secs(10),
        "the renewal repairs the record",
        || async {
            stored(&redis, &broken, 4).starts_with(&format!("{home}\t"))
                && !stored(&redis, &broken, 4).contains('x')
        },
    )
    .await;
    let b = shared_edge(&small_table(&ups, &redis)).await;
    let r = b.get("/v1/x", &[("x-session-id", "cold")]).await;
    assert_eq!(r.status, 200);
    assert!(
        stored(&redis, &cold_id, 4).starts_with(&format!("{}\t", r.upstream())),
        "placed anew and claimed (was on {cold})"
    );
    let again = a.get("/v1/x", &[("x-session-id", "broken")]).await;
    assert_eq!(again.upstream(), home, "the session never moved");
    // Whichever edge met a bad record first (a's sweep, or b's lookup)
    // repaired and counted it; neither counted an outage.
    let mut record_errors = 0;
    for edge in [&a, &b] {
        let (_, stats) = edge.admin_json("GET", "/api/stats", b"").await;
        assert_eq!(
            stats["redis"]["connected"], true,
            "Redis stays in use: {stats}"
        );
        assert_eq!(
            stats["redis"]["errors"], 0,
            "no outage was counted: {stats}"
        );
        record_errors += stats["redis"]["record_errors"].as_u64().unwrap_or(0);
    }
    assert!(
        record_errors >= 2,
        "both bad records counted: {record_errors}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_of_a_newer_format_is_left_alone() {
    let redis = RedisServer::start(None).await;
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let a = shared_edge(&small_table(&ups, &redis)).await;
    a.get("/v1/x", &[("x-session-id", "future")]).await;
    let id = id_of(&a, "future").await;
    let newer = "/2\trelay-b\t{\"some\":\"future layout\"}";
    plant(&redis, &id, newer, 4);
    let b = shared_edge(&small_table(&ups, &redis)).await;
    let r = b.get("/v1/x", &[("x-session-id", "future")]).await;
    assert_eq!(r.status, 200, "served, by this edge's own placement");
    assert_eq!(
        stored(&redis, &id, 4),
        newer,
        "neither adopted nor overwritten"
    );
    // Sweeps and renewals leave it too.
    eventually(Duration::from_secs(10), "a few syncs", || async {
        b.get("/v1/x", &[("x-session-id", "future")]).await;
        let (_, s) = b.admin_json("GET", "/api/stats", b"").await;
        s["redis"]["record_errors"].as_u64() >= Some(2)
    })
    .await;
    assert_eq!(stored(&redis, &id, 4), newer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_counts_converge_after_a_crash_between_a_pin_and_its_index() {
    let redis = RedisServer::start(None).await;
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let a = shared_edge(&small_table(&ups, &redis)).await;
    let mut truth: HashMap<String, usize> = HashMap::new();
    for i in 0..40 {
        let up = a
            .get("/v1/x", &[("x-session-id", &format!("count-{i}"))])
            .await
            .upstream();
        *truth.entry(up).or_default() += 1;
    }
    // As if edges had crashed between their scripts and index writes: one
    // index lost, the other holding entries that belong to the first.
    let ids: Vec<String> = redis
        .cli(&["SMEMBERS", "relay-edge:i:relay-a"])
        .lines()
        .map(str::to_string)
        .collect();
    assert!(!ids.is_empty());
    redis.cli(&[
        "RENAME",
        "relay-edge:i:relay-a",
        "relay-edge:i:relay-b-extra",
    ]);
    redis.cli(&[
        "SUNIONSTORE",
        "relay-edge:i:relay-b",
        "relay-edge:i:relay-b",
        "relay-edge:i:relay-b-extra",
    ]);
    redis.cli(&["DEL", "relay-edge:i:relay-b-extra"]);
    eventually(
        Duration::from_secs(20),
        "counts equal the table",
        || async {
            let a_count = a.upstream("relay-a").await["sessions"].as_u64();
            let b_count = a.upstream("relay-b").await["sessions"].as_u64();
            a_count == Some(truth.get("relay-a").copied().unwrap_or(0) as u64)
                && b_count == Some(truth.get("relay-b").copied().unwrap_or(0) as u64)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_local_ttl_moves_no_known_session() {
    let mut redis = RedisServer::start(None).await;
    let ups = upstreams(&["relay-a", "relay-b", "relay-c"]).await;
    let edge = shared_edge(&format!(
        "{}affinity: {{keys: [{{header: x-session-id}}]}}\nredis: {{url: '{}', local_ttl: 100ms}}\n",
        upstreams_yaml(&ups),
        redis.url()
    ))
    .await;
    let keys: Vec<String> = (0..30).map(|i| format!("long-outage-{i}")).collect();
    let pins = pin_each(&edge, &keys).await;
    redis.kill();
    // For ten times local_ttl, every cached pin goes stale and is asked of
    // Redis again, which cannot answer: the session stays where it was.
    let until = std::time::Instant::now() + Duration::from_secs(1);
    let mut rounds = 0;
    while std::time::Instant::now() < until {
        for key in &keys {
            let r = edge.get("/v1/x", &[("x-session-id", key)]).await;
            assert_eq!(r.status, 200);
            assert_eq!(&r.upstream(), &pins[key], "{key} moved in round {rounds}");
        }
        rounds += 1;
    }
    assert!(rounds >= 2, "the outage outlasted local_ttl");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_answer_is_waited_for_and_moves_no_session() {
    let redis = RedisServer::start(None).await;
    let ups = upstreams(&["relay-a", "relay-b", "relay-c"]).await;
    let keys: Vec<String> = (0..10).map(|i| format!("slow-{i}")).collect();
    let pins = pin_each(&shared_edge(&config(&ups, &redis)).await, &keys).await;
    // A fresh edge knows none of them: each lookup asks Redis, which stalls
    // for twice the 100 ms timeout: the first try times out, the patient
    // one (400 ms more) is answered, with room for a busy machine.
    let edge = shared_edge(&format!(
        "{}affinity: {{keys: [{{header: x-session-id}}]}}\nredis: {{url: '{}', timeout: 100ms}}\n",
        upstreams_yaml(&ups),
        redis.url()
    ))
    .await;
    for key in &keys {
        redis.cli(&["CLIENT", "PAUSE", "200", "ALL"]);
        let r = edge.get("/v1/x", &[("x-session-id", key)]).await;
        assert_eq!(
            &r.upstream(),
            &pins[key],
            "{key} moved while Redis was slow"
        );
    }
    let (_, stats) = edge.admin_json("GET", "/api/stats", b"").await;
    assert_eq!(stats["redis"]["errors"], 0, "slow is not down: {stats}");
    assert_eq!(stats["redis"]["connected"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_edge_follows_pins_made_after_redis_restarted() {
    let mut redis = RedisServer::start(None).await;
    let ups = upstreams(&["relay-a", "relay-b", "relay-c"]).await;
    // Edge A makes no Redis call of its own for the whole test (no sync
    // tick, no cached pin to write back): its first call after the restart
    // is a request's lookup.
    let idle = shared_edge(&format!(
        "{}affinity: {{keys: [{{header: x-session-id}}]}}\nredis: {{url: '{}', sync_interval: 1h}}\n",
        upstreams_yaml(&ups),
        redis.url()
    ))
    .await;
    redis.kill();
    // The outage under test: longer than the connection manager's own
    // reconnect attempts (about 0.6 s), so that the connection A holds is a
    // failed one when Redis is back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.spawn().await;
    // Another edge, started on the restarted (empty) Redis, places them.
    let keys: Vec<String> = (0..12).map(|i| format!("after-restart-{i}")).collect();
    let pins = pin_each(&shared_edge(&config(&ups, &redis)).await, &keys).await;
    assert!(
        pins.values()
            .collect::<std::collections::HashSet<_>>()
            .len()
            > 1,
        "spread over upstreams: {pins:?}"
    );
    // A asks Redis: the lost connection is remade, not taken for an outage
    // (which would place them by consistent hashing instead).
    for key in &keys {
        let r = idle.get("/v1/x", &[("x-session-id", key)]).await;
        assert_eq!(&r.upstream(), &pins[key], "{key} moved on the idle edge");
    }
    let (_, stats) = idle.admin_json("GET", "/api/stats", b"").await;
    assert_eq!(stats["redis"]["connected"], true, "{stats}");
    assert_eq!(stats["redis"]["pending_pins"], 0, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_moved_for_failed_answers_is_moved_for_every_edge() {
    use relay_edge::demo::Fault;
    let redis = RedisServer::start(None).await;
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let conf = format!(
        "{}passive_health: {{max_failures: 1000}}\n",
        config(&ups, &redis)
    );
    let (a, b) = (shared_edge(&conf).await, shared_edge(&conf).await);
    let home = a.get("/v1/x", &[("x-session-id", "o")]).await.upstream();
    assert_eq!(
        b.get("/v1/x", &[("x-session-id", "o")]).await.upstream(),
        home
    );
    let (home_up, other) = if ups[0].name == home {
        (&ups[0], &ups[1].name)
    } else {
        (&ups[1], &ups[0].name)
    };
    // Three overloaded answers in a row through edge A (move_pin's default):
    // the third moves the pin, by the same compare-and-set as a failover.
    home_up.fail_next(3, Fault::Status(529));
    for _ in 0..3 {
        let r = a
            .post("/v1/messages", &[("x-session-id", "o")], b"{}")
            .await;
        assert_eq!((r.status, &r.upstream()), (200, other));
    }
    eventually(
        Duration::from_secs(2),
        "edge B follows the moved pin",
        || async { b.get("/v1/x", &[("x-session-id", "o")]).await.upstream() == *other },
    )
    .await;
    assert_eq!(
        &a.get("/v1/x", &[("x-session-id", "o")]).await.upstream(),
        other
    );
}
