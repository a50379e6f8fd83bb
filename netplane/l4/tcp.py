"""The TCP relay: accept on a frontend address, connect to an endpoint, copy bytes both ways.

Two relays share :class:`TcpProxy` and :class:`Listener`: on Linux the
zero-copy one of :mod:`.splice` (raw sockets, ``os.splice`` through a pipe
per direction), everywhere else, or with ``TcpSettings(splice=False)``, the
Protocol relay below. Both keep the same contract: backpressure, half-close,
resets, the idle timeout, connect retries, PROXY v2 and route accounting.
Both see the proxy only as a :class:`.relay_host.RelayHost` and take the
routing steps of :mod:`.relay_host` (first endpoint, connect retry, close
report); :mod:`.splice` does not import this module.

Strategy of the Protocol relay:

- Two thin ``asyncio.Protocol`` objects per connection: :class:`_Connection`
  for the accepted client socket (it owns all the state) and
  :class:`_Upstream` for the socket to the endpoint. Each ``data_received``
  hands the chunk straight to the other transport's ``write()``: no copy,
  no queue, no task on the data path.
- The route comes from the listener's ``resolve(sockname, peername)``, so one
  listener can serve many frontends (a wildcard NodePort socket, or the
  original destination of redirected traffic). No route or no endpoint:
  the client is reset at once (``SO_LINGER`` 0, then close), never left
  hanging on a socket nobody will serve.
- Connecting runs in one task per connection: ``create_connection`` under
  ``connect_timeout``; a refused or timed-out attempt is reported with
  ``route.failed()`` and the next one goes to ``route.pick(exclude=tried)``,
  up to ``connect_attempts``, then the client is reset
  (:func:`.relay_host.retry_target`). Bytes the client
  sends meanwhile (uvloop delivers them before the upstream is up) are
  kept, bounded by ``max_buffered``, above which the client is paused.
- The upstream is wired in its ``connection_made`` (route.opened, PROXY v2
  header, buffered bytes, a pending half-close), so no byte can come from
  the endpoint before the relay is ready for it.
- Backpressure both ways: each transport's write buffer has the
  ``high_water`` mark, and its ``pause_writing``/``resume_writing`` pause
  and resume reading the other socket (:mod:`.flow_control`).
- Half-close is forwarded: EOF from one side becomes ``write_eof()`` on the
  other once its buffer is flushed (the transport does that); when both
  directions are done both transports are closed. A reset or error on one
  side resets the other, so the peer sees the failure instead of a clean EOF.
- The idle timeout is one ``call_later`` handle per connection ticking four
  times per timeout; the data path only sets a flag, so an idle connection
  is aborted between 1 and 1.25 timeouts after its last byte.
- ``route.closed()`` runs exactly once, when both sockets are gone, for a
  connection on which ``route.opened()`` ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from netplane.accept import Acceptor, bind, listen_transports
from netplane.l4 import splice
from netplane.l4.flow_control import PENDING_FULL, FlowControl
from netplane.l4.pipes import PipePool
from netplane.l4.proxy_protocol import header_for
from netplane.l4.relay_host import (
    RelayConnection,
    RelayHost,
    Resolver,
    TcpSettings,
    first_target,
    refuse,
    report_closed,
    retry_target,
)
from netplane.l4.relay_shared import IDLE_TICKS, LINGER_RST, fmt_addr

if TYPE_CHECKING:
    from netplane.l4 import Route, Target

__all__ = ["Listener", "TcpProxy", "TcpSettings", "reset"]

log = logging.getLogger("netplane.l4.tcp")


def reset(transport: asyncio.WriteTransport) -> None:
    """Close ``transport`` with a TCP RST (``SO_LINGER`` 0) instead of a FIN."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
    transport.abort()


class _Server(Protocol):
    """What a listener needs of its server: ``asyncio.Server``, or the splice relay's Acceptor."""

    @property
    def sockets(self) -> Sequence[socket.socket]: ...

    def close(self) -> None: ...


class Listener:
    """One listening socket of a :class:`TcpProxy`; ``resolve`` may be swapped at any time."""

    __slots__ = ("_on_close", "_server", "resolve")

    def __init__(self, resolve: Resolver, on_close: Callable[[Listener], None]) -> None:
        self._on_close = on_close
        self._server: _Server | None = None
        #: ``resolve(sockname, peername) -> Route | None``, called once per accepted connection
        self.resolve = resolve

    def serve(self, server: _Server) -> None:
        """Take the server (or splice acceptor) that accepts for this listener."""
        self._server = server

    @property
    def sockets(self) -> tuple[Any, ...]:
        return tuple(self._server.sockets) if self._server is not None else ()

    @property
    def sockname(self) -> tuple:
        """The bound address of the (first) listening socket, e.g. to learn port 0's port."""
        return self.sockets[0].getsockname()

    @property
    def closed(self) -> bool:
        return self._server is None

    def close(self) -> None:
        """Stop accepting; connections already accepted go on until they end."""
        if self._server is not None:
            self._server.close()
            self._server = None
            self._on_close(self)


class TcpProxy:
    """Owns the TCP listeners and every relayed connection they accepted.

    The relays see it only as a :class:`.relay_host.RelayHost`.
    """

    def __init__(self, settings: TcpSettings | None = None) -> None:
        self.settings = settings or TcpSettings()
        #: whether new listeners relay with os.splice (else through Protocols)
        self.spliced = self.settings.splice and splice.available()
        #: empty pipes for the next spliced connection
        self.pipes = PipePool(self.settings.pipe_size)
        self._reactor: splice.Reactor | None = None
        self._listeners: set[Listener] = set()
        self._conns: set[RelayConnection] = set()
        self._empty = asyncio.Event()
        self._empty.set()
        # counters, for /debug/state (per service port, the pickers count for /metrics)
        #: connections accepted
        self.accepted = 0
        #: connections reset because there was no route or no endpoint
        self.refused = 0
        #: connect attempts that were refused or timed out
        self.connect_failures = 0
        #: connections reset after every attempt failed
        self.unreachable = 0

    @property
    def connections(self) -> int:
        """Client connections currently open (connecting or relaying)."""
        return len(self._conns)

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    def buffered(self) -> int:
        """Bytes held by the relay now: write buffers (or splice pipes) and pre-connect bytes."""
        return sum(c.buffered() for c in self._conns)

    async def listen(
        self,
        host: str,
        port: int,
        resolve: Resolver,
        *,
        reuse_port: bool = False,
        sock: socket.socket | None = None,
        backlog: int = 1024,
    ) -> Listener:
        """Listen on ``host:port`` (or the given bound ``sock``); raises OSError if it cannot."""
        loop = asyncio.get_running_loop()
        listener = Listener(resolve, self._listeners.discard)
        if self.spliced:
            socks = [sock] if sock is not None else await bind(host, port, reuse_port=reuse_port)
            if self._reactor is None:
                st = self.settings
                self._reactor = splice.Reactor(loop, st.connect_timeout, st.idle_timeout)
            reactor, SplicedConnection = self._reactor, splice.SplicedConnection

            def accepted(client: Any, peer: Any, sockname: Any) -> None:
                conn = SplicedConnection(
                    self, listener.resolve, loop, reactor, client, peer, sockname
                )
                try:
                    conn.start()
                except Exception:
                    log.exception("TCP %s: accepting a connection failed", fmt_addr(peer))
                    conn.abort()

            try:
                listener.serve(Acceptor(loop, socks, accepted, backlog))
            except BaseException:
                for s in socks:
                    s.close()
                raise
            self._listeners.add(listener)
            return listener

        def factory() -> _Connection:
            return _Connection(self, listener.resolve, loop)

        # Our own accept loop (netplane.accept): out of descriptors, accepting pauses.
        server = await listen_transports(
            host, port, factory, label="l4-tcp", backlog=backlog, reuse_port=reuse_port,
            socks=[sock] if sock is not None else None,
        )  # fmt: skip
        listener.serve(server)
        self._listeners.add(listener)
        return listener

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for open connections to end, then reset the rest."""
        if self._conns and timeout > 0:
            try:
                async with asyncio.timeout(timeout):
                    await self._empty.wait()
            except TimeoutError:
                pass
        if self._conns:
            log.info("resetting %d TCP connections still open after draining", len(self._conns))
            for conn in list(self._conns):
                conn.abort()
            # connection_lost runs on the next loop iterations; wait for it, briefly.
            try:
                async with asyncio.timeout(1.0):
                    await self._empty.wait()
            except TimeoutError:
                log.warning("%d TCP connections did not close after reset", len(self._conns))

    async def close(self, grace: float = 0.0) -> None:
        """Close every listener, then :meth:`drain` the connections for ``grace`` seconds."""
        for listener in list(self._listeners):
            listener.close()
        await self.drain(grace)
        self.pipes.close()
        if self._reactor is not None:
            self._reactor.close()
            self._reactor = None

    # -- RelayHost: what the relays call -------------------------------------------

    def add(self, conn: RelayConnection) -> None:
        """``conn`` is open (counted as accepted); draining waits for it."""
        self._conns.add(conn)
        self._empty.clear()
        self.accepted += 1

    def remove(self, conn: RelayConnection) -> None:
        """``conn`` is gone: both of its sockets are closed."""
        self._conns.discard(conn)
        if not self._conns:
            self._empty.set()


class _Upstream(asyncio.Protocol):
    """The endpoint side: forwards into the client's transport, reports to the connection."""

    __slots__ = ("_conn",)

    def __init__(self, conn: _Connection) -> None:
        self._conn: _Connection | None = conn

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # create_connection() gives a stream Transport
        assert self._conn is not None
        if not self._conn._upstream_made(transport, self):
            self._conn = None

    def data_received(self, data: bytes) -> None:
        conn = self._conn
        if conn is not None:
            conn._client.write(data)  # type: ignore[union-attr]  # set before the upstream exists
            conn._busy = True
            conn._route.counts.to_client += len(data)  # type: ignore[union-attr]  # set before connecting

    def eof_received(self) -> bool:
        if self._conn is not None:
            self._conn._upstream_eof_received()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn._upstream_lost(exc)

    def pause_writing(self) -> None:
        if self._conn is not None:
            self._conn._client_read.pause_writing()  # type: ignore[union-attr]  # set with the client

    def resume_writing(self) -> None:
        if self._conn is not None:
            self._conn._client_read.resume_writing()  # type: ignore[union-attr]  # set with the client


class _Connection(asyncio.Protocol):
    """The accepted client side of one relayed connection, and the state of the pair."""

    __slots__ = (
        "_busy",
        "_client",
        "_client_eof",
        "_client_lost",
        "_client_read",
        "_connecting",
        "_done",
        "_host",
        "_idle_handle",
        "_loop",
        "_opened",
        "_peer",
        "_pending",
        "_pending_size",
        "_quiet",
        "_resolve",
        "_route",
        "_settings",
        "_sockname",
        "_target",
        "_upstream",
        "_upstream_eof",
        "_upstream_lost_flag",
        "_upstream_read",
    )

    def __init__(self, host: RelayHost, resolve: Resolver, loop: asyncio.AbstractEventLoop):
        # global
        self._host = host
        self._resolve = resolve
        self._loop = loop
        self._settings = host.settings
        # the two sockets
        self._client: asyncio.Transport | None = None
        self._upstream: asyncio.Transport | None = None
        self._client_read: FlowControl | None = None
        self._upstream_read: FlowControl | None = None
        self._peer: tuple = ()
        self._sockname: tuple = ()
        # routing
        self._route: Route | None = None
        self._target: Target | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._opened = False
        # client bytes received before the upstream is up
        self._pending: list[bytes] | None = []
        self._pending_size = 0
        # lifecycle
        self._client_eof = False
        self._upstream_eof = False
        self._client_lost = False
        self._upstream_lost_flag = False
        self._done = False
        # idle timeout
        self._idle_handle: asyncio.TimerHandle | None = None
        self._busy = False
        self._quiet = 0

    # -- what tests and the proxy look at -----------------------------------------

    @property
    def client_paused(self) -> bool:
        """Whether the relay is not reading the client now (backpressure, or pending full)."""
        return self._client_read is not None and self._client_read.paused

    @property
    def upstream_connected(self) -> bool:
        return self._upstream is not None

    @property
    def pending_size(self) -> int:
        """Client bytes held while the upstream is not up yet."""
        return self._pending_size

    # -- client side (asyncio.Protocol) -----------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # a server's protocol gets a stream Transport
        self._client = transport
        self._host.add(self)
        transport.set_write_buffer_limits(high=self._settings.high_water)
        self._client_read = FlowControl(transport)
        self._peer = transport.get_extra_info("peername") or ()
        self._sockname = transport.get_extra_info("sockname") or ()
        route, target = first_target(self._resolve, self._sockname, self._peer)
        if route is None or target is None:
            refuse(self._host, route is None, self._sockname, self._peer)
            reset(transport)
            return
        self._route = route
        self._connecting = self._loop.create_task(self._connect(target))

    def data_received(self, data: bytes) -> None:
        upstream = self._upstream
        if upstream is not None:
            upstream.write(data)
            self._busy = True
            self._route.counts.to_endpoint += len(data)  # type: ignore[union-attr]  # set before connecting
            return
        pending = self._pending
        if pending is None:  # reset or refused: drop
            return
        pending.append(data)
        self._pending_size += len(data)
        if self._pending_size > self._settings.max_buffered:
            self._client_read.pause(PENDING_FULL)  # type: ignore[union-attr]  # set in connection_made

    def eof_received(self) -> bool:
        self._client_eof = True
        self._client_read.finish()  # type: ignore[union-attr]  # set in connection_made
        upstream = self._upstream
        if upstream is not None:
            if not upstream.is_closing():
                upstream.write_eof()
            self._close_if_both_eof()
        return True  # keep the client open for the reply

    def connection_lost(self, exc: Exception | None) -> None:
        self._client_lost = True
        if self._client_read is not None:
            self._client_read.finish()
        self._pending = None
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        upstream = self._upstream
        if upstream is not None and not self._upstream_lost_flag:
            if exc is not None:
                reset(upstream)
            else:
                upstream.close()
        self._maybe_finish()

    def pause_writing(self) -> None:
        if self._upstream_read is not None:
            self._upstream_read.pause_writing()

    def resume_writing(self) -> None:
        if self._upstream_read is not None:
            self._upstream_read.resume_writing()

    # -- connecting ---------------------------------------------------------------

    async def _connect(self, target: Target) -> None:
        route = self._route
        assert route is not None
        s = self._settings
        tried: list[Target] = []
        for _ in range(s.connect_attempts):
            self._target = target
            try:
                async with asyncio.timeout(s.connect_timeout):
                    await self._loop.create_connection(
                        lambda: _Upstream(self), target.address, target.port
                    )
                return  # wired by _Upstream.connection_made
            except Exception as e:
                if self._upstream is not None:
                    return  # wired, then cancelled on the way out: the transport is closing
                if isinstance(e, OSError) and e.strerror:
                    reason = e.strerror
                else:
                    reason = type(e).__name__
                    if not isinstance(e, OSError | TimeoutError):
                        log.exception(
                            "TCP %s: connect to %s failed",
                            fmt_addr(self._sockname),
                            fmt_addr((target.address, target.port)),
                        )
            nxt = retry_target(self._host, route, target, tried, self._peer, self._sockname, reason)
            if nxt is None:
                break
            target = nxt
        self._connecting = None
        self._pending = None
        if self._client is not None and not self._client_lost:
            reset(self._client)

    def _upstream_made(self, transport: asyncio.Transport, proto: _Upstream) -> bool:
        """Wire a fresh upstream; False (and the socket aborted) if the client is gone."""
        if self._client_lost or self._done or self._upstream is not None:
            transport.abort()
            return False
        client = self._client
        client_read = self._client_read
        assert client is not None and client_read is not None
        assert self._route is not None and self._target is not None
        self._upstream = transport
        transport.set_write_buffer_limits(high=self._settings.high_water)
        self._upstream_read = FlowControl(transport)
        self._opened = True
        self._route.opened(self._target)
        if self._route.proxy_protocol:
            header = header_for(self._peer, self._sockname)
            transport.write(header)
        pending, self._pending = self._pending, None
        if pending:
            for chunk in pending:
                transport.write(chunk)
            self._route.counts.to_endpoint += self._pending_size
            self._pending_size = 0
        client_read.resume(PENDING_FULL)
        if self._client_eof:
            transport.write_eof()
        # An upstream that is already full keeps the client paused: its
        # pause_writing ran inside the writes above, before this resume, and
        # FlowControl holds PEER_BACKLOG separately from PENDING_FULL.
        self._arm_idle()
        return True

    # -- upstream side (called by _Upstream) --------------------------------------

    def _upstream_eof_received(self) -> None:
        self._upstream_eof = True
        self._upstream_read.finish()  # type: ignore[union-attr]  # set with the upstream, before its EOF
        client = self._client
        if client is not None and not client.is_closing():
            client.write_eof()
        self._close_if_both_eof()

    def _upstream_lost(self, exc: Exception | None) -> None:
        self._upstream_lost_flag = True
        if self._upstream_read is not None:
            self._upstream_read.finish()
        client = self._client
        if client is not None and not self._client_lost:
            if exc is not None:
                reset(client)
            else:
                client.close()
        self._maybe_finish()

    # -- lifecycle ----------------------------------------------------------------

    def _close_if_both_eof(self) -> None:
        if self._client_eof and self._upstream_eof:
            # close() flushes what is buffered, then closes.
            self._client.close()  # type: ignore[union-attr]  # both sent EOF: both exist
            self._upstream.close()  # type: ignore[union-attr]  # both sent EOF: both exist

    def _maybe_finish(self) -> None:
        if self._done or not self._client_lost:
            return
        if self._upstream is not None and not self._upstream_lost_flag:
            return
        self._done = True
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        if self._opened:
            self._opened = False
            report_closed(self._route, self._target, self._sockname)  # type: ignore[arg-type]  # _opened implies both set
        self._host.remove(self)

    def abort(self) -> None:
        """Reset both sides now (idle timeout, end of a drain)."""
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        if self._upstream is not None and not self._upstream_lost_flag:
            reset(self._upstream)
        if self._client is not None and not self._client_lost:
            reset(self._client)

    def buffered(self) -> int:
        n = self._pending_size
        if self._client is not None and not self._client_lost:
            n += self._client.get_write_buffer_size()
        if self._upstream is not None and not self._upstream_lost_flag:
            n += self._upstream.get_write_buffer_size()
        return n

    # -- idle timeout -------------------------------------------------------------

    def _arm_idle(self) -> None:
        self._idle_handle = self._loop.call_later(
            self._settings.idle_timeout / IDLE_TICKS, self._idle_tick
        )

    def _idle_tick(self) -> None:
        self._idle_handle = None
        if self._done:
            return
        if self._busy:
            self._busy = False
            self._quiet = 0
        else:
            self._quiet += 1
            if self._quiet >= IDLE_TICKS:
                log.debug(
                    "TCP %s from %s: idle for %ss, resetting",
                    fmt_addr(self._sockname),
                    fmt_addr(self._peer),
                    self._settings.idle_timeout,
                )
                self.abort()
                return
        self._arm_idle()
