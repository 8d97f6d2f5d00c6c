"""One call through relay-edge with the real Anthropic Python SDK.

usage: anthropic_client.py BASE_URL SESSION (stream|create)

Prints one JSON line: {"ok": true, "text": ...} or {"ok": false,
"error_class": ..., "status": ..., "error_type": ...}. The SDK's own retries
are off, so what it raises is what the edge answered.
"""
import json
import sys

try:
    import anthropic
except ImportError:
    sys.exit("the anthropic SDK is missing: pip install anthropic (scripts/test.sh installs it)")

base_url, session, mode = sys.argv[1], sys.argv[2], sys.argv[3]
client = anthropic.Anthropic(
    base_url=base_url,
    api_key="test-key",
    max_retries=0,
    timeout=30,
    default_headers={"x-session-id": session},
)
args = dict(model="claude-x", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
try:
    if mode == "stream":
        text = []
        for event in client.messages.create(**args, stream=True):
            if event.type == "content_block_delta":
                text.append(event.delta.text)
        out = {"ok": True, "text": "".join(text)}
    else:
        client.messages.create(**args)
        out = {"ok": True, "text": ""}
except anthropic.APIStatusError as e:
    body = e.body if isinstance(e.body, dict) else {}
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    out = {
        "ok": False,
        "error_class": type(e).__name__,
        "status": e.status_code,
        "error_type": error.get("type"),
    }
except anthropic.APIError as e:
    out = {"ok": False, "error_class": type(e).__name__, "status": None, "error_type": None}
print(json.dumps(out))
