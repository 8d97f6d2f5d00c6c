//! The stream shapes of the OpenAI protocols that relays also serve:
//! the Responses API (`/v1/responses`, as the Codex CLI reads it), Chat
//! Completions, and events of no known protocol (`/v1/other`).

use super::{chunk, sse_head_with};
use tokio::net::TcpStream;

/// The `x-codex-turn-state` token relay `relay` issues with each Responses
/// answer: the Codex CLI sends it back on every later request of the turn
/// (sticky routing), so a test can check that it reaches the relay as the
/// relay wrote it.
pub fn codex_turn_state(relay: &str) -> String {
    format!("{relay}.turn_state-1")
}

/// The turn-state header line of a Responses answer.
pub(super) fn turn_state_header(relay: &str) -> String {
    format!("x-codex-turn-state: {}\r\n", codex_turn_state(relay))
}

/// The stream shapes of other protocols that relays serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OpenAiStream {
    /// `/v1/responses`: `response.created` … `response.completed`.
    Responses,
    /// `/v1/chat/completions`: chunks, then `data: [DONE]`.
    ChatCompletions,
    /// `/v1/other`: events of no protocol the edge knows.
    Unknown,
}

impl OpenAiStream {
    pub(super) fn of_path(path: &str) -> Option<OpenAiStream> {
        match path {
            "/v1/responses" => Some(OpenAiStream::Responses),
            "/v1/chat/completions" => Some(OpenAiStream::ChatCompletions),
            "/v1/other" => Some(OpenAiStream::Unknown),
            _ => None,
        }
    }
}

/// A stream of `deltas` text deltas in `shape`, with usage as OpenAI
/// reports it: 1000 input tokens, 900 of them cached, 10 output.
pub(super) async fn openai_sse(
    stream: &mut TcpStream,
    name: &str,
    shape: OpenAiStream,
    deltas: u64,
) -> bool {
    let extra = match shape {
        OpenAiStream::Responses => turn_state_header(name),
        _ => String::new(),
    };
    if !sse_head_with(stream, name, &extra).await {
        return false;
    }
    let mut events = Vec::new();
    match shape {
        OpenAiStream::Responses => {
            // As the Responses API streams a message: the response, the
            // message item, its text deltas, the item whole, the end.
            let event = |kind: &str, data: String| format!("event: {kind}\ndata: {data}\n\n");
            events.push(event("response.created", format!(
                r#"{{"type":"response.created","upstream":"{name}","response":{{"id":"resp_1","object":"response","status":"in_progress","output":[]}}}}"#
            )));
            events.push(event("response.output_item.added", r#"{"type":"response.output_item.added","output_index":0,"item":{"type":"message","id":"msg_1","role":"assistant","status":"in_progress","content":[]}}"#.to_string()));
            let mut text = String::new();
            for i in 0..deltas {
                text.push_str(&format!("{i} "));
                events.push(event("response.output_text.delta", format!(
                    r#"{{"type":"response.output_text.delta","item_id":"msg_1","output_index":0,"content_index":0,"delta":"{i} "}}"#
                )));
            }
            events.push(event("response.output_item.done", format!(
                r#"{{"type":"response.output_item.done","output_index":0,"item":{{"type":"message","id":"msg_1","role":"assistant","status":"completed","content":[{{"type":"output_text","text":"{text}","annotations":[]}}]}}}}"#
            )));
            events.push(event("response.completed", r#"{"type":"response.completed","response":{"id":"resp_1","object":"response","status":"completed","output":[],"usage":{"input_tokens":1000,"input_tokens_details":{"cached_tokens":900},"output_tokens":10,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":1010}}}"#.to_string()));
        }
        OpenAiStream::ChatCompletions => {
            for i in 0..deltas {
                events.push(format!("data: {{\"object\":\"chat.completion.chunk\",\"upstream\":\"{name}\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{i} \"}}}}]}}\n\n"));
            }
            events.push("data: {\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":1000,\"completion_tokens\":10,\"prompt_tokens_details\":{\"cached_tokens\":900}}}\n\n".to_string());
            events.push("data: [DONE]\n\n".to_string());
        }
        OpenAiStream::Unknown => {
            for i in 0..=deltas {
                events.push(format!(
                    "event: tick\ndata: {{\"n\":{i},\"upstream\":\"{name}\"}}\n\n"
                ));
            }
        }
    }
    for e in &events {
        if !chunk(stream, e).await {
            return false;
        }
    }
    chunk(stream, "").await
}
