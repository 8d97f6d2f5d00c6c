//! Graceful binary upgrade: Pingora's socket hand-over, driven by this config.

use crate::common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_takes_the_sockets_while_the_old_one_finishes_its_streams() {
    let ups = upstreams(&["relay-a"]).await;
    let mut old = TestEdge::new(&upstreams_yaml(&ups))
        .threads(1)
        .grace("30s")
        .ports_in_config()
        .start()
        .await;
    let mut new = old.start_upgrade().await;

    // A stream that runs across the hand-over, on the old process.
    let stream = open_stream(old.addr, "/v1/messages?sse=8&gap_ms=250", &[]).await;
    old.signal("QUIT");

    // New connections are served all along: first by the old process, then by the new one.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut served = 0;
    while std::time::Instant::now() < deadline && old.alive() {
        let r = request(old.addr, "GET", "/v1/x", &[], b"")
            .await
            .expect("the listener never goes away");
        assert_eq!(r.status, 200);
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    finishes_its_stream_and_exits(&mut old, stream).await;
    assert!(served > 0);

    // The new process owns the sockets now, the admin service's too.
    let r = request(old.addr, "GET", "/v1/x", &[], b"")
        .await
        .expect("served by the new process");
    assert_eq!(r.status, 200);
    let (code, _) = old.admin_json("GET", "/readyz", b"").await;
    assert_eq!(code, 200, "{}", old.upgrade_log());
    assert!(matches!(new.try_wait(), Ok(None)), "the new process runs");
    let _ = new.kill();
    let _ = new.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_load_fails_no_request() {
    // The pins live in Redis, so they survive the change of process.
    let redis = RedisServer::start(None).await;
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let conf = format!(
        "{}affinity: {{keys: [{{header: x-session-id}}]}}\nredis: {{url: '{}'}}\n",
        upstreams_yaml(&ups),
        redis.url()
    );
    let mut old = TestEdge::new(&conf)
        .threads(1)
        .grace("30s")
        .ports_in_config()
        .start()
        .await;
    eventually(Duration::from_secs(20), "redis connected", || async {
        old.admin_json("GET", "/api/stats", b"").await.1["redis"]["connected"] == true
    })
    .await;
    let mut new = old.start_upgrade().await;
    let _new_ends_with_the_test = KillOnDrop(new.id() as i32);
    let addr = old.addr;
    let old_ref = &mut old;
    let load = crate::reload::under_load(addr, &["relay-a", "relay-b"], || async move {
        old_ref.signal("QUIT");
        // A SIGTERM to the draining process (a supervisor stopping it)
        // changes nothing: it still drains. Pingora starts the drain 5 s
        // after it sent the sockets (its CLOSE_TIMEOUT): a 5 s wait here
        // was a coin toss.
        eventually(Duration::from_secs(20), "the drain began", || async {
            old_ref.log().contains("draining")
        })
        .await;
        old_ref.signal("TERM");
        let code = tokio::task::block_in_place(|| old_ref.wait_exit(Duration::from_secs(30)));
        assert_eq!(code, Some(0), "the old process exits after its streams end");
    })
    .await;
    eprintln!("upgrade under load: {load:?}");
    assert!(load.requests > 100, "the load ran: {load:?}");
    // The clients never resend a request: each connection of the old
    // process is told `Connection: close` before it is closed.
    assert_eq!(
        (load.failures, load.retried, load.broken, load.moved),
        (0, 0, 0, 0),
        "{load:?}"
    );
    assert!(
        matches!(new.try_wait(), Ok(None)),
        "the new process runs:\n{}",
        old.upgrade_log()
    );
    let _ = new.kill();
    let _ = new.wait();
}

/// Kills a process the test did not start itself (the successor that an
/// edge started), whatever way the test ends.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-KILL")
            .arg(self.0.to_string())
            .status();
    }
}

/// The notifications received on a NOTIFY_SOCKET, in order.
fn received(socket: &std::os::unix::net::UnixDatagram) -> Vec<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = socket.recv(&mut buf) {
        out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_upgrades_from_inside_and_tells_systemd_the_new_main_pid() {
    let ups = upstreams(&["relay-a"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("notify socket");
    notify.set_nonblocking(true).expect("nonblocking");
    let mut old = TestEdge::new(&upstreams_yaml(&ups))
        .threads(1)
        .grace("30s")
        .env("NOTIFY_SOCKET", notify_path.as_os_str())
        .ports_in_config()
        .start()
        .await;
    let old_pid = old.pid();
    eventually(
        Duration::from_secs(5),
        "READY=1 from the first process",
        || {
            let got = received(&notify).join("\n");
            let ok = got.contains("READY=1") && got.contains(&format!("MAINPID={old_pid}"));
            async move { ok }
        },
    )
    .await;

    let pid_file = old.dir_path().join("pid");
    let named = || {
        std::fs::read_to_string(&pid_file)
            .map(|p| p.trim().to_string())
            .ok()
    };
    assert_eq!(named(), Some(old_pid.to_string()), "the pid file names it");

    // A stream that runs across the hand-over, on the old process.
    let stream = open_stream(old.addr, "/v1/messages?sse=8&gap_ms=250", &[]).await;
    old.signal("USR2");

    // The successor reports itself as the main process once it is ready.
    let mut new_pid = 0;
    eventually(
        Duration::from_secs(20),
        "READY=1 from the successor",
        || {
            for message in received(&notify) {
                if let Some(pid) = message
                    .lines()
                    .find_map(|l| l.strip_prefix("MAINPID="))
                    .and_then(|p| p.parse::<u32>().ok())
                {
                    if pid != old_pid && message.contains("READY=1") {
                        new_pid = pid;
                    }
                }
            }
            let ok = new_pid != 0;
            async move { ok }
        },
    )
    .await;
    let _successor = KillOnDrop(new_pid as i32);
    finishes_its_stream_and_exits(&mut old, stream).await;
    let r = request(old.addr, "GET", "/v1/x", &[], b"")
        .await
        .expect("served by the successor");
    assert_eq!(r.status, 200);
    assert_eq!(
        named(),
        Some(new_pid.to_string()),
        "the pid file names the successor"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_that_cannot_start_hands_nothing_over() {
    let ups = upstreams(&["relay-a"]).await;
    let mut edge = TestEdge::new(&upstreams_yaml(&ups))
        .threads(1)
        .grace("30s")
        .start()
        .await;
    // The file is broken now: the successor refuses it and exits.
    std::fs::write(edge.config_path(), "listen: nowhere\n").expect("write config");
    edge.signal("USR2");
    eventually(
        Duration::from_secs(10),
        "the abandoned upgrade logged",
        || {
            let ok = edge.log().contains("upgrade abandoned, serving on");
            async move { ok }
        },
    )
    .await;
    assert!(edge.alive(), "the running process serves on");
    assert_eq!(edge.get("/v1/x", &[]).await.status, 200);
}

/// Without Redis the table lives in the process: SIGUSR2 hands it over with
/// the sockets, so no session moves (balanced by load, a new process would
/// place them anew).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_without_redis_hands_the_session_table_over() {
    let ups = upstreams(&["relay-a", "relay-b", "relay-c"]).await;
    let mut old = TestEdge::new(&format!(
        "{}affinity: {{keys: [{{header: x-session-id}}], outcome_header: x-affinity}}\n",
        upstreams_yaml(&ups)
    ))
    .threads(1)
    .grace("30s")
    .ports_in_config()
    .start()
    .await;
    let keys: Vec<String> = (0..30).map(|i| format!("handed-{i}")).collect();
    let mut homes = Vec::new();
    for key in &keys {
        homes.push(old.get("/v1/x", &[("x-session-id", key)]).await.upstream());
    }
    let old_pid = old.pid();
    let pid_file = old.dir_path().join("pid");
    old.signal("USR2");
    let mut new_pid = 0;
    eventually(
        Duration::from_secs(20),
        "the successor owns the pid file",
        || {
            if let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok())
                .filter(|&p| p != old_pid)
            {
                new_pid = pid;
            }
            let ok = new_pid != 0;
            async move { ok }
        },
    )
    .await;
    let _successor = KillOnDrop(new_pid as i32);
    let code = tokio::task::block_in_place(|| old.wait_exit(Duration::from_secs(20)));
    assert_eq!(code, Some(0), "{}", old.log());
    assert!(
        old.log().contains("30 sessions written to"),
        "{}",
        old.log()
    );
    for (key, home) in keys.iter().zip(&homes) {
        let r = old.get("/v1/x", &[("x-session-id", key)]).await;
        assert_eq!(
            (r.upstream(), r.header("x-affinity")),
            (home.clone(), Some("hit")),
            "{key} after the upgrade"
        );
    }
    assert!(
        !pid_file.with_file_name("upgrade.sock.sessions").exists(),
        "the table's file is removed once taken over"
    );
}
