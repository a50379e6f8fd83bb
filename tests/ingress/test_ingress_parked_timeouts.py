"""Timeouts of parked connections: the sweeper leaves an idle (or head-reading)
HTTP/1.1 connection alone until its deadline or its next read (ClientConns).

A read must wake it, so that what the read starts (a head, a request with an
upstream) gets its own timeouts on time and not at the idle deadline; and the
sweeper's bookkeeping must forget every connection once it closes.
"""

from __future__ import annotations

import asyncio
import time

from ingress_fakes import FakeRoutes, echo, responses
from netplane.ingress.http import HttpSettings


async def _read_response(r: asyncio.StreamReader) -> bytes:
    head = await r.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await r.readexactly(length)


async def test_a_head_begun_on_a_parked_idle_connection_times_out_on_time(backends, proxy_factory):
    addr = await backends.start(echo)
    p = await proxy_factory(
        FakeRoutes({"/": [addr]}), HttpSettings(keepalive_timeout=30, header_timeout=0.5)
    )
    r, w = await asyncio.open_connection("127.0.0.1", p.port)
    w.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    async with asyncio.timeout(5):
        assert responses(await _read_response(r))[0][0] == 200
    await asyncio.sleep(1.2)  # swept at least twice: parked until its keep-alive deadline
    conns = p.server.conns
    assert not conns.awake and sum(map(len, conns.parked.values())) == 1
    w.write(b"GET / HTTP/1.1\r\nHost:")  # a head that never ends
    t0 = time.monotonic()
    async with asyncio.timeout(5):
        raw = await r.read()
    assert raw.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - t0 < 2.5  # the header timeout, not the keep-alive one
    w.close()


async def test_a_parked_connection_serves_its_next_requests(backends, proxy_factory):
    addr = await backends.start(echo)
    p = await proxy_factory(FakeRoutes({"/": [addr]}), HttpSettings(keepalive_timeout=30))
    r, w = await asyncio.open_connection("127.0.0.1", p.port)
    for _ in range(3):
        w.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        async with asyncio.timeout(5):
            assert responses(await _read_response(r))[0][0] == 200
        await asyncio.sleep(0.7)  # parked in between
    w.close()
    await w.wait_closed()
    async with asyncio.timeout(5):
        while p.server.conns:
            await asyncio.sleep(0.05)
    assert not p.server.conns.awake and not p.server.conns.parked


async def test_parked_idle_connections_close_at_the_keep_alive_timeout(backends, proxy_factory):
    addr = await backends.start(echo)
    p = await proxy_factory(FakeRoutes({"/": [addr]}), HttpSettings(keepalive_timeout=1.0))
    clients = [await asyncio.open_connection("127.0.0.1", p.port) for _ in range(20)]
    for _, w in clients:
        w.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    t0 = time.monotonic()
    async with asyncio.timeout(10):
        for r, _ in clients:
            raw = await r.read()  # the response, then EOF at the idle timeout
            assert responses(raw)[0][0] == 200
    assert 0.9 < time.monotonic() - t0 < 3.0
    async with asyncio.timeout(5):
        while p.server.conns:
            await asyncio.sleep(0.05)
    assert not p.server.conns.awake and not p.server.conns.parked
    for _, w in clients:
        w.close()


async def test_a_slow_head_on_a_parked_connection_still_times_out(proxy_factory):
    p = await proxy_factory(FakeRoutes(), HttpSettings(header_timeout=1.5))
    r, w = await asyncio.open_connection("127.0.0.1", p.port)
    t0 = time.monotonic()
    w.write(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
    for _ in range(4):  # a byte now and then (slowloris): each read wakes it, it parks again
        await asyncio.sleep(0.3)
        w.write(b"a")
    async with asyncio.timeout(5):
        raw = await r.read()
    assert raw.startswith(b"HTTP/1.1 408 ")
    assert 1.4 < time.monotonic() - t0 < 3.0
    w.close()
