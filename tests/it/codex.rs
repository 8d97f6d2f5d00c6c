//! The real Codex CLI (`@openai/codex`, run offline against demo relays
//! that answer the OpenAI Responses API) through the edge: a session and
//! its resumed turns stay on one relay, every stream is counted
//! `completed`, and no relay is ejected for serving it.

use crate::common::*;
use std::path::{Path, PathBuf};

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

/// One `codex exec` against `edge` (its Responses API at `/v1`): its output.
fn codex(home: &Path, edge: &Edge, args: &[&str]) -> String {
    let provider = format!(
        "model_providers.edge={{name=\"edge\", base_url=\"http://{}/v1\", env_key=\"EDGE_KEY\", wire_api=\"responses\"}}",
        edge.addr
    );
    let out = std::process::Command::new(codex_bin())
        .current_dir(home)
        .env("CODEX_HOME", home)
        .env("HOME", home)
        .env("EDGE_KEY", "test-key")
        .args(["exec", "--skip-git-repo-check"])
        .args(["-c", "model_provider=\"edge\"", "-c", &provider])
        .args(["-c", "model=\"gpt-x\""])
        .args(args)
        .output()
        .expect("codex runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "codex {args:?} failed:\n{text}");
    text
}

fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_codex_cli_keeps_its_session_on_one_relay_and_ejects_none() {
    let ups = upstreams(&["relay-a", "relay-b", "relay-c"]).await;
    // Passive health as shipped: three failures eject a relay.
    let edge = TestEdge::new(&format!(
        "{}affinity: {{keys: [{{header: session-id}}, {{header: session_id}}]}}\n",
        upstreams_yaml(&ups)
    ))
    .start()
    .await;
    let home = tempfile::tempdir().expect("tempdir");
    tokio::task::block_in_place(|| {
        let first = codex(home.path(), &edge, &["say hi"]);
        assert!(first.contains("0 1 2 3 4"), "{first}");
        for _ in 0..3 {
            let again = codex(home.path(), &edge, &["resume", "--last", "again"]);
            assert!(again.contains("0 1 2 3 4"), "{again}");
        }
    });
    let served: Vec<(String, Vec<Option<String>>)> = ups
        .iter()
        .map(|u| {
            let sessions = u
                .recorded()
                .iter()
                .filter(|r| r.path == "/v1/responses")
                .map(|r| {
                    r.header("session-id")
                        .or(r.header("session_id"))
                        .map(str::to_string)
                })
                .collect();
            (u.name.clone(), sessions)
        })
        .collect();
    let homes: Vec<&(String, Vec<Option<String>>)> =
        served.iter().filter(|(_, s)| !s.is_empty()).collect();
    assert_eq!(homes.len(), 1, "one relay served the session: {served:?}");
    let (home_relay, sessions) = homes[0];
    assert_eq!(sessions.len(), 4, "{served:?}");
    assert!(
        sessions[0].is_some() && sessions.iter().all(|s| *s == sessions[0]),
        "one session id, sent every time: {sessions:?}"
    );
    let metrics = edge.metrics().await;
    let stream = |u: &str, outcome: &str| {
        counter(
            &metrics,
            &format!("relay_edge_streams_total{{outcome=\"{outcome}\",upstream=\"{u}\"}}"),
        )
    };
    assert_eq!(stream(home_relay, "completed"), 4, "{metrics}");
    for u in &ups {
        assert_eq!(stream(&u.name, "relay_cut"), 0, "{metrics}");
        assert_eq!(
            counter(
                &metrics,
                &format!(
                    "relay_edge_upstream_ejections_total{{upstream=\"{}\"}}",
                    u.name
                )
            ),
            0,
            "{metrics}"
        );
    }
    // The Responses API's usage, read as it passed: 1000 input (900 cached),
    // 10 output, per turn.
    assert_eq!(
        counter(
            &metrics,
            &format!(
                "relay_edge_tokens_total{{kind=\"cache_read_input\",upstream=\"{home_relay}\"}}"
            )
        ),
        3600
    );
}
