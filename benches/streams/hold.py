#!/usr/bin/env python3
"""What holding a stream until its first event costs (issue 11).

Starts two demo relays and two relay-edge processes on loopback that differ
only in `streams.hold_first_event` (on: the held path, proxy::held, with its
usage scan; off: Pingora's own path), then, in rounds that alternate the two
edges (and the relay directly), measures:

- added time to first byte: the first body byte of a streaming answer
  (`"stream": true`, 30 events sent at once), p50 and p99, against the relay
  reached directly;
- CPU per SSE event: the edge process's user+system time over a run of
  streams, divided by the events relayed.

usage: hold.py --bin target/release/relay-edge [--streams 3000] [--rounds 3] [--gap-ms 0] [--out F.md]
`relay-edge-demo-upstream` must sit beside the binary.
"""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from common.ports import free_port  # noqa: E402

BODY = b'{"model":"claude-x","max_tokens":16,"stream":true,"messages":[{"role":"user","content":"hi"}]}'
EVENTS = 30  # message_start, 28 deltas, message_delta + message_stop


def wait_port(port, deadline=20.0):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def cpu_seconds(pid):
    """CPU time of every thread of `pid`, in ns precision (schedstat)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total / 1e9


def request_bytes(gap_ms):
    path = f"/v1/messages?sse={EVENTS - 2}&gap_ms={gap_ms}"
    return (
    f"POST {path} HTTP/1.1\r\nhost: bench\r\nx-session-id: bench\r\n"
    f"content-type: application/json\r\ncontent-length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY


REQUEST = request_bytes(0)


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


def run(port, n, pid=None):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for _ in range(50):  # warm: pool, caches
        one_stream(sock)
    c0 = cpu_seconds(pid) if pid else 0.0
    ttfbs = [one_stream(sock) for _ in range(n)]
    c1 = cpu_seconds(pid) if pid else 0.0
    sock.close()
    return ttfbs, (c1 - c0)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--streams", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gap-ms", type=int, default=0, help="between a stream's events")
    ap.add_argument("--out")
    a = ap.parse_args()
    global REQUEST
    REQUEST = request_bytes(a.gap_ms)
    demo = os.path.join(os.path.dirname(a.bin), "relay-edge-demo-upstream")
    tmp = tempfile.mkdtemp(prefix="relay-edge-hold.")
    relay = free_port()
    procs = [subprocess.Popen([demo, f"127.0.0.1:{relay}"], stdout=subprocess.DEVNULL)]
    wait_port(relay)
    edges = {}
    for hold in ("on", "off"):
        port, admin = free_port(), free_port()
        conf = os.path.join(tmp, f"hold-{hold}.yaml")
        with open(conf, "w") as f:
            f.write(
                f"listen: [{{addr: '127.0.0.1:{port}'}}]\n"
                f"upstreams: [{{id: r, addr: '127.0.0.1:{relay}'}}]\n"
                "affinity: {keys: [{header: x-session-id}]}\n"
                f"admin: {{listen: '127.0.0.1:{admin}'}}\n"
                f"streams: {{hold_first_event: {'true' if hold == 'on' else 'false'}}}\n"
                f"server: {{threads: 1, pid_file: '{tmp}/{hold}.pid', upgrade_sock: '{tmp}/{hold}.sock', log_level: warn}}\n"
            )
        p = subprocess.Popen([a.bin, "-c", conf], stderr=subprocess.DEVNULL)
        procs.append(p)
        wait_port(port)
        edges[hold] = (port, p.pid)
    try:
        results = {k: {"ttfb": [], "cpu": 0.0, "events": 0} for k in ("direct", "on", "off")}
        for r in range(a.rounds):
            order = ["direct", "off", "on"] if r % 2 == 0 else ["direct", "on", "off"]
            for k in order:
                port, pid = (relay, None) if k == "direct" else edges[k]
                ttfbs, cpu = run(port, a.streams, pid)
                results[k]["ttfb"] += ttfbs
                results[k]["cpu"] += cpu
                results[k]["events"] += a.streams * EVENTS
        d50, d99 = pct(results["direct"]["ttfb"], 0.5), pct(results["direct"]["ttfb"], 0.99)
        lines = [
            "# Held streams: added time to first byte and CPU per event",
            "",
            f"{a.rounds} rounds x {a.streams} sequential streams of {EVENTS} events, "
            f"{a.gap_ms} ms apart, per path, alternating; one relay-edge thread each; loopback; "
            "CPU from /proc/PID/task/*/schedstat.",
            "",
            "| path | TTFB p50 ms | p99 ms | added p50 ms | added p99 ms | CPU µs per event |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for k, label in (("direct", "relay directly"), ("off", "edge, hold_first_event: false (Pingora's path)"), ("on", "edge, hold_first_event: true (held, usage scan)")):
            t = results[k]["ttfb"]
            p50, p99 = pct(t, 0.5), pct(t, 0.99)
            cpu = "—" if k == "direct" else f"{results[k]['cpu'] / results[k]['events'] * 1e6:.2f}"
            added = ("—", "—") if k == "direct" else (f"{(p50 - d50) * 1000:.3f}", f"{(p99 - d99) * 1000:.3f}")
            lines.append(f"| {label} | {p50 * 1000:.3f} | {p99 * 1000:.3f} | {added[0]} | {added[1]} | {cpu} |")
        text = "\n".join(lines) + "\n"
        print(text)
        if a.out:
            with open(a.out, "w") as f:
                f.write(text)
    finally:
        for p in procs:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
