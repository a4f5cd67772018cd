"""The benchmark harness behind `bench/run`, one module per concern.

Entry points: `bench/bench.py` (the proxy, reload and edit rows) and `bench/push.py` (the
snapshot push). What is where:

  common      paths, load shape (wrk threads and connections), the table, run modes
  procs       processes started and stopped by pid, CPU ticks, free ports, a tiny HTTP GET
  configs     the contenders' configs over one table: RoutingConfig, nginx `map`, HAProxy map
  env         a run: its directory, the upstream cells, the contenders started in it
  load        load generators (wrk, oha at a fixed rate, h2load) and the statistics rows use
  row_proxy   proxy overhead at equal workers (wrk), and the fixed-rate latency row (oha)
  row_h2      HTTP/2 (h2load) and gRPC unary, against nginx with the same map
  row_reload  p99 and errors while the table is swapped under load
  row_edit    file edit to "config applied"
  profile     perf profiles of the data plane and nginx under load
  report      the generated Markdown section of BENCHMARKS.md
  plots       gnuplot figures

Only the standard library.
"""

from .common import BENCH, CLK_TCK, ROOT, log
from .configs import write_atomic
from .env import rel, shorten
from .load import med, pct
from .plots import gnuplot
from .procs import Procs, cpu_ticks, free_port, wait_port
from .profile import perf_works
from .report import machine, machine_line, ok, versions, write_section

__all__ = [
    "BENCH", "CLK_TCK", "ROOT", "Procs", "cpu_ticks", "free_port", "gnuplot", "log", "machine",
    "machine_line", "med", "ok", "pct", "perf_works", "rel", "shorten", "versions", "wait_port",
    "write_atomic", "write_section",
]
