"""Gateway sockets under ``--workers N``: shared with the sibling workers, never with another netplane.

Workers bind a Gateway's port with SO_REUSEPORT, which would let any
process of the same user join the group; the first worker therefore takes
the port's lock (``netplane.ports``), and a lock held by another process
makes the listener ``PortUnavailable`` instead of a silent split.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from gateway_world import HAVE_CURL, ConformanceWorld, backend, gateway, http_route, listener

from netplane.testing.ports import free_port

pytestmark = pytest.mark.skipif(not HAVE_CURL, reason="needs curl")

ADDR = "127.0.94.1"
HOLD = """
import sys, time
from netplane.ports import Claims, Listener
claims = Claims()
claims.claim(Listener("other netplane", sys.argv[1], int(sys.argv[2]), "TCP"))
print("held", flush=True)
time.sleep(60)
"""


async def test_a_port_locked_by_another_netplane_is_port_unavailable(
    world: ConformanceWorld,
) -> None:
    await world.start([])
    world.plane.gateway.reuse_port = True  # as in a worker of --workers N
    port = free_port(ADDR)
    other = subprocess.Popen(
        [sys.executable, "-c", HOLD, ADDR, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout is not None
        assert other.stdout.readline().strip() == "held"
        gw = gateway("claimed", [listener("http", port)], addresses=[ADDR])
        route = http_route(
            "r", [{"backendRefs": [backend("infra-backend-v1")]}], parents=["claimed"]
        )
        await world.apply(gw, route)
        li = world.listener_status("claimed", "http")
        accepted = next(c for c in li["conditions"] if c["type"] == "Accepted")
        assert accepted["status"] == "False" and accepted["reason"] == "PortUnavailable"
        assert f"another netplane holds it (pid {other.pid}" in accepted["message"]
        assert world.plane.gateway.bound(ADDR, port) is None
    finally:
        other.kill()
        other.wait()
    # The other netplane is gone: the next change tries again, and the port serves.
    await world.apply(http_route("r2", [{"backendRefs": [backend("infra-backend-v2")]}],
                                 parents=["claimed"]))  # fmt: skip
    r = await world.request("claimed", "/", address=(ADDR, port))
    assert r.status == 200
    assert world.plane.gateway.bound(ADDR, port) is not None


async def test_the_lock_is_taken_while_the_socket_is_open_and_freed_with_it(
    world: ConformanceWorld,
) -> None:
    await world.start([])
    world.plane.gateway.reuse_port = True
    port = free_port(ADDR)
    await world.apply(gateway("mine", [listener("http", port)], addresses=[ADDR]))
    assert world.plane.gateway.bound(ADDR, port) is not None
    # Another netplane cannot claim the port now ...
    probe = subprocess.run(
        [sys.executable, "-c", HOLD.replace("time.sleep(60)", ""), ADDR, str(port)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert probe.returncode != 0 and "another netplane holds it" in probe.stderr
    # ... and can once the Gateway is gone.
    await world.delete("Gateway", "gateway-conformance-infra", "mine")
    await asyncio.sleep(0.1)
    probe = subprocess.run(
        [sys.executable, "-c", HOLD.replace("time.sleep(60)", ""), ADDR, str(port)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
