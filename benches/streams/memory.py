#!/usr/bin/env python3
"""Memory per open stream and per idle client connection (issues 12, 23).

Starts one demo relay, the relay-edge binaries given, nginx
(`proxy_buffering off`) and HAProxy in front of the same relay, then for
each proxy in turn:

- opens N streams at once (default 6,000), slow ones: an event every 5 s,
  so that every stream is open at the same time; once every stream has its
  first event (or failed), reads the proxy's RSS; the figure is
  (that - RSS before) / the streams open. A proxy holds two descriptors
  per stream: 10,000 streams need more than the 20,000 a process may open
  on the machines this was measured on.
  `--path held` sends what Claude Code sends, a POST whose body says
  `"stream": true` (relay-edge's held path); `--path pingora` a GET with
  `?sse=` (Pingora's own path in relay-edge); `--body claude` sends a
  Claude Code Messages body of about 90 KB (`common/claude.py`) on the held
  path instead of a 100-byte one;
- opens N idle keep-alive client connections after one request each, and
  reports RSS per connection the same way.

usage: memory.py --bin A/relay-edge [--bin B/relay-edge ...] [--streams 10000]
                 [--path held|pingora] [--body small|claude] [--no-nginx]
                 [--no-haproxy] [--only streams|idle] [--extra 'server: ...'] [--out F.md]
`relay-edge-demo-upstream` must sit beside the first binary.
"""
import argparse
import asyncio
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from common.ports import free_port  # noqa: E402
from common.claude import claude_body  # noqa: E402
from common.peers import haproxy_conf  # noqa: E402

CLAUDE = claude_body()
BODY = b'{"model":"claude-x","max_tokens":16,"stream":true,"messages":[{"role":"user","content":"hi"}]}'


def wait_port(port, deadline=30.0):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def rss_kib(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def nginx_pids(master):
    kids = open(f"/proc/{master}/task/{master}/children").read().split()
    return [master] + [int(k) for k in kids]


def stream_request(path, i, gap_ms, body):
    if path == "held":
        if body == "claude":
            head, tail = CLAUDE
            data = head + f"{i:036d}".encode() + tail
        else:
            data = BODY
        return (f"POST /v1/messages?sse=3&gap_ms={gap_ms} HTTP/1.1\r\nhost: x\r\n"
                f"x-session-id: s{i}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(data)}\r\n\r\n").encode() + data
    return (f"GET /v1/messages?sse=3&gap_ms={gap_ms} HTTP/1.1\r\nhost: x\r\n"
            f"x-session-id: s{i}\r\n\r\n").encode()


async def open_streams(port, n, path, gap_ms, started, body):
    """Open n streams; set `started` once each has its first event; return
    the writers (to close) and the count that failed."""
    failed = [0]
    writers = []
    count = [0]

    connecting = asyncio.Semaphore(500)  # no SYN flood past the listen backlog

    def settled():
        if count[0] + failed[0] == n:
            started.set()

    async def one(i):
        try:
            async with connecting:
                r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 60)
            writers.append(w)
            w.write(stream_request(path, i, gap_ms, body))
            await w.drain()
            while True:
                line = await asyncio.wait_for(r.readline(), 120)
                if not line:
                    raise OSError("closed")
                if line.startswith(b"data: "):
                    break
            count[0] += 1
        except Exception as e:  # noqa: BLE001 - every failure is counted
            if failed[0] < 3:
                print(f"stream {i} failed: {e!r}", file=sys.stderr)
            failed[0] += 1
        settled()

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    return tasks, writers, failed


async def measure_streams(port, pids, n, path, body):
    gap_ms = 5000
    before = rss_kib(pids)
    started = asyncio.Event()
    tasks, writers, failed = await open_streams(port, n, path, gap_ms, started, body)
    await asyncio.wait_for(started.wait(), 300)
    await asyncio.sleep(0.5)
    peak = rss_kib(pids)
    for w in writers:
        w.close()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return (peak - before) / max(1, n - failed[0]), failed[0]


async def measure_idle(port, pids, n):
    before = rss_kib(pids)
    writers, failed = [], 0
    sem = asyncio.Semaphore(500)

    async def one(i):
        nonlocal failed
        async with sem:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 60)
                w.write(f"GET /v1/x HTTP/1.1\r\nhost: x\r\nx-session-id: s{i}\r\n\r\n".encode())
                await w.drain()
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 60)
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await r.readexactly(length)
                writers.append(w)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, IndexError):
                failed += 1

    await asyncio.gather(*(one(i) for i in range(n)))
    await asyncio.sleep(0.5)
    peak = rss_kib(pids)
    for w in writers:
        w.close()
    await asyncio.sleep(0.5)
    return (peak - before) / n, failed


def edge_yaml(tmp, name, port, relay, extra):
    admin = free_port()
    path = os.path.join(tmp, f"{name}.yaml")
    with open(path, "w") as f:
        f.write(f"""listen: [{{addr: 127.0.0.1:{port}}}]
upstreams: [{{id: relay-a, addr: 127.0.0.1:{relay}}}]
affinity: {{keys: [{{header: x-session-id}}]}}
admin: {{listen: 127.0.0.1:{admin}}}
limits: {{max_connections: 200000}}
server: {{threads: 1, pool_size: 20000, pid_file: {tmp}/{name}.pid, upgrade_sock: {tmp}/{name}.sock, log_level: error}}
{extra}
""")
    return path


def nginx_conf(tmp, port, relay):
    path = os.path.join(tmp, "nginx.conf")
    os.makedirs(os.path.join(tmp, "nginx-tmp"), exist_ok=True)
    with open(path, "w") as f:
        f.write(f"""worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx.err warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 40000; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-tmp/body; proxy_temp_path {tmp}/nginx-tmp/proxy;
    fastcgi_temp_path {tmp}/nginx-tmp/f; uwsgi_temp_path {tmp}/nginx-tmp/u; scgi_temp_path {tmp}/nginx-tmp/s;
    keepalive_timeout 600s;
    client_body_buffer_size 128k;   # a 90 KB body stays in memory, as relay-edge keeps it
    upstream relays {{ server 127.0.0.1:{relay}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://relays;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
""")
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", action="append", required=True)
    ap.add_argument("--streams", type=int, default=6000)
    ap.add_argument("--idle", type=int, default=2000)
    ap.add_argument("--path", choices=["held", "pingora"], default="held")
    ap.add_argument("--extra", default="")
    ap.add_argument("--body", choices=["small", "claude"], default="small")
    ap.add_argument("--only", choices=["streams", "idle"])
    ap.add_argument("--no-nginx", action="store_true")
    ap.add_argument("--no-haproxy", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # A proxy holds two descriptors per stream.
    if hard < 2 * args.streams + 1000:
        sys.exit(f"need {2 * args.streams + 1000} descriptors per process, have {hard}")
    tmp = tempfile.mkdtemp(prefix="mem-")
    procs = []
    demo = os.path.join(os.path.dirname(os.path.abspath(args.bin[0])), "relay-edge-demo-upstream")
    relay = free_port()
    procs.append(subprocess.Popen([demo, f"127.0.0.1:{relay}"], stdout=subprocess.DEVNULL))
    wait_port(relay)
    targets = []
    for i, b in enumerate(args.bin):
        port = free_port()
        p = subprocess.Popen([b, "-c", edge_yaml(tmp, f"edge{i}", port, relay, args.extra)],
                             stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, f"edge{i}.log"), "w"))
        procs.append(p)
        wait_port(port)
        targets.append((f"relay-edge {b}", port, lambda p=p: [p.pid]))
    if not args.no_nginx:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        port = free_port()
        p = subprocess.Popen([nginx, "-c", nginx_conf(tmp, port, relay), "-g", "daemon off;"],
                             stderr=subprocess.DEVNULL)
        procs.append(p)
        wait_port(port)
        targets.append(("nginx", port, lambda p=p: nginx_pids(p.pid)))
    if not args.no_haproxy:
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        port = free_port()
        p = subprocess.Popen([haproxy, "-f", haproxy_conf(tmp, port, [("relay-a", relay)]), "-db"],
                             stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "haproxy.log"), "w"))
        procs.append(p)
        wait_port(port)
        targets.append(("HAProxy", port, lambda p=p: [p.pid]))
    rows = []
    try:
        for name, port, pids in targets:
            asyncio.run(measure_idle(port, pids(), 100))  # warm: pools, allocator
            # Idle connections first: RSS a run of streams freed is reused.
            # What the idle run freed is reused by the streams too (the
            # allocator keeps it): `--only` measures one on a fresh process.
            idle, ifail, stream, sfail = 0.0, 0, 0.0, 0
            if args.only != "streams":
                idle, ifail = asyncio.run(measure_idle(port, pids(), args.idle))
            if args.only != "idle":
                stream, sfail = asyncio.run(measure_streams(port, pids(), args.streams, args.path, args.body))
            rows.append((name, stream, sfail, idle, ifail, rss_kib(pids()) / 1024))
            print(f"{name}: {stream:.1f} KiB per open stream ({sfail} failed), "
                  f"{idle:.2f} KiB per idle connection ({ifail} failed)", flush=True)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
    body = {"small": "a 100-byte body", "claude": "a 90 KB Claude Code body"}[args.body]
    table = [f"{args.streams} open streams ({args.path} path, {body}, an event every 5 s) and "
             f"{args.idle} idle keep-alive connections, one proxy thread/worker each:", "",
             "| proxy | KiB per open stream | failed | KiB per idle connection | failed | RSS after, MiB |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, stream, sfail, idle, ifail, rss in rows:
        table.append(f"| {name} | {stream:.1f} | {sfail} | {idle:.2f} | {ifail} | {rss:.1f} |")
    text = "\n".join(table) + "\n"
    print(text)
    if args.out:
        open(args.out, "w").write(text)


if __name__ == "__main__":
    main()
