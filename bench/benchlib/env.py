"""A run: its directory, the upstream cells, and the contenders started in it."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .common import Mode, ROOT, TOKEN
from .configs import haproxy_conf, haproxy_map, nginx_map, nginx_proxy_conf, nginx_upstream_conf, routing_yaml
from .procs import Procs, children, free_port, wait_port

# --------------------------------------------------------------------------------------------
# Contenders.


@dataclass
class Contender:
    key: str
    label: str
    kind: str  # data-plane, nginx, haproxy, direct
    workers: int
    port: int
    proc: subprocess.Popen | None = None
    admin_port: int = 0
    command: str = ""

    def pids(self) -> list[int]:
        if self.proc is None:
            return []
        return [self.proc.pid] + children(self.proc.pid)


class Env:
    """The run directory, the binaries, the upstream cells, and everything started."""

    def __init__(self, args, mode: Mode, workdir: Path, data_plane: Path):
        self.args = args
        self.mode = mode
        self.workdir = workdir
        self.data_plane = data_plane
        self.procs = Procs(workdir)
        self.cells: dict[str, int] = {}
        self.upstream: subprocess.Popen | None = None
        self.commands: dict[str, str] = {}
        self.out_dir = workdir
        self.variants: list[tuple[str, Path, dict]] = []

    def start_upstream(self) -> None:
        self.cells = {"cell-a": free_port(), "cell-b": free_port()}
        prefix = self.workdir / "upstream"
        (prefix / "tmp").mkdir(parents=True, exist_ok=True)
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_upstream_conf(prefix, self.cells))
        self.upstream = self.procs.start("upstream", ["nginx", "-c", str(conf), "-p", str(prefix)])
        for p in self.cells.values():
            wait_port(p)
        self.commands["upstream"] = f"nginx -c {rel(conf)}  (1 worker; `return 200 \"cell-a\\n\"`)"

    def upstream_pids(self) -> list[int]:
        assert self.upstream is not None
        return [self.upstream.pid] + children(self.upstream.pid)

    def start_data_plane(self, key: str, workers: int | None, watch: bool = True,
                         debounce: str | None = None, json_logs: bool = False,
                         version: str = "a", binary: Path | None = None,
                         extra_env: dict | None = None, label: str | None = None,
                         cells: dict[str, int] | None = None, scheme: str = "http") -> Contender:
        d = self.workdir / key
        d.mkdir(parents=True, exist_ok=True)
        cfg = d / "routing.yaml"
        cfg.write_text(routing_yaml(cells or self.cells, version, scheme=scheme))
        token = d / "token"
        token.write_text(TOKEN + "\n")
        port, admin = free_port(), free_port()
        argv = [str(binary or self.data_plane), "run", "--listen", f"127.0.0.1:{port}",
                "--admin-listen", f"127.0.0.1:{admin}", "--config", str(cfg),
                "--admin-token-file", str(token)]
        if not watch:
            argv.append("--no-watch")
        if debounce:
            argv += ["--reload-debounce", debounce]
        if json_logs:
            argv += ["--log-format", "json"]
        if workers:
            argv += ["--workers", str(workers)]
        env = dict(extra_env or {})
        p = self.procs.start(key, argv, env)
        wait_port(port)
        wait_port(admin)
        n = workers or os.cpu_count()
        label = label or f"data plane, {n} worker{'s' if n != 1 else ''}"
        c = Contender(key, label, "data-plane", workers or os.cpu_count() or 1, port, p, admin)
        prefix_env = "".join(f"{k}={v} " for k, v in env.items())
        shown = [f"{binary.name if binary else '$CARGO_TARGET_DIR/release/data-plane'}"] + [
            shorten(a, self.workdir).replace(f":{port}", ":$PORT").replace(f":{admin}", ":$ADMIN")
            for a in argv[1:]]
        c.command = prefix_env + " ".join(shown)
        return c

    def start_nginx(self, key: str, workers: int, log_level: str = "warn", http2: bool = False,
                    grpc: bool = False, cells: dict[str, int] | None = None) -> Contender:
        prefix = self.workdir / key
        (prefix / "tmp").mkdir(parents=True, exist_ok=True)
        map_file = prefix / "cells.map.conf"
        map_file.write_text(nginx_map("a"))
        port = free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_proxy_conf(prefix, workers, port, cells or self.cells, map_file,
                                         log_level, http2=http2, grpc=grpc))
        p = self.procs.start(key, ["nginx", "-c", str(conf), "-p", str(prefix)])
        wait_port(port)
        c = Contender(key, f"nginx, {workers} worker{'s' if workers != 1 else ''}", "nginx",
                      workers, port, p)
        c.command = f"nginx -c {shorten(str(conf), self.workdir)}"
        return c

    def start_haproxy(self, key: str, threads: int) -> Contender:
        d = self.workdir / key
        d.mkdir(parents=True, exist_ok=True)
        map_file = d / "cells.map"
        map_file.write_text(haproxy_map("a"))
        port = free_port()
        conf = d / "haproxy.cfg"
        conf.write_text(haproxy_conf(threads, port, self.cells, map_file))
        p = self.procs.start(key, ["haproxy", "-f", str(conf), "-db"])
        wait_port(port)
        c = Contender(key, f"HAProxy, {threads} thread{'s' if threads != 1 else ''}", "haproxy",
                      threads, port, p)
        c.command = f"haproxy -db -f {shorten(str(conf), self.workdir)}"
        return c


def rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def shorten(arg: str, workdir: Path) -> str:
    return arg.replace(str(workdir), "$RUN")
