#!/usr/bin/env python3
"""relay-edge, nginx and HAProxy against hostile clients, side by side, on loopback.

    python3 benches/hostile/probe.py --bin target/release/relay-edge
    python3 benches/hostile/probe.py --bin BIN --out /tmp/hostile.json --md /tmp/hostile.md
    options: --bin PATH (a built relay-edge; required when edge is probed),
             --edge-extra YAML (appended verbatim to relay-edge's config),
             --probes a,b,... (default: all), --proxies edge,nginx,haproxy,
             --out FILE.json, --md FILE.md, --cap S (slow probes, 90), --budget S (watchdog, 390)

Probes (every proxy gets a fresh process for each probe; one worker/thread each):
  stalled_bodies       10 x POST, Content-Length 32 MiB, 31 MiB sent, then stalled: RSS
  oversized_header     20 x ~1000 KiB of header lines, no blank line, kept open: answer, RSS
  big_header_complete  a complete request with a 100 KiB header; one with a 60,000-byte URI
  slowloris_header     50 x one header byte every 2 s: seconds until closed, answer
  slow_body            20 x POST head, Content-Length 100000, one body byte every 2 s
  idle_connections     1000 keep-alive connections, one GET each, then idle: RSS per connection
  pipelining           3 and 30 GETs in one packet: responses received
  bad_requests_log     100 malformed heads and 50 cut mid-head: relay-edge ERROR log lines

Everything is on 127.0.0.1. The two slow probes run on all proxies at once in
background threads (each proxy its own instance) while the other probes run one
proxy at a time, so their 90 s caps overlap. A watchdog stops the whole run at
--budget seconds. Standard library only; nginx and haproxy are installed with
apt-get when missing. Every process started here is stopped on exit.
"""

import argparse
import collections
import ctypes
import json
import re
import os
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from common.ports import free_port as shared_free_port  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PINNED = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
KIB, MIB = 1 << 10, 1 << 20
HOST = "127.0.0.1"   # loopback only, always

PROBES = ["stalled_bodies", "oversized_header", "big_header_complete", "slowloris_header",
          "slow_body", "idle_connections", "pipelining", "framing", "bad_requests_log"]
SLOW = ["slowloris_header", "slow_body"]
PROXIES = ["edge", "nginx", "haproxy"]
LABEL = {"edge": "relay-edge", "nginx": "nginx", "haproxy": "haproxy"}

# What each proxy is configured with (also printed above the table).
TIMEOUTS = {
    "edge": "the build's defaults (client_idle 75 s) plus whatever --edge-extra sets",
    "nginx": "client_header_timeout 10s, client_body_timeout 60s, keepalive_timeout 75s, "
             "client_max_body_size 64m, client_body_buffer_size 16k, large_client_header_buffers 4 8k "
             "(default), request buffering on (default)",
    "haproxy": "timeout http-request 10s, client 60s, server 60s, connect 5s "
               "(http-keep-alive: unset, so http-request's 10s)",
}


def pin(cpu, cmd):
    return (["taskset", "-c", str(cpu)] + cmd) if PINNED else cmd


def say(msg):
    print(f"probe [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def die(msg, code=2):
    print(f"probe: {msg}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def install_missing():
    need = [p for p in ("nginx", "haproxy")
            if shutil.which(p) is None and not os.path.exists(f"/usr/sbin/{p}")]
    if not need:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    say(f"installing {' '.join(need)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True, env=env, timeout=300)
    subprocess.run(sudo + ["apt-get", "install", "-y", "-qq"] + need, check=True, env=env, timeout=600)


def free_port():
    return shared_free_port(HOST)


def _die_with_parent():
    """In the child, before exec: SIGKILL when the thread that started us ends."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# ---------------------------------------------------------------- processes

class Procs:
    """Every process this script started (all from the main thread); all are stopped on exit."""

    def __init__(self, tmp):
        self.tmp, self.procs, self.lock = tmp, [], threading.Lock()

    def start(self, name, cmd, stop=signal.SIGTERM, env=None):
        path = os.path.join(self.tmp, f"{name}.log")
        log = open(path, "wb")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             cwd=self.tmp, env=env, preexec_fn=_die_with_parent)
        log.close()
        p.name, p.stop_sig, p.log_path = name, stop, path
        with self.lock:
            self.procs.append(p)
        return p

    def stop(self, p):
        if p.poll() is None:
            try:
                p.send_signal(p.stop_sig)
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            except OSError:
                pass
        with self.lock:
            if p in self.procs:
                self.procs.remove(p)

    def stop_all(self):
        with self.lock:
            procs = list(self.procs)
        for p in procs:
            self.stop(p)

    def kill_all(self):
        """From the watchdog: no waiting for a graceful end."""
        with self.lock:
            procs = list(self.procs)
        for p in procs:
            try:
                if p.poll() is None:
                    p.kill()
            except OSError:
                pass

    def log(self, p, tail=3000):
        try:
            return open(p.log_path, "rb").read()[-tail:].decode("utf-8", "replace")
        except OSError:
            return ""


def children(pid):
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                kids.append(int(d))
    return kids


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Proxy:
    def __init__(self, kind, name, port, proc, admin=None):
        self.kind, self.name, self.port, self.proc, self.admin = kind, name, port, proc, admin

    def rss_kib(self):
        """relay-edge and haproxy: the process; nginx: master + workers."""
        pids = [self.proc.pid] + (children(self.proc.pid) if self.kind == "nginx" else [])
        return sum(rss_kib(p) for p in pids)

    def log_lines(self):
        try:
            with open(self.proc.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return []


def http_status(port, path, within=1.0):
    try:
        with socket.create_connection((HOST, port), timeout=within) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            head = s.recv(64)
            return int(head.split()[1]) if head.startswith(b"HTTP/") else None
    except (OSError, ValueError, IndexError):
        return None


def wait_200(procs, p, port, path, within):
    deadline = time.time() + within
    while time.time() < deadline:
        if p is not None and p.poll() is not None:
            die(f"{p.name} exited early (code {p.returncode}):\n{procs.log(p)}")
        if http_status(port, path) == 200:
            return
        time.sleep(0.1)
    die(f"{p.name if p else 'backend'}: :{port}{path} did not answer 200 within {within}s:\n"
        + (procs.log(p) if p else ""))


# ---------------------------------------------------------------- configs

def edge_conf(tmp, name, port, admin, backend, extra):
    path = os.path.join(tmp, f"{name}.yaml")
    text = (f"listen: [{{addr: {HOST}:{port}}}]\n"
            f"upstreams: [{{id: a, addr: {HOST}:{backend}}}]\n"
            f"admin: {{listen: {HOST}:{admin}}}\n"
            # Own pid file and upgrade socket: the defaults in /tmp would be
            # shared by every instance (and by any other relay-edge here).
            f"server: {{threads: 1, pid_file: {tmp}/{name}.pid, upgrade_sock: {tmp}/{name}.sock}}\n"
            f"affinity: {{keys: [{{header: x-session-id}}, {{json: /metadata/user_id}}]}}\n")
    if extra:
        text += extra if extra.endswith("\n") else extra + "\n"
    open(path, "w").write(text)
    return path


def nginx_conf(tmp, name, port, backend):
    os.makedirs(os.path.join(tmp, "tmp", name), exist_ok=True)
    t = f"tmp/{name}"
    path = os.path.join(tmp, f"{name}.conf")
    open(path, "w").write(f"""worker_processes 1;
pid {name}.pid;
error_log {name}.error.log warn;
worker_rlimit_nofile 8192;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_header_timeout 10s;
    client_body_timeout 60s;
    keepalive_timeout 75s;
    client_max_body_size 64m;
    client_body_buffer_size 16k;     # the default on 64-bit platforms
    # large_client_header_buffers: the default (4 8k); request buffering: on (the default)
    client_body_temp_path {t}/body; proxy_temp_path {t}/proxy; fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi; scgi_temp_path {t}/scgi;
    server {{
        listen {HOST}:{port};
        location / {{ proxy_pass http://{HOST}:{backend}; }}
    }}
}}
""")
    return path


def haproxy_conf(tmp, name, port, backend):
    path = os.path.join(tmp, f"{name}.cfg")
    open(path, "w").write(f"""global
    nbthread 1
    maxconn 8000
defaults
    mode http
    timeout http-request 10s
    timeout client 60s
    timeout server 60s
    timeout connect 5s
frontend fe
    bind {HOST}:{port}
    default_backend be
backend be
    server a {HOST}:{backend}
""")
    return path


class Launcher:
    def __init__(self, procs, tmp, binary, extra, backend):
        self.procs, self.tmp, self.binary, self.extra, self.backend = procs, tmp, binary, extra, backend
        self.n = 0
        self.env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}

    def start(self, kind, tag):
        """A fresh proxy, checked to answer 200 through to the backend."""
        self.n += 1
        name = f"{kind}-{tag}-{self.n}"
        port = free_port()
        if kind == "edge":
            admin = free_port()
            conf = edge_conf(self.tmp, name, port, admin, self.backend, self.extra)
            p = self.procs.start(name, pin(0, [self.binary, "-c", conf]), stop=signal.SIGINT, env=self.env)
            wait_200(self.procs, p, admin, "/readyz", 30)
        elif kind == "nginx":
            conf = nginx_conf(self.tmp, name, port, self.backend)
            p = self.procs.start(name, pin(0, ["nginx", "-p", self.tmp + "/", "-c", conf, "-g", "daemon off;"]))
        else:
            conf = haproxy_conf(self.tmp, name, port, self.backend)
            p = self.procs.start(name, pin(0, ["haproxy", "-db", "-f", conf]))
        wait_200(self.procs, p, port, "/health", 30)
        return Proxy(kind, name, port, p)


# ---------------------------------------------------------------- backend (a child process)

def backend_main(port):
    threading.stack_size(256 * KIB)
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((HOST, port))
    srv.listen(4096)
    while True:
        c, _ = srv.accept()
        threading.Thread(target=backend_conn, args=(c,), daemon=True).start()


class Reader:
    def __init__(self, sock):
        self.s, self.buf = sock, b""

    def fill(self):
        d = self.s.recv(256 * KIB)
        if not d:
            raise EOFError
        self.buf += d

    def until(self, sep, limit):
        while sep not in self.buf:
            if len(self.buf) > limit:
                raise ValueError("too long")
            self.fill()
        out, self.buf = self.buf.split(sep, 1)
        return out

    def skip(self, n):
        while n > 0:
            if not self.buf:
                self.fill()
            k = min(n, len(self.buf))
            self.buf, n = self.buf[k:], n - k


def backend_conn(c):
    r = Reader(c)
    try:
        while True:
            head = r.until(b"\r\n\r\n", 1 * MIB).decode("latin-1")
            lines = head.split("\r\n")
            parts = lines[0].split(" ")
            path = parts[1] if len(parts) > 1 else "/"
            h = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                h[k.strip().lower()] = v.strip()
            if "chunked" in h.get("transfer-encoding", "").lower():
                while True:
                    size = int(r.until(b"\r\n", 4096).split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while r.until(b"\r\n", 65536):
                            pass
                        break
                    r.skip(size + 2)
            else:
                r.skip(int(h.get("content-length", "0") or 0))
            close = h.get("connection", "").lower() == "close" or lines[0].endswith("HTTP/1.0")
            body = json.dumps({"ok": True, "path": path[:48]}).encode()
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
                      % (len(body), b"Connection: close\r\n" if close else b"", body))
            if close:
                return
    except (OSError, ValueError, EOFError):
        pass
    finally:
        c.close()


# ---------------------------------------------------------------- client helpers

def connect(port, timeout=5.0):
    s = socket.create_connection((HOST, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def push(s, data, stall=5.0, until=None, chunk=256 * KIB):
    """Send data without blocking forever, reading whatever comes back.
    Returns (bytes accepted, outcome, bytes received); outcome is sent,
    blocked (nothing accepted for `stall` s), deadline, closed or reset."""
    s.setblocking(False)
    view, off, got, outcome = memoryview(data), 0, bytearray(), "sent"
    poller = select.poll()
    poller.register(s, select.POLLIN | select.POLLOUT)
    last = time.monotonic()
    try:
        while off < len(view):
            now = time.monotonic()
            if until is not None and now > until:
                outcome = "deadline"
                break
            if now - last > stall:
                outcome = "blocked"
                break
            for _, ev in poller.poll(200):
                if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    try:
                        d = s.recv(65536)
                    except BlockingIOError:
                        d = None
                    except OSError:
                        return off, "reset", bytes(got)
                    if d == b"":
                        return off, "closed", bytes(got)
                    if d:
                        got += d[:4096 - len(got)] if len(got) < 4096 else b""
                if ev & select.POLLOUT:
                    try:
                        n = s.send(view[off:off + chunk])
                        off += n
                        last = time.monotonic()
                    except BlockingIOError:
                        pass
                    except OSError:
                        return off, "reset", bytes(got)
    finally:
        poller.unregister(s)
    return off, outcome, bytes(got)


def collect(s, got=b"", wait=0.0):
    """What the peer sent so far, and whether it is closed: (bytes, open|closed|reset).
    Reads what is there, waiting up to `wait` s for more."""
    s.setblocking(False)
    got = bytearray(got)
    p = select.poll()
    p.register(s, select.POLLIN)
    deadline = time.monotonic() + wait
    while True:
        if not p.poll(max(0.0, deadline - time.monotonic()) * 1000):
            return bytes(got), "open"
        try:
            d = s.recv(65536)
        except BlockingIOError:
            continue
        except OSError:
            return bytes(got), "reset"
        if not d:
            return bytes(got), "closed"
        if len(got) < 4096:
            got += d[:4096 - len(got)]


def answer(got, state):
    """A status line ('400 Bad Request'), or how the connection ended: closed, reset, open."""
    if got.startswith(b"HTTP/"):
        line = got.split(b"\r\n", 1)[0].decode("latin-1")
        return line.split(" ", 1)[1] if " " in line else line
    if got:
        return "junk"
    return state


def summary(answers):
    c = collections.Counter(answers)
    return "; ".join(f"{n}× {k}" for k, n in c.most_common())


def parse_responses(buf, eof=False):
    """Status codes of the complete responses at the start of buf, and bytes used."""
    out, pos = [], 0
    while True:
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0:
            break
        lines = buf[pos:end].decode("latin-1").split("\r\n")
        try:
            code = int(lines[0].split()[1])
        except (IndexError, ValueError):
            out.append(-1)
            pos = len(buf)
            break
        h = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            h[k.strip().lower()] = v.strip()
        body = end + 4
        if 100 <= code < 200:
            pos = body
            continue
        if code in (204, 304):
            pos = body
        elif "chunked" in h.get("transfer-encoding", "").lower():
            p, done = body, False
            while True:
                le = buf.find(b"\r\n", p)
                if le < 0:
                    break
                try:
                    size = int(buf[p:le].split(b";")[0].strip() or b"0", 16)
                except ValueError:
                    break
                if size == 0:
                    te = buf.find(b"\r\n\r\n", le) if buf[le + 2:le + 4] != b"\r\n" else le
                    if te >= 0:
                        p, done = te + 4, True
                    break
                p = le + 2 + size + 2
                if p > len(buf):
                    break
            if not done:
                break
            pos = p
        elif "content-length" in h:
            n = int(h["content-length"])
            if body + n > len(buf):
                break
            pos = body + n
        else:
            if not eof:
                break
            pos = len(buf)
        out.append(code)
    return out, pos


def read_responses(s, want, timeout):
    """Read until `want` complete responses, close, or `timeout` s: (codes, state)."""
    s.settimeout(0.5)
    buf, deadline, state = b"", time.monotonic() + timeout, "open"
    while time.monotonic() < deadline:
        try:
            d = s.recv(256 * KIB)
        except socket.timeout:
            continue
        except OSError:
            state = "reset"
            break
        if not d:
            state = "closed"
            break
        buf += d
        if len(parse_responses(buf)[0]) >= want:
            break
    codes, _ = parse_responses(buf, eof=state != "open")
    return codes, state, buf


def run_threads(fn, items, parallel):
    """fn(item) for every item, `parallel` threads at a time; results in order."""
    results = [None] * len(items)
    it = iter(enumerate(items))
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                nxt = next(it, None)
            if nxt is None:
                return
            i, item = nxt
            try:
                results[i] = fn(item)
            except Exception as e:   # a probe connection failing is a result too
                results[i] = e

    ts = [threading.Thread(target=worker, daemon=True) for _ in range(min(parallel, len(items)))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return results


def close_all(socks):
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


# ---------------------------------------------------------------- probes

JSON_PREFIX = b'{"metadata":{"user_id":"u"},"messages":"'


def probe_stalled_bodies(px):
    n, declared, sent = 10, 32 * MIB, 31 * MIB
    head = (b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % declared)
    data = head + JSON_PREFIX + b"a" * (sent - len(JSON_PREFIX))
    before = px.rss_kib()
    peak = [before]
    until = time.monotonic() + 60

    def one(_):
        s = connect(px.port)
        off, outcome, got = push(s, data, stall=5.0, until=until)
        return s, max(0, off - len(head)), outcome, got

    done = threading.Event()

    def sampler():
        while not done.is_set():
            peak[0] = max(peak[0], px.rss_kib())
            time.sleep(0.2)

    t = threading.Thread(target=sampler, daemon=True)
    t.start()
    res = run_threads(one, list(range(n)), n)
    time.sleep(3)
    after = px.rss_kib()
    done.set()
    t.join()
    peak[0] = max(peak[0], after)
    ok = [r for r in res if not isinstance(r, Exception)]
    answers = [answer(*collect(s, got)) for s, _, _, got in ok] + ["connect failed"] * (n - len(ok))
    close_all(s for s, _, _, _ in ok)
    return {"conns": n, "declared_bytes": declared, "sent_bytes_each": sent,
            "accepted_body_bytes": [a for _, a, _, _ in ok], "accepted_mib": sum(a for _, a, _, _ in ok) / MIB,
            "outcomes": summary(o for _, _, o, _ in ok), "answers": summary(answers),
            "rss_before_mib": before / KIB, "rss_peak_mib": peak[0] / KIB, "rss_after_mib": after / KIB,
            "rss_delta_mib": (after - before) / KIB}


def probe_oversized_header(px):
    n = 20
    line = b"X-Pad: " + b"a" * (8 * KIB - 9) + b"\r\n"      # 8 KiB per line, CRLF included
    data = b"GET / HTTP/1.1\r\nHost: x\r\n" + line * 125     # 1000 KiB of header lines, no blank line
    before = px.rss_kib()
    until = time.monotonic() + 30

    def one(_):
        s = connect(px.port)
        off, outcome, got = push(s, data, stall=5.0, until=until)
        return s, off, outcome, got

    res = run_threads(one, list(range(n)), n)
    time.sleep(3)
    after = px.rss_kib()
    ok = [r for r in res if not isinstance(r, Exception)]
    answers = [answer(*collect(s, got)) for s, _, _, got in ok] + ["connect failed"] * (n - len(ok))
    close_all(s for s, _, _, _ in ok)
    acc = [a for _, a, _, _ in ok]
    return {"conns": n, "header_bytes_each": len(data), "answers": summary(answers),
            "outcomes": summary(o for _, _, o, _ in ok),
            "accepted_kib_median": statistics.median(acc) / KIB if acc else 0,
            "rss_before_mib": before / KIB, "rss_after_mib": after / KIB,
            "rss_delta_kib_per_conn": (after - before) / n}


def one_shot(port, data, timeout=10.0):
    s = connect(port)
    try:
        _, outcome, got = push(s, data, stall=5.0)
        if not got.startswith(b"HTTP/") or b"\r\n" not in got:
            if outcome in ("closed", "reset"):
                return answer(got, outcome)
            got, state = collect(s, got, wait=0)
            deadline = time.monotonic() + timeout
            while b"\r\n" not in got and state == "open" and time.monotonic() < deadline:
                got, state = collect(s, got, wait=0.2)
            return answer(got, "no answer in 10 s" if state == "open" else state)
        return answer(got, outcome)
    finally:
        s.close()


def probe_big_header_complete(px):
    big = b"GET /big-header HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (100 * KIB) + b"\r\n\r\n"
    uri = b"/" + b"a" * 59999
    long_uri = b"GET " + uri + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    return {"header_100k": one_shot(px.port, big), "uri_60000": one_shot(px.port, long_uri)}


def slow_probe(port, kind, n, cap, period=2.0):
    """n connections that each send one more byte every `period` s; when each is closed."""
    if kind == "slowloris_header":
        head, drip = b"GET / HTTP/1.1\r\nHost: x\r\n", b"X-Slow: " + b"a" * 1000
    else:
        head = (b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000\r\n\r\n")
        drip = JSON_PREFIX + b"a" * 1000
    conns, poller, byfd = [], select.poll(), {}
    for _ in range(n):
        c = {"t0": time.monotonic(), "closed": None, "got": b"", "state": "open", "k": 0}
        try:
            s = connect(port)
            s.sendall(head)
            s.setblocking(False)
        except OSError as e:
            c["closed"], c["state"] = 0.0, f"connect failed: {e}"
            conns.append(c)
            continue
        c["s"] = s
        byfd[s.fileno()] = c
        poller.register(s, select.POLLIN)
        conns.append(c)

    def end(c, state):
        c["closed"] = time.monotonic() - c["t0"]
        c["state"] = state
        poller.unregister(c["s"])
        del byfd[c["s"].fileno()]
        c["s"].close()

    last_t0 = max(c["t0"] for c in conns)
    next_tick = time.monotonic() + period
    while byfd and time.monotonic() - last_t0 < cap:
        for fd, _ in poller.poll(max(0.0, next_tick - time.monotonic()) * 1000):
            c = byfd.get(fd)
            if c is None:
                continue
            try:
                d = c["s"].recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                end(c, "reset")
                continue
            if not d:
                end(c, "closed")
            elif len(c["got"]) < 4096:
                c["got"] += d
        if time.monotonic() >= next_tick:
            next_tick += period
            for c in list(byfd.values()):
                if time.monotonic() - c["t0"] >= cap:
                    continue
                try:
                    c["s"].send(drip[c["k"]:c["k"] + 1])
                    c["k"] += 1
                except BlockingIOError:
                    pass
                except OSError:
                    end(c, "reset")
    for c in list(byfd.values()):   # still open at the cap
        poller.unregister(c["s"])
        c["s"].close()
    times = [c["closed"] for c in conns]
    finite = sorted(t if t is not None else float("inf") for t in times)
    med = statistics.median(finite)
    return {"conns": n, "cap_s": cap, "closed_after_s": times,
            "median_s": None if med == float("inf") else med,
            "max_s": None if finite[-1] == float("inf") else finite[-1],
            "still_open": sum(t is None for t in times),
            "answers": summary(answer(c["got"], c["state"]) for c in conns)}


def probe_idle_connections(px, n=1000):
    warm = run_threads(lambda _: http_status(px.port, "/warm", 5), list(range(10)), 5)
    time.sleep(0.5)
    before = px.rss_kib()
    req = b"GET /idle HTTP/1.1\r\nHost: x\r\n\r\n"

    def one(_):
        s = connect(px.port)
        s.sendall(req)
        codes, state, _ = read_responses(s, 1, 10)
        if codes[:1] != [200] or state != "open":
            s.close()
            return f"{codes[:1]} {state}"
        return s

    res = run_threads(one, list(range(n)), 25)
    socks = [r for r in res if isinstance(r, socket.socket)]
    fails = [str(r) for r in res if not isinstance(r, socket.socket)]
    time.sleep(2)
    after = px.rss_kib()
    still = sum(1 for s in socks if collect(s)[1] == "open")
    close_all(socks)
    return {"conns": n, "answered": len(socks), "open_at_sample": still,
            "failures": summary(fails) if fails else "", "warm_ok": sum(w == 200 for w in warm),
            "rss_before_mib": before / KIB, "rss_after_mib": after / KIB,
            "rss_delta_kib_per_conn": (after - before) / max(1, len(socks))}


def probe_pipelining(px):
    out = {}
    for n in (3, 30):
        s = connect(px.port)
        try:
            s.sendall(b"".join(b"GET /pipe/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(n)))
            codes, state, _ = read_responses(s, n, 5)
        finally:
            s.close()
        out[f"p{n}"] = {"sent": n, "received": len(codes), "codes": summary(codes), "state": state}
    return out


# Framing and connection ends (RFC 9112 sections 6 and 9): each on a fresh
# connection; what came back, whether the connection then closed, and
# whether a request hidden after the first reached the backend.
FRAMING = [
    ("CL + TE, then a request",
     b"POST /f HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("TE + CL",
     b"POST /f HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n"),
    ("TE: chunked, gzip (chunked not last)",
     b"POST /f HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"),
    ("TE on HTTP/1.0",
     b"POST /f HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("space before the colon of TE",
     b"POST /f HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\nabcd"),
    ("obs-fold", b"GET /f HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n"),
    ("HTTP/1.0, no keep-alive", b"GET /f HTTP/1.0\r\nHost: x\r\n\r\n"),
    ("HTTP/1.0, Connection: keep-alive", b"GET /f HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"),
    ("HTTP/1.1, Connection: close", b"GET /f HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
]


def probe_framing(px):
    out = {}
    for name, data in FRAMING:
        s = connect(px.port)
        try:
            try:
                s.sendall(data)
            except OSError:
                pass
            got, state, deadline = b"", "open", time.monotonic() + 3
            while state == "open" and time.monotonic() < deadline:
                got, state = collect(s, got, wait=0.2)
        finally:
            s.close()
        codes = re.findall(rb"HTTP/1\.[01] (\d{3})", got)
        text = " ".join(c.decode() for c in codes) or "nothing"
        smuggled = b"/smuggled" in got
        out[name] = f"{text}; {state}" + ("; SMUGGLED" if smuggled else "")
    return out


MALFORMED = [
    ("no colon", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"),
    ("space in a header name", b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n"),
    ("Content-Length: abc", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"),
    ("two Content-Lengths", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello"),
    ("TLS hello on plain HTTP", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(32) + b"\r\n\r\n"),
]


def probe_bad_requests_log(px):
    start_lines = len(px.log_lines())

    def malformed(data):
        s = connect(px.port)
        try:
            try:
                s.sendall(data)
            except OSError:
                pass
            got, state, deadline = b"", "open", time.monotonic() + 2
            while state == "open" and time.monotonic() < deadline:
                got, state = collect(s, got, wait=0.2)
            return answer(got, state)
        finally:
            s.close()

    def cut(_):
        s = connect(px.port)
        try:
            s.sendall(b"GET /v1/messages HTTP/1.1\r\nHost: x\r\nX-Session-Id: abandon")
            time.sleep(0.05)
        finally:
            s.close()
        return "cut"

    items = [data for _, data in MALFORMED for _ in range(100 // len(MALFORMED))]
    answers = run_threads(malformed, items, 25)
    by_kind = {name: summary(str(a) for a in answers[i * 20:(i + 1) * 20]) for i, (name, _) in enumerate(MALFORMED)}
    run_threads(cut, list(range(50)), 25)
    time.sleep(1.5)
    new = px.log_lines()[start_lines:]
    errors = [line for line in new if " ERROR " in line]
    out = {"malformed": len(items), "cut": 50, "answers": summary(str(a) for a in answers),
           "answers_by_kind": by_kind}
    if px.kind == "edge":
        out.update({"error_lines": len(errors), "warn_lines": sum(" WARN " in line for line in new),
                    "log_lines": len(new), "error_examples": errors[:5]})
    else:
        out["error_lines"] = None
    return out


FOREGROUND = {"stalled_bodies": probe_stalled_bodies, "oversized_header": probe_oversized_header,
              "big_header_complete": probe_big_header_complete, "idle_connections": probe_idle_connections,
              "pipelining": probe_pipelining, "framing": probe_framing,
              "bad_requests_log": probe_bad_requests_log}


# ---------------------------------------------------------------- report

def secs(v, cap):
    return f">{cap:.0f}" if v is None else f"{v:.1f}"


def rows_for(probe, r, cap):
    """(measure, value) pairs of one probe's result on one proxy."""
    if r is None:
        return None
    if "error" in r:
        return [("error", r["error"])]
    if probe == "stalled_bodies":
        return [("body MiB accepted (of 10 × 31)", f"{r['accepted_mib']:.0f}"),
                ("send outcome", r["outcomes"]),
                ("answer", r["answers"]),
                ("RSS before, MiB", f"{r['rss_before_mib']:.1f}"),
                ("RSS peak while sending, MiB", f"{r['rss_peak_mib']:.1f}"),
                ("RSS 3 s after stall, MiB", f"{r['rss_after_mib']:.1f}"),
                ("RSS delta, MiB", f"{r['rss_delta_mib']:+.1f}")]
    if probe == "oversized_header":
        return [("answer (20 conns)", r["answers"]),
                ("send outcome", r["outcomes"]),
                ("KiB accepted per conn (median, of 1000)", f"{r['accepted_kib_median']:.0f}"),
                ("RSS delta per conn, KiB", f"{r['rss_delta_kib_per_conn']:+.0f}")]
    if probe == "big_header_complete":
        return [("100 KiB header", r["header_100k"]), ("60,000-byte URI", r["uri_60000"])]
    if probe in SLOW:
        return [("closed after s: median / max", f"{secs(r['median_s'], cap)} / {secs(r['max_s'], cap)}"),
                (f"answer ({r['conns']} conns)", r["answers"])]
    if probe == "idle_connections":
        return [("answered / still open at sample (of 1000)", f"{r['answered']} / {r['open_at_sample']}"),
                ("RSS delta per idle conn, KiB", f"{r['rss_delta_kib_per_conn']:.1f}")]
    if probe == "pipelining":
        return [(f"{n} GETs in one packet: responses", f"{r[f'p{n}']['received']}/{n}"
                 + ("" if r[f"p{n}"]["received"] == n else f" (then {r[f'p{n}']['state']})"))
                for n in (3, 30)]
    if probe == "framing":
        return [(name, r.get(name, "—")) for name, _ in FRAMING]
    if probe == "bad_requests_log":
        return [("ERROR log lines (100 malformed + 50 cut)", "n/a" if r["error_lines"] is None else str(r["error_lines"])),
                ("answers to the 100 malformed", r["answers"])]
    return [("result", json.dumps(r))]


def table(results, proxies, probes, cap):
    head = ["probe", "measure"] + [LABEL[p] for p in proxies]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for probe in probes:
        per = {p: rows_for(probe, results.get(p, {}).get(probe), cap) for p in proxies}
        measures = []
        for p in proxies:
            for m, _ in per[p] or []:
                if m not in measures:
                    measures.append(m)
        for m in measures:
            cells = []
            for p in proxies:
                v = dict(per[p] or []).get(m, "—")
                cells.append(str(v).replace("|", "/"))
            out.append(f"| {probe} | {m} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def versions(binary, proxies):
    v = {}
    try:
        if "edge" in proxies:
            v["relay-edge"] = subprocess.run([binary, "--version"], capture_output=True, text=True,
                                             timeout=10).stdout.strip()
        if "nginx" in proxies:
            v["nginx"] = subprocess.run(["nginx", "-v"], capture_output=True, text=True,
                                        timeout=10).stderr.strip()
        if "haproxy" in proxies:
            v["haproxy"] = subprocess.run(["haproxy", "-v"], capture_output=True, text=True,
                                          timeout=10).stdout.splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    return v


# ---------------------------------------------------------------- main

def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--backend":
        return backend_main(int(sys.argv[2]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", help="a built relay-edge (required when edge is probed)")
    ap.add_argument("--edge-extra", default="", help="YAML appended verbatim to relay-edge's config")
    ap.add_argument("--probes", default=",".join(PROBES))
    ap.add_argument("--proxies", default=",".join(PROXIES))
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--md", help="also write the markdown report here")
    ap.add_argument("--cap", type=float, default=90.0, help="slow probes: stop waiting after this many s")
    ap.add_argument("--budget", type=float, default=390.0, help="watchdog: stop everything after this many s")
    args = ap.parse_args()
    probes = [p.strip() for p in args.probes.split(",") if p.strip()]
    proxies = [p.strip() for p in args.proxies.split(",") if p.strip()]
    for p in probes:
        if p not in PROBES:
            die(f"unknown probe {p!r}; known: {', '.join(PROBES)}")
    for p in proxies:
        if p not in PROXIES:
            die(f"unknown proxy {p!r}; known: {', '.join(PROXIES)}")
    probes = [p for p in PROBES if p in probes]
    proxies = [p for p in PROXIES if p in proxies]
    binary = None
    if "edge" in proxies:
        if not args.bin:
            die("--bin PATH is required to probe relay-edge (or leave edge out of --proxies)")
        binary = os.path.abspath(args.bin)
        if not os.access(binary, os.X_OK):
            die(f"not an executable: {binary}")

    if {"nginx", "haproxy"} & set(proxies):
        install_missing()
    os.environ["PATH"] += ":/usr/sbin:/sbin"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 65536), hard), hard))
    if PINNED:
        os.sched_setaffinity(0, {1})   # clients here and the backend on CPU 1, proxies on CPU 0

    tmp = tempfile.mkdtemp(prefix="relay-edge-hostile.")
    os.chmod(tmp, 0o755)               # nginx workers (nobody) write body temp files under it
    os.makedirs(os.path.join(tmp, "tmp"))
    procs = Procs(tmp)
    t_start = time.time()

    def watchdog():
        print(f"probe: watchdog: still running after {args.budget:.0f}s; killing everything",
              file=sys.stderr, flush=True)
        procs.kill_all()
        shutil.rmtree(tmp, ignore_errors=True)
        os._exit(3)

    dog = threading.Timer(args.budget, watchdog)
    dog.daemon = True
    dog.start()

    def on_term(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)

    results = {p: {} for p in proxies}
    meta = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_start)), "bin": binary,
            "edge_extra": args.edge_extra, "pinned": PINNED, "cap_s": args.cap,
            "timeouts": {LABEL[p]: TIMEOUTS[p] for p in proxies}, "versions": versions(binary, proxies)}
    try:
        backend_port = free_port()
        backend = procs.start("backend", pin(1, [sys.executable, os.path.abspath(__file__), "--backend",
                                                 str(backend_port)]))
        wait_200(procs, backend, backend_port, "/health", 15)
        if "edge" in proxies:
            conf = edge_conf(tmp, "edge-check", free_port(), free_port(), backend_port, args.edge_extra)
            chk = subprocess.run([binary, "-c", conf, "--check"], capture_output=True, text=True, timeout=30)
            if chk.returncode != 0:
                die(f"relay-edge rejects the config (is --edge-extra right for this build?):\n"
                    f"{open(conf).read()}\n{chk.stdout}{chk.stderr}")
        launch = Launcher(procs, tmp, binary, args.edge_extra, backend_port)

        # The slow probes: every proxy at once, in the background.
        slow_threads, slow_insts = [], []
        slow = [p for p in probes if p in SLOW]
        if slow:
            for kind in proxies:
                px = launch.start(kind, "slow")
                slow_insts.append(px)
                for probe in slow:
                    n = 50 if probe == "slowloris_header" else 20

                    def run(px=px, probe=probe, n=n):
                        try:
                            results[px.kind][probe] = slow_probe(px.port, probe, n, args.cap)
                        except Exception as e:
                            results[px.kind][probe] = {"error": f"{type(e).__name__}: {e}"}

                    t = threading.Thread(target=run, daemon=True)
                    t.start()
                    slow_threads.append(t)
            say(f"slow probes started on {', '.join(LABEL[p] for p in proxies)} (up to {args.cap:.0f} s)")

        # The others: one proxy at a time, a fresh process for each probe.
        for kind in proxies:
            for probe in probes:
                if probe in SLOW:
                    continue
                say(f"{LABEL[kind]}: {probe}")
                px = launch.start(kind, probe)
                try:
                    results[kind][probe] = FOREGROUND[probe](px)
                except Exception as e:
                    results[kind][probe] = {"error": f"{type(e).__name__}: {e}"}
                    say(f"{LABEL[kind]}: {probe} failed: {e}")
                if px.proc.poll() is not None:
                    results[kind][probe]["exited"] = px.proc.returncode
                    say(f"{LABEL[kind]} exited during {probe}:\n{procs.log(px.proc)}")
                if kind == "edge":
                    results[kind][probe]["instance_error_lines"] = sum(" ERROR " in line for line in px.log_lines())
                procs.stop(px.proc)

        if slow_threads:
            say("waiting for the slow probes")
            for t in slow_threads:
                t.join(args.cap + 60)
            for px in slow_insts:
                for probe in slow:
                    r = results[px.kind].setdefault(probe, {"error": "no result"})
                    if px.proc.poll() is not None:
                        r["exited"] = px.proc.returncode
                    if px.kind == "edge":
                        r["instance_error_lines"] = sum(" ERROR " in line for line in px.log_lines())
                procs.stop(px.proc)
    except KeyboardInterrupt:
        die("interrupted", 130)
    finally:
        dog.cancel()
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    elapsed = time.time() - t_start
    md = [f"# Hostile clients, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t_start))}",
          "",
          f"Loopback, one worker/thread per proxy, a fresh process per probe; "
          + ("proxies on CPU 0, clients and backend on CPU 1. " if PINNED else "not pinned. ")
          + f"Slow probes capped at {args.cap:.0f} s. Run took {elapsed:.0f} s.",
          ""]
    for k, v in meta["versions"].items():
        md.append(f"- {k}: `{v}`")
    if "edge" in proxies:
        md.append(f"- relay-edge binary: `{binary}`; --edge-extra: "
                  + (f"`{' '.join(args.edge_extra.split())}`" if args.edge_extra.strip() else "(none)"))
    for p in proxies:
        md.append(f"- {LABEL[p]} timeouts: {TIMEOUTS[p]}")
    md += ["", table(results, proxies, probes, args.cap), ""]
    text = "\n".join(md)
    print(text, flush=True)
    if args.md:
        open(args.md, "w").write(text)
    if args.out:
        meta["elapsed_s"] = elapsed
        json.dump({"meta": meta, "results": results, "table": text}, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
