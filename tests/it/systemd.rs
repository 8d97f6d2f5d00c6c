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
