"""The Service model (core/v1), trimmed to what the data planes use.

Validation follows the API server where a user would hit it: DNS-1035 names,
port ranges, protocols, port names, affinity timeout. Checks that need the
rest of the cluster (clusterIP inside the service CIDR, duplicate clusterIPs
or nodePorts, the nodePort range) live in :mod:`netplane.allocations`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from netplane.model.meta import (
    Fields,
    Meta,
    ObjectKey,
    is_canonical_ipv4,
    is_dns1035_label,
    is_dns1123_label,
    is_dns1123_subdomain,
    own,
    own_int,
    parse_meta,
)

KIND = "Service"
TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
PROTOCOLS = ("TCP", "UDP", "SCTP")
TRAFFIC_POLICIES = ("Cluster", "Local")
DEFAULT_AFFINITY_TIMEOUT = 10800  # three hours, the API server's default
# IANA service names (RFC 6335): at most 15 characters, lower-case letters,
# digits and single hyphens, at least one letter.
_IANA_SVC_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9]|-(?!-))*(?<!-)$")


def is_iana_svc_name(value: str) -> bool:
    return len(value) <= 15 and bool(_IANA_SVC_NAME.match(value))


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    protocol: str
    port: int
    target_port: int | str  # a number, or the name of a container port
    node_port: int | None = None
    app_protocol: str = ""


@dataclass(frozen=True, slots=True)
class Service:
    """A Service; ``cluster_ips`` is empty for headless and ExternalName services."""

    key: ObjectKey
    meta: Meta
    type: str = "ClusterIP"
    cluster_ips: tuple[str, ...] = ()
    headless: bool = False
    ip_families: tuple[str, ...] = ()
    ports: tuple[ServicePort, ...] = ()
    selector: dict[str, str] | None = None
    session_affinity: str = "None"
    affinity_timeout: int = DEFAULT_AFFINITY_TIMEOUT
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()
    external_name: str = ""
    external_traffic_policy: str = "Cluster"
    internal_traffic_policy: str = "Cluster"
    health_check_node_port: int | None = None
    publish_not_ready_addresses: bool = False

    kind = KIND

    @property
    def needs_cluster_ip(self) -> bool:
        """True when the API server would allocate a clusterIP for it."""
        return self.type != "ExternalName" and not self.headless


def _ip(f: Fields, name: str | int, value: str) -> str:
    if is_canonical_ipv4(value):
        return own(value)
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        f.fail(name, f"{value!r} is not a valid IP address")


def _version(normalised_ip: str) -> int:
    return 6 if ":" in normalised_ip else 4


def _port_number(f: Fields, name: str, *, required: bool = False) -> int | None:
    v = f.int(name, required=required)
    if v is not None and not 1 <= v <= 65535:
        f.fail(name, f"{v} out of range (1-65535)")
    return v


def parse_service(f: Fields) -> Service:
    meta = parse_meta(f, KIND)
    if not is_dns1035_label(meta.name):
        f.obj("metadata").fail(
            "name", f"{meta.name!r} is not a valid DNS-1035 label (a lower-case letter first)"
        )
    key = ObjectKey(KIND, meta.namespace, meta.name)
    spec = f.obj("spec")
    status = f.obj("status")

    svc_type = spec.choice("type", TYPES, "ClusterIP")

    # clusterIPs wins over clusterIP when both are set, as on the API server;
    # they must agree on the first address.
    cluster_ip = spec.str("clusterIP")
    cluster_ips_raw = spec.strs("clusterIPs")
    if cluster_ips_raw and cluster_ip and cluster_ips_raw[0] != cluster_ip:
        spec.fail("clusterIPs[0]", f"{cluster_ips_raw[0]!r} must match clusterIP {cluster_ip!r}")
    ips_in = cluster_ips_raw or ((cluster_ip,) if cluster_ip else ())
    headless = bool(ips_in) and ips_in[0] == "None"
    cluster_ips: tuple[str, ...] = ()
    if headless:
        if len(ips_in) > 1:
            spec.fail("clusterIPs", "a headless service takes only 'None'")
    elif ips_in:
        where = "clusterIPs" if cluster_ips_raw else "clusterIP"
        cluster_ips = tuple(
            _ip(spec, f"{where}[{i}]" if cluster_ips_raw else where, v)
            for i, v in enumerate(ips_in)
        )
        if len(cluster_ips) > 2:
            spec.fail("clusterIPs", "at most two addresses (one per family)")
        if len(cluster_ips) == 2 and _version(cluster_ips[0]) == _version(cluster_ips[1]):
            spec.fail("clusterIPs", "two addresses must be of different families")
    external_name = spec.str("externalName")
    if svc_type == "ExternalName":
        if not external_name:
            spec.fail("externalName", "required for type ExternalName")
        # A trailing dot (an absolute name) is allowed, as the API server allows it.
        if not is_dns1123_subdomain(external_name.removesuffix(".")):
            spec.fail("externalName", f"{external_name!r} is not a valid DNS-1123 subdomain")
        if cluster_ips:
            spec.fail("clusterIP", "must be empty for type ExternalName")
    # Dual-stack: at most one address per family, and ipFamilies (when given)
    # lists the families of clusterIPs in the same order.
    ip_families = spec.strs("ipFamilies")
    if len(ip_families) > 2:
        spec.fail("ipFamilies", "at most two families")
    for i, fam in enumerate(ip_families):
        if fam not in ("IPv4", "IPv6"):
            spec.fail(f"ipFamilies[{i}]", f"unsupported value {fam!r} (one of IPv4, IPv6)")
        if fam in ip_families[:i]:
            spec.fail(f"ipFamilies[{i}]", f"duplicate family {fam!r}")
    for i, (fam, ip) in enumerate(zip(ip_families, cluster_ips, strict=False)):
        if fam != f"IPv{_version(ip)}":
            spec.fail(
                f"ipFamilies[{i}]",
                f"{fam!r} does not match the family of clusterIPs[{i}] {ip!r}",
            )

    ports: list[ServicePort] = []
    seen_names: set[str] = set()
    seen_ports: set[tuple[int, str]] = set()
    port_fields = spec.objs("ports")
    for p in port_fields:
        name = p.str("name")
        if len(port_fields) > 1 and not name:
            p.fail("name", "required when the service has more than one port")
        if name:
            if not is_dns1123_label(name):
                p.fail("name", f"{name!r} is not a valid DNS-1123 label")
            if name in seen_names:
                p.fail("name", f"duplicate port name {name!r}")
            seen_names.add(name)
        protocol = p.choice("protocol", PROTOCOLS, "TCP")
        port = _port_number(p, "port", required=True)
        assert port is not None
        if (port, protocol) in seen_ports:
            p.fail("port", f"duplicate port {port}/{protocol}")
        seen_ports.add((port, protocol))
        target: int | str = port
        tp = p.raw.get("targetPort")
        if isinstance(tp, str):
            if tp.isascii() and tp.isdigit():
                tp = int(tp)
            elif not is_iana_svc_name(tp):
                p.fail("targetPort", f"{tp!r} is not a valid port name")
            else:
                target = own(tp)
        if isinstance(tp, int) and not isinstance(tp, bool):
            if tp == 0:
                tp = port  # 0 means "same as port", as the API server defaults it
            if not 1 <= tp <= 65535:
                p.fail("targetPort", f"{tp} out of range (1-65535)")
            target = own_int(tp)
        elif tp is not None and not isinstance(tp, str):
            p.fail("targetPort", "expected a number or a port name")
        node_port = _port_number(p, "nodePort")
        if node_port is not None and svc_type not in ("NodePort", "LoadBalancer"):
            p.fail("nodePort", f"may not be set for type {svc_type}")
        ports.append(
            ServicePort(
                name=name,
                protocol=protocol,
                port=port,
                target_port=target,
                node_port=node_port,
                app_protocol=p.str("appProtocol"),
            )
        )
    if not ports and svc_type != "ExternalName" and not headless:
        spec.fail("ports", "required (only headless and ExternalName services may have none)")

    # An empty selector selects nothing for a Service (the API drops it), so
    # it must not turn into "every pod in the namespace".
    selector = spec.str_map("selector") or None
    affinity = spec.choice("sessionAffinity", ("None", "ClientIP"), "None")
    timeout = DEFAULT_AFFINITY_TIMEOUT
    sac = spec.opt_obj("sessionAffinityConfig")
    if sac is not None:
        cip = sac.obj("clientIP")
        t = cip.int("timeoutSeconds")
        if t is not None:
            if not 0 < t <= 86400:
                cip.fail("timeoutSeconds", f"{t} out of range (1-86400)")
            timeout = t

    etp = spec.choice("externalTrafficPolicy", TRAFFIC_POLICIES, "Cluster")
    itp = spec.choice("internalTrafficPolicy", TRAFFIC_POLICIES, "Cluster")
    hc = _port_number(spec, "healthCheckNodePort")

    external_ips = tuple(
        _ip(spec, f"externalIPs[{i}]", v) for i, v in enumerate(spec.strs("externalIPs"))
    )
    lb = status.obj("loadBalancer")
    lb_ips = tuple(_ip(ing, "ip", ing.str("ip")) for ing in lb.objs("ingress") if ing.str("ip"))
    return Service(
        key=key,
        meta=meta,
        type=svc_type,
        cluster_ips=cluster_ips,
        headless=headless,
        ip_families=ip_families,
        ports=tuple(ports),
        selector=selector,
        session_affinity=affinity,
        affinity_timeout=timeout,
        external_ips=external_ips,
        load_balancer_ips=lb_ips,
        external_name=external_name,
        external_traffic_policy=etp,
        internal_traffic_policy=itp,
        health_check_node_port=hc,
        publish_not_ready_addresses=bool(spec.bool("publishNotReadyAddresses", False)),
    )
