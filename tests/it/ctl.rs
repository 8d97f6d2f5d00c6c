//! `relay-edge ctl` against a live edge: tables for people, `--json` for
//! scripts, and errors that say what to do.

use crate::common::*;
use std::path::Path;

pub struct Ctl {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Run `relay-edge ctl ARGS` with the config given by `$RELAY_EDGE_CONFIG`.
pub fn ctl(config: &Path, args: &[&str]) -> Ctl {
    let out = std::process::Command::new(BIN)
        .arg("ctl")
        .args(args)
        .env("RELAY_EDGE_CONFIG", config)
        .output()
        .expect("relay-edge ctl runs");
    Ctl {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(config: &Path, args: &[&str]) -> String {
    let r = ctl(config, args);
    assert_eq!(r.code, 0, "ctl {args:?}: {}", r.stderr);
    r.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_shows_and_changes_a_running_edge_with_its_token() {
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let edge = TestEdge::new(&format!(
        "{}affinity: {{keys: [{{header: x-session-id}}]}}\n",
        upstreams_yaml(&ups)
    ))
    .threads(1)
    .token("ctl-token")
    .ports_in_config()
    .start()
    .await;
    let conf = edge.config_path();
    let home = edge
        .post("/v1/messages", &[("x-session-id", "alice")], b"{}")
        .await
        .upstream();

    let status = ok(&conf, &["status"]);
    assert!(status.starts_with("relay-edge "), "{status}");
    assert!(status.contains("config generation 1, ready"), "{status}");
    for title in [
        "Error rate",
        "Cache hit rate",
        "Session survival",
        "Affinity success",
    ] {
        assert!(status.contains(title), "{status}");
    }

    let table = ok(&conf, &["upstreams"]);
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("ID") && header.contains("STATE"),
        "{table}"
    );
    let row = |t: &str, id: &str| {
        t.lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("no row {id}: {t}"))
            .to_string()
    };
    assert!(row(&table, "relay-a").contains("healthy"), "{table}");

    let session = ok(&conf, &["session", "alice"]);
    assert!(
        session.contains(&format!("upstream   {home} (active)")),
        "{session}"
    );
    let other = if home == "relay-a" {
        "relay-b"
    } else {
        "relay-a"
    };
    ok(&conf, &["pin", "alice", other]);
    assert_eq!(
        edge.post("/v1/messages", &[("x-session-id", "alice")], b"{}")
            .await
            .upstream(),
        other,
        "the pin made by ctl is followed"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&conf, &["--json", "session", "alice"])).expect("--json is JSON");
    assert_eq!(json["upstream"], other);

    ok(&conf, &["drain", "relay-a"]);
    assert!(row(&ok(&conf, &["upstreams"]), "relay-a").contains("draining"));
    assert_eq!(edge.upstream("relay-a").await["draining"], true);
    ok(&conf, &["undrain", "relay-a"]);
    assert_eq!(edge.upstream("relay-a").await["draining"], false);

    assert!(ok(&conf, &["forget", "alice"]).contains("forgotten"));
    let gone = ctl(&conf, &["session", "alice"]);
    assert_eq!(gone.code, 1);
    assert!(
        gone.stderr.contains("no session \"alice\""),
        "{}",
        gone.stderr
    );

    let unknown = ctl(&conf, &["drain", "relay-z"]);
    assert_eq!(unknown.code, 1);
    assert!(
        unknown.stderr.contains("no upstream \"relay-z\"")
            && unknown.stderr.contains("relay-edge ctl upstreams"),
        "{}",
        unknown.stderr
    );

    assert!(ok(&conf, &["reload"]).contains("reloaded: generation 2"));
    edge.rewrite("interval: 200ms", "interval: 0ms");
    let rejected = ctl(&conf, &["reload"]);
    assert_eq!(rejected.code, 1);
    assert!(
        rejected.stderr.contains("the running config stays")
            && rejected.stderr.contains("health_check.interval"),
        "{}",
        rejected.stderr
    );
    edge.rewrite("interval: 0ms", "interval: 200ms");

    // A wrong token: the error names the file to look at.
    let token_file = edge.dir_path().join("admin.token");
    std::fs::write(&token_file, "not-the-token\n").expect("write token");
    let refused = ctl(&conf, &["status"]);
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("refused the token") && refused.stderr.contains("admin.token_file"),
        "{}",
        refused.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_says_what_to_do_when_the_edge_or_its_config_is_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("c.yaml");
    let admin = free_port();
    std::fs::write(
        &conf,
        format!("listen: [{{addr: 127.0.0.1:{}}}]\nupstreams: [{{id: a, addr: 127.0.0.1:1}}]\nadmin: {{listen: 127.0.0.1:{admin}}}\n", free_port()),
    )
    .expect("write config");
    let down = ctl(&conf, &["status"]);
    assert_eq!(down.code, 1);
    assert!(
        down.stderr
            .contains(&format!("cannot reach the admin API at 127.0.0.1:{admin}"))
            && down.stderr.contains("Is relay-edge running"),
        "{}",
        down.stderr
    );
    let missing = ctl(&dir.path().join("nope.yaml"), &["status"]);
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("cannot use the config") && missing.stderr.contains("-c FILE"),
        "{}",
        missing.stderr
    );
}
