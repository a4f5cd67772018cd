#!/usr/bin/env python3
"""cellroute's side-by-side benchmarks: rows 2, 3 and 6 of the benchmark issue.

Run it through `bench/run` (which builds the data plane and checks the tools). It measures, on
loopback only:

  proxy   row 2: wrk through the data plane, nginx (`map $http_x_customer_id`) and HAProxy (map
          file) at 1 and 2 workers each, and directly against the upstream.
  latency the data plane and nginx at a fixed rate (oha, open loop) of 50 % and 80 % of nginx's
          maximum in the same run: p50 / p99 / p99.9.
  h2      HTTP/2 clients (h2load) through the data plane and nginx (`listen ... http2`), and gRPC
          unary calls to tonic cells (`h2c://` endpoints against nginx `grpc_pass`).
  reload  row 3: p99 and errors while the routing table is swapped (data plane: rewrite the file +
          `POST /admin/reload`; nginx: swap its map file + `nginx -s reload` every 100 ms) versus
          steady state, under the same wrk load.
  edit    row 6: file edit (temp file + rename) -> "config applied", over N edits, at the default
          100 ms debounce and at 10 ms.

The upstream "cells" are one nginx process (1 worker) serving two ports with a fixed 7-byte body:
cheap, and byte-identical for every contender, so differences are the proxies' own (the gRPC
cells are two `grpc-cell` processes). The pieces live in `bench/benchlib/` (see its docstring).

Every figure is read against a peer measured in the same run: contenders are interleaved (the
order rotates every repetition) and ratios are taken per repetition, then the median is
reported. Every load loop is bounded in count and in time. Only standard-library Python.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchlib.common import BENCH, MODES, ROOT, log
from benchlib.env import Env, shorten
from benchlib.plots import plot_edit, plot_proxy, plot_reload
from benchlib.report import machine, render, versions, write_benchmarks_md
from benchlib.row_edit import row_edit
from benchlib.row_h2 import row_h2
from benchlib.row_latency import row_latency
from benchlib.row_proxy import row_proxy
from benchlib.row_reload import row_reload

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
    ap.add_argument("--rows", default="proxy,latency,h2,reload,edit",
                    help="comma list of proxy, latency, h2, reload, edit")
    ap.add_argument("--data-plane", required=True, type=Path, help="the data-plane binary")
    ap.add_argument("--grpc-cell", type=Path, help="the grpc-cell binary (the gRPC upstream of row h2)")
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
               "machine": machine(), "versions": versions(), "mode": mode.__dict__, "plots": {},
               "load": {"start": list(os.getloadavg())}}
    started = time.monotonic()
    failures = []
    try:
        env.start_upstream()
        for name, fn in (("proxy", row_proxy), ("latency", row_latency), ("h2", row_h2),
                         ("reload", row_reload), ("edit", row_edit)):
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
    results["load"]["end"] = list(os.getloadavg())
    # Keep the configs that ran, with run-specific paths, for readers.
    conf_dir = out_dir / "conf"
    conf_dir.mkdir(exist_ok=True)
    for src, name in [("upstream/nginx.conf", "upstream-nginx.conf"), ("nginx1/nginx.conf", "nginx-1-worker.conf"),
                      ("nginx2/nginx.conf", "nginx-2-workers.conf"), ("haproxy1/haproxy.cfg", "haproxy-1-thread.cfg"),
                      ("haproxy2/haproxy.cfg", "haproxy-2-threads.cfg"), ("dp2/routing.yaml", "routing.yaml"),
                      ("h2-nginx2/nginx.conf", "nginx-http2.conf"), ("grpc-nginx2/nginx.conf", "nginx-grpc.conf"),
                      ("grpc-dp2/routing.yaml", "routing-grpc.yaml")]:
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
