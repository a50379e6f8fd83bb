"""Planes: what serves traffic beside a Dataplane, and how a Config builds them.

A plane (the L4 proxy, the ingress, DNS; later HTTP/2 or a kernel
datapath) follows one Dataplane's changes and serves its own sockets. Every
plane has the same four-part life, :class:`Plane`: ``start()`` subscribes
and binds, ``close(grace)`` stops accepting and lets open work finish,
``debug_state()`` and ``metrics()`` feed ``/debug/state`` and ``/metrics``.

Defaults live once, in :class:`netplane.config.Config`. Each plane's
settings object is derived from a Config by one function here
(:func:`tcp_settings`, :func:`ingress_settings`, ...), and
:func:`planes_for` builds the planes a Config asks for, in start order.
The Dataplane of a single process (the daemon with ``--workers 1``, or an
embedder) starts them with :func:`start_planes`, and so does a worker of
``--workers N``, whose planes share their sockets with the other workers.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from netplane.config import Config, Listen

if TYPE_CHECKING:
    from netplane.dataplane import Dataplane
    from netplane.dns.plane import DnsPlane, DnsSettings
    from netplane.ingress.http import HttpSettings
    from netplane.ingress.plane import IngressPlane, IngressSettings
    from netplane.l4.proxy import L4Proxy
    from netplane.l4.tcp import TcpSettings
    from netplane.l4.udp import UdpSettings

log = logging.getLogger("netplane.plane")

# Planes that may fail to bind without stopping the rest: the DNS port is
# often another resolver's (5353 is mDNS), and the proxy and ingress serve on.
OPTIONAL = frozenset({"dns"})


class Plane(Protocol):
    """One data plane of a Dataplane, started after it subscribes and closed before it stops."""

    async def start(self) -> None:
        """Subscribe to the dataplane's changes and bind the listeners.

        Raises OSError or ConfigError when a listener cannot be bound.
        """

    async def close(self, grace: float, /) -> None:
        """Stop accepting; open connections and requests get up to ``grace`` seconds."""

    def debug_state(self) -> Any:
        """A JSON-ready summary, shown under ``planes`` in ``/debug/state``."""

    def metrics(self) -> Iterable[Any]:
        """Prometheus metric families, read at each scrape of ``/metrics``."""


# -- settings: one function per plane's settings object ----------------------


def tcp_settings(cfg: Config) -> TcpSettings:
    """The TCP relay's settings (netplane/l4/tcp.py) from a Config."""
    from netplane.l4.tcp import TcpSettings

    return TcpSettings(
        connect_timeout=cfg.connect_timeout,
        idle_timeout=cfg.tcp_idle_seconds,
        splice=cfg.tcp_relay == "splice",
    )


def udp_settings(cfg: Config) -> UdpSettings:
    """The UDP relay's settings (netplane/l4/udp.py) from a Config."""
    from netplane.l4.udp import UdpSettings

    return UdpSettings(flow_idle_timeout=cfg.udp_idle_seconds)


def http_settings(cfg: Config) -> HttpSettings:
    """The ingress's client-side limits and timeouts from a Config."""
    from netplane.ingress.http import HttpSettings

    return HttpSettings(
        max_header_bytes=cfg.ingress_max_header_bytes,
        header_timeout=cfg.ingress_header_timeout,
        body_timeout=cfg.ingress_body_timeout,
        keepalive_timeout=cfg.ingress_keepalive_timeout,
        h2c=cfg.ingress_h2c,
        max_connections_per_client=cfg.ingress_max_connections_per_client,
    )


def ingress_settings(cfg: Config, *, reuse_port: bool = False) -> IngressSettings:
    """The ingress plane's settings from a Config; ``reuse_port`` for ``--workers N``."""
    from netplane.ingress.plane import IngressSettings

    return IngressSettings(
        http=_addr(cfg.ingress_http),
        https=_addr(cfg.ingress_https),
        ingress_class=cfg.ingress_class,
        default_secret=cfg.default_certificate,
        hsts=cfg.ingress_hsts.encode() if cfg.ingress_hsts else None,
        access_log=cfg.ingress_access_log,
        access_log_format=cfg.log_format,
        tls_resumption=cfg.ingress_tls_resumption,
        reuse_port=reuse_port,
        http_settings=http_settings(cfg),
        gateway_addresses=cfg.effective_gateway_addresses,
    )


def dns_settings(
    cfg: Config, *, reuse_port: bool = False, resolv_conf: str = "/etc/resolv.conf"
) -> DnsSettings:
    """The DNS plane's settings from a Config (which must have ``dns`` set).

    With no ``dns-upstreams``, names outside the cluster go to the
    nameservers of ``resolv_conf``, minus this server itself.
    """
    from netplane.dns.plane import DnsSettings, own_addresses, resolv_conf_upstreams

    listen = cfg.dns
    if listen is None:
        raise ValueError("dns_settings: the config has no DNS listener (dns is off)")
    upstreams = cfg.dns_upstreams
    if not upstreams:
        try:
            with open(resolv_conf) as fh:
                text = fh.read()
        except OSError:
            text = ""
        upstreams = tuple(
            resolv_conf_upstreams(text, exclude=own_addresses(listen.host, listen.port))
        )
    return DnsSettings(
        host=listen.host,
        port=listen.port,
        domain=cfg.cluster_domain,
        ttl=cfg.dns_ttl,
        upstreams=upstreams,
        allow=cfg.effective_dns_allow,
        reverse_cidrs=(*cfg.effective_service_cidrs, *cfg.pod_cidrs),
        pods=cfg.dns_pods,
        udp_cap=cfg.dns_udp_size,
        max_tcp_connections=cfg.dns_max_tcp_connections,
        reuse_port=reuse_port,
    )


def _addr(listen: Listen | None) -> tuple[str, int] | None:
    return (listen.host, listen.port) if listen is not None else None


# -- building the planes -----------------------------------------------------


def proxy_for(cfg: Config, dp: Dataplane, *, workers: int = 1) -> L4Proxy | None:
    """The L4 service proxy the config asks for, listed in ``dp.planes``.

    In a worker of ``--workers N`` (``workers`` > 1) the owner keeps node
    mode's routes, and listeners are shared with the other workers.
    """
    if not cfg.proxy:
        return None
    from netplane.addresses import LocalRoutes
    from netplane.l4.proxy import L4Proxy

    node = cfg.mode == "node"
    proxy = L4Proxy(
        dp,
        node_name=cfg.node_name,
        nodeport_addresses=cfg.effective_nodeport_addresses,
        default_policy=cfg.lb_policy,
        tcp=tcp_settings(cfg),
        udp=udp_settings(cfg),
        local_routes=LocalRoutes() if node and workers == 1 else None,
        service_cidrs=cfg.effective_service_cidrs,
        shared_listeners=node,
        workers=workers,
    )
    dp.planes["proxy"] = proxy
    return proxy


def ingress_for(cfg: Config, dp: Dataplane, *, reuse_port: bool = False) -> IngressPlane | None:
    """The ingress plane the config asks for (HTTP and/or HTTPS), listed in ``dp.planes``."""
    if cfg.ingress_http is None and cfg.ingress_https is None:
        return None
    from netplane.ingress.plane import IngressPlane

    plane = IngressPlane(dp, ingress_settings(cfg, reuse_port=reuse_port))
    dp.planes["ingress"] = plane
    return plane


def dns_for(cfg: Config, dp: Dataplane, *, reuse_port: bool = False) -> DnsPlane | None:
    """The cluster DNS plane the config asks for, listed in ``dp.planes``."""
    if cfg.dns is None:
        return None
    from netplane.dns.plane import DnsPlane

    plane = DnsPlane(dp, dns_settings(cfg, reuse_port=reuse_port))
    dp.planes["dns"] = plane
    return plane


def planes_for(cfg: Config, dp: Dataplane, *, workers: int = 1) -> list[tuple[str, Plane]]:
    """The planes the config asks for, by name, in start order.

    The proxy comes first so that, in node mode, its routes make the
    service addresses local before anything else binds. In a worker of
    ``--workers N`` (``workers`` > 1) every listener is shared with the
    other workers (SO_REUSEPORT).
    """
    shared = workers > 1
    built: list[tuple[str, Plane | None]] = [
        ("proxy", proxy_for(cfg, dp, workers=workers)),
        ("ingress", ingress_for(cfg, dp, reuse_port=shared)),
        ("dns", dns_for(cfg, dp, reuse_port=shared)),
    ]
    return [(name, plane) for name, plane in built if plane is not None]


# -- starting and stopping them together -------------------------------------


async def start_planes(
    planes: Iterable[tuple[str, Plane]],
    stack: contextlib.AsyncExitStack,
    registry: dict[str, Plane],
    *,
    grace: Callable[[], float],
    config: Config,
) -> None:
    """Start ``planes`` in order; each one's close goes on ``stack``, so they close in reverse.

    ``registry`` (a Dataplane's ``planes``) lists each plane while it runs.
    A plane named in :data:`OPTIONAL` that raises OSError is logged and
    left out; any other failure propagates, and the caller's stack closes
    what had started. ``grace`` is read when the stack closes: the drain
    time is known only then.
    """

    async def close(name: str, plane: Plane) -> None:
        registry.pop(name, None)
        await plane.close(grace())

    planes = list(planes)
    for name, _ in planes:  # listed from when it starts (proxy_for and the like list it at once)
        registry.pop(name, None)
    for name, plane in planes:
        try:
            await plane.start()
        except OSError as e:
            if name not in OPTIONAL:
                raise
            log.error(
                "%s: cannot listen on %s: %s; serving without %s",
                name.upper(),
                getattr(config, name),  # the Config field of an optional plane is its address
                e.strerror or e,
                name.upper(),
            )
            continue
        registry[name] = plane
        stack.push_async_callback(close, name, plane)
