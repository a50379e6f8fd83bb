"""--dns-max-tcp-connections: past the bound a new DNS-over-TCP connection is closed, and counted."""

from __future__ import annotations

import asyncio
import contextlib

from netplane.dns.plane import DnsPlane, DnsSettings

import netplane
from netplane.metrics import OVERLOAD


async def test_connections_over_the_bound_are_closed_and_counted() -> None:
    async with netplane.Dataplane(netplane.Config(mode="local", admin=None), serve=False) as dp:
        plane = DnsPlane(dp, DnsSettings(port=0, max_tcp_connections=2))
        await plane.start()
        held = []
        try:
            before = OVERLOAD.refused.get(("dns_tcp", "limit"), 0)
            held = [await asyncio.open_connection("127.0.0.1", plane.port) for _ in range(2)]
            await asyncio.sleep(0.1)
            assert len(plane.server._conns) == 2
            r, w = await asyncio.open_connection("127.0.0.1", plane.port)
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(r.read(), 5) == b""
            w.close()
            assert OVERLOAD.refused[("dns_tcp", "limit")] - before == 1
            assert (
                b'netplane_dns_tcp_connections_refused_total{reason="limit"}' in dp.metrics.render()
            )
        finally:
            for _, w in held:
                w.close()
            await plane.close(0)
