//! The agent presets of `affinity.presets`: each client's own session keys,
//! in the order it is read, as key sources. Each was read from the client
//! version named beside it (and the Codex CLI's and OpenCode's header sets
//! also captured from real runs; `tests/it/codex.rs` and `opencode.rs`
//! drive those two through the edge); a preset is only a list of sources,
//! which `keys` can also name one by one.

use super::*;

/// The presets' names, as `affinity.presets` takes them.
pub const PRESETS: [&str; 5] = ["claude_code", "codex", "opencode", "gemini_cli", "generic"];

/// The key sources of preset `name`, in order; `None` for no such preset.
pub(super) fn preset(name: &str) -> Option<Vec<KeySpec>> {
    let header = |h: &str| KeySpec {
        source: KeySourceSpec::Header(h.to_string()),
        extract: Extract::Whole,
    };
    let json = |pointer: &str, extract: Extract| KeySpec {
        source: KeySourceSpec::Json(json_pointer(pointer).unwrap_or_default()),
        extract,
    };
    Some(match name {
        // Claude Code 2.x: its session header, then the session part of the
        // body's `metadata.user_id` (both of its shapes).
        "claude_code" => vec![
            header(Defaults::CLAUDE_CODE_HEADER),
            json(Defaults::CLAUDE_CODE_POINTER, Extract::ClaudeUserId),
        ],
        // Codex CLI 0.171.0 (`@openai/codex`): `session-id` (hyphenated
        // since openai/codex #21757, in 0.134.0; a subagent sends its
        // root's, with a `thread-id` of its own), the older `session_id`
        // (0.130.0 and before), `thread-id`, then the body's
        // `prompt_cache_key` (its session id since July 2026).
        "codex" => vec![
            header("session-id"),
            header("session_id"),
            header("thread-id"),
            json("/prompt_cache_key", Extract::Whole),
        ],
        // OpenCode 1.18.33 (`opencode-ai`): a subagent's parent first, so it
        // lands on its parent's relay and prompt cache; then
        // `x-session-affinity` and `x-session-id` (both its session id, on
        // every request, `run --continue` included; the source's
        // `X-Session-Id` goes out lower case), and `x-opencode-session` on
        // its own gateway.
        "opencode" => vec![
            header("x-parent-session-id"),
            header("x-session-affinity"),
            header("x-session-id"),
            header("x-opencode-session"),
        ],
        // Gemini CLI 0.61.0 (`@google/gemini-cli`), Code Assist path: the
        // body's `request.session_id` (its session id; there since 0.1.9),
        // beside `model`, `project` and `user_prompt_id`.
        "gemini_cli" => vec![json("/request/session_id", Extract::Whole)],
        "generic" => vec![header("x-session-id")],
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{parse, KeySourceSpec};

    fn sources(affinity: &str) -> Result<Vec<String>, String> {
        let text = format!(
            "listen: [{{addr: 127.0.0.1:8080}}]\nupstreams: [{{id: a, addr: 127.0.0.1:9001}}]\naffinity: {affinity}\n"
        );
        let config = parse(&text).map_err(|e| format!("{e:?}"))?;
        Ok(config
            .affinity
            .keys
            .iter()
            .map(|k| match &k.source {
                KeySourceSpec::Header(h) => format!("header {h}"),
                KeySourceSpec::Json(p) => format!("json /{}", p.join("/")),
                other => format!("{other:?}"),
            })
            .collect())
    }

    /// Each case: the affinity section, and its key sources in order.
    #[test]
    fn each_preset_expands_to_its_clients_keys_in_order() {
        let cases: [(&str, &[&str]); 6] = [
            (
                "{presets: [codex]}",
                &[
                    "header session-id",
                    "header session_id",
                    "header thread-id",
                    "json /prompt_cache_key",
                ],
            ),
            (
                "{presets: [opencode]}",
                &[
                    "header x-parent-session-id",
                    "header x-session-affinity",
                    "header x-session-id",
                    "header x-opencode-session",
                ],
            ),
            ("{presets: [gemini_cli]}", &["json /request/session_id"]),
            ("{presets: [generic]}", &["header x-session-id"]),
            (
                "{claude_code: true, presets: [claude_code, generic], keys: [{header: x-mine}]}",
                &[
                    "header x-claude-code-session-id",
                    "json /metadata/user_id",
                    "header x-session-id",
                    "header x-mine",
                ],
            ),
            (
                "{presets: [gemini_cli, generic]}",
                &["json /request/session_id", "header x-session-id"],
            ),
        ];
        for (affinity, want) in cases {
            assert_eq!(sources(affinity).expect("valid"), want, "{affinity}");
        }
    }

    #[test]
    fn an_unknown_preset_is_an_error_with_its_path() {
        let e = sources("{presets: [codex, aider]}").expect_err("invalid");
        assert!(e.contains("affinity.presets[1]"), "{e}");
        assert!(
            e.contains("must be one of claude_code, codex, opencode, gemini_cli, generic"),
            "{e}"
        );
    }
}
