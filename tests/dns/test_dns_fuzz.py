"""Property: random and mutated packets never crash the DNS server, and every reply parses.

Two levels: the responder itself (every input, thousands of examples, no
sockets), and a running server fed a bounded burst of the same kind of
packets over UDP and TCP, which must still answer a good query afterwards.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import struct

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netplane.dns.plane import DnsPlane, DnsSettings
from netplane.dns.responder import Forward

import netplane

SEEDS = [
    dns.message.make_query(name, rdtype, **kw).to_wire()
    for name, rdtype, kw in [
        ("web.shop.svc.cluster.local", "A", {}),
        ("_http._tcp.web.shop.svc.cluster.local", "SRV", {"use_edns": 0}),
        ("20.0.77.127.in-addr.arpa", "PTR", {"use_edns": 0, "payload": 4096}),
        ("cluster.local", "SOA", {"want_dnssec": True}),
        ("example.com", "AAAA", {}),
        ("x.shop.svc.cluster.local", "ANY", {}),
    ]
]


@pytest.fixture(scope="module")
def plane() -> DnsPlane:
    dp = netplane.Dataplane(netplane.Config(mode="local", admin=None), serve=False)
    dp.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "127.77.0.20", "ports": [{"name": "http", "port": 80}]},
        }
    )
    asyncio.run(dp.start())  # no sources: builds the table at once
    p = DnsPlane(
        dp,
        DnsSettings(
            port=0,
            reverse_cidrs=(ipaddress.ip_network("127.77.0.0/16"),),
            upstreams=(("127.0.0.1", 9),),
        ),
    )
    p.apply(e.key for e in dp.table)
    return p


def mutate(seed: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    data = bytearray(seed)
    for pos, value in edits:
        data[pos % len(data)] = value
    return bytes(data[:cut] if cut is not None else data)


packets = st.one_of(
    st.binary(max_size=600),
    st.builds(
        mutate,
        st.sampled_from(SEEDS),
        st.lists(st.tuples(st.integers(0, 600), st.integers(0, 255)), max_size=8),
        st.none() | st.integers(0, 80),
    ),
)


def check_reply(reply: bytes | Forward | None, packet: bytes) -> None:
    if reply is None or isinstance(reply, Forward):
        return
    m = dns.message.from_wire(reply)  # raises if our reply does not parse
    assert m.flags & dns.flags.QR
    assert m.id == struct.unpack("!H", packet[:2])[0]


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packet=packets, tcp=st.booleans())
def test_responder_never_raises_and_replies_parse(
    plane: DnsPlane, packet: bytes, tcp: bool
) -> None:
    reply = plane.responder.handle(packet, "127.0.0.1", tcp=tcp)
    check_reply(reply, packet)
    if not tcp:  # a cache hit must be a parseable reply too
        hit = plane.responder.answers.reply(packet)
        if hit is not None:
            check_reply(hit, packet)


def test_a_running_server_survives_a_burst_of_junk(plane: DnsPlane) -> None:
    rng = random.Random(7)
    burst = [rng.randbytes(rng.randrange(1, 300)) for _ in range(100)]
    burst += [
        mutate(
            rng.choice(SEEDS),
            [(rng.randrange(600), rng.randrange(256)) for _ in range(rng.randrange(1, 6))],
            rng.choice([None, rng.randrange(80)]),
        )
        for _ in range(200)
    ]

    async def main() -> None:
        server = plane.server
        server.port = 0
        await server.start()
        try:
            port = server.port
            loop = asyncio.get_running_loop()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.setblocking(False)
                for packet in burst:
                    if packet:
                        await loop.sock_sendto(s, packet, ("127.0.0.1", port))
                await asyncio.sleep(0.2)
                while True:  # every reply that came back parses
                    try:
                        data = s.recv(65535)
                    except BlockingIOError:
                        break
                    dns.message.from_wire(data)
            # junk over TCP: the connection is dropped or answered, never the server
            for packet in burst[:30]:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), 5
                )
                writer.write(struct.pack("!H", len(packet)) + packet)
                writer.write_eof()
                try:
                    while head := await asyncio.wait_for(reader.readexactly(2), 5):
                        body = await asyncio.wait_for(
                            reader.readexactly(struct.unpack("!H", head)[0]), 5
                        )
                        dns.message.from_wire(body)
                except asyncio.IncompleteReadError:
                    pass
                writer.close()
            good = dns.message.make_query("web.shop.svc.cluster.local", "A")
            reply = await loop.run_in_executor(
                None, lambda: dns.query.udp(good, "127.0.0.1", port=port, timeout=3)
            )
            assert reply.rcode() == dns.rcode.NOERROR
            assert reply.answer[0][0].address == "127.77.0.20"
            assert server.errors == 0
        finally:
            await server.close()

    asyncio.run(main())
