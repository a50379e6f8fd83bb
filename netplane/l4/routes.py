"""Routes: which service port stands behind each frontend address.

Sans-IO. :func:`frontends_of` turns one ServiceTable entry into the
``(ip, port, protocol) -> PortRoute`` pairs it needs, with NodePorts spread
over the node's addresses. A :class:`PortRoute` binds one shared
:class:`Picker` (one per service port, so affinity and connection counts
are shared by all its frontends) to the traffic kind of its frontend:
ClusterIP traffic is "internal", NodePort, externalIP and load-balancer IP
traffic "external", as kube-proxy tells them apart for traffic policies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from netplane.l4.picker import NodeInfo, Picker, Target
from netplane.service_table import PortEntry, ServiceEntry

FrontendKey = tuple[str, int, str]  # (ip, port, protocol)
#: NodePort frontends on every address of a family
WILDCARDS = ("0.0.0.0", "::")
SUPPORTED_PROTOCOLS = ("TCP", "UDP")
PROXY_PROTOCOL_ANNOTATION = "netplane.io/proxy-protocol"


class PortRoute:
    """The Route (see netplane.l4) of one frontend: a picker plus the traffic kind."""

    __slots__ = ("counts", "external", "picker", "protocol", "proxy_protocol")

    def __init__(self, picker: Picker, *, external: bool, protocol: str, proxy_protocol: bool):
        self.picker = picker
        self.counts = picker.counts
        self.external = external
        self.protocol = protocol
        self.proxy_protocol = proxy_protocol

    def pick(self, client_ip: str, exclude: frozenset[Target] = frozenset()) -> Target | None:
        target = self.picker.pick(client_ip, external=self.external, exclude=exclude)
        if target is None:
            self.picker.refused_total += 1
        return target

    def usable(self, target: Target) -> bool:
        return self.picker.usable(target, external=self.external)

    def opened(self, target: Target) -> None:
        self.picker.opened(target)

    def closed(self, target: Target) -> None:
        self.picker.closed(target)

    def failed(self, target: Target) -> None:
        self.picker.failed(target)


@dataclass(frozen=True, slots=True)
class Problem:
    """A service port the proxy will not serve, and why (logged once per change)."""

    service: str
    reason: str


def proxy_protocol_of(entry: ServiceEntry) -> tuple[bool, str | None]:
    value = entry.service.meta.annotations.get(PROXY_PROTOCOL_ANNOTATION)
    if value is None:
        return False, None
    if value == "v2":
        return True, None
    return False, f"annotation {PROXY_PROTOCOL_ANNOTATION}: {value!r} is not supported (only v2)"


def frontends_of(
    entry: ServiceEntry,
    pickers: dict[str, Picker],
    node: NodeInfo,
    node_ips: Sequence[str],
    *,
    default_policy: str = "round-robin",
) -> tuple[dict[FrontendKey, PortRoute], list[Problem]]:
    """Routes for every frontend of ``entry``; ``pickers`` (by port name) is updated in place.

    Pickers of ports that remain are updated rather than replaced, so a
    client's affinity and the connection counts survive a table change.
    """
    ref = f"Service {entry.service.key.namespace}/{entry.service.key.name}"
    routes: dict[FrontendKey, PortRoute] = {}
    problems: list[Problem] = []
    proxy_protocol, pp_problem = proxy_protocol_of(entry)
    if pp_problem:
        problems.append(Problem(ref, pp_problem))
    seen: set[str] = set()
    for port in entry.ports:
        pkey = f"{port.name}/{port.protocol}/{port.port}"
        if port.protocol not in SUPPORTED_PROTOCOLS:
            problems.append(
                Problem(
                    ref, f"port {port.port}/{port.protocol}: protocol not supported by the proxy"
                )
            )
            continue
        seen.add(pkey)
        picker = pickers.get(pkey)
        if picker is None:
            picker = pickers[pkey] = Picker(entry, port, node, default_policy=default_policy)
        else:
            picker.update(entry, port)
        if picker.policy_problem:
            problems.append(Problem(ref, picker.policy_problem))
        _add_frontends(
            routes, entry, port, picker, node_ips, proxy_protocol and port.protocol == "TCP"
        )
    for gone in [k for k in pickers if k not in seen]:
        del pickers[gone]
    return routes, problems


def _add_frontends(
    routes: dict[FrontendKey, PortRoute],
    entry: ServiceEntry,
    port: PortEntry,
    picker: Picker,
    node_ips: Sequence[str],
    proxy_protocol: bool,
) -> None:
    internal = PortRoute(
        picker, external=False, protocol=port.protocol, proxy_protocol=proxy_protocol
    )
    external = PortRoute(
        picker, external=True, protocol=port.protocol, proxy_protocol=proxy_protocol
    )
    for fe in port.frontends:
        if fe.ip is None:  # NodePort: every node address
            for ip in node_ips:
                routes[(ip, fe.port, fe.protocol)] = external
        else:
            routes[(fe.ip, fe.port, fe.protocol)] = internal if fe.kind == "ClusterIP" else external


def route_at(
    routes: Mapping[FrontendKey, PortRoute], address: str, port: int, protocol: str
) -> PortRoute | None:
    """The route of the frontend a client reached (``address`` normalized): that
    address, else a wildcard NodePort."""
    route = routes.get((address, port, protocol))
    if route is None:
        for wildcard in WILDCARDS:
            route = routes.get((wildcard, port, protocol))
            if route is not None:
                break
    return route
