#!/usr/bin/env python3
"""Soak: one relay-edge on a real Redis, in front of 3 demo relays, under
steady keyed keep-alive load with a share of new sessions and SSE streams,
for a long time. Every interval it records the edge's RSS, open fds and CPU,
Redis commands per request and Redis memory, and the edge's session counts;
at the end, a table of the intervals and the trend of RSS over the last half
of the run (issue 19, item 7: no growth without a cause).

    python3 benches/soak/soak.py --bin target/release/relay-edge             # 60 minutes
    python3 benches/soak/soak.py --bin target/debug/relay-edge --smoke       # CI: 2 minutes;
        # exit 1 if a request or stream failed, the edge died, or its fds grew by > 50
    options: --minutes M (60), --interval S (30), --sessions N (20000), --rps R (1000),
             --new-share F (0.05), --streams K (20), --connections C (16), --ttl D (5m),
             --json FILE, --md FILE, --edge-extra YAML (repeatable)

Standard library only. Needs redis-server (apt-get install -y redis-server)
and relay-edge-demo-upstream beside --bin. Everything is bounded in time (a
watchdog stops the run at minutes*60 + 300 s) and every child is killed on
exit, also on Ctrl-C, SIGTERM or the script's own death (PR_SET_PDEATHSIG).
See README.md.
"""

import argparse
import asyncio
import collections
import ctypes
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from common.ports import free_port  # noqa: E402

CPUS = sorted(os.sched_getaffinity(0))
PINNED = len(CPUS) >= 2 and shutil.which("taskset") is not None
EDGE_CPUS = str(CPUS[0])
LOAD_CPUS = ",".join(str(c) for c in CPUS[1:]) or EDGE_CPUS   # Redis, relays, the load
MIB = 1 << 20

CONNECT_TIMEOUT = 5.0     # s, a TCP connect to the edge
REQUEST_TIMEOUT = 10.0    # s, a keyed request, sent to fully read
STREAM_TIMEOUT = 30.0     # s, a whole stream (30 deltas 100 ms apart: about 3 s)
PREFILL_TIMEOUT = 200.0   # s, pinning every known session before the steady phase
DRAIN_TIMEOUT = 40.0      # s, in-flight requests and streams at the end
SSE_PATH = "/v1/messages?sse=30&gap_ms=100"
BODY = b'{"model":"soak","max_tokens":16,"messages":[{"role":"user","content":"hello"}]}'
SSE_BODY = b'{"stream":true}'
FD_LEAK_LIMIT = 50        # --smoke: fds after warm-up may not grow by more


def log(msg):
    print(f"soak [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class SetupError(Exception):
    pass


# ---------------------------------------------------------------- processes

_LIBC = ctypes.CDLL(None, use_errno=True)   # loaded before any fork


def _die_with_parent():
    """In the child, before exec: SIGKILL when the thread that started it (the
    main thread) ends; survives the exec of taskset and of the program."""
    _LIBC.prctl(1, signal.SIGKILL, 0, 0, 0)   # PR_SET_PDEATHSIG


def pin(cpus, cmd):
    return (["taskset", "-c", cpus] + cmd) if PINNED else cmd


class Procs:
    """Every process this script started (all from the main thread)."""

    def __init__(self, tmp):
        self.tmp, self.procs, self.lock = tmp, [], threading.Lock()

    def start(self, name, cmd, stop=signal.SIGTERM):
        path = os.path.join(self.tmp, f"{name}.log")
        out = open(path, "wb")
        # A session of its own: a Ctrl-C reaches this script only, which then
        # stops the children in order.
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             cwd=self.tmp, preexec_fn=_die_with_parent, start_new_session=True)
        out.close()
        p.name, p.stop_sig, p.log_path = name, stop, path
        with self.lock:
            self.procs.append(p)
        return p

    def stop(self, p, wait=5):
        try:
            if p.poll() is None:
                p.send_signal(p.stop_sig)
                try:
                    p.wait(wait)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        with self.lock:
            if p in self.procs:
                self.procs.remove(p)

    def stop_all(self):
        with self.lock:
            procs = list(reversed(self.procs))
        for p in procs:
            self.stop(p)

    def kill_all(self):
        """From the watchdog: no waiting."""
        with self.lock:
            procs = list(self.procs)
        for p in procs:
            try:
                if p.poll() is None:
                    p.kill()
            except OSError:
                pass

    @staticmethod
    def tail(p, n=3000):
        try:
            with open(p.log_path, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - n))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


def wait_until(cond, within, step=0.1):
    deadline = time.monotonic() + within
    while True:
        if cond():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


def http_get(port, path, timeout=3.0):
    """(status, body) of a GET on 127.0.0.1, or (None, b"")."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    except (OSError, http.client.HTTPException):
        return None, b""
    finally:
        c.close()


def proc_stats(pid):
    """RSS MiB, open fds, threads and CPU seconds of a process, or None."""
    try:
        rss = threads = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
                elif line.startswith("Threads:"):
                    threads = int(line.split()[1])
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return {"rss_mib": rss, "fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": threads, "cpu_s": cpu}
    except (OSError, IndexError, ValueError):
        return None


def metric_sum(text, name):
    """Sum of the Prometheus samples of metric `name` (any labels)."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " "):
            try:
                total += float(line.rsplit(None, 1)[1])
                seen = True
            except (ValueError, IndexError):
                pass
    return total if seen else None


# ---------------------------------------------------------------- Redis (raw RESP)

def resp(*args):
    parts = [a.encode() if isinstance(a, str) else a for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def redis_call(port, *args, timeout=3.0):
    """One command's reply line (a simple string or error), or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(resp(*args))
            return s.makefile("rb").readline().strip()
    except OSError:
        return None


def redis_info(port, sections=("commandstats", "memory"), timeout=3.0):
    """INFO of each section, as {field: value}; commandstats as
    {"cmdstat_x": calls}. None when Redis does not answer."""
    out = {}
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            f = s.makefile("rb")
            for sec in sections:
                s.sendall(resp("INFO", sec))
                line = f.readline()
                if not line.startswith(b"$"):
                    return None
                data = f.read(int(line[1:]) + 2).decode("utf-8", "replace")
                for l in data.splitlines():
                    k, sep, v = l.partition(":")
                    if not sep or l.startswith("#"):
                        continue
                    if k.startswith("cmdstat_"):
                        calls = dict(kv.split("=", 1) for kv in v.split(",") if "=" in kv).get("calls", "0")
                        out[k] = int(calls)
                    else:
                        out[k] = v
    except (OSError, ValueError):
        return None
    return out


# ---------------------------------------------------------------- config

def edge_config(tmp, port, admin, relays, redis_port, ttl, extra):
    """relay-edge's YAML. A top-level key that `extra` defines replaces ours."""
    ours = collections.OrderedDict()
    ours["listen"] = f"listen: [{{addr: 127.0.0.1:{port}}}]\n"
    ours["upstreams"] = "upstreams:\n" + "".join(f"  - {{id: {n}, addr: 127.0.0.1:{p}}}\n" for n, p in relays)
    ours["health_check"] = "health_check: {path: /health, interval: 2s}\n"
    ours["affinity"] = f"affinity: {{keys: [{{header: x-session-id}}], ttl: {ttl}}}\n"
    ours["redis"] = f"redis: {{url: 'redis://127.0.0.1:{redis_port}/0'}}\n"
    ours["admin"] = f"admin: {{listen: 127.0.0.1:{admin}}}\n"
    ours["access_log"] = "access_log: {enabled: false}\n"
    ours["server"] = (f"server: {{threads: 1, grace_period: 5s, pid_file: {tmp}/edge.pid, "
                      f"upgrade_sock: {tmp}/edge.sock, log_level: warn}}\n")
    theirs = {line.split(":", 1)[0] for line in extra.splitlines()
              if line[:1].isalpha() and ":" in line}
    text = "# written by benches/soak/soak.py\n" + "".join(v for k, v in ours.items() if k not in theirs) + extra
    path = os.path.join(tmp, "edge.yaml")
    with open(path, "w") as f:
        f.write(text)
    return path, text


# ---------------------------------------------------------------- the load

class Counters:
    """Cumulative counts of the load; `interval()` gives the change since the
    last call (the event loop's thread only)."""

    def __init__(self):
        self.c = collections.Counter()
        self.causes = collections.Counter()
        self.lat = []           # ms of the successful keyed requests since the last interval()
        self.last = collections.Counter()
        self.last_causes = collections.Counter()

    def fail(self, kind, cause):
        self.c[f"{kind}_fail"] += 1
        self.causes[f"{kind}:{cause}"] += 1

    def interval(self):
        d = self.c - self.last
        causes = self.causes - self.last_causes
        lat, self.lat = self.lat, []
        self.last, self.last_causes = collections.Counter(self.c), collections.Counter(self.causes)
        return d, causes, lat


async def read_response(r):
    """One HTTP/1.1 answer: (status, headers, body, keep_alive). Content-Length,
    chunked, or to the end of the connection."""
    head = await r.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, status = lines[0].split(None, 2)[:2]
    hdrs = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
    keep = version == "HTTP/1.1" and "close" not in hdrs.get("connection", "").lower()
    if "chunked" in hdrs.get("transfer-encoding", "").lower():
        chunks = []
        while True:
            size = int((await r.readline()).split(b";")[0].strip(), 16)   # EOF: ValueError
            if size == 0:
                while True:   # trailers, then the empty line
                    line = await r.readline()
                    if line in (b"\r\n", b"\n"):
                        break
                    if not line:
                        keep = False
                        break
                break
            chunks.append(await r.readexactly(size))
            if await r.readexactly(2) != b"\r\n":
                raise ValueError("chunk without its CRLF")
        body = b"".join(chunks)
    elif "content-length" in hdrs:
        body = await r.readexactly(int(hdrs["content-length"]))
    else:
        body, keep = await r.read(), False
    return int(status), hdrs, body, keep


def cause_of(e):
    if isinstance(e, TimeoutError):          # before OSError: it is one
        return "timeout"
    if isinstance(e, asyncio.IncompleteReadError):
        return "cut"
    if isinstance(e, ConnectionResetError):
        return "reset"
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, (ValueError, asyncio.LimitOverrunError)):
        return "protocol"
    return type(e).__name__


class Load:
    def __init__(self, port, args):
        self.port, self.args = port, args
        self.rng = random.Random()
        seeded = random.Random(19)
        self.known = [str(uuid.UUID(int=seeded.getrandbits(128), version=4)) for _ in range(args.sessions)]
        self.pins = {}          # known key -> the relay that answered it
        self.n = Counters()
        self.stopping = False
        self.queue = None

    # A known key whose answer says `new` or `moved`, or that comes from
    # another relay than before: its pin was lost (nothing here should move one).
    def check_pin(self, key, hdrs):
        up = hdrs.get("x-upstream")
        before = self.pins.get(key)
        outcome = hdrs.get("x-relay-edge-affinity", "")
        if before is not None and (up != before or outcome in ("new", "moved")):
            self.n.c["pins_lost"] += 1
        if up:
            self.pins[key] = up

    async def connect(self):
        async with asyncio.timeout(CONNECT_TIMEOUT):
            return await asyncio.open_connection("127.0.0.1", self.port)

    async def keyed_worker(self, queue, prefill=False):
        r = w = None
        host = f"host: 127.0.0.1:{self.port}\r\n"
        while True:
            item = await queue.get()
            if item is None:
                break
            key, known = item
            req = (f"POST /v1/messages HTTP/1.1\r\n{host}content-type: application/json\r\n"
                   f"x-session-id: {key}\r\ncontent-length: {len(BODY)}\r\n\r\n").encode() + BODY
            t0 = time.perf_counter()
            keep = False
            try:
                if w is None:
                    r, w = await self.connect()
                    self.n.c["connects"] += 1
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    w.write(req)
                    await w.drain()
                    status, hdrs, body, keep = await read_response(r)
                if status == 200 and body[:1] == b"{":
                    self.n.c["req_ok"] += 1
                    self.n.lat.append((time.perf_counter() - t0) * 1000)
                    if known and not prefill:
                        self.check_pin(key, hdrs)
                    elif known:
                        self.pins[key] = hdrs.get("x-upstream")
                else:
                    self.n.fail("req", f"http_{status}")
                    keep = False
            except Exception as e:  # noqa: BLE001 (every failure is counted by its kind)
                if isinstance(e, asyncio.CancelledError):
                    raise
                self.n.fail("req", cause_of(e))
            if not keep and w is not None:
                w.close()
                r = w = None
        if w is not None:
            w.close()

    async def stream_client(self, idx):
        # Spread the streams' phases over one stream's length.
        await asyncio.sleep(3.0 * idx / max(1, self.args.streams))
        r = w = None
        host = f"host: 127.0.0.1:{self.port}\r\n"
        while not self.stopping:
            key = self.known[self.rng.randrange(len(self.known))]
            req = (f"POST {SSE_PATH} HTTP/1.1\r\n{host}content-type: application/json\r\n"
                   f"accept: text/event-stream\r\nx-session-id: {key}\r\n"
                   f"content-length: {len(SSE_BODY)}\r\n\r\n").encode() + SSE_BODY
            keep = False
            try:
                if w is None:
                    r, w = await self.connect()
                async with asyncio.timeout(STREAM_TIMEOUT):
                    w.write(req)
                    await w.drain()
                    status, hdrs, body, keep = await read_response(r)
                if status != 200:
                    self.n.fail("stream", f"http_{status}")
                    keep = False
                elif b"message_stop" not in body:
                    self.n.fail("stream", "no_message_stop")
                    keep = False
                else:
                    self.n.c["stream_ok"] += 1
                    self.check_pin(key, hdrs)
            except Exception as e:  # noqa: BLE001
                if isinstance(e, asyncio.CancelledError):
                    raise
                self.n.fail("stream", cause_of(e))
                await asyncio.sleep(0.1)   # no busy loop on a dead edge
            if not keep and w is not None:
                w.close()
                r = w = None
        if w is not None:
            w.close()

    async def scheduler(self, queue, rate):
        """Open loop: request i is due at t0 + i/rate, whatever the earlier
        ones are doing. A backlog over one second is dropped and counted
        (`behind`): then the client or the edge cannot keep the rate."""
        loop = asyncio.get_running_loop()
        t0, sent = loop.time(), 0
        backlog = max(2 * self.args.connections, int(rate))
        rng, known, share = self.rng, self.known, self.args.new_share
        while not self.stopping:
            due = int((loop.time() - t0) * rate) - sent
            for _ in range(due):
                if queue.qsize() >= backlog:
                    self.n.c["behind"] += 1
                elif rng.random() < share:
                    queue.put_nowait((str(uuid.uuid4()), False))
                    self.n.c["req_new_key"] += 1
                else:
                    queue.put_nowait((known[rng.randrange(len(known))], True))
            sent += due
            await asyncio.sleep(0.005)

    async def prefill(self):
        """One request per known session, as fast as the connections go."""
        q = asyncio.Queue()
        for k in self.known:
            q.put_nowait((k, True))
        for _ in range(self.args.connections):
            q.put_nowait(None)
        workers = [asyncio.create_task(self.keyed_worker(q, prefill=True)) for _ in range(self.args.connections)]
        done, pending = await asyncio.wait(workers, timeout=PREFILL_TIMEOUT)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return not pending

    def start_steady(self):
        self.queue = asyncio.Queue()
        self.tasks = [asyncio.create_task(self.keyed_worker(self.queue)) for _ in range(self.args.connections)]
        self.tasks += [asyncio.create_task(self.stream_client(i)) for i in range(self.args.streams)]
        self.sched = asyncio.create_task(self.scheduler(self.queue, self.args.rps))

    async def stop_steady(self, drain=DRAIN_TIMEOUT):
        """Let every request and stream in flight finish (bounded), then stop."""
        self.stopping = True
        await asyncio.gather(self.sched, return_exceptions=True)
        while not self.queue.empty():
            self.queue.get_nowait()
        for _ in range(self.args.connections):
            self.queue.put_nowait(None)
        done, pending = await asyncio.wait(self.tasks, timeout=drain)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return len(pending)


# ---------------------------------------------------------------- the soak

def pct(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def slope(points):
    """Least-squares slope of (x, y) points, or None."""
    pts = [(x, y) for x, y in points if y is not None]
    if len(pts) < 2:
        return None
    n = len(pts)
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in pts) / sxx


class Soak:
    def __init__(self, args, procs, tmp):
        self.args, self.procs, self.tmp = args, procs, tmp
        self.intervals = []
        self.meta = {}
        self.prefill = {}
        self.edge = None
        self.edge_died = False
        self.interrupted = False
        self.drain_left = 0
        self.jemalloc_metrics = []

    # ------------------------------------------------------------ set-up

    def setup(self):
        a = self.args
        demo = os.path.join(os.path.dirname(a.bin), "relay-edge-demo-upstream")
        for b in (a.bin, demo):
            if not os.access(b, os.X_OK):
                raise SetupError(f"not an executable: {b}")
        if shutil.which("redis-server") is None:
            raise SetupError("redis-server is missing: apt-get install -y redis-server")

        self.redis_port = free_port()
        redis = self.procs.start("redis", pin(LOAD_CPUS, [
            "redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--maxclients", "10000"]))
        if not wait_until(lambda: redis.poll() is None and redis_call(self.redis_port, "PING", timeout=1) == b"+PONG", 15):
            raise SetupError(f"redis-server did not answer PING:\n{Procs.tail(redis)}")

        self.relays = [(f"relay-{c}", free_port()) for c in "abc"]
        relays = self.procs.start("relays", pin(LOAD_CPUS, [demo] + [f"127.0.0.1:{p}" for _, p in self.relays]))
        for _, p in self.relays:
            if not wait_until(lambda: relays.poll() is None and http_get(p, "/health", 1)[0] == 200, 15):
                raise SetupError(f"demo relay on :{p} did not answer /health:\n{Procs.tail(relays)}")

        self.port, self.admin = free_port(), free_port()
        extra = "".join(line.rstrip("\n") + "\n" for line in a.edge_extra)
        conf, self.conf_text = edge_config(self.tmp, self.port, self.admin, self.relays, self.redis_port,
                                           a.ttl, extra)
        try:
            chk = subprocess.run([a.bin, "-c", conf, "--check"], capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired:
            raise SetupError("relay-edge --check took over 30 s")
        if chk.returncode != 0:
            raise SetupError(f"relay-edge --check refused the config:\n{chk.stdout}{chk.stderr}\n{self.conf_text}")
        self.edge = self.procs.start("edge", pin(EDGE_CPUS, [a.bin, "-c", conf]), stop=signal.SIGINT)
        ok = wait_until(lambda: self.edge.poll() is not None or http_get(self.admin, "/readyz", 1)[0] == 200, 60)
        if not ok or self.edge.poll() is not None:
            raise SetupError(f"relay-edge not ready within 60 s:\n{Procs.tail(self.edge)}")

        def redis_up():
            st, body = http_get(self.admin, "/api/stats")
            try:
                return st == 200 and json.loads(body)["redis"]["connected"] is True
            except (ValueError, KeyError, TypeError):
                return False
        if not wait_until(redis_up, 20):
            raise SetupError(f"relay-edge never connected to Redis:\n{Procs.tail(self.edge)}")

        # Allocator statistics, if this build exposes any.
        _, text = http_get(self.admin, "/metrics")
        names = {line.split("{", 1)[0].split(None, 1)[0] for line in text.decode("utf-8", "replace").splitlines()
                 if line and not line.startswith("#")}
        self.jemalloc_metrics = sorted(n for n in names if "jemalloc" in n or "allocat" in n)
        if PINNED:
            os.sched_setaffinity(0, {int(c) for c in LOAD_CPUS.split(",")})
        self.meta = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "bin": os.path.abspath(a.bin), "smoke": a.smoke, "minutes": a.minutes, "interval_s": a.interval,
            "sessions": a.sessions, "rps": a.rps, "new_share": a.new_share, "streams": a.streams,
            "connections": a.connections, "ttl": a.ttl, "edge_extra": extra, "pinned": PINNED,
            "edge_cpus": EDGE_CPUS if PINNED else None, "load_cpus": LOAD_CPUS if PINNED else None,
            "redis_version": (redis_info(self.redis_port, ("server",)) or {}).get("redis_version"),
            "edge_config": self.conf_text, "jemalloc_metrics": self.jemalloc_metrics,
        }

    # ------------------------------------------------------------ sampling

    def sample(self):
        """Blocking reads of the edge and Redis (run in a thread)."""
        s = {"edge_alive": self.edge.poll() is None, "proc": proc_stats(self.edge.pid),
             "redis": redis_info(self.redis_port), "stats": None, "client_conns": None, "jemalloc": {}}
        st, body = http_get(self.admin, "/api/stats")
        if st == 200:
            try:
                s["stats"] = json.loads(body)
            except ValueError:
                pass
        st, body = http_get(self.admin, "/metrics")
        if st == 200:
            text = body.decode("utf-8", "replace")
            s["client_conns"] = metric_sum(text, "relay_edge_client_connections")
            s["jemalloc"] = {n: metric_sum(text, n) for n in self.jemalloc_metrics}
        return s

    @staticmethod
    def redis_calls(info):
        """Commands Redis ran, by command, less our own INFO."""
        if not info:
            return None
        return {k[8:]: v for k, v in info.items() if k.startswith("cmdstat_") and k != "cmdstat_info"}

    def record(self, t0, prev, s, d, causes, lat, secs):
        calls = self.redis_calls(s["redis"])
        by_cmd, cmds = {}, None
        if calls is not None and prev["calls"] is not None:
            by_cmd = {k: v - prev["calls"].get(k, 0) for k, v in calls.items() if v - prev["calls"].get(k, 0)}
            cmds = sum(by_cmd.values())
        p = s["proc"]
        cpu = None
        if p and prev["cpu"] is not None:
            cpu = (p["cpu_s"] - prev["cpu"]) / secs * 100
        client_cpu = time.process_time()
        st = s["stats"] or {}
        red = st.get("redis") or {}
        done = d["req_ok"] + d["req_fail"] + d["stream_ok"] + d["stream_fail"]
        row = {
            "t_min": round((time.monotonic() - t0) / 60, 3), "secs": round(secs, 2),
            "req_ok": d["req_ok"], "req_fail": d["req_fail"], "req_rps": round(d["req_ok"] / secs, 1),
            "req_new_key": d["req_new_key"], "behind": d["behind"], "connects": d["connects"],
            "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99),
            "stream_ok": d["stream_ok"], "stream_fail": d["stream_fail"], "pins_lost": d["pins_lost"],
            "fail_causes": dict(causes),
            "edge_alive": s["edge_alive"],
            "rss_mib": p["rss_mib"] if p else None, "fds": p["fds"] if p else None,
            "threads": p["threads"] if p else None, "cpu_pct": cpu,
            "client_cpu_pct": (client_cpu - prev["client_cpu"]) / secs * 100,
            "redis_cmds": cmds, "redis_cmds_per_req": (cmds / done) if cmds is not None and done else None,
            "redis_by_cmd": by_cmd,
            "redis_used_mib": int(s["redis"]["used_memory"]) / MIB if s["redis"] else None,
            "sessions": (st.get("sessions") or {}).get("count"),
            "local_cache": red.get("local_cache_entries"), "pending_pins": red.get("pending_pins"),
            "redis_connected": red.get("connected"), "redis_errors": red.get("errors"),
            "hit_rate": (st.get("affinity") or {}).get("hit_rate"),
            "client_conns": s["client_conns"], "jemalloc": s["jemalloc"],
        }
        self.intervals.append(row)
        prev["calls"] = calls if calls is not None else prev["calls"]
        prev["cpu"] = p["cpu_s"] if p else prev["cpu"]
        prev["client_cpu"] = client_cpu
        return row

    # ------------------------------------------------------------ the run

    async def run(self):
        a = self.args
        load = self.load = Load(self.port, a)
        log(f"pre-filling {a.sessions:,} sessions over {a.connections} connections")
        t = time.monotonic()
        finished = await load.prefill()
        d, causes, lat = load.n.interval()
        secs = time.monotonic() - t
        self.prefill = {"sessions": a.sessions, "ok": d["req_ok"], "failed": d["req_fail"],
                        "seconds": round(secs, 1), "rps": round(d["req_ok"] / max(secs, 1e-9), 1),
                        "fail_causes": dict(causes), "finished": finished}
        log(f"pre-fill: {d['req_ok']:,} ok, {d['req_fail']} failed in {secs:.1f} s")
        if not finished:
            raise SetupError(f"pre-fill not done within {PREFILL_TIMEOUT:.0f} s")
        if self.edge.poll() is not None:
            self.edge_died = True
            return

        prev = {"calls": None, "cpu": None, "client_cpu": None}
        s0 = await asyncio.to_thread(self.sample)
        prev["calls"] = self.redis_calls(s0["redis"])
        prev["cpu"] = s0["proc"]["cpu_s"] if s0["proc"] else None
        prev["client_cpu"] = time.process_time()
        log(f"steady phase: {a.minutes:g} min, {a.rps:g} keyed requests/s, {a.new_share:.0%} new keys, "
            f"{a.streams} streams, intervals of {a.interval:g} s")
        t0 = time.monotonic()
        load.start_steady()
        last = t0
        end = t0 + a.minutes * 60
        k, drain = 0, DRAIN_TIMEOUT
        try:
            while True:
                k += 1
                nxt = min(t0 + k * a.interval, end)
                await asyncio.sleep(max(0.0, nxt - time.monotonic()))
                d, causes, lat = load.n.interval()
                now = time.monotonic()
                s = await asyncio.to_thread(self.sample)
                row = self.record(t0, prev, s, d, causes, lat, now - last)
                last = now
                self.progress(row)
                self.write_json()
                if not s["edge_alive"]:
                    self.edge_died = True
                    log(f"the edge DIED (exit {self.edge.returncode}):\n{Procs.tail(self.edge)}")
                    break
                if nxt >= end:
                    break
        except asyncio.CancelledError:   # Ctrl-C: no waiting for the streams in flight
            drain = 1.0
            raise
        finally:
            self.drain_left = await load.stop_steady(drain)
        if self.edge.poll() is not None:
            self.edge_died = True

    def progress(self, r):
        f = lambda v, fmt: "—" if v is None else format(v, fmt)  # noqa: E731
        log(f"{r['t_min']:6.2f} min: {r['req_rps']:7.1f} req/s ok {r['req_ok']} fail {r['req_fail']} "
            f"behind {r['behind']}, streams {r['stream_ok']}/{r['stream_fail']}, RSS {f(r['rss_mib'], '.1f')} MiB, "
            f"fds {f(r['fds'], 'd')}, CPU {f(r['cpu_pct'], '.0f')}%, redis cmd/req {f(r['redis_cmds_per_req'], '.4f')}, "
            f"sessions {f(r['sessions'], ',')}, local cache {f(r['local_cache'], ',')}")

    # ------------------------------------------------------------ report

    def totals(self):
        c = self.load.n.c if getattr(self, "load", None) else collections.Counter()
        return {"req_ok": c["req_ok"], "req_fail": c["req_fail"], "stream_ok": c["stream_ok"],
                "stream_fail": c["stream_fail"], "behind": c["behind"], "pins_lost": c["pins_lost"],
                "fail_causes": dict(self.load.n.causes) if getattr(self, "load", None) else {}}

    def warmup_min(self):
        """Intervals before this (minutes) are warm-up: the larger of one
        interval and a tenth of the run."""
        return max(self.args.interval / 60, self.args.minutes / 10)

    def trends(self):
        rows = self.intervals
        half = self.args.minutes / 2
        window = [r for r in rows if r["t_min"] >= half - 1e-9]
        out = {"window_from_min": half, "window_points": len(window)}
        for key in ("rss_mib", "fds", "redis_used_mib", "sessions", "local_cache", "threads"):
            vals = [r[key] for r in rows if r[key] is not None]
            wv = [(r["t_min"], r[key]) for r in window if r[key] is not None]
            sl = slope(wv)
            out[key] = {
                "first": vals[0] if vals else None, "last": vals[-1] if vals else None,
                "max": max(vals) if vals else None,
                "slope_per_min_last_half": sl,
                "growth_last_half": (wv[-1][1] - wv[0][1]) if len(wv) >= 2 else None,
                "fitted_growth_last_half": sl * (wv[-1][0] - wv[0][0]) if sl is not None else None,
            }
        after = [r for r in rows if r["t_min"] >= self.warmup_min() - 1e-9 and r["fds"] is not None]
        out["fds_after_warmup"] = {"from_min": self.warmup_min(),
                                   "first": after[0]["fds"] if after else None,
                                   "last": after[-1]["fds"] if after else None,
                                   "growth": after[-1]["fds"] - after[0]["fds"] if len(after) >= 2 else None}
        return out

    def verdict(self):
        """--smoke's checks: a list of failures (empty: pass)."""
        tot, problems = self.totals(), []
        if self.edge_died:
            problems.append("the edge died")
        if self.prefill.get("failed"):
            problems.append(f"{self.prefill['failed']} pre-fill requests failed")
        def causes(kind):
            return {k.split(":", 1)[1]: v for k, v in tot["fail_causes"].items() if k.startswith(kind + ":")}
        if tot["req_fail"]:
            problems.append(f"{tot['req_fail']} requests failed: {causes('req')}")
        if tot["stream_fail"]:
            problems.append(f"{tot['stream_fail']} streams failed: {causes('stream')}")
        if not tot["req_ok"]:
            problems.append("no request succeeded")
        if self.args.streams and not tot["stream_ok"]:
            problems.append("no stream completed")
        if self.drain_left:
            problems.append(f"{self.drain_left} load tasks still busy {DRAIN_TIMEOUT:.0f} s after the end")
        g = self.trends()["fds_after_warmup"]["growth"]
        if g is not None and g > FD_LEAK_LIMIT:
            problems.append(f"the edge's fds grew by {g} after warm-up (limit {FD_LEAK_LIMIT})")
        return problems

    def report(self):
        a, m = self.args, self.meta
        f = lambda v, fmt: "—" if v is None else format(v, fmt)  # noqa: E731
        layout = (f"relay-edge (1 worker thread) on CPU {EDGE_CPUS}; Redis, the 3 demo relays and this "
                  f"script's load on CPU {LOAD_CPUS}" if PINNED else "nothing pinned (one CPU, or no taskset)")
        out = [f"# Soak: relay-edge, {m.get('started', '?')}"
               + (" (smoke)" if a.smoke else "") + (" — INTERRUPTED" if self.interrupted else ""), "",
               f"- binary: `{m.get('bin', a.bin)}`; Redis {m.get('redis_version')} (`--save '' --appendonly no`); "
               f"3 demo relays; {layout}",
               f"- {a.minutes:g} min in intervals of {a.interval:g} s; {a.sessions:,} known sessions pinned first; "
               f"target {a.rps:g} keyed requests/s (open loop over {a.connections} keep-alive connections), "
               f"{a.new_share:.0%} with a new key; {a.streams} SSE clients looping `POST {SSE_PATH}` "
               f"(about 3 s each); `affinity.ttl: {a.ttl}`",
               f"- pre-fill: {self.prefill.get('ok', 0):,} sessions pinned in {self.prefill.get('seconds', 0)} s "
               f"({self.prefill.get('rps', 0):,.0f} req/s), {self.prefill.get('failed', 0)} failed"]
        if m.get("edge_extra"):
            out.append(f"- config lines added:\n\n```yaml\n{m['edge_extra']}```")
        out += ["", "| min | req/s | req ok | req fail | behind | p99 ms | streams ok | streams fail | pins lost "
                "| RSS MiB | fds | edge CPU % | client CPU % | Redis cmd/req | Redis MiB | sessions | local cache "
                "| client conns |",
                "|" + "---:|" * 18]
        for r in self.intervals:
            out.append("| " + " | ".join([
                f"{r['t_min']:.2f}", f"{r['req_rps']:,.0f}", f"{r['req_ok']:,}", f"{r['req_fail']}", f"{r['behind']:,}",
                f(r["p99_ms"], ".1f"), f"{r['stream_ok']}", f"{r['stream_fail']}", f"{r['pins_lost']}",
                f(r["rss_mib"], ".1f"), f(r["fds"], "d"), f(r["cpu_pct"], ".0f"), f(r["client_cpu_pct"], ".0f"),
                f(r["redis_cmds_per_req"], ".4f"),
                f(r["redis_used_mib"], ".2f"), f(r["sessions"], ","), f(r["local_cache"], ","),
                f(r["client_conns"], ".0f")]) + " |")
        tr = self.trends()
        rss = tr["rss_mib"]
        out += ["", f"## Trend over the last half (from minute {tr['window_from_min']:g}, {tr['window_points']} points)", ""]
        if rss["slope_per_min_last_half"] is None:
            out.append("- too few points in the last half for a slope")
        else:
            out.append(f"- **RSS: {rss['slope_per_min_last_half']:+.4f} MiB/min** (least squares); "
                       f"growth {rss['growth_last_half']:+.2f} MiB last − first "
                       f"({rss['fitted_growth_last_half']:+.2f} MiB fitted)")
        lc = tr["local_cache"]["slope_per_min_last_half"]
        if rss["slope_per_min_last_half"] is not None and lc and lc > 0:
            out.append(f"- RSS slope / local-cache slope: {rss['slope_per_min_last_half'] * 1024 / lc:.2f} KiB per "
                       f"cached session added (meaningful only while the cache grows)")
        out += ["", "| | first (run) | last (run) | max (run) | slope per min (last half) | growth (last half) |",
                "|---|---:|---:|---:|---:|---:|"]
        names = {"rss_mib": ("RSS MiB", ".1f"), "fds": ("fds", ".0f"), "threads": ("threads", ".0f"),
                 "redis_used_mib": ("Redis used_memory MiB", ".2f"), "sessions": ("sessions (sessions.count)", ",.0f"),
                 "local_cache": ("local cache entries", ",.0f")}
        for key, (label, fmt) in names.items():
            t = tr[key]
            out.append(f"| {label} | {f(t['first'], fmt)} | {f(t['last'], fmt)} | {f(t['max'], fmt)} | "
                       f"{f(t['slope_per_min_last_half'], '+.4f')} | {f(t['growth_last_half'], '+' + fmt)} |")
        fw = tr["fds_after_warmup"]
        tot = self.totals()
        total_req = sum(r["req_ok"] + r["req_fail"] for r in self.intervals)
        total_str = sum(r["stream_ok"] + r["stream_fail"] for r in self.intervals)
        total_cmd = collections.Counter()
        for r in self.intervals:
            total_cmd.update(r["redis_by_cmd"])
        per = ", ".join(f"{k} {v / max(1, total_req + total_str):.4f}" for k, v in total_cmd.most_common(8))
        secs = sum(r["secs"] for r in self.intervals) or 1
        out += ["",
                f"- fds after warm-up (from minute {fw['from_min']:.2f}): {f(fw['first'], 'd')} → {f(fw['last'], 'd')}"
                f" ({f(fw['growth'], '+d')})",
                f"- totals: requests {tot['req_ok']:,} ok, {tot['req_fail']} failed; streams {tot['stream_ok']:,} ok, "
                f"{tot['stream_fail']} failed (in-flight ones at the end included); {tot['behind']:,} requests not sent "
                f"(client over a second behind); pins lost {tot['pins_lost']}"
                + (f"; failures by cause: {tot['fail_causes']}" if tot["fail_causes"] else ""),
                f"- achieved {total_req / secs:,.0f} keyed requests/s on average against a target of {a.rps:g}",
                f"- Redis commands per request+stream over the run, by command: {per or '—'}",
                "- jemalloc: " + (", ".join(self.jemalloc_metrics) if self.jemalloc_metrics else
                                  "not exposed by this build (nothing in /metrics or /api/stats); RSS only"),
                f"- edge: {'DIED' if self.edge_died else 'alive at the end'}"]
        return "\n".join(out) + "\n"

    def result(self):
        return {"meta": self.meta, "prefill": self.prefill, "intervals": self.intervals,
                "trends": self.trends() if self.intervals else None,
                "totals": self.totals(), "edge_died": self.edge_died, "interrupted": self.interrupted}

    def write_json(self):
        if not self.args.json:
            return
        tmp = self.args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.result(), f, indent=1)
        os.replace(tmp, self.args.json)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="the relay-edge binary (relay-edge-demo-upstream beside it)")
    ap.add_argument("--minutes", type=float, default=None, help="length of the steady phase (60; --smoke 2)")
    ap.add_argument("--interval", type=float, default=None, help="seconds between samples (30; --smoke 10)")
    ap.add_argument("--sessions", type=int, default=None, help="known sessions pinned first (20000; --smoke 2000)")
    ap.add_argument("--rps", type=float, default=1000, help="target keyed requests per second, open loop (1000)")
    ap.add_argument("--new-share", type=float, default=0.05, help="share of requests with a new key (0.05)")
    ap.add_argument("--streams", type=int, default=20, help="concurrent SSE clients (20)")
    ap.add_argument("--connections", type=int, default=16, help="keep-alive connections of the keyed load (16)")
    ap.add_argument("--ttl", default="5m", help="affinity.ttl, so that new sessions expire within the run (5m)")
    ap.add_argument("--json", help="every interval's numbers, rewritten after each interval")
    ap.add_argument("--md", help="the markdown report (also printed)")
    ap.add_argument("--edge-extra", action="append", default=[], metavar="YAML",
                    help="top-level YAML appended to relay-edge's config; a key given here replaces the script's")
    ap.add_argument("--smoke", action="store_true",
                    help="2 min, 10 s intervals, 2000 sessions; exit 1 on any failure, a dead edge or leaking fds")
    args = ap.parse_args()
    args.minutes = args.minutes if args.minutes is not None else (2 if args.smoke else 60)
    args.interval = args.interval if args.interval is not None else (10 if args.smoke else 30)
    args.sessions = args.sessions if args.sessions is not None else (2000 if args.smoke else 20000)
    if args.minutes <= 0 or args.interval <= 0 or args.sessions < 1 or args.rps <= 0 or args.connections < 1 \
            or not 0 <= args.new_share <= 1 or args.streams < 0:
        ap.error("bad numbers")
    args.bin = os.path.abspath(args.bin)

    tmp = tempfile.mkdtemp(prefix="relay-edge-soak.")
    procs = Procs(tmp)
    soak = Soak(args, procs, tmp)
    budget = args.minutes * 60 + 300

    def watchdog():
        log(f"WATCHDOG: still running after {budget:.0f} s; killing everything")
        procs.kill_all()
        shutil.rmtree(tmp, ignore_errors=True)
        os._exit(3)

    dog = threading.Timer(budget, watchdog)
    dog.daemon = True
    dog.start()

    def on_term(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    code = 0
    try:
        soak.setup()
        asyncio.run(soak.run())
    except SetupError as e:
        log(f"set-up failed: {e}")
        code = 2
    except KeyboardInterrupt:
        log("interrupted")
        soak.interrupted = True
        code = 130
    finally:
        edge_log = Procs.tail(soak.edge, 2000) if soak.edge else ""
        procs.stop_all()
        dog.cancel()
    if code == 2 and not soak.intervals:
        shutil.rmtree(tmp, ignore_errors=True)
        return code
    text = soak.report()
    print(text, flush=True)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text)
    soak.write_json()
    if soak.edge_died:
        print(f"edge log (tail):\n{edge_log}", file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)
    if code:
        return code
    if args.smoke:
        problems = soak.verdict()
        if problems:
            print("SMOKE FAIL:\n" + "\n".join(f"- {p}" for p in problems), flush=True)
            return 1
        print("SMOKE OK: every request and stream succeeded, the edge lived, fds flat after warm-up", flush=True)
    elif soak.edge_died:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
