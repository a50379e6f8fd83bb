"""L4Proxy: TCP and UDP listeners that follow the ServiceTable.

For each changed service it recomputes the service's routes
(:mod:`netplane.l4.routes`), opens listeners for new frontend addresses,
swaps the route behind existing ones (new connections see the new table,
open ones finish where they started), and closes listeners of frontends
that went away for new connections while their open connections go on.

Sockets. Local mode binds one socket per frontend address (ClusterIPs are
loopback addresses there). Node mode binds one wildcard socket per distinct
port and protocol (and address family), shared by every frontend on that
port: the AnyIP routes make every service address local, so the wildcard
socket receives them all, and the route is found by the address the client
reached (``getsockname()`` for TCP, ``IP_PKTINFO`` for UDP). 10,000
services on a few ports cost a few sockets, not 10,000. Connections to a
local address that no service has on that port are reset. Where the host
already uses a port on one of its own addresses, the wildcard cannot be
bound; that port's frontends then fall back to one socket each. A wildcard
NodePort listener on 0.0.0.0 or ``::`` has its routes keyed by that
wildcard and serves every node address.

Two services claiming the same frontend (an externalIP, say): the first
keeps it and the second is logged.

Health. Each change the proxy receives is queued in its :class:`ProxyHealth`
and marked updated once it (and every change after it) reached the
listeners; a change that fails to apply is retried with the next one, and
the proxy reports itself unhealthy (``serviceProxyHealthy: false`` in every
health check) once a change has waited longer than ``health_timeout``, and
while it drains.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import logging
import socket
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from netplane.addresses import hostport
from netplane.l4.healthcheck import HEALTH_TIMEOUT, HealthChecks, ProxyHealth
from netplane.l4.node_routes import NodeRoutes
from netplane.l4.picker import NodeInfo, Picker
from netplane.l4.routes import WILDCARDS, FrontendKey, PortRoute, frontends_of, route_at
from netplane.l4.steer import steer_by_source
from netplane.l4.tcp import Listener, TcpProxy, TcpSettings
from netplane.l4.udp import UdpListener, UdpProxy, UdpSettings
from netplane.service_table import ServiceKey

log = logging.getLogger("netplane.l4")


# (bind address, port, protocol) of one listening socket
SocketKey = tuple[str, int, str]


@functools.lru_cache(maxsize=4096)  # per accepted connection: parse each address once
def _norm(ip: str) -> str:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(addr)


class L4Proxy:
    """The service proxy of one Dataplane; ``start()`` after the Dataplane's."""

    def __init__(
        self,
        dataplane: Any,
        *,
        node_name: str = "",
        nodeport_addresses: Sequence[str] = ("127.0.0.1",),
        default_policy: str = "round-robin",
        tcp: TcpSettings | None = None,
        udp: UdpSettings | None = None,
        local_routes: Any = None,
        service_cidrs: Sequence[Any] = (),
        shared_listeners: bool | None = None,
        workers: int = 1,
        health_timeout: float = HEALTH_TIMEOUT,
    ) -> None:
        self._dp = dataplane
        # Node mode: AnyIP routes (netplane.addresses.LocalRoutes) that make the
        # service CIDRs, externalIPs and LB IPs local before anything binds them.
        self.local_routes = local_routes
        self.node_routes = (
            NodeRoutes(local_routes, service_cidrs) if local_routes is not None else None
        )
        self.node_name = node_name
        self.nodeport_addresses = tuple(nodeport_addresses)
        self.default_policy = default_policy
        self.tcp = TcpProxy(tcp or TcpSettings())
        self.udp = UdpProxy(udp or UdpSettings())
        self._routes: dict[FrontendKey, PortRoute] = {}
        self._claims: dict[FrontendKey, ServiceKey] = {}
        self._owned: dict[ServiceKey, set[FrontendKey]] = {}
        self._pickers: dict[ServiceKey, dict[str, Picker]] = {}
        # One wildcard socket per port (node mode) or one socket per frontend.
        self.shared_listeners = (
            local_routes is not None if shared_listeners is None else shared_listeners
        )
        self._sockets: dict[SocketKey, Listener | UdpListener] = {}
        self._users: dict[SocketKey, set[FrontendKey]] = {}
        self._socket_of: dict[FrontendKey, SocketKey] = {}
        # wildcards the host already holds an address of; never retried
        self._host_ports: set[SocketKey] = set()
        # The proxy's own health (pending changes, draining), and the
        # healthCheckNodePort servers of externalTrafficPolicy Local services.
        self._closing = False
        self.health = ProxyHealth(health_timeout, is_draining=self._draining)
        self.health_checks = HealthChecks(
            node_name, self.nodeport_addresses, reuse_port=workers > 1, proxy=self.health
        )
        # With --workers N every worker binds each listener with SO_REUSEPORT,
        # and a filter keeps each client address on one worker (see steer.py).
        self.workers = workers
        self._stream: Any = None
        self._task: Any = None
        self._syncing = False
        # services of a change that failed to apply, tried again with the next one
        self._retry: set[ServiceKey] = set()

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        self._stream = self._dp.subscribe()
        if self.node_routes is not None:
            await self.node_routes.sync()
        if self._dp.ready:
            await self.sync(e.key for e in self._dp.table)
            self.health.updated()
        self._task = asyncio.create_task(self._follow(), name="l4-proxy")

    async def _follow(self) -> None:
        async for change in self._stream:
            self.health.queued()
            self._syncing = True
            services = self._retry | change.services
            try:
                await self.sync(services)
            except Exception:
                log.exception("L4 proxy update failed; keeping the previous listeners")
                self._retry = services
            else:
                self._retry = set()
                if not self._stream.pending:
                    self.health.updated()
            finally:
                self._syncing = False

    def _draining(self) -> bool:
        """Shutting down: close() has begun, or the dataplane's owner set ``draining``."""
        return self._closing or bool(getattr(self._dp, "draining", False))

    async def settled(self, timeout: float = 2.0) -> None:
        """Return once every change seen so far has reached the listeners (or after ``timeout``)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while (self._syncing or (self._stream is not None and self._stream.pending)) and (
            asyncio.get_running_loop().time() < deadline
        ):
            await asyncio.sleep(0.001)

    async def close(self, grace: float) -> None:
        """Stop accepting, let open TCP connections finish up to ``grace`` seconds.

        The health checks stay up meanwhile and answer 503: a load balancer
        hears that this node is going rather than finding its port closed.
        """
        self._closing = True
        if self._task is not None:
            self._task.cancel()
        if self._stream is not None:
            self._stream.close()
        for key in list(self._socket_of):
            self._close_listener(key)
        await self.tcp.drain(grace)
        self.health_checks.close()
        await self.tcp.close(0)
        await self.udp.close()
        if self.node_routes is not None:
            await self.node_routes.clear()

    # -- following the table -------------------------------------------------

    def _node(self) -> NodeInfo:
        return NodeInfo.of(self._dp.state, self.node_name)

    async def sync(self, services: Iterable[ServiceKey]) -> None:
        """Bring the listeners of ``services`` in line with the table."""
        node = self._node()
        services = list(services)
        if self.node_routes is not None:
            self.node_routes.note(self._dp.table, services)
            await self.node_routes.sync()
        for sk in services:
            entry = self._dp.table.get(*sk)
            new: dict[FrontendKey, PortRoute] = {}
            if entry is not None:
                pickers = self._pickers.setdefault(sk, {})
                new, problems = frontends_of(
                    entry,
                    pickers,
                    node,
                    self.nodeport_addresses,
                    default_policy=self.default_policy,
                )
                for p in problems:
                    log.warning("%s: %s", p.service, p.reason)
            else:
                self._pickers.pop(sk, None)
            old = self._owned.pop(sk, set())
            for key in old - new.keys():
                self._release(key)
            owned: set[FrontendKey] = set()
            for key, route in new.items():
                holder = self._claims.get(key)
                if holder is not None and holder != sk:
                    log.warning(
                        "Service %s/%s: %s is already served for Service %s/%s; not taking it",
                        *sk, _fmt(key), *holder,
                    )  # fmt: skip
                    continue
                self._claims[key] = sk
                self._routes[key] = route
                owned.add(key)
                await self._ensure_listener(key, route, sk)
            if owned:
                self._owned[sk] = owned
            await self.health_checks.sync(sk, entry)

    def _release(self, key: FrontendKey) -> None:
        self._claims.pop(key, None)
        self._routes.pop(key, None)
        self._close_listener(key)

    async def _ensure_listener(self, key: FrontendKey, route: PortRoute, sk: ServiceKey) -> None:
        skey = self._socket_of.get(key)
        if skey is not None:
            if skey == key and key[2] == "UDP":
                listener = self._sockets[skey]
                assert isinstance(listener, UdpListener)
                listener.route = route  # a per-address UDP socket holds its route
            return
        ip, port, proto = key
        wildcard = ("::" if ":" in ip else "0.0.0.0", port, proto)
        if not self.shared_listeners or wildcard in self._host_ports:
            await self._ensure_own(key, route, sk)
            return
        if wildcard not in self._sockets:
            try:
                await self._bind(wildcard, route)
            except OSError as e:
                if e.errno != errno.EADDRINUSE or wildcard == key:
                    log.warning(
                        "Service %s/%s: cannot listen on %s: %s", *sk, _fmt(key), e.strerror or e
                    )  # fmt: skip
                    return
                # The host uses this port on an address of its own: the port's
                # frontends get a socket each, where the address may still be free.
                log.info("%s is in use on this host; its frontends bind alone", _fmt(wildcard))
                self._host_ports.add(wildcard)
                await self._ensure_own(key, route, sk)
                return
            log.info("listening on %s", _fmt(wildcard))
        self._use(wildcard, key)

    async def _ensure_own(self, key: FrontendKey, route: PortRoute, sk: ServiceKey) -> None:
        """A socket for this frontend alone (local mode, or a port the host uses)."""
        if key not in self._sockets:
            try:
                await self._bind(key, route)
            except OSError as e:
                log.warning(
                    "Service %s/%s: cannot listen on %s: %s", *sk, _fmt(key), e.strerror or e
                )  # fmt: skip
                return
            log.info("listening on %s", _fmt(key))
        self._use(key, key)

    async def _bind(self, skey: SocketKey, route: PortRoute) -> None:
        ip, port, proto = skey
        sock = self._reuse_socket(ip, port, proto) if self.workers > 1 else None
        listener: Listener | UdpListener
        try:
            if proto == "TCP":
                listener = await self.tcp.listen(ip, port, self._resolve_tcp, sock=sock)
            elif ip in WILDCARDS and self.shared_listeners:
                family = socket.AF_INET6 if ip == "::" else socket.AF_INET
                listener = self.udp.listen_shared(family, port, self._resolve_udp, sock=sock)
            else:
                listener = await self.udp.listen(ip, port, route, sock=sock)
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        self._sockets[skey] = listener

    def _reuse_socket(self, ip: str, port: int, proto: str) -> socket.socket:
        """A bound SO_REUSEPORT socket whose group steers each client address to one worker."""
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        kind = socket.SOCK_STREAM if proto == "TCP" else socket.SOCK_DGRAM
        sock = socket.socket(family, kind)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((ip, port))
            if kind == socket.SOCK_STREAM:
                # Joins the port's group at listen(); a filter attached before
                # would give this socket a group of its own, and listen() fails.
                sock.listen(1024)
            try:
                steer_by_source(sock, self.workers)
            except OSError as e:
                log.warning(
                    "%s: cannot steer clients to one worker each: %s", _fmt((ip, port, proto)), e
                )
        except BaseException:
            sock.close()
            raise
        return sock

    def _use(self, skey: SocketKey, key: FrontendKey) -> None:
        self._users.setdefault(skey, set()).add(key)
        self._socket_of[key] = skey

    def _close_listener(self, key: FrontendKey) -> None:
        skey = self._socket_of.pop(key, None)
        if skey is None:
            return
        users = self._users.get(skey)
        if users is not None:
            users.discard(key)
            if users:
                return
            del self._users[skey]
        listener = self._sockets.pop(skey, None)
        if listener is not None:
            listener.close()
            log.info("closed %s to new connections", _fmt(skey))

    def _route_at(self, address: str, port: int, protocol: str) -> PortRoute | None:
        """The route of the frontend a client reached: its address, else a wildcard NodePort."""
        return route_at(self._routes, _norm(address), port, protocol)

    def _resolve_tcp(self, sockname: tuple, peername: tuple) -> PortRoute | None:
        return self._route_at(sockname[0], sockname[1], "TCP")

    def _resolve_udp(self, address: str, port: int) -> PortRoute | None:
        return self._route_at(address, port, "UDP")

    # -- introspection -------------------------------------------------------

    def metrics(self) -> Iterator[Any]:
        """Per service port and proxy-wide figures, for /metrics (read at scrape time)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = ["namespace", "service", "port", "protocol"]
        opened = CounterMetricFamily(
            "netplane_l4_connections",
            "TCP connections and UDP flows opened to an endpoint, per service port",
            labels=labels,
        )
        active = GaugeMetricFamily(
            "netplane_l4_connections_active",
            "TCP connections and UDP flows open now, per service port",
            labels=labels,
        )
        failed = CounterMetricFamily(
            "netplane_l4_connect_failures",
            "Connects to an endpoint that were refused or timed out, per service port",
            labels=labels,
        )
        refused = CounterMetricFamily(
            "netplane_l4_no_endpoint",
            "Connections reset and datagrams dropped for want of an endpoint, per service port",
            labels=labels,
        )
        relayed = CounterMetricFamily(
            "netplane_l4_bytes",
            "Bytes relayed per service port: read from clients and sent to_endpoint, "
            "or read from endpoints and sent to_client",
            labels=[*labels, "direction"],
        )
        moved = CounterMetricFamily(
            "netplane_udp_flows_moved",
            "UDP flows moved to another endpoint on their next datagram because theirs left",
            labels=labels,
        )
        for (ns, name), pickers in sorted(self._pickers.items()):
            for pkey, picker in sorted(pickers.items()):
                port_name, protocol, number = pkey.split("/")
                values = [ns, name, port_name or number, protocol]
                opened.add_metric(values, picker.opened_total)
                active.add_metric(values, picker.active())
                failed.add_metric(values, picker.failed_total)
                refused.add_metric(values, picker.refused_total)
                counts = picker.counts
                relayed.add_metric([*values, "to_endpoint"], counts.to_endpoint)
                relayed.add_metric([*values, "to_client"], counts.to_client)
                if protocol == "UDP":
                    moved.add_metric(values, counts.flows_moved)
        yield from (opened, active, failed, refused, relayed, moved)
        udp = CounterMetricFamily(
            "netplane_udp_dropped", "UDP datagrams dropped, by reason", labels=["reason"]
        )
        udp.add_metric(["flow_table_full"], self.udp.dropped_overflow)
        udp.add_metric(["no_endpoint"], self.udp.dropped_no_target)
        udp.add_metric(["error"], self.udp.dropped_errors)
        yield udp
        yield GaugeMetricFamily("netplane_udp_flows", "UDP flows open now", value=self.udp.flows)
        yield GaugeMetricFamily(
            "netplane_l4_listeners", "Listening sockets of the L4 proxy", value=len(self._sockets)
        )

    def debug_state(self) -> dict[str, Any]:
        return {
            "listeners": sorted(_fmt(k) for k in self._sockets),
            "frontends": len(self._socket_of),
            "tcp_relay": "splice" if self.tcp.spliced else "protocol",
            "tcp_connections": self.tcp.connections,
            "tcp_accepted": self.tcp.accepted,
            "tcp_refused": self.tcp.refused,
            "tcp_connect_failures": self.tcp.connect_failures,
            "tcp_unreachable": self.tcp.unreachable,
            "udp_flows": self.udp.flows,
            "udp_dropped_overflow": self.udp.dropped_overflow,
            "health": self.health.debug_state(),
            "health_checks": self.health_checks.debug_state(),
        }


def _fmt(key: FrontendKey) -> str:
    ip, port, proto = key
    return f"{hostport(ip, port)}/{proto}"
