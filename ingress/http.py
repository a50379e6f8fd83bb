"""The client side of the proxy: one asyncio Protocol per accepted connection.

Strategy (uvicorn's httptools protocol is the model): the Protocol is the
parser's callback target; the callbacks only gather a request head
(:class:`netplane.ingress.http_head.RequestHead`), ask the route table
once per request, and pass body bytes on as they come. Nothing buffers a
whole body: bytes read before the upstream connection is up wait in a list
bounded by pausing the client's reading.

Each request is an :class:`Exchange`. Pipelined requests queue behind the
one being answered (responses go out in request order) and reading pauses
while any wait. An exchange ends when its response is out and its request
has been read to the end; then the next one starts, or the connection
closes (``Connection: close``, HTTP/1.0 without keep-alive, an error that
leaves the stream unsure, an upgrade).

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
from netplane.ingress.http_head import (
    CHUNKED,
    NO_BODY,
    SPECIAL_REQUEST_FIELDS,
    UNTIL_CLOSE,
    HeadError,
    RequestHead,
    forwarded_fields,
)
from netplane.ingress.routes import Forward, Redirect
from netplane.ingress.stats import RequestStats
from netplane.ingress.upstream import Pool, UpstreamConnection

from netplane.config import DEFAULTS
from netplane.l4.flow_control import HIGH_WATER, PENDING_FULL, FlowControl

log = logging.getLogger("netplane.ingress")

#: Reading is held while pipelined requests wait behind the one being answered.
QUEUED = 4
#: A request body of at most this many bytes is read and dropped after a
#: response made without it (404, 403 ...), keeping the connection; a larger
#: or chunked one closes the connection instead.
DISCARD_LIMIT = 64 * 1024
IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """Client-side limits and timeouts (ingress-nginx's defaults where it has one)."""

    max_header_bytes: int = DEFAULTS.ingress_max_header_bytes  # 431 above this
    header_timeout: float = DEFAULTS.ingress_header_timeout  # for the whole head
    body_timeout: float = DEFAULTS.ingress_body_timeout  # between two reads of a body
    keepalive_timeout: float = DEFAULTS.ingress_keepalive_timeout  # idle keep-alive


#: Size of the read buffer a listener's connections share (see ClientConnection.get_buffer).
READ_BUFFER = 64 * 1024


class Listener:
    """What every connection accepted on one listener shares."""

    __slots__ = (
        "access_log", "conns", "https", "pool", "port", "proto", "rbuf", "routes", "settings",
        "stats",
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
    ) -> None:
        self.routes = routes
        self.stats = stats if stats is not None else RequestStats()
        self.pool = pool
        self.settings = settings
        self.https = https
        self.proto = b"https" if https else b"http"
        self.port = str(port).encode()
        self.access_log = access_log
        self.conns: set[ClientConnection] = conns if conns is not None else set()
        self.rbuf = memoryview(bytearray(READ_BUFFER))


class Exchange:
    """One request and its response, from the first byte read to the last written."""

    __slots__ = (
        "body_in",
        "bytes_out",
        "decision",
        "early",
        "framing",
        "head",
        "headers_done",
        "http10",
        "keep_alive",
        "method",
        "pending",
        "pending_size",
        "req_done",
        "resp_done",
        "resp_started",
        "response",
        "retried",
        "status",
        "t0",
        "t_up",
        "target",
        "target_index",
        "until_eof",
        "upgrade",
        "upstream",
        "upstream_addr",
        "upstream_head",
    )

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.target = b""
        self.method = b""
        self.head = RequestHead()
        self.http10 = False
        self.keep_alive = True
        self.upgrade = False
        self.headers_done = False
        self.decision: Any = None
        self.response: bytes | None = None  # an answer made without an upstream
        self.upstream: UpstreamConnection | None = None
        self.upstream_addr: tuple[str, int] | None = None
        self.upstream_head = b""
        self.pending: list[bytes] | None = None  # framed body bytes read before the upstream is up
        self.pending_size = 0
        self.early: list[bytes] | None = None  # tunnel bytes sent before the upgrade completed
        self.body_in = 0
        self.bytes_out = 0
        self.req_done = False
        self.resp_done = False
        self.resp_started = False
        self.status = 0
        self.framing = NO_BODY
        self.until_eof = False
        self.retried = False
        self.target_index = 0
        self.t_up = 0.0

    @property
    def has_body(self) -> bool:
        cl = self.head.content_length
        return self.head.chunked or (cl is not None and cl.strip() != b"0")


def _origin_form(ex: Exchange) -> bytes:
    """An absolute-form target (RFC 9112 §3.2.2): its authority replaces Host, its path routes."""
    scheme, sep, rest = ex.target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        return ex.target  # "*" (OPTIONS) or something the route table will not match
    authority, slash, path = rest.partition(b"/")
    authority = authority.rpartition(b"@")[2]  # userinfo is never forwarded
    if authority:
        ex.head.host = authority
    return b"/" + path if slash else b"/"


class _Reject(Exception):
    """Raised inside a parser callback to stop parsing; the reason is on the connection."""


class ClientConnection(asyncio.BufferedProtocol):
    """One client connection: parse, route, forward, answer in order.

    A buffered protocol: the loop reads (and the TLS layer decrypts) into
    the listener's one buffer, which is parsed before the next read. Given a
    plain protocol, uvloop's TLS layer allocates 256 KiB per decrypted read,
    which glibc serves by mmap and munmap; that was a sixth of the proxy's
    CPU on keep-alive TLS.
    """

    def __init__(self, listener: Listener) -> None:
        # shared
        self.listener = listener
        self.routes = listener.routes
        self.pool = listener.pool
        self.settings = listener.settings
        self.max_header_bytes = listener.settings.max_header_bytes
        # per connection
        self.transport: Any = None
        self.flow: Any = None
        # Made in connection_made: until then nothing here refers back to this
        # object, so a TLS connection whose handshake fails is freed (and
        # counted, see __del__) as soon as the loop drops it.
        self.parser: Any = None
        self.client_ip = ""
        self.client_ip_b = b""
        self.forwarded = b""
        self.write_paused = False
        self.closing = False
        self.lost = False
        self.upgrading = False
        self.tunnel: UpstreamConnection | None = None
        self.served = 0
        self.last_read = self.idle_since = monotonic()
        self._error: tuple[int, bytes] | None = None
        self._advancing = False
        # per request: ``cur`` is being read, ``active`` being answered
        self.cur: Exchange | None = None
        self.active: Exchange | None = None
        self.queue: collections.deque[Exchange] = collections.deque()
        self._head_bytes = 0
        # response bytes of one upstream read, written together (head and body in one write)
        self.wbuf: list[bytes] = []

    # -- asyncio ---------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.flow = FlowControl(transport)
        peer = transport.get_extra_info("peername")
        ip = peer[0] if peer else ""
        if ip.startswith("::ffff:") and "." in ip:
            ip = ip[7:]
        self.client_ip = ip
        self.client_ip_b = ip.encode()
        self.forwarded = forwarded_fields(self.client_ip_b, self.listener.proto, self.listener.port)
        self.listener.conns.add(self)
        if self.listener.https:  # the loop calls this once the TLS handshake is done
            self.listener.stats.tls_handshakes += 1

    def __del__(self) -> None:
        # The loop makes the protocol when it accepts and calls connection_made
        # only after a TLS handshake succeeded; it says nothing when one fails.
        if self.transport is None and self.listener.https:
            self.listener.stats.tls_handshake_failures += 1

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
        data = self.listener.rbuf[:nbytes]
        self.last_read = monotonic()  # also the start time of requests begun in this read
        if self.tunnel is not None:
            self.tunnel.transport.write(bytes(data))
            return
        if self.upgrading:
            self._early(bytes(data))
            return
        parser = self.parser
        if parser is None:  # after a malformed request: nothing more is read
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            if self.parser is not None:
                self.upgrading = True
                rest = bytes(data[e.args[0] :])
                if rest:
                    self._early(rest)
        except httptools.HttpParserError as e:
            status, message = self._error or (
                400,
                b"The request could not be parsed: %s." % str(e).encode("ascii", "replace"),
            )
            self._error = None
            self._fail(status, message)

    def eof_received(self) -> bool:
        # A half-closed client still gets the answers to what it sent.
        if self.active is not None or self.queue:
            self.closing = True
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.transport is None:  # a TLS connection lost before its handshake was done
            return
        self.flow.finish()
        self.listener.conns.discard(self)
        if self.tunnel is not None:
            self.tunnel.transport.close()
            self.tunnel = None
        for ex in (self.active, *self.queue):
            if ex is None:
                continue
            up, ex.upstream = ex.upstream, None
            if up is not None:
                up.abort()
            if not ex.resp_done:
                ex.status = ex.status or 499  # nginx's "client closed the request"
                self._log(ex)
        self.active = None
        self.queue.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        up = self.tunnel or (self.active.upstream if self.active is not None else None)
        if up is not None:
            up.flow.pause_writing()

    def resume_writing(self) -> None:
        self.write_paused = False
        up = self.tunnel or (self.active.upstream if self.active is not None else None)
        if up is not None:
            up.flow.resume_writing()

    # -- httptools callbacks -----------------------------------------------------

    def on_url(self, url: bytes) -> None:
        # A request's first callback (the parser has no on_message_begin to
        # call: that would cost a call per request). A long URL comes in parts.
        ex = self.cur
        if ex is None:
            self.cur = ex = Exchange(self.last_read)
            ex.target = url
            self._head_bytes = len(url)
        else:
            ex.target += url
            self._head_bytes += len(url)
        if self._head_bytes > self.max_header_bytes:
            self._error = (431, b"The request line is longer than this proxy allows.")
            raise _Reject

    def on_header(self, name: bytes, value: bytes) -> None:
        # RequestHead.add, inline: this runs for every header of every request.
        head = self.cur.head
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
        ex = self.cur
        parser = self.parser
        ex.headers_done = True
        ex.method = method = parser.get_method()
        ex.keep_alive = keep_alive = parser.should_keep_alive()
        head = ex.head
        # Keep-alive with no Connection field (nor the Proxy-Connection the
        # parser reads as one) is HTTP/1.1: the version string, which the
        # parser formats anew on each call, is asked for only otherwise.
        if keep_alive and not head.connection and b"proxy-connection" not in head.headers:
            ex.http10 = False
        else:
            ex.http10 = parser.get_http_version() == "1.0"
        if head.transfer_encoding is not None or head.connection:
            try:
                head.check()
            except HeadError as e:
                self._error = (e.status, e.message)
                raise _Reject from None
        if method == b"CONNECT":
            self._error = (400, b"CONNECT is not served by this proxy.")
            raise _Reject
        if head.upgrade is not None and parser.should_upgrade():
            ex.upgrade = True
            ex.keep_alive = False  # after an upgrade that did not happen, the stream is unsure
        self._route(ex)
        if self.active is None and not self.queue:
            self._start(ex)
        else:
            self.queue.append(ex)
            self.flow.pause(QUEUED)

    def on_body(self, body: bytes) -> None:
        ex = self.cur
        ex.body_in += len(body)
        if ex.response is not None:  # answered without an upstream: read and drop
            return
        limit = ex.decision.options.body_limit
        if limit is not None and ex.body_in > limit:
            self._error = (413, None)
            raise _Reject
        if ex.head.transfer_encoding is not None:
            body = b"%x\r\n%b\r\n" % (len(body), body)
        up = ex.upstream
        if up is not None:
            up.write(body)
        else:
            if ex.pending is None:
                ex.pending = [body]
            else:
                ex.pending.append(body)
            ex.pending_size += len(body)
            if ex.pending_size > HIGH_WATER:
                self.flow.pause(PENDING_FULL)

    def on_message_complete(self) -> None:
        ex = self.cur
        self.cur = None
        ex.req_done = True
        if ex.response is None and ex.head.transfer_encoding is not None:
            if ex.upstream is not None:
                ex.upstream.write(b"0\r\n\r\n")
            elif ex.pending is None:
                ex.pending = [b"0\r\n\r\n"]
            else:
                ex.pending.append(b"0\r\n\r\n")
        if ex.upstream is not None:
            ex.upstream.last_active = self.last_read  # proxy-read-timeout runs from here
        if ex is self.active and ex.resp_done:
            self._finish(ex)

    # -- routing and starting --------------------------------------------------------

    def _route(self, ex: Exchange) -> None:
        head = ex.head
        target = ex.target
        if target[:1] != b"/":
            target = _origin_form(ex)
        host = head.host.decode("latin-1") if head.host is not None else ""
        try:
            d = self.routes.route(
                host,
                target.decode("latin-1"),
                https=self.listener.https,
                client_ip=self.client_ip,
                headers=head.headers,
            )
        except Exception:
            log.exception("route lookup failed for %r %r", host, ex.target)
            ex.response = self._answer(ex, 500, b"The proxy failed to route this request.")
            return
        ex.decision = d
        kind = type(d)
        if kind is Forward:
            limit = d.options.body_limit
            cl = head.content_length
            if limit is not None and cl is not None and int(cl) > limit:
                ex.response = self._answer(ex, 413, None)
            elif not d.targets:
                ex.response = self._answer(ex, 503, None)
        elif kind is Redirect:
            ex.status = d.status
            ex.response = redirect_response(
                d.status, d.location, close=not self._keep_after_answer(ex),
                head_only=ex.method == b"HEAD", extra=self._id_line(ex),
            )  # fmt: skip
        else:
            ex.response = self._answer(ex, d.status, d.body.rstrip(b"\n"))

    def _keep_after_answer(self, ex: Exchange) -> bool:
        """May the connection go on after an answer that ignores the request body?"""
        if not ex.keep_alive or self.closing:
            return False
        if ex.head.transfer_encoding is not None:
            return False
        cl = ex.head.content_length
        ok = cl is None or int(cl) <= DISCARD_LIMIT
        if not ok or (ex.head.expect_continue and cl not in (None, b"0")):
            ex.keep_alive = False
        return ex.keep_alive

    def _id_line(self, ex: Exchange) -> bytes:
        rid = ex.head.request_id
        return b"X-Request-ID: " + rid + b"\r\n" if rid is not None else b""

    def _answer(self, ex: Exchange, status: int, message: bytes | None) -> bytes:
        ex.status = status
        close = status in (400, 408, 413, 431, 501) or not self._keep_after_answer(ex)
        if close:
            ex.keep_alive = False
        return error_response(
            status, message, close=close, head_only=ex.method == b"HEAD", extra=self._id_line(ex)
        )

    def _start(self, ex: Exchange) -> None:
        self.active = ex
        if ex.response is not None:
            self.transport.write(ex.response)
            ex.resp_started = True
            self._response_done(ex)
            return
        if ex.head.expect_continue and not ex.req_done and not ex.http10:
            self.transport.write(_CONTINUE)
        d = ex.decision
        ip, port = d.targets[0]
        pool = self.pool
        idle = pool.idle.get((ip, port, d.upstream_tls))
        while idle:  # Pool.take, inline: the most recently used idle connection
            up = idle.pop()
            up.in_pool = False
            if not up.lost and not up.transport.is_closing():
                pool.reused += 1
                self._send(ex, up, self.last_read)
                return
        asyncio.get_running_loop().create_task(self._connect(ex, 0))

    async def _connect(self, ex: Exchange, start: int) -> None:
        d = ex.decision
        targets = d.targets
        last: BaseException | None = None
        for i in range(start, len(targets)):
            ip, port = targets[i]
            try:
                up = await self.pool.connect((ip, port, d.upstream_tls), d.options.connect_timeout)
            except (OSError, TimeoutError) as e:
                last = e
                log.debug("cannot connect to %s:%s: %s", ip, port, e)
                continue
            if ex is not self.active or self.lost:
                up.transport.close()
                return
            ex.target_index = i
            self._send(ex, up, monotonic())
            return
        if ex is self.active and not self.lost:
            if isinstance(last, TimeoutError):
                self._reply(ex, 504, b"The upstream did not accept the connection in time.")
            else:
                self._reply(ex, 502, b"The upstream refused the connection.")

    def _send(self, ex: Exchange, up: UpstreamConnection, now: float) -> None:
        d = ex.decision
        ex.upstream = up
        ex.upstream_addr = d.targets[ex.target_index]
        if not ex.upstream_head:
            ex.upstream_head = ex.head.upstream_head(
                ex.method, d.path.encode("latin-1"), self.client_ip_b, self.forwarded, ex.upgrade
            )
        if ex.pending:
            up.send(self, ex.upstream_head + b"".join(ex.pending), now)
            ex.pending = None
            ex.pending_size = 0
            self.flow.resume(PENDING_FULL)
        else:
            up.send(self, ex.upstream_head, now)
        ex.t_up = now
        if self.write_paused:
            up.flow.pause_writing()

    # -- upstream events (called by UpstreamConnection) --------------------------------

    def upstream_head(self, up: UpstreamConnection, status: int) -> bool:
        """Write the response head; True when no body follows that the parser would wait for."""
        ex = self.active
        h = up.head
        d = ex.decision
        extra = b"" if h.has_request_id else b"X-Request-ID: " + ex.head.request_id + b"\r\n"
        if d.set_cookie is not None:
            extra += b"Set-Cookie: " + d.set_cookie + b"\r\n"
        if self.listener.https and d.options.hsts is not None and not h.has_hsts:
            extra += b"Strict-Transport-Security: " + d.options.hsts + b"\r\n"
        ex.status = status
        ex.resp_started = True
        if status == 101:
            if not ex.upgrade or ex.head.upgrade is None:
                up.keep_alive = False
                self.upstream_failed(up, b"The upstream switched protocols unasked.")
                return False
            self.transport.write(
                b"".join((b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: ", ex.head.upgrade, b"\r\nConnection: upgrade\r\n", h.fields, extra, b"\r\n"))
            )  # fmt: skip
            return False
        head_request = ex.method == b"HEAD"
        framing = NO_BODY if head_request else h.body_framing
        if framing == CHUNKED and ex.http10:
            framing = UNTIL_CLOSE  # no chunked encoding for HTTP/1.0
        ex.framing = framing
        ex.until_eof = framing != NO_BODY and not h.has_length and not h.chunked
        if framing == UNTIL_CLOSE:  # the body's end is the connection's end
            ex.keep_alive = False
        keep = ex.keep_alive and not self.closing
        self.wbuf.append(h.client_head(framing, keep, ex.http10, extra))
        return head_request

    def upstream_done(self, up: UpstreamConnection) -> None:
        ex = self.active
        wbuf = self.wbuf
        if ex.framing == CHUNKED:
            wbuf.append(b"0\r\n\r\n")
        if wbuf:  # flush(), inline
            self.transport.write(wbuf[0] if len(wbuf) == 1 else b"".join(wbuf))
            wbuf.clear()
        if not ex.req_done:
            up.keep_alive = False  # the request is still being written: the stream is unsure
        ex.upstream = None
        up.release()
        ex.resp_done = True
        if ex.req_done or not ex.keep_alive:
            self._finish(ex, up.last_active)

    def flush(self) -> None:
        """Write what the last upstream read produced, in one ``write``."""
        wbuf = self.wbuf
        if wbuf:
            self.transport.write(wbuf[0] if len(wbuf) == 1 else b"".join(wbuf))
            wbuf.clear()

    def upstream_lost(self, up: UpstreamConnection) -> None:
        self.flush()
        ex = self.active
        if ex is None or ex.upstream is not up:
            return
        ex.upstream = None
        if ex.resp_started:
            if ex.until_eof:  # a close-delimited body ends here
                if ex.framing == CHUNKED:
                    self.transport.write(b"0\r\n\r\n")
                self._response_done(ex)
            else:
                ex.keep_alive = False
                self.transport.close()  # a cut response must look cut to the client
            return
        if (
            up.requests > 1
            and not up.responding
            and not ex.retried
            and ex.method in IDEMPOTENT
            and not ex.has_body
        ):
            # The endpoint closed an idle connection as we reused it: once more, fresh.
            ex.retried = True
            asyncio.get_running_loop().create_task(self._connect(ex, ex.target_index))
            return
        self._reply(ex, 502, b"The upstream closed the connection before answering.")

    def upstream_failed(self, up: UpstreamConnection, message: bytes) -> None:
        self.flush()
        ex = self.active
        if ex is None:
            return
        ex.upstream = None
        up.abort()
        if ex.resp_started:
            ex.keep_alive = False
            self.transport.close()
        else:
            self._reply(ex, 502, message)

    def start_tunnel(self, up: UpstreamConnection, rest: bytes) -> None:
        """The upstream answered 101: from now on bytes pass through both ways."""
        ex = self.active
        ex.upstream = None
        self.tunnel = up
        self.upgrading = True
        self.parser = None
        if rest:
            self.transport.write(rest)
        if ex.early:
            up.write(b"".join(ex.early))
            ex.early = None
            self.flow.resume(PENDING_FULL)
        ex.resp_done = True
        self.active = None
        self._log(ex)

    def _early(self, data: bytes) -> None:
        ex = self.active or (self.queue[-1] if self.queue else None)
        if ex is None:
            return
        if ex.early is None:
            ex.early = [data]
        else:
            ex.early.append(data)
        if sum(map(len, ex.early)) > HIGH_WATER:
            self.flow.pause(PENDING_FULL)

    # -- ending exchanges --------------------------------------------------------

    def _reply(self, ex: Exchange, status: int, message: bytes | None) -> None:
        """Answer the active exchange without its upstream (502, 504, 408 ...)."""
        self.flush()
        up, ex.upstream = ex.upstream, None
        if up is not None:
            up.abort()
        if not ex.req_done or status in (408, 413):
            ex.keep_alive = False
        ex.status = status
        ex.resp_started = True
        self.transport.write(
            error_response(
                status, message, close=not ex.keep_alive or self.closing,
                head_only=ex.method == b"HEAD", extra=self._id_line(ex),
            )
        )  # fmt: skip
        self._response_done(ex)

    def _response_done(self, ex: Exchange) -> None:
        ex.resp_done = True
        if ex.req_done or not ex.keep_alive:
            self._finish(ex)

    def _finish(self, ex: Exchange, now: float | None = None) -> None:
        """The exchange is over (``now``: monotonic, when the caller has it)."""
        wbuf = self.wbuf
        if wbuf:
            self.flush()
        self.active = None
        self.served += 1
        if now is None:
            now = monotonic()
        self.idle_since = now
        # _log, inline: this runs once per request
        listener = self.listener
        d = ex.decision
        if type(d) is Forward:
            listener.stats.record(
                d.ingress, d.service, ex.status, listener.https, now - ex.t0, d.host
            )
        else:
            listener.stats.record(
                getattr(d, "ingress", None), None, ex.status, listener.https, now - ex.t0,
                getattr(d, "host", ""),
            )  # fmt: skip
        alog = listener.access_log
        if alog is not None:
            alog.record(self, ex, now)
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
            while self.active is None and self.queue and not self.lost:
                self._start(self.queue.popleft())
        finally:
            self._advancing = False
        if not self.queue:
            self.flow.resume(QUEUED)

    def _fail(self, status: int, message: bytes | None) -> None:
        """A request the parser or a limit refused: answer it in turn, then close."""
        self.parser = None
        self.flow.pause(QUEUED)
        ex = self.cur
        self.cur = None
        if ex is None:
            ex = Exchange(monotonic())
        if ex is self.active:
            ex.keep_alive = False
            if ex.resp_started:
                self.transport.close()
            else:
                self._reply(ex, status, message)
            return
        ex.keep_alive = False
        ex.req_done = True
        ex.upgrade = False
        ex.response = self._answer(ex, status, message)
        if ex in self.queue:
            return
        if self.active is None and not self.queue:
            self._start(ex)
        else:
            self.queue.append(ex)

    def _log(self, ex: Exchange, now: float | None = None) -> None:
        """Count the finished exchange for /metrics and write its access-log line."""
        if now is None:
            now = monotonic()
        listener = self.listener
        d = ex.decision
        listener.stats.record(
            getattr(d, "ingress", None), getattr(d, "service", None), ex.status,
            listener.https, now - ex.t0, getattr(d, "host", ""),
        )  # fmt: skip
        alog = listener.access_log
        if alog is not None:
            alog.record(self, ex, now)

    # -- timers and shutdown ------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Enforce the client and upstream timeouts (called by the server's sweeper)."""
        if self.lost or self.tunnel is not None:
            return
        s = self.settings
        cur = self.cur
        if cur is not None and not self.flow.paused:
            if not cur.headers_done:
                if now - cur.t0 > s.header_timeout:
                    self._timeout(cur, b"The request head did not arrive in time.")
                    return
            elif now - self.last_read > s.body_timeout and not cur.req_done:
                self._timeout(cur, b"The request body stopped arriving.")
                return
        ex = self.active
        if ex is not None:
            up = ex.upstream
            if (
                up is not None
                and up.backlogged
                and now - up.backlogged_since > ex.decision.options.send_timeout
            ):
                log.info("upstream %s:%s stopped reading the request", *ex.upstream_addr)
                if ex.resp_started:
                    ex.upstream = None
                    up.abort()
                    ex.keep_alive = False
                    self.transport.close()
                else:
                    self._reply(ex, 504, b"The upstream stopped reading the request.")
                return
            if (
                up is not None
                and ex.req_done
                and now - up.last_active > ex.decision.options.read_timeout
            ):
                log.info(
                    "upstream %s:%s timed out for %s",
                    *ex.upstream_addr,
                    ex.target.decode("latin-1"),
                )
                if ex.resp_started:
                    ex.upstream = None
                    up.abort()
                    ex.keep_alive = False
                    self.transport.close()
                else:
                    self._reply(ex, 504, None)
            return
        if cur is None and not self.queue:
            limit = s.keepalive_timeout if self.served else s.header_timeout
            if now - max(self.last_read, self.idle_since) > limit:
                self.transport.close()  # idle: closed quietly, as nginx does

    def _timeout(self, ex: Exchange, message: bytes) -> None:
        self.parser = None
        if ex is self.active:
            if ex.resp_started:
                self.transport.close()
            else:
                self._reply(ex, 408, message)
        elif self.active is None and not self.queue:
            ex.keep_alive = False
            ex.req_done = True
            ex.response = self._answer(ex, 408, message)
            self._start(ex)
        else:
            self.transport.close()

    def shutdown(self) -> None:
        """Stop after the current response; an idle connection closes now."""
        self.closing = True
        if self.active is None and self.cur is None and not self.queue and self.tunnel is None:
            self.transport.close()

    def abort(self) -> None:
        if self.tunnel is not None:
            self.tunnel.transport.abort()
        self.transport.abort()

    @staticmethod
    def now() -> float:
        return monotonic()
