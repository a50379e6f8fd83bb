"""Property: every reply the responder makes parses with dnspython and answers the question (issue 17).

Random cluster states (ClusterIP, dual-stack, headless with endpoints,
ExternalName services; named ports over TCP/UDP/SCTP; pods) from the
generators of test_zone_property, random questions (A/AAAA/SRV/PTR/CNAME/
TXT/ANY/NS/SOA, names in the zone and out of it, random case, with and
without EDNS, UDP and TCP, allowed and refused clients) through the real
sans-IO entry point :meth:`Responder.handle`. Each reply must parse with
``dns.message.from_wire``, carry the query's ID and echo its question
byte for byte (name case included), have a sane rcode for where the name
is, give every record the configured TTL, and keep to the UDP size.
"""

from __future__ import annotations

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netplane.dns.plane import LOOPBACK
from netplane.dns.responder import Allow, Responder
from test_zone_property import (
    DOMAIN,
    QTYPES,
    TTL,
    Cluster,
    fresh_zone,
    histories,
    probe_names,
)

OUTSIDE = ["example.com", "cluster.local.example", "local", "x.svc", "1.2.3.4.in-addr.arpa"]

questions = st.lists(
    st.tuples(
        st.one_of(
            st.integers(0, 10_000), st.sampled_from(OUTSIDE)
        ),  # a probe name by index, or outside
        st.sampled_from(QTYPES),
        st.integers(0, 2**16 - 1),  # which letters go upper-case
        st.booleans(),  # EDNS
        st.booleans(),  # TCP
        st.sampled_from(["127.0.0.1", "192.0.2.9"]),  # allowed to recurse, or not
    ),
    min_size=1,
    max_size=25,
)


def _cased(name: str, bits: int) -> str:
    return "".join(ch.upper() if bits >> (i % 16) & 1 else ch for i, ch in enumerate(name))


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(histories(max_steps=10), st.sampled_from(["disabled", "insecure", "verified"]), questions)
def test_every_reply_parses_and_answers_its_question(history, pods, asked) -> None:  # type: ignore[no-untyped-def]
    c = Cluster()
    for op, arg in history:
        c.step(op, arg)
    zone = fresh_zone(c, pods, 1)
    responder = Responder(zone, allow=Allow(LOOPBACK), can_forward=False)
    names = probe_names(c)
    for which, qtype, bits, edns, tcp, client in asked:
        name = _cased(names[which % len(names)] if isinstance(which, int) else which, bits)
        q = dns.message.make_query(name, qtype, use_edns=0 if edns else False, payload=1232)
        data = q.to_wire()
        out = responder.handle(data, client, tcp=tcp)
        assert isinstance(out, bytes), out
        r = dns.message.from_wire(out)
        assert r.id == q.id and r.flags & dns.flags.QR
        # the question comes back as asked, case and all
        assert len(r.question) == 1
        rq = r.question[0]
        assert (rq.rdtype, rq.rdclass) == (q.question[0].rdtype, q.question[0].rdclass)
        assert str(rq.name) == str(q.question[0].name)
        qlen = len(q.question[0].name.to_wire())
        assert out[12 : 12 + qlen] == data[12 : 12 + qlen]
        lname = name.lower().rstrip(".")
        ours = lname == DOMAIN or lname.endswith("." + DOMAIN) or zone.apex_of(lname) is not None
        rcode = r.rcode()
        if ours:
            assert rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN), (name, qtype, rcode)
            assert r.flags & dns.flags.AA
        else:
            want = dns.rcode.SERVFAIL if client == "127.0.0.1" else dns.rcode.REFUSED
            assert rcode == want and not r.answer and not r.authority
        assert (r.edns >= 0) == edns
        if not tcp:
            assert len(out) <= (1232 if edns else 512)
        if r.flags & dns.flags.TC:
            assert not r.answer and not r.authority
            continue
        for section in (r.answer, r.authority, r.additional):
            for rrset in section:
                assert rrset.ttl == TTL, (name, qtype, rrset)
        if ours and rcode == dns.rcode.NOERROR and r.answer:
            # the first record is owned by the question's name; a chain only by CNAME
            assert r.answer[0].name == rq.name
            for rrset in r.answer[:-1]:
                assert rrset.rdtype == dns.rdatatype.CNAME
            last = r.answer[-1]
            want_type = dns.rdatatype.HINFO if qtype == "ANY" else rq.rdtype
            assert last.rdtype in (want_type, dns.rdatatype.CNAME)
        if ours and (rcode == dns.rcode.NXDOMAIN or not r.answer):
            # negative answers carry the zone's SOA (RFC 2308)
            assert [rr.rdtype for rr in r.authority] == [dns.rdatatype.SOA]
