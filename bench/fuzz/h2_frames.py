"""HTTP/2 frames from a client, through the real Http2Connection and its codec (server side).

Input: the bytes after the connection preface (the target sends the
preface), cut into reads of a size from the first byte. The stub route
table of bench.fuzz.ingress_request answers every request (404 or 308).

Contract: ``receive`` never raises (a connection error becomes GOAWAY and
a close); what the connection writes is a sequence of whole frames
(9-byte heads whose lengths add up), starting with our SETTINGS.
"""

from __future__ import annotations

import asyncio
import sys

from netplane.ingress.h2_codec import PREFACE, SETTINGS
from netplane.ingress.http import HttpSettings, Listener
from netplane.ingress.http2 import Http2Connection
from netplane.ingress.upstream import Pool

from bench.fuzz._common import Transport, main, pieces
from bench.fuzz.ingress_request import StubRoutes

NAME = "h2_frames"
_LOOP = asyncio.new_event_loop()
_LISTENER = Listener(StubRoutes(), Pool(), HttpSettings(), https=False, port=80)


def check_frames(out: bytes) -> None:
    pos = 0
    while pos < len(out):
        if len(out) - pos < 9:
            raise AssertionError(f"a partial frame head at {pos}: {out[pos:]!r}")
        size = int.from_bytes(out[pos : pos + 3], "big")
        if pos == 0 and out[3] != SETTINGS:
            raise AssertionError(f"the first frame is of type {out[3]}, not SETTINGS")
        pos += 9 + size
    if pos != len(out):
        raise AssertionError("the last frame is cut short")


async def _drive(data: bytes) -> None:
    conn = Http2Connection(_LISTENER)
    transport = Transport()
    conn.connection_made(transport)
    cut = data[0] & 0x3F
    for chunk in pieces(PREFACE + data[1:], cut * 11 if cut else len(data) + 24):
        if transport.closed:
            break
        conn.receive(chunk)
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    check_frames(bytes(transport.out))
    if not conn.lost:
        conn.connection_lost(None)
    _LISTENER.conns.clear()


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    _LOOP.run_until_complete(_drive(data))


if __name__ == "__main__":
    main(NAME, TestOneInput, sys.argv)
