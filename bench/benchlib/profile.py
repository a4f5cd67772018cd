"""Where the CPU goes: `perf record` of the data plane and nginx under the proxy row's load."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time

from .common import log
from .env import Contender, Env
from .load import run_wrk
from .procs import children

def perf_works() -> bool:
    if shutil.which("perf") is None:
        return False
    try:
        r = subprocess.run(["perf", "record", "-e", "cpu-clock:u", "-o", "/dev/null", "--", "true"],
                           capture_output=True, timeout=20)
        return r.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


# Approximate buckets for the data plane's user-space profile, first match wins.
BUCKETS = [
    ("allocator (glibc malloc/free)", r"malloc|_int_free|cfree|unlink_chunk|realloc|__libc_free|tcache"),
    ("memcpy/memmove", r"memmove|memcpy|memset"),
    ("timers (tokio time wheel, Sleep, clock_gettime)",
     r"tokio::runtime::time|TokioSleep|time::sleep|Sleep|clock_gettime|vdso|Instant"),
    ("upstream client (hyper client connections, dispatch channel, per-worker pool)",
     r"hyper_util::client|hyper::client|pool::|mpsc|want::|oneshot|client::dispatch|role::Client|"
     r"data_plane::upstream"),
    ("HTTP/1 codec (hyper h1, httparse)", r"hyper::proto|role::Server|httparse|hyper::body|hyper::|hyper_util::server"),
    ("headers and URIs (http crate, x-forwarded-*)",
     r"http::header|HeaderMap|HeaderValue|http::uri|http::extensions|add_forwarded|strip_hop|"
     r"prepare_request|prepare_response|upstream_uri|sip::Hasher|fmt"),
    ("tokio scheduler, I/O driver, wakers", r"tokio::|futures_util|waker"),
    ("syscall wrappers (libc)", r"writev|recv|send|epoll|syscall|pthread"),
    ("bytes", r"bytes::"),
    ("data plane's own code (routing, metrics)", r"data_plane|routing_model|prometheus"),
]


def profile_proxies(env: Env, cs: list[Contender]) -> dict | None:
    """A user-space CPU profile (perf, cpu-clock) of the data plane and of nginx under load."""
    if not perf_works():
        log("perf is not usable here; skipping the profile")
        return None
    out = {}
    for key in ("dp2", "nginx1"):
        c = next(x for x in cs if x.key == key)
        pids = c.pids() if c.kind == "data-plane" else children(c.proc.pid)
        data = env.workdir / f"perf-{key}.data"
        secs = max(2.0, min(env.mode.duration, 6.0))
        holder: dict = {}
        t = threading.Thread(target=lambda: holder.setdefault("r", run_wrk(c.port, secs + 2)))
        t.start()
        time.sleep(1)
        subprocess.run(["perf", "record", "-q", "-e", "cpu-clock:u", "-F", "1999", "-p",
                        ",".join(map(str, pids)), "-o", str(data), "--", "sleep", f"{secs:g}"],
                       capture_output=True, timeout=secs + 60)
        t.join()
        rep = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children",
                              "--sort", "symbol", "-g", "none", "--percent-limit", "0.01"],
                             capture_output=True, text=True, timeout=120).stdout
        syms = []
        for ln in rep.splitlines():
            mm = re.match(r"\s*([\d.]+)%\s+\[[.k]\]\s+(.*?)\s*$", ln)
            if mm:
                syms.append((float(mm.group(1)), re.sub(r"\s+-\s+-\s*$", "", mm.group(2)).strip()))
        buckets: dict[str, float] = {}
        for pct, sym in syms:
            name = next((b for b, rx in BUCKETS if re.search(rx, sym)), "other")
            buckets[name] = buckets.get(name, 0.0) + pct
        out[key] = {"top": syms[:25], "buckets": sorted(buckets.items(), key=lambda kv: -kv[1]),
                    "command": f"perf record -e cpu-clock:u -F 1999 -p <{c.label} pids> -- sleep {secs:g}"
                               f"  (under the same wrk load); perf report --no-children --sort symbol"}
        (env.out_dir / f"profile-{key}.txt").write_text(
            f"# {out[key]['command']}\n# {c.label}\n" + rep)
    return out
