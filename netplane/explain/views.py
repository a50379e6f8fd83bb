"""The tables an explanation reads: the ones that serve traffic, or ones built the same way.

A running single-process netplane has them all: the ingress plane's route
table, certificate store and Gateway routes, the DNS plane's zone. The
owner of ``--workers N`` has the state and the ServiceTable but runs no
plane, and ``netplane explain -f PATH`` runs none either; there, each table
is built from the state by the builder its plane uses (``RouteTable.rebuild``,
``CertStore.rebuild``, :func:`~netplane.ingress.gateway_attach.attach` and
``GatewayRoutes.rebuild``, ``Zone.update_service``), from the settings the
plane would get (:func:`netplane.plane.ingress_settings`), and kept current
from the Dataplane's changes: a built table catches up on what changed
since the last explanation before it answers.

The L4 side needs no table of its own: :func:`netplane.l4.routes.frontends_of`
builds the frontends and pickers of one Service, as the proxy does on
each change of it.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from netplane.config import Config
from netplane.l4.picker import NodeInfo
from netplane.model import Pod
from netplane.service_table import ServiceTable
from netplane.state import ClusterState

FrontendKey = tuple[str | None, int, str]  # (ip, or None for a NodePort; port; protocol)


def address_number(ip: str) -> tuple[int, int]:
    """(family, address as an integer); (0, 0) for what is no address."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        return int(family), int.from_bytes(socket.inet_pton(family, ip), "big")
    except OSError:
        return 0, 0


class FrontendIndex:
    """Which services have a frontend at (ip, port, protocol); kept per service.

    The proxy finds a frontend in its own routes; an explanation has no proxy
    to ask, and a scan of 10k services per answer costs 10 ms, so this index
    narrows the search to the services that can match, which
    :func:`netplane.l4.routes.frontends_of` then builds the routes of.
    """

    def __init__(self, table: ServiceTable) -> None:
        self.by_key: dict[FrontendKey, set[tuple[str, str]]] = {}
        #: each frontend address as (family, integer), for "the nearest addresses"
        self.numbers: dict[str, tuple[int, int]] = {}
        self._keys: dict[tuple[str, str], list[FrontendKey]] = {}
        for entry in table:
            self.update(entry.key, entry)

    def update(self, sk: tuple[str, str], entry: Any) -> None:
        for key in self._keys.pop(sk, ()):
            owners = self.by_key.get(key)
            if owners is not None:
                owners.discard(sk)
                if not owners:
                    del self.by_key[key]
        if entry is None:
            return
        keys = [(fe.ip, fe.port, fe.protocol) for p in entry.ports for fe in p.frontends]
        for key in keys:
            self.by_key.setdefault(key, set()).add(sk)
            if key[0] is not None and key[0] not in self.numbers:
                self.numbers[key[0]] = address_number(key[0])
        if keys:
            self._keys[sk] = keys

    def services(self, ip: str, port: int, protocol: str) -> set[tuple[str, str]]:
        """The services with a frontend on ``ip`` or a NodePort on ``port``."""
        return self.by_key.get((ip, port, protocol), set()) | self.by_key.get(
            (None, port, protocol), set()
        )


class Views:
    """The serving tables of one Dataplane, or tables built like them (see the module docstring)."""

    def __init__(self, dp: Any) -> None:
        self.dp = dp
        self._stream: Any = None  # changes not yet applied to the tables built here
        self._routes: Any = None
        self._certs: Any = None
        self._gateway: Any = None  # (GatewayRoutes, CertificateCache)
        self._zone: Any = None
        self._frontends: FrontendIndex | None = None

    # -- what every explanation reads ------------------------------------------

    @property
    def config(self) -> Config:
        return self.dp.config

    @property
    def state(self) -> ClusterState:
        return self.dp.state

    @property
    def table(self) -> ServiceTable:
        return self.dp.table

    @property
    def ready(self) -> bool:
        return bool(self.dp.ready)

    def plane(self, name: str) -> Any:
        return self.dp.planes.get(name)

    def node(self) -> NodeInfo:
        """This node as the proxy sees it: ``--node-name`` and the zone of its Node object."""
        return NodeInfo.of(self.state, self.config.node_name)

    # -- ingress -------------------------------------------------------------------

    @property
    def ingress_on(self) -> bool:
        return self.config.ingress_http is not None or self.config.ingress_https is not None

    def ingress_listeners(self) -> list[tuple[str, int, bool]]:
        """(host, port, https) of the ingress listeners: as bound, else as configured."""
        plane = self.plane("ingress")
        if plane is not None and plane.addresses:
            return list(plane.addresses)
        cfg = self.config
        out = []
        if cfg.ingress_http is not None:
            out.append((cfg.ingress_http.host, cfg.ingress_http.port, False))
        if cfg.ingress_https is not None:
            out.append((cfg.ingress_https.host, cfg.ingress_https.port, True))
        return out

    def routes(self) -> Any:
        """The Ingress :class:`~netplane.ingress.routes.RouteTable`."""
        plane = self.plane("ingress")
        if plane is not None:
            return plane.routes
        self._catch_up()
        if self._routes is None:
            from netplane.ingress.routes import RouteTable

            s = self._settings()
            self._routes = RouteTable(
                ingress_class=s.ingress_class,
                controller=s.controller,
                hsts=s.hsts,
                https_port=s.https[1] if s.https is not None else 443,
            )
            self._routes.rebuild(self.state, self.table)
        return self._routes

    def certs(self) -> Any:
        """The Ingress :class:`~netplane.ingress.certs.CertStore`."""
        plane = self.plane("ingress")
        if plane is not None:
            return plane.certs
        self._catch_up()
        if self._certs is None:
            from netplane.ingress.certs import CertStore

            s = self._settings()
            self._certs = CertStore(
                default=s.default_pair,
                ingress_class=s.ingress_class,
                controller=s.controller,
                default_secret=s.default_secret,
            )
            self._certs.rebuild(self.state)
        return self._certs

    def gateway(self) -> tuple[Any, Any, Any]:
        """(GatewayRoutes, GatewayWorld, CertificateCache) of the Gateway API listeners."""
        plane = self.plane("ingress")
        if plane is not None:
            g = plane.gateway
            return g.routes, g.world, g.certs
        self._catch_up()
        if self._gateway is None:
            from netplane.ingress.gateway_plane import CertificateCache
            from netplane.ingress.gateway_routes import GatewayRoutes

            self._gateway = (GatewayRoutes(), CertificateCache())
            self._attach()
        routes, certs = self._gateway
        return routes, routes.world, certs

    def _attach(self) -> None:
        from netplane.ingress.gateway_attach import attach

        routes, certs = self._gateway
        s = self._settings()
        world = attach(
            self.state,
            controller=s.gateway_controller,
            default_addresses=s.gateway_addresses,
            unavailable={},
            check_certificate=certs.check,
        )
        routes.rebuild(world, self.table)

    def _settings(self) -> Any:
        from netplane.plane import ingress_settings

        return ingress_settings(self.config)

    # -- L4 ------------------------------------------------------------------------

    def frontends(self) -> FrontendIndex:
        """Every service frontend, by address."""
        self._catch_up()
        if self._frontends is None:
            self._frontends = FrontendIndex(self.table)
        return self._frontends

    # -- DNS -----------------------------------------------------------------------

    def zone(self) -> Any:
        """The cluster :class:`~netplane.dns.zone.Zone`."""
        plane = self.plane("dns")
        if plane is not None:
            return plane.zone
        self._catch_up()
        if self._zone is None:
            from netplane.dns.zone import Zone

            cfg = self.config
            ns: tuple[str, ...] = ()
            if cfg.dns is not None:
                try:
                    ip = ipaddress.ip_address(cfg.dns.host)
                except ValueError:
                    ip = None
                if ip is not None and not ip.is_unspecified:
                    ns = (str(ip),)
            zone = Zone(
                cfg.cluster_domain,
                ttl=cfg.dns_ttl,
                reverse_cidrs=(*cfg.effective_service_cidrs, *cfg.pod_cidrs),
                pods=cfg.dns_pods,
                ns_addresses=ns or ("127.0.0.1",),
            )
            for entry in self.table:
                zone.update_service(entry.key, entry)
            for pod in self.state.objects("Pod"):
                zone.update_pod(pod.key, pod)
            zone.ready = self.ready
            self._zone = zone
        return self._zone

    # -- following the dataplane -------------------------------------------------

    def _catch_up(self) -> None:
        """Apply to the tables built here what changed since they were built or last caught up."""
        if self._stream is None:
            self._stream = self.dp.subscribe()
            return
        if not self._stream.pending:
            if self._zone is not None and self.ready:
                self._zone.ready = True
            return
        change = self._stream.take()
        state, table = self.state, self.table
        if self._routes is not None:
            self._routes.apply(state, table, change)
        if self._certs is not None:
            self._certs.apply(state, change)
        if self._gateway is not None:
            from netplane.ingress.gateway_plane import WORLD_KINDS

            routes = self._gateway[0]
            kinds = {k.kind for k in change.objects}
            services = set(change.services)
            services.update((k.namespace, k.name) for k in change.objects if k.kind == "Service")
            if kinds & WORLD_KINDS or services & routes.world.services:
                self._attach()
            elif services:
                routes.update_services(services, table)
        if self._frontends is not None:
            for sk in change.services:
                self._frontends.update(sk, table.get(*sk))
        if self._zone is not None:
            for sk in change.services:
                self._zone.update_service(sk, table.get(*sk))
            for key in change.objects:
                if key.kind == "Pod":
                    pod = state.get(key)
                    self._zone.update_pod(key, pod if isinstance(pod, Pod) else None)
            self._zone.ready = self.ready

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
