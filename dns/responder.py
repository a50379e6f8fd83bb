"""What to do with one DNS message: the policy between the wire and the zone, sans-IO.

:meth:`Responder.handle` takes the bytes of a query and the client's
address and returns the reply bytes, None (stay silent), or a
:class:`Forward` job when the name must be asked upstream; the adapter runs
the job and hands the upstream reply to :meth:`Responder.finish`.

The order of checks, each with its answer:

1. unparseable but with a header: FORMERR, header only; no header, or the
   packet is a response: silence;
2. opcode other than QUERY: NOTIMP (header only); EDNS version above 0: BADVERS
   (RFC 6891); more than one question or OPT: FORMERR; a COOKIE option of a
   bad length (or two of them): FORMERR with an OPT record (RFC 7873);
3. AXFR/IXFR: REFUSED (no zone transfers); a class other than IN: REFUSED;
4. a name in the cluster domain or a reverse zone: the zone's answer,
   stored in the answer cache when the query had the plain shape;
5. any other name: REFUSED unless the client may recurse (the allow
   list), SERVFAIL when there is no upstream, else the forward cache, else
   a :class:`Forward` job.

Every reply past step 2 to a query with a cookie carries the client cookie
back with a fresh server cookie (:mod:`netplane.dns.cookie`); the cookie is
in no cache key, so cookie queries share the answer and forward caches.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from dnslib import CLASS, OPCODE, DNSHeader, DNSRecord
from dnslib import RR as DnsRR
from netplane.dns.answer import BADVERS, FORMERR, NOTIMP, REFUSED, SERVFAIL, Answer, answer
from netplane.dns.cache import AnswerCache, Cached, ForwardCache, ForwardKey
from netplane.dns.cookie import CLIENT_COOKIE, ServerCookies, check_cookie
from netplane.dns.wire import (
    DEFAULT_UDP_CAP,
    DnsFormatError,
    Query,
    header_error,
    header_reply,
    opt_record,
    pack_reply,
    parse_query,
    reply_limit,
)
from netplane.dns.zone import AXFR, IXFR, OPT, Zone

from netplane.addresses import IPNetwork

IN, QUERY = CLASS.IN, OPCODE.QUERY


@dataclass(frozen=True, slots=True)
class Forward:
    """A query to ask upstream; the adapter resolves it and calls :meth:`Responder.finish`."""

    query: Query
    key: ForwardKey
    tcp: bool
    cookie: bytes | None = None  # the reply's COOKIE option data


class Allow:
    """Which clients may recurse (have names outside the zone forwarded)."""

    def __init__(self, networks: Sequence[IPNetwork]) -> None:
        self.networks = tuple(networks)
        self.allowed = functools.lru_cache(maxsize=4096)(self._allowed)

    def _allowed(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.networks)


class Responder:
    """Turns query bytes into reply bytes (or a forwarding job) for one zone."""

    def __init__(
        self,
        zone: Zone,
        *,
        allow: Allow,
        answers: AnswerCache | None = None,
        forwarded: ForwardCache | None = None,
        can_forward: bool = True,
        udp_cap: int = DEFAULT_UDP_CAP,
        cookies: ServerCookies | None = None,
    ) -> None:
        self.zone = zone
        self.allow = allow
        self.answers = answers if answers is not None else AnswerCache()
        self.cookies = cookies if cookies is not None else ServerCookies()
        self.answers.cookies = self.cookies  # its cookie hits get our server cookies
        self.forwarded = forwarded if forwarded is not None else ForwardCache()
        self.can_forward = can_forward
        self.udp_cap = udp_cap
        # Queries that missed the answer cache (hits are never counted: the hot path stays bare).
        self.counts = {
            "uncached_queries": 0,
            "formerr": 0,
            "refused": 0,
            "forwarded": 0,
            "servfail": 0,
            "cookies": 0,  # queries with a well-formed cookie (answer-cache hits aside)
            "bad_cookies": 0,  # answered FORMERR (counted in formerr too)
            # upstream replies dnslib read but cannot write again (a label over 63 bytes
            # by a compression pointer, an empty NSEC bitmap): SERVFAIL, not cached
            # (counted in servfail too)
            "upstream_unwritable": 0,
        }

    def handle(self, data: bytes, client: str, *, tcp: bool = False) -> bytes | Forward | None:
        counts = self.counts
        counts["uncached_queries"] += 1
        try:
            q = parse_query(data)
        except DnsFormatError:
            counts["formerr"] += 1
            return header_error(data, FORMERR)
        h = q.record.header
        if h.qr:
            return None
        cap = self.udp_cap
        if h.opcode != QUERY:
            # Header only: other opcodes give the question section other meanings
            # (UPDATE's zone section), which the reply must not claim to answer.
            return header_error(data, NOTIMP)
        if q.version:
            return pack_reply(q, Answer(BADVERS, authoritative=False), max_size=512, udp_cap=cap)
        cookie = None
        if q.cookie is not None:
            if not check_cookie(q.cookie):
                counts["formerr"] += 1
                counts["bad_cookies"] += 1
                return header_reply(q, FORMERR, udp_cap=cap)
            counts["cookies"] += 1
            cookie = self.cookies.option(q.cookie[:CLIENT_COOKIE], client)
        if q.qtype in (AXFR, IXFR) or q.qclass != IN:
            counts["refused"] += 1
            return header_reply(q, REFUSED, udp_cap=cap, cookie=cookie)
        limit = reply_limit(q, tcp=tcp, udp_cap=cap)
        ans = answer(self.zone, q.qname, q.qtype)
        if ans is not None:
            reply = pack_reply(q, ans, max_size=limit, udp_cap=cap, cookie=cookie)
            # the answer cache keys queries without options and those with only a cookie
            if ans.cacheable and not tcp and q.options == (0 if q.cookie is None else 1):
                self.answers.put(data, reply, ans.touched)
            return reply
        if not self.allow.allowed(client):
            counts["refused"] += 1
            return header_reply(q, REFUSED, udp_cap=cap, cookie=cookie)
        if not self.can_forward:
            counts["servfail"] += 1
            return header_reply(q, SERVFAIL, udp_cap=cap, cookie=cookie)
        key = (q.qname.lower(), q.qtype, q.qclass, q.do)  # the cookie is not in it
        cached = self.forwarded.get(key)
        if cached is not None:
            return self._relay(q, cached, limit, cookie)
        counts["forwarded"] += 1
        return Forward(q, key, tcp, cookie)

    def finish(self, job: Forward, upstream: DNSRecord | None) -> bytes:
        """The client's reply to a forwarded query, from the upstream's reply (None: all failed)."""
        q = job.query
        if upstream is None:
            self.counts["servfail"] += 1
            return header_reply(q, SERVFAIL, udp_cap=self.udp_cap, cookie=job.cookie)
        h = upstream.header
        strip = [rr for rr in upstream.ar if rr.rtype != OPT]
        cached = Cached(h.rcode, list(upstream.rr), list(upstream.auth), strip, False)
        limit = reply_limit(q, tcp=job.tcp, udp_cap=self.udp_cap)
        try:
            data = self._relay(q, cached, limit, job.cookie)
        except Exception:  # dnslib raises what it likes packing odd records
            # (DNSLabelError, BufferError, an IndexError for an empty NSEC bitmap, ...)
            self.counts["servfail"] += 1
            self.counts["upstream_unwritable"] += 1
            return header_reply(q, SERVFAIL, udp_cap=self.udp_cap, cookie=job.cookie)
        self.forwarded.put(job.key, upstream)
        return data

    def _relay(self, q: Query, c: Cached, limit: int, cookie: bytes | None = None) -> bytes:
        qh = q.record.header
        header = DNSHeader(id=qh.id, qr=1, opcode=QUERY, rd=qh.rd, ra=1, rcode=c.rcode & 0x0F)
        header.cd = qh.cd
        reply = DNSRecord(header, q=q.record.q)
        reply.rr = list(c.answer)
        reply.auth = list(c.authority)
        extra: list[DnsRR] = [opt_record(q, 0, self.udp_cap, cookie)] if q.edns else []
        reply.ar = list(c.additional) + extra
        data = bytes(reply.pack())
        if len(data) > limit:
            header.tc = 1
            reply.rr, reply.auth, reply.ar = [], [], extra
            data = bytes(reply.pack())
        return data

    def debug_state(self) -> dict[str, int]:
        return {
            **self.counts,
            "answer_cache_entries": len(self.answers),
            "answer_cache_invalidated": self.answers.invalidated,
            "answer_cache_evicted": self.answers.evicted,
            "forward_cache_entries": len(self.forwarded),
            "forward_cache_hits": self.forwarded.hits,
            "forward_cache_misses": self.forwarded.misses,
        }
