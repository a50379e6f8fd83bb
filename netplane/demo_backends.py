"""Backends for ``netplane demo``: small servers on the demo's endpoint addresses.

After the demo's table is built, every endpoint of every service port gets
a server of its own on its loopback address: HTTP (h11) for ports named
``http*`` or with appProtocol http, a plain TCP echo for other TCP ports,
and a UDP echo. Each answer names the endpoint, so a newcomer running curl
against a ClusterIP sees the balancing happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import h11

from netplane.addresses import hostport

log = logging.getLogger("netplane.demo")


# Every answer names its endpoint: "hello from NS/NAME endpoint ADDR:PORT; you
# are ..." over HTTP, "NS/NAME endpoint ADDR:PORT: <datagram>" from the UDP echo.
_ANSWERED_BY = re.compile(r"(?P<service>\S+/\S+) endpoint (?P<endpoint>\S+?)(?:;|: )")


def label(service: str, address: str, port: int) -> str:
    """How a backend names itself in its answers: ``NS/NAME endpoint ADDR:PORT``."""
    return f"{service} endpoint {hostport(address, port)}"


def answered_by(text: str) -> tuple[str, str] | None:
    """(``NS/NAME``, ``ADDR:PORT``) that a demo backend's answer names, or None."""
    m = _ANSWERED_BY.search(text)
    return (m["service"], m["endpoint"]) if m else None


def _is_http(name: str, app_protocol: str) -> bool:
    return name.startswith("http") or app_protocol.lower() in ("http", "kubernetes.io/h2c")


class _UdpEcho(asyncio.DatagramProtocol):
    def __init__(self, label: str) -> None:
        self.label = label.encode()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(self.label + b": " + data, addr)


class DemoBackends:
    """Servers for the endpoints in a ServiceTable; ``close()`` stops them all."""

    def __init__(self) -> None:
        self._servers: list[Any] = []
        self._tasks: set[asyncio.Task] = set()

    async def start(self, table: Any) -> list[str]:
        """Start one server per distinct endpoint; return a line per server."""
        started: list[str] = []
        seen: set[tuple[str, int, str]] = set()
        for entry in sorted(table, key=lambda e: e.key):
            svc = entry.service.key
            for port in entry.ports:
                for b in port.backends:
                    key = (b.address, b.port, port.protocol)
                    if key in seen:
                        continue
                    seen.add(key)
                    name = label(f"{svc.namespace}/{svc.name}", b.address, b.port)
                    try:
                        kind = await self._start_one(b.address, b.port, port, name)
                    except OSError as e:
                        log.warning("demo backend %s: %s", name, e.strerror or e)
                        continue
                    started.append(
                        f"{kind} {hostport(b.address, b.port)}/{port.protocol} ({svc.name})"
                    )
        return started

    async def _start_one(self, host: str, port: int, p: Any, label: str) -> str:
        loop = asyncio.get_running_loop()
        if p.protocol == "UDP":
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpEcho(label), local_addr=(host, port)
            )
            self._servers.append(transport)
            return "udp-echo"
        if _is_http(p.name, p.app_protocol):
            server = await asyncio.start_server(self._http(label), host, port)
            self._servers.append(server)
            return "http"
        server = await asyncio.start_server(self._echo, host, port)
        self._servers.append(server)
        return "tcp-echo"

    def _http(
        self, label: str
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._track()
            conn = h11.Connection(h11.SERVER)
            peer = writer.get_extra_info("peername")
            try:
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await reader.read(65536)
                        conn.receive_data(data)
                        continue
                    if isinstance(event, h11.Request):
                        body = f"hello from {label}; you are {hostport(*peer[:2])}\n".encode()
                        headers = [
                            ("content-type", "text/plain"),
                            ("content-length", str(len(body))),
                        ]
                        writer.write(conn.send(h11.Response(status_code=200, headers=headers)))
                        writer.write(conn.send(h11.Data(data=body)))
                        writer.write(conn.send(h11.EndOfMessage()))
                        await writer.drain()
                    elif isinstance(event, h11.EndOfMessage):
                        if conn.our_state is h11.MUST_CLOSE:
                            break
                        conn.start_next_cycle()
                    elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                        break
            except (h11.ProtocolError, ConnectionError):
                pass
            finally:
                writer.close()

        return handle

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._track()
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _track(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._servers.clear()
