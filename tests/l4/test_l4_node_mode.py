"""Node mode in network namespaces: AnyIP routes, ClusterIP and NodePort from another host.

The test builds two namespaces joined by a veth pair (addresses from
198.18.0.0/15 only): a "node" where `netplane run --mode node` runs as root
with its backend, and a "client" host. Nothing touches the machine's own
interfaces, and both namespaces are deleted at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import l4_world as e2e
import pytest
from netns_world import can_make_namespaces, sh

from netplane.testing.process import Netplane

pytestmark = pytest.mark.e2e

NODE_IP, CLIENT_IP = "198.18.0.1", "198.18.0.2"
SERVICE_CIDR = "198.19.0.0/16"
CLUSTER_IP, EXTERNAL_IP = "198.19.0.10", "198.18.99.1"


_why_not = can_make_namespaces("curl")
if _why_not:
    pytestmark = [pytestmark, pytest.mark.skip(reason=_why_not)]


class Hosts:
    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.node, self.client = f"npnode{tag}", f"npclient{tag}"
        self.procs: list[subprocess.Popen] = []
        self.netplanes: list[Netplane] = []

    def up(self) -> None:
        for ns in (self.node, self.client):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        veth_n, veth_c = f"vn{self.node[-8:]}", f"vc{self.client[-8:]}"
        sh("ip", "link", "add", veth_n, "netns", self.node, "type", "veth",
           "peer", "name", veth_c, "netns", self.client)  # fmt: skip
        sh("ip", "-n", self.node, "addr", "add", f"{NODE_IP}/24", "dev", veth_n)
        sh("ip", "-n", self.client, "addr", "add", f"{CLIENT_IP}/24", "dev", veth_c)
        sh("ip", "-n", self.node, "link", "set", veth_n, "up")
        sh("ip", "-n", self.client, "link", "set", veth_c, "up")

    def down(self) -> None:
        for np in self.netplanes:
            np.stop()
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        for ns in (self.node, self.client):
            sh("ip", "netns", "del", ns, check=False)

    def run(self, ns: str, *args: str, **kw) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", ns, *args, **kw)

    def spawn(self, ns: str, *args: str) -> subprocess.Popen:
        """A backend (not netplane) in namespace ``ns``, killed by ``down``."""
        p = subprocess.Popen(
            ["ip", "netns", "exec", ns, *args], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        self.procs.append(p)
        return p

    def curl(self, ns: str, url: str) -> str:
        r = self.run(ns, "curl", "-sS", "--max-time", "3", url, check=False)
        return r.stdout if r.returncode == 0 else f"curl exit {r.returncode}: {r.stderr.strip()}"

    def routes(self) -> str:
        return self.run(self.node, "ip", "route", "show", "table", "local", "proto", "77").stdout

    def until(self, pred, what: str, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = pred()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    h = Hosts()
    try:
        h.up()
        yield h
    finally:
        h.down()


def manifests(path: Path, *, cluster_ip: str = CLUSTER_IP) -> None:
    objs = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "t"},
            "spec": {
                "type": "NodePort",
                "clusterIP": cluster_ip,
                "externalIPs": [EXTERNAL_IP],
                "ports": [{"name": "http", "port": 8080, "targetPort": 18080, "nodePort": 30080}],
            },
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "web-1",
                "namespace": "t",
                "labels": {"kubernetes.io/service-name": "web"},
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 18080}],
            "endpoints": [{"addresses": ["127.0.5.1"], "nodeName": "node-a"}],
        },
    ]
    path.mkdir(exist_ok=True)
    (path / "web.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))


def run_netplane(h: Hosts, tmp: Path, mdir: Path, name: str, cidr: str = SERVICE_CIDR) -> Netplane:
    """``netplane run`` in node mode inside the node's namespace, ready; stopped by ``h.down``."""
    np = Netplane(
        "run", "-f", str(mdir), "--mode", "node",
        "--service-cidr", cidr, "--node-ip", NODE_IP, "--node-name", "node-a",
        "--admin", "127.0.0.1:10256", "--dns", "off", "--ingress-http", "off",
        "--ingress-https", "off", "--shutdown-grace", "1",
        workdir=tmp, name=name, prefix=["ip", "netns", "exec", h.node],
    )  # fmt: skip
    h.netplanes.append(np)
    return np.start()


def test_node_mode_serves_cluster_ip_nodeport_and_external_ip(hosts: Hosts, tmp_path: Path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("backend-a\n")
    hosts.spawn(hosts.node, sys.executable, "-m", "http.server", "18080",
                "--bind", "127.0.5.1", "--directory", str(www))  # fmt: skip
    manifests(tmp_path / "m")
    np = run_netplane(hosts, tmp_path, tmp_path / "m", "netplane")

    # the AnyIP routes: the service CIDR, and the externalIP outside it
    routes = hosts.until(lambda: EXTERNAL_IP in hosts.routes() and hosts.routes(), "routes")
    assert f"local {SERVICE_CIDR} dev lo" in routes
    assert f"local {EXTERNAL_IP} dev lo" in routes

    def served(ns: str, url: str) -> bool:
        return hosts.curl(ns, url) == "backend-a\n"

    # another host reaches the NodePort on the node's address; the client has no
    # route to the ClusterIP or the externalIP, so those are tried on the node
    hosts.until(
        lambda: served(hosts.client, f"http://{NODE_IP}:30080/"), "NodePort from the client"
    )
    hosts.until(lambda: served(hosts.node, f"http://{CLUSTER_IP}:8080/"), "ClusterIP on the node")
    hosts.until(lambda: served(hosts.node, f"http://{EXTERNAL_IP}:8080/"), "externalIP on the node")

    # a clean stop takes the routes away
    assert np.stop(15) == 0, np.tail()
    assert hosts.routes().strip() == ""


def test_a_crashed_run_is_repaired_on_start(hosts: Hosts, tmp_path: Path):
    manifests(tmp_path / "m")
    np = run_netplane(hosts, tmp_path, tmp_path / "m", "first")
    hosts.until(lambda: SERVICE_CIDR in hosts.routes(), "routes")
    np.signal(signal.SIGKILL)  # no chance to clean up
    np.wait_exit(10)
    assert SERVICE_CIDR in hosts.routes()
    # the next run, with another service CIDR, removes what the crashed one left
    manifests(tmp_path / "m", cluster_ip="198.19.200.10")
    np = run_netplane(hosts, tmp_path, tmp_path / "m", "second", cidr="198.19.128.0/17")
    routes = hosts.until(lambda: "198.19.128.0/17" in hosts.routes() and hosts.routes(), "repair")
    assert SERVICE_CIDR not in routes
    assert np.stop(15) == 0, np.tail()
    assert hosts.routes().strip() == ""


UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(sys.argv[3].encode() + b":" + data, peer)
"""

UDP_ASK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.connect((sys.argv[1], int(sys.argv[2])))  # replies from any other source are filtered out
s.send(b"ping")
print(s.recv(2048).decode())
"""


def service(name: str, ip: str, port: int, target: int, backend: str, proto: str = "TCP"):
    """A ClusterIP Service on ``ip:port`` and its EndpointSlice: ``backend:target``."""
    return [
        e2e.service(name, ip, port, protocol=proto),
        e2e.endpoints(name, [(backend, target)], protocol=proto),
    ]


def test_node_mode_shares_one_socket_per_port(hosts: Hosts, tmp_path: Path):
    """Many services on one port cost one socket; each address still reaches its own service."""
    for tag, ip in (("a", "127.0.5.1"), ("b", "127.0.5.2")):
        www = tmp_path / f"www-{tag}"
        www.mkdir()
        (www / "index.html").write_text(f"backend-{tag}\n")
        hosts.spawn(hosts.node, sys.executable, "-m", "http.server", "18080",
                    "--bind", ip, "--directory", str(www))  # fmt: skip
        hosts.spawn(hosts.node, sys.executable, "-c", UDP_ECHO, ip, "15353", f"udp-{tag}")
    # the host already serves NODE_IP:8081, so 0.0.0.0:8081 cannot be bound
    hosts.spawn(hosts.node, sys.executable, "-m", "http.server", "8081",
                "--bind", NODE_IP, "--directory", str(tmp_path))  # fmt: skip
    objs = []
    for i in range(40):
        backend = "127.0.5.1" if i % 2 == 0 else "127.0.5.2"
        objs += service(f"web{i}", f"198.19.1.{i + 1}", 80, 18080, backend)
    objs += service("dns-a", "198.19.2.1", 53, 15353, "127.0.5.1", "UDP")
    objs += service("dns-b", "198.19.2.2", 53, 15353, "127.0.5.2", "UDP")
    objs += service("busy", "198.19.3.1", 8081, 18080, "127.0.5.2")
    mdir = tmp_path / "m"
    mdir.mkdir()
    (mdir / "all.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))
    np = run_netplane(hosts, tmp_path, mdir, "netplane")

    def state() -> dict:
        r = hosts.run(hosts.node, "curl", "-sS", "--max-time", "3",
                      "http://127.0.0.1:10256/debug/state", check=False)  # fmt: skip
        return json.loads(r.stdout)["planes"]["proxy"] if r.returncode == 0 else {}

    proxy = hosts.until(lambda: (s := state()).get("frontends") == 43 and s, "frontends")
    assert sorted(proxy["listeners"]) == [
        "0.0.0.0:53/UDP", "0.0.0.0:80/TCP", "198.19.3.1:8081/TCP",
    ], np.tail()  # fmt: skip

    for i in (0, 1, 38, 39):
        want = "backend-a\n" if i % 2 == 0 else "backend-b\n"
        url = f"http://198.19.1.{i + 1}/"
        hosts.until(lambda url=url, want=want: hosts.curl(hosts.node, url) == want, url)
    hosts.until(lambda: hosts.curl(hosts.node, "http://198.19.3.1:8081/") == "backend-b\n", "8081")
    # an address of the CIDR that no service has on this port is refused, not hung
    r = hosts.run(hosts.node, "curl", "-sS", "--max-time", "3", "http://198.19.1.200/", check=False)
    # (the shared socket accepts it and resets it at once; curl calls that 7 or
    # 56 depending on whether the reset beat its connect; 28 would be a hang)
    assert r.returncode in (7, 56), r
    # UDP: each ClusterIP reaches its own endpoint and the reply comes from the
    # ClusterIP (the client's connected socket drops anything else)
    for ip, want in (("198.19.2.1", "udp-a:ping"), ("198.19.2.2", "udp-b:ping")):
        r = hosts.run(hosts.node, sys.executable, "-c", UDP_ASK, ip, "53", check=False)
        assert r.stdout.strip() == want, (r, np.tail())

    assert np.stop(15) == 0, np.tail()
