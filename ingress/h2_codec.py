"""HTTP/2's frames, streams and windows for the server side of a connection (RFC 9113), sans-IO.

Why not h2: the ingress first spoke HTTP/2 through h2 (python-hyper), and
measured there (h2load -c10 -m10 over TLS, one core each) it served about
6.4k req/s against nginx's 80k: 0.08x, with h2's per-frame objects, its
stream state machines and events, header validation in generators and
HPACK's per-field work (and debug logging) costing about 130 µs a request.
This codec keeps the same protocol rules with far less work per frame:

- a frame is sliced out of one buffer, dispatched on its type byte, and
  handed to :class:`Handler` callbacks (httptools-style, no event objects);
- a header block is decoded by hpack's :class:`~hpack.Decoder` (the table
  and Huffman codes are its job), but a block that does not change the
  dynamic table means the same thing every time the table is as it was, so
  its decoded list is kept and the next identical block costs a dict lookup
  (a browser's or load generator's repeated requests are such blocks);
- responses are encoded without the dynamic table (literals without
  indexing, ``:status`` from the static table when it is there), so an
  upstream head's block is made once and reused (:func:`encode_block`).

What it enforces, and how a violation ends (RFC 9113 §5.4):

- connection errors (GOAWAY, then the connection closes; raised as
  :class:`H2Error`): a bad preface, frame sizes over SETTINGS_MAX_FRAME_SIZE
  or wrong for their type, frames on the wrong stream, a header block
  interrupted or over :attr:`Http2Codec.max_block` while it arrives
  (CONTINUATION flood), an undecodable block (COMPRESSION_ERROR), window
  overflow and overrun, client-initiated stream ids out of order, PUSH_PROMISE;
- stream errors (RST_STREAM, reported to the handler as a reset): DATA or
  HEADERS on a half-closed stream, a stream window overrun, more streams
  than SETTINGS_MAX_CONCURRENT_STREAMS (REFUSED_STREAM);
- frames for a stream that is already closed (after a reset either way,
  frames in flight are expected) are dropped, their bytes still counted
  against the connection's window, and their header blocks still decoded
  so that the HPACK table stays in step.

Request fields are checked (pseudo-fields, case, connection-specific
fields) by :mod:`netplane.ingress.http2_head`, which knows what the proxy
does with them.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from typing import Protocol

from hpack import Decoder
from hpack.exceptions import HPACKError, OversizedHeaderListError

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 §6).
DATA = 0
HEADERS = 1
PRIORITY = 2
RST_STREAM = 3
SETTINGS = 4
PUSH_PROMISE = 5
PING = 6
GOAWAY = 7
WINDOW_UPDATE = 8
CONTINUATION = 9
# Flags.
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# Error codes (RFC 9113 §7).
NO_ERROR = 0
PROTOCOL_ERROR = 1
INTERNAL_ERROR = 2
FLOW_CONTROL_ERROR = 3
STREAM_CLOSED = 5
FRAME_SIZE_ERROR = 6
REFUSED_STREAM = 7
CANCEL = 8
COMPRESSION_ERROR = 9
ENHANCE_YOUR_CALM = 11
# SETTINGS identifiers.
HEADER_TABLE_SIZE = 1
ENABLE_PUSH = 2
MAX_CONCURRENT_STREAMS = 3
INITIAL_WINDOW_SIZE = 4
MAX_FRAME_SIZE = 5
MAX_HEADER_LIST_SIZE = 6

DEFAULT_WINDOW = 65535
DEFAULT_FRAME = 16384
MAX_WINDOW = 2**31 - 1
#: Decoded blocks a connection keeps (per connection: the table is), and the largest
#: block kept (repeated request blocks are tens of bytes; a bound keeps a client
#: from parking megabytes in the cache).
_CACHE_ENTRIES = 256
_CACHE_BLOCK_MAX = 1024

_HEAD = struct.Struct(">I")
_PAIR = struct.Struct(">HI")
_TWO = struct.Struct(">II")

Header = tuple[bytes, bytes]


class H2Error(Exception):
    """A connection error: GOAWAY with ``code`` is queued, and the connection must close."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Handler(Protocol):
    """What a connection's codec reports (the proxy's :class:`~netplane.ingress.http2.Http2Connection`)."""

    def on_request(
        self, sid: int, headers: list[Header], end_stream: bool, malformed: str | None
    ) -> None:
        """A new stream's request head; ``malformed`` says what breaks RFC 9113 §8.2-8.3 in it."""

    def on_data(self, sid: int, data: bytes, size: int, end_stream: bool) -> None:
        """Body bytes; ``size`` (padding included) must be given back with :meth:`Http2Codec.ack`."""

    def on_trailers(self, sid: int, headers: list[Header], malformed: str | None) -> None:
        """The request's trailer fields; the stream's request has ended."""

    def on_reset(self, sid: int, code: int) -> None:
        """The stream is gone: the client reset it, or the codec did (a stream error)."""

    def on_window(self, sid: int) -> None:
        """The stream's send window opened (``sid`` 0: the connection's, or every stream's)."""

    def on_goaway(self, last_stream: int, code: int) -> None:
        """The client is going away; streams above ``last_stream`` were not processed."""


class Sender(Protocol):
    """A stream of an adapter that holds body bytes until its window opens."""

    out: list[bytes]

    def push(self) -> None: ...


def push_waiting(streams: Mapping[int, Sender], sid: int) -> None:
    """What a :meth:`Handler.on_window` does: the waiting streams send what now fits.

    ``sid`` 0: the connection's window (or every stream's) opened.
    """
    if sid:
        stream = streams.get(sid)
        if stream is not None and stream.out:
            stream.push()
    else:
        for stream in list(streams.values()):
            if stream.out:
                stream.push()


class _Stream:
    __slots__ = ("got_head", "local_open", "recv_window", "remote_open", "send_window", "unacked")

    def __init__(self, send_window: int, recv_window: int) -> None:
        self.send_window = send_window
        self.recv_window = recv_window
        self.unacked = 0
        self.remote_open = True
        self.local_open = True
        self.got_head = False  # (client side) the final response head came


class Http2Codec:
    """One HTTP/2 connection's state: feed it bytes, take bytes to write.

    The server side by default (the ingress's clients); with ``client=True``
    the side that opens streams (the ingress's HTTP/2 endpoints): it writes
    the preface, opens streams with :meth:`open_stream`, and reports
    responses to ``handler.on_response`` instead of requests.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        max_streams: int = 128,
        stream_window: int = DEFAULT_WINDOW,
        connection_window: int = 1024 * 1024,
        max_header_list: int = 65536,
        client: bool = False,
    ) -> None:
        self.handler = handler
        self.client = client
        self.next_stream = 1  # (client side) the id of the next stream to open
        #: the peer's SETTINGS_MAX_CONCURRENT_STREAMS (streams we may open at once)
        self.peer_max_streams = 2**31 - 1
        #: the peer's first SETTINGS came (its limits are known)
        self.peer_settings = False
        self.max_streams = max_streams
        self.stream_window = stream_window
        #: a header block larger than this while it arrives is a connection error
        self.max_block = max_header_list
        self.streams: dict[int, _Stream] = {}
        self.last_stream = 0  # the highest stream id the client opened
        self.out: list[bytes] = []
        self._buf = b""
        self._preface = False
        self._settings_acked = False
        # the client's settings
        self.peer_window = DEFAULT_WINDOW  # its SETTINGS_INITIAL_WINDOW_SIZE
        self.peer_frame = DEFAULT_FRAME  # its SETTINGS_MAX_FRAME_SIZE
        self.send_window = DEFAULT_WINDOW  # the connection's
        # our receive side
        self.recv_window = connection_window
        self._conn_target = connection_window
        self._conn_unacked = 0
        self._continuing = 0  # a stream whose header block is not complete yet
        self._block: list[bytes] = []
        self._block_size = 0
        self._block_flags = 0
        self.decoder = Decoder(max_header_list_size=max_header_list)
        self._cache: dict[bytes, tuple[int, list[Header], str | None]] = {}
        self._generation = 0
        self.goaway_received = False
        settings = _settings(
            (MAX_CONCURRENT_STREAMS, 0 if client else max_streams),
            (INITIAL_WINDOW_SIZE, stream_window),
            (MAX_HEADER_LIST_SIZE, max_header_list),
            (ENABLE_PUSH, 0),
        )
        if client:
            self._preface = True  # a server sends none; ours goes first
            self.out.append(PREFACE)
        self.out.append(_frame(SETTINGS, 0, 0, settings))
        if connection_window > DEFAULT_WINDOW:
            self.out.append(
                _frame(WINDOW_UPDATE, 0, 0, _HEAD.pack(connection_window - DEFAULT_WINDOW))
            )

    # -- reading -------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Bytes from the client; calls the handler; H2Error on a connection error."""
        buf = self._buf + data if self._buf else data
        if not self._preface:
            if len(buf) < 24:
                if not PREFACE.startswith(buf):
                    raise self._fail(PROTOCOL_ERROR, "not the HTTP/2 connection preface")
                self._buf = buf
                return
            if buf[:24] != PREFACE:
                raise self._fail(PROTOCOL_ERROR, "not the HTTP/2 connection preface")
            self._preface = True
            buf = buf[24:]
        pos = 0
        end = len(buf)
        limit = DEFAULT_FRAME
        while end - pos >= 9:
            head = _HEAD.unpack_from(buf, pos)[0]
            size = head >> 8
            kind = head & 0xFF
            if size > limit:
                raise self._fail(FRAME_SIZE_ERROR, f"a frame of {size} bytes")
            if end - pos < 9 + size:
                break
            flags = buf[pos + 4]
            sid = _HEAD.unpack_from(buf, pos + 5)[0] & 0x7FFFFFFF
            payload = buf[pos + 9 : pos + 9 + size]
            pos += 9 + size
            if self._continuing and kind != CONTINUATION:
                raise self._fail(PROTOCOL_ERROR, "a header block was interrupted")
            if kind == HEADERS:
                self._headers(sid, flags, payload)
            elif kind == DATA:
                self._data(sid, flags, payload)
            elif kind == WINDOW_UPDATE:
                self._window_update(sid, payload)
            elif kind == CONTINUATION:
                self._continuation(sid, flags, payload)
            elif kind == RST_STREAM:
                self._rst_stream(sid, payload)
            elif kind == SETTINGS:
                self._settings(sid, flags, payload)
            elif kind == PING:
                self._ping(sid, flags, payload)
            elif kind == PRIORITY:
                if sid == 0:
                    raise self._fail(PROTOCOL_ERROR, "PRIORITY on stream 0")
                if size != 5:
                    self._stream_error(sid, FRAME_SIZE_ERROR)
            elif kind == GOAWAY:
                self._goaway(sid, payload)
            elif kind == PUSH_PROMISE:
                raise self._fail(PROTOCOL_ERROR, "a client sent PUSH_PROMISE")
            # other types are extensions: ignored (RFC 9113 §5.5)
        self._buf = buf[pos:] if pos < end else b""

    def _headers(self, sid: int, flags: int, payload: bytes) -> None:
        if sid == 0:
            raise self._fail(PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & PADDED:
            payload = _unpad(self, payload)
        if flags & PRIORITY_FLAG:
            if len(payload) < 5:
                raise self._fail(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            payload = payload[5:]
        if flags & END_HEADERS:
            self._block_done(sid, flags, payload)
        else:
            self._continuing = sid
            self._block = [payload]
            self._block_size = len(payload)
            self._block_flags = flags
            if self._block_size > self.max_block:
                raise self._fail(ENHANCE_YOUR_CALM, "a header block over its bound")

    def _continuation(self, sid: int, flags: int, payload: bytes) -> None:
        if not self._continuing or sid != self._continuing:
            raise self._fail(PROTOCOL_ERROR, "CONTINUATION out of place")
        self._block.append(payload)
        self._block_size += len(payload)
        if self._block_size > self.max_block:
            raise self._fail(ENHANCE_YOUR_CALM, "a header block over its bound")
        if flags & END_HEADERS:
            block = b"".join(self._block)
            self._block = []
            self._continuing = 0
            self._block_done(sid, self._block_flags, block)

    def _block_done(self, sid: int, flags: int, block: bytes) -> None:
        headers, malformed = self._decode(block)
        end_stream = bool(flags & END_STREAM)
        stream = self.streams.get(sid)
        if self.client:
            self._response_block(sid, stream, headers, end_stream)
            return
        if stream is not None:
            if not stream.remote_open:
                self._stream_error(sid, STREAM_CLOSED)
            elif not end_stream:
                raise self._fail(PROTOCOL_ERROR, "trailers without END_STREAM")
            else:
                self._remote_end(sid, stream)
                if malformed is None and any(n[:1] == b":" for n, _ in headers):
                    malformed = "a pseudo-header field in trailers"
                self.handler.on_trailers(sid, headers, malformed)
            return
        if sid <= self.last_stream:
            return  # a stream already closed: dropped (its block was decoded)
        if not sid & 1:
            raise self._fail(PROTOCOL_ERROR, "an even stream id from a client")
        self.last_stream = sid
        if self.goaway_sent:
            self._reset(sid, REFUSED_STREAM)
            return
        if len(self.streams) >= self.max_streams:
            self._reset(sid, REFUSED_STREAM)
            return
        stream = self.streams[sid] = _Stream(self.peer_window, self.stream_window)
        stream.remote_open = not end_stream
        self.handler.on_request(sid, headers, end_stream, malformed)

    def _response_block(
        self, sid: int, stream: _Stream | None, headers: list[Header], end_stream: bool
    ) -> None:
        """(client side) A response head, an interim (1xx) one, or trailers."""
        if stream is None:
            if sid & 1 and sid < self.next_stream:
                return  # a stream already closed (reset): dropped
            raise self._fail(PROTOCOL_ERROR, "HEADERS on a stream we did not open")
        if not stream.remote_open:
            self._stream_error(sid, STREAM_CLOSED)
            return
        malformed = check_fields(headers, _RESPONSE_PSEUDO)
        if stream.got_head:
            if not end_stream:
                raise self._fail(PROTOCOL_ERROR, "trailers without END_STREAM")
            self._remote_end(sid, stream)
            if malformed is None and any(n[:1] == b":" for n, _ in headers):
                malformed = "a pseudo-header field in trailers"
            self.handler.on_trailers(sid, headers, malformed)
            return
        status = next((v for n, v in headers if n == b":status"), b"")
        if status[:1] == b"1" and len(status) == 3:
            if end_stream:
                self._stream_error(sid, PROTOCOL_ERROR)
            return  # interim answers are not passed on (the proxy answers Expect itself)
        stream.got_head = True
        if end_stream:
            self._remote_end(sid, stream)
        self.handler.on_response(sid, headers, end_stream, malformed)  # type: ignore[attr-defined]  # the client side's handler has it

    def _remote_end(self, sid: int, stream: _Stream) -> None:
        stream.remote_open = False
        if not stream.local_open:
            del self.streams[sid]

    def _decode(self, block: bytes) -> tuple[list[Header], str | None]:
        """The fields of ``block``, and what is malformed in them (checked once per kept block)."""
        hit = self._cache.get(block)
        if hit is not None and hit[0] == self._generation:
            return hit[1], hit[2]
        table = self.decoder.header_table
        entries = table.dynamic_entries
        before = (len(entries), entries[0] if entries else None, table.maxsize)
        try:
            headers: list[Header] = self.decoder.decode(block, raw=True)  # type: ignore[assignment]  # raw=True: bytes
        except OversizedHeaderListError:
            raise self._fail(ENHANCE_YOUR_CALM, "a header list over its bound") from None
        except (HPACKError, IndexError, TypeError, ValueError) as e:
            raise self._fail(
                COMPRESSION_ERROR, f"a header block that does not decode: {e}"
            ) from None
        malformed = check_fields(headers)
        entries = table.dynamic_entries
        first = entries[0] if entries else None
        if len(entries) != before[0] or first is not before[1] or table.maxsize != before[2]:
            self._generation += 1  # the table changed: what was kept may mean something else
        elif len(block) <= _CACHE_BLOCK_MAX:
            if len(self._cache) >= _CACHE_ENTRIES:
                self._cache.clear()
            self._cache[block] = (self._generation, headers, malformed)
        return headers, malformed

    def _data(self, sid: int, flags: int, payload: bytes) -> None:
        if sid == 0:
            raise self._fail(PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        self.recv_window -= size
        if self.recv_window < 0:
            raise self._fail(FLOW_CONTROL_ERROR, "the connection's window was overrun")
        if flags & PADDED:
            payload = _unpad(self, payload)
        stream = self.streams.get(sid)
        if stream is None:
            if sid > (self.next_stream if self.client else self.last_stream):
                raise self._fail(PROTOCOL_ERROR, "DATA on an idle stream")
            self.ack(0, size)  # a closed stream: dropped, the connection's window given back
            return
        if not stream.remote_open:
            self.ack(0, size)
            self._stream_error(sid, STREAM_CLOSED)
            return
        stream.recv_window -= size
        if stream.recv_window < 0:
            self.ack(0, size)
            self._stream_error(sid, FLOW_CONTROL_ERROR)
            return
        end_stream = bool(flags & END_STREAM)
        if end_stream:
            self._remote_end(sid, stream)
        self.handler.on_data(sid, payload, size, end_stream)

    def _window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise self._fail(FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong size")
        increment = _HEAD.unpack(payload)[0] & 0x7FFFFFFF
        if sid == 0:
            if increment == 0:
                raise self._fail(PROTOCOL_ERROR, "a WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise self._fail(FLOW_CONTROL_ERROR, "the connection's window overflowed")
            self.handler.on_window(0)
            return
        stream = self.streams.get(sid)
        if stream is None:
            if sid > (self.next_stream if self.client else self.last_stream):
                raise self._fail(PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            return
        if increment == 0:
            self._stream_error(sid, PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._stream_error(sid, FLOW_CONTROL_ERROR)
            return
        self.handler.on_window(sid)

    def _rst_stream(self, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise self._fail(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise self._fail(FRAME_SIZE_ERROR, "RST_STREAM of the wrong size")
        if sid > (self.next_stream if self.client else self.last_stream):
            raise self._fail(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        if self.streams.pop(sid, None) is not None:
            self.handler.on_reset(sid, _HEAD.unpack(payload)[0])

    def _settings(self, sid: int, flags: int, payload: bytes) -> None:
        if sid != 0:
            raise self._fail(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise self._fail(FRAME_SIZE_ERROR, "a SETTINGS ACK with a payload")
            self._settings_acked = True
            return
        if len(payload) % 6:
            raise self._fail(FRAME_SIZE_ERROR, "SETTINGS of the wrong size")
        self.peer_settings = True
        opened = False
        for i in range(0, len(payload), 6):
            ident, value = _PAIR.unpack_from(payload, i)
            if ident == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise self._fail(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE too large")
                delta = value - self.peer_window
                self.peer_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise self._fail(FLOW_CONTROL_ERROR, "a stream's window overflowed")
                opened = opened or delta > 0
            elif ident == MAX_FRAME_SIZE:
                if not DEFAULT_FRAME <= value <= 2**24 - 1:
                    raise self._fail(PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range")
                self.peer_frame = value
            elif ident == ENABLE_PUSH and value > 1:
                raise self._fail(PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH not 0 or 1")
            elif ident == MAX_CONCURRENT_STREAMS:
                self.peer_max_streams = value
            # HEADER_TABLE_SIZE: our encoder never uses the dynamic table, whatever its size;
            # MAX_CONCURRENT_STREAMS and MAX_HEADER_LIST_SIZE bound what we send: no push,
            # and response heads the upstream sent.
        self.out.append(_SETTINGS_ACK)
        if opened:
            self.handler.on_window(0)

    def _ping(self, sid: int, flags: int, payload: bytes) -> None:
        if sid != 0:
            raise self._fail(PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise self._fail(FRAME_SIZE_ERROR, "PING of the wrong size")
        if not flags & ACK:
            self.out.append(_frame(PING, ACK, 0, payload))

    def _goaway(self, sid: int, payload: bytes) -> None:
        if sid != 0:
            raise self._fail(PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise self._fail(FRAME_SIZE_ERROR, "GOAWAY too short")
        last, code = _TWO.unpack_from(payload)
        self.goaway_received = True
        self.handler.on_goaway(last & 0x7FFFFFFF, code)

    def _stream_error(self, sid: int, code: int) -> None:
        """RST_STREAM ``code``; the handler hears of it as a reset."""
        self._reset(sid, code)
        self.handler.on_reset(sid, code)

    def _fail(self, code: int, message: str) -> H2Error:
        """Queue GOAWAY ``code``; the returned error is raised by the caller."""
        self.goaway(code, message.encode())
        return H2Error(code, message)

    # -- flow control of what the client sends --------------------------------------------

    def ack(self, sid: int, size: int) -> None:
        """``size`` bytes of ``sid``'s body were passed on: the client may send as much again.

        WINDOW_UPDATEs go out once half a window is used, not per frame.
        """
        if not size:
            return
        self._conn_unacked += size
        if self._conn_unacked >= self._conn_target // 2:
            self.out.append(_frame(WINDOW_UPDATE, 0, 0, _HEAD.pack(self._conn_unacked)))
            self.recv_window += self._conn_unacked
            self._conn_unacked = 0
        stream = self.streams.get(sid) if sid else None
        if stream is not None and stream.remote_open:
            stream.unacked += size
            if stream.unacked >= self.stream_window // 2:
                self.out.append(_frame(WINDOW_UPDATE, 0, sid, _HEAD.pack(stream.unacked)))
                stream.recv_window += stream.unacked
                stream.unacked = 0

    # -- writing -------------------------------------------------------------------------

    def window(self, sid: int) -> int:
        """How many body bytes ``sid`` may send now (its window and the connection's)."""
        stream = self.streams.get(sid)
        if stream is None:
            return 0
        return min(stream.send_window, self.send_window)

    def send_headers(self, sid: int, block: bytes, end_stream: bool) -> None:
        """A header block (:func:`encode_block`), in as many frames as the client's frame size asks."""
        flags = END_STREAM if end_stream else 0
        limit = self.peer_frame
        if len(block) <= limit:
            self.out.append(_frame(HEADERS, flags | END_HEADERS, sid, block))
        else:
            self.out.append(_frame(HEADERS, flags, sid, block[:limit]))
            for i in range(limit, len(block), limit):
                last = i + limit >= len(block)
                self.out.append(
                    _frame(CONTINUATION, END_HEADERS if last else 0, sid, block[i : i + limit])
                )
        if end_stream:
            self._local_end(sid)

    def send_data(self, sid: int, data: bytes, end_stream: bool) -> None:
        """Body bytes within :meth:`window` (the caller checks), split at the client's frame size."""
        size = len(data)
        stream = self.streams.get(sid)
        if stream is not None:
            stream.send_window -= size
        self.send_window -= size
        limit = self.peer_frame
        if size <= limit:
            self.out.append(_frame(DATA, END_STREAM if end_stream else 0, sid, data))
        else:
            for i in range(0, size, limit):
                last = end_stream and i + limit >= size
                self.out.append(_frame(DATA, END_STREAM if last else 0, sid, data[i : i + limit]))
        if end_stream:
            self._local_end(sid)

    def _local_end(self, sid: int) -> None:
        stream = self.streams.get(sid)
        if stream is not None:
            stream.local_open = False
            if not stream.remote_open:
                del self.streams[sid]

    def open_stream(self, block: bytes, end_stream: bool) -> int:
        """(client side) A new stream with request head ``block``; its id."""
        sid = self.next_stream
        self.next_stream += 2
        self.streams[sid] = _Stream(self.peer_window, self.stream_window)
        self.send_headers(sid, block, end_stream)
        return sid

    def can_open(self) -> bool:
        """(client side) Another stream fits under the peer's limit, and no GOAWAY came."""
        return (
            not self.goaway_received
            and not self.goaway_sent
            and len(self.streams) < self.peer_max_streams
            and self.next_stream < 2**31 - 1
        )

    def reset(self, sid: int, code: int) -> None:
        """RST_STREAM: the stream ends at once, both ways."""
        self._reset(sid, code)

    def _reset(self, sid: int, code: int) -> None:
        self.streams.pop(sid, None)
        self.out.append(_frame(RST_STREAM, 0, sid, _HEAD.pack(code)))

    goaway_sent = False

    def goaway(self, code: int, debug: bytes = b"") -> None:
        """GOAWAY naming the last stream the client opened: no new streams after it."""
        self.goaway_sent = True
        self.out.append(_frame(GOAWAY, 0, 0, _TWO.pack(self.last_stream, code) + debug[:128]))

    def data_to_send(self) -> bytes:
        out = self.out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data


_FRAME = struct.Struct(">IBI")


def _frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    return _FRAME.pack(len(payload) << 8 | kind, flags, sid) + payload


def _settings(*pairs: tuple[int, int]) -> bytes:
    return b"".join(_PAIR.pack(ident, value) for ident, value in pairs)


_SETTINGS_ACK = _frame(SETTINGS, ACK, 0, b"")


def _unpad(codec: Http2Codec, payload: bytes) -> bytes:
    if not payload:
        raise codec._fail(FRAME_SIZE_ERROR, "a padded frame without its pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise codec._fail(PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - pad]


# -- field rules (RFC 9113 §8.2 and §8.3.1) -------------------------------------------

_REQUEST_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path"))
_RESPONSE_PSEUDO = frozenset((b":status",))
#: Connection-specific fields, which HTTP/2 has no use for (RFC 9113 §8.2.2).
_CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
#: A name is lower-case token characters (RFC 9110 §5.1, RFC 9113 §8.2.1).
_BAD_NAME = re.compile(rb"[^a-z0-9!#$%&'*+\-.^_`|~]")
#: A value has no NUL, CR or LF, nor whitespace at either end (RFC 9113 §8.2.1).
_BAD_VALUE = re.compile(rb"[\x00\r\n]|^[ \t]|[ \t]$")


def check_fields(
    headers: list[Header], pseudo_names: frozenset[bytes] = _REQUEST_PSEUDO
) -> str | None:
    """What makes a field list malformed, or None (pseudo-fields' presence aside).

    ``pseudo_names``: the pseudo-fields allowed (a request's, by default).
    """
    regular = False
    pseudo: set[bytes] = set()
    for name, value in headers:
        if name[:1] == b":":
            if regular:
                return "a pseudo-header field after a regular one"
            if name in pseudo or name not in pseudo_names:
                return f"a repeated or unknown pseudo-header field {name.decode('latin-1')}"
            pseudo.add(name)
            if name == b":path" and not value:
                return "an empty :path"
        else:
            regular = True
            if not name or _BAD_NAME.search(name):
                return "a field name that is not lower-case token characters"
            if name in _CONNECTION_SPECIFIC:
                return f"the connection-specific field {name.decode('latin-1')}"
            if name == b"te" and value != b"trailers":
                return "te other than trailers"
        if value and _BAD_VALUE.search(value):
            return "a field value with NUL, CR or LF, or whitespace at an end"
    return None


# -- HPACK, for responses: no dynamic table, so a block can be made once and kept -------

#: RFC 7541 Appendix A: the statuses the static table holds whole.
_STATUS_INDEX = {b"200": 8, b"204": 9, b"206": 10, b"304": 11, b"400": 12, b"404": 13, b"500": 14}


def string_literal(data: bytes) -> bytes:
    """An HPACK string literal without Huffman coding (a 7-bit prefix length, RFC 7541 §5.2)."""
    n = len(data)
    if n < 127:
        return bytes((n,)) + data
    n -= 127
    out = bytearray((127,))
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out) + data


def encode_block(fields: list[Header]) -> bytes:
    """A header block for ``fields`` (lower-case names): literals without indexing.

    ``:status`` is one byte when the static table has it, else a literal with
    the static name (index 8). Never touching the dynamic table, the block
    means the same on any connection, so callers keep and reuse it.
    """
    out = []
    for name, value in fields:
        if name == b":status":
            index = _STATUS_INDEX.get(value)
            out.append(bytes((0x80 | index,)) if index else b"\x08" + string_literal(value))
        else:
            out.append(b"\x00" + string_literal(name) + string_literal(value))
    return b"".join(out)
