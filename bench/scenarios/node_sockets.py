"""``node_sockets``: what 10k services cost the L4 proxy in node mode, against one socket each.

Each side runs in a network namespace of its own that the scenario creates
(loopback only; deleted at the end), with the scale scenario's fake API
server (bench/fakeapi.py: N ClusterIP Services with one port, 80, in
10.96.0.0/12, EndpointSlices of 10 endpoints) inside it. One port each, so
that one socket per frontend fits under the 20,000 open files these
machines allow a process (and no CAP_SYS_RESOURCE to raise it): with two
ports each, 10k Services cannot be served that way at all here.

- node mode: ``netplane run --mode node`` adds the AnyIP route for the
  service CIDR itself and shares one wildcard socket per port;
- one socket per frontend: ``--mode local`` binds every ClusterIP:port on
  its own, with the same CIDR made local by the scenario (``ip route add
  local 10.96.0.0/12 dev lo``), which is how node mode worked before.

``python -m bench.netns_probe`` inside the namespace spawns netplane and
reports start → ready, ready → every frontend served, the sockets held,
RSS and CPU seconds (see that module).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.harness import Context, Metric, Scenario, netplane_cmd

NODE = "netplane node mode"
PER_FRONTEND = "one socket per frontend"
CIDR = "10.96.0.0/12"
PORTS_PER_SERVICE = 1  # port 80 of bench/state_scale.py's Services
PER_SLICE = 10


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def namespaces_unavailable() -> str | None:
    """Why this machine cannot run the scenario, or None."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    probe = _ip("netns", "add", f"npbprobe{os.getpid()}", check=False)
    if probe.returncode != 0:
        return f"cannot create network namespaces: {probe.stderr.strip()}"
    _ip("netns", "del", f"npbprobe{os.getpid()}", check=False)
    return None


class NodeSockets(Scenario):
    name = "node_sockets"
    title = "Node mode at scale: sockets, memory and time to serve every ClusterIP"
    description = (
        "In a network namespace per side, the scale scenario's fake API server holds N "
        "ClusterIP Services (one port, so N frontends) with EndpointSlices of 10 "
        "endpoints. `netplane run --kubeconfig K` (proxy on, ingress and DNS off; server "
        "core) runs in node mode (AnyIP route, one wildcard socket per port) or binds one "
        "socket per ClusterIP:port (local mode over the same CIDR made local by hand). "
        "Measured inside the namespace by bench/netns_probe.py: process start → /readyz, "
        "/readyz → all N frontends served, listening sockets, VmRSS and CPU seconds then. "
        "One port per Service keeps one socket per frontend under the machine's limit of "
        "20,000 open files."
    )
    sides = (NODE, PER_FRONTEND)
    peer_note = (
        "The peer is netplane itself binding one socket per frontend, as node mode did "
        "before the shared sockets and as local mode still does; kube-proxy holds no "
        "sockets per service (it programs the kernel), so it is no peer here."
    )
    budget_s = 600.0

    def __init__(self) -> None:
        self.namespaces: dict[str, str] = {}
        self.kubeconfigs: dict[str, Path] = {}

    def size(self, ctx: Context) -> int:
        return 200 if ctx.quick else 10_000

    def metrics(self, ctx: Context) -> list[Metric]:
        return [
            Metric("ready_s", "s", "lower", "process start → /readyz 200"),
            Metric("program_s", "s", "lower", "/readyz → every frontend served"),
            Metric("listeners", "sockets", "lower", "listening sockets of the proxy"),
            Metric("sockets", "sockets", "lower", "socket descriptors of the process"),
            Metric("rss_mb", "MB", "lower", "VmRSS with every frontend served"),
            Metric("cpu_s", "s", "lower", "CPU time until every frontend is served"),
        ]

    def params(self, ctx: Context) -> dict[str, Any]:
        n = self.size(ctx)
        return {
            "services": n,
            "frontends": n * PORTS_PER_SERVICE,
            "endpoints": n * PER_SLICE,
            "service_cidr": CIDR,
        }

    def setup(self, ctx: Context) -> None:
        why = namespaces_unavailable()
        if why:
            raise RuntimeError(f"node_sockets {why}")
        tag = os.getpid() % 100000
        for side, short in ((NODE, "n"), (PER_FRONTEND, "s")):
            ns = f"npb{short}{tag}"
            _ip("netns", "add", ns)
            self.namespaces[side] = ns
            _ip("-n", ns, "link", "set", "lo", "up")
            if side == PER_FRONTEND:
                _ip("-n", ns, "route", "add", "local", CIDR, "dev", "lo", "table", "local")
            kubeconfig = ctx.workdir / f"node-sockets-{short}.kubeconfig"
            self.kubeconfigs[side] = kubeconfig
            argv = [
                *ctx.pin("load"), "ip", "netns", "exec", ns, sys.executable, "-m",
                "bench.fakeapi", "--services", str(self.size(ctx)),
                "--endpoints-per-slice", str(PER_SLICE), "--kubeconfig", str(kubeconfig),
                "--ports-per-service", str(PORTS_PER_SERVICE),
            ]  # fmt: skip
            env = {**os.environ, "PYTHONPATH": str(ctx.root)}
            api = ctx.procs.start(
                argv, name=f"fakeapi-{short}", log=ctx.workdir / f"fakeapi-{short}.log",
                env=env, cwd=ctx.root,
            )  # fmt: skip
            ctx.wait_file(kubeconfig, api, 180, "fake API server")

    def run_side(self, ctx: Context, side: str, index: int) -> dict[str, float]:
        n = self.size(ctx)
        ns = self.namespaces[side]
        admin = 10256 + index  # inside the namespace: nothing else there
        mode = "node" if side == NODE else "local"
        command = [
            *ctx.pin("server"), *netplane_cmd(), "run",
            "--kubeconfig", str(self.kubeconfigs[side]), "--mode", mode,
            "--service-cidr", CIDR, "--ingress-http", "off", "--ingress-https", "off",
            "--dns", "off", "--admin", f"127.0.0.1:{admin}", "--shutdown-grace", "1",
        ]  # fmt: skip
        out = ctx.workdir / f"node-sockets-{mode}-{index}.json"
        argv = [
            "ip", "netns", "exec", ns, sys.executable, "-m", "bench.netns_probe",
            "--admin-port", str(admin), "--frontends", str(n * PORTS_PER_SERVICE),
            "--", *command,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ctx.root)}
        proc = ctx.procs.start(
            argv, name=f"probe-{mode}", log=ctx.workdir / f"node-sockets-{mode}-{index}.log",
            stdout=out, env=env, cwd=ctx.workdir,
        )  # fmt: skip
        status = ctx.procs.wait(proc, timeout=400)
        lines = out.read_text().strip().splitlines()
        if status != 0 or not lines:
            raise RuntimeError(f"netns probe failed ({status}); see {proc.log}")
        return json.loads(lines[-1])

    def teardown(self, ctx: Context) -> None:
        ctx.procs.stop_all()  # the fake API servers live in the namespaces
        for ns in self.namespaces.values():
            _ip("netns", "del", ns, check=False)
        self.namespaces.clear()
