"""The wire side without sockets: parsing checks, replies as dnspython reads them, the
answer cache's splice and invalidation, the forward cache's TTLs, the TCP framer."""

from __future__ import annotations

import ipaddress
import struct

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from dnslib import QTYPE, RR, SOA, DNSRecord
from dnslib import A as A_RD
from hypothesis import given, settings
from hypothesis import strategies as st
from netplane.dns.cache import AnswerCache, ForwardCache, cache_ttl, fast_key
from netplane.dns.responder import Allow, Forward, Responder
from netplane.dns.wire import TcpFramer, frame, header_error
from netplane.dns.zone import Zone

from netplane.model import parse_object
from netplane.service_table import build_entry


def make_zone() -> Zone:
    z = Zone("cluster.local", reverse_cidrs=(ipaddress.ip_network("10.96.0.0/12"),))
    for i in range(3):
        svc = parse_object(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": f"web{i}", "namespace": "demo"},
                "spec": {"clusterIP": f"10.96.0.{20 + i}", "ports": [{"name": "http", "port": 80}]},
            }
        )
        e = build_entry(svc, [])
        z.update_service(e.key, e)
    big = parse_object(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "big", "namespace": "demo"},
            "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80}]},
        }
    )
    sl = parse_object(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "big-1",
                "namespace": "demo",
                "labels": {"kubernetes.io/service-name": "big"},
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": [f"10.244.0.{i}"]} for i in range(1, 101)],
        }
    )
    e = build_entry(big, [sl])
    z.update_service(e.key, e)
    z.ready = True
    return z


def responder(**kw) -> Responder:
    return Responder(make_zone(), allow=Allow([ipaddress.ip_network("127.0.0.0/8")]), **kw)


def query(name: str, rdtype: str = "A", *, qid: int = 4660, **kw) -> bytes:
    q = dns.message.make_query(name, rdtype, **kw)
    q.id = qid
    return q.to_wire()


def parse(data: bytes) -> dns.message.Message:
    return dns.message.from_wire(data)


def test_a_reply_as_dnspython_reads_it() -> None:
    r = responder()
    reply = r.handle(query("web0.demo.svc.cluster.local"), "127.0.0.1")
    m = parse(reply)
    assert m.id == 4660 and m.rcode() == dns.rcode.NOERROR
    assert m.flags & dns.flags.AA and m.flags & dns.flags.QR and m.flags & dns.flags.RD
    assert [str(rr) for rrset in m.answer for rr in rrset] == ["10.96.0.20"]
    assert m.edns == -1  # no OPT asked for, none given


def test_edns_is_echoed_with_our_size_and_do() -> None:
    r = responder()
    m = parse(
        r.handle(
            query("web0.demo.svc.cluster.local", use_edns=0, payload=4096, want_dnssec=True),
            "127.0.0.1",
        )
    )
    assert m.edns == 0 and m.payload == 1232 and m.ednsflags & dns.flags.DO


def test_an_answer_too_big_for_udp_is_truncated_and_whole_over_tcp() -> None:
    r = responder()
    q = query("big.demo.svc.cluster.local", use_edns=0, payload=1232)
    m = parse(r.handle(q, "127.0.0.1"))
    assert m.flags & dns.flags.TC and not m.answer and m.edns == 0
    whole = parse(r.handle(q, "127.0.0.1", tcp=True))
    assert not whole.flags & dns.flags.TC
    assert len([rr for rrset in whole.answer for rr in rrset]) == 100
    # without EDNS the limit is 512
    m = parse(r.handle(query("big.demo.svc.cluster.local"), "127.0.0.1"))
    assert m.flags & dns.flags.TC


def test_bad_input_gets_formerr_notimp_badvers_refused_or_silence() -> None:
    r = responder()
    assert r.handle(b"\x12", "127.0.0.1") is None  # no header: silence
    bad = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ab"
    m = parse(r.handle(bad, "127.0.0.1"))
    assert (m.id, m.rcode()) == (0x1234, dns.rcode.FORMERR)
    two = dns.message.make_query("a.cluster.local", "A")
    two.question.append(dns.message.make_query("b.cluster.local", "A").question[0])
    assert parse(r.handle(two.to_wire(), "127.0.0.1")).rcode() == dns.rcode.FORMERR

    notify = dns.message.make_query("cluster.local", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    assert parse(r.handle(notify.to_wire(), "127.0.0.1")).rcode() == dns.rcode.NOTIMP

    v1 = dns.message.make_query("web0.demo.svc.cluster.local", "A", use_edns=1)
    assert parse(r.handle(v1.to_wire(), "127.0.0.1")).rcode() == dns.rcode.BADVERS

    for t in ("AXFR", "IXFR"):
        assert parse(r.handle(query("cluster.local", t), "127.0.0.1")).rcode() == dns.rcode.REFUSED
    chaos = dns.message.make_query("version.bind", "TXT", rdclass="CH")
    assert parse(r.handle(chaos.to_wire(), "127.0.0.1")).rcode() == dns.rcode.REFUSED

    response = dns.message.make_response(dns.message.make_query("example.com", "A"))
    assert r.handle(response.to_wire(), "127.0.0.1") is None  # never answer a response
    assert header_error(response.to_wire(), 1) is None


def test_recursion_only_for_allowed_clients() -> None:
    r = responder()
    job = r.handle(query("example.com"), "127.0.0.1")
    assert isinstance(job, Forward) and job.key == ("example.com", 1, 1, False)
    assert parse(r.handle(query("example.com"), "192.0.2.7")).rcode() == dns.rcode.REFUSED
    assert isinstance(r.handle(query("example.com"), "::ffff:127.0.0.1"), Forward)
    # the cluster zone answers everyone
    assert parse(r.handle(query("web0.demo.svc.cluster.local"), "192.0.2.7")).answer
    # no upstream at all: SERVFAIL, not a hang
    r2 = responder(can_forward=False)
    assert parse(r2.handle(query("example.com"), "127.0.0.1")).rcode() == dns.rcode.SERVFAIL


def test_answer_cache_splices_id_and_case_and_drops_per_name() -> None:
    r = responder()
    cache = r.answers
    first = query("web0.demo.svc.cluster.local", qid=1)
    assert cache.reply(first) is None
    fresh = r.handle(first, "127.0.0.1")
    assert len(cache) == 1
    again = query("WEB0.demo.SVC.cluster.local", qid=2)
    hit = cache.reply(again)
    assert hit is not None
    m = parse(hit)
    assert m.id == 2
    assert m.question[0].name.to_text() == "WEB0.demo.SVC.cluster.local."
    assert m.answer[0].name.to_text() == "WEB0.demo.SVC.cluster.local."
    assert [str(rr) for rr in m.answer[0]] == ["10.96.0.20"]
    assert hit[2:] != fresh[2:] and hit[12 + 4 :] != fresh[12 + 4 :]  # the case is the new query's

    # EDNS queries are keyed apart (another size, another reply)
    q_edns = query("web0.demo.svc.cluster.local", use_edns=0, payload=1232)
    assert cache.reply(q_edns) is None
    r.handle(q_edns, "127.0.0.1")
    assert parse(cache.reply(q_edns)).edns == 0

    other = query("web1.demo.svc.cluster.local")
    r.handle(other, "127.0.0.1")
    assert cache.invalidate({"web0.demo.svc.cluster.local"}) == 2
    assert cache.reply(first) is None and cache.reply(other) is not None


def test_answer_cache_keys_only_the_plain_shape_and_is_bounded() -> None:
    with_cookie = dns.message.make_query(
        "web0.demo.svc.cluster.local",
        "A",
        use_edns=0,
        options=[dns.edns.GenericOption(10, b"12345678")],
    ).to_wire()
    assert fast_key(with_cookie) is None
    assert fast_key(b"\x00" * 11) is None
    assert fast_key(query("web0.demo.svc.cluster.local"))[0][-4:] == b"\x00\x01\x00\x01"
    # qtype bytes are not lower-cased: type 65 (HTTPS, 0x0041) is not type 97
    https = fast_key(query("a.cluster.local", "HTTPS"))[0]
    assert https.endswith(b"\x00\x41\x00\x01")

    cache = AnswerCache(max_entries=2)
    r = Responder(make_zone(), allow=Allow([]), answers=cache)
    qs = [query(f"web{i}.demo.svc.cluster.local") for i in range(3)]
    for q in qs:
        r.handle(q, "127.0.0.1")
    assert len(cache) == 2 and r.debug_state()["answer_cache_evicted"] == 1
    assert cache.reply(qs[0]) is None and cache.reply(qs[2]) is not None


def _upstream_reply(
    name: str, *, rcode: int = 0, ttl: int = 60, soa: tuple | None = None
) -> DNSRecord:
    r = DNSRecord.question(name).reply()
    r.header.rcode = rcode
    if rcode == dns.rcode.NOERROR and ttl:
        r.add_answer(RR(name, QTYPE.A, ttl=ttl, rdata=A_RD("192.0.2.1")))
    if soa is not None:
        soa_ttl, minimum = soa
        r.add_auth(
            RR("example.test", QTYPE.SOA, ttl=soa_ttl,
               rdata=SOA("ns.example.test", "h.example.test", (1, 2, 3, 4, minimum)))
        )  # fmt: skip
    return r


def test_forward_cache_counts_ttls_down_and_follows_rfc_2308() -> None:
    now = [100.0]
    fc = ForwardCache(max_entries=2, now=lambda: now[0])
    key = ("example.test", 1, 1, False)
    assert fc.put(key, _upstream_reply("example.test", ttl=60))
    now[0] += 20
    got = fc.get(key)
    assert got is not None and [rr.ttl for rr in got.answer] == [40]
    now[0] += 41
    assert fc.get(key) is None

    # NXDOMAIN with a SOA: min(SOA TTL, MINIMUM); without a SOA: not cached
    nx, NX = ("nx.example.test", 1, 1, False), dns.rcode.NXDOMAIN
    assert cache_ttl(_upstream_reply("nx.example.test", rcode=NX, soa=(300, 30)), 3600) == 30
    assert cache_ttl(_upstream_reply("nx.example.test", rcode=NX, soa=(10, 30)), 3600) == 10
    assert not fc.put(nx, _upstream_reply("nx.example.test", rcode=NX))
    # NODATA (NOERROR, no answer) with a SOA is cached like NXDOMAIN
    assert cache_ttl(_upstream_reply("x.example.test", ttl=0, soa=(300, 30)), 3600) == 30
    # SERVFAIL and truncated replies are not cached
    assert cache_ttl(_upstream_reply("x.example.test", rcode=dns.rcode.SERVFAIL), 3600) is None
    tc = _upstream_reply("x.example.test")
    tc.header.tc = 1
    assert cache_ttl(tc, 3600) is None
    # bounded: the least recently used goes
    for i in range(3):
        fc.put((f"n{i}.example.test", 1, 1, False), _upstream_reply(f"n{i}.example.test"))
    assert len(fc) == 2 and fc.get(("n0.example.test", 1, 1, False)) is None


def test_forwarded_reply_is_cached_and_served_with_the_remaining_ttl() -> None:
    now = [0.0]
    r = responder(forwarded=ForwardCache(now=lambda: now[0]))
    job = r.handle(query("example.test", qid=7), "127.0.0.1")
    assert isinstance(job, Forward)
    m = parse(r.finish(job, _upstream_reply("example.test", ttl=60)))
    assert m.id == 7 and m.flags & dns.flags.RA and not m.flags & dns.flags.AA
    assert [rrset.ttl for rrset in m.answer] == [60]
    now[0] = 25
    cached = r.handle(query("EXAMPLE.test", qid=8), "127.0.0.1")
    m = parse(cached)
    assert m.id == 8 and [rrset.ttl for rrset in m.answer] == [35]
    assert parse(r.finish(job, None)).rcode() == dns.rcode.SERVFAIL
    # /debug/state counts the first ask a miss and the second a hit
    state = r.debug_state()
    assert (state["forward_cache_misses"], state["forward_cache_hits"]) == (1, 1)


def test_tcp_framer_splits_pipelined_and_partial_messages() -> None:
    a, b = query("a.cluster.local"), query("b.cluster.local")
    stream = frame(a) + frame(b)
    f = TcpFramer()
    f.feed(stream[:1])
    assert f.next_message() is None
    f.feed(stream[1:20])
    assert f.next_message() is None
    f.feed(stream[20:])
    assert f.next_message() == a and f.next_message() == b and f.next_message() is None
    assert frame(a)[:2] == struct.pack("!H", len(a))


@pytest.mark.parametrize("name", ["web0.demo.svc.cluster.local", "nope.demo.svc.cluster.local"])
def test_cache_hit_equals_a_fresh_answer(name: str) -> None:
    r = responder()
    q = query(name, qid=99)
    fresh = r.handle(q, "127.0.0.1")
    assert r.answers.reply(q) == fresh


_CACHE_NAMES = ["a", "b", "c", "d"]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("put"), st.integers(0, 5), st.sets(st.sampled_from(_CACHE_NAMES))),
            st.tuples(st.just("drop"), st.sets(st.sampled_from(_CACHE_NAMES))),
        ),
        max_size=20,
    )
)
def test_answer_cache_drops_exactly_the_replies_that_read_a_changed_name(ops: list) -> None:
    cache = AnswerCache(max_entries=4)
    queries = [query(f"q{i}.demo.svc.cluster.local") for i in range(6)]
    model: dict[int, set[str]] = {}  # query index -> the names its stored reply read
    for op in ops:
        if op[0] == "put":
            _, i, names = op
            reply = queries[i][:2] + b"\x85\x00" + queries[i][4:]
            if i not in model and len(model) >= 4:
                del model[next(iter(model))]  # the oldest goes, as in the cache
            model.pop(i, None)
            assert cache.put(queries[i], reply, names)
            model[i] = set(names)
        else:
            gone = [i for i, read in model.items() if read & op[1]]
            assert cache.invalidate(op[1]) == len(gone)
            for i in gone:
                del model[i]
        for i, q in enumerate(queries):
            assert (cache.reply(q) is not None) == (i in model), (i, model)
    assert len(cache) == len(model)


def test_an_answer_cache_of_size_zero_stores_nothing_and_answers_still_go_out() -> None:
    r = Responder(make_zone(), allow=Allow([]), answers=AnswerCache(max_entries=0))
    q = query("web0.demo.svc.cluster.local")
    assert [str(rr) for rr in parse(r.handle(q, "127.0.0.1")).answer[0]] == ["10.96.0.20"]
    assert len(r.answers) == 0 and r.answers.reply(q) is None


def test_a_reply_stored_for_a_mixed_case_name_answers_others_in_their_case() -> None:
    r = responder()
    r.handle(query("Web0.Demo.svc.cluster.local", qid=7), "127.0.0.1")
    for name in ("web0.demo.svc.cluster.local", "WEB0.DEMO.SVC.CLUSTER.LOCAL"):
        m = parse(r.answers.reply(query(name, qid=9)))
        assert m.id == 9
        assert m.question[0].name.to_text() == f"{name}."
        assert m.answer[0].name.to_text() == f"{name}."
        assert [str(rr) for rr in m.answer[0]] == ["10.96.0.20"]
