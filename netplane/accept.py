"""Accepting TCP connections ourselves: batches, and a pause when descriptors run out.

:class:`Acceptor` serves listening sockets from ``add_reader``. The L4
splice relay takes the raw accepted sockets (:mod:`netplane.l4.splice`);
the ingress and DNS-over-TCP listeners take transports of their protocol
(:func:`listen_transports`, ``loop.create_server`` by another road).

Why not ``create_server``: when accept() fails with EMFILE, libuv (under
uvloop) accepts each waiting client with a reserved descriptor and closes
it at once, and says nothing; the clients see their connection closed and
no log line or counter shows why. Here accepting pauses instead, the
clients wait in the listen backlog, a failed accept is tried again every
:data:`ACCEPT_PAUSE` seconds, each failure is counted in
``netplane_accept_errors_total{listener,reason}``, and one line is logged
when an episode starts and one when it ends. The price, measured on this
machine with wrk opening a connection per request against the ingress
answering by itself: about 10 us more per new connection than uvloop's C
accept (16.7k against 20.1k connections/s; keep-alive requests are
unaffected, a new TLS connection about 4%).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from _socket import socket as _RawSocket
from collections.abc import Callable
from typing import Any

from netplane.l4.relay_shared import LINGER_RST, fmt_addr
from netplane.metrics import OVERLOAD

log = logging.getLogger("netplane.accept")

#: connections accepted per readiness callback of a listening socket
ACCEPT_BATCH = 64
#: accept errors that mean "out of descriptors or memory": stop accepting for a while
_ACCEPT_PAUSE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: seconds between two tries while accepting is paused (one failing accept() each)
ACCEPT_PAUSE = 0.25
# Linux's values; not every Python names them
_IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
_IPV6_TRANSPARENT = 75


def reset_socket(sock: _RawSocket) -> None:
    """Close ``sock`` with a TCP RST (``SO_LINGER`` 0) instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
    sock.close()


async def bind(host: str | None, port: int, *, reuse_port: bool = False) -> list[socket.socket]:
    """Bound (not yet listening) TCP sockets for ``host:port``, as ``create_server`` binds them."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    socks: list[socket.socket] = []
    seen: set[tuple] = set()
    try:
        for family, type_, proto, _, addr in infos:
            if (family, addr) in seen:
                continue
            seen.add((family, addr))
            sock = socket.socket(family, type_, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(addr)
            except OSError as e:
                raise OSError(
                    e.errno, f"error while attempting to bind on address {addr!r}: {e.strerror}"
                ) from None
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


class Acceptor:
    """Listening sockets served from ``add_reader``: each accepted socket goes to ``on_accept``.

    ``on_accept(sock, peer, sockname)`` gets the listening socket's own
    address as ``sockname`` when every connection it accepts has that
    address (a specific, non-transparent bind), else None (ask the socket).
    It has the two members of ``asyncio.Server`` that the TCP proxy's
    listeners use, ``sockets`` and ``close()``.
    """

    __slots__ = ("_failed", "_loop", "_on_accept", "_paused", "_since", "label", "sockets")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        socks: list[socket.socket],
        on_accept: Callable[[_RawSocket, Any, Any], None],
        backlog: int,
        label: str = "l4-tcp",
    ) -> None:
        self._loop = loop
        self._on_accept = on_accept
        self._paused: asyncio.TimerHandle | None = None
        #: the listener kind, in logs and netplane_accept_errors_total
        self.label = label
        #: accepts failed since accepting paused (0: not paused), and since when
        self._failed = 0
        self._since = 0.0
        self.sockets = tuple(socks)
        for sock in socks:
            sock.setblocking(False)
            sock.listen(backlog)
        self._watch()

    def _watch(self) -> None:
        self._paused = None
        for sock in self.sockets:
            self._loop.add_reader(
                sock.fileno(), self._ready, sock, int(sock.family), _fixed_sockname(sock)
            )

    def _ready(self, lsock: socket.socket, family: int, sockname: Any) -> None:
        on_accept, accept = self._on_accept, lsock._accept  # type: ignore[attr-defined]  # CPython's C accept, not in typeshed
        for _ in range(ACCEPT_BATCH):
            try:
                # socket.accept() by hand, with the C socket type: no Python
                # __init__, no enum conversions. Bench l4 row "proxy CPU per
                # connection": 2.2 us per accept instead of 3.8 us here, of about
                # 63 us per spliced connection. test_l4_splice's
                # test_accept_by_hand_gives_what_socket_accept_gives covers both.
                fd, peer = accept()
                sock = _RawSocket(family, socket.SOCK_STREAM, 0, fd)
            except BlockingIOError:
                if self._failed:  # every waiting client taken: the episode is over
                    self._recovered(lsock)
                return
            except OSError as e:
                if e.errno in _ACCEPT_PAUSE_ERRORS:
                    self._pause(lsock, e)
                    return
                continue  # e.g. ECONNABORTED: that client is gone, the next may not be
            try:
                on_accept(sock, peer, sockname)
            except Exception:
                log.exception("TCP %s: handling a new connection failed", fmt_addr(peer))
                reset_socket(sock)

    def _pause(self, lsock: socket.socket, e: OSError) -> None:
        """Out of descriptors or memory: stop watching, try again in a moment.

        Clients wait in the listen backlog meanwhile, instead of being
        accepted and dropped (libuv's answer to EMFILE, under create_server).
        One log line per episode (it ends when the backlog has been emptied),
        and one when it ends; every failed accept is counted.
        """
        reason = errno.errorcode.get(e.errno or 0, "OSError")
        OVERLOAD.accept_failed(self.label, reason)
        if not self._failed:
            self._since = self._loop.time()
            log.error(
                "%s %s: cannot accept (%s, %s); accepting paused, tried again every %.2f s "
                "until descriptors free up",
                self.label, fmt_addr(lsock.getsockname()), reason, e.strerror, ACCEPT_PAUSE,
            )  # fmt: skip
        self._failed += 1
        for s in self.sockets:
            self._loop.remove_reader(s.fileno())
        self._paused = self._loop.call_later(ACCEPT_PAUSE, self._watch)

    def _recovered(self, lsock: socket.socket) -> None:
        log.warning(
            "%s %s: accepting again after %.1f s paused (%d accepts failed)",
            self.label, fmt_addr(lsock.getsockname()), self._loop.time() - self._since,
            self._failed,
        )  # fmt: skip
        self._failed = 0

    def close(self) -> None:
        """Stop accepting and close the listening sockets."""
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        else:
            for sock in self.sockets:
                if sock.fileno() >= 0:
                    self._loop.remove_reader(sock.fileno())
        for sock in self.sockets:
            sock.close()


async def listen_transports(
    host: str | None,
    port: int,
    factory: Callable[[], asyncio.BaseProtocol],
    *,
    label: str,
    ssl: Any = None,
    ssl_handshake_timeout: float | None = None,
    backlog: int = 1024,
    reuse_port: bool = False,
    socks: list[socket.socket] | None = None,
) -> Acceptor:
    """``loop.create_server`` through an :class:`Acceptor`: accepting pauses on EMFILE.

    ``socks``: sockets bound already (else ``host:port`` is bound here).
    Each accepted socket becomes a transport of ``factory()``'s protocol by
    ``connect_accepted_socket`` (a task per connection, about as dear as the
    accept). The ingress and DNS-over-TCP listeners are served so.
    """
    loop = asyncio.get_running_loop()
    if socks is None:
        socks = await bind(host, port, reuse_port=reuse_port)
    tasks: set[asyncio.Task] = set()

    def accepted(raw: _RawSocket, peer: Any, sockname: Any) -> None:
        sock = socket.socket(raw.family, socket.SOCK_STREAM, 0, raw.detach())
        task = loop.create_task(
            loop.connect_accepted_socket(
                factory, sock, ssl=ssl, ssl_handshake_timeout=ssl_handshake_timeout
            )
        )
        tasks.add(task)
        task.add_done_callback(done)

    def done(task: asyncio.Task) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("%s: a connection ended before it was set up: %s", label, task.exception())

    try:
        return Acceptor(loop, socks, accepted, backlog, label)
    except BaseException:
        for s in socks:
            s.close()
        raise


def _fixed_sockname(lsock: socket.socket) -> Any:
    """The address every connection accepted on ``lsock`` has, or None when it may vary."""
    addr = lsock.getsockname()
    if lsock.family == socket.AF_INET:
        level, opt, wildcard = socket.SOL_IP, _IP_TRANSPARENT, "0.0.0.0"
    elif lsock.family == socket.AF_INET6:
        level, opt, wildcard = socket.IPPROTO_IPV6, _IPV6_TRANSPARENT, "::"
    else:
        return None
    try:
        transparent = lsock.getsockopt(level, opt)
    except OSError:
        transparent = 1
    return None if transparent or addr[0] == wildcard else addr
