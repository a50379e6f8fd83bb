"""What is particular to the splice relay: pipes that grow and stay bounded, no leaked
descriptors, half-close behind a full pipe, and the fallback to the Protocol relay."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest
from l4_fakes import Route
from test_l4_tcp import PATH, WAIT, closed_port, connect_expect_reset, relay, server, wait_for

from netplane.accept import Acceptor
from netplane.l4 import splice
from netplane.l4.pipes import POOL_SIZE, PipePool
from netplane.l4.tcp import TcpProxy, TcpSettings

pytestmark = pytest.mark.skipif(not splice.available(), reason="os.splice is not available here")

MiB = 1 << 20


@pytest.fixture(autouse=True)
def splice_path() -> None:
    PATH["splice"] = True  # test_l4_tcp's relay() helper: the splice relay


def pattern(size: int, seed: int) -> bytes:
    block = bytes((i * 7 + seed) % 251 for i in range(4096))
    return (block * (size // len(block) + 1))[:size]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_large_transfer_with_slow_reader_grows_the_pipe_and_stays_bounded(run) -> None:
    size = 24 * MiB
    payload = pattern(size, 1)

    async def source(reader, writer) -> None:
        writer.write(payload)
        await writer.drain()
        writer.close()

    async def main() -> None:
        settings = TcpSettings(pipe_size=MiB)
        async with server(source) as t, relay(Route(t), settings) as (proxy, addr):
            assert proxy.spliced
            peak = 0

            async def watch() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, proxy.buffered())
                    await asyncio.sleep(0.001)

            watcher = asyncio.create_task(watch())
            reader, writer = await asyncio.open_connection(*addr, limit=65536)
            got = bytearray()
            async with asyncio.timeout(20):
                while data := await reader.read(65536):
                    got.extend(data)
                    if len(got) < size // 2:
                        await asyncio.sleep(0.002)  # slow at first: the relay must hold back
            watcher.cancel()
            writer.close()
            assert len(got) == size and bytes(got) == payload
            # The relay held more than the default 64 KiB pipe (it grew) but never more
            # than one pipe_size per direction.
            assert 65536 < peak <= 2 * MiB, peak

    run(main())


def test_half_close_waits_for_a_full_pipe_to_drain(run) -> None:
    up = pattern(6 * MiB, 2)
    down = pattern(5 * MiB, 3)

    async def read_all_then_answer(reader, writer) -> None:
        got = bytearray()
        while data := await reader.read(65536):
            got.extend(data)
            await asyncio.sleep(0.0005)  # slower than the client: the pipe fills
        writer.write(b"OK" if bytes(got) == up else b"BAD")
        writer.write(down)
        await writer.drain()
        writer.close()

    async def main() -> None:
        async with server(read_all_then_answer) as t, relay(Route(t)) as (proxy, addr):
            loop = asyncio.get_running_loop()
            s = socket.socket()
            s.setblocking(False)
            await loop.sock_connect(s, addr)
            async with asyncio.timeout(20):
                await loop.sock_sendall(s, up)
                s.shutdown(socket.SHUT_WR)  # EOF right behind bytes still in the relay
                reply = bytearray()
                while data := await loop.sock_recv(s, 65536):
                    reply.extend(data)
            s.close()
            assert bytes(reply[:2]) == b"OK"
            assert bytes(reply[2:]) == down
            await wait_for(lambda: proxy.connections == 0)

    run(main())


def test_no_descriptor_leaks_over_many_connections(run) -> None:
    async def main() -> None:
        async with server() as t:
            dead = closed_port()
            async with (
                relay(Route(t)) as (proxy, good),
                relay(Route(dead)) as (_, refused),
                relay(Route()) as (_, empty),
            ):
                loop = asyncio.get_running_loop()

                async def one(i: int) -> None:
                    if i % 5 == 3:  # unreachable endpoint, or no endpoint: reset
                        await connect_expect_reset(refused if i % 2 else empty, within=WAIT)
                        return
                    r, w = await asyncio.open_connection(*good)
                    w.write(b"x" * 1000)
                    if i % 5 == 4:  # the client resets mid-way
                        await r.readexactly(1)
                        w.get_extra_info("socket").setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0"
                        )
                        w.transport.abort()
                        return
                    w.write_eof()
                    assert await r.read() == b"x" * 1000
                    w.close()

                async def batch() -> None:
                    async with asyncio.timeout(WAIT):
                        await asyncio.gather(*(one(i) for i in range(40)))
                    await wait_for(lambda: proxy.connections == 0)
                    await asyncio.sleep(0.05)  # the clients' own closes

                await batch()
                before = open_fds()
                for _ in range(3):
                    await batch()
                assert open_fds() <= before
                assert loop.is_running()
                # Pipes come back to the pool; the pool is bounded.
                assert proxy.pipes.free <= POOL_SIZE

    run(main())


def test_splice_off_or_unavailable_uses_the_protocol_relay(run, monkeypatch) -> None:
    async def main() -> None:
        assert not TcpProxy(TcpSettings(splice=False)).spliced
        monkeypatch.setattr(splice, "available", lambda: False)
        proxy = TcpProxy(TcpSettings())
        assert not proxy.spliced
        async with server() as t:
            listener = await proxy.listen("127.0.0.1", 0, lambda s, p: Route(t))
            reader, writer = await asyncio.open_connection(*listener.sockname[:2])
            writer.write(b"plain")
            writer.write_eof()
            async with asyncio.timeout(WAIT):
                assert await reader.read() == b"plain"
            writer.close()
            await proxy.close(1.0)

    run(main())


def test_pipe_pool_keeps_only_empty_pipes() -> None:
    pool = PipePool(MiB, keep=1)
    a, b = pool.get(), pool.get()
    assert a[2] >= 4096 and a[0] != b[0]
    os.write(a[1], b"left over")
    pool.put(a, empty=False)  # holds bytes: closed, never handed out again
    with pytest.raises(OSError):
        os.fstat(a[0])
    pool.put(b, empty=True)
    assert pool.get() is b
    pool.grow(b)
    assert b[2] >= 65536  # MiB where allowed; the default where the pipe limits refuse
    pool.put(b, empty=True)
    pool.close()
    with pytest.raises(OSError):
        os.fstat(b[0])


def test_listen_errors_are_clear_and_leave_nothing_behind(run) -> None:
    async def main() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            proxy = TcpProxy(TcpSettings())
            before = open_fds()
            with pytest.raises(OSError, match=r"127\.0\.0\.1"):
                await proxy.listen("127.0.0.1", port, lambda s, p: None)
            assert open_fds() == before and proxy.listeners == 0

    run(main())


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_accept_by_hand_gives_what_socket_accept_gives(run, host: str) -> None:
    """Acceptor's hand-inlined accept (the C socket type) against socket.accept(): same socket."""

    async def main() -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        lsock = socket.socket(family, socket.SOCK_STREAM)
        lsock.bind((host, 0))
        got: list[tuple] = []
        acceptor = Acceptor(asyncio.get_running_loop(), [lsock], lambda *a: got.append(a), 16)
        clients = []
        try:
            clients.append(socket.create_connection(lsock.getsockname()[:2]))
            await wait_for(lambda: len(got) == 1)
            by_hand, peer, _ = got[0]
            acceptor.close()  # the listening socket is closed with it
            lsock = socket.socket(family, socket.SOCK_STREAM)
            lsock.bind((host, 0))
            lsock.listen(16)
            clients.append(socket.create_connection(lsock.getsockname()[:2]))
            stdlib, std_peer = lsock.accept()

            def shape(sock: socket.socket, peer: tuple, client: socket.socket) -> tuple:
                return (
                    sock.family,
                    sock.type,
                    sock.proto,
                    sock.gettimeout(),
                    os.get_inheritable(sock.fileno()),
                    peer == client.getsockname(),
                    sock.getpeername() == client.getsockname(),
                )

            assert shape(by_hand, peer, clients[0]) == shape(stdlib, std_peer, clients[1])
            by_hand.sendall(b"by hand")
            assert clients[0].recv(16) == b"by hand"
            by_hand.close()
            stdlib.close()
        finally:
            lsock.close()
            for c in clients:
                c.close()

    run(main())
