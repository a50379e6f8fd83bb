"""An HTTP/2 client for tests, on h2 (client side) over an asyncio connection.

It gathers each stream's response (headers, body, trailers, reset code)
and the connection's GOAWAY, and can write raw bytes for the frames a
well-behaved client would never send (floods, bad HPACK, CONTINUATION
without end). Received body bytes are acknowledged as they arrive, unless
``auto_ack`` is off: then the proxy's window shuts once it is used up, until
:meth:`H2Peer.ack` opens it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings


@dataclass
class Response:
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    reset: int | None = None  # RST_STREAM's error code
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def status(self) -> int:
        return int(dict(self.headers)[b":status"])

    def header(self, name: bytes) -> bytes | None:
        return dict(self.headers).get(name)


class H2Peer:
    """One HTTP/2 connection to the proxy (h2c with prior knowledge, or TLS with ALPN h2)."""

    def __init__(self, *, auto_ack: bool = True, window: int | None = None) -> None:
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.auto_ack = auto_ack
        self.window = window
        self.responses: dict[int, Response] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = asyncio.Event()
        self.settings_seen = asyncio.Event()
        self.remote_settings: dict[int, int] = {}
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task | None = None
        self.alpn: str | None = None

    async def connect(
        self, port: int, *, tls: ssl.SSLContext | None = None, sni: str = ""
    ) -> H2Peer:
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls, server_hostname=(sni or None) if tls else None
        )
        if tls is not None:
            self.alpn = self.writer.get_extra_info("ssl_object").selected_alpn_protocol()
        if self.window is not None:
            self.conn.local_settings = h2.settings.Settings(
                client=True,
                initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.window},
            )
        self.conn.initiate_connection()
        self.flush()
        self._task = asyncio.get_running_loop().create_task(self._read())
        return self

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.writer is not None and not self.writer.is_closing():
            self.writer.write(data)

    def raw(self, data: bytes) -> None:
        """Bytes as they are (frames h2 would refuse to make)."""
        assert self.writer is not None
        self.writer.write(data)

    def request(
        self,
        path: str = "/",
        *,
        host: str = "a",
        method: str = "GET",
        headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
        body: bytes | None = None,
        end: bool = True,
        scheme: str = "http",
    ) -> int:
        """Open a stream; ``end=False`` leaves it open for :meth:`send`. Returns its id."""
        sid = self.conn.get_next_available_stream_id()
        fields = [(":method", method), (":path", path), (":scheme", scheme), (":authority", host)]
        fields += list(headers)
        self.responses[sid] = Response()
        self.conn.send_headers(sid, fields, end_stream=end and not body)
        if body:
            self.conn.send_data(sid, body, end_stream=end)
        self.flush()
        return sid

    def send(self, sid: int, data: bytes, *, end: bool = False) -> None:
        self.conn.send_data(sid, data, end_stream=end)
        self.flush()

    def end(self, sid: int, trailers: list[tuple[str, str]] | None = None) -> None:
        if trailers:
            self.conn.send_headers(sid, trailers, end_stream=True)
        else:
            self.conn.end_stream(sid)
        self.flush()

    def reset(self, sid: int, code: int = 8) -> None:
        """RST_STREAM (CANCEL by default)."""
        self.conn.reset_stream(sid, code)
        self.flush()

    def ack(self, sid: int, size: int) -> None:
        self.conn.acknowledge_received_data(size, sid)
        self.flush()

    async def response(self, sid: int, timeout: float = 5) -> Response:
        resp = self.responses[sid]
        async with asyncio.timeout(timeout):
            await resp.done.wait()
        return resp

    async def get(self, path: str = "/", timeout: float = 5, **kw) -> Response:
        return await self.response(self.request(path, **kw), timeout)

    async def wait_closed(self, timeout: float = 5) -> None:
        async with asyncio.timeout(timeout):
            await self.closed.wait()

    async def _read(self) -> None:
        assert self.reader is not None
        buf = b""
        try:
            while data := await self.reader.read(65536):
                buf += data
                data, buf = self._without_goaway(buf)
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    break
                for ev in events:
                    self._event(ev)
                self.flush()
        except (ConnectionError, OSError):
            pass
        finally:
            for resp in self.responses.values():
                resp.done.set()
            self.closed.set()

    def _without_goaway(self, buf: bytes) -> tuple[bytes, bytes]:
        """Whole frames of ``buf`` but GOAWAY, and the rest; a GOAWAY is recorded instead.

        (h2 answers nothing more after a GOAWAY, while a server that sends one
        NO_ERROR goes on answering the streams it named, as the proxy does.)
        """
        out = []
        while len(buf) >= 9:
            size = int.from_bytes(buf[:3], "big") + 9
            if len(buf) < size:
                break
            piece, buf = buf[:size], buf[size:]
            if piece[3] == GOAWAY:
                last, code = struct.unpack(">II", piece[9:17])
                self.goaway = h2.events.ConnectionTerminated()
                self.goaway.last_stream_id = last & 0x7FFFFFFF
                self.goaway.error_code = h2.errors._error_code_from_int(code)
            else:
                out.append(piece)
        return b"".join(out), buf

    def _event(self, ev: h2.events.Event) -> None:
        sid = getattr(ev, "stream_id", 0)
        resp = self.responses.get(sid)
        if isinstance(ev, h2.events.ResponseReceived) and resp is not None:
            resp.headers = list(ev.headers)
            if ev.stream_ended is not None:
                resp.done.set()
        elif isinstance(ev, h2.events.DataReceived) and resp is not None:
            resp.body += ev.data
            if self.auto_ack and ev.flow_controlled_length:
                with contextlib.suppress(h2.exceptions.StreamClosedError):
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
        elif isinstance(ev, h2.events.TrailersReceived) and resp is not None:
            resp.trailers = list(ev.headers)
        elif isinstance(ev, h2.events.StreamEnded) and resp is not None:
            resp.done.set()
        elif isinstance(ev, h2.events.StreamReset) and resp is not None:
            resp.reset = ev.error_code
            resp.done.set()
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            self.remote_settings.update({k: v.new_value for k, v in ev.changed_settings.items()})
            self.settings_seen.set()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = ev

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


def frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    """One raw HTTP/2 frame (RFC 9113 §4.1)."""
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes((kind, flags))
        + struct.pack(">I", sid)
        + payload
    )


DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, CONTINUATION = 0, 1, 3, 4, 6, 7, 9
END_STREAM, END_HEADERS = 0x1, 0x4


async def h2_backend(
    on_request: Any, *, max_streams: int | None = None
) -> tuple[asyncio.Server, int]:
    """An h2c endpoint on h2's server side; ``on_request(conn, stream_id, headers, writer)`` answers.

    For endpoints whose behaviour grpcio will not produce (a reset mid-answer,
    a small SETTINGS_MAX_CONCURRENT_STREAMS). It counts its connections in
    ``server.connections`` (set on the returned server).
    """
    counter = {"connections": 0}

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        counter["connections"] += 1
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        if max_streams is not None:
            conn.local_settings = h2.settings.Settings(
                client=False,
                initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams},
            )
        conn.initiate_connection()
        w.write(conn.data_to_send())
        try:
            while data := await r.read(65536):
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        on_request(conn, ev.stream_id, ev.headers, w)
                w.write(conn.data_to_send())
        except (ConnectionError, h2.exceptions.ProtocolError):
            pass
        finally:
            w.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    server.counter = counter  # type: ignore[attr-defined]
    return server, server.sockets[0].getsockname()[1]
