"""L4Proxy: TCP and UDP listeners that follow the ServiceTable.

For each changed service it recomputes the service's routes
(:mod:`netplane.l4.routes`), opens listeners for new frontend addresses,
swaps the route behind existing ones (new connections see the new table,
open ones finish where they started), and closes listeners of frontends
that went away for new connections while their open connections go on.

Local mode binds one socket per frontend address (ClusterIPs are loopback
addresses there). A TCP listener finds its route by the address the client
reached (``getsockname()``), so a wildcard NodePort listener on 0.0.0.0 or
``::`` serves every node address; its routes are keyed by that wildcard.

Two services claiming the same frontend (an externalIP, say): the first
keeps it and the second is logged.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from netplane.l4.healthcheck import HealthChecks
from netplane.l4.picker import NodeInfo, Picker
from netplane.l4.routes import FrontendKey, PortRoute, frontends_of
from netplane.l4.tcp import TcpProxy, TcpSettings
from netplane.l4.udp import UdpProxy, UdpSettings
from netplane.model import ObjectKey
from netplane.service_table import ServiceKey

log = logging.getLogger("netplane.l4")

WILDCARDS = ("0.0.0.0", "::")


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
    ) -> None:
        self._dp = dataplane
        # Node mode: AnyIP routes (netplane.addresses.LocalRoutes) that make the
        # service CIDRs, externalIPs and LB IPs local before anything binds them.
        self.local_routes = local_routes
        self.service_cidrs = tuple(service_cidrs)
        self._extra_ips: dict[ServiceKey, frozenset[str]] = {}
        self._routed: set[Any] | None = None
        self.node_name = node_name
        self.nodeport_addresses = tuple(nodeport_addresses)
        self.default_policy = default_policy
        self.tcp = TcpProxy(tcp or TcpSettings())
        self.udp = UdpProxy(udp or UdpSettings())
        self._routes: dict[FrontendKey, PortRoute] = {}
        self._claims: dict[FrontendKey, ServiceKey] = {}
        self._owned: dict[ServiceKey, set[FrontendKey]] = {}
        self._pickers: dict[ServiceKey, dict[str, Picker]] = {}
        self._listeners: dict[FrontendKey, Any] = {}
        # healthCheckNodePort servers of externalTrafficPolicy Local services
        self.health_checks = HealthChecks(node_name, self.nodeport_addresses)
        self._stream: Any = None
        self._task: Any = None

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        self._stream = self._dp.subscribe()
        await self._sync_local_routes()
        if self._dp.ready:
            await self.sync(e.key for e in self._dp.table)
        self._task = asyncio.create_task(self._follow(), name="l4-proxy")

    async def _follow(self) -> None:
        async for change in self._stream:
            try:
                await self.sync(change.services)
            except Exception:
                log.exception("L4 proxy update failed; keeping the previous listeners")

    async def close(self, grace: float) -> None:
        """Stop accepting, let open TCP connections finish up to ``grace`` seconds."""
        if self._task is not None:
            self._task.cancel()
        if self._stream is not None:
            self._stream.close()
        for key in list(self._listeners):
            self._close_listener(key)
        self.health_checks.close()
        await self.tcp.drain(grace)
        await self.tcp.close(0)
        await self.udp.close()
        if self.local_routes is not None:
            try:
                await asyncio.to_thread(self.local_routes.clear)
            except Exception as e:
                log.error("cannot remove the AnyIP routes: %s", e)

    # -- following the table -------------------------------------------------

    def _node(self) -> NodeInfo:
        zone = ""
        if self.node_name:
            node = self._dp.state.get(ObjectKey("Node", "", self.node_name))
            zone = getattr(node, "zone", "") or ""
        return NodeInfo(self.node_name, zone)

    async def _sync_local_routes(self) -> None:
        """Node mode: local routes for the CIDRs and every externalIP and LB IP."""
        if self.local_routes is None:
            return
        desired = set(self.service_cidrs)
        for ips in self._extra_ips.values():
            desired |= {ipaddress.ip_network(ip) for ip in ips}
        if desired != self._routed:
            try:
                await asyncio.to_thread(self.local_routes.sync, desired)
            except Exception as e:  # pyroute2's NetlinkError, or no netlink at all
                log.error(
                    "cannot program the AnyIP routes (node mode needs root or CAP_NET_ADMIN): %s", e
                )
                return
            self._routed = desired

    async def sync(self, services: Iterable[ServiceKey]) -> None:
        """Bring the listeners of ``services`` in line with the table."""
        node = self._node()
        services = list(services)
        if self.local_routes is not None:
            for sk in services:
                entry = self._dp.table.get(*sk)
                ips = frozenset(
                    f.ip
                    for p in (entry.ports if entry is not None else ())
                    for f in p.frontends
                    if f.ip is not None and f.kind in ("ExternalIP", "LoadBalancer")
                )
                if ips:
                    self._extra_ips[sk] = ips
                else:
                    self._extra_ips.pop(sk, None)
            await self._sync_local_routes()
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
        ip, port, proto = key
        listener = self._listeners.get(key)
        if listener is not None:
            if proto == "UDP":
                listener.route = route
            return
        try:
            if proto == "TCP":
                listener = await self.tcp.listen(ip, port, self._resolve_tcp)
            else:
                listener = await self.udp.listen(ip, port, route)
        except OSError as e:
            log.warning(
                "Service %s/%s: cannot listen on %s: %s", *sk, _fmt(key), e.strerror or e
            )  # fmt: skip
            return
        self._listeners[key] = listener
        log.info("listening on %s for Service %s/%s", _fmt(key), *sk)

    def _close_listener(self, key: FrontendKey) -> None:
        listener = self._listeners.pop(key, None)
        if listener is not None:
            listener.close()
            log.info("closed %s to new connections", _fmt(key))

    def _resolve_tcp(self, sockname: tuple, peername: tuple) -> PortRoute | None:
        ip, port = _norm(sockname[0]), sockname[1]
        route = self._routes.get((ip, port, "TCP"))
        if route is None:
            for wildcard in WILDCARDS:
                route = self._routes.get((wildcard, port, "TCP"))
                if route is not None:
                    break
        return route

    # -- introspection -------------------------------------------------------

    def debug_state(self) -> dict[str, Any]:
        return {
            "listeners": sorted(_fmt(k) for k in self._listeners),
            "tcp_connections": self.tcp.connections,
            "udp_flows": self.udp.flows,
            "udp_dropped_overflow": self.udp.dropped_overflow,
            "health_checks": self.health_checks.debug_state(),
        }


def _fmt(key: FrontendKey) -> str:
    ip, port, proto = key
    host = f"[{ip}]" if ":" in ip else ip
    return f"{host}:{port}/{proto}"
