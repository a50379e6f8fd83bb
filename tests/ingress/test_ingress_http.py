"""The HTTP engine in process: real sockets, a fake route table, small asyncio backends.

Each test drives the proxy with raw bytes (or curl) and checks what a
client sees on the wire, or what the backend received.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import weakref

import pytest
import trustme
from ingress_fakes import (
    FakeRoutes,
    echo,
    forward,
    http_exchange,
    responses,
    ws_echo,
)
from netplane.ingress.accesslog import AccessLog
from netplane.ingress.http import HttpSettings
from netplane.ingress.routes import ProxyOptions, Redirect, Respond

from netplane.testing.http import body_data
from netplane.testing.ports import free_port


async def test_keep_alive_and_pipelined_requests_are_answered_in_order(backends, proxy_factory):
    order = []

    async def slow_first(req, r, w):
        if req.target == b"/slow":
            await asyncio.sleep(0.2)
        order.append(req.target)
        await echo(req, r, w)

    addr = await backends.start(slow_first)
    p = await proxy_factory(FakeRoutes({"/": [addr]}))
    reqs = b"".join(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % t for t in (b"/slow", b"/2", b"/3"))
    raw = await http_exchange(p.port, reqs, until=b"GET /3\n")
    got = responses(raw)
    assert [b for _, _, b in got] == [b"GET /slow\n", b"GET /2\n", b"GET /3\n"]
    assert backends.connections == 1  # one upstream connection, kept alive


async def test_forwarded_headers_and_hop_by_hop(backends, proxy_factory):
    addr = await backends.start(echo)
    p = await proxy_factory(FakeRoutes({"/": [addr]}))
    raw = await http_exchange(
        p.port,
        b"GET /h HTTP/1.1\r\nHost: shop.example\r\nConnection: keep-alive, X-Secret\r\n"
        b"X-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nX-Forwarded-For: 203.0.113.9\r\n"
        b"X-Real-IP: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Keep: yes\r\n\r\n",
        until=b"\n",
    )
    status, headers, _ = responses(raw)[0]
    assert status == 200
    seen = backends.requests[0].headers
    assert seen[b"x-forwarded-for"] == b"203.0.113.9, 127.0.0.1"
    assert seen[b"x-real-ip"] == b"127.0.0.1"
    assert seen[b"x-forwarded-proto"] == b"http"
    assert seen[b"x-forwarded-host"] == b"shop.example"
    assert seen[b"x-forwarded-port"] == str(p.port).encode()
    assert seen[b"host"] == b"shop.example"
    assert seen[b"x-keep"] == b"yes"
    for hop in (b"x-secret", b"keep-alive", b"te", b"connection"):
        assert hop not in seen
    # the generated request ID went upstream and came back
    assert len(seen[b"x-request-id"]) == 32
    assert headers[b"x-request-id"] == seen[b"x-request-id"]


async def test_a_client_request_id_is_kept(backends, proxy_factory):
    addr = await backends.start(echo)
    p = await proxy_factory(FakeRoutes({"/": [addr]}))
    raw = await http_exchange(
        p.port, b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-ID: abc-123\r\n\r\n", until=b"GET /\n"
    )
    assert responses(raw)[0][1][b"x-request-id"] == b"abc-123"
    assert backends.requests[0].headers[b"x-request-id"] == b"abc-123"


async def test_chunked_upload_is_streamed_before_it_ends(backends, proxy_factory):
    first_chunk = asyncio.get_running_loop().create_future()

    async def streaming(req, r, w):  # reads the chunked body itself, piece by piece
        got = b""
        async for piece in body_data(req, r):
            got += piece.data
            if piece.chunk_end and not first_chunk.done():
                first_chunk.set_result(got)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(got), got))
        await w.drain()

    addr = await backends.start(streaming, read_body=False)
    p = await proxy_factory(FakeRoutes({"/": [addr]}))
    r, w = await asyncio.open_connection("127.0.0.1", p.port)
    w.write(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    await w.drain()
    async with asyncio.timeout(5):
        assert await first_chunk == b"hello"  # reached the backend while the upload goes on
    w.write(b"6\r\n world\r\n0\r\n\r\n")
    async with asyncio.timeout(5):
        head = await r.readuntil(b"\r\n\r\n")
        body = await r.readexactly(11)
    assert head.startswith(b"HTTP/1.1 200")
    assert body == b"hello world"
    w.close()


async def test_content_length_body_arrives_whole(backends, proxy_factory):
    addr = await backends.start(echo)
    p = await proxy_factory(FakeRoutes({"/": [addr]}))
    body = b"x" * 300_000
    raw = await http_exchange(
        p.port,
        b"PUT /b HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
        until=b"x" * 1000,
    )
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert backends.requests[0].body == body


async def test_expect_100_continue(backends, proxy_factory):
    addr = await backends.start(echo)
    p = await proxy_factory(FakeRoutes({"/": [addr]}))
    r, w = await asyncio.open_connection("127.0.0.1", p.port)
    w.write(b"POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    async with asyncio.timeout(5):
        interim = await r.readuntil(b"\r\n\r\n")
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        w.write(b"data")
        head = await r.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert await r.readexactly(len(b"POST /e\ndata")) == b"POST /e\ndata"
    assert b"expect" not in backends.requests[0].headers
    w.close()


async def test_expect_over_the_body_limit_gets_413_without_100(backends, proxy_factory):
    addr = await backends.start(echo)
    routes = FakeRoutes({"/": [addr]}, options=ProxyOptions(body_limit=10))
    p = await proxy_factory(routes)
    raw = await http_exchange(
        p.port, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n"
    )
    assert raw.startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in raw
    assert not backends.requests


async def test_head_and_bodiless_statuses(backends, proxy_factory):
    async def answers(req, r, w):
        if req.target == b"/204":
            w.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        elif req.target == b"/304":
            w.write(b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n")
        else:  # HEAD: a length, no body
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        await w.drain()

    addr = await backends.start(answers)
    p = await proxy_factory(FakeRoutes({"/": [addr]}))
    raw = await http_exchange(
        p.port,
        b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\nGET /204 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /304 HTTP/1.1\r\nHost: a\r\n\r\nHEAD /h2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    parts = raw.split(b"\r\n\r\n")
    assert [x.split(b"\r\n")[0] for x in parts if x] == [
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 204 No Content",
        b"HTTP/1.1 304 Not Modified",
        b"HTTP/1.1 200 OK",
    ]
    assert b"Content-Length: 1234" in parts[0]
    assert parts[-1] == b""  # nothing after the last head: no body bytes anywhere
    assert backends.connections == 1


@pytest.mark.parametrize("http10", [False, True])
async def test_chunked_and_close_delimited_responses_stream_whole(backends, proxy_factory, http10):
    async def answers(req, r, w):
        if req.target == b"/chunked":
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
            await w.drain()
            await asyncio.sleep(0.05)
            w.write(b"2\r\nde\r\n0\r\n\r\n")
            await w.drain()
            return None
        w.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil-")
        await w.drain()
        w.write(b"close")
        await w.drain()
        return False

    addr = await backends.start(answers)
    p = await proxy_factory(FakeRoutes({"/": [addr]}))
    version = b"HTTP/1.0" if http10 else b"HTTP/1.1"
    for target, want in ((b"/chunked", b"abcde"), (b"/eof", b"until-close")):
        raw = await http_exchange(
            p.port, b"GET %s %s\r\nHost: a\r\nConnection: close\r\n\r\n" % (target, version)
        )
        head, _, body = raw.partition(b"\r\n\r\n")
        if http10:
            assert b"Transfer-Encoding" not in head
            assert body == want
        else:
            assert b"Transfer-Encoding: chunked" in head
            chunks, rest = b"", body
            while True:
                size, _, rest = rest.partition(b"\r\n")
                n = int(size, 16)
                if n == 0:
                    break
                chunks, rest = chunks + rest[:n], rest[n + 2 :]
            assert chunks == want


@pytest.mark.parametrize("field", [b"Connection", b"Proxy-Connection"])
async def test_http10_keep_alive_client_gets_no_chunked_response(backends, proxy_factory, field):
    async def chunked(req, r, w):
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        await w.drain()

    addr = await backends.start(chunked)
    p = await proxy_factory(FakeRoutes({"/": [addr]}))
    raw = await http_exchange(
        p.port, b"GET /c HTTP/1.0\r\nHost: a\r\n%s: keep-alive\r\n\r\n" % field
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"Transfer-Encoding" not in head
    assert body == b"abc"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n", 431),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2000000\r\n\r\n", 413),
    ],
)
async def test_bad_requests_get_their_status_and_a_close(
    backends, proxy_factory, request_bytes, status
):
    addr = await backends.start(echo)
    p = await proxy_factory(FakeRoutes({"/": [addr]}))
    raw = await http_exchange(p.port, request_bytes)  # reads to EOF: the proxy closes
    assert raw.startswith(b"HTTP/1.1 %d " % status)
    assert b"Connection: close" in raw
    body = raw.partition(b"\r\n\r\n")[2]
    assert 10 < len(body) < 200 and body.endswith(b"\n")
    assert not backends.requests
    # the listener still serves everyone else
    ok = await http_exchange(p.port, b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200")


async def test_chunked_body_over_the_limit_gets_413(backends, proxy_factory):
    addr = await backends.start(echo)
    p = await proxy_factory(FakeRoutes({"/": [addr]}, options=ProxyOptions(body_limit=8)))
    raw = await http_exchange(
        p.port,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n",
    )
    assert raw.startswith(b"HTTP/1.1 413 ")


async def test_slow_client_head_gets_408(proxy_factory):
    p = await proxy_factory(FakeRoutes(), HttpSettings(header_timeout=0.3))
    r, w = await asyncio.open_connection("127.0.0.1", p.port)
    w.write(b"GET / HTTP/1.1\r\nHost:")
    async with asyncio.timeout(5):
        raw = await r.read()
    assert raw.startswith(b"HTTP/1.1 408 ")
    w.close()


async def test_idle_keep_alive_is_closed_quietly(backends, proxy_factory):
    addr = await backends.start(echo)
    p = await proxy_factory(FakeRoutes({"/": [addr]}), HttpSettings(keepalive_timeout=0.3))
    r, w = await asyncio.open_connection("127.0.0.1", p.port)
    w.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    async with asyncio.timeout(5):
        raw = await r.read()  # the response, then EOF after the idle timeout
    assert responses(raw)[0][0] == 200
    assert raw.count(b"HTTP/1.1") == 1
    w.close()


async def test_upstream_refused_is_502_and_the_next_target_is_tried(backends, proxy_factory):
    dead = ("127.0.0.1", free_port())
    p = await proxy_factory(FakeRoutes({"/only-dead": [dead]}))
    raw = await http_exchange(
        p.port, b"GET /only-dead HTTP/1.1\r\nHost: a\r\n\r\n", until=b"\n", count=2
    )
    assert raw.startswith(b"HTTP/1.1 502 ")
    addr = await backends.start(echo)
    p.routes.rules["/both"] = [dead, addr]
    raw = await http_exchange(p.port, b"GET /both HTTP/1.1\r\nHost: a\r\n\r\n", until=b"/both\n")
    assert raw.startswith(b"HTTP/1.1 200 ")


async def test_upstream_reset_before_answering_is_502(backends, proxy_factory):
    async def reset(req, r, w):
        w.transport.abort()
        return False

    addr = await backends.start(reset)
    p = await proxy_factory(FakeRoutes({"/": [addr]}))
    raw = await http_exchange(
        p.port, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
    )
    assert raw.startswith(b"HTTP/1.1 502 ")


async def test_slow_upstream_is_504(backends, proxy_factory):
    async def slow(req, r, w):
        await asyncio.sleep(3)

    addr = await backends.start(slow)
    p = await proxy_factory(FakeRoutes({"/": [addr]}, options=ProxyOptions(read_timeout=0.3)))
    raw = await http_exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", until=b"\n", count=2)
    assert raw.startswith(b"HTTP/1.1 504 ")


async def test_a_reused_connection_the_upstream_dropped_is_retried_once(backends, proxy_factory):
    served: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    async def first_only(req, r, w):
        n = served[r] = served.get(r, 0) + 1
        if n > 1:
            return False  # the second request on a connection: closed unanswered
        await echo(req, r, w)
        return None

    addr = await backends.start(first_only)
    p = await proxy_factory(FakeRoutes({"/": [addr]}))
    for _ in range(2):
        raw = await http_exchange(p.port, b"GET /r HTTP/1.1\r\nHost: a\r\n\r\n", until=b"/r\n")
        assert raw.startswith(b"HTTP/1.1 200 ")
    assert backends.connections == 2  # the retry opened a fresh one
    # not for a POST with a body: that one gets the 502
    raw = await http_exchange(
        p.port, b"POST /r HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx", until=b"\n", count=2
    )
    assert raw.startswith(b"HTTP/1.1 502 ")


async def test_websocket_upgrade_is_tunnelled(backends, proxy_factory):
    async def ws(req, r, w):
        assert req.headers[b"upgrade"] == b"websocket"
        return await ws_echo(req, r, w)

    addr = await backends.start(ws)
    p = await proxy_factory(FakeRoutes({"/": [addr]}))
    r, w = await asyncio.open_connection("127.0.0.1", p.port)
    w.write(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    async with asyncio.timeout(5):
        head = await r.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"Upgrade: websocket" in head
        for msg in (b"one", b"two"):
            w.write(msg)
            assert await r.readexactly(5 + len(msg)) == b"echo:" + msg
    w.close()


async def test_routes_answer_redirect_and_respond(proxy_factory):
    routes = FakeRoutes(
        {
            "/gone": Respond(403, b"403 Forbidden: not from here\n"),
            "/old": Redirect(308, b"https://a/old"),
        }
    )
    p = await proxy_factory(routes)
    raw = await http_exchange(
        p.port,
        b"GET /gone HTTP/1.1\r\nHost: a\r\n\r\nGET /old HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    (s1, _, b1), (s2, h2, _) = responses(raw)
    assert (s1, b1) == (403, b"403 Forbidden: not from here\n")
    assert (s2, h2[b"location"]) == (308, b"https://a/old")


async def test_slow_reader_holds_the_upstream_back(backends, proxy_factory):
    size = 64 * 1024 * 1024
    finished = asyncio.Event()

    async def big(req, r, w):
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        block = b"z" * 1024 * 1024
        for _ in range(size // len(block)):
            w.write(block)
            await w.drain()
        finished.set()

    addr = await backends.start(big)
    p = await proxy_factory(FakeRoutes({"/": [addr]}))
    r, w = await asyncio.open_connection("127.0.0.1", p.port, limit=1024 * 1024)
    w.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    await asyncio.sleep(0.5)
    assert not finished.is_set()  # the client reads nothing, so the backend cannot finish
    got = 0
    async with asyncio.timeout(20):
        await r.readuntil(b"\r\n\r\n")
        while got < size:
            got += len(await r.read(1024 * 1024))
    assert got == size
    w.close()


async def test_upstream_tls(backends, proxy_factory):
    ca = trustme.CA()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("backend").configure_cert(ctx)
    addr = await backends.start(echo, ssl=ctx)
    routes = FakeRoutes({"/": forward([addr], "/secure", tls=True)})
    p = await proxy_factory(routes)
    raw = await http_exchange(p.port, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", until=b"/secure\n")
    assert raw.startswith(b"HTTP/1.1 200 ")


async def test_access_log_json_line(backends, proxy_factory, tmp_path):
    addr = await backends.start(echo)
    path = tmp_path / "access.log"
    log = AccessLog(str(path), "json")
    p = await proxy_factory(FakeRoutes({"/": [addr]}), access_log=log)
    await http_exchange(
        p.port, b"GET /logged?q=1 HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n"
    )
    log.flush()
    line = json.loads(path.read_text().splitlines()[0])
    assert line["method"] == "GET"
    assert line["host"] == "shop"
    assert line["path"] == "/logged?q=1"
    assert line["status"] == 200
    assert line["bytes"] == len(b"GET /logged?q=1\n")
    assert line["ingress"] == "t/web"
    assert line["upstream"] == f"{addr[0]}:{addr[1]}"
    assert len(line["request_id"]) == 32
    log.close()


async def test_graceful_close_finishes_the_request_in_flight(backends, proxy_factory):
    async def slow(req, r, w):
        await asyncio.sleep(0.3)
        await echo(req, r, w)

    addr = await backends.start(slow)
    p = await proxy_factory(FakeRoutes({"/": [addr]}))
    pending = asyncio.ensure_future(http_exchange(p.port, b"GET /s HTTP/1.1\r\nHost: a\r\n\r\n"))
    await asyncio.sleep(0.1)
    await p.server.close(5)
    raw = await pending
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert b"Connection: close" in raw


async def test_upstream_that_stops_reading_the_request_is_504(backends, proxy_factory):
    async def never_reads(req, r, w):
        await asyncio.sleep(10)

    addr = await backends.start(never_reads, read_body=False)
    p = await proxy_factory(
        FakeRoutes({"/": [addr]}, options=ProxyOptions(body_limit=None, send_timeout=0.3))
    )
    r, w = await asyncio.open_connection("127.0.0.1", p.port)
    size = 256 * 1024 * 1024
    w.write(b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)

    async def upload() -> None:
        block = b"u" * (1024 * 1024)
        with contextlib.suppress(ConnectionError):
            for _ in range(size // len(block)):
                w.write(block)
                await w.drain()

    task = asyncio.ensure_future(upload())
    async with asyncio.timeout(10):
        head = await r.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 504 ")
    task.cancel()
    w.close()


async def test_interim_1xx_from_the_upstream_is_not_passed_on(backends, proxy_factory):
    async def early_hints(req, r, w):
        w.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await w.drain()

    addr = await backends.start(early_hints)
    p = await proxy_factory(FakeRoutes({"/": [addr]}))
    raw = await http_exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"103" not in raw and b"Link:" not in raw
    assert raw.endswith(b"\r\n\r\nok")


async def test_http10_keep_alive_is_honoured(backends, proxy_factory):
    addr = await backends.start(echo)
    p = await proxy_factory(FakeRoutes({"/": [addr]}))
    raw = await http_exchange(
        p.port,
        b"GET /1 HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.0\r\nHost: a\r\n\r\n",
    )  # reads to EOF: the second request, without keep-alive, ends the connection
    (s1, h1, b1), (s2, h2, b2) = responses(raw)
    assert (s1, b1, h1[b"connection"]) == (200, b"GET /1\n", b"keep-alive")
    assert (s2, b2, h2[b"connection"]) == (200, b"GET /2\n", b"close")


async def test_absolute_form_target_routes_by_its_authority(backends, proxy_factory):
    addr = await backends.start(echo)
    routes = FakeRoutes({"/x": [addr]})
    p = await proxy_factory(routes)
    raw = await http_exchange(
        p.port,
        b"GET http://shop.example/x?q=1 HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n",
    )
    assert responses(raw)[0][2] == b"GET /x?q=1\n"
    assert routes.seen[-1]["host"] == "shop.example"
    assert backends.requests[0].headers[b"host"] == b"shop.example"


async def test_a_response_head_split_across_reads_reaches_the_client_whole(backends, proxy_factory):
    # An interim 103 and the final head arrive in pieces, cut inside a field name, inside
    # a line end and inside the blank line that ends the head.
    pieces = [
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=pre",
        b"load\r\n\r\nHTTP/1.1 200 OK\r\nX-Fi",
        b"rst: 1\r",
        b"\nConnection: keep-alive\r\nContent-Length: 5\r\nX-Last: 2\r\n\r",
        b"\nhello",
    ]

    async def dribble(req, r, w):
        for piece in pieces:
            w.write(piece)
            await w.drain()
            await asyncio.sleep(0.05)

    addr = await backends.start(dribble)
    p = await proxy_factory(FakeRoutes({"/": [addr]}))
    raw = await http_exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", until=b"hello")
    rid = backends.requests[0].headers[b"x-request-id"]
    assert raw == (
        b"HTTP/1.1 200 OK\r\nX-First: 1\r\nContent-Length: 5\r\nX-Last: 2\r\n"
        b"X-Request-ID: " + rid + b"\r\n\r\nhello"
    )


async def test_many_response_fields_pass_on_in_order_without_hop_by_hop(backends, proxy_factory):
    fields = b"".join(b"X-Field-%d: value %d\r\n" % (i, i) for i in range(200))

    async def many(req, r, w):
        w.write(
            b"HTTP/1.1 299 Fine Indeed\r\nCONNECTION: keep-alive, X-Field-7\r\n"
            + fields
            + b"keep-alive: timeout=5\r\nX-Request-Id: from-upstream\r\nTE: trailers\r\n"
            b"Upgrade: h2c\r\nTrailer: X-T\r\ncontent-length: 2\r\nX-Odd:\tspaced  \r\n\r\nok"
        )
        await w.drain()

    addr = await backends.start(many)
    p = await proxy_factory(FakeRoutes({"/": [addr]}))
    raw = await http_exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", until=b"\r\n\r\nok")
    # Hop-by-hop fields are dropped whatever their case, and so is X-Field-7, which the
    # upstream's Connection names (RFC 9110 §7.6.1); the rest go on byte for byte, in
    # order; the upstream's own X-Request-ID is the one the client gets.
    assert raw == (
        b"HTTP/1.1 299 Fine Indeed\r\n"
        + fields.replace(b"X-Field-7: value 7\r\n", b"")
        + b"X-Request-Id: from-upstream\r\ncontent-length: 2\r\nX-Odd:\tspaced  \r\n\r\nok"
    )


async def test_a_chunked_response_without_reason_phrase_gets_the_standard_one(
    backends, proxy_factory
):
    async def chunked(req, r, w):
        w.write(
            b"HTTP/1.1 404\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        )
        await w.drain()

    addr = await backends.start(chunked)
    p = await proxy_factory(FakeRoutes({"/": [addr]}))
    raw = await http_exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", until=b"0\r\n\r\n")
    rid = backends.requests[0].headers[b"x-request-id"]
    assert raw == (
        b"HTTP/1.1 404 Not Found\r\nX-A: 1\r\nX-Request-ID: " + rid + b"\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )


async def test_an_oversized_response_head_is_502(backends, proxy_factory):
    async def huge(req, r, w):
        w.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(2000):  # about 80 KiB of fields, past the 64 KiB limit
            w.write(b"X-Filler-%04d: %s\r\n" % (i, b"x" * 24))
        w.write(b"Content-Length: 0\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            await w.drain()

    addr = await backends.start(huge)
    p = await proxy_factory(FakeRoutes({"/": [addr]}))
    raw = await http_exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 502 ")
    assert b"response head is too large" in raw
    assert b"X-Filler" not in raw


async def test_a_tunnel_the_upstream_closes_is_closed_to_the_client(backends, proxy_factory):
    async def one_message(req, r, w):
        w.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nbye"
        )
        await w.drain()
        return False  # and the backend closes

    addr = await backends.start(one_message)
    p = await proxy_factory(FakeRoutes({"/": [addr]}))
    raw = await http_exchange(  # reads to EOF: the proxy must close its side too
        p.port, b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    assert raw.startswith(b"HTTP/1.1 101 ")
    assert raw.endswith(b"\r\n\r\nbye")
    assert not p.server.conns


async def test_a_101_nobody_asked_for_is_502(backends, proxy_factory):
    async def switches(req, r, w):
        w.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        await w.drain()
        return False

    addr = await backends.start(switches)
    p = await proxy_factory(FakeRoutes({"/": [addr]}))
    raw = await http_exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 502 ")
    assert b"switched protocols unasked" in raw


async def test_an_answer_that_closes_is_logged_once(backends, proxy_factory, tmp_path):
    path = tmp_path / "access.log"
    log = AccessLog(str(path), "json")
    p = await proxy_factory(FakeRoutes({"/gone": Respond(403, b"no\n")}), access_log=log)
    raw = await http_exchange(p.port, b"GET /gone HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 403 ")
    log.flush()
    assert [json.loads(x)["status"] for x in path.read_text().splitlines()] == [403]
    log.close()
