"""The three contenders' configurations: the data plane's RoutingConfig, nginx (`map`) and HAProxy (map file), over the same 1,000-customer table."""

from __future__ import annotations

import os
from pathlib import Path

from .common import TABLE_CUSTOMERS

# --------------------------------------------------------------------------------------------
# Tables and configs for every contender.


def placement(i: int, version: str) -> str:
    even = i % 2 == 0
    return "cell-a" if even == (version == "a") else "cell-b"


def routing_yaml(cells: dict[str, int], version: str, extra: str = "", scheme: str = "http") -> str:
    lines = [
        "apiVersion: cellroute.dev/v1alpha1",
        "kind: RoutingConfig",
        "metadata: {name: bench, namespace: default}",
        "spec:",
        "  defaultPlacement: cell-a",
        "  customerToPlacement:",
    ]
    lines += [f"    customer-{i:08d}: {placement(i, version)}" for i in range(TABLE_CUSTOMERS)]
    if extra:
        lines.append(f"    {extra}: cell-b")
    lines.append("  placementToEndpoint:")
    lines += [f"    {name}: {scheme}://127.0.0.1:{port}" for name, port in cells.items()]
    return "\n".join(lines) + "\n"


def nginx_map(version: str) -> str:
    rows = [f"  customer-{i:08d} {placement(i, version).replace('-', '_')};"
            for i in range(TABLE_CUSTOMERS)]
    return "map $http_x_customer_id $cell {\n  default cell_a;\n" + "\n".join(rows) + "\n}\n"


def nginx_common(prefix: Path, workers: int, log_level: str = "warn") -> str:
    return f"""worker_processes {workers};
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log {log_level};
worker_rlimit_nofile 8192;
events {{ worker_connections 4096; }}
"""


def nginx_upstream_conf(prefix: Path, cells: dict[str, int]) -> str:
    servers = "\n".join(
        f'  server {{ listen 127.0.0.1:{port} backlog=4096; location / {{ return 200 "{name}\\n"; }} }}'
        for name, port in cells.items())
    return nginx_common(prefix, 1) + f"""http {{
  access_log off;
  default_type text/plain;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  client_body_temp_path {prefix}/tmp;
{servers}
}}
"""


def nginx_proxy_conf(prefix: Path, workers: int, port: int, cells: dict[str, int],
                     map_file: Path, log_level: str = "warn", http2: bool = False,
                     grpc: bool = False) -> str:
    upstreams = "\n".join(
        f"  upstream {name.replace('-', '_')} {{ server 127.0.0.1:{p}; keepalive 128; "
        f"keepalive_requests 100000000; keepalive_timeout 300s; }}"
        for name, p in cells.items())
    # The same work the data plane does per request: map the header, keep-alive HTTP/1.1 to the
    # cell, add x-forwarded-for/-proto/-host. No access log (the data plane writes none).
    # `http2`: clients speak HTTP/2 with prior knowledge (as to the data plane); `grpc`: the
    # cells are gRPC servers, reached with grpc_pass over kept-alive HTTP/2.
    listen = f"listen 127.0.0.1:{port} backlog=4096{' http2' if http2 or grpc else ''};"
    if grpc:
        location = """location / {
      grpc_pass grpc://$cell;
      grpc_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      grpc_set_header X-Forwarded-Proto $scheme;
      grpc_set_header X-Forwarded-Host $host;
    }"""
    else:
        location = """location / {
      proxy_pass http://$cell;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
    }"""
    return nginx_common(prefix, workers, log_level) + f"""http {{
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  client_body_temp_path {prefix}/tmp;
  proxy_temp_path {prefix}/tmp;
  include {map_file};
{upstreams}
  http2_max_requests 100000000;
  server {{
    {listen}
    {location}
  }}
}}
"""


def haproxy_conf(threads: int, port: int, cells: dict[str, int], map_file: Path) -> str:
    backends = "\n".join(
        f"backend be_{name.replace('-', '_')}\n  server s1 127.0.0.1:{p}" for name, p in cells.items())
    return f"""global
  nbthread {threads}
  maxconn 4096
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:{port}
  option forwardfor
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  use_backend %[req.hdr(x-customer-id),map({map_file},be_cell_a)]
{backends}
"""


def haproxy_map(version: str) -> str:
    return "".join(f"customer-{i:08d} be_{placement(i, version).replace('-', '_')}\n"
                   for i in range(TABLE_CUSTOMERS))


def write_atomic(path: Path, text: str) -> None:
    """Writes a temp file next to `path` (a name the data plane's watch ignores) and renames it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
