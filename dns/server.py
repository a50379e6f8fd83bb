"""The UDP and TCP adapters: sockets in, :class:`Responder` in the middle, sockets out.

UDP: a datagram is first offered to the answer cache (a hit is spliced and
sent without parsing; one with a DNS cookie gets the client's cookie and a
server cookie made for its address); a miss goes to the responder; a
forwarding job runs as a task (bounded in number: past the bound the query
gets SERVFAIL at once rather than queueing behind the others).

TCP (RFC 7766): queries are length-prefixed and may be pipelined; replies
go out as they are ready, forwarded ones possibly out of order. A
connection idle for ``tcp_idle`` seconds with nothing in flight is closed,
and so is one that sends a message that cannot be a query.

Any exception while answering one message is logged and answered with
SERVFAIL when the header can be read; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from time import perf_counter
from typing import Any

from netplane.dns.answer import SERVFAIL
from netplane.dns.responder import Forward, Responder
from netplane.dns.stats import DnsStats, qtype_of
from netplane.dns.upstream import Forwarder
from netplane.dns.wire import TcpFramer, frame, header_error

from netplane.accept import Acceptor, listen_transports
from netplane.addresses import hostport
from netplane.metrics import OVERLOAD

log = logging.getLogger("netplane.dns")

MAX_FORWARDS = 1024
MAX_TCP_CONNECTIONS = 512
MAX_TCP_BUFFER = 2 * 65537  # one message being read plus one more


class DnsServer:
    """One UDP socket and one TCP listener on ``host:port`` (port 0 picks one for both)."""

    def __init__(
        self,
        responder: Responder,
        forwarder: Forwarder,
        *,
        host: str,
        port: int,
        tcp_idle: float = 10.0,
        reuse_port: bool = False,
        max_tcp_connections: int = MAX_TCP_CONNECTIONS,
    ) -> None:
        self.responder = responder
        self.reuse_port = reuse_port
        self.forwarder = forwarder
        self.host = host
        self.port = port
        self.tcp_idle = tcp_idle
        self.max_tcp_connections = max_tcp_connections
        self._refused_logged = -60.0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: Acceptor | None = None
        self._tasks: set[asyncio.Task] = set()
        self._conns: set[_TcpConnection] = set()
        self.errors = 0
        self.dropped_forwards = 0
        self.stats = DnsStats()
        self.rcvbuf = 0  # the UDP socket's receive buffer, as the kernel granted it

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # The TCP port first when it is to be picked: UDP then takes the same number.
        # Our own accept loop (see netplane.accept): out of descriptors,
        # accepting pauses, counted and logged once, where libuv would drop each client.
        self._tcp = await listen_transports(
            self.host, self.port, lambda: _TcpConnection(self), label="dns-tcp",
            reuse_port=self.reuse_port,
        )  # fmt: skip
        if self.port == 0:
            self.port = self._tcp.sockets[0].getsockname()[1]
        try:
            self._udp, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self),
                local_addr=(self.host, self.port),
                reuse_port=self.reuse_port or None,
            )
        except OSError:
            self._tcp.close()
            raise
        self.rcvbuf = _grow_receive_buffer(self._udp.get_extra_info("socket"))

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for conn in list(self._conns):
            conn.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def refuse_tcp(self) -> None:
        """A TCP connection over --dns-max-tcp-connections: counted; logged once a minute."""
        OVERLOAD.refuse("dns_tcp", "limit")
        now = asyncio.get_running_loop().time()
        if now - self._refused_logged >= 60:
            self._refused_logged = now
            log.warning(
                "DNS: %d TCP connections open (--dns-max-tcp-connections); closing new ones "
                "(netplane_dns_tcp_connections_refused_total counts them)",
                self.max_tcp_connections,
            )

    # -- shared --------------------------------------------------------------

    def handle(self, data: bytes, client: str, tcp: bool) -> bytes | Forward | None:
        started = perf_counter()
        try:
            result = self.responder.handle(data, client, tcp=tcp)
        except Exception:
            self.errors += 1
            log.exception("DNS: failed to answer a query from %s; SERVFAIL", client)
            result = header_error(data, SERVFAIL)
        if isinstance(result, bytes):
            self.stats.record(qtype_of(data), result, perf_counter() - started)
        return result

    def forward(self, job: Forward, send: Any) -> None:
        started = perf_counter()
        if len(self._tasks) >= MAX_FORWARDS:
            self.dropped_forwards += 1
            send(header_error(job.query.record.pack(), SERVFAIL))
            return
        task = asyncio.create_task(self._forward(job, send, started))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forward(self, job: Forward, send: Any, started: float) -> None:
        try:
            upstream = await self.forwarder.resolve(job.query, job.key)
            reply: bytes | None = self.responder.finish(job, upstream)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.errors += 1
            log.exception("DNS: forwarding %s failed", job.query.qname)
            reply = header_error(job.query.record.pack(), SERVFAIL)
        if reply is not None:
            self.stats.record(job.query.qtype, reply, perf_counter() - started)
            send(reply)

    def debug_state(self) -> dict[str, Any]:
        return {
            "listen": hostport(self.host, self.port),
            "udp_receive_buffer": self.rcvbuf,
            "tcp_connections": len(self._conns),
            "forwards_in_flight": len(self._tasks),
            "errors": self.errors,
            "dropped_forwards": self.dropped_forwards,
            "upstreams": [hostport(h, p) for h, p in self.forwarder.upstreams],
            "upstream_failures": self.forwarder.failures,
            "upstream_replies_dropped": dict(self.forwarder.dropped),
        }


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.cached = server.responder.answers.reply
        self.transport: asyncio.DatagramTransport | None = None
        self.sendto: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.sendto = transport.sendto

    def datagram_received(self, data: bytes, addr: Any) -> None:
        hit = self.cached(data, addr[0])
        if hit is not None:
            self.sendto(hit, addr)
            return
        result = self.server.handle(data, addr[0], False)
        if result is None:
            return
        if not isinstance(result, Forward):
            self.sendto(result, addr)
            return
        sendto = self.sendto  # the transport's, set with it in connection_made
        self.server.forward(result, lambda reply: sendto(reply, addr))

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for an earlier reply: nothing to do


class _TcpConnection(asyncio.Protocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.framer = TcpFramer()
        self.transport: asyncio.Transport | None = None
        self.client = ""
        self.pending = 0
        self.idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if peer else ""
        if len(self.server._conns) >= self.server.max_tcp_connections:
            self.server.refuse_tcp()
            transport.abort()
            return
        self.server._conns.add(self)
        self._arm()

    def _arm(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(self.server.tcp_idle, self._idle)

    def _idle(self) -> None:
        if self.pending:
            self._arm()
        else:
            self.close()

    def data_received(self, data: bytes) -> None:
        self._arm()
        self.framer.feed(data)
        while (message := self.framer.next_message()) is not None:
            result = self.server.handle(message, self.client, True)
            if result is None:
                if header_error(message, 0) is None and len(message) < 12:
                    self.close()  # not even a header: this is not a DNS client
                    return
                continue
            if not isinstance(result, Forward):
                self.send(result)
            else:
                self.pending += 1
                self.server.forward(result, self._forwarded)
        if self.framer.buffered > MAX_TCP_BUFFER:
            self.close()

    def _forwarded(self, reply: bytes) -> None:
        self.pending -= 1
        self.send(reply)

    def send(self, reply: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame(reply))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.server._conns.discard(self)
        self.transport = None


#: The UDP receive buffer asked for: at 100k queries/s, 4 MiB holds ~40 ms of
#: 100-byte queries, where Linux's default (208 KiB) overflows in a pause of a
#: few ms (a GC, a table update) and drops queries that the client then waits
#: out for seconds. The kernel caps it at net.core.rmem_max.
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024


def _grow_receive_buffer(sock: Any) -> int:
    """Ask for :data:`UDP_RECEIVE_BUFFER` (SO_RCVBUFFORCE past rmem_max with CAP_NET_ADMIN)."""
    if sock is None:
        return 0
    for opt in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        if opt is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, UDP_RECEIVE_BUFFER)
            break
        except OSError:
            continue
    try:
        return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    except OSError:
        return 0
