//! Pins forgotten or moved in bulk: `DELETE /api/sessions?upstream=ID |
//! ?tenant=HASH | ?all=true` and `relay-edge ctl purge` on one edge and on
//! two edges that share a real redis-server (in batches, no KEYS),
//! `upstreams[].on_remove: purge` on a reload and on a drain, and
//! `failover.on_eject: move` against `keep`.

use crate::common::http::Response;
use crate::common::*;
use crate::ctl::ctl;
use crate::redis_cost::{commands, metric, total_since};
use crate::shared_table::shared_edge;
use relay_edge::affinity::KeyHasher;
use relay_edge::config::Defaults;
use std::collections::HashMap;
use std::time::Duration;

const KEYED: &str = "affinity: {keys: [{header: x-session-id}]}\n";

/// What affinity did for an answer (`x-relay-edge-affinity`).
fn affinity(r: &Response) -> String {
    r.header("x-relay-edge-affinity").unwrap_or("").to_string()
}

/// A tenant's hash as the admin API shows it (the default secret).
fn tenant_hex(api_key: &str) -> String {
    KeyHasher::new(Defaults::HASH_SECRET)
        .tenant(api_key.as_bytes())
        .to_hex()
}

/// The sessions the admin API lists on `upstream`.
async fn listed(edge: &Edge, upstream: &str) -> usize {
    let (code, list) = edge
        .admin_json(
            "GET",
            &format!("/api/sessions?upstream={upstream}&limit=10000"),
            b"",
        )
        .await;
    assert_eq!(code, 200, "{list}");
    list["sessions"].as_array().map_or(0, Vec::len)
}

/// Pin `key` to `upstream` through the admin API (of `tenant`, if given).
async fn pin(edge: &Edge, key: &str, upstream: &str, tenant: Option<&str>) {
    let path = match tenant {
        Some(t) => format!("/api/sessions/{key}?tenant={t}"),
        None => format!("/api/sessions/{key}"),
    };
    let body = format!(r#"{{"upstream":"{upstream}"}}"#);
    let (code, s) = edge.admin_json("PUT", &path, body.as_bytes()).await;
    assert_eq!(code, 200, "{s}");
}

/// Records in redis's buckets whose pin names `upstream` (the test's own
/// look at every bucket: KEYS here is the test's, after what it measures).
fn stored_on(redis: &RedisServer, upstream: &str) -> usize {
    let script = "local n = 0 for _, k in ipairs(redis.call('KEYS', 'relay-edge:b:*')) do \
        for _, v in ipairs(redis.call('HVALS', k)) do \
        if string.match(v, '^[^\\t]*') == ARGV[1] then n = n + 1 end end end return n";
    redis
        .cli(&["EVAL", script, "0", upstream])
        .parse()
        .unwrap_or(usize::MAX)
}

/// Records in redis's buckets of tenant `hex` (their sixth field).
fn stored_of_tenant(redis: &RedisServer, hex: &str) -> usize {
    let script = "local n = 0 for _, k in ipairs(redis.call('KEYS', 'relay-edge:b:*')) do \
        for _, v in ipairs(redis.call('HVALS', k)) do \
        if string.match(v, '^[^\\t]*\\t[^\\t]*\\t[^\\t]*\\t[^\\t]*\\t[^\\t]*\\t([^\\t]*)') == ARGV[1] then n = n + 1 end end end return n";
    redis
        .cli(&["EVAL", script, "0", hex])
        .parse()
        .unwrap_or(usize::MAX)
}

fn index_size(redis: &RedisServer, upstream: &str) -> usize {
    redis
        .cli(&["SCARD", &format!("relay-edge:i:{upstream}")])
        .parse()
        .unwrap_or(usize::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_on_one_edge_without_redis_forgets_what_it_names() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let edge = TestEdge::new(&format!("{}{KEYED}", upstreams_yaml(&ups)))
        .start()
        .await;
    let keys: Vec<String> = (0..30).map(|i| format!("solo-{i}")).collect();
    let mut pins = HashMap::new();
    for key in &keys {
        let r = edge.get("/v1/x", &[("x-session-id", key)]).await;
        pins.insert(key.clone(), r.upstream());
    }
    let on_a: Vec<&String> = keys.iter().filter(|k| pins[*k] == "relay-a").collect();
    assert!(!on_a.is_empty() && on_a.len() < keys.len(), "{pins:?}");

    // Without a selector, or with two: refused, nothing purged.
    for query in ["", "?limit=5", "?upstream=relay-a&all=true", "?all=yes"] {
        let (code, body) = edge
            .admin_json("DELETE", &format!("/api/sessions{query}"), b"")
            .await;
        assert_eq!(code, 400, "{query}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
    }
    assert_eq!(listed(&edge, "relay-a").await, on_a.len());

    let (code, purged) = edge
        .admin_json("DELETE", "/api/sessions?upstream=relay-a", b"")
        .await;
    assert_eq!(code, 200, "{purged}");
    assert_eq!(purged["purged"], "upstream relay-a");
    assert_eq!(purged["removed"], on_a.len() as u64, "{purged}");
    assert_eq!(purged["local"], on_a.len() as u64, "{purged}");
    assert_eq!(purged["shared"], false);
    assert_eq!(listed(&edge, "relay-a").await, 0, "gone at once");
    assert_eq!(listed(&edge, "relay-b").await, keys.len() - on_a.len());
    // Their next request is placed anew; the others keep their relay.
    for key in &keys {
        let r = edge.get("/v1/x", &[("x-session-id", key)]).await;
        let want = if on_a.contains(&key) { "new" } else { "hit" };
        assert_eq!(affinity(&r), want, "{key}");
    }
    let metrics = edge.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "relay_edge_affinity_purged_total{reason=\"admin\"}"
        ),
        on_a.len() as u64
    );

    let (code, all) = edge
        .admin_json("DELETE", "/api/sessions?all=true", b"")
        .await;
    assert_eq!((code, all["removed"].clone()), (200, keys.len().into()));
    assert_eq!(
        listed(&edge, "relay-a").await + listed(&edge, "relay-b").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_purge_says_what_it_removed_and_refuses_without_a_selector() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let edge = TestEdge::new(&format!("{}{KEYED}", upstreams_yaml(&ups)))
        .threads(1)
        .token("purge-token")
        .ports_in_config()
        .start()
        .await;
    let conf = edge.config_path();
    for i in 0..3 {
        pin(&edge, &format!("c{i}"), "relay-a", None).await;
    }
    let r = ctl(&conf, &["purge", "--upstream", "relay-a"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "purged upstream relay-a: 3 pins removed from this edge's table; their sessions are placed anew\n"
    );
    let r = ctl(&conf, &["--json", "purge", "--all"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let json: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(
        (json["purged"].clone(), json["removed"].clone()),
        ("all".into(), 0.into())
    );
    // clap refuses a purge with no selector, or with two.
    for args in [&["purge"][..], &["purge", "--upstream", "relay-a", "--all"]] {
        let r = ctl(&conf, args);
        assert_eq!(r.code, 2, "{args:?}: {}{}", r.stdout, r.stderr);
        assert!(r.stderr.contains("--upstream"), "{args:?}: {}", r.stderr);
    }
    // The edge refuses a tenant that is not a hash, and says why.
    let r = ctl(&conf, &["purge", "--tenant", "nope"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("refused the purge: tenant must be a tenant's hash"),
        "{}",
        r.stderr
    );
}

/// Two edges on one Redis: a purge by upstream on edge A, in batches
/// (more sessions than one SSCAN), with no KEYS; edge B drops its cached
/// pins; Redis keeps neither a pin nor an index entry of that upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_on_one_edge_reaches_every_edge_in_batches_without_keys() {
    let redis = RedisServer::start(None).await;
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let conf = format!(
        "{}{KEYED}redis: {{url: '{}', sync_interval: 1h}}\n",
        upstreams_yaml(&ups),
        redis.url()
    );
    let (a, b) = (shared_edge(&conf).await, shared_edge(&conf).await);
    // 1,100 sessions on relay-a (it alone takes new ones while b drains),
    // then 40 on relay-b.
    assert_eq!(
        a.admin_json("POST", "/api/upstreams/relay-b/drain", b"")
            .await
            .0,
        200
    );
    let on_a: Vec<String> = (0..1100).map(|i| format!("batch-{i}")).collect();
    for key in &on_a {
        assert_eq!(
            a.get("/v1/x", &[("x-session-id", key)]).await.upstream(),
            "relay-a"
        );
    }
    a.admin_json("POST", "/api/upstreams/relay-b/undrain", b"")
        .await;
    let on_b: Vec<String> = (0..40).map(|i| format!("stays-{i}")).collect();
    for key in &on_b {
        pin(&a, key, "relay-b", None).await;
    }
    // B caches a share of each (its own hits, no Redis call).
    let sample: Vec<&String> = on_a.iter().step_by(20).chain(&on_b).collect();
    for key in &sample {
        b.get("/v1/x", &[("x-session-id", key)]).await;
    }
    for key in &sample {
        assert_eq!(
            affinity(&b.get("/v1/x", &[("x-session-id", key)]).await),
            "hit"
        );
    }
    assert_eq!(index_size(&redis, "relay-a"), 1100);

    let before = commands(&redis);
    let (code, purged) = a
        .admin_json("DELETE", "/api/sessions?upstream=relay-a", b"")
        .await;
    let after = commands(&redis);
    assert_eq!(code, 200, "{purged}");
    assert_eq!(purged["removed"], 1100, "{purged}");
    assert_eq!(purged["shared"], true, "{purged}");
    let delta =
        |name: &str| after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0);
    let (total, which) = total_since(&before, &after);
    eprintln!(
        "purge of 1100 pins by upstream: {total} commands ({:.2} per pin): {which}",
        total as f64 / 1100.0
    );
    assert!(!after.contains_key("keys"), "KEYS was used: {which}");
    assert_eq!(delta("scan"), 0, "no walk over the keyspace: {which}");
    assert!(delta("sscan") >= 2, "the index is read in batches: {which}");
    assert_eq!(delta("hdel"), 1100, "one HDEL per pin: {which}");
    assert!(total <= 4 * 1100, "about three commands per pin: {which}");

    // Redis holds no pin, and no index entry, of relay-a; relay-b's stay.
    assert_eq!(stored_on(&redis, "relay-a"), 0);
    assert_eq!(index_size(&redis, "relay-a"), 0);
    assert_eq!(stored_on(&redis, "relay-b"), on_b.len());
    // Edge B dropped its cached pins of relay-a (on the purge's message,
    // which may still be on its way: B keeps routing a session there, and
    // changes nothing, until it comes): placed anew; relay-b's hit.
    eventually(
        Duration::from_secs(5),
        "B placed a purged session anew",
        || async { affinity(&b.get("/v1/x", &[("x-session-id", sample[0])]).await) == "new" },
    )
    .await;
    for key in &sample[1..] {
        let r = b.get("/v1/x", &[("x-session-id", key)]).await;
        let want = if key.starts_with("batch-") {
            "new"
        } else {
            "hit"
        };
        assert_eq!(affinity(&r), want, "{key} through B");
    }
    assert_eq!(
        metric(
            &a.metrics().await,
            "relay_edge_affinity_purged_total{reason=\"admin\"}"
        ),
        1100
    );
    assert_eq!(
        metric(
            &b.metrics().await,
            "relay_edge_affinity_purged_total{reason=\"admin\"}"
        ),
        0,
        "counted once, by the edge that ran it"
    );
}

/// A tenant's purge takes that tenant's pins only, on every edge; `all`
/// takes the rest, index entries included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_purge_takes_only_that_tenants_pins_and_all_takes_every_pin() {
    let redis = RedisServer::start(None).await;
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let conf = format!(
        "{}{KEYED}redis: {{url: '{}', sync_interval: 1h, buckets: 64}}\n",
        upstreams_yaml(&ups),
        redis.url()
    );
    let (a, b) = (shared_edge(&conf).await, shared_edge(&conf).await);
    let (one, two) = ("sk-tenant-one", "sk-tenant-two");
    let (hex_one, hex_two) = (tenant_hex(one), tenant_hex(two));
    // The same session keys under each tenant, and without one.
    let keys: Vec<String> = (0..20).map(|i| format!("t-{i}")).collect();
    let send = |edge: &Edge, api_key: Option<&'static str>, key: String| {
        let mut headers = vec![("x-session-id".to_string(), key)];
        if let Some(k) = api_key {
            headers.push(("x-api-key".to_string(), k.to_string()));
        }
        let addr = edge.addr;
        async move {
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            request(addr, "GET", "/v1/x", &h, b"")
                .await
                .expect("proxy answers")
        }
    };
    for key in &keys {
        for api_key in [Some(one), Some(two), None] {
            send(&a, api_key, key.clone()).await;
            // B caches each too.
            send(&b, api_key, key.clone()).await;
        }
    }
    assert_eq!(stored_of_tenant(&redis, &hex_one), keys.len());
    let before = commands(&redis);
    let (code, purged) = a
        .admin_json("DELETE", &format!("/api/sessions?tenant={hex_one}"), b"")
        .await;
    let (total, which) = total_since(&before, &commands(&redis));
    eprintln!("purge of a tenant (20 of 60 pins, 64 buckets): {total} commands: {which}");
    assert_eq!(code, 200, "{purged}");
    assert_eq!(purged["purged"], format!("tenant {hex_one}"));
    assert_eq!(purged["removed"], keys.len() as u64, "{purged}");
    assert_eq!(stored_of_tenant(&redis, &hex_one), 0);
    assert_eq!(stored_of_tenant(&redis, &hex_two), keys.len());
    assert_eq!(
        index_size(&redis, "relay-a") + index_size(&redis, "relay-b"),
        2 * keys.len(),
        "tenant one's index entries went with its pins"
    );
    // Through B: tenant one's sessions are placed anew (once the purge's
    // message is in), the rest hit.
    eventually(
        Duration::from_secs(5),
        "B placed a purged session anew",
        || async { affinity(&send(&b, Some(one), keys[0].clone()).await) == "new" },
    )
    .await;
    for key in &keys[1..] {
        for (api_key, want) in [(Some(one), "new"), (Some(two), "hit"), (None, "hit")] {
            let r = send(&b, api_key, key.clone()).await;
            assert_eq!(affinity(&r), want, "{key} of {api_key:?} through B");
        }
    }
    let (code, _) = a
        .admin_json("GET", &format!("/api/sessions/t-0?tenant={hex_two}"), b"")
        .await;
    assert_eq!(code, 200, "tenant two's session is still pinned");

    let before = commands(&redis);
    let (code, all) = a.admin_json("DELETE", "/api/sessions?all=true", b"").await;
    let (total, which) = total_since(&before, &commands(&redis));
    eprintln!(
        "purge of all ({} pins, 64 buckets): {total} commands: {which}",
        all["removed"]
    );
    assert_eq!(code, 200, "{all}");
    assert_eq!(all["removed"], 3 * keys.len() as u64, "{all}");
    assert!(!which.contains("keys="), "{which}");
    assert_eq!(redis.stored_sessions(), 0);
    assert_eq!(
        index_size(&redis, "relay-a") + index_size(&redis, "relay-b"),
        0
    );
    for key in keys.iter().take(5) {
        let r = send(&b, Some(two), key.clone()).await;
        assert_eq!(affinity(&r), "new", "{key} through B after all");
    }
}

/// `on_remove: purge`: a drain purges the relay's pins at once, and so does
/// a reload that removes it; `on_remove: move` leaves them to move one
/// request at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_remove_purge_forgets_a_drained_or_removed_relays_pins_at_once() {
    let ups = upstreams(&["relay-a", "relay-b", "relay-c", "relay-d"]).await;
    let mut yaml = String::from("upstreams:\n");
    for (u, on_remove) in ups.iter().zip(["purge", "purge", "move", "move"]) {
        yaml.push_str(&format!(
            "  - {{id: {}, addr: {}, on_remove: {on_remove}}}\n",
            u.name, u.addr
        ));
    }
    let edge = TestEdge::new(&format!("{yaml}{KEYED}")).start().await;
    for up in ["relay-a", "relay-b", "relay-c", "relay-d"] {
        for i in 0..5 {
            pin(&edge, &format!("{up}-{i}"), up, None).await;
        }
    }
    // A drain of relay-b (purge) and of relay-c (move).
    let (code, drained) = edge
        .admin_json("POST", "/api/upstreams/relay-b/drain", b"")
        .await;
    assert_eq!(
        (code, drained["purged"].clone()),
        (200, 5.into()),
        "{drained}"
    );
    assert_eq!(listed(&edge, "relay-b").await, 0, "purged at the drain");
    let (_, moving) = edge
        .admin_json("POST", "/api/upstreams/relay-c/drain", b"")
        .await;
    assert!(moving.get("purged").is_none(), "{moving}");
    assert_eq!(
        listed(&edge, "relay-c").await,
        5,
        "they move at their next request"
    );

    for up in ["relay-b", "relay-c"] {
        let path = format!("/api/upstreams/{up}/undrain");
        assert_eq!(edge.admin_json("POST", &path, b"").await.0, 200);
    }
    // A reload that removes relay-a (purge) and relay-d (move).
    for (up, on_remove) in [(&ups[0], "purge"), (&ups[3], "move")] {
        edge.rewrite(
            &format!(
                "  - {{id: {}, addr: {}, on_remove: {on_remove}}}\n",
                up.name, up.addr
            ),
            "",
        );
    }
    let (code, report) = edge.admin_json("POST", "/api/reload", b"").await;
    assert_eq!(code, 200, "{report}");
    assert_eq!(
        report["removed"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
    assert_eq!(listed(&edge, "relay-a").await, 0, "purged at the reload");
    assert_eq!(
        listed(&edge, "relay-d").await,
        5,
        "they move at their next request"
    );
    let r = edge.get("/v1/x", &[("x-session-id", "relay-a-0")]).await;
    assert_eq!(affinity(&r), "new", "a purged session is placed anew");
    let r = edge.get("/v1/x", &[("x-session-id", "relay-d-0")]).await;
    assert_eq!(affinity(&r), "moved", "a removed relay's session moves");
    let metrics = edge.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "relay_edge_affinity_purged_total{reason=\"on_remove\"}"
        ),
        10
    );
    let log = edge.log();
    assert!(
        log.contains("pins purged (on_remove): upstream relay-a: 5 removed"),
        "{log}"
    );
}

/// `failover.on_eject`: edge A ejects relay-a; with `move` it re-pins
/// every session of relay-a at once, so edge B (which saw no failure)
/// sends them to relay-b; with `keep` they stay until a request of theirs
/// reaches an edge that ejected relay-a.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_eject_move_repins_an_ejected_relays_sessions_at_once_and_keep_does_not() {
    let redis = RedisServer::start(None).await;
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    for (prefix, on_eject) in [("keep:", "keep"), ("move:", "move")] {
        let conf = format!(
            "{}{KEYED}passive_health: {{max_failures: 2, failure_window: 1m, recovery_time: 1h, max_recovery_time: 1h}}\n\
             failover: {{retry_on_status: [], on_eject: {on_eject}}}\n\
             redis: {{url: '{}', prefix: '{prefix}', sync_interval: 1h}}\n",
            upstreams_yaml(&ups),
            redis.url()
        );
        let (a, b) = (shared_edge(&conf).await, shared_edge(&conf).await);
        let keys: Vec<String> = (0..20).map(|i| format!("{on_eject}-{i}")).collect();
        for key in &keys {
            pin(&a, key, "relay-a", None).await;
            let r = b.get("/v1/x", &[("x-session-id", key)]).await;
            assert_eq!(
                (r.upstream(), affinity(&r)),
                ("relay-a".into(), "hit".into())
            );
        }
        // Two failures of relay-a on edge A eject it there (B saw none).
        pin(&a, "trigger", "relay-a", None).await;
        for _ in 0..2 {
            let r = a.get("/status/502", &[("x-session-id", "trigger")]).await;
            assert_eq!(r.status, 502);
        }
        assert_eq!(a.upstream("relay-a").await["ejected"], true, "{on_eject}");
        assert_eq!(b.upstream("relay-a").await["ejected"], false, "{on_eject}");
        let want = match on_eject {
            "move" => {
                eventually(
                    Duration::from_secs(10),
                    "relay-a's sessions re-pinned",
                    || async { listed(&a, "relay-a").await == 0 },
                )
                .await;
                // B drops its cached pins on the move's message; until it
                // comes, B sends them to relay-a and changes nothing.
                eventually(Duration::from_secs(5), "B follows the move", || async {
                    b.get("/v1/x", &[("x-session-id", &keys[0])])
                        .await
                        .upstream()
                        == "relay-b"
                })
                .await;
                "relay-b"
            }
            _ => {
                assert_eq!(listed(&a, "relay-a").await, keys.len() + 1, "{on_eject}");
                "relay-a"
            }
        };
        for key in &keys {
            let r = b.get("/v1/x", &[("x-session-id", key)]).await;
            assert_eq!(
                (r.upstream(), affinity(&r)),
                (want.to_string(), "hit".to_string()),
                "{key} through B with on_eject: {on_eject}"
            );
        }
        let repins = metric(
            &a.metrics().await,
            "relay_edge_affinity_repins_total{reason=\"ejected\"}",
        );
        let moved = if on_eject == "move" {
            keys.len() as u64 + 1
        } else {
            0
        };
        assert_eq!(repins, moved, "{on_eject}");
        if on_eject == "keep" {
            // A request that reaches the edge that ejected it moves it, as
            // before: one session, at its request.
            let r = a.get("/v1/x", &[("x-session-id", &keys[0])]).await;
            assert_eq!(
                (r.upstream(), affinity(&r)),
                ("relay-b".into(), "moved".into())
            );
        }
    }
}

/// On a Redis Cluster each call of a batch goes to its own node (a
/// pipeline may not cross slots there): a purge by upstream, then of all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_runs_on_a_redis_cluster() {
    let cluster = RedisCluster::start().await;
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let urls: Vec<String> = cluster.urls().iter().map(|u| format!("'{u}'")).collect();
    let conf = format!(
        "{}{KEYED}redis: {{cluster: [{}], sync_interval: 1h, buckets: 64}}\n",
        upstreams_yaml(&ups),
        urls.join(", ")
    );
    let (a, b) = (shared_edge(&conf).await, shared_edge(&conf).await);
    let keys: Vec<String> = (0..40).map(|i| format!("cluster-{i}")).collect();
    let mut on_a = Vec::new();
    for key in &keys {
        if a.get("/v1/x", &[("x-session-id", key)]).await.upstream() == "relay-a" {
            on_a.push(key.clone());
        }
        b.get("/v1/x", &[("x-session-id", key)]).await;
    }
    assert!(!on_a.is_empty() && on_a.len() < keys.len(), "{on_a:?}");
    assert_eq!(listed(&a, "relay-a").await, on_a.len());
    let (code, purged) = a
        .admin_json("DELETE", "/api/sessions?upstream=relay-a", b"")
        .await;
    assert_eq!(
        (code, purged["removed"].clone()),
        (200, on_a.len().into()),
        "{purged}"
    );
    assert_eq!(listed(&a, "relay-a").await, 0);
    assert_eq!(listed(&b, "relay-b").await, keys.len() - on_a.len());
    eventually(
        Duration::from_secs(5),
        "B placed a purged session anew",
        || async { affinity(&b.get("/v1/x", &[("x-session-id", &on_a[0])]).await) == "new" },
    )
    .await;
    let (code, all) = a.admin_json("DELETE", "/api/sessions?all=true", b"").await;
    // Every session but those purged before, and the one placed anew since.
    let left = keys.len() - on_a.len() + 1;
    assert_eq!((code, all["removed"].clone()), (200, left.into()), "{all}");
    assert_eq!(listed(&a, "relay-a").await + listed(&a, "relay-b").await, 0);
}
