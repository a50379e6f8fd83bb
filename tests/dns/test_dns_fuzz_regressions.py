"""Inputs the fuzzers in bench/fuzz/ found in the DNS plane, kept as regression tests."""

from __future__ import annotations

import base64
import ipaddress

from dnslib import DNSRecord
from netplane.dns.responder import Allow, Forward, Responder
from netplane.dns.wire import parse_query
from netplane.dns.zone import Zone


def test_a_question_label_over_63_bytes_is_formerr_not_an_exception():
    # dns_query: dnslib reads a label whose length byte is 64..127 (bits RFC 1035 reserves)
    # but cannot write it back; header_reply's pack raised DNSLabelError out of handle().
    label = b"]" * 66
    query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + bytes([len(label)]) + label
    query += b"\x00\x00\x01\x00\x01"
    r = Responder(Zone("cluster.local"), allow=Allow([ipaddress.ip_network("0.0.0.0/0")]))
    reply = r.handle(query, "10.1.2.3")
    assert isinstance(reply, bytes)
    rec = DNSRecord.parse(reply)
    assert rec.header.id == 0x1234 and rec.header.rcode == 1  # FORMERR


def test_a_question_name_over_253_bytes_is_formerr_not_an_exception():
    # dns_query (full run): every label under 64 bytes, but the name 300 bytes long. dnslib
    # reads it and cannot write it back (253 at most), so the REFUSED reply raised.
    labels = [b"a" * 60] * 5
    name = b"".join(bytes([len(x)]) + x for x in labels) + b"\x00"
    query = b"\x26\x10\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + name + b"\x00\x01\x00\x01"
    r = Responder(Zone("cluster.local"), allow=Allow([]))  # refused: the question is echoed
    rec = DNSRecord.parse(r.handle(query, "10.1.2.3"))
    assert rec.header.id == 0x2610 and rec.header.rcode == 1  # FORMERR


def test_an_upstream_reply_that_cannot_be_written_back_is_servfail_and_not_cached():
    # dns_reply (full run): a compression pointer into the middle of a label gives a record
    # name with a label over 63 bytes; dnslib parses the reply but cannot pack it again, and
    # the relay raised. The upstream's bytes, as the fuzzer made them:
    upstream_bytes = base64.b64decode(
        "Ih6FgAABAAEAAAAAAAAHZXhhbXBsZQNjbwQEBAQEBAQEBAQEBAQEBAQEBAQEBAQlJSUlJSUlJQQEBAQEBAQEBAQEBA"
        "QEBAQEBAQEBAQEBAQlJSUlJSUlJSUlJSUlJSUAAAAAJSUlJSUlJSUEBAQEBAQEBAQEBAQEBAQEBAQEbQAAAQABwAwsAQ"
        "ABAAABLAQEBAQEBG0AAAEAAcAEXbjYIg=="
    )
    upstream = DNSRecord.parse(upstream_bytes)
    client = DNSRecord(q=upstream.q)
    client.header.id = upstream.header.id
    query = parse_query(client.pack())
    key = (query.qname.lower(), query.qtype, query.qclass, query.do)
    r = Responder(Zone("cluster.local"), allow=Allow([ipaddress.ip_network("0.0.0.0/0")]))
    reply = DNSRecord.parse(r.finish(Forward(query, key, False), upstream))
    assert reply.header.id == upstream.header.id
    assert reply.header.rcode == 2  # SERVFAIL
    assert r.forwarded.get(key) is None  # not cached: the next client asks again


def test_an_upstream_nsec_with_an_empty_type_bitmap_is_servfail_not_an_exception():
    # dns_reply (full run): dnslib parses an NSEC record whose type bitmap is empty but
    # raises IndexError packing it; any error writing an upstream's records again is the
    # same case: SERVFAIL, not cached.
    upstream = DNSRecord.parse(
        base64.b64decode(
            "IiKFgAABAAEAAAAAAP8ALwEAAC8iIoWAAAEAAQAHZXhhbXBsZQAAAQAKwAwAAQEAAAEsANxdKrgAAAAAB2V4"
            "YW1wbGUAANgi"
        )
    )
    client = DNSRecord(q=upstream.q)
    client.header.id = upstream.header.id
    query = parse_query(client.pack())
    key = (query.qname.lower(), query.qtype, query.qclass, query.do)
    r = Responder(Zone("cluster.local"), allow=Allow([ipaddress.ip_network("0.0.0.0/0")]))
    reply = DNSRecord.parse(r.finish(Forward(query, key, False), upstream))
    assert reply.header.rcode == 2  # SERVFAIL
    assert r.forwarded.get(key) is None
