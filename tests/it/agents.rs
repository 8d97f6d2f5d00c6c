//! The agent presets (`affinity.presets`): each client's own header set (or
//! body) keeps its session on one relay, a subagent lands on its parent's,
//! and every header reaches the relay byte for byte, name case and
//! underscores included (nginx drops underscored names by default).

use crate::common::*;

/// Each client's header set, as its source sends it on a request.
fn codex(session: &str, thread: &str) -> Vec<(String, String)> {
    [
        ("session-id", session),
        ("session_id", session),
        ("thread-id", thread),
        ("thread_id", thread),
        ("x-codex-turn-state", "opaque-turn_state.42"),
        ("originator", "codex_cli_rs"),
        ("version", "0.171.0"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .to_vec()
}

fn opencode(session: &str, parent: Option<&str>) -> Vec<(String, String)> {
    let mut h = vec![
        ("x-session-affinity".to_string(), session.to_string()),
        ("X-Session-Id".to_string(), session.to_string()),
    ];
    if let Some(p) = parent {
        h.push(("x-parent-session-id".to_string(), p.to_string()));
    }
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
    // Codex: a session and its subagent (which sends the root's id).
    let root = one(&relays_of(&edge, &codex("019a-root", "019a-root"), b"{}", 10).await);
    let sub = one(&relays_of(&edge, &codex("019a-root", "019a-sub"), b"{}", 5).await);
    assert_eq!(sub, root, "a Codex subagent shares its root's relay");
    // OpenCode: a subagent lands on its parent's relay.
    let parent = one(&relays_of(&edge, &opencode("ses_parent", None), b"{}", 10).await);
    for i in 0..8 {
        let child = format!("ses_child_{i}");
        let got = one(&relays_of(&edge, &opencode(&child, Some("ses_parent")), b"{}", 2).await);
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
    for (name, value) in codex("019a-root", "019a-sub")
        .into_iter()
        .chain(opencode("ses_child_0", Some("ses_parent")))
    {
        let reached = ups.iter().flat_map(|u| u.recorded()).any(|r| {
            r.headers
                .iter()
                .any(|(k, v)| k.as_str() == name.as_str() && v.as_str() == value.as_str())
        });
        assert!(
            reached,
            "{name}: {value} did not reach a relay byte for byte"
        );
    }
}
