"""The DNS server's connection handling in process: TCP idle timeout, junk on TCP, a plane
that follows the dataplane's changes."""

from __future__ import annotations

import asyncio
import ipaddress
import struct

import dns.message
import dns.rcode
from netplane.dns.plane import DnsPlane, DnsSettings, resolv_conf_upstreams

import netplane


def service(name: str, ip: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]},
    }


async def udp_ask(port: int, name: str) -> dns.message.Message:
    loop = asyncio.get_running_loop()
    q = dns.message.make_query(name, "A")
    done: asyncio.Future[bytes] = loop.create_future()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            if not done.done():
                done.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", port))
    try:
        transport.sendto(q.to_wire())
        return dns.message.from_wire(await asyncio.wait_for(done, 5))
    finally:
        transport.close()


def test_idle_tcp_connections_are_closed_and_junk_drops_the_connection(run) -> None:
    async def main() -> None:
        async with netplane.Dataplane(netplane.Config(mode="local", admin=None), serve=False) as dp:
            dp.apply(service("web", "127.77.0.20"))
            plane = DnsPlane(dp, DnsSettings(port=0, tcp_idle=0.3))
            await plane.start()
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", plane.port)
                assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
                writer.close()

                # a message shorter than a header: not a DNS client, dropped at once
                reader, writer = await asyncio.open_connection("127.0.0.1", plane.port)
                writer.write(struct.pack("!H", 3) + b"abc")
                assert await asyncio.wait_for(reader.read(), 5) == b""
                writer.close()
                assert plane.server.errors == 0
            finally:
                await plane.close()

    run(main())


def test_the_plane_follows_changes_and_drops_only_what_changed(run) -> None:
    async def main() -> None:
        async with netplane.Dataplane(netplane.Config(mode="local", admin=None), serve=False) as dp:
            dp.apply(service("web", "127.77.0.20"))
            dp.apply(service("api", "127.77.0.21"))
            plane = DnsPlane(
                dp, DnsSettings(port=0, reverse_cidrs=(ipaddress.ip_network("127.77.0.0/16"),))
            )
            await plane.start()
            try:
                web, api = "web.shop.svc.cluster.local", "api.shop.svc.cluster.local"
                assert (await udp_ask(plane.port, web)).answer[0][0].address == "127.77.0.20"
                assert (await udp_ask(plane.port, api)).answer[0][0].address == "127.77.0.21"
                cached = len(plane.responder.answers)
                assert cached == 2

                dp.apply(service("web", "127.77.0.30"))
                for _ in range(100):
                    m = await udp_ask(plane.port, web)
                    if m.answer and m.answer[0][0].address == "127.77.0.30":
                        break
                    await asyncio.sleep(0.01)
                assert m.answer[0][0].address == "127.77.0.30"
                assert plane.responder.answers.invalidated == 1  # web's reply only, not api's

                dp.delete("Service", "shop", "web")
                for _ in range(100):
                    m = await udp_ask(plane.port, web)
                    if m.rcode() == dns.rcode.NXDOMAIN:
                        break
                    await asyncio.sleep(0.01)
                assert m.rcode() == dns.rcode.NXDOMAIN
                assert "web" not in str(plane.debug_state()["zone"])  # counts only, no names
                assert plane.debug_state()["zone"]["names"] == 3  # api: A, SRV, PTR
            finally:
                await plane.close()

    run(main())


def test_resolv_conf_upstreams_skip_ourselves_and_junk() -> None:
    text = "# comment\nnameserver 10.0.0.2\nnameserver 127.0.0.1\nnameserver bogus\nsearch x\n"
    assert resolv_conf_upstreams(text, exclude=[("127.0.0.1", 53)]) == [("10.0.0.2", 53)]


def test_a_burst_while_the_server_is_busy_is_answered_not_dropped(run) -> None:
    """3,000 queries arrive while the loop is stalled (a GC, a big table update): all answered.

    Linux's default UDP receive buffer (208 KiB) holds a few hundred queries;
    the rest of such a burst would be dropped and each client would wait out
    its own timeout (seconds) before retrying.
    """
    import socket
    import threading
    import time

    n = 3000

    async def main() -> None:
        async with netplane.Dataplane(netplane.Config(mode="local", admin=None), serve=False) as dp:
            dp.apply(service("web", "127.77.0.20"))
            plane = DnsPlane(dp, DnsSettings(port=0))
            await plane.start()
            assert plane.debug_state()["udp_receive_buffer"] >= 1024 * 1024
            query = dns.message.make_query("web.shop.svc.cluster.local", "A").to_wire()
            client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
            client.settimeout(5)
            sent = threading.Event()

            def burst() -> None:
                for _ in range(n):
                    client.sendto(query, ("127.0.0.1", plane.port))
                sent.set()

            try:
                thread = threading.Thread(target=burst)
                thread.start()
                sent.wait(10)
                time.sleep(0.2)  # the loop is stalled: nothing is read meanwhile
                thread.join()
                answers = 0

                def receive() -> None:
                    nonlocal answers
                    try:
                        while answers < n:
                            client.recv(4096)
                            answers += 1
                    except TimeoutError:
                        pass

                reader = threading.Thread(target=receive)
                reader.start()
                while reader.is_alive():
                    await asyncio.sleep(0.05)
                assert answers == n
            finally:
                client.close()
                await plane.close()

    run(main())
