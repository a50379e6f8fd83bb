"""The ingress's HTTP/1.1 request parsing and body framing, through the real ClientConnection.

Input: one control byte (how the rest is cut into reads; HTTPS or not; an
EOF and connection loss at the end), then the bytes a client sends. The
route table is a stub that answers 404, or a 308 redirect for paths under
``/r``, so no upstream is involved (bench.fuzz.ingress_response covers
that side).

Contract: ``data_received`` never raises; what the connection writes is a
sequence of whole, well-formed HTTP/1.1 responses (httptools reads them
with nothing left over; skipped for inputs with a HEAD request, whose
responses carry a length but no body); a connection that refused a
request (its parser gone) is closed.
"""

from __future__ import annotations

import sys
from typing import Any

import httptools
from netplane.ingress.http import ClientConnection, HttpSettings, Listener
from netplane.ingress.routes import Redirect, Respond
from netplane.ingress.upstream import Pool

from bench.fuzz._common import Transport, main, pieces

NAME = "ingress_request"


class StubRoutes:
    def route(self, host: str, path: str, **_: Any) -> Any:
        if path.startswith("/r"):
            return Redirect(308, b"https://" + host.encode("latin-1", "replace") + b"/")
        return Respond(404, b"no route\n")


_PLAIN = Listener(StubRoutes(), Pool(), HttpSettings(h2c=False), https=False, port=80)
_TLS = Listener(StubRoutes(), Pool(), HttpSettings(h2c=False), https=True, port=443)


class _Responses:
    """httptools callbacks: counts whole responses, notes the framing of the last."""

    def __init__(self) -> None:
        self.complete = 0
        self.started = 0
        self.framed = False

    def on_message_begin(self) -> None:
        self.started += 1
        self.framed = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_message_complete(self) -> None:
        self.complete += 1


def check_responses(out: bytes, closed: bool = False, partial_ok: bool = False) -> None:
    """``out`` is whole HTTP/1.1 responses, one after the other.

    ``closed``: the connection closed after them, which ends a body without a
    length (the last response's). ``partial_ok``: the last may still be under way.
    """
    if not out:
        return
    if not out.startswith(b"HTTP/1.1 "):
        raise AssertionError(f"output does not start with a status line: {out[:40]!r}")
    seen = _Responses()
    parser = httptools.HttpResponseParser(seen)
    try:
        parser.feed_data(out)
    except httptools.HttpParserUpgrade:
        return  # 101: the rest is a tunnel
    except httptools.HttpParserError as e:
        raise AssertionError(f"malformed response bytes ({e}): {out[:200]!r}") from None
    until_close = closed and seen.started == seen.complete + 1 and not seen.framed
    if seen.started != seen.complete and not until_close and not partial_ok:
        raise AssertionError(f"a partial response at the end: {out[-200:]!r}")


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    ctrl, body = data[0], data[1:]
    listener = _TLS if ctrl & 0x40 else _PLAIN
    conn = ClientConnection(listener)
    transport = Transport()
    conn.connection_made(transport)
    cut = ctrl & 0x3F
    for chunk in pieces(body, cut * 7 if cut else len(body)):
        if transport.closed:
            break
        conn.data_received(chunk)
    # Refused (a 4xx, then close) or finished with Connection: close: closed.
    gone = conn.parser is None and not conn.upgrading and conn.tunnel is None
    if gone and conn.active is None and not conn.queue and not transport.closed:
        raise AssertionError("the parser is gone but the connection stays open")
    if b"HEAD" not in body:
        check_responses(bytes(transport.out), transport.closed)
    if ctrl & 0x80:
        conn.eof_received()
    conn.connection_lost(None)
    listener.conns.clear()


if __name__ == "__main__":
    main(NAME, TestOneInput, sys.argv)
