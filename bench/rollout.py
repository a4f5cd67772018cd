#!/usr/bin/env python3
"""The overhead of a staged rollout, on the real apiserver, in one run.

Two RoutingConfigs in one cluster, each followed by N lightweight clients (`swarm subscribe`,
delta): `bench-plain` without `spec.rollout`, `bench-staged` with two steps (10 %, 50 %) and no
pauses or traffic to wait for (`minRequests: 0`). Each rep applies a one-customer change to
each, alternating, with `kubectl apply`, and times from the apply to the moment the last of the
N clients ACKed the new version (swarm's `synced` event). The ratio staged / plain is what
staging costs when nothing makes it wait: the steps' own round trips (record the step in the
status, serve it, wait for the share's ACKs, look again).

  bench/rollout.py --control-plane BIN --data-plane BIN --swarm BIN [--clients 100] [--reps 10]
                   [--write-md BENCHMARKS.md]

Needs the test apiserver (`tests/k8s/apiserver.sh install`).
"""
import argparse
import datetime as dt
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import push as P  # noqa: E402

B = P.B
ROOT = P.ROOT
BEGIN = "<!-- bench:rollout:begin -->"
END = "<!-- bench:rollout:end -->"
STEPS = "{steps: [{percent: 10, pause: 0s}, {percent: 50, pause: 0s}], analysis: {minRequests: 0}}"


def manifest(name: str, flip: int, staged: bool, body: str) -> str:
    rollout = f"  rollout: {STEPS}\n" if staged else ""
    return (
        "apiVersion: cellroute.dev/v1alpha1\nkind: RoutingConfig\n"
        f"metadata:\n  name: {name}\n  namespace: default\n"
        "spec:\n  defaultPlacement: cell-a\n  placementToEndpoint:\n"
        "    cell-a: http://127.0.0.1:9/\n    cell-b: http://127.0.0.1:9/\n"
        f"{rollout}  customerToPlacement:\n    bench-edit: cell-{'ab'[flip % 2]}\n{body}"
    )


class Clients:
    """`swarm subscribe` for one RoutingConfig; `synced` events as they come."""

    def __init__(self, env, cp, obj: str, n: int, key: str):
        self.events: queue.Queue = queue.Queue()
        argv = [str(env.swarm), "subscribe", "--url", cp.url + "/v1/subscribe", "--routing-config", obj,
                "--clients", str(n), "--token-file", str(env.workdir / "dp-tokens"), "--id-prefix", f"{key}-",
                "--delta"]
        self.command = " ".join(["swarm"] + argv[1:]).replace(f":{cp.port}", ":$CP")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=open(env.workdir / f"{key}.log", "ab"),
                                     stdin=subprocess.DEVNULL, start_new_session=True, text=True)
        env.procs.running.append((key, self.proc))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for ln in self.proc.stdout:
            self.events.put(json.loads(ln))
        self.events.put({"event": "exit"})

    def wait_above(self, version: int, timeout: float) -> int:
        """Waits until every client ACKed a version above `version`; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"clients not synced above version {version} in {timeout} s")
            ev = self.events.get(timeout=left)
            if ev["event"] in ("lost", "exit"):
                raise RuntimeError(f"swarm: {ev}")
            if ev["event"] == "synced" and ev["snapshot"]["version"] > version:
                return ev["snapshot"]["version"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--control-plane", required=True, type=Path)
    ap.add_argument("--data-plane", required=True, type=Path)
    ap.add_argument("--swarm", required=True, type=Path)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--customers", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--write-md", type=Path)
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="cellroute-bench-rollout-"))
    env = P.Env(types.SimpleNamespace(profile=False, kube=True, quick=False), P.MODES["full"], workdir)
    for src, dst in ((args.control_plane, env.control_plane), (args.data_plane, env.data_plane),
                     (args.swarm, env.swarm)):
        shutil.copy2(src, dst)
    script = ROOT / "tests" / "k8s" / "apiserver.sh"
    k8s = workdir / "k8s"
    subprocess.run([str(script), "start", str(k8s)], capture_output=True, text=True, timeout=300, check=True)
    try:
        exports = subprocess.run(["bash", "-c", f'. {k8s}/env && printf "%s\\n%s\\n%s" "$KUBECONFIG" '
                                              f'"$CELLROUTE_KUBECTL" "$CELLROUTE_K8S_VERSION"'],
                                 capture_output=True, text=True, check=True).stdout.split("\n")
        kubeconfig, kubectl, k8s_version = exports
        kenv = {"KUBECONFIG": kubeconfig}

        def kc(*argv: str, stdin: str | None = None) -> None:
            r = subprocess.run([kubectl, *argv], input=stdin, capture_output=True, text=True,
                               env={**os.environ, **kenv}, timeout=60)
            if r.returncode != 0:
                raise RuntimeError(f"kubectl {' '.join(argv)}: {r.stderr.strip()}")

        for kind in ("routingconfig", "routingshard"):
            kc("create", "--validate=false", "-f", str(ROOT / "crds" / f"{kind}.yaml"))
            kc("wait", "--for", "condition=established", "--timeout", "60s", f"crd/{kind}s.cellroute.dev")
        body = P.table_yaml(args.customers)
        objects = {"plain": ("bench-plain", False), "staged": ("bench-staged", True)}
        for name, staged in objects.values():
            kc("apply", "--validate=false", "-f", "-", stdin=manifest(name, 0, staged, body))
        cp = P.ControlPlane(env, "cp", None, extra_env=kenv,
                            extra_args=["--identity", "bench-cp", "--lease-namespace", "default"])
        # Clients connect once both tables are served (a client told `missing` ends its session).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            served = {o["object"] for o in P.get_json(cp.port, "/debug/snapshots")["snapshots"] if o.get("served")}
            if all(f"default/{name}" in served for name, _ in objects.values()):
                break
            time.sleep(0.1)
        clients = {k: Clients(env, cp, f"default/{name}", args.clients, k) for k, (name, _) in objects.items()}
        version = {k: c.wait_above(0, 120) for k, c in clients.items()}
        times: dict[str, list[float]] = {"plain": [], "staged": []}
        for rep in range(args.reps):
            for k, (name, staged) in objects.items():
                started = time.monotonic()
                kc("apply", "--validate=false", "-f", "-", stdin=manifest(name, rep + 1, staged, body))
                version[k] = clients[k].wait_above(version[k], 120)
                times[k].append((time.monotonic() - started) * 1e3)
                B.log(f"rep {rep + 1} {k}: {times[k][-1]:.0f} ms (version {version[k]})")
        summary = {k: {"p50_ms": B.pct(v, 50), "p99_ms": B.pct(v, 99)} for k, v in times.items()}
        ratio = summary["staged"]["p50_ms"] / summary["plain"]["p50_ms"]
        result = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": B.machine(),
                  "k8s_version": k8s_version, "clients": args.clients, "customers": args.customers,
                  "reps": args.reps, "summary": summary, "ratio_p50": ratio,
                  "commands": [cp.command, clients["staged"].command]}
        print(json.dumps(result))
        if args.write_md:
            write_md(args.write_md, render(result, args))
        return 0
    finally:
        env.procs.stop_all()
        subprocess.run([str(script), "stop", str(k8s)], capture_output=True, timeout=120)


def render(r: dict, args) -> str:
    s, p = r["summary"]["staged"], r["summary"]["plain"]
    m = r["machine"]
    machine = f"{m['cores']} cores ({m['cpu']}, {m['virt']}), {m['mem_gib']} GiB" if isinstance(m, dict) else m
    return "\n".join([
        BEGIN,
        "## Staged rollout overhead",
        "",
        f"Measured {r['date']} on {machine}, apiserver {r['k8s_version']}: from `kubectl apply` of a one-customer "
        f"change ({r['customers']} customers) to the last of {r['clients']} lightweight clients ACKing it, "
        f"{r['reps']} changes each, alternating. Staged: `rollout: {STEPS}` (two steps, no pause, no traffic to "
        "wait for), so the difference is the steps' own round trips.",
        "",
        "| delivery | p50 | p99 | ratio (p50) |",
        "|---|---|---|---|",
        f"| plain push (no `rollout`) | {p['p50_ms']:.0f} ms | {p['p99_ms']:.0f} ms | 1.00× |",
        f"| staged, 10 % → 50 % → 100 %, zero pauses | {s['p50_ms']:.0f} ms | {s['p99_ms']:.0f} ms | {r['ratio_p50']:.2f}× |",
        "",
        "Reproduce (release binaries; needs `tests/k8s/apiserver.sh install`):",
        "",
        "```sh",
        f"bench/rollout.py --control-plane target/release/control-plane --data-plane target/release/data-plane "
        f"--swarm target/release/swarm --clients {r['clients']} --reps {r['reps']} --write-md BENCHMARKS.md",
        "```",
        "",
        "Each step waits for every data plane of its share to ACK, then for the leader's next look at the table (a",
        "reconcile woken by the ACKs, at most every 250 ms, or its 500 ms recheck), and is recorded in the status before",
        "it is served: about two status writes and two looks per step.",
        END,
    ])


def write_md(path: Path, section: str) -> None:
    text = path.read_text()
    if BEGIN in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
