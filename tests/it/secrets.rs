//! No error, log line or API answer ever shows a secret: the Redis
//! password, the admin token, the hash secret, a relay's proxy password.
//! Each is planted, then every output the edge has (its log at debug
//! level included) is searched for it.

use crate::common::*;
use std::time::Duration;

const PASSWORD: &str = "pw-S3CRET-redis";
const TOKEN: &str = "tok-S3CRET-admin";
const HASH_SECRET: &str = "hash-S3CRET-key";
const PROXY_PASSWORD: &str = "px-S3CRET-socks";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_output_holds_a_planted_secret() {
    let redis = RedisServer::start(Some(PASSWORD)).await;
    let ups = upstreams(&["relay-a", "relay-b", "relay-p"]).await;
    // relay-p is reached through a SOCKS5 proxy with a password.
    let socks = crate::proxies::Proxy::socks(Some(("edge", PROXY_PASSWORD)), "127.0.0.1");
    let upstreams = format!(
        "{}  - {{id: relay-p, addr: '{}', proxy: 'socks5h://edge:{PROXY_PASSWORD}@127.0.0.1:{}'}}\n",
        upstreams_yaml(&ups[..2]),
        ups[2].addr,
        socks.port
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write token");
    let d = dir.path().display();
    let head = format!(
        "listen: [{{addr: 127.0.0.1:0}}]\n{}admin: {{listen: 127.0.0.1:0, token_file: {}}}\nserver: {{pid_file: {d}/pid, upgrade_sock: {d}/sock}}\nhealth_check: {{path: /health, interval: 200ms}}\n",
        upstreams,
        token_file.display(),
    );
    let good = format!(
        "{head}affinity: {{keys: [{{header: x-session-id}}], hash_secret: {HASH_SECRET}}}\nredis: {{url: '{}'}}\n",
        redis.url()
    );
    let conf = dir.path().join("c.yaml");
    std::fs::write(&conf, &good).expect("write config");
    let log = dir.path().join("log");
    let ready_file = dir.path().join("ready.json");
    let mut child = std::process::Command::new(BIN)
        .arg("-c")
        .arg(&conf)
        .env("RUST_LOG", "debug")
        .env(relay_edge::ready_file::ENV, &ready_file)
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start");
    let (proxy, admin) = ready_addresses(&ready_file, &mut child)
        .await
        .expect("relay-edge binds its sockets");
    let auth = format!("Bearer {TOKEN}");
    let get = |path: &'static str| {
        let auth = auth.clone();
        async move {
            request(admin, "GET", path, &[("authorization", &auth)], b"")
                .await
                .map(|r| (r.status, r.text()))
        }
    };
    eventually(Duration::from_secs(20), "ready", || async {
        matches!(get("/readyz").await, Ok((200, _)))
    })
    .await;
    // Each session is pinned, so that exactly one request (carol's) goes
    // through the proxy: a new session may otherwise be placed on relay-p.
    let sessions = [
        ("alice", "relay-a"),
        ("bob", "relay-b"),
        ("carol", "relay-p"),
    ];
    for (key, relay) in sessions {
        let pin = request(
            admin,
            "PUT",
            &format!("/api/sessions/{key}"),
            &[("authorization", &auth)],
            format!(r#"{{"upstream":"{relay}"}}"#).as_bytes(),
        )
        .await
        .expect("admin answers");
        assert_eq!(pin.status, 200, "pin {key}");
    }
    for (key, _) in sessions {
        let r = request(proxy, "GET", "/v1/x", &[("x-session-id", key)], b"")
            .await
            .expect("proxied");
        assert_eq!(r.status, 200);
    }
    let served: Vec<usize> = ups.iter().map(|u| u.requests()).collect();
    assert_eq!(
        served,
        [1, 1, 1],
        "each pinned session on its relay; carol through the proxy"
    );
    let mut seen = Vec::new();
    for path in [
        "/api/stats",
        "/api/upstreams",
        "/metrics",
        "/",
        "/api/sessions/alice",
        "/api/sessions?limit=10",
    ] {
        let (code, body) = get(path).await.expect("admin answers");
        assert_eq!(code, 200, "{path}");
        seen.push(body);
    }
    // A broken file whose mistakes sit on the secrets themselves.
    let broken = format!(
        "{head}affinity: {{keys: [{{header: x-session-id}}], hash_secret: [{HASH_SECRET}]}}\nredis: {{url: '{}', timeout: '{}', buckets: '{PASSWORD}'}}\n",
        redis.url(),
        redis.url()
    );
    std::fs::write(&conf, &broken).expect("write config");
    let r = request(
        admin,
        "POST",
        "/api/reload",
        &[("authorization", &auth)],
        b"",
    )
    .await
    .expect("reload answers");
    assert_eq!(r.status, 400, "{}", r.text());
    seen.push(r.text());
    seen.push(get("/api/stats").await.expect("stats").1);
    let check = std::process::Command::new(BIN)
        .arg("-c")
        .arg(&conf)
        .arg("--check")
        .output()
        .expect("check runs");
    assert_eq!(check.status.code(), Some(1));
    seen.push(String::from_utf8_lossy(&check.stdout).into_owned());
    seen.push(String::from_utf8_lossy(&check.stderr).into_owned());
    // A secret of the wrong type: an integer, a float, a bool, a list, a
    // map, where a string belongs (serde quotes such values in backticks).
    let mut typed = Vec::new();
    for (value, shown) in [
        ("4242424243", "4242424243"),
        ("4242.4243", "4242.4243"),
        ("true", "`true`"),
        ("[4242424243, 4343]", "4242424243"),
        ("{k: 4242424243}", "4242424243"),
    ] {
        for yaml in [
            format!("affinity: {{keys: [{{header: x-session-id}}], hash_secret: {value}}}\nredis: {{url: '{}'}}\n", redis.url()),
            format!("affinity: {{keys: [{{header: x-session-id}}]}}\nredis: {{url: {value}}}\n"),
            format!("affinity: {{keys: [{{header: x-session-id}}]}}\nredis: {{url: '{}', prefix: {value}}}\n", redis.url()),
        ] {
            std::fs::write(&conf, format!("{head}{yaml}")).expect("write config");
            let check = std::process::Command::new(BIN)
                .arg("-c")
                .arg(&conf)
                .arg("--check")
                .output()
                .expect("check runs");
            assert_eq!(check.status.code(), Some(1), "{yaml}");
            let r = request(admin, "POST", "/api/reload", &[("authorization", &auth)], b"")
                .await
                .expect("reload answers");
            assert_eq!(r.status, 400, "{}", r.text());
            typed.push((shown, String::from_utf8_lossy(&check.stderr).into_owned()));
            typed.push((shown, r.text()));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let log_text = std::fs::read_to_string(&log).expect("log");
    for shown in ["4242424243", "4242.4243", "`true`"] {
        typed.push((shown, log_text.clone()));
    }
    for (shown, text) in &typed {
        assert!(!text.contains(shown), "shows {shown}:\n{text}");
    }
    seen.push(log_text);
    assert!(seen
        .last()
        .is_some_and(|l| l.contains("config reload rejected")));
    for (i, text) in seen.iter().enumerate() {
        for secret in [PASSWORD, TOKEN, HASH_SECRET, PROXY_PASSWORD] {
            assert!(!text.contains(secret), "output {i} shows {secret}:\n{text}");
        }
    }
}
