"""Upstream response heads and bodies, through the real proxy path.

A real ClientConnection (fake transport) sends one request that the stub
route table forwards; a pooled UpstreamConnection (fake transport) takes
it, and the input is what the endpoint answers: one control byte (the
request: GET, HEAD, HTTP/1.0, an upgrade; how the answer is cut into
reads; whether the endpoint closes at the end), then the response bytes.
These go through httptools and :func:`netplane.ingress.http_head.response_head`
as in the daemon.

Contract: nothing raises out of the protocols; what the client gets is
well-formed HTTP/1.1 (a 502 for a malformed answer), and whole responses
once the endpoint's connection ended while the client's stays open,
except after a HEAD (length without a body) or a 101 (a tunnel); every
:class:`ResponseHead` with a status from 100 up gives a client head (in its
own framing) that httptools reads back.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import httptools
from netplane.ingress import http_head
from netplane.ingress.http import ClientConnection, HttpSettings, Listener
from netplane.ingress.routes import Forward, ProxyOptions
from netplane.ingress.upstream import Pool, UpstreamConnection

from bench.fuzz._common import Transport, main, pieces
from bench.fuzz.ingress_request import check_responses
from netplane.model import ObjectKey

NAME = "ingress_response"
TARGET = ("127.0.0.1", 8081)
REQUESTS = (
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
)


class OneRoute:
    def __init__(self) -> None:
        self.decision = Forward(
            ObjectKey("Ingress", "fuzz", "one"), ("fuzz", "web"), (TARGET,), "/", False,
            ProxyOptions(), host="a",
        )  # fmt: skip

    def route(self, host: str, path: str, **_: Any) -> Any:
        return self.decision


_LOOP = asyncio.new_event_loop()


def check_head(head: http_head.ResponseHead) -> None:
    if head.status < 100 or head.status == 101:
        return  # refused by the connection (a 502); a tunnel follows, httptools stops there
    for framing in {head.body_framing, http_head.NO_BODY}:
        out = head.client_head(framing, True, False, b"")
        parser = httptools.HttpResponseParser(object())
        try:
            parser.feed_data(out)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError as e:
            raise AssertionError(f"client head not HTTP ({e}): {out!r}") from None


async def _drive(data: bytes) -> None:
    ctrl, answer = data[0], data[1:]
    pool = Pool()
    listener = Listener(OneRoute(), pool, HttpSettings(h2c=False), https=False, port=80)
    client = ClientConnection(listener)
    ctr = Transport()
    client.connection_made(ctr)
    up = UpstreamConnection(pool, (*TARGET, False))
    utr = Transport(TARGET)
    up.connection_made(utr)
    up.keep_alive = True
    up.release()
    request = REQUESTS[ctrl & 3]
    client.data_received(request)
    await asyncio.sleep(0)  # the pool writes the held request head
    if not utr.out.startswith(request.split(b" ", 1)[0]):
        raise AssertionError(f"the request did not go upstream: {bytes(utr.out[:60])!r}")
    cut = (ctrl >> 2) & 0x1F
    for chunk in pieces(answer, cut * 5 if cut else len(answer)):
        if utr.closed:
            break
        up.data_received(chunk)
        await asyncio.sleep(0)
    if ctrl & 0x80 and not utr.closed:
        up.eof_received()
        up.connection_lost(None)
        await asyncio.sleep(0)
    if ctrl & 3 in (0, 2) and client.tunnel is None:
        # A response may be under way while the endpoint is still there; one cut
        # short closes the client's connection too. An endpoint gone with the
        # client still open must have left it whole responses.
        ended = bool(ctrl & 0x80) or utr.closed
        check_responses(bytes(ctr.out), ctr.closed, partial_ok=ctr.closed or not ended)
    client.connection_lost(None)


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    http_head.HEADS.clear()  # check only the heads this input made (not other callers')
    _LOOP.run_until_complete(_drive(data))
    for _raw, head in list(http_head.HEADS.items()):
        check_head(head)
    http_head.HEADS.clear()


if __name__ == "__main__":
    main(NAME, TestOneInput, sys.argv)
