"""EndpointSlice (discovery.k8s.io/v1) and v1 Endpoints, mirrored into slices.

v1 Endpoints are converted to slices the way the EndpointSlice mirroring
controller does (one slice per subset and address family; ``addresses`` are
ready, ``notReadyAddresses`` are not), because people still write them by
hand for selector-less services. Everything downstream reads slices only.

This parser runs once per endpoint at 100k-endpoint scale, so it reads raw
dicts directly and builds a :class:`Fields` only to report an error.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from netplane.model.meta import Fields, Meta, ObjectKey, parse_meta

KIND = "EndpointSlice"
ENDPOINTS_KIND = "Endpoints"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")


@dataclass(frozen=True, slots=True)
class TargetRef:
    kind: str
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint of a slice; conditions already defaulted as kube-proxy reads them."""

    addresses: tuple[str, ...]
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    hostname: str = ""
    node_name: str = ""
    zone: str = ""
    hints_for_zones: tuple[str, ...] = ()
    target_ref: TargetRef | None = None


@dataclass(frozen=True, slots=True)
class EndpointPort:
    name: str
    protocol: str
    port: int | None
    app_protocol: str = ""


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    key: ObjectKey
    meta: Meta
    address_type: str
    endpoints: tuple[Endpoint, ...]
    ports: tuple[EndpointPort, ...]
    service_name: str  # from the kubernetes.io/service-name label; "" when absent

    kind = KIND


@dataclass(frozen=True, slots=True)
class Endpoints:
    """A v1 Endpoints object, held as the slices the mirroring controller would make."""

    key: ObjectKey
    meta: Meta
    slices: tuple[EndpointSlice, ...]

    kind = ENDPOINTS_KIND


def _check_ip(f: Fields, name: str | int, value: object, family: int | None) -> str:
    if not isinstance(value, str):
        f.fail(name, "expected a string")
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        f.fail(name, f"{value!r} is not a valid IP address")
    if family is not None and ip.version != family:
        f.fail(name, f"{value!r} is not an IPv{family} address")
    return str(ip)


# The canonical text of an IPv4 address is matched exactly (no leading zeros,
# each octet 0-255), so an address that matches is already normalised and the
# hot path never builds an ipaddress object for it.
_IPV4 = re.compile(
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
    r"(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}"
).fullmatch


def _bool(f: Fields, name: str, default: bool) -> bool:
    v = f.raw.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        f.fail(name, "expected true or false")
    return v


def _ports(f: Fields, name: str) -> tuple[EndpointPort, ...]:
    out = []
    for p in f.objs(name):
        port = p.int("port")
        if port is not None and not 1 <= port <= 65535:
            p.fail("port", f"{port} out of range (1-65535)")
        protocol = p.str("protocol", "TCP")
        if protocol not in ("TCP", "UDP", "SCTP"):
            p.fail("protocol", f"unsupported value {protocol!r}")
        out.append(EndpointPort(p.str("name"), protocol, port, p.str("appProtocol")))
    return tuple(out)


def _target_ref(raw: object, f: Fields, name: str) -> TargetRef | None:
    if raw is None:
        return None
    tr = f.obj(name)
    return TargetRef(tr.str("kind"), tr.str("namespace"), tr.str("name"))


def _at(f: Fields, raw: object, i: int) -> Fields:
    """The Fields of ``endpoints[i]``, built only to read a rare field or report an error."""
    return Fields(raw, f.ref, (*f._path, i))


def _addresses(raw: dict, f: Fields, i: int, family: int | None) -> tuple[str, ...]:
    addrs = raw.get("addresses")
    if not isinstance(addrs, list) or not addrs:
        _at(f, raw, i).fail("addresses", "at least one address is required")
    if family == 4:
        for a in addrs:
            if a.__class__ is not str or _IPV4(a) is None:
                break
        else:
            return tuple(addrs)
    out = []
    for j, a in enumerate(addrs):
        if not isinstance(a, str):
            _at(f, raw, i).fail(f"addresses[{j}]", "expected a string")
        if family is None:
            if not a:
                _at(f, raw, i).fail(f"addresses[{j}]", "expected a host name")
            out.append(a)
        else:
            out.append(_check_ip(_at(f, raw, i), f"addresses[{j}]", a, family))
    return tuple(out)


def _opt_str(raw: dict, name: str, f: Fields, i: int) -> str:
    v = raw.get(name)
    if v is None:
        return ""
    if v.__class__ is not str:
        _at(f, raw, i).str(name)  # raises, naming the field
    return v


def _endpoint(raw: object, f: Fields, i: int, family: int | None) -> Endpoint:
    if not isinstance(raw, dict):
        f.fail(i, "expected an object")
    addresses = _addresses(raw, f, i, family)
    ready, serving, terminating = True, True, False
    cond = raw.get("conditions")
    if cond is not None:
        cf = Fields(cond, f.ref, (*f._path, i, "conditions"))
        ready = _bool(cf, "ready", True)
        # serving defaults to ready, as kube-proxy reads a nil serving condition.
        serving = _bool(cf, "serving", ready)
        terminating = _bool(cf, "terminating", False)
    hints: tuple[str, ...] = ()
    if raw.get("hints") is not None:
        hf = _at(f, raw, i).obj("hints")
        hints = tuple(z.str("name", required=True) for z in hf.objs("forZones"))
    tr = raw.get("targetRef")
    return Endpoint(
        addresses,
        ready,
        serving,
        terminating,
        _opt_str(raw, "hostname", f, i),
        _opt_str(raw, "nodeName", f, i),
        _opt_str(raw, "zone", f, i),
        hints,
        None if tr is None else _target_ref(tr, _at(f, raw, i), "targetRef"),
    )


def _parts(f: Fields) -> tuple[str | int, ...]:
    return f._path


def parse_endpoint_slice(f: Fields) -> EndpointSlice:
    meta = parse_meta(f, KIND)
    address_type = f.str("addressType", required=True)
    if address_type not in ADDRESS_TYPES:
        f.fail("addressType", f"unsupported value {address_type!r} (one of IPv4, IPv6, FQDN)")
    family = {"IPv4": 4, "IPv6": 6}.get(address_type)
    raw_eps = f.list("endpoints")
    eps_f = _ListFields(f, "endpoints")
    endpoints = tuple(_endpoint(e, eps_f, i, family) for i, e in enumerate(raw_eps))
    return EndpointSlice(
        key=ObjectKey(KIND, meta.namespace, meta.name),
        meta=meta,
        address_type=address_type,
        endpoints=endpoints,
        ports=_ports(f, "ports"),
        service_name=meta.labels.get(SERVICE_NAME_LABEL, ""),
    )


class _ListFields(Fields):
    """A Fields standing on a list, so that errors read ``endpoints[3].addresses``."""

    def __init__(self, parent: Fields, name: str) -> None:
        self.raw = {}
        self.ref = parent.ref
        self._path = (*_parts(parent), name)


def parse_endpoints(f: Fields) -> Endpoints:
    """Mirror a v1 Endpoints object into slices, one per subset and family."""
    meta = parse_meta(f, ENDPOINTS_KIND)
    slices: list[EndpointSlice] = []
    for si, subset in enumerate(f.objs("subsets")):
        ports = _ports(subset, "ports")
        by_family: dict[int, list[Endpoint]] = {4: [], 6: []}
        for field_name, ready in (("addresses", True), ("notReadyAddresses", False)):
            for a in subset.objs(field_name):
                ip = _check_ip(a, "ip", a.raw.get("ip"), None)
                fam = ipaddress.ip_address(ip).version
                by_family[fam].append(
                    Endpoint(
                        addresses=(ip,),
                        ready=ready,
                        serving=ready,
                        terminating=False,
                        hostname=a.str("hostname"),
                        node_name=a.str("nodeName"),
                        target_ref=_target_ref(a.raw.get("targetRef"), a, "targetRef"),
                    )
                )
        for fam, eps in by_family.items():
            if not eps:
                continue
            name = f"{meta.name}-mirror-{si}-ipv{fam}"
            slices.append(
                EndpointSlice(
                    key=ObjectKey(KIND, meta.namespace, name),
                    meta=Meta(
                        name=name,
                        namespace=meta.namespace,
                        resource_version=meta.resource_version,
                        labels={SERVICE_NAME_LABEL: meta.name},
                    ),
                    address_type=f"IPv{fam}",
                    endpoints=tuple(eps),
                    ports=ports,
                    service_name=meta.name,
                )
            )
    return Endpoints(
        key=ObjectKey(ENDPOINTS_KIND, meta.namespace, meta.name), meta=meta, slices=tuple(slices)
    )
