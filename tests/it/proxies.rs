//! Relays behind egress proxies (`upstreams[].proxy`), through real ones:
//! Debian's microsocks (SOCKS5, with and without credentials) and tinyproxy
//! (HTTP CONNECT with Basic authentication). Each proxy dials out from a
//! loopback address of its own, so a relay tells a tunnelled connection
//! from one the edge made itself.

use crate::common::*;
use relay_edge::demo::DemoUpstream;
use std::net::{IpAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A proxy process, killed on drop.
pub(crate) struct Proxy {
    child: Child,
    pub(crate) port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    fn spawn(command: &mut Command, install: &str, port: u16, dir: tempfile::TempDir) -> Proxy {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{e}: apt-get install -y {install} (scripts/test.sh installs it)")
            });
        let proxy = Proxy {
            child,
            port,
            _dir: dir,
        };
        let listening = wait::until_blocking(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        assert!(listening.is_some(), "{install} did not listen on {port}");
        proxy
    }

    /// microsocks on a free port, dialing out from `outgoing`, with `user`
    /// and `password` when given.
    pub(crate) fn socks(credentials: Option<(&str, &str)>, outgoing: &str) -> Proxy {
        let port = free_port();
        let mut command = Command::new("microsocks");
        command.args(["-i", "127.0.0.1", "-p", &port.to_string(), "-b", outgoing]);
        if let Some((user, password)) = credentials {
            command.args(["-u", user, "-P", password]);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        Proxy::spawn(&mut command, "microsocks", port, dir)
    }

    /// tinyproxy on a free port, dialing out from `outgoing`, taking each
    /// of `users` (Basic authentication). No `ConnectPort` line: CONNECT
    /// to any port.
    fn http(users: &[(&str, &str)], outgoing: &str) -> Proxy {
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut conf = format!(
            "Port {port}\nListen 127.0.0.1\nBind {outgoing}\nTimeout 600\nMaxClients 100\n\
             Allow 127.0.0.1\nLogLevel Warning\n"
        );
        for (user, password) in users {
            conf.push_str(&format!("BasicAuth {user} {password}\n"));
        }
        let path = dir.path().join("tinyproxy.conf");
        std::fs::write(&path, conf).expect("write tinyproxy.conf");
        let mut command = Command::new("tinyproxy");
        command.arg("-d").arg("-c").arg(&path);
        Proxy::spawn(&mut command, "tinyproxy", port, dir)
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an IP address")
}

/// The peers a relay saw requests (not health checks) come from.
fn peers(relay: &DemoUpstream) -> Vec<IpAddr> {
    let mut peers: Vec<IpAddr> = relay
        .recorded()
        .iter()
        .filter_map(|r| r.peer.map(|p| p.ip()))
        .collect();
    peers.dedup();
    peers
}

async fn counter(edge: &Edge, series: &str) -> u64 {
    edge.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_proxy_carries_a_relays_requests_over_one_pooled_tunnel() {
    let socks_open = Proxy::socks(None, "127.0.0.2");
    // A password percent-encoded in the URL (tinyproxy takes only letters
    // and digits).
    let socks_auth = Proxy::socks(Some(("alice", "s3:cr@t")), "127.0.0.3");
    let connect = Proxy::http(&[("bob", "w0rd")], "127.0.0.4");
    // (scheme and credentials, proxy, the relay's address as written, the
    // address the relay must see)
    let cases = [
        ("socks5h://", &socks_open, "localhost", "127.0.0.2"),
        (
            "socks5h://alice:s3%3Acr%40t@",
            &socks_auth,
            "localhost",
            "127.0.0.3",
        ),
        (
            "socks5://alice:s3%3Acr%40t@",
            &socks_auth,
            "localhost",
            "127.0.0.3",
        ),
        ("http://bob:w0rd@", &connect, "localhost", "127.0.0.4"),
        ("http://bob:w0rd@", &connect, "127.0.0.1", "127.0.0.4"),
    ];
    for (prefix, proxy, host, seen_from) in cases {
        let relay = DemoUpstream::start("relay-a", ([127, 0, 0, 1], 0).into())
            .await
            .expect("relay");
        let url = format!("{prefix}127.0.0.1:{}", proxy.port);
        // One worker thread: one pool (see the pooling note in README).
        let edge = TestEdge::new(&format!(
            "upstreams:\n  - {{id: relay-a, addr: '{host}:{}', proxy: '{url}'}}\n\
             affinity: {{keys: [{{header: x-session-id}}]}}\n",
            relay.addr.port()
        ))
        .threads(1)
        .start()
        .await;
        for i in 0..200 {
            let r = edge
                .get("/v1/x", &[("x-session-id", &format!("s{}", i % 7))])
                .await;
            assert_eq!(
                (r.status, r.upstream()),
                (200, "relay-a".into()),
                "{url}: {}",
                r.text()
            );
        }
        // A stream goes over the held path's own pool, through the same proxy.
        let r = edge
            .post(
                "/v1/messages",
                &[("x-session-id", "s0")],
                br#"{"stream":true}"#,
            )
            .await;
        assert!(
            r.text().contains("event: message_stop"),
            "{url}: {}",
            r.text()
        );
        assert_eq!(
            peers(&relay),
            vec![ip(seen_from)],
            "{url}: the relay's clients"
        );
        assert_eq!(relay.requests(), 201, "{url}");
        let up = edge.upstream("relay-a").await;
        assert_eq!(
            (
                up["connections_opened"].as_u64(),
                relay.proxied_connections()
            ),
            (Some(2), 2),
            "{url}: one tunnel for 200 requests, one for the stream: {up}"
        );
        // socks5:// resolves the relay's name at load; the others let the
        // proxy resolve it.
        let addr = match prefix.starts_with("socks5://") {
            true => relay.addr.to_string(),
            false => format!("{host}:{}", relay.addr.port()),
        };
        assert_eq!(up["addr"], addr, "{up}");
        let shown = up["proxy"].as_str().unwrap_or_default().to_string();
        assert!(!shown.contains("s3") && !shown.contains("w0rd"), "{shown}");
        let log = edge.log();
        assert!(!log.contains("FD mismatch"), "{url}: {log}");
        assert!(
            !log.contains("s3%3A") && !log.contains("s3:cr") && !log.contains("w0rd"),
            "{url}: the log shows a password"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_and_users_behind_one_proxy_never_share_a_tunnel() {
    let proxy = Proxy::http(&[("alice", "a-pass"), ("bob", "b-pass")], "127.0.0.5");
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let via = |user: &str, pass: &str| format!("http://{user}:{pass}@127.0.0.1:{}", proxy.port);
    // relay-a and relay-b behind one proxy and user; relay-a once more as
    // another user (relay-a2).
    let edge = TestEdge::new(&format!(
        "upstreams:\n\
         \x20 - {{id: relay-a, addr: '{}', proxy: '{}'}}\n\
         \x20 - {{id: relay-b, addr: '{}', proxy: '{}'}}\n\
         \x20 - {{id: relay-a2, addr: '{}', proxy: '{}'}}\n\
         affinity: {{keys: [{{header: x-session-id}}]}}\n",
        ups[0].addr,
        via("alice", "a-pass"),
        ups[1].addr,
        via("alice", "a-pass"),
        ups[0].addr,
        via("bob", "b-pass"),
    ))
    .threads(1)
    .start()
    .await;
    for i in 0..60 {
        let target = ["relay-a", "relay-b", "relay-a2"][i % 3];
        let key = format!("k{i}");
        let path = format!("/api/sessions/{key}");
        let (status, _) = edge
            .admin_json(
                "PUT",
                &path,
                format!(r#"{{"upstream":"{target}"}}"#).as_bytes(),
            )
            .await;
        assert_eq!(status, 200);
        let r = edge.get("/v1/x", &[("x-session-id", &key)]).await;
        let relay = if target == "relay-b" {
            "relay-b"
        } else {
            "relay-a"
        };
        assert_eq!(
            (r.status, r.upstream()),
            (200, relay.into()),
            "{target}: {}",
            r.text()
        );
    }
    // Each upstream opened one tunnel, and each relay saw one per upstream
    // that names it: none was lent to another relay or user.
    for id in ["relay-a", "relay-b", "relay-a2"] {
        assert_eq!(edge.upstream(id).await["connections_opened"], 1, "{id}");
    }
    assert_eq!((ups[0].requests(), ups[1].requests()), (40, 20));
    assert_eq!(
        (ups[0].proxied_connections(), ups[1].proxied_connections()),
        (2, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_proxy_password_fails_over_and_makes_the_relay_unhealthy_for_proxy() {
    let proxy = Proxy::socks(Some(("alice", "right")), "127.0.0.6");
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let body = |health: &str| {
        format!(
            "upstreams:\n\
             \x20 - {{id: relay-a, addr: '{}', proxy: 'socks5h://alice:wrong-pass@127.0.0.1:{}'}}\n\
             \x20 - {{id: relay-b, addr: '{}'}}\n\
             affinity: {{keys: [{{header: x-session-id}}]}}\n{health}",
            ups[0].addr, proxy.port, ups[1].addr
        )
    };
    // Passive: no check has failed twice yet, so relay-a is tried. Its
    // sessions are served by relay-b, and the client never sees the failure.
    let edge = TestEdge::new(&body("health_check: {path: /health, interval: 1h}\n"))
        .own_health_check()
        .start()
        .await;
    for i in 0..3 {
        let key = format!("pinned{i}");
        edge.admin_json(
            "PUT",
            &format!("/api/sessions/{key}"),
            br#"{"upstream":"relay-a"}"#,
        )
        .await;
        let r = edge.get("/v1/x", &[("x-session-id", &key)]).await;
        assert_eq!(
            (r.status, r.upstream()),
            (200, "relay-b".into()),
            "{}",
            r.text()
        );
    }
    let series = r#"relay_edge_upstream_connect_failures_total{reason="proxy",upstream="relay-a"}"#;
    assert_eq!(counter(&edge, series).await, 3);
    assert_eq!(
        counter(&edge, r#"relay_edge_client_failures_total{cause="proxy"}"#).await,
        0
    );
    assert_eq!(ups[0].requests(), 0);
    drop(edge);

    // Active: the checks go through the proxy too, and say why they fail.
    let edge = TestEdge::new(&body("")).ports_in_config().start().await;
    eventually(
        Duration::from_secs(10),
        "relay-a unhealthy for proxy",
        || async {
            let up = edge.upstream("relay-a").await;
            up["healthy"] == false && up["check_failure"] == "proxy"
        },
    )
    .await;
    assert!(edge
        .log()
        .contains("upstream relay-a failed 2 health checks in a row (proxy)"));
    let r = edge.get("/v1/x", &[("x-session-id", "pinned0")]).await;
    assert_eq!((r.status, r.upstream()), (200, "relay-b".into()));
    assert!(
        !edge.log().contains("wrong-pass"),
        "the log shows the password"
    );
    let (_, upstreams) = edge.admin_json("GET", "/api/upstreams", b"").await;
    assert!(!upstreams.to_string().contains("wrong-pass"));
    // `ctl upstreams` says where and why, without the password; `--check`
    // neither.
    let table = crate::ctl::ctl(&edge.config_path(), &["upstreams"]).stdout;
    let via = format!("via socks5h://alice@127.0.0.1:{}", proxy.port);
    assert!(
        table.contains(&via) && table.contains("unhealthy (proxy)"),
        "{table}"
    );
    let check = std::process::Command::new(BIN)
        .arg("-c")
        .arg(edge.config_path())
        .arg("--check")
        .output()
        .expect("relay-edge --check runs");
    let said = format!(
        "{}{}{table}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(check.status.success(), "{said}");
    assert!(!said.contains("wrong-pass"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_relay_is_verified_inside_a_connect_tunnel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = crate::tls::self_signed_leaf(dir.path());
    let ups = upstreams(&["relay-a"]).await;
    // The TLS relay: relay-edge terminating TLS (a certificate for
    // localhost) in front of the demo relay.
    let tls_relay = TestEdge::new(&upstreams_yaml(&ups))
        .threads(1)
        .tls(&cert, &key)
        .start()
        .await;
    let proxy = Proxy::http(&[("bob", "pw")], "127.0.0.7");
    let port = tls_relay.addr.port();
    let url = format!("http://bob:pw@127.0.0.1:{}", proxy.port);
    // The edge trusts the relay's certificate (and no other) through
    // SSL_CERT_FILE; relay-bad names another server, which that
    // certificate does not cover.
    let front = TestEdge::new(&format!(
        "upstreams:\n\
         \x20 - {{id: relay-tls, addr: 'localhost:{port}', tls: {{}}, proxy: '{url}'}}\n\
         \x20 - {{id: relay-bad, addr: 'localhost:{port}', tls: {{sni: other.example}}, proxy: '{url}', weight: 1}}\n\
         affinity: {{keys: [{{header: x-session-id}}]}}\n"
    ))
    .threads(1)
    .env("SSL_CERT_FILE", &cert)
    .start()
    .await;
    eventually(
        Duration::from_secs(10),
        "relay-bad fails its TLS check",
        || async { front.upstream("relay-bad").await["check_failure"] == "tls" },
    )
    .await;
    assert_eq!(
        front.upstream("relay-tls").await["check_failure"],
        serde_json::Value::Null,
        "{}",
        front.log()
    );
    for i in 0..5 {
        let r = front
            .get("/v1/x", &[("x-session-id", &format!("t{i}"))])
            .await;
        assert_eq!(
            (r.status, r.upstream()),
            (200, "relay-a".into()),
            "{}",
            r.text()
        );
    }
    assert_eq!(front.upstream("relay-tls").await["connections_opened"], 1);
}

/// A "proxy" on a loopback port: `reply` is what it answers to the first
/// bytes it reads (nothing at all when empty); it then holds the
/// connection open. Returns its port.
async fn fake_proxy(reply: &'static [u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await;
                if !reply.is_empty() {
                    let _ = conn.write_all(reply).await;
                }
                // Held open until the edge gives up on it.
                let _ = conn.read(&mut buf).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_proxy_times_out_and_one_that_says_too_much_is_refused() {
    let silent = fake_proxy(b"").await;
    // A 200 with bytes past its head, which would be taken for the relay's.
    let chatty =
        fake_proxy(b"HTTP/1.1 200 OK\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    for (port, reason) in [(silent, "timeout"), (chatty, "proxy")] {
        let edge = TestEdge::new(&format!(
            "upstreams:\n\
             \x20 - {{id: behind, addr: '{a}', proxy: 'http://127.0.0.1:{port}'}}\n\
             \x20 - {{id: relay-b, addr: '{b}'}}\n\
             affinity: {{keys: [{{header: x-session-id}}]}}\n\
             timeouts: {{connect: 300ms}}\n\
             health_check: {{path: /health, interval: 1h}}\n",
            a = ups[0].addr,
            b = ups[1].addr,
        ))
        .own_health_check()
        .start()
        .await;
        edge.admin_json("PUT", "/api/sessions/k", br#"{"upstream":"behind"}"#)
            .await;
        let r = edge.get("/v1/x", &[("x-session-id", "k")]).await;
        assert_eq!(
            (r.status, r.upstream()),
            (200, "relay-b".into()),
            "{reason}: {}",
            r.text()
        );
        let series = format!(
            r#"relay_edge_upstream_connect_failures_total{{reason="{reason}",upstream="behind"}} 1"#
        );
        let metrics = edge.metrics().await;
        assert!(
            metrics.lines().any(|l| l == series),
            "{series} in\n{metrics}"
        );
    }
    assert_eq!(ups[0].requests(), 0, "nothing reached relay-a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_puts_a_relay_behind_a_proxy_and_takes_it_out_again() {
    let proxy = Proxy::socks(None, "127.0.0.8");
    let relay = DemoUpstream::start("relay-a", ([127, 0, 0, 1], 0).into())
        .await
        .expect("relay");
    let direct = format!("{{id: relay-a, addr: '{}'}}", relay.addr);
    let proxied = format!(
        "{{id: relay-a, addr: '{}', proxy: 'socks5h://127.0.0.1:{}'}}",
        relay.addr, proxy.port
    );
    let edge = TestEdge::new(&format!("upstreams:\n  - {direct}\n"))
        .threads(1)
        .start()
        .await;
    let seen_from = |from: &str| {
        let want = ip(from);
        move |relay: &DemoUpstream| {
            relay.recorded().last().and_then(|r| r.peer).map(|p| p.ip()) == Some(want)
        }
    };
    for (to, from) in [(&proxied, "127.0.0.8"), (&direct, "127.0.0.1")] {
        let before = std::fs::read_to_string(edge.config_path()).expect("config");
        let now = if to == &proxied { &direct } else { &proxied };
        assert!(before.contains(now.as_str()));
        edge.rewrite(now, to);
        let (code, report) = edge.admin_json("POST", "/api/reload", b"").await;
        assert_eq!(code, 200, "{report}");
        assert_eq!(
            report["changed"],
            serde_json::json!(["relay-a"]),
            "{report}"
        );
        let r = edge.get("/v1/x", &[]).await;
        assert_eq!((r.status, r.upstream()), (200, "relay-a".into()));
        assert!(
            seen_from(from)(&relay),
            "after the reload to {to}, the relay saw {:?}",
            peers(&relay)
        );
    }
}
