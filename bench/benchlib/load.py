"""Load generators and their results (wrk), and the statistics every row uses."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field

from .common import CLK_TCK, LOAD_IDS, LUA, WRK_CONNS, WRK_THREADS, WRK_TIMEOUT, log
from .procs import cpu_ticks

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


def stats3(xs: list[float]) -> dict:
    return {"median": med(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


# --------------------------------------------------------------------------------------------
# oha at a fixed rate (open loop), and h2load (HTTP/2).


@dataclass
class RateResult:
    """One fixed-rate run: what was offered, what was served and the latency distribution."""

    rate: float
    rps: float
    success: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    errors: int


def oha_argv(port: int, duration: float, rate: float, conns: int, customer: str) -> list[str]:
    # --latency-correction measures from when each request was due, not when it went out, so a
    # stall shows in the tail (coordinated omission).
    return ["oha", "--no-tui", "--output-format", "json", "-z", f"{max(1, round(duration))}s",
            "-q", f"{rate:.0f}", "-c", str(conns), "--latency-correction",
            "-H", f"x-customer-id: {customer}",
            f"http://127.0.0.1:{port}/"]


def run_oha(port: int, duration: float, rate: float, conns: int, customer: str) -> RateResult:
    argv = oha_argv(port, duration, rate, conns, customer)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    if out.returncode != 0:
        raise RuntimeError(f"oha failed (exit {out.returncode}): {out.stderr[-2000:]}")
    j = json.loads(out.stdout)
    lat = j["latencyPercentiles"]
    summary = j["summary"]
    # Requests still in flight when the run's time is up are "aborted due to deadline": the
    # end of the run, not a failure.
    errors = sum(v for k, v in j.get("errorDistribution", {}).items() if "deadline" not in k)
    codes = j.get("statusCodeDistribution", {})
    errors += sum(v for k, v in codes.items() if not k.startswith("2"))
    return RateResult(rate=rate, rps=summary["requestsPerSec"], success=summary["successRate"],
                      p50_ms=lat["p50"] * 1e3, p99_ms=lat["p99"] * 1e3,
                      p999_ms=lat["p99.9"] * 1e3, errors=errors)


@dataclass
class H2Result:
    rps: float
    requests: int
    succeeded: int
    failed: int
    mean_ms: float
    max_ms: float
    cpu: dict = field(default_factory=dict)  # role -> (user_us_per_req, sys_us_per_req)


H2_CLIENTS = 16
H2_STREAMS = 10
H2_THREADS = 2


def h2load_argv(url: str, duration: float, headers: dict[str, str], data: str | None = None) -> list[str]:
    argv = ["h2load", "-D", str(max(1, round(duration))), "-c", str(H2_CLIENTS), "-m", str(H2_STREAMS),
            "-t", str(H2_THREADS)]
    for k, v in headers.items():
        argv += ["-H", f"{k}: {v}"]
    if data:
        argv += ["-d", data]
    return argv + [url]


def _unit_ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    v = float(m.group(1))
    return {"us": v / 1e3, "ms": v, "s": v * 1e3}[m.group(2)]


def run_h2load(url: str, duration: float, headers: dict[str, str], data: str | None = None,
               cpu_roles: dict[str, list[int]] | None = None) -> H2Result:
    cpu_roles = cpu_roles or {}
    before = {role: cpu_ticks(pids) for role, pids in cpu_roles.items()}
    out = subprocess.run(h2load_argv(url, duration, headers, data), capture_output=True, text=True,
                         timeout=duration + 60)
    after = {role: cpu_ticks(pids) for role, pids in cpu_roles.items()}
    text = out.stdout
    fin = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", text)
    req = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", text)
    rt = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", text)
    if not (fin and req and rt):
        raise RuntimeError(f"h2load printed no result (exit {out.returncode}):\n{text}\n{out.stderr}")
    succeeded = int(req.group(2))
    r = H2Result(rps=float(fin.group(2)), requests=int(req.group(1)), succeeded=succeeded,
                 failed=int(req.group(3)), mean_ms=_unit_ms(rt.group(3)), max_ms=_unit_ms(rt.group(2)))
    n = max(succeeded, 1)
    for role in cpu_roles:
        du = (after[role][0] - before[role][0]) / CLK_TCK * 1e6 / n
        ds = (after[role][1] - before[role][1]) / CLK_TCK * 1e6 / n
        r.cpu[role] = (du, ds)
    return r
