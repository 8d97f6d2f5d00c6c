//! The real Codex CLI (`@openai/codex` 0.171.0, run offline against demo
//! relays that answer the OpenAI Responses API) through the edge with
//! `affinity: {presets: [codex]}`: a session, the subagent each of its turns
//! spawns and its resumed turns stay on one relay; every header reaches the
//! relay as Codex wrote it, `x-codex-turn-state` (which Codex sends back on
//! each later request of a turn) included; every stream is counted
//! `completed`, and no relay is ejected for serving it.

use crate::common::*;
use relay_edge::affinity::KeyHasher;
use relay_edge::config::Defaults;
use relay_edge::demo::{codex_turn_state, Recorded, SPAWN_TRIGGER};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The pinned Codex CLI that `scripts/test.sh` installs.
fn codex_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/codex/node_modules/.bin/codex");
    assert!(
        bin.exists(),
        "the Codex CLI is missing: npm install --prefix target/codex @openai/codex@0.171.0 \
         (scripts/test.sh installs it)"
    );
    bin
}

/// One `codex exec` against the Responses API at `base_url`: its output.
fn codex(home: &Path, base_url: &str, args: &[&str]) -> String {
    let provider = format!(
        "model_providers.edge={{name=\"edge\", base_url=\"{base_url}\", env_key=\"EDGE_KEY\", wire_api=\"responses\"}}"
    );
    let mut cmd = Command::new(codex_bin());
    cmd.current_dir(home)
        .env("CODEX_HOME", home)
        .env("HOME", home)
        .env("EDGE_KEY", "test-key")
        .args(["exec", "--skip-git-repo-check"])
        .args(["-c", "model_provider=\"edge\"", "-c", &provider])
        .args(["-c", "model=\"gpt-x\""])
        .args(args);
    cli::run(&mut cmd, Duration::from_secs(120))
}

/// A header by its name exactly as Codex writes it.
fn header<'r>(r: &'r Recorded, name: &str) -> Option<&'r str> {
    r.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn body_key(r: &Recorded) -> Option<String> {
    let body: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
    body["prompt_cache_key"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_codex_cli_keeps_its_session_and_subagents_on_one_relay_and_ejects_none() {
    let ups = upstreams(&["relay-a", "relay-b", "relay-c"]).await;
    // Passive health as shipped: three failures eject a relay.
    let edge = TestEdge::new(&format!(
        "{}affinity: {{presets: [codex]}}\n",
        upstreams_yaml(&ups)
    ))
    .start()
    .await;
    let tap = Tap::start(edge.addr).await;
    let base_url = format!("http://{}/v1", tap.addr);
    let home = tempfile::tempdir().expect("tempdir");
    const TURNS: usize = 3;
    tokio::task::block_in_place(|| {
        // Each turn spawns a subagent and waits for it.
        let first = codex(
            home.path(),
            &base_url,
            &[&format!("{SPAWN_TRIGGER} say hi")],
        );
        assert!(first.contains("0 1 2 3 4"), "{first}");
        for _ in 1..TURNS {
            let again = codex(
                home.path(),
                &base_url,
                &["resume", "--last", &format!("{SPAWN_TRIGGER} again")],
            );
            assert!(again.contains("0 1 2 3 4"), "{again}");
        }
    });

    let served: Vec<(&str, Vec<Recorded>)> = ups
        .iter()
        .map(|u| (u.name.as_str(), u.recorded()))
        .filter(|(_, r)| !r.is_empty())
        .collect();
    let names: Vec<&str> = served.iter().map(|(n, _)| *n).collect();
    assert_eq!(names.len(), 1, "one relay served the session: {names:?}");
    let (home_relay, requests) = &served[0];
    assert!(requests.iter().all(|r| r.path == "/v1/responses"));
    let (subagents, roots): (Vec<&Recorded>, Vec<&Recorded>) = requests
        .iter()
        .partition(|r| header(r, "x-openai-subagent").is_some());
    // Per turn: the spawn, the wait, the answer; and the subagent's one.
    assert_eq!(roots.len(), 3 * TURNS, "{requests:?}");
    assert_eq!(subagents.len(), TURNS, "{requests:?}");
    // The session: hyphenated headers (0.171.0), and the body's
    // prompt_cache_key, all its id, resumed turns included.
    let session = header(roots[0], "session-id").expect("session-id");
    for r in &roots {
        assert_eq!(header(r, "session-id"), Some(session), "{:?}", r.headers);
        assert_eq!(header(r, "thread-id"), Some(session), "{:?}", r.headers);
        assert_eq!(body_key(r).as_deref(), Some(session));
    }
    // A subagent: the root's session-id, a thread of its own.
    let mut threads = std::collections::BTreeSet::new();
    for r in &subagents {
        assert_eq!(header(r, "session-id"), Some(session), "{:?}", r.headers);
        assert_eq!(header(r, "x-codex-parent-thread-id"), Some(session));
        assert_eq!(header(r, "x-openai-subagent"), Some("collab_spawn"));
        let thread = header(r, "thread-id").expect("thread-id");
        assert_ne!(thread, session);
        threads.insert(thread);
    }
    assert_eq!(threads.len(), TURNS, "a subagent per turn: {threads:?}");
    // The relay's turn-state token, sent back on each later request of a
    // turn, byte for byte; never on a turn's first request.
    let token = codex_turn_state(home_relay);
    let mut turns_seen = std::collections::BTreeSet::new();
    for r in &roots {
        let turn = header(r, "x-codex-turn-metadata")
            .and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok())
            .and_then(|m| m["turn_id"].as_str().map(str::to_string))
            .expect("a turn id in x-codex-turn-metadata");
        let later = !turns_seen.insert(turn);
        let want = later.then_some(token.as_str());
        assert_eq!(header(r, "x-codex-turn-state"), want, "{:?}", r.headers);
    }
    assert_eq!(turns_seen.len(), TURNS);
    // The session is pinned there (under the tenant of Codex's API key).
    let tenant = KeyHasher::new(Defaults::HASH_SECRET)
        .tenant(b"test-key")
        .to_hex();
    let (status, pin) = edge
        .admin_json(
            "GET",
            &format!("/api/sessions/{session}?tenant={tenant}"),
            b"",
        )
        .await;
    assert_eq!(status, 200, "{pin}");
    assert_eq!(pin["upstream"], *home_relay);
    // Every header, as Codex wrote it.
    assert_each_header_reached_as_sent(&tap.sent(), requests);

    let n = requests.len() as u64;
    let metrics = every_stream_completed_on(&edge, home_relay, n, &ups).await;
    // The Responses API's usage, read as it passed: 900 cached input tokens
    // per request.
    let cached =
        format!("relay_edge_tokens_total{{kind=\"cache_read_input\",upstream=\"{home_relay}\"}}");
    assert_eq!(counter(&metrics, &cached), 900 * n, "{metrics}");
}
