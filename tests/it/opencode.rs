//! The real OpenCode (`opencode-ai` 1.18.33 from npm) through the edge with
//! `affinity: {presets: [opencode]}`, run offline against demo relays that
//! answer the Anthropic Messages API (a provider of its `opencode.json` with
//! `"npm": "@ai-sdk/anthropic"`, which OpenCode carries built in): a session,
//! its subagent and its `run --continue` stay on one relay; every request
//! carries `x-session-affinity` and `x-session-id` with the session id, and
//! every header reaches the relay as OpenCode wrote it; every stream is
//! counted `completed`, and no relay is ejected.

use crate::common::*;
use relay_edge::affinity::KeyHasher;
use relay_edge::config::Defaults;
use relay_edge::demo::{Recorded, TASK_TRIGGER};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The pinned OpenCode that `scripts/test.sh` installs.
fn opencode_bin() -> PathBuf {
    let bin =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/opencode/node_modules/.bin/opencode");
    assert!(
        bin.exists(),
        "OpenCode is missing: npm install --prefix target/opencode opencode-ai@1.18.33 \
         (scripts/test.sh installs it)"
    );
    bin
}

/// A home for OpenCode with nothing of the user's: its config, data, cache
/// and state under `home`, and a project whose `opencode.json` names the
/// relay at `base_url` as an Anthropic provider.
fn opencode_home(home: &Path, base_url: &str) -> PathBuf {
    // OpenCode installs `@opencode-ai/plugin` into each config directory in
    // the background unless its package-lock already lists it; listed, it
    // asks no registry (1.18.33: `Npm.install`'s `checkDirty`).
    let config = home.join(".config/opencode");
    std::fs::create_dir_all(config.join("node_modules")).expect("config dir");
    std::fs::write(
        config.join("package-lock.json"),
        r#"{"packages":{"":{"dependencies":{"@opencode-ai/plugin":"*"}}}}"#,
    )
    .expect("package-lock");
    let project = home.join("project");
    std::fs::create_dir_all(&project).expect("project dir");
    let config = serde_json::json!({
        "$schema": "https://opencode.ai/config.json",
        "provider": {"relay": {
            "npm": "@ai-sdk/anthropic",
            "name": "Relay",
            "options": {"baseURL": base_url, "apiKey": "test-key"},
            "models": {"claude-x": {"name": "Claude X"}},
        }},
        "model": "relay/claude-x",
        "small_model": "relay/claude-x",
        "autoupdate": false,
        "share": "disabled",
    });
    std::fs::write(project.join("opencode.json"), config.to_string()).expect("opencode.json");
    project
}

/// One `opencode run` in `project` (of `home`): its output.
fn opencode(home: &Path, project: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new(opencode_bin());
    // OpenCode takes its directory from `PWD` (not the working directory).
    cmd.current_dir(project)
        .env("PWD", project)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .env("XDG_STATE_HOME", home.join(".local/state"))
        // Offline: no models.dev list, no update check, no default plugins
        // (each would be fetched from npm), no LSP downloads.
        .env("OPENCODE_DISABLE_MODELS_FETCH", "1")
        .env("OPENCODE_DISABLE_AUTOUPDATE", "1")
        .env("OPENCODE_DISABLE_DEFAULT_PLUGINS", "1")
        .env("OPENCODE_DISABLE_LSP_DOWNLOAD", "1")
        .arg("run")
        .args(args);
    cli::run(&mut cmd, Duration::from_secs(120))
}

fn header<'r>(r: &'r Recorded, name: &str) -> Option<&'r str> {
    // Byte for byte: the name exactly as OpenCode's runtime (Bun) writes it.
    r.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opencode_keeps_its_session_and_subagents_on_one_relay_and_ejects_none() {
    let ups = upstreams(&["relay-a", "relay-b", "relay-c"]).await;
    // Passive health as shipped: three failures eject a relay.
    let edge = TestEdge::new(&format!(
        "{}affinity: {{presets: [opencode]}}\n",
        upstreams_yaml(&ups)
    ))
    .start()
    .await;
    let tap = Tap::start(edge.addr).await;
    let home = tempfile::tempdir().expect("tempdir");
    let project = opencode_home(home.path(), &format!("http://{}/v1", tap.addr));
    tokio::task::block_in_place(|| {
        // Each run calls OpenCode's `task` tool: a subagent session.
        let first = opencode(home.path(), &project, &[&format!("{TASK_TRIGGER} say hi")]);
        assert!(first.contains("0 1 2 3 4"), "{first}");
        let again = opencode(
            home.path(),
            &project,
            &["--continue", &format!("{TASK_TRIGGER} again")],
        );
        assert!(again.contains("0 1 2 3 4"), "{again}");
    });

    let served: Vec<(&str, Vec<Recorded>)> = ups
        .iter()
        .map(|u| (u.name.as_str(), u.recorded()))
        .filter(|(_, r)| !r.is_empty())
        .collect();
    let names: Vec<&str> = served.iter().map(|(n, _)| *n).collect();
    assert_eq!(names.len(), 1, "one relay served the session: {names:?}");
    let (home_relay, requests) = &served[0];
    assert!(requests.iter().all(|r| r.path == "/v1/messages"));
    // Every request: its session id in both headers.
    let mut parents = Vec::new();
    let mut children = Vec::new();
    for r in requests {
        let affinity = header(r, "x-session-affinity");
        assert!(
            affinity.is_some_and(|s| s.starts_with("ses_")),
            "{:?}",
            r.headers
        );
        assert_eq!(header(r, "x-session-id"), affinity, "{:?}", r.headers);
        match header(r, "x-parent-session-id") {
            None => parents.push(affinity),
            Some(parent) => children.push((affinity, parent)),
        }
    }
    // The session's own requests (a title, the task call and its follow-up,
    // in each run) under one id, `run --continue` included.
    assert!(parents.len() >= 4, "{parents:?}");
    let session = parents[0].expect("a session id");
    assert!(parents.iter().all(|p| *p == Some(session)), "{parents:?}");
    // One subagent per run, each a session of its own under the parent.
    assert_eq!(children.len(), 2, "{children:?}");
    assert_ne!(children[0].0, children[1].0);
    for (child, parent) in &children {
        assert_eq!(*parent, session);
        assert_ne!(*child, Some(session));
    }
    // The pin is the parent's (under the tenant of OpenCode's API key);
    // the subagents made none of their own.
    let tenant = KeyHasher::new(Defaults::HASH_SECRET)
        .tenant(b"test-key")
        .to_hex();
    let pin_of = |id: &str| format!("/api/sessions/{id}?tenant={tenant}");
    let (status, pin) = edge.admin_json("GET", &pin_of(session), b"").await;
    assert_eq!(status, 200, "{pin}");
    assert_eq!(pin["upstream"], *home_relay);
    for (child, _) in &children {
        let (status, _) = edge
            .admin_json("GET", &pin_of(child.expect("an id")), b"")
            .await;
        assert_eq!(status, 404, "{child:?} is not a session of its own");
    }
    // Every header, as OpenCode wrote it.
    assert_each_header_reached_as_sent(&tap.sent(), requests);

    let n = requests.len() as u64;
    every_stream_completed_on(&edge, home_relay, n, &ups).await;
}
