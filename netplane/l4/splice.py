"""The zero-copy TCP relay on Linux: socket -> pipe -> socket with ``os.splice``.

Strategy:

- Raw sockets, not transports. uvloop's transports own their descriptors
  (``add_reader`` on a transport's fd is refused) and read into Python bytes
  before a protocol sees them, so a spliced connection never has one:
  :class:`Acceptor` accepts on the listening socket from an ``add_reader``
  callback, and :class:`SplicedConnection` connects a non-blocking socket
  with ``connect_ex`` and learns the outcome from its first epoll event
  (``SO_ERROR`` is read only when that event says the connect failed).
  Detaching a transport's socket instead would pay for a transport and a
  protocol per socket only to throw them away, and the transport may already
  have read bytes. No task, future or timer per connection either.
- One edge-triggered epoll per proxy (:class:`Reactor`), itself polled from
  the loop with one ``add_reader``. Each socket is registered once, for
  reading and writing, and leaves the set when it is closed: per connection
  the kernel sees accept4, socket, connect, two epoll_ctl, the splices, one
  shutdown and two closes, about what haproxy costs. uvloop's
  ``add_reader``/``remove_reader`` per readiness change cost about 18
  epoll_ctl per connection here, half of them failing.
- One pipe per direction (:class:`_Pump`): splice from the source socket
  into the pipe, then from the pipe into the destination, until one says
  EAGAIN. The source is read only while its pipe has room, so a full pipe
  (the destination not taking bytes) stops reading that direction and the
  kernel's receive window pushes back on the sender. The bytes in the pipes
  are the relay's buffer: at most one pipe's capacity per direction.
- Pipes start at the kernel's default size (64 KiB) and grow
  (``F_SETPIPE_SZ``, up to ``pipe_size``, where the pipe limits allow it)
  only in a direction that fills one, so a short connection costs no more
  pipe budget than that. Empty pipes are kept in the proxy's
  :class:`.pipes.PipePool` for the next connection.
- Before the upstream is up, the client's bytes are spliced into its pipe
  (at most ``max_buffered``), after the PROXY v2 header when the route asks
  for one, so both reach the endpoint first and in order; the rest waits in
  the kernel. Reading the client meanwhile also notices a client that
  resets or leaves while the connect is still in flight.
- Half-close: EOF (a zero-byte splice) on one side becomes
  ``shutdown(SHUT_WR)`` on the other once that direction's pipe is drained;
  when the second direction ends, both sockets are closed (the close sends
  its FIN). Any error reading or writing resets both sockets (``SO_LINGER``
  0), so each peer sees the failure instead of a clean EOF. Connect retries
  (:func:`.relay_host.retry_target`), the connect and idle timeouts (swept
  by the reactor) and ``route.opened()/closed()/failed()`` work as in the
  Protocol relay of :mod:`.tcp`, which stays the path wherever splice is
  unavailable.
- A connection sees its proxy only as a :class:`.relay_host.RelayHost`
  (settings, pipes, counters, add and remove); this module does not import
  :mod:`.tcp`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import select
import socket
import sys
from _socket import socket as _RawSocket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from netplane.accept import reset_socket
from netplane.l4.proxy_protocol import header_for
from netplane.l4.relay_host import (
    RelayHost,
    Resolver,
    first_target,
    refuse,
    report_closed,
    retry_target,
)
from netplane.l4.relay_shared import IDLE_TICKS, fmt_addr

if TYPE_CHECKING:
    from netplane.l4 import RelayCounts, Route, Target
    from netplane.l4.pipes import PipePool

log = logging.getLogger("netplane.l4.tcp")

#: splice rounds (read + write) per direction before it yields to the loop
_ROUNDS = 16

if sys.platform == "linux" and hasattr(os, "splice"):
    _FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
    _splice = os.splice


@functools.cache
def available() -> bool:
    """Whether splice relays TCP here: Linux, and one byte really goes socket->pipe->socket."""
    if sys.platform != "linux" or not hasattr(os, "splice"):
        return False
    try:
        with contextlib.ExitStack() as stack:
            ls = stack.enter_context(socket.socket())
            ls.bind(("127.0.0.1", 0))
            ls.listen(1)
            a = stack.enter_context(socket.create_connection(ls.getsockname(), timeout=1))
            b = stack.enter_context(ls.accept()[0])
            r, w = os.pipe()
            stack.callback(os.close, r)
            stack.callback(os.close, w)
            a.sendall(b"x")
            b.settimeout(1)
            if not select.select([b], [], [], 1.0)[0]:
                return False
            moved = os.splice(b.fileno(), w, 1) == 1 and os.splice(r, a.fileno(), 1) == 1
            return moved and b.recv(1) == b"x"
    except OSError as e:
        log.info("splice is unavailable (%s); TCP is relayed through Protocols", e)
        return False


class Reactor:
    """One edge-triggered epoll and two shared timers for all spliced sockets of a proxy.

    A socket is registered once, for reading and writing, and leaves the set
    when it is closed; its handler gets the event mask and keeps its own
    "may read" / "may write" flags until an operation says EAGAIN. A handler
    that raises aborts its connection, never the rest of the batch (with
    edge-triggered events, a lost event is a stalled connection).

    Timeouts are swept, not timed one by one: connects in flight every quarter
    connect timeout, open connections every quarter idle timeout, each sweep
    only while there is something to sweep. A connect then fails between 1
    and 1.25 timeouts after it started, and a connection is idle-aborted
    between 1 and 1.25 timeouts after its last byte, as with one timer each,
    but a connection costs no timer of its own.
    """

    __slots__ = (
        "_connect_step",
        "_connect_timer",
        "_connecting",
        "_ep",
        "_handlers",
        "_idle_step",
        "_idle_timer",
        "_live",
        "_loop",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, connect_timeout: float, idle_timeout: float
    ) -> None:
        self._loop = loop
        self._ep = select.epoll()
        self._handlers: dict[int, Callable[[int], None]] = {}
        self._connecting: dict[SplicedConnection, float] = {}
        self._connect_step = connect_timeout / IDLE_TICKS
        self._connect_timer: asyncio.TimerHandle | None = None
        self._live: set[SplicedConnection] = set()
        self._idle_step = idle_timeout / IDLE_TICKS
        self._idle_timer: asyncio.TimerHandle | None = None
        loop.add_reader(self._ep.fileno(), self._poll)

    # -- sockets --------------------------------------------------------------------

    def register(self, fd: int, handler: Callable[[int], None]) -> None:
        self._handlers[fd] = handler
        self._ep.register(fd, _ET_MASK)

    def forget(self, fd: int) -> None:
        """Stop dispatching ``fd``; closing it removes it from the epoll set."""
        self._handlers.pop(fd, None)

    def _poll(self) -> None:
        handlers = self._handlers
        for fd, events in self._ep.poll(0, 1024):
            handler = handlers.get(fd)
            if handler is None:
                continue
            try:
                handler(events)
            except Exception:
                log.exception("TCP: relaying failed; resetting the connection")
                with contextlib.suppress(Exception):
                    handler.__self__.abort()  # type: ignore[attr-defined]  # each handler is a SplicedConnection's method

    # -- timeouts -------------------------------------------------------------------

    def connecting(self, conn: SplicedConnection, timeout: float) -> None:
        """``conn._connect_timeout()`` runs if the connect is not over within ``timeout`` s."""
        self._connecting[conn] = self._loop.time() + timeout
        if self._connect_timer is None:
            self._connect_timer = self._loop.call_later(self._connect_step, self._connect_sweep)

    def connect_over(self, conn: SplicedConnection) -> None:
        self._connecting.pop(conn, None)

    def _connect_sweep(self) -> None:
        self._connect_timer = None
        now = self._loop.time()
        late = [conn for conn, deadline in self._connecting.items() if deadline <= now]
        for conn in late:
            del self._connecting[conn]
            try:
                conn._connect_timeout()
            except Exception:
                log.exception("TCP: a connect timeout failed; resetting the connection")
                conn.abort()
        if self._connecting and self._connect_timer is None:
            self._connect_timer = self._loop.call_later(self._connect_step, self._connect_sweep)

    def live(self, conn: SplicedConnection) -> None:
        """Watch ``conn`` for the idle timeout until :meth:`gone`."""
        self._live.add(conn)
        if self._idle_timer is None:
            self._idle_timer = self._loop.call_later(self._idle_step, self._idle_sweep)

    def gone(self, conn: SplicedConnection) -> None:
        self._live.discard(conn)
        self._connecting.pop(conn, None)

    def _idle_sweep(self) -> None:
        self._idle_timer = None
        for conn in list(self._live):
            if conn._busy:
                conn._busy = False
                conn._quiet = 0
            else:
                conn._quiet += 1
                if conn._quiet >= IDLE_TICKS:
                    conn._idle()
        if self._live:
            self._idle_timer = self._loop.call_later(self._idle_step, self._idle_sweep)

    def close(self) -> None:
        for timer in (self._connect_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._connect_timer = self._idle_timer = None
        self._connecting.clear()
        self._live.clear()
        if not self._ep.closed:
            self._loop.remove_reader(self._ep.fileno())
            self._ep.close()
        self._handlers.clear()


_IN = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
_OUT = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR
_FAILED = select.EPOLLHUP | select.EPOLLERR
_ET_MASK = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET


class _Pump:
    """One direction of a spliced connection: source socket -> pipe -> destination socket."""

    __slots__ = (
        "again",
        "conn",
        "counts",
        "done",
        "dst",
        "dst_sock",
        "eof",
        "inpipe",
        "limit",
        "pipe",
        "readable",
        "src",
        "stuck",
        "to_endpoint",
        "writable",
    )

    def __init__(
        self,
        conn: SplicedConnection,
        src: int,
        pipe: list[int],
        limit: int,
        counts: RelayCounts,
        to_endpoint: bool,
    ) -> None:
        self.conn = conn
        #: the service port's byte counts, and which of them this direction adds to
        self.counts = counts
        self.to_endpoint = to_endpoint
        self.src = src
        #: the destination socket and its fd; None and -1 while the upstream is connecting
        self.dst_sock: _RawSocket | None = None
        self.dst = -1
        self.pipe = pipe
        #: bytes in the pipe now
        self.inpipe = 0
        #: read no further than this many bytes in the pipe
        self.limit = min(limit, pipe[2])
        self.readable = False  # src may have bytes (or EOF, or an error) to read
        self.writable = False  # dst may take bytes
        self.stuck = False  # a read found no free slot in the pipe
        self.eof = False  # src sent its FIN
        self.done = False  # ... and it was forwarded to dst
        self.again = False  # a move() is scheduled with call_soon

    @property
    def full(self) -> bool:
        """Whether this direction reads no more until its pipe drains."""
        return self.eof or self.stuck or self.inpipe >= self.limit

    def connect(self, dst_sock: _RawSocket, dst: int) -> None:
        """The destination is up: what waited in the pipe may go."""
        self.dst_sock = dst_sock
        self.dst = dst
        self.writable = True
        self.limit = self.pipe[2]

    def move(self) -> None:
        """Move bytes src -> pipe -> dst until nothing more can move now.

        A direction that could go on for ever (a fast sender, a fast reader)
        stops after ``_ROUNDS`` rounds and goes on from ``call_soon``, so one
        connection cannot starve the loop; with edge-triggered events nothing
        else would wake it for the bytes already waiting.
        """
        conn = self.conn
        pr, pw = self.pipe[0], self.pipe[1]
        self.again = False
        for _ in range(_ROUNDS):
            moved = False
            if self.inpipe and self.writable:
                try:
                    n = _splice(pr, self.dst, self.inpipe, None, None, _FLAGS)
                except BlockingIOError:
                    self.writable = False
                except OSError as e:
                    conn._broken(self, e, reading=False)
                    return
                else:
                    self.inpipe -= n
                    self.stuck = False
                    moved = True
            if self.eof:
                if not self.inpipe and not self.done and self.dst >= 0:
                    self._forward_eof()
                return
            room = self.limit - self.inpipe
            if self.readable and room > 0:
                try:
                    n = _splice(self.src, pw, room, None, None, _FLAGS)
                except BlockingIOError:
                    if self.inpipe:
                        self.stuck = True  # no free slot, or nothing to read: retry once drained
                    else:
                        self.readable = False
                except OSError as e:
                    conn._broken(self, e, reading=True)
                    return
                else:
                    if n == 0:
                        self.eof = True
                        continue
                    self.inpipe += n
                    conn._busy = True
                    if self.to_endpoint:
                        self.counts.to_endpoint += n
                    else:
                        self.counts.to_client += n
                    moved = True
                    if n == room and self.dst >= 0:
                        conn._pipes.grow(self.pipe)  # a no-op once the pipe is at its size
                        self.limit = self.pipe[2]
            if not moved:
                return
        self.again = True
        conn._loop.call_soon(self._move_again)

    def _move_again(self) -> None:
        if self.again and not self.conn._done:
            self.move()

    def _forward_eof(self) -> None:
        if self.done:
            return
        self.done = True
        conn = self.conn
        other = conn._down if self is conn._up else conn._up
        if other is not None and other.done:
            conn._finish(reset=False)  # both directions ended: close() sends this FIN
            return
        with contextlib.suppress(OSError):
            self.dst_sock.shutdown(socket.SHUT_WR)  # type: ignore[union-attr]  # set with dst (>= 0 here)

    def release(self, pool: PipePool) -> None:
        """Hand the pipe back (kept only if empty); the pump moves nothing after this."""
        pool.put(self.pipe, self.inpipe == 0)
        self.inpipe = 0
        self.readable = self.writable = False
        self.eof = self.done = True


class SplicedConnection:
    """One relayed connection on the splice path: two raw sockets, two pumps."""

    __slots__ = (
        "_busy",
        "_cfd",
        "_client",
        "_done",
        "_down",
        "_host",
        "_loop",
        "_opened",
        "_peer",
        "_pipes",
        "_quiet",
        "_reactor",
        "_resolve",
        "_route",
        "_settings",
        "_sockname",
        "_target",
        "_tried",
        "_ufd",
        "_up",
        "_upstream",
    )

    def __init__(
        self,
        host: RelayHost,
        resolve: Resolver,
        loop: asyncio.AbstractEventLoop,
        reactor: Reactor,
        sock: _RawSocket,
        peer: Any,
        sockname: Any,
    ) -> None:
        self._host = host
        self._resolve = resolve
        self._loop = loop
        self._reactor = reactor
        self._pipes: PipePool = host.pipes
        self._settings = host.settings
        self._client = sock
        self._cfd = sock.fileno()
        self._peer = peer
        self._sockname = sockname
        self._upstream: _RawSocket | None = None
        self._ufd = -1
        self._up: _Pump | None = None  # client -> upstream
        self._down: _Pump | None = None  # upstream -> client
        self._route: Route | None = None
        self._target: Target | None = None
        self._tried: list[Target] = []
        self._opened = False
        self._done = False
        # idle timeout (swept by the reactor): a byte moved since the last sweep; quiet sweeps
        self._busy = True
        self._quiet = 0

    # -- what tests and the proxy look at -----------------------------------------

    @property
    def client_paused(self) -> bool:
        """Whether the relay reads no more from the client now (its pipe is full, or EOF)."""
        return self._up is None or self._up.full

    @property
    def upstream_connected(self) -> bool:
        return self._down is not None

    @property
    def pending_size(self) -> int:
        """Client bytes held while the upstream is not up yet."""
        return self._up.inpipe if self._up is not None and self._down is None else 0

    def buffered(self) -> int:
        """Bytes in this connection's pipes."""
        n = 0
        if self._up is not None:
            n += self._up.inpipe
        if self._down is not None:
            n += self._down.inpipe
        return n

    # -- accepting and connecting ---------------------------------------------------

    def start(self) -> None:
        """Route the accepted client, then connect to its endpoint (or reset the client)."""
        host, sock = self._host, self._client
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if not self._sockname:
                self._sockname = sock.getsockname()
        except OSError as e:  # the client is gone already
            host.accepted += 1
            log.debug("TCP from %s: gone before it was routed (%s)", fmt_addr(self._peer), e)
            sock.close()
            return
        route, target = first_target(self._resolve, self._sockname, self._peer)
        if route is None or target is None:
            host.accepted += 1
            refuse(host, route is None, self._sockname, self._peer)
            reset_socket(sock)
            return
        try:
            pipe = self._pipes.get()
        except OSError as e:
            host.accepted += 1
            log.error("TCP %s: cannot create a pipe (%s); resetting", fmt_addr(self._peer), e)
            reset_socket(sock)
            return
        host.add(self)
        self._route = route
        self._up = up = _Pump(
            self, self._cfd, pipe, self._settings.max_buffered, route.counts, True
        )
        if route.proxy_protocol:
            header = header_for(self._peer, self._sockname)
            up.inpipe = os.write(pipe[1], header)  # the pipe is empty: it all fits
        self._reactor.register(self._cfd, self._client_event)
        self._connect(target)

    def _connect(self, target: Target) -> None:
        self._target = target
        family = socket.AF_INET6 if ":" in target.address else socket.AF_INET
        sock = None
        try:
            # the C socket type, as for accepted sockets (see Acceptor._ready)
            sock = _RawSocket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            err = sock.connect_ex((target.address, target.port))
        except OSError as e:
            err = e.errno or errno.EINVAL
        self._upstream = sock
        if err in (0, errno.EINPROGRESS):
            assert sock is not None
            self._ufd = sock.fileno()
            # Registered for writing: the connect's outcome comes as the first event.
            self._reactor.register(self._ufd, self._upstream_event)
            self._reactor.connecting(self, self._settings.connect_timeout)
        else:
            self._connect_failed(os.strerror(err))

    def _connect_timeout(self) -> None:
        if not self._done and self._down is None:
            self._connect_failed("TimeoutError")

    def _connect_failed(self, reason: str) -> None:
        route, target = self._route, self._target
        assert route is not None and target is not None
        self._reactor.connect_over(self)
        if self._upstream is not None:
            self._reactor.forget(self._ufd)
            self._upstream.close()
            self._upstream = None
            self._ufd = -1
        nxt = retry_target(
            self._host, route, target, self._tried, self._peer, self._sockname, reason
        )
        if nxt is not None:
            self._connect(nxt)
        else:
            self._finish(reset=True)

    def _connected(self, events: int) -> None:
        sock, route, up = self._upstream, self._route, self._up
        assert sock is not None and route is not None and up is not None
        assert self._target is not None
        reactor = self._reactor
        reactor.connect_over(self)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pipe = self._pipes.get()
        except OSError as e:
            log.error("TCP %s: cannot create a pipe (%s); resetting", fmt_addr(self._peer), e)
            self._finish(reset=True)
            return
        self._opened = True
        route.opened(self._target)
        self._down = down = _Pump(self, self._ufd, pipe, pipe[2], route.counts, False)
        down.connect(self._client, self._cfd)
        down.readable = bool(events & _IN)
        up.connect(sock, self._ufd)
        reactor.live(self)
        up.move()
        if not self._done:
            down.move()

    # -- events ---------------------------------------------------------------------

    def _client_event(self, events: int) -> None:
        if self._done:
            return
        up, down = self._up, self._down
        assert up is not None
        if events & _IN:
            up.readable = True
            up.move()  # while connecting: fill the pipe (bounded), notice a reset or EOF
        if events & _OUT and down is not None and not self._done:
            down.writable = True
            if down.inpipe:
                down.move()

    def _upstream_event(self, events: int) -> None:
        if self._done:
            return
        up, down = self._up, self._down
        assert up is not None
        if down is None:  # the connect's outcome
            if events & _FAILED:
                err = self._upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # type: ignore[union-attr]  # its own fd's event
                if err:
                    self._connect_failed(os.strerror(err))
                    return
            if events & _OUT:
                self._connected(events)
            return
        if events & _IN:
            down.readable = True
            down.move()
        if events & _OUT and not self._done:
            up.writable = True
            if up.inpipe:
                up.move()

    # -- endings --------------------------------------------------------------------

    def _broken(self, pump: _Pump, exc: OSError, reading: bool) -> None:
        """Reading or writing failed (a reset, mostly): reset both sides."""
        if self._done:
            return
        src_is_client = pump.src == self._cfd
        if reading:
            side = "client" if src_is_client else "upstream"
        else:
            side = "upstream" if src_is_client else "client"
        log.debug(
            "TCP %s from %s: %s side failed (%s), resetting",
            fmt_addr(self._sockname),
            fmt_addr(self._peer),
            side,
            exc.strerror or type(exc).__name__,
        )
        self._finish(reset=True)

    def abort(self) -> None:
        """Reset both sides now (idle timeout, end of a drain)."""
        self._finish(reset=True)

    def _finish(self, reset: bool) -> None:
        if self._done:
            return
        self._done = True
        reactor, pool = self._reactor, self._pipes
        reactor.gone(self)
        if self._up is not None:
            self._up.release(pool)
        if self._down is not None:
            self._down.release(pool)
        reactor.forget(self._cfd)
        if self._upstream is not None:
            reactor.forget(self._ufd)
            if reset:
                reset_socket(self._upstream)
            else:
                self._upstream.close()
            self._upstream = None
        if reset:
            reset_socket(self._client)
        else:
            self._client.close()
        if self._opened:
            self._opened = False
            report_closed(self._route, self._target, self._sockname)  # type: ignore[arg-type]  # _opened implies both set
        self._host.remove(self)

    def _idle(self) -> None:
        log.debug(
            "TCP %s from %s: idle for %ss, resetting",
            fmt_addr(self._sockname),
            fmt_addr(self._peer),
            self._settings.idle_timeout,
        )
        self.abort()
