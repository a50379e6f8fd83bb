"""The forwarder's I/O: ask the upstream servers, one after the other, until one answers.

Each attempt sends a fresh query (a random ID, RD set, EDNS0 with our UDP
size and the client's DO bit, no client options) over UDP from a new
socket, so its source port is random too; a reply is accepted only from
the upstream asked, with the same ID and question (others are dropped and
counted in ``Forwarder.dropped`` by reason). A truncated reply is
asked again over TCP from the same upstream. A timeout, an error, SERVFAIL
or REFUSED moves on to the next upstream; when all fail the caller gets the
last reply it had, or None (SERVFAIL for the client). All the attempts of one
question share a budget (4 s) shorter than a stub resolver's own timeout
(glibc's and dig's 5 s), each upstream an equal share at most, so that dead
upstreams give the client SERVFAIL, not a timeout, however many there are,
and each of them is asked.

Identical questions in flight share one upstream exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import struct
from collections.abc import Sequence

from dnslib import EDNS0, DNSError, DNSHeader, DNSQuestion, DNSRecord
from netplane.dns.answer import REFUSED, SERVFAIL
from netplane.dns.cache import ForwardKey
from netplane.dns.wire import DEFAULT_UDP_CAP, Query, frame

from netplane.addresses import hostport

log = logging.getLogger("netplane.dns")

Upstream = tuple[str, int]


def upstream_query(query: Query, qid: int) -> DNSRecord:
    q = query.record.q
    record = DNSRecord(DNSHeader(id=qid, rd=1), q=DNSQuestion(q.qname, q.qtype, q.qclass))
    record.add_ar(EDNS0(udp_len=DEFAULT_UDP_CAP, flags="do" if query.do else ""))
    return record


#: Why an upstream reply was dropped (the reason label of
#: netplane_dns_forward_replies_dropped_total).
DROP_REASONS = ("id", "question", "source", "malformed")


def mismatch(reply: DNSRecord, sent: DNSRecord) -> str | None:
    """Why the reply does not answer what was sent ("id", "question", "malformed"), or None.

    It must be a response with the same ID and the same question (the name
    compared case-insensitively, type and class). A truncated reply may come
    without its question (dnslib's own server sends it so); it is only a cue
    to ask again over TCP, so the ID is enough.
    """
    if not reply.header.qr:
        return "malformed"
    if reply.header.id != sent.header.id:
        return "id"
    if reply.header.tc and not reply.questions:
        return None
    if len(reply.questions) != 1:
        return "question"
    a, b = reply.q, sent.q
    if a.qtype == b.qtype and a.qclass == b.qclass and a.qname == b.qname:  # DNSLabel: any case
        return None
    return "question"


def matches(reply: DNSRecord, sent: DNSRecord) -> bool:
    """The reply answers what was sent (:func:`mismatch` finds nothing)."""
    return mismatch(reply, sent) is None


def same_source(addr: object, upstream: Upstream) -> bool:
    """Whether a datagram from ``addr`` (a socket address) comes from ``upstream``."""
    if not isinstance(addr, tuple) or len(addr) < 2 or addr[1] != upstream[1]:
        return False
    if addr[0] == upstream[0]:
        return True
    try:
        return ipaddress.ip_address(addr[0]) == ipaddress.ip_address(upstream[0])
    except ValueError:
        return False


class _UdpExchange(asyncio.DatagramProtocol):
    """One query's socket: the first reply that matches, from the upstream asked, wins.

    The socket is connected, so the kernel already drops datagrams from
    other addresses; the source check here does not rely on that.
    """

    def __init__(self, sent: DNSRecord, upstream: Upstream, dropped: dict[str, int]) -> None:
        self.sent = sent
        self.upstream = upstream
        self.dropped = dropped
        self.done: asyncio.Future[DNSRecord] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: object) -> None:
        if self.done.done():
            return
        # Junk, a forgery or a stale reply: dropped, and the real reply still awaited.
        if not same_source(addr, self.upstream):
            self._drop("source", addr)
            return
        try:
            reply = DNSRecord.parse(data)
        except Exception:
            self._drop("malformed", addr)
            return
        reason = mismatch(reply, self.sent)
        if reason is not None:
            self._drop(reason, addr)
            return
        self.done.set_result(reply)

    def _drop(self, reason: str, addr: object) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        log.debug("dropped an upstream reply from %s for %s: %s", addr, self.sent.q.qname, reason)

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


class Forwarder:
    """Resolves forwarding jobs against ``upstreams`` with a per-upstream timeout."""

    def __init__(
        self, upstreams: Sequence[Upstream], *, timeout: float = 2.0, budget: float = 4.0
    ) -> None:
        self.upstreams = tuple(upstreams)
        self.timeout = timeout
        self.budget = budget  # seconds for all the attempts of one question
        self._inflight: dict[ForwardKey, asyncio.Future[DNSRecord | None]] = {}
        self.failures = 0
        # upstream replies dropped, by reason (DROP_REASONS)
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)

    async def resolve(self, query: Query, key: ForwardKey) -> DNSRecord | None:
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[DNSRecord | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            result = await self._resolve(query)
        except BaseException as e:
            fut.set_result(None)
            if isinstance(e, asyncio.CancelledError):
                raise
            result = None
        else:
            fut.set_result(result)
        finally:
            self._inflight.pop(key, None)
        return result

    async def _resolve(self, query: Query) -> DNSRecord | None:
        last: DNSRecord | None = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.budget
        per_try = min(self.timeout, self.budget / max(1, len(self.upstreams)))
        for upstream in self.upstreams:
            if loop.time() >= deadline:
                log.debug("no time left to ask %s for %s", hostport(*upstream), query.qname)
                break
            sent = upstream_query(query, secrets.randbits(16))
            try:
                reply = await self._udp(upstream, sent, min(per_try, deadline - loop.time()))
                if reply.header.tc:
                    reply = await self._tcp(
                        upstream, sent, min(per_try, max(0.0, deadline - loop.time()))
                    )
            except (OSError, TimeoutError, ValueError, EOFError, DNSError) as e:
                self.failures += 1
                log.debug("upstream %s failed for %s: %s", hostport(*upstream), query.qname, e)
                continue
            if reply.header.rcode in (SERVFAIL, REFUSED):  # try the next one
                last = reply
                continue
            return reply
        return last

    async def _udp(self, upstream: Upstream, sent: DNSRecord, timeout: float) -> DNSRecord:
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(
            lambda: _UdpExchange(sent, upstream, self.dropped), remote_addr=upstream
        )
        try:
            transport.sendto(sent.pack())
            async with asyncio.timeout(timeout):
                return await proto.done
        finally:
            transport.close()

    async def _tcp(self, upstream: Upstream, sent: DNSRecord, timeout: float) -> DNSRecord:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(*upstream)
            try:
                writer.write(frame(sent.pack()))
                (size,) = struct.unpack("!H", await reader.readexactly(2))
                reply = DNSRecord.parse(await reader.readexactly(size))
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        reason = mismatch(reply, sent)
        if reason is not None:
            self.dropped[reason] = self.dropped.get(reason, 0) + 1
            raise ValueError(f"TCP reply does not match the query ({reason})")
        return reply
