"""Row 3: p99 and errors while the routing table is swapped under load."""

from __future__ import annotations

import http.client
import json
import subprocess
import threading
import time
from pathlib import Path

from .common import TOKEN, log
from .configs import nginx_map, routing_yaml, write_atomic
from .env import Contender, Env
from .load import med, run_wrk, stats3
from .procs import http_get

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
