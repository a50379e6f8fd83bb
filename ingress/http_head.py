"""Header handling for the proxy, sans-IO: what goes upstream and what goes back.

:class:`RequestHead` collects a client request's header fields as the
parser reports them and writes the upstream request head;
:class:`ResponseHead` does the same for the upstream's response. Both
build the forwarded lines while the fields arrive, so a request costs
one pass over its headers and one ``join``.

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
SPECIAL_RESPONSE_FIELDS = HOP_BY_HOP | {
    b"content-length",
    b"x-request-id",
    b"strict-transport-security",
}
#: Common response fields in their usual spelling, none of them special: the
#: proxy passes these on without lower-casing their names first.
PLAIN_RESPONSE_FIELDS = frozenset(
    (
        b"Server", b"Date", b"Content-Type", b"Last-Modified", b"ETag", b"Cache-Control",
        b"Expires", b"Vary", b"Set-Cookie", b"Location", b"Accept-Ranges", b"Content-Encoding",
        b"Access-Control-Allow-Origin",
    )
)  # fmt: skip
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


_ID_PREFIX = os.urandom(8).hex().encode()
_ID_COUNTER = itertools.count(int.from_bytes(os.urandom(4), "big"))


def new_request_id() -> bytes:
    """32 hex digits, the shape ingress-nginx's ``$req_id`` has.

    A random per-process half and a counter: unique without a random draw
    per request (IDs correlate logs; they are not secrets).
    """
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
        self,
        method: bytes,
        target: bytes,
        client_ip: bytes,
        proto: bytes,
        port: bytes,
        upgrade: bool,
    ) -> bytes:
        """The request head to send upstream (HTTP/1.1, keep-alive unless upgrading)."""
        host = self.host or b""
        if self.request_id is None:
            self.request_id = new_request_id()
        xff = client_ip if self.xff is None else self.xff + b", " + client_ip
        if self.chunked:
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
                b"\r\nX-Real-IP: ", client_ip,
                b"\r\nX-Forwarded-For: ", xff,
                b"\r\nX-Forwarded-Host: ", host,
                b"\r\nX-Forwarded-Port: ", port,
                b"\r\nX-Forwarded-Proto: ", proto,
                b"\r\n", framing, *self.lines, b"\r\n",
            )
        )  # fmt: skip


class ResponseHead:
    """One upstream response's header fields, gathered for the client."""

    __slots__ = ("chunked", "has_hsts", "has_length", "has_request_id", "lines")

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.has_length = False
        self.chunked = False
        self.has_request_id = False
        self.has_hsts = False

    def add(self, name: bytes, value: bytes) -> None:
        """One header field (the upstream protocol does the common case inline)."""
        lname = name.lower()
        if lname in SPECIAL_RESPONSE_FIELDS:
            self.special(lname, name, value)
        else:
            self.lines.append(name + b": " + value + b"\r\n")

    def special(self, lname: bytes, name: bytes, value: bytes) -> None:
        if lname == b"content-length":
            self.has_length = True
            self.lines.append(b"Content-Length: " + value + b"\r\n")
        elif lname == b"transfer-encoding":
            self.chunked = True
        elif lname == b"x-request-id":
            self.has_request_id = True
            self.lines.append(name + b": " + value + b"\r\n")
        elif lname == b"strict-transport-security":
            self.has_hsts = True
            self.lines.append(name + b": " + value + b"\r\n")

    def framing(self, status: int, head_request: bool, client_http10: bool) -> int:
        """How the body reaches the client (RFC 9112 §6.3)."""
        if head_request or status < 200 or status in (204, 304):
            return NO_BODY
        if self.has_length and not self.chunked:
            return LENGTH
        return UNTIL_CLOSE if client_http10 else CHUNKED

    def client_head(
        self,
        status: int,
        reason: bytes,
        framing: int,
        keep_alive: bool,
        client_http10: bool,
        extra: bytes,
    ) -> bytes:
        """The response head for the client; ``extra`` is pre-framed lines the proxy adds.

        An empty ``reason`` gets the status code's standard one.
        """
        line = _STATUS_LINES.get((status, reason))
        if line is None:
            line = b"HTTP/1.1 %d %s\r\n" % (status, reason or _reason(status))
            if len(_STATUS_LINES) < 1024:
                _STATUS_LINES[(status, reason)] = line
        conn = b"Transfer-Encoding: chunked\r\n" if framing == CHUNKED else b""
        if not keep_alive:
            conn += b"Connection: close\r\n"
        elif client_http10:
            conn += b"Connection: keep-alive\r\n"
        return b"".join((line, *self.lines, extra, conn, b"\r\n"))


# (status, upstream reason) -> status line; bounded (an upstream chooses its reasons)
_STATUS_LINES: dict[tuple[int, bytes], bytes] = {}
