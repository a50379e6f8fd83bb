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
from dataclasses import dataclass

from netplane.model.meta import (
    Fields,
    Meta,
    ObjectKey,
    fast_constructor,
    is_canonical_ipv4,
    own,
    parse_meta,
    shared,
)

KIND = "EndpointSlice"
ENDPOINTS_KIND = "Endpoints"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")
PROTOCOLS = ("TCP", "UDP", "SCTP")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint of a slice; conditions already defaulted as kube-proxy reads them.

    ``targetRef`` is checked but not kept: no data plane reads it, and at
    100k endpoints the pod names it carries cost more than the addresses.
    """

    addresses: tuple[str, ...]
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    hostname: str = ""
    node_name: str = ""
    zone: str = ""
    hints_for_zones: tuple[str, ...] = ()

    @property
    def address(self) -> str:
        """The address the data planes use: the first, as kube-proxy reads it."""
        return self.addresses[0]


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


_IPV4 = is_canonical_ipv4


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
        protocol = p.choice("protocol", PROTOCOLS, "TCP")
        out.append(EndpointPort(p.str("name"), protocol, port, p.str("appProtocol")))
    return tuple(out)


def _is_target_ref(raw: object) -> bool:
    """The common case: a mapping whose kind, namespace and name are strings when present."""
    if raw.__class__ is not dict:
        return False
    get = raw.get
    return (
        get("kind", "").__class__ is str
        and get("namespace", "").__class__ is str
        and get("name", "").__class__ is str
    )


def _check_target_ref(raw: object, f: Fields, name: str) -> None:
    """Raise, naming the field, when ``targetRef`` is not a reference."""
    if raw is None or _is_target_ref(raw):
        return
    tr = f.obj(name)
    for field_name in ("kind", "namespace", "name"):
        tr.str(field_name)


def _at(f: Fields, raw: object, i: int) -> Fields:
    """The Fields of ``endpoints[i]``, built only to read a rare field or report an error."""
    return Fields(raw, f.ref, (*f._path, i))


def _addresses(raw: dict, f: Fields, i: int, family: int | None) -> tuple[str, ...]:
    addrs = raw.get("addresses")
    if addrs.__class__ is not list or not addrs:
        _at(f, raw, i).fail("addresses", "at least one address is required")
    if family == 4:
        for a in addrs:
            if a.__class__ is not str or _IPV4(a) is None:
                break
        else:
            return tuple([own(a) for a in addrs])
    out = []
    for j, a in enumerate(addrs):
        if not isinstance(a, str):
            _at(f, raw, i).fail(f"addresses[{j}]", "expected a string")
        if family is None:
            if not a:
                _at(f, raw, i).fail(f"addresses[{j}]", "expected a host name")
            out.append(own(a))
        else:
            out.append(_check_ip(_at(f, raw, i), f"addresses[{j}]", a, family))
    return tuple(out)


def _opt_str(raw: dict, name: str, f: Fields, i: int) -> str:
    v = raw.get(name)
    if v is None:
        return ""
    if v.__class__ is not str:
        _at(f, raw, i).str(name)  # raises, naming the field
    return shared(v)


def _conditions(cond: object, f: Fields, i: int) -> tuple[bool, bool, bool]:
    """(ready, serving, terminating), defaulted as kube-proxy reads nil conditions."""
    if cond.__class__ is dict:
        ready = cond.get("ready")
        serving = cond.get("serving")
        terminating = cond.get("terminating")
        if ready is None:
            ready = True
        if serving is None:
            # serving defaults to ready, as kube-proxy reads a nil serving condition.
            serving = ready
        if terminating is None:
            terminating = False
        if ready.__class__ is bool and serving.__class__ is bool and terminating.__class__ is bool:
            return ready, serving, terminating
    # Slow path, only to name what is wrong.
    cf = Fields(cond, f.ref, (*f._path, i, "conditions"))
    for name in ("ready", "serving", "terminating"):
        _bool(cf, name, False)
    raise AssertionError("unreachable")  # pragma: no cover


def _endpoint(raw: object, f: Fields, i: int, family: int | None) -> Endpoint:
    if raw.__class__ is not dict and not isinstance(raw, dict):
        f.fail(i, "expected an object")
    get = raw.get
    addresses = _addresses(raw, f, i, family)
    cond = get("conditions")
    if cond is None:
        ready, serving, terminating = True, True, False
    else:
        ready, serving, terminating = _conditions(cond, f, i)
    hints: tuple[str, ...] = ()
    if get("hints") is not None:
        hf = _at(f, raw, i).obj("hints")
        hints = tuple(z.str("name", required=True) for z in hf.objs("forZones"))
    hostname, node_name, zone = get("hostname", ""), get("nodeName", ""), get("zone", "")
    if hostname.__class__ is not str or node_name.__class__ is not str or zone.__class__ is not str:
        hostname = _opt_str(raw, "hostname", f, i)
        node_name = _opt_str(raw, "nodeName", f, i)
        zone = _opt_str(raw, "zone", f, i)
    tr = get("targetRef")
    if tr is not None and not _is_target_ref(tr):
        _check_target_ref(tr, _at(f, raw, i), "targetRef")
    return _make_endpoint(
        addresses,
        ready,
        serving,
        terminating,
        own(hostname),
        shared(node_name),
        shared(zone),
        hints,
    )


def _endpoints(raw_eps: list, f: Fields, family: int | None) -> tuple[Endpoint, ...]:
    """Every endpoint of a slice; the hot loop at 100k endpoints.

    The common shape (one canonical IPv4 address, boolean conditions,
    string fields, a targetRef of strings, no hints) is read inline; any
    other endpoint goes through :func:`_endpoint`, which reads every case and
    names the field in its errors.
    """
    out: list[Endpoint] = []
    append = out.append
    make, is_ref, ipv4 = _make_endpoint, _is_target_ref, _IPV4
    # Whatever the document holds, until the check below finds three booleans.
    ready: object
    serving: object
    terminating: object
    for i, raw in enumerate(raw_eps):
        if raw.__class__ is dict and family == 4:
            get = raw.get
            addrs = get("addresses")
            cond = get("conditions")
            tr = get("targetRef")
            hostname, node_name, zone = get("hostname", ""), get("nodeName", ""), get("zone", "")
            if (
                addrs.__class__ is list
                and len(addrs) == 1
                and (a := addrs[0]).__class__ is str
                and ipv4(a) is not None
                and get("hints") is None
                and hostname.__class__ is str
                and node_name.__class__ is str
                and zone.__class__ is str
            ):
                if cond is None:
                    ready, serving, terminating = True, True, False
                elif cond.__class__ is dict:
                    ready = cond.get("ready")
                    if ready is None:
                        ready = True
                    serving = cond.get("serving")
                    if serving is None:
                        serving = ready
                    terminating = cond.get("terminating")
                    if terminating is None:
                        terminating = False
                else:
                    ready = None
                # Node and zone repeat across 100k endpoints; the
                # JSON decoder makes a new string for each occurrence, so share them.
                node_name, zone = shared(node_name), shared(zone)
                if (
                    ready.__class__ is bool
                    and serving.__class__ is bool
                    and terminating.__class__ is bool
                    and (tr is None or is_ref(tr))
                ):
                    hostname = own(hostname)
                    append(
                        make(
                            # canonical IPv4 has no letters: lower() is a copy
                            (a.lower(),),
                            ready,
                            serving,
                            terminating,
                            hostname,
                            node_name,
                            zone,
                            (),
                        )
                    )
                    continue
        append(_endpoint(raw, f, i, family))
    return tuple(out)


_make_endpoint = fast_constructor(Endpoint)


def _parts(f: Fields) -> tuple[str | int, ...]:
    return f._path


def parse_endpoint_slice(f: Fields) -> EndpointSlice:
    meta = parse_meta(f, KIND)
    address_type = f.choice("addressType", ADDRESS_TYPES, required=True)
    family = {"IPv4": 4, "IPv6": 6}.get(address_type)
    raw_eps = f.list("endpoints")
    eps_f = _ListFields(f, "endpoints")
    endpoints = _endpoints(raw_eps, eps_f, family)
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
                _check_target_ref(a.raw.get("targetRef"), a, "targetRef")
                fam = ipaddress.ip_address(ip).version
                by_family[fam].append(
                    Endpoint(
                        addresses=(ip,),
                        ready=ready,
                        serving=ready,
                        terminating=False,
                        hostname=a.str("hostname"),
                        node_name=a.str("nodeName"),
                    )
                )
        for family, eps in by_family.items():
            if not eps:
                continue
            name = f"{meta.name}-mirror-{si}-ipv{family}"
            slices.append(
                EndpointSlice(
                    key=ObjectKey(KIND, meta.namespace, name),
                    meta=Meta(
                        name=name,
                        namespace=meta.namespace,
                        resource_version=meta.resource_version,
                        labels={SERVICE_NAME_LABEL: meta.name},
                    ),
                    address_type=f"IPv{family}",
                    endpoints=tuple(eps),
                    ports=ports,
                    service_name=meta.name,
                )
            )
    return Endpoints(
        key=ObjectKey(ENDPOINTS_KIND, meta.namespace, meta.name), meta=meta, slices=tuple(slices)
    )
