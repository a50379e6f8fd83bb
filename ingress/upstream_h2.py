"""HTTP/2 to endpoints (gRPC, h2c): one multiplexed connection per endpoint, a stream per exchange.

An exchange whose Forward asks for HTTP/2 (``backend-protocol: GRPC`` or
``GRPCS``, or a Service port whose ``appProtocol`` is ``kubernetes.io/h2c``
or ``grpc``) takes an :class:`H2Stream` from :class:`H2Pool` instead of an
HTTP/1.1 connection. The pool keeps the endpoint's connections and opens a
stream on one that has room under the endpoint's
SETTINGS_MAX_CONCURRENT_STREAMS, or opens another connection when none has.

An :class:`H2Stream` offers the exchange what an
:class:`~netplane.ingress.upstream.UpstreamConnection` does (pause and
resume reading, release, abort, the counters its timeouts read) and reports
the same events back: the response head (made into the same
:class:`~netplane.ingress.http_head.ResponseHead` an HTTP/1.1 endpoint's
head becomes), body bytes, trailers, the end, and a reset or a lost
connection. Flow control follows the client: while the client's side is
full, the stream's received bytes are not acknowledged, so the endpoint's
window shuts for that stream alone.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from time import monotonic
from typing import TYPE_CHECKING, Any

from netplane.ingress.h2_codec import CANCEL, H2Error, Header, Http2Codec, push_waiting
from netplane.ingress.http_head import HEADS, response_head
from netplane.ingress.upstream import endpoint_tls_context

from netplane.addresses import hostport
from netplane.l4.flow_control import HIGH_WATER

if TYPE_CHECKING:
    from netplane.ingress.exchange import Exchange

log = logging.getLogger("netplane.ingress")

PoolKey = tuple[str, int, bool]  # (ip, port, TLS)
#: Each stream's receive window towards an endpoint, and the connection's.
STREAM_WINDOW = 256 * 1024
CONNECTION_WINDOW = 4 * 1024 * 1024


class H2Stream:
    """One request on an :class:`H2Connection`: the ``upstream`` of its exchange."""

    __slots__ = (
        "backlogged", "backlogged_since", "body_bytes", "conn", "exchange", "held", "id", "key",
        "last_active", "lost", "out", "out_size", "paused", "requests", "responding",
        "trailers",
    )  # fmt: skip

    def __init__(self, conn: H2Connection) -> None:
        self.conn = conn
        self.key = conn.key
        self.id = 0
        self.exchange: Exchange | None = None
        self.body_bytes = 0
        self.last_active = 0.0
        #: streams opened on its connection before it (more than one: a reused connection)
        self.requests = conn.opened
        self.responding = False
        self.lost = False
        self.backlogged = False
        self.backlogged_since = 0.0
        self.out: list[bytes] = []  # request body bytes waiting for the window
        self.out_size = 0
        self.trailers: bytes | None = None  # the request's end, once ``out`` is sent
        self.paused = False  # the client is full: received bytes are not acknowledged
        self.held = 0

    # -- what the exchange calls ------------------------------------------------------

    def send(
        self, ex: Exchange, block: bytes, body: list[bytes] | None, end: bytes | None, now: float
    ) -> None:
        """Open the stream with request head ``block``, then ``body``.

        ``end``: None while the request goes on; else it is whole, with this
        trailer block (b"": none).
        """
        self.exchange = ex
        self.last_active = now
        conn = self.conn
        self.id = conn.codec.open_stream(block, end == b"" and not body)
        conn.streams[self.id] = self
        if body:
            for piece in body:
                self.write(piece)
        if end is not None and (body or end):
            self.end(end)
        conn.flush()

    def write(self, data: bytes) -> None:
        """Request body bytes (sent within the stream's window, the rest waits)."""
        if data:
            self.out.append(data)
            self.out_size += len(data)
            self.push()
            self.conn.flush()

    def end(self, trailers: bytes) -> None:
        """The request is whole; ``trailers``: its trailer block (b"": none)."""
        self.trailers = trailers
        self.push()
        self.conn.flush()

    def push(self) -> None:
        codec = self.conn.codec
        out = self.out
        sid = self.id
        if self.lost or sid not in codec.streams:
            return
        while out:
            room = codec.window(sid)
            if room <= 0:
                break
            chunk = out[0]
            if len(chunk) <= room:
                out.pop(0)
                self.out_size -= len(chunk)
                last = not out and self.trailers == b""
                codec.send_data(sid, chunk, last)
                if last:
                    self.trailers = None
            else:
                codec.send_data(sid, chunk[:room], False)
                out[0] = chunk[room:]
                self.out_size -= room
        if not out and self.trailers is not None:
            if self.trailers:
                codec.send_headers(sid, self.trailers, True)
            else:
                codec.send_data(sid, b"", True)
            self.trailers = None
        ex = self.exchange
        backlogged = self.out_size > HIGH_WATER
        if backlogged != self.backlogged and ex is not None:
            self.backlogged = backlogged
            if backlogged:
                self.backlogged_since = monotonic()
                ex.pause_client()
            else:
                ex.resume_client()

    def pause_reading(self) -> None:
        """The client's buffer is full: stop acknowledging the response's bytes."""
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
        if self.held:
            held, self.held = self.held, 0
            self.conn.codec.ack(self.id, held)
            self.conn.flush()

    def release(self, reusable: bool = True) -> None:
        """The exchange is over (the stream ended both ways, or is reset now)."""
        ex, self.exchange = self.exchange, None
        if ex is not None and self.backlogged:
            self.backlogged = False
            ex.resume_client()
        conn = self.conn
        conn.streams.pop(self.id, None)
        if self.id in conn.codec.streams:
            # Not ended both ways (the response came before the whole request, or the
            # exchange gave up on it): the rest is not wanted.
            conn.codec.reset(self.id, CANCEL)
            conn.flush()
        conn.pool.stream_done(conn)

    def abort(self) -> None:
        """Cancel the stream (the client went away or the response cannot be passed on)."""
        self.exchange = None
        self.lost = True
        self.release(False)

    close = abort

    # -- what the connection reports ---------------------------------------------------

    def on_response(self, headers: list[Header], end: bool, malformed: str | None) -> None:
        ex = self.exchange
        if ex is None:
            return
        self.responding = True
        self.last_active = monotonic()
        if malformed is not None:
            self.exchange = None
            ex.upstream_failed(self, b"The upstream sent a malformed response head.")
            return
        status = b""
        lines = []
        for name, value in headers:
            if name == b":status":
                status = value
            else:
                lines.append(b"%s: %s\r\n" % (name, value))
        raw = b"HTTP/1.1 %s \r\n%s" % (status, b"".join(lines))
        try:
            head = HEADS.get(raw) or response_head(raw)
        except (ValueError, IndexError):
            self.exchange = None
            ex.upstream_failed(self, b"The upstream sent a malformed response head.")
            return
        if ex.response_head(self, head) or end:
            ex.response_end(self)

    def on_data(self, data: bytes, size: int, end: bool) -> None:
        ex = self.exchange
        if ex is not None and data:
            self.last_active = monotonic()
            self.body_bytes += len(data)
            ex.client.write_body(data)
        if self.paused:
            self.held += size
        else:
            self.conn.codec.ack(self.id, size)
        if ex is not None:
            ex.flush()
            if end and self.exchange is ex:
                ex.response_end(self)

    def on_trailers(self, headers: list[Header]) -> None:
        ex = self.exchange
        if ex is None:
            return
        ex.client.write_trailers(ex, [(n, v) for n, v in headers if n[:1] != b":"])
        ex.response_end(self)

    def on_reset(self, code: int) -> None:
        ex, self.exchange = self.exchange, None
        self.lost = True
        self.conn.streams.pop(self.id, None)
        if ex is not None:
            ex.upstream_failed(self, b"The upstream reset the stream (HTTP/2 error %d)." % code)

    def on_lost(self) -> None:
        ex, self.exchange = self.exchange, None
        self.lost = True
        if ex is not None:
            ex.upstream_lost(self)


class H2Connection(asyncio.Protocol):
    """One HTTP/2 connection to an endpoint, carrying up to its limit of streams."""

    def __init__(self, pool: H2Pool, key: PoolKey) -> None:
        self.pool = pool
        self.key = key
        self.codec = Http2Codec(
            self, client=True, stream_window=STREAM_WINDOW, connection_window=CONNECTION_WINDOW
        )
        self.transport: Any = None
        self._flush_due = False
        self.streams: dict[int, H2Stream] = {}
        self.opened = 0
        self.lost = False
        self.last_active = monotonic()
        #: done once the endpoint's first SETTINGS came (its stream limit is known)
        self.settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.flush()

    def data_received(self, data: bytes) -> None:
        self.last_active = monotonic()
        try:
            self.codec.receive(data)
        except H2Error as e:
            log.info("ingress: HTTP/2 endpoint %s: %s", hostport(*self.key[:2]), e)
            self.flush_now()
            self.transport.close()
            self.connection_lost(None)
            return
        if self.codec.peer_settings and not self.settled.done():
            self.settled.set_result(None)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost:
            return
        self.lost = True
        if not self.settled.done():
            self.settled.set_exception(ConnectionError("the endpoint closed the connection"))
            self.settled.exception()  # (retrieved: whoever waits sees it; nobody else must)
        self.pool.discard(self)
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            stream.on_lost()

    def flush(self) -> None:
        """Write what the codec has queued once the loop has run this turn's callbacks.

        A call's head, body and end, and the streams of every call started in
        one turn, go out in one ``write`` instead of one each.
        """
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self.flush_now)

    def flush_now(self) -> None:
        self._flush_due = False
        data = self.codec.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def has_room(self) -> bool:
        return not self.lost and self.codec.can_open() and not self.transport.is_closing()

    def stream(self) -> H2Stream:
        self.opened += 1
        return H2Stream(self)

    # -- the codec's reports ------------------------------------------------------------

    def on_response(
        self, sid: int, headers: list[Header], end: bool, malformed: str | None
    ) -> None:
        stream = self.streams.get(sid)
        if stream is not None:
            if end:
                self.streams.pop(sid, None)
            stream.on_response(headers, end, malformed)

    def on_data(self, sid: int, data: bytes, size: int, end: bool) -> None:
        stream = self.streams.get(sid)
        if stream is None:
            self.codec.ack(sid, size)
            return
        if end:
            self.streams.pop(sid, None)
        stream.on_data(data, size, end)

    def on_trailers(self, sid: int, headers: list[Header], malformed: str | None) -> None:
        stream = self.streams.pop(sid, None)
        if stream is not None:
            stream.on_trailers(headers)

    def on_reset(self, sid: int, code: int) -> None:
        stream = self.streams.pop(sid, None)
        if stream is not None:
            stream.on_reset(code)

    def on_window(self, sid: int) -> None:
        push_waiting(self.streams, sid)

    def on_goaway(self, last_stream: int, code: int) -> None:
        # No new streams here; those above last_stream were not processed: lost (and
        # retried by their exchange when that is safe).
        self.pool.discard(self)
        for sid in [s for s in self.streams if s > last_stream]:
            self.streams.pop(sid).on_lost()
        if not self.streams:
            self.transport.close()

    def on_request(self, *args: Any) -> None:  # (a server's report; a client never gets it)
        raise AssertionError("a client-side codec reported a request")


class H2Pool:
    """The HTTP/2 connections to each endpoint; a new one only when the others are full."""

    def __init__(self, *, idle_timeout: float = 60.0) -> None:
        self.conns: dict[PoolKey, list[H2Connection]] = {}
        #: a connection being opened, per endpoint: other exchanges wait for it
        self.opening: dict[PoolKey, asyncio.Future[None]] = {}
        self.idle_timeout = idle_timeout
        self._tls: ssl.SSLContext | None = None
        self.opened = 0
        self.reused = 0

    def take(self, key: PoolKey) -> H2Stream | None:
        """A stream on an open connection to ``key`` with room, if any."""
        for conn in self.conns.get(key, ()):
            if conn.has_room():
                self.reused += 1
                return conn.stream()
        return None

    async def connect(self, key: PoolKey, timeout: float) -> H2Stream:
        """A stream on a connection to ``key`` that had no room a moment ago.

        While one connection to an endpoint is being opened, other exchanges
        wait for it (and its SETTINGS) rather than open their own, so a burst
        of requests opens only the connections the endpoint's stream limit
        asks for. OSError or TimeoutError when there is none.
        """
        ip, port, tls = key
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while (opening := self.opening.get(key)) is not None:
                await asyncio.shield(opening)
                stream = self.take(key)
                if stream is not None:
                    return stream
            done = self.opening[key] = loop.create_future()
            conn: H2Connection | None = None
            try:
                _, conn = await loop.create_connection(
                    lambda: H2Connection(self, key), ip, port,
                    ssl=self._tls_context() if tls else None, server_hostname="" if tls else None,
                )  # fmt: skip
                if tls:
                    ssl_object = conn.transport.get_extra_info("ssl_object")
                    if ssl_object is not None and ssl_object.selected_alpn_protocol() != "h2":
                        raise OSError("the endpoint did not agree to HTTP/2 (ALPN)")
                await conn.settled
                self.opened += 1
                self.conns.setdefault(key, []).append(conn)
                return conn.stream()
            except BaseException:
                if conn is not None:
                    conn.transport.close()
                raise
            finally:
                # The waiters run after this exchange has opened its stream.
                del self.opening[key]
                done.set_result(None)

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = endpoint_tls_context("h2")
        return self._tls

    def stream_done(self, conn: H2Connection) -> None:
        conn.last_active = monotonic()

    def discard(self, conn: H2Connection) -> None:
        conns = self.conns.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)
            if not conns:
                del self.conns[conn.key]

    def sweep(self, now: float) -> None:
        """Close connections with no stream for longer than ``idle_timeout``."""
        limit = now - self.idle_timeout
        for conns in list(self.conns.values()):
            for conn in list(conns):
                if not conn.streams and conn.last_active < limit:
                    self.discard(conn)
                    conn.transport.close()

    def close(self) -> None:
        for conns in list(self.conns.values()):
            for conn in list(conns):
                conn.transport.close()
        self.conns.clear()

    def count(self) -> int:
        return sum(len(v) for v in self.conns.values())
