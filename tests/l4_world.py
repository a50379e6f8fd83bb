"""The L4 end-to-end world: manifests, `netplane run` ready on them, and small backends.

Shared by the L4, metrics, health-check, worker and port tests: a ``daemon``
fixture that starts netplane on tmp_path/m (local mode, 127.77.0.0/16), the
``backends`` fixture (HTTP answering its own name, TCP echo, UDP echo), the
Service and EndpointSlice builders, and who holds a UDP port (from /proc).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import h11
import pytest

from netplane.testing.http import Stream, read_request
from netplane.testing.process import Netplane


def service(name: str, ip: str, port: int, *, protocol: str = "TCP", **spec: Any) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "t"},
        "spec": {
            "clusterIP": ip,
            "ports": [{"name": "p", "port": port, "protocol": protocol}],
            **spec,
        },
    }


def endpoints(
    name: str, addrs: list[tuple[str, int]], *, protocol: str = "TCP", ready=True
) -> dict:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-1",
            "namespace": "t",
            "labels": {"kubernetes.io/service-name": name},
        },
        "addressType": "IPv4",
        "ports": [{"name": "p", "port": addrs[0][1] if addrs else 1, "protocol": protocol}],
        "endpoints": [{"addresses": [a], "conditions": {"ready": ready}} for a, _ in addrs],
    }


def ep(addr: str, node: str = "", *, ready: bool = True, serving: bool | None = None,
       terminating: bool = False, zone: str = "", hints: list[str] | None = None,
       hostname: str = "") -> dict:  # fmt: skip
    """One EndpointSlice endpoint: address, node, conditions, zone, hints, hostname."""
    cond: dict[str, Any] = {"ready": ready, "terminating": terminating}
    if serving is not None:
        cond["serving"] = serving
    out: dict[str, Any] = {"addresses": [addr], "conditions": cond}
    if node:
        out["nodeName"] = node
    if zone:
        out["zone"] = zone
    if hostname:
        out["hostname"] = hostname
    if hints is not None:
        out["hints"] = {"forZones": [{"name": z} for z in hints]}
    return out


def write(dirpath: Path, name: str, objs: list[dict]) -> None:
    tmp = dirpath / f".{name}.tmp"
    tmp.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))
    tmp.replace(dirpath / f"{name}.json")


class Daemon:
    """A started :class:`Netplane`, with the proxy's view of it."""

    def __init__(self, np: Netplane) -> None:
        self.np = np
        self.admin = np.admin_url

    def state(self) -> dict:
        with urllib.request.urlopen(f"{self.admin}/debug/state", timeout=2) as r:
            return json.loads(r.read())

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.admin}/readyz", timeout=2) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    async def until_listening(self, *frontends: str, gone: tuple[str, ...] = ()) -> None:
        """Until the daemon is ready (every worker of --workers N serving) and
        the planes list ``frontends`` and none of ``gone``."""
        async with asyncio.timeout(10):
            while True:
                try:
                    if not await asyncio.to_thread(self.ready):
                        raise KeyError("not ready")
                    listeners = set(
                        (await asyncio.to_thread(self.state))["planes"]["proxy"]["listeners"]
                    )
                except (OSError, urllib.error.URLError, KeyError):
                    listeners = set()
                if set(frontends) <= listeners and not (set(gone) & listeners):
                    return
                await asyncio.sleep(0.05)


@pytest.fixture
def daemon(tmp_path: Path, start_netplane: Callable[..., Netplane]) -> Callable:
    """``await daemon(*extra)``: ``netplane run`` on tmp_path/m, ready; stopped after the test."""

    async def start(*extra: str) -> Daemon:
        np = start_netplane(
            "run", "-f", str(tmp_path / "m"), "--mode", "local", "--dns", "off",
            "--ingress-http", "off", "--ingress-https", "off",
            "--manifest-poll-seconds", "0.05", "--shutdown-grace", "1", *extra,
        )  # fmt: skip
        await np.await_ready()
        return Daemon(np)

    (tmp_path / "m").mkdir()
    return start


class Backends:
    """Echo-ish servers: HTTP answering its own name, TCP echo, UDP echo."""

    def __init__(self) -> None:
        self.servers: list[Any] = []
        self.hits: collections.Counter[str] = collections.Counter()

    async def http(self, host: str, port: int) -> None:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            stream = Stream(r)
            try:
                while (req := await read_request(stream)) is not None:
                    self.hits[host] += 1
                    body = host.encode()
                    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                    await w.drain()
                    if not req.keep_alive:
                        break
            except (h11.RemoteProtocolError, ConnectionError):
                pass
            w.close()

        self.servers.append(await asyncio.start_server(handle, host, port))

    async def echo(self, host: str, port: int) -> None:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            data = await r.read()  # until the client's half-close
            w.write(b"echo:" + data)
            await w.drain()
            w.close()

        self.servers.append(await asyncio.start_server(handle, host, port))

    async def udp(self, host: str, port: int) -> None:
        class Echo(asyncio.DatagramProtocol):
            def connection_made(self, t: Any) -> None:
                self.t = t

            def datagram_received(self, data: bytes, addr: Any) -> None:
                self.t.sendto(host.encode() + b":" + data, addr)

        t, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            Echo, local_addr=(host, port)
        )
        self.servers.append(t)

    def close(self) -> None:
        for s in self.servers:
            s.close()


@pytest.fixture
async def backends() -> AsyncIterator[Backends]:
    b = Backends()
    yield b
    b.close()


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def udp_sockets(port: int) -> set[str]:
    """The UDP sockets the kernel has bound to ``port`` on 127.0.0.1 (from /proc/net/udp)."""
    inodes = set()
    with open("/proc/net/udp") as fh:
        for line in fh.readlines()[1:]:
            fields = line.split()
            if fields[1] == f"0100007F:{port:04X}":
                inodes.add(f"socket:[{fields[9]}]")
    return inodes


def sockets_of(pid: int, port: int) -> set[str]:
    """The UDP sockets on ``port`` that process ``pid`` holds."""
    inodes = udp_sockets(port)
    fd_dir = f"/proc/{pid}/fd"
    return {os.readlink(f"{fd_dir}/{fd}") for fd in os.listdir(fd_dir)} & inodes


def udp_port_holders(port: int) -> set[int]:
    """PIDs holding a UDP socket bound to ``port`` on 127.0.0.1 (from /proc)."""
    inodes = udp_sockets(port)
    holders = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in fds):
                holders.add(int(pid))
        except OSError:
            continue
    return holders
