"""Fixed-rate latency: the data plane and nginx at 50 % and 80 % of nginx's measured maximum.

wrk finds each contender's maximum (closed loop: as fast as it answers). A proxy is mostly run
below its maximum, where what matters is the latency at a given rate, tail included; a closed
loop hides stalls (coordinated omission). So oha offers a fixed rate (open loop, with latency
correction: each request's time counts from when it was due) at 50 % and 80 % of the maximum
nginx reached in this same run, to both contenders, interleaved. oha costs more CPU per request
than wrk and runs on the same two cores, so a rate is a larger share of the machine than its
fraction says; it is the same share for both contenders.
"""

from __future__ import annotations

from .common import LOAD_IDS, WRK_CONNS, log
from .env import Env
from .load import med, run_oha, run_wrk, stats3

FRACTIONS = (0.5, 0.8)


def row_latency(env: Env) -> dict:
    m = env.mode
    log("latency row: starting contenders")
    cs = [env.start_data_plane("lat-dp2", None), env.start_nginx("lat-nginx2", 2)]
    for c in cs:
        run_wrk(c.port, m.warmup)
    # nginx's maximum, in this run, under the proxy row's load.
    maxima = {c.key: [] for c in cs}
    for _ in range(max(2, min(m.reps, 3))):
        for c in cs:
            maxima[c.key].append(run_wrk(c.port, m.duration).rps)
    nginx_max = med(maxima["lat-nginx2"])
    customer = LOAD_IDS[1]
    out = {"nginx_max_rps": nginx_max, "dp_max_rps": med(maxima["lat-dp2"]), "rates": [],
           "conns": WRK_CONNS, "duration": m.duration, "customer": customer,
           "commands": {c.key: c.command for c in cs}}
    for frac in FRACTIONS:
        rate = frac * nginx_max
        runs = {c.key: [] for c in cs}
        for rep in range(max(1, min(m.reps, 3))):
            order = cs if rep % 2 == 0 else list(reversed(cs))
            for c in order:
                r = run_oha(c.port, m.duration, rate, WRK_CONNS, customer)
                runs[c.key].append(r)
                log(f"latency {frac:.0%} rep {rep + 1} {c.key:10s} offered {rate:7.0f}/s served "
                    f"{r.rps:7.0f}/s p50 {r.p50_ms:.2f} p99 {r.p99_ms:.2f} p99.9 {r.p999_ms:.2f} ms"
                    f" errors {r.errors}")
        row = {"fraction": frac, "rate": rate, "contenders": {}, "ratios": {}}
        for c in cs:
            rs = runs[c.key]
            row["contenders"][c.key] = {
                "label": c.label, "rps": med([r.rps for r in rs]),
                "p50_ms": med([r.p50_ms for r in rs]), "p99_ms": med([r.p99_ms for r in rs]),
                "p999_ms": med([r.p999_ms for r in rs]), "errors": sum(r.errors for r in rs),
                "runs": [r.__dict__ for r in rs]}
        for q in ("p50_ms", "p99_ms", "p999_ms"):
            row["ratios"][q] = stats3([a.__dict__[q] / max(b.__dict__[q], 1e-9)
                                       for a, b in zip(runs["lat-dp2"], runs["lat-nginx2"])])
        out["rates"].append(row)
    for c in cs:
        env.procs.stop(c.proc)
    return out
