"""``programming``: end-to-end programming latency of the L4 proxy (new connection → new endpoint).

Each size runs twice: one netplane process, and netplane with ``--workers 2``
(the owner sends each change on to its workers: one more hop).

Per cluster size, ``setup`` starts ``python -m bench.progfake serve`` on the
load core: a fake Kubernetes API server (FakeKube, HTTPS, watches) holding N
ClusterIP Services (ClusterIPs from 127.77.128.1, one TCP port, 18080) with
an EndpointSlice of 10 endpoints each, two groups of 10 backends on loopback
that answer with their group's name, and a line-protocol control channel.
Each run starts ``netplane run --kubeconfig K --mode local`` on the server
core, waits for /readyz and until all N ClusterIP listeners are bound
(counted in /proc/net/tcp: /debug/state at 10k Services is a 44 MB document
whose rendering stalls netplane for seconds), then runs ``python -m
bench.progfake measure`` on the load core. That client times idle probes
(one new TCP connection through the proxy, read to EOF) for a baseline, then
moves the measured Service's EndpointSlice to the other backend group
through the control channel (T0: CLOCK_MONOTONIC when the fake server stored
the object, taken in that process; the clock is system-wide on Linux) and
probes back to back until an answer comes from the new group (T1).

Latency = T1 - T0: the watch event leaving the fake server, netplane's
reflector, state, table and proxy route swap, and the new connection through
the proxy to the backend.

DNS, the issue's other half (b): the same client, run again with
``--dns-port``, flips the EndpointSlice of a headless Service (``dns-probe``)
between the two groups and asks netplane's DNS for its name (one UDP A query
per probe, back to back) until the answer lists the new group's addresses:
the watch event, state, table, the DNS zone's re-derivation of that service
and the answer cache dropping its names.
"""

from __future__ import annotations

import ipaddress
import json
import os
import struct
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import NETPLANE, Context, Metric, Proc, Scenario, latency_series, netplane_cmd

PER_SLICE = 10
PERCENTILES = ("p50", "p99", "max")
STAGE = "end to end, new connection"
DNS_STAGE = "end to end, DNS answer (headless)"
CLUSTER_NET = ipaddress.IPv4Network("127.77.128.0/17")  # bench/progfake.py's ClusterIPs
WORKERS = 2
# The same daemon with --workers 2: each change takes one more hop, owner to
# worker, before it reaches the listeners (the "peer" column is this one).
MULTI = f"netplane --workers {WORKERS}"


def _sizes(ctx: Context) -> tuple[list[int], int]:
    """Cluster sizes (Services) and recorded changes per run."""
    return ([100, 300], 20) if ctx.quick else ([1_000, 10_000], 300)


class Programming(Scenario):
    name = "programming"
    title = "Programming latency, end to end (L4: a new connection reaches the new endpoint)"
    description = (
        "A fake Kubernetes API server process (bench/progfake.py: FakeKube over HTTPS with "
        "watches, load core) holds N ClusterIP Services in 127.77.128.0/17 (one TCP port) "
        "with EndpointSlices of 10 endpoints, plus two groups of 10 loopback backends that "
        "answer with their group's name. `netplane run --kubeconfig K --mode local` (L4 proxy "
        "and DNS on, ingress off; server core) binds every ClusterIP:port; measuring starts "
        "once all N listen. A client on the load core moves one Service's EndpointSlice to "
        "the other group through the fake server's control channel, then opens new "
        "connections to the ClusterIP back to back until one reaches the new group. Latency: "
        "from the fake server storing the object (CLOCK_MONOTONIC, shared by both processes) "
        "to that connection's answer; also given, to when that connection was opened. 20 ms "
        "between changes, 5 unrecorded warm-up changes per run, 2 s to give up (a failure). "
        "The probe (one new connection through the proxy, idle) is timed on its own: it is "
        "the resolution and the floor of every latency. DNS (b): the same client then flips the "
        "EndpointSlice of a headless Service (`dns-probe`) and sends UDP A queries for its name "
        "back to back until the answer lists the new group; same clock, pause and give-up."
    )
    peer_note = (
        "None measurable here: kube-proxy's programming latency needs a real cluster "
        "(its SLO figure, network programming latency p99, is measured by clusterloader2). "
        "Absolute figures; target p99 < 10 ms at 10,000 Services. The second column is "
        f"netplane itself with --workers {WORKERS} (server core shared by the owner and its "
        "workers): the cost of the owner-to-worker hop."
    )
    sides = (NETPLANE, MULTI)
    warmup_runs = 0  # every run starts a fresh netplane and makes warm-up changes first
    budget_s = 600.0  # two sides: one process, and --workers 2

    def __init__(self) -> None:
        self.fakes: dict[int, tuple[Proc, Path, Path]] = {}  # size -> (proc, kubeconfig, ready)

    def metrics(self, ctx: Context) -> list[Metric]:
        sizes, _ = _sizes(ctx)
        out = []
        for n in sizes:
            for p in PERCENTILES:
                out.append(
                    Metric(f"e2e_{p}_ms@{n}", "ms", "lower", f"change → new conn {p}, {n:,} svc")
                )
            for p in ("p50", "p99"):
                title = f"change → first conn to reach it opened, {p}, {n:,} svc"
                out.append(Metric(f"open_{p}_ms@{n}", "ms", "lower", title))
            out.append(
                Metric(f"failures@{n}", "changes", "lower", f"changes not seen in 2 s, {n:,} svc")
            )
            for p in ("p50", "p99"):
                title = f"one new conn through the proxy, idle, {p}, {n:,} svc"
                out.append(Metric(f"probe_{p}_ms@{n}", "ms", "lower", title))
            out.append(
                Metric(f"ready_s@{n}", "s", "lower", f"start → ready and listening, {n:,} svc")
            )
            # DNS: (b) a headless Service's EndpointSlice change until DNS answers the new address
            for p in PERCENTILES:
                title = f"change → DNS answers the new address {p}, {n:,} svc"
                out.append(Metric(f"dns_{p}_ms@{n}", "ms", "lower", title))
            out.append(
                Metric(
                    f"dns_failures@{n}",
                    "changes",
                    "lower",
                    f"DNS changes not seen in 2 s, {n:,} svc",
                )
            )
            out.append(
                Metric(
                    f"dns_probe_p50_ms@{n}", "ms", "lower", f"one DNS query, idle, p50, {n:,} svc"
                )
            )
        return out

    def params(self, ctx: Context) -> dict[str, Any]:
        sizes, changes = _sizes(ctx)
        return {
            "services": sizes,
            "endpoints_per_slice": PER_SLICE,
            "changes": changes,
            "warmup_changes": 5,
            "pause_ms": 20,
            "give_up_s": 2,
            "rlimit_nofile_soft_hard": _nofile(),  # inherited; netplane lifts soft to hard
        }

    def _env(self, ctx: Context) -> dict[str, str]:
        # The repository's netplane and bench, whatever else is installed.
        path = os.environ.get("PYTHONPATH")
        return {**os.environ, "PYTHONPATH": str(ctx.root) + (os.pathsep + path if path else "")}

    def setup(self, ctx: Context) -> None:
        sizes, _ = _sizes(ctx)
        for n in sizes:
            kubeconfig = ctx.workdir / f"prog-{n}-kubeconfig"
            ready = ctx.workdir / f"prog-{n}-ready.json"
            argv = [
                *ctx.pin("load"),
                sys.executable,
                "-m",
                "bench.progfake",
                "serve",
                "--services",
                str(n),
                "--backend-port",
                str(ctx.free_port()),
                "--kubeconfig",
                str(kubeconfig),
                "--ready",
                str(ready),
            ]
            proc = ctx.procs.start(
                argv,
                name=f"progfake-{n}",
                log=ctx.workdir / f"progfake-{n}.log",
                env=self._env(ctx),
                cwd=ctx.root,
            )
            self.fakes[n] = (proc, kubeconfig, ready)
        deadline = time.monotonic() + 120  # for all of them together
        for n, (proc, _, ready) in self.fakes.items():
            ctx.wait_file(ready, proc, max(deadline - time.monotonic(), 0), f"progfake serve ({n})")

    def run_side(self, ctx: Context, side: str, index: int) -> dict[str, float]:
        sizes, changes = _sizes(ctx)
        values: dict[str, float] = {}
        for n in sizes:
            proc, kubeconfig, ready = self.fakes[n]
            if proc.popen.poll() is not None:
                raise RuntimeError(f"progfake serve ({n}) exited; see {proc.log}")
            target = json.loads(ready.read_text())
            if listening(target["port"]):
                raise RuntimeError(
                    f"something already listens on ClusterIPs, port {target['port']}"
                )
            port = ctx.free_port()
            dns_port = ctx.free_port()
            argv = [
                *ctx.pin("server"),
                *netplane_cmd(),
                "run",
                "--kubeconfig",
                str(kubeconfig),
                "--mode",
                "local",
                "--service-cidr",
                "127.77.0.0/16",
                "--dns",
                f"127.0.0.1:{dns_port}",
                "--ingress-http",
                "off",
                "--ingress-https",
                "off",
                "--admin",
                f"127.0.0.1:{port}",
                "--shutdown-grace",
                "1",
                "--workers",
                str(WORKERS if side == MULTI else 1),
            ]
            np = ctx.procs.start(
                argv,
                name="netplane",
                log=ctx.workdir / f"prog-netplane-{n}-{index}-{side.split()[-1]}.log",
                env=self._env(ctx),
                cwd=ctx.workdir,
            )
            try:
                ctx.wait_http(f"http://127.0.0.1:{port}/readyz", 200, timeout=180, proc=np)
                # every worker binds every ClusterIP (SO_REUSEPORT)
                _wait_bound(n * (WORKERS if side == MULTI else 1), target["port"], np, timeout=120)
                values[f"ready_s@{n}"] = time.perf_counter() - np.started
                time.sleep(0.5)  # let the start-up's last work (GC freeze, logging) settle
                tag = f"{index}-{WORKERS}w" if side == MULTI else str(index)
                doc = self._measure(ctx, ready, n, tag, changes)
                dns_doc = self._measure(ctx, ready, n, tag, changes, dns_port=dns_port)
            finally:
                ctx.procs.stop(np)
            if not doc["latencies_ms"]:
                raise RuntimeError(f"no change reached the new endpoint at {n} services")
            for p in PERCENTILES:
                values[f"e2e_{p}_ms@{n}"] = float(doc[f"{p}_ms"])
            values[f"open_p50_ms@{n}"] = float(doc["open_p50_ms"])
            values[f"open_p99_ms@{n}"] = float(doc["open_p99_ms"])
            values[f"failures@{n}"] = float(doc["failures"])
            values[f"probe_p50_ms@{n}"] = float(doc["baseline_p50_ms"])
            values[f"probe_p99_ms@{n}"] = float(doc["baseline_p99_ms"])
            ctx.echo(
                f"    {side}, {n:,} services: p50 {doc['p50_ms']:.2f} ms, p99 {doc['p99_ms']:.2f} ms, "
                f"max {doc['max_ms']:.2f} ms, {doc['failures']} failures"
            )
            if dns_doc["latencies_ms"]:
                for p in PERCENTILES:
                    values[f"dns_{p}_ms@{n}"] = float(dns_doc[f"{p}_ms"])
            values[f"dns_failures@{n}"] = float(dns_doc["failures"])
            values[f"dns_probe_p50_ms@{n}"] = float(dns_doc["baseline_p50_ms"])
            ctx.echo(
                f"    {side}, {n:,} services, DNS: p50 {dns_doc['p50_ms']:.2f} ms, "
                f"p99 {dns_doc['p99_ms']:.2f} ms, {dns_doc['failures']} failures"
            )
        return values

    def _measure(
        self, ctx: Context, ready: Path, n: int, tag: str, changes: int, *, dns_port: int = 0
    ) -> dict[str, Any]:
        """Run ``progfake measure`` on the load core (L4, or DNS with ``dns_port``)."""
        kind = "dns" if dns_port else "l4"
        out = ctx.workdir / f"prog-{kind}-{n}-{tag}.json"
        argv = [
            *ctx.pin("load"), sys.executable, "-m", "bench.progfake", "measure",
            "--ready", str(ready), "--changes", str(changes), "--warmup", "5",
            "--pause-ms", "20", "--give-up-s", "2",
        ]  # fmt: skip
        if dns_port:
            argv += ["--dns-port", str(dns_port)]
        client = ctx.procs.start(
            argv,
            name=f"progfake-measure-{kind}",
            log=ctx.workdir / f"prog-measure-{kind}-{n}-{tag}.log",
            stdout=out,
            env=self._env(ctx),
            cwd=ctx.root,
        )
        code = ctx.procs.wait(client, timeout=30 + changes * 2.1)
        if code != 0:
            raise RuntimeError(f"progfake measure exited with {code}; see {client.log}")
        return json.loads(out.read_text())

    def teardown(self, ctx: Context) -> None:
        for proc, _, _ in self.fakes.values():
            ctx.procs.stop(proc)
        self.fakes.clear()

    def series(self, ctx: Context, samples: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
        sizes, _ = _sizes(ctx)
        out = latency_series(
            samples,
            sizes,
            metric="e2e",
            group="{n:,} services, end to end",
            stage=STAGE,
            per_slice=PER_SLICE,
            percentiles=PERCENTILES,
        )
        # DNS (b): the same plots, one more stage
        dns = latency_series(
            samples,
            sizes,
            metric="dns",
            group="{n:,} services, DNS answer",
            stage=DNS_STAGE,
            per_slice=PER_SLICE,
            percentiles=PERCENTILES,
        )
        out["latency_percentiles"] += dns["latency_percentiles"]
        out["programming_latency"]["points"] += dns["programming_latency"]["points"]
        return out


def _nofile() -> list[int]:
    import resource

    return list(resource.getrlimit(resource.RLIMIT_NOFILE))


def listening(port: int, net: ipaddress.IPv4Network = CLUSTER_NET) -> int:
    """How many TCP sockets listen on ``port`` at an address in ``net`` (/proc/net/tcp).

    Read from the kernel rather than /debug/state, which at 10k Services is a
    44 MB document whose rendering stalls netplane's loop for seconds.
    """
    count = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split(maxsplit=4)
            if fields[3] != "0A":  # LISTEN
                continue
            addr, _, hexport = fields[1].partition(":")
            if int(hexport, 16) != port:
                continue
            ip = ipaddress.IPv4Address(struct.pack("<I", int(addr, 16)))
            if ip in net:
                count += 1
    return count


def _wait_bound(n: int, port: int, proc: Proc, timeout: float) -> None:
    """Wait until all ``n`` ClusterIP listeners are bound."""
    deadline = time.monotonic() + timeout
    while (bound := listening(port)) < n:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"netplane exited with {proc.popen.returncode}; see {proc.log}")
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"netplane listens on {bound} of {n} ClusterIPs after {timeout:.0f} s"
            )
        time.sleep(0.1)
