//! The admin service over its socket: routes, token, metric names.

use crate::common::*;

const METRIC_NAMES: [&str; 10] = [
    "relay_edge_requests_total",
    "relay_edge_request_duration_seconds",
    "relay_edge_upstream_healthy",
    "relay_edge_upstream_inflight",
    "relay_edge_upstream_sessions",
    "relay_edge_affinity_lookups_total",
    "relay_edge_affinity_repins_total",
    "relay_edge_redis_errors_total",
    "relay_edge_config_reloads_total",
    "relay_edge_config_generation",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_show_and_change_state() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let edge = TestEdge::new(&format!(
        "{}affinity: {{keys: [{{header: x-session-id}}]}}\n",
        upstreams_yaml(&ups)
    ))
    .start()
    .await;
    assert_eq!(edge.admin_json("GET", "/healthz", b"").await.0, 200);
    assert_eq!(edge.admin_json("GET", "/readyz", b"").await.0, 200);

    let home = edge
        .get("/v1/x", &[("x-session-id", "user/42 key")])
        .await
        .upstream();
    edge.get("/v1/x", &[("x-session-id", "user/42 key")]).await;

    // Counters are updated in the logging phase, just after the response.
    eventually(
        std::time::Duration::from_secs(5),
        "both requests counted",
        || async {
            edge.admin_json("GET", "/api/sessions/user%2F42%20key", b"")
                .await
                .1["requests"]
                == 2
        },
    )
    .await;
    let (code, s) = edge
        .admin_json("GET", "/api/sessions/user%2F42%20key", b"")
        .await;
    assert_eq!(code, 200, "{s}");
    assert_eq!(s["upstream"], home.as_str());
    assert!(s["ttl_left_seconds"].as_u64().unwrap_or(0) > 3500, "{s}");
    assert!(s["created_unix_ms"].as_u64().is_some() && s["last_seen_unix_ms"].as_u64().is_some());
    assert!(
        !s.to_string().contains("user/42"),
        "raw keys are never stored or shown"
    );

    let (_, list) = edge
        .admin_json(
            "GET",
            &format!("/api/sessions?upstream={home}&limit=10"),
            b"",
        )
        .await;
    assert_eq!(list["sessions"].as_array().map(Vec::len), Some(1), "{list}");

    let other = if home == "relay-a" {
        "relay-b"
    } else {
        "relay-a"
    };
    let (code, s) = edge
        .admin_json(
            "PUT",
            "/api/sessions/user%2F42%20key",
            format!(r#"{{"upstream":"{other}"}}"#).as_bytes(),
        )
        .await;
    assert_eq!((code, s["upstream"].as_str()), (200, Some(other)));
    assert_eq!(
        edge.get("/v1/x", &[("x-session-id", "user/42 key")])
            .await
            .upstream(),
        other
    );
    assert_eq!(
        edge.admin_json("PUT", "/api/sessions/k", br#"{"upstream":"nope"}"#)
            .await
            .0,
        400
    );
    assert_eq!(
        edge.admin_json("PUT", "/api/sessions/k", b"not json")
            .await
            .0,
        400
    );

    assert_eq!(
        edge.admin_json("DELETE", "/api/sessions/user%2F42%20key", b"")
            .await
            .0,
        200
    );
    assert_eq!(
        edge.admin_json("GET", "/api/sessions/user%2F42%20key", b"")
            .await
            .0,
        404
    );

    let (_, ups_json) = edge.admin_json("GET", "/api/upstreams", b"").await;
    for field in [
        "id",
        "addr",
        "healthy",
        "draining",
        "inflight",
        "sessions",
        "requests",
        "errors",
        "ejected",
        "mean_connect_ms",
        "pooled_reuse_ratio",
    ] {
        assert!(
            ups_json[0].get(field).is_some(),
            "/api/upstreams lacks {field}: {ups_json}"
        );
    }
    let (_, stats) = edge.admin_json("GET", "/api/stats", b"").await;
    for section in ["upstreams", "sessions", "affinity", "redis", "config"] {
        assert!(
            stats.get(section).is_some(),
            "/api/stats lacks {section}: {stats}"
        );
    }
    assert!(stats["affinity"]["hit_rate"].as_f64().is_some());

    let page = request(edge.admin, "GET", "/", &[], b"")
        .await
        .expect("dashboard");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("<title>relay-edge</title>"));
    assert_eq!(edge.admin_json("GET", "/nope", b"").await.0, 404);
    assert_eq!(edge.admin_json("DELETE", "/api/stats", b"").await.0, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_every_contract_name_with_help() {
    let ups = upstreams(&["relay-a"]).await;
    let edge = TestEdge::new(&format!(
        "{}affinity: {{keys: [{{header: x-session-id}}]}}\n",
        upstreams_yaml(&ups)
    ))
    .start()
    .await;
    edge.get("/v1/x", &[("x-session-id", "m")]).await;
    edge.get("/v1/x", &[("x-session-id", "m")]).await;
    let counted = "relay_edge_requests_total{code=\"200\",upstream=\"relay-a\"} 2";
    // Requests are counted in the logging phase, just after the response.
    eventually(
        std::time::Duration::from_secs(5),
        "both requests counted",
        || async {
            request(edge.admin, "GET", "/metrics", &[], b"")
                .await
                .is_ok_and(|r| r.text().contains(counted))
        },
    )
    .await;
    let text = request(edge.admin, "GET", "/metrics", &[], b"")
        .await
        .expect("metrics")
        .text();
    for name in METRIC_NAMES {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no HELP for {name}"
        );
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "no sample of {name}"
        );
    }
    assert!(
        text.contains("relay_edge_affinity_lookups_total{result=\"local_hit\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("relay_edge_affinity_lookups_total{result=\"miss\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("relay_edge_upstream_sessions{upstream=\"relay-a\"} 1"),
        "{text}"
    );
    assert!(text.contains("relay_edge_config_generation 1"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_token_guards_every_admin_route() {
    let ups = upstreams(&["relay-a"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").expect("write token");
    let conf = dir.path().join("c.yaml");
    std::fs::write(
        &conf,
        format!(
            "listen: [{{addr: 127.0.0.1:0}}]\n{}admin: {{listen: 127.0.0.1:0, token_file: {}}}\nserver: {{pid_file: {d}/pid, upgrade_sock: {d}/sock}}\nhealth_check: {{path: /health, interval: 200ms}}\n",
            upstreams_yaml(&ups),
            token_file.display(),
            d = dir.path().display()
        ),
    )
    .expect("write config");
    let mut child = spawn_on(&conf);
    let (_, admin) = ready_addresses(&ready_file(&conf), &mut child)
        .await
        .expect("relay-edge binds its sockets");
    eventually(std::time::Duration::from_secs(20), "admin up", || async {
        request(admin, "GET", "/healthz", &[], b"").await.is_ok()
    })
    .await;
    // The dashboard's page holds no data: it asks for the token itself.
    let page = request(admin, "GET", "/", &[], b"").await.expect("answer");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("<html"));
    for path in ["/healthz", "/metrics", "/api/stats", "/api/history"] {
        assert_eq!(
            request(admin, "GET", path, &[], b"")
                .await
                .expect("answer")
                .status,
            401,
            "{path} without token"
        );
        let wrong = request(admin, "GET", path, &[("authorization", "Bearer nope")], b"")
            .await
            .expect("answer");
        assert_eq!(wrong.status, 401, "{path} with a wrong token");
        let right = request(
            admin,
            "GET",
            path,
            &[("authorization", "Bearer s3cret-token")],
            b"",
        )
        .await
        .expect("answer");
        assert_eq!(right.status, 200, "{path} with the token");
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A reload cannot move the admin listener (only an upgrade can), so the
/// token rule is checked against the listener that keeps serving: a file
/// that moves admin to loopback and drops its token is rejected whole, and
/// the running listener on all interfaces stays closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_cannot_leave_a_public_admin_listener_without_its_token() {
    let ups = upstreams(&["relay-a"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").expect("write token");
    let (port, admin_port) = (free_port(), free_port());
    let conf = dir.path().join("c.yaml");
    let head = format!(
        "listen: [{{addr: 127.0.0.1:{port}}}]\n{}server: {{pid_file: {d}/pid, upgrade_sock: {d}/sock}}\nhealth_check: {{path: /health, interval: 200ms}}\n",
        upstreams_yaml(&ups),
        d = dir.path().display()
    );
    let public = format!(
        "{head}admin: {{listen: 0.0.0.0:{admin_port}, token_file: {}}}\n",
        token_file.display()
    );
    std::fs::write(&conf, &public).expect("write config");
    let mut child = spawn_on(&conf);
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("addr");
    let auth = [("authorization", "Bearer s3cret-token")];
    eventually(std::time::Duration::from_secs(20), "admin up", || async {
        request(admin, "GET", "/readyz", &auth, b"")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;

    std::fs::write(
        &conf,
        format!("{head}admin: {{listen: 127.0.0.1:{admin_port}}}\n"),
    )
    .expect("rewrite config");
    let rejected = request(admin, "POST", "/api/reload", &auth, b"")
        .await
        .expect("answer");
    assert_eq!(rejected.status, 400, "{}", rejected.text());
    assert!(
        rejected
            .text()
            .contains(&format!("keeps serving on 0.0.0.0:{admin_port}")),
        "{}",
        rejected.text()
    );
    let pin = br#"{"upstream":"relay-a"}"#;
    let open = request(admin, "PUT", "/api/sessions/k", &[], pin)
        .await
        .expect("answer");
    assert_eq!(open.status, 401, "the old token still guards admin");
    let stats = request(admin, "GET", "/api/stats", &auth, b"")
        .await
        .expect("answer");
    assert!(
        stats.text().contains("keeps serving on"),
        "{}",
        stats.text()
    );

    // The same file with the token kept is accepted (admin.listen is
    // reported as needing an upgrade), and the token still applies.
    std::fs::write(
        &conf,
        format!(
            "{head}admin: {{listen: 127.0.0.1:{admin_port}, token_file: {}}}\n",
            token_file.display()
        ),
    )
    .expect("rewrite config");
    let ok = request(admin, "POST", "/api/reload", &auth, b"")
        .await
        .expect("answer");
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert!(ok.text().contains("admin.listen"), "{}", ok.text());
    let pinned = request(admin, "PUT", "/api/sessions/k", &auth, pin)
        .await
        .expect("answer");
    assert_eq!(pinned.status, 200, "{}", pinned.text());
    let _ = child.kill();
    let _ = child.wait();
}

/// Port 0 binds the same address: an admin listener on port 0 of every
/// interface without a token is refused at start, for IPv4 and IPv6.
#[test]
fn admin_on_port_zero_of_every_interface_needs_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    for listen in ["0.0.0.0:0", "'[::]:0'", "'[::]:9900'"] {
        let conf = dir.path().join("c.yaml");
        std::fs::write(
            &conf,
            format!("listen: [{{addr: 127.0.0.1:0}}]\nupstreams: [{{id: a, addr: 127.0.0.1:1}}]\nadmin: {{listen: {listen}}}\n"),
        )
        .expect("write config");
        for check in [true, false] {
            let mut cmd = std::process::Command::new(BIN);
            cmd.arg("-c").arg(&conf);
            if check {
                cmd.arg("--check");
            }
            let out = cmd.output().expect("runs");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{listen} (check: {check}): {err}"
            );
            assert!(err.contains("is not a loopback address"), "{err}");
        }
    }
}

/// A token file every user can read still works, with a warning (ssh
/// refuses such a key outright); `--check` prints it and names no secret.
#[test]
fn a_world_readable_token_file_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").expect("write token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let conf = dir.path().join("c.yaml");
    std::fs::write(
        &conf,
        format!("listen: [{{addr: 127.0.0.1:0}}]\nupstreams: [{{id: a, addr: 127.0.0.1:1}}]\nadmin: {{listen: 0.0.0.0:0, token_file: {}}}\n", token.display()),
    )
    .expect("write config");
    let out = std::process::Command::new(BIN)
        .args(["--check", "-c"])
        .arg(&conf)
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("readable by every user (mode 644)"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
}

/// relay-edge on a config file of the test's own (its admin section is the
/// test's subject), its log discarded; it says where it listens in
/// [`ready_file`].
fn spawn_on(conf: &std::path::Path) -> std::process::Child {
    std::process::Command::new(BIN)
        .arg("-c")
        .arg(conf)
        .env(relay_edge::ready_file::ENV, ready_file(conf))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start")
}

/// The ready file of the edge [`spawn_on`] starts on `conf`.
fn ready_file(conf: &std::path::Path) -> std::path::PathBuf {
    conf.with_file_name("ready.json")
}
