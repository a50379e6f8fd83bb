"""Listeners: plain and TLS servers of ClientConnection, one sweeper, graceful close.

:class:`IngressServer` owns what every connection shares: the route table
(read per request, so a change applies to the next request at once), the
upstream pool, the settings and the access log. It runs one timer for
everything that can time out (client heads and bodies, idle keep-alive,
upstream reads, idle pooled connections), so no request arms a timer of
its own, and flushes the access log on the same tick.

A connection with nothing in progress but its idle or head timeout is
*parked* until the first tick after that timeout's deadline, or until it
reads (:class:`~netplane.ingress.http.ClientConns`), so a tick checks the
connections that are doing something, plus those whose deadline came. With
the overload bench's 10,000 idle keep-alive and 1,000 slowloris connections
held beside wrk, a tick took 4.3 ms on average checking 1,500 of them (1.5
to 2 us each, cold in the cache), with the loop stalled meanwhile, and
0.6 ms parked (access log flush included); netplane idle with 10,000 idle
connections uses no more CPU than with none. A tick checks at most
:data:`SWEEP_SLICE` awake connections, the next ones in turn, so that
10,000 busy connections do not stall the loop for 10 ms every tick (the
overload bench, before slicing: p99 latency 13.6 ms against 2.3 ms
unloaded, and 0.82x the throughput); with more awake connections than
that, a timeout is late by up to ``SWEEP_INTERVAL`` per slice.

TLS handshakes are counted where they end, in the ``do_handshake`` of the
listener context's SSL objects (:func:`counting_ssl_objects`): the loop
tells a protocol only about a handshake that succeeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from time import monotonic
from typing import Any

from netplane.ingress.http import ClientConnection, ClientConns, HttpSettings, Listener
from netplane.ingress.http2 import Http2Connection
from netplane.ingress.stats import RequestStats
from netplane.ingress.upstream import Pool
from netplane.ingress.upstream_h2 import H2Pool

from netplane.accept import Acceptor, listen_transports
from netplane.addresses import hostport

log = logging.getLogger("netplane.ingress")

#: How often timeouts are checked; every timeout is late by at most this.
SWEEP_INTERVAL = 0.5
#: Connections checked per tick at most (the rest on the following ticks, in turn).
SWEEP_SLICE = 1500


class IngressServer:
    """HTTP and HTTPS listeners that proxy by one route table."""

    def __init__(
        self,
        routes: Any,
        *,
        settings: HttpSettings | None = None,
        pool: Pool | None = None,
        access_log: Any = None,
    ) -> None:
        self.routes = routes
        self.settings = settings or HttpSettings()
        self.pool = pool or Pool()
        self.h2pool = H2Pool()
        self.access_log = access_log
        self.stats = RequestStats()
        self.conns = ClientConns()
        self._servers: list[tuple[Acceptor, Listener]] = []
        self._sweeper: asyncio.TimerHandle | None = None
        # the connections still to check in this round of the sweep, and where it is
        self._round: list[ClientConnection | Http2Connection] = []
        self._round_at = 0
        # the first sweep tick (monotonic time // SWEEP_INTERVAL) whose parked
        # connections are not woken yet
        self._tick = int(monotonic() // SWEEP_INTERVAL)

    async def listen(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        backlog: int = 1024,
        reuse_port: bool = False,
        routes: Any = None,
        label: str = "ingress",
    ) -> tuple[str, int]:
        """Start serving on ``host:port`` (0 picks a free port); return the bound address.

        ``routes``: this listener's own router (a Gateway socket's), instead of
        the server's route table; ``label`` names the listener in the log.
        """
        loop = asyncio.get_running_loop()
        listener = Listener(
            routes if routes is not None else self.routes, self.pool, self.settings, https=tls is not None, port=port,
            access_log=self.access_log, conns=self.conns, stats=self.stats, h2pool=self.h2pool,
        )  # fmt: skip
        if tls is not None:
            tls.sslobject_class = counting_ssl_objects(self.stats)
        # Our own accept loop, not create_server's: out of descriptors, accepting pauses
        # (counted, logged once) where libuv would accept and drop each client.
        server = await listen_transports(
            host, port, lambda: ClientConnection(listener), ssl=tls, backlog=backlog,
            ssl_handshake_timeout=self.settings.header_timeout if tls is not None else None,
            reuse_port=reuse_port, label="ingress-https" if tls is not None else "ingress-http",
        )  # fmt: skip
        sock = server.sockets[0]
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        bound = sock.getsockname()[:2]
        listener.port = str(bound[1]).encode()
        self._servers.append((server, listener))
        if self._sweeper is None:
            self._sweeper = loop.call_later(SWEEP_INTERVAL, self._sweep)
        if tls is not None:
            protocols = "HTTP/2 and HTTP/1.1 by ALPN"
        elif self.settings.h2c:
            protocols = "HTTP/1.1, and HTTP/2 with prior knowledge (--ingress-h2c on)"
        else:
            protocols = "HTTP/1.1 (--ingress-h2c off)"
        log.info(
            "%s %s listening on %s: %s", label, "HTTPS" if tls else "HTTP", _fmt(bound), protocols
        )
        return bound

    def unlisten(self, bound: tuple[str, int]) -> bool:
        """Stop accepting on one listener; its open connections finish as they would."""
        for i, (server, _lst) in enumerate(self._servers):
            if server.sockets and tuple(server.sockets[0].getsockname()[:2]) == tuple(bound):
                server.close()
                del self._servers[i]
                return True
        return False

    @property
    def addresses(self) -> list[tuple[str, int, bool]]:
        """(host, port, https) of each listener."""
        return [
            (*s.sockets[0].getsockname()[:2], lst.https) for s, lst in self._servers if s.sockets
        ]

    def _sweep(self) -> None:
        now = monotonic()
        conns = self.conns
        # Wake the connections parked until this tick (or an earlier one, after a stall).
        tick = int(now // SWEEP_INTERVAL)
        for t in range(self._tick, tick + 1):
            conns.wake_due(t)
        self._tick = tick + 1
        at = self._round_at
        if at >= len(self._round):
            self._round = list(conns.awake)
            at = 0
        end = at + SWEEP_SLICE
        for conn in self._round[at:end]:
            if conn.park_tick or conn not in conns:
                continue  # parked or closed since the round began
            try:
                deadline = conn.sweep(now)
            except Exception:
                log.exception("ingress: timeout check failed for a connection; closing it")
                conn.abort()
                continue
            if deadline is not None and conn in conns:
                # Nothing of it expires before the first tick after ``deadline`` but
                # what a read starts, and a read wakes it (buffer_updated).
                conns.park(conn, max(int(deadline // SWEEP_INTERVAL) + 1, self._tick))
        self._round_at = end
        self.pool.sweep(now)
        self.h2pool.sweep(now)
        if self.access_log is not None:
            self.access_log.flush()
        self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._sweep)

    async def close(self, grace: float) -> None:
        """Stop accepting; let requests in flight finish up to ``grace`` seconds, then cut."""
        for server, _ in self._servers:
            server.close()
        for conn in list(self.conns):
            conn.shutdown()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                while self.conns:
                    await asyncio.sleep(0.05)
        for conn in list(self.conns):
            conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self.pool.close()
        self.h2pool.close()
        if self.access_log is not None:
            self.access_log.flush()
        self._servers.clear()

    def debug_state(self) -> dict[str, Any]:
        return {
            "listeners": [
                f"{'https' if https else 'http'}://{_fmt((h, p))}" for h, p, https in self.addresses
            ],
            "connections": len(self.conns),
            "http2_connections": sum(1 for c in self.conns if c.http2),
            "upstream_idle": self.pool.idle_count(),
            "upstream_opened": self.pool.opened,
            "upstream_reused": self.pool.reused,
            "upstream_h2_connections": self.h2pool.count(),
            "upstream_h2_opened": self.h2pool.opened,
        }


def _fmt(addr: tuple) -> str:
    host, port = addr[0], addr[1]
    return hostport(host, port)


def counting_ssl_objects(stats: RequestStats) -> type[ssl.SSLObject]:
    """An ``SSLContext.sslobject_class`` whose handshakes count themselves in ``stats``.

    The loop wraps every accepted connection in one of these and calls
    ``do_handshake`` as handshake bytes arrive; the call that ends the
    handshake says how (an SSLError: refused protocol or cipher, not TLS at
    all). A peer that goes away, or is timed out, mid-handshake never gets
    that far and is not counted.
    """

    class CountingSSLObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise
            except ssl.SSLError:
                stats.tls_handshake_failures += 1
                raise
            stats.tls_handshakes += 1

    return CountingSSLObject
