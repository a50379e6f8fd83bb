"""The HTTP/1.1 client protocol: one asyncio Protocol per accepted connection.

Strategy (uvicorn's httptools protocol is the model): the Protocol is the
parser's callback target; the callbacks only gather a request head
(:class:`netplane.ingress.http_head.RequestHead`) and pass the request
to an :class:`netplane.ingress.exchange.Exchange`, which routes it, picks
the upstream and relays the response back through this protocol's
:class:`~netplane.ingress.exchange.ClientSide` methods. What is HTTP/1.1's
alone stays here: parsing, answering pipelined requests in order, framing
responses (chunked, close-delimited), keep-alive, ``100 Continue``,
upgrades, and the client's header and body timeouts. Nothing buffers a
whole body: bytes read before the upstream connection is up wait in the
exchange, bounded by pausing the client's reading.

Pipelined requests queue behind the one being answered (responses go out
in request order) and reading pauses while any wait. An exchange ends when
its response is out and its request has been read to the end; then the
next one starts, or the connection closes (``Connection: close``, HTTP/1.0
without keep-alive, an error that leaves the stream unsure, an upgrade).

Flow control both ways: an upstream whose write buffer is high pauses
reading from the client and the client's high buffer pauses reading from
the upstream (:mod:`netplane.l4.flow_control`). Timers are not per request:
the server's sweeper calls :meth:`ClientConnection.sweep` twice a second.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass
from time import monotonic
from typing import Any

import httptools
from netplane.ingress.errors import error_response, redirect_response
from netplane.ingress.exchange import Exchange
from netplane.ingress.exchange_state import IDLE, RECEIVED
from netplane.ingress.http2 import PREFACE, Http2Connection
from netplane.ingress.http_head import (
    CHUNKED,
    NO_BODY,
    SPECIAL_REQUEST_FIELDS,
    UNTIL_CLOSE,
    HeadError,
    RequestHead,
    ResponseHead,
    forwarded_fields,
)
from netplane.ingress.stats import RequestStats
from netplane.ingress.upstream import Pool, UpstreamConnection
from netplane.ingress.upstream_h2 import H2Pool

from netplane.addresses import peer_ip
from netplane.config import DEFAULTS
from netplane.l4.flow_control import HIGH_WATER, PENDING_FULL, FlowControl
from netplane.metrics import OVERLOAD

log = logging.getLogger("netplane.ingress")

#: Reading is held while pipelined requests wait behind the one being answered.
QUEUED = 4
#: A request body of at most this many bytes is read and dropped after a
#: response made without it (404, 403 ...), keeping the connection; a larger
#: or chunked one closes the connection instead.
DISCARD_LIMIT = 64 * 1024
#: Answers after which the connection closes whatever the request asked.
_CLOSES = frozenset((400, 408, 413, 431, 501))
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """Client-side limits and timeouts (ingress-nginx's defaults where it has one)."""

    max_header_bytes: int = DEFAULTS.ingress_max_header_bytes  # 431 above this
    header_timeout: float = DEFAULTS.ingress_header_timeout  # for the whole head
    body_timeout: float = DEFAULTS.ingress_body_timeout  # between two reads of a body
    keepalive_timeout: float = DEFAULTS.ingress_keepalive_timeout  # idle keep-alive
    h2c: bool = DEFAULTS.ingress_h2c  # HTTP/2 with prior knowledge on plain listeners
    #: open connections per client IP (nginx's limit_conn); 0: no limit
    max_connections_per_client: int = DEFAULTS.ingress_max_connections_per_client


#: Size of the read buffer a listener's connections share (see ClientConnection.get_buffer).
READ_BUFFER = 64 * 1024


class ClientConns(set):
    """The open client connections (either protocol), counted by client IP as they come and go.

    Both protocols set ``client_ip`` before they ``add`` themselves, so the
    hand-over of a connection to HTTP/2 (discard, then add) nets to nothing.

    For the server's sweeper, each open connection is either *awake* (checked
    every round) or *parked* until a sweep tick: an HTTP/1.1 connection with
    nothing in progress but its idle or head timeout, which only a read from
    its client can change (:meth:`ClientConnection.sweep` says so by
    returning that timeout's deadline). Its next read wakes it
    (:meth:`wake`). 10,000 idle keep-alive connections then cost the
    sweeper nothing until their deadlines come.
    """

    def __init__(self) -> None:
        super().__init__()
        self.per_client: dict[str, int] = {}
        #: client IP -> when its refusal was last logged (loop time)
        self.refusals_logged: dict[str, float] = {}
        #: the open connections that are not parked
        self.awake: set[Any] = set()
        #: sweep tick -> the connections parked until it (``conn.park_tick``)
        self.parked: dict[int, set[Any]] = {}

    def add(self, conn: Any) -> None:
        if conn not in self:
            super().add(conn)
            self.awake.add(conn)
            ip = conn.client_ip
            self.per_client[ip] = self.per_client.get(ip, 0) + 1

    def discard(self, conn: Any) -> None:
        if conn in self:
            super().discard(conn)
            if conn.park_tick:
                self._unpark(conn)
            else:
                self.awake.discard(conn)
            ip = conn.client_ip
            n = self.per_client.get(ip, 0) - 1
            if n > 0:
                self.per_client[ip] = n
            else:
                self.per_client.pop(ip, None)

    def park(self, conn: Any, tick: int) -> None:
        """Leave ``conn`` (open, awake) unchecked until sweep tick ``tick``."""
        self.awake.discard(conn)
        conn.park_tick = tick
        bucket = self.parked.get(tick)
        if bucket is None:
            self.parked[tick] = {conn}
        else:
            bucket.add(conn)

    def wake(self, conn: Any) -> None:
        """A parked connection is checked every round again (it read, or its tick came)."""
        self._unpark(conn)
        if conn in self:
            self.awake.add(conn)

    def wake_due(self, tick: int) -> None:
        """Wake every connection parked until ``tick``."""
        bucket = self.parked.pop(tick, None)
        if bucket:
            for conn in bucket:
                conn.park_tick = 0
            self.awake.update(bucket)

    def _unpark(self, conn: Any) -> None:
        tick, conn.park_tick = conn.park_tick, 0
        bucket = self.parked.get(tick)
        if bucket is not None:
            bucket.discard(conn)
            if not bucket:
                del self.parked[tick]


class Listener:
    """What every connection accepted on one listener shares."""

    __slots__ = (
        "access_log", "conns", "h2pool", "https", "pool", "port", "proto", "rbuf", "routes",
        "settings", "stats",
    )  # fmt: skip

    def __init__(
        self,
        routes: Any,
        pool: Pool,
        settings: HttpSettings,
        *,
        https: bool,
        port: int,
        access_log: Any = None,
        conns: set | None = None,
        stats: RequestStats | None = None,
        h2pool: H2Pool | None = None,
    ) -> None:
        self.routes = routes
        self.stats = stats if stats is not None else RequestStats()
        self.pool = pool
        self.h2pool = h2pool if h2pool is not None else H2Pool()
        self.settings = settings
        self.https = https
        self.proto = b"https" if https else b"http"
        self.port = str(port).encode()
        self.access_log = access_log
        #: every open client connection, either protocol (for timeouts and shutdown)
        self.conns: set[ClientConnection | Http2Connection] = (
            conns if conns is not None else ClientConns()
        )
        self.rbuf = memoryview(bytearray(READ_BUFFER))


class _Reject(Exception):
    """Raised inside a parser callback to stop parsing; the reason is on the connection."""


class ClientConnection(asyncio.BufferedProtocol):
    """One HTTP/1.1 client connection: parse, hand each request to an Exchange, answer in order.

    A buffered protocol: the loop reads (and the TLS layer decrypts) into
    the listener's one buffer, which is parsed before the next read. Given a
    plain protocol, uvloop's TLS layer allocates 256 KiB per decrypted read,
    which glibc serves by mmap and munmap; that was a sixth of the proxy's
    CPU on keep-alive TLS.

    It is the :class:`netplane.ingress.exchange.ClientSide` of its exchanges:
    it frames their responses for HTTP/1.1 and decides its own keep-alive.
    A connection that speaks HTTP/2 (ALPN ``h2``, or the h2c preface) is
    handed to :class:`netplane.ingress.http2.Http2Connection` at once.
    """

    # Slots: an instance dict holds 30 attributes at most before it grows into a
    # dict of its own (1.5 KiB), and the overload bench holds 11,000 connections.
    __slots__ = (
        "__weakref__", "_advancing", "_chunked", "_error", "_first", "_head", "_head_bytes",
        "_head_raw", "_t0", "_target", "active", "client_ip", "client_ip_b", "closing", "cur",
        "early", "flow", "forwarded", "idle_since", "last_read", "listener", "lost",
        "max_header_bytes", "park_tick", "parser", "queue", "served", "settings", "sniff",
        "transport", "tunnel", "upgrading", "wbuf", "write_paused",
    )  # fmt: skip

    #: The access log's protocol column is the request's own (HTTP/1.0 or HTTP/1.1).
    http2 = False

    def __init__(self, listener: Listener) -> None:
        #: the sweep tick this connection is parked until (0: awake; see ClientConns)
        self.park_tick = 0
        # shared
        self.listener = listener
        self.settings = listener.settings
        self.max_header_bytes = listener.settings.max_header_bytes
        # per connection
        self.transport: Any = None
        self.flow: Any = None
        # Made in connection_made, once a TLS handshake is done.
        self.parser: Any = None
        self.client_ip = ""
        self.client_ip_b = b""
        self.forwarded = b""
        self.write_paused = False
        self.closing = False
        self.lost = False
        self.upgrading = False
        self.tunnel: UpstreamConnection | None = None
        #: bytes read after an upgrade request, before the upstream switched
        self.early: list[bytes] | None = None
        self.served = 0
        #: a plain connection's first read may be HTTP/2's preface (--ingress-h2c)
        self.sniff = False
        self._first = b""
        self.last_read = self.idle_since = monotonic()
        self._error: tuple[int, bytes | None] | None = None
        self._advancing = False
        # per request: a head being read (its target, fields and start time), then
        # ``cur``, the exchange whose body is being read, and ``active``, being answered
        self._target = b""
        self._head: RequestHead | None = None
        self._t0 = 0.0
        self.cur: Exchange | None = None
        self.active: Exchange | None = None
        self.queue: collections.deque[Exchange] = collections.deque()
        self._head_bytes = 0
        self._head_raw = 0
        # the active response is re-chunked for this client
        self._chunked = False
        # response bytes of one upstream read, written together (head and body in one write)
        self.wbuf: list[bytes] = []

    # -- asyncio ---------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        listener = self.listener
        if listener.settings.max_connections_per_client and self._over_limit(transport):
            return
        if listener.https:
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
                self._to_http2(transport, b"")
                return
        self.sniff = listener.settings.h2c and not listener.https
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.flow = FlowControl(transport)
        ip = peer_ip(transport.get_extra_info("peername"))
        self.client_ip = ip
        self.client_ip_b = ip.encode()
        self.forwarded = forwarded_fields(self.client_ip_b, self.listener.proto, self.listener.port)
        self.listener.conns.add(self)

    def _over_limit(self, transport: Any) -> bool:
        """Is this client over --ingress-max-connections-per-client? Then close at once."""
        conns = self.listener.conns
        per_client = getattr(conns, "per_client", None)
        ip = peer_ip(transport.get_extra_info("peername"))
        if per_client is None or per_client.get(ip, 0) < self.settings.max_connections_per_client:
            return False
        transport.abort()
        OVERLOAD.refuse("ingress", "per-client")
        logged: dict[str, float] = conns.refusals_logged  # type: ignore[attr-defined]  # a ClientConns
        now = monotonic()
        if now - logged.get(ip, -60.0) >= 60:
            if len(logged) > 10_000:  # many clients over: forget the old ones
                logged.clear()
            logged[ip] = now
            log.warning(
                "ingress: client %s has %d connections open (--ingress-max-connections-per-client);"
                " closing its new ones (logged once a minute per client)",
                ip, per_client[ip],
            )  # fmt: skip
        return True

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.listener.rbuf

    def data_received(self, data: bytes) -> None:
        """Bytes from a transport that does not read into :meth:`get_buffer`."""
        rbuf = self.listener.rbuf
        size = len(rbuf)
        for i in range(0, len(data), size):
            chunk = data[i : i + size]
            rbuf[: len(chunk)] = chunk
            self.buffer_updated(len(chunk))

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` from the client in the shared buffer (copied before they are kept)."""
        if self.park_tick:  # the sweeper checks this connection every round again
            self.listener.conns.wake(self)  # type: ignore[attr-defined]  # parked: a ClientConns
        data = self.listener.rbuf[:nbytes]
        if self.sniff and self._sniff(data):
            return
        self.last_read = monotonic()  # also the start time of requests begun in this read
        if self.tunnel is not None:
            self.tunnel.write(bytes(data))
            return
        if self.upgrading:
            self._early(bytes(data))
            return
        parser = self.parser
        if parser is None:  # after a malformed request: nothing more is read
            return
        head = self._head
        try:
            parser.feed_data(data)
            if self._head is not None:
                self._head_reads(head, nbytes)
        except httptools.HttpParserUpgrade as e:
            if self.parser is not None:
                self.upgrading = True
                rest = bytes(data[e.args[0] :])
                if rest:
                    self._early(rest)
        except httptools.HttpParserError as e:
            if self.parser is None:
                # The connection ended while this read was parsed (an answer with close):
                # what follows the end is not read, so not answered either.
                self._error = None
                return
            status, message = self._error or (
                400,
                b"The request could not be parsed: %s." % str(e).encode("ascii", "replace"),
            )
            self._error = None
            self._fail(status, message)

    def _head_reads(self, before: RequestHead | None, nbytes: int) -> None:
        """Bound a head that is still incomplete after a read.

        httptools keeps a field's name and value to itself until the field
        ends, so one endless field never reaches :meth:`on_header`'s count.
        A head that was begun before this read and is still not done holds
        every byte of it; past the limit that is a 431 (a head begun within
        this read starts from nothing: the bound is loose by one read).
        """
        if self._head is before:
            self._head_raw += nbytes
            if self._head_raw > self.max_header_bytes:
                self._fail(431, b"The request head is larger than this proxy allows.")
        else:
            self._head_raw = 0

    def _sniff(self, data: memoryview) -> bool:
        """A plain connection's first bytes: True when they are HTTP/2's preface (prior knowledge).

        Three bytes tell (``PRI`` is no method a client sends); fewer wait for more.
        """
        first = self._first + bytes(data) if self._first else bytes(data)
        if len(first) < 3 and PREFACE.startswith(first):
            self._first = first
            return True
        self.sniff = False
        self._first = b""
        if first[:3] == PREFACE[:3]:
            self._to_http2(self.transport, first)
            return True
        if len(first) > len(data):  # the bytes held back go first
            rbuf = self.listener.rbuf
            rbuf[: len(first)] = first
            self.buffer_updated(len(first))
            return True
        return False

    def _to_http2(self, transport: Any, first: bytes) -> None:
        """Hand the connection to the HTTP/2 protocol (ALPN h2, or the h2c preface in ``first``)."""
        self.listener.conns.discard(self)
        self.parser = None
        h2 = Http2Connection(self.listener)
        transport.set_protocol(h2)
        h2.connection_made(transport)
        if first:
            h2.receive(first)

    def eof_received(self) -> bool:
        # A half-closed client still gets the answers to what it sent.
        if self.active is not None or self.queue:
            self.closing = True
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.transport is None:
            return
        self.flow.finish()
        self.listener.conns.discard(self)
        if self.tunnel is not None:
            self.tunnel.close()
            self.tunnel = None
        for ex in (self.active, *self.queue):
            if ex is not None:
                ex.client_lost()
        self.active = None
        self.queue.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        up = self.tunnel or (self.active.upstream if self.active is not None else None)
        if up is not None:
            up.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        up = self.tunnel or (self.active.upstream if self.active is not None else None)
        if up is not None:
            up.resume_reading()
        elif self.active is None and self.queue and not self._advancing:
            self._advance()  # pipelined requests held while the client was not reading

    # -- httptools callbacks -----------------------------------------------------

    def on_url(self, url: bytes) -> None:
        # A request's first callback (the parser has no on_message_begin to
        # call: that would cost a call per request). A long URL comes in parts.
        if self._head is None:
            self._head = RequestHead()
            self._t0 = self.last_read
            self._target = url
            self._head_bytes = len(url)
        else:
            self._target += url
            self._head_bytes += len(url)
        if self._head_bytes > self.max_header_bytes:
            self._error = (431, b"The request line is longer than this proxy allows.")
            raise _Reject

    def on_header(self, name: bytes, value: bytes) -> None:
        # RequestHead.add, inline, for the bench's "keep-alive req/s over HTTP" rows: the
        # call costs 1.3% of the instructions per request in bench/ingress_micro.py
        # (callgrind: 104.4k against 103.1k). tests/ingress/test_ingress_client_head.py checks
        # that both copies build the same upstream head and refuse the same fields.
        head: RequestHead = self._head  # type: ignore[assignment]  # on_url made it: a field comes after the URL
        lname = name.lower()
        if lname == b"host" and head.host is None:  # RequestHead.special's first case, inline
            head.host = head.headers[b"host"] = value
            self._head_bytes += len(value) + 8
        elif lname in SPECIAL_REQUEST_FIELDS:
            self._head_bytes += len(name) + len(value) + 4
            try:
                head.special(lname, value)
            except HeadError as e:
                self._error = (e.status, e.message)
                raise _Reject from None
        else:
            line = name + b": " + value + b"\r\n"
            head.lines.append(line)
            self._head_bytes += len(line)
            headers = head.headers
            if lname in headers:
                value = headers[lname] + (b"; " if lname == b"cookie" else b", ") + value
            headers[lname] = value
        if self._head_bytes > self.max_header_bytes:
            self._error = (431, None)
            raise _Reject

    def on_headers_complete(self) -> None:
        parser = self.parser
        method = parser.get_method()
        keep_alive = parser.should_keep_alive()
        head: RequestHead = self._head  # type: ignore[assignment]  # on_url made it: the URL comes first
        # Keep-alive with no Connection field (nor the Proxy-Connection the
        # parser reads as one) is HTTP/1.1: the version string, which the
        # parser formats anew on each call, is asked for only otherwise.
        if keep_alive and not head.connection and b"proxy-connection" not in head.headers:
            http10 = False
        else:
            http10 = parser.get_http_version() == "1.0"
        if head.transfer_encoding is not None or head.connection:
            try:
                head.check()
            except HeadError as e:
                self._error = (e.status, e.message)
                raise _Reject from None
        if method == b"CONNECT":
            self._error = (400, b"CONNECT is not served by this proxy.")
            raise _Reject
        upgrade = head.upgrade is not None and parser.should_upgrade()
        # (after an upgrade that did not happen, the stream is unsure)
        if head.content_length is None and head.transfer_encoding is None:
            # No body (RFC 9112 §6.3): the request is whole, and no body timeout applies.
            ex = Exchange(
                self, self._t0, self._target, head, method, http10, keep_alive and not upgrade,
                upgrade, self.last_read,
            )  # fmt: skip
        else:
            self.cur = ex = Exchange(
                self, self._t0, self._target, head, method, http10, keep_alive and not upgrade,
                upgrade,
            )  # fmt: skip
        self._head = None
        ex.route()
        # (while the client does not read its answers, the next request waits: the
        # answers of a pipelined stream never pile up past the write buffer's mark)
        if self.active is None and not self.queue and not self.write_paused:
            self.active = ex
            ex.start(self.last_read)
        else:
            self.queue.append(ex)
            self.flow.pause(QUEUED)

    def on_body(self, body: bytes) -> None:
        if not self.cur.request_body(body):  # type: ignore[union-attr]  # on_headers_complete set it (a body follows)
            self._error = (413, None)
            raise _Reject

    def on_message_complete(self) -> None:
        ex = self.cur
        if ex is not None:  # (None: a request without a body, whole at its head)
            self.cur = None
            ex.request_end(self.last_read)

    # -- the ClientSide of exchanges: HTTP/1.1 framing and keep-alive ------------------

    def write_continue(self, ex: Exchange) -> None:
        self.transport.write(_CONTINUE)

    def write_answer(
        self, ex: Exchange, status: int, message: bytes | None, location: bytes | None
    ) -> None:
        if ex.response_state is IDLE:
            # Answered before anything went upstream: the request body is read and dropped
            # when it is small, else the connection closes after the answer.
            keep = self._keep_after_answer(ex) and (location is not None or status not in _CLOSES)
        else:
            # Instead of the upstream's response: the stream is unsure unless the request
            # was read to its end.
            keep = ex.request_state is RECEIVED and status not in (408, 413) and ex.keep_alive
        if not keep:
            ex.close_connection()
        close = not keep or self.closing
        rid = ex.head.request_id
        extra = b"X-Request-ID: " + rid + b"\r\n" if rid is not None else b""
        head_only = ex.method == b"HEAD"
        if location is not None:
            data = redirect_response(
                status, location, close=close, head_only=head_only, extra=extra
            )
        else:
            data = error_response(status, message, close=close, head_only=head_only, extra=extra)
        self.transport.write(data)

    def _keep_after_answer(self, ex: Exchange) -> bool:
        """May the connection go on after an answer that ignores the request body?"""
        if not ex.keep_alive or self.closing:
            return False
        if ex.head.transfer_encoding is not None:
            return False
        cl = ex.head.content_length
        ok = cl is None or int(cl) <= DISCARD_LIMIT
        return ok and not (ex.head.expect_continue and cl not in (None, b"0"))

    def write_head(self, ex: Exchange, head: ResponseHead, extra: bytes) -> None:
        framing = NO_BODY if ex.method == b"HEAD" else head.body_framing
        if framing == CHUNKED and ex.http10:
            framing = UNTIL_CLOSE  # no chunked encoding for HTTP/1.0
            ex.close_connection()  # the body's end is the connection's end
        self._chunked = framing == CHUNKED
        keep = ex.keep_alive and not self.closing
        self.wbuf.append(head.client_head(framing, keep, ex.http10, extra))

    def write_switch(self, ex: Exchange, head: ResponseHead, extra: bytes) -> None:
        upgrade: bytes = ex.head.upgrade  # type: ignore[assignment]  # Exchange.response_head checked it
        self.transport.write(
            b"".join((b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: ", upgrade, b"\r\nConnection: upgrade\r\n", head.fields, extra, b"\r\n"))
        )  # fmt: skip

    def write_body(self, data: bytes) -> None:
        if self._chunked:
            self.wbuf.append(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.wbuf.append(data)

    def write_trailers(self, ex: Exchange, fields: list[tuple[bytes, bytes]]) -> None:
        # Trailers reach an HTTP/1.1 client in a chunked body's last chunk; otherwise
        # there is nowhere to put them (they are dropped, as nginx drops them).
        if self._chunked:
            self._chunked = False
            lines = b"".join(b"%s: %s\r\n" % (n, v) for n, v in fields)
            self.wbuf.append(b"0\r\n" + lines + b"\r\n")

    def write_end(self, ex: Exchange) -> None:
        wbuf = self.wbuf
        if self._chunked:
            self._chunked = False
            wbuf.append(b"0\r\n\r\n")
        if wbuf:
            self.transport.write(wbuf[0] if len(wbuf) == 1 else b"".join(wbuf))
            wbuf.clear()

    def flush(self) -> None:
        """Write what the last upstream read produced, in one ``write``."""
        wbuf = self.wbuf
        if wbuf:
            self.transport.write(wbuf[0] if len(wbuf) == 1 else b"".join(wbuf))
            wbuf.clear()

    def write(self, data: bytes) -> None:
        """Bytes from the far end of a tunnel."""
        self.transport.write(data)

    def pause_reading(self, reason: int) -> None:
        self.flow.pause(reason)

    def resume_reading(self, reason: int) -> None:
        self.flow.resume(reason)

    def close(self) -> None:
        self.transport.close()

    def start_tunnel(self, ex: Exchange, up: UpstreamConnection, rest: bytes) -> None:
        self.tunnel = up
        up.tunnel_to(self)
        self.upgrading = True
        self.parser = None
        if rest:
            self.transport.write(rest)
        if self.early:
            up.write(b"".join(self.early))
            self.early = None
            self.flow.resume(PENDING_FULL)
        self.active = None

    def _early(self, data: bytes) -> None:
        if self.active is None and not self.queue:
            return
        if self.early is None:
            self.early = [data]
        else:
            self.early.append(data)
        if sum(map(len, self.early)) > HIGH_WATER:
            self.flow.pause(PENDING_FULL)

    # -- ending exchanges --------------------------------------------------------

    def exchange_over(self, ex: Exchange, now: float) -> None:
        wbuf = self.wbuf
        if self._chunked:  # its response ended with it: write_end's work, here
            self._chunked = False
            wbuf.append(b"0\r\n\r\n")
        if wbuf:
            self.transport.write(wbuf[0] if len(wbuf) == 1 else b"".join(wbuf))
            wbuf.clear()
        self.active = None
        self.served += 1
        self.idle_since = now
        if not ex.keep_alive or self.closing or self.lost:
            self.parser = None
            self.transport.close()
            return
        if self.queue and not self._advancing:
            self._advance()

    def _advance(self) -> None:
        # A loop, not recursion: a read can hold thousands of pipelined requests.
        self._advancing = True
        try:
            while self.active is None and self.queue and not self.lost and not self.write_paused:
                ex = self.active = self.queue.popleft()
                ex.start(self.last_read)
        finally:
            self._advancing = False
        if not self.queue:
            self.flow.resume(QUEUED)

    def _fail(self, status: int, message: bytes | None) -> None:
        """A request the parser or a limit refused: answer it in turn, then close."""
        self.parser = None
        self.flow.pause(QUEUED)
        ex = self._current()
        ex.refuse(status, message)
        if ex is self.active or ex in self.queue:
            return
        if self.active is None and not self.queue:
            self.active = ex
            ex.start(self.last_read)
        else:
            self.queue.append(ex)

    def _current(self) -> Exchange:
        """The request being read, as an exchange (one is made for a head not yet complete)."""
        ex = self.cur
        self.cur = None
        if ex is None:
            head = self._head
            if head is None:
                ex = Exchange(self, monotonic())
            else:
                ex = Exchange(self, self._t0, self._target, head)
            self._head = None
        return ex

    # -- timers and shutdown ------------------------------------------------------------

    def sweep(self, now: float) -> float | None:
        """Enforce the client and upstream timeouts (called by the server's sweeper).

        Returns the deadline of the one timeout left running when nothing
        else is in progress (no exchange, body or queue: the connection is
        idle, or a request head is arriving), since only a read from the
        client can start anything that expires sooner; the sweeper may leave
        the connection alone until then, or until it reads. Otherwise None.
        """
        if self.lost or self.tunnel is not None:
            return None
        s = self.settings
        cur = self.cur
        paused = self.flow.paused
        if not paused:
            if self._head is not None:
                if now - self._t0 > s.header_timeout:
                    self._timeout(b"The request head did not arrive in time.")
                    return None
            elif cur is not None and now - self.last_read > s.body_timeout:
                self._timeout(b"The request body stopped arriving.")
                return None
        ex = self.active
        if ex is not None:
            ex.sweep(now)
            return None
        if cur is not None or self.queue:
            return None
        if self._head is not None:
            return None if paused else self._t0 + s.header_timeout
        limit = s.keepalive_timeout if self.served else s.header_timeout
        since = max(self.last_read, self.idle_since)
        if now - since > limit:
            self.transport.close()  # idle: closed quietly, as nginx does
            return None
        return None if paused else since + limit

    def _timeout(self, message: bytes) -> None:
        self.parser = None
        ex = self._current()
        if ex is self.active:
            ex.refuse(408, message)
        elif self.active is None and not self.queue:
            ex.refuse(408, message)
            self.active = ex
            ex.start(self.last_read)
        else:
            self.transport.close()

    def shutdown(self) -> None:
        """Stop after the current response; an idle connection closes now."""
        self.closing = True
        if (
            self.active is None
            and self.cur is None
            and self._head is None
            and not self.queue
            and self.tunnel is None
        ):
            self.transport.close()

    def abort(self) -> None:
        if self.tunnel is not None:
            self.tunnel.abort()
        self.transport.abort()
