//! `docs/operations.md` cannot rot: every `relay-edge ctl` line in its
//! ```sh blocks runs, in the guide's order, against a live edge whose
//! upstreams are the example config's (`relay-a`, `relay-b`), and must
//! succeed.

use crate::common::*;
use crate::ctl::ctl;

const GUIDE: &str = "docs/operations.md";

/// The `relay-edge ctl` command lines of the guide's ```sh blocks.
fn ctl_examples(text: &str) -> Vec<String> {
    let mut in_sh = false;
    let mut found = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(fence) = trimmed.strip_prefix("```") {
            in_sh = !in_sh && matches!(fence.trim(), "sh" | "bash" | "console");
            continue;
        }
        let command = trimmed.trim_start_matches("$ ");
        if in_sh && command.starts_with("relay-edge ctl ") {
            // A trailing comment is the reader's, not the shell's.
            let command = command.split(" #").next().unwrap_or(command).trim();
            found.push(command.to_string());
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ctl_example_in_the_operations_guide_runs() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(GUIDE);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{GUIDE}: {e}"));
    let examples = ctl_examples(&text);
    assert!(
        examples.len() >= 8,
        "the guide shows every ctl command: {examples:#?}"
    );
    let ups = upstreams(&["relay-a", "relay-b"]).await;
    let edge = TestEdge::new(&format!(
        "{}affinity: {{keys: [{{header: x-session-id}}]}}\n",
        upstreams_yaml(&ups)
    ))
    .threads(1)
    .token("guide-token")
    .ports_in_config()
    .start()
    .await;
    edge.post("/v1/messages", &[("x-session-id", "alice")], b"{}")
        .await;
    for example in &examples {
        let args: Vec<&str> = example
            .strip_prefix("relay-edge ctl ")
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert!(
            args.iter()
                .all(|a| !a.contains(['<', '$', '|', '>', '\'', '"'])),
            "{GUIDE}: `{example}` must run as written (placeholders go in ```text blocks)"
        );
        let r = ctl(&edge.config_path(), &args);
        assert_eq!(
            r.code, 0,
            "{GUIDE}: `{example}` failed:\n{}{}",
            r.stdout, r.stderr
        );
    }
}

#[test]
fn examples_are_found_in_sh_blocks_only() {
    let text = "```sh\nrelay-edge ctl status   # how it is\n$ relay-edge ctl upstreams\n```\n```text\nrelay-edge ctl drain ID\n```\nrelay-edge ctl reload\n";
    assert_eq!(
        ctl_examples(text),
        ["relay-edge ctl status", "relay-edge ctl upstreams"]
    );
}
