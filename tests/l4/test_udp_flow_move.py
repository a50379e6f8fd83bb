"""A UDP flow whose endpoint is removed moves on its very next datagram (issue 8).

kube-proxy's long-standing complaint: a conntrack entry keeps sending a
client's datagrams to an endpoint that is gone until it expires. Here a
client socket's flow is pinned to one endpoint; that endpoint is removed
from the EndpointSlice through the running daemon's source (a manifest file,
then the API server's watch); the next datagram from the same socket must
be answered by the other endpoint, and every one after it too.
"""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from l4_world import endpoints, service, write
from prometheus_client.parser import text_string_to_metric_families

from netplane.testing.fakekube import FakeKube
from netplane.testing.ports import free_udp_port

pytestmark = pytest.mark.e2e

A, B = "127.0.36.1", "127.0.36.2"
VIP, VPORT = "127.77.0.36", 7036


def state(admin: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{admin}/debug/state", timeout=2) as r:
        return json.loads(r.read())


def endpoint_addresses(admin: str, namespace: str, name: str) -> set[str]:
    for svc in state(admin)["services"]:
        if svc["namespace"] == namespace and svc["name"] == name:
            return {e["address"] for p in svc["ports"] for e in p["endpoints"]}
    return set()


def ready(admin: str) -> bool:
    try:
        with urllib.request.urlopen(f"{admin}/readyz", timeout=2) as r:
            return r.status == 200
    except OSError:  # HTTPError (503) included
        return False


async def until_listening(admin: str, timeout: float = 30.0) -> None:
    """Wait for the proxy's UDP listener on the service address, and /readyz (a loaded
    machine starts slowly)."""
    frontend = f"{VIP}:{VPORT}/UDP"
    async with asyncio.timeout(timeout):
        while True:
            try:
                doc = await asyncio.to_thread(state, admin)
                # ready: every worker of --workers N serves, not just the one asked
                if frontend in doc["planes"]["proxy"]["listeners"] and ready(admin):
                    return
            except (OSError, KeyError):
                pass
            await asyncio.sleep(0.05)


async def until_endpoints(admin: str, namespace: str, name: str, want: set[str]) -> None:
    """Until the daemon is ready (every worker serving) with ``want`` in its table."""
    async with asyncio.timeout(10):
        while True:
            try:
                if await asyncio.to_thread(ready, admin) and (
                    await asyncio.to_thread(endpoint_addresses, admin, namespace, name) == want
                ):
                    return
            except OSError:
                pass
            await asyncio.sleep(0.05)


def metric(admin: str, name: str, labels: dict[str, str]) -> float:
    with urllib.request.urlopen(f"{admin}/metrics", timeout=2) as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    raise AssertionError(f"{name}{labels} not in /metrics")


async def ask(sock: socket.socket, msg: bytes) -> str:
    """One datagram to the service; the name of the endpoint that answered."""
    sock.sendto(msg, (VIP, VPORT))
    data, src = await asyncio.to_thread(sock.recvfrom, 200)
    assert src == (VIP, VPORT)
    who, _, echoed = data.partition(b":")
    assert echoed == msg
    return who.decode()


async def until_new_flows_reach(only: str) -> None:
    """Wait until the proxy itself has the change, not just the table in /debug/state.

    The L4 plane follows the table a few loop turns later. New flows are
    balanced round-robin, so two new flows in a row answered by ``only``
    mean the other endpoint is no longer a candidate.
    """
    # Every probe keeps its socket open until the end: a closed probe's port,
    # reused by a later one, would find its old flow instead of a new pick.
    probes: list[socket.socket] = []
    try:
        async with asyncio.timeout(10):
            in_a_row = 0
            while in_a_row < 2:
                probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                probes.append(probe)
                probe.settimeout(3)
                in_a_row = in_a_row + 1 if await ask(probe, b"probe") == only else 0
    finally:
        for probe in probes:
            probe.close()


async def pinned_then_moved(sock: socket.socket, remove, admin: str, ns: str) -> None:
    """The flow stays on one endpoint; after ``remove(endpoint)`` the next datagram moves."""
    first = await ask(sock, b"0")
    for i in range(1, 4):
        assert await ask(sock, b"%d" % i) == first  # one flow, one endpoint
    other = B if first == A else A
    await remove(first)
    await until_new_flows_reach(other)
    assert await ask(sock, b"after") == other  # the very next datagram: no black hole
    for i in range(3):
        assert await ask(sock, b"again-%d" % i) == other
    labels = {"namespace": ns, "service": "dns", "port": "p", "protocol": "UDP"}
    assert await asyncio.to_thread(metric, admin, "netplane_udp_flows_moved_total", labels) == 1


@pytest.mark.parametrize("how", ["removed", "terminating"])
async def test_a_flow_moves_when_its_endpoint_leaves_the_manifest(
    tmp_path,
    daemon,
    backends,
    how: str,
):
    port = free_udp_port(A, B)
    await backends.udp(A, port)
    await backends.udp(B, port)
    svc = service("dns", VIP, VPORT, protocol="UDP")
    write(tmp_path / "m", "dns", [svc, endpoints("dns", [(A, port), (B, port)], protocol="UDP")])
    d = await daemon()
    await until_listening(d.admin)

    async def remove(gone: str) -> None:
        if how == "removed":
            left = [(ip, port) for ip in (A, B) if ip != gone]
            write(tmp_path / "m", "dns", [svc, endpoints("dns", left, protocol="UDP")])
            await until_endpoints(d.admin, "t", "dns", {ip for ip, _ in left})
            return
        # Still in the slice, but terminating (a pod being deleted): with a ready
        # endpoint left, a terminating one takes no new traffic, and no old flow.
        doc = endpoints("dns", [(A, port), (B, port)], protocol="UDP")
        for ep in doc["endpoints"]:
            if ep["addresses"] == [gone]:
                ep["conditions"] = {"ready": False, "serving": True, "terminating": True}
        write(tmp_path / "m", "dns", [svc, doc])

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        await pinned_then_moved(sock, remove, d.admin, "t")


async def test_a_flow_moves_when_its_endpoint_leaves_through_the_api_watch(
    tmp_path: Path,
    backends,
    start_netplane,
) -> None:
    port = free_udp_port(A, B)
    await backends.udp(A, port)
    await backends.udp(B, port)

    def slice_of(ips: list[str]) -> dict[str, Any]:
        doc = endpoints("dns", [(ip, port) for ip in ips], protocol="UDP")
        doc["metadata"]["namespace"] = "shop"
        return doc

    svc = service("dns", VIP, VPORT, protocol="UDP")
    svc["metadata"]["namespace"] = "shop"
    async with FakeKube() as fake:
        fake.apply(svc)
        fake.apply(slice_of([A, B]))
        kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", {"token": "test-token"})
        np = start_netplane(
            "run", "--kubeconfig", str(kubeconfig), "--mode", "local", "--dns", "off",
            "--ingress-http", "off", "--ingress-https", "off", "--shutdown-grace", "1",
        )  # fmt: skip
        await np.await_ready()
        admin = np.admin_url
        try:
            await until_listening(admin)
            await until_endpoints(admin, "shop", "dns", {A, B})

            async def remove(gone: str) -> None:
                left = [ip for ip in (A, B) if ip != gone]
                fake.apply(slice_of(left))
                await until_endpoints(admin, "shop", "dns", set(left))

            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(3)
                await pinned_then_moved(sock, remove, admin, "shop")
        finally:
            code = await np.astop(15)
        assert code == 0, np.tail()
