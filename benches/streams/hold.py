#!/usr/bin/env python3
"""What a stream costs on each path: held, Pingora's, nginx and HAProxy
(issue 11; syscalls and the peers since issue 23).

Starts a demo relay, two relay-edge processes that differ only in
`streams.hold_first_event` (on: the held path, proxy::held, with its usage
scan; off: Pingora's own path), nginx (`proxy_buffering off`) and HAProxy,
each with one worker. Then, in rounds that alternate the paths (and the
relay directly), sequential Claude-Code-shaped requests go over one
keep-alive connection each: a 90 KB Messages body with `"stream": true`, the
session in `x-claude-code-session-id`, and an answer of 30 events that the
relay writes back to back. It measures:

- added time to first byte: the first body byte of the answer, p50 and
  p99, against the relay reached directly;
- CPU per request and per SSE event: the proxy's user+system time over the
  run (every process and thread), divided by requests or events relayed;
- syscalls per request: one more run per proxy under `strace -c -f` (which
  slows it; its CPU is not used).

usage: hold.py --bin target/release/relay-edge [--streams 1000] [--rounds 3]
               [--gap-ms 0] [--small] [--strace-streams 500] [--out F.md]
`relay-edge-demo-upstream` must sit beside the binary; nginx, HAProxy and
strace are installed from Debian when missing.
"""
import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from common.ports import free_port  # noqa: E402
from common.peers import haproxy_conf, nginx_conf  # noqa: E402
from common.claude import claude_body  # noqa: E402
from common import syscalls  # noqa: E402

HEADER = "x-claude-code-session-id"
SESSION = "5e1c0a9e-7b1d-4f0e-9d55-0c3f4b1f2a11"
SMALL = b'{"model":"claude-x","max_tokens":16,"stream":true,"messages":[{"role":"user","content":"hi"}]}'
EVENTS = 30  # chunks: message_start, content_block_start, 26 deltas, content_block_stop, message_delta + message_stop
PATHS = (("direct", "relay directly"),
         ("on", "relay-edge, hold_first_event: true (held path, usage scan)"),
         ("off", "relay-edge, hold_first_event: false (Pingora's path)"),
         ("nginx", "nginx, proxy_buffering off"),
         ("haproxy", "HAProxy"))


def install_missing():
    need = [pkg for tool, pkg in (("nginx", "nginx"), ("haproxy", "haproxy"), ("strace", "strace"))
            if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}")]
    if need:
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True)
        subprocess.run(sudo + ["apt-get", "install", "-y", "-qq"] + need, check=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def wait_port(port, deadline=20.0):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def tree(pid):
    """`pid` and its children (nginx's workers)."""
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return pids


def cpu_seconds(pids):
    """CPU time of every thread of `pids`, in ns precision (schedstat)."""
    total = 0
    for pid in pids:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[0])
            except OSError:
                pass
    return total / 1e9


def request_bytes(gap_ms, small):
    body = SMALL if small else (lambda h, t: h + SESSION.encode() + t)(*claude_body())
    path = f"/v1/messages?sse={EVENTS - 2}&gap_ms={gap_ms}"
    return (
        f"POST {path} HTTP/1.1\r\nhost: bench\r\n{HEADER}: {SESSION}\r\n"
        f"anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


REQUEST = request_bytes(0, True)


def read_chunked_to_end(sock, buf):
    """Read until the chunked body's last chunk (the stream's end)."""
    while b"\r\n0\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            sys.exit("connection closed mid-stream")
        buf += data
    return buf


def one_stream(sock):
    """Time to the first body byte of one streaming answer (one write, one
    keep-alive connection: no Nagle or delayed-ACK stalls)."""
    t0 = time.perf_counter()
    sock.sendall(REQUEST)
    buf = b""
    while True:
        data = sock.recv(65536)
        if not data:
            sys.exit("connection closed")
        buf += data
        head_end = buf.find(b"\r\n\r\n")
        if head_end >= 0 and len(buf) > head_end + 4:
            break
    ttfb = time.perf_counter() - t0
    if not buf.startswith(b"HTTP/1.1 200"):
        sys.exit(f"bad answer: {buf[:200]!r}")
    buf = read_chunked_to_end(sock, buf)
    if b"message_stop" not in buf:
        sys.exit(f"stream without message_stop: {buf[-300:]!r}")
    return ttfb


def run(port, n, pids=(), count=False):
    """`n` streams in a row on one connection, after 50 to warm up: their
    TTFBs, the CPU seconds of `pids` over them, and with `count` the
    syscalls per request (from a traced run, whose CPU is not used)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for _ in range(50):  # warm: pool, caches
        one_stream(sock)
    counter = syscalls.Count(pids) if count else None
    if counter:
        counter.__enter__()
    c0 = cpu_seconds(pids)
    ttfbs = [one_stream(sock) for _ in range(n)]
    c1 = cpu_seconds(pids)
    if counter:
        counter.__exit__(None, None, None)
    sock.close()
    return ttfbs, c1 - c0, counter.per_request(n) if counter else None


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def start_paths(a, tmp, relay, procs):
    """The four proxies, each in front of the relay: {path: (port, pid)}."""
    paths = {}
    for hold in ("on", "off"):
        port, admin = free_port(), free_port()
        conf = os.path.join(tmp, f"hold-{hold}.yaml")
        with open(conf, "w") as f:
            f.write(
                f"listen: [{{addr: '127.0.0.1:{port}'}}]\n"
                f"upstreams: [{{id: r, addr: '127.0.0.1:{relay}'}}]\n"
                f"affinity: {{keys: [{{header: {HEADER}}}]}}\n"
                f"admin: {{listen: '127.0.0.1:{admin}'}}\n"
                f"streams: {{hold_first_event: {'true' if hold == 'on' else 'false'}}}\n"
                f"server: {{threads: 1, pid_file: '{tmp}/{hold}.pid', upgrade_sock: '{tmp}/{hold}.sock', log_level: warn}}\n"
            )
        procs.append(subprocess.Popen([a.bin, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        paths[hold] = (port, procs[-1].pid)
    relays = [("r", relay)]
    port = free_port()
    conf = nginx_conf(tmp, "nginx", port, relays, 1, HEADER)
    procs.append(subprocess.Popen(["nginx", "-p", tmp + "/", "-c", conf, "-g", "daemon off;"], cwd=tmp,
                                  stderr=subprocess.DEVNULL))
    paths["nginx"] = (port, procs[-1].pid)
    port = free_port()
    procs.append(subprocess.Popen(["haproxy", "-db", "-f", haproxy_conf(tmp, port, relays, 1, HEADER)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    paths["haproxy"] = (port, procs[-1].pid)
    for port, _ in paths.values():
        wait_port(port)
    return paths


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gap-ms", type=int, default=0, help="between a stream's events")
    ap.add_argument("--small", action="store_true", help="a 96-byte body instead of the 90 KB Claude Code one")
    ap.add_argument("--strace-streams", type=int, default=500, help="streams in each traced run (0: none)")
    ap.add_argument("--out")
    a = ap.parse_args()
    global REQUEST
    REQUEST = request_bytes(a.gap_ms, a.small)
    install_missing()
    os.environ["PATH"] += ":/usr/sbin:/sbin"
    demo = os.path.join(os.path.dirname(a.bin), "relay-edge-demo-upstream")
    tmp = tempfile.mkdtemp(prefix="relay-edge-hold.")
    os.makedirs(os.path.join(tmp, "tmp"))
    relay = free_port()
    procs = [subprocess.Popen([demo, f"127.0.0.1:{relay}"], stdout=subprocess.DEVNULL)]
    wait_port(relay)
    try:
        paths = start_paths(a, tmp, relay, procs)
        paths["direct"] = (relay, None)
        results = {k: {"ttfb": [], "cpu": 0.0, "requests": 0} for k, _ in PATHS}
        names = [k for k, _ in PATHS]
        for r in range(a.rounds):
            order = names[:1] + (names[1:] if r % 2 == 0 else names[:0:-1])
            for k in order:
                port, pid = paths[k]
                ttfbs, cpu, _ = run(port, a.streams, tree(pid) if pid else ())
                results[k]["ttfb"] += ttfbs
                results[k]["cpu"] += cpu
                results[k]["requests"] += a.streams
        traced = {}
        if a.strace_streams:
            for k in names[1:]:
                port, pid = paths[k]
                traced[k] = run(port, a.strace_streams, tree(pid), count=True)[2]
        d50, d99 = pct(results["direct"]["ttfb"], 0.5), pct(results["direct"]["ttfb"], 0.99)
        body = "a 96-byte body" if a.small else f"a {len(REQUEST) / 1000:.0f} KB Claude Code body"
        lines = [
            "# Streams, one after another on one connection: each path's cost",
            "",
            f"{a.rounds} rounds x {a.streams} sequential streams per path, alternating; {body}, "
            f"`\"stream\": true`, the session in `{HEADER}`; {EVENTS} chunks per answer, {a.gap_ms} ms apart; "
            "one worker each; loopback; CPU from /proc/PID/task/*/schedstat. "
            f"Syscalls: one more run of {a.strace_streams} streams per path under `strace -c -f`.",
            "",
            "| path | TTFB p50 ms | p99 ms | added p50 ms | added p99 ms | CPU µs per request | CPU µs per event | "
            + " | ".join(syscalls.COLUMNS) + " |",
            "|---|" + "---:|" * (6 + len(syscalls.COLUMNS)),
        ]
        for k, label in PATHS:
            t = results[k]["ttfb"]
            p50, p99 = pct(t, 0.5), pct(t, 0.99)
            direct = k == "direct"
            per_req = results[k]["cpu"] / max(results[k]["requests"], 1) * 1e6
            cpu = ("—", "—") if direct else (f"{per_req:.0f}", f"{per_req / EVENTS:.2f}")
            added = ("—", "—") if direct else (f"{(p50 - d50) * 1000:.3f}", f"{(p99 - d99) * 1000:.3f}")
            counts = [f"{traced[k][c]:.1f}" if k in traced else "—" for c in syscalls.COLUMNS]
            lines.append(f"| {label} | {p50 * 1000:.3f} | {p99 * 1000:.3f} | {added[0]} | {added[1]} | "
                         f"{cpu[0]} | {cpu[1]} | " + " | ".join(counts) + " |")
        if traced:
            lines += ["", "Most frequent syscalls, per request:", ""]
            lines += [f"- {dict(PATHS)[k]}: {t['top']}" for k, t in traced.items()]
        text = "\n".join(lines) + "\n"
        print(text)
        if a.out:
            with open(a.out, "w") as f:
                f.write(text)
    finally:
        # TERM, not KILL: nginx's master stops its workers only when asked.
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


if __name__ == "__main__":
    main()
