"""Header handling for the proxy, sans-IO: what goes upstream and what goes back.

:class:`RequestHead` collects a client request's header fields as the
parser reports them and writes the upstream request head, building the
forwarded lines while the fields arrive. :class:`ResponseHead` is made
from an upstream response head's bytes once the parser has accepted
them: one scan finds the fields the proxy handles, every other line goes
on as it came (no parser callback per field).

Rules (RFC 9110 §7.6.1, RFC 9112 §6, and ingress-nginx's defaults):

- Hop-by-hop fields (``Connection`` and every field it names,
  ``Keep-Alive``, ``Proxy-Connection``, ``TE``, ``Trailer``,
  ``Transfer-Encoding``, ``Upgrade``) apply to one connection and are
  dropped; the proxy frames each side itself. ``Upgrade`` is sent on
  when the client asked for a protocol switch.
- ``X-Forwarded-For`` gets the client address appended; ``X-Real-IP``,
  ``X-Forwarded-Proto``, ``-Host`` and ``-Port`` are set from what this
  proxy saw (a client's own values are replaced: it could claim
  anything); ``X-Request-ID`` is kept when the client sent one, else
  generated, and returned to the client either way.
- ``Expect: 100-continue`` is answered by the proxy itself and not sent on.
- More than one ``Host`` field is a malformed request (RFC 9112 §3.2).
"""

from __future__ import annotations

import itertools
import os
import re

from netplane.ingress.errors import reason as _reason

HOP_BY_HOP = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    )
)
SPECIAL_REQUEST_FIELDS = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"expect",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-forwarded-port",
    b"x-real-ip",
    b"x-request-id",
}
_CONNECTION_OPTIONS = frozenset((b"close", b"keep-alive", b"upgrade"))

#: Response framings towards the client.
NO_BODY = 0  # HEAD, 1xx, 204, 304
LENGTH = 1  # the upstream's Content-Length, passed on
CHUNKED = 2  # re-chunked to an HTTP/1.1 client
UNTIL_CLOSE = 3  # close-delimited (an HTTP/1.0 client without a length)


class HeadError(ValueError):
    """A request head the proxy refuses; ``status`` is the answer (400 or 501)."""

    def __init__(self, status: int, message: bytes) -> None:
        super().__init__(message.decode())
        self.status = status
        self.message = message


# Generated X-Request-IDs: 32 hex digits, the shape ingress-nginx's ``$req_id``
# has. A random per-process half and a counter: unique without a random draw
# per request (IDs correlate logs; they are not secrets).
_ID_PREFIX = os.urandom(8).hex().encode()
_ID_COUNTER = itertools.count(int.from_bytes(os.urandom(4), "big"))


def new_request_id() -> bytes:
    """An X-Request-ID for a request that came without one."""
    return b"%s%016x" % (_ID_PREFIX, next(_ID_COUNTER))


class RequestHead:
    """One client request's header fields, gathered for routing and for upstream."""

    __slots__ = (
        "connection",
        "content_length",
        "expect_continue",
        "headers",
        "host",
        "lines",
        "request_id",
        "transfer_encoding",
        "upgrade",
        "xff",
    )

    def __init__(self) -> None:
        #: lower-cased name -> value (repeated fields joined), for the route table
        self.headers: dict[bytes, bytes] = {}
        #: forwarded lines, each ``Name: value\r\n``
        self.lines: list[bytes] = []
        self.host: bytes | None = None
        self.content_length: bytes | None = None
        self.transfer_encoding: bytes | None = None
        self.connection: bytes = b""
        self.upgrade: bytes | None = None
        self.expect_continue = False
        self.xff: bytes | None = None
        self.request_id: bytes | None = None

    def copy(self) -> RequestHead:
        """A copy to change: its own fields dict and lines list (the bytes are shared)."""
        new = RequestHead.__new__(RequestHead)
        new.headers = self.headers.copy()
        new.lines = self.lines.copy()
        new.host = self.host
        new.content_length = self.content_length
        new.transfer_encoding = self.transfer_encoding
        new.connection = self.connection
        new.upgrade = self.upgrade
        new.expect_continue = self.expect_continue
        new.xff = self.xff
        new.request_id = self.request_id
        return new

    def add(self, name: bytes, value: bytes) -> int:
        """One header field as the parser delivered it; returns its size on the wire.

        (The proxy's parser callback does the same inline for speed; this is
        the reference and what tests and other callers use.)
        """
        lname = name.lower()
        if lname in SPECIAL_REQUEST_FIELDS:
            self.special(lname, value)
            return len(name) + len(value) + 4
        line = name + b": " + value + b"\r\n"
        self.lines.append(line)
        headers = self.headers
        if lname in headers:
            value = headers[lname] + (b"; " if lname == b"cookie" else b", ") + value
        headers[lname] = value
        return len(line)

    def special(self, lname: bytes, value: bytes) -> None:
        """A field the proxy handles itself (framing, hop-by-hop, forwarding)."""
        if lname == b"host":
            if self.host is not None:
                raise HeadError(400, b"The request has more than one Host header.")
            self.host = value
        elif lname == b"content-length":
            self.content_length = value
        elif lname == b"transfer-encoding":
            te = value if self.transfer_encoding is None else self.transfer_encoding + b", " + value
            self.transfer_encoding = te
        elif lname == b"connection":
            self.connection = (self.connection + b"," + value) if self.connection else value
        elif lname == b"upgrade":
            self.upgrade = value
        elif lname == b"expect":
            if value.strip().lower() != b"100-continue":
                raise HeadError(417, b"Only Expect: 100-continue is understood.")
            self.expect_continue = True
        elif lname == b"x-forwarded-for":
            self.xff = value if self.xff is None else self.xff + b", " + value
        elif lname == b"x-request-id":
            self.request_id = value
        self.headers[lname] = value

    def check(self) -> None:
        """Whole-head rules, once every field is in (smuggling and framing)."""
        if self.transfer_encoding is not None:
            if self.content_length is not None:
                raise HeadError(400, b"Content-Length and Transfer-Encoding together are refused.")
            codings = [c.strip().lower() for c in self.transfer_encoding.split(b",")]
            if codings != [b"chunked"]:
                raise HeadError(501, b"Only Transfer-Encoding: chunked is supported.")
        if self.connection:
            tokens = {t.strip().lower() for t in self.connection.split(b",")} - _CONNECTION_OPTIONS
            if tokens:
                # Fields the client named as hop-by-hop (RFC 9110 §7.6.1): drop them too.
                self.lines = [ln for ln in self.lines if ln.split(b":", 1)[0].lower() not in tokens]
                for t in tokens:
                    self.headers.pop(t, None)

    @property
    def chunked(self) -> bool:
        return self.transfer_encoding is not None

    def upstream_head(
        self, method: bytes, target: bytes, client_ip: bytes, forwarded: bytes, upgrade: bool
    ) -> bytes:
        """The request head to send upstream (HTTP/1.1, keep-alive unless upgrading).

        ``forwarded`` is the client connection's :func:`forwarded_fields`.
        """
        host = self.host or b""
        if self.request_id is None:
            self.request_id = new_request_id()
        xff = client_ip if self.xff is None else self.xff + b", " + client_ip
        if self.transfer_encoding is not None:
            framing = b"Transfer-Encoding: chunked\r\n"
        elif self.content_length is not None:
            framing = b"Content-Length: " + self.content_length + b"\r\n"
        else:
            framing = b""
        if upgrade and self.upgrade is not None:
            framing += b"Upgrade: " + self.upgrade + b"\r\nConnection: upgrade\r\n"
        return b"".join(
            (
                method, b" ", target, b" HTTP/1.1\r\nHost: ", host,
                b"\r\nX-Request-ID: ", self.request_id,
                b"\r\nX-Forwarded-Host: ", host,
                b"\r\nX-Forwarded-For: ", xff,
                b"\r\n", forwarded, framing, *self.lines, b"\r\n",
            )
        )  # fmt: skip


def forwarded_fields(client_ip: bytes, proto: bytes, port: bytes) -> bytes:
    """The fields every request of one client connection gets upstream, whatever it sent."""
    return b"X-Real-IP: %s\r\nX-Forwarded-Port: %s\r\nX-Forwarded-Proto: %s\r\n" % (
        client_ip,
        port,
        proto,
    )


class ResponseHead:
    """One upstream response head as the client gets it: its framing facts and the lines passed on.

    Made from the head's bytes (status line through the last field's CRLF)
    once httptools has accepted them, so their syntax is known good: CRLF
    line ends, no folded lines, no space before a colon. Heads repeat (one
    endpoint, one page, one second of ``Date``), so :func:`response_head`
    keeps the ones it has seen; a head is never changed once made
    (its HTTP/2 form is derived once, on first use).
    """

    __slots__ = (
        "body_framing", "chunked", "fields", "h2_block", "has_hsts", "has_length",
        "has_request_id", "prefix", "reason", "status",
    )  # fmt: skip

    def __init__(self, raw: bytes) -> None:
        eol = raw.find(b"\r\n")
        version_status_reason = raw[:eol].split(b" ", 2)
        self.status = status = int(version_status_reason[1])
        self.reason = reason = version_status_reason[2] if len(version_status_reason) > 2 else b""
        self.has_length = False
        self.chunked = False
        self.has_request_id = False
        self.has_hsts = False
        # Hop-by-hop lines are cut out; every other line goes on byte for byte.
        kept: list[bytes] = []
        named: set[bytes] = set()
        pos = eol + 2
        lowered = raw.lower()
        for m in _RESPONSE_SPECIAL.finditer(lowered, eol):
            name = m.group(1)
            if name == b"connection":
                # Fields the upstream named as hop-by-hop (RFC 9110 §7.6.1) go too (below).
                value = lowered[m.end() : lowered.index(b"\r\n", m.end())]
                named.update(t.strip() for t in value.split(b","))
            if name == b"content-length":
                self.has_length = True
            elif name == b"x-request-id":
                self.has_request_id = True
            elif name == b"strict-transport-security":
                self.has_hsts = True
            else:
                if name == b"transfer-encoding":
                    self.chunked = True
                start = m.start() + 2
                kept.append(raw[pos:start])
                pos = raw.index(b"\r\n", start) + 2
        self.fields = b"".join(kept) + raw[pos:] if kept else raw[pos:]
        # Content-Length stays: it is the framing this proxy reads and passes on.
        named -= _CONNECTION_OPTIONS | {b"", b"content-length"}
        if named:
            self.fields = b"".join(
                line + b"\r\n"
                for line in self.fields.split(b"\r\n")[:-1]
                if line.split(b":", 1)[0].lower() not in named
            )
            self.has_request_id = self.has_request_id and b"x-request-id" not in named
            self.has_hsts = self.has_hsts and b"strict-transport-security" not in named
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason or _reason(status))
        self.prefix = line + self.fields
        #: the same head as an HTTP/2 header block, made at its first HTTP/2 client
        #: (netplane.ingress.http2_head.response_block)
        self.h2_block: bytes | None = None
        # How the body reaches the client (RFC 9112 §6.3), unless the request was
        # HEAD (no body) or the client speaks HTTP/1.0 (UNTIL_CLOSE for CHUNKED).
        if status < 200 or status in (204, 304):
            self.body_framing = NO_BODY
        elif self.has_length and not self.chunked:
            self.body_framing = LENGTH
        else:
            self.body_framing = CHUNKED

    def client_head(
        self, framing: int, keep_alive: bool, client_http10: bool, extra: bytes
    ) -> bytes:
        """The response head for the client; ``extra`` is pre-framed lines the proxy adds.

        An empty reason phrase gets the status code's standard one.
        """
        if framing == CHUNKED:
            extra += b"Transfer-Encoding: chunked\r\n"
        if not keep_alive:
            extra += b"Connection: close\r\n"
        elif client_http10:
            extra += b"Connection: keep-alive\r\n"
        return self.prefix + extra + b"\r\n"


_RESPONSE_SPECIAL = re.compile(
    rb"\r\n(connection|keep-alive|proxy-connection|te|trailer|transfer-encoding|upgrade"
    rb"|content-length|x-request-id|strict-transport-security):"
)
#: Heads seen lately, by their bytes; bounded in count and in the size of a head kept.
HEADS: dict[bytes, ResponseHead] = {}
_HEADS_MAX_ENTRIES = 512
_HEADS_MAX_BYTES = 2048


def response_head(raw: bytes) -> ResponseHead:
    """The :class:`ResponseHead` of ``raw`` (a head httptools accepted), made once per distinct head."""
    h = HEADS.get(raw)
    if h is None:
        h = ResponseHead(raw)
        if len(raw) <= _HEADS_MAX_BYTES:
            if len(HEADS) >= _HEADS_MAX_ENTRIES:
                HEADS.clear()
            HEADS[raw] = h
    return h
