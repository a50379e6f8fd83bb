"""The nftables datapath end to end: real namespaces, real packets, netplane stopped at will.

Topology (addresses from 198.18.0.0/15 only; the service CIDR is 198.19.0.0/16)::

    client 198.18.0.2, .3 --- 198.18.0.1  node  198.18.1.1 --- epa 198.18.1.10, .11, .12
                                                198.18.2.1 --- epb 198.18.2.10, .11

The "node" namespace forwards (``net.ipv4.ip_forward=1``) and runs
``netplane run --mode node --l4-datapath nftables --workers 1``; the client
and the endpoint namespaces route everything through it. Each endpoint
namespace runs one small backend on all its addresses: over TCP it answers
a line with JSON naming the address that served, the peer it saw and the
PROXY v2 source if a header came first; over UDP it echoes the same.

The test process is the client itself: sockets made by a thread that
entered the client's namespace belong to it (:class:`netns_world.NsThread`).
netplane is SIGSTOPped to show that the kernel, not the proxy, carries the
traffic (always SIGCONTed in a finally). Skipped without root, ``ip``,
``nft`` or network namespaces; every namespace is deleted at the end.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import socket
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import l4_world
import pytest
from netns_world import Topology, can_make_namespaces, until

from netplane.testing.process import Netplane

pytestmark = pytest.mark.e2e
_why_not = can_make_namespaces("nft", "curl", probe=("nft", "list", "tables"))
if _why_not:
    pytestmark = [pytestmark, pytest.mark.skip(reason=_why_not)]

SERVICE_CIDR = "198.19.0.0/16"
NODE_IP, CLIENT, CLIENT2 = "198.18.0.1", "198.18.0.2", "198.18.0.3"
NODE_TO_A, NODE_TO_B = "198.18.1.1", "198.18.2.1"  # what a masqueraded flow comes from
A1, A2, A3 = "198.18.1.10", "198.18.1.11", "198.18.1.12"
B1, B2 = "198.18.2.10", "198.18.2.11"
EXTERNAL_IP = "198.18.99.1"
NODE_NAME = "node-a"  # A's endpoints are on this node, B's on node-b
TCP_PORT, UDP_PORT = 8080, 5353  # where the backends listen
ADMIN = "127.0.0.1:10256"

BACKEND = r"""
import asyncio, json, pathlib, sys

SIG = b"\r\n\r\n\x00\r\nQUIT\n"

def parse(buf):
    '(PROXY v2 source or None, first line) once both are in; None before'
    src = None
    if buf[:12] == SIG[:len(buf[:12])]:
        if len(buf) < 16:
            return None
        n = 16 + int.from_bytes(buf[14:16], "big")
        if len(buf) < n:
            return None
        if buf[13] == 0x11:  # TCP over IPv4
            src = ".".join(str(b) for b in buf[16:20])
        else:
            src = "family %d" % buf[13]
        buf = buf[n:]
    if b"\n" not in buf:
        return None
    return src, buf.split(b"\n", 1)[0]

async def tcp(reader, writer):
    buf, got = b"", None
    try:
        while (got := parse(buf)) is None:
            chunk = await asyncio.wait_for(reader.read(4096), 10)
            if not chunk:
                break
            buf += chunk
        src, line = got or (None, buf)
        served, peer = writer.get_extra_info("sockname"), writer.get_extra_info("peername")
        answer = {"served": served[0], "peer": peer[0], "proxy": src, "data": line.decode()}
        writer.write(json.dumps(answer).encode() + b"\n")
        await writer.drain()
    except (OSError, asyncio.TimeoutError):
        pass
    writer.close()

class Udp(asyncio.DatagramProtocol):
    def __init__(self, host):
        self.host = host
    def connection_made(self, t):
        self.t = t
    def datagram_received(self, data, addr):
        answer = {"served": self.host, "peer": addr[0], "data": data.decode()}
        self.t.sendto(json.dumps(answer).encode(), addr)

async def main(ready, tcp_port, udp_port, *hosts):
    loop = asyncio.get_running_loop()
    for h in hosts:
        await asyncio.start_server(tcp, h, int(tcp_port), backlog=512)
        await loop.create_datagram_endpoint(lambda h=h: Udp(h), local_addr=(h, int(udp_port)))
    pathlib.Path(ready).write_text("ready")
    await asyncio.Event().wait()

asyncio.run(main(*sys.argv[1:]))
"""


# -- manifests -------------------------------------------------------------------------


def service(name: str, ip: str, *, udp: bool = False, node_ports: tuple[int, ...] = (),
            annotations: dict | None = None, **spec: Any) -> dict:  # fmt: skip
    """A Service on ``ip``: port "tcp" 80 (and "udp" 53), NodePorts in that order."""
    ports: list[dict[str, Any]] = [{"name": "tcp", "port": 80, "protocol": "TCP"}]
    if udp:
        ports.append({"name": "udp", "port": 53, "protocol": "UDP"})
    for p, node_port in zip(ports, node_ports, strict=False):
        p["nodePort"] = node_port
    if node_ports:
        spec.setdefault("type", "NodePort")
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "t", "annotations": annotations or {}},
        "spec": {"clusterIP": ip, "ports": ports, **spec},
    }


def node_of(address: str) -> str:
    return NODE_NAME if address.startswith("198.18.1.") else "node-b"


def endpoints(name: str, addrs: list[str], conditions: dict[str, dict] | None = None) -> dict:
    """The Service's EndpointSlice: ``addrs`` ready unless ``conditions`` says otherwise."""
    conditions = conditions or {}
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-1",
            "namespace": "t",
            "labels": {"kubernetes.io/service-name": name},
        },
        "addressType": "IPv4",
        "ports": [
            {"name": "tcp", "port": TCP_PORT, "protocol": "TCP"},
            {"name": "udp", "port": UDP_PORT, "protocol": "UDP"},
        ],
        "endpoints": [
            {
                "addresses": [a],
                "conditions": conditions.get(a, {"ready": True}),
                "nodeName": node_of(a),
            }
            for a in addrs
        ],
    }


FOUR = [A1, A2, B1, B2]
TERMINATING = {"ready": False, "serving": True, "terminating": True}
GONE = {"ready": False, "serving": False, "terminating": True}

NFT_SERVICES = [
    service("web", "198.19.0.10", udp=True, node_ports=(30080, 30053), externalIPs=[EXTERNAL_IP]),
    endpoints("web", FOUR),
    service("empty", "198.19.0.20", udp=True, node_ports=(30020, 30021)),
    endpoints("empty", []),
    service("sticky", "198.19.0.30", sessionAffinity="ClientIP"),
    endpoints("sticky", FOUR),
    service("local", "198.19.0.40", node_ports=(30040,), externalTrafficPolicy="Local"),
    endpoints("local", FOUR),
    service("ilocal", "198.19.0.50", internalTrafficPolicy="Local"),
    endpoints("ilocal", FOUR),
    service("term", "198.19.0.60"),
    endpoints("term", [A1, A2, B1], {A1: TERMINATING, B1: TERMINATING, A2: GONE}),
]
LIVE_IP = "198.19.0.70"


def live(addrs: list[str]) -> list[dict]:
    return [service("live", LIVE_IP, udp=True), endpoints("live", addrs)]


PLAIN_IP, PP_IP = "198.19.0.80", "198.19.0.81"
AUTO_SERVICES = [
    service("plain", PLAIN_IP),
    endpoints("plain", [A1]),
    service("pp", PP_IP, annotations={"netplane.io/proxy-protocol": "v2"}),
    endpoints("pp", [A2]),
]


# -- the world -------------------------------------------------------------------------

_worlds = iter(range(1000))


class World:
    """The namespaces, the backends and netplane of one topology (see the module docstring)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.topo = Topology(f"nft{os.getpid() % 100000}{next(_worlds)}")
        self.mdir = tmp / "m"
        self.np: Netplane | None = None

    def up(self, services: list[dict]) -> None:
        t = self.topo
        self.node, self.client = t.ns("node"), t.ns("cli")
        self.ep_a, self.ep_b = t.ns("epa"), t.ns("epb")
        t.link(self.node, [f"{NODE_IP}/24"], self.client, [f"{CLIENT}/24", f"{CLIENT2}/24"])
        t.link(self.node, [f"{NODE_TO_A}/24"], self.ep_a, [f"{a}/24" for a in (A1, A2, A3)])
        t.link(self.node, [f"{NODE_TO_B}/24"], self.ep_b, [f"{a}/24" for a in (B1, B2)])
        for ns, via in ((self.client, NODE_IP), (self.ep_a, NODE_TO_A), (self.ep_b, NODE_TO_B)):
            t.run(ns, "ip", "route", "add", "default", "via", via)
        t.run(self.node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        readies = []
        for ns, hosts in ((self.ep_a, (A1, A2, A3)), (self.ep_b, (B1, B2))):
            ready = self.tmp / f"{ns}.ready"
            t.spawn(ns, sys.executable, "-c", BACKEND, str(ready), str(TCP_PORT), str(UDP_PORT),
                    *hosts, log=self.tmp / f"{ns}.log")  # fmt: skip
            readies.append(ready)
        self.cli = t.thread(self.client)
        self.node_thread = t.thread(self.node)
        self.mdir.mkdir()
        l4_world.write(self.mdir, "services", services)
        until(lambda: all(r.exists() for r in readies), "the backends", 10)

    def start(self, datapath: str) -> Netplane:
        np = self.np = Netplane(
            "run", "-f", str(self.mdir), "--mode", "node", "--l4-datapath", datapath,
            "--service-cidr", SERVICE_CIDR, "--node-ip", NODE_IP, "--node-name", NODE_NAME,
            "--admin", ADMIN, "--dns", "off", "--ingress-http", "off", "--ingress-https", "off",
            "--workers", "1", "--manifest-poll-seconds", "0.05", "--shutdown-grace", "1",
            workdir=self.tmp, name=f"netplane-{datapath}", prefix=["ip", "netns", "exec", self.node],
        )  # fmt: skip
        return np.start()

    def down(self) -> None:
        if self.np is not None and self.np.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.np.pid, signal.SIGCONT)
            self.np.stop()
        self.topo.down()

    # -- what a client sees ----------------------------------------------------------

    def tcp(self, ip: str, port: int, *, src: str | None = None, timeout: float = 3.0) -> dict:
        """One connection: the backend's JSON answer to a line."""
        with self.cli.socket(socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            if src is not None:
                s.bind((src, 0))
            s.connect((ip, port))
            s.sendall(b"hello\n")
            buf = b""
            while b"\n" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
        return json.loads(buf)

    def udp(self, ip: str, port: int, *, timeout: float = 3.0) -> dict:
        """One datagram from a new socket (a new flow), answered by the backend."""
        with self.cli.socket(socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.connect((ip, port))  # replies from any other address are dropped
            s.send(b"hello")
            return json.loads(s.recv(4096))

    def many(self, n: int, ask, *args: Any, **kw: Any) -> list[dict]:
        return [ask(*args, **kw) for _ in range(n)]

    def state(self) -> dict:
        """``planes.nftables`` of /debug/state (asked from the node's namespace)."""

        def get() -> dict:
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(f"http://{ADMIN}/debug/state", timeout=3) as r:
                return json.loads(r.read())

        return self.node_thread.call(get)["planes"]["nftables"]

    def port_state(self, name: str, port: str = "tcp") -> dict | None:
        for p in self.state()["ports"]:
            if p["service"] == f"t/{name}" and p["port"] == port:
                return p
        return None

    @contextlib.contextmanager
    def stopped(self) -> Iterator[None]:
        """netplane SIGSTOPped (its one process: --workers 1) until the block ends."""
        assert self.np is not None
        pid = self.np.pid
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"netplane" in argv and not argv[0].endswith(b"ip"), argv  # the PID is netplane's
        os.kill(pid, signal.SIGSTOP)
        try:
            until(lambda: _proc_state(pid) == "T", "netplane to stop", 5, 0.01)
            yield
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def _proc_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def served_by(answers: list[dict]) -> collections.Counter[str]:
    return collections.Counter(a["served"] for a in answers)


def assert_spread(answers: list[dict], eps: list[str]) -> None:
    """Every one of ``eps`` served a share, and nothing else did.

    Loosely: within 5 standard deviations of an even split (a uniform random
    choice per connection), which a broken choice (one endpoint, or one left
    out) misses by far and a fair one almost never does.
    """
    counts = served_by(answers)
    assert set(counts) == set(eps), counts
    n, p = len(answers), 1 / len(eps)
    share, sd = n * p, (n * p * (1 - p)) ** 0.5
    for ep in eps:
        assert max(1, share - 5 * sd) <= counts[ep] <= share + 5 * sd, counts


def masq_source(served: str) -> str:
    """The node's address on the served endpoint's side: the source after masquerade."""
    return NODE_TO_A if served.startswith("198.18.1.") else NODE_TO_B


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One topology and one `netplane --l4-datapath nftables` for the module's tests."""
    w = World(tmp_path_factory.mktemp("nft"))
    try:
        w.up(NFT_SERVICES)
        l4_world.write(w.mdir, "live", live([A1]))
        w.start("nftables")
        yield w
    finally:
        w.down()


# -- tests -----------------------------------------------------------------------------


def test_cluster_ip_node_port_and_external_ip_are_served_and_spread(world: World):
    n = 200
    # ClusterIP: the client's own address reaches the endpoint (DNAT, no masquerade)
    for answers in (world.many(n, world.tcp, "198.19.0.10", 80),
                    world.many(n, world.udp, "198.19.0.10", 53)):  # fmt: skip
        assert_spread(answers, FOUR)
        assert {a["peer"] for a in answers} == {CLIENT}
        assert {a["data"] for a in answers} == {"hello"}
    # NodePort on the node's address and the externalIP, externalTrafficPolicy Cluster:
    # masqueraded, so the endpoint sees the node (its address on the endpoint's side)
    for ask, ip, port in (
        (world.tcp, NODE_IP, 30080),
        (world.udp, NODE_IP, 30053),
        (world.tcp, EXTERNAL_IP, 80),
        (world.udp, EXTERNAL_IP, 53),
    ):
        answers = world.many(n, ask, ip, port)
        assert_spread(answers, FOUR)
        assert all(a["peer"] == masq_source(a["served"]) for a in answers), answers[:5]
    st = world.state()
    assert st["mode"] == "nftables" and st["synced"] and st["failures"] == 0, st
    web = [p for p in st["ports"] if p["service"] == "t/web"]
    assert {(p["port"], p["datapath"], p["endpoints"]) for p in web} == {
        ("tcp", "nftables", 4), ("udp", "nftables", 4),
    }  # fmt: skip


def test_the_kernel_serves_while_netplane_is_stopped(world: World):
    with world.stopped():
        tcp = world.many(20, world.tcp, "198.19.0.10", 80)
        udp = world.many(20, world.udp, "198.19.0.10", 53)
        node_port = world.many(20, world.tcp, NODE_IP, 30080)
    for answers in (tcp, udp, node_port):
        assert set(served_by(answers)) <= set(FOUR) and len(answers) == 20
        assert {a["data"] for a in answers} == {"hello"}
    assert {a["peer"] for a in tcp + udp} == {CLIENT}


def test_no_endpoint_is_refused_by_the_kernel(world: World):
    with world.stopped():
        for ip, port in (("198.19.0.20", 80), (NODE_IP, 30020)):
            with world.cli.socket(socket.SOCK_STREAM) as s:
                s.settimeout(3)
                with pytest.raises(ConnectionRefusedError):  # a reset, not a timeout
                    s.connect((ip, port))
        for ip, port in (("198.19.0.20", 53), (NODE_IP, 30021)):
            with world.cli.socket(socket.SOCK_DGRAM) as s:
                s.settimeout(3)
                s.connect((ip, port))
                s.send(b"hello")
                with pytest.raises(ConnectionRefusedError):  # ICMP port unreachable
                    s.recv(4096)
    empty = world.port_state("empty")
    assert empty is not None and empty["datapath"] == "nftables" and empty["endpoints"] == 0


def test_client_ip_affinity_keeps_each_client_on_one_endpoint(world: World):
    seen = {}
    for src in (CLIENT, CLIENT2):
        answers = world.many(30, world.tcp, "198.19.0.30", 80, src=src)
        assert len(served_by(answers)) == 1, (src, served_by(answers))
        assert {a["peer"] for a in answers} == {src}
        seen[src] = answers[0]["served"]
    assert set(seen.values()) <= set(FOUR)


def test_traffic_policies(world: World):
    # externalTrafficPolicy Local: NodePort traffic only to this node's endpoints,
    # and the client's address preserved
    answers = world.many(100, world.tcp, NODE_IP, 30040)
    assert_spread(answers, [A1, A2])
    assert {a["peer"] for a in answers} == {CLIENT}
    # ... while its ClusterIP (internalTrafficPolicy Cluster) uses every endpoint
    assert_spread(world.many(100, world.tcp, "198.19.0.40", 80), FOUR)
    # externalTrafficPolicy Cluster: every endpoint, the node's address as the source
    answers = world.many(100, world.tcp, NODE_IP, 30080)
    assert_spread(answers, FOUR)
    assert all(a["peer"] == masq_source(a["served"]) for a in answers), answers[:5]
    # internalTrafficPolicy Local: the ClusterIP reaches this node's endpoints only
    answers = world.many(100, world.tcp, "198.19.0.50", 80)
    assert_spread(answers, [A1, A2])
    assert {a["peer"] for a in answers} == {CLIENT}
    local = world.port_state("local")
    assert local is not None and (local["endpoints"], local["external_endpoints"]) == (4, 2)


def test_serving_terminating_endpoints_are_used_when_no_other_is_ready(world: World):
    answers = world.many(100, world.tcp, "198.19.0.60", 80)
    assert_spread(answers, [A1, B1])  # A2 (terminating, not serving) never
    assert {a["peer"] for a in answers} == {CLIENT}


class Flow:
    """One UDP socket kept open: every datagram is one flow for conntrack (a resolver's port)."""

    def __init__(self, world: World, ip: str, port: int) -> None:
        self.sock = world.cli.socket(socket.SOCK_DGRAM)
        self.sock.settimeout(3)
        self.sock.connect((ip, port))

    def ask(self) -> str:
        self.sock.send(b"hello")
        return json.loads(self.sock.recv(4096))["served"]


def test_a_change_at_run_time_reaches_the_kernel(world: World):
    assert served_by(world.many(20, world.tcp, LIVE_IP, 80)) == {A1: 20}
    with contextlib.ExitStack() as stack:
        flow = Flow(world, LIVE_IP, 53)
        stack.callback(flow.sock.close)
        assert flow.ask() == A1
        # flows of another Service that A1 serves too, which the change must not touch
        others: list[Flow] = []
        for _ in range(80):
            other = Flow(world, "198.19.0.10", 53)
            stack.callback(other.sock.close)
            if other.ask() == A1:
                others.append(other)
                if len(others) == 4:
                    break
        assert len(others) == 4
        before = world.state()

        def programmed(n: int, syncs: int) -> bool:
            st = world.state()
            p = next((p for p in st["ports"] if p["service"] == "t/live"), None)
            return st["syncs"]["incremental"] > syncs and p is not None and p["endpoints"] == n

        l4_world.write(world.mdir, "live", live([A1, B1]))  # a temp file renamed over the old
        until(lambda: programmed(2, before["syncs"]["incremental"]), "B1 in the kernel", 10)
        assert_spread(world.many(100, world.tcp, LIVE_IP, 80), [A1, B1])
        assert_spread(world.many(100, world.udp, LIVE_IP, 53), [A1, B1])
        assert flow.ask() == A1  # conntrack keeps an open flow where it was

        before = world.state()
        l4_world.write(world.mdir, "live", live([B1]))
        until(lambda: programmed(1, before["syncs"]["incremental"]), "A1 out of the kernel", 10)
        assert served_by(world.many(50, world.tcp, LIVE_IP, 80)) == {B1: 50}
        # the conntrack entries of the removed endpoint go, just after the
        # transaction (until then, a new socket that happens to get the source
        # port of an earlier flow is that flow for conntrack, still on A1) ...
        cleared = before["udp_flows_cleared"]
        until(lambda: world.state()["udp_flows_cleared"] > cleared, "A1's UDP flows cleared", 10)
        assert served_by(world.many(50, world.udp, LIVE_IP, 53)) == {B1: 50}
        # ... so the open flow moves on to B1 ...
        assert flow.ask() == B1
        # ... and only this Service's: the other Service's flows stay on A1
        assert [o.ask() for o in others] == [A1] * 4
    assert world.state()["failures"] == 0


def test_auto_keeps_proxy_protocol_in_user_space_and_the_rest_in_the_kernel(tmp_path: Path):
    w = World(tmp_path)
    try:
        w.up(AUTO_SERVICES)
        np = w.start("auto")
        st = w.state()
        assert st["mode"] == "auto" and st["synced"], st
        pp, plain = w.port_state("pp"), w.port_state("plain")
        assert pp is not None and plain is not None, st
        assert (pp["datapath"], pp["reason"]) == (
            "userspace", "PROXY protocol needs the user-space proxy",
        ), pp  # fmt: skip
        assert plain["datapath"] == "nftables", plain

        # the user-space proxy writes a PROXY v2 header with the client's address,
        # and connects from the node; the kernel's DNAT keeps the client's address
        via_proxy = w.tcp(PP_IP, 80)
        assert via_proxy == {"served": A2, "peer": NODE_TO_A, "proxy": CLIENT, "data": "hello"}
        assert w.tcp(PLAIN_IP, 80) == {"served": A1, "peer": CLIENT, "proxy": None,
                                       "data": "hello"}  # fmt: skip

        with w.stopped():
            assert served_by(w.many(10, w.tcp, PLAIN_IP, 80)) == {A1: 10}
            # the proxy's listener may still complete the handshake (its backlog),
            # but no byte reaches the endpoint while netplane is stopped
            with pytest.raises(OSError):  # TimeoutError, or a refusal
                w.tcp(PP_IP, 80, timeout=1.0)
        # and it serves again once netplane runs
        assert w.tcp(PP_IP, 80)["proxy"] == CLIENT, np.tail()
    finally:
        w.down()
