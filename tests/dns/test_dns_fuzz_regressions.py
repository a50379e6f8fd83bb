"""Inputs the fuzzers in bench/fuzz/ found in the DNS plane, kept as regression tests."""

from __future__ import annotations

import ipaddress

from dnslib import DNSRecord
from netplane.dns.responder import Allow, Responder
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
