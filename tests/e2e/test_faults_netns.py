"""Faults that need a network namespace: an endpoint that blackholes (its SYNs dropped).

Inside a namespace this test creates (and deletes), a veth pair carries
198.18.4.1/24; the endpoint 198.18.4.2 has a permanent neighbour entry
with a MAC address no one has, so every SYN to it leaves and is dropped
on the other end: no RST, no ICMP, no ARP failure, only silence, as from
a firewall's DROP rule. netplane runs in the namespace with the endpoint
and a live one (198.18.4.1); the Ingress sets proxy-connect-timeout 1 s.
Needs root, ``ip`` and curl; skipped otherwise.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
from collections.abc import Iterator

import pytest
from test_faults import HOST, spawn_backend, stop, web_objects, write_yaml

from netplane.testing.ports import free_port

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("curl") is None,
        reason="needs root, ip and curl",
    ),
]

LIVE, BLACKHOLE = "198.18.4.1", "198.18.4.2"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def netns() -> Iterator[str]:
    """A namespace with lo up and LIVE on a veth whose peer drops whatever is sent to BLACKHOLE."""
    name = f"npfaults{os.getpid()}"
    try:
        ip("netns", "add", name)
    except (subprocess.CalledProcessError, OSError) as e:
        pytest.skip(f"cannot create a network namespace: {e}")
    try:
        ip("-n", name, "link", "set", "lo", "up")
        ip("-n", name, "link", "add", "np0", "type", "veth", "peer", "name", "np1")
        ip("-n", name, "addr", "add", f"{LIVE}/24", "dev", "np0")
        ip("-n", name, "link", "set", "np0", "up")
        ip("-n", name, "link", "set", "np1", "up")
        # a MAC address nobody has: the SYN leaves np0 and np1 drops it (not for its host)
        ip("-n", name, "neigh", "add", BLACKHOLE, "lladdr", "02:00:5e:00:53:01", "dev", "np0",
           "nud", "permanent")  # fmt: skip
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


async def curl_in(ns: str, url: str) -> tuple[int, str, float]:
    """curl inside ``ns``: (HTTP status, body, seconds)."""
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", ns, "curl", "-sS", "--max-time", "5", "-H", f"Host: {HOST.decode()}",
        "-w", "\n%{http_code} %{time_total}", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    body, _, tail = out.decode().rpartition("\n")
    code, _, took = tail.partition(" ")
    return int(code or 0), body, float(took or 0)


async def test_a_blackholed_endpoint_costs_the_connect_timeout_then_the_next_endpoint_answers(
    netns, tmp_path, start_netplane
):
    prefix = ("ip", "netns", "exec", netns)
    port = free_port()
    live = spawn_backend(LIVE, port, "live", prefix)
    try:
        m = tmp_path / "m"
        m.mkdir()
        annotations = {"nginx.ingress.kubernetes.io/proxy-connect-timeout": "1"}
        write_yaml(m, "web", web_objects([BLACKHOLE, LIVE], port, annotations))
        http = free_port()
        np = start_netplane(
            "run", "-f", str(m), "--mode", "local", "--proxy", "off", "--dns", "off",
            "--ingress-http", f"127.0.0.1:{http}", "--ingress-https", "off", "--workers", "1",
            "--manifest-poll-seconds", "0.05", "--shutdown-grace", "1",
            prefix=list(prefix),
        )  # fmt: skip
        await np.await_ready()
        url = f"http://127.0.0.1:{http}/"
        async with asyncio.timeout(10):
            while (await curl_in(netns, url))[0] != 200:
                await asyncio.sleep(0.1)
        answers = [await curl_in(netns, url) for _ in range(6)]
    finally:
        stop(live)
    assert [(code, body) for code, body, _ in answers] == [(200, "live")] * 6
    took = sorted(t for _, _, t in answers)
    fast, slow = took[:3], took[3:]  # round robin: every other request chose the blackhole first
    assert max(fast) < 0.5
    assert all(1.0 <= t < 1.5 for t in slow), took
    added = statistics.median(slow) - statistics.median(fast)
    print(
        f"\nblackholed endpoint, proxy-connect-timeout 1 s: requests {', '.join(f'{t:.3f}' for t in took)} s;"
        f" added latency {added:.3f} s on the 3 of 6 that chose it first; all 200 from the live one"
    )
