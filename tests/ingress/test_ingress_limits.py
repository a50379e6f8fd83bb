"""Hostile clients against the HTTP/1.1 ingress: huge heads, deep pipelines, many connections.

Each test speaks raw bytes over a real socket to an in-process IngressServer
and checks the answer and that what the proxy keeps per connection stays
bounded (its queue of pipelined requests, its write buffer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest
from ingress_fakes import FakeRoutes, http_exchange
from netplane.ingress.http import HttpSettings
from netplane.ingress.routes import Respond

from netplane.metrics import OVERLOAD

OK = FakeRoutes({"/": Respond(200, b"ok\n")})


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


async def send_and_read(port: int, data: bytes) -> bytes:
    """Send ``data`` while reading; the bytes read until the proxy closed (FIN or RST).

    The proxy closes with the rest of a refused head unread, so Linux sends an RST that
    may overtake the answer (the proxy has no lingering close yet): b"" is then allowed.
    """
    r, w = await asyncio.open_connection("127.0.0.1", port)
    got = bytearray()

    async def send() -> None:
        w.write(data)
        await w.drain()

    sender = asyncio.create_task(send())
    try:
        async with asyncio.timeout(10):
            while chunk := await r.read(65536):
                got += chunk
    except ConnectionResetError:
        pass
    finally:
        sender.cancel()
        w.close()
    return bytes(got)


async def test_ten_thousand_fields_get_431_and_the_connection_closes(proxy_factory):
    p = await proxy_factory(OK)
    head = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(10_000))
    raw = await send_and_read(p.port, head + b"\r\n")  # until the proxy closes
    assert raw == b"" or (status_of(raw) == 431 and raw.count(b"HTTP/1.1 ") == 1)


async def test_a_one_megabyte_request_line_gets_431(proxy_factory):
    p = await proxy_factory(OK)
    raw = await send_and_read(
        p.port, b"GET /" + b"a" * 1024 * 1024 + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    assert raw == b"" or status_of(raw) == 431
    assert p.server.stats.families  # the proxy is still serving:
    assert (
        status_of(
            await http_exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        )
        == 200
    )


@pytest.mark.parametrize("part", ["name", "value"])
async def test_one_endless_field_is_cut_at_the_limit(proxy_factory, part):
    # httptools holds a field to itself until it ends: the proxy counts the raw bytes of a
    # head that goes on across reads, so a field that never ends is a 431, not a growing string.
    p = await proxy_factory(OK, HttpSettings(max_header_bytes=4096))
    start = b"GET / HTTP/1.1\r\nHost: a\r\n" + (b"X-" if part == "name" else b"X: ")
    # 4 MB with no end of field: without the bound the proxy waits (60 s) for more
    raw = await send_and_read(p.port, start + b"a" * 4 * 1024 * 1024)
    assert raw == b"" or status_of(raw) == 431


async def test_100k_pipelined_requests_are_answered_in_order_with_bounded_buffers(proxy_factory):
    """The client sends every request before reading any answer: the proxy's queue and write
    buffer stay bounded (reading pauses) and, once read, every answer comes in order."""
    n = 100_000
    p = await proxy_factory(OK)
    r, w = await asyncio.open_connection("127.0.0.1", p.port)
    data = b"".join(b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-ID: %d\r\n\r\n" % i for i in range(n))

    async def send() -> None:
        w.write(data)
        await w.drain()

    sender = asyncio.create_task(send())
    most_queued = most_buffered = 0
    try:
        for _ in range(20):  # 1 s with the client reading nothing
            await asyncio.sleep(0.05)
            for conn in p.server.conns:
                most_queued = max(most_queued, len(conn.queue))  # type: ignore[union-attr]
                most_buffered = max(most_buffered, conn.transport.get_write_buffer_size())
        got = bytearray()
        async with asyncio.timeout(60):
            while got.count(b"\r\n\r\nok\n") < n:
                chunk = await r.read(1 << 20)
                assert chunk, "the proxy closed before the last answer"
                got += chunk
        await sender
    finally:
        sender.cancel()
        w.close()
    assert 0 < most_buffered <= 256 * 1024, most_buffered
    assert most_queued <= 2000, most_queued  # one 64 KiB read's worth of requests at most
    ids = [
        int(line[14:]) for line in bytes(got).split(b"\r\n") if line.startswith(b"X-Request-ID: ")
    ]
    assert ids == list(range(n))


async def test_a_client_over_its_connection_limit_is_closed_counted_and_logged_once(
    proxy_factory, caplog
):
    p = await proxy_factory(OK, HttpSettings(max_connections_per_client=2))
    before = OVERLOAD.refused.get(("ingress", "per-client"), 0)
    held = [await asyncio.open_connection("127.0.0.1", p.port) for _ in range(2)]
    for _, w in held:  # both served, and kept open
        w.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    for r, _ in held:
        assert b"200 OK" in await asyncio.wait_for(r.readuntil(b"ok\n"), 5)
    caplog.set_level(logging.WARNING, "netplane.ingress")
    for _ in range(3):  # over the limit: closed without an answer
        r, w = await asyncio.open_connection("127.0.0.1", p.port)
        w.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(r.read(), 5) == b""
        w.close()
    assert OVERLOAD.refused[("ingress", "per-client")] - before == 3
    lines = [m for m in caplog.messages if "--ingress-max-connections-per-client" in m]
    assert len(lines) == 1 and "127.0.0.1" in lines[0]
    # one closed: that client may open another
    held[0][1].close()
    await asyncio.sleep(0.2)
    raw = await http_exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert status_of(raw) == 200
    for _, w in held[1:]:
        w.close()
