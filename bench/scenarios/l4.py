"""``l4``: the L4 service proxy against haproxy (TCP mode) and a direct connection.

One service description (a ClusterIP in 127.77.0.0/16 with three ports, one
endpoint: the backends on 127.0.0.1) gives both netplane's manifests (a
Service and an EndpointSlice) and haproxy's configuration, so every side
listens on the same frontend addresses and relays to the same backends.

Backends (started once): nginx answering a small 200 (1 worker, access log
off) and a Python UDP echo server (``l4_backends.py``) pinned to the server
core, and ``iperf3 -s`` pinned to the load core beside its client, so that
the relay has the server core to itself in every side. Per measured run of a side, its proxy is started on the
server core, waited for, measured with each load generator on the load core,
and stopped:

- new connections/s: ``wrk -t1 -c50 -H "Connection: close"`` (one request per
  connection), after a 1 s warm-up against the same side; the proxy's CPU
  per connection from /proc/PID/stat;
- bulk: ``iperf3 -c FRONTEND -t T --json`` (one stream, client to server),
  Gbit/s received, and the proxy's CPU seconds per gigabyte relayed;
- UDP request/response: ``l4_backends.py udp-load`` keeps 32 requests of 64
  bytes outstanding and counts replies/s. haproxy (2.6 here) has no UDP
  proxying, so this compares netplane with the direct path only.

The load generators' own CPU share is reported: wrk and the Python UDP client
can saturate the load core before the proxy does.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import socket
import statistics
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import NETPLANE, Context, Metric, Proc, Scenario

HAPROXY = "haproxy"
SPLICE = "haproxy splice-auto"
DIRECT = "direct"
HERE = Path(__file__).resolve().parent
BACKENDS = HERE / "l4_backends.py"

CLUSTER_IP = "127.77.208.10"
#: haproxy's frontends: its own addresses, so that every side can be up at once
FRONTEND_IPS = {"haproxy": "127.77.208.11", "haproxy splice-auto": "127.77.208.12"}
#: load runs per measure, side and round, in ABBA order (full runs)
REPS = 2
BACKEND_IP = "127.0.0.1"
NAMESPACE = "bench"
SERVICE = "l4"
# haproxy with splice: BENCH-NOTES reached 16-20 Gbit/s with larger pipes and buffers.
SPLICE_PIPESIZE = 524288
SPLICE_BUFSIZE = 65536
UDP_WINDOW = 32
UDP_SIZE = 64


@dataclass(frozen=True)
class Port:
    name: str  # the Service port name, matched by the EndpointSlice port name
    protocol: str  # "TCP" or "UDP"
    port: int  # the frontend (ClusterIP) port
    target: int  # the backend port


@dataclass(frozen=True)
class ServiceSpec:
    """One Service: a ClusterIP, its ports, one endpoint address."""

    name: str
    namespace: str
    cluster_ip: str
    endpoint: str
    ports: tuple[Port, ...]

    def port(self, name: str) -> Port:
        return next(p for p in self.ports if p.name == name)

    def manifests(self) -> dict[str, Any]:
        """A Service and its EndpointSlice, as netplane reads them from a file."""
        svc = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "type": "ClusterIP",
                "clusterIP": self.cluster_ip,
                "ports": [
                    {"name": p.name, "port": p.port, "protocol": p.protocol, "targetPort": p.target}
                    for p in self.ports
                ],
            },
        }
        eps = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{self.name}-1",
                "namespace": self.namespace,
                "labels": {"kubernetes.io/service-name": self.name},
            },
            "addressType": "IPv4",
            "ports": [
                {"name": p.name, "port": p.target, "protocol": p.protocol} for p in self.ports
            ],
            "endpoints": [{"addresses": [self.endpoint], "conditions": {"ready": True}}],
        }
        return {"apiVersion": "v1", "kind": "List", "items": [svc, eps]}

    def frontends(self) -> list[str]:
        """The listeners netplane reports in /debug/state for this Service."""
        return [f"{self.cluster_ip}:{p.port}/{p.protocol}" for p in self.ports]

    def haproxy_cfg(self, splice: bool, bind_ip: str) -> str:
        """haproxy in TCP mode, 1 thread, one listen section per TCP port (UDP: none)."""
        glob = ["global", "    nbthread 1", "    maxconn 4000"]
        if splice:
            glob += [f"    tune.pipesize {SPLICE_PIPESIZE}", f"    tune.bufsize {SPLICE_BUFSIZE}"]
        out = [
            *glob,
            "",
            "defaults",
            "    mode tcp",
            "    timeout connect 5s",
            "    timeout client 60s",
            "    timeout server 60s",
        ]
        if splice:
            out.append("    option splice-auto")
        for p in self.ports:
            if p.protocol != "TCP":
                continue
            out += [
                "",
                f"listen {self.namespace}_{self.name}_{p.name}",
                f"    bind {bind_ip}:{p.port}",
                f"    server ep0 {self.endpoint}:{p.target}",
            ]
        return "\n".join(out) + "\n"


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` so far, all threads (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_load(
    ctx: Context,
    work: Path,
    prefix: list[str],
    argv: list[str],
    name: str,
    timeout: float,
    *,
    what: str,
) -> tuple[str, float]:
    """Run a load generator (``prefix``: its pinning or namespace); (stdout, its CPU seconds).

    Raises RuntimeError naming ``what`` when it fails.
    """
    out = work / f"{name}.out"
    out.write_text("")
    before = children_cpu()
    proc = ctx.procs.start([*prefix, *argv], name=name, log=work / f"{name}.log", stdout=out)
    rc = ctx.procs.wait(proc, timeout=timeout)
    cpu = children_cpu() - before  # only this child was reaped meanwhile
    text = out.read_text()
    if rc != 0:
        err = (work / f"{name}.log").read_text()[-500:]
        raise RuntimeError(f"{what} exited with {rc}: {err or text[-500:]}")
    return text, cpu


def program(name: str) -> str:
    """The path of ``name`` (PATH, then /usr/sbin and /sbin), or a clear error."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise RuntimeError(f"{name} is not installed (python -m bench.setup {name})")
    return path


_WRK_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_WRK_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(\w+)", re.M)
_WRK_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def parse_wrk(text: str) -> tuple[float, int, int]:
    """(requests/s, requests, errors) from wrk's output."""
    rps, total = _WRK_RPS.search(text), _WRK_TOTAL.search(text)
    if rps is None or total is None:
        raise RuntimeError(f"cannot read wrk's output: {text[-500:]!r}")
    errors = sum(int(x) for x in m.groups()) if (m := _WRK_ERRORS.search(text)) else 0
    errors += int(m.group(1)) if (m := _WRK_NON2XX.search(text)) else 0
    return float(rps.group(1)), int(total.group(1)), errors


class L4Proxy(Scenario):
    name = "l4"
    title = "L4 service proxy: new connections/s, bulk TCP, UDP request/response"
    description = (
        "One Service (ClusterIP in 127.77.0.0/16, ports http, iperf and udp; one endpoint on "
        "127.0.0.1) gives netplane's manifests (`netplane run -f DIR --mode local`, DNS and "
        "ingress off) and haproxy's tcp-mode config (1 thread, its own frontend addresses), so "
        "all sides use the same frontend ports and backends. Backends on the server core: nginx (1 worker, small 200, "
        "access log off), a Python UDP echo loop; `iperf3 -s` on the load core beside its "
        "client, so the relay has the server core to itself in every side. Each round starts every "
        "side's proxy on the server core and runs each load twice per side, the sides taking "
        "turns (ABBA order) so that all see the same moment of a machine whose speed drifts "
        "within minutes; a side's figure is the mean of its two. New connections: `wrk -t1 -c50 "
        '-H "Connection: close"` after a 1 s warm-up (one request per connection); bulk: '
        "`iperf3 -c FRONTEND --json`, one stream, client to server, with the proxy's CPU "
        "(utime+stime from /proc/PID/stat) per GB relayed; UDP: a Python client keeping 32 "
        "requests of 64 bytes outstanding, counting replies/s. Load generators on the load "
        "core; their CPU share is reported because they can saturate first (loopback's "
        "softirq work for the sender lands on the load core too). `direct` connects to the "
        "backends without a proxy."
    )
    sides = (NETPLANE, HAPROXY, SPLICE, DIRECT)
    peer_note = (
        f"haproxy in tcp mode, nbthread 1; `{SPLICE}` adds `option splice-auto`, "
        f"`tune.pipesize {SPLICE_PIPESIZE}` and `tune.bufsize {SPLICE_BUFSIZE}`. haproxy has no "
        "UDP proxying, so the UDP rows compare netplane with `direct` only. `direct` has no "
        "proxy, hence no proxy-CPU figures. Bar (issue): connections/s >= 0.4x haproxy; bulk "
        ">= 1.0x default haproxy and >= 0.75x direct."
    )
    packages = ("haproxy", "wrk", "iperf3", "nginx")
    warmup_runs = 0  # each round warms every side up (fresh proxies per round)
    budget_s = 500.0
    interleaved = True

    def __init__(self) -> None:
        self.spec: ServiceSpec | None = None
        self.manifests: Path | None = None
        self.backends: list[Proc] = []
        self.load_cpu = 0.0  # CPU seconds of the last load generator run

    # -- sizes --------------------------------------------------------------------

    def durations(self, ctx: Context) -> dict[str, float]:
        if ctx.quick:
            return {"wrk_s": 2, "warmup_s": 1, "iperf_s": 2, "udp_s": 1}
        return {"wrk_s": 5, "warmup_s": 1, "iperf_s": 5, "udp_s": 3}

    def metrics(self, ctx: Context) -> list[Metric]:
        return [
            Metric("conn_per_s", "conn/s", "higher", "new TCP connections/s (1 request each)"),
            Metric("conn_proxy_cpu_us", "µs", "lower", "proxy CPU per connection"),
            Metric("conn_load_cpu_pct", "%", "lower", "wrk CPU, % of the load core"),
            Metric("bulk_gbps", "Gbit/s", "higher", "bulk TCP (iperf3, 1 stream)"),
            Metric("bulk_cpu_s_per_gb", "s/GB", "lower", "proxy CPU s per GB relayed"),
            Metric("udp_rps", "req/s", "higher", "UDP request/response (32 outstanding)"),
            Metric("udp_proxy_cpu_pct", "%", "lower", "proxy CPU during UDP, % of a core"),
            Metric("udp_load_cpu_pct", "%", "lower", "UDP client CPU, % of the load core"),
        ]

    def params(self, ctx: Context) -> dict[str, Any]:
        d = self.durations(ctx)
        return {
            "wrk": f"-t1 -c50 -d{d['wrk_s']:g}s Connection: close (warm-up {d['warmup_s']:g} s)",
            "iperf3": f"-t {d['iperf_s']:g}, 1 stream",
            "udp": f"{UDP_WINDOW} outstanding x {UDP_SIZE} B for {d['udp_s']:g} s",
            "runs": "1 round (quick)"
            if ctx.quick
            else f"{ctx.runs} rounds, each load run {REPS}x per side, interleaved ABBA",
            "cluster_ip": CLUSTER_IP,
        }

    # -- shared backends ------------------------------------------------------------

    def setup(self, ctx: Context) -> None:
        for tool in ("nginx", "haproxy", "wrk", "iperf3"):
            program(tool)
        work = ctx.workdir / "l4"
        work.mkdir(exist_ok=True)
        self.spec = spec = ServiceSpec(
            name=SERVICE,
            namespace=NAMESPACE,
            cluster_ip=CLUSTER_IP,
            endpoint=BACKEND_IP,
            ports=(
                Port("http", "TCP", ctx.free_port(), ctx.free_port()),
                Port("iperf", "TCP", ctx.free_port(), ctx.free_port()),
                Port("udp", "UDP", ctx.free_port(), ctx.free_port()),
            ),
        )
        self.manifests = work / "manifests"
        self.manifests.mkdir(exist_ok=True)
        (self.manifests / "l4.json").write_text(json.dumps(spec.manifests(), indent=1))
        for splice in (False, True):
            cfg = work / f"haproxy{'-splice' if splice else ''}.cfg"
            cfg.write_text(spec.haproxy_cfg(splice, FRONTEND_IPS[SPLICE if splice else HAPROXY]))
            check = ctx.procs.start(
                [program("haproxy"), "-c", "-q", "-f", str(cfg)],
                name="haproxy -c",
                log=work / "haproxy-check.log",
            )
            if ctx.procs.wait(check, timeout=30) != 0:
                raise RuntimeError(f"haproxy rejects {cfg}; see {work / 'haproxy-check.log'}")

        http, iperf, udp = spec.port("http"), spec.port("iperf"), spec.port("udp")
        nginx_conf = work / "nginx.conf"
        (work / "nginx").mkdir(exist_ok=True)
        nginx_conf.write_text(
            f"""daemon off;
master_process off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {work}/nginx/body;
    proxy_temp_path {work}/nginx/proxy;
    fastcgi_temp_path {work}/nginx/fastcgi;
    uwsgi_temp_path {work}/nginx/uwsgi;
    scgi_temp_path {work}/nginx/scgi;
    server {{
        listen {BACKEND_IP}:{http.target} backlog=4096;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""
        )
        server = ctx.pin("server")
        self.backends = [
            ctx.procs.start(
                [*server, program("nginx"), "-p", str(work), "-c", str(nginx_conf), "-e",
                 str(work / "nginx-error.log")],
                name="nginx", log=work / "nginx.log",
            ),
            # The iperf3 server runs beside its client on the load core, so that
            # in every side the relay has the server core to itself: otherwise
            # the direct side's iperf3 server gets a core that the proxied
            # sides' servers share with their proxy.
            ctx.procs.start(
                [*ctx.pin("load"), program("iperf3"), "-s", "-B", BACKEND_IP,
                 "-p", str(iperf.target)],
                name="iperf3 -s", log=work / "iperf3-server.log",
            ),
            ctx.procs.start(
                [*server, sys.executable, str(BACKENDS), "udp-echo", BACKEND_IP, str(udp.target)],
                name="udp-echo", log=work / "udp-echo.log",
            ),
        ]  # fmt: skip
        ctx.wait_http(f"http://{BACKEND_IP}:{http.target}/", 200, timeout=15, proc=self.backends[0])
        self._wait_tcp(BACKEND_IP, iperf.target, self.backends[1], timeout=15)

    def _wait_tcp(self, host: str, port: int, proc: Proc, timeout: float) -> None:
        """Until ``host:port`` is listening (the iperf3 server; one probe connection)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}")
            try:
                with socket.create_connection((host, port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"{host}:{port} not listening within {timeout:.0f} s")

    # -- the sides ----------------------------------------------------------------

    def _start_proxy(self, ctx: Context, side: str, index: int) -> Proc | None:
        assert self.spec is not None and self.manifests is not None
        work = ctx.workdir / "l4"
        log = work / f"{side.replace(' ', '-')}-{index}.log"
        if side == NETPLANE:
            admin = ctx.free_port()
            argv = [
                *ctx.pin("server"), sys.executable, str(BACKENDS), "netplane", str(ctx.root),
                "run", "-f", str(self.manifests), "--mode", "local", "--dns", "off",
                "--ingress-http", "off", "--ingress-https", "off",
                "--admin", f"127.0.0.1:{admin}", "--shutdown-grace", "1",
                "--log-level", "warning",
            ]  # fmt: skip
            proc = ctx.procs.start(argv, name=side, log=log, cwd=work)
            self._wait_listeners(f"http://127.0.0.1:{admin}", proc, timeout=30)
        elif side in (HAPROXY, SPLICE):
            cfg = work / f"haproxy{'-splice' if side == SPLICE else ''}.cfg"
            argv = [*ctx.pin("server"), program("haproxy"), "-f", str(cfg), "-db"]
            proc = ctx.procs.start(argv, name=side, log=log, cwd=work)
        else:
            return None
        # Through the proxy to nginx: the relay works end to end.
        host, port = self._target(side, "http")
        ctx.wait_http(f"http://{host}:{port}/", 200, timeout=30, proc=proc)
        return proc

    def _wait_listeners(self, admin: str, proc: Proc, timeout: float) -> None:
        assert self.spec is not None
        want = set(self.spec.frontends())
        deadline = time.monotonic() + timeout
        have: set[str] = set()
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"netplane exited with {proc.popen.returncode}; see {proc.log}")
            try:
                with urllib.request.urlopen(f"{admin}/debug/state", timeout=2) as r:
                    have = set(json.loads(r.read())["planes"]["proxy"]["listeners"])
                if want <= have:
                    return
            except (OSError, urllib.error.URLError, KeyError, ValueError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"netplane did not listen on {sorted(want - have)} within {timeout} s")

    def _target(self, side: str, name: str) -> tuple[str, int]:
        assert self.spec is not None
        p = self.spec.port(name)
        if side == DIRECT:
            return self.spec.endpoint, p.target
        return FRONTEND_IPS.get(side, self.spec.cluster_ip), p.port

    def _run_load(self, ctx: Context, argv: list[str], name: str, timeout: float) -> str:
        """Run a load generator on the load core; returns its stdout. CPU: self.load_cpu."""
        text, self.load_cpu = run_load(ctx, ctx.workdir / "l4", ctx.pin("load"), argv, name,
                                       timeout, what=name)  # fmt: skip
        return text

    def _wrk(self, ctx: Context, side: str, seconds: float) -> tuple[float, int, int, float]:
        host, port = self._target(side, "http")
        argv = [
            program("wrk"), "-t1", "-c50", f"-d{seconds:g}s", "-H", "Connection: close",
            f"http://{host}:{port}/",
        ]  # fmt: skip
        t0 = time.perf_counter()
        text = self._run_load(ctx, argv, "wrk", timeout=seconds + 30)
        rps, total, errors = parse_wrk(text)
        return rps, total, errors, time.perf_counter() - t0

    def _connections(self, ctx: Context, side: str, pid: int | None) -> dict[str, float]:
        """New connections/s through ``side`` (wrk, one request per connection)."""
        cpu0 = cpu_seconds(pid) if pid else 0.0
        rps, total, errors, wall = self._wrk(ctx, side, self.durations(ctx)["wrk_s"])
        if errors > 0.01 * max(total, 1):
            raise RuntimeError(f"wrk through {side}: {errors} errors in {total} requests")
        out = {"conn_per_s": rps, "conn_load_cpu_pct": 100 * self.load_cpu / wall}
        if pid:
            out["conn_proxy_cpu_us"] = 1e6 * (cpu_seconds(pid) - cpu0) / max(total, 1)
        return out

    def _bulk(self, ctx: Context, side: str, pid: int | None) -> dict[str, float]:
        """One iperf3 stream through ``side``, and the proxy's CPU per GB."""
        secs = self.durations(ctx)["iperf_s"]
        host, port = self._target(side, "iperf")
        cpu0 = cpu_seconds(pid) if pid else 0.0
        text = self._run_load(
            ctx,
            [program("iperf3"), "-c", host, "-p", str(port), "-t", f"{secs:g}", "--json"],
            "iperf3",
            timeout=secs + 30,
        )
        cpu = cpu_seconds(pid) - cpu0 if pid else 0.0
        doc = json.loads(text)
        if "error" in doc:
            raise RuntimeError(f"iperf3 through {side}: {doc['error']}")
        recv = doc["end"]["sum_received"]
        out = {"bulk_gbps": recv["bits_per_second"] / 1e9}
        if pid and recv["bytes"]:
            out["bulk_cpu_s_per_gb"] = cpu / (recv["bytes"] / 1e9)
        return out

    def _udp(self, ctx: Context, side: str, pid: int | None) -> dict[str, float]:
        """UDP request/response through ``side`` (netplane and direct: haproxy has no UDP)."""
        if side not in (NETPLANE, DIRECT):
            return {}
        secs = self.durations(ctx)["udp_s"]
        host, port = self._target(side, "udp")
        cpu0 = cpu_seconds(pid) if pid else 0.0
        t0 = time.perf_counter()
        text = self._run_load(
            ctx,
            [sys.executable, str(BACKENDS), "udp-load", host, str(port), "--seconds",
             f"{secs:g}", "--window", str(UDP_WINDOW), "--size", str(UDP_SIZE)],
            "udp-load",
            timeout=secs + 30,
        )  # fmt: skip
        wall = time.perf_counter() - t0
        res = json.loads(text.strip().splitlines()[-1])
        out = {"udp_rps": res["rps"], "udp_load_cpu_pct": res["cpu_pct"]}
        if pid:
            # the client's start-up and readiness probe are in `wall`; close enough
            out["udp_proxy_cpu_pct"] = 100 * (cpu_seconds(pid) - cpu0) / wall
        return out

    def run_round(self, ctx: Context, index: int) -> dict[str, dict[str, float]]:
        if ctx.quick and index > 0:
            return {}  # quick: one round keeps it well under a minute
        sides = list(self.sides)
        procs: dict[str, Proc | None] = {}
        try:
            for side in sides:
                procs[side] = self._start_proxy(ctx, side, index)
            for side in sides:  # warm-up: the first connections, the backends' caches
                self._wrk(ctx, side, self.durations(ctx)["warmup_s"])
            got: dict[str, dict[str, list[float]]] = {side: {} for side in sides}
            for measure in (self._connections, self._bulk, self._udp):
                for rep in range(1 if ctx.quick else REPS):
                    for side in sides if rep % 2 == 0 else sides[::-1]:
                        proc = procs[side]
                        values = measure(ctx, side, proc.pid if proc is not None else None)
                        for key, value in values.items():
                            got[side].setdefault(key, []).append(value)
        finally:
            for proc in procs.values():
                if proc is not None:
                    ctx.procs.stop(proc)
        return {
            side: {key: statistics.fmean(values) for key, values in got[side].items()}
            for side in sides
        }

    def teardown(self, ctx: Context) -> None:
        for proc in self.backends:
            ctx.procs.stop(proc)
        self.backends = []
