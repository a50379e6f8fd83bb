"""The L4 proxy end to end: `netplane run` as a process, real clients, real backends.

Backends are small asyncio servers in the test on loopback addresses; the
daemon reads manifests naming them and serves their ClusterIPs (local mode,
127.77.0.0/16). Clients are curl and plain sockets, as a user's would be.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import socket
import urllib.error
import urllib.request
from typing import Any

import pytest
from ingress_fakes import curl
from l4_world import endpoints, needs_curl, service, write

from netplane.l4 import splice
from netplane.testing.ports import free_port

pytestmark = pytest.mark.e2e


@needs_curl
async def test_curl_reaches_a_cluster_ip_and_balances(tmp_path, daemon, backends):
    port = free_port()
    await backends.http("127.0.20.1", port)
    await backends.http("127.0.20.2", port)
    write(tmp_path / "m", "web", [
        service("web", "127.77.0.20", 8080),
        endpoints("web", [("127.0.20.1", port), ("127.0.20.2", port)]),
    ])  # fmt: skip
    d = await daemon()
    await d.until_listening("127.77.0.20:8080/TCP")
    bodies = [(await curl("http://127.77.0.20:8080/"))[1] for _ in range(10)]
    assert set(bodies) == {"127.0.20.1", "127.0.20.2"}
    # round-robin: an even spread over new connections
    assert collections.Counter(bodies) == {"127.0.20.1": 5, "127.0.20.2": 5}


@needs_curl
async def test_client_ip_affinity_holds(tmp_path, daemon, backends):
    port = free_port()
    await backends.http("127.0.21.1", port)
    await backends.http("127.0.21.2", port)
    write(tmp_path / "m", "sticky", [
        service("sticky", "127.77.0.21", 8080, sessionAffinity="ClientIP"),
        endpoints("sticky", [("127.0.21.1", port), ("127.0.21.2", port)]),
    ])  # fmt: skip
    d = await daemon()
    await d.until_listening("127.77.0.21:8080/TCP")
    bodies = {(await curl("http://127.77.0.21:8080/"))[1] for _ in range(8)}
    assert len(bodies) == 1 and bodies <= {"127.0.21.1", "127.0.21.2"}


async def test_no_endpoints_is_refused_at_once(tmp_path, daemon):
    write(tmp_path / "m", "empty", [service("empty", "127.77.0.22", 8080)])
    d = await daemon()
    await d.until_listening("127.77.0.22:8080/TCP")
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(2):
        try:
            reader, writer = await asyncio.open_connection("127.77.0.22", 8080)
        except ConnectionResetError:
            pass  # reset so fast that the connect itself reports it
        else:
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                await reader.readexactly(1)
            writer.close()
    assert loop.time() - started < 1.0


async def test_udp_echo_through_a_service(tmp_path, daemon, backends):
    port = free_port()
    await backends.udp("127.0.23.1", port)
    write(tmp_path / "m", "dns", [
        service("udp", "127.77.0.23", 9053, protocol="UDP"),
        endpoints("udp", [("127.0.23.1", port)], protocol="UDP"),
    ])  # fmt: skip
    d = await daemon()
    await d.until_listening("127.77.0.23:9053/UDP")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(b"ping", ("127.77.0.23", 9053))
        data, src = await asyncio.to_thread(s.recvfrom, 100)
    assert data == b"127.0.23.1:ping"
    assert src == ("127.77.0.23", 9053)  # the reply comes from the service address


async def test_half_close_still_gets_the_whole_reply(tmp_path, daemon, backends):
    port = free_port()
    await backends.echo("127.0.24.1", port)
    write(tmp_path / "m", "echo", [
        service("echo", "127.77.0.24", 7000),
        endpoints("echo", [("127.0.24.1", port)]),
    ])  # fmt: skip
    d = await daemon()
    await d.until_listening("127.77.0.24:7000/TCP")
    payload = os.urandom(300_000)
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection("127.77.0.24", 7000)
        writer.write(payload)
        writer.write_eof()  # the backend answers only after our half-close
        reply = await reader.read()
        writer.close()
    assert reply == b"echo:" + payload


@needs_curl
async def test_endpoint_removal_under_load_loses_no_connection(tmp_path, daemon, backends):
    port = free_port()
    await backends.http("127.0.25.1", port)
    await backends.http("127.0.25.2", port)
    both = [("127.0.25.1", port), ("127.0.25.2", port)]
    write(tmp_path / "m", "web", [service("web", "127.77.0.25", 8080), endpoints("web", both)])
    d = await daemon()
    await d.until_listening("127.77.0.25:8080/TCP")

    failures: list[str] = []
    done = 0

    async def client() -> None:
        nonlocal done
        for _ in range(60):  # bounded: 4 clients x 60 requests
            rc, body = await curl("http://127.77.0.25:8080/", "-H", "Connection: close")
            if rc != 0 or body not in ("127.0.25.1", "127.0.25.2"):
                failures.append(f"rc={rc} {body!r}")
            done += 1

    load = [asyncio.create_task(client()) for _ in range(4)]
    await asyncio.sleep(0.5)
    # take one endpoint out of service while the load runs
    write(tmp_path / "m", "web", [
        service("web", "127.77.0.25", 8080),
        endpoints("web", both[:1]),
    ])  # fmt: skip
    hits_before = backends.hits["127.0.25.2"]
    await asyncio.sleep(1.0)
    hits_mid = backends.hits["127.0.25.2"]
    async with asyncio.timeout(60):
        await asyncio.gather(*load)
    assert done == 240
    assert failures == []
    assert hits_before > 0  # it served before the change
    assert backends.hits["127.0.25.2"] == hits_mid  # and nothing new after it


async def test_proxy_protocol_v2_tells_the_endpoint_the_client_address(tmp_path, daemon):
    from netplane.l4.proxy_protocol import decode_v2

    seen: list[Any] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        head = await r.readexactly(16)
        rest = await r.readexactly(int.from_bytes(head[14:16], "big"))
        header = decode_v2(head + rest)
        seen.append(header)
        w.write(f"{header.src[0]}:{header.src[1]}".encode())
        await w.drain()
        w.close()

    port = free_port()
    server = await asyncio.start_server(handle, "127.0.26.1", port)
    svc = service("pp", "127.77.0.26", 7026)
    svc["metadata"]["annotations"] = {"netplane.io/proxy-protocol": "v2"}
    write(tmp_path / "m", "pp", [svc, endpoints("pp", [("127.0.26.1", port)])])
    d = await daemon()
    try:
        await d.until_listening("127.77.0.26:7026/TCP")
        async with asyncio.timeout(5):
            reader, writer = await asyncio.open_connection(
                "127.77.0.26", 7026, local_addr=("127.0.0.9", 0)
            )
            client = writer.get_extra_info("sockname")
            reply = await reader.read()
            writer.close()
        assert reply.decode() == f"{client[0]}:{client[1]}"
        assert seen[0].dst == ("127.77.0.26", 7026)
    finally:
        server.close()


async def test_sctp_service_is_refused_with_a_log_line_and_the_rest_serves(
    tmp_path, daemon, backends
):
    port = free_port()
    await backends.echo("127.0.27.1", port)
    write(tmp_path / "m", "mixed", [
        service("sctp", "127.77.0.27", 7027, protocol="SCTP"),
        service("echo", "127.77.0.28", 7028),
        endpoints("echo", [("127.0.27.1", port)]),
    ])  # fmt: skip
    d = await daemon()
    await d.until_listening("127.77.0.28:7028/TCP")
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection("127.77.0.28", 7028)
        writer.write(b"hi")
        writer.write_eof()
        assert await reader.read() == b"echo:hi"
        writer.close()
    assert await d.np.astop() == 0
    assert "Service t/sctp: port 7027/SCTP: protocol not supported by the proxy" in d.np.log


async def test_sigterm_fails_readyz_and_lets_open_connections_finish(tmp_path, daemon, backends):
    port = free_port()
    await backends.echo("127.0.28.1", port)
    write(tmp_path / "m", "drain", [
        service("drain", "127.77.0.29", 7029),
        endpoints("drain", [("127.0.28.1", port)]),
    ])  # fmt: skip
    d = await daemon("--shutdown-grace", "10")
    await d.until_listening("127.77.0.29:7029/TCP")
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection("127.77.0.29", 7029)
        writer.write(b"before ")
        await writer.drain()

    def readyz() -> int:
        try:
            with urllib.request.urlopen(f"{d.admin}/readyz", timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    assert await asyncio.to_thread(readyz) == 200
    d.np.signal(signal.SIGTERM)
    async with asyncio.timeout(5):
        while await asyncio.to_thread(readyz) != 503:  # load balancers stop sending
            await asyncio.sleep(0.05)
    # Then the listener closes (the planes close just after /readyz turns, once
    # the sources have stopped): new connections are refused from then on.
    async with asyncio.timeout(5):
        while True:
            try:
                _, w = await asyncio.open_connection("127.77.0.29", 7029)
            except OSError:
                break
            w.close()
            await asyncio.sleep(0.05)
    async with asyncio.timeout(5):  # the open one finishes its exchange
        writer.write(b"after")
        writer.write_eof()
        assert await reader.read() == b"echo:before after"
        writer.close()
    assert await d.np.await_exit(10) == 0


@needs_curl
@pytest.mark.parametrize("relay", ["splice", "protocol"])
async def test_either_tcp_relay_serves_and_says_which_runs(tmp_path, daemon, backends, relay):
    port = free_port()
    await backends.http("127.0.29.1", port)
    write(tmp_path / "m", "relay", [
        service("relay", "127.77.0.33", 8080),
        endpoints("relay", [("127.0.29.1", port)]),
    ])  # fmt: skip
    d = await daemon("--tcp-relay", relay)
    await d.until_listening("127.77.0.33:8080/TCP")
    assert await curl("http://127.77.0.33:8080/") == (0, "127.0.29.1")
    state = (await asyncio.to_thread(d.state))["planes"]["proxy"]
    want = relay if splice.available() else "protocol"
    assert state["tcp_relay"] == want
