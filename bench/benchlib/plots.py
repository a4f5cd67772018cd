"""Plots (gnuplot, optional)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from .common import WRK_CONNS, WRK_THREADS, log

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
