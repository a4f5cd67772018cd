"""Row 2: proxy overhead, wrk through each contender at equal workers."""

from __future__ import annotations

from .common import log
from .env import Contender, Env
from .load import WrkResult, med, run_wrk, stats3
from .procs import http_get
from .profile import profile_proxies

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
