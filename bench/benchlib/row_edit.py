"""Row 6: file edit (temp file + rename) to "config applied"."""

from __future__ import annotations

import http.client
import datetime as dt
import json
import os
import random
import re
import time

from .common import log
from .configs import routing_yaml
from .env import Env
from .load import pct

# --------------------------------------------------------------------------------------------
# Row 6: file edit -> applied.


def parse_ts(s: str) -> float:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def row_edit_once(env: Env, debounce: str) -> dict:
    key = f"edit-{debounce}"
    c = env.start_data_plane(key, None, watch=True, debounce=debounce, json_logs=True)
    cfg = env.workdir / key / "routing.yaml"
    logf = open(env.workdir / f"{key}.log", "r")
    logf.seek(0, os.SEEK_END)
    poll = http.client.HTTPConnection("127.0.0.1", c.admin_port, timeout=5)
    reconnects = 0

    def generation() -> int:
        nonlocal poll, reconnects
        for attempt in (1, 2):
            try:
                poll.request("GET", "/readyz")
                return int(json.loads(poll.getresponse().read()).get("config_generation", 0))
            except (http.client.HTTPException, OSError) as e:
                # Seen once: the admin server closed the keep-alive connection without a response.
                log(f"row 6: /readyz poll failed ({e!r}); reconnecting")
                reconnects += 1
                poll.close()
                poll = http.client.HTTPConnection("127.0.0.1", c.admin_port, timeout=5)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    pending = ""

    def applied_line(gen: int, deadline: float) -> dict | None:
        nonlocal pending
        while time.monotonic() < deadline:
            chunk = logf.read()
            if chunk:
                pending += chunk
                *lines, pending = pending.split("\n")
                for ln in lines:
                    try:
                        j = json.loads(ln)
                    except ValueError:
                        continue
                    if j.get("message") == "config applied" and j.get("generation") == gen:
                        return j
            else:
                time.sleep(0.001)
        return None

    rng = random.Random(6)
    debounce_s = parse_duration(debounce)
    g = generation()
    log_lat, poll_lat, missed = [], [], 0
    for i in range(env.mode.edits):
        text = routing_yaml(env.cells, "ab"[i % 2], extra=f"edit-{i:04d}")
        tmp = cfg.with_name(cfg.name + ".tmp")
        tmp.write_text(text)
        t_edit = time.time()
        os.replace(tmp, cfg)
        # Client-visible: poll the generation every 1 ms (bounded at 5 s).
        deadline = time.monotonic() + 5
        seen = None
        while time.monotonic() < deadline:
            if generation() > g:
                seen = time.time()
                break
            time.sleep(0.001)
        line = applied_line(g + 1, time.monotonic() + 2)
        if seen is None or line is None:
            missed += 1
            g = generation()
        else:
            g += 1
            poll_lat.append((seen - t_edit) * 1e3)
            log_lat.append((parse_ts(line["timestamp"]) - t_edit) * 1e3)
        # Next edit after the debounce window has surely closed, at a random phase.
        time.sleep(debounce_s * 1.5 + 0.02 + rng.uniform(0, 0.05))
    poll.close()
    logf.close()
    env.procs.stop(c.proc)
    log(f"row 6 debounce {debounce}: log p50 {pct(log_lat, 50):.1f} ms p99 {pct(log_lat, 99):.1f} ms"
        f" | poll p50 {pct(poll_lat, 50):.1f} ms p99 {pct(poll_lat, 99):.1f} ms | missed {missed}")
    return {"debounce": debounce, "debounce_ms": debounce_s * 1e3, "edits": env.mode.edits,
            "applied": len(log_lat), "missed": missed, "log_ms": log_lat, "poll_ms": poll_lat,
            "admin_reconnects": reconnects,
            "command": c.command}


def parse_duration(s: str) -> float:
    mm = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)", s)
    if not mm:
        raise ValueError(s)
    return float(mm.group(1)) / (1000 if mm.group(2) == "ms" else 1)


def row_edit(env: Env) -> dict:
    log("row 6: edit -> applied")
    return {"settings": [row_edit_once(env, "100ms"), row_edit_once(env, "10ms")]}
