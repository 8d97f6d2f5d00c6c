"""Syscalls per request: `strace -c -f` attached to a proxy's processes
around a run, its summary parsed and grouped.

strace slows what it traces, so a run under it gives counts, never CPU
time; a bench measures CPU on a run of its own. The counts are stable from
run to run, which the CPU time on a shared machine is not.
"""
import os
import shutil
import signal
import subprocess
import tempfile
import time

# The groups a table shows; the rest is "other".
WRITES = ("write", "writev", "sendto", "sendmsg", "sendmmsg", "pwrite64", "sendfile")
READS = ("read", "readv", "recvfrom", "recvmsg", "recvmmsg", "pread64")
POLLS = ("epoll_wait", "epoll_pwait", "epoll_pwait2", "epoll_ctl", "poll", "ppoll")
COLUMNS = ["syscalls/req", "writes/req", "reads/req", "epoll/req", "other/req"]


def need_strace():
    if shutil.which("strace") is None:
        raise SystemExit("strace is missing: apt-get install -y strace")


def _threads(pids):
    for pid in pids:
        try:
            yield from (int(t) for t in os.listdir(f"/proc/{pid}/task"))
        except OSError:
            pass


def _traced(tid):
    try:
        with open(f"/proc/{tid}/status") as f:
            return any(line.startswith("TracerPid:") and line.split()[1] != "0" for line in f)
    except OSError:
        return True  # gone: nothing left to wait for


class Count:
    """`with Count(pids) as c: run()`, then `c.calls` maps each syscall to
    its count over the run, every thread of every pid included."""

    def __init__(self, pids):
        need_strace()
        self.pids, self.calls = list(pids), {}

    def __enter__(self):
        fd, self.out = tempfile.mkstemp(prefix="strace.", suffix=".txt")
        os.close(fd)
        cmd = ["strace", "-c", "-f", "-qq", "-o", self.out]
        for pid in self.pids:
            cmd += ["-p", str(pid)]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while not all(_traced(t) for t in _threads(self.pids)):
            if time.time() > deadline or self.proc.poll() is not None:
                raise SystemExit("strace could not attach (is ptrace allowed here?)")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)
        with open(self.out) as f:
            self.calls = parse(f.read())
        os.unlink(self.out)
        return False

    def per_request(self, requests):
        return per_request(self.calls, requests)


def parse(summary):
    """{syscall: calls} from `strace -c`'s table."""
    calls = {}
    for line in summary.splitlines():
        parts = line.split()
        # % time, seconds, usecs/call, calls, [errors,] syscall
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            try:
                calls[parts[-1]] = int(parts[3])
            except ValueError:
                pass
    return calls


def per_request(calls, requests):
    """The COLUMNS, per request, and the five most frequent syscalls."""
    n = max(requests, 1)

    def group(names):
        return sum(calls.get(c, 0) for c in names)
    total = sum(calls.values())
    writes, reads, polls = group(WRITES), group(READS), group(POLLS)
    top = sorted(calls.items(), key=lambda kv: -kv[1])[:5]
    return {"syscalls/req": total / n, "writes/req": writes / n, "reads/req": reads / n,
            "epoll/req": polls / n, "other/req": (total - writes - reads - polls) / n,
            "top": ", ".join(f"{name} {c / n:.1f}" for name, c in top)}
