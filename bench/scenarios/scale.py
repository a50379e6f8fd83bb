"""``scale``: initial sync of N Services and N x 10 endpoints through the Kubernetes API path.

The fake API server (bench/fakeapi.py, a separate process on the load core)
serves the objects over HTTPS with list pagination and watches; netplane runs
in node mode against it on the server core. Measured: process start to
/readyz 200, netplane's CPU seconds until then, and VmRSS once ready. The
peer is an anchor, not a process: CoreDNS's published memory formula.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import NETPLANE, Context, Metric, Proc, Scenario, netplane_cmd, vmrss_mb

COREDNS = "CoreDNS (published formula)"
PER_SLICE = 10


def coredns_memory_mb(pods: int, services: int) -> float:
    """CoreDNS's scaling guide: (pods + services) * 0.000858 MB + 49.1 MB."""
    return (pods + services) * 0.000858 + 49.1


def settled_rss_mb(pid: int, *, timeout: float = 5.0, step: float = 0.25) -> float:
    """VmRSS once it stops moving: /readyz answers before the post-sync collection
    and heap trim have run, and a reading taken then is the parsing peak."""
    last = vmrss_mb(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(step)
        now = vmrss_mb(pid)
        if abs(now - last) < 0.5:
            return now
        last = now
    return last


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ScaleSync(Scenario):
    name = "scale"
    title = "Scale: initial sync through the Kubernetes API"
    description = (
        "A fake Kubernetes API server process (HTTPS, paginated lists, watches; pinned to the "
        "load core) holds N ClusterIP Services and N EndpointSlices of 10 endpoints. "
        "`netplane run --kubeconfig K --mode node --service-cidr 10.96.0.0/12` with proxy, "
        "ingress and DNS off runs on the server core. Measured: process start → /readyz 200 "
        "(the fake server, written in Python, is on that path, so this is an upper bound), "
        "netplane's CPU time until ready, and its VmRSS once ready."
    )
    sides = (NETPLANE, COREDNS)
    peer_note = (
        "The peer is CoreDNS's published memory formula from its scaling guide, "
        "(pods + services) * 0.000858 MB + 49.1 MB with pods = endpoints, not a run: "
        "CoreDNS is not packaged here. It gives the RSS row only."
    )
    budget_s = 420.0

    def __init__(self) -> None:
        self.kubeconfig: Path | None = None
        self.api: Proc | None = None

    def size(self, ctx: Context) -> int:
        return 200 if ctx.quick else 10_000

    def metrics(self, ctx: Context) -> list[Metric]:
        return [
            Metric("sync_s", "s", "lower", "process start → /readyz 200"),
            Metric("cpu_s", "s", "lower", "netplane CPU time until ready"),
            Metric("rss_mb", "MB", "lower", "VmRSS when ready"),
        ]

    def params(self, ctx: Context) -> dict[str, Any]:
        n = self.size(ctx)
        return {"services": n, "endpoint_slices": n, "endpoints": n * PER_SLICE}

    def setup(self, ctx: Context) -> None:
        n = self.size(ctx)
        self.kubeconfig = ctx.workdir / "scale-kubeconfig"
        argv = [
            *ctx.pin("load"),
            sys.executable,
            "-m",
            "bench.fakeapi",
            "--services",
            str(n),
            "--endpoints-per-slice",
            str(PER_SLICE),
            "--kubeconfig",
            str(self.kubeconfig),
        ]
        env = {**os.environ, "PYTHONPATH": str(ctx.root)}
        self.api = ctx.procs.start(
            argv, name="fakeapi", log=ctx.workdir / "fakeapi.log", env=env, cwd=ctx.root
        )
        ctx.wait_file(self.kubeconfig, self.api, 120, "fake API server")

    def run_side(self, ctx: Context, side: str, index: int) -> dict[str, float]:
        n = self.size(ctx)
        if side == COREDNS:
            return {"rss_mb": coredns_memory_mb(pods=n * PER_SLICE, services=n)}
        assert self.kubeconfig is not None
        port = ctx.free_port()
        argv = [
            *ctx.pin("server"),
            *netplane_cmd(),
            "run",
            "--kubeconfig",
            str(self.kubeconfig),
            "--mode",
            "node",
            "--service-cidr",
            "10.96.0.0/12",
            "--proxy",
            "off",
            "--ingress-http",
            "off",
            "--ingress-https",
            "off",
            "--dns",
            "off",
            "--admin",
            f"127.0.0.1:{port}",
            "--shutdown-grace",
            "1",
        ]
        proc = ctx.procs.start(
            argv, name="netplane", log=ctx.workdir / f"scale-{index}.log", cwd=ctx.workdir
        )
        try:
            sync = ctx.wait_http(f"http://127.0.0.1:{port}/readyz", 200, timeout=180, proc=proc)
            cpu = cpu_seconds(proc.pid)
            rss = settled_rss_mb(proc.pid)
        finally:
            ctx.procs.stop(proc)
        return {"sync_s": sync, "cpu_s": cpu, "rss_mb": rss}

    def teardown(self, ctx: Context) -> None:
        if self.api is not None:
            ctx.procs.stop(self.api)
            self.api = None
