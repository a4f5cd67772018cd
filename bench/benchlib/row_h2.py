"""HTTP/2 and gRPC through the data plane and nginx, with the same 1,000-customer map.

- HTTP/2: h2load speaks HTTP/2 with prior knowledge to the proxy (many streams per connection);
  both proxies forward to the HTTP/1.1 cells on kept-alive connections.
- gRPC unary: h2load sends `cellroute.test.Echo/Say` (a fixed, valid gRPC message) to the proxy;
  the cells are `grpc-cell` processes (tonic, one core each); the data plane reaches them with
  `h2c://` endpoints, nginx with `grpc_pass` over kept-alive HTTP/2. Direct to a cell is the
  reference.

h2load counts a request as succeeded on a 2xx status; for gRPC the cell's status travels in the
trailers, which h2load does not check, so before timing, one call through each contender is
checked to reach its cell (see `check_grpc`).
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

from .common import LOAD_IDS, log
from .env import Contender, Env
from .load import H2_CLIENTS, H2_STREAMS, H2_THREADS, H2Result, med, run_h2load, stats3
from .procs import free_port, wait_port

GRPC_PATH = "/cellroute.test.Echo/Say"


def grpc_say_frame() -> bytes:
    """One length-prefixed gRPC message: EchoRequest{message: "hi"} in protobuf."""
    payload = b"\x0a\x02hi"
    return b"\x00" + struct.pack(">I", len(payload)) + payload


def h2load_command_text(path: str, grpc: bool) -> str:
    extra = (" -d $RUN/grpc-say.bin -H 'content-type: application/grpc' -H 'te: trailers'"
             if grpc else "")
    return (f"h2load -D DURATION -c {H2_CLIENTS} -m {H2_STREAMS} -t {H2_THREADS} "
            f"-H 'x-customer-id: {LOAD_IDS[1]}'{extra} http://127.0.0.1:PORT{path}")


def check_grpc(port: int, cell: str, payload: Path) -> None:
    """One gRPC call through `port` (nghttp): it must end with grpc-status 0 from `cell`."""
    out = subprocess.run(["nghttp", "-v", "-H", ":method: POST", "-H", "content-type: application/grpc",
                          "-H", "te: trailers", "-H", f"x-customer-id: {LOAD_IDS[0]}",
                          "-d", str(payload), f"http://127.0.0.1:{port}{GRPC_PATH}"],
                         capture_output=True, timeout=20)
    text = out.stdout.decode(errors="replace")
    if "grpc-status: 0" not in text or cell.encode() not in out.stdout:
        raise RuntimeError(f"gRPC check through port {port} failed:\n{text[-3000:]}")


def _measure(cs: list[Contender], env: Env, path: str, headers: dict, data: str | None,
             upstream_pids) -> dict[str, list[H2Result]]:
    m = env.mode
    runs: dict[str, list[H2Result]] = {c.key: [] for c in cs}
    for c in cs:
        run_h2load(f"http://127.0.0.1:{c.port}{path}", m.warmup, headers, data)
    for rep in range(m.reps):
        order = cs[rep % len(cs):] + cs[:rep % len(cs)]
        for c in order:
            roles = {"upstream": upstream_pids()}
            if c.kind != "direct":
                roles["proxy"] = c.pids()
            r = run_h2load(f"http://127.0.0.1:{c.port}{path}", m.duration, headers, data, roles)
            runs[c.key].append(r)
            log(f"h2 {path} rep {rep + 1}/{m.reps} {c.key:12s} {r.rps:9.0f} rps mean {r.mean_ms:.2f} ms"
                f" failed {r.failed}")
    return runs


def _summarize(cs: list[Contender], runs: dict[str, list[H2Result]], a: str, b: str) -> dict:
    out = {"contenders": [], "pair": None}
    for c in cs:
        rs = runs[c.key]
        out["contenders"].append({
            "key": c.key, "label": c.label, "rps": med([r.rps for r in rs]),
            "mean_ms": med([r.mean_ms for r in rs]), "failed": sum(r.failed + (r.requests - r.succeeded - r.failed) for r in rs),
            "requests": sum(r.requests for r in rs),
            "proxy_us": med([sum(r.cpu["proxy"]) for r in rs]) if c.kind != "direct" else None,
            "runs": [r.__dict__ for r in rs]})
    ra, rb = runs[a], runs[b]
    out["pair"] = {"a": a, "b": b,
                   "rps": stats3([x.rps / y.rps for x, y in zip(ra, rb)]),
                   "mean": stats3([x.mean_ms / y.mean_ms for x, y in zip(ra, rb)]),
                   "cpu": stats3([sum(x.cpu["proxy"]) / max(sum(y.cpu["proxy"]), 1e-9)
                                  for x, y in zip(ra, rb)])}
    return out


def row_h2(env: Env) -> dict:
    log("HTTP/2 row: starting contenders")
    headers = {"x-customer-id": LOAD_IDS[1]}
    cs = [env.start_data_plane("h2-dp2", None, label="data plane, 2 workers"),
          env.start_nginx("h2-nginx2", 2, http2=True)]
    runs = _measure(cs, env, "/", headers, None, env.upstream_pids)
    http2 = _summarize(cs, runs, "h2-dp2", "h2-nginx2")
    http2["commands"] = {c.key: c.command for c in cs}
    http2["load"] = h2load_command_text("/", False)
    for c in cs:
        env.procs.stop(c.proc)

    log("gRPC row: starting gRPC cells and contenders")
    grpc_cells = {"cell-a": free_port(), "cell-b": free_port()}
    cell_procs = []
    for name, port in grpc_cells.items():
        cell_procs.append(env.procs.start(f"grpc-{name}", [str(env.args.grpc_cell), "--listen",
                                                           f"127.0.0.1:{port}", "--name", name]))
    for port in grpc_cells.values():
        wait_port(port)
    payload = Path(env.workdir) / "grpc-say.bin"
    payload.write_bytes(grpc_say_frame())
    cs = [Contender("grpc-direct", "direct to a gRPC cell (reference)", "direct", 0, grpc_cells["cell-a"]),
          env.start_data_plane("grpc-dp2", None, cells=grpc_cells, scheme="h2c",
                               label="data plane, 2 workers (h2c:// cells)"),
          env.start_nginx("grpc-nginx2", 2, grpc=True, cells=grpc_cells)]
    cs[2].label = "nginx, 2 workers (grpc_pass)"
    for c in cs[1:]:
        check_grpc(c.port, "cell-a", payload)
    grpc_headers = {**headers, "content-type": "application/grpc", "te": "trailers"}

    def upstream_pids() -> list[int]:
        return [p.pid for p in cell_procs]

    runs = _measure(cs, env, GRPC_PATH, grpc_headers, str(payload), upstream_pids)
    grpc = _summarize(cs, runs, "grpc-dp2", "grpc-nginx2")
    grpc["commands"] = {c.key: c.command for c in cs if c.command}
    grpc["commands"]["grpc-cell"] = "grpc-cell --listen 127.0.0.1:$PORT --name cell-a   (and cell-b)"
    grpc["load"] = h2load_command_text(GRPC_PATH, True)
    for c in cs:
        if c.proc is not None:
            env.procs.stop(c.proc)
    for p in cell_procs:
        env.procs.stop(p)
    return {"http2": http2, "grpc": grpc}
