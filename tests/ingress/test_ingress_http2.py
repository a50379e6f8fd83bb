"""HTTP/2 at the ingress, in process: real sockets, a fake route table, HTTP/1.1 backends.

The client is h2's client side (tests/h2_peer.py), which also writes the
raw frames of the attacks HTTP/2 servers have fallen to. Each test checks
what a client sees (status, body, RST_STREAM, GOAWAY and its code) or what
the backend got, and that other connections go on being served.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trustme
from h2.errors import ErrorCodes
from h2_peer import (
    CONTINUATION,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    PING,
    H2Peer,
    frame,
)
from ingress_fakes import FakeRoutes, echo, http_exchange
from netplane.ingress.certs import new_context
from netplane.ingress.http import HttpSettings
from netplane.ingress.http2 import PREFACE, RESET_BUDGET
from netplane.ingress.routes import ProxyOptions
from netplane.ingress.server import IngressServer

from netplane.testing.http import Request, Stream, body_data


@pytest.fixture
async def peers() -> AsyncIterator[Any]:
    made: list[H2Peer] = []

    async def connect(port: int, **kw: Any) -> H2Peer:
        tls = kw.pop("tls", None)
        sni = kw.pop("sni", "")
        peer = await H2Peer(**kw).connect(port, tls=tls, sni=sni)
        made.append(peer)
        return peer

    yield connect
    for p in made:
        await p.close()


async def test_streams_are_multiplexed_and_each_is_routed(backends, proxy_factory, peers):
    async def handler(req: Request, r: Stream, w: asyncio.StreamWriter) -> None:
        if req.target.startswith(b"/slow"):
            await asyncio.sleep(0.5)
        await echo(req, r, w)

    web = await backends.start(handler)
    p = await proxy_factory(FakeRoutes({"/": [web]}))
    peer = await peers(p.port)
    slow = peer.request("/slow")
    fast = [peer.request(f"/n/{i}") for i in range(40)]
    for i, sid in enumerate(fast):
        resp = await peer.response(sid)
        assert (resp.status, bytes(resp.body)) == (200, b"GET /n/%d\n" % i)
    assert not peer.responses[slow].done.is_set()  # the slow stream held back none of them
    assert bytes((await peer.response(slow)).body) == b"GET /slow\n"
    # the routes saw :authority as the host, and each stream's own path
    assert {s["path"] for s in p.routes.seen} >= {"/slow", "/n/0", "/n/39"}
    assert all(s["host"] == "a" for s in p.routes.seen)
    assert peer.remote_settings[3] == 128  # SETTINGS_MAX_CONCURRENT_STREAMS
    assert p.server.debug_state()["http2_connections"] == 1


async def test_a_request_body_of_unknown_length_goes_upstream_chunked_with_its_trailers(
    backends, proxy_factory, peers
):
    seen: dict[str, Any] = {}

    async def raw_body(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        head = await r.readuntil(b"\r\n\r\n")
        body = await r.readuntil(b"\r\n0\r\n")
        trailer = await r.readuntil(b"\r\n\r\n")
        seen.update(head=head, body=body, trailer=trailer)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await w.drain()
        w.close()

    server = await asyncio.start_server(raw_body, "127.0.0.1", 0)
    addr = server.sockets[0].getsockname()[:2]
    try:
        p = await proxy_factory(FakeRoutes({"/": [addr]}))
        peer = await peers(p.port)
        sid = peer.request("/up", method="POST", end=False)
        for piece in (b"one", b"two", b"three"):
            peer.send(sid, piece)
            await asyncio.sleep(0.05)
        peer.end(sid, trailers=[("x-checksum", "abc")])
        resp = await peer.response(sid)
        assert (resp.status, bytes(resp.body)) == (200, b"ok")
        assert b"\r\ntransfer-encoding: chunked\r\n" in seen["head"].lower()
        assert b"content-length" not in seen["head"].lower()
        assert seen["body"] == b"3\r\none\r\n3\r\ntwo\r\n5\r\nthree\r\n0\r\n"
        assert seen["trailer"] == b"x-checksum: abc\r\n\r\n"
    finally:
        server.close()


async def test_a_large_upload_and_download_pass_whole_through_the_windows(
    backends, proxy_factory, peers
):
    async def sizes(req: Request, r: Stream, w: asyncio.StreamWriter) -> None:
        n = int(req.target.rsplit(b"/", 1)[1])
        body = bytes(range(256)) * (n // 256)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Got: %d\r\n\r\n" % (n, len(req.body)))
        w.write(body)
        await w.drain()

    web = await backends.start(sizes)
    p = await proxy_factory(FakeRoutes({"/": [web]}, options=ProxyOptions(body_limit=None)))
    peer = await peers(p.port)
    upload = b"x" * (3 * 1024 * 1024)
    sid = peer.request("/size/2097152", method="POST", end=False,
                       headers=[("content-length", str(len(upload)))])  # fmt: skip
    # as much as the proxy's windows let through at a time, as a client must
    sent = 0
    async with asyncio.timeout(20):
        while sent < len(upload):
            room = min(peer.conn.local_flow_control_window(sid), 16384, len(upload) - sent)
            if room <= 0:
                await asyncio.sleep(0.01)
                continue
            peer.send(sid, upload[sent : sent + room], end=sent + room == len(upload))
            sent += room
    resp = await peer.response(sid, timeout=20)
    assert resp.status == 200 and resp.header(b"x-got") == b"%d" % len(upload)
    assert bytes(resp.body) == bytes(range(256)) * (2097152 // 256)


async def test_a_client_that_does_not_open_its_window_gets_no_more_than_it(
    backends, proxy_factory, peers
):
    big = b"z" * (512 * 1024)

    async def download(req: Request, r: Stream, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(big), big))
        await w.drain()

    web = await backends.start(download)
    p = await proxy_factory(FakeRoutes({"/": [web]}))
    peer = await peers(p.port, auto_ack=False, window=16384)
    sid = peer.request("/big")
    resp = peer.responses[sid]
    await asyncio.sleep(0.5)
    assert len(resp.body) == 16384  # the stream's window, and not a byte more
    while not resp.done.is_set():  # then as fast as the client opens it
        got = len(resp.body)
        peer.ack(sid, 16384)
        async with asyncio.timeout(5):
            while len(resp.body) == got and not resp.done.is_set():
                await asyncio.sleep(0.005)
    assert bytes(resp.body) == big and resp.reset is None


async def test_a_client_reset_closes_the_upstream_request_and_the_connection_goes_on(
    backends, proxy_factory, peers
):
    upstream_gone = asyncio.Event()

    async def hang(req: Request, r: Stream, w: asyncio.StreamWriter) -> bool:
        if req.target == b"/hang":
            with contextlib.suppress(Exception):
                await r.read(1)  # EOF once the proxy drops the request
            upstream_gone.set()
            return False
        await echo(req, r, w)
        return True

    web = await backends.start(hang)
    p = await proxy_factory(FakeRoutes({"/": [web]}))
    peer = await peers(p.port)
    sid = peer.request("/hang")
    await asyncio.sleep(0.2)
    peer.reset(sid)
    async with asyncio.timeout(5):
        await upstream_gone.wait()
    assert (await peer.get("/after")).status == 200


async def test_rapid_reset_gets_goaway_enhance_your_calm_and_others_are_served(
    backends, proxy_factory, peers
):
    web = await backends.start(echo)
    p = await proxy_factory(FakeRoutes({"/": [web]}))
    attacker = await peers(p.port)
    for _ in range(RESET_BUDGET * 3):
        if attacker.closed.is_set() or attacker.conn.state_machine.state.name == "CLOSED":
            break
        sid = attacker.request("/x")
        attacker.reset(sid)
        await asyncio.sleep(0)
    await attacker.wait_closed()
    assert attacker.goaway is not None
    assert attacker.goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    other = await peers(p.port)
    assert (await other.get("/fine")).status == 200


async def test_an_oversized_header_list_is_refused_on_its_stream_alone(
    backends, proxy_factory, peers
):
    web = await backends.start(echo)
    p = await proxy_factory(FakeRoutes({"/": [web]}), HttpSettings(max_header_bytes=8192))
    peer = await peers(p.port)
    big = await peer.get("/big", headers=[("x-big", "a" * 9000)])
    assert big.status == 431 and b"header" in bytes(big.body)
    assert (await peer.get("/next")).status == 200  # the same connection goes on


async def test_bad_hpack_is_a_compression_error_for_that_connection_only(
    backends, proxy_factory, peers
):
    web = await backends.start(echo)
    p = await proxy_factory(FakeRoutes({"/": [web]}))
    bad = await peers(p.port)
    await bad.settings_seen.wait()
    # index 0 is never valid (RFC 7541 §6.1); 0x3f 0xe1 0x1f: a table size over the limit
    bad.raw(frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\x80"))
    await bad.wait_closed()
    assert bad.goaway is not None and bad.goaway.error_code == ErrorCodes.COMPRESSION_ERROR
    good = await peers(p.port)
    assert (await good.get("/")).status == 200


async def test_a_continuation_flood_is_cut_while_it_arrives(backends, proxy_factory, peers):
    web = await backends.start(echo)
    p = await proxy_factory(FakeRoutes({"/": [web]}))
    attacker = await peers(p.port)
    await attacker.settings_seen.wait()
    attacker.raw(frame(HEADERS, 0, 1, b"\x82"))  # :method GET, no END_HEADERS
    filler = b"\x00" * 16384
    with contextlib.suppress(ConnectionError):
        for _ in range(2000):  # 32 MB, were it all read
            attacker.raw(frame(CONTINUATION, 0, 1, filler))
            await attacker.writer.drain()
            if attacker.closed.is_set():
                break
    await attacker.wait_closed()
    assert attacker.goaway is not None and attacker.goaway.error_code in (
        ErrorCodes.ENHANCE_YOUR_CALM,
        ErrorCodes.PROTOCOL_ERROR,
    )
    other = await peers(p.port)
    assert (await other.get("/")).status == 200


async def test_a_ping_flood_from_a_client_that_does_not_read_stays_bounded(
    backends, proxy_factory, peers
):
    web = await backends.start(echo)
    p = await proxy_factory(FakeRoutes({"/": [web]}))
    # a client that sends PINGs and never reads their answers
    _, w = await asyncio.open_connection("127.0.0.1", p.port)
    w.write(PREFACE + frame(4, 0, 0, b""))
    pings = frame(PING, 0, 0, b"12345678") * 4096
    sent = 0
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(3):
            while sent < 200_000_000:
                w.write(pings)
                await w.drain()  # blocks once the proxy stops reading us
                sent += len(pings)
    (conn,) = [c for c in p.server.conns if type(c).__name__ == "Http2Connection"]
    assert conn.flow.paused  # it stopped reading the flooder
    assert conn.transport.get_write_buffer_size() < 4 * 1024 * 1024
    other = await peers(p.port)
    assert (await other.get("/")).status == 200  # and served everyone else
    w.close()


async def test_gRPC_calls_get_gRPC_answers_for_the_proxys_own_errors(
    backends, proxy_factory, peers
):
    async def slow(req: Request, r: Stream, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3)

    slow_addr = await backends.start(slow)
    web = await backends.start(echo)
    routes = FakeRoutes(
        {
            "/svc.Dead/": [("127.0.0.1", 9)],
            "/svc.None/": [],
            "/svc.Slow/": [slow_addr],
            "/svc.Small/": [web],
        },
        options=ProxyOptions(body_limit=10, read_timeout=0.5),
    )
    p = await proxy_factory(routes)
    peer = await peers(p.port)
    grpc = [("content-type", "application/grpc"), ("te", "trailers")]

    async def call(path: str, body: bytes | None = None) -> tuple[int, bytes, bytes]:
        resp = await peer.get(path, method="POST", headers=grpc, body=body or b"\0\0\0\0\0")
        assert resp.status == 200 and resp.header(b"content-type") == b"application/grpc"
        assert not resp.body  # trailers only
        return int(resp.header(b"grpc-status")), resp.header(b"grpc-message"), resp

    assert (await call("/nope.Svc/Call"))[0] == 12  # no route: UNIMPLEMENTED
    assert (await call("/svc.None/Call"))[0] == 14  # no endpoint: UNAVAILABLE
    assert (await call("/svc.Dead/Call"))[0] == 14  # connect refused: UNAVAILABLE
    assert (await call("/svc.Slow/Call"))[0] == 4  # proxy-read-timeout: DEADLINE_EXCEEDED
    code, message, _ = await call("/svc.Small/Call", b"\0" * 64)
    assert code == 8 and b"larger" in message  # over the body limit: RESOURCE_EXHAUSTED


async def test_h2c_off_leaves_the_preface_to_http1(backends, proxy_factory, caplog):
    web = await backends.start(echo)
    with caplog.at_level("INFO", logger="netplane.ingress"):
        p = await proxy_factory(FakeRoutes({"/": [web]}), HttpSettings(h2c=False))
    assert any("HTTP/1.1 (--ingress-h2c off)" in r.getMessage() for r in caplog.records)
    raw = await http_exchange(p.port, PREFACE)
    assert raw.startswith(b"HTTP/1.1 400 ")


async def test_an_h2c_preface_in_pieces_is_still_http2(backends, proxy_factory):
    web = await backends.start(echo)
    p = await proxy_factory(FakeRoutes({"/": [web]}))
    r, w = await asyncio.open_connection("127.0.0.1", p.port)
    for piece in (PREFACE[:1], PREFACE[1:2], PREFACE[2:]):
        w.write(piece)
        await w.drain()
        await asyncio.sleep(0.05)
    w.write(frame(4, 0, 0, b""))
    async with asyncio.timeout(5):
        first = await r.readexactly(9)
    assert first[3] == 4  # the proxy's SETTINGS: it speaks HTTP/2
    w.close()


async def test_tls_alpn_serves_h2_and_http11_on_one_listener(backends, proxy_factory, peers):
    web = await backends.start(echo)
    ca = trustme.CA()
    ctx = new_context()
    ca.issue_cert("secure.test").configure_cert(ctx)
    p = await proxy_factory(FakeRoutes({"/": [web]}), tls=ctx)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    client.set_alpn_protocols(["h2", "http/1.1"])
    peer = await peers(p.port, tls=client, sni="secure.test")
    assert peer.alpn == "h2"
    resp = await peer.get("/tls", scheme="https", host="secure.test")
    assert (resp.status, bytes(resp.body)) == (200, b"GET /tls\n")
    assert p.routes.seen[-1]["https"] is True
    # a client that offers only http/1.1 gets it
    old = ssl.create_default_context()
    ca.configure_trust(old)
    old.set_alpn_protocols(["http/1.1"])
    r, w = await asyncio.open_connection(
        "127.0.0.1", p.port, ssl=old, server_hostname="secure.test"
    )
    w.write(b"GET /one HTTP/1.1\r\nHost: secure.test\r\n\r\n")
    async with asyncio.timeout(5):
        assert (await r.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
    w.close()


async def test_shutdown_sends_goaway_and_finishes_the_open_streams(backends, proxy_factory, peers):
    async def slowish(req: Request, r: Stream, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.5)
        await echo(req, r, w)

    web = await backends.start(slowish)
    server = IngressServer(FakeRoutes({"/": [web]}))
    _, port = await server.listen("127.0.0.1", 0)
    peer = await peers(port)
    sid = peer.request("/inflight")
    await asyncio.sleep(0.1)
    closing = asyncio.get_running_loop().create_task(server.close(5))
    resp = await peer.response(sid)
    assert (resp.status, bytes(resp.body)) == (200, b"GET /inflight\n")
    await peer.wait_closed()
    await closing
    assert peer.goaway is not None and peer.goaway.error_code == ErrorCodes.NO_ERROR
    assert peer.goaway.last_stream_id == sid


async def test_a_stream_whose_window_stays_shut_is_reset_after_the_body_timeout(
    backends, proxy_factory, peers
):
    async def download(req: Request, r: Stream, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"q" * 100000)
        await w.drain()

    web = await backends.start(download)
    p = await proxy_factory(FakeRoutes({"/": [web]}), HttpSettings(body_timeout=1))
    peer = await peers(p.port, auto_ack=False, window=1024)
    sid = peer.request("/stuck")
    resp = await peer.response(sid, timeout=5)
    assert resp.reset is not None and len(resp.body) == 1024


async def test_expect_100_continue_gets_an_interim_answer(backends, proxy_factory, peers):
    async def upload(req: Request, r: Stream, w: asyncio.StreamWriter) -> None:
        got = b"".join([piece.data async for piece in body_data(req, r)])
        body = b"got %d" % len(got)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await w.drain()

    web = await backends.start(upload, read_body=False)
    p = await proxy_factory(FakeRoutes({"/": [web]}))
    peer = await peers(p.port)
    sid = peer.request("/up", method="PUT", end=False,
                       headers=[("expect", "100-continue"), ("content-length", "5")])  # fmt: skip
    await asyncio.sleep(0.2)
    peer.send(sid, b"hello", end=True)
    resp = await peer.response(sid)
    assert (resp.status, bytes(resp.body)) == (200, b"got 5")


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load (nghttp2-client) is needed")
@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "h2-over-tls"])
async def test_h2load_with_many_concurrent_streams_gets_every_answer(backends, proxy_factory, tls):
    web = await backends.start(echo)
    ctx = None
    if tls:
        ctx = new_context()
        trustme.CA().issue_cert("secure.test").configure_cert(ctx)
    p = await proxy_factory(FakeRoutes({"/": [web]}), tls=ctx)
    scheme = "https" if tls else "http"
    proc = await asyncio.create_subprocess_exec(
        "h2load", "-n", "3000", "-c", "4", "-m", "64", f"{scheme}://127.0.0.1:{p.port}/h2load",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, _ = await proc.communicate()
    text = out.decode()
    assert "3000 succeeded, 0 failed, 0 errored" in text, text[-800:]
    assert "status codes: 3000 2xx" in text
