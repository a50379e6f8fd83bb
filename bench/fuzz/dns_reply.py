"""Upstream DNS replies, through the forwarder's reply handling and the responder's relay.

Input: one control byte (the client asked over TCP; DO set), then the
upstream's reply packet. The target asks the question the reply carries
(or a fixed one), with the reply's ID, as the forwarder would have: the
reply goes through ``_UdpExchange.datagram_received`` (parse and
``matches``), and when accepted through ``Responder.finish`` (the client's
reply, into the forward cache), and then the forward cache's answer to the
same question asked again.

Contract: nothing raises; junk is ignored by the exchange; every reply to
the client passes bench.fuzz.dns_query's checks (parses with dnslib, QR
set, the client's ID, within the size the client allows).
"""

from __future__ import annotations

import asyncio
import sys

from dnslib import DNSQuestion, DNSRecord
from netplane.dns.cache import ForwardCache
from netplane.dns.responder import Forward
from netplane.dns.upstream import _UdpExchange, matches, upstream_query
from netplane.dns.wire import parse_query

from bench.fuzz._common import main
from bench.fuzz._dns_zone import make_responder
from bench.fuzz.dns_query import check_reply

NAME = "dns_reply"
RESPONDER = make_responder()
_LOOP = asyncio.new_event_loop()
_FIXED = DNSQuestion("example.com", 1)
UPSTREAM = ("127.0.0.1", 53)


def _client_query(question: DNSQuestion, do: bool) -> bytes:
    rec = DNSRecord(q=DNSQuestion(question.qname, question.qtype, question.qclass))
    rec.header.id = 0x4242
    rec.header.rd = 1
    if do:
        from dnslib import EDNS0

        rec.add_ar(EDNS0(udp_len=1232, flags="do"))
    return bytes(rec.pack())


async def _exchange(sent: DNSRecord) -> _UdpExchange:
    return _UdpExchange(sent, UPSTREAM, {})


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    ctrl, raw = data[0], data[1:]
    tcp, do = bool(ctrl & 1), bool(ctrl & 2)
    try:
        parsed: DNSRecord | None = DNSRecord.parse(raw)
    except Exception:
        parsed = None
    question = _FIXED
    if parsed is not None and len(parsed.questions) == 1:
        question = parsed.q
    try:
        client_bytes = _client_query(question, do)
        query = parse_query(client_bytes)
    except Exception:  # DnsFormatError, or dnslib's own
        return  # a question dnslib cannot write back: no client could have asked it
    sent = upstream_query(query, parsed.header.id if parsed is not None else 0x1111)
    exchange = _LOOP.run_until_complete(_exchange(sent))
    exchange.datagram_received(raw, UPSTREAM)
    if not exchange.done.done():
        if parsed is not None and matches(parsed, sent):
            raise AssertionError("a matching reply was not accepted")
        return
    reply = exchange.done.result()
    key = (query.qname.lower(), query.qtype, query.qclass, query.do)
    RESPONDER.forwarded = ForwardCache(max_entries=4)  # each input on its own
    out = RESPONDER.finish(Forward(query, key, tcp), reply)
    check_reply(client_bytes, out, tcp)
    again = RESPONDER.handle(client_bytes, "127.0.0.1", tcp=tcp)
    check_reply(client_bytes, again, tcp)


if __name__ == "__main__":
    main(NAME, TestOneInput, sys.argv)
