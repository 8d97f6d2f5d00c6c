//! Tenants (issue 21, item 4): session keys namespaced by API key, the
//! per-tenant limits answered 429 with `Retry-After` and a
//! `rate_limit_error`, held across edges through Redis, the admin session
//! routes' `?tenant=`, and no raw API key anywhere the edge writes.

use crate::common::http::Response;
use crate::common::*;
use crate::shared_table::shared_edge;
use relay_edge::affinity::KeyHasher;
use relay_edge::config::Defaults;
use serde_json::Value;
use std::time::Duration;

const KEY_A: &str = "sk-ant-api03-tenant-a-SECRET-aaaaaaaaaaaaaaaa";
const KEY_B: &str = "sk-ant-api03-tenant-b-SECRET-bbbbbbbbbbbbbbbb";

/// A tenant's hash as the admin API shows it (the default secret).
fn tenant_hex(credential: &str) -> String {
    KeyHasher::new(Defaults::HASH_SECRET)
        .tenant(credential.as_bytes())
        .to_hex()
}

fn keyed<'a>(api_key: &'a str, session: &'a str) -> [(&'a str, &'a str); 2] {
    [("x-api-key", api_key), ("x-session-id", session)]
}

/// A 429 of a tenant's limit: `Retry-After` within `max` seconds, and the
/// Anthropic `rate_limit_error` body.
fn assert_rate_limited(r: &Response, max: u64, what: &str) {
    assert_eq!(r.status, 429, "{what}: {}", r.text());
    let after: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{what}: a Retry-After in seconds: {:?}", r.headers));
    assert!((1..=max).contains(&after), "{what}: Retry-After {after}");
    let body: Value = serde_json::from_slice(&r.body).expect("a JSON body");
    assert_eq!(body["type"], "error", "{what}");
    assert_eq!(body["error"]["type"], "rate_limit_error", "{what}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("relay-edge: ")),
        "{what}: {body}"
    );
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

fn other(relay: &str) -> &'static str {
    if relay == "relay-a" {
        "relay-b"
    } else {
        "relay-a"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_session_under_two_api_keys_gets_two_independent_pins() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let edge = TestEdge::new(&format!(
        "{}affinity: {{keys: [{{header: x-session-id}}]}}\n",
        upstreams_yaml(&ups)
    ))
    .start()
    .await;
    let (a, b) = (tenant_hex(KEY_A), tenant_hex(KEY_B));
    let session = "shared-session-1";

    // Tenant A places the session; tenant B is pinned, by the admin API,
    // on the other relay under the same session id.
    let first = edge.get("/v1/x", &keyed(KEY_A, session)).await;
    assert_eq!(first.status, 200);
    let on_a = first.upstream();
    let put = format!(r#"{{"upstream": "{}"}}"#, other(&on_a));
    let (status, pinned) = edge
        .admin_json(
            "PUT",
            &format!("/api/sessions/{session}?tenant={b}"),
            put.as_bytes(),
        )
        .await;
    assert_eq!(status, 200, "{pinned}");
    for round in 0..5 {
        let ra = edge.get("/v1/x", &keyed(KEY_A, session)).await;
        let rb = edge.get("/v1/x", &keyed(KEY_B, session)).await;
        assert_eq!(ra.upstream(), on_a, "tenant A stays, round {round}");
        assert_eq!(rb.upstream(), other(&on_a), "tenant B's pin, round {round}");
    }
    // The Authorization bearer token is the same tenant as x-api-key.
    let bearer = format!("Bearer {KEY_B}");
    let rb = edge
        .get(
            "/v1/x",
            &[("authorization", &bearer), ("x-session-id", session)],
        )
        .await;
    assert_eq!(rb.upstream(), other(&on_a), "the bearer token is tenant B");

    // The admin lookup of each tenant's session.
    let get = |tenant: Option<&str>| {
        let path = match tenant {
            Some(t) => format!("/api/sessions/{session}?tenant={t}"),
            None => format!("/api/sessions/{session}"),
        };
        let edge = &edge;
        async move { edge.admin_json("GET", &path, b"").await }
    };
    let (status, view) = get(Some(&a)).await;
    assert_eq!((status, view["upstream"].as_str()), (200, Some(&*on_a)));
    let (status, view) = get(Some(&b)).await;
    assert_eq!(
        (status, view["upstream"].as_str()),
        (200, Some(other(&on_a)))
    );
    let (status, _) = get(None).await;
    assert_eq!(status, 404, "no keyless session was made");
    let (status, _) = get(Some("not-a-tenant")).await;
    assert_eq!(status, 400, "a malformed tenant is refused");

    // Without an API key the id is today's: the plain keyed hash of the key.
    let keyless = edge.get("/v1/x", &[("x-session-id", session)]).await;
    assert_eq!(keyless.status, 200);
    let (status, view) = get(None).await;
    assert_eq!(status, 200);
    let today = KeyHasher::new(Defaults::HASH_SECRET).id(session.as_bytes());
    assert_eq!(view["id"], today.to_hex(), "the keyless id is unchanged");
    assert_eq!(view["upstream"].as_str(), Some(&*keyless.upstream()));

    // B forgets its session: A's pin is untouched.
    let (status, _) = edge
        .admin_json(
            "DELETE",
            &format!("/api/sessions/{session}?tenant={b}"),
            b"",
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(get(Some(&b)).await.0, 404);
    let (status, view) = get(Some(&a)).await;
    assert_eq!((status, view["upstream"].as_str()), (200, Some(&*on_a)));

    // Both tenants are in the top table, as hashes.
    let (_, stats) = edge.admin_json("GET", "/api/stats", b"").await;
    let listed: Vec<&str> = stats["tenants"]["by_requests"]
        .as_array()
        .expect("a ranking")
        .iter()
        .filter_map(|t| t["tenant"].as_str())
        .collect();
    assert!(listed.contains(&&*a) && listed.contains(&&*b), "{stats}");
    assert_eq!(stats["tenants"]["enabled"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tenants_off_an_api_key_keeps_todays_session_id() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let edge = TestEdge::new(&format!(
        "{}affinity: {{keys: [{{header: x-session-id}}]}}\ntenants: {{from: []}}\n",
        upstreams_yaml(&ups)
    ))
    .start()
    .await;
    let r = edge.get("/v1/x", &keyed(KEY_A, "old-session")).await;
    assert_eq!(r.status, 200);
    let (status, view) = edge
        .admin_json("GET", "/api/sessions/old-session", b"")
        .await;
    assert_eq!(status, 200, "the pin is under today's id");
    let today = KeyHasher::new(Defaults::HASH_SECRET).id(b"old-session");
    assert_eq!(view["id"], today.to_hex());
    let (_, stats) = edge.admin_json("GET", "/api/stats", b"").await;
    assert_eq!(stats["tenants"]["enabled"], false);
    assert_eq!(stats["tenants"]["tracked"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_past_its_in_flight_limit_gets_429_on_both_paths_until_its_slot_frees() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let edge = TestEdge::new(&format!(
        "{}affinity: {{keys: [{{header: x-session-id}}]}}\ntenants: {{max_inflight_per_session: 1}}\n",
        upstreams_yaml(&ups)
    ))
    .start()
    .await;
    let session = "fan-out";
    let headers = keyed(KEY_A, session);
    let held_body = br#"{"model":"m","stream":true}"#;

    // A slow stream on Pingora's path holds the session's one slot.
    let slow = open_stream(edge.addr, "/v1/x?sse=20&gap_ms=100", &headers).await;
    let plain = edge.get("/v1/x", &headers).await;
    assert_rate_limited(&plain, 1, "a second request on Pingora's path");
    let held = edge
        .post("/v1/messages?sse=2&gap_ms=1", &headers, held_body)
        .await;
    assert_rate_limited(&held, 1, "a second request on the held path");
    // Another session of the tenant, and the same session of another
    // tenant, have slots of their own.
    assert_eq!(edge.get("/v1/x", &keyed(KEY_A, "other")).await.status, 200);
    assert_eq!(edge.get("/v1/x", &keyed(KEY_B, session)).await.status, 200);
    let done = slow.await.expect("task").expect("the slow stream ends");
    assert_eq!(done.status, 200);
    assert!(done.text().contains("message_stop"), "served whole");
    // The slot comes back with the end of the stream.
    eventually(
        Duration::from_secs(5),
        "the next request is served",
        || async { edge.get("/v1/x", &headers).await.status == 200 },
    )
    .await;

    // A held stream holds the slot the same way (a session of its own: the
    // last request's slot is given back just after its answer is read).
    let headers = keyed(KEY_A, "fan-out-held");
    let slow = open_stream_with(
        edge.addr,
        "POST",
        "/v1/messages?sse=20&gap_ms=100",
        &headers,
        held_body,
    )
    .await;
    assert_rate_limited(
        &edge.get("/v1/x", &headers).await,
        1,
        "behind a held stream",
    );
    let done = slow.await.expect("task").expect("ends");
    assert_eq!(done.status, 200, "{}", done.text());
    eventually(
        Duration::from_secs(5),
        "served after the held stream",
        || async { edge.get("/v1/x", &headers).await.status == 200 },
    )
    .await;

    // Three refusals at least (the polls above may add some while a slot
    // is being given back), counted alike in the metric and the stats.
    let metrics = edge.metrics().await;
    let refused = metric(
        &metrics,
        "relay_edge_tenant_rejections_total{reason=\"session_inflight\"}",
    );
    assert!(refused >= 3, "{metrics}");
    let (_, stats) = edge.admin_json("GET", "/api/stats", b"").await;
    let top = &stats["tenants"]["by_rejections"][0];
    assert_eq!(top["tenant"], tenant_hex(KEY_A), "{stats}");
    assert_eq!(top["rejections"], refused);
    assert_eq!(stats["tenants"]["rejections"]["session_inflight"], refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_sessions_per_hour_are_counted_across_two_edges_sharing_redis() {
    let redis = RedisServer::start(None).await;
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let conf = format!(
        "{}affinity: {{keys: [{{header: x-session-id}}]}}\nredis: {{url: '{}', sync_interval: 1s}}\ntenants: {{max_new_sessions_per_hour: 3}}\n",
        upstreams_yaml(&ups),
        redis.url()
    );
    let (one, two) = (shared_edge(&conf).await, shared_edge(&conf).await);
    let a = tenant_hex(KEY_A);
    // Three new sessions of tenant A, on either edge.
    for (edge, session) in [(&one, "n1"), (&two, "n2"), (&one, "n3")] {
        let r = edge.get("/v1/x", &keyed(KEY_A, session)).await;
        assert_eq!(r.status, 200, "{session}: {}", r.text());
    }
    // The fourth is refused on both edges, and is not pinned.
    for (edge, name) in [(&one, "edge one"), (&two, "edge two")] {
        let r = edge.get("/v1/x", &keyed(KEY_A, "n4")).await;
        assert_rate_limited(&r, 3600, name);
        let (status, _) = edge
            .admin_json("GET", &format!("/api/sessions/n4?tenant={a}"), b"")
            .await;
        assert_eq!(status, 404, "{name}: a refused session is not pinned");
    }
    // Its known sessions go on, on either edge; another tenant is free.
    for edge in [&one, &two] {
        for session in ["n1", "n2", "n3"] {
            let r = edge.get("/v1/x", &keyed(KEY_A, session)).await;
            assert_eq!(r.status, 200, "known session {session}");
        }
    }
    assert_eq!(two.get("/v1/x", &keyed(KEY_B, "n4")).await.status, 200);
    // One counter per tenant and hour, the tenant in its hash tag.
    let keys = redis.cli(&["KEYS", "relay-edge:t:*"]);
    assert!(
        keys.contains(&format!("relay-edge:t:{{{a}}}:new:")),
        "{keys}"
    );
    let mut counts = 0;
    for key in keys.lines().filter(|k| k.contains(&a)) {
        counts += 1;
        assert_eq!(redis.cli(&["GET", key.trim()]).trim(), "3", "{key}");
        let ttl: i64 = redis.cli(&["TTL", key.trim()]).trim().parse().unwrap_or(-1);
        assert!(ttl > 0, "{key} expires");
    }
    assert_eq!(counts, 1, "{keys}");
    let mut rejected = 0;
    for edge in [&one, &two] {
        rejected += metric(
            &edge.metrics().await,
            "relay_edge_tenant_rejections_total{reason=\"new_sessions\"}",
        );
    }
    assert_eq!(rejected, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_new_sessions_are_counted_per_edge() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let edge = TestEdge::new(&format!(
        "{}affinity: {{keys: [{{header: x-session-id}}]}}\ntenants: {{max_new_sessions_per_hour: 2}}\n",
        upstreams_yaml(&ups)
    ))
    .start()
    .await;
    assert_eq!(edge.get("/v1/x", &keyed(KEY_A, "s1")).await.status, 200);
    assert_eq!(edge.get("/v1/x", &keyed(KEY_A, "s2")).await.status, 200);
    assert_rate_limited(
        &edge.get("/v1/x", &keyed(KEY_A, "s3")).await,
        3600,
        "the third",
    );
    assert_eq!(edge.get("/v1/x", &keyed(KEY_A, "s1")).await.status, 200);
    // Requests without a session key, or without a tenant, are not limited.
    assert_eq!(edge.get("/v1/x", &[("x-api-key", KEY_A)]).await.status, 200);
    assert_eq!(
        edge.get("/v1/x", &[("x-session-id", "s9")]).await.status,
        200
    );
    let (_, stats) = edge.admin_json("GET", "/api/stats", b"").await;
    let top = &stats["tenants"]["by_sessions_created"][0];
    assert_eq!(top["tenant"], tenant_hex(KEY_A), "{stats}");
    assert_eq!(top["sessions_created"], 2, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_raw_api_key_reaches_the_stats_the_metrics_the_log_or_the_access_log() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let access = dir.path().join("access.log");
    let edge = TestEdge::new(&format!(
        "{}affinity: {{keys: [{{header: x-session-id}}]}}\naccess_log: {{path: {}, query: true}}\ntenants: {{max_new_sessions_per_hour: 1}}\n",
        upstreams_yaml(&ups),
        access.display()
    ))
    .start()
    .await;
    let bearer = format!("Bearer {KEY_B}");
    let mut sent = 0;
    for (i, headers) in [
        vec![("x-api-key", KEY_A), ("x-session-id", "secret-1")],
        vec![("x-api-key", KEY_A), ("x-session-id", "secret-2")],
        vec![
            ("authorization", bearer.as_str()),
            ("x-session-id", "secret-3"),
        ],
    ]
    .iter()
    .enumerate()
    {
        let r = edge.get("/v1/x", headers).await;
        assert_eq!(r.status, if i == 1 { 429 } else { 200 }, "request {i}");
        sent += 1;
    }
    let lines = wait::until(Duration::from_secs(5), || async {
        let text = std::fs::read_to_string(&access).unwrap_or_default();
        (text.lines().count() >= sent).then_some(text)
    })
    .await
    .expect("every request is logged");
    let stats = edge
        .admin_request("GET", "/api/stats", b"")
        .await
        .expect("stats")
        .text();
    let metrics = edge.metrics().await;
    let log = edge.log();
    for (name, text) in [
        ("the access log", &lines),
        ("/api/stats", &stats),
        ("/metrics", &metrics),
        ("the log", &log),
    ] {
        for secret in [KEY_A, KEY_B, "SECRET"] {
            assert!(!text.contains(secret), "{name} shows an API key");
        }
    }
    assert!(stats.contains(&tenant_hex(KEY_A)), "the hash is shown");
    assert!(lines.contains("429"), "the refusal is logged");
}
