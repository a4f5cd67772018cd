#!/usr/bin/env python3
"""cellroute's snapshot-push benchmarks: rows 1 and 5 of the benchmark issue.

Run it through `bench/run` (which builds the control plane, the data plane and `swarm`).

  convergence  row 1: from the moment the control plane accepts a new version to the moment the
               last of N data planes ACKs it, for N = 1 ... 1,000 and tables of 10 ... 100k
               customers, against a lower bound computed in the same run:
                   encode time + N x message bytes / loopback throughput + one round trip.
               Both ends of the interval are the control plane's own clock: `accepted_at` in
               /debug/snapshots and `acked_at` (when the ACK arrived) in /debug/dataplanes.
               Lightweight clients (`swarm subscribe`, one process) for every N; real data-plane
               binaries for N = 1 and 10; and `kubectl apply` on the real apiserver for N = 10.
  fanout       row 5: control-plane RSS growth / N with N idle sessions (1k and 10k).
  join         a fresh data-plane process joining a 1M-customer table: from its start to its
               ACK of the whole snapshot (host clock, the same the control plane stamps ACKs
               with), and its RSS once steady against the table's raw size (ids + placement names).

Every loop is bounded in count and time; everything listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import queue
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B  # noqa: E402  (shared helpers: processes, ports, percentiles, machine, plots)

ROOT = B.ROOT
BEGIN = "<!-- bench:push:begin -->"
END = "<!-- bench:push:end -->"
HEADING = "## Convergence and fan-out (snapshot push)"
DP_TOKEN = "bench-data-plane-token"
OBJECT = "default/bench"


@dataclass
class Mode:
    name: str
    reps: int  # changes measured per (clients, N, table) cell
    swarm_ns: list[int]
    real_ns: list[int]
    tables: list[int]
    kube_reps: int
    fanout_ns: list[int]
    loopback_bytes: int
    # Tables pushed only at the largest N, whole and as deltas side by side.
    delta_tables: list[int]
    delta_reps: int
    # The table a fresh data plane joins, and how many times.
    join_customers: int = 1_000_000
    join_reps: int = 5


MODES = {
    "quick": Mode("quick", reps=3, swarm_ns=[10, 100], real_ns=[1], tables=[10, 10_000],
                  kube_reps=2, fanout_ns=[1000], loopback_bytes=256 << 20, delta_tables=[], delta_reps=2,
                  join_customers=10_000, join_reps=2),
    "full": Mode("full", reps=30, swarm_ns=[1, 10, 100, 1000], real_ns=[1, 10],
                 tables=[10, 10_000, 100_000], kube_reps=30, fanout_ns=[1000, 10_000],
                 loopback_bytes=2 << 30, delta_tables=[1_000_000], delta_reps=10),
}

log = B.log


# --------------------------------------------------------------------------------------------
# Tables.


def table_yaml(customers: int) -> str:
    """The customer lines of a table of `customers` ids over two cells."""
    return "".join(f"    customer-{i:08d}: cell-{'ab'[i % 2]}\n" for i in range(customers))


def manifest(body: str, flip: int) -> str:
    """A RoutingConfig whose content differs with `flip` (one customer moves cell)."""
    return (
        "apiVersion: cellroute.dev/v1alpha1\nkind: RoutingConfig\n"
        "metadata:\n  name: bench\n  namespace: default\n"
        "spec:\n  defaultPlacement: cell-a\n  placementToEndpoint:\n"
        "    cell-a: http://127.0.0.1:9/\n    cell-b: http://127.0.0.1:9/\n"
        f"  customerToPlacement:\n    bench-edit: cell-{'ab'[flip % 2]}\n{body}"
    )


# --------------------------------------------------------------------------------------------
# The control plane and its debug endpoints.


def get_json(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        return json.loads(r.read())


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        out = {}
        for ln in r.read().decode().splitlines():
            if ln and not ln.startswith("#"):
                name, _, value = ln.rpartition(" ")
                try:
                    out[name] = float(value)
                except ValueError:
                    pass
        return out


class ControlPlane:
    def __init__(self, env: Env, key: str, config: Path | None, extra_env: dict | None = None,
                 extra_args: list[str] | None = None):
        self.env = env
        self.port = B.free_port()
        tokens = env.workdir / "dp-tokens"
        argv = [str(env.control_plane), "run", "--listen", f"127.0.0.1:{self.port}",
                "--static-token-file", str(tokens), "--log-level", "warn"]
        if config is not None:
            argv += ["--from-file", str(config)]
        argv += extra_args or []
        self.proc = env.procs.start(key, argv, extra_env)
        self.command = " ".join(["control-plane"] + [B.shorten(a, env.workdir) for a in argv[1:]]
                                ).replace(f":{self.port}", ":$CP")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"control plane exited: see {env.workdir / (key + '.log')}")
            try:
                get_json(self.port, "/readyz")
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("control plane not ready in 60 s")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def served(self) -> dict | None:
        for o in get_json(self.port, "/debug/snapshots")["snapshots"]:
            if o["object"] == OBJECT:
                return o["served"]
        return None

    def planes(self) -> list[dict]:
        return get_json(self.port, "/debug/dataplanes")["dataplanes"]

    def rss_kib(self) -> int:
        return rss_kib(self.proc.pid)


def rss_kib(pid: int) -> int:
    for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
        if ln.startswith("VmRSS:"):
            return int(ln.split()[1])
    raise RuntimeError("no VmRSS")


def same_ref(a: dict | None, b: dict) -> bool:
    return bool(a) and a["lineage"] == b["lineage"] and a["version"] == b["version"] and a["hash"] == b["hash"]


# --------------------------------------------------------------------------------------------
# Clients: a swarm of lightweight sessions, or real data planes.


class Swarm:
    def __init__(self, env: Env, cp: ControlPlane, n: int, key: str, gzip: bool = True, delta: bool = False,
                 max_message_bytes: int | None = None):
        self.n = n
        self.gzip = gzip
        self.delta = delta
        self.lines: queue.Queue = queue.Queue()
        argv = [str(env.swarm), "subscribe", "--url", cp.url + "/v1/subscribe", "--routing-config",
                OBJECT, "--clients", str(n), "--token-file", str(env.workdir / "dp-tokens"),
                "--id-prefix", f"{key}-", "--connect-concurrency", "256"] + ([] if gzip else ["--no-gzip"]) + (["--delta"] if delta else []) \
            + (["--max-message-bytes", str(max_message_bytes)] if max_message_bytes else [])
        self.command = " ".join(["swarm"] + [B.shorten(a, env.workdir) for a in argv[1:]]).replace(
            f":{cp.port}", ":$CP")
        self.prefix = f"{key}-"
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=open(env.workdir / f"{key}.log", "ab"),
                                     stdin=subprocess.DEVNULL, start_new_session=True, text=True)
        env.procs.running.append((key, self.proc))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for ln in self.proc.stdout:
            self.lines.put(json.loads(ln))
        self.lines.put({"event": "exit"})

    def wait_synced(self, ref: dict, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"swarm of {self.n}: not synced to {ref['version']} in {timeout} s")
            try:
                ev = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            # Clients without `delta` see the hash in the JSON scheme; the version is the same.
            if ev["event"] == "synced" and ev["snapshot"]["lineage"] == ref["lineage"] \
                    and ev["snapshot"]["version"] == ref["version"]:
                return
            if ev["event"] in ("lost", "exit"):
                raise RuntimeError(f"swarm of {self.n}: {ev}")


class RealDataPlanes:
    def __init__(self, env: Env, cp: ControlPlane, n: int, key: str, extra_args: list[str] | None = None):
        self.n = n
        self.gzip = True  # data planes offer gzip
        self.delta = True  # and delta
        self.prefix = f"{key}-"
        admin_token = env.workdir / "admin-token"
        admin_token.write_text("bench-admin\n")
        self.procs = []
        self.command = ""
        for i in range(n):
            for attempt in range(3):
                # A port picked free can be taken before the data plane binds it: retry then.
                port, admin = unique_ports(2)
                argv = [str(env.data_plane), "run", "--id", f"{key}-{i}", "--listen", f"127.0.0.1:{port}",
                        "--admin-listen", f"127.0.0.1:{admin}", "--control-plane", cp.url,
                        "--routing-config", OBJECT, "--token-file", str(env.workdir / "dp-tokens"),
                        "--cache-dir", str(env.workdir / f"{key}-cache-{i}"), "--admin-token-file",
                        str(admin_token), "--log-level", "warn"] + (extra_args or [])
                proc = env.procs.start(f"{key}-{i}", argv)
                try:
                    B.wait_port(admin)
                    break
                except RuntimeError:
                    env.procs.stop(proc)
                    if attempt == 2:
                        raise
            self.procs.append(proc)
            if i == 0:
                self.command = " ".join(["data-plane"] + [B.shorten(a, env.workdir) for a in argv[1:]]).replace(
                    f":{cp.port}", ":$CP").replace(f":{port}", ":$PORT").replace(f":{admin}", ":$ADMIN")

    def stop(self, env: Env) -> None:
        for p in self.procs:
            env.procs.stop(p)


def unique_ports(n: int) -> list[int]:
    """`n` distinct free ports (held open together while they are picked)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_acks(cp: ControlPlane, prefix: str, n: int, ref: dict, timeout: float) -> list[float]:
    """ACK arrival times (control-plane clock) of the n clients named `prefix*` for `ref`."""
    deadline = time.monotonic() + timeout
    while True:
        planes = [p for p in cp.planes() if p["id"].startswith(prefix) and p["record"]["connected"]]
        acked = [p["record"]["acked_at"] for p in planes
                 if same_ref(p["record"]["acked"], ref) and p["record"].get("acked_at")]
        if len(acked) == n:
            return acked
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(acked)} of {n} data planes ACKed version {ref['version']} in {timeout} s")
        time.sleep(0.01)


# --------------------------------------------------------------------------------------------
# Row 1: convergence.


class Env:
    def __init__(self, args, mode: Mode, workdir: Path):
        self.args = args
        self.mode = mode
        self.workdir = workdir
        self.procs = B.Procs(workdir)
        self.control_plane = workdir / "control-plane"
        self.data_plane = workdir / "data-plane"
        self.swarm = workdir / "swarm"
        self.out_dir = workdir
        (workdir / "dp-tokens").write_text(DP_TOKEN + "\n")


def loopback(env: Env) -> dict:
    out = subprocess.run([str(env.swarm), "loopback", "--bytes", str(env.mode.loopback_bytes)],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    r = json.loads(out)
    log(f"loopback: {r['throughput']['1'] / 1e9:.2f} GB/s (1 stream), {r['throughput']['2'] / 1e9:.2f} GB/s "
        f"(2 streams), RTT p50 {r['rtt_seconds']['p50'] * 1e6:.1f} µs")
    return r


def measure_changes(cp: ControlPlane, clients, trigger, reps: int, limits: dict, timeout: float) -> list[dict]:
    """`reps` changes: trigger(i) makes version i; each is timed on the control plane's clock."""
    out = []
    served = cp.served()
    client_pids = [p.pid for p in clients.procs] if isinstance(clients, RealDataPlanes) else [clients.proc.pid]
    cpu0 = B.cpu_ticks([cp.proc.pid]), B.cpu_ticks(client_pids)
    for i in range(reps):
        m0 = metrics(cp.port)
        t_issue = time.time()
        trigger(i)
        deadline = time.monotonic() + timeout
        while True:
            now = cp.served()
            if now and served and now["version"] > served["version"] or (now and not served):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"change {i} not accepted in {timeout} s")
            time.sleep(0.002)
        served = now
        if isinstance(clients, Swarm):
            clients.wait_synced(served, timeout)
        acks = wait_acks(cp, clients.prefix, clients.n, served, timeout)
        m1 = metrics(cp.port)
        def grew(name: str) -> float:
            return m1.get(name, 0) - m0.get(name, 0)
        # Every client got this version as a delta, or (some) got the whole table.
        as_delta = grew("cellroute_delta_pushes_total") >= clients.n
        if as_delta:
            enc_n = grew("cellroute_delta_encode_seconds_count")
            enc = grew("cellroute_delta_encode_seconds_sum")
            size = int(m1["cellroute_delta_bytes"])
            sent = size  # deltas travel as text
        else:
            enc_n = grew("cellroute_snapshot_encode_seconds_count") + grew("cellroute_delta_encode_seconds_count")
            enc = grew("cellroute_snapshot_encode_seconds_sum") + grew("cellroute_delta_encode_seconds_sum")
            size = int(m1["cellroute_snapshot_bytes"])
            sent = int(m1["cellroute_snapshot_compressed_bytes"]) if clients.gzip else size
        wire = sent + (2 if sent < 126 else 4 if sent < 65536 else 10)  # + WebSocket frame header
        n = clients.n
        bound = enc + n * wire / limits["best_bytes_per_s"] + limits["rtt_seconds"]["p50"]
        acks.sort()
        out.append({
            "version": served["version"], "issued_to_accepted_ms": (served["accepted_at"] - t_issue) * 1e3,
            "converged_ms": (acks[-1] - served["accepted_at"]) * 1e3,
            "median_ack_ms": (acks[len(acks) // 2] - served["accepted_at"]) * 1e3,
            "issued_to_converged_ms": (acks[-1] - t_issue) * 1e3,
            "encode_ms": enc * 1e3, "encodes": enc_n, "message_bytes": size, "wire_bytes": wire, "delta": as_delta,
            "bound_ms": bound * 1e3,
        })
        time.sleep(0.05)  # let the last ACK's bookkeeping settle before the next change
    cpu1 = B.cpu_ticks([cp.proc.pid]), B.cpu_ticks(client_pids)
    # CPU per change, averaged over the run (ticks are 10 ms; heartbeats are included).
    for s in out:
        s["cp_cpu_ms"] = (sum(cpu1[0]) - sum(cpu0[0])) * 1e3 / B.CLK_TCK / reps
        s["clients_cpu_ms"] = (sum(cpu1[1]) - sum(cpu0[1])) * 1e3 / B.CLK_TCK / reps
    return out


def summarize(label: str, clients: str, n: int, customers: int, samples: list[dict], commands: list[str],
              gzip: bool = True) -> dict:
    conv = [s["converged_ms"] for s in samples]
    bound = B.med([s["bound_ms"] for s in samples])
    p50, p99, mx = B.pct(conv, 50), B.pct(conv, 99), max(conv)
    r = {"label": label, "clients": clients, "n": n, "customers": customers, "reps": len(samples), "gzip": gzip,
         "delta": all(s["delta"] for s in samples),
         "wire_bytes": samples[-1]["wire_bytes"],
         "p50_ms": p50, "p99_ms": p99, "max_ms": mx,
         "median_ack_p50_ms": B.pct([s["median_ack_ms"] for s in samples], 50),
         "issued_p50_ms": B.pct([s["issued_to_converged_ms"] for s in samples], 50),
         "issued_p99_ms": B.pct([s["issued_to_converged_ms"] for s in samples], 99),
         "message_bytes": samples[-1]["message_bytes"], "wire_bytes_total": samples[-1]["wire_bytes"] * n,
         "encode_ms": B.med([s["encode_ms"] for s in samples]), "bound_ms": bound,
         "cp_cpu_ms": samples[0]["cp_cpu_ms"], "clients_cpu_ms": samples[0]["clients_cpu_ms"],
         "ratio_p50": p50 / bound, "ratio_p99": p99 / bound, "samples": samples, "commands": commands}
    log(f"row 1 {clients} N={n} customers={customers}: p50 {p50:.2f} ms p99 {p99:.2f} ms max {mx:.2f} ms; "
        f"bound {bound:.2f} ms; p99/bound {p99 / bound:.2f}; CPU per change: control plane "
        f"{r['cp_cpu_ms']:.1f} ms, clients {r['clients_cpu_ms']:.1f} ms")
    return r


def row_convergence(env: Env) -> dict:
    log("row 1: convergence")
    limits = loopback(env)
    cells = []
    profile = None
    for customers in env.mode.tables:
        cfg, edit = table_file(env, customers)

        # Real data planes apply the whole table before they ACK: that is what they are for.
        for n in env.mode.real_ns:
            cp = ControlPlane(env, f"cp-real-{customers}-{n}", cfg, extra_args=["--reload-debounce", "10ms"])
            dps = RealDataPlanes(env, cp, n, f"dp{customers}x{n}")
            first = cp.served()
            wait_acks(cp, dps.prefix, n, first, 120)
            samples = measure_changes(cp, dps, edit, env.mode.reps, limits, 120)
            delta = ", delta" if all(x["delta"] for x in samples) else ""
            cells.append(summarize(f"{n} data-plane process{'es' if n > 1 else ''}{delta}", "data-plane", n,
                                   customers, samples, [cp.command, dps.command]))
            dps.stop(env)
            env.procs.stop(cp.proc)
        # Lightweight clients offer gzip as data planes do, and whole tables; the largest N also
        # runs without gzip, and with delta (as data planes do), side by side.
        top = max(env.mode.swarm_ns)
        runs = [(n, True, False) for n in env.mode.swarm_ns] + [(top, False, False), (top, True, True)]
        cells += swarm_cells(env, limits, cfg, customers, edit, runs, env.mode.reps)
        if env.args.profile and customers == 10_000:
            profile = profile_swarm(env, limits, cfg, customers, edit, top)
    for customers in env.mode.delta_tables:
        cfg, edit = table_file(env, customers)

        top = max(env.mode.swarm_ns)
        cells += swarm_cells(env, limits, cfg, customers, edit, [(top, True, False), (top, True, True)],
                             env.mode.delta_reps)
    kube = None
    if env.args.kube:
        try:
            kube = convergence_kube(env, limits)
        except Exception:
            log(f"row 1 kubectl apply path failed:\n{traceback.format_exc()}")
            raise
    return {"limits": limits, "cells": cells, "kube": kube, "profile": profile}


def table_file(env: Env, customers: int):
    """A routing file of `customers`, and the edit that moves one customer in it (by rename)."""
    body = table_yaml(customers)
    cfg = env.workdir / f"routing-{customers}.yaml"
    cfg.write_text(manifest(body, 0))
    flips = iter(range(1, 1 << 30))

    def edit(_i: int) -> None:
        B.write_atomic(cfg, manifest(body, next(flips)))

    return cfg, edit


def swarm_cell_args(customers: int) -> tuple[list[str], int | None]:
    """The control plane's extra flags for a swarm cell of `customers`, and the message limit
    both ends are given (None: the defaults)."""
    # A table of a million customers is about 30 MB of JSON: over the 16 MiB default bound on
    # a message, so both ends are given room for it.
    limit = 64 << 20 if customers > 400_000 else None
    # and 1,000 clients joining a large table at once (one swarm process) take longer than the
    # default 5 s to drain their sends, and than 4 s to answer a ping while they read (at 100k
    # customers without gzip too: 3 GB of JSON text).
    slow_join = ["--send-timeout", "300s", "--heartbeat-timeout", "300s"] if customers >= 100_000 else []
    extra = ["--reload-debounce", "10ms"] + slow_join + (
        ["--max-message-bytes", str(limit), "--max-config-bytes", str(limit)] if limit else [])
    return extra, limit


def swarm_cells(env: Env, limits: dict, cfg: Path, customers: int, edit, runs, reps: int) -> list[dict]:
    """One cell per (N, gzip, delta) of `runs`: a control plane on `cfg`, a swarm, `reps` edits."""
    cells = []
    extra, limit = swarm_cell_args(customers)
    for n, gzip, delta in runs:
        tag = f"{'' if gzip else 'text'}{'delta' if delta else ''}"
        cp = ControlPlane(env, f"cp-swarm-{customers}-{n}-{tag}", cfg, extra_args=extra)
        sw = Swarm(env, cp, n, f"sw{customers}x{n}{tag}", gzip, delta, limit)
        sw.wait_synced(cp.served(), 600)
        samples = measure_changes(cp, sw, edit, reps, limits, 600)
        label = f"{n:,} lightweight client{'s' if n > 1 else ''}" + ("" if gzip else ", JSON text (no gzip)") \
            + (", delta" if delta else "")
        kind = "swarm-delta" if delta else "swarm" if gzip else "swarm-text"
        cells.append(summarize(label, kind, n, customers, samples, [cp.command, sw.command], gzip))
        env.procs.stop(sw.proc)
        env.procs.stop(cp.proc)
    return cells


def profile_swarm(env: Env, limits: dict, cfg: Path, customers: int, edit, n: int) -> dict | None:
    """The control plane's profile while it pushes whole tables to `n` lightweight clients."""
    cp = ControlPlane(env, f"cp-swarm-{customers}-{n}-profile", cfg, extra_args=["--reload-debounce", "10ms"])
    sw = Swarm(env, cp, n, f"sw{customers}x{n}profile", True, False)
    try:
        sw.wait_synced(cp.served(), 600)
        return profile_control_plane(env, cp, sw, edit, limits)
    finally:
        env.procs.stop(sw.proc)
        env.procs.stop(cp.proc)


# Buckets for the control plane's profile during fan-out, first match wins.
CP_BUCKETS = [
    ("kernel: TCP over loopback, syscalls, scheduling", r"^\[k\]"),
    ("reading the file: YAML, validation, hashing (before acceptance, outside the interval)",
     r"granit|saphyr|routing_model::validate|routing_model::parse|sha2|Sha256|config_watch"),
    ("encoding once per version: JSON + gzip", r"miniz|deflate|flate2|publisher"),
    ("allocator (glibc malloc/free)", r"malloc|_int_free|cfree|unlink_chunk|realloc|__libc_free|tcache"),
    ("memcpy/memmove/memset", r"memmove|memcpy|memset"),
    ("WebSocket framing (tungstenite, axum ws, hyper upgrade)", r"tungstenite|axum::extract::ws|hyper|Rewind"),
    ("JSON (ACK parsing, debug endpoints)", r"serde_json|serde_core|serde::|zmij|itoa|ryu"),
    ("tokio scheduler, timers, wakers, locks", r"tokio::|futures_util|futures::|waker|parking_lot|std::sync"),
    ("control plane's own code (sessions, registry, metrics)", r"control_plane|prometheus|routing_model"),
    ("syscall wrappers (libc)", r"writev|recv|send|epoll|syscall|pthread|__GI_"),
]


def profile_control_plane(env: Env, cp: ControlPlane, clients, trigger, limits: dict) -> dict | None:
    """A perf profile (user + kernel) of the control plane while it pushes changes to the swarm."""
    if not B.perf_works():
        log("row 1: perf is not usable here; no profile")
        return None
    import re
    data = env.workdir / "perf-cp.data"
    rec = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "1999", "-p", str(cp.proc.pid),
                            "-o", str(data)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        measure_changes(cp, clients, trigger, 20, limits, 120)
    finally:
        rec.send_signal(2)  # SIGINT: perf writes its data and exits
        rec.wait(timeout=60)
    rep = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", "symbol",
                          "-g", "none", "--percent-limit", "0.01"], capture_output=True, text=True,
                         timeout=300).stdout
    syms, buckets = bucketize(rep)
    command = (f"perf record -e cpu-clock -F 1999 -p <control plane> during 20 changes to {clients.n:,} "
               "lightweight clients (10k customers, gzip); perf report --no-children --sort symbol")
    (env.out_dir / "profile-convergence-cp.txt").write_text(
        f"# {command}\n" + "\n".join(ln.rstrip(" -") for ln in rep.splitlines()) + "\n")
    log("row 1: profile: " + "; ".join(f"{b} {v:.0f}%" for b, v in buckets[:5]))
    return {"command": command, "top": syms[:20], "buckets": buckets}


def bucketize(report: str) -> tuple[list[tuple[float, str]], list[tuple[str, float]]]:
    """(symbols with their share, buckets by share) from `perf report --sort symbol` text."""
    import re
    syms = []
    for ln in report.splitlines():
        mm = re.match(r"\s*([\d.]+)%\s+(\[[.k]\]\s+.*?)[\s-]*$", ln)
        if mm:
            syms.append((float(mm.group(1)), mm.group(2)))
    buckets: dict[str, float] = {}
    for share, sym in syms:
        name = next((b for b, rx in CP_BUCKETS if re.search(rx, sym)), "other")
        buckets[name] = buckets.get(name, 0.0) + share
    return syms, sorted(buckets.items(), key=lambda kv: -kv[1])


def convergence_kube(env: Env, limits: dict) -> dict | None:
    script = ROOT / "tests" / "k8s" / "apiserver.sh"
    k8s = env.workdir / "k8s"
    r = subprocess.run([str(script), "start", str(k8s)], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        log(f"row 1: no apiserver (`tests/k8s/apiserver.sh start` failed; run `tests/k8s/apiserver.sh install`):"
            f"\n{r.stderr[-2000:]}")
        return None
    try:
        exports = subprocess.run(["bash", "-c", f'. {k8s}/env && printf "%s\\n%s\\n%s" "$KUBECONFIG" '
                                              f'"$CELLROUTE_KUBECTL" "$CELLROUTE_K8S_VERSION"'],
                                 capture_output=True, text=True, check=True).stdout.split("\n")
        kubeconfig, kubectl, k8s_version = exports[0], exports[1], exports[2]
        kenv = {"KUBECONFIG": kubeconfig}

        def kc(*argv: str, stdin: str | None = None) -> None:
            r = subprocess.run([kubectl, *argv], input=stdin, capture_output=True, text=True,
                               env={**os.environ, **kenv}, timeout=60)
            if r.returncode != 0:
                raise RuntimeError(f"kubectl {' '.join(argv)}: {r.stderr.strip()}")

        # A plain create: a 1.20 apiserver does not know the CRD's CEL rules (see tests/src/k8s.rs).
        # Both kinds: the control plane lists RoutingShards too before it is ready.
        for kind in ("routingconfig", "routingshard"):
            kc("create", "--validate=false", "-f", str(ROOT / "crds" / f"{kind}.yaml"))
            kc("wait", "--for", "condition=established", "--timeout", "60s", f"crd/{kind}s.cellroute.dev")
        customers = 10
        body = table_yaml(customers)
        kc("apply", "-f", "-", stdin=manifest(body, 0))
        cp = ControlPlane(env, "cp-kube", None, extra_env=kenv,
                          extra_args=["--identity", "bench-cp", "--lease-namespace", "default"])
        n = 10
        dps = RealDataPlanes(env, cp, n, "dpkube")
        deadline = time.monotonic() + 60
        while cp.served() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        wait_acks(cp, dps.prefix, n, cp.served(), 120)
        docs = [manifest(body, i + 1) for i in range(env.mode.kube_reps)]

        kubectl_ms: list[float] = []

        def apply(i: int) -> None:
            t = time.monotonic()
            kc("apply", "-f", "-", stdin=docs[i])
            kubectl_ms.append((time.monotonic() - t) * 1e3)

        samples = measure_changes(cp, dps, apply, env.mode.kube_reps, limits, 60)
        res = summarize(f"{n} data-plane processes, `kubectl apply`", "kube", n, customers, samples,
                        [f"kubectl apply -f routing.yaml   # apiserver {k8s_version}", cp.command, dps.command])
        res["issued_to_accepted_p50_ms"] = B.pct([s["issued_to_accepted_ms"] for s in samples], 50)
        res["kubectl_ms"] = kubectl_ms
        res["k8s_version"] = k8s_version
        dps.stop(env)
        env.procs.stop(cp.proc)
        return res
    finally:
        subprocess.run([str(script), "stop", str(k8s)], capture_output=True, timeout=120)


# --------------------------------------------------------------------------------------------
# Row 5: fan-out memory.


def settle_rss(cp, timeout: float = 15) -> int:
    """RSS of `cp` (anything with `rss_kib()`) once two samples 0.5 s apart agree within 0.5%
    (bounded by `timeout`)."""
    prev = cp.rss_kib()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        cur = cp.rss_kib()
        if abs(cur - prev) <= prev * 0.005:
            return cur
        prev = cur
    return prev


def row_fanout(env: Env) -> dict:
    log("row 5: fan-out memory")
    cfg = env.workdir / "routing-fanout.yaml"
    cfg.write_text(manifest(table_yaml(10), 0))
    rows = []
    for n in env.mode.fanout_ns:
        cp = ControlPlane(env, f"cp-fanout-{n}", cfg, extra_args=["--max-connections", str(n + 100)])
        before = settle_rss(cp)
        sw = Swarm(env, cp, n, f"idle{n}")
        sw.wait_synced(cp.served(), 300)
        # Two heartbeats at least, so every session has sent pings and read pongs.
        time.sleep(2.5)
        after = settle_rss(cp)
        connected = metrics(cp.port).get("cellroute_connected_data_planes", float("nan"))
        per = (after - before) * 1024 / n
        log(f"row 5 N={n}: RSS {before} KiB -> {after} KiB: {per / 1024:.1f} KiB per connection "
            f"({connected:.0f} connected)")
        rows.append({"n": n, "rss_before_kib": before, "rss_after_kib": after, "bytes_per_conn": per,
                     "connected": connected, "commands": [cp.command, sw.command]})
        env.procs.stop(sw.proc)
        env.procs.stop(cp.proc)
    return {"rows": rows}


class Pid:
    def __init__(self, pid: int):
        self.pid = pid

    def rss_kib(self) -> int:
        return rss_kib(self.pid)


def row_join(env: Env) -> dict:
    customers = env.mode.join_customers
    log(f"join: a fresh data plane joining a {customers:,}-customer table")
    cfg, _ = table_file(env, customers)
    # What the table is, in bytes, before any structure: every id and its placement's name.
    raw = sum(len(f"customer-{i:08d}") + len(f"cell-{'ab'[i % 2]}") for i in range(customers))
    limit = 64 << 20
    room = ["--max-message-bytes", str(limit)]
    cp = ControlPlane(env, "cp-join", cfg, extra_args=room + ["--max-config-bytes", str(limit)])
    served = cp.served()
    samples = []
    command = ""
    for rep in range(env.mode.join_reps):
        started = time.time()
        dps = RealDataPlanes(env, cp, 1, f"join{rep}", room)
        acked = wait_acks(cp, dps.prefix, 1, served, 120)
        join_s = acked[0] - started
        rss = settle_rss(Pid(dps.procs[0].pid))
        log(f"join {rep}: ACK {join_s * 1000:.0f} ms after start; RSS {rss / 1024:.1f} MiB "
            f"({rss * 1024 / raw:.1f}x the raw {raw / 1e6:.1f} MB)")
        samples.append({"join_s": join_s, "rss_kib": rss})
        command = dps.command
        dps.stop(env)
    env.procs.stop(cp.proc)
    return {"customers": customers, "raw_bytes": raw, "samples": samples, "commands": [cp.command, command]}


# --------------------------------------------------------------------------------------------
# Report.


def f_ms(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 1000 else f"{x:,.0f}"


def f_bytes(b: float) -> str:
    if b >= 1e6:
        return f"{b / 1e6:.1f} MB"
    if b >= 1e3:
        return f"{b / 1e3:.1f} kB"
    return f"{b:.0f} B"


def plot_convergence(res: dict, out_dir: Path, workdir: Path) -> str | None:
    plots = []
    colors = {10: "#4878a8", 10_000: "#c8643c", 100_000: "#5a9e5a"}
    for customers in sorted({c["customers"] for c in res["cells"]}):
        cs = sorted((c for c in res["cells"] if c["clients"] == "swarm" and c["customers"] == customers),
                    key=lambda c: c["n"])
        if not cs:
            continue
        d = workdir / f"conv-{customers}.dat"
        d.write_text("".join(f"{c['n']} {c['p50_ms']:.4f} {c['p99_ms']:.4f} {c['bound_ms']:.4f}\n" for c in cs))
        col = colors.get(customers, "#777777")
        plots.append(f"'{d}' using 1:3 with linespoints lw 2 pt 7 lc rgb '{col}' title '{customers:,} customers: p99'")
        plots.append(f"'{d}' using 1:4 with lines dt 2 lw 1.5 lc rgb '{col}' title '… lower bound'")
    if not plots:
        return None
    svg = out_dir / "convergence.svg"
    ok_ = B.gnuplot(f"""
set terminal svg size 760,420 dynamic font 'sans,11' background '#ffffff'
set output '{svg}'
set title 'Accept → last ACK, lightweight clients (p99), against the lower bound'
set xlabel 'data planes (N)'
set ylabel 'milliseconds'
set logscale xy
set grid
set key top left font ',9'
set arrow from 1000,50 to 1000,50 nohead
set label 'goal: N=1,000 @ 10k, p99 ≤ 50 ms' at 1000,50 right offset -1,0 tc rgb '#c00000' font ',9'
plot {', '.join(plots)}, '+' using (1000):(50) with points pt 2 ps 1.5 lc rgb '#c00000' notitle
""", workdir)
    return svg.name if ok_ else None


def render(results: dict, out_dir: Path) -> str:
    mch, mode = results["machine"], results["mode"]
    img = B.rel(out_dir)
    L = []
    A = L.append
    A(BEGIN)
    A("<!-- Generated by bench/run (bench/push.py); edits between these markers are overwritten. -->")
    A("")
    A(B.machine_line(results) + ".")
    A("")
    A("```sh")
    A("bench/run --rows convergence,fanout   # builds control plane, data plane and swarm (release); "
      "rewrites this section")
    A("```")
    A("")
    conv = results.get("convergence")
    if conv:
        lim = conv["limits"]
        A("### Convergence: accept → last ACK (row 1)")
        A("")
        A("The interval runs from the control plane accepting a version (`accepted_at` in `/debug/snapshots`) to the "
          "arrival of the last of N ACKs (`acked_at` in `/debug/dataplanes`), both on the control plane's clock. "
          "Each cell is "
          f"{mode['reps']} changes (one customer moves cell; the file is replaced by rename, with "
          "`--reload-debounce 10ms`), each pushed to every data plane: as the whole table, or, in the rows "
          "marked delta (data-plane processes offer `delta`, as data planes do), as the changes from the version "
          "before (a few hundred bytes, text; the encode column is then the delta's computation). "
          "**Lightweight clients** are `swarm subscribe` sessions in one process: each reads every snapshot "
          "message, takes its identity from the head of the text and ACKs it, and answers pings; it does not "
          "build a table. **Data-plane processes** are the real binary in managed mode: decode, validate, build, "
          "swap, persist the cache, then ACK. Both offer the `gzip` capability, as data planes do, so each "
          "snapshot travels as one compressed binary frame (compressed once per version; the encode column "
          "includes it); the largest N also runs with JSON text for comparison. Everything shares the same "
          "cores, so the clients' work competes with the control plane's.")
        A("")
        A(f"Lower bound, computed in this run: encode time (the control plane's own "
          f"`cellroute_snapshot_encode_seconds` for that version) + N × message bytes ÷ loopback throughput "
          f"({lim['best_bytes_per_s'] / 1e9:.2f} GB/s, the better of 1 and 2 TCP streams: "
          f"{lim['throughput']['1'] / 1e9:.2f} and {lim['throughput']['2'] / 1e9:.2f} GB/s) + one round trip "
          f"({lim['rtt_seconds']['p50'] * 1e6:.1f} µs, 1-byte TCP ping-pong). From `swarm loopback`, plain blocking "
          "sockets.")
        A("")
        A("| customers | clients | JSON message | sent to each (gzip) | sent to all N | encode | lower bound | p50 "
          "| p99 | max | p99 ÷ bound | CPU per change: control plane / clients |")
        A("|---|---|---|---|---|---|---|---|---|---|---|---|")
        order = {"data-plane": 0, "swarm": 1, "swarm-text": 2, "swarm-delta": 3}
        cells = sorted(conv["cells"], key=lambda c: (c["customers"], order[c["clients"]], c["n"]))
        for c in cells:
            each = f_bytes(c["wire_bytes"]) + (" (delta, text)" if c.get("delta") else
                                               "" if c.get("gzip", True) else " (text)")
            A(f"| {c['customers']:,} | {c['label']} | {f_bytes(c['message_bytes'])} | {each} | "
              f"{f_bytes(c['wire_bytes_total'])} | {f_ms(c['encode_ms'])} ms | {f_ms(c['bound_ms'])} ms | "
              f"{f_ms(c['p50_ms'])} ms | {f_ms(c['p99_ms'])} ms | {f_ms(c['max_ms'])} ms | **{c['ratio_p99']:.2f}** | "
              f"{c['cp_cpu_ms']:.0f} / {c['clients_cpu_ms']:.0f} ms |")
        A("")
        if mode["reps"] < 100:
            A(f"With {mode['reps']} changes per cell, p99 is the largest or second-largest sample. CPU per change "
              "is user + system time over the cell's run divided by its changes (10 ms ticks, so small values "
              "are coarse); the control plane's includes reading and validating the file (the same for every "
              "N, see N = 1) and the heartbeats of every session.")
            A("")
        goal = next((c for c in conv["cells"] if c["clients"] == "swarm" and c["n"] == 1000
                     and c["customers"] == 10_000), None)
        if goal:
            met50, met3 = goal["p99_ms"] <= 50, goal["ratio_p99"] <= 3
            A(f"- **Goal (N = 1,000, 10k customers: p99 ≤ 50 ms and ≤ 3× the bound): "
              f"{'met' if met50 and met3 else 'missed'}.** p99 {f_ms(goal['p99_ms'])} ms "
              f"{B.ok(met50)}, {goal['ratio_p99']:.2f}× the bound of {f_ms(goal['bound_ms'])} ms {B.ok(met3)}. "
              f"With gzip the bytes are {goal['wire_bytes_total'] / lim['best_bytes_per_s'] * 1e3:.1f} ms of "
              "loopback copying; what the bound leaves out is CPU per message.")
            one = next((c for c in cells if c["clients"] == "swarm" and c["n"] == 1
                        and c["customers"] == goal["customers"]), None)
            if one:
                fan = goal["cp_cpu_ms"] - one["cp_cpu_ms"]
                per = fan / (goal["n"] - 1) * 1e3
                A(f"- Each change cost the control plane about {fan:.0f} ms of fan-out CPU (its CPU at N = "
                  f"{goal['n']:,} minus at N = 1, which is mostly reading the file before acceptance): "
                  f"{per:.0f} µs per data plane per version, to send, receive the ACK, record it and keep the "
                  f"heartbeat. The clients used {goal['clients_cpu_ms']:.0f} ms on the same {mch['cores']} cores. "
                  f"Together that is about as much CPU as the interval holds ({mch['cores']} × "
                  f"{f_ms(goal['p50_ms'])} ms at p50), so per-session work, not encoding (done once) or bytes, is "
                  "what stands between this run and the goal. On a real fleet the clients' half runs elsewhere; "
                  "the control plane's half is the next thing to cut (allocation per message, the per-send timer, "
                  "the registry's lock and map lookup per ACK).")
        text = next((c for c in cells if c["clients"] == "swarm-text" and goal and c["n"] == goal["n"]
                     and c["customers"] == goal["customers"]), None)
        if goal and text:
            A(f"- Without gzip the same {goal['n']:,} clients take p50 {f_ms(text['p50_ms'])} ms / p99 "
              f"{f_ms(text['p99_ms'])} ms for {f_bytes(text['wire_bytes_total'])} on the wire "
              f"({text['ratio_p99']:.2f}× its own bound of {f_ms(text['bound_ms'])} ms): with text, bytes are "
              f"the floor and the push runs near it; gzip lowers the floor {text['bound_ms'] / goal['bound_ms']:.1f}× "
              f"and the measured p99 {text['p99_ms'] / goal['p99_ms']:.1f}×.")
        for dc in (c for c in cells if c["clients"] == "swarm-delta"):
            whole = next((c for c in cells if c["clients"] == "swarm" and c["n"] == dc["n"]
                          and c["customers"] == dc["customers"]), None)
            met50, met3, met_kib = dc["p99_ms"] <= 50, dc["ratio_p99"] <= 3, dc["wire_bytes"] <= 1024
            goals = f"p99 {f_ms(dc['p99_ms'])} ms {B.ok(met50)}, {dc['ratio_p99']:.2f}× the bound {B.ok(met3)}, " \
                f"{f_bytes(dc['wire_bytes'])} to each data plane {B.ok(met_kib)}"
            line = (f"- **Delta, N = {dc['n']:,}, {dc['customers']:,} customers, one customer moves (goal: p99 ≤ 50 ms, "
                    f"≤ 3× the bound, ≤ 1 KiB per data plane): {'met' if met50 and met3 and met_kib else 'missed'}.** "
                    + goals + ".")
            if whole:
                line += (f" The whole table to the same clients in the same run: {f_bytes(whole['wire_bytes'])} "
                         f"each (gzip), p99 {f_ms(whole['p99_ms'])} ms. Control-plane CPU per change: "
                         f"{dc['cp_cpu_ms']:.0f} ms with deltas against {whole['cp_cpu_ms']:.0f} ms with whole "
                         "tables (both include reading, validating and hashing the file before acceptance, the "
                         "same for both).")
            A(line)
        small_n = max((c["n"] for c in cells if c["clients"] == "swarm"), default=0)
        small = next((c for c in cells if c["clients"] == "swarm" and c["n"] == small_n
                      and c["customers"] == min(x["customers"] for x in cells)), None)
        if small and small_n > 1:
            A(f"- With {small['customers']:,} customers the bytes are negligible (bound {f_ms(small['bound_ms'])} ms) and "
              f"what is left is per-session work on both ends of every socket: p50 "
              f"{small['p50_ms'] * 1e3 / small_n:.0f} µs per data plane at N = {small_n:,} (a send, a receive, an "
              "ACK and their wakeups, on the cores the clients also use). The ratio to the bound is large there, "
              "but it is a ratio of microseconds; the bound counts bytes, not messages.")
        prof = conv.get("profile")
        report = out_dir / "profile-convergence-cp.txt"
        if prof and report.exists():  # re-bucketed on every render, so the buckets can be refined
            prof["top"], prof["buckets"] = bucketize(report.read_text())
        if prof:
            A(f"- Where the control plane's time goes while it pushes to {goal['n'] if goal else 'N':,} data planes "
              f"(`perf`, user + kernel, self time, buckets by symbol name and approximate; full report in "
              f"[`{img}/profile-convergence-cp.txt`]({img}/profile-convergence-cp.txt)): "
              + "; ".join(f"{b} {v:.0f}%" if v >= 1 else f"{b} {v:.1f}%" for b, v in prof["buckets"]) + ".")
        for c in cells:
            if c["clients"] == "data-plane" and c["customers"] == max(x["customers"] for x in cells):
                sw = next((x for x in cells if x["clients"] == "swarm" and x["n"] == c["n"]
                           and x["customers"] == c["customers"]), None)
                if sw:
                    A(f"- {c['label']} at {c['customers']:,} customers: p50 {f_ms(c['p50_ms'])} ms against "
                      f"{f_ms(sw['p50_ms'])} ms for the same number of lightweight clients; the difference is the data "
                      "planes applying the table (decode, validate, build, persist) on the same cores.")
        A("- Anchor: Istio 1.0.3 reported 500 sidecars updated in under 1 s, behind a 100 ms debounce. The "
          "control plane here does not debounce accepted versions; a file source debounces edits before "
          "accepting them (not part of the interval), and a Kubernetes source reconciles each watch event.")
        if conv.get("plot"):
            A("")
            A(f"![convergence against the lower bound]({img}/{conv['plot']})")
        k = conv.get("kube")
        A("")
        A("#### From `kubectl apply` on the real apiserver (N = 10)")
        A("")
        if k:
            A(f"kube-apiserver {k['k8s_version']} on loopback (`tests/k8s/apiserver.sh`), the control plane watching it, "
              f"{k['n']} data-plane processes; {k['reps']} applies of a {k['customers']}-customer RoutingConfig.")
            A("")
            A("| interval | p50 | p99 | max |")
            A("|---|---|---|---|")
            iss = [s["issued_to_converged_ms"] for s in k["samples"]]
            acc = [s["issued_to_accepted_ms"] for s in k["samples"]]
            A(f"| `kubectl apply` started → control plane accepted | {f_ms(B.pct(acc, 50))} ms | "
              f"{f_ms(B.pct(acc, 99))} ms | {f_ms(max(acc))} ms |")
            A(f"| accepted → last of {k['n']} ACKs | {f_ms(k['p50_ms'])} ms | {f_ms(k['p99_ms'])} ms | "
              f"{f_ms(k['max_ms'])} ms |")
            A(f"| `kubectl apply` started → last ACK | {f_ms(B.pct(iss, 50))} ms | {f_ms(B.pct(iss, 99))} ms | "
              f"{f_ms(max(iss))} ms |")
            if k.get("kubectl_ms"):
                km = k["kubectl_ms"]
                A(f"| (for scale) the `kubectl apply` process, start → exit | {f_ms(B.pct(km, 50))} ms | "
                  f"{f_ms(B.pct(km, 99))} ms | {f_ms(max(km))} ms |")
            A("")
            A("The control plane's own part is the second row; the first is the client, the apiserver and the "
              "watch event reaching the control plane.")
        else:
            A("Not measured in this run (no apiserver: `tests/k8s/apiserver.sh install`).")
        A("")
        A("Commands as run (`$RUN` is the run directory, `$CP` the control plane's port):")
        A("")
        A("```sh")
        shown = set()
        import re
        for c in cells + ([k] if k else []):
            for cmd in c["commands"]:
                generic = cmd.replace(f"--clients {c['n']}", "--clients N")
                generic = re.sub(r"--id-prefix \S+?-(?= )", "--id-prefix swarm-", generic)
                generic = re.sub(r"--id \S+", "--id dp-I", generic)
                generic = re.sub(r"--cache-dir \$RUN/\S+", "--cache-dir $RUN/cache-I", generic)
                generic = re.sub(r"routing-\d+\.yaml", "routing-CUSTOMERS.yaml", generic)
                if generic not in shown:
                    shown.add(generic)
                    A(generic)
        A("```")
        A("")
    fan = results.get("fanout")
    if fan:
        A("### Fan-out memory per idle connection (row 5)")
        A("")
        A("The control plane serving a 10-customer RoutingConfig; RSS (`VmRSS`) once steady before the clients "
          "connect, and again once N `swarm` sessions have received and ACKed the snapshot and exchanged at "
          "least two heartbeats. Kernel socket buffers are not in RSS.")
        A("")
        A("| N idle sessions | RSS before | RSS after | growth ÷ N | goal ≤ 32 KiB | tungstenite defaults (for scale) |")
        A("|---|---|---|---|---|---|")
        for r in fan["rows"]:
            A(f"| {r['n']:,} | {r['rss_before_kib'] / 1024:.1f} MiB | {r['rss_after_kib'] / 1024:.1f} MiB | "
              f"**{r['bytes_per_conn'] / 1024:.1f} KiB** | {B.ok(r['bytes_per_conn'] <= 32 * 1024)} | 256 KiB "
              f"({r['bytes_per_conn'] / (256 * 1024):.2f}×) |")
        A("")
        A("The push server sets a 1 KiB read buffer and no write buffer per session (tungstenite's defaults are "
          "128 KiB each), and every session shares the one encoded snapshot.")
        A("")
        A("```sh")
        for cmd in fan["rows"][-1]["commands"]:
            A(cmd)
        A("```")
        A("")
    join = results.get("join")
    if join:
        js = sorted(x["join_s"] for x in join["samples"])
        rss = sorted(x["rss_kib"] * 1024 for x in join["samples"])
        med_s, med_rss = js[len(js) // 2], rss[len(rss) // 2]
        raw = join["raw_bytes"]
        A(f"### A fresh data plane joining a {join['customers']:,}-customer table")
        A("")
        A(f"One data-plane process started against a control plane already serving the table, {len(js)} times in "
          "turn, each with an empty cache: from the moment it was started to the moment its ACK of the whole "
          "snapshot reached the control plane (connect, receive the gzip snapshot, decode, validate, hash, "
          "build the table, swap), and its RSS (`VmRSS`) once steady after that. The raw size is the bytes of "
          "every customer id and its placement's name.")
        A("")
        A("| measurement | median | range | reference | ratio | goal |")
        A("|---|---|---|---|---|---|")
        A(f"| start → ACK of the whole table | **{med_s * 1000:.0f} ms** | {js[0] * 1000:.0f}–{js[-1] * 1000:.0f} ms | "
          f"the goal: 1 s | {med_s:.2f} | ≤ 1 s {B.ok(med_s <= 1.0)} |")
        A(f"| RSS after the join | **{med_rss / 2**20:.0f} MiB** | {rss[0] / 2**20:.0f}–{rss[-1] / 2**20:.0f} MiB | "
          f"raw table: {raw / 2**20:.1f} MiB | **{med_rss / raw:.1f}** | ≤ 2× {B.ok(med_rss <= 2 * raw)} |")
        A("")
        A("```sh")
        for cmd in join["commands"]:
            A(cmd)
        A("```")
        A("")
    A(END)
    return "\n".join(L)


def write_md(section: str, path: Path) -> None:
    B.write_section(path, section, BEGIN, END, HEADING)


def plot_and_render(results: dict, out_dir: Path, workdir: Path) -> str:
    if "convergence" in results:
        results["convergence"]["plot"] = plot_convergence(results["convergence"], out_dir, workdir)
    (out_dir / "push-results.json").write_text(json.dumps(results, indent=1, default=str))
    section = render(results, out_dir)
    (out_dir / "push-section.md").write_text(section + "\n")
    return section


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short runs (CI)")
    ap.add_argument("--rows", default="convergence,fanout")
    ap.add_argument("--control-plane", required=True, type=Path)
    ap.add_argument("--data-plane", required=True, type=Path)
    ap.add_argument("--swarm", required=True, type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--write-md", type=Path)
    ap.add_argument("--no-write-md", action="store_true")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--reps", type=int)
    ap.add_argument("--kube", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure the kubectl-apply path on tests/k8s/apiserver.sh (default on)")
    ap.add_argument("--render-only", action="store_true")
    ap.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None,
                    help="perf profile of the control plane at the largest N, 10k customers (default: full mode)")
    ap.add_argument("--ns", help="comma list: lightweight-client N values (overrides the mode's)")
    ap.add_argument("--real-ns", help="comma list: data-plane process N values (overrides the mode's)")
    ap.add_argument("--tables", help="comma list: table sizes (overrides the mode's)")
    args = ap.parse_args()
    quick_dir = Path(os.environ.get("CARGO_TARGET_DIR", tempfile.gettempdir())) / "bench-quick"
    out_dir = args.out or (quick_dir if args.quick else B.BENCH / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    md = args.write_md or (None if args.quick or args.no_write_md else ROOT / "BENCHMARKS.md")
    if args.render_only:
        results = json.loads((out_dir / "push-results.json").read_text())
        with tempfile.TemporaryDirectory() as tmp:
            section = plot_and_render(results, out_dir, Path(tmp))
        if md:
            write_md(section, md)
        return 0
    mode = MODES["quick" if args.quick else "full"]
    if args.profile is None:
        args.profile = not args.quick
    if args.reps:
        mode.reps = args.reps
        mode.kube_reps = args.reps
    if args.ns:
        mode.swarm_ns = [int(x) for x in args.ns.split(",")]
    if args.real_ns is not None:
        mode.real_ns = [int(x) for x in args.real_ns.split(",") if x]
    if args.tables:
        mode.tables = [int(x) for x in args.tables.split(",")]
    # 10k sessions need 10k descriptors in the control plane and in the swarm.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if max(mode.fanout_ns) + 200 > hard:
        log(f"open-file limit {hard} is below {max(mode.fanout_ns) + 200}; fan-out capped")
        mode.fanout_ns = [n for n in mode.fanout_ns if n + 200 <= hard] or [hard // 2]
    workdir = Path(tempfile.mkdtemp(prefix="cellroute-bench-push-"))
    env = Env(args, mode, workdir)
    env.out_dir = out_dir
    for src, dst in ((args.control_plane, env.control_plane), (args.data_plane, env.data_plane),
                     (args.swarm, env.swarm)):
        shutil.copy2(src, dst)
    log(f"push rows, mode {mode.name}; run dir {workdir}; results to {out_dir}")
    rows = set(args.rows.split(","))
    results = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "machine": B.machine(), "versions": B.versions(), "mode": mode.__dict__}
    # Rows not run this time keep their last results (the section shows every row), each with the
    # date it was measured.
    earlier = out_dir / "push-results.json"
    if md and earlier.exists():
        before = json.loads(earlier.read_text())
        for name in ("convergence", "fanout", "join"):
            if name not in rows and name in before:
                results[name] = before[name]
                results[name].setdefault("date", before.get("date"))
    failures = []
    try:
        for name, fn in (("convergence", row_convergence), ("fanout", row_fanout), ("join", row_join)):
            if name not in rows:
                continue
            try:
                results[name] = fn(env)
            except Exception:
                log(f"row {name} failed:\n{traceback.format_exc()}")
                failures.append(name)
                env.procs.stop_all()
    finally:
        env.procs.stop_all()
    section = plot_and_render(results, out_dir, workdir)
    if failures:
        log(f"rows failed: {', '.join(failures)}; BENCHMARKS.md not updated; run dir kept: {workdir}")
        return 1
    if md:
        write_md(section, md)
        log(f"wrote {md}")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
