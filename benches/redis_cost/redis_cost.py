#!/usr/bin/env python3
"""Redis commands per request: what the shared affinity table costs Redis.

    python3 benches/redis_cost/redis_cost.py --bin target/debug/relay-edge
    python3 benches/redis_cost/redis_cost.py --smoke --bin target/debug/relay-edge
    options: --sessions N (20000), --seconds S (60 per shape), --conns C (8),
             --sse K (20), --ttl DUR (1h), --budget X (0.02), --idle S (30),
             --shapes steady,new5,edges3 (all), --buckets N, --out FILE.json

Setup (all on 127.0.0.1, free ports, in a tempdir): a redis-server child;
three demo relays (the `relay-edge-demo-upstream` binary next to --bin);
one relay-edge, or three on the same Redis for `edges3`, each with
`affinity.ttl` as given and every other setting at its default.

Load: C keep-alive connections (spread over the edges) sending GET
/v1/messages with `x-session-id: key-N`, N uniform over the known
sessions, and K SSE clients (8 events 50 ms apart, keyed the same way) one
after the other. Before measuring, every known session is pinned by one
request per edge (each edge serves each session: the worst case for the
per-edge costs). `new5` makes one request in twenty a brand-new session.

What is counted: the sum of `calls` over Redis's `INFO commandstats`
(commands run inside scripts included: an EVALSHA that does HGET and HSET
counts 3), minus this script's own INFO calls, over the measured window,
divided by the requests completed in it. After the load stops, the same
count over `--idle` seconds gives the background cost in commands/s with
the sessions still live.

Shapes: steady (1 edge, known sessions), new5 (1 edge, 5% new sessions),
edges3 (3 edges on one Redis, known sessions). --smoke runs `steady` only,
with 5,000 sessions in 1,024 buckets (about 5 a bucket: the sweep's cost
is per bucket, and 16,384 mostly empty buckets would make the budget a
measure of the machine's speed) and a 40 s window (longer than the old local_ttl of
30 s, so that a return of the per-session re-read would show), and exits 1
if it costs more than --budget commands per request. Commands per request
is a count, not a time: the check does not depend on the machine's speed
beyond the requests a window holds.
"""

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from common.ports import free_port  # noqa: E402


def log(msg):
    print(f"redis_cost [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def die(msg, code=2):
    print(f"redis_cost: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


def wait_until(cond, within, step=0.05):
    deadline = time.monotonic() + within
    while True:
        if cond():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


# ---------------------------------------------------------------- Redis

def _resp(*args):
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def redis_call(port, *args, timeout=5.0):
    """One command; the reply's first line, or a bulk string's body."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(_resp(*args))
            f = s.makefile("rb")
            line = f.readline()
            if line.startswith(b"$"):
                n = int(line[1:])
                return f.read(n + 2)[:-2] if n >= 0 else None
            return line.strip()
    except OSError:
        return None


def commandstats(port):
    """{command: calls} from INFO commandstats."""
    text = redis_call(port, "INFO", "commandstats")
    if text is None:
        die("INFO commandstats failed")
    out = {}
    for line in text.decode().splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line[len("cmdstat_"):].partition(":")
            fields = dict(kv.split("=") for kv in rest.split(","))
            out[name] = int(fields["calls"])
    return out


def delta(after, before):
    d = {k: v - before.get(k, 0) for k, v in after.items()}
    d.pop("info", None)  # ours
    return {k: v for k, v in d.items() if v > 0}


# ---------------------------------------------------------------- processes

class Procs:
    def __init__(self, tmp):
        self.tmp, self.all = tmp, []

    def start(self, name, cmd):
        out = open(os.path.join(self.tmp, f"{name}.log"), "ab")
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             cwd=self.tmp, start_new_session=True)
        out.close()
        self.all.append(p)
        return p

    def stop(self, p):
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)

    def stop_all(self):
        for p in reversed(self.all):
            self.stop(p)

    def tail(self, name, n=30):
        try:
            return "".join(open(os.path.join(self.tmp, f"{name}.log")).readlines()[-n:])
        except OSError:
            return ""


def http_status(port, path, timeout=2.0):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
            line = s.makefile("rb").readline().split()
            return int(line[1]) if len(line) > 1 else None
    except (OSError, ValueError):
        return None


def edge_conf(tmp, name, port, admin, relays, redis_port, ttl, buckets=None):
    ups = "\n".join(f"  - {{id: {n}, addr: 127.0.0.1:{p}}}" for n, p in relays)
    path = os.path.join(tmp, f"{name}.yaml")
    open(path, "w").write(f"""listen: [{{addr: 127.0.0.1:{port}}}]
upstreams:
{ups}
health_check: {{path: /health, interval: 2s}}
affinity: {{keys: [{{header: x-session-id}}], ttl: {ttl}}}
admin: {{listen: 127.0.0.1:{admin}}}
server: {{threads: 1, pid_file: {tmp}/{name}.pid, upgrade_sock: {tmp}/{name}.sock, log_level: warn}}
access_log: {{enabled: false}}
redis: {{url: 'redis://127.0.0.1:{redis_port}/0'{f", buckets: {buckets}" if buckets else ""}}}
""")
    return path


# ---------------------------------------------------------------- load

async def _read_response(reader):
    """Read one HTTP/1.1 response; its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length, chunked = 0, False
    for h in lines[1:]:
        k, _, v = h.partition(b":")
        k = k.strip().lower()
        if k == b"content-length":
            length = int(v)
        elif k == b"transfer-encoding" and b"chunked" in v.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b""):
                    pass
                break
            await reader.readexactly(size + 2)
    elif length:
        await reader.readexactly(length)
    return status


class Load:
    """Keyed keep-alive clients; counts completed requests and errors."""

    def __init__(self, ports, sessions, new_share=0.0):
        self.ports, self.sessions, self.new_share = ports, sessions, new_share
        self.done = self.errors = self.new = 0
        self.stop = False
        self.rng = random.Random(11)
        self.fresh = 0

    def key(self):
        if self.new_share and self.rng.random() < self.new_share:
            self.fresh += 1
            self.new += 1
            return f"new-{os.getpid()}-{self.fresh}"
        return f"key-{self.rng.randrange(self.sessions)}"

    async def client(self, port, sse=False):
        reader = writer = None
        while not self.stop:
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                path = "/v1/messages?sse=8&gap_ms=50" if sse else "/v1/messages"
                writer.write(f"GET {path} HTTP/1.1\r\nhost: bench\r\nx-session-id: {self.key()}\r\n\r\n"
                             .encode())
                status = await asyncio.wait_for(_read_response(reader), 30)
                if status == 200:
                    self.done += 1
                else:
                    self.errors += 1
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                    ValueError, IndexError):
                self.errors += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
                await asyncio.sleep(0.05)
        if writer is not None:
            writer.close()

    async def warm(self, port, keys, conns=16):
        """One request per key on edge `port`: every session pinned there."""
        queue = list(keys)

        async def one():
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            while queue:
                k = queue.pop()
                writer.write(f"GET /v1/messages HTTP/1.1\r\nhost: bench\r\nx-session-id: {k}\r\n\r\n".encode())
                if await asyncio.wait_for(_read_response(reader), 30) != 200:
                    self.errors += 1
            writer.close()

        await asyncio.gather(*(one() for _ in range(conns)))


async def run_window(load, conns, sse, seconds, redis_port):
    """Run the load for `seconds`; (requests, commands by name) in the window."""
    tasks = [asyncio.ensure_future(load.client(load.ports[i % len(load.ports)])) for i in range(conns)]
    tasks += [asyncio.ensure_future(load.client(load.ports[i % len(load.ports)], sse=True)) for i in range(sse)]
    await asyncio.sleep(2)  # connections made
    before, done0 = commandstats(redis_port), load.done
    await asyncio.sleep(seconds)
    after, done1 = commandstats(redis_port), load.done
    load.stop = True
    await asyncio.gather(*tasks, return_exceptions=True)
    return done1 - done0, delta(after, before)


# ---------------------------------------------------------------- one shape

def run_shape(args, tmp, name, edges, new_share, sessions, seconds):
    procs = Procs(os.path.join(tmp, name))
    os.makedirs(procs.tmp)
    try:
        redis_port = free_port()
        procs.start("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"])
        if not wait_until(lambda: redis_call(redis_port, "PING", timeout=1) == b"+PONG", 15):
            die("redis-server did not answer PING")
        relays = [(f"relay-{c}", free_port()) for c in "abc"]
        procs.start("relays", [args.demo] + [f"127.0.0.1:{p}" for _, p in relays])
        for _, p in relays:
            if not wait_until(lambda: http_status(p, "/health") == 200, 15):
                die(f"demo relay :{p} did not answer:\n{procs.tail('relays')}")
        ports = []
        for i in range(edges):
            port, admin = free_port(), free_port()
            conf = edge_conf(procs.tmp, f"edge{i}", port, admin, relays, redis_port, args.ttl, args.buckets)
            procs.start(f"edge{i}", [args.bin, "-c", conf])
            if not wait_until(lambda: http_status(admin, "/readyz") == 200, 30):
                die(f"edge{i} not ready:\n{procs.tail(f'edge{i}')}")
            ports.append(port)
        keys = [f"key-{n}" for n in range(sessions)]
        load = Load(ports, sessions, new_share)

        async def go():
            t0 = time.monotonic()
            for p in ports:
                await load.warm(p, keys)
            log(f"{name}: {sessions} sessions pinned on {edges} edge(s) in {time.monotonic() - t0:.1f} s")
            return await run_window(load, args.conns, args.sse, seconds, redis_port)

        requests, cmds = asyncio.run(go())
        total = sum(cmds.values())
        idle = {}
        if args.idle:
            before = commandstats(redis_port)
            time.sleep(args.idle)
            idle = delta(commandstats(redis_port), before)
        result = {
            "shape": name, "edges": edges, "sessions": sessions, "new_share": new_share, "ttl": args.ttl,
            "seconds": seconds, "requests": requests, "rps": requests / seconds, "errors": load.errors,
            "new_sessions": load.new, "commands": total,
            "per_request": total / max(requests, 1), "by_command": dict(sorted(cmds.items())),
            "idle_seconds": args.idle, "idle_per_s": sum(idle.values()) / max(args.idle, 1),
            "idle_by_command": dict(sorted(idle.items())),
        }
        log(f"{name}: {requests} requests ({result['rps']:.0f}/s, {load.errors} errors), {total} commands: "
            f"{result['per_request']:.4f} per request; idle {result['idle_per_s']:.1f}/s; "
            f"{json.dumps(result['by_command'])}")
        return result
    finally:
        procs.stop_all()


def table(results):
    rows = [("shape", "edges", "sessions", "new", "rps", "requests", "commands", "cmd/request", "idle cmd/s")]
    for r in results:
        rows.append((r["shape"], str(r["edges"]), str(r["sessions"]), f"{r['new_share']:.0%}", f"{r['rps']:.0f}",
                     str(r["requests"]), str(r["commands"]), f"{r['per_request']:.4f}", f"{r['idle_per_s']:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="the relay-edge binary")
    ap.add_argument("--demo", help="the relay-edge-demo-upstream binary (default: next to --bin)")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--sessions", type=int)
    ap.add_argument("--seconds", type=float)
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--sse", type=int, default=20)
    ap.add_argument("--ttl", default="1h")
    ap.add_argument("--budget", type=float, default=0.02)
    ap.add_argument("--idle", type=float)
    ap.add_argument("--shapes", default="steady,new5,edges3")
    ap.add_argument("--buckets", type=int, help="redis.buckets (default: relay-edge's; --smoke: 1024)")
    ap.add_argument("--out")
    args = ap.parse_args()
    args.bin = os.path.abspath(args.bin)
    args.demo = os.path.abspath(args.demo or os.path.join(os.path.dirname(args.bin), "relay-edge-demo-upstream"))
    for b in (args.bin, args.demo):
        if not os.access(b, os.X_OK):
            die(f"{b} is not an executable (cargo build --bins)")
    if shutil.which("redis-server") is None:
        die("redis-server is missing: apt-get install -y redis-server")
    if args.smoke:
        sessions, seconds, shapes = args.sessions or 5000, args.seconds or 40, ["steady"]
        args.buckets = args.buckets or 1024
        args.idle = 0 if args.idle is None else args.idle
    else:
        sessions, seconds = args.sessions or 20000, args.seconds or 60
        shapes = args.shapes.split(",")
        args.idle = 30 if args.idle is None else args.idle
    known = {"steady": (1, 0.0), "new5": (1, 0.05), "edges3": (3, 0.0)}
    results = []
    with tempfile.TemporaryDirectory(prefix="redis-cost-") as tmp:
        for s in shapes:
            if s not in known:
                die(f"unknown shape {s!r} (steady, new5, edges3)")
            edges, new_share = known[s]
            results.append(run_shape(args, tmp, s, edges, new_share, sessions, seconds))
    print(table(results))
    if args.out:
        json.dump(results, open(args.out, "w"), indent=2)
    failed = [r for r in results if r["errors"] > r["requests"] * 0.01]
    for r in failed:
        print(f"FAIL {r['shape']}: {r['errors']} failed requests", file=sys.stderr)
    if args.smoke:
        r = results[0]
        if r["per_request"] > args.budget:
            print(f"FAIL {r['shape']}: {r['per_request']:.4f} Redis commands per request, over the budget of "
                  f"{args.budget}", file=sys.stderr)
            failed.append(r)
        else:
            print(f"ok: {r['per_request']:.4f} Redis commands per request (budget {args.budget})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
