"""Shared helpers for the ingress engine tests: a fake route table, raw HTTP backends, a client.

The fake route table answers like RouteTable does (Forward / Respond /
Redirect) from a dict of path prefixes, so the HTTP engine can be tested
without Ingress objects; the e2e tests use the real table.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
from netplane.ingress.routes import Forward, ProxyOptions, Redirect, Respond

from netplane.model import ObjectKey
from netplane.testing.http import Request, Stream, read_request
from netplane.testing.ports import free_port
from netplane.testing.process import Netplane

ING = ObjectKey("Ingress", "t", "web")


@dataclass
class FakeRoutes:
    """path prefix -> decision (or a list of targets to forward to); longest prefix wins."""

    rules: dict[str, Any] = field(default_factory=dict)
    options: ProxyOptions = field(default_factory=ProxyOptions)
    seen: list[dict] = field(default_factory=list)

    def route(
        self,
        host: str,
        path: str,
        *,
        https: bool,
        client_ip: str,
        headers: Any,
        method: bytes = b"GET",
    ) -> Any:
        self.seen.append({"host": host, "path": path, "https": https, "client_ip": client_ip})
        for prefix in sorted(self.rules, key=len, reverse=True):
            if path.startswith(prefix):
                rule = self.rules[prefix]
                if isinstance(rule, Forward | Respond | Redirect):
                    return rule
                return forward(rule, path, self.options)
        return Respond(404, b"no route\n")


def forward(
    targets: list[tuple[str, int]], path: str, options: ProxyOptions | None = None, **kw: Any
) -> Forward:
    return Forward(
        ING,
        ("t", "web"),
        tuple(targets),
        path,
        kw.pop("tls", False),
        options or ProxyOptions(),
        **kw,
    )


Handler = Callable[[Request, Stream, asyncio.StreamWriter], Awaitable[bool | None]]


class Backends:
    """Small asyncio HTTP servers on loopback; each handler answers one request, False closes."""

    def __init__(self) -> None:
        self.servers: list[asyncio.AbstractServer] = []
        self.connections = 0
        self.requests: list[Request] = []

    async def start(
        self,
        handler: Handler,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl: Any = None,
        *,
        read_body: bool = True,
    ) -> tuple[str, int]:
        """Serve ``handler``, each request parsed by h11.

        With ``read_body=False`` the handler gets the head only and reads the
        body (netplane.testing.http.body_data), or leaves it unread. After a
        ``101`` it reads and writes raw bytes on the stream.
        """

        async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.connections += 1
            stream = Stream(r)
            try:
                while (req := await read_request(stream, body=read_body)) is not None:
                    self.requests.append(req)
                    if await handler(req, stream, w) is False:
                        break
            except (h11.RemoteProtocolError, asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                w.close()

        server = await asyncio.start_server(serve, host, port, ssl=ssl)
        self.servers.append(server)
        return server.sockets[0].getsockname()[:2]

    async def close(self) -> None:
        for s in self.servers:
            s.close()
        for s in self.servers:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await s.wait_closed()


async def echo(req: Request, r: Stream, w: asyncio.StreamWriter) -> None:
    """200 with ``METHOD target`` and the body it got."""
    body = req.method + b" " + req.target + b"\n" + req.body
    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    await w.drain()


async def ws_echo(req: Request, r: Stream, w: asyncio.StreamWriter) -> bool:
    """A WebSocket-ish backend: 101, then every byte echoed back with an ``echo:`` prefix.

    Bytes the client sent right behind its Upgrade request are h11's
    ``trailing_data``, which the stream gives back first.
    """
    w.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    while data := await r.read(4096):
        w.write(b"echo:" + data)
        await w.drain()
    return False


async def http_exchange(
    port: int, data: bytes, *, until: bytes | None = None, count: int = 1, timeout: float = 5.0
) -> bytes:
    """Send raw bytes; read until EOF, or until ``until`` has been seen ``count`` times."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(data)
        await w.drain()
        out = b""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    chunk = await r.read(65536)
                    if not chunk:
                        break
                    out += chunk
                    if until is not None and out.count(until) >= count:
                        break
        except TimeoutError:
            raise AssertionError(f"no answer in {timeout} s; got {out[:300]!r}") from None
        return out
    finally:
        w.close()


def responses(raw: bytes) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """Split raw Content-Length-framed responses into (status, headers, body)."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        n = int(headers.get(b"content-length", b"0"))
        out.append((status, headers, rest[:n]))
        raw = rest[n:]
    return out


# -- the daemon as a process, for the e2e tests ------------------------------------------------


class Daemon:
    """``netplane run`` (a :class:`Netplane`) with the ingress on free loopback ports,
    reading a manifest directory; its log goes to the directory's parent."""

    def __init__(self, manifests: Path) -> None:
        self.manifests = manifests
        self.http = free_port()
        self.https = free_port()
        self.admin = free_port()
        self.np: Netplane | None = None

    async def start(self, *extra: str) -> Daemon:
        """Start it, and wait until /readyz answers 200."""
        self.np = Netplane(
            "run", "-f", str(self.manifests),
            "--mode", "local", "--proxy", "off", "--dns", "off",
            "--admin", f"127.0.0.1:{self.admin}",
            "--ingress-http", f"127.0.0.1:{self.http}", "--ingress-https", f"127.0.0.1:{self.https}",
            "--manifest-poll-seconds", "0.05", "--shutdown-grace", "1", *extra,
            workdir=self.manifests.parent, name=f"netplane-{self.http}",
        )  # fmt: skip
        await self.np.astart()
        return self

    @property
    def output(self) -> bytes:
        """What it wrote, stdout then its log."""
        return b"" if self.np is None else (self.np.stdout + self.np.log).encode()

    def write(self, name: str, objs: list[dict]) -> None:
        import yaml

        path = self.manifests / name
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump_all(objs))
        tmp.rename(path)

    async def until(self, url: str, *args: str, status: int = 200, timeout: float = 10) -> None:
        """Poll with curl until ``url`` answers ``status`` (routes and listeners are up)."""
        got: Any = None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    got = await curl(url, *args, "-o", "/dev/null", "-w", "%{http_code}")
                    if got[1] == str(status):
                        return
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(
                f"{url} did not answer {status} in {timeout} s (last: {got})"
            ) from None

    async def stop(self) -> None:
        """SIGTERM, SIGKILL after a bound: by its PID."""
        if self.np is not None:
            await self.np.astop()


async def curl(url: str, *args: str) -> tuple[int, str]:
    """Run curl; (exit code, stdout or else stderr)."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "5", *args, url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    return proc.returncode, (out or err).decode(errors="replace")


@dataclass(frozen=True)
class CurlProtocol:
    """How curl speaks one HTTP version to the ingress: its flags, and the status line it prints."""

    name: str
    plain: tuple[str, ...]  # flags for http:// (HTTP/2: prior knowledge, h2c)
    tls: tuple[str, ...]  # flags for https:// (HTTP/2: ALPN h2)
    status_line: str  # what ``curl -D -`` prints first, before the code

    def __str__(self) -> str:
        return self.name


HTTP1 = CurlProtocol("HTTP/1.1", ("--http1.1",), ("--http1.1",), "HTTP/1.1 ")
HTTP2 = CurlProtocol("HTTP/2", ("--http2-prior-knowledge",), ("--http2",), "HTTP/2 ")
PROTOCOLS = [HTTP1, HTTP2]
