"""The admin server as a client sees it: real sockets, raw HTTP/1.1 bytes, and curl."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import uvloop

from netplane.admin import AdminServer, Request, Response, Router

T = 5.0  # upper bound on any single wait


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


async def read_reply(reader: asyncio.StreamReader, *, head: bool = False) -> Reply:
    """Read one response framed by Content-Length (the admin server always sets it)."""
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = 0 if head else int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), T) if length else b""
    return Reply(status, headers, body)


async def at_eof(reader: asyncio.StreamReader) -> bool:
    """True if the server closed the connection (reads nothing more)."""
    try:
        return await asyncio.wait_for(reader.read(), T) == b""
    except ConnectionResetError:
        return True


_writers: list[asyncio.StreamWriter] = []


@pytest.fixture(autouse=True)
async def close_clients() -> AsyncIterator[None]:
    yield
    while _writers:
        writer = _writers.pop()
        writer.close()
        with contextlib.suppress(OSError):
            await asyncio.wait_for(writer.wait_closed(), T)


async def connect(
    server: AdminServer, host: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a client connection; the autouse fixture closes it after the test."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, server.port), T)
    _writers.append(writer)
    return reader, writer


def req(method: str, path: str, *extra: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: admin", *extra, "", ""]
    return "\r\n".join(lines).encode()


async def fetch(server: AdminServer, method: str, path: str, host: str = "127.0.0.1") -> Reply:
    reader, writer = await connect(server, host)
    try:
        writer.write(req(method, path))
        return await read_reply(reader, head=method == "HEAD")
    finally:
        writer.close()


class State:
    ready = False


@pytest.fixture
async def server() -> AsyncIterator[AdminServer]:
    srv = AdminServer(
        "127.0.0.1",
        0,
        is_ready=lambda: State.ready,
        debug_state=lambda: {"services": 3, "zone": {"serial": 7}, "when": object.__new__(Thing)},
        request_timeout=1.0,
        keepalive_timeout=1.0,
    )
    State.ready = False
    await srv.start()
    yield srv
    await srv.close(grace=1.0)


class Thing:
    def __str__(self) -> str:
        return "a thing"


# -- built-in routes ----------------------------------------------------------


async def test_port_zero_binds_a_real_port(server: AdminServer) -> None:
    assert server.port > 0
    assert server.addresses == [("127.0.0.1", server.port)]
    assert len(server.sockets) == 1


async def test_healthz(server: AdminServer) -> None:
    reply = await fetch(server, "GET", "/healthz")
    assert (reply.status, reply.body) == (200, b"ok\n")
    assert reply.headers["content-type"].startswith("text/plain")


async def test_readyz_flips_from_503_to_200(server: AdminServer) -> None:
    reply = await fetch(server, "GET", "/readyz")
    assert (reply.status, reply.body) == (503, b"not ready\n")
    State.ready = True
    reply = await fetch(server, "GET", "/readyz")
    assert (reply.status, reply.body) == (200, b"ok\n")


async def test_debug_state_is_sorted_indented_json(server: AdminServer) -> None:
    reply = await fetch(server, "GET", "/debug/state")
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert json.loads(reply.body) == {"services": 3, "when": "a thing", "zone": {"serial": 7}}
    text = reply.body.decode()
    assert text.index('"services"') < text.index('"when"') < text.index('"zone"')
    assert '\n  "services": 3' in text


async def test_head_has_headers_but_no_body(server: AdminServer) -> None:
    reader, writer = await connect(server)
    # HEAD then GET on one connection: were any body bytes sent after the
    # HEAD response, the GET's status line would not parse.
    writer.write(req("HEAD", "/debug/state") + req("GET", "/healthz"))
    head = await read_reply(reader, head=True)
    assert head.status == 200
    assert int(head.headers["content-length"]) > 10
    assert head.body == b""
    get = await read_reply(reader)
    assert (get.status, get.body) == (200, b"ok\n")
    writer.close()


async def test_unknown_path_404_wrong_method_405_with_allow(server: AdminServer) -> None:
    reply = await fetch(server, "GET", "/nope")
    assert (reply.status, reply.body) == (404, b"not found\n")
    reply = await fetch(server, "DELETE", "/healthz")
    assert reply.status == 405
    assert reply.headers["allow"] == "GET, HEAD"
    assert reply.body == b"method not allowed\n"


async def test_query_is_not_part_of_the_path(server: AdminServer) -> None:
    reply = await fetch(server, "GET", "/healthz?verbose=1")
    assert (reply.status, reply.body) == (200, b"ok\n")


# -- added routes -------------------------------------------------------------


async def test_added_async_route_sees_method_path_query_headers(server: AdminServer) -> None:
    seen: list[Request] = []

    async def handler(request: Request) -> Response:
        seen.append(request)
        await asyncio.sleep(0)
        return Response(201, b"made\n", "text/plain", headers=(("x-id", "42"),))

    server.add_route("post", "/things", handler)
    reader, writer = await connect(server)
    writer.write(
        b"POST /things?name=web&ns=default HTTP/1.1\r\nHost: admin\r\nX-Trace: a\r\n"
        b"Content-Length: 5\r\n\r\nhello"
    )
    reply = await read_reply(reader)
    writer.close()
    assert (reply.status, reply.body, reply.headers["x-id"]) == (201, b"made\n", "42")
    (request,) = seen
    assert (request.method, request.path, request.body) == ("POST", "/things", b"hello")
    assert dict(request.query) == {"name": "web", "ns": "default"}
    assert request.headers["x-trace"] == "a"
    # the 405 on a path with a POST route lists exactly that
    assert (await fetch(server, "GET", "/things")).headers["allow"] == "POST"


async def test_expect_100_continue_gets_100_then_the_response(server: AdminServer) -> None:
    """A client that waits for 100 Continue before its body (curl does, for large POSTs)."""
    bodies: list[bytes] = []

    async def handler(request: Request) -> Response:
        bodies.append(request.body)
        return Response.text("got it\n")

    server.add_route("POST", "/things", handler)
    reader, writer = await connect(server)
    writer.write(
        b"POST /things HTTP/1.1\r\nHost: admin\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    )
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
    assert interim.startswith(b"HTTP/1.1 100 ")
    writer.write(b"hello")
    reply = await read_reply(reader)
    assert (reply.status, reply.body, bodies) == (200, b"got it\n", [b"hello"])


def test_router_is_pure_and_refuses_duplicates() -> None:
    router = Router()
    router.add("GET", "/metrics", lambda r: Response.text("x\n"))
    assert callable(router.resolve("HEAD", "/metrics"))
    missing = router.resolve("GET", "/other")
    assert isinstance(missing, Response) and missing.status == 404
    with pytest.raises(ValueError, match="already registered"):
        router.add("get", "/metrics", lambda r: Response())
    with pytest.raises(ValueError, match="final status"):
        Response(99)


async def test_raising_handler_gives_500_logs_traceback_and_keeps_serving(
    server: AdminServer, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(request: Request) -> Response:
        raise RuntimeError("secret internals")

    server.add_route("GET", "/boom", boom)
    reader, writer = await connect(server)
    with caplog.at_level(logging.ERROR, logger="netplane.admin"):
        writer.write(req("GET", "/boom"))
        reply = await read_reply(reader)
    assert (reply.status, reply.body) == (500, b"internal server error\n")
    assert b"secret" not in reply.body
    (record,) = [r for r in caplog.records if r.name == "netplane.admin"]
    assert "GET /boom" in record.getMessage()
    assert record.exc_info and "secret internals" in caplog.text
    # the same connection still works
    writer.write(req("GET", "/healthz"))
    assert (await read_reply(reader)).status == 200
    writer.close()


# -- connection handling ------------------------------------------------------


async def test_keep_alive_two_requests_one_connection(server: AdminServer) -> None:
    reader, writer = await connect(server)
    for path, status in (("/healthz", 200), ("/readyz", 503)):
        writer.write(req("GET", path))
        reply = await read_reply(reader)
        assert reply.status == status
        assert reply.headers.get("connection") != "close"
    writer.close()


async def test_pipelined_requests_are_answered_in_order(server: AdminServer) -> None:
    async def slow(request: Request) -> Response:
        # the first request takes longest, so out-of-order would show
        delay = float(request.query["d"])
        await asyncio.sleep(delay)
        return Response.text(f"{request.query['n']}\n")

    server.add_route("GET", "/slow", slow)
    reader, writer = await connect(server)
    writer.write(
        req("GET", "/slow?n=1&d=0.2") + req("GET", "/slow?n=2&d=0") + req("GET", "/slow?n=3&d=0.05")
    )
    bodies = [(await read_reply(reader)).body for _ in range(3)]
    assert bodies == [b"1\n", b"2\n", b"3\n"]
    writer.close()


async def test_connection_close_from_client_is_honoured(server: AdminServer) -> None:
    reader, writer = await connect(server)
    writer.write(req("GET", "/healthz", "Connection: close"))
    assert (await read_reply(reader)).status == 200
    assert await at_eof(reader)
    writer.close()


async def test_malformed_request_line_gets_400_and_server_still_serves(
    server: AdminServer,
) -> None:
    reader, writer = await connect(server)
    writer.write(b"THIS IS NOT HTTP\r\n\r\n")
    reply = await read_reply(reader)
    assert (reply.status, reply.body) == (400, b"bad request\n")
    assert reply.headers["connection"] == "close"
    assert await at_eof(reader)
    writer.close()
    assert (await fetch(server, "GET", "/healthz")).status == 200


async def test_oversized_header_gets_431(server: AdminServer) -> None:
    reader, writer = await connect(server)
    writer.write(req("GET", "/healthz", "X-Big: " + "a" * 32 * 1024))
    reply = await read_reply(reader)
    assert (reply.status, reply.body) == (431, b"request header fields too large\n")
    assert await at_eof(reader)
    writer.close()


async def test_idle_connection_is_closed_after_keepalive_timeout(server: AdminServer) -> None:
    server.keepalive_timeout = 0.2
    reader, _writer = await connect(server)
    assert await at_eof(reader)


async def test_slow_request_gets_408_even_when_dribbling(server: AdminServer) -> None:
    server.request_timeout = 0.3
    reader, writer = await connect(server)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    writer.write(b"GET /healthz HTTP/1.1\r\n")

    async def dribble() -> None:
        # a byte every 0.1 s for 1 s; were the deadline pushed back by each
        # byte, no 408 could come before the dribbling stops
        for _ in range(10):
            await asyncio.sleep(0.1)
            writer.write(b"X")

    dribbling = asyncio.create_task(dribble())
    reply = await read_reply(reader)
    elapsed = loop.time() - t0
    assert (reply.status, reply.body) == (408, b"request timeout\n")
    assert 0.25 < elapsed < 0.8
    assert await at_eof(reader)
    dribbling.cancel()
    writer.close()


async def test_error_response_survives_unread_client_input(server: AdminServer) -> None:
    # The client keeps sending after its request was refused; the server
    # drains instead of closing on unread input (which would send RST and
    # could destroy the 400 before the client reads it).
    reader, writer = await connect(server)
    writer.write(b"BAD REQUEST LINE\r\n\r\n" + b"junk " * 20_000)
    reply = await read_reply(reader)
    assert reply.status == 400
    assert await at_eof(reader)
    writer.close()


async def test_close_lets_in_flight_request_finish_and_drops_idle(server: AdminServer) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def held(request: Request) -> Response:
        started.set()
        await release.wait()
        return Response.text("done\n")

    server.add_route("GET", "/held", held)
    port = server.port
    idle_reader, _idle_writer = await connect(server)
    writer_ok = await connect(server)
    writer_ok[1].write(req("GET", "/healthz"))
    assert (await read_reply(writer_ok[0])).status == 200  # now idle, keep-alive
    busy_reader, busy_writer = await connect(server)
    busy_writer.write(req("GET", "/held"))
    await asyncio.wait_for(started.wait(), T)

    closing = asyncio.create_task(server.close(grace=T))
    assert await at_eof(idle_reader)
    assert await at_eof(writer_ok[0])
    with pytest.raises(OSError):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), T)
    assert not closing.done()

    release.set()
    reply = await read_reply(busy_reader)
    assert (reply.status, reply.body) == (200, b"done\n")
    assert reply.headers["connection"] == "close"
    assert await at_eof(busy_reader)
    await asyncio.wait_for(closing, T)
    busy_writer.close()


async def test_close_aborts_a_handler_that_outlives_grace(server: AdminServer) -> None:
    async def stuck(request: Request) -> Response:
        await asyncio.sleep(60)
        return Response()

    server.add_route("GET", "/stuck", stuck)
    reader, writer = await connect(server)
    writer.write(req("GET", "/stuck"))
    await asyncio.sleep(0.05)
    await asyncio.wait_for(server.close(grace=0.2), T)
    assert await at_eof(reader)
    writer.close()


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_binds_ipv6_loopback() -> None:
    srv = AdminServer("::1", 0, is_ready=lambda: True, debug_state=dict)
    await srv.start()
    try:
        assert srv.addresses == [("::1", srv.port)]
        reply = await fetch(srv, "GET", "/readyz", host="::1")
        assert (reply.status, reply.body) == (200, b"ok\n")
    finally:
        await srv.close(grace=1.0)


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
async def test_curl_as_a_real_client(server: AdminServer) -> None:
    State.ready = True
    base = f"http://127.0.0.1:{server.port}"
    # one curl process, three URLs: curl reuses the keep-alive connection
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "5",
        "-w", "|%{http_code}|%{content_type}|%{num_connects}|\n",
        f"{base}/healthz", f"{base}/debug/state", f"{base}/nope",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), T)
    assert proc.returncode == 0, err
    first, second, third, end = out.decode().split("|\n")
    assert end == ""
    assert first == "ok\n|200|text/plain; charset=utf-8|1"
    state, code, ctype, connects = second.split("|")
    assert json.loads(state)["zone"] == {"serial": 7}
    assert (code, ctype, connects) == ("200", "application/json", "0")  # connection reused
    assert third == "not found\n|404|text/plain; charset=utf-8|0"

    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-I", "--max-time", "5", f"{base}/readyz",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), T)
    assert proc.returncode == 0, err
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-length: 3\r\n" in out.lower()


def test_serves_on_uvloop() -> None:
    """The daemon runs on uvloop, whose transports are not asyncio's classes."""

    async def scenario() -> None:
        srv = AdminServer("127.0.0.1", 0, is_ready=lambda: True, debug_state=lambda: {"a": 1})
        await srv.start()
        reader, writer = await connect(srv)
        writer.write(req("GET", "/readyz") + req("HEAD", "/healthz") + req("GET", "/debug/state"))
        assert (await read_reply(reader)).status == 200
        assert (await read_reply(reader, head=True)).body == b""
        assert json.loads((await read_reply(reader)).body) == {"a": 1}
        bad_reader, bad_writer = await connect(srv)
        bad_writer.write(b"NOPE\r\n\r\n")
        assert (await read_reply(bad_reader)).status == 400
        assert await at_eof(bad_reader)
        await asyncio.wait_for(srv.close(grace=1.0), T)
        assert await at_eof(reader)
        for w in (writer, bad_writer):
            w.close()
            await w.wait_closed()
        _writers.clear()

    uvloop.run(scenario())
