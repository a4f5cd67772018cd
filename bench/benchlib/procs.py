"""Processes (started and stopped by pid, never by name), CPU accounting, ports."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

# --------------------------------------------------------------------------------------------
# Processes: everything started here is tracked by pid and stopped by pid, never by name.


class Procs:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.running: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        out = open(self.workdir / f"{name}.log", "ab")
        full_env = dict(os.environ)
        full_env.update(env or {})
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=full_env,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        self.running.append((name, p))
        return p

    def stop(self, p: subprocess.Popen) -> None:
        if p.poll() is None:
            kids = children(p.pid)
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
            for k in kids:  # nginx workers exit with their master; make sure.
                try:
                    os.kill(k, 0)
                    time.sleep(0.2)
                    os.kill(k, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.running = [(n, q) for n, q in self.running if q is not p]

    def stop_all(self) -> None:
        for _, p in list(reversed(self.running)):
            self.stop(p)


def children(pid: int) -> list[int]:
    """Direct children of `pid` (nginx workers of a master)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(x) for x in text.split()]
    except OSError:
        out = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
                    if int(fields[1]) == pid:
                        out.append(int(d.name))
                except (OSError, IndexError, ValueError):
                    pass
        return out


def cpu_ticks(pids: list[int]) -> tuple[int, int]:
    """(user, system) clock ticks of the processes, all their threads included."""
    u = s = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            u += int(fields[11])
            s += int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return u, s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def http_get(port: int, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()
