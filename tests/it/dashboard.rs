//! The admin dashboard in a real browser: headless Chromium, driven by
//! `tests/browser/dashboard.mjs` through playwright-core, signs in with the
//! admin token, reads the upstream rows, the indicators and a sparkline,
//! looks a session up and drains relay-a from the page.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The version scripts/test.sh installs (named in the install hint).
const PLAYWRIGHT_CORE: &str = "1.57.0";
const CHROMIUM: &str = "/usr/bin/chromium";
const TOKEN: &str = "dashboard-test-token-7f3a";
const KEYS: [&str; 6] = ["alice", "bob", "carol", "dave", "erin", "frank"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where cargo builds: `CARGO_TARGET_DIR` (relative to the repository when
/// relative), else `target` in the repository.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => repo().join(dir),
        None => repo().join("target"),
    }
}

fn browser_is_installed() {
    let playwright = repo().join("target/browser/node_modules/playwright-core");
    if !Path::new(CHROMIUM).exists() || !playwright.exists() {
        panic!(
            "headless Chromium is needed: apt-get install chromium && npm install --prefix target/browser playwright-core@{PLAYWRIGHT_CORE} (scripts/test.sh installs both)"
        );
    }
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node (18 or later, with npm) is needed to drive the browser"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_signs_in_shows_the_edge_and_drains_from_a_real_browser() {
    browser_is_installed();
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let edge = TestEdge::new(&format!(
        "{}affinity: {{keys: [{{header: x-session-id}}]}}\n",
        upstreams_yaml(&ups)
    ))
    .threads(1)
    .token(TOKEN)
    .start()
    .await;

    // The page itself holds no data: it loads without the token, and asks
    // for it when the API refuses.
    let page = request(edge.admin, "GET", "/", &[], b"")
        .await
        .expect("dashboard");
    assert_eq!(page.status, 200, "GET / without the token");
    assert!(page.text().contains("<title>relay-edge</title>"));
    let refused = request(edge.admin, "GET", "/api/stats", &[], b"")
        .await
        .expect("answer");
    assert_eq!(refused.status, 401, "the API still needs the token");

    // Keyed traffic, so that there are sessions, counters and history.
    let mut alice_home = String::new();
    for round in 0..3 {
        for key in KEYS {
            let r = edge.get("/v1/x", &[("x-session-id", key)]).await;
            assert_eq!(r.status, 200, "{key}: {}", r.text());
            if key == "alice" && round == 0 {
                alice_home = r.upstream();
            }
        }
    }
    assert!(
        alice_home.starts_with("relay-"),
        "alice went to {alice_home}"
    );
    eventually(
        Duration::from_secs(5),
        "alice's session is known",
        || async { edge.admin_json("GET", "/api/sessions/alice", b"").await.0 == 200 },
    )
    .await;
    let (code, history) = edge.admin_json("GET", "/api/history", b"").await;
    assert_eq!(code, 200, "{history}");

    let shot = target_dir().join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let script = repo().join("tests/browser/dashboard.mjs");
    let url = format!("http://{}/", edge.admin);
    let shot_arg = shot.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .arg(url)
            .arg(TOKEN)
            .arg(shot_arg)
            .output()
    })
    .await
    .expect("join")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser test failed ({}):\n{stderr}\n{stdout}\nrelay-edge log:\n{}",
        out.status,
        edge.log()
    );

    let summary: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON summary on stdout:\n{stdout}\n{stderr}"));
    assert_eq!(
        summary["rows"],
        serde_json::json!(["relay-a", "relay-b"]),
        "{summary}"
    );
    assert_eq!(summary["indicators"], 8, "{summary}");
    assert_eq!(
        summary["session_upstream"],
        alice_home.as_str(),
        "the page found alice where the proxy sent her: {summary}"
    );
    assert_eq!(summary["drained"], "relay-a", "{summary}");

    // The click reached the edge.
    assert_eq!(edge.upstream("relay-a").await["draining"], true);
    assert_eq!(edge.upstream("relay-b").await["draining"], false);

    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("{}: {e}", shot.display()));
    assert!(
        png.len() > 1000 && png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a full-page PNG ({} bytes)",
        shot.display(),
        png.len()
    );
}
