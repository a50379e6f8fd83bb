"""The HTTP/2 client protocol (RFC 9113): one Protocol per connection, one exchange per stream.

A connection becomes HTTP/2 when TLS's ALPN picked ``h2``, or, on a plain
listener with ``--ingress-h2c on``, when it opens with the HTTP/2 preface
(prior knowledge; there is no ``Upgrade: h2c``). :class:`ClientConnection
<netplane.ingress.http.ClientConnection>` sees either first and hands the
transport over to an :class:`Http2Connection`.

:mod:`netplane.ingress.h2_codec` keeps the protocol's state (frames, HPACK,
streams, windows, SETTINGS and PING answers, the field rules) and reports to
this module, which maps it to the same
:class:`~netplane.ingress.exchange.Exchange` an HTTP/1.1 request gets: each
stream's :class:`Stream` is that exchange's
:class:`~netplane.ingress.exchange.ClientSide`, so routing, annotations,
upstream pooling, timeouts, access log and metrics are the ones HTTP/1.1
uses. The upstream side stays HTTP/1.1.

Flow control is tied to the other side both ways. A request body's bytes
are acknowledged to the client (WINDOW_UPDATE) as the exchange passes them
on, and not while it holds the client's reading (the upstream's write
buffer is full, or the bytes read before the upstream was up are over their
bound). A response's bytes wait for the stream's window, and the upstream is
not read while any wait or while the client's socket buffer is full.

Limits, and the attacks HTTP/2 servers have fallen to:

- SETTINGS_MAX_CONCURRENT_STREAMS (128; a stream beyond it is refused); a
  header list over ``--ingress-max-header-bytes`` gets 431 on its stream
  alone, one over twice that ends the connection while it is decoded.
- Rapid reset (CVE-2023-44487): streams the client cancels before their
  response ends draw from a budget (:data:`RESET_BUDGET`, refilled at
  :data:`RESET_REFILL` a second); past it, GOAWAY ENHANCE_YOUR_CALM, and the
  work those streams started is dropped.
- CONTINUATION flood (CVE-2024-27316): a header block is bounded while it
  arrives (the codec's ``max_block``), not once it is whole.
- Control-frame and empty-frame floods: while the client's socket buffer is
  over its high-water mark the client is not read, so the PING and SETTINGS
  answers owed to it stay bounded; a connection whose output does not drain
  for ``--ingress-body-timeout`` is closed, as is a stream whose window stays
  shut that long. Empty DATA frames draw from the reset budget.
- HPACK: the decoder's table is bounded by SETTINGS_HEADER_TABLE_SIZE (4096)
  and a bad block or table update is a COMPRESSION_ERROR.
- A protocol error ends that connection with GOAWAY and its code; no other
  connection notices.

A GOAWAY from either side stops new streams; the open ones are finished.
WebSocket over HTTP/2 (RFC 8441, extended CONNECT) is not offered.
"""

from __future__ import annotations

import asyncio
import logging
from time import monotonic
from typing import Any

from netplane.ingress.errors import CONTENT_TYPE, error_body
from netplane.ingress.exchange import Exchange
from netplane.ingress.exchange_state import BODY, DONE, RECEIVED
from netplane.ingress.h2_codec import (
    CANCEL,
    ENHANCE_YOUR_CALM,
    INTERNAL_ERROR,
    NO_ERROR,
    PREFACE,
    H2Error,
    Header,
    Http2Codec,
    encode_block,
    push_waiting,
)
from netplane.ingress.http2_head import (
    Http2Request,
    extra_block,
    grpc_message,
    grpc_status,
    grpc_timeout,
    parse_lines,
    request_head,
    response_block,
    status_of,
)
from netplane.ingress.http_head import HeadError, RequestHead, ResponseHead, forwarded_fields
from netplane.ingress.upstream import UpstreamConnection

from netplane.addresses import peer_ip
from netplane.l4.flow_control import HIGH_WATER, FlowControl

__all__ = ["PREFACE", "Http2Connection", "Stream"]

log = logging.getLogger("netplane.ingress")

#: Streams the client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
MAX_CONCURRENT_STREAMS = 128
#: Each stream's receive window (the SETTINGS default), and the connection's.
STREAM_WINDOW = 65535
CONNECTION_WINDOW = 1024 * 1024
#: Streams a client may cancel before their response ends, at once, and per second after.
RESET_BUDGET = 2 * MAX_CONCURRENT_STREAMS
RESET_REFILL = 100.0
#: Reading the client is held: its socket buffer is over the high-water mark.
CLIENT_BACKLOG = 8

_CONTINUE = encode_block([(b":status", b"100")])
#: The largest header list (as RFC 7541 counts it) whose request head is kept for reuse.
_KEPT_REQUEST_MAX = 4096


class Http2Connection(asyncio.BufferedProtocol):
    """One HTTP/2 client connection: the codec's state, a :class:`Stream` per exchange."""

    #: The access log's protocol column.
    http2 = True
    #: never parked: the sweeper checks it every round (see ``ClientConns``)
    park_tick = 0

    def __init__(self, listener: Any) -> None:
        self.listener = listener
        self.settings = listener.settings
        # The bound the codec enforces while decoding (beyond it: a connection error);
        # the proxy's own limit, below it, answers 431 on the stream alone.
        self.h2 = Http2Codec(
            self,
            max_streams=MAX_CONCURRENT_STREAMS,
            stream_window=STREAM_WINDOW,
            connection_window=CONNECTION_WINDOW,
            max_header_list=2 * self.settings.max_header_bytes + 4096,
        )
        self.transport: Any = None
        self.flow: Any = None
        self.streams: dict[int, Stream] = {}
        self.client_ip = ""
        self.client_ip_b = b""
        self.forwarded = b""
        self.write_paused = False
        self.write_paused_since = 0.0
        self.closing = False
        self.lost = False
        self.served = 0
        self.last_read = self.idle_since = monotonic()
        self.budget = float(RESET_BUDGET)
        self.budget_at = self.last_read
        self._flush_due = False
        #: request heads read from header lists, by the list's identity (the list is kept)
        self._requests: dict[int, tuple[list[Header], bool, Http2Request]] = {}

    # -- asyncio ---------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        """Called by the HTTP/1.1 protocol that handed this connection over (not by the loop)."""
        self.transport = transport
        self.flow = FlowControl(transport)
        ip = peer_ip(transport.get_extra_info("peername"))
        self.client_ip = ip
        self.client_ip_b = ip.encode()
        listener = self.listener
        self.forwarded = forwarded_fields(self.client_ip_b, listener.proto, listener.port)
        listener.conns.add(self)
        self.flush()  # our SETTINGS and the connection's window

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.listener.rbuf

    def buffer_updated(self, nbytes: int) -> None:
        self.receive(bytes(self.listener.rbuf[:nbytes]))

    def data_received(self, data: bytes) -> None:
        self.receive(data)

    def receive(self, data: bytes) -> None:
        """Bytes from the client: the codec calls back per frame; then what it owes goes out."""
        self.last_read = monotonic()
        try:
            self.h2.receive(data)
        except H2Error as e:
            log.info("ingress: HTTP/2 connection error from %s: %s", self.client_ip, e)
            self._end()
            return
        if not self.lost:
            self.flush()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost:
            return
        self.lost = True
        self.flow.finish()
        self.listener.conns.discard(self)
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            stream.lost()

    def pause_writing(self) -> None:
        # The client does not read: stop reading it too (what it sends may owe it
        # answers: PING, SETTINGS), and stop reading the upstreams of its streams.
        self.write_paused = True
        self.write_paused_since = monotonic()
        self.flow.pause(CLIENT_BACKLOG)
        for stream in self.streams.values():
            stream.update_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.flow.resume(CLIENT_BACKLOG)
        for stream in self.streams.values():
            stream.update_paused()

    # -- the codec's reports ---------------------------------------------------------

    def on_request(
        self, sid: int, headers: list[Header], end_stream: bool, malformed: str | None
    ) -> None:
        now = self.last_read
        stream = self.streams[sid] = Stream(self, sid, now)
        if malformed is not None:
            self._refused(stream, now, 400, b"The request is malformed: %s." % malformed.encode())
            return
        # The codec hands back the same list for a header block it has decoded
        # before: its request head is read once, and copied for each request.
        kept = self._requests.get(id(headers))
        if kept is not None and kept[0] is headers and kept[1] is end_stream:
            template = kept[2]
        else:
            try:
                template = request_head(headers, end_stream=end_stream)
            except HeadError as e:
                self._refused(stream, now, e.status, e.message)
                return
            if template.size <= _KEPT_REQUEST_MAX:
                if len(self._requests) >= 256:
                    self._requests.clear()
                self._requests[id(headers)] = (headers, end_stream, template)
        if template.size > self.settings.max_header_bytes:
            self._refused(stream, now, 431, None)
            return
        head = template.head.copy()
        ex = stream.ex = Exchange(
            stream, now, template.target, head, template.method, False, True, False,
            now if end_stream else 0.0,
        )  # fmt: skip
        if template.grpc:
            stream.grpc = True
            timeout = grpc_timeout(head.headers.get(b"grpc-timeout"))
            if timeout is not None:
                ex.deadline = now + timeout
        ex.route()
        ex.start(now)

    def _refused(self, stream: Stream, now: float, status: int, message: bytes | None) -> None:
        ex = stream.ex = Exchange(stream, now, b"", RequestHead())
        ex.refuse(status, message)
        ex.start(now)

    def on_data(self, sid: int, data: bytes, size: int, end_stream: bool) -> None:
        stream = self.streams.get(sid)
        if not data and not end_stream and not self._spend():
            return
        ex = stream.ex if stream is not None else None
        if stream is None or ex is None or ex.request_state is not BODY:
            self.h2.ack(sid, size)  # (answered and reset already, or refused): dropped
            return
        stream.last_read = self.last_read
        if data and not ex.request_body(data):
            ex.refuse(413, None)
        elif end_stream:
            ex.request_end(self.last_read)
        if stream.hold:
            stream.unacked += size
        else:
            self.h2.ack(sid, size)

    def on_trailers(self, sid: int, headers: list[Header], malformed: str | None) -> None:
        stream = self.streams.get(sid)
        ex = stream.ex if stream is not None else None
        if ex is None or ex.request_state is not BODY:
            return
        if malformed is not None:
            ex.refuse(400, b"The request's trailers are malformed: %s." % malformed.encode())
            return
        ex.request_end(self.last_read, b"".join(b"%s: %s\r\n" % (n, v) for n, v in headers))

    def on_reset(self, sid: int, code: int) -> None:
        stream = self.streams.pop(sid, None)
        if stream is None:
            return
        stream.reset = True
        ex = stream.ex
        if ex is not None and ex.response_state is not DONE:
            stream.lost()
            self._spend()

    def on_window(self, sid: int) -> None:
        push_waiting(self.streams, sid)

    def on_goaway(self, last_stream: int, code: int) -> None:
        if code:
            log.info("ingress: HTTP/2 client %s sent GOAWAY with error %d", self.client_ip, code)
        # It opens no more streams; the open ones are finished, then the connection closes.
        self.closing = True
        if not self.streams:
            self.flush_now()
            self.transport.close()

    # -- budget and the end ----------------------------------------------------------

    def _spend(self) -> bool:
        """Take one from the budget of frames that cost work and give none; False past it."""
        now = self.last_read
        budget = min(RESET_BUDGET, self.budget + (now - self.budget_at) * RESET_REFILL)
        self.budget_at = now
        if budget < 1:
            log.warning(
                "ingress: HTTP/2 client %s cancels streams (or sends empty frames) faster "
                "than %d a second: GOAWAY ENHANCE_YOUR_CALM",
                self.client_ip,
                RESET_REFILL,
            )
            self.h2.goaway(ENHANCE_YOUR_CALM)
            self._end()
            return False
        self.budget = budget - 1
        return True

    def _end(self) -> None:
        """Write what is owed (a GOAWAY last), close; the streams' exchanges end as lost."""
        self.flush_now()
        self.transport.close()
        self.connection_lost(None)

    def flush(self) -> None:
        """Write what the codec has queued once the loop has run this turn's callbacks.

        Frames of every stream answered in one turn go out in one ``write``
        (a write per stream cost a system call each: a tenth of the CPU per
        gRPC call through an HTTP/2 endpoint).
        """
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self.flush_now)

    def flush_now(self) -> None:
        """Write what the codec has queued, now (before a close)."""
        self._flush_due = False
        data = self.h2.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def stream_done(self, stream: Stream) -> None:
        """``stream``'s response was sent whole and its exchange is over (counted once)."""
        if self.streams.pop(stream.id, None) is None:
            return
        self.served += 1
        if not self.streams:
            self.idle_since = monotonic()
            if self.closing:
                self.flush_now()
                self.transport.close()

    # -- timers and shutdown ------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Enforce the timeouts of the connection, its streams and their upstreams."""
        if self.lost:
            return
        s = self.settings
        if self.write_paused and now - self.write_paused_since > s.body_timeout:
            log.info("ingress: HTTP/2 client %s stopped reading; closing", self.client_ip)
            self.transport.abort()
            return
        if not self.streams:
            limit = s.keepalive_timeout if self.served else s.header_timeout
            if now - max(self.last_read, self.idle_since) > limit:
                self.shutdown()  # idle: a GOAWAY, then closed
            return
        for stream in list(self.streams.values()):
            stream.sweep(now, s.body_timeout)
        self.flush()

    def shutdown(self) -> None:
        """Serve the streams already open, refuse new ones (GOAWAY NO_ERROR), then close."""
        self.closing = True
        if not self.h2.goaway_sent:
            self.h2.goaway(NO_ERROR)
            self.flush_now()
        if not self.streams:
            self.transport.close()

    def abort(self) -> None:
        self.transport.abort()


class Stream:
    """One stream of an :class:`Http2Connection`: the ClientSide of its exchange."""

    __slots__ = (
        "blocked_since", "client_ip", "client_ip_b", "conn", "end", "ended", "ex", "forwarded",
        "grpc", "head_block", "hold", "id", "last_read", "listener", "out", "out_size", "over",
        "reset", "trailer_block", "unacked", "write_paused",
    )  # fmt: skip

    #: The access log's protocol column.
    http2 = True

    def __init__(self, conn: Http2Connection, sid: int, now: float) -> None:
        self.conn = conn
        self.id = sid
        self.listener = conn.listener
        self.client_ip = conn.client_ip
        self.client_ip_b = conn.client_ip_b
        self.forwarded = conn.forwarded
        self.write_paused = conn.write_paused
        self.ex: Exchange | None = None
        self.grpc = False
        self.out: list[bytes] = []  # response body bytes waiting for the stream's window
        self.out_size = 0
        self.end = False  # the response is complete (END_STREAM once ``out`` is sent)
        self.ended = False  # END_STREAM was sent
        self.over = False  # the exchange is over
        self.reset = False  # RST_STREAM went either way
        self.hold = 0  # reasons the exchange holds the client's reading (its ACKs here)
        self.unacked = 0
        self.last_read = now
        self.blocked_since = 0.0
        #: the response head, sent with the first body bytes or the end (a response
        #: without a body, such as gRPC's trailers-only answer, is one HEADERS frame)
        self.head_block: bytes | None = None
        self.trailer_block = b""

    # -- the ClientSide of the exchange ----------------------------------------------------

    def write_continue(self, ex: Exchange) -> None:
        if not self.reset:
            self.conn.h2.send_headers(self.id, _CONTINUE, False)

    def write_answer(
        self, ex: Exchange, status: int, message: bytes | None, location: bytes | None
    ) -> None:
        rid = ex.head.request_id
        if self.grpc:
            text = error_body(status, message).rstrip(b"\n")
            fields = [
                (b":status", b"200"),
                (b"content-type", b"application/grpc"),
                (b"grpc-status", b"%d" % grpc_status(status)),
                (b"grpc-message", grpc_message(text)),
            ]
            if rid is not None:
                fields.append((b"x-request-id", rid))
            ex.grpc_status = grpc_status(status)
            self._headers(encode_block(fields), end=True)
        else:
            if location is not None:
                message = b"Redirecting to " + location
            body = error_body(status, message)
            fields = [
                (b":status", b"%d" % status),
                (b"server", b"netplane"),
                (b"content-type", CONTENT_TYPE),
                (b"content-length", b"%d" % len(body)),
            ]
            if location is not None:
                fields.append((b"location", location))
            if rid is not None:
                fields.append((b"x-request-id", rid))
            if ex.method == b"HEAD":
                self._headers(encode_block(fields), end=True)
            else:
                self._headers(encode_block(fields), end=False)
                self.write_body(body)
                self.end = True
                self.push()
        if ex.request_state is not RECEIVED:
            # The rest of the request is not wanted (RFC 9113 §8.1): the stream is
            # reset with NO_ERROR once the answer is out, and the exchange is over.
            ex.close_connection()
        self.conn.flush()

    def write_head(self, ex: Exchange, head: ResponseHead, extra: bytes) -> None:
        block = response_block(head)
        if extra:
            block += extra_block(extra)
        self.head_block = block
        if self.grpc and b"grpc-status" in head.fields:  # a trailers-only answer
            ex.grpc_status = status_of(parse_lines(head.fields))

    def write_trailers(self, ex: Exchange, fields: list[tuple[bytes, bytes]]) -> None:
        self.trailer_block = encode_block(fields)
        if self.grpc:
            ex.grpc_status = status_of(fields)

    def write_switch(self, ex: Exchange, head: ResponseHead, extra: bytes) -> None:
        self.close()  # (no upgrade is asked for over HTTP/2: the fields are refused)

    def write_body(self, data: bytes) -> None:
        if data:
            self.out.append(data)
            self.out_size += len(data)

    def write_end(self, ex: Exchange) -> None:
        self.end = True
        self.push()
        self.conn.flush()

    def flush(self) -> None:
        if self.out or self.head_block is not None:
            self.push()
        self.conn.flush()

    def write(self, data: bytes) -> None:
        self.close()  # (a tunnel never starts over HTTP/2)

    def pause_reading(self, reason: int) -> None:
        self.hold |= reason

    def resume_reading(self, reason: int) -> None:
        if self.hold & reason:
            self.hold &= ~reason
            if not self.hold and self.unacked:
                size, self.unacked = self.unacked, 0
                self.conn.h2.ack(self.id, size)
                self.conn.flush()

    def close(self) -> None:
        """The response cannot be completed: the client sees the stream reset."""
        if not self.reset:
            self.reset = True
            self.conn.h2.reset(self.id, INTERNAL_ERROR)
            self.conn.flush()
        self.conn.streams.pop(self.id, None)
        if self.ex is not None:
            self.ex.client_lost()

    def exchange_over(self, ex: Exchange, now: float) -> None:
        self.over = True
        if ex.response_state is DONE and not self.end:
            self.end = True  # the response ended with the exchange (write_end's work)
            self.push()  # (which finishes the stream once END_STREAM is out)
            self.conn.flush()
        elif self.ended or self.reset:
            self._finished()

    def start_tunnel(self, ex: Exchange, up: UpstreamConnection, rest: bytes) -> None:
        up.close()
        self.close()

    # -- sending -------------------------------------------------------------------------

    def _headers(self, block: bytes, *, end: bool) -> None:
        if self.reset:
            return
        self.conn.h2.send_headers(self.id, block, end)
        if end:
            self.end = self.ended = True
            self._after_end()

    def push(self) -> None:
        """Send what the stream's window allows; END_STREAM with the last byte."""
        if self.reset:
            return
        h2c = self.conn.h2
        out = self.out
        sid = self.id
        head = self.head_block
        if head is not None:
            self.head_block = None
            alone = self.end and not out and not self.trailer_block
            h2c.send_headers(sid, head, alone)
            if alone:
                self.ended = True
        while out:
            room = h2c.window(sid)
            if room <= 0:
                break
            chunk = out[0]
            if len(chunk) <= room:
                out.pop(0)
                self.out_size -= len(chunk)
                last = not out and self.end and not self.trailer_block
                h2c.send_data(sid, chunk, last)
                if last:
                    self.ended = True
            else:
                h2c.send_data(sid, chunk[:room], False)
                out[0] = chunk[room:]
                self.out_size -= room
        if not out and self.end and not self.ended:
            self.ended = True
            if self.trailer_block:
                h2c.send_headers(sid, self.trailer_block, True)
            else:
                h2c.send_data(sid, b"", True)
        if out:
            if not self.blocked_since:
                self.blocked_since = monotonic()
        else:
            self.blocked_since = 0.0
        if self.write_paused or out:
            self.update_paused()
        if self.ended:
            self._after_end()

    def _after_end(self) -> None:
        ex = self.ex
        if ex is not None and ex.request_state is not RECEIVED and not self.reset:
            # Answered before the request ended: the rest of it is not wanted.
            self.reset = True
            self.conn.h2.reset(self.id, NO_ERROR)
        if self.over:
            self._finished()

    def _finished(self) -> None:
        self.conn.stream_done(self)

    def update_paused(self) -> None:
        """Hold the upstream's reading while body bytes wait for the window or the socket."""
        paused = bool(self.out_size > HIGH_WATER or self.blocked_since or self.conn.write_paused)
        if paused is not self.write_paused:
            self.write_paused = paused
            up = self.ex.upstream if self.ex is not None else None
            if up is not None:
                if paused:
                    up.pause_reading()
                else:
                    up.resume_reading()

    def lost(self) -> None:
        """The client reset the stream, or the connection is gone."""
        self.reset = True
        if self.ex is not None:
            self.ex.client_lost()

    def sweep(self, now: float, body_timeout: float) -> None:
        ex = self.ex
        if ex is None:
            return
        if self.blocked_since and now - self.blocked_since > body_timeout:
            log.info(
                "ingress: HTTP/2 stream %d of %s: window shut too long", self.id, self.client_ip
            )
            self.conn.h2.reset(self.id, CANCEL)
            self.reset = True
            self.close()
            return
        if ex.request_state is BODY and not self.hold and now - self.last_read > body_timeout:
            ex.refuse(408, b"The request body stopped arriving.")
            return
        ex.sweep(now)
