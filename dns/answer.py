"""Answer synthesis: a question and the zone in, an rcode and three sections out.

One place decides every response code (CoreDNS's handler is the model):

- a name outside the cluster domain and the reverse zones is not ours
  (``None``: the caller forwards it or refuses it);
- before the first full table the zone answers SERVFAIL, as CoreDNS does
  until its informers have synced, so a client never caches a NXDOMAIN for
  a name that is about to exist;
- a name that does not exist is NXDOMAIN; a name that exists without the
  asked type (or an empty non-terminal) is NOERROR/NODATA; both carry the
  zone's SOA in the authority section (RFC 2308), with the zone TTL;
- a CNAME answers every type but CNAME and is followed while its target
  stays inside the cluster zone;
- ANY gets one HINFO record, as RFC 8482 allows.

Every answer lists the names it read (``touched``), so the answer cache can
drop it when any of them changes.

Sans-IO: plain data in, plain data out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dnslib import RCODE
from netplane.dns.zone import (
    AAAA,
    ANY,
    CNAME,
    HINFO,
    NS,
    SOA,
    SRV,
    A,
    Zone,
)

# Response codes from dnslib's table, bound once (a ``RCODE.X`` is a Bimap lookup).
NOERROR, FORMERR, SERVFAIL = RCODE.NOERROR, RCODE.FORMERR, RCODE.SERVFAIL
NXDOMAIN, NOTIMP, REFUSED = RCODE.NXDOMAIN, RCODE.NOTIMP, RCODE.REFUSED
# An extended rcode (RFC 6891 section 9): its high bits go in the OPT record,
# and dnslib's RCODE table, which covers the header's four bits only, lacks it.
BADVERS = 16
_MAX_CNAME_HOPS = 8


@dataclass(frozen=True, slots=True)
class RR:
    """One resource record; ``name`` keeps the case it should go out with."""

    name: str
    rtype: int
    ttl: int
    rdata: Any


@dataclass(frozen=True, slots=True)
class Answer:
    rcode: int
    answer: tuple[RR, ...] = ()
    authority: tuple[RR, ...] = ()
    additional: tuple[RR, ...] = ()
    authoritative: bool = True
    touched: frozenset[str] = frozenset()
    # False for answers that must not be cached (SERVFAIL while syncing).
    cacheable: bool = True


def answer(zone: Zone, qname: str, qtype: int) -> Answer | None:
    """The zone's answer to ``qname``/``qtype`` (IN class), or None when the name is not ours.

    ``qname`` is the query's name without the trailing dot, in the query's
    case; records owned by it go out in that case.
    """
    lname = qname.lower()
    apex = zone.apex_of(lname)
    if apex is None:
        return None
    if not zone.ready:
        return Answer(SERVFAIL, authoritative=False, cacheable=False)
    ttl = zone.ttl
    touched = {lname}
    records = zone.lookup(lname)
    if records is None:
        if zone.exists(lname) or zone.pod_namespace_exists(lname):
            return _negative(zone, apex, NOERROR, touched)
        return _negative(zone, apex, NXDOMAIN, touched)

    if qtype == ANY:
        hinfo = RR(qname, HINFO, ttl, ("RFC8482", ""))
        return Answer(NOERROR, (hinfo,), touched=frozenset(touched))

    chain: list[RR] = []
    owner = qname
    for _ in range(_MAX_CNAME_HOPS):
        target = records.get(CNAME)
        if not target or qtype == CNAME:
            break
        chain.append(RR(owner, CNAME, ttl, target[0]))
        owner = target[0]
        touched.add(owner)
        if zone.apex_of(owner) != zone.domain:
            return Answer(NOERROR, tuple(chain), touched=frozenset(touched))
        records = zone.lookup(owner)
        if records is None:
            rcode = NOERROR if zone.exists(owner) else NXDOMAIN
            return _negative(zone, zone.domain, rcode, touched, tuple(chain))

    rdatas = records.get(qtype)
    if not rdatas:
        return _negative(zone, apex, NOERROR, touched, tuple(chain))
    rrs = tuple(chain) + tuple(RR(owner, qtype, ttl, r) for r in rdatas)
    additional: list[RR] = []
    if qtype == SRV:
        for srv in rdatas:
            additional += _addresses(zone, srv.target, touched)
    elif qtype == NS:
        for host in rdatas:
            additional += _addresses(zone, host, touched)
    return Answer(NOERROR, rrs, (), tuple(additional), touched=frozenset(touched))


def _addresses(zone: Zone, host: str, touched: set[str]) -> list[RR]:
    touched.add(host)
    rec = zone.lookup(host) or {}
    return [RR(host, t, zone.ttl, ip) for t in (A, AAAA) for ip in rec.get(t, ())]


def _negative(
    zone: Zone, apex: str, rcode: int, touched: set[str], chain: tuple[RR, ...] = ()
) -> Answer:
    soa = RR(apex, SOA, zone.ttl, zone.soa(apex))
    return Answer(rcode, chain, (soa,), touched=frozenset(touched))
