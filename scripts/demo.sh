#!/usr/bin/env bash
# Sticky routing in one minute: builds relay-edge, starts two demo relays on
# 127.0.0.1:9001 and :9002, and runs relay-edge on conf/relay-edge.yaml with
# relay-a capped at 4 requests in flight (target/demo.yaml), proxy on
# 127.0.0.1:8080, admin and dashboard on http://127.0.0.1:9900/.
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cmake >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq cmake
fi
cargo build --locked --bins

target/debug/relay-edge-demo-upstream 127.0.0.1:9001 127.0.0.1:9002 &
relays=$!
trap 'kill $relays 2>/dev/null' EXIT

# The example config, with relay-a's cap switched on.
sed 's/^    # max_inflight: 40 .*/    max_inflight: 4/' conf/relay-edge.yaml >target/demo.yaml
grep -q '^    max_inflight: 4' target/demo.yaml

cat <<'MSG'

In another shell, try:
  curl -s localhost:8080/v1/messages -H 'x-session-id: alice' -d '{}'    # same relay every time
  curl -s localhost:8080/v1/messages -H 'x-session-id: bob' -d '{}'
  curl -s localhost:8080/v1/messages -d '{"metadata":{"user_id":"carol"}}'   # key from the body
  curl -sN 'localhost:8080/v1/messages?sse=5&gap_ms=300' -H 'x-session-id: alice'   # SSE, event by event
  curl -sN 'localhost:8080/v1/messages?overloaded=relay-a' -H 'x-session-id: alice' -d '{"stream":true}' -D -
      # relay-a's stream opens with an overloaded error: the edge holds the head, and the
      # client gets relay-b's stream whole (x-upstream: relay-b, x-relay-edge-affinity: moved)
  curl -s localhost:9900/api/upstreams ; open http://127.0.0.1:9900/ for the dashboard

Capacity: relay-a takes at most 4 requests at once (max_inflight: 4).
  curl -s -X PUT localhost:9900/api/sessions/busy -d '{"upstream":"relay-a"}'
  curl -s -X PUT localhost:9900/api/sessions/dave -d '{"upstream":"relay-a"}'
  for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{http_code}\n' 'localhost:8080/v1/messages?hold_ms=4000' -H 'x-session-id: busy' -d '{}' & done
      # four at relay-a; the other two wait affinity.pin_wait (500ms) for it, then go to relay-b,
      # where busy's pin moves, once (relay_edge_affinity_repins_total{reason="capacity"}); all six 200
  target/debug/relay-edge ctl upstreams -c target/demo.yaml     # CAP, GRANT, IN FLIGHT, QUEUED
  curl -s localhost:8080/v1/messages -H 'x-session-id: dave' -d '{}' -D - -o /dev/null | grep -i '^x-'
      # while relay-a is full: dave waits for it, then moves to relay-b (x-relay-edge-affinity: moved).
      # With every relay full, requests queue (QUEUED) and, past capacity.queue_max or
      # capacity.queue_timeout, get 529 + Retry-After (overloaded_error)

MSG
target/debug/relay-edge -c target/demo.yaml
