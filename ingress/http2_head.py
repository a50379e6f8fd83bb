"""HTTP/2 header lists to and from the proxy's heads (RFC 9113 §8.3), as data.

An HTTP/2 request arrives as a header list that the codec has already
checked for the protocol's own rules (pseudo-fields first and once each,
lower-case names, no connection-specific fields, ``te`` only ``trailers``).
What is left is the proxy's part:

- :func:`request_head` turns the list into the method, the target and a
  :class:`~netplane.ingress.http_head.RequestHead`, the same object the
  HTTP/1.1 parser fills, so the route table, the annotations and the
  upstream head do not know which protocol the client spoke.
  ``:authority`` is the Host (a ``host`` field that names another one is
  refused, RFC 9113 §8.3.1); ``cookie`` fields, which HTTP/2 may split, go
  upstream as one line joined by ``; `` (§8.2.3); a request body without
  ``content-length`` goes upstream chunked.
- :func:`response_block` turns an upstream's HTTP/1.1
  :class:`~netplane.ingress.http_head.ResponseHead` (hop-by-hop lines
  already cut) into the header block the client gets, made once per distinct
  head, as the head itself is.
"""

from __future__ import annotations

from netplane.ingress.h2_codec import encode_block, string_literal
from netplane.ingress.http_head import (
    SPECIAL_REQUEST_FIELDS,
    HeadError,
    RequestHead,
    ResponseHead,
    new_request_id,
)

#: RFC 9113 §8.3.1's pseudo-fields of a request.
_METHOD = b":method"
_PATH = b":path"
_AUTHORITY = b":authority"
_SCHEME = b":scheme"
#: Per RFC 7541 §4.1, each field costs its name and value plus 32 bytes.
FIELD_OVERHEAD = 32

Header = tuple[bytes, bytes]


class Http2Request:
    """A request head read from one HTTP/2 header list (its ``head`` is copied per request)."""

    __slots__ = ("grpc", "head", "method", "size", "target")

    def __init__(self, method: bytes, target: bytes, head: RequestHead, size: int):
        self.method = method
        self.target = target
        self.head = head
        #: the list's size as RFC 7541 counts it (for --ingress-max-header-bytes)
        self.size = size
        #: a gRPC call (its answers must be gRPC answers)
        self.grpc = is_grpc(head)


def request_head(headers: list[Header], *, end_stream: bool) -> Http2Request:
    """The request of an HTTP/2 header list; HeadError (400, 417 ...) for one the proxy refuses.

    ``end_stream``: the HEADERS frame ended the stream (no body follows).
    """
    head = RequestHead()
    method = path = authority = scheme = None
    size = 0
    lines = head.lines
    fields = head.headers
    cookies: list[bytes] | None = None
    for name, value in headers:
        size += len(name) + len(value) + FIELD_OVERHEAD
        if name[:1] == b":":
            if name == _METHOD:
                method = value
            elif name == _PATH:
                path = value
            elif name == _AUTHORITY:
                authority = value
            elif name == _SCHEME:
                scheme = value
            else:
                raise HeadError(400, b"The request has an unknown pseudo-header field.")
        elif name == b"host":
            if authority is None:
                authority = value
            elif value != authority:
                raise HeadError(400, b"The request's Host differs from its :authority.")
        elif name in SPECIAL_REQUEST_FIELDS:
            # te: trailers (the one value the codec lets through) means nothing upstream.
            if name != b"te":
                head.special(name, value)
        elif name == b"cookie":
            if cookies is None:
                cookies = [value]
            else:
                cookies.append(value)
        else:
            lines.append(name + b": " + value + b"\r\n")
            if name in fields:
                value = fields[name] + b", " + value
            fields[name] = value
    if method is None:
        raise HeadError(400, b"The request has no :method.")
    if method == b"CONNECT":
        raise HeadError(400, b"CONNECT is not served by this proxy.")
    if path is None or scheme is None:
        raise HeadError(400, b"The request lacks :path or :scheme.")
    if authority is not None:
        head.host = fields[b"host"] = authority
    if cookies is not None:
        cookie = fields[b"cookie"] = b"; ".join(cookies)
        lines.append(b"cookie: " + cookie + b"\r\n")
    if not end_stream and head.content_length is None:
        head.transfer_encoding = b"chunked"  # a body of unknown length: chunked upstream
    return Http2Request(method, path, head, size)


def response_block(head: ResponseHead) -> bytes:
    """The header block of an upstream head for an HTTP/2 client; made once per head."""
    block = head.h2_block
    if block is None:
        block = head.h2_block = encode_block(
            [(b":status", b"%d" % head.status), *parse_lines(head.fields)]
        )
    return block


def upstream_fields(
    head: RequestHead, method: bytes, path: bytes, tls: bool, client_ip: bytes, forwarded: bytes
) -> list[Header]:
    """The request's fields for an HTTP/2 endpoint: what an HTTP/1.1 one gets, as HTTP/2 fields.

    The same forwarding fields as :meth:`RequestHead.upstream_head` (the
    client's own lines after them), ``:authority`` for Host, and ``te:
    trailers``, which gRPC servers ask for and which says that the proxy
    passes trailers on.
    """
    host = head.host or b""
    if head.request_id is None:
        head.request_id = new_request_id()
    xff = client_ip if head.xff is None else head.xff + b", " + client_ip
    fields = [
        (b":method", method),
        (b":scheme", b"https" if tls else b"http"),
        (b":authority", host),
        (b":path", path),
        (b"x-request-id", head.request_id),
        (b"x-forwarded-host", host),
        (b"x-forwarded-for", xff),
        *parse_lines(forwarded),
        (b"te", b"trailers"),
    ]
    if head.content_length is not None:
        fields.append((b"content-length", head.content_length))
    if head.lines:
        fields += parse_lines(b"".join(head.lines))
    return fields


def extra_block(extra: bytes) -> bytes:
    """The proxy's own response lines (``Name: value\\r\\n``) as an HTTP/2 header block.

    Most often one line (the X-Request-ID the upstream did not send): that
    case skips the general parse.
    """
    if extra.count(b"\r\n") == 1:
        name, _, value = extra[:-2].partition(b": ")
        if name == b"X-Request-ID":
            return _X_REQUEST_ID + string_literal(value)
        return encode_block([(name.lower(), value)])
    return encode_block(parse_lines(extra))


#: A literal field without indexing, named x-request-id (the value follows).
_X_REQUEST_ID = encode_block([(b"x-request-id", b"")])[:-1]


def parse_lines(lines: bytes) -> list[Header]:
    """``Name: value\\r\\n`` lines (a checked head's, or the proxy's own) as (name, value) pairs."""
    out = []
    for line in lines.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            out.append((name.strip().lower(), value.strip()))
    return out


# -- gRPC ---------------------------------------------------------------------------

#: gRPC status codes of the answers the proxy makes itself (grpc/doc/statuscodes.md).
GRPC_UNKNOWN = 2
GRPC_DEADLINE_EXCEEDED = 4
GRPC_PERMISSION_DENIED = 7
GRPC_RESOURCE_EXHAUSTED = 8
GRPC_UNIMPLEMENTED = 12
GRPC_INTERNAL = 13
GRPC_UNAVAILABLE = 14
GRPC_UNAUTHENTICATED = 16

#: HTTP status of a proxy-made answer -> the gRPC status a gRPC client gets instead. The
#: issue's four first (no route, no endpoint or upstream failure, timeout, body limit),
#: then gRPC's own HTTP-to-gRPC table (doc/http-grpc-status-mapping.md).
_GRPC_FOR_HTTP = {
    404: GRPC_UNIMPLEMENTED,
    502: GRPC_UNAVAILABLE,
    503: GRPC_UNAVAILABLE,
    504: GRPC_DEADLINE_EXCEEDED,
    408: GRPC_DEADLINE_EXCEEDED,
    413: GRPC_RESOURCE_EXHAUSTED,
    431: GRPC_RESOURCE_EXHAUSTED,
    400: GRPC_INTERNAL,
    401: GRPC_UNAUTHENTICATED,
    403: GRPC_PERMISSION_DENIED,
    429: GRPC_UNAVAILABLE,
}


def is_grpc(head: RequestHead) -> bool:
    """The request is a gRPC call (its answers must be gRPC answers)."""
    ctype = head.headers.get(b"content-type")
    return ctype is not None and ctype[:16].lower() == b"application/grpc"


def grpc_status(http_status: int) -> int:
    """The gRPC status for a proxy-made answer of ``http_status``."""
    return _GRPC_FOR_HTTP.get(http_status, GRPC_UNKNOWN)


#: grpc-timeout's units (PROTOCOL-HTTP2.md), in seconds.
_GRPC_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def grpc_timeout(value: bytes | None) -> float | None:
    """Seconds of a ``grpc-timeout`` value (``100m``: 0.1), or None when absent or not one."""
    if not value or len(value) > 9 or not value[:-1].isdigit():
        return None
    unit = _GRPC_UNITS.get(value[-1:])
    return None if unit is None else int(value[:-1]) * unit


def status_of(fields: list[Header]) -> int:
    """The ``grpc-status`` among ``fields`` (-1: none, or not a number)."""
    for name, value in fields:
        if name == b"grpc-status":
            return int(value) if value.isdigit() else -1
    return -1


def grpc_message(text: bytes) -> bytes:
    """``grpc-message``'s percent-encoding (gRPC's PROTOCOL-HTTP2.md): printable ASCII but %."""
    return b"".join(bytes((c,)) if 0x20 <= c <= 0x7E and c != 0x25 else b"%%%02X" % c for c in text)
