"""A minimal Kubernetes API client: GET JSON, stream watches, PATCH status; h11 + asyncio.

Strategy: one TCP/TLS connection per request, driven by an ``h11.Connection``
(the sans-IO HTTP/1.1 engine) over ``asyncio.open_connection``. Lists are
read whole and parsed as JSON; watches hand the de-chunked body to the
sans-IO :class:`~netplane.sources.kube.watchstream.WatchDecoder` and yield
what it decodes. A fresh connection per request keeps the client free of
pool state; the reflectors make one long watch per resource and a handful
of list pages on (re)list, so the handshakes do not matter.

A 401 drops the cached credentials (token file re-read, exec plugin re-run)
and the request is retried once; what is left is raised as :class:`ApiError`
carrying the HTTP status and the Status ``reason``/``code``, so the reflector
can tell 410 Gone (relist) from the rest (back off). Messages name the path
and the server's message, never a credential.

A connection that ends early is :class:`ConnectionLost` (refused,
timed out, closed before or in the middle of a response), which the reflector
retries soon, apart from what the server *answered* (:class:`ApiError`, backed
off for longer; a 429/503 carries its ``Retry-After``). A watch whose
connection closes cleanly between two events, as an API server shutting down
does, simply ends, like one the server ended with its last chunk: nothing is
lost, the caller resumes from the last event. Only bytes that are not
HTTP/1.1 are "API server broke HTTP/1.1".

Every open connection is tracked so :meth:`KubeClient.aclose` (and
cancellation of a caller) closes it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncGenerator, Mapping
from typing import Any
from urllib.parse import urlencode

import h11

import netplane
from netplane.addresses import bracket_host
from netplane.errors import SourceError
from netplane.sources.kube.auth import Credentials
from netplane.sources.kube.kubeconfig import ClusterConfig
from netplane.sources.kube.watchstream import WatchDecoder, WatchItem

log = logging.getLogger("netplane.sources.kube")

READ_SIZE = 256 * 1024
MAX_BODY = 512 * 1024 * 1024  # a list page; the API server's own cap is far lower per page
MAX_ERROR_BODY = 64 * 1024


class ApiError(SourceError):
    """The API server answered with a non-2xx status."""

    def __init__(
        self,
        status: int,
        path: str,
        reason: str = "",
        message: str = "",
        method: str = "GET",
        *,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.retry_after = retry_after  # seconds, from a Retry-After header
        self.path = path
        self.reason = reason
        self.message = message
        self.method = method
        text = f"{method} {path}: HTTP {status}"
        if reason:
            text += f" {reason}"
        if message:
            text += f": {message}"
        super().__init__(text)

    @property
    def gone(self) -> bool:
        return self.status == 410

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def not_found(self) -> bool:
        return self.status == 404


class ConnectionLost(SourceError):
    """No answer: the connection failed, timed out or closed before the response ended."""


class WatchClosed(ConnectionLost):
    """The server closed a watch's connection between two events (a graceful shutdown).

    Internal to :meth:`KubeClient.watch`, which ends the stream normally on it.
    """


class _Conn:
    """One HTTP/1.1 exchange on one connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)
        self.eof = False  # the server closed its side
        self.chunk_end = True  # the last body Data ended a chunk (or there was none yet)

    async def send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def next_event(self, timeout: float | None) -> h11.Event:
        while True:
            in_body = self.h11.their_state is h11.SEND_BODY  # h11 says ERROR once it raises
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as e:
                if not self.eof:
                    raise SourceError(f"API server broke HTTP/1.1: {e}") from None
                if in_body and self.chunk_end:
                    raise WatchClosed("API server closed the connection between chunks") from None
                if in_body:
                    raise ConnectionLost("API server closed the connection mid-response") from None
                raise ConnectionLost("API server closed the connection before a response") from None
            if isinstance(event, h11.Data):
                self.chunk_end = bool(event.chunk_end)  # always False without chunking
                return event
            if isinstance(event, h11.Event):
                return event
            if event is h11.PAUSED:
                # h11 pauses only between a complete response and the next
                # request; every caller stops reading at EndOfMessage.
                raise SourceError("read past the end of a response (h11 PAUSED)")
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a
                # cancellation that races with completion, and run() must stay cancellable.
                async with asyncio.timeout(timeout):
                    data = await self.reader.read(READ_SIZE)
            except TimeoutError:
                raise ConnectionLost(f"API server sent nothing for {timeout:.0f}s") from None
            if not data:
                self.eof = True
            self.h11.receive_data(data)  # b"" marks EOF; h11 then reports the truncation

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()


class KubeClient:
    """GET lists and watches (and PATCH Ingress status) on one API server; one per source."""

    def __init__(
        self,
        config: ClusterConfig,
        *,
        credentials: Credentials | None = None,
        connect_timeout: float = 10.0,
        request_timeout: float = 60.0,
        user_agent: str = f"netplane/{netplane.__version__}",
    ) -> None:
        self.config = config
        self.credentials = credentials or Credentials(config)
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.user_agent = user_agent
        self._open: set[_Conn] = set()

    def __repr__(self) -> str:
        return f"KubeClient(server={self.config.server!r})"

    async def aclose(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._open.clear()

    async def get_json(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        """GET ``path`` and return the decoded JSON object."""
        target = _target(path, params)
        conn = await self._request(target)
        return await self._read_json(conn, "GET", path)

    async def patch_json(
        self,
        path: str,
        patch: Mapping[str, Any],
        *,
        content_type: str = "application/merge-patch+json",
    ) -> dict[str, Any]:
        """PATCH ``path`` (a JSON merge patch by default) and return the object the server stored."""
        body = json.dumps(patch, separators=(",", ":")).encode()
        conn = await self._request(path, method="PATCH", body=body, content_type=content_type)
        return await self._read_json(conn, "PATCH", path)

    async def _read_json(self, conn: _Conn, method: str, path: str) -> dict[str, Any]:
        try:
            body = bytearray()
            while True:
                event = await conn.next_event(self.request_timeout)
                if isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > MAX_BODY:
                        raise SourceError(f"{method} {path}: response larger than {MAX_BODY} bytes")
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
        finally:
            self._done(conn)
        try:
            doc = json.loads(body)
        except ValueError:
            raise SourceError(f"{method} {path}: response is not JSON") from None
        if not isinstance(doc, dict):
            raise SourceError(f"{method} {path}: response is not a JSON object")
        return doc

    async def watch(
        self,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        idle_timeout: float | None = None,
    ) -> AsyncGenerator[WatchItem, None]:
        """Stream a watch: decoded events and bad-line markers until the body ends.

        Returns normally when the server ends the stream: its last chunk
        (timeoutSeconds, or a shutdown) or a clean close between two events.
        Raises :class:`ApiError`, :class:`ConnectionLost` (e.g. closed in the
        middle of an event), :class:`SourceError` or ``OSError`` otherwise.
        """
        target = _target(path, params)
        conn = await self._request(target)
        decoder = WatchDecoder()
        try:
            while True:
                try:
                    event = await conn.next_event(idle_timeout)
                except WatchClosed:
                    if decoder.pending_bytes:
                        raise ConnectionLost(
                            f"GET {path}: API server closed the watch in the middle of an event"
                        ) from None
                    return  # a clean close: every event sent arrived whole
                if isinstance(event, h11.Data):
                    decoder.feed(event.data)
                    for item in decoder.events():
                        yield item
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    decoder.close()
                    for item in decoder.events():
                        yield item
                    return
        finally:
            self._done(conn)

    async def _request(
        self,
        target: str,
        *,
        method: str = "GET",
        body: bytes | None = None,
        content_type: str | None = None,
    ) -> _Conn:
        """Open a connection, send the request, and return it positioned after a 2xx head."""
        for attempt in (1, 2):
            conn = await self._connect()
            try:
                headers = [
                    ("Host", self._host_header()),
                    ("Accept", "application/json"),
                    ("User-Agent", self.user_agent),
                ]
                auth = await self.credentials.authorization()
                if auth is not None:
                    headers.append(("Authorization", auth))
                if body is not None:
                    headers.append(("Content-Type", content_type or "application/json"))
                    headers.append(("Content-Length", str(len(body))))
                await conn.send(h11.Request(method=method, target=target, headers=headers))
                if body:
                    await conn.send(h11.Data(data=body))
                await conn.send(h11.EndOfMessage())
                event = await conn.next_event(self.request_timeout)
                while isinstance(event, h11.InformationalResponse):  # 1xx: the answer follows
                    event = await conn.next_event(self.request_timeout)
                if isinstance(event, h11.ConnectionClosed):
                    raise ConnectionLost(
                        f"{method} {_path_only(target)}: connection closed before a response"
                    )
                if not isinstance(event, h11.Response):
                    raise SourceError(
                        f"{method} {_path_only(target)}: unexpected {type(event).__name__}"
                    )
                if 200 <= event.status_code < 300:
                    return conn
                err = await self._error(conn, event.status_code, target, method)
                err.retry_after = _retry_after(event.headers)
            except BaseException:
                self._done(conn)
                raise
            self._done(conn)
            if err.status == 401 and attempt == 1:
                self.credentials.unauthorized()
                continue
            raise err
        raise AssertionError("unreachable")

    async def _error(self, conn: _Conn, status: int, target: str, method: str) -> ApiError:
        body = bytearray()
        try:
            while len(body) < MAX_ERROR_BODY:
                event = await conn.next_event(self.request_timeout)
                if isinstance(event, h11.Data):
                    body += event.data
                else:
                    break
        except (SourceError, OSError):
            pass
        reason = message = ""
        try:
            doc = json.loads(body)
            if isinstance(doc, dict):
                reason = str(doc.get("reason") or "")
                message = str(doc.get("message") or "")[:500]
        except ValueError:
            pass
        return ApiError(status, _path_only(target), reason, message, method)

    async def _connect(self) -> _Conn:
        host, port = self.config.host_port
        ctx: ssl.SSLContext | None = await self.credentials.ssl_context()
        server_hostname = None
        if ctx is not None:
            server_hostname = self.config.tls_server_name or host
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=ctx, server_hostname=server_hostname, limit=READ_SIZE
                )
        except TimeoutError:
            raise ConnectionLost(f"connect to {self.config.server}: timed out") from None
        conn = _Conn(reader, writer)
        self._open.add(conn)
        return conn

    def _done(self, conn: _Conn) -> None:
        conn.close()
        self._open.discard(conn)

    def _host_header(self) -> str:
        host, port = self.config.host_port
        shown = bracket_host(host)
        default = 443 if self.config.scheme == "https" else 80
        return shown if port == default else f"{shown}:{port}"


def _target(path: str, params: Mapping[str, str] | None) -> str:
    if params:
        return f"{path}?{urlencode(params)}"
    return path


def _retry_after(headers: Any) -> float | None:
    """A Retry-After header in seconds (the API server sends delta-seconds), else None."""
    for name, value in headers:
        if name.lower() == b"retry-after":
            try:
                seconds = float(value.decode("ascii").strip())
            except (UnicodeDecodeError, ValueError):
                return None
            return seconds if seconds >= 0 else None
    return None


def _path_only(target: str) -> str:
    # Queries carry selectors and continue tokens, not secrets, but keep messages short.
    return target.split("?", 1)[0]
