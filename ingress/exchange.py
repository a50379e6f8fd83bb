"""One request and its response, whatever protocol the client speaks.

An :class:`Exchange` is made by a client protocol
(:class:`netplane.ingress.http.ClientConnection` for HTTP/1.1, a
:class:`netplane.ingress.http2.Stream` for each HTTP/2 stream) as a request
starts. The client protocol fills in the request head, then drives it with
a few calls: :meth:`Exchange.route` once the head is complete,
:meth:`~Exchange.start` when the response may begin (HTTP/1.1 answers in
request order), :meth:`~Exchange.request_body` and
:meth:`~Exchange.request_end` as the body arrives, :meth:`~Exchange.refuse`
and :meth:`~Exchange.client_lost` when things go wrong. From there the
exchange does the rest: it asks the route table once, answers by itself
(redirects, 404, 413, 503) or takes an idle upstream connection from the
pool (else opens one, trying the next target on a refused connect), sends
the request upstream (HTTP/1.1, whatever the client speaks, unless the
route asks for HTTP/2: then a stream of :mod:`netplane.ingress.upstream_h2`),
relays the response as the upstream reports it, enforces the upstream
timeouts (and a gRPC client's deadline), retries once on a reused
connection that the endpoint had closed, and counts and logs the exchange
when it is over.

What it needs of its client is the small :class:`ClientSide` protocol:
write a response head, body, trailers and end (the client frames them for
its own wire), write a whole answer of the proxy's own, pause and resume reading,
close, and be told when the exchange is over. The life cycle is
:mod:`netplane.ingress.exchange_state`'s table; every state change goes
through :meth:`ExchangeState.to`.
"""

from __future__ import annotations

import asyncio
import logging
from time import monotonic
from typing import TYPE_CHECKING, Protocol

from netplane.ingress.exchange_state import (
    ABORT,
    ABORTED,
    ANSWER,
    BODY,
    CONNECT,
    CONNECTING,
    DONE,
    IDLE,
    RECEIVED,
    REFUSE,
    REQUEST_END,
    RESPONSE_END,
    RESPONSE_HEAD,
    RETRY,
    SEND,
    STREAMING,
    SWITCH,
    TUNNEL,
    WAITING,
    ExchangeState,
)
from netplane.ingress.gateway_filters import GatewayExtras, modify_request, modify_response
from netplane.ingress.h2_codec import encode_block
from netplane.ingress.http2_head import parse_lines, upstream_fields
from netplane.ingress.http_head import NO_BODY, RequestHead, ResponseHead
from netplane.ingress.mirror import mirror_request
from netplane.ingress.routes import Decision, Forward, Redirect, RouteTable

from netplane.addresses import hostport
from netplane.l4.flow_control import HIGH_WATER, PEER_BACKLOG, PENDING_FULL

if TYPE_CHECKING:
    from netplane.ingress.accesslog import AccessLog
    from netplane.ingress.stats import RequestStats
    from netplane.ingress.upstream import Pool, UpstreamConnection
    from netplane.ingress.upstream_h2 import H2Pool, H2Stream

log = logging.getLogger("netplane.ingress")

IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))


class Shared(Protocol):
    """What the exchanges of one listener share (:class:`netplane.ingress.http.Listener`)."""

    routes: RouteTable
    pool: Pool
    h2pool: H2Pool
    stats: RequestStats
    access_log: AccessLog | None
    https: bool


class ClientSide(Protocol):
    """What an exchange needs of the client connection it belongs to.

    The client protocol frames what it is given for its own wire (HTTP/1.1:
    chunked or not, ``Connection: close`` or not) and owns its connection's
    keep-alive; the exchange never touches its transport.
    """

    # Read-only (a property here), so that a client may hold a subtype of Shared
    # (a mutable protocol attribute would have to be exactly Shared).
    @property
    def listener(self) -> Shared: ...

    client_ip: str
    client_ip_b: bytes
    #: the client speaks HTTP/2 (the access log's protocol column)
    http2: bool
    #: the forwarded fields every request of this connection gets upstream
    forwarded: bytes
    #: the client's write buffer is above its high-water mark
    write_paused: bool

    def write_continue(self, ex: Exchange) -> None:
        """Tell the client to send the body it announced with ``Expect: 100-continue``."""

    def write_answer(
        self, ex: Exchange, status: int, message: bytes | None, location: bytes | None
    ) -> None:
        """Write a whole response of the proxy's own (an error page, or a redirect to ``location``)."""

    def write_head(self, ex: Exchange, head: ResponseHead, extra: bytes) -> None:
        """Write the upstream's response head, with ``extra`` (pre-framed lines) added."""

    def write_switch(self, ex: Exchange, head: ResponseHead, extra: bytes) -> None:
        """Write the upstream's 101 (Switching Protocols) head."""

    def write_body(self, data: bytes) -> None:
        """Write response body bytes (they may wait for :meth:`flush`)."""

    def write_trailers(self, ex: Exchange, fields: list[tuple[bytes, bytes]]) -> None:
        """The response's trailer fields (from an HTTP/2 endpoint), before its end."""

    def write_end(self, ex: Exchange) -> None:
        """The response body is complete, the exchange not yet over; write what waits."""

    def flush(self) -> None:
        """Write what waits (the end of one upstream read)."""

    def write(self, data: bytes) -> None:
        """Bytes from the far end of a tunnel (after :meth:`start_tunnel`), as they are."""

    def pause_reading(self, reason: int) -> None: ...

    def resume_reading(self, reason: int) -> None: ...

    def close(self) -> None:
        """Close the connection after what was written (a response that cannot be completed)."""

    def exchange_over(self, ex: Exchange, now: float) -> None:
        """``ex`` is over, counted and logged (``now``: monotonic).

        A response that ended with the exchange (the common case) was never
        given :meth:`write_end`: its end is written here, one call fewer per
        request on the hot path.
        """

    def start_tunnel(self, ex: Exchange, up: UpstreamConnection, rest: bytes) -> None:
        """The upstream switched protocols: pass bytes both ways from now on."""


class Exchange(ExchangeState):
    """One request and its response, from the first byte read to the last written."""

    __slots__ = (
        "answer",
        "body_in",
        "bytes_out",
        "client",
        "deadline",
        "decision",
        "grpc_status",
        "head",
        "http10",
        "keep_alive",
        "method",
        "pending",
        "pending_size",
        "req_trailers",
        "retried",
        "status",
        "t0",
        "t_received",
        "t_up",
        "target",
        "target_index",
        "until_eof",
        "upgrade",
        "upstream",
        "upstream_addr",
        "upstream_head",
    )

    def __init__(
        self,
        client: ClientSide,
        t0: float,
        target: bytes = b"",
        head: RequestHead | None = None,
        method: bytes = b"",
        http10: bool = False,
        keep_alive: bool = True,
        upgrade: bool = False,
        received: float = 0.0,
    ) -> None:
        """A request whose head is complete (``t0``: monotonic, when its first byte arrived).

        ``received``: for a request without a body, the monotonic time its head
        ended; it starts ``RECEIVED`` then, and :meth:`request_end` is not called.
        """
        self.request_state = RECEIVED if received else BODY
        self.response_state = IDLE
        self.client = client
        self.t0 = t0
        self.target = target
        self.head = head if head is not None else RequestHead()
        self.method = method
        self.http10 = http10
        #: the client connection may carry on after this exchange
        self.keep_alive = keep_alive
        #: the client asked to switch protocols (Upgrade)
        self.upgrade = upgrade
        #: the route table's answer (None: refused before it was asked); a Forward
        #: whenever ``answer`` is None, which is what the ``type: ignore``s below rely on
        self.decision: Decision | None = None
        #: (status, message, location) of an answer made without an upstream
        self.answer: tuple[int, bytes | None, bytes | None] | None = None
        #: an HTTP/1.1 connection, or a stream of an HTTP/2 one (``decision.upstream_h2``)
        self.upstream: UpstreamConnection | H2Stream | None = None
        self.upstream_addr: tuple[str, int] | None = None
        self.upstream_head = b""
        # body bytes read before the upstream is up (framed for HTTP/1.1, as they are for HTTP/2)
        self.pending: list[bytes] | None = None
        self.pending_size = 0
        self.req_trailers = b""  # the request's trailer lines (HTTP/2 clients)
        #: monotonic time the client's own deadline passes (gRPC's grpc-timeout; 0: none)
        self.deadline = 0.0
        #: a gRPC call's status as the client got it (-1: not a gRPC answer)
        self.grpc_status = -1
        self.body_in = 0
        self.bytes_out = 0
        self.status = 0
        self.until_eof = False
        self.retried = False
        self.target_index = 0
        self.t_up = 0.0
        #: monotonic time the request was read to its end (proxy-read-timeout runs from here)
        self.t_received = received

    @property
    def has_body(self) -> bool:
        cl = self.head.content_length
        return self.head.chunked or (cl is not None and cl.strip() != b"0")

    def close_connection(self) -> None:
        """The client connection ends after this exchange."""
        self.keep_alive = False

    # -- driven by the client protocol ----------------------------------------------------

    def route(self) -> None:
        """Ask the route table what to do with the request (once, before :meth:`start`)."""
        head = self.head
        target = self.target
        if target[:1] != b"/":
            target = self._origin_form()
        host = head.host.decode("latin-1") if head.host is not None else ""
        client = self.client
        try:
            d = client.listener.routes.route(
                host,
                target.decode("latin-1"),
                https=client.listener.https,
                client_ip=client.client_ip,
                headers=head.headers,
                method=self.method,
            )
        except Exception:
            log.exception("route lookup failed for %r %r", host, self.target)
            self.answer = (500, b"The proxy failed to route this request.", None)
            return
        self.decision = d
        if isinstance(d, Forward):
            if d.gateway is not None:
                self._gateway(d.gateway)
            limit = d.options.body_limit
            cl = head.content_length
            if limit is not None and cl is not None and int(cl) > limit:
                self.answer = (413, None, None)
            elif not d.targets:
                self.answer = (503, None, None)
        elif isinstance(d, Redirect):
            self.answer = (d.status, None, d.location)
        else:
            self.answer = (d.status, d.body.rstrip(b"\n"), None)

    def _gateway(self, extras: GatewayExtras) -> None:
        """A Gateway API rule's filters on the request, its timeout, its mirrors."""
        if extras.request_headers or extras.host is not None:
            self.head = modify_request(self.head, extras.request_headers, extras.host)
        if extras.request_timeout:
            deadline = self.t0 + extras.request_timeout
            if not self.deadline or deadline < self.deadline:
                self.deadline = deadline
        if extras.mirrors:
            client = self.client
            d: Forward = self.decision  # type: ignore[assignment]  # called with a Forward
            mirror_request(
                extras.mirrors, self.head, self.method, d.path.encode("latin-1"),
                client.client_ip_b, client.forwarded, self.has_body,
            )  # fmt: skip

    def _origin_form(self) -> bytes:
        """An absolute-form target (RFC 9112 §3.2.2): its authority replaces Host, its path routes."""
        scheme, sep, rest = self.target.partition(b"://")
        if not sep or scheme.lower() not in (b"http", b"https"):
            return self.target  # "*" (OPTIONS) or something the route table will not match
        authority, slash, path = rest.partition(b"/")
        authority = authority.rpartition(b"@")[2]  # userinfo is never forwarded
        if authority:
            self.head.host = authority
        return b"/" + path if slash else b"/"

    def refuse(self, status: int, message: bytes | None) -> None:
        """The request is refused (malformed, over a limit, too slow); the rest of it is never read.

        Not yet answering: the answer waits for the exchange's turn. Answering
        already: the answer replaces the response, or the connection closes
        when the response has begun.
        """
        self.to(REFUSE)
        self.keep_alive = False
        state = self.response_state
        if state is IDLE:
            self.upgrade = False
            self.answer = (status, message, None)
        elif state is CONNECTING or state is WAITING:
            self.reply(status, message)
        else:
            self.client.close()

    def start(self, now: float) -> None:
        """The response may begin (``now``: monotonic, the time of the client's last read)."""
        answer = self.answer
        if answer is not None:
            self.reply(*answer)
            return
        client = self.client
        if self.head.expect_continue and self.request_state is BODY and not self.http10:
            client.write_continue(self)
        d: Forward = self.decision  # type: ignore[assignment]  # no answer: a Forward
        ip, port = d.targets[0]
        listener = client.listener
        pool = listener.h2pool if d.upstream_h2 else listener.pool
        up = pool.take((ip, port, d.upstream_tls))
        if up is not None:
            self._send(up, now)
        else:
            self.to(CONNECT)
            asyncio.get_running_loop().create_task(self._connect(0))

    def request_body(self, body: bytes) -> bool:
        """Body bytes from the client; False when they pass the route's body limit."""
        self.body_in += len(body)
        if self.answer is not None:  # answered without an upstream: read and dropped
            return True
        limit = self.decision.options.body_limit  # type: ignore[union-attr]  # no answer: a Forward
        if limit is not None and self.body_in > limit:
            return False
        if self.head.transfer_encoding is not None and not self.decision.upstream_h2:  # type: ignore[union-attr]  # no answer: a Forward
            body = b"%x\r\n%b\r\n" % (len(body), body)
        up = self.upstream
        if up is not None:
            up.write(body)
        else:
            if self.pending is None:
                self.pending = [body]
            else:
                self.pending.append(body)
            self.pending_size += len(body)
            if self.pending_size > HIGH_WATER:
                self.client.pause_reading(PENDING_FULL)
        return True

    def request_end(self, now: float, trailers: bytes = b"") -> None:
        """The request was read to its end (``now``: monotonic).

        ``trailers``: the request's trailer fields as ``Name: value\\r\\n``
        lines (HTTP/2), passed on in a chunked body's last chunk.
        """
        self.to(REQUEST_END)
        self.t_received = now
        up = self.upstream
        if self.answer is None and self.decision.upstream_h2:  # type: ignore[union-attr]  # no answer: a Forward
            self.req_trailers = trailers
            if up is not None:
                up.end(_trailer_block(trailers))  # type: ignore[union-attr]  # upstream_h2: an H2Stream
        elif self.answer is None and self.head.transfer_encoding is not None:
            last = b"0\r\n" + trailers + b"\r\n" if trailers else b"0\r\n\r\n"
            if up is not None:
                up.write(last)
            elif self.pending is None:
                self.pending = [last]
            else:
                self.pending.append(last)
        # Answered already: over now, unless it was over at its answer (no keep-alive).
        if self.response_state is DONE and self.keep_alive:
            self._log(now, True)

    def client_lost(self) -> None:
        """The client connection is gone: drop the upstream, log what was not answered."""
        up = self._unbind()
        if up is not None:
            up.abort()
        state = self.response_state
        if state is DONE or state is TUNNEL:
            return
        if state is not ABORTED:
            self.to(ABORT)
        self.status = self.status or 499  # nginx's "client closed the request"
        self._log(monotonic(), False)

    def sweep(self, now: float) -> bool:
        """Enforce the upstream timeouts (proxy-send and proxy-read, and the client's own
        deadline); True when one fired."""
        if self.deadline and now > self.deadline and not self._over():
            log.info("the deadline of %s passed", self.target.decode("latin-1"))
            up = self._unbind()
            if up is not None:
                up.abort()
            if self.response_started:
                self._cut()
            else:
                self.reply(504, b"The call's deadline passed.")
            return True
        up = self.upstream
        if up is None:
            return False
        options = self.decision.options  # type: ignore[union-attr]  # sent upstream: a Forward
        if up.backlogged and now - up.backlogged_since > options.send_timeout:
            log.info("upstream %s stopped reading the request", hostport(*up.key[:2]))
            if self.response_started:
                self._unbind()
                up.abort()
                self._cut()
            else:
                self.reply(504, b"The upstream stopped reading the request.")
            return True
        if (
            self.request_state is RECEIVED
            and now - max(up.last_active, self.t_received) > options.read_timeout
        ):
            log.info(
                "upstream %s timed out for %s",
                hostport(*up.key[:2]),
                self.target.decode("latin-1"),
            )
            if self.response_started:
                self._unbind()
                up.abort()
                self._cut()
            else:
                self.reply(504, None)
            return True
        return False

    # -- the upstream ------------------------------------------------------------------

    async def _connect(self, start: int) -> None:
        d: Forward = self.decision  # type: ignore[assignment]  # started without an answer
        targets = d.targets
        listener = self.client.listener
        pool = listener.h2pool if d.upstream_h2 else listener.pool
        last: BaseException | None = None
        for i in range(start, len(targets)):
            ip, port = targets[i]
            key = (ip, port, d.upstream_tls)
            # A next endpoint's idle connection first, as for the first choice (the
            # one at ``start`` was tried already, or failed as a reused one).
            up = pool.take(key) if i > start else None
            if up is None:
                try:
                    up = await pool.connect(key, d.options.connect_timeout)
                except (OSError, TimeoutError) as e:
                    last = e
                    log.debug("cannot connect to %s: %s", hostport(ip, port), e)
                    continue
            if self.response_state is not CONNECTING:  # answered or aborted meanwhile
                up.close()
                return
            self.target_index = i
            self._send(up, monotonic())
            return
        if self.response_state is CONNECTING:
            if isinstance(last, TimeoutError):
                self.reply(504, b"The upstream did not accept the connection in time.")
            else:
                self.reply(502, b"The upstream refused the connection.")

    def _send(self, up: UpstreamConnection | H2Stream, now: float) -> None:
        self.to(SEND)
        d: Forward = self.decision  # type: ignore[assignment]  # started without an answer
        client = self.client
        self.upstream = up
        self.upstream_addr = d.targets[self.target_index]
        if d.upstream_h2:
            self._send_h2(up, d, now)  # type: ignore[arg-type]  # upstream_h2: an H2Stream
            return
        if not self.upstream_head:
            self.upstream_head = self.head.upstream_head(
                self.method, d.path.encode("latin-1"), client.client_ip_b, client.forwarded,
                self.upgrade,
            )  # fmt: skip
        if self.pending:
            up.send(self, self.upstream_head + b"".join(self.pending), now)  # type: ignore[call-arg, arg-type]  # not upstream_h2: an UpstreamConnection
            self.pending = None
            self.pending_size = 0
            client.resume_reading(PENDING_FULL)
        else:
            up.send(self, self.upstream_head, now)  # type: ignore[call-arg, arg-type]  # (the same)
        self.t_up = now
        if client.write_paused:
            up.pause_reading()

    def _send_h2(self, up: H2Stream, d: Forward, now: float) -> None:
        """The request to an HTTP/2 endpoint: its fields, the body read so far, its end if read."""
        client = self.client
        block = encode_block(
            upstream_fields(
                self.head, self.method, d.path.encode("latin-1"), d.upstream_tls,
                client.client_ip_b, client.forwarded,
            )
        )  # fmt: skip
        end = None if self.request_state is BODY else _trailer_block(self.req_trailers)
        up.send(self, block, self.pending, end, now)
        if self.pending:
            self.pending = None
            self.pending_size = 0
            client.resume_reading(PENDING_FULL)
        self.t_up = now
        if client.write_paused:
            up.pause_reading()

    # -- upstream events (called by the UpstreamConnection bound to this exchange) --------

    def response_head(self, up: UpstreamConnection | H2Stream, head: ResponseHead) -> bool:
        """Pass the response head on; True when no body follows that the parser would wait for."""
        d: Forward = self.decision  # type: ignore[assignment]  # sent upstream: a Forward
        client = self.client
        # The request's id is not None here: RequestHead.upstream_head (in _send) made one
        # for a request that came without.
        extra = b"" if head.has_request_id else b"X-Request-ID: " + self.head.request_id + b"\r\n"  # type: ignore[operator]  # made in _send
        if d.set_cookie is not None:
            extra += b"Set-Cookie: " + d.set_cookie + b"\r\n"
        if client.listener.https and d.options.hsts is not None and not head.has_hsts:
            extra += b"Strict-Transport-Security: " + d.options.hsts + b"\r\n"
        gw = d.gateway
        if gw is not None and gw.response_headers:
            head = modify_response(head, gw.response_headers)
        status = self.status = head.status
        if status == 101:
            if not self.upgrade or self.head.upgrade is None:
                self.upstream_failed(up, b"The upstream switched protocols unasked.")
            else:
                client.write_switch(self, head, extra)
            return False
        self.to(RESPONSE_HEAD)
        head_request = self.method == b"HEAD"
        self.until_eof = (
            not head_request
            and head.body_framing != NO_BODY
            and not head.has_length
            and not head.chunked
        )
        client.write_head(self, head, extra)
        return head_request

    def response_end(self, up: UpstreamConnection | H2Stream) -> None:
        """The upstream's response is complete: give the connection back, end the client's."""
        self.to(RESPONSE_END)
        self.upstream = None
        self.bytes_out = up.body_bytes
        # A request still being written leaves the upstream stream unsure.
        received = self.request_state is RECEIVED
        up.release(received)
        if received or not self.keep_alive:
            self._log(up.last_active, True)  # exchange_over writes the response's end
        else:
            self.client.write_end(self)

    def upstream_lost(self, up: UpstreamConnection | H2Stream) -> None:
        """The upstream connection closed."""
        self.client.flush()
        if self.upstream is not up:
            return
        self._unbind()
        if self.response_state is STREAMING:
            if self.until_eof:  # a close-delimited body ends here
                self.to(RESPONSE_END)
                self.client.write_end(self)
                self._response_done()
            else:
                self._cut()  # a cut response must look cut to the client
            return
        if (
            up.requests > 1
            and not up.responding
            and not self.retried
            and self.method in IDEMPOTENT
            and not self.has_body
        ):
            # The endpoint closed an idle connection as we reused it: once more, fresh.
            self.retried = True
            self.to(RETRY)
            asyncio.get_running_loop().create_task(self._connect(self.target_index))
            return
        self.reply(502, b"The upstream closed the connection before answering.")

    def upstream_failed(self, up: UpstreamConnection | H2Stream, message: bytes) -> None:
        """The upstream sent what cannot be passed on (a malformed or oversized response)."""
        self.client.flush()
        self._unbind()
        up.abort()
        if self.response_started:
            self._cut()
        else:
            self.reply(502, message)

    def switched(self, up: UpstreamConnection, rest: bytes) -> None:
        """The upstream answered 101: the connection becomes a tunnel; the exchange is over."""
        self.to(SWITCH)
        self.upstream = None
        self.client.start_tunnel(self, up, rest)
        self._log(monotonic(), False)

    def _over(self) -> bool:
        """The response is done, cut or became a tunnel."""
        state = self.response_state
        return state is DONE or state is ABORTED or state is TUNNEL

    def _unbind(self) -> UpstreamConnection | H2Stream | None:
        """Let go of the upstream connection (returned), keeping the count of body bytes it passed."""
        up = self.upstream
        if up is not None:
            self.upstream = None
            self.bytes_out = up.body_bytes
        return up

    def flush(self) -> None:
        """The end of one upstream read: what it produced goes out in one write."""
        self.client.flush()

    def pause_client(self) -> None:
        """The upstream's write buffer is full: stop reading the client."""
        self.client.pause_reading(PEER_BACKLOG)

    def resume_client(self) -> None:
        self.client.resume_reading(PEER_BACKLOG)

    # -- ending ----------------------------------------------------------------------

    def reply(self, status: int, message: bytes | None, location: bytes | None = None) -> None:
        """Answer without the upstream (a route's answer, 502, 504, 408 ...)."""
        client = self.client
        client.flush()
        up = self._unbind()
        if up is not None:
            up.abort()
        self.status = status
        client.write_answer(self, status, message, location)
        self.to(ANSWER)
        self._response_done()

    def _cut(self) -> None:
        """The response has begun and cannot be completed: the client must see it cut."""
        self.keep_alive = False
        if self.response_state is not ABORTED:
            self.to(ABORT)
        self.client.close()

    def _response_done(self) -> None:
        if self.request_state is RECEIVED or not self.keep_alive:
            now = monotonic()
            self._log(now, True)

    def _log(self, now: float, over: bool) -> None:
        """Count the exchange for /metrics and write its access-log line (``now``: monotonic).

        ``over``: the exchange is over, and its client protocol is told so.
        """
        client = self.client
        listener = client.listener
        d = self.decision
        if type(d) is Forward:
            listener.stats.record(
                d.ingress, d.service, self.status, listener.https, now - self.t0, d.host,
                client.http2,
            )  # fmt: skip
        else:
            listener.stats.record(
                getattr(d, "ingress", None), None, self.status, listener.https, now - self.t0,
                getattr(d, "host", ""), client.http2,
            )  # fmt: skip
        if self.grpc_status >= 0:
            listener.stats.record_grpc(
                getattr(d, "ingress", None), getattr(d, "service", None), self.grpc_status
            )
        alog = listener.access_log
        if alog is not None:
            alog.record(self.client, self, now)
        if over:
            self.client.exchange_over(self, now)


def _trailer_block(lines: bytes) -> bytes:
    """Trailer lines (``Name: value\\r\\n``) as an HTTP/2 header block (b"": none)."""
    return encode_block(parse_lines(lines)) if lines else b""
