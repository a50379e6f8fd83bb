"""Upstream connections: one HTTP/1.1 response parser per connection, and idle pools.

An :class:`UpstreamConnection` carries one request at a time for the client
connection that holds it (no upstream pipelining: a failure then always
belongs to one request). It parses the response with httptools and hands
each event to the exchange it is bound to
(:class:`netplane.ingress.exchange.Exchange`), which passes it to its client.

:class:`Pool` keeps idle keep-alive connections per endpoint ``(ip, port,
tls)``: at most ``max_idle`` each (320, ingress-nginx's
upstream-keepalive-connections) (the oldest goes first), each closed
after ``idle_timeout`` seconds unused, and dropped at once when the
endpoint closes it. A connection comes back to the pool only when its
response was complete, its request was fully written and both sides
wanted keep-alive.

Request heads are not written the moment they are ready: the pool holds
them until the loop has run every callback of the current turn
(:meth:`UpstreamConnection.send`) and then writes them all. On a loaded proxy whose
endpoints share its CPU this cut the proxy's CPU per request by about a
seventh (each write would otherwise wake an endpoint that preempts the
proxy, once per request instead of once per batch). Later writes to the
same connection (body bytes) queue behind the held head.
"""

from __future__ import annotations

import asyncio
import ssl
from time import monotonic
from typing import TYPE_CHECKING, Any

import httptools
from netplane.ingress.http_head import HEADS, response_head

from netplane.l4.flow_control import PEER_BACKLOG, FlowControl

if TYPE_CHECKING:
    from netplane.ingress.exchange import ClientSide, Exchange

PoolKey = tuple[str, int, bool]  # (ip, port, upstream TLS)
#: A response head larger than this is refused (502), as nginx refuses one
#: that overflows its proxy_buffer_size.
MAX_RESPONSE_HEAD = 64 * 1024


class UpstreamConnection(asyncio.Protocol):
    """One connection to an endpoint, bound to at most one exchange at a time."""

    __slots__ = (
        "backlogged",
        "backlogged_since",
        "body_bytes",
        "exchange",
        "flow",
        "hbuf",
        "in_pool",
        "informational",
        "keep_alive",
        "key",
        "last_active",
        "lost",
        "out",
        "parser",
        "peer",
        "pool",
        "requests",
        "responding",
        "stale_parser",
        "status",
        "transport",
    )

    def __init__(self, pool: Pool, key: PoolKey) -> None:
        self.pool = pool
        self.key = key
        self.transport: Any = None
        self.flow: Any = None
        self.parser = httptools.HttpResponseParser(self)
        #: the exchange whose request this connection carries (None: idle)
        self.exchange: Exchange | None = None
        #: the client connection this one is tunnelled to, after a 101
        self.peer: ClientSide | None = None
        #: the bytes of the current response from its start, while its head is incomplete
        self.hbuf: bytes | None = None
        self.status = 0
        #: body bytes of the current response passed to its exchange's client
        self.body_bytes = 0
        self.keep_alive = False
        #: requests sent on this connection so far (more than one: it was reused)
        self.requests = 0
        #: a byte of the current response has arrived
        self.responding = False
        self.informational = False
        self.stale_parser = False
        self.in_pool = False
        self.lost = False
        #: our write buffer is above its high-water mark (the client's reading is held)
        self.backlogged = False
        self.backlogged_since = 0.0
        self.last_active = 0.0
        #: bytes held back until the pool's end-of-batch flush (None: none held)
        self.out: list[bytes] | None = None

    # -- asyncio -------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.flow = FlowControl(transport)
        transport.set_write_buffer_limits(high=65536)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None:
            peer.write(data)
            return
        if self.exchange is None:  # an idle connection spoke out of turn: it cannot be reused
            self.transport.close()
            return
        self.responding = True
        self.last_active = monotonic()
        hbuf = self.hbuf
        if hbuf is not None:  # the head is taken from these bytes once the parser accepts it
            self.hbuf = hbuf + data if hbuf else data
        try:
            self.parser.feed_data(data)
            ex = self.exchange
            if ex is not None:  # the response goes on: what this read gave goes out now
                ex.flush()
            if self.hbuf is not None and len(self.hbuf) > MAX_RESPONSE_HEAD:
                self._broken(b"The upstream's response head is too large.")
        except httptools.HttpParserUpgrade as e:
            ex = self.exchange
            if self.status == 101 and ex is not None:
                self.exchange = None
                ex.switched(self, data[e.args[0] :])
            else:
                self._broken()
        except httptools.HttpParserError:
            self._broken()

    def _broken(self, message: bytes = b"The upstream sent a malformed response.") -> None:
        ex, self.exchange = self.exchange, None
        self.hbuf = None
        self.transport.abort()
        if ex is not None:
            ex.upstream_failed(self, message)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.flow is not None:
            self.flow.finish()
        if self.in_pool:
            self.pool.discard(self)
            return
        peer, self.peer = self.peer, None
        if peer is not None:  # the tunnel's far end closed: so does its near end
            peer.close()
            return
        ex, self.exchange = self.exchange, None
        if ex is not None:
            ex.upstream_lost(self)

    def pause_writing(self) -> None:
        ex = self.exchange
        if ex is not None:
            self.backlogged = True
            self.backlogged_since = monotonic()  # proxy-send-timeout runs from here
            ex.pause_client()
        elif self.peer is not None:  # a tunnel: hold the client's side of it
            self.peer.pause_reading(PEER_BACKLOG)

    def resume_writing(self) -> None:
        ex = self.exchange
        if ex is not None and self.backlogged:
            self.backlogged = False
            ex.resume_client()
        elif self.peer is not None:
            self.peer.resume_reading(PEER_BACKLOG)

    # -- one exchange ----------------------------------------------------------

    def send(self, ex: Exchange, data: bytes, now: float) -> None:
        """Bind to ``ex`` and write its request head (and any body already read).

        ``now`` is the monotonic time (the client's last read, when that is now).
        """
        if self.stale_parser:
            self.parser = httptools.HttpResponseParser(self)
            self.stale_parser = False
        self.exchange = ex
        self.hbuf = b""
        self.status = 0
        self.body_bytes = 0
        self.responding = False
        self.requests += 1
        self.last_active = now
        self.out = [data]
        # Held until the loop has run every callback now ready: the requests
        # read in one turn of the loop then reach their endpoints together,
        # and an endpoint on the same CPU is woken once for the batch instead
        # of taking the CPU from the proxy for each.
        held = self.pool._held
        held.append(self)
        if len(held) == 1:
            asyncio.get_running_loop().call_soon(self.pool._write_held)

    def write(self, data: bytes) -> None:
        """Write to the endpoint, after whatever :meth:`send` still holds back."""
        out = self.out
        if out is not None:
            out.append(data)
        else:
            self.transport.write(data)

    def pause_reading(self) -> None:
        """The client's write buffer is full: stop reading the response."""
        self.flow.pause_writing()

    def resume_reading(self) -> None:
        self.flow.resume_writing()

    def tunnel_to(self, peer: ClientSide) -> None:
        """After a 101: every byte read from now on goes to ``peer`` as it is."""
        self.peer = peer

    def release(self, reusable: bool = True) -> None:
        """The exchange is over: back to the pool when reusable, else closed."""
        ex, self.exchange = self.exchange, None
        if ex is not None:
            client = ex.client
            if self.backlogged:  # our write backlog no longer holds that client's reading
                self.backlogged = False
                client.resume_reading(PEER_BACKLOG)
            if client.write_paused:  # nor does that client's backlog hold our reading
                self.flow.resume_writing()
        if reusable and self.keep_alive and not self.lost and not self.transport.is_closing():
            # Into the pool's idle list here, the one place a connection comes back
            # (no call to a Pool method: this runs once per request).
            pool = self.pool
            idle = pool.idle.get(self.key)
            if idle is None:
                idle = pool.idle[self.key] = []
            elif len(idle) >= pool.max_idle:
                oldest = idle.pop(0)
                oldest.in_pool = False
                oldest.transport.close()
            self.in_pool = True  # last_active: its last read, the end of the response
            idle.append(self)
        else:
            self.transport.close()

    def close(self) -> None:
        """Close the connection (unused, or a tunnel whose client went away)."""
        self.transport.close()

    def abort(self) -> None:
        """Drop the connection mid-exchange (the client went away or timed out)."""
        self.exchange = None
        if self.transport is not None:
            self.transport.abort()

    # -- httptools callbacks -------------------------------------------------

    def on_headers_complete(self) -> None:
        buf: bytes = self.hbuf  # type: ignore[assignment]  # send() set it (b""), data_received grew it
        end = buf.find(b"\r\n\r\n")  # the parser has just read it: the head ends there
        if end > MAX_RESPONSE_HEAD:  # all in one read (a head in parts is checked per read)
            self._broken(b"The upstream's response head is too large.")
            return
        raw = buf[: end + 2]
        head = HEADS.get(raw) or response_head(raw)
        status = head.status
        if status < 100:  # httptools takes any 3 digits ("050"); no client takes status 50
            self._broken()
            return
        if 100 <= status < 200 and status != 101:
            # 1xx interim answers (RFC 9110 §15.2) are not passed on: the proxy
            # answers Expect itself. Their end is the parser's message end;
            # the next head starts after theirs. One with a length or chunked
            # framing is malformed (no 1xx has a body, §8.6): httptools would read
            # a body, and the next head would be looked for inside it.
            if head.has_length or head.chunked:
                self._broken()
                return
            self.informational = True
            self.hbuf = buf[end + 4 :]
            return
        self.hbuf = None
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        ex = self.exchange
        if ex is not None and ex.response_head(self, head):
            # HEAD: the parser would wait for the body the length announces.
            self.stale_parser = True
            ex.response_end(self)

    def on_body(self, body: bytes) -> None:
        ex = self.exchange
        if ex is not None and not self.informational:  # (a 1xx's body is dropped with its head)
            # framed by the client, written with the rest of this read
            self.body_bytes += len(body)
            ex.client.write_body(body)

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        if self.status == 101 or self.stale_parser:
            return
        ex = self.exchange
        if ex is not None:
            ex.response_end(self)


class Pool:
    """Idle keep-alive connections per endpoint, bounded in count and idle time."""

    def __init__(self, *, max_idle: int = 320, idle_timeout: float = 60.0) -> None:
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        #: idle connections per endpoint, the most recently used last
        self.idle: dict[PoolKey, list[UpstreamConnection]] = {}
        self._tls: ssl.SSLContext | None = None
        self.opened = 0
        self.reused = 0
        self._held: list[UpstreamConnection] = []

    def take(self, key: PoolKey) -> UpstreamConnection | None:
        """The most recently used idle connection to ``key`` that is still open, if any."""
        idle = self.idle.get(key)
        while idle:
            up = idle.pop()
            up.in_pool = False
            if not up.lost and not up.transport.is_closing():
                self.reused += 1
                return up
        return None

    def discard(self, up: UpstreamConnection) -> None:
        up.in_pool = False
        idle = self.idle.get(up.key)
        if idle and up in idle:
            idle.remove(up)
            if not idle:
                del self.idle[up.key]

    def _write_held(self) -> None:
        held, self._held = self._held, []
        for up in held:
            out, up.out = up.out, None
            if out is None or up.lost or up.transport.is_closing():
                continue
            up.transport.write(out[0] if len(out) == 1 else b"".join(out))

    async def connect(self, key: PoolKey, timeout: float) -> UpstreamConnection:
        """A new connection to ``key``; OSError or TimeoutError when it cannot be had."""
        ip, port, tls = key
        loop = asyncio.get_running_loop()
        ctx = self._tls_context() if tls else None
        async with asyncio.timeout(timeout):
            _, up = await loop.create_connection(
                lambda: UpstreamConnection(self, key), ip, port, ssl=ctx,
                server_hostname="" if tls else None,
            )  # fmt: skip
        self.opened += 1
        return up

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = endpoint_tls_context("http/1.1")
        return self._tls

    def sweep(self, now: float) -> None:
        """Close connections idle for longer than ``idle_timeout`` (monotonic ``now``)."""
        limit = now - self.idle_timeout
        for key in list(self.idle):
            idle = self.idle[key]
            while idle and idle[0].last_active < limit:
                up = idle.pop(0)
                up.in_pool = False
                up.transport.close()
            if not idle:
                del self.idle[key]

    def idle_count(self) -> int:
        return sum(len(v) for v in self.idle.values())

    def close(self) -> None:
        for idle in self.idle.values():
            for up in idle:
                up.in_pool = False
                up.transport.close()
        self.idle.clear()


def endpoint_tls_context(alpn: str) -> ssl.SSLContext:
    """TLS to endpoints (backend-protocol HTTPS, GRPCS): encrypted, not verified.

    ingress-nginx's proxy-ssl-verify defaults to off, and endpoints are
    addressed by IP. ``alpn``: the one protocol offered.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols([alpn])
    return ctx
