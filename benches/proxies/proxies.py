#!/usr/bin/env python3
"""Relays behind egress proxies (issue 22): pooled reuse and connect time.

One relay-edge, one demo relay process (four ports), and real proxies:
microsocks (SOCKS5, without and with a user) and tinyproxy (CONNECT with
Basic). Four upstreams reach the demo relay: directly, through socks5h://
twice, and through http:// CONNECT. For each upstream:

- pooled: N sequential requests on one keep-alive client connection; the
  connections the edge opened (`/api/upstreams` `connections_opened`, per
  1,000 requests) and the client's latency p50/p99;
- fresh: an edge with `timeouts.pool_idle: 1ms` and requests 10 ms apart,
  so that every request opens a new connection (a new tunnel); the mean
  connect time from `relay_edge_upstream_connect_seconds` (dial plus
  handshake), and what each proxy adds to the direct one.

usage: proxies.py --bin target/release/relay-edge [--requests 1000] [--fresh 300]
                  [--proxy-ip 127.0.0.1] [--out F.md]
(--proxy-ip: the loopback address the proxies listen on, e.g. one whose
route has `quickack 1`.)
(relay-edge-demo-upstream must sit beside --bin.)
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from common.ports import free_port  # noqa: E402

def wait_port(port, within=15, host="127.0.0.1"):
    end = time.time() + within
    while time.time() < end:
        try:
            socket.create_connection((host, port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def admin(port, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=body.encode() if body else None)
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.read().decode()


def wait_ready(port, proc, within=30):
    end = time.time() + within
    while time.time() < end:
        if proc.poll() is not None:
            sys.exit("relay-edge exited early")
        try:
            admin(port, "GET", "/readyz")
            return
        except OSError:
            time.sleep(0.05)
    sys.exit("relay-edge not ready")


def read_response(f):
    length, status = 0, None
    while True:
        line = f.readline()
        if not line:
            raise OSError("closed")
        if status is None:
            status = int(line.split()[1])
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
        if line in (b"\r\n", b"\n"):
            break
    f.read(length)
    return status


def sequential(port, session, n, gap=0.0):
    """n requests of `session` on one keep-alive connection, `gap` seconds
    apart: latencies (s)."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = s.makefile("rb")
    took = []
    for i in range(n):
        t = time.perf_counter()
        s.sendall(f"GET /v1/x?i={i} HTTP/1.1\r\nhost: x\r\nx-session-id: {session}\r\n\r\n".encode())
        if read_response(f) != 200:
            sys.exit(f"{session}: request {i} failed")
        took.append(time.perf_counter() - t)
        if gap:
            time.sleep(gap)
    s.close()
    return took


def connect_seconds(metrics, upstream):
    total = count = 0.0
    for line in metrics.splitlines():
        if line.startswith("relay_edge_upstream_connect_seconds_sum{") and f'upstream="{upstream}"' in line:
            total = float(line.split()[-1])
        if line.startswith("relay_edge_upstream_connect_seconds_count{") and f'upstream="{upstream}"' in line:
            count = float(line.split()[-1])
    return total / count if count else float("nan"), int(count)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--fresh", type=int, default=300)
    ap.add_argument("--proxy-ip", default="127.0.0.1")
    ap.add_argument("--out")
    args = ap.parse_args()
    for tool in ("microsocks", "tinyproxy"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install -y {tool}")
    demo = os.path.join(os.path.dirname(os.path.abspath(args.bin)), "relay-edge-demo-upstream")
    tmp = tempfile.mkdtemp(prefix="proxies-bench-")
    procs = []
    try:
        relay_ports = [free_port() for _ in range(4)]
        procs.append(subprocess.Popen([demo] + [f"127.0.0.1:{p}" for p in relay_ports],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        socks_open, socks_auth, connect = free_port(), free_port(), free_port()
        pip = args.proxy_ip
        procs.append(subprocess.Popen(["microsocks", "-i", pip, "-p", str(socks_open)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen(["microsocks", "-i", pip, "-p", str(socks_auth),
                                       "-u", "edge", "-P", "pw"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        conf = os.path.join(tmp, "tinyproxy.conf")
        open(conf, "w").write(f"Port {connect}\nListen {pip}\nTimeout 600\nMaxClients 200\n"
                              "Allow 127.0.0.0/8\nBasicAuth edge pw\nLogLevel Warning\n")
        procs.append(subprocess.Popen(["tinyproxy", "-d", "-c", conf],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for p in relay_ports:
            wait_port(p)
        for p in (socks_open, socks_auth, connect):
            wait_port(p, host=pip)
        paths = [
            ("direct", f"127.0.0.1:{relay_ports[0]}", None),
            ("socks5h", f"localhost:{relay_ports[1]}", f"socks5h://{pip}:{socks_open}"),
            ("socks5h+user", f"localhost:{relay_ports[2]}", f"socks5h://edge:pw@{pip}:{socks_auth}"),
            ("connect+user", f"localhost:{relay_ports[3]}", f"http://edge:pw@{pip}:{connect}"),
        ]
        results = {}
        for phase in ("pooled", "fresh"):
            port, admin_port = free_port(), free_port()
            ups = "\n".join(
                f"  - {{id: {name}, addr: '{addr}'" + (f", proxy: '{proxy}'" if proxy else "") + "}"
                for name, addr, proxy in paths)
            server = f"threads: 1, pid_file: {tmp}/pid-{phase}, upgrade_sock: {tmp}/up-{phase}.sock"
            timeouts = "timeouts: {pool_idle: 1ms}\n" if phase == "fresh" else ""
            yaml = (f"listen: [{{addr: 127.0.0.1:{port}}}]\nadmin: {{listen: 127.0.0.1:{admin_port}}}\n"
                    f"server: {{{server}}}\nupstreams:\n{ups}\n"
                    "affinity: {keys: [{header: x-session-id}]}\n"
                    "health_check: {path: /health, interval: 1h}\naccess_log: {enabled: false}\n" + timeouts)
            path = os.path.join(tmp, f"edge-{phase}.yaml")
            open(path, "w").write(yaml)
            edge = subprocess.Popen([args.bin, "-c", path], stdout=subprocess.DEVNULL,
                                    stderr=open(os.path.join(tmp, f"edge-{phase}.log"), "w"))
            procs.append(edge)
            wait_ready(admin_port, edge)
            for name, _, _ in paths:
                admin(admin_port, "PUT", f"/api/sessions/s-{name}", json.dumps({"upstream": name}))
            for name, _, _ in paths:
                r = results.setdefault(name, {})
                if phase == "fresh":
                    sequential(port, f"s-{name}", args.fresh, gap=0.01)
                    continue
                sequential(port, f"s-{name}", 50)  # warm-up
                took = sequential(port, f"s-{name}", args.requests)
                if phase == "pooled":
                    r["p50"] = statistics.median(took) * 1e3
                    r["p99"] = sorted(took)[int(len(took) * 0.99)] * 1e3
            views = {u["id"]: u for u in json.loads(admin(admin_port, "GET", "/api/upstreams"))}
            metrics = admin(admin_port, "GET", "/metrics")
            for name, _, _ in paths:
                r = results[name]
                if phase == "pooled":
                    r["opened"] = views[name]["connections_opened"]
                    r["served"] = views[name]["requests"]
                    if r["served"] != args.requests + 50:
                        sys.exit(f"{name} served {r['served']} of {args.requests + 50}: "
                                 f"its session moved (see {tmp}/edge-{phase}.log)")
                else:
                    r["connect_ms"], r["connects"] = connect_seconds(metrics, name)
                    r["connect_ms"] *= 1e3
            edge.terminate()
            edge.wait(10)
        direct = results["direct"]["connect_ms"]
        lines = [
            f"Relays behind proxies: {args.requests:,} sequential keep-alive requests per upstream "
            f"(after 50 of warm-up), one edge (1 worker), `{args.bin}`; proxies on {pip}. "
            f"Connect time: {args.fresh} requests 10 ms apart with `timeouts.pool_idle: 1ms` "
            "(each opens a new connection), the mean of `relay_edge_upstream_connect_seconds`.",
            "",
            "| path | connections per 1,000 requests (pooled) | latency p50 ms | p99 ms "
            "| connect ms (fresh) | added to direct ms | connects measured |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, _, _ in paths:
            r = results[name]
            per = r["opened"] * 1000 / max(r["served"], 1)
            added = "—" if name == "direct" else f"{r['connect_ms'] - direct:+.3f}"
            lines.append(f"| {name} | {per:.2f} ({r['opened']} for {r['served']:,}) | {r['p50']:.3f} "
                         f"| {r['p99']:.3f} | {r['connect_ms']:.3f} | {added} | {r['connects']} |")
        text = "\n".join(lines) + "\n"
        print(text)
        if args.out:
            open(args.out, "w").write(text)
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
