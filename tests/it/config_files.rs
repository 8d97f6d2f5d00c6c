//! `--check` on every file in conf/ and on broken files.

use crate::common::BIN;
use std::process::Command;

fn check(path: &std::path::Path) -> (bool, String) {
    let out = Command::new(BIN)
        .arg("-c")
        .arg(path)
        .arg("--check")
        .output()
        .expect("relay-edge runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_file_in_conf_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("conf/ exists") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let (ok, err) = check(&path);
            assert!(ok, "{} is invalid:\n{err}", path.display());
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "conf/ should hold the example and the contract config"
    );
}

#[test]
fn broken_files_exit_1_with_every_error_and_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "listen: [{addr: 127.0.0.1:8080}]\nupstreams:\n  - {id: a, addr: 127.0.0.1:1}\n  - {id: b, addr: 127.0.0.1:2}\n  - {id: c, addr: x}\nhealth_check: {interval: 0s}\n",
            vec!["upstreams[2].addr: invalid socket address \"x\"", "health_check.interval: must be from 10ms to 1h"],
        ),
        ("listen: [{addr: 127.0.0.1:8080}]\nupstreams: [{id: a, addr: 127.0.0.1:1}]\nbogus: 1\n", vec!["bogus: unknown field"]),
        (
            "listen: [{addr: 127.0.0.1:8080}]\nlisten_extra: 1\nupstreams: [{id: a, addr: 127.0.0.1:1}, {id: b, addr: x}]\ntimeouts: {connect: soon}\nredis: {url: 'redis://127.0.0.1:1', buckets: 0}\nserver: {threads: 0}\n",
            vec![
                "listen_extra: unknown field",
                "upstreams[1].addr: invalid socket address",
                "timeouts.connect:",
                "redis.buckets: must be from 1 to",
                "server.threads: must be from 1 to 1024",
            ],
        ),
        ("listen: [{addr: 127.0.0.1:8080}\n", vec!["relay-edge: invalid config"]),
        ("listen: [{addr: 127.0.0.1:8080}]\nupstreams: [{id: a, addr: 127.0.0.1:1}]\nadmin: {token_file: /nonexistent/token}\n", vec!["admin.token_file: cannot read"]),
    ];
    for (i, (text, wants)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.yaml"));
        std::fs::write(&path, text).expect("write");
        let (ok, err) = check(&path);
        assert!(!ok, "case {i} should fail");
        for want in wants {
            assert!(err.contains(want), "case {i}: want {want:?} in:\n{err}");
        }
    }
    let (ok, err) = check(&dir.path().join("missing.yaml"));
    assert!(!ok && err.contains("cannot read"), "{err}");
}

#[test]
fn invalid_config_at_start_binds_nothing_and_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = crate::common::free_port();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        format!("listen: [{{addr: 127.0.0.1:{port}}}]\nupstreams: []\n"),
    )
    .expect("write");
    let out = Command::new(BIN)
        .arg("-c")
        .arg(&path)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("upstreams: at least one upstream is required"));
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "nothing may stay bound"
    );
}

#[test]
fn version_flag() {
    let out = Command::new(BIN).arg("--version").output().expect("runs");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}
