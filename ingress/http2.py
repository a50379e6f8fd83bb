"""The HTTP/2 client protocol (RFC 9113): one Protocol per connection, one exchange per stream.

A connection becomes HTTP/2 when TLS's ALPN picked ``h2``, or, on a plain
listener with ``--ingress-h2c on``, when it opens with the HTTP/2 preface
(prior knowledge; there is no ``Upgrade: h2c``). :class:`ClientConnection
<netplane.ingress.http.ClientConnection>` sees either first and hands the
transport over to an :class:`Http2Connection`.

h2 (python-hyper's sans-IO HTTP/2) keeps the protocol's state: frames,
HPACK, stream states, flow-control windows, SETTINGS and PING answers, and
the checks RFC 9113 asks of a request's fields. This module maps its events
to the same :class:`~netplane.ingress.exchange.Exchange` an HTTP/1.1 request
gets: each stream's :class:`Stream` is that exchange's
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

- SETTINGS_MAX_CONCURRENT_STREAMS (128); a header list over
  ``--ingress-max-header-bytes`` gets 431 on its stream alone.
- Rapid reset (CVE-2023-44487): streams the client cancels before their
  response ends draw from a budget (:data:`RESET_BUDGET`, refilled at
  :data:`RESET_REFILL` a second); past it, GOAWAY ENHANCE_YOUR_CALM, and the
  work those streams started is dropped.
- CONTINUATION flood (CVE-2024-27316): h2 bounds a header block in frames
  (64) while it arrives, each frame at most SETTINGS_MAX_FRAME_SIZE.
- Control-frame and empty-frame floods: while the client's socket buffer is
  over its high-water mark the client is not read, so the PING and SETTINGS
  answers owed to it stay bounded; a connection whose output does not drain
  for ``--ingress-body-timeout`` is closed, as is a stream whose window stays
  shut that long. Empty DATA frames draw from the reset budget.
- HPACK: the decoder's table is bounded by SETTINGS_HEADER_TABLE_SIZE and a
  bad table update is a COMPRESSION_ERROR (hpack and h2 enforce both).
- A protocol error ends that connection with GOAWAY and h2's error code;
  no other connection notices.

What h2 cannot do, and so neither does this: answer streams after a GOAWAY
from either side (its connection state machine refuses every frame then).
On shutdown the proxy therefore writes its own GOAWAY frame (naming the last
stream it will serve) without telling h2, and finishes the streams it has.
WebSocket over HTTP/2 (RFC 8441, extended CONNECT) is not offered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from time import monotonic
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import H2Error, ProtocolError
from h2.settings import SettingCodes, Settings
from hpack.exceptions import HPACKError
from netplane.ingress.errors import CONTENT_TYPE, error_body
from netplane.ingress.exchange import Exchange
from netplane.ingress.exchange_state import BODY, DONE
from netplane.ingress.http2_head import (
    grpc_message,
    grpc_status,
    is_grpc,
    parse_lines,
    request_head,
    response_fields,
)
from netplane.ingress.http_head import HeadError, RequestHead, ResponseHead, forwarded_fields
from netplane.ingress.upstream import UpstreamConnection

from netplane.addresses import peer_ip
from netplane.l4.flow_control import HIGH_WATER, FlowControl

log = logging.getLogger("netplane.ingress")

#: The client connection preface (RFC 9113 §3.4).
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
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

_CONFIG = H2Configuration(
    client_side=False,
    header_encoding=None,
    # Inbound: h2 checks RFC 9113 §8.2-8.3 (and joins cookies). Outbound: the
    # proxy makes its headers from checked heads, lower-cased once per head.
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
)


class Http2Connection(asyncio.BufferedProtocol):
    """One HTTP/2 client connection: h2's state, a :class:`Stream` per exchange."""

    def __init__(self, listener: Any) -> None:
        self.listener = listener
        self.settings = listener.settings
        self.h2 = H2Connection(config=_CONFIG)
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
        self.last_stream = 0  # the highest stream a GOAWAY of ours promised to serve
        self.goaway_sent = False
        self.budget = float(RESET_BUDGET)
        self.budget_at = self.last_read

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
        h2c = self.h2
        # The hard bound h2 enforces while decoding (beyond it: a connection error);
        # the proxy's own limit, below it, answers 431 on the stream alone.
        hard = 2 * self.settings.max_header_bytes + 4096
        h2c.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                SettingCodes.MAX_HEADER_LIST_SIZE: hard,
                SettingCodes.ENABLE_PUSH: 0,
            },
        )
        h2c.decoder.max_header_list_size = hard
        h2c.initiate_connection()
        h2c.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.listener.rbuf

    def buffer_updated(self, nbytes: int) -> None:
        self.receive(bytes(self.listener.rbuf[:nbytes]))

    def data_received(self, data: bytes) -> None:
        self.receive(data)

    def receive(self, data: bytes) -> None:
        """Bytes from the client: feed h2, act on its events, write what they produced."""
        now = self.last_read = monotonic()
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as e:
            # h2 has queued a GOAWAY with the error's code, last.
            log.info("ingress: HTTP/2 protocol error from %s: %s", self.client_ip, e)
            if isinstance(e.__cause__, HPACKError):
                # RFC 9113 §4.3: a header block that does not decode is a
                # COMPRESSION_ERROR; h2 says PROTOCOL_ERROR, so its code is replaced.
                data = self.h2.data_to_send()
                if len(data) >= GOAWAY_SIZE and data[-GOAWAY_SIZE + 3] == GOAWAY:
                    data = data[:-4] + struct.pack(">I", ErrorCodes.COMPRESSION_ERROR)
                self.transport.write(data)
            self._end(flush=True)
            return
        for ev in events:
            handler = _HANDLERS.get(type(ev))
            if handler is not None:
                handler(self, ev, now)
            if self.lost:
                return
        self.flush()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
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

    # -- h2 events -------------------------------------------------------------

    def on_request(self, ev: RequestReceived, now: float) -> None:
        sid = ev.stream_id
        stream = Stream(self, sid, now)
        if self.goaway_sent and sid > self.last_stream:
            self._reset(sid, ErrorCodes.REFUSED_STREAM)
            return
        self.streams[sid] = stream
        ended = ev.stream_ended is not None
        try:
            req = request_head(ev.headers, end_stream=ended)
        except HeadError as e:
            self._refused(stream, now, e.status, e.message)
            return
        if req.size > self.settings.max_header_bytes:
            self._refused(stream, now, 431, None)
            return
        head = req.head
        stream.grpc = is_grpc(head)
        ex = stream.ex = Exchange(
            stream, now, req.target, head, req.method, False, True, False, now if ended else 0.0
        )
        ex.route()
        ex.start(now)

    def _refused(self, stream: Stream, now: float, status: int, message: bytes | None) -> None:
        ex = stream.ex = Exchange(stream, now, b"", RequestHead())
        ex.refuse(status, message)
        ex.start(now)

    def on_data(self, ev: DataReceived, now: float) -> None:
        sid = ev.stream_id
        size = ev.flow_controlled_length or 0
        stream = self.streams.get(sid)
        data = ev.data or b""
        if not data and ev.stream_ended is None and not self._spend(now):
            return
        ex = stream.ex if stream is not None else None
        if stream is None or ex is None or ex.request_state is not BODY:
            # (a stream answered and reset already, or refused): read and dropped
            if size:  # (the connection's window, and the stream's while it is open)
                self.h2.acknowledge_received_data(size, sid)
            return
        stream.last_read = now
        if data and not ex.request_body(data):
            ex.refuse(413, None)
        if size:
            if stream.hold:
                stream.unacked += size
            else:
                self.h2.acknowledge_received_data(size, sid)

    def on_trailers(self, ev: TrailersReceived, now: float) -> None:
        stream = self.streams.get(ev.stream_id)
        if stream is not None:
            stream.trailers = b"".join(
                b"%s: %s\r\n" % (n, v)
                for n, v in ev.headers
            )

    def on_end(self, ev: StreamEnded, now: float) -> None:
        stream = self.streams.get(ev.stream_id)
        if stream is not None and stream.ex is not None and stream.ex.request_state is BODY:
            stream.ex.request_end(now, stream.trailers)

    def on_reset(self, ev: StreamReset, now: float) -> None:
        stream = self.streams.pop(ev.stream_id, None)
        if stream is None:
            return
        stream.reset = True
        ex = stream.ex
        if ex is not None and ex.response_state is not DONE:
            stream.lost()
            self._spend(now)

    def on_window(self, ev: WindowUpdated, now: float) -> None:
        sid = ev.stream_id
        if sid:
            stream = self.streams.get(sid)
            if stream is not None and stream.out:
                stream.push()
        else:
            for stream in list(self.streams.values()):
                if stream.out:
                    stream.push()

    def on_settings(self, ev: RemoteSettingsChanged, now: float) -> None:
        if SettingCodes.INITIAL_WINDOW_SIZE in ev.changed_settings:
            for stream in list(self.streams.values()):
                if stream.out:
                    stream.push()

    def on_terminated(self, ev: ConnectionTerminated, now: float) -> None:
        # The client's GOAWAY: h2 will send nothing more, so what is in flight is lost.
        if ev.error_code:
            log.info("ingress: HTTP/2 client %s sent GOAWAY %s", self.client_ip, ev.error_code)
        self._end(flush=True)

    # -- budget, resets, the end ---------------------------------------------------------

    def _spend(self, now: float) -> bool:
        """Take one from the budget of frames that cost work and give none; False past it."""
        budget = min(RESET_BUDGET, self.budget + (now - self.budget_at) * RESET_REFILL)
        self.budget_at = now
        if budget < 1:
            log.warning(
                "ingress: HTTP/2 client %s cancels streams (or sends empty frames) faster "
                "than %d a second: GOAWAY ENHANCE_YOUR_CALM",
                self.client_ip,
                RESET_REFILL,
            )
            self.h2.close_connection(ErrorCodes.ENHANCE_YOUR_CALM)
            self._end(flush=True)
            return False
        self.budget = budget - 1
        return True

    def _reset(self, sid: int, code: int) -> None:
        with contextlib.suppress(H2Error):  # closed already
            self.h2.reset_stream(sid, code)

    def _end(self, *, flush: bool) -> None:
        """Close the connection; its streams' exchanges end as lost."""
        if flush:
            self.flush()
        self.transport.close()
        self.connection_lost(None)

    def flush(self) -> None:
        """Write what h2 has queued (frames of every stream, in one ``write``)."""
        data = self.h2.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def stream_done(self, stream: Stream) -> None:
        """``stream``'s response was sent whole and its exchange is over (once counted)."""
        if self.streams.pop(stream.id, None) is None:
            return
        self.served += 1
        if not self.streams:
            self.idle_since = monotonic()
            if self.closing:
                self.flush()
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
        if not self.goaway_sent:
            self.goaway_sent = True
            self.last_stream = self.h2.highest_inbound_stream_id
            self.flush()
            self.transport.write(goaway_frame(self.last_stream, ErrorCodes.NO_ERROR))
        if not self.streams:
            self.transport.close()

    def abort(self) -> None:
        self.transport.abort()


#: GOAWAY's frame type, and the size of one without debug data (RFC 9113 §6.8).
GOAWAY = 7
GOAWAY_SIZE = 9 + 8


def goaway_frame(last_stream: int, code: int) -> bytes:
    """A GOAWAY frame, written beside h2 (which sends nothing after its own)."""
    return b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + struct.pack(">II", last_stream, code)


_HANDLERS: dict[type, Any] = {
    RequestReceived: Http2Connection.on_request,
    DataReceived: Http2Connection.on_data,
    TrailersReceived: Http2Connection.on_trailers,
    StreamEnded: Http2Connection.on_end,
    StreamReset: Http2Connection.on_reset,
    WindowUpdated: Http2Connection.on_window,
    RemoteSettingsChanged: Http2Connection.on_settings,
    ConnectionTerminated: Http2Connection.on_terminated,
}


class Stream:
    """One stream of an :class:`Http2Connection`: the ClientSide of its exchange."""

    __slots__ = (
        "blocked_since", "client_ip", "client_ip_b", "conn", "end", "ended", "ex", "forwarded",
        "grpc", "hold", "id", "last_read", "listener", "out", "out_size", "over", "reset",
        "trailers", "unacked", "write_paused",
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
        self.trailers = b""
        self.last_read = now
        self.blocked_since = 0.0

    # -- the ClientSide of the exchange ----------------------------------------------------

    def write_continue(self, ex: Exchange) -> None:
        self._headers([(b":status", b"100")], end=False)

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
            self._headers(fields, end=True)
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
                self._headers(fields, end=True)
            else:
                self._headers(fields, end=False)
                self.write_body(body)
                self.end = True
                self.push()
        if ex.request_state is BODY:
            # The rest of the request is not wanted (RFC 9113 §8.1): the stream is
            # reset with NO_ERROR once the answer is out, and the exchange is over.
            ex.close_connection()
        self.conn.flush()

    def write_head(self, ex: Exchange, head: ResponseHead, extra: bytes) -> None:
        fields = response_fields(head)
        if extra:
            fields = fields + parse_lines(extra)
        self._headers(fields, end=False)

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
        if self.out:
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
                if not self.reset:
                    self.conn.h2.acknowledge_received_data(size, self.id)
                    self.conn.flush()

    def close(self) -> None:
        """The response cannot be completed: the client sees the stream reset."""
        if not self.reset:
            self.reset = True
            self.conn._reset(self.id, ErrorCodes.INTERNAL_ERROR)
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

    def _headers(self, fields: list[tuple[bytes, bytes]], *, end: bool) -> None:
        if self.reset:
            return
        try:
            self.conn.h2.send_headers(self.id, fields, end_stream=end)
        except H2Error:
            self._gone()
            return
        if end:
            self.end = self.ended = True
            self._after_end()

    def push(self) -> None:
        """Send what the stream's window allows; END_STREAM after the last byte."""
        if self.reset:
            return
        h2c = self.conn.h2
        out = self.out
        sid = self.id
        try:
            while out:
                room = min(h2c.local_flow_control_window(sid), h2c.max_outbound_frame_size)
                if room <= 0:
                    break
                chunk = out[0]
                if len(chunk) <= room:
                    out.pop(0)
                    self.out_size -= len(chunk)
                    if not out and self.end:  # the last bytes carry END_STREAM
                        self.ended = True
                        h2c.send_data(sid, chunk, end_stream=True)
                        break
                    h2c.send_data(sid, chunk)
                else:
                    h2c.send_data(sid, chunk[:room])
                    out[0] = chunk[room:]
                    self.out_size -= room
            if not out and self.end and not self.ended:
                self.ended = True
                h2c.end_stream(sid)
        except H2Error:
            self._gone()
            return
        if out:
            if not self.blocked_since:
                self.blocked_since = monotonic()
        else:
            self.blocked_since = 0.0
        self.update_paused()
        if self.ended:
            self._after_end()

    def _after_end(self) -> None:
        ex = self.ex
        if ex is not None and ex.request_state is not BODY:
            if self.over:
                self._finished()
            return
        # Answered before the request ended: the rest of it is not wanted.
        self.reset = True
        self.conn._reset(self.id, ErrorCodes.NO_ERROR)
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

    def _gone(self) -> None:
        """h2 refused to send on the stream (the client reset or closed it meanwhile)."""
        self.reset = True
        self.conn.streams.pop(self.id, None)
        if self.ex is not None:
            self.ex.client_lost()

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
            self.close()
            return
        if ex.request_state is BODY and not self.hold and now - self.last_read > body_timeout:
            ex.refuse(408, b"The request body stopped arriving.")
            return
        ex.sweep(now)
