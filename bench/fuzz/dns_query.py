"""DNS queries from clients, through the real Responder (the sans-IO policy the servers run).

Input: one control byte (UDP or TCP; a client allowed to recurse or not),
then the query packet (asked twice over UDP: the second time the
answer cache, which splices the query's ID into a stored reply, may answer). The zone has a ClusterIP service, a headless one
with named endpoints and an ExternalName; names outside it become forward
jobs (no upstream is asked).

Contract: ``handle`` never raises; it returns None (silence), a Forward
job, or reply bytes that dnslib parses, that are a response (QR set), that
carry the query's ID, and that fit the reply size the query allows (512
bytes, or its EDNS size, over UDP). The same query asked again (the
answer cache's path) gives a reply that passes the same checks.
"""

from __future__ import annotations

import sys

from dnslib import DNSRecord
from netplane.dns.responder import Forward

from bench.fuzz._common import main
from bench.fuzz._dns_zone import make_responder

NAME = "dns_query"
RESPONDER = make_responder()


def check_reply(query: bytes, reply: bytes | Forward | None, tcp: bool) -> None:
    if reply is None or isinstance(reply, Forward):
        return
    if not isinstance(reply, bytes):
        raise AssertionError(f"handle returned {type(reply).__name__}")
    try:
        rec = DNSRecord.parse(reply)
    except Exception as e:
        raise AssertionError(f"the reply does not parse ({e!r}): {reply!r}") from None
    if not rec.header.qr:
        raise AssertionError("the reply is not a response")
    if query[:2] != reply[:2]:
        raise AssertionError(f"reply ID {reply[:2]!r}, query ID {query[:2]!r}")
    if not tcp and len(reply) > 65535:
        raise AssertionError(f"a UDP reply of {len(reply)} bytes")
    if len(reply) > 512 and not tcp:
        try:
            q = DNSRecord.parse(query)
        except Exception:
            raise AssertionError(f"a {len(reply)}-byte reply to an unparseable query") from None
        edns = [rr for rr in q.ar if rr.rtype == 41]
        if not edns or len(reply) > max(512, edns[0].rclass):
            raise AssertionError(f"a {len(reply)}-byte UDP reply over the query's limit")


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    ctrl, query = data[0], data[1:]
    tcp = bool(ctrl & 1)
    client = "10.0.0.9" if ctrl & 2 else "127.0.0.1"
    check_reply(query, RESPONDER.handle(query, client, tcp=tcp), tcp)
    if not tcp:  # the UDP server asks the answer cache first
        check_reply(query, RESPONDER.answers.reply(query, client), tcp)


if __name__ == "__main__":
    main(NAME, TestOneInput, sys.argv)
