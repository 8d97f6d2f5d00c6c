#!/usr/bin/env python3
"""relay-edge against nginx and HAProxy on loopback, seven scenarios.

    python3 benches/load/bench.py                 # full run (about 17 minutes)
    python3 benches/load/bench.py --smoke         # one short round of a-f; exit 1 unless
                                                  # every request and stream succeeded
    options: --bin PATH (a built relay-edge; default: cargo build --release),
             --rounds N, --duration S, --scenarios abcdefgh, --out FILE (markdown),
             --threads N or N,M,... (workers per proxy; a list runs everything at
               each and adds a table of b's RPS scaling), --proxy-cpus LIST,
             --edge-server 'KEY: VALUE' (into relay-edge's server: mapping, e.g.
               'work_stealing: true'), --edge-extra 'YAML' (top-level lines
               appended to every relay-edge config), --rate R (f, default 200/s),
             --sweep-duration S (g, default 3)

Every relay-edge runs with its access log off, as nginx and HAProxy do here,
except in scenario h, which measures what the log costs.

Scenarios (the same nginx backends, the same wrk Lua script with 10,000 keys;
rounds alternate the proxies and the tables hold medians):
  a  small responses, header affinity, no Redis
  b  the same with Redis configured
  c  500 upstreams; relay-edge with 1,000,000 sessions already in Redis, nginx
     (hash ... consistent, keepalive) and HAProxy (stick table) over the same
     500 ports; c/b RPS per proxy when b ran too
  d  2,000 concurrent SSE streams of 50 events, 500 ms apart: RSS per open
     stream, and the p99 latency each event gains against a direct connection
  e  1 MiB request bodies; relay-edge routes by a JSON body key, nginx and
     HAProxy by the header (they cannot read the body)
  f  Claude-Code-shaped: POST /v1/messages, 90 KB bodies with "stream":true,
     x-claude-code-session-id over 10,000 sessions, a 31-event SSE answer
     (backends read the body whole first), at a fixed 200 requests/s: CPU per
     request, RSS, time to first byte p50/p99 direct and through each proxy.
     The load is this script's open-loop asyncio client (--ttfb-client):
     Debian's tools do not fit: h2load paces connections or per-connection
     requests (closed loop on HTTP/1.1), reports time to first byte per
     connection only and sends one fixed header set; hey's -q is closed loop
     per worker and gives total-latency percentiles; httperf gives averages;
     vegeta and wrk2 are not packaged
  h  the access log's cost, in a's shape: relay-edge with its log off, in JSON
     to a file, and in the combined format to a file; nginx without and with
     its combined log to a file; RPS and CPU per request against each one's
     own run without it
  g  latency frontier in b's shape: wrk at -c 1..128 through each proxy, the
     best RPS with p99 <= 1 ms and <= 5 ms, and the p99 added at -c1 (also with
     the proxy moved onto the load's CPU, which drops cross-CPU wake-ups)

Layout with one worker per proxy on 2+ cores: proxies on CPU 0; wrk (one
thread), the load clients, the backends and Redis on the last CPU. With N
workers the proxies get CPUs 0..N-1, or every CPU when there are not N+1 (on
2 cores, N=2 shares the load's CPU, the same for every proxy). CPU per
request and RSS sum every process of a proxy (nginx: master and workers). It
installs nginx, haproxy, wrk and redis-server with apt-get when they are
missing. Every run is bounded in time.
"""

import argparse
import asyncio
import collections
import contextlib
import gc
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
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from common.ports import free_port  # noqa: E402
from common.peers import haproxy_conf, nginx_conf  # noqa: E402
from common.claude import claude_body  # noqa: E402
from common import syscalls  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CPUS = sorted(os.sched_getaffinity(0))
PINNED = len(CPUS) >= 2 and shutil.which("taskset") is not None
LOAD_CPU = str(CPUS[-1])    # wrk, the load clients, the backends and Redis
MIB = 1 << 20


def pin(cpus, cmd):
    return (["taskset", "-c", str(cpus)] + cmd) if PINNED else cmd


def proxy_cpus(threads):
    """The CPUs a proxy with `threads` workers may use: one per worker, away
    from the load's CPU when the machine has enough; else every CPU."""
    return ",".join(str(c) for c in (CPUS[:threads] if threads < len(CPUS) else CPUS))


def layout(threads, cpus):
    """How the processes sit, for the report; `cpus` are the proxies' CPUs."""
    if not PINNED:
        return "nothing pinned (one CPU, or no taskset)."
    each = f"{threads} worker{'s' if threads > 1 else ''} each"
    load = f"wrk (one thread), the load clients, the backends and Redis on CPU {LOAD_CPU}"
    if LOAD_CPU not in cpus.split(","):
        return f"proxies ({each}) on CPU {cpus}; {load}."
    if cpus == LOAD_CPU:
        return f"proxies ({each}) on CPU {cpus}, with the load: {load}."
    return (f"proxies ({each}) may run on CPUs {cpus}, every CPU of this {len(CPUS)}-core machine: it has "
            f"too few to give {threads} workers cores of their own and keep the load off them. wrk "
            f"(one thread), the load clients, the backends and Redis stay pinned to CPU {LOAD_CPU}, "
            f"which the proxy's workers share with them. Every proxy gets the same CPUs and the same "
            f"load, so proxies compare evenly; a ratio to the 1-worker run understates what "
            f"{threads} dedicated cores would give.")


def die(msg):
    print(f"bench: {msg}", file=sys.stderr)
    sys.exit(1)


def install_missing():
    need = [p for t, p in [("nginx", "nginx"), ("haproxy", "haproxy"), ("wrk", "wrk"),
                           ("redis-server", "redis-server"), ("redis-cli", "redis-tools"),
                           ("strace", "strace")]
            if shutil.which(t) is None and not os.path.exists(f"/usr/sbin/{t}")]
    if not need:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    print(f"bench: installing {' '.join(need)}", file=sys.stderr)
    subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True)
    subprocess.run(sudo + ["apt-get", "install", "-y", "-qq"] + need, check=True,
                   env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


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


def proc_tree(pid):
    """A process and all its descendants (nginx: the master and every worker)."""
    pids = [pid]
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return pids
    for t in tasks:
        try:
            kids = open(f"/proc/{pid}/task/{t}/children").read().split()
        except OSError:
            continue
        for k in kids:
            pids += proc_tree(int(k))
    return pids


def cpu_total(pids):
    return sum(cpu_seconds(p) for p in pids)


def rss_total(pids):
    """Sum of the processes' RSS (pages they share are counted in each)."""
    return sum(rss_mib(p) for p in pids)


def wait_children(p, n, within=10):
    """Wait until a master process has its `n` workers."""
    deadline = time.time() + within
    while len(proc_tree(p.pid)) < n + 1:
        if time.time() > deadline:
            die(f"{p.bench_name} did not start {n} workers")
        time.sleep(0.05)


# ---------------------------------------------------------------- configs

def backend_conf(tmp, ports, sse_ports=()):
    """The backends: one nginx, one server per port. `ports` answer every
    request with a small JSON body; `sse_ports` (scenario f) answer POST
    /v1/messages with a static SSE stream (sse/events.sse) once the whole
    request body is read: the mirror reads it first, as a real API would
    (`return` alone answers on the head). The static handler refuses POST
    with 405, which error_page turns into a GET of the file."""
    servers = "\n".join(
        f"    server {{ listen 127.0.0.1:{port}; location = /health {{ return 200 'ok'; }} "
        f"location / {{ return 200 '{{\"upstream\":\"{name}\"}}'; }} }}" for name, port in ports)
    sse_root = os.path.join(tmp, "sse")
    for port in sse_ports:
        servers += f"""
    server {{
        listen 127.0.0.1:{port};
        location = /health {{ return 200 'ok'; }}
        location = /discard {{ internal; return 204; }}
        location / {{
            mirror /discard; mirror_request_body on;
            root {sse_root}; try_files /events.sse =404; error_page 405 =200 /events.sse;
        }}
        location = /events.sse {{ internal; root {sse_root}; }}
    }}"""
    path = os.path.join(tmp, "backend.conf")
    open(path, "w").write(f"""worker_processes 1;
pid backend.pid;
error_log backend.error.log warn;
worker_rlimit_nofile 8192;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/json;
    types {{ text/event-stream sse; }}
    etag off;
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


def edge_conf(tmp, name, port, admin, relays, keys, redis_port=None, extra="", threads=1, server_extra=""):
    """`server_extra` goes inside the server mapping (e.g. `work_stealing: true`),
    `extra` is appended as top-level YAML."""
    ups = "\n".join(f"  - {{id: {n}, addr: 127.0.0.1:{p}}}" for n, p in relays)
    redis = f"redis: {{url: 'redis://127.0.0.1:{redis_port}/0'}}\n" if redis_port else ""
    if "access_log" not in extra:  # as nginx's and HAProxy's here
        extra = "access_log: {enabled: false}\n" + extra
    path = os.path.join(tmp, f"{name}.yaml")
    open(path, "w").write(f"""listen: [{{addr: 127.0.0.1:{port}}}]
upstreams:
{ups}
health_check: {{path: /health, interval: 2s}}
affinity: {{keys: [{keys}]}}
admin: {{listen: 127.0.0.1:{admin}}}
server: {{threads: {threads}, pid_file: {tmp}/{name}.pid, upgrade_sock: {tmp}/{name}.sock, log_level: warn{server_extra}}}
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
    cmd = pin(LOAD_CPU, ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", "-s", script,
                  f"http://127.0.0.1:{port}/v1/messages"])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    line = next((l for l in out.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        die(f"wrk gave no RESULT:\n{out}")
    r = dict(kv.split("=") for kv in line.split()[1:])
    return {k: float(v) for k, v in r.items()}


def measure(target, seconds, warmup, script, conns):
    """One wrk run against a target; with the CPU per request and the RSS of
    every process of the proxy (none for a backend reached directly)."""
    name, port, proc = target
    if warmup:
        run_wrk(port, warmup, script, conns)
    pids = proc_tree(proc.pid) if proc else []
    cpu0 = cpu_total(pids)
    r = run_wrk(port, seconds, script, conns)
    cpu = cpu_total(pids) - cpu0
    requests = r.get("requests") or r["rps"] * seconds
    r["cpu_us"] = cpu / max(requests, 1) * 1e6
    r["cpu_s"] = cpu
    r["requests"] = requests
    r["rss"] = rss_total(pids)
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


def sse_run(port, pids, streams, events, gap_ms):
    """Run the SSE client in a child pinned to the load's CPU; sample the
    proxy's RSS (all its processes) while every stream is open."""
    script = os.path.abspath(__file__)
    before = rss_total(pids)
    child = subprocess.Popen(pin(LOAD_CPU, [sys.executable, script, "--sse-client", str(port), str(streams),
                                     str(events), str(gap_ms)]),
                             stdout=subprocess.PIPE, text=True)
    peak = before
    while child.poll() is None:
        if pids:
            peak = max(peak, rss_total(pids))
        time.sleep(0.1)
    out = child.stdout.read().split()
    p50, p99, n, failures = float(out[0]), float(out[1]), int(out[2]), int(out[3])
    return {"p50_us": p50, "p99_us": p99, "events": n, "failures": failures,
            "rss_per_stream_kib": (peak - before) * 1024 / streams if pids else 0.0}


def sse_client_main(argv):
    port, streams, events, gap_ms = (int(a) for a in argv)
    hold = asyncio.Event()
    delays, failures = asyncio.run(sse_client(port, streams, events, gap_ms, hold))
    delays.sort()
    pct = (lambda q: delays[min(len(delays) - 1, int(q * len(delays)))]) if delays else (lambda q: 0)
    print(pct(0.5), pct(0.99), len(delays), failures)


# ---------------------------------------------------------------- Claude Code shape (f)

F_HEADER = "x-claude-code-session-id"
F_SESSIONS = 10_000


def sse_answer():
    """A streamed Messages answer in the Anthropic event shapes: message_start,
    content_block_start, 26 content_block_delta, content_block_stop,
    message_delta, message_stop (31 events)."""
    def ev(kind, data):
        return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
    text = ("I'll look at the failing test first. The assertion compares the parsed config with a "
            "default that changed in the last commit, so the fix belongs in the test fixture rather "
            "than in the parser. Let me read the fixture, update the expected value, and run the "
            "suite again to make sure nothing else depends on the old default.").split(" ")
    step = -(-len(text) // 26)
    deltas = [" ".join(text[i:i + step]) + " " for i in range(0, len(text), step)]
    out = [ev("message_start", {"type": "message_start", "message": {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
        "model": "claude-sonnet-4-5-20250929", "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 3, "cache_creation_input_tokens": 412, "cache_read_input_tokens": 23816,
                  "cache_creation": {"ephemeral_5m_input_tokens": 412, "ephemeral_1h_input_tokens": 0},
                  "output_tokens": 1, "service_tier": "standard"}}}),
           ev("content_block_start", {"type": "content_block_start", "index": 0,
                                      "content_block": {"type": "text", "text": ""}})]
    out += [ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                       "delta": {"type": "text_delta", "text": d}}) for d in deltas]
    out += [ev("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                 "usage": {"output_tokens": 74}}),
            ev("message_stop", {"type": "message_stop"})]
    return "".join(out)


async def ttfb_client(port, rate, seconds, warmup, pool=8):
    """Open loop: request i is started at t0 + i/rate whatever the earlier ones
    are doing, on an idle keep-alive connection, or a new one when none is
    idle. Time to first byte: from the moment the whole request is handed to
    the kernel (a zero write buffer, so drain() waits for it) to the first
    byte of the response body. Every response is read to its end."""
    seeded = random.Random(5)
    sessions = [str(uuid.UUID(int=seeded.getrandbits(128), version=4)) for _ in range(F_SESSIONS)]
    head, tail = claude_body()
    rng = random.Random()
    idle, stats = collections.deque(), {"ttfb": [], "total": [], "lag": [], "failures": 0, "opened": 0}

    async def connect():
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        w.transport.set_write_buffer_limits(0)
        stats["opened"] += 1
        return r, w

    async def exchange(r, w, req):
        w.write(req)
        await w.drain()
        t0 = time.perf_counter()
        lines = (await r.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {k.strip().lower(): v.strip().lower() for k, _, v in (l.partition(":") for l in lines[1:] if l)}
        if hdrs.get("transfer-encoding") == "chunked":
            size = int((await r.readline()).split(b";")[0], 16)
            first = await r.read(size) if size else b""
            t1 = time.perf_counter()
            body = [first, await r.readexactly(size - len(first))]
            await r.readexactly(2)
            while size:
                size = int((await r.readline()).split(b";")[0], 16)
                body.append(await r.readexactly(size))
                await r.readexactly(2)  # the chunk's CRLF, or the end of no trailers
        else:
            n = int(hdrs.get("content-length", "0"))
            first = await r.read(n) if n else b""
            t1 = time.perf_counter()
            body = [first, await r.readexactly(n - len(first))]
        body = b"".join(body)
        ok = status == 200 and body.rstrip().endswith(b'{"type":"message_stop"}')
        return ok, hdrs.get("connection") != "close", t1 - t0

    async def one(sched, record):
        start = time.perf_counter()
        sid = rng.choice(sessions)
        body = head + sid.encode() + tail
        req = (f"POST /v1/messages HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
               f"accept: application/json\r\nanthropic-version: 2023-06-01\r\nx-app: cli\r\n"
               f"user-agent: claude-cli/2.0.0 (external, cli)\r\n{F_HEADER}: {sid}\r\n"
               f"content-length: {len(body)}\r\n\r\n").encode() + body
        ok, keep, w = False, False, None
        try:
            r, w = idle.popleft() if idle else await connect()
            ok, keep, ttfb = await asyncio.wait_for(exchange(r, w, req), 30)
        except (OSError, ValueError, IndexError, asyncio.TimeoutError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError):
            pass
        if keep and ok:
            idle.append((r, w))
        elif w is not None:
            w.close()
        if record:
            if ok:
                stats["ttfb"].append(ttfb)
                stats["total"].append(time.perf_counter() - start)
                stats["lag"].append(start - sched)
            else:
                stats["failures"] += 1

    async def phase(secs, record):
        tasks, t0 = [], time.perf_counter()
        for i in range(int(rate * secs)):
            sched = t0 + i / rate
            delay = sched - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(sched, record)))
        await asyncio.gather(*tasks)
        return time.perf_counter() - t0

    for _ in range(pool):
        idle.append(await connect())
    await phase(warmup, False)
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    stats["opened"] = 0
    gc.collect()
    gc.disable()  # no collector pauses in the measured part
    elapsed = await phase(seconds, True)
    gc.enable()

    def pct(xs, q):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1e6 if xs else 0.0
    print(json.dumps({"requests": len(stats["ttfb"]), "failures": stats["failures"],
                      "rate": len(stats["ttfb"]) / elapsed, "opened": stats["opened"],
                      "body_bytes": len(head) + 36 + len(tail),
                      "ttfb_p50_us": pct(stats["ttfb"], 0.5), "ttfb_p99_us": pct(stats["ttfb"], 0.99),
                      "total_p99_us": pct(stats["total"], 0.99), "lag_p99_us": pct(stats["lag"], 0.99)}),
          flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # the parent has read the proxy's CPU
    for _, w in idle:
        w.close()


def ttfb_client_main(argv):
    port, rate, seconds, warmup = int(argv[0]), float(argv[1]), float(argv[2]), float(argv[3])
    asyncio.run(ttfb_client(port, rate, seconds, warmup))


def ttfb_run(port, pids, rate, seconds, warmup, count_syscalls=False):
    """Run the open-loop client in a child pinned to the load's CPU; the
    proxy's CPU (all its processes) is read around the measured part only.
    With `count_syscalls`, the proxy is traced over the measured part, and
    its syscalls per request are in the result (its CPU then is not)."""
    failed = {"requests": 0, "failures": 1, "rate": 0, "ttfb_p50_us": 0, "ttfb_p99_us": 0, "total_p99_us": 0,
              "lag_p99_us": 0, "cpu_us": 0, "rss": 0}
    child = subprocess.Popen(pin(LOAD_CPU, [sys.executable, os.path.abspath(__file__), "--ttfb-client", str(port),
                                            str(rate), str(seconds), str(warmup)]),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if child.stdout.readline().strip() != "ready":
            return failed
        counter = syscalls.Count(pids) if count_syscalls else contextlib.nullcontext()
        with counter:
            cpu0 = cpu_total(pids)
            child.stdin.write("go\n")
            child.stdin.flush()
            line = child.stdout.readline()
            cpu = cpu_total(pids) - cpu0
        rss = rss_total(pids)
    finally:
        child.stdin.close()
        child.wait(30)
    if not line.strip():
        return failed
    r = json.loads(line)
    r["cpu_us"] = cpu / max(r["requests"], 1) * 1e6
    r["rss"] = rss
    if count_syscalls:
        r.update(counter.per_request(r["requests"]))
    return r


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
    if len(sys.argv) > 1 and sys.argv[1] == "--ttfb-client":
        return ttfb_client_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--bin")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--duration", type=int)
    ap.add_argument("--scenarios", default=None, help="letters of abcdefgh (default: all; --smoke: abcdef)")
    ap.add_argument("--threads", default="1",
                    help="workers per proxy, or a list such as 1,2 to run everything at each (default 1)")
    ap.add_argument("--edge-server", action="append", default=[], metavar="'KEY: VALUE'",
                    help="a key for relay-edge's server: mapping, e.g. 'work_stealing: true' (repeatable)")
    ap.add_argument("--edge-extra", action="append", default=[], metavar="YAML",
                    help="top-level YAML lines appended to every relay-edge config (repeatable)")
    ap.add_argument("--rate", type=float, default=200, help="f: requests per second (default 200)")
    ap.add_argument("--sweep-duration", type=int, help="g: seconds per concurrency step (default 3; smoke 1)")
    ap.add_argument("--proxy-cpus", metavar="LIST",
                    help="taskset CPU list for the proxies (default: CPU 0 for 1 worker, else one per worker "
                         "or every CPU; the load stays on the last CPU)")
    ap.add_argument("--out")
    args = ap.parse_args()
    smoke = args.smoke
    scenarios = args.scenarios or ("abcdef" if smoke else "abcdefgh")
    thread_counts = [int(n) for n in args.threads.split(",")]
    rounds = args.rounds or (1 if smoke else 3)
    duration = args.duration or (2 if smoke else 10)
    warmup = 1 if smoke else 2
    sessions_c = 20_000 if smoke else 1_000_000
    # 2,000 streams x 2 events/s: 4,000 events/s, which the Python client
    # reads without a backlog of its own (at 20,000/s it lagged seconds).
    sse_streams, sse_events, sse_gap = (100, 10, 20) if smoke else (2000, 50, 500)
    body_runs = 1 if smoke else duration
    f_seconds, f_warmup = (1, 0.5) if smoke else (duration, warmup)
    sweep = (1, 16) if smoke else (1, 2, 4, 8, 16, 32, 64, 128)
    sweep_seconds = args.sweep_duration or (1 if smoke else 3)
    edge_server = "".join(", " + kv for kv in args.edge_server)
    edge_extra = "".join(line.rstrip("\n") + "\n" for line in args.edge_extra)

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
    os.makedirs(os.path.join(tmp, "sse"))
    open(os.path.join(tmp, "sse", "events.sse"), "w").write(sse_answer())
    procs = Procs(tmp)
    report = [f"Load bench, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
              f"{rounds} round(s) of {duration} s per target, medians."
              + (f"\n\nrelay-edge server keys added: `{edge_server[2:]}`." if edge_server else "")
              + (f"\n\nrelay-edge config lines added:\n\n```yaml\n{edge_extra}```" if edge_extra else "")]
    failed = []

    def check(name, r):
        if r.get("errors", 0) != 0 or r.get("rps", 1) <= 0 or r.get("failures", 0) != 0 \
                or r.get("requests", 1) <= 0:
            failed.append(f"{name}: {r}")

    try:
        keys_lua = os.path.join(HERE, "keys.lua")
        relays = [("relay-a", free_port()), ("relay-b", free_port())]
        many = [(f"relay-{i:03d}", free_port()) for i in range(500)] if "c" in scenarios else []
        f_relays = [("relay-a", free_port()), ("relay-b", free_port())] if "f" in scenarios else []
        backends = procs.start("backends", pin(LOAD_CPU, ["nginx", "-p", tmp + "/", "-c",
                                                          backend_conf(tmp, relays + many, [p for _, p in f_relays]),
                                                          "-g", "daemon off;"]))
        for _, p in relays + f_relays:
            wait_http(procs, backends, p)
        redis_port = free_port()
        redis = procs.start("redis", pin(LOAD_CPU, ["redis-server", "--port", str(redis_port), "--save", "",
                                                    "--appendonly", "no"]))
        time.sleep(0.3)
        header_key = "{header: x-session-id}"
        threads = thread_counts[0]
        scaling = {}
        place = {"cpus": None}  # set while g measures one request in flight on one CPU

        def where():
            return place["cpus"] or args.proxy_cpus or proxy_cpus(threads)

        def edge(name, relays, keys=header_key, redis=None, extra=""):
            port, admin = free_port(), free_port()
            conf = edge_conf(tmp, name, port, admin, relays, keys, redis, extra + edge_extra, threads, edge_server)
            p = procs.start(name, pin(where(), [binary, "-c", conf]), stop=signal.SIGINT)
            p.bench_admin = admin
            wait_http(procs, p, admin, "/readyz", within=60)
            if redis:  # wait for the Redis connection
                deadline = time.time() + 20
                while not redis_connected(admin):
                    if time.time() > deadline:
                        die(f"{name} never connected to Redis:\n{procs.log(name)}")
                    time.sleep(0.1)
            return (name, port, p)

        def nginx(name="nginx", relays=relays, header="x-session-id", keepalive=64, access_log=None):
            port = free_port()
            conf = nginx_conf(tmp, name, port, relays, threads, header, keepalive, access_log)
            p = procs.start(name, pin(where(), ["nginx", "-p", tmp + "/", "-c", conf, "-g", "daemon off;"]))
            wait_http(procs, p, port, "/v1/messages", [(header, "k")])
            wait_children(p, threads)
            return (name, port, p)

        def haproxy(relays=relays, header="x-session-id"):
            port = free_port()
            conf = haproxy_conf(tmp, port, relays, threads, header)
            p = procs.start("haproxy", pin(where(), ["haproxy", "-db", "-f", conf]))
            wait_http(procs, p, port, "/v1/messages", [(header, "k")])
            return ("haproxy", port, p)

        def named(target, name):
            return (name,) + target[1:]

        def flush_redis():
            subprocess.run(["redis-cli", "-p", str(redis_port), "flushall"], capture_output=True)

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

        for threads in thread_counts:
            wtag = f" — {threads} worker{'s' if threads > 1 else ''} per proxy"
            report.append(f"# {threads} worker{'s' if threads > 1 else ''} per proxy\n\nLayout: {layout(threads, where())} "
                          "CPU per request and RSS sum every process of a proxy (nginx: master and workers).")

            # a and b share the baselines' processes; relay-edge runs twice.
            results_b = None
            if "a" in scenarios or "b" in scenarios:
                ng, ha = nginx(), haproxy()
                for sc in "ab":
                    if sc not in scenarios:
                        continue
                    flush_redis()
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
                    report.append(f"## {title}{wtag}\n\n{wrk_table(res)}\n\n{ratios(res)}{extra}")
                    if sc == "b":
                        results_b = scaling[threads] = res
                procs.stop(ng[2])
                procs.stop(ha[2])

            if "h" in scenarios:
                variants = [
                    edge("relay-edge-log-off", relays, extra="access_log: {enabled: false}\n"),
                    edge("relay-edge-log-json", relays, extra=f"access_log: {{path: {tmp}/edge-json.log}}\n"),
                    edge("relay-edge-log-combined", relays,
                         extra=f"access_log: {{path: {tmp}/edge-combined.log, format: combined}}\n"),
                    nginx("nginx-log-off"),
                    nginx("nginx-log-combined", access_log=f"{tmp}/nginx-combined.log"),
                ]
                for v in variants:
                    run_wrk(v[1], warmup + 1, keys_lua, 50)
                res = wrk_rounds(variants, keys_lua, 50, "h")
                costs = []
                for base, logged in [("relay-edge-log-off", "relay-edge-log-json"),
                                     ("relay-edge-log-off", "relay-edge-log-combined"),
                                     ("nginx-log-off", "nginx-log-combined")]:
                    rps = median_of(res[logged], "rps") / median_of(res[base], "rps")
                    cpu = median_of(res[logged], "cpu_us") - median_of(res[base], "cpu_us")
                    costs.append(f"- {logged}: RPS x{rps:.3f} of {base} ({(1 - rps) * 100:+.1f}% cost), "
                                 f"CPU per request {cpu:+.2f} µs")
                dropped = sum(metric_sum(v[2].bench_admin, "relay_edge_access_log_dropped_total", "")
                              for v in variants[:3])
                for v in variants:
                    procs.stop(v[2])
                report.append(f"## h: the access log's cost{wtag}\n\n{wrk_table(res)}\n\n" + "\n".join(costs)
                              + f"\n- relay-edge lines dropped (queue full): {dropped:.0f}")

            if "c" in scenarios:
                print(f"bench: c: seeding {sessions_c:,} sessions over 500 upstreams", file=sys.stderr)
                flush_redis()
                seed_redis(redis_port, sessions_c, [n for n, _ in many])
                ours = named(edge("relay-edge-500", many, redis=redis_port), "relay-edge")
                ng = named(nginx("nginx-500", many, keepalive=1024), "nginx")
                ha = haproxy(many)
                run_wrk(ours[1], warmup + 1, keys_lua, 50)
                c0 = redis_commands(redis_port)
                res = wrk_rounds([ours, ng, ha], keys_lua, 50, "c")
                cmds = (redis_commands(redis_port) - c0) / sum(r["requests"] for r in res["relay-edge"])
                for t in (ours, ng, ha):
                    procs.stop(t[2])
                lines = [f"- Redis commands per relay-edge request, steady state: {cmds:.4f}",
                         "- nginx: `hash $http_x_session_id consistent` over the 500, keepalive 1024 per worker "
                         "(relay-edge's default pool_size); HAProxy: a stick table over the same 500 servers"]
                if results_b:
                    lines += [f"- c / b, {n} RPS: x{median_of(res[n], 'rps') / median_of(results_b[n], 'rps'):.2f}"
                              for n in res]
                else:
                    lines.append("- c / b: run b in the same invocation (--scenarios bc) for this ratio")
                report.append(f"## c: 500 upstreams, {sessions_c:,} sessions already in Redis (relay-edge){wtag}\n\n"
                              f"{wrk_table(res)}\n\n{ratios(res)}\n" + "\n".join(lines))
                flush_redis()

            if "d" in scenarios:
                sse_relays = [("relay-a", free_port()), ("relay-b", free_port())]
                demo_p = procs.start("sse-backends", pin(LOAD_CPU, [demo] + [f"127.0.0.1:{p}" for _, p in sse_relays]))
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
                        res = sse_run(port, proc_tree(p.pid) if p else [], sse_streams, sse_events, sse_gap)
                        check(f"d {name}", res)
                        runs[name].append(res)
                    procs.stop(ours[2])
                    procs.stop(ng[2])
                direct99 = median_of(runs["direct"], "p99_us")
                rows = [[n, f"{median_of(v, 'p50_us') / 1000:.2f}", f"{median_of(v, 'p99_us') / 1000:.2f}",
                         "—" if n == "direct" else f"{(median_of(v, 'p99_us') - direct99) / 1000:.2f}",
                         "—" if n == "direct" else f"{median_of(v, 'rss_per_stream_kib'):.1f}",
                         f"{sum(x['failures'] for x in v)}"] for n, v in runs.items()]
                report.append(f"## d: {sse_streams:,} concurrent SSE streams of {sse_events} events, {sse_gap} ms apart{wtag}\n\n"
                              + fmt_table(["path", "event delay p50 ms", "p99 ms", "p99 added ms",
                                           "RSS KiB per open stream", "failed streams"], rows))
                procs.stop(demo_p)

            if "e" in scenarios:
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
                report.append(f"## e: 1 MiB request bodies{wtag}\n\n"
                              + fmt_table(["proxy", "RPS", "MiB/s", "p99 ms", "CPU µs per MiB", "RSS MiB", "errors"], rows)
                              + f"\n\n- relay-edge / nginx, CPU per MiB: x{a / median_of(res['nginx-body'], 'cpu_us'):.2f}"
                              + f"\n- relay-edge / haproxy, CPU per MiB: x{a / median_of(res['haproxy'], 'cpu_us'):.2f}")
                for t in (ours, ng, ha):
                    procs.stop(t[2])

            if "f" in scenarios:
                fk = F_HEADER
                ours = edge("relay-edge-f", f_relays, keys=f"{{header: {fk}}}")
                ng = named(nginx("nginx-f", f_relays, header=fk), "nginx")
                ha = haproxy(f_relays, header=fk)
                targets = [("direct", f_relays[0][1], None), named(ours, "relay-edge"), ng, ha]
                runs = {t[0]: [] for t in targets}
                for r in range(rounds):
                    for name, port, p in targets:
                        print(f"bench: f round {r + 1}/{rounds}: {name}", file=sys.stderr)
                        res = ttfb_run(port, proc_tree(p.pid) if p else [], args.rate, f_seconds, f_warmup)
                        check(f"f {name}", res)
                        runs[name].append(res)
                # One more run per proxy under strace, for syscalls per request.
                traced = {}
                for name, port, p in targets[1:]:
                    print(f"bench: f syscalls: {name}", file=sys.stderr)
                    traced[name] = ttfb_run(port, proc_tree(p.pid), args.rate, f_seconds, f_warmup,
                                            count_syscalls=True)
                    check(f"f {name} (strace)", traced[name])
                streams = metric_sum(ours[2].bench_admin, 'relay_edge_streams_total{', 'outcome="completed"')
                for t in (ours, ng, ha):
                    procs.stop(t[2])
                d50, d99 = median_of(runs["direct"], "ttfb_p50_us"), median_of(runs["direct"], "ttfb_p99_us")
                rows = []
                for n, v in runs.items():
                    direct = n == "direct"
                    rows.append([n, f"{median_of(v, 'ttfb_p50_us') / 1000:.3f}", f"{median_of(v, 'ttfb_p99_us') / 1000:.3f}",
                                 "—" if direct else f"{(median_of(v, 'ttfb_p50_us') - d50) / 1000:.3f}",
                                 "—" if direct else f"{(median_of(v, 'ttfb_p99_us') - d99) / 1000:.3f}",
                                 "—" if direct else f"{median_of(v, 'cpu_us'):.0f}",
                                 "—" if direct else f"{median_of(v, 'rss'):.1f}",
                                 f"{median_of(v, 'rate'):.0f}", f"{median_of(v, 'lag_p99_us') / 1000:.2f}",
                                 f"{sum(x['failures'] for x in v)}"])
                body_kb = runs["direct"][0].get("body_bytes", 0) / 1000
                report.append(
                    f"## f: Claude-Code-shaped streams at {args.rate:g} requests/s{wtag}\n\n"
                    f"POST /v1/messages, {body_kb:.0f} KB JSON bodies (Claude Code's member order: metadata near the end, `\"stream\":true` last), "
                    f"session in `{fk}` ({F_SESSIONS:,} sessions, one at random per request); the backends "
                    f"(nginx) read each body whole, then answer a static `text/event-stream` of 31 Anthropic events. "
                    f"Load: this script's open-loop asyncio client (`--ttfb-client`), {args.rate:g} requests/s on a fixed "
                    f"schedule, {f_seconds:g} s per run after {f_warmup:g} s of warm-up, keep-alive pool; TTFB is from the "
                    f"whole request written to the first body byte (the first event). relay-edge: "
                    f"`affinity: {{keys: [{{header: {fk}}}]}}`, no Redis; nginx: `hash $http_{fk.replace('-', '_')} "
                    f"consistent`; HAProxy: `stick on req.hdr({fk})`.\n\n"
                    + fmt_table(["path", "TTFB p50 ms", "TTFB p99 ms", "added p50 ms", "added p99 ms",
                                 "CPU µs/req", "RSS MiB", "req/s done", "client lag p99 ms", "failures"], rows)
                    + f"\n\n- relay-edge's `relay_edge_streams_total{{outcome=\"completed\"}}` after the runs "
                      f"(warm-ups included): {streams:,.0f}\n- client lag: how late a request started against its "
                      f"schedule (a lagging client would no longer be open-loop)\n- direct: the client and the "
                      f"backend share a CPU; through a proxy each request crosses CPUs four times, whose wake-ups "
                      f"are in the added TTFB (scenario g shows their size; --proxy-cpus {LOAD_CPU} removes them)"
                    + f"\n\nSyscalls per request: one more run per proxy, {f_seconds:g} s under `strace -c -f` "
                      f"(which slows it: its CPU is not used); CPU µs/req is from the runs above.\n\n"
                    + fmt_table(["path"] + syscalls.COLUMNS + ["CPU µs/req", "most frequent, per request"],
                                [[n] + [f"{t[c]:.1f}" for c in syscalls.COLUMNS]
                                 + [f"{median_of(runs[n], 'cpu_us'):.0f}", t["top"]] for n, t in traced.items()]))

            if "g" in scenarios:
                def g_targets():
                    flush_redis()
                    ours = named(edge("relay-edge-g", relays, redis=redis_port), "relay-edge")
                    targets = [("direct", relays[0][1], None), ours, named(nginx("nginx-g"), "nginx"), haproxy()]
                    run_wrk(ours[1], warmup + 1, keys_lua, 50)  # every key pinned
                    for t in targets[2:]:
                        run_wrk(t[1], 1, keys_lua, 50)
                    return targets

                def g_run(t, c, label):
                    print(f"bench: g -c{c}{label}: {t[0]}", file=sys.stderr)
                    res = measure(t, sweep_seconds, 0, keys_lua, c)
                    check(f"g -c{c}{label} {t[0]}", res)
                    return res

                targets = g_targets()
                points = {t[0]: {} for t in targets}
                for c in sweep:
                    for t in targets:
                        points[t[0]][c] = g_run(t, c, "")
                for t in targets[1:]:
                    procs.stop(t[2])
                c1 = sweep[0]
                # At one request in flight nothing runs at once, so the proxy
                # may share the load's CPU: that drops the cross-CPU wake-ups
                # (wrk -> proxy -> backend and back), which are all of the
                # difference between "direct" (wrk and backend on one CPU)
                # and the proxies that is not the proxy's own work.
                one_cpu = PINNED and where() != LOAD_CPU
                if one_cpu:
                    place["cpus"] = LOAD_CPU
                    targets = g_targets()
                    for t in targets:
                        points[t[0]]["one"] = g_run(t, c1, f" (proxy on CPU {LOAD_CPU})")
                    for t in targets[1:]:
                        procs.stop(t[2])
                    place["cpus"] = None
                rows = [[f"{c}"] + [f"{points[n][c]['rps']:,.0f} / {points[n][c]['p99_ms']:.3f}" for n in points]
                        for c in sweep]

                def best(n, limit):
                    ok = [(points[n][c]["rps"], c) for c in sweep if points[n][c]["p99_ms"] <= limit]
                    return f"{max(ok)[0]:,.0f} (c{max(ok)[1]})" if ok else "none"

                def at_c1(n, key):
                    r = points[n][key]
                    added = "—" if n == "direct" else f"{(r['p99_ms'] - points['direct'][key]['p99_ms']) * 1000:.0f}"
                    cpu = "—" if n == "direct" else f"{r['cpu_us']:.1f}"
                    return [f"{r['p50_ms'] * 1000:.0f}", f"{r['p99_ms'] * 1000:.0f}", added, cpu]
                heads = ["proxy", "best RPS, p99 ≤ 1 ms", "best RPS, p99 ≤ 5 ms", f"c{c1}: p50 µs", "p99 µs",
                         "added p99 µs", "CPU µs/req"]
                if one_cpu:
                    heads += [f"c{c1}, proxy on CPU {LOAD_CPU}: p50 µs", "p99 µs", "added p99 µs", "CPU µs/req"]
                summary = [[n, best(n, 1.0), best(n, 5.0)] + at_c1(n, c1) + (at_c1(n, "one") if one_cpu else [])
                           for n in points]
                notes = [f"- added p99 at c{c1}: wrk -c{c1} p99 through the proxy minus wrk -c{c1} p99 straight to "
                         f"a backend (direct: wrk and the backend share CPU {LOAD_CPU})"]
                if one_cpu:
                    notes.append(f"- \"proxy on CPU {LOAD_CPU}\": the proxies restarted on the load's CPU and measured "
                                 f"again at c{c1}. With one request in flight nothing runs at once, so this layout "
                                 f"costs nothing and removes the four cross-CPU wake-ups per request (wrk, proxy, "
                                 f"backend, proxy, wrk) that the usual layout adds; on a VM those can cost "
                                 f"milliseconds at p99")
                notes.append("- for comparison, GetBusbar's LLM-gateway benchmark: the best gateway there adds 107 µs "
                             "at p99 at one request in flight and uses 168 µs of CPU per request")
                report.append(
                    f"## g: latency frontier, scenario b's shape (relay-edge with Redis){wtag}\n\n"
                    f"One sweep of wrk (one thread) at -c {', '.join(map(str, sweep))}, {sweep_seconds} s per step, "
                    f"the targets alternating at each step; one run per point, no medians.\n\n"
                    + fmt_table(heads, summary)
                    + "\n\nRPS / p99 ms at each concurrency:\n\n"
                    + fmt_table(["connections"] + list(points), rows)
                    + "\n\n" + "\n".join(notes))

        if len(scaling) > 1:
            base = thread_counts[0]
            rows = []
            for name in scaling[base]:
                rps = {n: median_of(scaling[n][name], "rps") for n in scaling}
                rows.append([name] + [f"{rps[n]:,.0f}" for n in scaling]
                            + [f"x{rps[n] / rps[base]:.2f}" for n in scaling if n != base]
                            + [f"{median_of(scaling[n][name], 'cpu_us'):.1f}" for n in scaling])
            report.append("## b: scaling with workers\n\n"
                          + fmt_table(["proxy"] + [f"RPS, {n} w" for n in scaling]
                                      + [f"RPS({n})/RPS({base})" for n in scaling if n != base]
                                      + [f"CPU µs/req, {n} w" for n in scaling], rows)
                          + "\n\nEach worker count's layout is in its section above; with more workers than "
                          "the machine has cores to spare, the proxies share the load's CPU.")
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


def metric_sum(admin, prefix, containing):
    """Sum of the Prometheus samples whose line starts with `prefix` and contains `containing`."""
    text = http_get(admin, "/metrics").split(b"\r\n\r\n", 1)[-1].decode(errors="replace")
    total = 0.0
    for line in text.splitlines():
        if line.startswith(prefix) and containing in line:
            try:
                total += float(line.rsplit(None, 1)[1])
            except (ValueError, IndexError):
                pass
    return total


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
