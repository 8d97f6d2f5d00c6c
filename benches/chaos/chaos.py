#!/usr/bin/env python3
"""relay-edge under chaos: two edges on one Redis, relays that die, a Redis
that pauses and restarts, reloads, a graceful upgrade and a restart, all under
steady keyed load and long SSE streams. Every request and stream is accounted.

    python3 benches/chaos/chaos.py --bin PATH        # 600 s of chaos
    python3 benches/chaos/chaos.py --bin PATH --short  # CI: about 70-90 s, every kind of
                                                       # action; exit 1 if a goal is missed
    options: --duration S, --seed N, --out FILE.json, --relays N (4), --clients K (8),
             --streams S (4), --keys N (25 per client), --logs-dir DIR (/tmp/chaos-logs),
             --wait-bin S (wait that long for --bin to appear), --load-nice N (5)

Setup (all on 127.0.0.1, free ports, in a tempdir): a redis-server child; N
relays, each its own Python process (this file with --relay); edge A and edge
B, each with its own config, ports, pid_file and upgrade_sock.

Load: K keyed keep-alive clients (JSON POSTs of 2-4 KB, each with its own
session keys and a unique x-request-id) and S SSE streams of 60 events 500 ms
apart, restarted as they end. A client connects to a random edge and to the
other one when refused (an emulated L4 balancer); it reconnects after a
`Connection: close`, a non-2xx answer or any error.

Chaos, one action at a time with a few seconds between: SIGKILL a relay and
restart it, CLIENT PAUSE Redis, restart Redis, reload an edge with a changed
timeouts.connect (upstreams rebuilt), SIGUSR2 edge A (graceful upgrade),
SIGTERM and restart edge B.

Outcomes: pinned, moved (relay_killed, relay_ejected_after_kill, pin_lost:
Redis restarted without persistence after the only edge process that knew
the pin was gone),
moved_unexplained (a violation), failed (by cause, and whether a relay had
logged its x-request-id); streams complete, cut_relay_killed, cut (a
violation). Goals: no failed request that never reached a relay, no
unexplained move, no cut stream but those whose relay was killed, every
action completed, edge RSS and fds flat. See README.md.
"""

import argparse
import asyncio
import collections
import ctypes
import datetime
import errno
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from common.ports import free_port  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SSE_EVENTS, SSE_GAP_MS = 60, 500   # about 30 s (--short: 30 events, about 15 s)
HEALTH_LAG = 2.0           # s: an edge may still take a restarted relay for down
REQUEST_TIMEOUT = 30.0     # s: client socket timeout, far above any expected answer
STREAM_TIMEOUT = 20.0      # s: longest silence in a stream (events come every 0.5 s)
# server.grace_period of the edges, s. A drain answers the next request on
# each keep-alive connection that was busy when it began (with Connection:
# close), and a stream client's next request is a stream: the grace period
# must cover two streams in a row.
GRACE = 75
# How long an edge is out of the emulated balancer before its SIGTERM.
DEREGISTER_S = 0.5
RSS_SLACK_MIB, RSS_FACTOR, FD_SLACK = 16.0, 1.25, 16


def log(msg):
    print(f"chaos [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def die(msg, code=2):
    print(f"chaos: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


# ---------------------------------------------------------------- the relay

async def _read_body(reader, headers):
    if "chunked" in headers.get("transfer-encoding", "").lower():
        total = 0
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                return total
            await reader.readexactly(size + 2)
            total += size
    n = int(headers.get("content-length", "0") or 0)
    if n:
        await reader.readexactly(n)
    return n


def _sse_event(i, n, name, rid):
    if i == 0:
        kind = "message_start"
        data = {"type": kind, "message": {"id": f"msg_{rid}", "type": "message", "role": "assistant",
                                          "model": "chaos-relay", "upstream": name}}
    elif i == n - 1:
        kind = "message_stop"
        data = {"type": kind}
    else:
        kind = "content_block_delta"
        data = {"type": kind, "index": 0, "delta": {"type": "text_delta", "text": f"token {i} "}}
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def relay_serve(name, port, logfile):
    reqlog = open(logfile, "a")
    tag = f"x-upstream: {name}\r\n"

    def respond(writer, ctype, body, keep):
        writer.write((f"HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}\r\n{tag}"
                      + ("" if keep else "connection: close\r\n") + "\r\n").encode() + body)

    async def sse(writer, rid, n, gap, keep):
        n = max(n, 2)
        head = f"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n{tag}"
        head += "transfer-encoding: chunked\r\n" if keep else "connection: close\r\n"
        writer.write((head + "\r\n").encode())
        await writer.drain()
        for i in range(n):
            data = _sse_event(i, n, name, rid)
            writer.write(b"%x\r\n%s\r\n" % (len(data), data) if keep else data)
            await writer.drain()
            if i < n - 1:
                await asyncio.sleep(gap)
        if keep:
            writer.write(b"0\r\n\r\n")

    async def handle(reader, writer):
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 3:
                    return
                target, version = parts[1].decode("latin-1"), parts[2].decode("latin-1")
                headers = {}
                while True:
                    h = (await reader.readline()).rstrip(b"\r\n")
                    if not h:
                        break
                    k, _, v = h.partition(b":")
                    headers[k.strip().lower().decode("latin-1")] = v.strip().decode("latin-1")
                rid = headers.get("x-request-id")
                if rid:  # as soon as the head is read: the bench tells reached from not
                    reqlog.write(f"{rid}\t{headers.get('x-session-id', '-')}\t{time.time():.3f}\n")
                    reqlog.flush()
                size = await _read_body(reader, headers)
                keep = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
                path, _, query = target.partition("?")
                q = urllib.parse.parse_qs(query)
                if path == "/health":
                    respond(writer, "text/plain", b"ok\n", keep)
                elif "sse" in q:
                    await sse(writer, rid, int(q["sse"][0]), int(q.get("gap_ms", ["100"])[0]) / 1000, keep)
                else:
                    body = json.dumps({"upstream": name, "request_id": rid, "body_bytes": size}).encode()
                    respond(writer, "application/json", body, keep)
                await writer.drain()
                if not keep:
                    return
        except (OSError, asyncio.IncompleteReadError, ValueError, UnicodeError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, reuse_address=True, backlog=1024)
    async with server:
        await server.serve_forever()


# ---------------------------------------------------------------- small helpers

def port_accepts(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def http_req(port, method, path, body=None, timeout=3.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body)
        r = c.getresponse()
        return r.status, r.read()
    except (OSError, http.client.HTTPException):
        return None, b""
    finally:
        c.close()


def wait_until(cond, within, step=0.05):
    """Poll `cond` until it is true or `within` seconds have passed."""
    deadline = time.monotonic() + within
    while True:
        if cond():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


def redis_call(port, *args, timeout=3.0):
    parts = [a.encode() if isinstance(a, str) else a for a in args]
    payload = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(payload)
            return s.makefile("rb").readline().strip()
    except OSError:
        return None


def proc_stats(pid):
    """(VmRSS in KiB, open fds, CPU seconds) of a process, or None."""
    try:
        rss = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return rss, len(os.listdir(f"/proc/{pid}/fd")), cpu
    except (OSError, IndexError, ValueError):
        return None


def metric_value(text, name, label):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and label in line.split("}", 1)[0]:
            total += float(line.rsplit(" ", 1)[1])
    return total


def classify_exc(e):
    if isinstance(e, http.client.RemoteDisconnected):
        return "remote_disconnected"
    if isinstance(e, ConnectionResetError):
        return "reset"
    if isinstance(e, BrokenPipeError):
        return "broken_pipe"
    if isinstance(e, (TimeoutError, socket.timeout)):
        return "timeout"
    if isinstance(e, http.client.IncompleteRead):
        return "incomplete_read"
    if isinstance(e, ConnectionAbortedError):
        return "aborted"
    if isinstance(e, http.client.HTTPException):
        return "protocol:" + type(e).__name__
    if isinstance(e, OSError):
        return "oserror:" + errno.errorcode.get(e.errno or 0, str(e.errno))
    return "other:" + type(e).__name__


def error_type(body):
    try:
        return json.loads(body)["error"]["type"]
    except (ValueError, KeyError, TypeError):
        return "no_json_error"


def set_subreaper():
    """An upgraded edge's successor is a child of the old process; when that
    one exits, the successor becomes ours, so that we can reap and kill it."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def install_missing():
    need = [p for t, p in (("redis-server", "redis-server"), ("redis-cli", "redis-tools"))
            if shutil.which(t) is None]
    if not need:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    log(f"installing {' '.join(need)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True, timeout=600, env=env)
    subprocess.run(sudo + ["apt-get", "install", "-y", "-qq"] + need, check=True, timeout=600, env=env)


# ---------------------------------------------------------------- processes

class Children:
    """Every process this run started (and the successors an upgrade
    started), killed on exit."""

    def __init__(self):
        self.popens = {}          # pid -> Popen
        self.groups = set()       # process groups we created (start_new_session)
        self.extra = set()        # pids we did not start ourselves (upgrade successors)
        self.lock = threading.Lock()

    def spawn(self, cmd, logpath, cwd):
        out = open(logpath, "ab")
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             cwd=cwd, start_new_session=True)
        out.close()
        with self.lock:
            self.popens[p.pid] = p
            self.groups.add(p.pid)
        return p

    def adopt(self, pid):
        with self.lock:
            if pid not in self.popens:
                self.extra.add(pid)

    def alive(self, pid):
        with self.lock:
            p = self.popens.get(pid)
        if p is not None:
            return p.poll() is None
        try:  # our child once its parent is gone (subreaper): reap it
            r, _ = os.waitpid(pid, os.WNOHANG)
            if r == pid:
                return False
        except ChildProcessError:
            pass
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except (OSError, IndexError):
            return False

    def kill_all(self):
        with self.lock:
            pids = list(self.popens) + list(self.extra)
            groups = list(self.groups)
        for pid in pids:
            if self.alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        for g in groups:
            try:
                os.killpg(g, signal.SIGKILL)
            except OSError:
                pass
        for pid in pids:
            wait_until(lambda: not self.alive(pid), 3)


class Relay:
    def __init__(self, bench, idx):
        self.bench, self.name, self.port = bench, f"r{idx}", free_port()
        self.reqlog = os.path.join(bench.tmp, f"relay-{self.name}.requests")
        self.outlog = os.path.join(bench.tmp, f"relay-{self.name}.log")
        self.proc = None

    def start(self):
        self.proc = self.bench.children.spawn(
            [sys.executable, os.path.abspath(__file__), "--relay", self.name, str(self.port), self.reqlog],
            self.outlog, self.bench.tmp)
        ok = wait_until(lambda: self.proc.poll() is None and http_req(self.port, "GET", "/health", timeout=1)[0] == 200, 15)
        if not ok:
            raise RuntimeError(f"relay {self.name} did not answer /health on :{self.port}")

    def kill(self):
        self.proc.kill()
        self.proc.wait(10)


class Redis:
    def __init__(self, bench):
        self.bench, self.port, self.proc = bench, free_port(), None
        self.logpath = os.path.join(bench.tmp, "redis.log")

    def start(self):
        self.proc = self.bench.children.spawn(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], self.logpath, self.bench.tmp)
        if not wait_until(lambda: redis_call(self.port, "PING", timeout=1) == b"+PONG", 15):
            raise RuntimeError("redis-server did not answer PING")

    def kill(self):
        self.proc.kill()
        self.proc.wait(10)


class Edge:
    def __init__(self, bench, name):
        self.bench, self.name = bench, name
        self.port, self.admin = free_port(), free_port()
        t = bench.tmp
        self.conf = os.path.join(t, f"edge-{name}.yaml")
        self.pid_file = os.path.join(t, f"edge-{name}.pid")
        self.sock = os.path.join(t, f"edge-{name}.sock")
        self.logpath = os.path.join(t, f"edge-{name}.log")
        self.connect_s = 3
        self.pids = []            # every process of this edge, in order
        self.proc = None          # the one we started last

    def write_conf(self):
        ups = "\n".join(f"  - {{id: {r.name}, addr: 127.0.0.1:{r.port}}}" for r in self.bench.relays)
        text = f"""# edge {self.name}, written by benches/chaos/chaos.py
listen:
  - addr: 127.0.0.1:{self.port}
upstreams:
{ups}
health_check: {{path: /health, interval: 500ms}}
affinity:
  keys:
    - header: x-session-id
timeouts: {{connect: {self.connect_s}s}}
failover: {{max_retries: 2}}
redis: {{url: 'redis://127.0.0.1:{self.bench.redis.port}/0'}}
admin: {{listen: 127.0.0.1:{self.admin}}}
server:
  threads: 2
  grace_period: {GRACE}s
  pid_file: {self.pid_file}
  upgrade_sock: {self.sock}
  log_level: info
"""
        tmp = self.conf + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.conf)

    def read_pid(self):
        try:
            with open(self.pid_file) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def current_pid(self):
        pid = self.read_pid()
        if pid and self.bench.children.alive(pid):
            return pid
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def ready(self, pid):
        return (self.read_pid() == pid and http_req(self.admin, "GET", "/readyz", timeout=1)[0] == 200
                and port_accepts(self.port))

    def start(self):
        self.proc = self.bench.children.spawn([self.bench.binary, "-c", self.conf], self.logpath, self.bench.tmp)
        self.pids.append(self.proc.pid)
        pid = self.proc.pid
        if not wait_until(lambda: self.proc.poll() is not None or self.ready(pid), 30):
            raise RuntimeError(f"edge {self.name} not ready within 30 s")
        if self.proc.poll() is not None:
            raise RuntimeError(f"edge {self.name} exited with {self.proc.returncode}:\n{tail(self.logpath)}")

    def metrics(self):
        st, body = http_req(self.admin, "GET", "/metrics")
        return body.decode("utf-8", "replace") if st == 200 else None

    def reloads(self):
        text = self.metrics()
        if text is None:
            return None
        return (metric_value(text, "relay_edge_config_reloads_total", 'result="ok"'),
                metric_value(text, "relay_edge_config_reloads_total", 'result="error"'))

    def redis_connected(self):
        st, body = http_req(self.admin, "GET", "/api/stats")
        try:
            return st == 200 and json.loads(body)["redis"]["connected"] is True
        except (ValueError, KeyError, TypeError):
            return False


def tail(path, n=3000):
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - n))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


# ---------------------------------------------------------------- load

class Session:
    __slots__ = ("key", "relay", "last_start", "last_rid", "last_edge")

    def __init__(self, key):
        self.key, self.relay, self.last_start, self.last_rid, self.last_edge = key, None, None, None, None


class Conn:
    def __init__(self, bench, http_conn, edge):
        self.bench, self.http, self.edge, self.uses = bench, http_conn, edge, 0

    def close(self):
        if self.http is not None:
            self.http.close()
            self.http = None
            self.bench.conn_delta(self.edge, -1)


class Bench:
    def __init__(self, args):
        self.args = args
        self.short = args.short
        self.sse_events = 30 if args.short else SSE_EVENTS
        self.seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
        self.rng = random.Random(self.seed)
        self.tag = "%08x" % random.Random(self.seed ^ 0x5EED).getrandbits(32)
        self.binary = os.path.abspath(args.bin)
        self.tmp = tempfile.mkdtemp(prefix="relay-edge-chaos.")
        self.children = Children()
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        self.failures = []        # dicts
        self.moves = []           # dicts, classified at the end
        self.streams = []         # dicts of streams that got a 2xx head
        self.kills = []           # {relay, t_kill, t_up}
        self.actions = []         # {type, target, t_start, t_end, ok, detail}
        self.deregistered = set()  # edges the emulated balancer sends no new connection to
        self.samples = []         # {t, edge, pid, rss_kib, fds, conns}
        self.open_conns = collections.Counter()
        self.bench_errors = []
        self.stop_load = threading.Event()
        self.stop_streams = threading.Event()
        self.stop_sampler = threading.Event()
        self.first_stream_event = set()
        self.sessions = []
        self.threads = []
        self.cleaned = False
        self.cleanup_lock = threading.Lock()

    # ------------------------------------------------------------ accounting

    def count(self, *names):
        with self.lock:
            for n in names:
                self.counts[n] += 1

    def conn_delta(self, edge, d):
        with self.lock:
            self.open_conns[edge] += d

    def connect(self, rng, timeout, stop):
        """An emulated L4 balancer: a random edge, the other one if refused.
        A refused connect sent nothing: it is not a failure."""
        edges = list(self.edges)
        rng.shuffle(edges)
        # An edge being taken out (deregistered first, as an operator does
        # behind a balancer) gets no new connection while another edge is up.
        edges.sort(key=lambda e: e.name in self.deregistered)
        deadline = time.monotonic() + 120
        both_refused_since = None
        while not stop.is_set():
            for e in edges:
                c = http.client.HTTPConnection("127.0.0.1", e.port, timeout=timeout)
                c.auto_open = 0   # never reconnect behind our back
                try:
                    c.connect()
                except ConnectionRefusedError:
                    self.count(f"connect_refused.{e.name}")
                    continue
                except OSError as ex:
                    self.count(f"connect_error.{e.name}.{classify_exc(ex)}")
                    continue
                self.count(f"connects.{e.name}")
                self.conn_delta(e.name, 1)
                if both_refused_since is not None:
                    with self.lock:
                        self.counts["both_edges_refused"] += 1
                        self.counts["both_edges_refused_ms"] += int((time.monotonic() - both_refused_since) * 1000)
                return Conn(self, c, e.name)
            if both_refused_since is None:
                both_refused_since = time.monotonic()
            if time.monotonic() > deadline:
                self.bench_error("no edge accepted a connection for 120 s")
                return None
            time.sleep(0.02)   # retry interval while neither edge listens
        return None

    def bench_error(self, msg):
        with self.lock:
            self.bench_errors.append(msg)
        log(f"BENCH ERROR: {msg}")

    def fail(self, kind, rid, key, conn, cause, detail, phase, t0, pinned=None):
        rec = {"kind": kind, "rid": rid, "key": key, "edge": conn.edge if conn else None, "pinned": pinned,
               "fresh_conn": bool(conn and conn.uses == 0), "conn_uses": conn.uses if conn else 0,
               "cause": cause, "detail": detail, "phase": phase, "t0": t0, "t1": time.time()}
        with self.lock:
            self.failures.append(rec)
            self.counts[f"{kind}.failed"] += 1

    def served(self, kind, s, upstream, edge, t0, t1, rid):
        """A 2xx answer: pinned, or a move to classify at the end."""
        if s.relay is None or s.relay == upstream:
            self.count(f"{kind}.pinned")
        else:
            with self.lock:
                self.moves.append({"kind": kind, "key": s.key, "from": s.relay, "to": upstream, "edge": edge,
                                   "since": s.last_start, "t0": t0, "t1": t1, "rid": rid, "prev_rid": s.last_rid,
                                   "prev_edge": s.last_edge})
        s.relay, s.last_start, s.last_rid, s.last_edge = upstream, t0, rid, edge

    def lower_priority(self):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.args.load_nice)
        except (OSError, AttributeError):
            pass

    def client_loop(self, idx):
        self.lower_priority()
        rng = random.Random(self.seed * 7919 + idx)
        sessions = [Session(f"{self.tag}-c{idx}-k{j}") for j in range(self.args.keys)]
        with self.lock:
            self.sessions.extend(sessions)
        bodies = []
        for j in range(8):
            filler = "".join(rng.choice("abcdefghij klmnop") for _ in range(rng.randint(2000, 4000)))
            bodies.append(json.dumps({"model": "chaos", "max_tokens": 16, "stream": False,
                                      "messages": [{"role": "user", "content": filler}]}).encode())
        conn, n = None, 0
        try:
            while not self.stop_load.is_set():
                if conn is None:
                    conn = self.connect(rng, REQUEST_TIMEOUT, self.stop_load)
                    if conn is None:
                        break
                s = rng.choice(sessions)
                n += 1
                rid = f"{self.tag}-c{idx}-{n}"
                body = rng.choice(bodies)
                t0, phase = time.time(), "send"
                self.count("requests.total")
                try:
                    conn.http.request("POST", "/v1/messages", body=body, headers={
                        "content-type": "application/json", "x-session-id": s.key, "x-request-id": rid})
                    phase = "head"
                    resp = conn.http.getresponse()
                    phase = "body"
                    data = resp.read()
                except (OSError, http.client.HTTPException) as e:
                    self.fail("requests", rid, s.key, conn, classify_exc(e), repr(e)[:200], phase, t0, s.relay)
                    conn.close()
                    conn = None
                    continue
                conn.uses += 1
                t1 = time.time()
                up = resp.getheader("x-upstream")
                if 200 <= resp.status < 300 and up:
                    self.served("requests", s, up, conn.edge, t0, t1, rid)
                    if resp.will_close:
                        self.count(f"connection_close.{conn.edge}")
                        conn.close()
                        conn = None
                else:
                    cause = f"http_{resp.status}:{error_type(data)}" if resp.status >= 300 else "2xx_without_x_upstream"
                    self.fail("requests", rid, s.key, conn, cause, data[:200].decode("utf-8", "replace"), "answer", t0, s.relay)
                    conn.close()
                    conn = None
        except Exception as e:  # a bug of ours, never the edge's: counted apart
            self.bench_error(f"client {idx}: {e!r}")
        finally:
            if conn:
                conn.close()

    def stream_loop(self, idx):
        self.lower_priority()
        rng = random.Random(self.seed * 104729 + idx)
        sessions = [Session(f"{self.tag}-s{idx}-k{j}") for j in range(3)]
        with self.lock:
            self.sessions.extend(sessions)
        conn, n = None, 0
        try:
            while not self.stop_streams.is_set():
                if conn is None:
                    conn = self.connect(rng, STREAM_TIMEOUT, self.stop_streams)
                    if conn is None:
                        break
                s = sessions[n % len(sessions)]
                n += 1
                rid = f"{self.tag}-s{idx}-{n}"
                t0, phase = time.time(), "send"
                self.count("streams.total")
                try:
                    conn.http.request("GET", f"/v1/messages?sse={self.sse_events}&gap_ms={SSE_GAP_MS}", headers={
                        "accept": "text/event-stream", "x-session-id": s.key, "x-request-id": rid})
                    phase = "head"
                    resp = conn.http.getresponse()
                except (OSError, http.client.HTTPException) as e:
                    self.fail("streams", rid, s.key, conn, classify_exc(e), repr(e)[:200], phase, t0, s.relay)
                    conn.close()
                    conn = None
                    continue
                conn.uses += 1
                up = resp.getheader("x-upstream")
                if not (200 <= resp.status < 300 and up):
                    try:
                        data = resp.read()
                    except (OSError, http.client.HTTPException):
                        data = b""
                    cause = f"http_{resp.status}:{error_type(data)}" if resp.status >= 300 else "2xx_without_x_upstream"
                    self.fail("streams", rid, s.key, conn, cause, data[:200].decode("utf-8", "replace"), "answer", t0, s.relay)
                    conn.close()
                    conn = None
                    continue
                t_head = time.time()
                self.served("streams", s, up, conn.edge, t0, t_head, rid)
                events, kinds, stop, cause, broken = 0, [], False, None, False
                try:
                    while True:
                        line = resp.readline()
                        if not line:
                            cause = "eof"
                            break
                        if line.startswith(b"event: "):
                            events += 1
                            kind = line[7:].strip().decode("latin-1")
                            if not kinds or kinds[-1] != kind:
                                kinds.append(kind)
                            if events == 1:
                                with self.lock:
                                    self.first_stream_event.add(idx)
                            if kind == "message_stop":
                                stop = True
                                break
                    if stop:
                        resp.read()   # the last chunk, so that the connection can be reused
                except (OSError, http.client.HTTPException) as e:
                    cause, broken = classify_exc(e), True
                t_end = time.time()
                ok_shape = (stop and events == self.sse_events and kinds[:1] == ["message_start"])
                rec = {"rid": rid, "key": s.key, "edge": conn.edge, "relay": up, "t0": t0, "t_head": t_head,
                       "t_end": t_end, "events": events, "stopped": stop, "cause": cause,
                       "complete": ok_shape}
                if stop and not ok_shape:
                    rec["cause"] = f"events_missing ({events} of {self.sse_events}, kinds {kinds})"
                with self.lock:
                    self.streams.append(rec)
                if not ok_shape or broken or resp.will_close:
                    conn.close()
                    conn = None
        except Exception as e:
            self.bench_error(f"stream {idx}: {e!r}")
        finally:
            if conn:
                conn.close()

    def sampler(self):
        while not self.stop_sampler.wait(5):
            self.sample_edges("periodic")

    def sample_edges(self, label):
        out = {}
        for e in self.edges:
            pid = e.current_pid()
            st = proc_stats(pid) if pid else None
            if st is None:
                continue
            with self.lock:
                conns = self.open_conns[e.name]
            rec = {"t": time.time(), "label": label, "edge": e.name, "pid": pid, "rss_kib": st[0],
                   "fds": st[1], "cpu_s": st[2], "bench_conns": conns}
            with self.lock:
                self.samples.append(rec)
            out[e.name] = rec
        return out

    # ------------------------------------------------------------ chaos

    def action(self, kind, target, fn, *fn_args):
        rec = {"type": kind, "target": target, "t_start": time.time(), "t_end": None, "ok": False, "detail": {}}
        self.actions.append(rec)
        log(f"action {len(self.actions)}: {kind} {target or ''}".rstrip())
        try:
            err = fn(rec["detail"], *fn_args)
            rec["ok"] = err is None
            if err:
                rec["detail"]["error"] = err
                log(f"  ACTION FAILED: {err}")
        except Exception as e:
            rec["detail"]["error"] = f"bench: {e!r}"
            self.bench_error(f"action {kind}: {e!r}")
        rec["t_end"] = time.time()
        return rec

    def kill_relay(self, d):
        r = self.rng.choice(self.relays)
        self.actions[-1]["target"] = r.name
        k = {"relay": r.name, "t_kill": time.time(), "t_up": None}
        with self.lock:
            self.kills.append(k)
        r.kill()
        down = self.rng.uniform(2.0, 5.0)
        d["down_s"] = round(down, 2)
        time.sleep(down)       # the outage itself, not a wait for a condition
        r.start()
        k["t_up"] = time.time()
        return None

    def redis_pause(self, d):
        reply = redis_call(self.redis.port, "CLIENT", "PAUSE", "2000", "ALL")
        if reply != b"+OK":
            return f"CLIENT PAUSE answered {reply!r}"
        t = time.monotonic()
        if not wait_until(lambda: redis_call(self.redis.port, "PING", timeout=5) == b"+PONG", 15):
            return "redis did not answer PING after the pause"
        d["paused_s"] = round(time.monotonic() - t, 2)
        return None

    def redis_restart(self, d):
        self.redis.kill()
        self.redis.start()
        t = time.monotonic()
        ok = {}
        for e in self.edges:
            ok[e.name] = wait_until(e.redis_connected, 20, step=0.1)
        d["edges_report_connected_after_s"] = round(time.monotonic() - t, 2)
        d["edges_report_connected"] = ok
        if not all(ok.values()):
            return f"an edge did not report redis connected within 20 s: {ok}"
        return None

    def reload_edge(self, d, target=None):
        e = next((x for x in self.edges if x.name == target), None) or self.rng.choice(self.edges)
        self.actions[-1]["target"] = e.name
        before = e.reloads()
        if before is None:
            return "no /metrics before the reload"
        e.connect_s = 4 if e.connect_s == 3 else 3
        e.write_conf()
        d["connect_s"] = e.connect_s
        if self.rng.random() < 0.25:
            d["via"] = "POST /api/reload"
            st, body = http_req(e.admin, "POST", "/api/reload", timeout=10)
            if st != 200:
                return f"POST /api/reload answered {st}: {body[:300]!r}"
            try:
                d["report"] = json.loads(body)
            except ValueError:
                pass
        else:
            d["via"] = "SIGHUP"
            pid = e.current_pid()
            if not pid:
                return "no live pid"
            os.kill(pid, signal.SIGHUP)
        after = [None]

        def counted():
            after[0] = e.reloads()
            return after[0] is not None and (after[0][0] > before[0] or after[0][1] > before[1])

        if not wait_until(counted, 10, step=0.1):
            return "relay_edge_config_reloads_total did not move within 10 s"
        if after[0][1] > before[1]:
            return "the reload was rejected (result=\"error\")"
        return None

    def upgrade_a(self, d):
        e = self.edges[0]
        old = e.current_pid()
        if not old:
            return "edge A has no live process"
        d["old_pid"] = old
        t = time.monotonic()
        os.kill(old, signal.SIGUSR2)
        new = [None]

        def handed_over():
            pid = e.read_pid()
            if pid and pid != old and self.children.alive(pid):
                new[0] = pid
                return True
            return False

        if not wait_until(handed_over, 40):
            return f"the pid file did not name a new live process within 40 s:\n{tail(e.logpath, 1500)}"
        self.children.adopt(new[0])
        e.pids.append(new[0])
        d["new_pid"], d["handover_s"] = new[0], round(time.monotonic() - t, 2)
        if not wait_until(lambda: not self.children.alive(old), GRACE + 20):
            return f"the old process {old} did not exit within {GRACE + 20} s"
        d["old_exit_s"] = round(time.monotonic() - t, 2)
        if not wait_until(lambda: e.ready(new[0]), 10):
            return "the new process is not ready"
        return None

    def restart_b(self, d):
        """As an operator restarts an edge behind a balancer: take it out of
        the balancer (no new connections; a connection in the listen queue
        when the listener closes is reset, by nginx as by Pingora), wait
        DEREGISTER_S, SIGTERM, wait for the drain, start it, put it back."""
        e = self.edges[1]
        pid = e.current_pid()
        if not pid:
            return "edge B has no live process"
        self.deregistered.add(e.name)
        try:
            return self._restart_b(e, pid, d)
        finally:
            self.deregistered.discard(e.name)

    def _restart_b(self, e, pid, d):
        time.sleep(DEREGISTER_S)
        t = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        if not wait_until(lambda: not self.children.alive(pid), GRACE + 20):
            return f"edge B ({pid}) did not exit within {GRACE + 20} s of SIGTERM"
        d["exit_s"] = round(time.monotonic() - t, 2)
        d["exit_code"] = e.proc.returncode if e.proc.pid == pid else None
        e.start()
        d["restart_s"] = round(time.monotonic() - t, 2)
        return None

    ACTIONS = {"kill_relay": (3.0, "kill_relay"), "redis_pause": (2.0, "redis_pause"),
               "redis_restart": (1.0, "redis_restart"), "reload_edge": (2.0, "reload_edge"),
               "upgrade_edge_a": (1.5, "upgrade_a"), "restart_edge_b": (1.5, "restart_b")}

    def run_action(self, kind, target=None):
        fn = getattr(self, self.ACTIONS[kind][1])
        fixed = {"upgrade_edge_a": "A", "restart_edge_b": "B", "redis_pause": "redis",
                 "redis_restart": "redis"}.get(kind)
        if kind == "reload_edge":
            return self.action(kind, target, fn, target)
        return self.action(kind, fixed, fn)

    # --short: every kind once, each edge's lifecycle action right after a
    # reload of that edge (streams opened before a reload are then still open).
    SHORT_PLAN = [("kill_relay", None), ("redis_pause", None), ("reload_edge", "B"), ("restart_edge_b", None),
                  ("redis_restart", None), ("reload_edge", "A"), ("upgrade_edge_a", None), ("kill_relay", None)]

    def chaos(self, until):
        """--short: the plan first, whatever the window; then (both modes)
        random actions until the window is over."""
        plan = list(self.SHORT_PLAN) if self.short else []
        kinds = list(self.ACTIONS)
        weights = [self.ACTIONS[k][0] for k in kinds]
        while plan or time.time() < until:
            gap = self.rng.uniform(1.5, 3.0) if self.short else self.rng.uniform(3.0, 8.0)
            if not plan and time.time() + gap >= until:
                break
            time.sleep(gap)    # chaos timing: the quiet between two actions
            if plan:
                self.run_action(*plan.pop(0))
            else:
                self.run_action(self.rng.choices(kinds, weights)[0])

    # ------------------------------------------------------------ run

    def cleanup(self):
        with self.cleanup_lock:
            if self.cleaned:
                return
            self.cleaned = True
        self.stop_load.set()
        self.stop_streams.set()
        self.stop_sampler.set()
        self.children.kill_all()

    def run(self):
        args = self.args
        os.chmod(self.tmp, 0o755)
        log(f"seed {self.seed}, tempdir {self.tmp}, binary {self.binary}")
        self.redis = Redis(self)
        self.redis.start()
        self.relays = [Relay(self, i) for i in range(args.relays)]
        for r in self.relays:
            r.start()
        self.edges = [Edge(self, "A"), Edge(self, "B")]
        for e in self.edges:
            e.write_conf()
            chk = subprocess.run([self.binary, "-c", e.conf, "--check"], capture_output=True, text=True, timeout=60)
            if chk.returncode != 0:
                raise RuntimeError(f"--check rejected {e.conf}:\n{chk.stdout}{chk.stderr}")
        for e in self.edges:
            e.start()
        log(f"edges up: A :{self.edges[0].port} (admin {self.edges[0].admin}), "
            f"B :{self.edges[1].port} (admin {self.edges[1].admin}); relays "
            + " ".join(f"{r.name}:{r.port}" for r in self.relays))

        for i in range(args.clients):
            self.threads.append(threading.Thread(target=self.client_loop, args=(i,), name=f"client-{i}", daemon=True))
        for i in range(args.streams):
            self.threads.append(threading.Thread(target=self.stream_loop, args=(i,), name=f"stream-{i}", daemon=True))
        for t in self.threads:
            t.start()

        # Warm-up: every key pinned and every stream flowing, then at least 5 s.
        t_warm = time.monotonic()
        total_keys = args.clients * args.keys

        def warm():
            with self.lock:
                pinned = self.counts["requests.pinned"]
                streaming = len(self.first_stream_event)
            return pinned >= total_keys * 2 and streaming >= args.streams

        if not wait_until(warm, 60, step=0.1):
            log("warning: warm-up did not reach every key and stream within 60 s")
        rest = 5 - (time.monotonic() - t_warm)
        if rest > 0:
            time.sleep(rest)    # minimum warm-up period
        start = self.sample_edges("start")
        sampler = threading.Thread(target=self.sampler, name="sampler", daemon=True)
        sampler.start()
        with self.lock:
            warm_counts = dict(self.counts)

        t_chaos = time.time()
        log(f"warm ({time.monotonic() - t_warm:.1f} s); chaos for {args.duration} s")
        self.chaos(t_chaos + args.duration)
        t_chaos_end = time.time()
        # Quiet: settle, then the end figures under the same load as the start ones.
        time.sleep(5)
        end = self.sample_edges("end")
        log("chaos over; stopping the load (open streams may finish)")
        self.stop_load.set()
        self.stop_streams.set()
        deadline = time.monotonic() + self.sse_events * SSE_GAP_MS / 1000 + 15
        for t in self.threads:
            t.join(max(0.1, deadline - time.monotonic()))
        stuck = [t.name for t in self.threads if t.is_alive()]
        self.stop_sampler.set()
        self.pins = self.probe_pins() if not stuck else {}
        t_done = time.time()
        return self.report(start, end, t_chaos, t_chaos_end, t_done, stuck, warm_counts)

    def cpu_summary(self):
        """CPU use of each edge process between its samples, and of this script."""
        out = {}
        for e in self.edges:
            per = {}
            for smp in self.samples:
                if smp["edge"] == e.name:
                    per.setdefault(smp["pid"], []).append(smp)
            busy = sum(v[-1]["cpu_s"] - v[0]["cpu_s"] for v in per.values())
            span = sum(v[-1]["t"] - v[0]["t"] for v in per.values())
            out[f"edge_{e.name}_cores"] = round(busy / span, 2) if span > 0 else None
        t = os.times()
        out["bench_process_cpu_s"] = round(t.user + t.system, 1)
        out["loadavg"] = os.getloadavg()
        return out

    def probe_pins(self):
        """Diagnostic: what each edge's /api/sessions/{key} says about every
        session, against the relay that served its last request."""
        out = {"sessions": 0, "agree": 0, "mismatch": collections.Counter(), "examples": []}
        for s in self.sessions:
            if s.relay is None:
                continue
            out["sessions"] += 1
            seen = {}
            for e in self.edges:
                st, body = http_req(e.admin, "GET", "/api/sessions/" + urllib.parse.quote(s.key, safe=""))
                try:
                    seen[e.name] = json.loads(body).get("upstream") if st == 200 else f"http {st}"
                except ValueError:
                    seen[e.name] = "bad json"
            if all(v == s.relay for v in seen.values()):
                out["agree"] += 1
            else:
                which = "+".join(n for n, v in seen.items() if v != s.relay)
                out["mismatch"][f"edge {which} names another relay"] += 1
                if len(out["examples"]) < 20:
                    out["examples"].append({"key": s.key, "last_served_by": s.relay, "edges_say": seen})
        out["mismatch"] = dict(out["mismatch"])
        return out

    # ------------------------------------------------------------ the report

    def edge_events(self):
        """Ejections and health flips from each edge's log, and a digest of
        its warnings and errors."""
        pat = re.compile(r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z\s+(\w+)\s+([^\]]*)\]\s?(.*)$")
        eject = re.compile(r"upstream (\S+) ejected for ([\d.]+)(ns|µs|us|ms|s|m)\b")
        unhealthy = re.compile(r"upstream (\S+) failed \d+ health checks in a row")
        healthy = re.compile(r"upstream (\S+) is healthy again")
        redis_down = re.compile(r"redis \S+ failed \(|redis unreachable|redis connect timed out")
        redis_up = re.compile(r"redis is reachable")
        scale = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
        out = {}
        for e in self.edges:
            ev = {"ejections": [], "unhealthy": [], "healthy": [], "redis_degraded": [],
                  "digest": collections.Counter()}
            try:
                lines = open(e.logpath, encoding="utf-8", errors="replace").read().splitlines()
            except OSError:
                lines = []
            for line in lines:
                m = pat.match(line)
                if not m:
                    continue
                ts = datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc).timestamp()
                level, msg = m.group(2), m.group(4)
                if (g := eject.search(msg)):
                    ev["ejections"].append({"relay": g.group(1), "t": ts, "dur": float(g.group(2)) * scale[g.group(3)]})
                elif (g := unhealthy.search(msg)):
                    ev["unhealthy"].append({"relay": g.group(1), "t": ts})
                elif (g := healthy.search(msg)):
                    ev["healthy"].append({"relay": g.group(1), "t": ts})
                elif redis_down.search(msg):
                    if not ev["redis_degraded"] or ev["redis_degraded"][-1][1] is not None:
                        ev["redis_degraded"].append([ts, None])
                elif redis_up.search(msg) and ev["redis_degraded"] and ev["redis_degraded"][-1][1] is None:
                    ev["redis_degraded"][-1][1] = ts + 1   # log times are whole seconds
                if level in ("WARN", "ERROR"):
                    norm = re.sub(r"\b[0-9a-f]{16,}\b", "<hex>", msg)
                    norm = re.sub(r"\d+(\.\d+)?", "#", norm)
                    ev["digest"][f"{level} {norm[:160]}"] += 1
            out[e.name] = ev
        return out

    def context(self, t0, t1):
        """The chaos action a moment belongs to: the last one that started
        before t1 and ended less than 5 s before t0."""
        best = None
        for a in self.actions:
            if a["t_start"] - 0.5 <= t1 and (a["t_end"] or t1) + 5 >= t0:
                best = a
        return f"{best['type']}" if best else "no_action"

    def pin_lost(self, m):
        """No one held the pin any more: the edge process that served the
        session's previous request (a draining one included) had exited
        before Redis restarted, and this Redis runs without persistence, so
        its data went with it. Redis with AOF would have kept it."""
        def old_exit(a):
            d = a.get("detail") or {}
            return a["t_start"] + d.get("exit_s", d.get("old_exit_s", a["t_end"] - a["t_start"]))
        exits = [old_exit(a) for a in self.actions
                 if a["type"] in ("restart_edge_b", "upgrade_edge_a") and a["target"] == m["prev_edge"]
                 and a["t_start"] - 1 <= m["t1"] and m["since"] < old_exit(a)]
        return any(r["type"] == "redis_restart" and any(e <= r["t_start"] for e in exits)
                   and m["since"] < r["t_start"] <= m["t1"] for r in self.actions)

    def killed_between(self, relay, t0, t1):
        return any(k["relay"] == relay and t0 <= k["t_kill"] <= t1 for k in self.kills)

    def down_during(self, relay, since, t1):
        return any(k["relay"] == relay and k["t_kill"] <= t1 and
                   (k["t_up"] is None or k["t_up"] + HEALTH_LAG >= since) for k in self.kills)

    def report(self, start, end, t_chaos, t_chaos_end, t_done, stuck, warm_counts):
        # Which failed requests had reached a relay (and which relay), and
        # whether a request reached relays more than once.
        failed_rids = {f["rid"]: f for f in self.failures}
        move_rids = {m["rid"] for m in self.moves} | {m["prev_rid"] for m in self.moves}
        logged_at = {}
        reached = {}
        seen, dup = set(), 0
        logged = 0
        for r in self.relays:
            try:
                with open(r.reqlog) as f:
                    for line in f:
                        rid = line.split("\t", 1)[0].rstrip("\n")
                        logged += 1
                        if rid in move_rids:
                            logged_at.setdefault(rid, []).append(r.name)
                        if rid in seen:
                            dup += 1
                        else:
                            seen.add(rid)
                        if rid in failed_rids:
                            reached.setdefault(rid, []).append(r.name)
            except OSError:
                pass
        del seen
        events = self.edge_events()

        # Failures.
        by_cause = collections.defaultdict(lambda: collections.Counter())
        by_context = collections.Counter()
        never = []
        for f in self.failures:
            f["reached_relay"] = reached.get(f["rid"], [])
            f["context"] = self.context(f["t0"], f["t1"])
            f["relay_killed_during"] = any(self.killed_between(r, f["t0"] - 0.5, f["t1"] + 0.5)
                                           for r in f["reached_relay"])
            f["a_relay_was_killed_then"] = any(t["t_kill"] - 0.5 <= f["t1"] and f["t0"] <= t["t_kill"] + 0.5
                                               for t in self.kills)
            # The edge's 502 when the session's own relay was killed at that
            # very moment, on a connection that ended with a FIN and no answer:
            # either the relay had read the whole request and died before it
            # wrote its log line, or the relay's FIN crossed the request on a
            # pooled connection. The edge cannot tell which, so a POST is not
            # run again (README: failover); counted apart, not as a violation.
            f["lost_with_killed_relay"] = (not f["reached_relay"] and f["cause"].startswith("http_502")
                                          and f.get("pinned") is not None
                                          and self.killed_between(f["pinned"], f["t0"] - 0.5, f["t1"] + 0.5))
            where = ("reached_relay" if f["reached_relay"]
                     else "lost_with_killed_relay" if f["lost_with_killed_relay"]
                     else "never_reached_relay")
            by_cause[f["cause"]][where] += 1
            by_context[f"{where} / {f['cause']} / {f['context']}"
                       + (" / at the moment of a relay kill" if f["a_relay_was_killed_then"] else "")] += 1
            if where == "never_reached_relay":
                never.append(f)

        # Moves.
        moves = collections.Counter()
        unexplained = []
        for m in self.moves:
            reason = None
            if self.down_during(m["from"], m["since"], m["t1"]):
                reason = "relay_killed"
            else:
                for ej in events.get(m["edge"], {}).get("ejections", []):
                    if ej["relay"] == m["from"] and ej["t"] - 1 <= m["t1"] <= ej["t"] + ej["dur"] + 2 and any(
                            k["relay"] == m["from"] and k["t_kill"] - 2 <= ej["t"] <= (k["t_up"] or 1e18) + 3
                            for k in self.kills):
                        reason = "relay_ejected_after_kill"
                        break
            if not reason and self.pin_lost(m):
                reason = "pin_lost"
            if reason:
                moves[f"{m['kind']}.moved.{reason}"] += 1
                continue
            moves[f"{m['kind']}.moved_unexplained"] += 1
            # Cross-check with the relays' own logs, not the x-upstream header.
            m["relay_logs_agree"] = (logged_at.get(m["prev_rid"]) == [m["from"]] and logged_at.get(m["rid"]) == [m["to"]])
            m["context"] = self.context(m["since"], m["t0"])
            m["edge_marked_from_unhealthy"] = any(
                u["relay"] == m["from"] and m["since"] - 2 <= u["t"] <= m["t1"] + 1
                for u in events.get(m["edge"], {}).get("unhealthy", []))
            m["edge_redis_degraded"] = any(a - 1 <= m["t1"] and m["since"] <= (b or 1e18) + 1
                                           for a, b in events.get(m["edge"], {}).get("redis_degraded", []))
            m["redis_restarted_since"] = any(a["type"] == "redis_restart" and m["since"] <= a["t_end"] and a["t_start"] <= m["t1"]
                                             for a in self.actions)
            m["prev_edge_process_gone"] = any(
                a["type"] in ("restart_edge_b", "upgrade_edge_a") and a["target"] == m["prev_edge"]
                and m["since"] <= a["t_end"] and a["t_start"] <= m["t1"] for a in self.actions)
            unexplained.append(m)

        # Streams.
        st = collections.Counter()
        cut = []
        for s in self.streams:
            if s["complete"]:
                st["complete"] += 1
            elif s["stopped"]:
                st["cut"] += 1   # message_stop, but events missing
                s["context"] = self.context(s["t0"], s["t_end"])
                cut.append(s)
            elif self.killed_between(s["relay"], s["t0"], s["t_end"] + 0.5):
                st["cut_relay_killed"] += 1
            else:
                st["cut"] += 1
                s["context"] = self.context(s["t0"], s["t_end"])
                cut.append(s)
        unfinished = self.counts["streams.total"] - len(self.streams) - self.counts["streams.failed"]

        # Spurious health flips: an edge took a relay for down while it was up.
        spurious = []
        for name, ev in events.items():
            for u in ev["unhealthy"]:
                if not any(k["relay"] == u["relay"] and k["t_kill"] - 1 <= u["t"] <= (k["t_up"] or 1e18) + 3
                           for k in self.kills):
                    spurious.append({"edge": name, "relay": u["relay"], "t": u["t"]})

        # RSS and fds.
        mem = {}
        flat = True
        for e in self.edges:
            a, b = start.get(e.name), end.get(e.name)
            row = {"start": a, "end": b}
            if a and b:
                rss_ok = b["rss_kib"] / 1024 <= max(a["rss_kib"] / 1024 * RSS_FACTOR, a["rss_kib"] / 1024 + RSS_SLACK_MIB)
                fd_a, fd_b = a["fds"] - a["bench_conns"], b["fds"] - b["bench_conns"]
                fds_ok = fd_b <= fd_a + FD_SLACK
                row.update({"rss_start_mib": round(a["rss_kib"] / 1024, 1), "rss_end_mib": round(b["rss_kib"] / 1024, 1),
                            "fds_start": a["fds"], "fds_end": b["fds"],
                            "fds_start_less_bench_conns": fd_a, "fds_end_less_bench_conns": fd_b,
                            "same_process": a["pid"] == b["pid"], "rss_flat": rss_ok, "fds_flat": fds_ok})
                flat &= rss_ok and fds_ok
            else:
                flat = False
                row["error"] = "no sample"
            # Growth within each process's own lifetime (diagnostic).
            per_pid = {}
            for smp in self.samples:
                if smp["edge"] == e.name:
                    per_pid.setdefault(smp["pid"], []).append(smp)
            longest = max(per_pid.values(), key=lambda v: v[-1]["t"] - v[0]["t"], default=None)
            if longest and longest[-1]["t"] - longest[0]["t"] >= 30:
                span = longest[-1]["t"] - longest[0]["t"]
                row["longest_process"] = {
                    "pid": longest[0]["pid"], "seconds": round(span, 1),
                    "rss_mib": [round(longest[0]["rss_kib"] / 1024, 1), round(longest[-1]["rss_kib"] / 1024, 1)],
                    "rss_mib_per_min": round((longest[-1]["rss_kib"] - longest[0]["rss_kib"]) / 1024 / span * 60, 2),
                    "fds": [longest[0]["fds"], longest[-1]["fds"]]}
            row["per_process"] = [{"pid": pid, "samples": len(v), "seconds": round(v[-1]["t"] - v[0]["t"], 1),
                                   "rss_first_mib": round(v[0]["rss_kib"] / 1024, 1),
                                   "rss_last_mib": round(v[-1]["rss_kib"] / 1024, 1),
                                   "rss_max_mib": round(max(x["rss_kib"] for x in v) / 1024, 1),
                                   "fds_first": v[0]["fds"], "fds_last": v[-1]["fds"],
                                   "fds_max": max(x["fds"] for x in v)} for pid, v in per_pid.items()]
            mem[e.name] = row

        per_action = {}
        for a in self.actions:
            pa = per_action.setdefault(a["type"], {"count": 0, "ok": 0, "failed": 0, "seconds": []})
            pa["count"] += 1
            pa["ok" if a["ok"] else "failed"] += 1
            pa["seconds"].append(round(a["t_end"] - a["t_start"], 2))
        for pa in per_action.values():
            s = sorted(pa.pop("seconds"))
            pa["seconds_median"], pa["seconds_max"] = s[len(s) // 2], s[-1]

        c = self.counts
        req = {"total": c["requests.total"], "pinned": c["requests.pinned"],
               "moved": {"relay_killed": moves["requests.moved.relay_killed"],
                         "relay_ejected_after_kill": moves["requests.moved.relay_ejected_after_kill"],
                         "pin_lost": moves["requests.moved.pin_lost"]},
               "moved_unexplained": moves["requests.moved_unexplained"], "failed": c["requests.failed"]}
        strm = {"total": c["streams.total"], "pinned": c["streams.pinned"],
                "moved": {"relay_killed": moves["streams.moved.relay_killed"],
                          "relay_ejected_after_kill": moves["streams.moved.relay_ejected_after_kill"],
                          "pin_lost": moves["streams.moved.pin_lost"]},
                "moved_unexplained": moves["streams.moved_unexplained"], "failed": c["streams.failed"],
                "complete": st["complete"], "cut_relay_killed": st["cut_relay_killed"], "cut": st["cut"],
                "unfinished_at_end": unfinished}
        never_n = len(never)
        coverage = {k: per_action.get(k, {}).get("count", 0) for k in self.ACTIONS}
        goals = {
            "no_failed_never_reached_relay": never_n == 0,
            "no_moved_unexplained": req["moved_unexplained"] + strm["moved_unexplained"] == 0,
            "no_cut_streams_but_relay_killed": strm["cut"] == 0,
            "edges_rss_and_fds_flat": flat,
            "every_action_completed": all(a["ok"] for a in self.actions),
            "every_action_kind_ran": all(coverage.values()) if self.short else True,
            "bench_sane": not self.bench_errors and not stuck and req["total"] > 0,
        }
        result = {
            "binary": self.binary, "seed": self.seed, "short": self.short, "tag": self.tag,
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
            "started": datetime.datetime.fromtimestamp(t_chaos, datetime.timezone.utc).isoformat(),
            "duration_s": round(t_chaos_end - t_chaos, 1), "total_s": round(t_done - t_chaos, 1),
            "setup": {"relays": len(self.relays), "clients": self.args.clients, "keys_per_client": self.args.keys,
                      "streams": self.args.streams, "sse": f"{self.sse_events} events, {SSE_GAP_MS} ms apart",
                      "grace_period_s": GRACE, "load_nice": self.args.load_nice},
            "requests": req, "streams": strm,
            "failures_by_cause": {k: dict(v) for k, v in sorted(by_cause.items())},
            "failures_by_cause_and_action": dict(by_context.most_common()),
            "failures_by_kind": {k: dict(collections.Counter(
                f"{'reached_relay' if f['reached_relay'] else 'never_reached_relay'} / {f['cause']}"
                for f in self.failures if f["kind"] == k)) for k in ("requests", "streams")},
            "failed_reached_relay_while_it_was_killed": sum(1 for f in self.failures if f["relay_killed_during"]),
            "failed_reached_relay_no_kill": sum(1 for f in self.failures if f["reached_relay"] and not f["relay_killed_during"]),
            "moved_unexplained_confirmed_by_relay_logs": sum(1 for m in unexplained if m["relay_logs_agree"]),
            "moved_unexplained_by_action": dict(collections.Counter(
                f"{m['kind']} / {m['context']} / edge {m['prev_edge']}->{m['edge']}"
                + (" / edge marked it unhealthy" if m["edge_marked_from_unhealthy"] else "")
                + (" / edge had lost redis (call failed or timed out)" if m["edge_redis_degraded"] else "")
                + (" / redis restarted and the previous edge process is gone" if m["redis_restarted_since"] and m["prev_edge_process_gone"]
                   else " / redis restarted since" if m["redis_restarted_since"] else "")
                for m in unexplained).most_common()),
            "cut_streams_by_cause": dict(collections.Counter(f"{s['cause']} / {s['context']} / edge {s['edge']}" for s in cut).most_common()),
            "requests_reaching_relays_twice": dup, "relay_log_lines": logged,
            "pin_probe_at_end": self.pins,
            "actions": per_action, "action_log": [dict(a, t_start=round(a["t_start"] - t_chaos, 2),
                                                       t_end=round(a["t_end"] - t_chaos, 2)) for a in self.actions],
            "edges": mem, "counters": dict(sorted(c.items())),
            "counters_at_warm": warm_counts,
            "spurious_unhealthy": [dict(x, t=round(x["t"] - t_chaos, 1)) for x in spurious],
            "edge_log_digest": {n: dict(ev["digest"].most_common(25)) for n, ev in events.items()},
            "edge_redis_degraded_episodes": {n: [[round(a - t_chaos, 1), round(b - t_chaos, 1) if b else None]
                                                 for a, b in ev["redis_degraded"]] for n, ev in events.items()},
            "cpu": self.cpu_summary(),
            "examples": {
                "failed_never_reached_relay": [rel(f, t_chaos) for f in never[:300]],
                "failed_reached_relay": [rel(f, t_chaos) for f in self.failures if f["reached_relay"]][:30],
                "moved_unexplained": [rel(m, t_chaos) for m in unexplained[:300]],
                "cut_streams": [rel(s, t_chaos) for s in cut[:60]],
            },
            "bench_errors": self.bench_errors, "stuck_threads": stuck,
            "goals": goals, "all_goals_met": all(goals.values()),
            "thresholds": {"rss": f"end <= max(start x {RSS_FACTOR}, start + {RSS_SLACK_MIB} MiB)",
                           "fds": f"end - bench connections <= start - bench connections + {FD_SLACK}"},
            "samples": [dict(s, t=round(s["t"] - t_chaos, 1)) for s in self.samples],
        }
        return result


def rel(d, t0):
    out = dict(d)
    for k in ("t0", "t1", "t_head", "t_end", "since"):
        if isinstance(out.get(k), float):
            out[k] = round(out[k] - t0, 3)
    return out


def summary(r):
    q, s = r["requests"], r["streams"]
    lines = [f"relay-edge chaos: {r['binary']}",
             f"seed {r['seed']}, chaos {r['duration_s']} s ({'short' if r['short'] else 'full'}), "
             f"{r['setup']['relays']} relays, {r['setup']['clients']} clients x {r['setup']['keys_per_client']} keys, "
             f"{r['setup']['streams']} streams", ""]

    def table(headers, rows):
        w = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
        out = ["  ".join(str(h).ljust(w[i]) if i == 0 else str(h).rjust(w[i]) for i, h in enumerate(headers))]
        out.append("  ".join("-" * x for x in w))
        out += ["  ".join(str(c).ljust(w[i]) if i == 0 else str(c).rjust(w[i]) for i, c in enumerate(row)) for row in rows]
        return out

    fr = r["failures_by_cause"]
    never = sum(v.get("never_reached_relay", 0) for v in fr.values())
    reached = sum(v.get("reached_relay", 0) for v in fr.values())
    lines += table(["outcome", "requests", "streams"], [
        ["total", q["total"], s["total"]],
        ["pinned", q["pinned"], s["pinned"]],
        ["moved (relay_killed)", q["moved"]["relay_killed"], s["moved"]["relay_killed"]],
        ["moved (relay_ejected_after_kill)", q["moved"]["relay_ejected_after_kill"], s["moved"]["relay_ejected_after_kill"]],
        ["moved (pin_lost: redis data lost)", q["moved"]["pin_lost"], s["moved"]["pin_lost"]],
        ["moved_unexplained  [VIOLATION]", q["moved_unexplained"], s["moved_unexplained"]],
        ["failed", q["failed"], s["failed"]],
        ["stream complete", "", s["complete"]],
        ["stream cut_relay_killed", "", s["cut_relay_killed"]],
        ["stream cut  [VIOLATION]", "", s["cut"]],
        ["stream unfinished at the end", "", s["unfinished_at_end"]],
    ])
    lines += ["", f"failures: {reached} reached a relay, {never} never reached one [VIOLATION if > 0]"]
    if fr:
        lines += table(["cause", "reached_relay", "lost_with_killed_relay", "never_reached_relay"],
                       [[k, v.get("reached_relay", 0), v.get("lost_with_killed_relay", 0),
                         v.get("never_reached_relay", 0)] for k, v in fr.items()])
    for kind, v in r.get("failures_by_kind", {}).items():
        if v:
            lines.append(f"  {kind}: " + ", ".join(f"{k} {n}" for k, n in sorted(v.items())))
    if r["failures_by_cause_and_action"]:
        lines += ["", "failures by chaos action nearby:"]
        lines += [f"  {n:6d}  {k}" for k, n in r["failures_by_cause_and_action"].items()]
    if r["moved_unexplained_by_action"]:
        lines += ["", "unexplained moves by chaos action nearby:"]
        lines += [f"  {n:6d}  {k}" for k, n in r["moved_unexplained_by_action"].items()]
    if r["cut_streams_by_cause"]:
        lines += ["", "cut streams:"]
        lines += [f"  {n:6d}  {k}" for k, n in r["cut_streams_by_cause"].items()]
    lines += ["", *table(["action", "count", "ok", "failed", "median s", "max s"],
                         [[k, v["count"], v["ok"], v["failed"], v["seconds_median"], v["seconds_max"]]
                          for k, v in sorted(r["actions"].items())])]
    rows = []
    for name, e in r["edges"].items():
        if "rss_start_mib" in e:
            rows.append([name, e["start"]["pid"], e["end"]["pid"], e["rss_start_mib"], e["rss_end_mib"],
                         f"{e['fds_start']} ({e['fds_start_less_bench_conns']})",
                         f"{e['fds_end']} ({e['fds_end_less_bench_conns']})",
                         "yes" if e["rss_flat"] and e["fds_flat"] else "NO"])
    lines += ["", *table(["edge", "pid start", "pid end", "RSS MiB start", "RSS MiB end",
                          "fds start (less bench conns)", "fds end", "flat"], rows)]
    for name, e in r["edges"].items():
        lp = e.get("longest_process")
        if lp:
            lines.append(f"edge {name}, longest-lived process {lp['pid']} ({lp['seconds']} s): RSS {lp['rss_mib'][0]} -> "
                         f"{lp['rss_mib'][1]} MiB ({lp['rss_mib_per_min']:+} MiB/min), fds {lp['fds'][0]} -> {lp['fds'][1]} (diagnostic)")
    lines += [f"requests that reached relays twice: {r['requests_reaching_relays_twice']}",
              f"failed after reaching a relay that was being killed: {r['failed_reached_relay_while_it_was_killed']}, "
              f"with no kill: {r['failed_reached_relay_no_kill']}",
              f"spurious unhealthy marks (relay up): {len(r['spurious_unhealthy'])}",
              f"unexplained moves that the relays' own logs confirm: {r['moved_unexplained_confirmed_by_relay_logs']}",
              f"pins at the end (GET /api/sessions/KEY on both edges vs the relay of the last answer): "
              f"{r['pin_probe_at_end'].get('agree', 0)} of {r['pin_probe_at_end'].get('sessions', 0)} agree; "
              f"{r['pin_probe_at_end'].get('mismatch', {})}",
              f"both edges refused a connect: {r['counters'].get('both_edges_refused', 0)} times",
              "edge lost redis (a call failed or timed out; degraded until 'redis is reachable'): "
              + ", ".join(f"{n}: {len(v)} times" for n, v in r["edge_redis_degraded_episodes"].items()),
              f"CPU: edge A {r['cpu'].get('edge_A_cores')} cores, edge B {r['cpu'].get('edge_B_cores')} cores, "
              f"this script {r['cpu']['bench_process_cpu_s']} s, load average {r['cpu']['loadavg'][0]:.2f}"]
    if r["bench_errors"] or r["stuck_threads"]:
        lines += [f"BENCH ERRORS: {r['bench_errors'][:5]} stuck: {r['stuck_threads']}"]
    lines += ["", "goals:"] + [f"  {'ok  ' if v else 'MISS'}  {k}" for k, v in r["goals"].items()]
    return "\n".join(lines)


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "--relay":
        name, port, logfile = sys.argv[2:5]
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        asyncio.run(relay_serve(name, int(port), logfile))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--duration", type=float)
    ap.add_argument("--short", action="store_true")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--out")
    ap.add_argument("--relays", type=int, default=4)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--keys", type=int, default=25)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--logs-dir", default="/tmp/chaos-logs")
    ap.add_argument("--wait-bin", type=float, default=0, help="seconds to wait for --bin to exist")
    ap.add_argument("--load-nice", type=int, default=5, help="nice of the load threads (edges, relays, Redis: 0)")
    args = ap.parse_args()
    if args.duration is None:
        args.duration = 45 if args.short else 600
    if args.relays < 2:
        die("--relays must be at least 2")
    if not wait_until(lambda: os.access(args.bin, os.X_OK), args.wait_bin, step=1):
        die(f"not an executable: {args.bin}")
    install_missing()
    set_subreaper()
    bench = Bench(args)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # A hard bound on the whole run, whatever happens.
    hard = args.duration + 480

    def watchdog():
        log(f"WATCHDOG: the run exceeded {hard:.0f} s; killing everything")
        bench.cleanup()
        os._exit(3)

    dog = threading.Timer(hard, watchdog)
    dog.daemon = True
    dog.start()
    code = 0
    try:
        result = bench.run()
        bench.cleanup()
        text = summary(result)
        print(text, flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1, default=str)
        if not result["goals"]["bench_sane"]:
            code = 2
        elif args.short and not result["all_goals_met"]:
            code = 1
    except KeyboardInterrupt:
        log("interrupted")
        code = 130
    except Exception as e:
        log(f"run failed: {e!r}")
        code = 2
    finally:
        bench.cleanup()
        dog.cancel()
        try:
            os.makedirs(args.logs_dir, exist_ok=True)
            for name in os.listdir(bench.tmp):
                if name.endswith((".log", ".yaml", ".requests")):
                    shutil.copy(os.path.join(bench.tmp, name), os.path.join(args.logs_dir, name))
            log(f"logs copied to {args.logs_dir}")
        except OSError as e:
            log(f"could not copy the logs: {e}")
        shutil.rmtree(bench.tmp, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
