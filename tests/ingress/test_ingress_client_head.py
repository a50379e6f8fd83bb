"""The client protocol's inline copy of RequestHead.add gives what RequestHead.add gives.

``ClientConnection.on_header`` does RequestHead.add's work inline (a bench
gain, see its comment); both copies must keep the same rules. Each case
goes once through the real parser into a ClientConnection on a fake
transport, and once field by field through ``RequestHead.add``; the heads
sent upstream must be the same bytes, and the same fields refused.
"""

from __future__ import annotations

from typing import Any

import pytest
from netplane.ingress.http import ClientConnection, HttpSettings, Listener
from netplane.ingress.http_head import HeadError, RequestHead
from netplane.ingress.routes import Respond
from netplane.ingress.upstream import Pool


class Transport:
    def __init__(self) -> None:
        self.out = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class NoRoutes:
    def route(self, host: str, path: str, **_: Any) -> Any:
        return Respond(404, b"no route\n")


CASES = [
    [(b"Host", b"a.example")],
    [(b"HOST", b"a.example"), (b"User-Agent", b"curl/8"), (b"Accept", b"*/*")],
    [(b"Accept", b"a"), (b"Host", b"b"), (b"accept", b"c")],  # repeated: joined with ", "
    [(b"Host", b"h"), (b"Cookie", b"a=1"), (b"cookie", b"b=2")],  # cookies: with "; "
    [
        (b"Host", b"h"),
        (b"Content-Length", b"5"),
        (b"X-Forwarded-For", b"203.0.113.9"),
        (b"x-forwarded-for", b"198.51.100.7"),
        (b"X-Real-IP", b"6.6.6.6"),
        (b"X-Request-ID", b"abc"),
        (b"Connection", b"keep-alive, X-Secret"),
        (b"X-Secret", b"1"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Expect", b"100-continue"),
    ],
    [(b"X-Only", b"no host")],
]
REFUSED = [
    [(b"Host", b"a"), (b"Host", b"b")],  # 400: two Host fields
    [(b"Host", b"a"), (b"Expect", b"something-else")],  # 417
]


def by_add(fields: list[tuple[bytes, bytes]]) -> RequestHead:
    head = RequestHead()
    for name, value in fields:
        head.add(name, value)
    head.check()
    return head


def by_parser(fields: list[tuple[bytes, bytes]]) -> tuple[ClientConnection, Transport]:
    listener = Listener(NoRoutes(), Pool(), HttpSettings(), https=False, port=8080)
    conn = ClientConnection(listener)
    transport = Transport()
    conn.connection_made(transport)
    has_length = any(n.lower() == b"content-length" for n, _ in fields)
    raw = b"POST /p HTTP/1.1\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in fields)
    # A body still to come keeps the exchange as the one being read.
    raw += b"\r\n" if has_length else b"Content-Length: 5\r\n\r\n"
    conn.data_received(raw)
    return conn, transport


def upstream(head: RequestHead) -> bytes:
    head.request_id = head.request_id or b"fixed"
    return head.upstream_head(b"POST", b"/p", b"127.0.0.1", b"", False)


@pytest.mark.parametrize("fields", CASES)
def test_the_inline_copy_builds_the_same_upstream_head(fields):
    conn, _ = by_parser(fields)
    inline = conn.cur.head
    reference = by_add(
        fields
        if any(n.lower() == b"content-length" for n, _ in fields)
        else [*fields, (b"Content-Length", b"5")]
    )
    assert inline.headers == reference.headers
    assert inline.host == reference.host
    assert upstream(inline) == upstream(reference)


@pytest.mark.parametrize("fields", REFUSED)
def test_the_inline_copy_refuses_what_add_refuses(fields):
    with pytest.raises(HeadError) as e:
        by_add(fields)
    _, transport = by_parser(fields)
    assert transport.out.startswith(b"HTTP/1.1 %d " % e.value.status)
    assert transport.closed
