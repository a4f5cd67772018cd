"""Paths, load shape, table size and run modes shared by every row."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
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
