"""Two caches: finished replies in wire format for the zone, and upstream answers for forwarding.

:class:`AnswerCache` is the fast path. Its key is the query from the flags
on (ID cut off), with the question name lower-cased, so it holds the EDNS
bits and size too; a hit is served by splicing the query's ID and its name
bytes (the case the client asked in) into the stored reply, without parsing
anything. Only queries of the plain shape are keyed (one question, no
answer or authority records, and either no additional record or one OPT
without options); everything else takes the parsing path. Entries are
dropped per name: each remembers the zone names its answer read, and a
change to any of them removes it. The bound evicts the oldest entry.

Queries with a DNS cookie (RFC 7873; dig and BIND-based resolvers send one
by default) have a shape of their own: the OPT holds one COOKIE option, the
client cookie alone (8 bytes) or with a 16-byte server cookie. Their key
(:func:`cookie_key`) leaves the cookie out, so every client and every
cookie shares one entry, stored without its COOKIE option; a hit appends the
client's own cookie and a fresh server cookie (:class:`ServerCookies`, the
only work beyond the splice). The reply was packed with a cookie of that
same size in it, so the client's size limit held for it.

:class:`ForwardCache` holds upstream replies for forwarded names: positive
answers for their smallest TTL, negative ones (NXDOMAIN, NODATA) for the
SOA's TTL or MINIMUM, whichever is less (RFC 2308 section 5), never a
negative answer without a SOA, never SERVFAIL or a truncated reply. Reading
an entry gives the TTLs that remain. The clock is injected.

Sans-IO: no sockets; the clock is a parameter.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from dnslib import RR as DnsRR
from dnslib import DNSRecord
from netplane.dns.answer import NOERROR, NXDOMAIN
from netplane.dns.cookie import CLIENT_COOKIE, REPLY_COOKIE_TAIL_HEAD, ServerCookies
from netplane.dns.zone import OPT, SOA

_ONE_QUESTION = b"\x00\x01\x00\x00\x00\x00\x00"
_OPT_HEAD = b"\x00\x00\x29"  # root owner name, type OPT
# The end of a cookie query's OPT record before the cookie bytes: the rdata length
# and the COOKIE option's code and length, for a client cookie alone and with a
# 16-byte server cookie (ours). Other lengths are served by the parsing path.
_COOKIE_HEADS = tuple(
    (n, (4 + n).to_bytes(2, "big") + b"\x00\x0a" + n.to_bytes(2, "big")) for n in (8, 24)
)
_COOKIE_MARK = b"\xff"  # ends a cookie key; a plain key ends with b"\0\0" (OPT) or a class
_REPLY_COOKIE_TAIL = len(REPLY_COOKIE_TAIL_HEAD) + CLIENT_COOKIE + 16


def fast_key(data: bytes) -> tuple[bytes, int] | None:
    """``(key, end of the question name)`` for a query of the plain shape, else None.

    The header's flag bytes are lower-cased with the name: the shape check
    leaves no letter-valued byte there (opcode 0 and QR 0 in the first byte,
    the Z bit 0 in the second), so only the name's letters change.
    """
    n = len(data)
    if n < 17 or data[4:11] != _ONE_QUESTION or data[2] & 0xF8 or data[3] & 0x40:
        return None
    ar = data[11]
    if ar == 0:
        qend = n - 4
    elif ar == 1 and n >= 28 and data[n - 11 : n - 8] == _OPT_HEAD and data[n - 2 :] == b"\0\0":
        qend = n - 15
    else:
        return None
    return data[2:qend].lower() + data[qend:], qend


def _cookie_start(data: bytes) -> int:
    """Where the cookie bytes of a query of the cookie shape start; 0 when not of it."""
    n = len(data)
    for size, head in _COOKIE_HEADS:
        start = n - size
        if data[start - 6 : start] == head:
            return start
    return 0


def cookie_key(data: bytes) -> tuple[bytes, int] | None:
    """``(key, end of the question name)`` for a query of the cookie shape, else None.

    The shape is the plain one with EDNS, its OPT holding just one COOKIE
    option of 8 or 24 bytes; the key is the query's from the flags on with
    the name lower-cased, up to the OPT's TTL (so the size, DO and version
    are in it), then a mark; the cookie bytes are not in it.
    """
    n = len(data)
    start = _cookie_start(data)
    qend = start - 19
    if (
        not start
        or qend < 13
        or data[4:11] != _ONE_QUESTION
        or data[11] != 1
        or data[2] & 0xF8
        or data[3] & 0x40
        or data[start - 15 : start - 12] != _OPT_HEAD
        or n < 36
    ):
        return None
    return data[2:qend].lower() + data[qend : start - 6] + _COOKIE_MARK, qend


class AnswerCache:
    """Wire-format replies by :func:`fast_key`, dropped per changed zone name.

    :meth:`reply` is the server's hot path: a few slices and one dict lookup.
    An entry is small because a warm cache holds one per name asked (every
    service name, and every missing one): a single name or key is held as
    itself rather than in a one-element set, and the (qtype, rcode) pair,
    which few entries differ in, is shared.
    """

    def __init__(self, max_entries: int = 100_000, *, cookies: ServerCookies | None = None) -> None:
        self.max_entries = max_entries
        # What signs the server cookies of hits; without it cookie queries are not cached.
        # The Responder gives it its own.
        self.cookies = cookies
        # key -> [reply[2:] with the name lower-cased, hits, (qtype, rcode), names]:
        # the reply but its ID, what /metrics counts of it, and the zone names
        # it read (a str, or a tuple of them)
        self._entries: dict[bytes, list] = {}
        # hits of entries dropped since, by (qtype, rcode)
        self._past_hits: dict[tuple[int, int], int] = {}
        # zone name -> the key of the one entry that read it, or a set of keys
        self._by_name: dict[str, bytes | set[bytes]] = {}
        self._shared: dict[object, object] = {}
        self.evicted = 0
        self.invalidated = 0

    def __len__(self) -> int:
        return len(self._entries)

    def reply(self, data: bytes, client: str = "") -> bytes | None:
        """The cached reply to ``data`` with its ID and name spliced in; None on a miss.

        ``client`` is the sender's address, which a server cookie is made for.

        Only the question's end is worked out here (from the additional
        count); the shape itself needs no check, because only well-formed
        queries of the plain shape are ever stored, and lower-casing cannot
        turn any other packet into one of their keys: it maps bytes into
        0x61-0x7a only, values which a stored key's header never holds.
        """
        n = len(data)
        if n < 17:
            return None
        ar = data[11]
        if ar == 0:
            qend = n - 4
        elif ar == 1:
            if data[n - 1] or data[n - 2]:  # not an OPT without options: a cookie, maybe
                return self._cookie_reply(data, client)
            qend = n - 15
        else:
            return None
        asked = data[2:qend]
        lowered = asked.lower()
        hit = self._entries.get(lowered + data[qend:])
        if hit is None:
            return None
        hit[1] += 1
        if lowered == asked:  # a lower-case name: the stored reply is the reply
            return data[:2] + hit[0]
        stored = hit[0]
        return data[:2] + stored[:10] + data[12:qend] + stored[qend - 2 :]

    def _cookie_reply(self, data: bytes, client: str) -> bytes | None:
        """:meth:`reply` for the cookie shape: the stored reply, then the COOKIE option."""
        start = _cookie_start(data)
        cookies = self.cookies
        if not start or cookies is None or len(data) < 36:
            return None
        qend = start - 19
        asked = data[2:qend]
        lowered = asked.lower()
        hit = self._entries.get(lowered + data[qend : start - 6] + _COOKIE_MARK)
        if hit is None:
            return None
        hit[1] += 1
        client_cookie = data[start : start + CLIENT_COOKIE]
        tail = REPLY_COOKIE_TAIL_HEAD + cookies.option(client_cookie, client)
        stored = hit[0]
        if lowered == asked:
            return data[:2] + stored + tail
        return data[:2] + stored[:10] + data[12:qend] + stored[qend - 2 :] + tail

    def put(self, query: bytes, reply: bytes, names: Iterable[str]) -> bool:
        """Store ``reply`` for ``query`` (if of the plain or cookie shape); ``names`` are what it read."""
        fk = fast_key(query)
        cut = len(reply)
        if fk is None and self.cookies is not None:
            fk = cookie_key(query)
            cut -= _REPLY_COOKIE_TAIL  # the COOKIE option goes; hits append their own
            if reply[cut : cut + len(REPLY_COOKIE_TAIL_HEAD)] != REPLY_COOKIE_TAIL_HEAD:
                return False
        if fk is None or self.max_entries <= 0:
            return False
        key, qend = fk
        if reply[12:qend].lower() != query[12:qend].lower() or cut < qend + 4:
            return False  # the reply's question is not where the query's was
        if key not in self._entries and len(self._entries) >= self.max_entries:
            self._drop(next(iter(self._entries)))
            self.evicted += 1
        self._drop(key)
        read = tuple(set(names))
        held: str | tuple[str, ...] = read[0] if len(read) == 1 else read
        share = self._shared.setdefault
        kind = (int.from_bytes(query[qend : qend + 2], "big"), reply[3] & 0x0F)
        stored = reply[2:12] + key[10 : qend - 2] + reply[qend:cut]
        self._entries[key] = [stored, 0, share(kind, kind), held]
        by_name = self._by_name
        for name in read:
            have = by_name.get(name)
            if have is None:
                by_name[name] = key
            elif have.__class__ is set:
                have.add(key)
            elif have != key:
                # bytes here: mypy narrows on `__class__ is set` only where it holds
                by_name[name] = {have, key}  # type: ignore[arg-type]  # not a set (above)
        return True

    def invalidate(self, names: Iterable[str]) -> int:
        """Drop every reply that read one of ``names``; returns how many went."""
        dropped = 0
        for name in names:
            keys = self._by_name.pop(name, None)
            if keys is None:
                continue
            for key in (keys,) if isinstance(keys, bytes) else keys:
                if self._drop(key):
                    dropped += 1
        self.invalidated += dropped
        return dropped

    def clear(self) -> None:
        for key in list(self._entries):
            self._drop(key)
        self._entries.clear()
        self._by_name.clear()

    def hits(self) -> dict[tuple[int, int], int]:
        """Replies served from this cache so far, by (qtype, rcode)."""
        out = dict(self._past_hits)
        for entry in self._entries.values():
            if entry[1]:
                out[entry[2]] = out.get(entry[2], 0) + entry[1]
        return out

    def _drop(self, key: bytes) -> bool:
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        if entry[1]:
            self._past_hits[entry[2]] = self._past_hits.get(entry[2], 0) + entry[1]
        held = entry[3]
        by_name = self._by_name
        for name in (held,) if held.__class__ is str else held:
            keys = by_name.get(name)
            if keys is None:
                continue
            if keys.__class__ is set:
                keys.discard(key)
                if len(keys) == 1:
                    by_name[name] = next(iter(keys))
            elif keys == key:
                del by_name[name]
        return True


ForwardKey = tuple[str, int, int, bool]  # (lower-case name, qtype, qclass, DO)


@dataclass(frozen=True, slots=True)
class Cached:
    """An upstream reply as served now: its records with the TTLs that remain."""

    rcode: int
    answer: list[DnsRR]
    authority: list[DnsRR]
    additional: list[DnsRR]
    aa: bool


@dataclass(slots=True)
class _Entry:
    reply: DNSRecord
    stored: float
    ttl: int


def cache_ttl(reply: DNSRecord, max_ttl: int) -> int | None:
    """How long ``reply`` may be cached, or None when it must not be (RFC 2308)."""
    h = reply.header
    if h.tc or h.rcode not in (NOERROR, NXDOMAIN):
        return None  # truncated, SERVFAIL, REFUSED ...: ask again next time
    answers = [rr for rr in reply.rr]
    if h.rcode == NOERROR and answers:
        return min(max_ttl, *(rr.ttl for rr in answers))
    soas = [rr for rr in reply.auth if rr.rtype == SOA]
    if not soas:
        return None  # a negative answer without a SOA is not cached (section 5)
    soa = soas[0]
    return min(max_ttl, soa.ttl, soa.rdata.times[4])


class ForwardCache:
    """Upstream replies by (name, type, class, DO), bounded, TTLs counted down on read."""

    def __init__(
        self,
        max_entries: int = 10_000,
        *,
        max_ttl: int = 3600,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_ttl = max_ttl
        self.now = now
        self._entries: OrderedDict[ForwardKey, _Entry] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: ForwardKey, reply: DNSRecord) -> bool:
        ttl = cache_ttl(reply, self.max_ttl)
        if ttl is None or ttl <= 0:
            return False
        self._entries[key] = _Entry(reply, self.now(), ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return True

    def get(self, key: ForwardKey) -> Cached | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        elapsed = int(self.now() - entry.stored)
        if elapsed >= entry.ttl:
            del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        r = entry.reply

        def aged(rrs: list[DnsRR]) -> list[DnsRR]:
            return [
                DnsRR(rr.rname, rr.rtype, rr.rclass, max(0, rr.ttl - elapsed), rr.rdata)
                for rr in rrs
                if rr.rtype != OPT  # OPT belongs to the upstream hop, not to the client
            ]

        return Cached(r.header.rcode, aged(r.rr), aged(r.auth), aged(r.ar), bool(r.header.aa))
