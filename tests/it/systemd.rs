//! The systemd unit passes `systemd-analyze verify` and carries the hardening
//! an operator expects.

use crate::common::BIN;
use std::process::Command;

#[test]
fn the_unit_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/relay-edge.service"
    ))
    .expect("systemd/relay-edge.service exists");
    for line in [
        "Type=notify",
        "NotifyAccess=all",
        "ExecStartPre=/usr/bin/relay-edge -c /etc/relay-edge/relay-edge.yaml --check",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=relay-edge",
        "NoNewPrivileges=true",
        "ProtectSystem=strict",
        "ProtectHome=true",
        "PrivateTmp=true",
        "StateDirectory=relay-edge/bodies",
        "StateDirectoryMode=0700",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line:?}");
    }
    let nofile: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("LimitNOFILE="))
        .and_then(|v| v.parse().ok())
        .expect("LimitNOFILE");
    assert!(
        nofile >= 200_000,
        "LimitNOFILE {nofile} is too low for 100k connections"
    );
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.parse().ok())
        .expect("TimeoutStopSec");
    let grace = relay_edge::config::model::Defaults::GRACE_PERIOD
        + relay_edge::config::model::Defaults::SHUTDOWN_TIMEOUT;
    assert!(
        stop > grace.as_secs(),
        "TimeoutStopSec {stop} must exceed the drain ({grace:?})"
    );

    // verify checks that the binaries exist: point the copy at the built one.
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("relay-edge.service");
    std::fs::write(&copy, unit.replace("/usr/bin/relay-edge", BIN)).expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze is needed: apt-get install -y systemd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

/// Under systemd with the journal on stderr, every log line starts with its
/// syslog priority and has no timestamp (journald stamps it), so that
/// `journalctl -p warning` selects by level. Outside it, lines keep theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_carry_syslog_priorities_for_the_journal() {
    use crate::common::{upstreams, upstreams_yaml, TestEdge};
    let ups = upstreams(&["relay-a"]).await;
    // An upstream that refuses connections: its health check logs a warning.
    let dead = format!(
        "{}  - {{id: relay-dead, addr: 127.0.0.1:{}}}\n",
        upstreams_yaml(&ups),
        crate::common::free_port()
    );
    let journal = TestEdge::new(&dead).threads(1).journal().start().await;
    let plain = TestEdge::new(&dead).start().await;
    crate::common::eventually(
        std::time::Duration::from_secs(10),
        "a warning and an info line in the journal's log",
        || {
            let log = journal.log();
            async move { log.contains("<4>") && log.contains("<6>") }
        },
    )
    .await;
    let log = journal.log();
    for line in log.lines().filter(|l| !l.is_empty()) {
        let priority = line
            .strip_prefix('<')
            .and_then(|l| l.split_once('>'))
            .map(|(p, _)| p);
        assert!(
            matches!(priority, Some("3" | "4" | "6" | "7")),
            "a line without its priority: {line:?}\n{log}"
        );
        assert!(
            !line.contains("Z "),
            "a line with its own timestamp: {line:?}"
        );
    }
    let plain_log = plain.log();
    assert!(
        plain_log.lines().any(|l| l.starts_with("[20")),
        "outside the journal, lines keep their timestamps:\n{plain_log}"
    );
    assert!(!plain_log.contains("<6>"), "{plain_log}");
}
