#!/usr/bin/env bash
# Instructions per request of relay-edge, counted by callgrind: repeatable
# within a fraction of a percent for the same binary, whatever else this
# shared machine is doing (seconds are not).
#
#   benches/profiles/instructions.sh BIN [CONNS] [SECONDS] [EXTRA_YAML]
#
# BIN is a built relay-edge with relay-edge-demo-upstream beside it. One
# demo relay, one proxy thread, wrk with CONNS connections (default 10)
# sending GETs keyed by x-session-id over 10,000 keys (benches/load/keys.lua).
# Counting starts after a 2 s warm-up and covers SECONDS (default 10) of
# load; the figure is the whole process's instructions over those seconds
# divided by the requests wrk completed. EXTRA_YAML is appended to the
# config; environment variables (say _RJEM_MALLOC_CONF) pass through.
set -euo pipefail
bin=$(realpath "$1")
conns=${2:-10}
seconds=${3:-10}
extra=${4:-}
here=$(cd "$(dirname "$0")" && pwd)
for tool in valgrind callgrind_control wrk; do
  command -v $tool >/dev/null || { echo "missing $tool: apt-get install -y valgrind wrk" >&2; exit 1; }
done
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up=$(port); edge=$(port); admin=$(port)
"$(dirname "$bin")/relay-edge-demo-upstream" 127.0.0.1:$up >"$dir/up.log" 2>&1 &
cat >"$dir/edge.yaml" <<EOF
listen: [{addr: 127.0.0.1:$edge}]
upstreams: [{id: relay-a, addr: 127.0.0.1:$up}]
affinity: {keys: [{header: x-session-id}]}
admin: {listen: 127.0.0.1:$admin}
server: {threads: 1, pid_file: $dir/pid, upgrade_sock: $dir/sock, log_level: warn}
$extra
EOF
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$dir/cg.out" \
  "$bin" -c "$dir/edge.yaml" >"$dir/edge.log" 2>&1 &
vg=$!
for _ in $(seq 1 600); do
  curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null || { cat "$dir/edge.log" >&2; exit 1; }
wrk -t1 -c"$conns" -d2s -s "$here/../load/keys.lua" "http://127.0.0.1:$edge/" >/dev/null
callgrind_control --instr=on $vg >/dev/null
out=$(wrk -t1 -c"$conns" -d"${seconds}s" -s "$here/../load/keys.lua" "http://127.0.0.1:$edge/")
callgrind_control --dump $vg >/dev/null
requests=$(echo "$out" | sed -n 's/.*requests=\([0-9]*\).*/\1/p')
errors=$(echo "$out" | sed -n 's/.*errors=\([0-9]*\).*/\1/p')
total=$(cat "$dir"/cg.out* | sed -n 's/^summary: \([0-9]*\).*/\1/p' | awk '{s+=$1} END {print s}')
echo "requests=$requests errors=$errors instructions=$total per_request=$((total / requests))"
