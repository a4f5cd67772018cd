#!/usr/bin/env python3
"""cellroute's side-by-side benchmarks: rows 2, 3 and 6 of the benchmark issue.

Run it through `bench/run` (which builds the data plane and checks the tools). It measures, on
loopback only:

  proxy   row 2: wrk through the data plane, nginx (`map $http_x_customer_id`) and HAProxy (map
          file) at 1 and 2 workers each, and directly against the upstream.
  reload  row 3: p99 and errors while the routing table is swapped (data plane: rewrite the file +
          `POST /admin/reload`; nginx: swap its map file + `nginx -s reload` every 100 ms) versus
          steady state, under the same wrk load.
  edit    row 6: file edit (temp file + rename) -> "config applied", over N edits, at the default
          100 ms debounce and at 10 ms.

The upstream "cells" are one nginx process (1 worker) serving two ports with a fixed 7-byte body:
cheap, and byte-identical for every contender, so differences are the proxies' own.

Every figure is read against a peer measured in the same run: contenders are interleaved (the
order rotates every repetition) and ratios are taken per repetition, then the median is
reported. Every load loop is bounded in count and in time. Only standard-library Python.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
LUA = BENCH / "lua" / "customers.lua"
BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"
TOKEN = "bench-admin-token"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# wrk's load shape; fixed for every contender.
WRK_THREADS = 2
WRK_CONNS = 64
WRK_TIMEOUT = "2s"

# Tables: TABLE_CUSTOMERS customers `customer-00000042` split over two cells; version "a" puts
# even ids on cell-a, version "b" flips every customer. wrk cycles through LOAD_IDS.
TABLE_CUSTOMERS = 1000
LOAD_IDS = [f"customer-{i:08d}" for i in range(0, TABLE_CUSTOMERS, 61)] + ["not-a-customer"]


@dataclass
class Mode:
    """Durations and counts; `quick` keeps the harness working in CI in about a minute."""

    name: str
    duration: float  # seconds per wrk run
    warmup: float
    reps: int  # repetitions of every proxy run (interleaved)
    reload_duration: float  # seconds per wrk run; steady and swapping runs alternate
    reload_reps: int  # (steady, swapping) pairs per contender
    swaps: int  # data-plane table swaps in all, split evenly over the swapping runs
    nginx_reload_every: float
    edits: int  # edits per debounce setting (row 6)


MODES = {
    "quick": Mode("quick", duration=2, warmup=1, reps=1, reload_duration=3, reload_reps=1,
                  swaps=50, nginx_reload_every=0.1, edits=10),
    "full": Mode("full", duration=6, warmup=2, reps=8, reload_duration=5, reload_reps=10,
                 swaps=1000, nginx_reload_every=0.1, edits=100),
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


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


# --------------------------------------------------------------------------------------------
# Tables and configs for every contender.


def placement(i: int, version: str) -> str:
    even = i % 2 == 0
    return "cell-a" if even == (version == "a") else "cell-b"


def routing_yaml(cells: dict[str, int], version: str, extra: str = "") -> str:
    lines = [
        "apiVersion: cellroute.dev/v1alpha1",
        "kind: RoutingConfig",
        "metadata: {name: bench, namespace: default}",
        "spec:",
        "  defaultPlacement: cell-a",
        "  customerToPlacement:",
    ]
    lines += [f"    customer-{i:08d}: {placement(i, version)}" for i in range(TABLE_CUSTOMERS)]
    if extra:
        lines.append(f"    {extra}: cell-b")
    lines.append("  placementToEndpoint:")
    lines += [f"    {name}: http://127.0.0.1:{port}" for name, port in cells.items()]
    return "\n".join(lines) + "\n"


def nginx_map(version: str) -> str:
    rows = [f"  customer-{i:08d} {placement(i, version).replace('-', '_')};"
            for i in range(TABLE_CUSTOMERS)]
    return "map $http_x_customer_id $cell {\n  default cell_a;\n" + "\n".join(rows) + "\n}\n"


def nginx_common(prefix: Path, workers: int, log_level: str = "warn") -> str:
    return f"""worker_processes {workers};
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log {log_level};
worker_rlimit_nofile 8192;
events {{ worker_connections 4096; }}
"""


def nginx_upstream_conf(prefix: Path, cells: dict[str, int]) -> str:
    servers = "\n".join(
        f'  server {{ listen 127.0.0.1:{port} backlog=4096; location / {{ return 200 "{name}\\n"; }} }}'
        for name, port in cells.items())
    return nginx_common(prefix, 1) + f"""http {{
  access_log off;
  default_type text/plain;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  client_body_temp_path {prefix}/tmp;
{servers}
}}
"""


def nginx_proxy_conf(prefix: Path, workers: int, port: int, cells: dict[str, int],
                     map_file: Path, log_level: str = "warn") -> str:
    upstreams = "\n".join(
        f"  upstream {name.replace('-', '_')} {{ server 127.0.0.1:{p}; keepalive 128; "
        f"keepalive_requests 100000000; keepalive_timeout 300s; }}"
        for name, p in cells.items())
    # The same work the data plane does per request: map the header, keep-alive HTTP/1.1 to the
    # cell, add x-forwarded-for/-proto/-host. No access log (the data plane writes none).
    return nginx_common(prefix, workers, log_level) + f"""http {{
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  client_body_temp_path {prefix}/tmp;
  proxy_temp_path {prefix}/tmp;
  include {map_file};
{upstreams}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://$cell;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
    }}
  }}
}}
"""


def haproxy_conf(threads: int, port: int, cells: dict[str, int], map_file: Path) -> str:
    backends = "\n".join(
        f"backend be_{name.replace('-', '_')}\n  server s1 127.0.0.1:{p}" for name, p in cells.items())
    return f"""global
  nbthread {threads}
  maxconn 4096
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:{port}
  option forwardfor
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  use_backend %[req.hdr(x-customer-id),map({map_file},be_cell_a)]
{backends}
"""


def haproxy_map(version: str) -> str:
    return "".join(f"customer-{i:08d} be_{placement(i, version).replace('-', '_')}\n"
                   for i in range(TABLE_CUSTOMERS))


def write_atomic(path: Path, text: str) -> None:
    """Writes a temp file next to `path` (a name the data plane's watch ignores) and renames it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Contenders.


@dataclass
class Contender:
    key: str
    label: str
    kind: str  # data-plane, nginx, haproxy, direct
    workers: int
    port: int
    proc: subprocess.Popen | None = None
    admin_port: int = 0
    command: str = ""

    def pids(self) -> list[int]:
        if self.proc is None:
            return []
        return [self.proc.pid] + children(self.proc.pid)


class Env:
    """The run directory, the binaries, the upstream cells, and everything started."""

    def __init__(self, args, mode: Mode, workdir: Path, data_plane: Path):
        self.args = args
        self.mode = mode
        self.workdir = workdir
        self.data_plane = data_plane
        self.procs = Procs(workdir)
        self.cells: dict[str, int] = {}
        self.upstream: subprocess.Popen | None = None
        self.commands: dict[str, str] = {}
        self.out_dir = workdir
        self.variants: list[tuple[str, Path, dict]] = []

    def start_upstream(self) -> None:
        self.cells = {"cell-a": free_port(), "cell-b": free_port()}
        prefix = self.workdir / "upstream"
        (prefix / "tmp").mkdir(parents=True, exist_ok=True)
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_upstream_conf(prefix, self.cells))
        self.upstream = self.procs.start("upstream", ["nginx", "-c", str(conf), "-p", str(prefix)])
        for p in self.cells.values():
            wait_port(p)
        self.commands["upstream"] = f"nginx -c {rel(conf)}  (1 worker; `return 200 \"cell-a\\n\"`)"

    def upstream_pids(self) -> list[int]:
        assert self.upstream is not None
        return [self.upstream.pid] + children(self.upstream.pid)

    def start_data_plane(self, key: str, workers: int | None, watch: bool = True,
                         debounce: str | None = None, json_logs: bool = False,
                         version: str = "a", binary: Path | None = None,
                         extra_env: dict | None = None, label: str | None = None) -> Contender:
        d = self.workdir / key
        d.mkdir(parents=True, exist_ok=True)
        cfg = d / "routing.yaml"
        cfg.write_text(routing_yaml(self.cells, version))
        token = d / "token"
        token.write_text(TOKEN + "\n")
        port, admin = free_port(), free_port()
        argv = [str(binary or self.data_plane), "run", "--listen", f"127.0.0.1:{port}",
                "--admin-listen", f"127.0.0.1:{admin}", "--config", str(cfg),
                "--admin-token-file", str(token)]
        if not watch:
            argv.append("--no-watch")
        if debounce:
            argv += ["--reload-debounce", debounce]
        if json_logs:
            argv += ["--log-format", "json"]
        env = {"TOKIO_WORKER_THREADS": str(workers)} if workers else {}
        env.update(extra_env or {})
        p = self.procs.start(key, argv, env)
        wait_port(port)
        wait_port(admin)
        n = workers or os.cpu_count()
        label = label or f"data plane, {n} worker thread{'s' if n != 1 else ''}"
        c = Contender(key, label, "data-plane", workers or os.cpu_count() or 1, port, p, admin)
        prefix_env = "".join(f"{k}={v} " for k, v in env.items())
        shown = [f"{binary.name if binary else '$CARGO_TARGET_DIR/release/data-plane'}"] + [
            shorten(a, self.workdir).replace(f":{port}", ":$PORT").replace(f":{admin}", ":$ADMIN")
            for a in argv[1:]]
        c.command = prefix_env + " ".join(shown)
        return c

    def start_nginx(self, key: str, workers: int, log_level: str = "warn") -> Contender:
        prefix = self.workdir / key
        (prefix / "tmp").mkdir(parents=True, exist_ok=True)
        map_file = prefix / "cells.map.conf"
        map_file.write_text(nginx_map("a"))
        port = free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_proxy_conf(prefix, workers, port, self.cells, map_file, log_level))
        p = self.procs.start(key, ["nginx", "-c", str(conf), "-p", str(prefix)])
        wait_port(port)
        c = Contender(key, f"nginx, {workers} worker{'s' if workers != 1 else ''}", "nginx",
                      workers, port, p)
        c.command = f"nginx -c {shorten(str(conf), self.workdir)}"
        return c

    def start_haproxy(self, key: str, threads: int) -> Contender:
        d = self.workdir / key
        d.mkdir(parents=True, exist_ok=True)
        map_file = d / "cells.map"
        map_file.write_text(haproxy_map("a"))
        port = free_port()
        conf = d / "haproxy.cfg"
        conf.write_text(haproxy_conf(threads, port, self.cells, map_file))
        p = self.procs.start(key, ["haproxy", "-f", str(conf), "-db"])
        wait_port(port)
        c = Contender(key, f"HAProxy, {threads} thread{'s' if threads != 1 else ''}", "haproxy",
                      threads, port, p)
        c.command = f"haproxy -db -f {shorten(str(conf), self.workdir)}"
        return c


def rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def shorten(arg: str, workdir: Path) -> str:
    return arg.replace(str(workdir), "$RUN")


# --------------------------------------------------------------------------------------------
# wrk.


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    errors: int
    error_detail: dict
    wrk_cpu_s: float = 0.0
    cpu: dict = field(default_factory=dict)  # role -> (user_us_per_req, sys_us_per_req)


def wrk_argv(port: int, duration: float) -> list[str]:
    return ["wrk", f"-t{WRK_THREADS}", f"-c{WRK_CONNS}", f"-d{max(1, round(duration))}s", "--timeout", WRK_TIMEOUT,
            "-s", str(LUA), f"http://127.0.0.1:{port}/", "--", *LOAD_IDS]


def wrk_command_text(duration: float) -> str:
    ids = " ".join(LOAD_IDS[:3]) + " ... " + LOAD_IDS[-1]
    return (f"wrk -t{WRK_THREADS} -c{WRK_CONNS} -d{duration:g}s --timeout {WRK_TIMEOUT} "
            f"-s bench/lua/customers.lua http://127.0.0.1:PORT/ -- {ids}")


def run_wrk(port: int, duration: float, cpu_roles: dict[str, list[int]] | None = None,
            _retry: bool = True) -> WrkResult:
    """One wrk run, killed if it overruns; CPU of each role's processes over the run."""
    cpu_roles = cpu_roles or {}
    before = {role: cpu_ticks(pids) for role, pids in cpu_roles.items()}
    p = subprocess.Popen(wrk_argv(port, duration), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    killer = threading.Timer(duration + 20, p.kill)
    killer.start()
    out = p.stdout.read().decode(errors="replace")
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    killer.cancel()
    after = {role: cpu_ticks(pids) for role, pids in cpu_roles.items()}
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCH ")), None)
    if line is None and "unable to connect" in out and _retry:
        # Seen once on this machine: wrk's pre-flight connect refused by a live listener.
        log(f"wrk could not connect to port {port} ({out.strip()}); retrying once")
        time.sleep(0.5)
        return run_wrk(port, duration, cpu_roles, _retry=False)
    if line is None:
        raise RuntimeError(f"wrk printed no result (exit {p.returncode}):\n{out}")
    j = json.loads(line[6:])
    secs = j["duration_us"] / 1e6
    n = max(j["requests"], 1)
    errors = {k[4:]: j[k] for k in j if k.startswith("err_")}
    r = WrkResult(
        requests=j["requests"], seconds=secs, rps=j["requests"] / secs,
        p50_ms=j["p50_us"] / 1e3, p90_ms=j["p90_us"] / 1e3, p99_ms=j["p99_us"] / 1e3,
        p999_ms=j["p999_us"] / 1e3, max_ms=j["max_us"] / 1e3,
        errors=sum(errors.values()), error_detail=errors,
        wrk_cpu_s=ru.ru_utime + ru.ru_stime)
    for role in cpu_roles:
        du = (after[role][0] - before[role][0]) / CLK_TCK * 1e6 / n
        ds = (after[role][1] - before[role][1]) / CLK_TCK * 1e6 / n
        r.cpu[role] = (du, ds)
    r.cpu["wrk"] = (ru.ru_utime * 1e6 / n, ru.ru_stime * 1e6 / n)
    return r


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


# --------------------------------------------------------------------------------------------
# Row 2: proxy overhead.


def row_proxy(env: Env) -> dict:
    m = env.mode
    log("row 2: starting contenders")
    cs = [
        Contender("direct", "direct to the upstream (reference)", "direct", 0, env.cells["cell-a"]),
        env.start_data_plane("dp2", None),
        env.start_data_plane("dp1", 1),
        env.start_nginx("nginx2", 2),
        env.start_nginx("nginx1", 1),
        env.start_haproxy("haproxy2", 2),
        env.start_haproxy("haproxy1", 1),
    ]
    variants = []
    for i, (vlabel, vbin, venv) in enumerate(env.variants):
        v = env.start_data_plane(f"var{i}", None, binary=vbin, extra_env=venv, label=vlabel)
        v.kind = "variant"
        variants.append(v)
    cs += variants
    for c in cs:  # every contender routes correctly before anything is timed
        if c.kind == "direct":
            continue
        for i, cell in ((0, "cell-a"), (1, "cell-b")):
            st, body = http_get(c.port, "/", {"x-customer-id": f"customer-{i:08d}"})
            if st != 200 or body.strip().decode() != cell:
                raise RuntimeError(f"{c.label}: customer {i} got {st} {body!r}, expected {cell}")
    for c in cs:
        run_wrk(c.port, m.warmup)
    runs: dict[str, list[WrkResult]] = {c.key: [] for c in cs}
    for rep in range(m.reps):
        order = cs[rep % len(cs):] + cs[:rep % len(cs)]
        for c in order:
            roles = {"upstream": env.upstream_pids()}
            if c.kind != "direct":
                roles["proxy"] = c.pids()
            r = run_wrk(c.port, m.duration, roles)
            runs[c.key].append(r)
            log(f"row 2 rep {rep + 1}/{m.reps} {c.key:9s} {r.rps:9.0f} rps  p50 {r.p50_ms:.2f} ms"
                f"  p99 {r.p99_ms:.2f} ms  errors {r.errors}")
    profile = None
    if env.args.profile:
        profile = profile_proxies(env, cs)
    out = {"contenders": [], "pairs": [], "profile": profile,
           "commands": {c.key: c.command for c in cs if c.command}}
    for c in cs:
        rs = runs[c.key]
        out["contenders"].append({
            "key": c.key, "label": c.label, "kind": c.kind, "workers": c.workers,
            "rps": med([r.rps for r in rs]), "p50_ms": med([r.p50_ms for r in rs]),
            "p99_ms": med([r.p99_ms for r in rs]), "errors": sum(r.errors for r in rs),
            "requests": sum(r.requests for r in rs),
            "proxy_user_us": med([r.cpu["proxy"][0] for r in rs]) if c.kind != "direct" else None,
            "proxy_sys_us": med([r.cpu["proxy"][1] for r in rs]) if c.kind != "direct" else None,
            "upstream_us": med([sum(r.cpu["upstream"]) for r in rs]),
            "wrk_us": med([sum(r.cpu["wrk"]) for r in rs]),
            "runs": [r.__dict__ for r in rs],
        })
    pairs = [("dp2", "nginx2", True), ("dp1", "nginx1", True), ("dp2", "nginx1", False),
             ("dp2", "haproxy2", False), ("dp1", "haproxy1", False)]
    for v in variants:
        pairs += [(v.key, "dp2", False), (v.key, "nginx2", False)]
    for a, b, goal in pairs:
        rr = [x.rps / y.rps for x, y in zip(runs[a], runs[b])]
        pr = [x.p99_ms / y.p99_ms for x, y in zip(runs[a], runs[b])]
        p50 = [x.p50_ms / y.p50_ms for x, y in zip(runs[a], runs[b])]
        cpu = [sum(x.cpu["proxy"]) / max(sum(y.cpu["proxy"]), 1e-9) for x, y in zip(runs[a], runs[b])]
        out["pairs"].append({"a": a, "b": b, "goal": goal, "rps": stats3(rr), "p99": stats3(pr),
                             "p50": stats3(p50), "cpu": stats3(cpu)})
    for c in cs:
        if c.kind != "direct":
            rr = [x.rps / y.rps for x, y in zip(runs[c.key], runs["direct"])]
            out["pairs"].append({"a": c.key, "b": "direct", "goal": False, "rps": stats3(rr),
                                 "p99": stats3([x.p99_ms / y.p99_ms for x, y in
                                                zip(runs[c.key], runs["direct"])]),
                                 "p50": None, "cpu": None})
    for c in cs:
        if c.proc is not None:
            env.procs.stop(c.proc)
    return out


def stats3(xs: list[float]) -> dict:
    return {"median": med(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def perf_works() -> bool:
    if shutil.which("perf") is None:
        return False
    try:
        r = subprocess.run(["perf", "record", "-e", "cpu-clock:u", "-o", "/dev/null", "--", "true"],
                           capture_output=True, timeout=20)
        return r.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


# Approximate buckets for the data plane's user-space profile, first match wins.
BUCKETS = [
    ("allocator (glibc malloc/free)", r"malloc|_int_free|cfree|unlink_chunk|realloc|__libc_free|tcache"),
    ("memcpy/memmove", r"memmove|memcpy|memset"),
    ("timers (tokio time wheel, Sleep, clock_gettime)",
     r"tokio::runtime::time|TokioSleep|time::sleep|Sleep|clock_gettime|vdso|Instant"),
    ("upstream client (hyper-util legacy Client, pool, dispatch channel)",
     r"hyper_util::client|pool::|mpsc|want::|oneshot|client::dispatch|role::Client|HttpsConnector|HttpConnector"),
    ("HTTP/1 codec (hyper h1, httparse)", r"hyper::proto|role::Server|httparse|hyper::body|hyper::"),
    ("headers and URIs (http crate, x-forwarded-*)",
     r"http::header|HeaderMap|HeaderValue|http::uri|http::extensions|add_forwarded|strip_hop|upstream_uri|sip::Hasher|fmt"),
    ("tokio scheduler, I/O driver, wakers", r"tokio::|futures_util|waker"),
    ("syscall wrappers (libc)", r"writev|recv|send|epoll|syscall|pthread"),
    ("bytes", r"bytes::"),
    ("data plane's own code (routing, metrics)", r"data_plane|routing_model|prometheus"),
]


def profile_proxies(env: Env, cs: list[Contender]) -> dict | None:
    """A user-space CPU profile (perf, cpu-clock) of the data plane and of nginx under load."""
    if not perf_works():
        log("perf is not usable here; skipping the profile")
        return None
    out = {}
    for key in ("dp2", "nginx1"):
        c = next(x for x in cs if x.key == key)
        pids = c.pids() if c.kind == "data-plane" else children(c.proc.pid)
        data = env.workdir / f"perf-{key}.data"
        secs = max(2.0, min(env.mode.duration, 6.0))
        holder: dict = {}
        t = threading.Thread(target=lambda: holder.setdefault("r", run_wrk(c.port, secs + 2)))
        t.start()
        time.sleep(1)
        subprocess.run(["perf", "record", "-q", "-e", "cpu-clock:u", "-F", "1999", "-p",
                        ",".join(map(str, pids)), "-o", str(data), "--", "sleep", f"{secs:g}"],
                       capture_output=True, timeout=secs + 60)
        t.join()
        rep = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children",
                              "--sort", "symbol", "-g", "none", "--percent-limit", "0.01"],
                             capture_output=True, text=True, timeout=120).stdout
        syms = []
        for ln in rep.splitlines():
            mm = re.match(r"\s*([\d.]+)%\s+\[[.k]\]\s+(.*?)\s*$", ln)
            if mm:
                syms.append((float(mm.group(1)), re.sub(r"\s+-\s+-\s*$", "", mm.group(2)).strip()))
        buckets: dict[str, float] = {}
        for pct, sym in syms:
            name = next((b for b, rx in BUCKETS if re.search(rx, sym)), "other")
            buckets[name] = buckets.get(name, 0.0) + pct
        out[key] = {"top": syms[:25], "buckets": sorted(buckets.items(), key=lambda kv: -kv[1]),
                    "command": f"perf record -e cpu-clock:u -F 1999 -p <{c.label} pids> -- sleep {secs:g}"
                               f"  (under the same wrk load); perf report --no-children --sort symbol"}
        (env.out_dir / f"profile-{key}.txt").write_text(
            f"# {out[key]['command']}\n# {c.label}\n" + rep)
    return out


# --------------------------------------------------------------------------------------------
# Row 3: reload under load.


def metric(admin_port: int, name: str) -> float:
    _, body = http_get(admin_port, "/metrics")
    for ln in body.decode().splitlines():
        if ln.startswith(name + " ") or ln.startswith(name + "{"):
            return float(ln.rsplit(" ", 1)[1])
    raise RuntimeError(f"metric {name} not found")


def swap_data_plane(c: Contender, cfg: Path, versions: list[str], count: int, window: float) -> dict:
    """`count` swaps spread evenly over `window` seconds: rewrite the file, POST /admin/reload."""
    conn = http.client.HTTPConnection("127.0.0.1", c.admin_port, timeout=10)
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Length": "0"}
    start = time.monotonic()
    deadline = start + window
    done = changed = failed = conn_errors = 0
    took = []
    for i in range(count):
        target = start + i * window / count
        now = time.monotonic()
        if now > deadline:
            break
        if target > now:
            time.sleep(target - now)
        write_atomic(cfg, versions[i % 2])
        t0 = time.monotonic()
        done += 1
        try:
            conn.request("POST", "/admin/reload", headers=auth)
            resp = conn.getresponse()
            body = json.loads(resp.read() or b"{}")
        except (http.client.HTTPException, OSError) as e:
            # Not retried: a retry could apply twice. Counted, and the connection replaced.
            log(f"row 3: POST /admin/reload failed ({e!r}); reconnecting")
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", c.admin_port, timeout=10)
            failed += 1
            conn_errors += 1
            continue
        took.append(time.monotonic() - t0)
        if resp.status == 200 and body.get("changed"):
            changed += 1
        else:
            failed += 1
    conn.close()
    return {"requested": count, "done": done, "changed": changed, "failed": failed,
            "admin_connection_errors": conn_errors,
            "elapsed": time.monotonic() - start, "reload_ms_p50": med(took) * 1e3 if took else None}


def swap_nginx(c: Contender, prefix: Path, maps: list[str], every: float, window: float) -> dict:
    """Every `every` seconds for `window` seconds: swap the map file, `nginx -s reload`."""
    conf = prefix / "nginx.conf"
    map_file = prefix / "cells.map.conf"
    start = time.monotonic()
    n = 0
    failed = 0
    while True:
        target = start + n * every
        if target > start + window:
            break
        now = time.monotonic()
        if target > now:
            time.sleep(target - now)
        write_atomic(map_file, maps[n % 2])
        r = subprocess.run(["nginx", "-c", str(conf), "-p", str(prefix), "-s", "reload"],
                           capture_output=True, timeout=10)
        failed += r.returncode != 0
        n += 1
    return {"requested": n, "done": n, "failed": failed, "elapsed": time.monotonic() - start}


def count_reconfigures(prefix: Path) -> int:
    try:
        text = (prefix / "error.log").read_text(errors="replace")
    except OSError:
        return 0
    # "signal 1 (SIGHUP) received from N, reconfiguring" is the signal; the bare
    # "reconfiguring" line is the master actually re-reading its config.
    return sum(1 for ln in text.splitlines() if ln.endswith(": reconfiguring"))


def row_reload(env: Env) -> dict:
    m = env.mode
    log("row 3: starting contenders")
    dp = env.start_data_plane("reload-dp", None, watch=False)
    dp_cfg = env.workdir / "reload-dp" / "routing.yaml"
    dp_versions = [routing_yaml(env.cells, "b"), routing_yaml(env.cells, "a")]
    ng = env.start_nginx("reload-nginx", 2, log_level="notice")
    ng_prefix = env.workdir / "reload-nginx"
    ng_maps = [nginx_map("b"), nginx_map("a")]
    for c in (dp, ng):
        run_wrk(c.port, m.warmup)
    window = m.reload_duration - 1.0  # swaps run inside the wrk run, 0.5 s clear of each end
    per_window = -(-m.swaps // m.reload_reps)
    res: dict[str, dict] = {
        c.key: {"steady": [], "swaps": [], "swap_stats": [], "applied": 0, "requested": 0}
        for c in (dp, ng)}
    for rep in range(m.reload_reps):
        for c in ((dp, ng) if rep % 2 == 0 else (ng, dp)):
            steady = run_wrk(c.port, m.reload_duration)
            holder: dict = {}
            t = threading.Thread(target=lambda c=c: holder.setdefault(
                "r", run_wrk(c.port, m.reload_duration)))
            if c is dp:
                g0 = metric(dp.admin_port, "config_generation")
                t.start()
                time.sleep(0.5)
                st = swap_data_plane(dp, dp_cfg, dp_versions, per_window, window)
                t.join()
                applied = int(metric(dp.admin_port, "config_generation") - g0)
            else:
                r0 = count_reconfigures(ng_prefix)
                t.start()
                time.sleep(0.5)
                st = swap_nginx(ng, ng_prefix, ng_maps, m.nginx_reload_every, window)
                t.join()
                time.sleep(0.3)
                applied = count_reconfigures(ng_prefix) - r0
            during = holder["r"]
            st["applied"] = applied
            res[c.key]["steady"].append(steady)
            res[c.key]["swaps"].append(during)
            res[c.key]["swap_stats"].append(st)
            res[c.key]["applied"] += applied
            res[c.key]["requested"] += st["requested"]
            log(f"row 3 rep {rep + 1}/{m.reload_reps} {c.key:12s} steady p99 {steady.p99_ms:.2f} ms "
                f"err {steady.errors} | swaps {applied}/{st['requested']} p99 {during.p99_ms:.2f} ms "
                f"err {during.errors} {during.error_detail}")
    out = {"contenders": [], "commands": {dp.key: dp.command, ng.key: ng.command}}
    for c in (dp, ng):
        r = res[c.key]
        ratios = [s.p99_ms / b.p99_ms for s, b in zip(r["swaps"], r["steady"])]
        out["contenders"].append({
            "key": c.key, "label": c.label, "kind": c.kind,
            "requested": r["requested"], "applied": r["applied"],
            "steady_errors": sum(x.errors for x in r["steady"]),
            "swap_errors": sum(x.errors for x in r["swaps"]),
            "swap_error_detail": merge_errors([x.error_detail for x in r["swaps"]]),
            "swap_requests": sum(x.requests for x in r["swaps"]),
            "steady_p99_ms": med([x.p99_ms for x in r["steady"]]),
            "swap_p99_ms": med([x.p99_ms for x in r["swaps"]]),
            "steady_max_ms": max(x.max_ms for x in r["steady"]),
            "swap_max_ms": max(x.max_ms for x in r["swaps"]),
            "steady_rps": med([x.rps for x in r["steady"]]),
            "swap_rps": med([x.rps for x in r["swaps"]]),
            "ratio": stats3(ratios),
            "swap_stats": r["swap_stats"],
            "steady_p99_runs": [x.p99_ms for x in r["steady"]],
            "swap_p99_runs": [x.p99_ms for x in r["swaps"]],
            "swap_errors_runs": [x.errors for x in r["swaps"]],
        })
    env.procs.stop(dp.proc)
    env.procs.stop(ng.proc)
    return out


def merge_errors(ds: list[dict]) -> dict:
    out: dict[str, int] = {}
    for d in ds:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return {k: v for k, v in out.items() if v}


# --------------------------------------------------------------------------------------------
# Row 6: file edit -> applied.


def parse_ts(s: str) -> float:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def row_edit_once(env: Env, debounce: str) -> dict:
    key = f"edit-{debounce}"
    c = env.start_data_plane(key, None, watch=True, debounce=debounce, json_logs=True)
    cfg = env.workdir / key / "routing.yaml"
    logf = open(env.workdir / f"{key}.log", "r")
    logf.seek(0, os.SEEK_END)
    poll = http.client.HTTPConnection("127.0.0.1", c.admin_port, timeout=5)
    reconnects = 0

    def generation() -> int:
        nonlocal poll, reconnects
        for attempt in (1, 2):
            try:
                poll.request("GET", "/readyz")
                return int(json.loads(poll.getresponse().read()).get("config_generation", 0))
            except (http.client.HTTPException, OSError) as e:
                # Seen once: the admin server closed the keep-alive connection without a response.
                log(f"row 6: /readyz poll failed ({e!r}); reconnecting")
                reconnects += 1
                poll.close()
                poll = http.client.HTTPConnection("127.0.0.1", c.admin_port, timeout=5)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    pending = ""

    def applied_line(gen: int, deadline: float) -> dict | None:
        nonlocal pending
        while time.monotonic() < deadline:
            chunk = logf.read()
            if chunk:
                pending += chunk
                *lines, pending = pending.split("\n")
                for ln in lines:
                    try:
                        j = json.loads(ln)
                    except ValueError:
                        continue
                    if j.get("message") == "config applied" and j.get("generation") == gen:
                        return j
            else:
                time.sleep(0.001)
        return None

    rng = random.Random(6)
    debounce_s = parse_duration(debounce)
    g = generation()
    log_lat, poll_lat, missed = [], [], 0
    for i in range(env.mode.edits):
        text = routing_yaml(env.cells, "ab"[i % 2], extra=f"edit-{i:04d}")
        tmp = cfg.with_name(cfg.name + ".tmp")
        tmp.write_text(text)
        t_edit = time.time()
        os.replace(tmp, cfg)
        # Client-visible: poll the generation every 1 ms (bounded at 5 s).
        deadline = time.monotonic() + 5
        seen = None
        while time.monotonic() < deadline:
            if generation() > g:
                seen = time.time()
                break
            time.sleep(0.001)
        line = applied_line(g + 1, time.monotonic() + 2)
        if seen is None or line is None:
            missed += 1
            g = generation()
        else:
            g += 1
            poll_lat.append((seen - t_edit) * 1e3)
            log_lat.append((parse_ts(line["timestamp"]) - t_edit) * 1e3)
        # Next edit after the debounce window has surely closed, at a random phase.
        time.sleep(debounce_s * 1.5 + 0.02 + rng.uniform(0, 0.05))
    poll.close()
    logf.close()
    env.procs.stop(c.proc)
    log(f"row 6 debounce {debounce}: log p50 {pct(log_lat, 50):.1f} ms p99 {pct(log_lat, 99):.1f} ms"
        f" | poll p50 {pct(poll_lat, 50):.1f} ms p99 {pct(poll_lat, 99):.1f} ms | missed {missed}")
    return {"debounce": debounce, "debounce_ms": debounce_s * 1e3, "edits": env.mode.edits,
            "applied": len(log_lat), "missed": missed, "log_ms": log_lat, "poll_ms": poll_lat,
            "admin_reconnects": reconnects,
            "command": c.command}


def parse_duration(s: str) -> float:
    mm = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)", s)
    if not mm:
        raise ValueError(s)
    return float(mm.group(1)) / (1000 if mm.group(2) == "ms" else 1)


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


def row_edit(env: Env) -> dict:
    log("row 6: edit -> applied")
    return {"settings": [row_edit_once(env, "100ms"), row_edit_once(env, "10ms")]}


# --------------------------------------------------------------------------------------------
# Report: markdown, plots.


def machine() -> dict:
    model = "unknown"
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                model = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        mem = int(Path("/proc/meminfo").read_text().split()[1]) // (1024 * 1024)
    except (OSError, ValueError, IndexError):
        pass
    virt = ""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        mm = re.search(r"Hypervisor vendor:\s*(\S+)", lscpu)
        virt = f"{mm.group(1)} virtual machine" if mm else ""
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": model, "mem_gib": mem, "kernel": platform.release(),
            "virt": virt}


def versions() -> dict:
    def first(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"
    rev = first(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip() != ""
    return {"nginx": first(["nginx", "-v"]).replace("nginx version: ", ""),
            "haproxy": first(["haproxy", "-v"]).split(" - ")[0],
            "wrk": first(["wrk", "-v"]).split(" [")[0],
            "git": rev + (" + uncommitted changes" if dirty else "")}


def f_ms(x: float) -> str:
    return f"{x:.2f} ms" if x < 10 else f"{x:.1f} ms"


def f_ratio(s: dict | None) -> str:
    if not s:
        return "—"
    if s["n"] > 1:
        return f"**{s['median']:.2f}** ({s['min']:.2f}–{s['max']:.2f})"
    return f"**{s['median']:.2f}**"


def ok(b: bool) -> str:
    return "✅" if b else "❌"


def gnuplot(script: str, workdir: Path) -> bool:
    if shutil.which("gnuplot") is None:
        return False
    f = workdir / "plot.gp"
    f.write_text(script)
    r = subprocess.run(["gnuplot", str(f)], capture_output=True, text=True)
    if r.returncode != 0:
        log(f"gnuplot failed: {r.stderr.strip()}")
    return r.returncode == 0


def plot_proxy(res: dict, out_dir: Path, workdir: Path) -> str | None:
    data = workdir / "proxy.dat"
    rows = []
    for c in res["contenders"]:
        label = c["label"].replace(" (reference)", "").replace("direct to the upstream", "direct\\nupstream")
        label = re.sub(r", (\d+) worker threads?", r"\\n\1 thr.", label)
        label = re.sub(r", (\d+) workers?", r"\\n\1 wkr", label)
        label = re.sub(r", (\d+) threads?", r"\\n\1 thr.", label)
        rows.append(f'"{label}" {c["rps"] / 1000:.2f} {c["p99_ms"]:.3f} {c["p50_ms"]:.3f}')
    data.write_text("\n".join(rows) + "\n")
    svg = out_dir / "proxy.svg"
    ok_ = gnuplot(f"""
set terminal svg size 1000,440 dynamic font 'sans,11' background '#ffffff'
set output '{svg}'
set multiplot layout 1,2 title "Proxy overhead: wrk -t{WRK_THREADS} -c{WRK_CONNS}, loopback, {os.cpu_count()} cores (median of runs)"
set style fill solid 0.8 border -1
set boxwidth 0.7
set grid ytics
set xtics font ',9' nomirror
set bmargin 4
set offsets 0.5, 0.5, graph 0.1, 0
set yrange [0:*]
set title 'throughput (k requests/s, higher is better)'
plot '{data}' using 2:xtic(1) with boxes lc rgb '#4878a8' notitle, '' using 0:2:(sprintf('%.0f',$2)) with labels offset 0,0.7 font ',9' notitle
set title 'latency (ms, log scale, lower is better)'
set boxwidth 0.9 relative
set logscale y
set yrange [0.1:*]
set offsets 0, 0, 0, 0
set style data histograms
set style histogram clustered gap 1
set key top right
plot '{data}' using 4:xtic(1) title 'p50' lc rgb '#e8a87c', '' using 3 title 'p99' lc rgb '#c8643c'
unset multiplot
""", workdir)
    return svg.name if ok_ else None


def plot_edit(res: dict, out_dir: Path, workdir: Path) -> str | None:
    plots = []
    for s in res["settings"]:
        d = workdir / f"edit-{s['debounce']}.dat"
        xs = sorted(s["log_ms"])
        d.write_text("".join(f"{x:.3f} {(i + 1) / len(xs):.4f}\n" for i, x in enumerate(xs)))
        plots.append(f"'{d}' using 1:2 with steps lw 2 title 'debounce {s['debounce']}'")
    svg = out_dir / "edit-applied.svg"
    ok_ = gnuplot(f"""
set terminal svg size 700,380 dynamic font 'sans,11' background '#ffffff'
set output '{svg}'
set title 'File edit (rename) → "config applied" log line, CDF'
set xlabel 'milliseconds after the rename'
set ylabel 'fraction of edits'
set grid
set key at graph 0.72, graph 0.6
set yrange [0:1.02]
set xrange [0:{max(270, max((max(x["log_ms"]) for x in res["settings"] if x["log_ms"]), default=0) * 1.05):.0f}]
set arrow from 250,0 to 250,1.02 nohead dt 2 lc rgb '#c00000'
set label 'goal: p99 ≤ 250 ms' at 245,0.08 right tc rgb '#c00000' font ',9'
plot {', '.join(plots)}
""", workdir)
    return svg.name if ok_ else None


def plot_reload(res: dict, out_dir: Path, workdir: Path) -> str | None:
    d = workdir / "reload.dat"
    d.write_text("".join(
        f'"{c["label"]}" {c["steady_p99_ms"]:.3f} {c["swap_p99_ms"]:.3f}\n' for c in res["contenders"]))
    svg = out_dir / "reload.svg"
    ok_ = gnuplot(f"""
set terminal svg size 640,360 dynamic font 'sans,11' background '#ffffff'
set output '{svg}'
set title 'p99 latency, steady state vs during table swaps (median of runs)'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set ylabel 'ms'
set grid ytics
set yrange [0:*]
set key outside top center horizontal
plot '{d}' using 2:xtic(1) title 'steady' lc rgb '#4878a8', '' using 3 title 'during swaps' lc rgb '#c8643c'
""", workdir)
    return svg.name if ok_ else None


def machine_line(results: dict) -> str:
    """`Machine: ...; date; cellroute <git>` for the head of a generated section."""
    mch, ver = results["machine"], results["versions"]
    return (f"Machine: {mch['cores']} cores, {mch['cpu']}, {mch['mem_gib']} GiB, Linux {mch['kernel']}"
            f"{', ' + mch['virt'] if mch['virt'] else ''}; {results['date']}; cellroute {ver['git']}")


def render(results: dict, out_dir: Path, workdir: Path) -> str:
    mch, ver, mode = results["machine"], results["versions"], results["mode"]
    img_dir = rel(out_dir)
    L = []
    A = L.append
    A(BEGIN)
    A("<!-- Generated by bench/run; edits between these markers are overwritten. -->")
    A("")
    A(f"{machine_line(results)}; {ver['nginx']}, {ver['haproxy']}, {ver['wrk']}.")
    A("")
    A("```sh")
    A(f"bench/run{' --quick' if mode['name'] == 'quick' else ''}      # builds the data plane (release), "
      "runs rows 2, 3 and 6, rewrites this section")
    A("```")
    A("")
    A("Everything runs on loopback on the same cores: wrk, the proxy under test and the upstream "
      "compete for CPU, so these are CPU-efficiency comparisons, not capacity figures. The upstream "
      "\"cells\" are one nginx process (1 worker) answering `return 200 \"cell-a\\n\"` on two ports: "
      "cheaper than `echo-cell` and byte-identical for every contender, so a difference is the "
      "proxies' own. Every proxy maps `x-customer-id` over the same 1,000-customer table "
      "(`customer-00000000`…`customer-00000999`, two cells), keeps HTTP/1.1 connections to the cells "
      "alive and adds `x-forwarded-for`/`-proto`/`-host`; none writes an access log. wrk cycles "
      f"through {len(LOAD_IDS) - 1} listed customers and one unknown one (which goes to the default "
      "cell). Contenders run interleaved, the order rotating each repetition; a ratio is taken "
      "within a repetition and the median over repetitions is shown, with the range in brackets. "
      "In the commands below `$RUN` is the run's temporary directory and `$PORT`/`$ADMIN` are free "
      "ports picked at start; the configs as run, the raw results (`results.json`) and the profiles "
      f"are in [`{img_dir}/`]({img_dir}/).")
    A("")

    # Row 2
    p = results.get("proxy")
    if p:
        A("### Proxy overhead (wrk)")
        A("")
        A("```sh")
        A(wrk_command_text(mode["duration"]) + f"    # x {mode['reps']} repetitions per contender")
        for k, cmd in p["commands"].items():
            A(f"{cmd}")
        A("```")
        A("")
        A("| contender | requests/s | p50 | p99 | proxy CPU per request (user + sys) | errors |")
        A("|---|---|---|---|---|---|")
        for c in p["contenders"]:
            cpu = (f"{c['proxy_user_us'] + c['proxy_sys_us']:.1f} µs ({c['proxy_user_us']:.1f} + "
                   f"{c['proxy_sys_us']:.1f})" if c["proxy_user_us"] is not None else "—")
            A(f"| {c['label']} | {c['rps']:,.0f} | {f_ms(c['p50_ms'])} | {f_ms(c['p99_ms'])} | {cpu} | "
              f"{c['errors']} |")
        A("")
        label = {c["key"]: c["label"] for c in p["contenders"]}
        A("| data plane ÷ peer, same run | requests/s | p50 | p99 | proxy CPU per request | goal: rps ≥ 1.0, p99 ≤ 1.0 |")
        A("|---|---|---|---|---|---|")
        for pr in p["pairs"]:
            if pr["b"] == "direct":
                continue
            g = ""
            if pr["goal"]:
                g = (f"{ok(pr['rps']['median'] >= 1.0)} rps{unresolved(pr['rps'], 1.0)}, "
                     f"{ok(pr['p99']['median'] <= 1.0)} p99{unresolved(pr['p99'], 1.0)}")
            else:
                g = "(for scale)"
            A(f"| {label[pr['a']]} ÷ {label[pr['b']]} | {f_ratio(pr['rps'])} | {f_ratio(pr['p50'])} | "
              f"{f_ratio(pr['p99'])} | {f_ratio(pr['cpu'])} | {g} |")
        A("")
        direct = [pr for pr in p["pairs"] if pr["b"] == "direct"]
        A("Throughput through each proxy ÷ straight to the upstream, same run: " + "; ".join(
            f"{label[pr['a']]} {pr['rps']['median']:.2f}" for pr in direct) + ".")
        A("")
        if results.get("plots", {}).get("proxy"):
            A(f"![proxy throughput and p99]({img_dir}/{results['plots']['proxy']})")
            A("")
        A(proxy_verdict(p, label))
        A("")
        A(cpu_split(p))
        A("")
        if p.get("profile"):
            A(profile_text(p["profile"], img_dir))
            A("")

    # Row 3
    r = results.get("reload")
    if r:
        A("### Reload under load")
        A("")
        A("```sh")
        A(wrk_command_text(mode["reload_duration"]) + "    # steady, then again while swapping; "
          f"{mode['reload_reps']} pairs per contender, contenders alternating")
        for k, cmd in r["commands"].items():
            A(cmd)
        per = -(-mode["swaps"] // mode["reload_reps"])
        win = mode["reload_duration"] - 1
        A(f"# data plane: {mode['swaps']} swaps in all, {per} per swapping run, evenly spread over {win:g} s "
          f"({per / win:.0f}/s): rename a new routing.yaml into place (1,000-customer tables a/b alternate, "
          "every customer moves), POST /admin/reload (Bearer token); applied swaps counted from "
          "config_generation in /metrics")
        A(f"# nginx: every {mode['nginx_reload_every'] * 1000:.0f} ms ({1 / mode['nginx_reload_every']:.0f}/s) "
          f"for {win:g} s: rename a new map include into place, nginx -s reload; applied reloads counted "
          "from \"reconfiguring\" in its error log (signals that arrive while a reload is running merge)")
        A("```")
        A("")
        A("| contender | swaps applied / requested | errors, steady | errors, during swaps | p99 steady | "
          "p99 during swaps | p99 ratio (swaps ÷ steady) | max latency steady / swaps | goal: 0 errors, ≤ 1.1× |")
        A("|---|---|---|---|---|---|---|---|---|")
        for c in r["contenders"]:
            det = (" (" + ", ".join(f"{k} {v}" for k, v in c["swap_error_detail"].items()) + ")"
                   if c["swap_error_detail"] else "")
            goal = (ok(c["swap_errors"] == 0) + " errors, " + ok(c["ratio"]["median"] <= 1.1) + " p99"
                    + unresolved(c["ratio"], 1.1))
            A(f"| {c['label']} | {c['applied']:,} / {c['requested']:,} | {c['steady_errors']} | "
              f"{c['swap_errors']:,} of {c['swap_requests']:,}{det} | {f_ms(c['steady_p99_ms'])} | "
              f"{f_ms(c['swap_p99_ms'])} | {f_ratio(c['ratio'])} | {f_ms(c['steady_max_ms'])} / "
              f"{f_ms(c['swap_max_ms'])} | {goal} |")
        A("")
        if results.get("plots", {}).get("reload"):
            A(f"![p99 steady vs during swaps]({img_dir}/{results['plots']['reload']})")
            A("")
        A(reload_verdict(r))
        A("")

    # Row 6
    e = results.get("edit")
    if e:
        A("### File edit → applied")
        A("")
        A("```sh")
        for s in e["settings"]:
            A(s["command"])
        A(f"# {mode['edits']} edits per setting: write routing.yaml.tmp, rename it over routing.yaml "
          "(tables a/b alternate, plus one new customer per edit so every edit is a real change); "
          "the next edit waits 1.5 x debounce + 20-70 ms")
        A("# applied = timestamp of the audit line \"config applied\" for the new generation "
          "(--log-format json); client-visible = /readyz polled every 1 ms until config_generation moves")
        A("```")
        A("")
        A("| debounce | edits applied | p50 | p99 | max | p50 − debounce | client-visible p50 / p99 | goal: p99 ≤ 250 ms |")
        A("|---|---|---|---|---|---|---|---|")
        for s in e["settings"]:
            lp50, lp99 = pct(s["log_ms"], 50), pct(s["log_ms"], 99)
            A(f"| {s['debounce']} | {s['applied']} / {s['edits']} | {f_ms(lp50)} | {f_ms(lp99)} | "
              f"{f_ms(max(s['log_ms']) if s['log_ms'] else float('nan'))} | "
              f"{f_ms(lp50 - s['debounce_ms'])} | {f_ms(pct(s['poll_ms'], 50))} / "
              f"{f_ms(pct(s['poll_ms'], 99))} | {ok(lp99 <= 250 and s['missed'] == 0)} |")
        A("")
        if results.get("plots", {}).get("edit"):
            A(f"![edit to applied CDF]({img_dir}/{results['plots']['edit']})")
            A("")
        A(edit_verdict(e))
        A("")
    A(END)
    return "\n".join(L)


def unresolved(st: dict, goal: float) -> str:
    return " (not resolved: runs on both sides)" if st["n"] > 1 and st["min"] <= goal <= st["max"] else ""


def noise_note(st: dict, goal: float) -> str:
    """Says so when the repetitions fall on both sides of the goal."""
    if st["n"] > 1 and st["min"] <= goal <= st["max"]:
        return (f" The repetitions range {st['min']:.2f}–{st['max']:.2f}, on both sides of {goal:g}: "
                "on this machine the tail is set by the noise from other processes, so this verdict "
                "is not resolved.")
    return ""


def proxy_verdict(p: dict, label: dict) -> str:
    lines = []
    for pr in p["pairs"]:
        if not pr["goal"]:
            continue
        rps, p99, p50 = pr["rps"]["median"], pr["p99"]["median"], pr["p50"]["median"]
        met = rps >= 1.0 and p99 <= 1.0
        lines.append(
            f"- **{label[pr['a']]} vs {label[pr['b']]}: goal {'met' if met else 'missed'}.** "
            f"Throughput {rps:.2f}× nginx ({'≥' if rps >= 1 else '<'} 1.0; range "
            f"{pr['rps']['min']:.2f}–{pr['rps']['max']:.2f}); p99 {p99:.2f}× "
            f"({'≤' if p99 <= 1 else '>'} 1.0).{noise_note(pr['p99'], 1.0)} The median latency, "
            f"which the noise moves far less, is {p50:.2f}× nginx's, and the data plane spends "
            f"{pr['cpu']['median']:.2f}× nginx's CPU per request.")
    return "\n".join(lines)


def cpu_split(p: dict) -> str:
    L = ["Where the CPU goes (µs of CPU per request, from `/proc/<pid>/stat` and wrk's rusage over "
         "each run; median of runs):", "",
         "| contender | proxy user | proxy sys | upstream | wrk | total |", "|---|---|---|---|---|---|"]
    for c in p["contenders"]:
        pu = c["proxy_user_us"] or 0.0
        ps = c["proxy_sys_us"] or 0.0
        tot = pu + ps + c["upstream_us"] + c["wrk_us"]
        L.append(f"| {c['label']} | {pu:.1f} | {ps:.1f} | {c['upstream_us']:.1f} | {c['wrk_us']:.1f} | "
                 f"{tot:.1f} |")
    return "\n".join(L)


def profile_text(prof: dict, img_dir: str) -> str:
    L = ["User-space profile under the same load (`perf record -e cpu-clock:u`, flat, self time; "
         "buckets are by symbol name and approximate; full reports in "
         f"[`{img_dir}/profile-dp2.txt`]({img_dir}/profile-dp2.txt) and "
         f"[`profile-nginx1.txt`]({img_dir}/profile-nginx1.txt)):", ""]
    dp = prof.get("dp2")
    if dp:
        L += ["| data plane, share of user CPU | % |", "|---|---|"]
        L += [f"| {b} | {v:.1f} |" for b, v in dp["buckets"]]
        L += ["", "Top symbols (data plane): " + "; ".join(
            f"`{s[:70]}` {pct_:.1f}%" for pct_, s in dp["top"][:12]) + "."]
    ng = prof.get("nginx1")
    if ng:
        L += ["", "Top symbols (nginx worker): " + "; ".join(
            f"`{s[:60]}` {pct_:.1f}%" for pct_, s in ng["top"][:8]) + "."]
    return "\n".join(L)


def reload_verdict(r: dict) -> str:
    L = []
    for c in r["contenders"]:
        met = c["swap_errors"] == 0 and c["ratio"]["median"] <= 1.1
        who = "the data plane" if c["kind"] == "data-plane" else "nginx"
        L.append(f"- **{c['label']}: {'meets' if met else 'misses'} the goal** (0 errors and ≤ 1.1× "
                 f"steady p99): {c['swap_errors']:,} errors in {c['swap_requests']:,} requests during "
                 f"{c['applied']:,} applied swaps, p99 {c['ratio']['median']:.2f}× steady state."
                 + noise_note(c["ratio"], 1.1)
                 + (" The goal is held to the data plane; nginx is the peer." if who == "nginx" else ""))
    st = next((c for c in r["contenders"] if c["kind"] == "data-plane"), None)
    if st:
        p50s = [s.get("reload_ms_p50") for s in st["swap_stats"] if s.get("reload_ms_p50")]
        if p50s:
            L.append(f"- One `POST /admin/reload` of this 1,000-customer table (read, parse, validate, "
                     f"build, swap) takes {med(p50s):.1f} ms at the median, measured by the client.")
        ce = sum(s.get("admin_connection_errors", 0) for s in st["swap_stats"])
        if ce:
            L.append(f"- {ce} `POST /admin/reload` calls failed at the connection level (closed without "
                     "a response); counted as not applied.")
    return "\n".join(L)


def edit_verdict(e: dict) -> str:
    L = []
    for s in e["settings"]:
        p99 = pct(s["log_ms"], 99)
        met = p99 <= 250 and s["missed"] == 0
        missed = f", {s['missed']} edits not seen within 5 s" if s["missed"] else ""
        L.append(f"- **debounce {s['debounce']}: goal {'met' if met else 'missed'}**: p99 {p99:.1f} ms "
                 f"({'≤' if p99 <= 250 else '>'} 250 ms){missed}. "
                 f"The floor is the debounce itself: the watcher waits for {s['debounce']} of quiet "
                 "(notify-debouncer-full checks every debounce/4), then the file is re-read, validated "
                 "and swapped.")
        if s.get("admin_reconnects"):
            L.append(f"- While polling `/readyz` (debounce {s['debounce']}) the admin server closed the "
                     f"keep-alive connection without a response {s['admin_reconnects']} time(s); the "
                     "harness reconnected. Worth a look in the data plane.")
    return "\n".join(L)


def write_section(path: Path, section: str, begin: str, end: str, heading: str) -> None:
    """Replaces the text between `begin` and `end` in `path` (markers included in `section`), or
    appends `section` under `heading` when the markers are not there yet."""
    text = path.read_text()
    if begin in text and end in text:
        pre, rest = text.split(begin, 1)
        _, post = rest.split(end, 1)
        text = pre + section + post
    else:
        text = text.rstrip("\n") + f"\n\n{heading}\n\n{section}\n"
    path.write_text(text)


def write_benchmarks_md(section: str, path: Path) -> None:
    write_section(path, section, BEGIN, END, "## Proxy, reload and edit → applied (wrk, nginx, HAProxy)")


# --------------------------------------------------------------------------------------------


def plot_and_render(results: dict, out_dir: Path, workdir: Path) -> str:
    results["plots"] = {}
    if "proxy" in results:
        results["plots"]["proxy"] = plot_proxy(results["proxy"], out_dir, workdir)
    if "reload" in results:
        results["plots"]["reload"] = plot_reload(results["reload"], out_dir, workdir)
    if "edit" in results:
        results["plots"]["edit"] = plot_edit(results["edit"], out_dir, workdir)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    section = render(results, out_dir, workdir)
    (out_dir / "section.md").write_text(section + "\n")
    return section


def render_only(args) -> int:
    out_dir = args.out or BENCH / "results"
    results = json.loads((out_dir / "results.json").read_text())
    with tempfile.TemporaryDirectory(prefix="cellroute-bench-render-") as tmp:
        section = plot_and_render(results, out_dir, Path(tmp))
    md = args.write_md or (None if args.no_write_md else ROOT / "BENCHMARKS.md")
    if md:
        write_benchmarks_md(section, md)
        log(f"wrote {md}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short runs (CI): about a minute")
    ap.add_argument("--rows", default="proxy,reload,edit", help="comma list of proxy, reload, edit")
    ap.add_argument("--data-plane", required=True, type=Path, help="the data-plane binary")
    ap.add_argument("--out", type=Path, help="where results and plots go (default: bench/results, "
                                             "or $CARGO_TARGET_DIR/bench-quick with --quick)")
    ap.add_argument("--write-md", type=Path, help="BENCHMARKS.md to update (default: only in full mode)")
    ap.add_argument("--no-write-md", action="store_true")
    ap.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None,
                    help="perf profile of the proxies (default: on in full mode when perf works)")
    ap.add_argument("--keep", action="store_true", help="keep the run directory (logs, configs)")
    ap.add_argument("--variant", action="append", default=[], metavar="LABEL=BINARY[,ENV=VAL...]",
                    help="also measure another data-plane build in row 2 (experiments; repeatable)")
    ap.add_argument("--reps", type=int)
    ap.add_argument("--duration", type=float)
    ap.add_argument("--render-only", action="store_true",
                    help="measure nothing: redraw the plots and the section from OUT/results.json")
    args = ap.parse_args()
    if args.render_only:
        return render_only(args)
    mode = MODES["quick" if args.quick else "full"]
    if args.reps:
        mode.reps = args.reps
    if args.duration:
        mode.duration = args.duration
    if args.profile is None:
        args.profile = not args.quick
    rows = set(args.rows.split(","))
    workdir = Path(tempfile.mkdtemp(prefix="cellroute-bench-"))
    quick_dir = Path(os.environ.get("CARGO_TARGET_DIR", tempfile.gettempdir())) / "bench-quick"
    out_dir = args.out or (quick_dir if args.quick else BENCH / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    dp = workdir / "data-plane"
    shutil.copy2(args.data_plane, dp)  # a concurrent rebuild must not swap it mid-run
    env = Env(args, mode, workdir, dp)
    for i, spec in enumerate(args.variant):
        vlabel, rest = spec.split("=", 1)
        vbin, *kvs = rest.split(",")
        vcopy = workdir / f"data-plane-variant{i}"
        shutil.copy2(vbin, vcopy)
        env.variants.append((vlabel, vcopy, dict(kv.split("=", 1) for kv in kvs)))
    env.out_dir = out_dir
    log(f"mode {mode.name}; run dir {workdir}; results to {out_dir}")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    results = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "machine": machine(), "versions": versions(), "mode": mode.__dict__, "plots": {}}
    started = time.monotonic()
    failures = []
    try:
        env.start_upstream()
        for name, fn in (("proxy", row_proxy), ("reload", row_reload), ("edit", row_edit)):
            if name not in rows:
                continue
            try:
                results[name] = fn(env)
            except Exception:  # one broken row must not throw away the others' minutes
                log(f"row {name} failed:\n{traceback.format_exc()}")
                failures.append(name)
                for key, p in list(env.procs.running):
                    if key != "upstream":
                        env.procs.stop(p)
    except BaseException:
        log(f"failed; logs and configs kept in {workdir}")
        raise
    finally:
        env.procs.stop_all()
    results["elapsed_s"] = time.monotonic() - started
    # Keep the configs that ran, with run-specific paths, for readers.
    conf_dir = out_dir / "conf"
    conf_dir.mkdir(exist_ok=True)
    for src, name in [("upstream/nginx.conf", "upstream-nginx.conf"), ("nginx1/nginx.conf", "nginx-1-worker.conf"),
                      ("nginx2/nginx.conf", "nginx-2-workers.conf"), ("haproxy1/haproxy.cfg", "haproxy-1-thread.cfg"),
                      ("haproxy2/haproxy.cfg", "haproxy-2-threads.cfg"), ("dp2/routing.yaml", "routing.yaml")]:
        f = workdir / src
        if f.exists():
            (conf_dir / name).write_text(shorten(f.read_text(), workdir))
    section = plot_and_render(results, out_dir, workdir)
    md = args.write_md or (None if args.quick or args.no_write_md else ROOT / "BENCHMARKS.md")
    if failures:
        log(f"rows failed: {', '.join(failures)}; BENCHMARKS.md not updated; run dir kept: {workdir}")
        return 1
    if md and not args.no_write_md:
        write_benchmarks_md(section, md)
        log(f"wrote {md}")
    log(f"done in {results['elapsed_s']:.0f} s; section in {out_dir / 'section.md'}")
    if args.keep:
        log(f"run dir kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
