"""Ingress and IngressClass (networking.k8s.io/v1), complete as the API defines them.

Validation covers what the API server rejects and a user would write by
mistake: a pathType missing or unknown, an Exact/Prefix path not starting
with ``/``, a host that is an IP or has a wildcard anywhere but first, a
backend naming both or neither of service and resource, a service port with
both or neither of name and number.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from netplane.model.meta import Fields, Meta, ObjectKey, is_dns1123_subdomain, parse_meta

KIND = "Ingress"
CLASS_KIND = "IngressClass"
PATH_TYPES = ("Exact", "Prefix", "ImplementationSpecific")
DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"
LEGACY_CLASS_ANNOTATION = "kubernetes.io/ingress.class"


@dataclass(frozen=True, slots=True)
class TypedRef:
    api_group: str
    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class IngressBackend:
    """Exactly one of ``service_name`` and ``resource`` is set."""

    service_name: str = ""
    port_number: int | None = None
    port_name: str = ""
    resource: TypedRef | None = None


@dataclass(frozen=True, slots=True)
class IngressPath:
    path: str
    path_type: str
    backend: IngressBackend


@dataclass(frozen=True, slots=True)
class IngressRule:
    host: str  # "" matches every host
    paths: tuple[IngressPath, ...]


@dataclass(frozen=True, slots=True)
class IngressTLS:
    hosts: tuple[str, ...]
    secret_name: str


@dataclass(frozen=True, slots=True)
class Ingress:
    key: ObjectKey
    meta: Meta
    class_name: str  # spec.ingressClassName, else the legacy annotation, else ""
    default_backend: IngressBackend | None
    rules: tuple[IngressRule, ...]
    tls: tuple[IngressTLS, ...]
    status_ips: tuple[str, ...] = ()
    status_hostnames: tuple[str, ...] = ()

    kind = KIND


@dataclass(frozen=True, slots=True)
class IngressClassParameters:
    api_group: str
    kind: str
    name: str
    namespace: str = ""
    scope: str = "Cluster"


@dataclass(frozen=True, slots=True)
class IngressClass:
    key: ObjectKey
    meta: Meta
    controller: str
    parameters: IngressClassParameters | None = None

    kind = CLASS_KIND

    @property
    def is_default(self) -> bool:
        return self.meta.annotations.get(DEFAULT_CLASS_ANNOTATION, "") == "true"


def _host(f: Fields, name: str, host: str) -> str:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        f.fail(name, f"{host!r} must be a DNS name, not an IP address")
    bare = host[2:] if host.startswith("*.") else host
    if not is_dns1123_subdomain(bare):
        f.fail(name, f"{host!r} is not a valid host (DNS-1123 subdomain, optional leading '*.')")
    return host


def _backend(f: Fields) -> IngressBackend:
    svc = f.opt_obj("service")
    res = f.opt_obj("resource")
    if (svc is None) == (res is None):
        f.fail(None, "exactly one of service and resource is required")
    if res is not None:
        return IngressBackend(
            resource=TypedRef(
                res.str("apiGroup"), res.str("kind", required=True), res.str("name", required=True)
            )
        )
    assert svc is not None
    name = svc.str("name", required=True)
    port = svc.obj("port", required=True)
    number = port.int("number")
    pname = port.str("name")
    if (number is None) == (not pname):
        port.fail(None, "exactly one of name and number is required")
    if number is not None and not 1 <= number <= 65535:
        port.fail("number", f"{number} out of range (1-65535)")
    return IngressBackend(service_name=name, port_number=number, port_name=pname)


def parse_ingress(f: Fields) -> Ingress:
    meta = parse_meta(f, KIND)
    spec = f.obj("spec")
    class_name = spec.str("ingressClassName") or meta.annotations.get(LEGACY_CLASS_ANNOTATION, "")
    db = spec.opt_obj("defaultBackend")
    default_backend = _backend(db) if db is not None else None
    rules = []
    for r in spec.objs("rules"):
        host = r.str("host")
        if host:
            _host(r, "host", host)
        paths = []
        http = r.opt_obj("http")
        if http is not None:
            path_fields = http.objs("paths")
            if not path_fields:
                http.fail("paths", "at least one path is required")
            for p in path_fields:
                path_type = p.choice("pathType", PATH_TYPES, required=True)
                path = p.str("path")
                # Every path must be absolute; only ImplementationSpecific may omit it.
                if (path or path_type != "ImplementationSpecific") and not path.startswith("/"):
                    p.fail("path", f"{path!r} must begin with '/' for pathType {path_type}")
                paths.append(
                    IngressPath(path or "/", path_type, _backend(p.obj("backend", required=True)))
                )
        rules.append(IngressRule(host.lower(), tuple(paths)))
    if not rules and default_backend is None:
        spec.fail(None, "either defaultBackend or rules must be specified")
    tls = []
    for t in spec.objs("tls"):
        hosts = t.strs("hosts")
        for i, h in enumerate(hosts):
            _host(t, f"hosts[{i}]", h)
        tls.append(IngressTLS(tuple(h.lower() for h in hosts), t.str("secretName")))
    lb = f.obj("status").obj("loadBalancer")
    status = lb.objs("ingress")
    return Ingress(
        key=ObjectKey(KIND, meta.namespace, meta.name),
        meta=meta,
        class_name=class_name,
        default_backend=default_backend,
        rules=tuple(rules),
        tls=tuple(tls),
        status_ips=tuple(s.str("ip") for s in status if s.str("ip")),
        status_hostnames=tuple(s.str("hostname") for s in status if s.str("hostname")),
    )


def parse_ingress_class(f: Fields) -> IngressClass:
    meta = parse_meta(f, CLASS_KIND)
    spec = f.obj("spec")
    controller = spec.str("controller", required=True)
    params = spec.opt_obj("parameters")
    parameters = None
    if params is not None:
        scope = params.choice("scope", ("Cluster", "Namespace"), "Cluster")
        parameters = IngressClassParameters(
            api_group=params.str("apiGroup"),
            kind=params.str("kind", required=True),
            name=params.str("name", required=True),
            namespace=params.str("namespace"),
            scope=scope,
        )
    return IngressClass(
        key=ObjectKey(CLASS_KIND, "", meta.name),
        meta=meta,
        controller=controller,
        parameters=parameters,
    )
