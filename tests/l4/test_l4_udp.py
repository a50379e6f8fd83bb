"""The UDP relay with real sockets on loopback, under both asyncio's loop and uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable

import pytest
from l4_fakes import Route

from netplane.l4.picker import Target
from netplane.l4.udp import UdpProxy, UdpSettings

WAIT = 5.0
# A service address that is not the endpoints' (all of 127/8 is local on Linux).
SERVICE = "127.0.0.77"


class Echo(asyncio.DatagramProtocol):
    """Answers every datagram with ``tag + data``; remembers who sent what."""

    def __init__(self, tag: bytes) -> None:
        self.tag = tag
        self.peers: list[tuple] = []

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.peers.append(addr)
        self.transport.sendto(self.tag + data, addr)


class Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple]] = asyncio.Queue()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.queue.put_nowait((data, addr))

    async def ask(self, data: bytes, to: tuple) -> tuple[bytes, tuple]:
        self.transport.sendto(data, to)
        async with asyncio.timeout(WAIT):
            return await self.queue.get()

    async def silence(self, data: bytes, to: tuple, wait: float = 0.2) -> None:
        self.transport.sendto(data, to)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                got = await self.queue.get()
                raise AssertionError(f"expected no reply, got {got!r}")


@contextlib.asynccontextmanager
async def echo(tag: bytes, host: str = "127.0.0.1") -> AsyncIterator[tuple[Target, Echo]]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(lambda: Echo(tag), local_addr=(host, 0))
    try:
        yield Target(host, transport.get_extra_info("sockname")[1]), proto
    finally:
        transport.close()


@contextlib.asynccontextmanager
async def client(host: str = "127.0.0.1") -> AsyncIterator[Client]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(Client, local_addr=(host, 0))
    try:
        yield proto
    finally:
        transport.close()


async def wait_for(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def test_echo_reply_comes_from_the_service_address(run) -> None:
    async def main() -> None:
        proxy = UdpProxy()
        async with echo(b"e:") as (t, server):
            listener = await proxy.listen(SERVICE, 0, route := Route(t, protocol="UDP"))
            service = listener.sockname
            assert service[0] == SERVICE
            async with client() as c:
                data, source = await c.ask(b"ping", service)
                assert data == b"e:ping"
                assert source == service
                data, _ = await c.ask(b"again", service)
                assert data == b"e:again"
                assert proxy.flows == 1 and listener.flows == 1
                assert len(set(server.peers)) == 1  # one flow socket
                assert route.n_opened == [t]
            await proxy.close()
            assert proxy.flows == 0
            assert route.n_closed == [t]
            assert listener.closed

    run(main())


def test_ipv6_loopback(run) -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no ::1")

    async def main() -> None:
        proxy = UdpProxy()
        async with echo(b"6:", host="::1") as (t, _):
            listener = await proxy.listen("::1", 0, Route(t, protocol="UDP"))
            async with client("::1") as c:
                data, source = await c.ask(b"x", listener.sockname[:2])
                assert data == b"6:x"
                assert source[:2] == listener.sockname[:2]
        await proxy.close()

    run(main())


def test_two_clients_get_separate_flows(run) -> None:
    async def main() -> None:
        proxy = UdpProxy()
        async with echo(b"e:") as (t, server):
            listener = await proxy.listen(SERVICE, 0, route := Route(t, protocol="UDP"))
            async with client() as a, client() as b:
                assert (await a.ask(b"from a", listener.sockname))[0] == b"e:from a"
                assert (await b.ask(b"from b", listener.sockname))[0] == b"e:from b"
                assert (await a.ask(b"a again", listener.sockname))[0] == b"e:a again"
                assert proxy.flows == 2
                assert len(set(server.peers)) == 2
                assert route.n_opened == [t, t]
        await proxy.close()
        assert route.n_closed == [t, t]

    run(main())


def test_idle_flow_is_removed(run) -> None:
    async def main() -> None:
        proxy = UdpProxy(UdpSettings(flow_idle_timeout=0.2))
        async with echo(b"e:") as (t, _):
            listener = await proxy.listen(SERVICE, 0, route := Route(t, protocol="UDP"))
            async with client() as c:
                await c.ask(b"hi", listener.sockname)
                assert proxy.flows == 1
                loop = asyncio.get_running_loop()
                started = loop.time()
                await wait_for(lambda: proxy.flows == 0, timeout=2.0)
                assert loop.time() - started >= 0.1
                assert route.n_closed == [t]
                # The client comes back: a new flow.
                assert (await c.ask(b"back", listener.sockname))[0] == b"e:back"
                assert proxy.flows == 1
        await proxy.close()

    run(main())


def test_flow_kept_alive_by_traffic(run) -> None:
    async def main() -> None:
        proxy = UdpProxy(UdpSettings(flow_idle_timeout=0.2))
        async with echo(b"e:") as (t, _):
            listener = await proxy.listen(SERVICE, 0, route := Route(t, protocol="UDP"))
            async with client() as c:
                for _ in range(8):  # 0.4 s of traffic, twice the timeout
                    await c.ask(b"tick", listener.sockname)
                    await asyncio.sleep(0.05)
                assert proxy.flows == 1 and route.n_closed == []
        await proxy.close()

    run(main())


def test_overflow_is_dropped_and_counted(run, caplog) -> None:
    async def main() -> None:
        proxy = UdpProxy(UdpSettings(max_flows=1))
        async with echo(b"e:") as (t, _):
            listener = await proxy.listen(SERVICE, 0, Route(t, protocol="UDP"))
            async with client() as a, client() as b:
                await a.ask(b"first", listener.sockname)
                await b.silence(b"no room", listener.sockname)
                await b.silence(b"still none", listener.sockname, wait=0.05)
                assert proxy.dropped_overflow == 2
                assert proxy.flows == 1
                assert (await a.ask(b"fine", listener.sockname))[0] == b"e:fine"
        await proxy.close()

    with caplog.at_level("WARNING", logger="netplane.l4.udp"):
        run(main())
    assert len([r for r in caplog.records if "flow table full" in r.message]) == 1


def test_flow_moves_when_its_target_goes(run) -> None:
    async def main() -> None:
        proxy = UdpProxy()
        async with echo(b"1:") as (t1, _), echo(b"2:") as (t2, _):
            listener = await proxy.listen(SERVICE, 0, route := Route(t1, t2, protocol="UDP"))
            async with client() as c:
                assert (await c.ask(b"x", listener.sockname))[0] == b"1:x"
                assert (await c.ask(b"y", listener.sockname))[0] == b"1:y"  # sticks to its flow
                route.targets.remove(t1)
                assert (await c.ask(b"z", listener.sockname))[0] == b"2:z"
                assert route.n_closed == [t1]
                assert route.n_opened == [t1, t2]
                assert proxy.flows == 1
        await proxy.close()

    run(main())


def test_route_swap_applies_to_new_flows(run) -> None:
    async def main() -> None:
        proxy = UdpProxy()
        async with echo(b"old:") as (t1, _), echo(b"new:") as (t2, _):
            listener = await proxy.listen(SERVICE, 0, old := Route(t1, protocol="UDP"))
            async with client() as a, client() as b:
                assert (await a.ask(b"1", listener.sockname))[0] == b"old:1"
                listener.route = new = Route(t1, t2, protocol="UDP")
                new.cursor = 1  # its next pick is t2
                assert (await b.ask(b"2", listener.sockname))[0] == b"new:2"
                # a's target is still usable under the new route: a stays put.
                assert (await a.ask(b"3", listener.sockname))[0] == b"old:3"
                assert old.n_opened == [t1] and new.n_opened == [t2]
        await proxy.close()
        assert old.n_closed == [t1] and new.n_closed == [t2]

    run(main())


def test_callable_route_and_no_target(run) -> None:
    async def main() -> None:
        proxy = UdpProxy()
        current: dict[str, Route | None] = {"route": None}
        async with echo(b"e:") as (t, _):
            listener = await proxy.listen(SERVICE, 0, lambda: current["route"])
            async with client() as c:
                await c.silence(b"nobody", listener.sockname)
                assert proxy.dropped_no_target == 1
                current["route"] = Route(protocol="UDP")  # a route without endpoints
                await c.silence(b"nobody yet", listener.sockname)
                assert proxy.dropped_no_target == 2
                current["route"] = Route(t, protocol="UDP")
                assert (await c.ask(b"now", listener.sockname))[0] == b"e:now"
                assert proxy.flows == 1
                current["route"] = None  # the service went away: the flow closes
                await c.silence(b"gone", listener.sockname)
                assert proxy.flows == 0
                assert proxy.dropped_no_target == 3
        await proxy.close()

    run(main())


def test_refused_target_is_reported_and_repicked(run) -> None:
    async def main() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            dead = Target("127.0.0.1", s.getsockname()[1])
        proxy = UdpProxy()
        async with echo(b"e:") as (good, _):
            listener = await proxy.listen(SERVICE, 0, route := Route(dead, good, protocol="UDP"))
            async with client() as c:
                # The first datagram goes to the dead port; its ICMP error closes the flow.
                await c.silence(b"lost", listener.sockname, wait=0.1)
                await wait_for(lambda: proxy.flows == 0, timeout=1.0)
                assert route.n_failed == [dead]
                assert (await c.ask(b"retry", listener.sockname))[0] == b"e:retry"
        await proxy.close()

    run(main())


def test_listener_close_closes_its_flows(run) -> None:
    async def main() -> None:
        proxy = UdpProxy()
        async with echo(b"e:") as (t, _):
            one = await proxy.listen(SERVICE, 0, r1 := Route(t, protocol="UDP"))
            two = await proxy.listen(SERVICE, 0, Route(t, protocol="UDP"))
            async with client() as c:
                await c.ask(b"a", one.sockname)
                await c.ask(b"b", two.sockname)
                assert proxy.flows == 2
                one.close()
                assert proxy.flows == 1 and r1.n_closed == [t]
                assert proxy.listeners == 1
                assert (await c.ask(b"c", two.sockname))[0] == b"e:c"
        await proxy.close()
        assert proxy.flows == 0 and proxy.listeners == 0

    run(main())
