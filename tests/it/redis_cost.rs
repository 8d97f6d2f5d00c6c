//! What the shared table costs Redis: cached pins cost nothing while the
//! pub/sub link is up, a reconnect makes every cached pin be read again,
//! and the sweep is made by one edge at a time (see the README's *Redis
//! cost*). Commands are counted with Redis's own `INFO commandstats`.

use crate::common::*;
use crate::shared_table::{id_of, pin_each, plant, shared_edge, stored};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Calls per command since the server started (`INFO commandstats`),
/// without the test's own INFO calls and the edges' pub/sub pings.
pub(crate) fn commands(redis: &RedisServer) -> HashMap<String, u64> {
    redis
        .cli(&["INFO", "commandstats"])
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .filter(|(name, _)| name != "info" && name != "ping")
        .collect()
}

pub(crate) fn total_since(
    before: &HashMap<String, u64>,
    after: &HashMap<String, u64>,
) -> (u64, String) {
    let mut total = 0;
    let mut which = Vec::new();
    for (name, n) in after {
        let d = n - before.get(name).copied().unwrap_or(0);
        if d > 0 {
            total += d;
            which.push(format!("{name}={d}"));
        }
    }
    which.sort();
    (total, which.join(" "))
}

fn quiet_config(
    ups: &[relay_edge::demo::DemoUpstream],
    redis: &RedisServer,
    extra: &str,
) -> String {
    format!(
        "{}affinity: {{keys: [{{header: x-session-id}}]}}\nredis: {{url: '{}'{extra}}}\n",
        upstreams_yaml(ups),
        redis.url()
    )
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_pin_costs_redis_nothing_while_subscribed_and_a_new_session_five_commands() {
    let redis = RedisServer::start(None).await;
    let ups = upstreams(&["relay-a", "relay-b", "relay-c"]).await;
    // No sync in the test's time: what is counted is the requests' own cost.
    let edge = shared_edge(&quiet_config(&ups, &redis, ", sync_interval: 1h")).await;
    let keys: Vec<String> = (0..20).map(|i| format!("cached-{i}")).collect();
    let pins = pin_each(&edge, &keys).await;
    // The start's write-back (of an empty cache, or of these pins) is done.
    eventually(
        Duration::from_secs(10),
        "a round of cached pins is free",
        || async {
            let before = commands(&redis);
            for key in &keys {
                edge.get("/v1/x", &[("x-session-id", key)]).await;
            }
            total_since(&before, &commands(&redis)).0 == 0
        },
    )
    .await;
    let hits = metric(
        &edge.metrics().await,
        "relay_edge_affinity_lookups_total{result=\"local_hit\"}",
    );

    let before = commands(&redis);
    for round in 0..10 {
        for key in &keys {
            let r = edge.get("/v1/x", &[("x-session-id", key)]).await;
            assert_eq!(&r.upstream(), &pins[key], "{key} moved in round {round}");
        }
    }
    let (spent, which) = total_since(&before, &commands(&redis));
    assert_eq!(spent, 0, "200 requests of cached pins cost Redis {which}");

    // A new session: a lookup (HGET), a claim (EVALSHA running HGET and
    // HSET) and its index entry (SADD): three round trips.
    let before = commands(&redis);
    edge.get("/v1/x", &[("x-session-id", "brand-new")]).await;
    let (spent, which) = total_since(&before, &commands(&redis));
    assert!(spent <= 5, "a new session cost {which}");
    let metrics = edge.metrics().await;
    assert!(
        metric(
            &metrics,
            "relay_edge_affinity_lookups_total{result=\"local_hit\"}"
        ) >= hits + 200,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_pub_sub_link_is_lost_every_cached_pin_is_read_again() {
    let redis = RedisServer::start(None).await;
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let edge = shared_edge(&quiet_config(&ups, &redis, ", sync_interval: 1h")).await;
    let key = "missed-message";
    let first = edge.get("/v1/x", &[("x-session-id", key)]).await.upstream();
    let other = if first == "relay-a" {
        "relay-b"
    } else {
        "relay-a"
    };
    let id = id_of(&edge, key).await;
    // Another edge moved the session and its message was lost: the record
    // changes in Redis and nothing is published.
    let moved = stored(&redis, &id, 16384).replacen(&first, other, 1);
    plant(&redis, &id, &moved, 16384);
    for _ in 0..5 {
        assert_eq!(
            edge.get("/v1/x", &[("x-session-id", key)]).await.upstream(),
            first,
            "the cached pin is trusted while subscribed"
        );
    }
    // The link is lost (as when Redis restarts, or a middlebox drops it):
    // on resubscribing, the edge asks Redis again.
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    eventually(
        Duration::from_secs(10),
        "the edge reads the pin again after resubscribing",
        || async { edge.get("/v1/x", &[("x-session-id", key)]).await.upstream() == other },
    )
    .await;
    // And trusts it again from then on.
    eventually(Duration::from_secs(10), "cached again", || async {
        let before = commands(&redis);
        edge.get("/v1/x", &[("x-session-id", key)]).await;
        total_since(&before, &commands(&redis)).0 == 0
    })
    .await;
    assert!(
        edge.log().contains("resubscribing"),
        "the loss is logged: {}",
        edge.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_redis_restart_cached_pins_are_written_back_and_read_again() {
    let mut redis = RedisServer::start(None).await;
    let ups = upstreams(&["relay-a", "relay-b", "relay-c"]).await;
    let edge = shared_edge(&quiet_config(&ups, &redis, ", sync_interval: 1s")).await;
    let keys: Vec<String> = (0..20).map(|i| format!("restart-{i}")).collect();
    let pins = pin_each(&edge, &keys).await;
    redis.kill();
    redis.spawn().await;
    // The table was lost (no persistence): the edge writes its pins back.
    eventually(Duration::from_secs(15), "the pins written back", || async {
        redis.stored_sessions() == keys.len()
    })
    .await;
    for key in &keys {
        let r = edge.get("/v1/x", &[("x-session-id", key)]).await;
        assert_eq!(&r.upstream(), &pins[key], "{key} moved");
    }
    let (_, stats) = edge.admin_json("GET", "/api/stats", b"").await;
    assert_eq!(stats["redis"]["connected"], true, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_edges_one_sweeps_each_round_for_both() {
    let redis = RedisServer::start(None).await;
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    // A round every 200 ms (a lease of 180 ms), 64 buckets, ttl 1h: 64 x
    // 0.2 / 900 s rounds to one bucket a round.
    let conf = quiet_config(&ups, &redis, ", sync_interval: 200ms, buckets: 64");
    let (a, b) = (shared_edge(&conf).await, shared_edge(&conf).await);
    eventually(Duration::from_secs(10), "a first round", || async {
        rounds(&a, &b).await > 0
    })
    .await;
    let (start, before) = (Instant::now(), rounds(&a, &b).await);
    eventually(Duration::from_secs(20), "15 more rounds", || async {
        rounds(&a, &b).await >= before + 15
    })
    .await;
    let (made, elapsed) = (rounds(&a, &b).await - before, start.elapsed());
    // Each edge alone ticks every 200 ms: without the lease the two would
    // make 10 rounds a second. With it, one per 180 ms at most.
    let most = (elapsed.as_secs_f64() / 0.18).ceil() as u64 + 2;
    assert!(
        made <= most,
        "{made} rounds in {elapsed:?}: more than one edge per round"
    );
    // The shared cursor went on from round to round.
    let lease = redis.cli(&["GET", "relay-edge:sweep"]);
    let cursor: u64 = lease
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    assert!(
        cursor >= made,
        "cursor {cursor} after {made} rounds: {lease}"
    );
}

/// Sweep rounds made by either edge.
async fn rounds(a: &Edge, b: &Edge) -> u64 {
    metric(&a.metrics().await, "relay_edge_redis_sweep_rounds_total")
        + metric(&b.metrics().await, "relay_edge_redis_sweep_rounds_total")
}

/// `tenants.max_new_sessions_per_hour` costs one script call per new
/// session of a tenant (the tenant's hourly count), and nothing per request
/// of a known session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_limit_costs_one_call_per_new_session_and_nothing_per_request() {
    let redis = RedisServer::start(None).await;
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let conf = format!(
        "{}tenants: {{max_new_sessions_per_hour: 1000}}\n",
        quiet_config(&ups, &redis, ", sync_interval: 1h")
    );
    let edge = shared_edge(&conf).await;
    let headers = |key: &'static str| [("x-api-key", "sk-cost-tenant"), ("x-session-id", key)];
    assert_eq!(edge.get("/v1/x", &headers("warm")).await.status, 200);
    eventually(
        Duration::from_secs(10),
        "a round of a cached pin is free",
        || async {
            let before = commands(&redis);
            for _ in 0..5 {
                edge.get("/v1/x", &headers("warm")).await;
            }
            total_since(&before, &commands(&redis)).0 == 0
        },
    )
    .await;
    let before = commands(&redis);
    for _ in 0..50 {
        assert_eq!(edge.get("/v1/x", &headers("warm")).await.status, 200);
    }
    let (spent, which) = total_since(&before, &commands(&redis));
    assert_eq!(spent, 0, "50 requests of a known session cost {which}");

    // A new session: the three round trips of any new session (HGET, the
    // claim's EVALSHA running HGET and HSET, SADD: five commands) plus the
    // tenant's count (one EVALSHA running GET and INCR, and EXPIRE on the
    // hour's first): four round trips, never a second lookup.
    let before = commands(&redis);
    assert_eq!(edge.get("/v1/x", &headers("brand-new")).await.status, 200);
    let after = commands(&redis);
    let (spent, which) = total_since(&before, &after);
    let delta =
        |name: &str| after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0);
    assert!(spent <= 9, "a new session of a limited tenant cost {which}");
    assert_eq!(delta("evalsha"), 2, "the claim and the count: {which}");
    assert_eq!(delta("hget"), 2, "one lookup, one in the claim: {which}");
    assert_eq!(delta("incr"), 1, "counted once: {which}");
}

/// Pin each of `keys` to `upstream` through the admin API, then read each
/// once (an admin pin is dropped from the cache by its own message).
async fn pin_and_read(edge: &Edge, keys: &[&str], upstream: &str) {
    for key in keys {
        let body = format!(r#"{{"upstream":"{upstream}"}}"#);
        let path = format!("/api/sessions/{key}");
        let (status, _) = edge.admin_json("PUT", &path, body.as_bytes()).await;
        assert_eq!(status, 200);
        edge.get("/v1/x", &[("x-session-id", key)]).await;
    }
}

/// A capped relay costs one grant renewal (one script call) per sync
/// interval while this edge has work for it, whatever the request rate; an
/// uncapped relay costs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_relay_costs_one_call_per_sync_interval_and_an_uncapped_one_nothing() {
    let redis = RedisServer::start(None).await;
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let conf = format!(
        "upstreams:\n  - {{id: relay-a, addr: {}, max_inflight: 64}}\n  - {{id: relay-b, addr: {}}}\n\
         affinity: {{keys: [{{header: x-session-id}}]}}\nredis: {{url: '{}', sync_interval: 1h}}\n\
         capacity: {{sync_interval: 500ms, lease: 2s}}\n",
        ups[0].addr,
        ups[1].addr,
        redis.url()
    );
    let edge = shared_edge(&conf).await;
    // Only the uncapped relay: no grant is ever asked for.
    pin_and_read(&edge, &["b-0", "b-1", "b-2", "b-3"], "relay-b").await;
    let before = commands(&redis);
    for _ in 0..25 {
        for key in ["b-0", "b-1", "b-2", "b-3"] {
            assert_eq!(
                edge.get("/v1/x", &[("x-session-id", key)]).await.upstream(),
                "relay-b"
            );
        }
    }
    let (spent, which) = total_since(&before, &commands(&redis));
    assert_eq!(
        spent, 0,
        "100 requests to an uncapped relay cost Redis {which}"
    );

    // The capped relay, busy for about three seconds with four clients.
    pin_and_read(&edge, &["a-0", "a-1", "a-2", "a-3"], "relay-a").await;
    // The grant's first round over.
    eventually(Duration::from_secs(10), "relay-a idle again", || async {
        redis.cli(&["HLEN", "relay-edge:cap:relay-a"]) == "0"
    })
    .await;
    let before = commands(&redis);
    let started = Instant::now();
    let clients = ["a-0", "a-1", "a-2", "a-3"].map(|key| {
        let addr = edge.addr;
        tokio::spawn(async move {
            let (mut served, mut elsewhere) = (0u64, Vec::new());
            while started.elapsed() < Duration::from_secs(3) {
                let r = request(addr, "GET", "/v1/x", &[("x-session-id", key)], b"")
                    .await
                    .expect("an answer");
                if r.upstream() != "relay-a" {
                    elsewhere.push(format!("{key}: {} {:?}", r.upstream(), r.headers));
                }
                served += 1;
            }
            (served, elsewhere)
        })
    });
    let mut served = 0;
    for c in clients {
        let (n, elsewhere) = c.await.expect("joined");
        served += n;
        assert!(
            elsewhere.is_empty(),
            "{} requests served elsewhere, the first: {:?}",
            elsewhere.len(),
            elsewhere.first()
        );
    }
    let busy = started.elapsed();
    let after = commands(&redis);
    let calls =
        after.get("evalsha").copied().unwrap_or(0) - before.get("evalsha").copied().unwrap_or(0);
    let (spent, which) = total_since(&before, &after);
    // One renewal per 500 ms while busy, one more each time the work grew
    // past the grant (at most once per client here), the first grant, and
    // the give-back.
    let budget = busy.as_millis() as u64 / 500 + 4 + 2;
    assert!(
        calls <= budget,
        "{calls} grant calls in {busy:?} (budget {budget}) for {served} requests: {which}"
    );
    eprintln!(
        "capped relay: {calls} grant calls, {spent} commands for {served} requests ({:.4} commands per request): {which}",
        spent as f64 / served as f64
    );
}
