#!/usr/bin/env bash
# Load bench on loopback: relay-edge (optional) vs nginx vs HAProxy, plus a
# direct-to-backend reference. Installs nothing.
#   bash benches/load/run.sh [RELAY_EDGE_BINARY]
#   env: DURATION (s, default 15), WARMUP (s, default 3), SMOKE=1 (2 s runs,
#        exit 1 unless every target answered with zero errors)
# CPU layout (2 cores): proxies on CPU 0; wrk AND the backends on CPU 1, so the
# backends compete with wrk for CPU 1 — the same handicap for every proxy.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${1:-}
SMOKE=${SMOKE:-0}
if [[ $SMOKE == 1 ]]; then DURATION=${DURATION:-2}; WARMUP=${WARMUP:-1}; fi
DURATION=${DURATION:-15}; WARMUP=${WARMUP:-3}
PATH=$PATH:/usr/sbin:/sbin

missing=()
for t in nginx haproxy wrk curl; do command -v "$t" >/dev/null || missing+=("$t"); done
if ((${#missing[@]})); then
  echo "missing: ${missing[*]}; install with: apt-get update && apt-get install -y nginx haproxy wrk curl" >&2
  exit 1
fi
if [[ -n $BIN && ! -x $BIN ]]; then echo "not an executable: $BIN" >&2; exit 1; fi

PIN_PROXY=() PIN_LOAD=()
if command -v taskset >/dev/null && (($(nproc) >= 2)); then
  PIN_PROXY=(taskset -c 0) PIN_LOAD=(taskset -c 1)
fi

# Refuse to bench whatever else may already hold our ports.
for port in 19001 19002 18081 18082 ${BIN:+18080 19900}; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    echo "port 127.0.0.1:$port is already in use" >&2; exit 1
  fi
done

TMP=$(mktemp -d /tmp/relay-edge-load.XXXXXX)
chmod 755 "$TMP"; mkdir -p "$TMP/tmp"       # nginx workers (nobody) need to traverse it
PIDS=()      # every server this script started, and only those
WRK_PID=     # the wrk running now, if any
declare -A SIG  # signal to stop each one with

cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  [[ -n $WRK_PID ]] && { kill -TERM "$WRK_PID" 2>/dev/null || true; }
  for pid in "${PIDS[@]}"; do kill -"${SIG[$pid]:-TERM}" "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do                       # up to 5 s, then SIGKILL
    local alive=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break; sleep 0.1
  done
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME SIGNAL CMD...: run in the background, log to $TMP/NAME.log.
start() {
  local name=$1 sig=$2; shift 2
  "$@" >"$TMP/$name.log" 2>&1 &
  PIDS+=($!); SIG[$!]=$sig
  eval "PID_$name=$!"
}

# wait_http NAME PID URL: poll until URL answers 200, the process dies, or 20 s pass.
wait_http() {
  local name=$1 pid=$2 url=$3 deadline=$((SECONDS + 20))
  until curl -fsS -o /dev/null --max-time 1 -H 'x-session-id: key-0' "$url" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$name exited early; its log:" >&2; cat "$TMP/$name.log" >&2; exit 1
    fi
    if ((SECONDS >= deadline)); then
      echo "$name did not answer $url within 20 s; its log:" >&2; cat "$TMP/$name.log" >&2; exit 1
    fi
    sleep 0.1
  done
}

# nginx (taskset execs it, so $! is the nginx master); TERM = fast stop.
start backends TERM "${PIN_LOAD[@]}" nginx -p "$TMP/" -c "$HERE/backend-nginx.conf" -g 'daemon off;'
wait_http backends "$PID_backends" http://127.0.0.1:19001/health
wait_http backends "$PID_backends" http://127.0.0.1:19002/health

TARGETS=()
if [[ -n $BIN ]]; then
  cat >"$TMP/relay-edge.yaml" <<YAML
listen: [{addr: 127.0.0.1:18080}]
upstreams:
  - {id: relay-a, addr: 127.0.0.1:19001}
  - {id: relay-b, addr: 127.0.0.1:19002}
health_check: {path: /health, interval: 1s}
affinity: {keys: [{header: x-session-id}]}
admin: {listen: 127.0.0.1:19900}
server: {threads: 1, pid_file: $TMP/relay-edge.pid, upgrade_sock: $TMP/upgrade.sock, log_level: warn}
YAML
  # Pingora: SIGINT = fast shutdown (SIGTERM would keep accepting for grace_period).
  start relay_edge INT "${PIN_PROXY[@]}" "$BIN" -c "$TMP/relay-edge.yaml"
  wait_http relay_edge "$PID_relay_edge" http://127.0.0.1:18080/v1/messages
  TARGETS+=("relay-edge http://127.0.0.1:18080")
fi
start nginx_proxy TERM "${PIN_PROXY[@]}" nginx -p "$TMP/" -c "$HERE/nginx-proxy.conf" -g 'daemon off;'
wait_http nginx_proxy "$PID_nginx_proxy" http://127.0.0.1:18081/v1/messages
start haproxy TERM "${PIN_PROXY[@]}" haproxy -db -f "$HERE/haproxy.cfg"
wait_http haproxy "$PID_haproxy" http://127.0.0.1:18082/v1/messages
TARGETS+=("nginx http://127.0.0.1:18081" "haproxy http://127.0.0.1:18082"
          "backend-direct http://127.0.0.1:19001")

# check_affinity NAME URL: same key -> same relay twice, and both relays used.
check_affinity() {
  local seen="" k a b
  for k in $(seq 0 19); do
    a=$(curl -fsS --max-time 2 -H "x-session-id: key-$k" "$2/v1/messages")
    b=$(curl -fsS --max-time 2 -H "x-session-id: key-$k" "$2/v1/messages")
    if [[ $a != "$b" ]]; then echo "$1: key-$k went to $a then $b" >&2; exit 1; fi
    seen+=" $a"
  done
  if [[ $seen != *relay-a* || $seen != *relay-b* ]]; then
    echo "$1: 20 keys did not spread over both relays:$seen" >&2; exit 1
  fi
}

# wrk runs in the background so that a signal to this script is handled at once.
run_wrk() {  # run_wrk SECONDS URL OUTFILE
  "${PIN_LOAD[@]}" wrk -t1 -c50 -d"$1"s -s "$HERE/keys.lua" "$2" >"$3" 2>&1 &
  WRK_PID=$!; wait $WRK_PID; WRK_PID=
}

declare -A RPS P50 P99 ERR
for t in "${TARGETS[@]}"; do
  name=${t%% *} url=${t#* }
  [[ $name == backend-direct ]] || check_affinity "$name" "$url"
  echo "== $name: warm ${WARMUP}s, measure ${DURATION}s ($url)" >&2
  run_wrk "$WARMUP" "$url" /dev/null
  run_wrk "$DURATION" "$url" "$TMP/wrk-$name.out"
  line=$(grep '^RESULT ' "$TMP/wrk-$name.out" || true)
  if [[ -z $line ]]; then echo "no RESULT from wrk for $name:" >&2; cat "$TMP/wrk-$name.out" >&2; exit 1; fi
  for kv in ${line#RESULT }; do
    case $kv in rps=*) RPS[$name]=${kv#*=};; p50_ms=*) P50[$name]=${kv#*=};;
                p99_ms=*) P99[$name]=${kv#*=};; errors=*) ERR[$name]=${kv#*=};; esac
  done
done

echo
echo "wrk -t1 -c50 -d${DURATION}s, 10,000 keys, 1 proxy thread${PIN_PROXY:+, proxies on CPU 0, wrk+backends on CPU 1}"
echo
echo "| proxy | RPS | p50 ms | p99 ms | errors |"
echo "|---|---:|---:|---:|---:|"
for t in "${TARGETS[@]}"; do
  n=${t%% *}; printf '| %s | %.0f | %.3f | %.3f | %s |\n' "$n" "${RPS[$n]}" "${P50[$n]}" "${P99[$n]}" "${ERR[$n]}"
done
if [[ -n $BIN ]]; then
  echo
  for other in nginx haproxy; do
    awk -v o="$other" -v r1="${RPS[relay-edge]}" -v r2="${RPS[$other]}" -v l1="${P99[relay-edge]}" -v l2="${P99[$other]}" \
      'BEGIN { printf "relay-edge/%s: RPS x%.2f, p99 x%.2f\n", o, r1 / r2, (l2 > 0 ? l1 / l2 : 0) }'
  done
fi

if [[ $SMOKE == 1 ]]; then
  bad=0
  for t in "${TARGETS[@]}"; do
    n=${t%% *}
    if [[ ${ERR[$n]} != 0 ]] || awk -v r="${RPS[$n]}" 'BEGIN { exit !(r <= 0) }'; then
      echo "SMOKE FAIL: $n rps=${RPS[$n]} errors=${ERR[$n]}" >&2; bad=1
    fi
  done
  ((bad)) && exit 1
  echo "SMOKE OK: every target answered with zero errors"
fi
