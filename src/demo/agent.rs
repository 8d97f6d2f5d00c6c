//! Scripted agent turns, so that a real coding agent can be driven through
//! the edge while it runs a subagent, as it does for its users:
//!
//! - Anthropic Messages (OpenCode): a prompt that says `[demo: call task]`
//!   is answered with a `tool_use` of OpenCode's `task` tool (a subagent
//!   with the prompt `say hi`), and with text once its `tool_result` is in.
//! - OpenAI Responses (the Codex CLI): a prompt that says
//!   `[demo: spawn a subagent]` is answered with Codex's `spawn_agent`
//!   (`say hi`), then `wait_agent` on the agent id its output names, then
//!   text.
//!
//! Agents resend the whole conversation, so counting the triggers in a body
//! against the tool results in it tells which step comes next, turn after
//! turn (`run --continue`, `resume`). Nothing here happens without a trigger.

use super::{chunk, sse_head_with};
use memchr::memmem;
use serde_json::{json, Value};
use tokio::net::TcpStream;

/// The prompt that makes an Anthropic Messages answer call OpenCode's `task`.
pub const TASK_TRIGGER: &str = "[demo: call task]";
/// The prompt that makes a Responses answer spawn a Codex subagent.
pub const SPAWN_TRIGGER: &str = "[demo: spawn a subagent]";

/// A tool call to answer with, in its protocol's shape.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum ToolCall {
    /// An Anthropic `tool_use` block.
    Anthropic {
        id: String,
        name: String,
        input: Value,
    },
    /// A Responses `function_call` item of a namespaced tool.
    Responses {
        call_id: String,
        namespace: String,
        name: String,
        arguments: Value,
    },
}

fn count(body: &[u8], needle: &str) -> usize {
    memmem::find_iter(body, needle.as_bytes()).count()
}

/// The tool call that answers the request at `path` with `body`, if its
/// conversation asks for one that has not been made yet.
pub(super) fn next_call(path: &str, body: &[u8]) -> Option<ToolCall> {
    match path {
        "/v1/messages" => {
            let asked = count(body, TASK_TRIGGER);
            let done = count(body, r#""type":"tool_result""#);
            // Only where the tool is offered: OpenCode's title requests
            // carry the prompt too, and no tools.
            (count(body, r#""name":"task""#) > 0 && asked > done).then(|| ToolCall::Anthropic {
                id: format!("toolu_demo_{done}"),
                name: "task".into(),
                input: json!({
                    "description": "demo subtask",
                    "prompt": "say hi",
                    "subagent_type": "general",
                }),
            })
        }
        "/v1/responses" => {
            let asked = count(body, SPAWN_TRIGGER);
            let done = count(body, r#""type":"function_call_output""#);
            // Each asking turn makes two calls: spawn, then wait.
            let step = done.checked_sub(2 * asked.checked_sub(1)?)?;
            let (name, arguments) = match step {
                0 => ("spawn_agent", json!({"message": "say hi"})),
                1 => ("wait_agent", json!({"targets": [spawned_agent(body)?]})),
                _ => return None,
            };
            Some(ToolCall::Responses {
                call_id: format!("call_demo_{done}"),
                namespace: "multi_agent_v1".into(),
                name: name.into(),
                arguments,
            })
        }
        _ => None,
    }
}

/// The agent id in the last `spawn_agent` output of `body` (a JSON string
/// inside the body's JSON, so its quotes are escaped).
fn spawned_agent(body: &[u8]) -> Option<String> {
    let key = br#"\"agent_id\":\""#;
    let start = memmem::rfind(body, key)? + key.len();
    let len = memmem::find(&body[start..], br#"\""#)?;
    String::from_utf8(body[start..start + len].to_vec()).ok()
}

/// Answer with `call` as relay `name` does: an SSE stream, with usage as
/// the other demo streams report it (1000 input tokens, 900 of them read
/// from the cache, 10 output).
pub(super) async fn answer(stream: &mut TcpStream, name: &str, call: &ToolCall) -> bool {
    let event = |kind: &str, data: Value| format!("event: {kind}\ndata: {data}\n\n");
    let (extra, events) = match call {
        ToolCall::Anthropic {
            id,
            name: tool,
            input,
        } => (
            String::new(),
            vec![
                event(
                    "message_start",
                    json!({"type": "message_start", "upstream": name, "message": {
                    "id": "msg_demo", "type": "message", "role": "assistant", "model": "claude-x",
                    "content": [], "stop_reason": null,
                    "usage": {"input_tokens": 100, "cache_creation_input_tokens": 0,
                              "cache_read_input_tokens": 900, "output_tokens": 1}}}),
                ),
                event(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "tool_use", "id": id, "name": tool, "input": {}}}),
                ),
                event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": input.to_string()}}),
                ),
                event(
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": 0}),
                ),
                event(
                    "message_delta",
                    json!({"type": "message_delta",
                    "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 10}}),
                ),
                event("message_stop", json!({"type": "message_stop"})),
            ],
        ),
        ToolCall::Responses {
            call_id,
            namespace,
            name: tool,
            arguments,
        } => {
            let item = |status: &str, arguments: &str| {
                json!({"type": "function_call", "id": format!("fc_{call_id}"), "call_id": call_id,
                       "namespace": namespace, "name": tool, "arguments": arguments, "status": status})
            };
            (
                super::openai::turn_state_header(name),
                vec![
                    event(
                        "response.created",
                        json!({"type": "response.created", "upstream": name,
                        "response": {"id": "resp_demo", "object": "response", "status": "in_progress", "output": []}}),
                    ),
                    event(
                        "response.output_item.added",
                        json!({"type": "response.output_item.added",
                        "output_index": 0, "item": item("in_progress", "")}),
                    ),
                    event(
                        "response.output_item.done",
                        json!({"type": "response.output_item.done",
                        "output_index": 0, "item": item("completed", &arguments.to_string())}),
                    ),
                    event(
                        "response.completed",
                        json!({"type": "response.completed", "response": {
                        "id": "resp_demo", "object": "response", "status": "completed", "output": [],
                        "usage": {"input_tokens": 1000, "input_tokens_details": {"cached_tokens": 900},
                                  "output_tokens": 10, "output_tokens_details": {"reasoning_tokens": 0},
                                  "total_tokens": 1010}}}),
                    ),
                ],
            )
        }
    };
    if !sse_head_with(stream, name, &extra).await {
        return false;
    }
    for e in &events {
        if !chunk(stream, e).await {
            return false;
        }
    }
    chunk(stream, "").await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_of(call: Option<ToolCall>) -> Option<String> {
        call.map(|c| match c {
            ToolCall::Anthropic { name, .. } | ToolCall::Responses { name, .. } => name,
        })
    }

    /// Each case: path, body, the tool called next (if any).
    #[test]
    fn a_trigger_calls_its_tools_in_turn_and_then_answers_text() {
        let spawned = r#"[demo: spawn a subagent] {"type":"function_call_output","output":"{\"agent_id\":\"019a-kid\",\"nickname\":\"T\"}"}"#;
        let cases: [(&str, String, Option<&str>); 11] = [
            ("/v1/messages", r#"{"tools":[{"name":"task"}],"m":"[demo: call task] go"}"#.into(), Some("task")),
            ("/v1/messages", r#"{"tools":[{"name":"task"}],"m":"[demo: call task]","r":{"type":"tool_result"}}"#.into(), None),
            // A title request: the prompt, no tools.
            ("/v1/messages", r#"{"m":"[demo: call task] go"}"#.into(), None),
            // The next turn asks again.
            ("/v1/messages", r#"{"name":"task","a":"[demo: call task]","b":{"type":"tool_result"},"c":"[demo: call task]"}"#.into(), Some("task")),
            ("/v1/messages", r#"{"tools":[{"name":"task"}],"m":"say hi"}"#.into(), None),
            ("/v1/responses", r#"{"input":"[demo: spawn a subagent]"}"#.into(), Some("spawn_agent")),
            ("/v1/responses", spawned.into(), Some("wait_agent")),
            ("/v1/responses", format!(r#"{spawned} {{"type":"function_call_output"}}"#), None),
            ("/v1/responses", format!(r#"{spawned} {{"type":"function_call_output"}} [demo: spawn a subagent]"#), Some("spawn_agent")),
            // The subagent's own prompt holds no trigger.
            ("/v1/responses", r#"{"input":"say hi"}"#.into(), None),
            ("/v1/chat/completions", r#"{"m":"[demo: spawn a subagent]"}"#.into(), None),
        ];
        for (path, body, want) in cases {
            assert_eq!(
                name_of(next_call(path, body.as_bytes())).as_deref(),
                want,
                "{path} {body}"
            );
        }
    }

    #[test]
    fn wait_agent_waits_on_the_agent_the_spawn_named() {
        let body = r#"[demo: spawn a subagent] {"type":"function_call_output","output":"{\"agent_id\":\"019a-kid\"}"}"#;
        match next_call("/v1/responses", body.as_bytes()) {
            Some(ToolCall::Responses { arguments, .. }) => {
                assert_eq!(arguments, json!({"targets": ["019a-kid"]}))
            }
            other => panic!("{other:?}"),
        }
        // No agent id in the output: no wait, text instead.
        let body = r#"[demo: spawn a subagent] {"type":"function_call_output","output":"failed"}"#;
        assert_eq!(next_call("/v1/responses", body.as_bytes()), None);
    }
}
