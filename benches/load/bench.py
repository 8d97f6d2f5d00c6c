#!/usr/bin/env python3
"""relay-edge against nginx and HAProxy on loopback, five scenarios.

    python3 benches/load/bench.py                 # full run (about 15 minutes)
    python3 benches/load/bench.py --smoke         # one short round of each; exit 1 unless
                                                  # every request and stream succeeded
    options: --bin PATH (a built relay-edge; default: cargo build --release),
             --rounds N, --duration S, --scenarios abcde, --out FILE (markdown)

Scenarios (one worker each, the same two nginx backends, the same wrk Lua
script with 10,000 keys; rounds alternate the proxies and the table holds
medians):
  a  small responses, header affinity, no Redis
  b  the same with Redis configured
  c  relay-edge with 500 upstreams and 1,000,000 sessions already in Redis
  d  2,000 concurrent SSE streams of 50 events, 500 ms apart: RSS per open
     stream, and the p99 latency each event gains against a direct connection
  e  1 MiB request bodies; relay-edge routes by a JSON body key, nginx and
     HAProxy by the header (they cannot read the body)

Layout on 2+ cores: proxies on CPU 0; wrk, the backends, Redis and the SSE
client on CPU 1. It installs nginx, haproxy, wrk and redis-server with
apt-get when they are missing. Every run is bounded in time.
"""

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PINNED = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
MIB = 1 << 20


def pin(cpu, cmd):
    return (["taskset", "-c", str(cpu)] + cmd) if PINNED else cmd


def die(msg):
    print(f"bench: {msg}", file=sys.stderr)
    sys.exit(1)


def install_missing():
    need = [p for t, p in [("nginx", "nginx"), ("haproxy", "haproxy"), ("wrk", "wrk"),
                           ("redis-server", "redis-server"), ("redis-cli", "redis-tools")]
            if shutil.which(t) is None and not os.path.exists(f"/usr/sbin/{t}")]
    if not need:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    print(f"bench: installing {' '.join(need)}", file=sys.stderr)
    subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True)
    subprocess.run(sudo + ["apt-get", "install", "-y", "-qq"] + need, check=True,
                   env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Procs:
    """Every process this script started; all are stopped on exit."""

    def __init__(self, tmp):
        self.tmp, self.procs = tmp, []

    def start(self, name, cmd, stop=signal.SIGTERM):
        log = open(os.path.join(self.tmp, f"{name}.log"), "w")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp)
        p.bench_name, p.bench_stop = name, stop
        self.procs.append(p)
        return p

    def stop(self, p):
        if p.poll() is None:
            p.send_signal(p.bench_stop)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in list(self.procs):
            self.stop(p)

    def log(self, name):
        try:
            return open(os.path.join(self.tmp, f"{name}.log")).read()[-3000:]
        except OSError:
            return ""


def wait_http(procs, p, port, path="/health", headers=(), within=30):
    deadline = time.time() + within
    req = f"GET {path} HTTP/1.1\r\nhost: x\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "connection: close\r\n\r\n"
    while time.time() < deadline:
        if p is not None and p.poll() is not None:
            die(f"{p.bench_name} exited early:\n{procs.log(p.bench_name)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(req.encode())
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    die(f"nothing answered 200 on :{port}{path} within {within}s")


def cpu_seconds(pid):
    """User + system CPU time of a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def worker_pid(p):
    """nginx serves from its one worker, not the master."""
    if p.bench_name.startswith("nginx"):
        deadline = time.time() + 5
        while time.time() < deadline:
            try:
                kids = open(f"/proc/{p.pid}/task/{p.pid}/children").read().split()
                if kids:
                    return int(kids[0])
            except OSError:
                pass
            time.sleep(0.05)
    return p.pid


# ---------------------------------------------------------------- configs

def backend_conf(tmp, ports):
    servers = "\n".join(
        f"    server {{ listen 127.0.0.1:{port}; location = /health {{ return 200 'ok'; }} "
        f"location / {{ return 200 '{{\"upstream\":\"{name}\"}}'; }} }}" for name, port in ports)
    path = os.path.join(tmp, "backend.conf")
    open(path, "w").write(f"""worker_processes 1;
pid backend.pid;
error_log backend.error.log warn;
worker_rlimit_nofile 8192;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/json;
    keepalive_requests 1000000;
    keepalive_timeout 600s;
    client_max_body_size 8m;
    client_body_buffer_size 2m;
    client_body_temp_path tmp/body; proxy_temp_path tmp/proxy; fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi; scgi_temp_path tmp/scgi;
{servers}
}}
""")
    return path


def nginx_conf(tmp, name, port, relays):
    servers = "\n".join(f"        server 127.0.0.1:{p};" for _, p in relays)
    path = os.path.join(tmp, f"{name}.conf")
    open(path, "w").write(f"""worker_processes 1;
pid {name}.pid;
error_log {name}.error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 600s;
    client_max_body_size 8m;
    client_body_buffer_size 2m;     # 1 MiB bodies stay in memory
    client_body_temp_path tmp/body; proxy_temp_path tmp/proxy; fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi; scgi_temp_path tmp/scgi;
    upstream relays {{
        hash $http_x_session_id consistent;
{servers}
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://relays;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;          # stream SSE event by event
            proxy_read_timeout 600s;
        }}
    }}
}}
""")
    return path


def haproxy_conf(tmp, port, relays):
    servers = "\n".join(f"    server {n} 127.0.0.1:{p}" for n, p in relays)
    path = os.path.join(tmp, "haproxy.cfg")
    open(path, "w").write(f"""global
    nbthread 1
    maxconn 8000
defaults
    mode http
    timeout connect 5s
    timeout client 600s
    timeout server 600s
frontend fe
    bind 127.0.0.1:{port}
    default_backend relays
backend relays
    balance leastconn
    http-reuse always
    stick-table type string len 64 size 100k expire 1h
    stick on req.hdr(x-session-id)
{servers}
""")
    return path


def edge_conf(tmp, name, port, admin, relays, keys, redis_port=None, extra=""):
    ups = "\n".join(f"  - {{id: {n}, addr: 127.0.0.1:{p}}}" for n, p in relays)
    redis = f"redis: {{url: 'redis://127.0.0.1:{redis_port}/0'}}\n" if redis_port else ""
    path = os.path.join(tmp, f"{name}.yaml")
    open(path, "w").write(f"""listen: [{{addr: 127.0.0.1:{port}}}]
upstreams:
{ups}
health_check: {{path: /health, interval: 2s}}
affinity: {{keys: [{keys}]}}
admin: {{listen: 127.0.0.1:{admin}}}
server: {{threads: 1, pid_file: {tmp}/{name}.pid, upgrade_sock: {tmp}/{name}.sock, log_level: warn}}
{redis}{extra}""")
    return path


# ---------------------------------------------------------------- load

def body_lua(tmp, bodies):
    """wrk script for scenario e: POST 1 MiB Messages bodies, key at the end."""
    path = os.path.join(tmp, "bodies.lua")
    open(path, "w").write(f"""
local reqs = {{}}
function init(args)
   math.randomseed(os.time() + (tonumber(tostring({{}}):match("0x(%x+)"), 16) or 0))
   local filler = string.rep("x", {MIB} - 200)
   for n = 0, {bodies - 1} do
      local key = "key-" .. n
      local body = '{{"model":"m","stream":false,"messages":[{{"role":"user","content":"' .. filler ..
                   '"}}],"metadata":{{"user_id":"' .. key .. '"}}}}'
      reqs[n + 1] = wrk.format("POST", "/v1/messages",
         {{ ["x-session-id"] = key, ["content-type"] = "application/json" }}, body)
   end
end
function request() return reqs[math.random(1, {bodies})] end
function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format("RESULT rps=%.1f p50_ms=%.3f p99_ms=%.3f errors=%d requests=%d\\n",
      summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000,
      latency:percentile(99) / 1000, e.connect + e.read + e.write + e.status + e.timeout,
      summary.requests))
end
""")
    return path


def run_wrk(port, seconds, script, conns):
    cmd = pin(1, ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", "-s", script,
                  f"http://127.0.0.1:{port}/v1/messages"])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    line = next((l for l in out.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        die(f"wrk gave no RESULT:\n{out}")
    r = dict(kv.split("=") for kv in line.split()[1:])
    return {k: float(v) for k, v in r.items()}


def measure(target, seconds, warmup, script, conns):
    """One wrk run against a target; with the proxy's CPU per request and RSS."""
    name, port, proc = target
    if warmup:
        run_wrk(port, warmup, script, conns)
    pid = worker_pid(proc)
    cpu0 = cpu_seconds(pid)
    r = run_wrk(port, seconds, script, conns)
    cpu = cpu_seconds(pid) - cpu0
    requests = r.get("requests") or r["rps"] * seconds
    r["cpu_us"] = cpu / max(requests, 1) * 1e6
    r["cpu_s"] = cpu
    r["requests"] = requests
    r["rss"] = rss_mib(pid)
    return r


def redis_commands(port):
    out = subprocess.run(["redis-cli", "-p", str(port), "info", "stats"], capture_output=True,
                         text=True).stdout
    for line in out.splitlines():
        if line.startswith("total_commands_processed:"):
            return int(line.split(":")[1])
    return 0


def seed_redis(port, sessions, upstreams, prefix="relay-edge:", buckets=16384):
    """Write sessions in relay-edge's layout (see src/affinity/redis_store.rs)."""
    now = int(time.time() * 1000)
    pipe = subprocess.Popen(["redis-cli", "-p", str(port), "--pipe"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL)

    def resp(*parts):
        out = [b"*%d\r\n" % len(parts)]
        for p in parts:
            p = p if isinstance(p, bytes) else str(p).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(p), p))
        return b"".join(out)

    rng = random.Random(7)
    chunk = []
    for i in range(sessions):
        field = rng.randbytes(16)
        up = upstreams[i % len(upstreams)]
        bucket = (int.from_bytes(field, "big") >> 96) % buckets
        value = f"{up}\t{now}\t{now}\t1\t0"
        chunk.append(resp("HSET", f"{prefix}b:{bucket}", field, value))
        chunk.append(resp("SADD", f"{prefix}i:{up}", field))
        if len(chunk) >= 20000:
            pipe.stdin.write(b"".join(chunk))
            chunk = []
    pipe.stdin.write(b"".join(chunk))
    pipe.stdin.close()
    if pipe.wait(300) != 0:
        die("seeding Redis failed")


# ---------------------------------------------------------------- SSE (d)

async def sse_client(port, streams, events, gap_ms, hold):
    """Open `streams` SSE streams at once; each event's delay since it was
    sent (µs). `hold` is set once every stream has its first event."""
    delays, failures, started = [], [0], [0]

    async def one(i):
        # Spread the streams' phases over one gap, so that events arrive
        # evenly rather than in bursts of `streams` that the client itself
        # would take tens of milliseconds to read.
        await asyncio.sleep(gap_ms / 1000 * i / streams)
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
            w.write((f"GET /v1/messages?sse={events}&gap_ms={gap_ms} HTTP/1.1\r\nhost: x\r\n"
                     f"x-session-id: key-{i}\r\n\r\n").encode())
            await w.drain()
            first, done = True, False
            while True:
                line = await asyncio.wait_for(r.readline(), 60)
                if not line:
                    break
                if line.startswith(b"data: ") and b'"sent_us":' in line:
                    now = time.time() * 1e6
                    sent = int(line.split(b'"sent_us":', 1)[1].split(b",", 1)[0])
                    delays.append(now - sent)
                    if first:
                        first = False
                        started[0] += 1
                        if started[0] == streams:
                            hold.set()
                if b"message_stop" in line:
                    done = True
                    break
            w.close()
            if not done:
                failures[0] += 1
        except (OSError, asyncio.TimeoutError, ValueError):
            failures[0] += 1

    await asyncio.gather(*(one(i) for i in range(streams)))
    return delays, failures[0]


def sse_run(port, pid, streams, events, gap_ms):
    """Run the SSE client in a child pinned to CPU 1; sample RSS while every stream is open."""
    script = os.path.abspath(__file__)
    before = rss_mib(pid) if pid else 0
    child = subprocess.Popen(pin(1, [sys.executable, script, "--sse-client", str(port), str(streams),
                                     str(events), str(gap_ms)]),
                             stdout=subprocess.PIPE, text=True)
    peak = before
    while child.poll() is None:
        if pid:
            peak = max(peak, rss_mib(pid))
        time.sleep(0.1)
    out = child.stdout.read().split()
    p50, p99, n, failures = float(out[0]), float(out[1]), int(out[2]), int(out[3])
    return {"p50_us": p50, "p99_us": p99, "events": n, "failures": failures,
            "rss_per_stream_kib": (peak - before) * 1024 / streams if pid else 0.0}


def sse_client_main(argv):
    port, streams, events, gap_ms = (int(a) for a in argv)
    hold = asyncio.Event()
    delays, failures = asyncio.run(sse_client(port, streams, events, gap_ms, hold))
    delays.sort()
    pct = (lambda q: delays[min(len(delays) - 1, int(q * len(delays)))]) if delays else (lambda q: 0)
    print(pct(0.5), pct(0.99), len(delays), failures)


# ---------------------------------------------------------------- main

def fmt_table(headers, rows):
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def median_of(runs, key):
    return statistics.median(r[key] for r in runs)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--sse-client":
        return sse_client_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--bin")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--duration", type=int)
    ap.add_argument("--scenarios", default="abcde")
    ap.add_argument("--out")
    args = ap.parse_args()
    smoke = args.smoke
    rounds = args.rounds or (1 if smoke else 3)
    duration = args.duration or (2 if smoke else 10)
    warmup = 1 if smoke else 2
    sessions_c = 20_000 if smoke else 1_000_000
    # 2,000 streams x 2 events/s: 4,000 events/s, which the Python client
    # reads without a backlog of its own (at 20,000/s it lagged seconds).
    sse_streams, sse_events, sse_gap = (100, 10, 20) if smoke else (2000, 50, 500)
    body_runs = 1 if smoke else duration

    install_missing()
    # 2,000 streams through a proxy need 4,000 descriptors, and more.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 65536), hard), hard))
    os.environ["PATH"] += ":/usr/sbin:/sbin"
    binary = args.bin
    if not binary:
        subprocess.run(["cargo", "build", "--release", "--bins"], cwd=ROOT, check=True)
        binary = os.path.join(ROOT, "target/release/relay-edge")
    binary = os.path.abspath(binary)
    demo = os.path.join(os.path.dirname(binary), "relay-edge-demo-upstream")
    for b in (binary, demo):
        if not os.access(b, os.X_OK):
            die(f"not an executable: {b}")

    tmp = tempfile.mkdtemp(prefix="relay-edge-bench.")
    os.chmod(tmp, 0o755)
    os.makedirs(os.path.join(tmp, "tmp"))
    procs = Procs(tmp)
    report = [f"Load bench, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
              f"{rounds} round(s) of {duration} s per target, medians; "
              + ("proxies on CPU 0, load, backends and Redis on CPU 1." if PINNED else "not pinned.")]
    failed = []

    def check(name, r):
        if r.get("errors", 0) != 0 or r.get("rps", 1) <= 0 or r.get("failures", 0) != 0:
            failed.append(f"{name}: {r}")

    try:
        keys_lua = os.path.join(HERE, "keys.lua")
        relays = [("relay-a", free_port()), ("relay-b", free_port())]
        many = [(f"relay-{i:03d}", free_port()) for i in range(500)] if "c" in args.scenarios else []
        backends = procs.start("backends", pin(1, ["nginx", "-p", tmp + "/", "-c", backend_conf(tmp, relays + many),
                                                   "-g", "daemon off;"]))
        for _, p in relays:
            wait_http(procs, backends, p)
        redis_port = free_port()
        redis = procs.start("redis", pin(1, ["redis-server", "--port", str(redis_port), "--save", "",
                                             "--appendonly", "no"]))
        time.sleep(0.3)
        header_key = "{header: x-session-id}"

        def edge(name, relays, keys=header_key, redis=None, extra=""):
            port, admin = free_port(), free_port()
            conf = edge_conf(tmp, name, port, admin, relays, keys, redis, extra)
            p = procs.start(name, pin(0, [binary, "-c", conf]), stop=signal.SIGINT)
            wait_http(procs, p, admin, "/readyz", within=60)
            if redis:  # wait for the Redis connection
                deadline = time.time() + 20
                while not redis_connected(admin):
                    if time.time() > deadline:
                        die(f"{name} never connected to Redis:\n{procs.log(name)}")
                    time.sleep(0.1)
            return (name, port, p)

        def nginx(name="nginx", relays=relays):
            port = free_port()
            p = procs.start(name, pin(0, ["nginx", "-p", tmp + "/", "-c", nginx_conf(tmp, name, port, relays),
                                          "-g", "daemon off;"]))
            wait_http(procs, p, port, "/v1/messages", [("x-session-id", "k")])
            return (name, port, p)

        def haproxy(relays=relays):
            port = free_port()
            p = procs.start("haproxy", pin(0, ["haproxy", "-db", "-f", haproxy_conf(tmp, port, relays)]))
            wait_http(procs, p, port, "/v1/messages", [("x-session-id", "k")])
            return ("haproxy", port, p)

        def wrk_rounds(targets, script, conns, label, runs=None):
            results = {t[0]: [] for t in targets}
            for r in range(rounds):
                for t in targets:
                    print(f"bench: {label} round {r + 1}/{rounds}: {t[0]}", file=sys.stderr)
                    res = measure(t, runs or duration, warmup, script, conns)
                    check(f"{label} {t[0]}", res)
                    results[t[0]].append(res)
            return results

        def wrk_table(results):
            rows = []
            for name, runs in results.items():
                rows.append([name, f"{median_of(runs, 'rps'):,.0f}", f"{median_of(runs, 'p50_ms'):.3f}",
                             f"{median_of(runs, 'p99_ms'):.3f}", f"{median_of(runs, 'cpu_us'):.1f}",
                             f"{median_of(runs, 'rss'):.1f}", f"{sum(r['errors'] for r in runs):.0f}"])
            return fmt_table(["proxy", "RPS", "p50 ms", "p99 ms", "CPU µs/req", "RSS MiB", "errors"], rows)

        def ratios(results, ours="relay-edge"):
            out = []
            for other in results:
                if other == ours:
                    continue
                a, b = results[ours], results[other]
                out.append(f"- relay-edge / {other}: RPS x{median_of(a, 'rps') / median_of(b, 'rps'):.2f}, "
                           f"p99 x{median_of(a, 'p99_ms') / max(median_of(b, 'p99_ms'), 1e-9):.2f}, "
                           f"CPU per request x{median_of(a, 'cpu_us') / max(median_of(b, 'cpu_us'), 1e-9):.2f}")
            return "\n".join(out)

        # a and b share the baselines' processes; relay-edge runs twice.
        results_b = None
        if "a" in args.scenarios or "b" in args.scenarios:
            ng, ha = nginx(), haproxy()
            for sc in "ab":
                if sc not in args.scenarios:
                    continue
                ours = edge("relay-edge", relays, redis=redis_port if sc == "b" else None)
                run_wrk(ours[1], warmup + 1, keys_lua, 50)  # every key pinned: steady state
                c0 = redis_commands(redis_port)
                res = wrk_rounds([ours, ng, ha], keys_lua, 50, sc)
                cmds = (redis_commands(redis_port) - c0) / sum(r["requests"] for r in res["relay-edge"])
                procs.stop(ours[2])
                title = {"a": "a: small responses, header affinity, no Redis",
                         "b": "b: the same, relay-edge with Redis"}[sc]
                extra = (f"\n- Redis commands per relay-edge request, steady state (every key already pinned; "
                         f"background sync during the other proxies' runs included): {cmds:.4f}") if sc == "b" else ""
                report.append(f"## {title}\n\n{wrk_table(res)}\n\n{ratios(res)}{extra}")
                if sc == "b":
                    results_b = res
            procs.stop(ng[2])
            procs.stop(ha[2])

        if "c" in args.scenarios:
            print(f"bench: c: seeding {sessions_c:,} sessions over 500 upstreams", file=sys.stderr)
            subprocess.run(["redis-cli", "-p", str(redis_port), "flushall"], capture_output=True)
            seed_redis(redis_port, sessions_c, [n for n, _ in many])
            ours = edge("relay-edge-500", many, redis=redis_port)
            run_wrk(ours[1], warmup + 1, keys_lua, 50)
            c0 = redis_commands(redis_port)
            res = wrk_rounds([ours], keys_lua, 50, "c")
            cmds = (redis_commands(redis_port) - c0) / sum(r["requests"] for r in res["relay-edge-500"])
            procs.stop(ours[2])
            line = f"- Redis commands per request, steady state: {cmds:.4f}"
            if results_b:
                line += (f"\n- c / b (relay-edge RPS): x{median_of(res['relay-edge-500'], 'rps') / median_of(results_b['relay-edge'], 'rps'):.2f}")
            report.append(f"## c: 500 upstreams, {sessions_c:,} sessions already in Redis\n\n{wrk_table(res)}\n\n{line}")

        if "d" in args.scenarios:
            sse_relays = [("relay-a", free_port()), ("relay-b", free_port())]
            demo_p = procs.start("sse-backends", pin(1, [demo] + [f"127.0.0.1:{p}" for _, p in sse_relays]))
            for _, p in sse_relays:
                wait_http(procs, demo_p, p)
            # Fresh proxies every round: memory a process kept from the
            # previous round's streams would hide what a stream costs.
            runs = {name: [] for name in ("direct", "relay-edge", "nginx")}
            for r in range(rounds):
                ours = edge("relay-edge-sse", sse_relays)
                ng = nginx("nginx-sse", sse_relays)
                targets = [("direct", sse_relays[0][1], None), ("relay-edge", ours[1], ours[2]),
                           ("nginx", ng[1], ng[2])]
                for name, port, p in targets:
                    print(f"bench: d round {r + 1}/{rounds}: {name}", file=sys.stderr)
                    res = sse_run(port, worker_pid(p) if p else None, sse_streams, sse_events, sse_gap)
                    check(f"d {name}", res)
                    runs[name].append(res)
                procs.stop(ours[2])
                procs.stop(ng[2])
            direct99 = median_of(runs["direct"], "p99_us")
            rows = [[n, f"{median_of(v, 'p50_us') / 1000:.2f}", f"{median_of(v, 'p99_us') / 1000:.2f}",
                     "—" if n == "direct" else f"{(median_of(v, 'p99_us') - direct99) / 1000:.2f}",
                     "—" if n == "direct" else f"{median_of(v, 'rss_per_stream_kib'):.1f}",
                     f"{sum(x['failures'] for x in v)}"] for n, v in runs.items()]
            report.append(f"## d: {sse_streams:,} concurrent SSE streams of {sse_events} events, {sse_gap} ms apart\n\n"
                          + fmt_table(["path", "event delay p50 ms", "p99 ms", "p99 added ms",
                                       "RSS KiB per open stream", "failed streams"], rows))
            procs.stop(demo_p)

        if "e" in args.scenarios:
            lua = body_lua(tmp, 32)
            ours = edge("relay-edge-body", relays, keys="{json: /metadata/user_id}")
            ng, ha = nginx("nginx-body"), haproxy()
            res = wrk_rounds([ours, ng, ha], lua, 8, "e", runs=body_runs if smoke else None)
            for runs in res.values():
                for r in runs:
                    r["cpu_us_per_mib"] = r["cpu_us"]  # one body = 1 MiB
            rows = [[n, f"{median_of(v, 'rps'):,.0f}", f"{median_of(v, 'rps'):,.0f}",
                     f"{median_of(v, 'p99_ms'):.2f}", f"{median_of(v, 'cpu_us_per_mib'):.0f}",
                     f"{median_of(v, 'rss'):.1f}", f"{sum(r['errors'] for r in v):.0f}"]
                    for n, v in (("relay-edge (JSON body key)", res["relay-edge-body"]),
                                 ("nginx (header)", res["nginx-body"]), ("haproxy (header)", res["haproxy"]))]
            a = median_of(res["relay-edge-body"], "cpu_us")
            report.append("## e: 1 MiB request bodies\n\n"
                          + fmt_table(["proxy", "RPS", "MiB/s", "p99 ms", "CPU µs per MiB", "RSS MiB", "errors"], rows)
                          + f"\n\n- relay-edge / nginx, CPU per MiB: x{a / median_of(res['nginx-body'], 'cpu_us'):.2f}"
                          + f"\n- relay-edge / haproxy, CPU per MiB: x{a / median_of(res['haproxy'], 'cpu_us'):.2f}")
            for t in (ours, ng, ha):
                procs.stop(t[2])
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    text = "\n\n".join(report) + "\n"
    print(text)
    if args.out:
        open(args.out, "w").write(text)
    if smoke:
        if failed:
            die("SMOKE FAIL:\n" + "\n".join(failed))
        print("SMOKE OK: every request and every stream succeeded")
    elif failed:
        print("errors:\n" + "\n".join(failed), file=sys.stderr)


def redis_connected(admin):
    body = http_get(admin, "/api/stats").split(b"\r\n\r\n", 1)[-1]
    try:
        return json.loads(body)["redis"]["connected"] is True
    except (ValueError, KeyError, TypeError):
        return False


def http_get(port, path):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            return data
    except OSError:
        return b""


if __name__ == "__main__":
    main()
