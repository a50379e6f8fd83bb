"""The forwarder against forged replies: a fresh socket (so a random source port) and a
random ID per upstream query, and a reply must come from the upstream asked and answer
the question asked, or it is dropped and counted (netplane_dns_forward_replies_dropped_total)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import dns.message
import dns.query
import dns.rcode
from dnslib import QTYPE, RR, A, DNSLabel, DNSQuestion, DNSRecord
from netplane.dns.plane import DnsPlane, DnsSettings
from netplane.dns.upstream import _UdpExchange, mismatch

import netplane


class _Upstream(asyncio.DatagramProtocol):
    """Records each query's source port and ID. With ``forge``, each reply is preceded by
    one with another ID and one for another question; with ``hold`` it answers nothing
    until that many queries are in (so their sockets are all open at once)."""

    def __init__(self, *, forge: bool = False, hold: int = 1) -> None:
        self.forge = forge
        self.hold = hold
        self.seen: list[tuple[int, int, str]] = []  # (source port, ID, name)
        self.waiting: list[tuple[DNSRecord, tuple]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's transport

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        q = DNSRecord.parse(data)
        self.seen.append((addr[1], q.header.id, str(q.q.qname)))
        self.waiting.append((q, addr))
        if len(self.waiting) >= self.hold:
            for q, addr in self.waiting:
                self.answer(q, addr)
            self.waiting.clear()

    def answer(self, q: DNSRecord, addr: tuple) -> None:
        assert self.transport is not None
        if self.forge:
            wrong_id = q.reply()
            wrong_id.header.id = q.header.id ^ 0x5A5A
            wrong_id.add_answer(RR(q.q.qname, QTYPE.A, ttl=300, rdata=A("203.0.113.66")))
            self.transport.sendto(wrong_id.pack(), addr)
            wrong_question = q.reply()
            wrong_question.questions = [DNSQuestion("evil.example.test", QTYPE.A)]
            wrong_question.add_answer(RR(q.q.qname, QTYPE.A, ttl=300, rdata=A("203.0.113.67")))
            self.transport.sendto(wrong_question.pack(), addr)
        right = q.reply()
        # the name in another case (as a 0x20-randomizing upstream may send it): still a match
        right.questions = [DNSQuestion(DNSLabel(str(q.q.qname).upper()), q.q.qtype, q.q.qclass)]
        right.add_answer(RR(q.q.qname, QTYPE.A, ttl=300, rdata=A("192.0.2.10")))
        self.transport.sendto(right.pack(), addr)


async def with_plane(upstream: _Upstream, body: Callable[[DnsPlane], Awaitable[None]]) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: upstream, local_addr=("127.0.0.1", 0)
    )
    port = transport.get_extra_info("sockname")[1]
    try:
        async with netplane.Dataplane(netplane.Config(mode="local", admin=None), serve=False) as dp:
            plane = DnsPlane(dp, DnsSettings(port=0, upstreams=(("127.0.0.1", port),)))
            await plane.start()
            try:
                await body(plane)
            finally:
                await plane.close()
    finally:
        transport.close()


async def ask(port: int, name: str, qid: int = 4242) -> dns.message.Message:
    q = dns.message.make_query(name, "A")
    q.id = qid
    return await asyncio.to_thread(dns.query.udp, q, "127.0.0.1", timeout=5, port=port)


def dropped_metric(plane: DnsPlane) -> dict[str, float]:
    for family in plane.metrics():
        if family.name == "netplane_dns_forward_replies_dropped":
            return {
                s.labels["reason"]: s.value for s in family.samples if s.name.endswith("_total")
            }
    raise AssertionError("no netplane_dns_forward_replies_dropped family")


def test_forged_replies_are_dropped_and_counted(run) -> None:
    upstream = _Upstream(forge=True)

    async def body(plane: DnsPlane) -> None:
        m = await ask(plane.port, "www.example.test")
        assert m.rcode() == dns.rcode.NOERROR
        assert [str(r) for r in m.answer[0]] == ["192.0.2.10"]  # the right reply, not a forgery
        assert m.question[0].name.to_text() == "www.example.test."  # the client's own case
        assert dropped_metric(plane) == {"id": 1, "question": 1, "source": 0, "malformed": 0}
        assert plane.debug_state()["upstream_replies_dropped"]["id"] == 1
        assert plane.forwarder.failures == 0

    run(with_plane(upstream, body))


def test_each_upstream_query_has_its_own_source_port_and_id(run) -> None:
    upstream = _Upstream(hold=2)  # both exchanges in flight together

    async def body(plane: DnsPlane) -> None:
        one, two = await asyncio.gather(
            ask(plane.port, "a.example.test", qid=1), ask(plane.port, "b.example.test", qid=1)
        )
        assert one.answer and two.answer
        (port1, id1, _), (port2, id2, _) = upstream.seen
        assert port1 != port2 and plane.port not in (port1, port2)
        assert id1 != id2  # random 16-bit IDs (secrets.randbits), not the client's (1)

    run(with_plane(upstream, body))


def test_a_reply_from_another_address_or_port_is_dropped(run) -> None:
    async def main() -> None:
        sent = DNSRecord.question("www.example.test")
        good = sent.reply()
        dropped: dict[str, int] = {}
        exchange = _UdpExchange(sent, ("127.0.0.1", 53), dropped)
        for addr in (("127.0.0.2", 53), ("127.0.0.1", 5353), None):
            exchange.datagram_received(good.pack(), addr)
        exchange.datagram_received(b"\x00\x01junk", ("127.0.0.1", 53))
        assert dropped == {"source": 3, "malformed": 1} and not exchange.done.done()
        exchange.datagram_received(good.pack(), ("127.0.0.1", 53))
        assert exchange.done.result().header.id == sent.header.id

    run(main())


def test_mismatch_names_the_reason() -> None:
    sent = DNSRecord.question("www.example.test")
    reply = sent.reply()
    assert mismatch(reply, sent) is None
    reply.header.id ^= 1
    assert mismatch(reply, sent) == "id"
    other = sent.reply()
    other.questions = [DNSQuestion("www.example.test", QTYPE.AAAA)]
    assert mismatch(other, sent) == "question"
    assert mismatch(sent, sent) == "malformed"  # a query, not a response
