"""The server side of a test backend's HTTP/1.1 connection: requests parsed by h11.

A test backend reads requests with :func:`read_request`, and answers as the
test needs: most write a plain response, some write a deliberately odd one
(a partial chunked body, a ``103`` before the ``200``, a ``101`` and then raw
bytes), which is what the proxy under test must cope with. So h11 parses each
request here, headers and body, with a fresh ``h11.Connection`` per request,
and the response side is left to the backend.

Whatever h11 has received beyond one request (the next pipelined request, or
the bytes after an ``Upgrade`` request) goes back to the connection's
:class:`Stream`, which a backend also reads from directly: after a ``101``,
or when it reads a request's body itself (``body=False``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import h11

__all__ = ["Request", "Stream", "body_data", "read_body", "read_request"]

READ_SIZE = 65536
MAX_HEAD = 1024 * 1024  # h11's default (16 KiB) is less than some tests send on purpose


class Stream:
    """An :class:`asyncio.StreamReader` with bytes pushed back in front of it.

    ``read``, ``readexactly`` and ``readuntil`` behave as the StreamReader's
    do (EOF: ``b""`` or :class:`asyncio.IncompleteReadError`).
    """

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._buf = bytearray()

    def unread(self, data: bytes) -> None:
        """Put ``data`` back: the next read returns it first."""
        self._buf[:0] = data

    async def read(self, n: int = -1) -> bytes:
        if n < 0:
            rest = await self._reader.read()
            data, self._buf = bytes(self._buf) + rest, bytearray()
            return data
        if self._buf:
            data = bytes(self._buf[:n])
            del self._buf[:n]
            return data
        return await self._reader.read(n)

    async def readexactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = await self._reader.read(max(n - len(self._buf), READ_SIZE))
            if not chunk:
                partial, self._buf = bytes(self._buf), bytearray()
                raise asyncio.IncompleteReadError(partial, n)
            self._buf += chunk
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        while (at := self._buf.find(separator)) < 0:
            chunk = await self._reader.read(READ_SIZE)
            if not chunk:
                partial, self._buf = bytes(self._buf), bytearray()
                raise asyncio.IncompleteReadError(partial, None)
            self._buf += chunk
        end = at + len(separator)
        data = bytes(self._buf[:end])
        del self._buf[:end]
        return data


@dataclass
class Request:
    """One request as a backend got it.

    ``header_list`` holds every header line in order (names lower-cased, as
    h11 gives them); ``headers`` maps each name to its value, repeated
    headers joined with ``", "`` (RFC 9110, 5.3), so none is lost.
    ``body`` is empty when the backend reads the body itself (``body=False``).
    """

    method: bytes
    target: bytes
    http_version: bytes
    header_list: list[tuple[bytes, bytes]]
    body: bytes = b""
    parser: h11.Connection | None = None  # while the body is still to read

    @property
    def headers(self) -> dict[bytes, bytes]:
        out: dict[bytes, bytes] = {}
        for name, value in self.header_list:
            out[name] = out[name] + b", " + value if name in out else value
        return out

    @property
    def head(self) -> bytes:
        """The request line and headers, re-serialized (names lower-cased)."""
        lines = [b"%s %s HTTP/%s" % (self.method, self.target, self.http_version)]
        lines += [b"%s: %s" % item for item in self.header_list]
        return b"\r\n".join(lines) + b"\r\n\r\n"

    @property
    def keep_alive(self) -> bool:
        """Whether the client lets the connection stay open after this exchange."""
        tokens = {t.strip().lower() for t in self.headers.get(b"connection", b"").split(b",")}
        if self.http_version == b"1.0":
            return b"keep-alive" in tokens
        return b"close" not in tokens


async def _next_event(parser: h11.Connection, stream: Stream) -> object:
    while (event := parser.next_event()) is h11.NEED_DATA:
        parser.receive_data(await stream.read(READ_SIZE))  # b"": the peer closed
    return event


async def read_request(stream: Stream, *, body: bool = True) -> Request | None:
    """The next request on ``stream``, its body read too unless ``body=False``.

    None when the client closed the connection between requests. A request h11
    rejects, or one cut short, raises :class:`h11.RemoteProtocolError`. With
    ``body=False`` the backend reads the body (or not) with :func:`body_data`
    or :func:`read_body`; h11 still frames it.
    """
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    event = await _next_event(parser, stream)
    if isinstance(event, h11.ConnectionClosed):
        return None
    assert isinstance(event, h11.Request), event
    req = Request(
        event.method, event.target, event.http_version, list(event.headers), parser=parser
    )
    if body:
        req.body = await read_body(req, stream)
    return req


async def body_data(req: Request, stream: Stream) -> AsyncIterator[h11.Data]:
    """The rest of ``req``'s body as h11 frames it, one ``h11.Data`` per piece.

    Each chunk of a chunked body ends with a piece whose ``chunk_end`` is set,
    for a backend that checks the chunking a proxy kept. Once the body is
    done, what h11 received beyond it (the next pipelined request, or the
    bytes after an ``Upgrade`` request) goes back to ``stream``.
    """
    parser, req.parser = req.parser, None
    if parser is None:  # read already
        return
    while True:
        event = await _next_event(parser, stream)
        if isinstance(event, h11.Data):
            yield event
        elif isinstance(event, h11.EndOfMessage):
            break
        else:
            raise h11.RemoteProtocolError(f"unexpected {event!r} in a request body")
    stream.unread(parser.trailing_data[0])


async def read_body(req: Request, stream: Stream) -> bytes:
    """The rest of ``req``'s body, whole (see :func:`body_data`)."""
    return b"".join([event.data async for event in body_data(req, stream)])
