"""Wire format: queries parsed and replies packed with dnslib, plus the few byte-level helpers.

dnslib is used purely as a codec (parse, pack). On top of it:

- :func:`parse_query` checks what RFC 1035 and RFC 6891 ask of a query and
  raises :class:`DnsFormatError` with the rcode to answer (FORMERR for more
  than one question or OPT record, BADVERS for EDNS versions above 0);
- :func:`header_error` answers a packet whose header is readable but whose
  body is not (FORMERR, header only), as RFC 1035 section 4.1.1 allows;
- :func:`pack_reply` builds the reply to a parsed query: its ID, RD and CD
  bits, its question in the case it was asked, an OPT record when the query
  had one (DO copied, RFC 3225), and TC with an empty body when the reply
  does not fit the client's UDP size (RFC 6891 section 7: the client then
  retries over TCP), and the COOKIE option the responder gives it (RFC 7873);
- :class:`TcpFramer` splits a TCP stream into length-prefixed messages
  (RFC 1035 section 4.2.2, RFC 7766), sans-IO.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import dnslib
from dnslib import EDNS0, DNSError, DNSHeader, DNSLabel, DNSRecord, EDNSOption
from netplane.dns.answer import FORMERR, RR, Answer
from netplane.dns.cookie import COOKIE
from netplane.dns.zone import AAAA, CNAME, HINFO, NS, OPT, PTR, SOA, SRV, TXT, A

from netplane.errors import RemoteProtocolError

MIN_UDP = 512
MAX_TCP = 65535
# The DNS flag day 2020 size: fits every path's MTU, so no fragments.
DEFAULT_UDP_CAP = 1232


class DnsFormatError(RemoteProtocolError):
    """The query is malformed; ``hint`` is the rcode to answer with."""


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed query: what the answer depends on, and what the reply must echo."""

    record: DNSRecord
    qname: str  # without the trailing dot, in the query's case
    qtype: int
    qclass: int
    edns: bool
    udp_size: int  # the client's advertised size, at least 512
    do: bool
    has_options: bool  # EDNS options (cookies, padding ...)
    version: int  # the EDNS version asked for; above 0 is answered BADVERS
    # The COOKIE option's data as sent (client cookie, then any server cookie), its
    # length unchecked (the responder answers a bad one FORMERR); b"" when the query
    # holds more than one COOKIE option, which is as malformed. None: no cookie.
    cookie: bytes | None = None
    options: int = 0  # how many EDNS options


def parse_query(data: bytes) -> Query:
    """Parse and check a query; raises DnsFormatError for a bad one."""
    try:
        record = DNSRecord.parse(data)
    except (DNSError, ValueError, IndexError, UnicodeError, struct.error) as e:
        raise DnsFormatError(f"unparseable query: {e}", FORMERR) from None
    if len(record.questions) != 1:
        raise DnsFormatError("a query must have exactly one question", FORMERR)
    opts = [rr for rr in record.ar if rr.rtype == OPT]
    if len(opts) > 1:
        raise DnsFormatError("more than one OPT record", FORMERR)
    edns, udp_size, do, has_options, version = False, MIN_UDP, False, False, 0
    cookie: bytes | None = None
    options: list[tuple[int, bytes]] = []
    if opts:
        opt = opts[0]
        edns = True
        udp_size = max(MIN_UDP, opt.rclass)
        do = bool(opt.ttl & 0x8000)
        options = opt_options(data)
        has_options = bool(options)
        version = (opt.ttl >> 16) & 0xFF
        cookies = [value for code, value in options if code == COOKIE]
        if cookies:
            cookie = cookies[0] if len(cookies) == 1 else b""
    q = record.questions[0]
    labels = q.qname.label
    if any(b"." in label for label in labels):
        raise DnsFormatError("a label holds a dot", FORMERR)
    if any(len(label) > 63 for label in labels):  # dnslib reads one, cannot write it back
        raise DnsFormatError("a label longer than 63 bytes", FORMERR)
    if len(q.qname) > 253:  # likewise a name over 253 bytes as text (255 on the wire)
        raise DnsFormatError("a name longer than 255 bytes", FORMERR)
    qname = ".".join(label.decode("latin-1") for label in labels)
    return Query(
        record, qname, q.qtype, q.qclass, edns, udp_size, do, has_options, version,
        cookie, len(options),
    )  # fmt: skip


def _skip_name(data: bytes, i: int) -> int:
    while i < len(data):
        length = data[i]
        if length == 0:
            return i + 1
        if length & 0xC0 == 0xC0:
            return i + 2
        if length & 0xC0:
            break
        i += 1 + length
    raise DnsFormatError("a name runs past the message", FORMERR)


def opt_options(data: bytes) -> list[tuple[int, bytes]]:
    """The EDNS options of the message's (first) OPT record, read from the bytes.

    dnslib's parser drops an empty option at the end of the OPT record and
    ignores a few trailing bytes, so a COOKIE option of length 0 would go
    unseen; here every option must fit exactly (else DnsFormatError).
    """
    try:
        qd, an, ns, ar = struct.unpack_from("!HHHH", data, 4)
        i = 12
        for _ in range(qd):
            i = _skip_name(data, i) + 4
        for _ in range(an + ns + ar):
            i = _skip_name(data, i)
            rtype, _cls, _ttl, rdlen = struct.unpack_from("!HHIH", data, i)
            i += 10
            if rtype == OPT:
                rdata = data[i : i + rdlen]
                if len(rdata) != rdlen:
                    break
                out: list[tuple[int, bytes]] = []
                j = 0
                while j < rdlen:
                    if j + 4 > rdlen:
                        raise DnsFormatError("an EDNS option runs past its OPT record", FORMERR)
                    code, length = struct.unpack_from("!HH", rdata, j)
                    if j + 4 + length > rdlen:
                        raise DnsFormatError("an EDNS option runs past its OPT record", FORMERR)
                    out.append((code, rdata[j + 4 : j + 4 + length]))
                    j += 4 + length
                return out
            i += rdlen
    except struct.error:
        pass
    raise DnsFormatError("the OPT record runs past the message", FORMERR)


def header_error(data: bytes, rcode: int) -> bytes | None:
    """A header-only reply with ``rcode``; None when there is no header to answer or
    the packet is itself a response (answering responses invites loops)."""
    if len(data) < 12 or data[2] & 0x80:
        return None
    flags = 0x8000 | (data[2] & 0x79) << 8 | (rcode & 0x0F)  # QR, opcode and RD echoed
    return data[:2] + struct.pack("!HHHHH", flags, 0, 0, 0, 0)


def header_reply(
    query: Query, rcode: int, *, udp_cap: int = DEFAULT_UDP_CAP, cookie: bytes | None = None
) -> bytes:
    """A reply with the question and no records (REFUSED, NOTIMP, SERVFAIL ...)."""
    return pack_reply(
        query, Answer(rcode, authoritative=False), max_size=MAX_TCP, udp_cap=udp_cap, cookie=cookie
    )


def _rdata(rr: RR) -> dnslib.RD:
    t, d = rr.rtype, rr.rdata
    if t == A:
        return dnslib.A(d)
    if t == AAAA:
        return dnslib.AAAA(d)
    if t == CNAME:
        return dnslib.CNAME(d)
    if t == PTR:
        return dnslib.PTR(d)
    if t == NS:
        return dnslib.NS(d)
    if t == SRV:
        return dnslib.SRV(d.priority, d.weight, d.port, d.target)
    if t == TXT:
        return dnslib.TXT(d)
    if t == SOA:
        return dnslib.SOA(d.mname, d.rname, (d.serial, d.refresh, d.retry, d.expire, d.minimum))
    if t == HINFO:
        cpu, os_ = (s.encode() for s in d)
        return dnslib.RD(bytes([len(cpu)]) + cpu + bytes([len(os_)]) + os_)
    raise ValueError(f"no encoder for record type {t}")


def _records(rrs: tuple[RR, ...], query: Query) -> list[dnslib.RR]:
    qlabel = query.record.q.qname
    out = []
    for rr in rrs:
        # The question's own label object: dnslib then compresses to it, so
        # the owner goes out in the question's case (and a cached copy
        # follows whatever case the next question has).
        name = qlabel if rr.name == query.qname else DNSLabel(rr.name)
        out.append(dnslib.RR(name, rr.rtype, 1, rr.ttl, _rdata(rr)))
    return out


def pack_reply(
    query: Query,
    ans: Answer,
    *,
    max_size: int,
    ra: bool = True,
    udp_cap: int = DEFAULT_UDP_CAP,
    cookie: bytes | None = None,
) -> bytes:
    """The reply to ``query`` carrying ``ans``, truncated (TC, no records) past ``max_size``.

    ``cookie`` is the reply's COOKIE option data (client and server cookie),
    sent in the OPT record, which is the last record, truncated or not.
    """
    qh = query.record.header
    header = DNSHeader(
        id=qh.id, qr=1, opcode=qh.opcode, aa=int(ans.authoritative), rd=qh.rd, ra=int(ra)
    )
    header.cd = qh.cd
    header.rcode = ans.rcode & 0x0F
    reply = DNSRecord(header, q=query.record.q)
    reply.rr = _records(ans.answer, query)
    reply.auth = _records(ans.authority, query)
    reply.ar = _records(ans.additional, query)
    if query.edns:
        reply.ar.append(opt_record(query, ans.rcode >> 4, udp_cap, cookie))
    data = bytes(reply.pack())
    if len(data) > max_size:
        header.tc = 1
        reply.rr, reply.auth = [], []
        reply.ar = [opt_record(query, ans.rcode >> 4, udp_cap, cookie)] if query.edns else []
        data = bytes(reply.pack())
    return data


def opt_record(
    query: Query, ext_rcode: int, udp_cap: int, cookie: bytes | None = None
) -> dnslib.RR:
    # Our own payload size goes out (RFC 6891 section 6.2.3), DO echoed (RFC 3225),
    # and the COOKIE option when there is one (RFC 7873 section 5.2).
    opts = [EDNSOption(COOKIE, cookie)] if cookie else None
    return EDNS0(udp_len=udp_cap, ext_rcode=ext_rcode, flags="do" if query.do else "", opts=opts)


def reply_limit(query: Query, *, tcp: bool, udp_cap: int) -> int:
    """How many bytes the reply may have: 65535 over TCP, else the client's size capped."""
    if tcp:
        return MAX_TCP
    if not query.edns:
        return MIN_UDP
    return max(MIN_UDP, min(query.udp_size, udp_cap))


def frame(message: bytes) -> bytes:
    """One TCP message: the two-byte length, then the message."""
    return struct.pack("!H", len(message)) + message


class TcpFramer:
    """Length-prefixed DNS messages out of a TCP byte stream (sans-IO).

    ``feed(data)`` adds bytes; ``next_message()`` returns the next complete
    message or None when more bytes are needed. Pipelined queries come out
    one by one.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_message(self) -> bytes | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        size = buf[0] << 8 | buf[1]
        if len(buf) < 2 + size:
            return None
        message = bytes(buf[2 : 2 + size])
        del buf[: 2 + size]
        return message

    @property
    def buffered(self) -> int:
        return len(self._buf)
