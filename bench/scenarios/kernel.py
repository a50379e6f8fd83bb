"""``kernel``: the kernel L4 datapath (nftables DNAT) against the user-space proxy and no proxy.

Everything runs in network namespaces that the scenario creates and deletes
(needs root, ``ip`` and ``nft``), three per chain, joined by veth pairs:

    client ns 198.18.1.2 ── 198.18.1.1 node ns 198.18.2.1 ── 198.18.2.2 endpoint ns

The client and endpoint namespaces route everything through the node
namespace, which forwards (``ip_forward`` on) and runs ``netplane run --mode
node`` (proxy on, DNS and ingress off, server core) with the service CIDR
198.19.0.0/16 (its AnyIP route). Every chain has the same addresses, so
that the sides can be up at once and take turns:

- ``netplane`` (chain k): ``--l4-datapath nftables``. The ClusterIP is DNAT'ed
  in the node's prerouting hook to the endpoint and forwarded; the proxy's
  listener behind it must see no connection (checked: its ``tcp_accepted``
  stays 0, else the round fails).
- ``netplane userspace`` (chain u): ``--l4-datapath userspace``: the asyncio
  proxy (splice relay) accepts on the ClusterIP and connects to the endpoint.
- ``direct`` (chain k too): the client connects to the endpoint's address,
  forwarded by the same node namespace without NAT. The netplane table's
  hooks are registered there, so conntrack tracks these connections as well:
  the ratio ``netplane``/``direct`` is the cost of the service lookup and DNAT.

Speed, interleaved: one Service (ClusterIP 198.19.0.10, ports 80 → 8080 and
5201 → 5201, one endpoint 198.18.2.2), given to netplane as manifests
(``-f``). Per chain, the endpoint namespace runs nginx (1 worker, a small
200, access log off; server core) and ``iperf3 -s`` (load core, beside its
client, as in ``l4``). Each round starts both netplanes, warms every side
up (1 s of wrk), then runs each load twice per side in ABBA order, from the
client namespace on the load core; a side's figure is the mean of its two:

- new connections/s: ``wrk -t1 -c50 -H "Connection: close"`` (one request per
  connection), and wrk's CPU share of the load core: a veth hands packets on
  in the sender's softirq, so the node's forwarding and NAT of the client's
  packets run on the load core too, and wrk near 100% means that core, not
  the datapath, set the rate;
- bulk: ``iperf3 -c TARGET --json``, one stream, client to server, Gbit/s
  received.

Each proxied side's ratio to ``direct`` of the same round is reported too
(the issue's bar: the kernel datapath >= 0.9x direct on both). The nodes'
conntrack TIME_WAIT timeout is 2 s (default 120 s): at tens of thousands of
connections per second the default would fill the table (262,144 entries)
within a round and drop new connections, for ``direct`` as for ``netplane``.
And the endpoint namespaces keep at most 1,024 TIME_WAIT sockets
(``tcp_max_tw_buckets``; nginx closes first, so they are the server's): one
client address cycles its 28,000 ephemeral ports through one server port
several times a round, and with conntrack on the path (``netplane`` and
``direct``, not the user-space chain) a new SYN on a 4-tuple the server
still holds in TIME_WAIT stalls; on the 2-core bench machine rates fell from
about 28,000 to 3,000-8,000 connections/s from the second run on, on both
sides alike.

Programming latency, in a chain of its own (p), per cluster size N (1,000
and 10,000 Services; 100 with ``--quick``): ``bench/progfake.py serve`` in
the node namespace (load core) holds N ClusterIP Services from
198.19.128.1 (one TCP port, 18080) with EndpointSlices of 10 endpoints, its
control channel on 198.18.1.1; ``progfake backends`` in the endpoint
namespace (load core, as the fake server and the client: netplane has the
server core to itself) serves the two groups of 10 backends (198.18.31.1-10
and 198.18.32.1-10, routed by the node). netplane (``--l4-datapath nftables``,
``--kubeconfig`` on the fake server at 127.0.0.1 of the node namespace)
starts; once /readyz answers (the first full transaction is in), ``progfake
measure`` in the client namespace (load core) flips the measured Service's
EndpointSlice between the groups and opens new connections to its ClusterIP
back to back until one reaches the new group: T1 - T0 from the fake server
storing the object (CLOCK_MONOTONIC, system-wide) to that answer, through
the watch, netplane's state and table, the incremental nftables transaction
and a new connection DNAT'ed by the node. 20 ms between changes, 5 warm-up
changes, 2 s to give up (a failure); the idle probe's own round trip is the
floor.

Ruleset and sync times, same netplane: ``last_full_sync_ms`` of
/debug/state (``planes.nftables``) once ready (the full transaction at
start, computing it included), then a separate series of changes, each
followed by reading ``last_sync_ms`` and ``last_commands`` once the
incremental transaction is counted (polled 0.3 s after the change, so that
rendering the state does not land inside the transaction), and at the end
rules and bytes of ``nft list table inet netplane-N`` (``Nft.ruleset_size``,
run in the node namespace). Last, SIGTERM → exit: netplane removes its table
when it stops, and is given 120 s for it (a table left behind would be
adopted by the next start; the scenario deletes one, saying so).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bench.harness import NETPLANE, Context, Metric, Proc, Scenario, latency_series, netplane_cmd
from bench.scenarios.l4 import parse_wrk, program, run_load
from netplane.testing.netns import enter_netns

T = TypeVar("T")

USERSPACE = "netplane userspace"
DIRECT = "direct"
#: which chain of namespaces each side's load goes through
CHAIN_OF = {NETPLANE: "k", USERSPACE: "u", DIRECT: "k"}

CLIENT_IP, NODE_CLIENT_IP = "198.18.1.2", "198.18.1.1"
NODE_EP_IP, EP_IP = "198.18.2.1", "198.18.2.2"
SERVICE_CIDR = "198.19.0.0/16"
CLUSTER_IP = "198.19.0.10"
HTTP_PORT, HTTP_TARGET = 80, 8080
IPERF_PORT = 5201
ADMIN_PORT = 10256  # inside each node namespace: nothing else there
#: the nodes' conntrack TIME_WAIT timeout, and the TIME_WAIT sockets an endpoint
#: namespace keeps (see the module docstring)
TIME_WAIT_S = 2
TW_BUCKETS = 1024
#: load runs per measure, side and round, in ABBA order (full runs)
REPS = 2
#: SIGTERM → SIGKILL for netplane: its clean stop removes the table, which takes
#: seconds at 10,000 Services; killed, it would leave the table to the next start
STOP_TIMEOUT_S = 120.0

PROG_FIRST_IP = "198.19.128.1"
PROG_GROUPS = ("198.18.31.", "198.18.32.")
PROG_BACKEND_PORT = 8080  # + the size's index: one backends process per size
PER_SLICE = 10
PERCENTILES = ("p50", "p99", "max")
STAGE = "end to end, new connection, kernel datapath (nftables)"


def _sizes(ctx: Context) -> tuple[list[int], int, int]:
    """Cluster sizes (Services), recorded changes per run, sync-time changes per run."""
    return ([100], 10, 5) if ctx.quick else ([1_000, 10_000], 300, 20)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def _get(port: int, path: str, timeout: float = 30.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@dataclass(frozen=True)
class Chain:
    """Three namespaces: client → node → endpoint."""

    client: str
    node: str
    endpoint: str


class KernelBench(Scenario):
    name = "kernel"
    title = "Kernel L4 datapath (nftables): speed against user space and direct, programming"
    description = (
        "In network namespaces (client → node → endpoint, veth pairs, 198.18.0.0/15; the node "
        "forwards and runs `netplane run --mode node`, service CIDR 198.19.0.0/16, server "
        "core), one Service (ClusterIP 198.19.0.10, one endpoint) served by the kernel "
        "datapath (`--l4-datapath nftables`: DNAT in the node; `netplane`), by the user-space "
        "proxy (`--l4-datapath userspace`, its own identical chain) and `direct` (the client "
        "connects to the endpoint's address through the kernel side's node, no NAT). Backends "
        "in the endpoint namespace: nginx (1 worker, small 200) and `iperf3 -s` (load core). "
        "Interleaved rounds, each load twice per side in ABBA order from the client namespace "
        '(load core): new connections/s (`wrk -t1 -c50 -H "Connection: close"`), bulk '
        "(`iperf3`, 1 stream), and each side's ratio to direct in the same round. Conntrack "
        f"TIME_WAIT {TIME_WAIT_S} s in the nodes so that the table never fills, and at most "
        f"{TW_BUCKETS:,} TIME_WAIT sockets in the endpoint namespaces (with conntrack on the "
        "path, a SYN reusing a 4-tuple the server holds in TIME_WAIT stalls). Programming, in "
        "a third chain: bench/progfake.py's fake API server in the node namespace with N "
        "ClusterIP Services of 10 endpoints (N = 1,000 and 10,000; quick: 100), its two "
        "backend groups in the endpoint namespace; netplane with the kernel datapath; `progfake "
        "measure` in the client namespace flips one EndpointSlice between the groups and "
        "opens new connections through the ClusterIP until one reaches the new group (the "
        "fake server's apply → that answer, p50/p99/max; 300 changes, quick 10). Then the "
        "table: the full sync at start (`last_full_sync_ms`), incremental syncs "
        "(`last_sync_ms` and commands over 20 more changes, quick 5) and the rules and bytes "
        "of `nft list table inet netplane-N`."
    )
    sides = (NETPLANE, USERSPACE, DIRECT)
    peer_note = (
        "`netplane` is the kernel datapath (nftables); `netplane userspace` the asyncio proxy "
        "of the same netplane in an identical chain of namespaces; `direct` the same path "
        "through the kernel side's node without a Service (no NAT, conntrack on). The "
        "programming, ruleset and sync rows are the kernel datapath's alone. Bars (issue): "
        "new connections/s and bulk >= 0.9x direct; programming p99 < 50 ms at 10,000 Services."
    )
    packages = ("nginx", "wrk", "iperf3", "nftables", "iproute2")
    warmup_runs = 0  # each round warms every side up (fresh netplanes per round)
    budget_s = 1200.0
    interleaved = True

    def __init__(self) -> None:
        self.chains: dict[str, Chain] = {}
        self.namespaces: list[str] = []
        self.pools: dict[str, concurrent.futures.ThreadPoolExecutor] = {}
        self.manifests: Path | None = None
        self.backends: list[Proc] = []
        self.fakes: dict[int, tuple[Proc, Path, Path]] = {}  # size -> (proc, kubeconfig, ready)
        self.load_cpu = 0.0

    # -- sizes and metrics ---------------------------------------------------------------

    def durations(self, ctx: Context) -> dict[str, float]:
        if ctx.quick:
            return {"wrk_s": 2, "warmup_s": 1, "iperf_s": 2}
        return {"wrk_s": 5, "warmup_s": 1, "iperf_s": 5}

    def metrics(self, ctx: Context) -> list[Metric]:
        out = [
            Metric("conn_per_s", "conn/s", "higher", "new TCP connections/s (1 request each)"),
            Metric("conn_vs_direct", "x", "higher", "new connections/s, ratio to direct"),
            Metric("conn_load_cpu_pct", "%", "lower", "wrk CPU, % of the load core"),
            Metric("bulk_gbps", "Gbit/s", "higher", "bulk TCP (iperf3, 1 stream)"),
            Metric("bulk_vs_direct", "x", "higher", "bulk TCP, ratio to direct"),
        ]
        sizes, _, _ = _sizes(ctx)
        for n in sizes:
            per_size = [
                *((f"e2e_{p}_ms", "ms", f"change → new conn {p}") for p in PERCENTILES),
                ("failures", "changes", "changes not seen in 2 s"),
                ("probe_p50_ms", "ms", "one new conn through the DNAT, idle, p50"),
                ("ready_s", "s", "start → ready (the table written)"),
                ("stop_s", "s", "SIGTERM → exit (the table removed)"),
                ("full_sync_ms", "ms", "full nftables sync at start"),
                ("full_commands", "commands", "commands of the full sync"),
                ("incr_sync_p50_ms", "ms", "incremental nftables sync, p50"),
                ("incr_sync_max_ms", "ms", "incremental nftables sync, max"),
                ("incr_commands", "commands", "commands per incremental sync, median"),
                ("sync_failures", "transactions", "failed nftables transactions"),
                ("rules", "rules", "rules in `nft list table inet netplane-N`"),
                ("ruleset_kb", "KB", "size of `nft list table inet netplane-N`"),
            ]
            out += [
                Metric(f"{name}@{n}", unit, "lower", f"{title}, {n:,} svc")
                for name, unit, title in per_size
            ]
        return out

    def params(self, ctx: Context) -> dict[str, Any]:
        d = self.durations(ctx)
        sizes, changes, sync_changes = _sizes(ctx)
        return {
            "wrk": f"-t1 -c50 -d{d['wrk_s']:g}s Connection: close (warm-up {d['warmup_s']:g} s)",
            "iperf3": f"-t {d['iperf_s']:g}, 1 stream",
            "runs": "1 round (quick)"
            if ctx.quick
            else f"{ctx.runs} rounds, each load run {REPS}x per side, interleaved ABBA",
            "addresses": f"client {CLIENT_IP}, node {NODE_CLIENT_IP}/{NODE_EP_IP}, endpoint {EP_IP}",
            "service_cidr": SERVICE_CIDR,
            "cluster_ip": CLUSTER_IP,
            "conntrack_time_wait_s": TIME_WAIT_S,
            "endpoint_tcp_max_tw_buckets": TW_BUCKETS,
            "services": sizes,
            "endpoints_per_slice": PER_SLICE,
            "changes": changes,
            "sync_changes": sync_changes,
            "warmup_changes": 5,
            "pause_ms": 20,
            "give_up_s": 2,
        }

    # -- namespaces ----------------------------------------------------------------------

    def _chain(self, tag: str, chain: str) -> Chain:
        ch = Chain(f"npk{tag}{chain}c", f"npk{tag}{chain}n", f"npk{tag}{chain}e")
        for ns in (ch.client, ch.node, ch.endpoint):
            _ip("netns", "add", ns)
            self.namespaces.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", "eth0", "netns", ch.client, "type", "veth", "peer", "name", "c0",
            "netns", ch.node)  # fmt: skip
        _ip("link", "add", "eth0", "netns", ch.endpoint, "type", "veth", "peer", "name", "e0",
            "netns", ch.node)  # fmt: skip
        for ns, dev, addr in (
            (ch.client, "eth0", CLIENT_IP),
            (ch.node, "c0", NODE_CLIENT_IP),
            (ch.node, "e0", NODE_EP_IP),
            (ch.endpoint, "eth0", EP_IP),
        ):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
        _ip("-n", ch.client, "route", "add", "default", "via", NODE_CLIENT_IP)
        _ip("-n", ch.endpoint, "route", "add", "default", "via", NODE_EP_IP)
        sysctl = [
            (ch.node, "net.ipv4.ip_forward=1"),
            (ch.node, f"net.netfilter.nf_conntrack_tcp_timeout_time_wait={TIME_WAIT_S}"),
            (ch.endpoint, f"net.ipv4.tcp_max_tw_buckets={TW_BUCKETS}"),
        ]
        for ns, setting in sysctl:
            argv = ["ip", "netns", "exec", ns, "sysctl", "-qw", setting]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            if done.returncode != 0 and "nf_conntrack" in setting:
                # conntrack's sysctls appear once its module is loaded
                with contextlib.suppress(OSError):  # no modprobe: the retry fails as before
                    subprocess.run(["modprobe", "nf_conntrack"], capture_output=True, timeout=30)
                done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            if done.returncode != 0:
                raise RuntimeError(f"{ns}: sysctl {setting}: {done.stderr.strip()}")
        for ns in (ch.client, ch.node, ch.endpoint):
            self.pools[ns] = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=ns, initializer=enter_netns, initargs=(ns,)
            )
        return ch

    def _in(self, ns: str, fn: Callable[..., T], *args: Any, timeout: float = 600.0) -> T:
        """Run ``fn(*args)`` on a thread inside network namespace ``ns``."""
        return self.pools[ns].submit(fn, *args).result(timeout)

    def _exec(self, ctx: Context, ns: str, role: str) -> list[str]:
        """The prefix of a command pinned to ``role``'s core inside ``ns``."""
        return [*ctx.pin(role), "ip", "netns", "exec", ns]

    def _env(self, ctx: Context) -> dict[str, str]:
        path = os.environ.get("PYTHONPATH")
        return {**os.environ, "PYTHONPATH": str(ctx.root) + (os.pathsep + path if path else "")}

    # -- setup ---------------------------------------------------------------------------

    def setup(self, ctx: Context) -> None:
        from bench.scenarios.node_sockets import namespaces_unavailable

        why = namespaces_unavailable()
        if why:
            raise RuntimeError(f"kernel {why}")
        for tool in ("nginx", "wrk", "iperf3", "nft"):
            program(tool)
        tag = str(os.getpid() % 100000)
        for chain in ("k", "u", "p"):
            self.chains[chain] = self._chain(tag, chain)
        work = ctx.workdir / "kernel"
        work.mkdir(exist_ok=True)
        self.manifests = work / "manifests"
        self.manifests.mkdir(exist_ok=True)
        (self.manifests / "service.json").write_text(json.dumps(speed_manifests(), indent=1))
        for chain in ("k", "u"):
            self._start_backends(ctx, chain)
        self._start_fakes(ctx)

    def _start_backends(self, ctx: Context, chain: str) -> None:
        ch = self.chains[chain]
        work = ctx.workdir / "kernel" / f"nginx-{chain}"
        (work / "tmp").mkdir(parents=True, exist_ok=True)
        conf = work / "nginx.conf"
        conf.write_text(
            f"""daemon off;
master_process off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {work}/tmp/body;
    proxy_temp_path {work}/tmp/proxy;
    fastcgi_temp_path {work}/tmp/fastcgi;
    uwsgi_temp_path {work}/tmp/uwsgi;
    scgi_temp_path {work}/tmp/scgi;
    server {{
        listen {EP_IP}:{HTTP_TARGET} backlog=4096;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""
        )
        nginx = ctx.procs.start(
            [*self._exec(ctx, ch.endpoint, "server"), program("nginx"), "-p", str(work), "-c",
             str(conf), "-e", str(work / "error.log")],
            name=f"nginx-{chain}", log=work / "nginx.log",
        )  # fmt: skip
        iperf = ctx.procs.start(
            [*self._exec(ctx, ch.endpoint, "load"), program("iperf3"), "-s", "-B", EP_IP,
             "-p", str(IPERF_PORT)],
            name=f"iperf3-s-{chain}", log=work / "iperf3-server.log",
        )  # fmt: skip
        self.backends += [nginx, iperf]
        # from the client, through the node: the chain forwards end to end
        self._in(ch.client, ctx.wait_http, f"http://{EP_IP}:{HTTP_TARGET}/", 200, 15.0, nginx)
        self._in(ch.client, _wait_tcp, EP_IP, IPERF_PORT, iperf, 15.0)

    def _start_fakes(self, ctx: Context) -> None:
        """progfake serve (node namespace) and its backends (endpoint namespace), per size."""
        ch = self.chains["p"]
        for addr in (f"{prefix}{j + 1}" for prefix in PROG_GROUPS for j in range(PER_SLICE)):
            _ip("-n", ch.endpoint, "addr", "add", f"{addr}/32", "dev", "lo")
        for prefix in PROG_GROUPS:
            _ip("-n", ch.node, "route", "add", f"{prefix}0/24", "via", EP_IP)
        sizes, _, _ = _sizes(ctx)
        groups = ",".join(PROG_GROUPS)
        work = ctx.workdir / "kernel"
        backends: list[tuple[Proc, int]] = []
        for i, n in enumerate(sizes):
            port = PROG_BACKEND_PORT + i
            kubeconfig = work / f"prog-{n}-kubeconfig"
            ready = work / f"prog-{n}-ready.json"
            for stale in (kubeconfig, ready):  # their appearance is the signal
                stale.unlink(missing_ok=True)
            proc = ctx.procs.start(
                [*self._exec(ctx, ch.node, "load"), sys.executable, "-m", "bench.progfake",
                 "serve", "--services", str(n), "--backend-port", str(port),
                 "--kubeconfig", str(kubeconfig), "--ready", str(ready),
                 "--cluster-ip-base", PROG_FIRST_IP, "--groups", groups,
                 "--control-host", NODE_CLIENT_IP, "--no-backends"],
                name=f"progfake-{n}", log=work / f"progfake-{n}.log",
                env=self._env(ctx), cwd=ctx.root,
            )  # fmt: skip
            self.fakes[n] = (proc, kubeconfig, ready)
            back = ctx.procs.start(
                [*self._exec(ctx, ch.endpoint, "load"), sys.executable, "-m", "bench.progfake",
                 "backends", "--backend-port", str(port), "--groups", groups],
                name=f"progfake-backends-{n}", log=work / f"progfake-backends-{n}.log",
                env=self._env(ctx), cwd=ctx.root,
            )  # fmt: skip
            self.backends.append(back)
            backends.append((back, port))
        for back, port in backends:  # from the client, through the node
            for prefix in PROG_GROUPS:
                self._in(ch.client, _wait_tcp, f"{prefix}1", port, back, 30.0)
        deadline = time.monotonic() + 180  # for all of them together
        for n, (proc, _, ready) in self.fakes.items():
            ctx.wait_file(ready, proc, max(deadline - time.monotonic(), 0), f"progfake serve ({n})")

    # -- netplane ------------------------------------------------------------------------

    def _netplane(
        self, ctx: Context, chain: str, datapath: str, source: list[str], log: Path
    ) -> Proc:
        """Start netplane in ``chain``'s node namespace; returns once /readyz answers 200."""
        ns = self.chains[chain].node
        argv = [
            *self._exec(ctx, ns, "server"), *netplane_cmd(), "run", *source,
            "--mode", "node", "--l4-datapath", datapath, "--service-cidr", SERVICE_CIDR,
            "--dns", "off", "--ingress-http", "off", "--ingress-https", "off",
            "--admin", f"127.0.0.1:{ADMIN_PORT}", "--shutdown-grace", "1",
        ]  # fmt: skip
        proc = ctx.procs.start(argv, name=f"netplane-{chain}", log=log, cwd=ctx.workdir)
        self._in(ns, ctx.wait_http, f"http://127.0.0.1:{ADMIN_PORT}/readyz", 200, 300.0, proc, 0.02)
        return proc

    def _state(self, chain: str) -> dict[str, Any]:
        """/debug/state?summary=1 of ``chain``'s netplane: its planes."""
        status, body = self._in(self.chains[chain].node, _get, ADMIN_PORT, "/debug/state?summary=1")
        if status != 200:
            raise RuntimeError(f"/debug/state answered {status}")
        return json.loads(body)["planes"]

    def _stop_netplane(self, ctx: Context, proc: Proc, chain: str) -> float:
        """Stop netplane (SIGTERM); the seconds until it exited. A table it left is deleted,
        so that the next netplane in this namespace starts from none."""
        started = time.perf_counter()
        status = ctx.procs.stop(proc, timeout=STOP_TIMEOUT_S)
        took = time.perf_counter() - started
        nft = ["ip", "netns", "exec", self.chains[chain].node, "nft"]
        tables = subprocess.run(
            [*nft, "list", "tables"], capture_output=True, text=True, timeout=120
        )
        left = [
            line.split()[-1]
            for line in tables.stdout.splitlines()
            if line.startswith("table inet netplane")
        ]
        if left:
            ctx.echo(
                f"    netplane ({chain}) exited with {status} after {took:.1f} s and left its "
                "tables; deleting them"
            )
            for table in left:
                subprocess.run([*nft, "delete", "table", "inet", table], timeout=120, check=True)
        return took

    def _check_kernel_served(self, chain: str, what: str) -> None:
        """The kernel side's proxy listeners behind the DNAT must have accepted nothing."""
        planes = self._state(chain)
        nft = planes.get("nftables") or {}
        if nft.get("mode") != "nftables" or not nft.get("synced"):
            raise RuntimeError(f"{what}: the nftables datapath is not in place: {nft}")
        accepted = planes["proxy"].get("tcp_accepted", 0)
        if accepted:
            raise RuntimeError(
                f"{what}: the user-space proxy accepted {accepted} connections that the "
                "kernel datapath should have DNAT'ed"
            )

    # -- speed ---------------------------------------------------------------------------

    def _target(self, side: str, kind: str) -> tuple[str, int]:
        if side == DIRECT:
            return EP_IP, HTTP_TARGET if kind == "http" else IPERF_PORT
        return CLUSTER_IP, HTTP_PORT if kind == "http" else IPERF_PORT

    def _run_load(self, ctx: Context, side: str, argv: list[str], name: str, timeout: float) -> str:
        """Run a load generator in ``side``'s client namespace on the load core; its stdout."""
        ns = self.chains[CHAIN_OF[side]].client
        text, self.load_cpu = run_load(
            ctx, ctx.workdir / "kernel", self._exec(ctx, ns, "load"), argv, name, timeout,
            what=f"{name} through {side}",
        )  # fmt: skip
        return text

    def _wrk(self, ctx: Context, side: str, seconds: float) -> tuple[float, int, int, float]:
        host, port = self._target(side, "http")
        argv = [program("wrk"), "-t1", "-c50", f"-d{seconds:g}s", "-H", "Connection: close",
                f"http://{host}:{port}/"]  # fmt: skip
        t0 = time.perf_counter()
        rps, total, errors = parse_wrk(self._run_load(ctx, side, argv, "wrk", seconds + 30))
        return rps, total, errors, time.perf_counter() - t0

    def _connections(self, ctx: Context, side: str) -> dict[str, float]:
        rps, total, errors, wall = self._wrk(ctx, side, self.durations(ctx)["wrk_s"])
        if errors > 0.01 * max(total, 1):
            raise RuntimeError(f"wrk through {side}: {errors} errors in {total} requests")
        return {"conn_per_s": rps, "conn_load_cpu_pct": 100 * self.load_cpu / wall}

    def _bulk(self, ctx: Context, side: str) -> dict[str, float]:
        secs = self.durations(ctx)["iperf_s"]
        host, port = self._target(side, "iperf")
        argv = [program("iperf3"), "-c", host, "-p", str(port), "-t", f"{secs:g}", "--json"]
        doc = json.loads(self._run_load(ctx, side, argv, "iperf3", secs + 30))
        if "error" in doc:
            raise RuntimeError(f"iperf3 through {side}: {doc['error']}")
        return {"bulk_gbps": doc["end"]["sum_received"]["bits_per_second"] / 1e9}

    def _speed(self, ctx: Context, index: int) -> dict[str, dict[str, float]]:
        assert self.manifests is not None
        sides = list(self.sides)
        work = ctx.workdir / "kernel"
        procs: list[Proc] = []
        try:
            for chain, datapath in (("k", "nftables"), ("u", "userspace")):
                log = work / f"netplane-{chain}-{index}.log"
                procs.append(self._netplane(ctx, chain, datapath, ["-f", str(self.manifests)], log))
                url = f"http://{CLUSTER_IP}:{HTTP_PORT}/"  # through the ClusterIP, end to end
                self._in(self.chains[chain].client, ctx.wait_http, url, 200, 30.0, procs[-1])
            for side in sides:  # warm-up: the first connections, the backends' caches
                self._wrk(ctx, side, self.durations(ctx)["warmup_s"])
            got: dict[str, dict[str, list[float]]] = {side: {} for side in sides}
            for measure in (self._connections, self._bulk):
                for rep in range(1 if ctx.quick else REPS):
                    for side in sides if rep % 2 == 0 else sides[::-1]:
                        for key, value in measure(ctx, side).items():
                            got[side].setdefault(key, []).append(value)
            self._check_kernel_served("k", "speed")
            served = self._state("u")["proxy"].get("tcp_accepted", 0)
            if not served:
                raise RuntimeError("the user-space side's proxy accepted no connection")
        finally:
            for chain, proc in zip(("k", "u"), procs, strict=False):
                self._stop_netplane(ctx, proc, chain)
        out = {side: {k: statistics.fmean(v) for k, v in got[side].items()} for side in sides}
        for side in (NETPLANE, USERSPACE):
            for key, ratio in (("conn_per_s", "conn_vs_direct"), ("bulk_gbps", "bulk_vs_direct")):
                if out[DIRECT].get(key):
                    out[side][ratio] = out[side][key] / out[DIRECT][key]
        return out

    # -- programming, ruleset, sync times ------------------------------------------------

    def _programming(self, ctx: Context, n: int, index: int) -> dict[str, float]:
        _, changes, sync_changes = _sizes(ctx)
        fake, kubeconfig, ready_path = self.fakes[n]
        if fake.popen.poll() is not None:
            raise RuntimeError(f"progfake serve ({n}) exited; see {fake.log}")
        ready = json.loads(ready_path.read_text())
        work = ctx.workdir / "kernel"
        log = work / f"prog-netplane-{n}-{index}.log"
        ch = self.chains["p"]
        values: dict[str, float] = {}
        proc = self._netplane(ctx, "p", "nftables", ["--kubeconfig", str(kubeconfig)], log)
        try:
            values[f"ready_s@{n}"] = time.perf_counter() - proc.started
            nft = self._state("p")["nftables"]
            values[f"full_sync_ms@{n}"] = float(nft["last_full_sync_ms"])
            values[f"full_commands@{n}"] = float(nft["last_commands"])
            time.sleep(0.5)  # let the start-up's last work (GC freeze, logging) settle
            doc = self._measure(ctx, ready_path, n, index, changes)
            syncs, commands = self._in(ch.node, self._sync_times, ready, sync_changes)
            rules, size = self._ruleset_size(ctx, n, index)
            self._check_kernel_served("p", f"programming at {n:,} services")
            nft = self._state("p")["nftables"]
        finally:
            values[f"stop_s@{n}"] = self._stop_netplane(ctx, proc, "p")
        if not doc["latencies_ms"]:
            raise RuntimeError(f"no change reached the new endpoint at {n} services")
        for p in PERCENTILES:
            values[f"e2e_{p}_ms@{n}"] = float(doc[f"{p}_ms"])
        values[f"failures@{n}"] = float(doc["failures"])
        values[f"probe_p50_ms@{n}"] = float(doc["baseline_p50_ms"])
        values[f"incr_sync_p50_ms@{n}"] = statistics.median(syncs)
        values[f"incr_sync_max_ms@{n}"] = max(syncs)
        values[f"incr_commands@{n}"] = statistics.median(commands)
        values[f"sync_failures@{n}"] = float(nft["failures"])
        values[f"rules@{n}"] = float(rules)
        values[f"ruleset_kb@{n}"] = size / 1024
        ctx.echo(
            f"    {n:,} services: change → new conn p50 {doc['p50_ms']:.2f} ms, p99 "
            f"{doc['p99_ms']:.2f} ms, max {doc['max_ms']:.2f} ms, {doc['failures']} failures; "
            f"full sync {values[f'full_sync_ms@{n}']:.0f} ms, incremental p50 "
            f"{values[f'incr_sync_p50_ms@{n}']:.1f} ms; {rules:,} rules, {size / 1e6:.1f} MB"
        )
        return values

    def _measure(self, ctx: Context, ready: Path, n: int, index: int, changes: int) -> dict:
        """``progfake measure`` in the client namespace, on the load core."""
        work = ctx.workdir / "kernel"
        out = work / f"prog-measure-{n}-{index}.json"
        argv = [
            *self._exec(ctx, self.chains["p"].client, "load"), sys.executable, "-m",
            "bench.progfake", "measure", "--ready", str(ready), "--changes", str(changes),
            "--warmup", "5", "--pause-ms", "20", "--give-up-s", "2",
        ]  # fmt: skip
        client = ctx.procs.start(
            argv, name="progfake-measure", log=work / f"prog-measure-{n}-{index}.log",
            stdout=out, env=self._env(ctx), cwd=ctx.root,
        )  # fmt: skip
        code = ctx.procs.wait(client, timeout=60 + changes * 2.1)
        if code != 0:
            raise RuntimeError(f"progfake measure exited with {code}; see {client.log}")
        return json.loads(out.read_text())

    def _sync_times(self, ready: dict[str, Any], changes: int) -> tuple[list[float], list[float]]:
        """In the node namespace: flip the measured slice ``changes`` times and read, after
        each, the incremental transaction's ``last_sync_ms`` and ``last_commands``."""
        from bench.progfake import Control

        def nft() -> dict[str, Any]:
            status, body = _get(ADMIN_PORT, "/debug/state?summary=1")
            if status != 200:
                raise RuntimeError(f"/debug/state answered {status}")
            return json.loads(body)["planes"]["nftables"]

        ctl = Control(ready["control_port"], ready["control_host"])
        times: list[float] = []
        commands: list[float] = []
        try:
            seen = nft()["syncs"]["incremental"]
            group = ctl.ask("get")[1]
            for _ in range(changes):
                group = "b" if group == "a" else "a"
                answer = ctl.ask(f"set {group}")
                if answer[:1] != ["ok"]:
                    raise RuntimeError(f"control channel: {answer!r}")
                time.sleep(0.3)
                deadline = time.monotonic() + 10
                while (state := nft())["syncs"]["incremental"] == seen:
                    if time.monotonic() > deadline:
                        raise TimeoutError("no incremental nftables sync within 10 s of a change")
                    time.sleep(0.1)
                if state["syncs"]["incremental"] == seen + 1:  # this change's, alone
                    times.append(float(state["last_sync_ms"]))
                    commands.append(float(state["last_commands"]))
                seen = state["syncs"]["incremental"]
        finally:
            ctl.close()
        if not times:
            raise RuntimeError("no incremental nftables sync was seen alone")
        return times, commands

    def _ruleset_size(self, ctx: Context, n: int, index: int) -> tuple[int, int]:
        """(rules, bytes) of ``nft list table inet netplane-N`` in the node namespace."""
        work = ctx.workdir / "kernel"
        out = work / f"ruleset-{n}-{index}.json"
        code = (
            "import asyncio, json; from netplane.l4.nft_apply import Nft; "
            "print(json.dumps(asyncio.run(Nft.find().ruleset_size())))"
        )
        proc = ctx.procs.start(
            [*self._exec(ctx, self.chains["p"].node, "load"), sys.executable, "-c", code],
            name="ruleset-size", log=work / f"ruleset-{n}-{index}.log", stdout=out,
        )  # fmt: skip
        if ctx.procs.wait(proc, timeout=300) != 0:
            raise RuntimeError(f"nft list table failed; see {proc.log}")
        rules, size = json.loads(out.read_text())
        return int(rules), int(size)

    # -- rounds ----------------------------------------------------------------------------

    def run_round(self, ctx: Context, index: int) -> dict[str, dict[str, float]]:
        if ctx.quick and index > 0:
            return {}  # quick: one round keeps it well under a minute
        out = self._speed(ctx, index)
        sizes, _, _ = _sizes(ctx)
        for n in sizes:
            out[NETPLANE].update(self._programming(ctx, n, index))
        return out

    def teardown(self, ctx: Context) -> None:
        ctx.procs.stop_all()  # the backends and fake servers live in the namespaces
        self.backends.clear()
        self.fakes.clear()
        for pool in self.pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
        self.pools.clear()
        for ns in self.namespaces:
            _ip("netns", "del", ns, check=False)
        self.namespaces.clear()
        self.chains.clear()

    def series(self, ctx: Context, samples: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
        sizes, _, _ = _sizes(ctx)
        return latency_series(
            samples,
            sizes,
            metric="e2e",
            group="{n:,} services, kernel datapath",
            stage=STAGE,
            per_slice=PER_SLICE,
            percentiles=PERCENTILES,
        )


def speed_manifests() -> dict[str, Any]:
    """The speed Service (ports http and iperf) and its EndpointSlice (one endpoint)."""
    ports = (("http", HTTP_PORT, HTTP_TARGET), ("iperf", IPERF_PORT, IPERF_PORT))
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "speed", "namespace": "bench"},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": CLUSTER_IP,
            "ports": [
                {"name": name, "port": port, "protocol": "TCP", "targetPort": target}
                for name, port, target in ports
            ],
        },
    }
    eps = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "speed-1",
            "namespace": "bench",
            "labels": {"kubernetes.io/service-name": "speed"},
        },
        "addressType": "IPv4",
        "ports": [{"name": name, "port": target, "protocol": "TCP"} for name, _, target in ports],
        "endpoints": [{"addresses": [EP_IP], "conditions": {"ready": True}}],
    }
    return {"apiVersion": "v1", "kind": "List", "items": [svc, eps]}


def _wait_tcp(host: str, port: int, proc: Proc, timeout: float) -> None:
    """Until ``host:port`` accepts a connection (one probe), or ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}; see {proc.log}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} not listening within {timeout:.0f} s")
