#!/usr/bin/env python3
"""A/B of two control-plane builds on one convergence cell, alternating, in one run.

Each pass starts a control plane of build A, then of build B, on the same routing file, with the
same N lightweight clients (`swarm subscribe`), and times REPS one-customer changes exactly as
`bench/run --rows convergence` does (bench/push.py). Alternating A and B spreads the machine's
drift over both. Prints one JSON line per run and a median per build.

  bench/fanout_ab.py --a OLD_RELEASE_DIR --b NEW_RELEASE_DIR [--customers 10000] [--clients 1000]
                     [--reps 20] [--pairs 2] [--whole]

Each directory holds `control-plane`, `data-plane` and `swarm` release binaries (build the old
commit in a worktree and copy them out).
"""
import argparse
import json
import shutil
import statistics
import sys
import tempfile
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import push as P  # noqa: E402


def environment(build: Path) -> P.Env:
    """A run directory holding `build`'s binaries."""
    workdir = Path(tempfile.mkdtemp(prefix="cellroute-ab-"))
    env = P.Env(types.SimpleNamespace(profile=False, kube=False, quick=False), P.MODES["full"], workdir)
    for name, dst in (("control-plane", env.control_plane), ("data-plane", env.data_plane),
                      ("swarm", env.swarm)):
        shutil.copy2(build / name, dst)
    return env


def cell(build: Path, limits: dict, customers: int, clients: int, reps: int, delta: bool) -> dict:
    """One convergence cell of `build`, as `bench/run --rows convergence` runs it."""
    env = environment(build)
    try:
        cfg, edit = P.table_file(env, customers)
        extra, limit = P.swarm_cell_args(customers)
        cp = P.ControlPlane(env, "cp", cfg, extra_args=extra)
        sw = P.Swarm(env, cp, clients, "sw", True, delta, limit)
        sw.wait_synced(cp.served(), 600)
        samples = P.measure_changes(cp, sw, edit, reps, limits, 600)
        conv = [s["converged_ms"] for s in samples]
        return {"p50_ms": P.B.pct(conv, 50), "p99_ms": P.B.pct(conv, 99),
                "cp_cpu_ms": samples[0]["cp_cpu_ms"], "clients_cpu_ms": samples[0]["clients_cpu_ms"]}
    finally:
        env.procs.stop_all()
        shutil.rmtree(env.workdir, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", type=Path, required=True, help="release dir of build A (e.g. the old commit)")
    ap.add_argument("--b", type=Path, required=True, help="release dir of build B")
    ap.add_argument("--customers", type=int, default=10_000)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--whole", action="store_true", help="whole tables (gzip) instead of deltas")
    args = ap.parse_args()
    # The loopback figures feed only the lower bound, which this comparison does not report:
    # measured once.
    env = environment(args.a)
    try:
        limits = P.loopback(env)
    finally:
        shutil.rmtree(env.workdir, ignore_errors=True)
    runs: dict[str, list[dict]] = {"a": [], "b": []}
    for _ in range(args.pairs):
        for label, build in (("a", args.a), ("b", args.b)):
            r = cell(build, limits, args.customers, args.clients, args.reps, not args.whole)
            runs[label].append(r)
            print(json.dumps({"build": label, **{k: round(v, 1) for k, v in r.items()}}), flush=True)
    for label, rs in runs.items():
        print(json.dumps({"build": label, "median": {k: round(statistics.median(r[k] for r in rs), 1)
                                                      for k in rs[0]}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
