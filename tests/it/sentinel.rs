//! The shared table behind Redis Sentinel (`redis.sentinel`), against
//! Debian's `redis-sentinel`: a master, a replica and three sentinels.
//! A `SENTINEL FAILOVER` under keyed keep-alive load fails no request and
//! moves no session the replica had received; the edges follow the new
//! master, pub/sub included, seed it with their pins, and cost it (and the
//! sentinels) nothing per request afterwards. A killed master is followed
//! too, with passwords on both the sentinels and the data nodes, neither
//! ever shown.

use crate::common::*;
use crate::redis_cost::{commands, total_since};
use crate::shared_table::{first_requests_at_once, id_of, pin_each, shared_edge, stored};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn config(ups: &[relay_edge::demo::DemoUpstream], set: &SentinelSet, extra: &str) -> String {
    format!(
        "{}affinity: {{keys: [{{header: x-session-id}}]}}\nredis: {{sentinel: {{master: {}, nodes: [{}]{extra}}}, sync_interval: 1s}}\n",
        upstreams_yaml(ups),
        set.name,
        set.nodes_yaml(),
    )
}

/// The master an edge is connected to, as `/api/stats` says.
async fn master_of(edge: &Edge) -> Option<String> {
    let (_, stats) = edge.admin_json("GET", "/api/stats", b"").await;
    match stats["redis"]["connected"] == true {
        true => stats["redis"]["master"].as_str().map(str::to_string),
        false => None,
    }
}

/// Calls of one command on a sentinel (`INFO commandstats`).
fn sentinel_calls(set: &SentinelSet, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:calls=");
    set.sentinels
        .iter()
        .filter_map(|s| {
            s.cli(&["INFO", "commandstats"]).lines().find_map(|l| {
                l.strip_prefix(&prefix)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
        })
        .sum()
}

/// The phases of the load: before the failover (and the replica has
/// every pin made then), from `SENTINEL FAILOVER` until both edges write
/// to the new master, and after.
const BEFORE: u8 = 0;
const DURING: u8 = 1;
const AFTER: u8 = 2;

/// One request of the load: its key, the relay that answered (or none),
/// its status (0: no answer), and the phase in which its answer came.
struct Served {
    key: String,
    upstream: String,
    status: u16,
    phase: u8,
}

#[derive(Default)]
struct Load {
    stop: AtomicBool,
    phase: AtomicU8,
    after: AtomicU64,
    served: Mutex<Vec<Served>>,
}

/// A keep-alive client of the edge at `addr` until `load.stop`: of each
/// four requests, one starts a new session, one returns to one of this
/// client's last eight new sessions, two use the sessions made before
/// the load.
async fn client(addr: SocketAddr, n: usize, known: Arc<Vec<String>>, load: Arc<Load>) {
    let mut conn: Option<Conn> = None;
    let mut mine: Vec<String> = Vec::new();
    for i in 0usize.. {
        if load.stop.load(Relaxed) {
            return;
        }
        let key = match i % 4 {
            0 => {
                mine.push(format!("new-{n}-{i}"));
                mine[mine.len() - 1].clone()
            }
            1 => mine[mine.len() - 1 - (i / 4) % mine.len().min(8)].clone(),
            _ => known[(n * 31 + i * 7) % known.len()].clone(),
        };
        let c = match conn.take() {
            Some(c) => Ok(c),
            None => Conn::open(addr).await,
        };
        let answer = match c {
            Ok(mut c) => {
                let r = c
                    .request("GET", "/v1/x", &[("x-session-id", &key)], b"")
                    .await;
                if r.is_ok() {
                    conn = Some(c);
                }
                r.ok()
            }
            Err(_) => None,
        };
        let phase = load.phase.load(Relaxed);
        if phase == AFTER {
            load.after.fetch_add(1, Relaxed);
        }
        let served = Served {
            key,
            upstream: answer.as_ref().map_or("none".into(), |r| r.upstream()),
            status: answer.map_or(0, |r| r.status),
            phase,
        };
        load.served.lock().expect("load").push(served);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_under_keyed_load_fails_nothing_and_moves_no_replicated_session() {
    let set = SentinelSet::start(None, None).await;
    let ups = upstreams(&["relay-a", "relay-b", "relay-c"]).await;
    let conf = config(&ups, &set, "");
    let (a, b) = (shared_edge(&conf).await, shared_edge(&conf).await);
    let (old, new) = (
        format!("127.0.0.1:{}", set.master.port),
        format!("127.0.0.1:{}", set.replica.port),
    );
    for edge in [&a, &b] {
        assert_eq!(master_of(edge).await.as_deref(), Some(old.as_str()));
    }
    let keys: Vec<String> = (0..200).map(|i| format!("before-{i}")).collect();
    let pins = first_requests_at_once(&a, &b, &keys).await;

    // Keyed keep-alive load, three clients on each edge.
    let (load, known) = (Arc::new(Load::default()), Arc::new(keys.clone()));
    let clients: Vec<_> = (0..6)
        .map(|n| {
            let addr = if n % 2 == 0 { a.addr } else { b.addr };
            tokio::spawn(client(addr, n, known.clone(), load.clone()))
        })
        .collect();
    eventually(Duration::from_secs(10), "the load runs", || async {
        load.served.lock().expect("load").len() >= 300
    })
    .await;
    // Every pin answered so far is on the replica before it is promoted.
    load.phase.store(DURING, Relaxed);
    let offset = repl_offset(&set.master, "master_repl_offset");
    eventually(
        Duration::from_secs(10),
        "the replica has every pin",
        || async { repl_offset(&set.replica, "slave_repl_offset") >= offset },
    )
    .await;

    let began = Instant::now();
    set.failover();
    let evalsha_before = commands(&set.replica).get("evalsha").copied().unwrap_or(0);
    assert_eq!(evalsha_before, 0, "a replica runs no script of its own");
    eventually(
        Duration::from_secs(20),
        "the sentinels name the replica",
        || async { set.all_name(set.replica.port) },
    )
    .await;
    let sentinels_switched = began.elapsed();
    eventually(
        Duration::from_secs(20),
        "an edge writes to the new master",
        || async { commands(&set.replica).get("evalsha").copied().unwrap_or(0) > 0 },
    )
    .await;
    let first_write = began.elapsed();
    eventually(
        Duration::from_secs(20),
        "both edges use the new master",
        || async {
            master_of(&a).await.as_deref() == Some(new.as_str())
                && master_of(&b).await.as_deref() == Some(new.as_str())
        },
    )
    .await;
    let both_switched = began.elapsed();
    load.phase.store(AFTER, Relaxed);
    eventually(
        Duration::from_secs(20),
        "the load goes on after the switch",
        || async { load.after.load(Relaxed) >= 600 },
    )
    .await;
    load.stop.store(true, Relaxed);
    for c in clients {
        c.await.expect("client");
    }

    // Zero failed, and no session moved that the replica had received.
    let served = std::mem::take(&mut *load.served.lock().expect("load"));
    let failed: Vec<&Served> = served.iter().filter(|s| s.status != 200).collect();
    let mut relays: HashMap<&str, HashSet<&str>> = HashMap::new();
    let mut first_phase: HashMap<&str, u8> = HashMap::new();
    for s in &served {
        relays.entry(&s.key).or_default().insert(&s.upstream);
        first_phase.entry(&s.key).or_insert(s.phase);
    }
    for (key, up) in &pins {
        relays.entry(key).or_default().insert(up);
        first_phase.insert(key, BEFORE);
    }
    let moved = |phase: u8| -> Vec<&str> {
        let mut m: Vec<&str> = relays
            .iter()
            .filter(|(k, ups)| first_phase[*k] == phase && ups.len() > 1)
            .map(|(k, _)| *k)
            .collect();
        m.sort();
        m
    };
    let (replicated, during) = (
        first_phase.values().filter(|p| **p == BEFORE).count(),
        first_phase.values().filter(|p| **p != BEFORE).count(),
    );
    let during_failover = served.iter().filter(|s| s.phase == DURING).count();
    eprintln!(
        "sentinel failover: {} requests ({during_failover} during the failover), {} failed; \
         {replicated} sessions the replica had, {} moved; {during} sessions begun since, {} moved; \
         SENTINEL FAILOVER to: the sentinels naming the replica {sentinels_switched:?}, \
         the first edge write there {first_write:?}, both edges on it {both_switched:?}",
        served.len(),
        failed.len(),
        moved(BEFORE).len(),
        moved(DURING).len() + moved(AFTER).len(),
    );
    assert!(failed.is_empty(), "{} requests failed", failed.len());
    assert_eq!(
        moved(BEFORE),
        Vec::<&str>::new(),
        "replicated sessions moved"
    );

    // The new master holds the pins, and pub/sub follows it.
    for key in &keys {
        let id = id_of(&a, key).await;
        let value = stored(&set.replica, &id, 16384);
        assert!(
            value.starts_with(&format!("{}\t", pins[key])),
            "{key}: the new master holds {value:?}"
        );
    }
    eventually(
        Duration::from_secs(10),
        "both edges subscribe on the new master",
        || async {
            set.replica
                .cli(&["PUBSUB", "NUMSUB", "relay-edge:pins"])
                .ends_with('2')
        },
    )
    .await;
    assert!(a.log().contains("following it"), "{}", a.log());

    // Steady state again: a cached pin costs the new master nothing, and
    // no request asks a sentinel anything.
    eventually(
        Duration::from_secs(10),
        "a round of cached pins is free",
        || async {
            let (before, asked) = (commands(&set.replica), sentinel_calls(&set, "sentinel"));
            for key in keys.iter().take(50) {
                for edge in [&a, &b] {
                    let r = edge.get("/v1/x", &[("x-session-id", key)]).await;
                    assert_eq!((r.status, r.upstream()), (200, pins[key].clone()), "{key}");
                }
            }
            let (spent, which) = total_since(&before, &commands(&set.replica));
            let asked = sentinel_calls(&set, "sentinel") - asked;
            if spent > 0 || asked > 0 {
                eprintln!(
                    "a round cost the master {which} and the sentinels {asked} SENTINEL calls"
                );
            }
            spent == 0 && asked == 0
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_followed_with_passwords_that_are_never_shown() {
    let (data_pw, sentinel_pw) = ("data-secret-5f3a", "sentinel-secret-9c1e");
    let mut set = SentinelSet::start(Some(data_pw), Some(sentinel_pw)).await;
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    // The first sentinel listed is gone; the URL's host is not used.
    let dead = free_port();
    let conf = format!(
        "{}affinity: {{keys: [{{header: x-session-id}}]}}\nredis: {{url: 'redis://:{data_pw}@{}/0', sentinel: {{master: {}, nodes: ['127.0.0.1:{dead}', {}], password: {sentinel_pw}}}, sync_interval: 1s}}\n",
        upstreams_yaml(&ups),
        set.name,
        set.name,
        set.nodes_yaml(),
    );
    let edge = shared_edge(&conf).await;
    let new = format!("127.0.0.1:{}", set.replica.port);
    let keys: Vec<String> = (0..100).map(|i| format!("kept-{i}")).collect();
    let pins = pin_each(&edge, &keys).await;
    let offset = repl_offset(&set.master, "master_repl_offset");
    eventually(
        Duration::from_secs(10),
        "the replica has every pin",
        || async { repl_offset(&set.replica, "slave_repl_offset") >= offset },
    )
    .await;

    // A sentinel goes (it may be the one the edge listens to), then the
    // master dies: the two sentinels left promote the replica.
    set.sentinels[0].kill();
    set.master.kill();
    let killed = Instant::now();
    let mut round = 0;
    eventually(
        Duration::from_secs(30),
        "the edge follows to the replica",
        || {
            round += 1;
            let (edge, keys, pins, new) = (&edge, &keys, &pins, &new);
            async move {
                // Known sessions stay on their relays meanwhile.
                for key in keys.iter().skip(round % 10).step_by(10) {
                    let r = edge.get("/v1/x", &[("x-session-id", key)]).await;
                    assert_eq!((r.status, r.upstream()), (200, pins[key].clone()), "{key}");
                }
                master_of(edge).await.as_deref() == Some(new.as_str())
            }
        },
    )
    .await;
    eprintln!(
        "sentinel, killed master: the edge on the replica {:?} after the kill",
        killed.elapsed()
    );
    for key in &keys {
        let r = edge.get("/v1/x", &[("x-session-id", key)]).await;
        assert_eq!((r.status, r.upstream()), (200, pins[key].clone()), "{key}");
        let id = id_of(&edge, key).await;
        assert!(
            stored(&set.replica, &id, 16384).starts_with(&format!("{}\t", pins[key])),
            "{key}: the new master holds its pin"
        );
    }

    // Neither password is ever shown: not in the log, the stats, or --check.
    let (_, stats) = edge.admin_json("GET", "/api/stats", b"").await;
    let broken = conf.replace("sync_interval: 1s", "sync_interval: 1s, cluster: []");
    let path = edge.dir_path().join("broken.yaml");
    std::fs::write(&path, broken).expect("write");
    let check = std::process::Command::new(BIN)
        .arg("-c")
        .arg(&path)
        .arg("--check")
        .output()
        .expect("relay-edge runs");
    let check = String::from_utf8_lossy(&check.stderr).into_owned();
    assert!(
        check.contains("redis.sentinel: cannot go with redis.cluster"),
        "{check}"
    );
    for text in [edge.log(), stats.to_string(), check] {
        for secret in [data_pw, sentinel_pw] {
            assert!(!text.contains(secret), "{secret} shown in:\n{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_that_missed_the_switch_follows_on_readonly_without_a_failure_loop() {
    let set = SentinelSet::start(None, None).await;
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    // One sentinel configured: the edge listens to it, and learns the
    // others from it.
    let only_first = SentinelSet::nodes_yaml_of(&set.sentinels[..1]);
    let conf = config(&ups, &set, "").replace(&set.nodes_yaml(), &only_first);
    let edge = shared_edge(&conf).await;
    let new = format!("127.0.0.1:{}", set.replica.port);
    let keys: Vec<String> = (0..50).map(|i| format!("missed-{i}")).collect();
    let pins = pin_each(&edge, &keys).await;
    let offset = repl_offset(&set.master, "master_repl_offset");
    eventually(
        Duration::from_secs(10),
        "the replica has every pin",
        || async { repl_offset(&set.replica, "slave_repl_offset") >= offset },
    )
    .await;

    // The sentinel the edge listens to hangs, so the edge misses the
    // +switch-master; another runs the failover, and the old master is
    // made a replica at once (by hand: Sentinel would do it later, and
    // kill its clients' connections; a connection left open meets READONLY).
    set.sentinels[0].signal("STOP");
    let via = &set.sentinels[1];
    assert_eq!(via.cli(&["SENTINEL", "FAILOVER", &set.name]), "OK");
    let port = set.replica.port.to_string();
    eventually(
        Duration::from_secs(20),
        "the replica is promoted",
        || async {
            via.cli(&["SENTINEL", "get-master-addr-by-name", &set.name])
                .ends_with(&port)
        },
    )
    .await;
    assert_eq!(set.master.cli(&["REPLICAOF", "127.0.0.1", &port]), "OK");
    let mut n = 0;
    eventually(
        Duration::from_secs(20),
        "the edge follows to the replica",
        || {
            n += 1;
            let (edge, keys, pins, new) = (&edge, &keys, &pins, &new);
            async move {
                // New sessions write; known ones stay on their relays.
                let fresh = format!("fresh-{n}");
                assert_eq!(
                    edge.get("/v1/x", &[("x-session-id", &fresh)]).await.status,
                    200
                );
                let key = &keys[n % keys.len()];
                let r = edge.get("/v1/x", &[("x-session-id", key)]).await;
                assert_eq!((r.status, r.upstream()), (200, pins[key].clone()), "{key}");
                master_of(edge).await.as_deref() == Some(new.as_str())
            }
        },
    )
    .await;
    let log = edge.log();
    assert!(
        log.contains("(read-only error)"),
        "READONLY was met:\n{log}"
    );
    // Up once at the start and once on the new master: a replica that
    // answers PING is not taken for Redis being back, again and again.
    assert_eq!(log.matches("redis is reachable").count(), 2, "{log}");
    for key in &keys {
        let id = id_of(&edge, key).await;
        assert!(
            stored(&set.replica, &id, 16384).starts_with(&format!("{}\t", pins[key])),
            "{key}: the new master holds its pin"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_that_restarts_and_loads_its_data_is_waited_for_without_a_failure_loop() {
    let mut set = SentinelSet::start(None, None).await;
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let edge = shared_edge(&config(&ups, &set, "")).await;
    let old = format!("127.0.0.1:{}", set.master.port);
    let keys: Vec<String> = (0..30).map(|i| format!("loaded-{i}")).collect();
    let pins = pin_each(&edge, &keys).await;
    // Enough data that loading it takes a while (100 us a key), saved.
    let fill = "for i = 1, 20000 do redis.call('SET', 'fill:' .. i, 'x') end return 1";
    assert_eq!(set.master.cli(&["EVAL", fill, "0"]), "1");
    assert_eq!(set.master.cli(&["SAVE"]), "OK");
    let slowly = [
        "--key-load-delay",
        "100",
        "--loading-process-events-interval-bytes",
        "1024",
    ];
    set.master.restart_with(&slowly).await;
    assert!(set.master.cli(&["PING"]).starts_with("LOADING"), "loading");
    let mut n = 0;
    eventually(
        Duration::from_secs(30),
        "the edge is back on the loaded master",
        || {
            n += 1;
            let (edge, keys, pins, old, master) = (&edge, &keys, &pins, &old, &set.master);
            async move {
                let fresh = format!("during-load-{n}");
                assert_eq!(
                    edge.get("/v1/x", &[("x-session-id", &fresh)]).await.status,
                    200
                );
                let key = &keys[n % keys.len()];
                let r = edge.get("/v1/x", &[("x-session-id", key)]).await;
                assert_eq!((r.status, r.upstream()), (200, pins[key].clone()), "{key}");
                master.cli(&["PING"]) == "PONG"
                    && master_of(edge).await.as_deref() == Some(old.as_str())
            }
        },
    )
    .await;
    // A master that answers ROLE while loading is not taken for one that
    // is back, again and again: up at the start, and at most once more.
    let log = edge.log();
    assert!(log.matches("redis is reachable").count() <= 2, "{log}");
    assert!(!log.contains("following it"), "no failover: {log}");
}

#[test]
fn check_names_each_sentinel_mistake_by_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sentinel.yaml");
    std::fs::write(
        &path,
        "listen: [{addr: 127.0.0.1:8080}]\nupstreams: [{id: a, addr: 127.0.0.1:1}]\n\
         redis: {cluster: ['redis://h:1'], sentinel: {nodes: [], password: ''}}\n",
    )
    .expect("write");
    let out = std::process::Command::new(BIN)
        .arg("-c")
        .arg(&path)
        .arg("--check")
        .output()
        .expect("relay-edge runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for want in [
        "redis.sentinel: cannot go with redis.cluster",
        "redis.sentinel.master: is required",
        "redis.sentinel.nodes: needs at least one sentinel",
        "redis.sentinel.password: must not be empty",
    ] {
        assert!(err.contains(want), "want {want:?} in:\n{err}");
    }
}
