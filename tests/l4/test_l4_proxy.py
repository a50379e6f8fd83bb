"""The L4Proxy's TCP counters in /debug/state, after real connections on either relay."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from netplane.config import build
from netplane.dataplane import Dataplane
from netplane.l4 import splice
from netplane.l4.proxy import L4Proxy
from netplane.l4.tcp import TcpSettings


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.42.1", 0))
        return s.getsockname()[1]


async def reset_or_eof(host: str, port: int) -> None:
    """Connect and see the connection end with no byte (reset, or refused by a fast reset)."""
    async with asyncio.timeout(5):
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except ConnectionResetError:
            return
        with contextlib.suppress(ConnectionResetError):
            assert await reader.read() == b""
        writer.close()


@pytest.mark.parametrize("relay", ["splice", "protocol"])
async def test_tcp_counters_show_refused_and_unreachable_connections(relay: str) -> None:
    if relay == "splice" and not splice.available():
        pytest.skip("os.splice is not available here")
    dp = Dataplane(build({}, {"mode": "local", "admin": None}), serve=False)
    dp.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "c", "namespace": "t"},
            "spec": {
                "clusterIP": "127.77.0.43",
                "ports": [{"name": "dead", "port": 80}, {"name": "none", "port": 81}],
            },
        }
    )
    dp.apply(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "c-1",
                "namespace": "t",
                "labels": {"kubernetes.io/service-name": "c"},
            },
            "addressType": "IPv4",
            "ports": [{"name": "dead", "port": closed_port(), "protocol": "TCP"}],
            "endpoints": [{"addresses": ["127.0.42.1"], "conditions": {"ready": True}}],
        }
    )
    await dp.start()
    proxy = L4Proxy(dp, tcp=TcpSettings(splice=relay == "splice"))
    await proxy.start()
    try:
        await reset_or_eof("127.77.0.43", 80)  # its one endpoint refuses
        await reset_or_eof("127.77.0.43", 81)  # no endpoint at all
        async with asyncio.timeout(5):
            while proxy.tcp.connections:
                await asyncio.sleep(0.01)
        state = proxy.debug_state()
        assert state["tcp_relay"] == relay
        assert (state["tcp_accepted"], state["tcp_refused"]) == (2, 1)
        assert (state["tcp_connect_failures"], state["tcp_unreachable"]) == (1, 1)
    finally:
        await proxy.close(0)
        await dp.stop(0)
