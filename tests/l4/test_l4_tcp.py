"""The TCP relay with real sockets on loopback: both relays (splice and Protocols), both loops."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import struct
from collections.abc import AsyncIterator, Callable

import pytest
from l4_fakes import Route

from netplane.l4 import splice
from netplane.l4.flow_control import PENDING_FULL, FlowControl
from netplane.l4.picker import Target
from netplane.l4.proxy_protocol import decode_v2
from netplane.l4.tcp import TcpProxy, TcpSettings

WAIT = 5.0
FAST = TcpSettings(connect_timeout=0.3, connect_attempts=3, idle_timeout=30.0)
PATH = {"splice": True}


@pytest.fixture(params=["splice", "protocol"], autouse=True)
def relay_path(request: pytest.FixtureRequest) -> str:
    """Every test here runs on both relays (the splice one only where the platform has it)."""
    if request.param == "splice" and not splice.available():
        pytest.skip("os.splice is not available here")
    PATH["splice"] = request.param == "splice"
    return request.param


def new_proxy(settings: TcpSettings) -> TcpProxy:
    proxy = TcpProxy(dataclasses.replace(settings, splice=PATH["splice"]))
    assert proxy.spliced == PATH["splice"]
    return proxy


async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
        await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def server(handler=echo_handler, host: str = "127.0.0.1") -> AsyncIterator[Target]:
    srv = await asyncio.start_server(handler, host, 0)
    try:
        yield Target(host, srv.sockets[0].getsockname()[1])
    finally:
        srv.close()


@contextlib.asynccontextmanager
async def relay(
    route: Route | None, settings: TcpSettings = FAST, host: str = "127.0.0.1"
) -> AsyncIterator[tuple[TcpProxy, tuple[str, int]]]:
    proxy = new_proxy(settings)
    listener = await proxy.listen(host, 0, lambda sockname, peername: route)
    try:
        yield proxy, listener.sockname[:2]
    finally:
        await proxy.close(0)


def closed_port(host: str = "127.0.0.1") -> Target:
    """A port nothing listens on (connecting to it is refused)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return Target(host, s.getsockname()[1])


@contextlib.contextmanager
def blackhole():
    """A listening port whose accept queue is full, so new SYNs are dropped (connect hangs)."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(0)
    fillers = []
    try:
        for _ in range(3):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(ls.getsockname())
            fillers.append(s)
        yield Target("127.0.0.1", ls.getsockname()[1])
    finally:
        for s in fillers:
            s.close()
        ls.close()


def rst(writer: asyncio.StreamWriter) -> None:
    """Close with a reset."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def read_all(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(WAIT):
        return await reader.read()


async def expect_reset(reader: asyncio.StreamReader, within: float = 1.0) -> None:
    """The connection ends without data: a reset, or at worst an EOF, within ``within``."""
    async with asyncio.timeout(within):
        try:
            data = await reader.read()
        except ConnectionResetError:
            return
    assert data == b""


async def wait_for(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


# -- bytes through ----------------------------------------------------------------


def test_bytes_through_and_route_accounting(run) -> None:
    async def main() -> None:
        async with server() as t, relay(route := Route(t)) as (proxy, addr):
            reader, writer = await asyncio.open_connection(*addr)
            writer.write(b"hello")
            async with asyncio.timeout(WAIT):
                assert await reader.readexactly(5) == b"hello"
            assert proxy.connections == 1
            assert route.n_opened == [t] and route.n_closed == []
            assert route.picks[0][0] == "127.0.0.1"
            writer.close()
            await wait_for(lambda: proxy.connections == 0)
            assert route.n_closed == [t]

    run(main())


def test_wildcard_listener_routes_by_the_address_the_client_reached(run) -> None:
    async def main() -> None:
        seen: list[tuple] = []
        async with server() as t:
            proxy = new_proxy(FAST)
            route = Route(t)

            def resolve(sockname: tuple, peername: tuple) -> Route:
                seen.append(sockname[:2])
                return route

            listener = await proxy.listen("0.0.0.0", 0, resolve)
            port = listener.sockname[1]
            try:
                for ip in ("127.0.0.1", "127.0.0.2"):
                    reader, writer = await asyncio.open_connection(ip, port)
                    writer.write(ip.encode())
                    writer.write_eof()
                    assert await read_all(reader) == ip.encode()
                    writer.close()
            finally:
                await proxy.close(1.0)
            assert seen == [("127.0.0.1", port), ("127.0.0.2", port)]

    run(main())


def test_ipv6_loopback(run) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no ::1")

    async def main() -> None:
        async with server(host="::1") as t, relay(Route(t), host="::1") as (_, addr):
            reader, writer = await asyncio.open_connection(*addr)
            writer.write(b"six")
            writer.write_eof()
            assert await read_all(reader) == b"six"
            writer.close()

    run(main())


def test_bulk_both_ways_with_slow_reader_stays_bounded(run) -> None:
    size = 1 << 20
    up_payload = bytes(range(256)) * (size // 256)
    down_payload = bytes(reversed(range(256))) * (size // 256)
    got_up = bytearray()

    async def slow_sink_then_source(reader, writer) -> None:
        # Read the whole upload slowly, then answer with the download.
        while data := await reader.read(16384):
            got_up.extend(data)
            await asyncio.sleep(0.001)
        writer.write(down_payload)
        await writer.drain()
        writer.close()

    async def main() -> None:
        settings = TcpSettings(high_water=65536, pipe_size=65536)
        async with server(slow_sink_then_source) as t, relay(Route(t), settings) as (proxy, addr):
            peak = 0

            async def watch() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, proxy.buffered())
                    await asyncio.sleep(0.002)

            watcher = asyncio.create_task(watch())
            reader, writer = await asyncio.open_connection(*addr)
            writer.write(up_payload)
            writer.write_eof()
            got_down = bytearray()
            async with asyncio.timeout(10):
                while data := await reader.read(16384):
                    got_down.extend(data)
                    await asyncio.sleep(0.001)
            watcher.cancel()
            writer.close()
            assert bytes(got_up) == up_payload
            assert bytes(got_down) == down_payload
            # One socket's buffer may pass high_water by one read (256 KiB at most).
            assert peak <= 2 * (65536 + 262144), peak

    run(main())


def test_stalled_endpoint_pauses_the_client(run) -> None:
    release = asyncio.Event
    stalls: dict[str, asyncio.Event] = {}
    received = 0

    async def stalled_sink(reader, writer) -> None:
        nonlocal received
        await stalls["go"].wait()
        while data := await reader.read(65536):
            received += len(data)
        writer.close()

    async def main() -> None:
        stalls["go"] = release()
        settings = TcpSettings(high_water=32768, pipe_size=65536)
        async with server(stalled_sink) as t, relay(Route(t), settings) as (proxy, addr):
            _reader, writer = await asyncio.open_connection(*addr)
            conn = next(iter(proxy._conns))
            chunk = b"x" * 65536
            sent = 0
            async with asyncio.timeout(WAIT):
                # Push until the relay stops reading the client (kernel buffers fill first).
                while not conn.client_paused and sent < (256 << 20):
                    writer.write(chunk)
                    sent += len(chunk)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.01):
                            await writer.drain()
            assert conn.client_paused
            assert proxy.buffered() <= 32768 + 262144
            stalls["go"].set()
            async with asyncio.timeout(WAIT):
                await writer.drain()
            writer.write_eof()
            await wait_for(lambda: received == sent)
            writer.close()

    run(main())


def test_half_close_client_still_gets_the_reply(run) -> None:
    async def answer_after_eof(reader, writer) -> None:
        request = await reader.read()  # until the client's FIN
        writer.write(b"got " + request)
        await writer.drain()
        writer.close()

    async def main() -> None:
        async with server(answer_after_eof) as t, relay(Route(t)) as (proxy, addr):
            # A raw socket, so the half-close is exactly shutdown(SHUT_WR).
            s = socket.socket()
            s.setblocking(False)
            loop = asyncio.get_running_loop()
            await loop.sock_connect(s, addr)
            await loop.sock_sendall(s, b"question")
            s.shutdown(socket.SHUT_WR)
            reply = b""
            async with asyncio.timeout(WAIT):
                while data := await loop.sock_recv(s, 65536):
                    reply += data
            s.close()
            assert reply == b"got question"
            await wait_for(lambda: proxy.connections == 0)

    run(main())


def test_upstream_half_close_is_forwarded(run) -> None:
    async def speak_then_listen(reader, writer) -> None:
        writer.write(b"banner")
        writer.write_eof()
        rest = await reader.read()
        assert rest == b"after"
        writer.close()

    async def main() -> None:
        async with server(speak_then_listen) as t, relay(route := Route(t)) as (proxy, addr):
            reader, writer = await asyncio.open_connection(*addr)
            assert await read_all(reader) == b"banner"  # EOF from upstream arrives
            writer.write(b"after")  # the other direction still works
            writer.write_eof()
            await wait_for(lambda: proxy.connections == 0)
            assert route.n_closed == [t]
            writer.close()

    run(main())


# -- connecting -------------------------------------------------------------------


def test_refused_endpoint_is_retried_on_the_next(run) -> None:
    async def main() -> None:
        dead = closed_port()
        async with server() as good, relay(route := Route(dead, good)) as (_, addr):
            reader, writer = await asyncio.open_connection(*addr)
            writer.write(b"ping")
            writer.write_eof()
            assert await read_all(reader) == b"ping"
            writer.close()
            assert route.n_failed == [dead]
            assert route.n_opened == [good]
            assert route.picks[1][1] == frozenset({dead})

    run(main())


def test_all_refused_resets_the_client_quickly(run) -> None:
    async def main() -> None:
        a, b = closed_port(), closed_port()
        async with relay(route := Route(a, b)) as (proxy, addr):
            reader, writer = await asyncio.open_connection(*addr)
            writer.write(b"early bytes are dropped")
            await expect_reset(reader)
            writer.close()
            assert set(route.n_failed) == {a, b}
            assert route.n_opened == [] and route.n_closed == []
            await wait_for(lambda: proxy.connections == 0)
            assert proxy.unreachable == 1

    run(main())


def test_retries_stop_after_connect_attempts(run) -> None:
    """Three tries in all (FAST.connect_attempts) even though a fourth endpoint is left."""

    async def main() -> None:
        dead = [closed_port() for _ in range(4)]
        async with relay(route := Route(*dead)) as (proxy, addr):
            reader, writer = await asyncio.open_connection(*addr)
            await expect_reset(reader)
            writer.close()
            await wait_for(lambda: proxy.connections == 0)
            assert len(route.n_failed) == 3 and len(set(route.n_failed)) == 3
            assert [len(exclude) for _, exclude in route.picks] == [0, 1, 2]
            assert proxy.connect_failures == 3 and proxy.unreachable == 1

    run(main())


async def connect_expect_reset(addr: tuple, within: float) -> None:
    """Connect, then see a reset (which may come so fast that the connect reports it)."""
    try:
        reader, writer = await asyncio.open_connection(*addr)
    except ConnectionResetError:
        return
    await expect_reset(reader, within=within)
    writer.close()


def test_no_target_resets_at_once(run) -> None:
    async def main() -> None:
        async with relay(Route()) as (proxy, addr):
            await connect_expect_reset(addr, within=0.5)
            assert proxy.refused == 1
        async with relay(None) as (proxy, addr):  # no route at all
            await connect_expect_reset(addr, within=0.5)

    run(main())


def test_connect_timeout_is_retried(run) -> None:
    async def main() -> None:
        settings = TcpSettings(connect_timeout=0.2, connect_attempts=2)
        with blackhole() as hole:
            async with server() as good, relay(route := Route(hole, good), settings) as (_, a):
                loop = asyncio.get_running_loop()
                started = loop.time()
                reader, writer = await asyncio.open_connection(*a)
                writer.write(b"patience")  # buffered while connecting
                writer.write_eof()
                assert await read_all(reader) == b"patience"
                assert 0.15 < loop.time() - started < 2.0
                assert route.n_failed == [hole]
                writer.close()

    run(main())


def test_client_leaving_while_connecting(run) -> None:
    async def main() -> None:
        settings = TcpSettings(connect_timeout=1.0, connect_attempts=1)
        with blackhole() as hole:
            async with relay(route := Route(hole), settings) as (proxy, addr):
                _reader, writer = await asyncio.open_connection(*addr)
                await wait_for(lambda: proxy.connections == 1)
                rst(writer)
                await wait_for(lambda: proxy.connections == 0, timeout=0.5)
                assert route.n_opened == [] and route.n_closed == []

    run(main())


# -- endings ----------------------------------------------------------------------


def test_idle_timeout_aborts_both(run) -> None:
    upstream_ended = asyncio.Event

    async def main() -> None:
        ended = upstream_ended()

        async def wait_forever(reader, writer) -> None:
            with contextlib.suppress(ConnectionError):
                await reader.read()
            ended.set()
            writer.close()

        settings = TcpSettings(idle_timeout=0.2)
        async with server(wait_forever) as t, relay(route := Route(t), settings) as (proxy, a):
            loop = asyncio.get_running_loop()
            reader, writer = await asyncio.open_connection(*a)
            writer.write(b"x")
            started = loop.time()
            await expect_reset(reader, within=2.0)
            assert loop.time() - started >= 0.19
            async with asyncio.timeout(WAIT):
                await ended.wait()
            await wait_for(lambda: proxy.connections == 0)
            assert route.n_closed == [t]
            writer.close()

    run(main())


def test_upstream_reset_propagates_as_client_reset(run) -> None:
    async def reset_after_hello(reader, writer) -> None:
        await reader.readexactly(5)
        rst(writer)

    async def main() -> None:
        async with server(reset_after_hello) as t, relay(route := Route(t)) as (proxy, addr):
            reader, writer = await asyncio.open_connection(*addr)
            writer.write(b"hello")
            async with asyncio.timeout(WAIT):
                with pytest.raises(ConnectionResetError):
                    await reader.read()
            writer.close()
            await wait_for(lambda: proxy.connections == 0)
            assert route.n_closed == [t]

    run(main())


def test_client_reset_propagates_upstream(run) -> None:
    async def main() -> None:
        outcome: asyncio.Future = asyncio.get_running_loop().create_future()

        async def note_end(reader, writer) -> None:
            try:
                await reader.read()
                outcome.set_result("eof")
            except ConnectionResetError:
                outcome.set_result("reset")
            writer.close()

        async with server(note_end) as t, relay(Route(t)) as (proxy, addr):
            _reader, writer = await asyncio.open_connection(*addr)
            writer.write(b"hi")
            await wait_for(lambda: proxy.connections == 1 and proxy.buffered() == 0)
            await asyncio.sleep(0.05)
            rst(writer)
            async with asyncio.timeout(WAIT):
                assert await outcome == "reset"

    run(main())


def test_listener_close_keeps_existing_connections(run) -> None:
    async def main() -> None:
        async with server() as t:
            proxy = new_proxy(FAST)
            listener = await proxy.listen("127.0.0.1", 0, lambda s, p: Route(t))
            addr = listener.sockname[:2]
            reader, writer = await asyncio.open_connection(*addr)
            writer.write(b"one")
            async with asyncio.timeout(WAIT):
                assert await reader.readexactly(3) == b"one"
            listener.close()
            assert listener.closed and proxy.listeners == 0
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(*addr)
            writer.write(b"two")
            async with asyncio.timeout(WAIT):
                assert await reader.readexactly(3) == b"two"
            writer.close()
            await proxy.close(1.0)
            assert proxy.connections == 0

    run(main())


def test_drain_waits_then_aborts(run) -> None:
    async def main() -> None:
        async with server() as t, relay(Route(t)) as (proxy, addr):
            loop = asyncio.get_running_loop()
            # One connection finishes during the drain, one never does.
            r1, w1 = await asyncio.open_connection(*addr)
            r2, w2 = await asyncio.open_connection(*addr)
            w1.write(b"a")
            w2.write(b"b")
            async with asyncio.timeout(WAIT):
                await r1.readexactly(1)
                await r2.readexactly(1)
            loop.call_later(0.1, w1.write_eof)
            started = loop.time()
            await proxy.drain(0.4)
            took = loop.time() - started
            assert 0.35 < took < 2.0
            assert proxy.connections == 0
            assert await read_all(r1) == b""  # the finished one ended cleanly
            await expect_reset(r2)
            w1.close()
            w2.close()

    run(main())


def test_drain_returns_early_when_connections_end(run) -> None:
    async def main() -> None:
        async with server() as t, relay(Route(t)) as (proxy, addr):
            loop = asyncio.get_running_loop()
            reader, writer = await asyncio.open_connection(*addr)
            writer.write(b"a")
            async with asyncio.timeout(WAIT):
                await reader.readexactly(1)
            loop.call_later(0.05, writer.write_eof)
            started = loop.time()
            await proxy.drain(5.0)
            assert loop.time() - started < 1.0
            writer.close()

    run(main())


# -- PROXY protocol -----------------------------------------------------------------


def test_proxy_protocol_header_comes_first(run) -> None:
    async def main() -> None:
        seen: asyncio.Future = asyncio.get_running_loop().create_future()

        async def capture(reader, writer) -> None:
            data = await reader.read()
            seen.set_result(data)
            writer.close()

        async with server(capture) as t, relay(Route(t, proxy_protocol=True)) as (_, addr):
            _reader, writer = await asyncio.open_connection(*addr)
            writer.write(b"payload")
            writer.write_eof()
            client = writer.get_extra_info("sockname")
            async with asyncio.timeout(WAIT):
                data = await seen
            header = decode_v2(data)
            assert header is not None
            assert header.src == ("127.0.0.1", client[1])
            assert header.dst == tuple(addr)
            assert header.protocol == "TCP"
            assert data[header.header_len :] == b"payload"
            writer.close()

    run(main())


def test_bytes_sent_while_connecting_are_bounded_then_delivered(run) -> None:
    received = 0

    async def count(reader, writer) -> None:
        nonlocal received
        while data := await reader.read(65536):
            received += len(data)
        writer.close()

    async def main() -> None:
        settings = TcpSettings(connect_timeout=0.3, connect_attempts=2, max_buffered=65536)
        with blackhole() as hole:
            async with server(count) as good, relay(Route(hole, good), settings) as (proxy, a):
                _reader, writer = await asyncio.open_connection(*a)
                conn = next(iter(proxy._conns))
                total = 4 << 20
                writer.write(b"y" * total)  # far more than max_buffered
                await wait_for(lambda: conn.client_paused, timeout=0.25)
                assert not conn.upstream_connected  # still on the first (blackholed) attempt
                assert conn.pending_size <= 65536 + 262144
                async with asyncio.timeout(WAIT):
                    await writer.drain()
                writer.write_eof()
                await wait_for(lambda: received == total)
                writer.close()

    run(main())


class FakeTransport:
    def __init__(self) -> None:
        self.reading = True
        self.calls = 0
        self.closing = False

    def pause_reading(self) -> None:
        self.reading = False
        self.calls += 1

    def resume_reading(self) -> None:
        self.reading = True
        self.calls += 1

    def is_closing(self) -> bool:
        return self.closing


def test_flow_control_reasons_are_idempotent() -> None:
    t = FakeTransport()
    fc = FlowControl(t)
    fc.pause_writing()
    fc.pause_writing()
    fc.pause(PENDING_FULL)
    assert not t.reading and t.calls == 1 and fc.paused
    fc.resume(PENDING_FULL)
    assert not t.reading  # still held for the peer's backlog
    fc.resume_writing()
    fc.resume_writing()
    assert t.reading and t.calls == 2 and not fc.paused
    fc.finish()  # after EOF the transport is never touched again
    fc.pause_writing()
    fc.resume_writing()
    assert t.calls == 2
