//! The agent presets (`affinity.presets`): each client's own header set (or
//! body), as captured from a real run, keeps its session on one relay, a
//! subagent lands on its parent's, and every header reaches the relay byte
//! for byte, name case and underscores included (nginx drops underscored
//! names by default). `codex.rs` and `opencode.rs` drive the clients
//! themselves.

use crate::common::*;

type Headers = Vec<(String, String)>;

fn owned(pairs: &[(&str, String)]) -> Headers {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

// Each client's header set as captured from a real run (`codex exec` and
// `opencode run` against a demo relay, through a recording proxy, December
// 2026), names, order and values as they were written; only the ids are
// parameters. `Host`, `Content-Length` and the hop-by-hop `Connection` are
// left to the test client.

/// Codex CLI 0.171.0: a request later in a turn of thread `thread` of
/// session `session` (it sends back the relay's `x-codex-turn-state`). A
/// subagent ([`codex_subagent`]) sends its root's `session-id`.
fn codex(session: &str, thread: &str) -> Headers {
    let metadata = format!(
        r#"{{"installation_id":"82f1811c-edd3-4979-aa5b-a130eafe24ee","session_id":"{session}","thread_id":"{thread}","agent_name":"/root","turn_id":"01a25296-b5fc-7780-80ba-24acd3b5e1f9","window_id":"{thread}:0","window_number":0,"context_window_id":"01a25296-b5db-74c1-8312-4b48707ca514","request_kind":"turn","history_initialization":"new","root_turn_id":"01a25296-b5fc-7780-80ba-24acd3b5e1f9","thread_source":"user","turn_trigger":"exec","sandbox":"seccomp","sandbox_mode":"read-only","auto_review_enabled":false,"node_repl_auto_review_required":false,"node_repl_disabled":false,"turn_started_at_unix_ms":1796681938433,"analytics_enabled":true,"model":"gpt-x"}}"#
    );
    owned(&[
        ("x-codex-beta-features", "remote_compaction_v2".into()),
        ("x-codex-turn-state", "relay-a.turn_state-1".into()),
        ("x-codex-window-id", format!("{thread}:0")),
        ("x-codex-turn-metadata", metadata),
        ("x-client-request-id", thread.into()),
        ("session-id", session.into()),
        ("thread-id", thread.into()),
        ("accept", "text/event-stream".into()),
        ("content-type", "application/json".into()),
        ("authorization", "Bearer test-key".into()),
        ("originator", "codex_exec".into()),
        (
            "user-agent",
            "codex_exec/0.171.0 (Debian 12.0.0; x86_64) xterm (codex_exec; 0.171.0)".into(),
        ),
        ("accept-encoding", "zstd,gzip".into()),
    ])
}

/// Codex CLI 0.171.0: the first request of a subagent (`spawn_agent`) of
/// root thread `root`, in thread `thread`.
fn codex_subagent(root: &str, thread: &str) -> Headers {
    let metadata = format!(
        r#"{{"installation_id":"82f1811c-edd3-4979-aa5b-a130eafe24ee","session_id":"{root}","thread_id":"{thread}","agent_name":"/root","turn_id":"01a25296-b6ca-7d00-931d-faa69e5abb9c","window_id":"{thread}:0","window_number":0,"context_window_id":"01a25296-b6c5-79c0-b040-f6d8fb4c9b02","request_kind":"turn","history_initialization":"new","parent_thread_id":"{root}","parent_turn_id":"01a25296-b5fc-7780-80ba-24acd3b5e1f9","root_turn_id":"01a25296-b5fc-7780-80ba-24acd3b5e1f9","subagent_kind":"thread_spawn","thread_source":"subagent","turn_trigger":"exec","sandbox":"seccomp","sandbox_mode":"read-only","auto_review_enabled":false,"node_repl_auto_review_required":false,"node_repl_disabled":false,"turn_started_at_unix_ms":1796681938637,"analytics_enabled":true,"model":"gpt-x"}}"#
    );
    owned(&[
        ("x-codex-beta-features", "remote_compaction_v2".into()),
        ("x-codex-window-id", format!("{thread}:0")),
        ("x-codex-turn-metadata", metadata),
        ("x-codex-parent-thread-id", root.into()),
        ("x-openai-subagent", "collab_spawn".into()),
        ("x-client-request-id", thread.into()),
        ("session-id", root.into()),
        ("thread-id", thread.into()),
        ("accept", "text/event-stream".into()),
        ("content-type", "application/json".into()),
        ("authorization", "Bearer test-key".into()),
        ("originator", "codex_exec".into()),
        (
            "user-agent",
            "codex_exec/0.171.0 (Debian 12.0.0; x86_64) xterm (codex_exec; 0.171.0)".into(),
        ),
        ("accept-encoding", "zstd,gzip".into()),
    ])
}

/// Codex CLI 0.130.0, before openai/codex #21757: underscored `session_id`
/// and `thread_id` (0.118.0 sent `session_id` alone; 0.134.0 and later
/// hyphenate both), a request later in a turn.
fn codex_0_130(session: &str) -> Headers {
    let metadata = format!(
        r#"{{"session_id":"{session}","thread_id":"{session}","turn_id":"01a25295-dd24-77c2-be94-1bd8fa474477","sandbox":"seccomp","turn_started_at_unix_ms":1796681882918}}"#
    );
    owned(&[
        ("x-codex-beta-features", "terminal_resize_reflow".into()),
        ("x-codex-turn-state", "relay-a.turn_state-1".into()),
        ("x-codex-turn-metadata", metadata),
        ("x-codex-window-id", format!("{session}:0")),
        ("x-client-request-id", session.into()),
        ("session_id", session.into()),
        ("thread_id", session.into()),
        ("accept", "text/event-stream".into()),
        ("authorization", "Bearer test-key".into()),
        ("content-type", "application/json".into()),
        ("originator", "codex_exec".into()),
        (
            "user-agent",
            "codex_exec/0.130.0 (Debian 12.0.0; x86_64) xterm (codex_exec; 0.130.0)".into(),
        ),
    ])
}

/// OpenCode 1.18.33 (on Bun 1.3.14, which writes its own headers' names
/// capitalized and the caller's lower case: the source's `X-Session-Id`
/// goes out as `x-session-id`): session `session`, a subagent of `parent`.
fn opencode(session: &str, parent: Option<&str>) -> Headers {
    let mut h = owned(&[
        ("Content-Type", "application/json".into()),
        (
            "User-Agent",
            "opencode/1.18.33 ai-sdk/provider-utils/4.0.46 runtime/bun/1.3.14".into(),
        ),
        ("anthropic-beta", "structured-outputs-2025-11-13".into()),
        ("anthropic-version", "2023-06-01".into()),
        ("x-api-key", "test-key".into()),
    ]);
    if let Some(p) = parent {
        h.push(("x-parent-session-id".into(), p.into()));
    }
    h.extend(owned(&[
        ("x-session-affinity", session.into()),
        ("x-session-id", session.into()),
        ("Accept", "*/*".into()),
        ("Accept-Encoding", "gzip, deflate, br, zstd".into()),
    ]));
    h
}

/// Send `headers` (and `body`) `n` times; the relays that answered.
async fn relays_of(
    edge: &Edge,
    headers: &[(String, String)],
    body: &[u8],
    n: usize,
) -> Vec<String> {
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (&**k, &**v)).collect();
    let mut seen = Vec::new();
    for _ in 0..n {
        let r = edge.post("/v1/messages", &h, body).await;
        assert_eq!(r.status, 200, "{}", r.text());
        seen.push(r.upstream());
    }
    seen
}

fn one(relays: &[String]) -> String {
    assert!(relays.iter().all(|r| *r == relays[0]), "moved: {relays:?}");
    relays[0].clone()
}

#[tokio::test]
async fn each_agents_session_sticks_and_its_headers_reach_the_relay_as_sent() {
    let ups = upstreams(&["relay-a", "relay-b", "relay-c", "relay-d"]).await;
    let edge = TestEdge::new(&format!(
        "{}affinity: {{presets: [claude_code, codex, opencode, gemini_cli, generic]}}\n",
        upstreams_yaml(&ups)
    ))
    .start()
    .await;
    // Codex: a session and its subagents (which send the root's id).
    let (root_id, parent_id) = (
        "01a25296-b5d6-7211-893e-1ee444b4b68f",
        "ses_dad6be4b3ffe6RO6AGK1jYyH8r",
    );
    let root = one(&relays_of(&edge, &codex(root_id, root_id), b"{}", 10).await);
    for i in 0..8 {
        let thread = format!("01a25296-b6c2-7013-b458-3fc1fe45fd8{i}");
        let sub = one(&relays_of(&edge, &codex_subagent(root_id, &thread), b"{}", 2).await);
        assert_eq!(sub, root, "a Codex subagent shares its root's relay");
    }
    // An older Codex: its underscored session_id keeps its session.
    one(&relays_of(
        &edge,
        &codex_0_130("01a25295-dd17-7b11-88e6-fa18ecbe977f"),
        b"{}",
        10,
    )
    .await);
    // OpenCode: a subagent lands on its parent's relay.
    let parent = one(&relays_of(&edge, &opencode(parent_id, None), b"{}", 10).await);
    for i in 0..8 {
        let child = format!("ses_dad6bdb57ffeVIP1C3CPwXnNl{i}");
        let got = one(&relays_of(&edge, &opencode(&child, Some(parent_id)), b"{}", 2).await);
        assert_eq!(got, parent, "{child} follows its parent");
    }
    // Gemini CLI: the body's request.session_id.
    let gemini = |s: &str| {
        format!(
            r#"{{"model":"gemini-x","project":"p","request":{{"contents":[],"session_id":"{s}"}}}}"#
        )
    };
    // Its body key is the session: the admin API finds it pinned where it
    // was served.
    for i in 0..4 {
        let key = format!("gem-{i}");
        let home = one(&relays_of(&edge, &[], gemini(&key).as_bytes(), 4).await);
        let (status, pin) = edge
            .admin_json("GET", &format!("/api/sessions/{key}"), b"")
            .await;
        assert_eq!(status, 200, "{key} is a session");
        assert_eq!(pin["upstream"], home.as_str(), "{key}");
    }
    // Every header reached the relay as it was sent, underscores included.
    let sets = [
        codex(root_id, root_id),
        codex_subagent(root_id, "01a25296-b6c2-7013-b458-3fc1fe45fd80"),
        codex_0_130("01a25295-dd17-7b11-88e6-fa18ecbe977f"),
        opencode(parent_id, None),
        opencode("ses_dad6bdb57ffeVIP1C3CPwXnNl0", Some(parent_id)),
    ];
    let recorded: Vec<_> = ups.iter().flat_map(|u| u.recorded()).collect();
    for set in sets {
        let reached = recorded.iter().any(|r| {
            set.iter()
                .all(|(name, value)| r.headers.iter().any(|(k, v)| k == name && v == value))
        });
        assert!(reached, "{set:?} did not reach a relay byte for byte");
    }
}
