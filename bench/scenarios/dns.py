"""``dns``: the cluster DNS against nsd and dnsmasq with dnsperf, and its memory at scale.

One generator gives every side the same names: N ClusterIP Services
``svcI.nsJ.svc.cluster.local`` (100 namespaces) with explicit cluster IPs
in 127.77.0.0/16, a named TCP port (so an SRV name each) and an
EndpointSlice of 10 endpoints. netplane reads them as manifests; nsd gets a
zone file with the same A and SRV records (plus its SOA and NS);
dnsmasq gets a hosts file with the A records and ``local=/cluster.local/``
so a missing name is NXDOMAIN there too, not forwarded.

Per measured run of a side, its server is started on the server core,
warmed with one pass over every query file, then measured with dnsperf on
the load core (``-c 10 -T 1``):

- ``mix``: 90% A, 10% SRV (netplane and nsd; dnsmasq scans its SRV entries
  one by one per query, see BENCH-NOTES, so it is left out);
- ``a``: A only (all three);
- ``nx``: N names that do not exist, all NXDOMAIN (all three);
- latency at an equal, fixed rate (``-Q``) on the A set with ``-v``: average
  and p99 from dnsperf's per-query lines;
- the server's CPU per query during ``mix`` (``a`` for dnsmasq).

Memory: netplane's VmRSS once its DNS answers with the N services and 10N
endpoints loaded, beside CoreDNS's published formula ((pods + services) x
0.000858 MB + 49.1 MB, pods = endpoints) and beside netplane with DNS off;
and again after the warm-up, when the answer cache holds a reply for every
name of the three query sets (3N entries).

Quick mode (CI) uses 200 services and 1 s runs; a peer that cannot be
installed is skipped and named in the parameters, never an error.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Any

from bench import setup
from bench.harness import NETPLANE, Context, Metric, Proc, Scenario, netplane_cmd, vmrss_mb
from bench.scenarios.scale import coredns_memory_mb, settled_rss_mb
from netplane.testing.ports import free_udp_tcp_port

NSD = "nsd"
DNSMASQ = "dnsmasq"
COREDNS = "CoreDNS (published formula)"
ZONE = "cluster.local"
NAMESPACES = 100
PER_SLICE = 10
TTL = 5
PEER_PACKAGES = {NSD: "nsd", DNSMASQ: "dnsmasq"}


def names(n: int) -> list[tuple[str, str, str]]:
    """(service, namespace, cluster IP) for service i: the one list every side serves."""
    out = []
    for i in range(n):
        ip = f"127.77.{i // 250}.{i % 250 + 1}"
        out.append((f"svc{i}", f"ns{i % NAMESPACES}", ip))
    return out


def manifests(n: int) -> dict[str, Any]:
    items: list[dict[str, Any]] = []
    for i, (svc, ns, ip) in enumerate(names(n)):
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": svc, "namespace": ns},
                "spec": {
                    "clusterIP": ip,
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                },
            }
        )
        items.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{svc}-1",
                    "namespace": ns,
                    "labels": {"kubernetes.io/service-name": svc},
                },
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080}],
                "endpoints": [
                    {"addresses": [f"10.{(i * PER_SLICE + k) // 65536 % 256}.{(i * PER_SLICE + k) // 256 % 256}.{(i * PER_SLICE + k) % 256}"]}
                    for k in range(PER_SLICE)
                ],
            }
        )  # fmt: skip
    return {"apiVersion": "v1", "kind": "List", "items": items}


def nsd_zone(n: int) -> str:
    lines = [
        f"$ORIGIN {ZONE}.",
        f"$TTL {TTL}",
        f"@ IN SOA ns.dns.{ZONE}. hostmaster.{ZONE}. 1 7200 1800 86400 {TTL}",
        "@ IN NS ns.dns",
        "ns.dns IN A 127.0.0.1",
    ]
    for svc, ns, ip in names(n):
        lines.append(f"{svc}.{ns}.svc IN A {ip}")
        lines.append(f"_http._tcp.{svc}.{ns}.svc IN SRV 0 100 80 {svc}.{ns}.svc.{ZONE}.")
    return "\n".join(lines) + "\n"


def dnsmasq_hosts(n: int) -> str:
    return "".join(f"{ip} {svc}.{ns}.svc.{ZONE}\n" for svc, ns, ip in names(n))


def query_files(n: int) -> dict[str, str]:
    every = names(n)
    mix = [
        f"_http._tcp.{svc}.{ns}.svc.{ZONE} SRV" if i % 10 == 9 else f"{svc}.{ns}.svc.{ZONE} A"
        for i, (svc, ns, _) in enumerate(every)
    ]
    a = [f"{svc}.{ns}.svc.{ZONE} A" for svc, ns, _ in every]
    nx = [f"no{svc}.{ns}.svc.{ZONE} A" for svc, ns, _ in every]
    return {"mix": "\n".join(mix) + "\n", "a": "\n".join(a) + "\n", "nx": "\n".join(nx) + "\n"}


_QPS = re.compile(r"Queries per second:\s+([\d.]+)")
_AVG = re.compile(r"Average Latency \(s\):\s+([\d.]+)")
_COMPLETED = re.compile(r"Queries completed:\s+(\d+)")
_SIZE = re.compile(r"Average packet size:\s+request (\d+), response (\d+)")
_CODES = re.compile(r"Response codes:\s+(.*)")
_VERBOSE = re.compile(r"^> (\S+) \S+ \S+ ([\d.]+)$", re.M)


def parse_dnsperf(text: str) -> dict[str, float]:
    """QPS, average latency (ms), completed queries and response size from dnsperf's summary."""
    qps, avg, done = _QPS.search(text), _AVG.search(text), _COMPLETED.search(text)
    if qps is None or avg is None or done is None:
        raise RuntimeError(f"cannot read dnsperf's output: {text[-600:]!r}")
    out = {
        "qps": float(qps.group(1)),
        "avg_ms": float(avg.group(1)) * 1000,
        "done": float(done.group(1)),
    }
    if (size := _SIZE.search(text)) is not None:
        out["resp_bytes"] = float(size.group(2))
    return out


def latency_ms(text: str) -> tuple[float, float, int]:
    """(average, p99, count) from dnsperf -v's per-query lines."""
    values = sorted(float(m.group(2)) * 1000 for m in _VERBOSE.finditer(text))
    if not values:
        raise RuntimeError(f"no per-query lines in dnsperf -v output: {text[-600:]!r}")
    p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
    return statistics.fmean(values), p99, len(values)


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and all its descendants (nsd answers from a grandchild)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    tree, total, grew = {pid}, 0.0, True
    while grew:
        grew = False
        for p, (ppid, _) in stats.items():
            if ppid in tree and p not in tree:
                tree.add(p)
                grew = True
    for p in tree:
        if p in stats:
            total += stats[p][1]
    return total


def dns_answers(port: int, name: str, timeout: float = 1.0) -> int | None:
    """The rcode of an A query for ``name`` at 127.0.0.1:port, or None without a reply."""
    qname = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    packet = struct.pack("!HHHHHH", 0x4E50, 0x0100, 1, 0, 0, 0) + qname + b"\0\x01\0\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(packet, ("127.0.0.1", port))
            data = s.recv(4096)
        except OSError:
            return None
    return data[3] & 0x0F if len(data) >= 12 and data[:2] == b"\x4e\x50" else None


def program(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise RuntimeError(f"{name} is not installed (python -m bench.setup {name})")
    return path


class ClusterDns(Scenario):
    name = "dns"
    title = "Cluster DNS: dnsperf QPS and latency against nsd and dnsmasq; memory at scale"
    description = (
        "N ClusterIP Services (`svcI.nsJ.svc.cluster.local`, 100 namespaces, explicit cluster "
        "IPs, one named port, an EndpointSlice of 10 endpoints each) from one generator: "
        "netplane reads them as manifests (`netplane run -f DIR --mode local`, proxy and "
        "ingress off, DNS TTL 5, answer cache and invalidation on), nsd gets a zone file with "
        "the same A and SRV records, dnsmasq a hosts file with the A records and "
        "`local=/cluster.local/`. Each run starts the side's server on the server core, warms "
        "it with one pass over every query file, then runs `dnsperf -c 10 -T 1 -l L` on the load "
        "core: the 90% A / 10% SRV mix (netplane and nsd), A only, and N names that do not "
        "exist (NXDOMAIN). Latency: `dnsperf -v -Q R` on the A set at the same fixed rate for "
        "every side, average and p99 of the per-query lines. CPU per query: the server's "
        "utime+stime (with its descendants: nsd answers from a forked grandchild) during the mix (A for dnsmasq). "
        "Memory: netplane's VmRSS once DNS answers, with DNS on and with DNS off, and with DNS "
        "on again after the warm-up (a cached reply for every name asked)."
    )
    sides = (NETPLANE, NSD, DNSMASQ, COREDNS)
    peer_note = (
        "nsd 4 (1 server process, `rrl-ratelimit: 0`) and dnsmasq 2.90 (A only: its SRV lines "
        "are scanned one by one per query). nsd adds NS and glue records, so answer sizes "
        "differ and are listed beside QPS. CoreDNS is not packaged here: its row is its "
        "published memory formula with pods = endpoints; its scaling guide gives about 33.7k "
        "QPS for cluster names on 2 vCPUs. Bar (issue 7): >= 0.7x nsd QPS on the mix and on "
        "NXDOMAIN; memory below CoreDNS's formula."
    )
    packages = ("dnsperf",)
    warmup_runs = 0  # every run warms its own freshly started server
    budget_s = 600.0

    def __init__(self) -> None:
        self.work: Path | None = None
        self.missing: dict[str, str] = {}
        self._peers_checked = False
        self.dns_off_rss: float | None = None

    # -- sizes ----------------------------------------------------------------------

    def size(self, ctx: Context) -> int:
        return 200 if ctx.quick else 10_000

    def seconds(self, ctx: Context) -> float:
        return 1.0 if ctx.quick else 8.0

    def rate(self, ctx: Context) -> int:
        return 2000 if ctx.quick else 10_000

    def metrics(self, ctx: Context) -> list[Metric]:
        return [
            Metric("mix_qps", "qps", "higher", "QPS, 90% A / 10% SRV"),
            Metric("mix_avg_ms", "ms", "lower", "average latency at full load, mix"),
            Metric("mix_resp_bytes", "B", "lower", "average response size, mix"),
            Metric("a_qps", "qps", "higher", "QPS, A only"),
            Metric("a_resp_bytes", "B", "lower", "average response size, A"),
            Metric("nx_qps", "qps", "higher", "QPS, all NXDOMAIN"),
            Metric("nx_avg_ms", "ms", "lower", "average latency at full load, NXDOMAIN"),
            Metric("nx_resp_bytes", "B", "lower", "average response size, NXDOMAIN"),
            Metric("lat_avg_ms", "ms", "lower", f"average latency at {self.rate(ctx)} qps, A"),
            Metric("lat_p99_ms", "ms", "lower", f"p99 latency at {self.rate(ctx)} qps, A"),
            Metric("cpu_us_per_query", "µs", "lower", "server CPU per query (mix; A for dnsmasq)"),
            Metric("rss_mb", "MB", "lower", "VmRSS with the services and endpoints loaded"),
            Metric("rss_warm_mb", "MB", "lower", "VmRSS after the warm-up (answer cache full)"),
            Metric("rss_dns_off_mb", "MB", "lower", "netplane VmRSS with DNS off"),
        ]

    def params(self, ctx: Context) -> dict[str, Any]:
        self._check_peers()
        n = self.size(ctx)
        out: dict[str, Any] = {
            "services": n,
            "endpoints": n * PER_SLICE,
            "dnsperf": f"-c 10 -T 1 -l {self.seconds(ctx):g}",
            "latency": f"-v -Q {self.rate(ctx)} -l {self.seconds(ctx):g} (A set)",
            "runs": "1 per side (quick)" if ctx.quick else f"{ctx.runs} per side",
        }
        if self.missing:
            out["peers skipped"] = "; ".join(f"{k}: {v}" for k, v in self.missing.items())
        return out

    def _check_peers(self) -> None:
        """Install the peers when possible; a peer that cannot be is skipped, not an error."""
        if self._peers_checked:
            return
        self._peers_checked = True
        for side, package in PEER_PACKAGES.items():
            try:
                setup.ensure([package])
            except Exception as e:
                self.missing[side] = f"not installed ({e})"

    # -- files ----------------------------------------------------------------------

    def setup(self, ctx: Context) -> None:
        self._check_peers()
        program("dnsperf")
        n = self.size(ctx)
        self.work = work = ctx.workdir / "dns"
        (work / "manifests").mkdir(parents=True, exist_ok=True)
        (work / "manifests" / "services.json").write_text(json.dumps(manifests(n)))
        for name, text in query_files(n).items():
            (work / f"{name}.txt").write_text(text)
        (work / f"{ZONE}.zone").write_text(nsd_zone(n))
        (work / "hosts").write_text(dnsmasq_hosts(n))

    # -- servers --------------------------------------------------------------------

    def _start(self, ctx: Context, side: str, index: int, *, dns: bool = True) -> tuple[Proc, int]:
        assert self.work is not None
        work = self.work
        port = free_udp_tcp_port()
        log = work / f"{side.split()[0]}-{index}{'' if dns else '-off'}.log"
        server = ctx.pin("server")
        if side == NETPLANE:
            admin = ctx.free_port()
            argv = [
                *server, *netplane_cmd(), "run", "-f", str(work / "manifests"), "--mode", "local",
                "--service-cidr", "127.77.0.0/16", "--proxy", "off", "--ingress-http", "off",
                "--ingress-https", "off", "--admin", f"127.0.0.1:{admin}",
                "--dns", f"127.0.0.1:{port}" if dns else "off", "--dns-ttl", str(TTL),
                "--log-level", "warning", "--shutdown-grace", "0",
            ]  # fmt: skip
            proc = ctx.procs.start(argv, name=side, log=log, cwd=work)
            ctx.wait_http(f"http://127.0.0.1:{admin}/readyz", 200, timeout=300, proc=proc)
            if not dns:
                return proc, 0
        elif side == NSD:
            conf = work / f"nsd-{index}.conf"
            conf.write_text(
                f"""server:
  ip-address: 127.0.0.1@{port}
  server-count: 1
  username: ""
  chroot: ""
  zonesdir: "{work}"
  database: ""
  pidfile: "{work}/nsd-{index}.pid"
  xfrdfile: "{work}/nsd-{index}.xfrd"
  zonelistfile: "{work}/nsd-{index}.zonelist"
  rrl-ratelimit: 0
  verbosity: 1
remote-control:
  control-enable: no
zone:
  name: {ZONE}
  zonefile: {ZONE}.zone
"""
            )
            argv = [*server, program("nsd"), "-d", "-c", str(conf)]
            proc = ctx.procs.start(argv, name=side, log=log, cwd=work)
        else:
            conf = work / f"dnsmasq-{index}.conf"
            conf.write_text(
                f"""port={port}
listen-address=127.0.0.1
bind-interfaces
no-resolv
no-hosts
addn-hosts={work}/hosts
local=/{ZONE}/
local-ttl={TTL}
user=root
pid-file=
"""
            )
            argv = [*server, program("dnsmasq"), "-k", "-C", str(conf), "--log-facility=-"]
            proc = ctx.procs.start(argv, name=side, log=log, cwd=work)
        svc, ns, _ = names(1)[0]
        deadline = time.monotonic() + 300
        while dns_answers(port, f"{svc}.{ns}.svc.{ZONE}") != 0:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{side} exited with {proc.popen.returncode}; see {log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{side} did not answer within 300 s; see {log}")
            time.sleep(0.05)
        return proc, port

    def _dnsperf(self, ctx: Context, port: int, queries: str, *extra: str, name: str) -> str:
        assert self.work is not None
        out = self.work / f"{name}.out"
        out.write_text("")  # the process manager appends: one run's output only
        argv = [
            *ctx.pin("load"), program("dnsperf"), "-s", "127.0.0.1", "-p", str(port),
            "-d", str(self.work / f"{queries}.txt"), "-c", "10", "-T", "1", *extra,
        ]  # fmt: skip
        proc = ctx.procs.start(argv, name=name, log=self.work / f"{name}.log", stdout=out)
        rc = ctx.procs.wait(proc, timeout=120)
        text = out.read_text()
        if rc != 0:
            raise RuntimeError(f"dnsperf exited with {rc}: {text[-500:]}")
        return text

    def run_side(self, ctx: Context, side: str, index: int) -> dict[str, float]:
        n = self.size(ctx)
        if side == COREDNS:
            return {"rss_mb": coredns_memory_mb(pods=n * PER_SLICE, services=n)}
        if side in self.missing or (ctx.quick and index > 0):
            return {}
        out: dict[str, float] = {}
        if side == NETPLANE and self.dns_off_rss is None:
            proc, _ = self._start(ctx, side, index, dns=False)
            try:
                self.dns_off_rss = settled_rss_mb(proc.pid)
            finally:
                ctx.procs.stop(proc)
        if side == NETPLANE and self.dns_off_rss is not None:
            out["rss_dns_off_mb"] = self.dns_off_rss
        proc, port = self._start(ctx, side, index)
        try:
            if side == NETPLANE:
                out["rss_mb"] = settled_rss_mb(proc.pid)
            sets = ("a", "nx") if side == DNSMASQ else ("mix", "a", "nx")
            for queries in sets:  # warm-up: every name once
                self._dnsperf(ctx, port, queries, "-n", "1", name=f"warm-{queries}")
            if side == NETPLANE:  # the answer cache now holds a reply per name asked
                out["rss_warm_mb"] = vmrss_mb(proc.pid)
            seconds = f"{self.seconds(ctx):g}"
            for queries in sets:
                cpu0 = tree_cpu(proc.pid)
                res = parse_dnsperf(
                    self._dnsperf(
                        ctx, port, queries, "-l", seconds, name=f"{queries}-{side.split()[0]}"
                    )
                )
                cpu = tree_cpu(proc.pid) - cpu0
                out[f"{queries}_qps"] = res["qps"]
                if queries != "a":
                    out[f"{queries}_avg_ms"] = res["avg_ms"]
                if "resp_bytes" in res:
                    out[f"{queries}_resp_bytes"] = res["resp_bytes"]
                if queries == ("a" if side == DNSMASQ else "mix") and res["done"]:
                    out["cpu_us_per_query"] = 1e6 * cpu / res["done"]
            text = self._dnsperf(
                ctx, port, "a", "-v", "-Q", str(self.rate(ctx)), "-l", seconds, name="latency"
            )
            avg, p99, _ = latency_ms(text)
            out["lat_avg_ms"], out["lat_p99_ms"] = avg, p99
        finally:
            ctx.procs.stop(proc)
        return out


if __name__ == "__main__":  # pragma: no cover - a manual look at the generated files
    sys.stdout.write(query_files(3)["mix"] + nsd_zone(3))
