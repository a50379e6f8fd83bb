"""The kernel L4 datapath's life cycle, in network namespaces, with traffic running.

Three namespaces (addresses from 198.18.0.0/15 only, services in 198.19.0.0/16):

    client 198.18.1.2 --- 198.18.1.1 node 198.18.2.1 --- 198.18.2.11-.13 endpoints

``netplane run --mode node`` runs in the node namespace (which forwards); the
client reaches ClusterIPs and the NodePort through it, and the endpoints route
back through it, so the kernel's DNAT needs no masquerade. The backends are
threads of this process whose sockets live in the endpoints' namespace (a
thread enters a namespace with setns; a socket stays in the namespace it was
made in): each TCP connection is greeted with ``"<endpoint> <peer>"``, which
says which endpoint served it and how (the client's own address: the
kernel's DNAT; the node's: the user-space proxy), then echoed; each UDP
datagram is answered the same way.

Every test counts failed connections while the datapath changes under the
traffic: endpoint churn, UDP flows moving, a SIGKILL and a restart that adopts
the table, a clean stop (table gone, or kept with --keep-rules-on-exit),
SIGHUP switching --l4-datapath, nft missing at start, and a transaction
failing because the table was changed behind netplane's back.

Skipped without root, ip, nft, curl or network namespaces; every namespace is
deleted at the end, and only the processes started here are stopped.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import itertools
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import l4_world as world
import pytest

from netplane.testing.process import Netplane

pytestmark = pytest.mark.e2e

NODE_C, CLIENT = "198.18.1.1", "198.18.1.2"  # the node's side toward the client, the client
NODE_E = "198.18.2.1"  # the node's side toward the endpoints (the proxy connects from it)
A, B, C = "198.18.2.11", "198.18.2.12", "198.18.2.13"
SERVICE_CIDR = "198.19.0.0/16"
WEB_IP, WEB_PORT, NODE_PORT = "198.19.0.10", 8080, 30080
DNS_IP, DNS2_IP, DNS_PORT = "198.19.0.20", "198.19.0.21", 53
TCP_TARGET, UDP_TARGET = 18080, 15353
ADMIN = "127.0.0.1:10256"  # in the node's namespace

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_seq = itertools.count()


def sh(*args: str, check: bool = True, timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=timeout)


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "curl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if shutil.which("nft") is None and shutil.which("nft", path="/usr/sbin:/sbin") is None:
        return "nft is not installed"
    name = f"nflprobe{os.getpid()}"
    probe = sh("ip", "netns", "add", name, check=False)
    if probe.returncode != 0:
        return f"this machine cannot create network namespaces: {probe.stderr.strip()}"
    try:
        r = sh("ip", "netns", "exec", name, "nft", "list", "tables", check=False)
        if r.returncode != 0:
            return f"nft cannot run in a network namespace here: {r.stderr.strip()}"
    finally:
        sh("ip", "netns", "del", name, check=False)
    return None


_reason = _why_not()
if _reason:
    pytestmark = [pytestmark, pytest.mark.skip(reason=_reason)]


# -- namespaces from threads -----------------------------------------------------------


def enter(ns: str) -> None:
    """Move the calling thread (only it) into network namespace ``ns``."""
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {ns}: {os.strerror(err)}")
    finally:
        os.close(fd)


def in_ns(ns: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a throwaway thread inside ``ns``; its result (sockets stay in ``ns``)."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            enter(ns)
            out["value"] = fn(*args)
        except BaseException as e:
            out["error"] = e

    t = threading.Thread(target=run, name=f"in-{ns}")
    t.start()
    t.join(30)
    if "error" in out:
        raise out["error"]
    return out.get("value")


# -- backends and clients -----------------------------------------------------------------


class Backends(threading.Thread):
    """TCP and UDP servers on each endpoint address, in the endpoints' namespace.

    TCP: a greeting ``"<endpoint> <peer ip>\\n"``, then every read echoed as
    ``"<endpoint>:<data>"``. UDP: ``"<endpoint> <peer ip>:<data>"``.
    """

    def __init__(self, ns: str, addrs: tuple[str, ...]) -> None:
        super().__init__(name="backends", daemon=True)
        self.ns, self.addrs = ns, addrs
        self.accepted: collections.Counter[str] = collections.Counter()
        self.ready, self.stopping = threading.Event(), threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        try:
            enter(self.ns)
            for a in self.addrs:
                t = socket.create_server((a, TCP_TARGET), backlog=1024)
                t.setblocking(False)
                sel.register(t, selectors.EVENT_READ, ("accept", a))
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                u.bind((a, UDP_TARGET))
                u.setblocking(False)
                sel.register(u, selectors.EVENT_READ, ("udp", a))
            self.ready.set()
            while not self.stopping.is_set():
                for key, _ in sel.select(0.1):
                    self._serve(sel, key)
        except BaseException as e:
            self.error = e
        finally:
            self.ready.set()
            for key in list(sel.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            sel.close()

    def _serve(self, sel: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
        kind, a = key.data
        s: socket.socket = key.fileobj  # type: ignore[assignment]
        if kind == "accept":
            try:
                conn, peer = s.accept()
            except OSError:
                return
            self.accepted[a] += 1
            try:
                conn.send(f"{a} {peer[0]}\n".encode())
            except OSError:
                conn.close()
                return
            conn.setblocking(False)
            sel.register(conn, selectors.EVENT_READ, ("conn", a))
        elif kind == "conn":
            try:
                data = s.recv(4096)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                sel.unregister(s)
                s.close()
                return
            with contextlib.suppress(OSError):
                s.send(f"{a}:".encode() + data)
        else:
            try:
                data, peer = s.recvfrom(2048)
                s.sendto(f"{a} {peer[0]}:".encode() + data, peer)
            except OSError:
                pass

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)


def read_line(s: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n") and len(data) < 256:
        chunk = s.recv(256)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    return data.decode().strip()


def greet(dst: str, port: int) -> tuple[str, str]:
    """(endpoint, the peer it saw) of one new TCP connection (call it inside a namespace)."""
    with socket.create_connection((dst, port), timeout=2) as s:
        endpoint, _, peer = read_line(s).partition(" ")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # RST
        return endpoint, peer


class Load(threading.Thread):
    """New TCP connections one after another from the client's namespace, each greeted.

    Bounded: it stops at ``stop()``, after ``seconds``, or after ``limit`` connections.
    Each connection is reset once greeted (no TIME_WAIT piles up).
    """

    def __init__(
        self, ns: str, dst: str, port: int, *, seconds: float, limit: int, pace: float = 0.0
    ) -> None:
        super().__init__(name=f"load-{dst}:{port}", daemon=True)
        self.ns, self.dst, self.port = ns, dst, port
        self.seconds, self.limit, self.pace = seconds, limit, pace
        self.ok = 0
        self.failures: list[tuple[float, str]] = []
        self.served: collections.Counter[str] = collections.Counter()
        self.last: tuple[str, str] = ("", "")
        self.started_at = 0.0
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            enter(self.ns)
        except OSError as e:
            self.failures.append((0.0, repr(e)))
            return
        self.started_at = time.monotonic()
        deadline = self.started_at + self.seconds
        for _ in range(self.limit):
            if self._stop_event.is_set() or time.monotonic() > deadline:
                break
            try:
                self.last = greet(self.dst, self.port)
                self.served[self.last[0]] += 1
                self.ok += 1
            except OSError as e:
                self.failures.append((time.monotonic() - self.started_at, repr(e)))
            if self.pace:
                time.sleep(self.pace)

    def stop(self) -> Load:
        self._stop_event.set()
        self.join(10)
        return self

    def report(self) -> str:
        return (
            f"{self.dst}:{self.port}: {self.ok} connections, {len(self.failures)} failed "
            f"{self.failures[:5]}, served by {dict(self.served)}"
        )


# -- the world ----------------------------------------------------------------------------


class World:
    """Client, node and endpoints namespaces, the manifests, netplane runs and backends."""

    def __init__(self, tmp: Path) -> None:
        tag = f"{os.getpid() % 100000}x{next(_seq)}"
        self.tag = tag
        self.node, self.client, self.eps = f"nflN{tag}", f"nflC{tag}", f"nflE{tag}"
        self.tmp = tmp
        self.mdir = tmp / "m"
        self.mdir.mkdir()
        self.netplanes: list[Netplane] = []
        self.backends: Backends | None = None
        self.loads: list[Load] = []
        self.stopped: list[Netplane] = []  # SIGSTOPped: continued at the end whatever happens

    def up(self) -> None:
        for ns in (self.node, self.client, self.eps):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        t = self.tag
        for here, there, peer_ns, mine, theirs in (
            (f"nc{t}", f"cn{t}", self.client, f"{NODE_C}/24", f"{CLIENT}/24"),
            (f"ne{t}", f"en{t}", self.eps, f"{NODE_E}/24", None),
        ):
            sh("ip", "link", "add", here, "netns", self.node, "type", "veth",
               "peer", "name", there, "netns", peer_ns)  # fmt: skip
            sh("ip", "-n", self.node, "addr", "add", mine, "dev", here)
            for addr in [theirs] if theirs else [f"{a}/24" for a in (A, B, C)]:
                sh("ip", "-n", peer_ns, "addr", "add", addr, "dev", there)
            sh("ip", "-n", self.node, "link", "set", here, "up")
            sh("ip", "-n", peer_ns, "link", "set", there, "up")
        sh("ip", "-n", self.client, "route", "add", "default", "via", NODE_C)
        sh("ip", "-n", self.eps, "route", "add", "default", "via", NODE_E)
        sh("ip", "netns", "exec", self.node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.backends = Backends(self.eps, (A, B, C))
        self.backends.start()
        self.backends.ready.wait(5)
        if self.backends.error is not None:
            raise self.backends.error

    def down(self) -> None:
        for np in self.stopped:
            np.signal(signal.SIGCONT)
        for load in self.loads:
            load.stop()
        for np in self.netplanes:
            np.stop()
        if self.backends is not None:
            self.backends.stop()
        for ns in (self.node, self.client, self.eps):
            sh("ip", "netns", "del", ns, check=False)

    # -- manifests

    def write(
        self,
        web: list[str] | None = None,
        dns: list[str] | None = None,
        dns2: list[str] | None = None,
        *,
        node_port: bool = False,
    ) -> None:
        """The Services (web TCP, dns and dns2 UDP) with these endpoints; None: no Service."""
        if web is not None:
            svc = world.service("web", WEB_IP, WEB_PORT)
            if node_port:
                svc["spec"]["type"] = "NodePort"
                svc["spec"]["ports"][0]["nodePort"] = NODE_PORT
            ep = world.endpoints("web", [(a, TCP_TARGET) for a in web])
            world.write(self.mdir, "web", [svc, ep])
        for name, ip, eps in (("dns", DNS_IP, dns), ("dns2", DNS2_IP, dns2)):
            if eps is not None:
                svc = world.service(name, ip, DNS_PORT, protocol="UDP")
                ep = world.endpoints(name, [(a, UDP_TARGET) for a in eps], protocol="UDP")
                if not eps:
                    ep["ports"][0]["port"] = UDP_TARGET
                world.write(self.mdir, name, [svc, ep])

    # -- netplane

    def netplane(self, name: str, *extra: str, start: bool = True, **kw: Any) -> Netplane:
        np = Netplane(
            "run", "-f", str(self.mdir), "--mode", "node",
            "--service-cidr", SERVICE_CIDR, "--node-ip", NODE_C, "--node-name", "node-a",
            "--admin", ADMIN, "--dns", "off", "--ingress-http", "off", "--ingress-https", "off",
            "--shutdown-grace", "1", "--manifest-poll-seconds", "0.05", *extra,
            workdir=self.tmp, name=name, prefix=["ip", "netns", "exec", self.node], **kw,
        )  # fmt: skip
        self.netplanes.append(np)
        return np.start(30) if start else np.launch()

    def state(self) -> dict[str, Any]:
        """planes.nftables of /debug/state ({} when it does not answer)."""
        r = sh("ip", "netns", "exec", self.node, "curl", "-sS", "--max-time", "3",
               f"http://{ADMIN}/debug/state", check=False)  # fmt: skip
        if r.returncode != 0:
            return {}
        return json.loads(r.stdout).get("planes", {}).get("nftables", {})

    def ports(self, service: str) -> list[dict[str, Any]]:
        return [p for p in self.state().get("ports", ()) if p["service"] == f"t/{service}"]

    def nft(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.node, "nft", *args, check=check)

    def tables(self) -> list[str]:
        """netplane's tables in the node namespace (``netplane-N``: Services are sharded)."""
        return [
            line.split()[-1]
            for line in self.nft("list", "tables").stdout.splitlines()
            if line.startswith("table inet netplane")
        ]

    def has_table(self) -> bool:
        return bool(self.tables())

    def service_elements(self) -> list[Any]:
        """The elements of the ClusterIP maps (served and no-endpoint) of every table."""
        out = []
        for table in self.tables():
            for m in ("service-ips4", "no-endpoint-ips4"):
                doc = json.loads(self.nft("-j", "list", "map", "inet", table, m).stdout)
                out += [e for i in doc["nftables"] if "map" in i for e in i["map"].get("elem", ())]
        return out

    # -- traffic

    def greet(self, dst: str = WEB_IP, port: int = WEB_PORT) -> tuple[str, str]:
        return in_ns(self.client, greet, dst, port)

    def try_greet(self, dst: str = WEB_IP, port: int = WEB_PORT) -> tuple[str, str] | None:
        try:
            return self.greet(dst, port)
        except OSError:
            return None

    def load(self, dst: str = WEB_IP, port: int = WEB_PORT, **kw: Any) -> Load:
        load = Load(self.client, dst, port, **kw)
        self.loads.append(load)
        load.start()
        return load

    def connect(self, dst: str = WEB_IP, port: int = WEB_PORT) -> Conn:
        return Conn(in_ns(self.client, socket.create_connection, (dst, port), 3))

    def udp(self, dst: str) -> socket.socket:
        """A UDP socket in the client's namespace with a fixed source port, connected to dst."""

        def make() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((CLIENT, 0))
            s.connect((dst, DNS_PORT))
            s.settimeout(0.3)
            return s

        return in_ns(self.client, make)


def until(pred: Callable[[], Any], what: str, timeout: float = 10.0, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Conn:
    """A long-lived TCP connection: its greeting, then echoes."""

    def __init__(self, s: socket.socket) -> None:
        self.s = s
        s.settimeout(3)
        self.endpoint, _, self.peer = read_line(s).partition(" ")

    def echo(self, text: str) -> str:
        self.s.sendall(text.encode() + b"\n")
        return read_line(self.s)

    def close(self) -> None:
        self.s.close()


def ask(s: socket.socket, text: str) -> str | None:
    """One datagram and its answer: ``"<endpoint> <peer>:<text>"``; None if none came."""
    try:
        s.send(text.encode())
        return s.recv(2048).decode()
    except TimeoutError:
        return None
    except ConnectionRefusedError:
        return "refused"


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    h = World(tmp_path)
    try:
        h.up()
        yield h
    finally:
        h.down()


def kernel_serves(w: World, endpoint: str | None = None) -> Callable[[], bool]:
    """A new connection to the ClusterIP was DNAT'ed by the kernel (the endpoint saw the client)."""

    def check() -> bool:
        got = w.try_greet()
        return got is not None and got[1] == CLIENT and endpoint in (None, got[0])

    return check


# -- the tests --------------------------------------------------------------------------------


def test_endpoint_churn_under_load_fails_no_connection(w: World):
    """The EndpointSlice rewritten every 100 ms (one live endpoint at least): no failure."""
    w.write(web=[A])
    w.netplane("netplane", "--l4-datapath", "nftables")
    until(kernel_serves(w, A), "the kernel to serve the ClusterIP")
    before = w.state()["syncs"]["incremental"]

    sets = itertools.cycle([[A], [A, B], [B], [B, C], [C], [C, A]])
    load = w.load(seconds=5, limit=5000, pace=0.001)
    writes = 0
    started = time.monotonic()
    while time.monotonic() - started < 4 and writes < 60 and load.is_alive():
        w.write(web=next(sets))
        writes += 1
        time.sleep(0.1)
    load.stop()

    state = w.state()
    print(f"\nendpoint churn: {writes} EndpointSlice writes, "
          f"{state['syncs']['incremental'] - before} transactions; {load.report()}")  # fmt: skip
    assert load.failures == [], load.report()
    assert load.ok >= 200, load.report()
    assert len(load.served) == 3, load.report()  # every endpoint took its turn
    assert state["failures"] == 0, state["last_error"]
    assert state["syncs"]["incremental"] - before >= 10


def test_udp_flows_move_when_their_endpoint_goes_or_the_port_gets_one(w: World):
    w.write(dns=[A], dns2=[])
    w.netplane("netplane", "--l4-datapath", "nftables")
    s = w.udp(DNS_IP)
    until(lambda: ask(s, "hello") == f"{A} {CLIENT}:hello", "a kernel-served answer from A")

    # B arrives: the flow stays on A (its conntrack entry keeps the DNAT)
    w.write(dns=[A, B])
    until(lambda: [p["endpoints"] for p in w.ports("dns")] == [2], "two endpoints programmed")
    assert [ask(s, f"stay{i}") for i in range(5)] == [f"{A} {CLIENT}:stay{i}" for i in range(5)]

    # A leaves (still listening: only a cleared conntrack entry moves the flow)
    cleared = w.state()["udp_flows_cleared"]
    w.write(dns=[B])
    t0 = time.monotonic()
    answers = []
    for i in range(100):
        answers.append(ask(s, f"move{i}"))
        if answers[-1] is not None and answers[-1].startswith(B):
            break
        time.sleep(0.05)
    moved = time.monotonic() - t0
    assert answers[-1] == f"{B} {CLIENT}:move{len(answers) - 1}", answers
    assert [ask(s, f"after{i}") for i in range(5)] == [f"{B} {CLIENT}:after{i}" for i in range(5)]
    assert w.state()["udp_flows_cleared"] > cleared

    # dns2 has no endpoint: rejected in the kernel; a client keeps sending from one port
    s2 = w.udp(DNS2_IP)
    rejected = [ask(s2, f"early{i}") for i in range(3)]
    assert "refused" in rejected and not any(r and r != "refused" for r in rejected), rejected
    w.write(dns2=[C])
    t0 = time.monotonic()
    answer = None
    for i in range(100):
        answer = ask(s2, f"now{i}")
        if answer not in (None, "refused"):
            break
        time.sleep(0.05)
    answered = time.monotonic() - t0
    assert answer is not None and answer.startswith(f"{C} {CLIENT}:now"), answer
    print(f"\nUDP: the flow moved to B {moved:.2f} s after A left; dns2 answered "
          f"{answered:.2f} s after it got an endpoint")  # fmt: skip
    assert answered < 5
    s.close()
    s2.close()


def test_a_killed_netplane_leaves_the_kernel_serving_and_the_next_adopts_it(w: World):
    w.write(web=[A], node_port=True)
    np = w.netplane("first", "--l4-datapath", "nftables")
    until(kernel_serves(w, A), "the kernel to serve the ClusterIP")
    cluster = w.load(seconds=30, limit=6000, pace=0.004)
    nodeport = w.load(NODE_C, NODE_PORT, seconds=30, limit=6000, pace=0.004)
    until(lambda: cluster.ok > 20 and nodeport.ok > 20, "traffic on both")

    np.signal(signal.SIGKILL)
    killed = time.monotonic()
    assert np.wait_exit(10) == -signal.SIGKILL
    assert w.has_table()
    dead_from = (cluster.ok, nodeport.ok)
    w.write(web=[B], node_port=True)  # a change while nobody programs the kernel
    time.sleep(1.0)
    assert cluster.ok > dead_from[0] + 20 and nodeport.ok > dead_from[1] + 20, (
        cluster.report(),
        nodeport.report(),
    )
    assert cluster.last[0] == A and nodeport.last[0] == A  # the old rules serve on

    np2 = w.netplane("second", "--l4-datapath", "nftables")
    down = time.monotonic() - killed
    assert "adopted" in np2.log, np2.tail()
    until(lambda: cluster.last[0] == B and nodeport.last[0] == B, "the change to be programmed")
    time.sleep(0.3)
    cluster.stop()
    nodeport.stop()
    print(f"\ncrash and restart ({down:.1f} s from SIGKILL to the next run ready): "
          f"{cluster.report()}; {nodeport.report()}")  # fmt: skip
    assert cluster.failures == [] and nodeport.failures == [], (
        cluster.report(),
        nodeport.report(),
    )
    assert nodeport.last[1] == NODE_E  # NodePort traffic (Cluster policy) is masqueraded
    assert w.state()["failures"] == 0


def test_a_clean_stop_removes_the_table_unless_asked_to_keep_it(w: World):
    w.write(web=[A])
    np = w.netplane("removes", "--l4-datapath", "nftables")
    until(kernel_serves(w, A), "the kernel to serve the ClusterIP")
    assert w.has_table()
    assert np.stop(15) == 0, np.tail()
    assert not w.has_table(), w.nft("list", "ruleset").stdout
    assert "removed the nftables table" in np.log

    np = w.netplane("keeps", "--l4-datapath", "nftables", "--keep-rules-on-exit", "on")
    until(kernel_serves(w, A), "the kernel to serve the ClusterIP")
    load = w.load(seconds=10, limit=3000, pace=0.004)
    until(lambda: load.ok > 20, "traffic")
    assert np.stop(15) == 0, np.tail()
    assert "keeping the nftables rules" in np.log
    served = load.ok
    time.sleep(1.0)
    load.stop()
    print(f"\nkeep-rules-on-exit: {load.report()}, {load.ok - served} after the exit")
    assert w.has_table()
    assert load.failures == [], load.report()
    assert load.ok - served > 20
    assert w.greet() == (A, CLIENT)


def test_sighup_switches_the_datapath_without_dropping_connections(w: World):
    w.write(web=[A])
    conf = w.tmp / "netplane.yaml"
    conf.write_text("l4-datapath: userspace\n")
    np = w.netplane("netplane", "--config", str(conf))
    assert w.state()["mode"] == "userspace"
    # user space on a node that never used the kernel: no table, so no conntrack or NAT
    # hooks; the switch below meets this connection mid-stream, and must not DNAT it
    assert not w.has_table()
    proxied = w.connect()
    assert (proxied.endpoint, proxied.peer) == (A, NODE_E)  # the user-space proxy
    assert proxied.echo("one") == f"{A}:one"

    conf.write_text("l4-datapath: nftables\n")
    np.signal(signal.SIGHUP)
    until(
        lambda: (s := w.state()).get("mode") == "nftables" and s["counts"]["nftables"] == 1,
        "the switch to nftables",
    )
    assert w.has_table()
    assert proxied.echo("two") == f"{A}:two"  # established: still through the proxy
    assert w.greet() == (A, CLIENT)  # new: the kernel
    w.stopped.append(np)
    np.signal(signal.SIGSTOP)  # proof: a frozen netplane does not matter to new connections
    try:
        assert w.greet() == (A, CLIENT)
        natted = w.connect()
    finally:
        np.signal(signal.SIGCONT)
        w.stopped.remove(np)
    assert (natted.endpoint, natted.peer) == (A, CLIENT)
    assert natted.echo("three") == f"{A}:three"

    conf.write_text("l4-datapath: userspace\n")
    np.signal(signal.SIGHUP)
    until(lambda: w.state().get("mode") == "userspace", "the switch back to user space")
    until(lambda: w.state()["counts"]["nftables"] == 0, "no port left in the kernel")
    # the table stays, empty: its hooks keep the NAT of the connections the kernel took
    assert w.has_table() and w.service_elements() == []
    assert w.greet() == (A, NODE_E)  # new: the proxy again
    assert proxied.echo("four") == f"{A}:four"
    assert natted.echo("four") == f"{A}:four"  # established through the kernel's NAT: still
    proxied.close()
    natted.close()
    assert w.state()["failures"] == 0
    assert np.stop(15) == 0, np.tail()


def test_nft_missing_at_start_and_a_failed_transaction(w: World):
    env = {**os.environ, "NETPLANE_NFT": "/nonexistent/nft"}
    w.write(web=[A])
    np = w.netplane("strict", "--l4-datapath", "nftables", start=False, env=env)
    assert np.wait_exit(20) == 2, np.tail()
    lines = [line for line in np.log.splitlines() if line.strip()]
    assert len(lines) == 1 and "--l4-datapath nftables" in lines[0] and "nft" in lines[0], lines

    np = w.netplane("fallback", "--l4-datapath", "auto", env=env)
    warnings = [line for line in np.log.splitlines() if "--l4-datapath auto" in line]
    assert len(warnings) == 1 and "user space" in warnings[0], np.log
    assert w.greet() == (A, NODE_E)  # served, by the proxy
    assert not w.has_table()
    assert w.state()["nft"] is None
    assert np.stop(15) == 0, np.tail()

    # a chain deleted behind netplane's back: the next change fails, a full sync repairs it
    np = w.netplane("repairs", "--l4-datapath", "nftables")
    until(kernel_serves(w, A), "the kernel to serve the ClusterIP")
    shard, chain = next(
        (t, i["chain"]["name"])
        for t in w.tables()
        for i in json.loads(w.nft("-j", "list", "chains", "inet").stdout)["nftables"]
        if "chain" in i and i["chain"]["table"] == t
        and i["chain"]["name"].startswith("svc4-") and "t/web" in i["chain"]["name"]
    )  # fmt: skip
    script = (
        f"delete element inet {shard} service-ips4 {{ {WEB_IP} . tcp . {WEB_PORT} }}\n"
        f"delete chain inet {shard} {chain}\n"
    )
    r = subprocess.run(["ip", "netns", "exec", w.node, "nft", "-f", "-"], input=script,
                       capture_output=True, text=True, timeout=10)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert w.greet() == (A, NODE_E)  # the proxy's listener catches what the kernel lost
    before = w.state()
    w.write(web=[B])
    until(lambda: w.state().get("failures", 0) > before["failures"], "the failed transaction")
    until(kernel_serves(w, B), "a full sync to restore the kernel's service")
    after = w.state()
    assert after["syncs"]["full"] > before["syncs"]["full"]
    assert "nftables transaction failed" in np.log
    print(f"\nfailed transaction: {after['failures']} failure, then full sync; "
          f"last error: {after['last_error']}")  # fmt: skip
