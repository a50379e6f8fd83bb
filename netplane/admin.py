"""The admin HTTP server: health, readiness, debug state and /metrics.

Strategy: h11 does all of HTTP/1.1 (parsing, framing, keep-alive rules) as a
sans-IO state machine; :class:`_AdminProtocol` is the thin asyncio adapter in
the uvicorn shape: ``data_received`` feeds h11 and walks its events, a whole
request (headers and body) is handed to a task that runs the handler, and the
task writes the response and starts the next keep-alive cycle. Routing is the
pure :class:`Router` (path, then method: 404, 405 with ``Allow``, HEAD for
every GET), so handlers never see a request they did not ask for.

Bounds, so a slow or hostile client cannot pin a connection or memory:

- headers: h11's ``max_incomplete_event_size`` (:data:`MAX_HEADER_BYTES`),
  answered with 431; a body above :data:`MAX_BODY_BYTES` gets 413;
- time: an idle connection (nothing of a request received yet) is closed
  after ``keepalive_timeout``; a request that has started must be complete
  within ``request_timeout`` of its first byte, or it gets 408. That deadline
  is not pushed back by more bytes, so dribbling a byte a second does not help;
- pipelining: while a request is being answered the adapter stops reading,
  so queued requests wait in the kernel, not here; they are answered in order.

Malformed input gets a canned response (400, 408, 413 or 431) with a short
body and a close; the server keeps serving everyone else. A handler that
raises gets a generic 500, its traceback goes to the ``netplane.admin``
logger, and the connection stays usable.

:meth:`AdminServer.close` stops listening, closes idle keep-alive
connections, lets in-flight requests finish (their responses carry
``Connection: close``) and aborts whatever is left after ``grace`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

import h11

from netplane.addresses import hostport

log = logging.getLogger("netplane.admin")

# Request line plus headers. h11's default is 16 KiB too; nginx takes 1 KiB
# and then up to 4 x 8 KiB (large_client_header_buffers), Apache 8 KiB per
# field, Node.js 16 KiB in all. The admin API needs a few hundred bytes.
MAX_HEADER_BYTES = 16 * 1024
# Admin requests are GET/HEAD; a later POST endpoint gets 1 MiB, no more.
MAX_BODY_BYTES = 1024 * 1024

DEFAULT_REQUEST_TIMEOUT = 10.0
DEFAULT_KEEPALIVE_TIMEOUT = 5.0
# After a canned error we shut our side and drain the peer's for this long:
# closing a socket with unread input sends RST, and an RST can reach the
# client before it has read our 400 (the "lingering close" of Apache/nginx).
LINGER_SECONDS = 1.0

TEXT = "text/plain; charset=utf-8"
JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Request:
    """One complete request as a handler sees it.

    ``method`` is upper case, ``path`` the target without the query,
    ``query`` the decoded query (last value wins), ``headers`` lower-cased
    names to values (repeated fields joined with ``", "``).
    """

    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Response:
    """What a handler returns; it validates itself, so one that exists is sendable.

    ``headers`` are extra fields; Content-Type and Content-Length are set
    from ``content_type`` and ``body``.
    """

    status: int = 200
    body: bytes = b""
    content_type: str = TEXT
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.status, int) or not 200 <= self.status <= 599:
            raise ValueError(f"Response.status: {self.status!r} is not a final status 200-599")
        if not isinstance(self.body, bytes):
            raise TypeError(f"Response.body: want bytes, got {type(self.body).__name__}")
        for name, _value in self.headers:
            if name.lower() in ("content-length", "content-type", "transfer-encoding"):
                raise ValueError(f"Response.headers: {name} is set by the server")

    @classmethod
    def text(cls, text: str, status: int = 200, **kw: Any) -> Response:
        return cls(status, text.encode(), TEXT, **kw)

    @classmethod
    def json(cls, obj: Any, status: int = 200, **kw: Any) -> Response:
        body = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
        return cls(status, body.encode(), JSON, **kw)


Handler = Callable[[Request], "Response | Awaitable[Response]"]


def _status_text(status: int) -> str:
    return f"{HTTPStatus(status).phrase.lower()}\n"


class Router:
    """Pure routing table: (method, path) → handler, or the 404/405 to answer."""

    def __init__(self) -> None:
        self._routes: dict[str, dict[str, Handler]] = {}

    def add(self, method: str, path: str, handler: Handler) -> None:
        method = method.upper()
        if not path.startswith("/"):
            raise ValueError(f"route {method} {path!r}: path must start with '/'")
        methods = self._routes.setdefault(path, {})
        if method in methods:
            raise ValueError(f"route {method} {path} is already registered")
        methods[method] = handler

    def allowed(self, path: str) -> list[str]:
        """The methods ``path`` answers, HEAD included wherever GET is."""
        methods = set(self._routes.get(path, ()))
        if "GET" in methods:
            methods.add("HEAD")
        return sorted(methods)

    def resolve(self, method: str, path: str) -> Handler | Response:
        methods = self._routes.get(path)
        if methods is None:
            return Response.text(_status_text(404), 404)
        handler = methods.get(method)
        if handler is None and method == "HEAD":
            # RFC 9110 §9.3.2: HEAD is GET without the content; the adapter
            # drops the body and keeps the headers, Content-Length included.
            handler = methods.get("GET")
        if handler is None:
            allow = ", ".join(self.allowed(path))
            return Response.text(_status_text(405), 405, headers=(("allow", allow),))
        return handler


class AdminServer:
    """HTTP/1.1 admin endpoint: ``/healthz``, ``/readyz``, ``/debug/state`` and added routes.

    ``host`` may be a name, an IPv4 or an IPv6 literal (``"::1"``); ``port``
    0 picks a free port, read back from :attr:`port` after :meth:`start`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        is_ready: Callable[[], bool],
        debug_state: Callable[..., dict[str, Any] | Awaitable[dict[str, Any]]],
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._is_ready = is_ready
        self._debug_state = debug_state
        self.request_timeout = request_timeout
        self.keepalive_timeout = keepalive_timeout
        self.router = Router()
        self._server: asyncio.Server | None = None
        self._conns: set[_AdminProtocol] = set()
        self._no_conns = asyncio.Event()
        self._no_conns.set()
        self.closing = False
        self.add_route("GET", "/healthz", self._healthz)
        self.add_route("GET", "/readyz", self._readyz)
        self.add_route("GET", "/debug/state", self._state)

    # -- public API --------------------------------------------------------

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        """Serve ``method path`` with ``handler`` (sync or async); GET also gets HEAD."""
        self.router.add(method, path, handler)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _AdminProtocol(self), self.host, self._requested_port, reuse_address=True
        )
        log.debug("admin server listening on %s", ", ".join(hostport(*a) for a in self.addresses))

    @property
    def sockets(self) -> tuple[Any, ...]:
        return tuple(self._server.sockets) if self._server is not None else ()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of every listening socket."""
        return [tuple(s.getsockname()[:2]) for s in self.sockets]

    @property
    def port(self) -> int:
        """The bound port (of the first socket, should a name resolve to several)."""
        if not self.sockets:
            raise RuntimeError("AdminServer.port: not listening; await start() first")
        return self.sockets[0].getsockname()[1]

    async def close(self, grace: float = 5.0) -> None:
        """Stop listening, close idle connections, give in-flight requests ``grace`` seconds."""
        if self._server is None:
            return
        server, self._server = self._server, None
        self.closing = True
        server.close()
        for conn in list(self._conns):
            conn.shutdown()
        try:
            await asyncio.wait_for(self._no_conns.wait(), grace)
        except TimeoutError:
            log.warning("admin server: %d connection(s) still busy after %.1fs, aborting",
                        len(self._conns), grace)  # fmt: skip
            for conn in list(self._conns):
                conn.abort()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._no_conns.wait(), 1.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 1.0)

    # -- dispatch (used by the adapter) -------------------------------------

    async def handle(self, request: Request) -> Response:
        """Route and run one request; never raises for a handler's fault."""
        target = self.router.resolve(request.method, request.path)
        if isinstance(target, Response):
            return target
        try:
            result = target(request)
            if inspect.isawaitable(result):
                result = await result
            if not isinstance(result, Response):
                raise TypeError(f"handler returned {type(result).__name__}, not Response")
            return result
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("admin handler for %s %s failed", request.method, request.path)
            return Response.text(_status_text(500), 500)

    def _register(self, conn: _AdminProtocol) -> None:
        self._conns.add(conn)
        self._no_conns.clear()

    def _unregister(self, conn: _AdminProtocol) -> None:
        self._conns.discard(conn)
        if not self._conns:
            self._no_conns.set()

    # -- built-in routes ----------------------------------------------------

    def _healthz(self, request: Request) -> Response:
        return Response.text("ok\n")

    def _readyz(self, request: Request) -> Response:
        # A draining server is not ready: the Service should stop sending.
        if self.closing or not self._is_ready():
            return Response.text("not ready\n", 503)
        return Response.text("ok\n")

    async def _state(self, request: Request) -> Response:
        # ?summary=1: counts and planes without the per-object lists, which run
        # to tens of MB at 10k services
        summary = request.query.get("summary", "") not in ("", "0", "false")
        state = self._debug_state(summary=True) if summary else self._debug_state()
        if inspect.isawaitable(state):  # the owner of --workers N asks its workers
            state = await state
        return Response.json(state)


def _canned(status: int) -> bytes:
    """A whole close-delimited error response, written without h11.

    Used when the request could not be parsed or finished, so h11's state
    may forbid a normal response; the connection closes right after.
    """
    body = _status_text(status).encode()
    return (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        f"content-type: {TEXT}\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


class _AdminProtocol(asyncio.Protocol):
    """One connection: feeds h11, runs one request at a time, writes responses."""

    def __init__(self, server: AdminServer) -> None:
        # global
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self._transport: asyncio.Transport | None = None
        # timeouts: one timer at a time, "idle", "request" or "linger"
        self._timer: asyncio.TimerHandle | None = None
        self._timer_kind = ""
        # flow control
        self._can_write = asyncio.Event()
        self._can_write.set()
        # per connection
        self._busy = False  # a request is complete and being answered
        self._closing = False  # close after the current response
        self._lingering = False  # error sent; discarding input until EOF
        self._task: asyncio.Task[None] | None = None
        # per request
        self._request: h11.Request | None = None
        self._body = bytearray()

    # -- asyncio callbacks --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass; cast, don't check.
        self._transport = cast(asyncio.Transport, transport)
        self._server._register(self)
        self._process()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        if self._timer_kind == "idle":
            self._cancel_timer()
        self._conn.receive_data(data)
        if not self._busy:
            self._process()

    def eof_received(self) -> bool:
        if self._lingering:
            self._close()
            return True
        self._conn.receive_data(b"")
        if not self._busy:
            self._process()
        return True  # half-close: a response in progress may still go out

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._can_write.set()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._server._unregister(self)

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    # -- control from the server --------------------------------------------

    def shutdown(self) -> None:
        """Close now if idle; otherwise close after the current response."""
        self._closing = True
        if self._lingering or (not self._busy and not self._partial()):
            self._close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- the h11 event loop -------------------------------------------------

    def _partial(self) -> bool:
        """Whether some of a request has arrived (so it is no longer idle)."""
        return self._conn.their_state is not h11.IDLE or bool(self._conn.trailing_data[0])

    def _process(self) -> None:
        while not self._busy and self._transport is not None and not self._transport.is_closing():
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as exc:
                log.debug("admin: bad request from %s: %s", self._peer(), exc)
                self._reject(exc.error_status_hint)
                return
            if event is h11.NEED_DATA:
                if self._conn.they_are_waiting_for_100_continue:
                    self._write(
                        self._conn.send(h11.InformationalResponse(status_code=100, headers=[]))
                    )
                self._arm_wait_timer()
                return
            if event is h11.PAUSED:  # only while busy; start_next_cycle unpauses
                return
            if isinstance(event, h11.Request):
                if _head_size(event) > MAX_HEADER_BYTES:
                    # h11 enforces its limit only while a head is incomplete;
                    # a large head that arrived in one read gets here whole.
                    self._reject(431)
                    return
                self._request = event
                self._body.clear()
            elif isinstance(event, h11.Data):
                self._body += event.data
                if len(self._body) > MAX_BODY_BYTES:
                    self._reject(413)
                    return
            elif isinstance(event, h11.EndOfMessage):
                self._dispatch()
            elif isinstance(event, h11.ConnectionClosed):
                self._close()
                return

    def _dispatch(self) -> None:
        assert self._request is not None and self._transport is not None
        self._cancel_timer()
        self._busy = True
        self._transport.pause_reading()
        request = _to_request(self._request, bytes(self._body))
        self._request = None
        self._body.clear()
        self._task = self._loop.create_task(self._respond(request))

    async def _respond(self, request: Request) -> None:
        response = await self._server.handle(request)
        headers = [
            ("content-type", response.content_type),
            ("content-length", str(len(response.body))),
            *response.headers,
        ]
        if self._closing:
            headers.append(("connection", "close"))
        try:
            out = self._conn.send(
                h11.Response(
                    status_code=response.status,
                    headers=headers,
                    reason=HTTPStatus(response.status).phrase,
                )
            )
            if request.method != "HEAD" and response.body:
                out += self._conn.send(h11.Data(data=response.body))
            out += self._conn.send(h11.EndOfMessage())
        except (h11.LocalProtocolError, ValueError):
            log.exception("admin: cannot send response to %s %s", request.method, request.path)
            self.abort()
            return
        log.debug("admin: %s %s -> %d", request.method, request.path, response.status)
        self._write(out)
        await self._can_write.wait()
        self._next_cycle()

    def _next_cycle(self) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        if self._closing or self._conn.our_state is not h11.DONE:
            self._close()  # MUST_CLOSE: the client or HTTP/1.0 asked for it
            return
        try:
            self._conn.start_next_cycle()
        except h11.LocalProtocolError:
            self._close()
            return
        self._busy = False
        self._task = None
        self._transport.resume_reading()
        self._process()  # a pipelined request may already be buffered

    # -- helpers ------------------------------------------------------------

    def _reject(self, status: int) -> None:
        assert self._transport is not None
        self._write(_canned(status))
        if not self._transport.can_write_eof():
            self._close()
            return
        self._transport.write_eof()
        self._lingering = True
        self._busy = True  # nothing more is parsed on this connection
        self._transport.resume_reading()
        self._set_timer("linger", LINGER_SECONDS)

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _close(self) -> None:
        self._cancel_timer()
        if self._transport is not None:
            self._transport.close()

    def _peer(self) -> str:
        peer = self._transport.get_extra_info("peername") if self._transport else None
        return hostport(*peer[:2]) if peer else "?"

    def _arm_wait_timer(self) -> None:
        if self._partial():
            # The request deadline runs from its first byte; more bytes do
            # not push it back.
            if self._timer_kind != "request":
                self._set_timer("request", self._server.request_timeout)
        elif self._timer_kind != "idle":
            self._set_timer("idle", self._server.keepalive_timeout)

    def _set_timer(self, kind: str, delay: float) -> None:
        self._cancel_timer()
        self._timer_kind = kind
        self._timer = self._loop.call_later(delay, self._on_timeout)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_kind = ""

    def _on_timeout(self) -> None:
        kind = self._timer_kind
        self._timer = None
        self._timer_kind = ""
        if kind == "request":
            log.debug("admin: request from %s timed out", self._peer())
            self._reject(408)
        else:  # idle or linger
            self._close()


def _head_size(event: h11.Request) -> int:
    """Bytes of the request line and header fields, as sent (give or take spaces)."""
    size = len(event.method) + len(event.target) + len(b"  HTTP/1.1\r\n\r\n")
    return size + sum(len(name) + len(value) + 4 for name, value in event.headers.raw_items())


def _to_request(event: h11.Request, body: bytes) -> Request:
    target = event.target.decode("latin-1")
    parts = urlsplit(target)  # origin-form, or absolute-form (RFC 9112 §3.2.2)
    headers: dict[str, str] = {}
    for name, value in event.headers:
        key, val = name.decode("latin-1"), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {val}" if key in headers else val
    return Request(
        method=event.method.decode("ascii").upper(),
        path=parts.path or "/",
        query=dict(parse_qsl(parts.query, keep_blank_values=True)),
        headers=headers,
        body=body,
    )
