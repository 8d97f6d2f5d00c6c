#!/usr/bin/env python3
"""Pooled upstream connections reused by sequential requests (issue 12).

For each binary and thread count: one demo relay, one relay-edge; then
N sequential requests on one keep-alive client connection, and N more
each on a new client connection. Reports the upstream connections the edge
opened (`/api/upstreams`), its pooled reuse ratio, and the ERROR lines
Pingora logged for a pooled connection it failed to take.

usage: reuse.py --bin A/relay-edge [--bin B/relay-edge] [--threads 1,2,4]
                [--requests 200] [--server 'thread_model: pingora'] [--out F.md]
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from common.ports import free_port  # noqa: E402


def wait_ready(admin, proc, within=30):
    end = time.time() + within
    while time.time() < end:
        if proc.poll() is not None:
            sys.exit("relay-edge exited early")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1)
            return
        except OSError:
            time.sleep(0.05)
    sys.exit("relay-edge not ready")


def get(sock_file, sock, i):
    sock.sendall(f"GET /v1/x?i={i} HTTP/1.1\r\nhost: x\r\nx-session-id: one\r\n\r\n".encode())
    length = None
    while True:
        line = sock_file.readline()
        if not line:
            raise OSError("closed")
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
        if line == b"\r\n":
            break
    sock_file.read(length or 0)


def run(binary, threads, n, server_extra):
    tmp = tempfile.mkdtemp(prefix="reuse-")
    relay, port, admin = free_port(), free_port(), free_port()
    demo = os.path.join(os.path.dirname(os.path.abspath(binary)), "relay-edge-demo-upstream")
    up = subprocess.Popen([demo, f"127.0.0.1:{relay}"], stdout=subprocess.DEVNULL)
    extra = f", {server_extra}" if server_extra else ""
    cfg = os.path.join(tmp, "edge.yaml")
    open(cfg, "w").write(f"""listen: [{{addr: 127.0.0.1:{port}}}]
upstreams: [{{id: relay-a, addr: 127.0.0.1:{relay}}}]
affinity: {{keys: [{{header: x-session-id}}]}}
admin: {{listen: 127.0.0.1:{admin}}}
server: {{threads: {threads}, pid_file: {tmp}/pid, upgrade_sock: {tmp}/sock, log_level: warn{extra}}}
""")
    log = os.path.join(tmp, "edge.log")
    edge = subprocess.Popen([binary, "-c", cfg], stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    try:
        wait_ready(admin, edge)

        def upstream():
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/api/upstreams") as r:
                data = json.load(r)
            ups = data["upstreams"] if isinstance(data, dict) else data
            return next(u for u in ups if u["id"] == "relay-a")

        base = upstream()["connections_opened"]
        with socket.create_connection(("127.0.0.1", port)) as s:
            f = s.makefile("rb")
            for i in range(n):
                get(f, s, i)
        keepalive = upstream()["connections_opened"] - base
        for i in range(n):
            with socket.create_connection(("127.0.0.1", port)) as s:
                get(s.makefile("rb"), s, i)
        u = upstream()
        fresh = u["connections_opened"] - base - keepalive
        errors = open(log).read().count("failed to acquire reusable stream")
        return keepalive, fresh, u["pooled_reuse_ratio"], errors
    finally:
        for p in (edge, up):
            p.terminate()
            p.wait(10)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", action="append", required=True)
    ap.add_argument("--threads", default="1,2,4")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--server", action="append",
                    help="extra server keys, one variant per flag ('' for the defaults)")
    ap.add_argument("--out")
    args = ap.parse_args()
    rows = []
    for binary in args.bin:
        for extra in args.server or [""]:
            for t in [int(x) for x in args.threads.split(",")]:
                try:
                    ka, fresh, ratio, errors = run(binary, t, args.requests, extra)
                except SystemExit as e:
                    print(f"{binary} {extra!r} threads {t}: {e}", file=sys.stderr)
                    continue
                rows.append((binary, extra or "(defaults)", t, ka, fresh, ratio, errors))
                print(rows[-1], flush=True)
    n = args.requests
    out = [f"{n} sequential requests on one keep-alive client connection, then {n} each on a new "
           "client connection, one relay:", "",
           "| binary | server | threads | upstream connections opened (keep-alive) | (new client connections) | pooled reuse ratio | ERROR lines |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for b, e, t, ka, fresh, ratio, errors in rows:
        out.append(f"| {b} | {e} | {t} | {ka} | {fresh} | {ratio:.4f} | {errors} |")
    text = "\n".join(out) + "\n"
    print(text)
    if args.out:
        open(args.out, "w").write(text)


if __name__ == "__main__":
    main()
