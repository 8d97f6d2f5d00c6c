"""A Claude Code Messages body, as the load benches send it."""
import json
import random

F_BODY_BYTES = 90_000
WORDS = ("the a to of and in is for that file this you with tool use when should must not code "
         "edit read write search bash command output user task test function return error path "
         "line change commit repository directory before after only never always call result "
         "parameter string number boolean array object make sure run check").split()


def claude_body():
    """A Claude Code Messages request of about 90 KB, as (head, tail): the body
    is head + session id + tail. Its top-level members in Claude Code's own
    order (../shared/clients.md): the model, a short conversation, a long
    system prompt and tool definitions, then metadata (which holds the session
    id), and "stream":true last."""
    rng = random.Random(3)

    def words(n):
        return " ".join(rng.choice(WORDS) for _ in range(n))
    tools = [{"name": name, "description": words(150),
              "input_schema": {"type": "object", "properties": {
                  "file_path": {"type": "string", "description": words(12)},
                  "pattern": {"type": "string", "description": words(12)},
                  "limit": {"type": "number", "description": words(8)}},
                  "required": ["file_path"], "additionalProperties": False,
                  "$schema": "http://json-schema.org/draft-07/schema#"}}
             for name in ("Task", "Bash", "Glob", "Grep", "ExitPlanMode", "Read", "Edit", "Write",
                          "NotebookEdit", "WebFetch", "TodoWrite", "WebSearch", "BashOutput", "KillShell",
                          "SlashCommand")]
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "<system-reminder>" + words(300) + "</system-reminder>"},
                                     {"type": "text", "text": "the config test fails after the last commit, fix it"}]},
        {"role": "assistant", "content": [{"type": "text", "text": words(40)},
                                          {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9",
                                           "name": "Read", "input": {"file_path": "/repo/tests/config.rs"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01A09q90qw90lq917835lq9",
                                      "content": words(900)}]}]
    marker = "@@SESSION@@"

    def build(system_words):
        body = {"model": "claude-sonnet-4-5-20250929", "messages": messages,
                "system": [{"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.",
                            "cache_control": {"type": "ephemeral"}},
                           {"type": "text", "text": system_words, "cache_control": {"type": "ephemeral"}}],
                "tools": tools,
                "metadata": {"user_id": "user_" + "5e1c" * 16 + "_account__session_" + marker},
                "max_tokens": 32000, "temperature": 1, "stream": True}
        return json.dumps(body, separators=(",", ":"))
    system = words(1000)
    while len(build(system)) < F_BODY_BYTES - 36:     # a session id is 36 characters
        system += " " + words(50)
    head, tail = build(system).split(marker)
    return head.encode(), tail.encode()
