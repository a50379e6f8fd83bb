"""The ``programming`` scenario's fake API server (with a control channel) and its client.

    python -m bench.progfake serve --services N --backend-port P --ready PATH --kubeconfig PATH
    python -m bench.progfake measure --ready PATH --changes K [--baseline B] [--warmup W]
                                     [--dns-port P]
    python -m bench.progfake backends --backend-port P [--groups A,B]

All run pinned to the load core by the harness.

``serve`` runs three things on one event loop:

- a :class:`netplane.testing.fakekube.FakeKube` holding N ClusterIP Services
  (one TCP port, 18080, ClusterIPs 127.77.128.1 upwards so that local mode
  can bind them; clear of the addresses and ports tests/l4/test_l4_e2e.py uses)
  and N EndpointSlices of 10 endpoints, made from
  bench/state_scale.py's generators. The endpoints of every Service but the
  measured one are dummies from 127.1.0.1 upwards that no connection reaches;
- two groups of 10 backends, ``a`` on 127.0.31.1-10 and ``b`` on
  127.0.32.1-10, port P: each connection gets ``GROUP ADDRESS\\n`` and is
  closed. The measured Service (index N // 2) has its 10 endpoints in one
  group at a time;
- a control server on 127.0.0.1 speaking lines: ``set a`` / ``set b``
  re-applies the measured EndpointSlice with that group's endpoints and
  answers ``ok T0`` where T0 is CLOCK_MONOTONIC in nanoseconds taken just
  after the object was stored and its watch events queued (system-wide on
  Linux, so the client process compares it with its own clock); ``get``
  answers ``group G``. The event reaches the watch streams when this handler
  yields, i.e. right after the answer is written.

Beside them, one headless Service (``dns-probe`` in the measured Service's
namespace) has an EndpointSlice of 10 endpoints in one group at a time;
``dset a`` / ``dset b`` flip it the same way and answer ``ok T0``; ``dget``
answers its group. It is what DNS programming latency is measured on.

When everything listens it writes the kubeconfig, then ``--ready`` (JSON:
control port, measured Service's namespace/name, ClusterIP and port), each
atomically. It exits on SIGTERM/SIGINT or when its parent goes away.

``measure`` first times B probes with nothing changing (a probe is one new
TCP connection to the ClusterIP, read to EOF: its round trip through the
proxy is the measurement's resolution and the floor under every latency).
Then it makes K changes, after W unrecorded ones: it flips the measured slice
to the other group through the control channel and takes T0 from the answer,
then probes back to back (no pause) until an answer names the new group; T1
is when that answer arrived, latency = T1 - T0. Also recorded: when that
connection was opened (T1 minus its own trip through the proxy). A change
not seen within ``--give-up-s`` counts as a failure. Between changes it
sleeps ``--pause-ms`` so watch events never coalesce. It prints one JSON
object: latencies and opening times (ms) with percentiles, failures, probes
per change, probe round trips (ms).

For the ``kernel`` scenario, whose probes cross network namespaces (client,
node, endpoints), ``serve`` takes ``--cluster-ip-base`` (the first
ClusterIP), ``--groups`` (the two groups' address prefixes),
``--control-host`` (where the control channel listens; ``measure`` reads it
from the ready file) and ``--no-backends``; the backends then run in another
process, in the endpoints' namespace:
``python -m bench.progfake backends --backend-port P [--groups A,B]``.

With ``--dns-port P`` the same loop measures DNS instead: the changes flip
the headless ``dns-probe`` Service (``dset``), and a probe is one UDP A query
for its name to netplane's DNS on 127.0.0.1:P; T1 is when an answer first
lists the new group's addresses.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import ipaddress
import json
import os
import resource
import socket
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Any

from bench.fakeapi import TOKEN, publish_kubeconfig, until_stopped
from bench.state_scale import make_service, make_slice, percentile
from netplane.testing.fakekube import FakeKube

PER_SLICE = 10
SERVICE_PORT = 18080
TARGET_PORT = 8080
FIRST_CLUSTER_IP = ipaddress.ip_address("127.77.128.1")
MAX_SERVICES = 32_000  # ClusterIPs stay inside 127.77.128.0/17
DUMMY_NET = ipaddress.ip_address("127.1.0.1")  # endpoints no connection goes to
GROUPS = {"a": "127.0.31.", "b": "127.0.32."}
DNS_PROBE = "dns-probe"  # the headless Service whose slice the DNS measurement flips


def cluster_ip(i: int, first: ipaddress.IPv4Address = FIRST_CLUSTER_IP) -> str:
    return str(first + i)


def measured_index(services: int) -> int:
    return services // 2


def service(i: int, first: ipaddress.IPv4Address = FIRST_CLUSTER_IP) -> dict[str, Any]:
    """state_scale's Service i, moved to ClusterIP ``first + i`` with one TCP port."""
    svc = make_service(i)
    spec = svc["spec"]
    spec["clusterIP"] = cluster_ip(i, first)
    spec["clusterIPs"] = [cluster_ip(i, first)]
    spec["ports"] = [
        {"name": "http", "port": SERVICE_PORT, "protocol": "TCP", "targetPort": TARGET_PORT}
    ]
    return svc


def endpoint_slice(i: int, addresses: list[str] | None = None, port: int = TARGET_PORT) -> dict:
    """state_scale's EndpointSlice i with one port; dummy addresses unless given."""
    sl = make_slice(i, PER_SLICE)
    for j, ep in enumerate(sl["endpoints"]):
        ep["addresses"] = [addresses[j] if addresses else str(DUMMY_NET + i * PER_SLICE + j)]
    sl["ports"] = [{"name": "http", "port": port, "protocol": "TCP"}]
    return sl


def group_addresses(group: str, groups: dict[str, str] = GROUPS) -> list[str]:
    return [f"{groups[group]}{j + 1}" for j in range(PER_SLICE)]


def raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def dns_probe_service(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": DNS_PROBE, "namespace": namespace, "resourceVersion": "1"},
        "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": SERVICE_PORT}]},
    }


def dns_probe_slice(namespace: str, group: str, groups: dict[str, str] = GROUPS) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{DNS_PROBE}-1",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": DNS_PROBE},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": TARGET_PORT, "protocol": "TCP"}],
        "endpoints": [{"addresses": [a]} for a in group_addresses(group, groups)],
    }


class ProgFake:
    def __init__(
        self,
        services: int,
        backend_port: int,
        *,
        first_cluster_ip: ipaddress.IPv4Address = FIRST_CLUSTER_IP,
        groups: dict[str, str] = GROUPS,
        control_host: str = "127.0.0.1",
        backends: bool = True,
    ) -> None:
        self.services = services
        self.backend_port = backend_port
        self.first_cluster_ip = first_cluster_ip
        self.groups = groups
        self.control_host = control_host
        self.backends = backends  # False: another process serves the groups
        self.target = measured_index(services)
        self.group = "a"
        self.dns_group = "a"
        self.namespace = service(self.target)["metadata"]["namespace"]
        self.fake = FakeKube(tokens=(TOKEN,))
        self.servers: list[asyncio.Server] = []
        self.control_port = 0

    def load(self) -> None:
        fake = self.fake
        for i in range(self.services):
            fake.apply(service(i, self.first_cluster_ip))
        for i in range(self.services):
            if i == self.target:
                fake.apply(self.measured_slice(self.group))
            else:
                fake.apply(endpoint_slice(i))
        fake.apply(dns_probe_service(self.namespace))
        fake.apply(dns_probe_slice(self.namespace, self.dns_group, self.groups))
        fake.history.clear()  # nothing watches from before the list; keep memory flat
        fake.compacted_rv = 0
        # The loaded objects live on: keep them out of later collections, or a
        # full collection over them (hundreds of ms at 10k) lands on a change.
        gc.collect()
        gc.freeze()

    def measured_slice(self, group: str) -> dict[str, Any]:
        return endpoint_slice(self.target, group_addresses(group, self.groups), self.backend_port)

    async def start_backends(self) -> None:
        for group, prefix in self.groups.items():
            for j in range(PER_SLICE):
                host = f"{prefix}{j + 1}"
                answer = f"{group} {host}\n".encode()

                async def handle(
                    r: asyncio.StreamReader, w: asyncio.StreamWriter, answer: bytes = answer
                ) -> None:
                    w.write(answer)
                    with contextlib.suppress(ConnectionError):
                        await w.drain()
                    w.close()

                self.servers.append(await asyncio.start_server(handle, host, self.backend_port))

    async def control(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while line := await r.readline():
                cmd = line.decode().split()
                if cmd == ["get"]:
                    w.write(b"group %s\n" % self.group.encode())
                elif len(cmd) == 2 and cmd[0] == "set" and cmd[1] in self.groups:
                    self.fake.apply(self.measured_slice(cmd[1]))
                    t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
                    self.group = cmd[1]
                    w.write(b"ok %d\n" % t0)
                elif cmd == ["dget"]:
                    w.write(b"group %s\n" % self.dns_group.encode())
                elif len(cmd) == 2 and cmd[0] == "dset" and cmd[1] in self.groups:
                    self.fake.apply(dns_probe_slice(self.namespace, cmd[1], self.groups))
                    t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
                    self.dns_group = cmd[1]
                    w.write(b"ok %d\n" % t0)
                else:
                    w.write(b"error unknown command\n")
                await w.drain()
        except ConnectionError:
            pass
        finally:
            w.close()

    async def start(self) -> None:
        if self.backends:
            await self.start_backends()
        ctl = await asyncio.start_server(self.control, self.control_host, 0)
        self.servers.append(ctl)
        self.control_port = ctl.sockets[0].getsockname()[1]
        await self.fake.start()

    async def stop(self) -> None:
        for s in self.servers:
            s.close()
        await self.fake.stop()

    def ready_doc(self) -> dict[str, Any]:
        svc = service(self.target)["metadata"]
        return {
            "control_port": self.control_port,
            "control_host": self.control_host,
            "namespace": svc["namespace"],
            "name": svc["name"],
            "cluster_ip": cluster_ip(self.target, self.first_cluster_ip),
            "port": SERVICE_PORT,
            "services": self.services,
            "dns_name": f"{DNS_PROBE}.{self.namespace}.svc.cluster.local",
            "pid": os.getpid(),
        }


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def serve(args: argparse.Namespace) -> None:
    pf = ProgFake(
        args.services,
        args.backend_port,
        first_cluster_ip=ipaddress.IPv4Address(args.cluster_ip_base),
        groups=_groups(args.groups),
        control_host=args.control_host,
        backends=not args.no_backends,
    )
    pf.load()
    await pf.start()
    publish_kubeconfig(pf.fake, Path(args.kubeconfig))
    _write_atomic(Path(args.ready), json.dumps(pf.ready_doc()))
    try:
        await until_stopped()
    finally:
        await pf.stop()


async def backends(args: argparse.Namespace) -> None:
    """Only the two groups of backends (``serve --no-backends`` runs the rest elsewhere)."""
    pf = ProgFake(1, args.backend_port, groups=_groups(args.groups))
    await pf.start_backends()
    try:
        await until_stopped()
    finally:
        for s in pf.servers:
            s.close()


def _groups(text: str | None) -> dict[str, str]:
    """``--groups A,B``: the address prefixes of groups a and b (default 127.0.31., 127.0.32.)."""
    if not text:
        return GROUPS
    a, b = text.split(",")
    return {"a": a, "b": b}


def now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def probe(ip: str, port: int, timeout: float) -> bytes:
    """One new connection to the Service: its whole answer (b"" if refused or reset)."""
    try:
        with socket.create_connection((ip, port), timeout=timeout) as s:
            data = b""
            while chunk := s.recv(256):
                data += chunk
            return data
    except OSError:
        return b""


def dns_query(name: str, qid: int) -> bytes:
    qname = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + b"\0\x01\0\x01"


def dns_probe(sock: socket.socket, port: int, name: str, timeout: float) -> bytes:
    """One A query for ``name``: the first answer's address as text (b"" without one).

    A cluster answer holds the question once and each A record's owner as a
    compression pointer, so the first address is the 4 bytes after the first
    ``00 01 00 01 TTL(4) 00 04`` past the question.
    """
    qid = int.from_bytes(os.urandom(2), "big")
    packet = dns_query(name, qid)
    sock.settimeout(timeout)
    try:
        sock.sendto(packet, ("127.0.0.1", port))
        while True:
            data = sock.recv(4096)
            if data[:2] == packet[:2]:
                break
    except OSError:
        return b""
    if len(data) < 12 or data[3] & 0x0F or data[6:8] == b"\0\0":
        return b""
    rdata = data.find(b"\x00\x01\x00\x01", len(packet)) + 10
    if rdata < 10 or len(data) < rdata + 6 or data[rdata - 2 : rdata] != b"\x00\x04":
        return b""
    return ".".join(str(b) for b in data[rdata : rdata + 4]).encode()


class Control:
    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.file = self.sock.makefile("rb")

    def ask(self, line: str) -> list[str]:
        self.sock.sendall(line.encode() + b"\n")
        return self.file.readline().decode().split()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    ready = json.loads(Path(args.ready).read_text())
    ip, port = ready["cluster_ip"], ready["port"]
    ctl = Control(ready["control_port"], ready.get("control_host", "127.0.0.1"))
    get, set_ = ("dget", "dset") if args.dns_port else ("get", "set")
    probe = _probe_for(args, ready)
    try:
        group = ctl.ask(get)[1]
        # The Service must answer with the current group before the first change.
        deadline = time.monotonic() + args.settle_s
        while not probe(ip, port, 1.0).startswith(group.encode()):
            if time.monotonic() > deadline:
                raise SystemExit(f"{ip}:{port} does not answer with group {group!r}")
            time.sleep(0.01)
        # Baseline: the probe's own round trip through the proxy with nothing changing,
        # the measurement's resolution and the floor under every latency.
        baseline: list[float] = []
        for _ in range(args.baseline):
            start = now_ns()
            probe(ip, port, 1.0)
            baseline.append((now_ns() - start) / 1e6)
        baseline.sort()
        latencies: list[float] = []
        opened: list[float] = []  # T0 -> when the first connection that got the new group opened
        probes: list[int] = []
        rtts: list[float] = []
        failures = 0
        give_up = int(args.give_up_s * 1e9)
        for i in range(args.warmup + args.changes):
            time.sleep(args.pause_ms / 1000)
            group = "b" if group == "a" else "a"
            want = group.encode()
            answer = ctl.ask(f"{set_} {group}")
            if answer[:1] != ["ok"]:
                raise SystemExit(f"control channel: {answer!r}")
            t0 = int(answer[1])
            n = 0
            while True:
                start = now_ns()
                data = probe(ip, port, 1.0)
                t1 = now_ns()
                n += 1
                rtts.append((t1 - start) / 1e6)
                if data.startswith(want):
                    ok = True
                    break
                if t1 - t0 > give_up:
                    ok = False
                    break
            if i < args.warmup:
                continue
            probes.append(n)
            if ok:
                latencies.append((t1 - t0) / 1e6)
                opened.append(max(0, start - t0) / 1e6)
            else:
                failures += 1
                # let the change land before the next one, bounded
                deadline = time.monotonic() + args.settle_s
                while not probe(ip, port, 1.0).startswith(want) and time.monotonic() < deadline:
                    time.sleep(0.01)
    finally:
        ctl.close()
    ordered = sorted(latencies)
    opened_sorted = sorted(opened)
    return {
        "changes": args.changes,
        "failures": failures,
        "latencies_ms": [round(v, 4) for v in latencies],
        "p50_ms": percentile(ordered, 0.50),
        "p99_ms": percentile(ordered, 0.99),
        "max_ms": ordered[-1] if ordered else 0.0,
        "opened_ms": [round(v, 4) for v in opened],
        "open_p50_ms": percentile(opened_sorted, 0.50),
        "open_p99_ms": percentile(opened_sorted, 0.99),
        "probes_per_change": probes,
        "probe_ms_median": statistics.median(rtts) if rtts else 0.0,
        "baseline_p50_ms": percentile(baseline, 0.50),
        "baseline_p99_ms": percentile(baseline, 0.99),
    }


def _probe_for(args: argparse.Namespace, ready: dict[str, Any]) -> Any:
    """The L4 probe, or with --dns-port one DNS query whose answer starts like a backend's."""
    if not args.dns_port:
        return probe
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    name = ready["dns_name"]
    prefixes = {prefix.encode(): group.encode() for group, prefix in GROUPS.items()}

    def dns(_ip: str, _port: int, timeout: float) -> bytes:
        addr = dns_probe(sock, args.dns_port, name, timeout)
        for prefix, group in prefixes.items():
            if addr.startswith(prefix):
                return group + b" " + addr
        return b""

    return dns


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sv = sub.add_parser("serve", help="the fake API server, control channel and backends")
    sv.add_argument("--services", type=int, required=True)
    sv.add_argument("--backend-port", type=int, required=True)
    sv.add_argument("--kubeconfig", required=True)
    sv.add_argument("--ready", required=True, help="JSON file written when serving")
    sv.add_argument("--cluster-ip-base", default=str(FIRST_CLUSTER_IP), help="the first ClusterIP")
    sv.add_argument("--groups", help="address prefixes of groups a and b: A,B")
    sv.add_argument("--control-host", default="127.0.0.1", help="the control channel's address")
    sv.add_argument("--no-backends", action="store_true", help="`backends` serves the groups")
    bk = sub.add_parser("backends", help="only the two groups of backends")
    bk.add_argument("--backend-port", type=int, required=True)
    bk.add_argument("--groups", help="address prefixes of groups a and b: A,B")
    ms = sub.add_parser("measure", help="make changes and time them; JSON on stdout")
    ms.add_argument("--ready", required=True, help="the ready file of `serve`")
    ms.add_argument("--changes", type=int, required=True)
    ms.add_argument("--warmup", type=int, default=5, help="unrecorded changes first")
    ms.add_argument("--baseline", type=int, default=300, help="probes before any change")
    ms.add_argument("--pause-ms", type=float, default=20.0)
    ms.add_argument("--give-up-s", type=float, default=2.0)
    ms.add_argument("--settle-s", type=float, default=10.0)
    ms.add_argument("--dns-port", type=int, default=0, help="measure DNS on 127.0.0.1:P instead")
    args = ap.parse_args(argv)
    if args.cmd == "measure":
        print(json.dumps(measure(args)))
        return 0
    if args.cmd == "backends":
        asyncio.run(backends(args))
        return 0
    if not 1 <= args.services <= MAX_SERVICES:
        ap.error(f"--services must be within 1..{MAX_SERVICES} (ClusterIPs in 127.77.128.0/17)")
    raise_file_limit()
    try:
        import uvloop

        uvloop.run(serve(args))
    except ImportError:
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
