//! Relay capacity (`max_inflight`): a cap the relay itself never sees
//! exceeded, a fair queue in front of it, 529 past it, pins that yield, and
//! the cap held across edges by leased grants in a real redis-server.

use crate::common::http::Response;
use crate::common::*;
use relay_edge::demo::DemoUpstream;
use std::time::Duration;

/// The fleet's upstreams with `max_inflight` set on the first of them.
fn capped_yaml(ups: &[DemoUpstream], cap: u32) -> String {
    let mut y = String::from("upstreams:\n");
    for (i, u) in ups.iter().enumerate() {
        let cap = if i == 0 {
            format!(", max_inflight: {cap}")
        } else {
            String::new()
        };
        y.push_str(&format!("  - {{id: {}, addr: {}{cap}}}\n", u.name, u.addr));
    }
    y
}

/// `n` GETs at once through `edge`, each held `hold_ms` by the relay; the
/// answers, in the order sent.
async fn burst(edge: &Edge, n: usize, hold_ms: u64, headers: &[(&str, &str)]) -> Vec<Response> {
    let path = format!("/v1/x?hold_ms={hold_ms}");
    let sent = (0..n).map(|_| {
        let (addr, path) = (edge.addr, path.clone());
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        tokio::spawn(async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (&**k, &**v)).collect();
            request(addr, "GET", &path, &h, b"")
                .await
                .expect("an answer")
        })
    });
    let mut answers = Vec::new();
    for task in sent.collect::<Vec<_>>() {
        answers.push(task.await.expect("joined"));
    }
    answers
}

/// Send `path` (with `headers`) through `edge` in the background, and wait
/// until relay `up` has it in hand; its answer, once it comes.
async fn in_hand(
    edge: &Edge,
    up: &DemoUpstream,
    path: &str,
    headers: &[(&str, &str)],
) -> tokio::task::JoinHandle<Response> {
    let before = up.in_flight();
    let (addr, path) = (edge.addr, path.to_string());
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let task = tokio::spawn(async move {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (&**k, &**v)).collect();
        request(addr, "GET", &path, &h, b"")
            .await
            .expect("an answer")
    });
    eventually(
        Duration::from_secs(5),
        "the relay has it in hand",
        || async { up.in_flight() > before },
    )
    .await;
    task
}

fn statuses(answers: &[Response]) -> Vec<u16> {
    answers.iter().map(|r| r.status).collect()
}

/// The value of one series in Prometheus text (0 when absent).
fn series(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_capped_relay_never_has_more_than_its_cap_and_a_burst_within_the_queue_is_served_whole() {
    let ups = upstreams(&["relay-a"]).await;
    let edge = TestEdge::new(&format!(
        "{}capacity: {{queue_max: 32}}\n",
        capped_yaml(&ups, 4)
    ))
    .threads(2)
    .start()
    .await;
    let answers = burst(&edge, 16, 300, &[]).await;
    assert_eq!(statuses(&answers), vec![200; 16], "the whole burst served");
    assert_eq!(ups[0].requests(), 16);
    assert_eq!(ups[0].max_in_flight(), 4, "at its cap, never past it");
    // A slot is given back as the edge ends its request, just after the
    // client has the last byte of its answer.
    eventually(Duration::from_secs(5), "every slot given back", || async {
        edge.upstream("relay-a").await["capacity"]["inflight"] == 0
    })
    .await;
    let view = edge.upstream("relay-a").await;
    assert_eq!(view["capacity"]["max_inflight"], 4);
    assert_eq!(view["capacity"]["grant"], 4);
    assert_eq!(view["capacity"]["queued"], 0);
    let m = edge.metrics().await;
    assert_eq!(
        series(
            &m,
            "relay_edge_upstream_queue_wait_seconds_count{upstream=\"relay-a\"}"
        ),
        16.0
    );
    assert_eq!(
        series(&m, "relay_edge_upstream_queue_length{upstream=\"relay-a\"}"),
        0.0
    );
}

#[tokio::test]
async fn beyond_the_queue_or_its_deadline_clients_get_529_with_retry_after() {
    let ups = upstreams(&["relay-a"]).await;
    let edge = TestEdge::new(&format!(
        "{}capacity: {{queue_max: 2, queue_timeout: 20s}}\n",
        capped_yaml(&ups, 1)
    ))
    .start()
    .await;
    // One in hand, two queued: the fourth to sixth are refused at once.
    let held = in_hand(&edge, &ups[0], "/v1/x?hold_ms=3000", &[]).await;
    let queued: Vec<_> = (0..2)
        .map(|_| {
            let addr = edge.addr;
            tokio::spawn(async move { request(addr, "GET", "/v1/x", &[], b"").await })
        })
        .collect();
    eventually(Duration::from_secs(5), "two queued", || async {
        edge.upstream("relay-a").await["capacity"]["queued"] == 2
    })
    .await;
    for _ in 0..3 {
        let refused = edge.get("/v1/x", &[]).await;
        assert_eq!(refused.status, 529, "{}", refused.text());
        assert!(
            refused
                .header("retry-after")
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|s| s >= 1),
            "Retry-After: {:?}",
            refused.header("retry-after")
        );
        let body: serde_json::Value = serde_json::from_slice(&refused.body).expect("JSON");
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "overloaded_error");
    }
    assert_eq!(held.await.expect("joined").status, 200);
    for q in queued {
        assert_eq!(q.await.expect("joined").expect("answer").status, 200);
    }
    assert_eq!(ups[0].max_in_flight(), 1);
    let m = edge.metrics().await;
    assert_eq!(
        series(
            &m,
            "relay_edge_capacity_rejections_total{reason=\"queue_full\",upstream=\"relay-a\"}"
        ),
        3.0
    );

    // A wait past `queue_timeout` is refused too.
    let edge = TestEdge::new(&format!(
        "{}capacity: {{queue_timeout: 200ms}}\n",
        capped_yaml(&ups, 1)
    ))
    .start()
    .await;
    let held = in_hand(&edge, &ups[0], "/v1/x?hold_ms=2000", &[]).await;
    let late = edge.get("/v1/x", &[]).await;
    assert_eq!(late.status, 529);
    assert!(late.header("retry-after").is_some());
    assert_eq!(held.await.expect("joined").status, 200);
    let m = edge.metrics().await;
    assert_eq!(
        series(
            &m,
            "relay_edge_capacity_rejections_total{reason=\"timeout\",upstream=\"relay-a\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn a_client_that_leaves_the_queue_frees_its_place_at_once() {
    let ups = upstreams(&["relay-a"]).await;
    let edge = TestEdge::new(&format!(
        "{}capacity: {{queue_max: 1}}\n",
        capped_yaml(&ups, 1)
    ))
    .start()
    .await;
    let held = in_hand(&edge, &ups[0], "/v1/x?hold_ms=2000", &[]).await;
    // It queues, then its client goes away.
    let mut leaving = Conn::open(edge.addr).await.expect("connects");
    leaving
        .send_raw(&raw_request("GET", "/v1/gone", &[], b""))
        .await
        .expect("sent");
    eventually(Duration::from_secs(5), "it queued", || async {
        edge.upstream("relay-a").await["capacity"]["queued"] == 1
    })
    .await;
    drop(leaving);
    eventually(Duration::from_secs(5), "its place is free", || async {
        edge.upstream("relay-a").await["capacity"]["queued"] == 0
    })
    .await;
    // The place it left takes the next one, which is served.
    let next = tokio::spawn({
        let addr = edge.addr;
        async move { request(addr, "GET", "/v1/next", &[], b"").await }
    });
    assert_eq!(held.await.expect("joined").status, 200);
    assert_eq!(next.await.expect("joined").expect("answer").status, 200);
    let paths: Vec<String> = ups[0].recorded().iter().map(|r| r.path.clone()).collect();
    assert!(
        !paths.iter().any(|p| p == "/v1/gone"),
        "the relay never saw the request whose client left: {paths:?}"
    );
}

#[tokio::test]
async fn a_pinned_relay_at_its_cap_is_waited_for_then_the_session_spills_once() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let edge = TestEdge::new(&format!(
        "{}affinity: {{keys: [{{header: x-session-id}}], pin_wait: 2s}}\n",
        capped_yaml(&ups, 1)
    ))
    .start()
    .await;
    // Pin `s1` to relay-a.
    let (status, _) = edge
        .admin_json("PUT", "/api/sessions/s1", br#"{"upstream":"relay-a"}"#)
        .await;
    assert_eq!(status, 200);
    let (status, _) = edge
        .admin_json("PUT", "/api/sessions/holder", br#"{"upstream":"relay-a"}"#)
        .await;
    assert_eq!(status, 200);
    // A slot freed within the wait (a second at most, of two): served on
    // its own relay.
    let short = in_hand(
        &edge,
        &ups[0],
        "/v1/x?hold_ms=1000",
        &[("x-session-id", "holder")],
    )
    .await;
    let stayed = edge.get("/v1/x", &[("x-session-id", "s1")]).await;
    assert_eq!(stayed.upstream(), "relay-a");
    assert_eq!(stayed.header("x-relay-edge-affinity"), Some("hit"));
    assert_eq!(short.await.expect("joined").status, 200);
    // Its slot comes back as the edge ends the request, just after the
    // client has the answer: only then is relay-a filled again.
    eventually(
        Duration::from_secs(5),
        "relay-a's slots are back",
        || async { edge.upstream("relay-a").await["capacity"]["inflight"] == 0 },
    )
    .await;
    // Full past the wait: it goes to relay-b, and the pin follows, once.
    let long = in_hand(
        &edge,
        &ups[0],
        "/v1/x?hold_ms=6000",
        &[("x-session-id", "holder")],
    )
    .await;
    let spilled = edge.get("/v1/x", &[("x-session-id", "s1")]).await;
    assert_eq!(spilled.upstream(), "relay-b");
    assert_eq!(spilled.header("x-relay-edge-affinity"), Some("moved"));
    let after = edge.get("/v1/x", &[("x-session-id", "s1")]).await;
    assert_eq!(after.upstream(), "relay-b", "the pin moved with it");
    assert_eq!(after.header("x-relay-edge-affinity"), Some("hit"));
    assert_eq!(long.await.expect("joined").status, 200);
    let m = edge.metrics().await;
    assert_eq!(
        series(&m, "relay_edge_affinity_repins_total{reason=\"capacity\"}"),
        1.0
    );
    assert_eq!(
        series(
            &m,
            "relay_edge_capacity_pin_waits_total{outcome=\"served\"}"
        ),
        1.0
    );
    assert_eq!(
        series(
            &m,
            "relay_edge_capacity_pin_waits_total{outcome=\"spilled\"}"
        ),
        1.0
    );
    // New sessions go where there is room while relay-a is full.
    let long = in_hand(
        &edge,
        &ups[0],
        "/v1/x?hold_ms=1000",
        &[("x-session-id", "holder")],
    )
    .await;
    for i in 0..10 {
        let key = format!("new-{i}");
        let r = edge.get("/v1/x", &[("x-session-id", &key)]).await;
        assert_eq!(r.upstream(), "relay-b", "{key}");
    }
    let _ = long.await;
}

fn shared_yaml(ups: &[DemoUpstream], cap: u32, redis: &RedisServer, extra: &str) -> String {
    format!(
        "{}affinity: {{keys: [{{header: x-session-id}}]}}\nredis: {{url: '{}'}}\ncapacity: {{sync_interval: 200ms, lease: 1s{extra}}}\n",
        capped_yaml(ups, cap),
        redis.url()
    )
}

#[tokio::test]
async fn two_edges_sharing_redis_never_pass_the_cap_between_them() {
    let redis = RedisServer::start(None).await;
    let ups = upstreams(&["relay-a"]).await;
    let conf = shared_yaml(&ups, 4, &redis, "");
    let (a, b) = (
        TestEdge::new(&conf).start().await,
        TestEdge::new(&conf).start().await,
    );
    let (on_a, on_b) = tokio::join!(burst(&a, 10, 300, &[]), burst(&b, 10, 300, &[]));
    assert_eq!(statuses(&on_a), vec![200; 10]);
    assert_eq!(statuses(&on_b), vec![200; 10]);
    assert_eq!(ups[0].requests(), 20);
    assert!(
        ups[0].max_in_flight() <= 4,
        "the relay saw {} at once",
        ups[0].max_in_flight()
    );
    // Both idle again: their grants are given back.
    eventually(
        Duration::from_secs(5),
        "the grants are given back",
        || async { redis.cli(&["HLEN", "relay-edge:cap:relay-a"]).trim() == "0" },
    )
    .await;
}

#[tokio::test]
async fn a_killed_edges_share_is_free_within_the_lease_and_one_sync() {
    let redis = RedisServer::start(None).await;
    let ups = upstreams(&["relay-a"]).await;
    // A queued request is refused past 4 s: served, it proves that the dead
    // edge's share came free within lease (1 s) + one sync (200 ms), with
    // room for a busy machine.
    let conf = shared_yaml(&ups, 4, &redis, ", queue_timeout: 4s");
    let mut a = TestEdge::new(&conf).start().await;
    let b = TestEdge::new(&conf).start().await;
    // `a` takes the whole cap.
    let holding: Vec<_> = (0..4)
        .map(|_| {
            let addr = a.addr;
            tokio::spawn(async move { request(addr, "GET", "/v1/x?hold_ms=60000", &[], b"").await })
        })
        .collect();
    eventually(Duration::from_secs(5), "a holds the cap", || async {
        ups[0].in_flight() == 4
    })
    .await;
    // `b` can take nothing now: its request queues.
    let waiting = tokio::spawn({
        let addr = b.addr;
        async move { request(addr, "GET", "/v1/x", &[], b"").await }
    });
    eventually(Duration::from_secs(5), "b's request queues", || async {
        b.upstream("relay-a").await["capacity"]["queued"] == 1
    })
    .await;
    assert_eq!(b.upstream("relay-a").await["capacity"]["grant"], 0);
    a.signal("KILL");
    assert_eq!(
        waiting.await.expect("joined").expect("answer").status,
        200,
        "served once a's grant lapsed, within queue_timeout"
    );
    // And it may have the whole cap in flight.
    let whole = tokio::spawn({
        let addr = b.addr;
        async move {
            let edge_b = (0..4).map(|_| request(addr, "GET", "/v1/x?hold_ms=2000", &[], b""));
            futures::future::join_all(edge_b).await
        }
    });
    eventually(
        Duration::from_secs(5),
        "b has the whole cap in flight",
        || async { b.upstream("relay-a").await["capacity"]["inflight"] == 4 },
    )
    .await;
    for r in whole.await.expect("joined") {
        assert_eq!(r.expect("answer").status, 200);
    }
    drop(holding);
    let _ = a.wait_exit(Duration::from_secs(5));
}

/// Redis goes away while an edge is idle: `share` admits the cap over the
/// edges last seen, `closed` refuses with 529, `open` drops the cap.
#[tokio::test]
async fn with_redis_down_each_on_redis_down_does_what_it_says() {
    for (policy, want) in [("share", 200), ("closed", 529), ("open", 200)] {
        let mut redis = RedisServer::start(None).await;
        let ups = upstreams(&["relay-a"]).await;
        let conf = shared_yaml(&ups, 2, &redis, &format!(", on_redis_down: {policy}"));
        let edge = TestEdge::new(&conf).start().await;
        assert_eq!(edge.get("/v1/x", &[]).await.status, 200, "{policy}: up");
        redis.kill();
        // Past the lease: the policy decides.
        eventually(Duration::from_secs(10), "the lease lapsed", || async {
            let c = &edge.upstream("relay-a").await["capacity"];
            c["redis_failing"] == true && c["lease_left_ms"] == 0
        })
        .await;
        let r = edge.get("/v1/x", &[]).await;
        assert_eq!(r.status, want, "{policy}: {}", r.text());
        if policy == "closed" {
            let m = edge.metrics().await;
            assert_eq!(
                series(
                    &m,
                    "relay_edge_capacity_rejections_total{reason=\"redis_down\",upstream=\"relay-a\"}"
                ),
                1.0,
                "{policy}"
            );
        }
        let at_once = burst(&edge, 4, 500, &[]).await;
        let most = ups[0].max_in_flight();
        match policy {
            "share" => {
                assert_eq!(statuses(&at_once), vec![200; 4]);
                assert!(most <= 2, "{policy}: {most} at once");
            }
            "closed" => assert_eq!(statuses(&at_once), vec![529; 4]),
            _ => {
                assert_eq!(statuses(&at_once), vec![200; 4]);
                assert_eq!(most, 4, "{policy}: no cap");
            }
        }
    }
}

/// The grant script's decision, run by a real Redis. Each case: the other
/// edges' fields (`grant:want:expiry`, an expiry of 1 has passed), then
/// this edge's cap, want and in-flight count, and what it gets: its grant,
/// its fair share, and the edges that want some.
#[tokio::test]
async fn the_grant_script_shares_a_cap_max_min_fairly_and_never_past_it() {
    let redis = RedisServer::start(None).await;
    const LIVE: &str = "99999999999999";
    let live = |g: u32, w: u32| format!("{g}:{w}:{LIVE}");
    /// A case: its name, the other edges' fields, [cap, want, in flight],
    /// and [grant, fair share, edges].
    type Case = (&'static str, Vec<String>, [u32; 3], [u32; 3]);
    let cases: Vec<Case> = vec![
        (
            "alone, wanting less than the cap",
            vec![],
            [8, 3, 0],
            [3, 3, 1],
        ),
        (
            "alone, wanting more than the cap",
            vec![],
            [8, 20, 0],
            [8, 8, 1],
        ),
        (
            "two busy edges: half each",
            vec![live(4, 20)],
            [8, 20, 0],
            [4, 4, 2],
        ),
        (
            "the other wants one: the rest is ours",
            vec![live(1, 1)],
            [8, 20, 0],
            [7, 7, 2],
        ),
        (
            "the other still holds it all: nothing yet, a share to come",
            vec![live(8, 8)],
            [8, 5, 0],
            [0, 4, 2],
        ),
        (
            "holding more than its share: kept until it ends",
            vec![live(2, 8)],
            [8, 8, 6],
            [6, 4, 2],
        ),
        (
            "an expired grant is reaped",
            vec!["8:8:1".to_string()],
            [8, 8, 0],
            [8, 8, 1],
        ),
        (
            "an unreadable field is reaped",
            vec!["garbage".to_string()],
            [8, 8, 0],
            [8, 8, 1],
        ),
        (
            "three edges, the share rounds down",
            vec![live(3, 9), live(3, 9)],
            [10, 9, 0],
            [3, 3, 3],
        ),
        (
            "an idle edge gives its grant back",
            vec![live(4, 4)],
            [8, 0, 0],
            [0, 0, 1],
        ),
    ];
    for (i, (name, others, [cap, want, held], expected)) in cases.into_iter().enumerate() {
        let key = format!("relay-edge:cap:t{i}");
        for (n, value) in others.iter().enumerate() {
            redis.cli(&["HSET", &key, &format!("other-{n}"), value]);
        }
        let reply = redis.cli(&[
            "EVAL",
            relay_edge::capacity::lease::SCRIPT,
            "1",
            &key,
            "me",
            &cap.to_string(),
            &want.to_string(),
            &held.to_string(),
            "3000",
        ]);
        let got: Vec<u32> = reply
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        assert_eq!(got, expected, "{name}: {reply}");
        let mine = redis.cli(&["HGET", &key, "me"]);
        if want == 0 {
            assert_eq!(mine, "", "{name}: an idle edge has no field");
        } else {
            assert!(
                mine.starts_with(&format!("{}:{want}:", expected[0])),
                "{name}: stored {mine:?}"
            );
        }
        let fields = redis.cli(&["HLEN", &key]);
        let live_others = others.iter().filter(|v| v.ends_with(LIVE)).count();
        assert_eq!(
            fields,
            (live_others + usize::from(want > 0)).to_string(),
            "{name}: expired and unreadable fields reaped"
        );
    }
}

/// Send `path` through `edge` as `api_key`'s, and wait until it is queued
/// at relay-a (the queue then holds `queued_after`).
async fn queue_one(
    edge: &Edge,
    path: &str,
    api_key: &str,
    queued_after: u64,
) -> tokio::task::JoinHandle<std::io::Result<Response>> {
    let (addr, path, key) = (edge.addr, path.to_string(), api_key.to_string());
    let task =
        tokio::spawn(async move { request(addr, "GET", &path, &[("x-api-key", &key)], b"").await });
    eventually(Duration::from_secs(5), "queued in turn", || async {
        edge.upstream("relay-a").await["capacity"]["queued"] == queued_after
    })
    .await;
    task
}

/// The queue is first in, first out within a tenant and round robin across
/// tenants: a burst of one API key cannot make another's request wait
/// behind all of it.
#[tokio::test]
async fn the_queue_keeps_a_tenants_order_and_takes_tenants_in_turn() {
    let ups = upstreams(&["relay-a"]).await;
    let edge = TestEdge::new(&capped_yaml(&ups, 1)).start().await;
    let holder = in_hand(&edge, &ups[0], "/v1/hold?hold_ms=1000", &[]).await;
    // Tenant `busy` queues a burst of five, then `quiet` queues one.
    let mut queued = Vec::new();
    for i in 1..=5 {
        let path = format!("/v1/busy-{i}?hold_ms=50");
        queued.push(queue_one(&edge, &path, "busy-key", i).await);
    }
    queued.push(queue_one(&edge, "/v1/quiet?hold_ms=50", "quiet-key", 6).await);
    assert_eq!(holder.await.expect("joined").status, 200);
    for q in queued {
        assert_eq!(q.await.expect("joined").expect("answer").status, 200);
    }
    let order: Vec<String> = ups[0]
        .recorded()
        .iter()
        .map(|r| r.path.split('?').next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        order,
        [
            "/v1/hold",
            "/v1/busy-1",
            "/v1/quiet",
            "/v1/busy-2",
            "/v1/busy-3",
            "/v1/busy-4",
            "/v1/busy-5"
        ],
        "in order within a tenant, the quiet tenant's turn second"
    );
}
