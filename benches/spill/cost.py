#!/usr/bin/env python3
"""The CPU cost of a request body spilled to disk against one kept in memory.

    python3 benches/spill/cost.py --bin target/release/relay-edge \
        --demo target/release/relay-edge-demo-upstream [--n 200] [--size 2097152]

One relay-edge (one worker) in front of one demo relay, keyed by
/metadata/user_id. The same Claude Code shaped body (about --size bytes, its
key near the end, "stream": false, so Pingora's path; then "stream": true, the
held path) is POSTed --n times on one keep-alive connection, first with
limits.body_memory_per_request above its size (read whole into memory), then
at 64 KiB (the rest spilled to an unlinked file in --dir). The edge's CPU
(user + system, all threads, from /proc/PID/stat) over the --n requests,
divided by --n, is the cost per request. Standard library only; every
process started here is stopped on exit.
"""
import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

HOST = "127.0.0.1"


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def body(size, key, stream):
    messages = []
    n, total = 0, 0
    while total < size:
        m = {"role": "user", "content": [{"type": "text", "text": f"turn {n}: edit \"src/main.rs\" at line {n}, café"}]}
        messages.append(m)
        total += len(json.dumps(m)) + 1
        n += 1
    doc = {"model": "claude-x", "messages": messages, "system": [{"type": "text", "text": "You are Claude Code."}],
           "tools": [], "metadata": {"user_id": key}, "max_tokens": 32000, "stream": stream}
    return json.dumps(doc, separators=(",", ":")).encode()


def wait_port(port, within=10):
    until = time.monotonic() + within
    while time.monotonic() < until:
        try:
            socket.create_connection((HOST, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def run(args, memory_per_request, payload):
    tmp = tempfile.mkdtemp(prefix="spill-cost-")
    port, admin, relay = free_port(), free_port(), free_port()
    conf = os.path.join(tmp, "edge.yaml")
    with open(conf, "w") as f:
        f.write(f"listen: [{{addr: {HOST}:{port}}}]\n"
                f"upstreams: [{{id: relay-a, addr: {HOST}:{relay}}}]\n"
                f"admin: {{listen: {HOST}:{admin}}}\n"
                f"server: {{threads: 1, pid_file: {tmp}/edge.pid, upgrade_sock: {tmp}/edge.sock}}\n"
                f"access_log: {{enabled: false}}\n"
                f"affinity: {{keys: [{{json: /metadata/user_id}}]}}\n"
                f"limits: {{body_memory_per_request: {memory_per_request}, body_spill_dir: {args.dir}}}\n")
    procs = [subprocess.Popen([args.demo, f"{HOST}:{relay}"], stdout=subprocess.DEVNULL)]
    try:
        procs.append(subprocess.Popen([args.bin, "-c", conf], stdout=subprocess.DEVNULL,
                                      stderr=open(os.path.join(tmp, "edge.log"), "w")))
        wait_port(relay)
        wait_port(port)
        time.sleep(1.5)  # the first health check round
        conn = http.client.HTTPConnection(HOST, port, timeout=30)

        def one():
            conn.request("POST", "/v1/messages", body=payload, headers={"content-type": "application/json"})
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                sys.exit(f"status {r.status}")

        for _ in range(args.warmup):
            one()
        pid = procs[1].pid
        cpu, wall = cpu_seconds(pid), time.monotonic()
        for _ in range(args.n):
            one()
        cpu, wall = cpu_seconds(pid) - cpu, time.monotonic() - wall
        return cpu / args.n * 1e6, wall / args.n * 1e6
    finally:
        for p in procs:
            p.terminate()
            p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--demo", required=True)
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--size", type=int, default=2 * 1024 * 1024)
    args = ap.parse_args()
    print(f"{args.n} requests of a {args.size}-byte body, spill dir {args.dir}")
    print("| path | body | CPU µs/request | wall µs/request |")
    print("|---|---|---|---|")
    for stream, path in [(False, "Pingora's"), (True, "held")]:
        payload = body(args.size, "cost-key", stream)
        for memory, label in [(4 * args.size, "in memory"), (64 * 1024, "spilled past 64 KiB")]:
            cpu, wall = run(args, memory, payload)
            print(f"| {path} | {label} | {cpu:.0f} | {wall:.0f} |", flush=True)


if __name__ == "__main__":
    main()
