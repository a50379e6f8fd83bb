"""The forwarder's I/O: ask the upstream servers, one after the other, until one answers.

Each attempt sends a fresh query (a random ID, RD set, EDNS0 with our UDP
size and the client's DO bit, no client options) over UDP from a new
socket, so its source port is random too; a reply is accepted only from
the upstream asked, with the same ID and question. A truncated reply is
asked again over TCP from the same upstream. A timeout, an error, SERVFAIL
or REFUSED moves on to the next upstream; when all fail the caller gets the
last reply it had, or None (SERVFAIL for the client).

Identical questions in flight share one upstream exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
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


def matches(reply: DNSRecord, sent: DNSRecord) -> bool:
    """The reply answers what was sent: same ID, a response, the same question.

    A truncated reply may come without its question (dnslib's own server
    sends it so); it is only a cue to ask again over TCP, so the ID is enough.
    """
    if reply.header.id != sent.header.id or not reply.header.qr:
        return False
    if reply.header.tc and not reply.questions:
        return True
    if len(reply.questions) != 1:
        return False
    a, b = reply.q, sent.q
    return a.qtype == b.qtype and a.qclass == b.qclass and a.qname == b.qname


class _UdpExchange(asyncio.DatagramProtocol):
    def __init__(self, sent: DNSRecord) -> None:
        self.sent = sent
        self.done: asyncio.Future[DNSRecord] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: object) -> None:
        if self.done.done():
            return
        try:
            reply = DNSRecord.parse(data)
        except Exception:
            return  # junk, or a spoofing attempt: keep waiting for the real reply
        if matches(reply, self.sent):
            self.done.set_result(reply)

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


class Forwarder:
    """Resolves forwarding jobs against ``upstreams`` with a per-upstream timeout."""

    def __init__(self, upstreams: Sequence[Upstream], *, timeout: float = 2.0) -> None:
        self.upstreams = tuple(upstreams)
        self.timeout = timeout
        self._inflight: dict[ForwardKey, asyncio.Future[DNSRecord | None]] = {}
        self.failures = 0

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
        for upstream in self.upstreams:
            sent = upstream_query(query, secrets.randbelow(65536))
            try:
                reply = await self._udp(upstream, sent)
                if reply.header.tc:
                    reply = await self._tcp(upstream, sent)
            except (OSError, TimeoutError, ValueError, EOFError, DNSError) as e:
                self.failures += 1
                log.debug("upstream %s failed for %s: %s", hostport(*upstream), query.qname, e)
                continue
            if reply.header.rcode in (SERVFAIL, REFUSED):  # try the next one
                last = reply
                continue
            return reply
        return last

    async def _udp(self, upstream: Upstream, sent: DNSRecord) -> DNSRecord:
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(
            lambda: _UdpExchange(sent), remote_addr=upstream
        )
        try:
            transport.sendto(sent.pack())
            async with asyncio.timeout(self.timeout):
                return await proto.done
        finally:
            transport.close()

    async def _tcp(self, upstream: Upstream, sent: DNSRecord) -> DNSRecord:
        async with asyncio.timeout(self.timeout):
            reader, writer = await asyncio.open_connection(*upstream)
            try:
                writer.write(frame(sent.pack()))
                (size,) = struct.unpack("!H", await reader.readexactly(2))
                reply = DNSRecord.parse(await reader.readexactly(size))
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        if not matches(reply, sent):
            raise ValueError("TCP reply does not match the query")
        return reply
