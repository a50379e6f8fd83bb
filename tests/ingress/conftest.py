"""The ingress tests' shared fixtures: the HTTP version curl speaks, and in-process proxies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from ingress_fakes import PROTOCOLS, Backends, CurlProtocol, FakeRoutes
from netplane.ingress.http import HttpSettings
from netplane.ingress.server import IngressServer


@pytest.fixture(params=PROTOCOLS, ids=str)
def proto(request: pytest.FixtureRequest) -> CurlProtocol:
    """HTTP/1.1, then HTTP/2 (h2c with prior knowledge on http://, ALPN h2 on https://)."""
    return request.param


@dataclass
class Proxy:
    server: IngressServer
    port: int
    routes: FakeRoutes


@pytest.fixture
async def backends() -> AsyncIterator[Backends]:
    b = Backends()
    yield b
    await b.close()


@pytest.fixture
async def proxy_factory() -> AsyncIterator[Any]:
    """Start an IngressServer on a free loopback port (``tls``: an HTTPS listener); closed after."""
    started: list[IngressServer] = []

    async def make(
        routes: FakeRoutes, settings: HttpSettings | None = None, tls: Any = None, **kw: Any
    ) -> Proxy:
        server = IngressServer(routes, settings=settings, **kw)
        _, port = await server.listen("127.0.0.1", 0, tls=tls)
        started.append(server)
        return Proxy(server, port, routes)

    yield make
    for s in started:
        await s.close(1)
