"""Gateway API (gateway.networking.k8s.io, standard channel): the kinds netplane implements.

GatewayClass, Gateway, HTTPRoute and GRPCRoute (v1), ReferenceGrant
(v1beta1 and v1), and core/v1 Namespace for ``allowedRoutes`` selectors.

Validation is what the CRDs' schemas and CEL rules reject at the API
server and a manifest could still carry: a listener port out of range,
two listeners of one name, a hostname that is an IP or has a wildcard past
its first label, a filter whose type names no configuration, a timeout that
is not a Gateway API duration. What the schema allows but netplane cannot
serve (a TCP listener, an ExtensionRef filter) parses, and is reported in
the object's status instead, as the specification asks.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from netplane.model.meta import Fields, Meta, ObjectKey, is_dns1123_subdomain, parse_meta

GROUP = "gateway.networking.k8s.io"
V1 = f"{GROUP}/v1"
V1BETA1 = f"{GROUP}/v1beta1"
#: The controllerName of the GatewayClasses netplane owns.
CONTROLLER = "netplane.io/gateway-controller"

GATEWAY_CLASS = "GatewayClass"
GATEWAY = "Gateway"
HTTP_ROUTE = "HTTPRoute"
GRPC_ROUTE = "GRPCRoute"
REFERENCE_GRANT = "ReferenceGrant"
NAMESPACE = "Namespace"

FILTER_TYPES = (
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestRedirect",
    "URLRewrite",
    "RequestMirror",
    "ExtensionRef",
    "CORS",
    "ExternalAuth",
)
# The key of each filter type's configuration in the filter object.
_FILTER_KEYS = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestRedirect": "requestRedirect",
    "URLRewrite": "urlRewrite",
    "RequestMirror": "requestMirror",
    "ExtensionRef": "extensionRef",
    "CORS": "cors",
    "ExternalAuth": "externalAuth",
}
GRPC_FILTER_TYPES = (
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestMirror",
    "ExtensionRef",
)
_DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")
_DURATION_PART = re.compile(r"([0-9]{1,5})(h|ms|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")


# -- shared pieces -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A metav1.LabelSelector: every matchLabels pair and every expression must hold."""

    match_labels: tuple[tuple[str, str], ...] = ()
    #: (key, operator, values) with operator In, NotIn, Exists or DoesNotExist
    expressions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        for k, v in self.match_labels:
            if labels.get(k) != v:
                return False
        for k, op, values in self.expressions:
            have = k in labels
            if op == "In" and (not have or labels[k] not in values):
                return False
            if op == "NotIn" and have and labels[k] in values:
                return False
            if op == "Exists" and not have:
                return False
            if op == "DoesNotExist" and have:
                return False
        return True


def parse_selector(f: Fields) -> LabelSelector:
    exprs = []
    for e in f.objs("matchExpressions"):
        op = e.choice("operator", ("In", "NotIn", "Exists", "DoesNotExist"), required=True)
        values = e.strs("values")
        if op in ("In", "NotIn") and not values:
            e.fail("values", f"required for operator {op}")
        if op in ("Exists", "DoesNotExist") and values:
            e.fail("values", f"must be empty for operator {op}")
        exprs.append((e.str("key", required=True), op, values))
    return LabelSelector(tuple(sorted(f.str_map("matchLabels").items())), tuple(exprs))


@dataclass(frozen=True, slots=True)
class ParentRef:
    """A route's ``parentRefs`` entry: a Gateway, optionally one listener by name or port."""

    group: str
    kind: str
    namespace: str
    name: str
    section_name: str = ""
    port: int | None = None


@dataclass(frozen=True, slots=True)
class BackendRef:
    """A reference to a backend; ``weight`` and ``filters`` only where the API has them."""

    group: str
    kind: str
    name: str
    namespace: str  # filled in: the route's namespace when the ref leaves it out
    port: int | None
    weight: int = 1
    filters: tuple[Filter, ...] = ()


@dataclass(frozen=True, slots=True)
class HeaderModifier:
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PathModifier:
    type: str  # "ReplaceFullPath" | "ReplacePrefixMatch"
    value: str


@dataclass(frozen=True, slots=True)
class RequestRedirect:
    scheme: str = ""
    hostname: str = ""
    path: PathModifier | None = None
    port: int | None = None
    status_code: int = 302


@dataclass(frozen=True, slots=True)
class URLRewrite:
    hostname: str = ""
    path: PathModifier | None = None


@dataclass(frozen=True, slots=True)
class RequestMirror:
    backend: BackendRef
    percent: int | None = None  # None: every request
    fraction: tuple[int, int] | None = None  # (numerator, denominator)


@dataclass(frozen=True, slots=True)
class Filter:
    """One filter; exactly the field its ``type`` names is set."""

    type: str
    header_modifier: HeaderModifier | None = None  # Request- and ResponseHeaderModifier
    redirect: RequestRedirect | None = None
    rewrite: URLRewrite | None = None
    mirror: RequestMirror | None = None
    extension: tuple[str, str, str] | None = None  # (group, kind, name)


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    type: str  # "Exact" | "RegularExpression"
    name: str  # as written; compared case-insensitively for headers
    value: str


# -- GatewayClass and Gateway ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatewayClass:
    key: ObjectKey
    meta: Meta
    controller: str
    # Compared: a spec change netplane does not model (a description) still bumps the
    # generation, and the status must then carry the new observedGeneration.
    generation: int = 0
    status: Any = field(default=None, compare=False)  # the raw status, for the status writer

    kind = GATEWAY_CLASS


@dataclass(frozen=True, slots=True)
class CertificateRef:
    group: str
    kind: str
    name: str
    namespace: str  # filled in: the Gateway's namespace when the ref leaves it out


@dataclass(frozen=True, slots=True)
class RouteKind:
    group: str
    kind: str


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    port: int
    protocol: str
    hostname: str = ""  # "" matches every host
    tls_mode: str = ""  # "Terminate" | "Passthrough" ("" without a tls block)
    certificate_refs: tuple[CertificateRef, ...] = ()
    namespaces_from: str = "Same"  # "Same" | "All" | "Selector"
    namespace_selector: LabelSelector | None = None
    kinds: tuple[RouteKind, ...] = ()  # () : the protocol's default kinds


@dataclass(frozen=True, slots=True)
class Gateway:
    key: ObjectKey
    meta: Meta
    class_name: str
    listeners: tuple[Listener, ...]
    addresses: tuple[tuple[str, str], ...] = ()  # (type, value)
    generation: int = 0  # compared, as GatewayClass.generation
    status: Any = field(default=None, compare=False)

    kind = GATEWAY


# -- routes --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HTTPRouteMatch:
    path_type: str = "PathPrefix"  # "Exact" | "PathPrefix" | "RegularExpression"
    path: str = "/"
    headers: tuple[HeaderMatch, ...] = ()
    query: tuple[HeaderMatch, ...] = ()
    method: str = ""


@dataclass(frozen=True, slots=True)
class HTTPRouteRule:
    matches: tuple[HTTPRouteMatch, ...]
    filters: tuple[Filter, ...] = ()
    backends: tuple[BackendRef, ...] = ()
    request_timeout: float | None = None  # timeouts.request (0: none)
    backend_timeout: float | None = None  # timeouts.backendRequest (0: none)
    name: str = ""


@dataclass(frozen=True, slots=True)
class GRPCMethodMatch:
    type: str = "Exact"  # "Exact" | "RegularExpression"
    service: str = ""  # "" matches every service
    method: str = ""  # "" matches every method


@dataclass(frozen=True, slots=True)
class GRPCRouteMatch:
    method: GRPCMethodMatch | None = None
    headers: tuple[HeaderMatch, ...] = ()


@dataclass(frozen=True, slots=True)
class GRPCRouteRule:
    matches: tuple[GRPCRouteMatch, ...]
    filters: tuple[Filter, ...] = ()
    backends: tuple[BackendRef, ...] = ()
    name: str = ""


@dataclass(frozen=True, slots=True)
class HTTPRoute:
    key: ObjectKey
    meta: Meta
    parents: tuple[ParentRef, ...]
    hostnames: tuple[str, ...]
    rules: tuple[HTTPRouteRule, ...]
    generation: int = 0  # compared, as GatewayClass.generation
    status: Any = field(default=None, compare=False)

    kind = HTTP_ROUTE


@dataclass(frozen=True, slots=True)
class GRPCRoute:
    key: ObjectKey
    meta: Meta
    parents: tuple[ParentRef, ...]
    hostnames: tuple[str, ...]
    rules: tuple[GRPCRouteRule, ...]
    generation: int = 0  # compared, as GatewayClass.generation
    status: Any = field(default=None, compare=False)

    kind = GRPC_ROUTE


Route = HTTPRoute | GRPCRoute


# -- ReferenceGrant and Namespace ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class GrantFrom:
    group: str
    kind: str
    namespace: str


@dataclass(frozen=True, slots=True)
class GrantTo:
    group: str
    kind: str
    name: str = ""  # "" : every object of the kind


@dataclass(frozen=True, slots=True)
class ReferenceGrant:
    key: ObjectKey
    meta: Meta
    sources: tuple[GrantFrom, ...]
    targets: tuple[GrantTo, ...]

    kind = REFERENCE_GRANT

    def allows(self, group: str, kind: str, namespace: str, to_group: str, to_kind: str,
               to_name: str) -> bool:  # fmt: skip
        """A reference from a ``kind`` object in ``namespace`` to this namespace's object."""
        return any(
            f.group == group and f.kind == kind and f.namespace == namespace for f in self.sources
        ) and any(
            t.group == to_group and t.kind == to_kind and (not t.name or t.name == to_name)
            for t in self.targets
        )


@dataclass(frozen=True, slots=True)
class Namespace:
    key: ObjectKey
    meta: Meta

    kind = NAMESPACE


# -- parsing -----------------------------------------------------------------------


def parse_duration(f: Fields, name: str) -> float | None:
    """A Gateway API Duration (``1h``, ``500ms``, ``1m30s``) in seconds; None when absent."""
    text = f.str(name)
    if not text:
        return None
    if not _DURATION.match(text):
        f.fail(name, f"{text!r} is not a duration (like 10s, 500ms or 1m30s)")
    return sum(int(n) * _UNIT[u] for n, u in _DURATION_PART.findall(text))


def _hostname(f: Fields, name: str, host: str) -> str:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        f.fail(name, f"{host!r} must be a DNS name, not an IP address")
    bare = host[2:] if host.startswith("*.") else host
    if not is_dns1123_subdomain(bare.lower()):
        f.fail(
            name, f"{host!r} is not a valid hostname (DNS-1123 subdomain, optional leading '*.')"
        )
    return host.lower()


def _precise_hostname(f: Fields) -> str:
    """A filter's ``hostname``: a name, never a wildcard (it ends up in Host or Location)."""
    hostname = f.str("hostname")
    if hostname.startswith("*"):
        f.fail("hostname", f"{hostname!r} must not be a wildcard")
    return _hostname(f, "hostname", hostname) if hostname else ""


def _port(f: Fields, name: str, *, required: bool = False) -> int | None:
    port = f.int(name, required=required)
    if port is not None and not 1 <= port <= 65535:
        f.fail(name, f"{port} out of range (1-65535)")
    return port


def _generation(f: Fields) -> int:
    return f.obj("metadata").int("generation") or 0


def _status(f: Fields) -> Any:
    status = f.raw.get("status")
    return status if isinstance(status, dict) else None


def parse_gateway_class(f: Fields) -> GatewayClass:
    meta = parse_meta(f, GATEWAY_CLASS)
    spec = f.obj("spec", required=True)
    return GatewayClass(
        key=ObjectKey(GATEWAY_CLASS, "", meta.name),
        meta=meta,
        controller=spec.str("controllerName", required=True),
        generation=_generation(f),
        status=_status(f),
    )


def parse_gateway(f: Fields) -> Gateway:
    meta = parse_meta(f, GATEWAY)
    spec = f.obj("spec", required=True)
    listeners = []
    names: set[str] = set()
    listener_fields = spec.objs("listeners")
    if not listener_fields:
        spec.fail("listeners", "at least one listener is required")
    for lf in listener_fields:
        name = lf.str("name", required=True)
        if name in names:
            lf.fail("name", f"{name!r} is used by another listener; listener names must be unique")
        names.add(name)
        hostname = lf.str("hostname")
        if hostname:
            hostname = _hostname(lf, "hostname", hostname)
        port = _port(lf, "port", required=True)
        assert port is not None
        protocol = lf.str("protocol", required=True)
        tls = lf.opt_obj("tls")
        mode = ""
        certs: list[CertificateRef] = []
        if tls is not None and protocol in ("HTTP", "TCP", "UDP"):
            lf.fail("tls", f"must not be set for protocol {protocol}")
        if tls is not None:
            mode = tls.choice("mode", ("Terminate", "Passthrough"), "Terminate")
            for c in tls.objs("certificateRefs"):
                certs.append(
                    CertificateRef(
                        c.str("group"),
                        c.str("kind", "Secret"),
                        c.str("name", required=True),
                        c.str("namespace") or meta.namespace,
                    )
                )
        elif protocol in ("HTTPS", "TLS"):
            lf.fail("tls", f"required for protocol {protocol}")
        if mode == "Terminate" and not certs:
            lf.fail("tls.certificateRefs", "required when the TLS mode is Terminate")
        allowed = lf.obj("allowedRoutes")
        ns = allowed.obj("namespaces")
        ns_from = ns.choice("from", ("All", "Same", "Selector"), "Same")
        selector = None
        if ns_from == "Selector":
            sel = ns.opt_obj("selector")
            if sel is None:
                ns.fail("selector", "required when from is Selector")
            selector = parse_selector(sel)
        kinds = tuple(
            RouteKind(k.str("group", GROUP), k.str("kind", required=True))
            for k in allowed.objs("kinds")
        )
        listeners.append(
            Listener(name, port, protocol, hostname, mode, tuple(certs), ns_from, selector, kinds)
        )
    addresses = []
    for a in spec.objs("addresses"):
        addresses.append((a.str("type", "IPAddress"), a.str("value", required=True)))
    return Gateway(
        key=ObjectKey(GATEWAY, meta.namespace, meta.name),
        meta=meta,
        class_name=spec.str("gatewayClassName", required=True),
        listeners=tuple(listeners),
        addresses=tuple(addresses),
        generation=_generation(f),
        status=_status(f),
    )


def _parent_refs(spec: Fields, namespace: str) -> tuple[ParentRef, ...]:
    out = []
    for p in spec.objs("parentRefs"):
        out.append(
            ParentRef(
                p.str("group", GROUP),
                p.str("kind", GATEWAY),
                p.str("namespace") or namespace,
                p.str("name", required=True),
                p.str("sectionName"),
                _port(p, "port"),
            )
        )
    return tuple(out)


def _backend_ref(b: Fields, namespace: str, *, weighted: bool, grpc: bool) -> BackendRef:
    group = b.str("group")
    kind = b.str("kind", "Service")
    port = _port(b, "port")
    if group == "" and kind == "Service" and port is None:
        b.fail("port", "required when the backend is a Service")
    weight = 1
    filters: tuple[Filter, ...] = ()
    if weighted:
        w = b.int("weight", 1)
        assert w is not None
        if not 0 <= w <= 1_000_000:
            b.fail("weight", f"{w} out of range (0-1000000)")
        weight = w
        filters = tuple(_filter(x, namespace, grpc=grpc) for x in b.objs("filters"))
    return BackendRef(
        group, kind, b.str("name", required=True), b.str("namespace") or namespace, port, weight,
        filters,
    )  # fmt: skip


def _pairs(f: Fields, name: str) -> tuple[tuple[str, str], ...]:
    out = []
    seen: set[str] = set()
    for h in f.objs(name):
        n = h.str("name", required=True)
        if not _HEADER_NAME.match(n):
            h.fail("name", f"{n!r} is not a valid header name")
        if n.lower() in seen:
            h.fail("name", f"{n!r} appears twice")
        seen.add(n.lower())
        out.append((n, h.str("value", required=True)))
    return tuple(out)


def _header_modifier(f: Fields) -> HeaderModifier:
    remove = f.strs("remove")
    for i, n in enumerate(remove):
        if not _HEADER_NAME.match(n):
            f.fail(f"remove[{i}]", f"{n!r} is not a valid header name")
    return HeaderModifier(_pairs(f, "set"), _pairs(f, "add"), remove)


def _path_modifier(f: Fields | None) -> PathModifier | None:
    if f is None:
        return None
    t = f.choice("type", ("ReplaceFullPath", "ReplacePrefixMatch"), required=True)
    key, other = ("replaceFullPath", "replacePrefixMatch")
    if t != "ReplaceFullPath":
        key, other = other, key
    if f.has(other):
        f.fail(other, f"must not be set for type {t}")
    value = f.str(key)
    if not f.has(key):
        f.fail(key, f"required for type {t}")
    # An empty replacePrefixMatch is valid: it strips the prefix (the API's table:
    # /foo/bar with prefix /foo becomes /bar).
    if not value.startswith("/") and not (t == "ReplacePrefixMatch" and value == ""):
        f.fail(key, f"{value!r} must begin with '/'")
    return PathModifier(t, value)


def _filter(f: Fields, namespace: str, *, grpc: bool = False) -> Filter:
    types = GRPC_FILTER_TYPES if grpc else FILTER_TYPES
    t = f.choice("type", types, required=True)
    for other, key in _FILTER_KEYS.items():
        if other != t and f.has(key):
            f.fail(key, f"must not be set for a filter of type {t}")
    key = _FILTER_KEYS[t]
    if t not in ("CORS", "ExternalAuth") and not f.has(key):
        f.fail(key, f"required for a filter of type {t}")
    c = f.obj(key)
    if t in ("RequestHeaderModifier", "ResponseHeaderModifier"):
        return Filter(t, header_modifier=_header_modifier(c))
    if t == "RequestRedirect":
        status = c.int("statusCode", 302)
        assert status is not None
        if status not in (301, 302, 303, 307, 308):
            c.fail("statusCode", f"{status} is not a redirect status (301, 302, 303, 307, 308)")
        hostname = _precise_hostname(c)
        return Filter(
            t,
            redirect=RequestRedirect(
                c.choice("scheme", ("", "http", "https")),
                hostname,
                _path_modifier(c.opt_obj("path")),
                _port(c, "port"),
                status,
            ),
        )
    if t == "URLRewrite":
        hostname = _precise_hostname(c)
        return Filter(t, rewrite=URLRewrite(hostname, _path_modifier(c.opt_obj("path"))))
    if t == "RequestMirror":
        percent = c.int("percent")
        if percent is not None and not 0 <= percent <= 100:
            c.fail("percent", f"{percent} out of range (0-100)")
        fraction = None
        fr = c.opt_obj("fraction")
        if fr is not None:
            num = fr.int("numerator", required=True)
            den = fr.int("denominator", 100)
            assert num is not None and den is not None
            if den < 1 or not 0 <= num <= den:
                fr.fail(None, "needs 0 <= numerator <= denominator and denominator >= 1")
            fraction = (num, den)
        if percent is not None and fraction is not None:
            c.fail(None, "percent and fraction must not both be set")
        backend = _backend_ref(c.obj("backendRef", required=True), namespace, weighted=False,
                               grpc=grpc)  # fmt: skip
        return Filter(t, mirror=RequestMirror(backend, percent, fraction))
    if t == "ExtensionRef":
        return Filter(
            t,
            extension=(c.str("group"), c.str("kind", required=True), c.str("name", required=True)),
        )
    return Filter(t)  # CORS, ExternalAuth: reported as unsupported in status


def _check_filters(f: Fields, filters: tuple[Filter, ...]) -> None:
    """The CEL rules on a filter list: some filters may appear once, some not together."""
    counts: dict[str, int] = {}
    for x in filters:
        counts[x.type] = counts.get(x.type, 0) + 1
    for t in ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect", "URLRewrite"):
        if counts.get(t, 0) > 1:
            f.fail("filters", f"{t} may appear only once")
    if counts.get("RequestRedirect") and counts.get("URLRewrite"):
        f.fail("filters", "RequestRedirect and URLRewrite cannot be used together")


def _header_matches(f: Fields, name: str) -> tuple[HeaderMatch, ...]:
    out = []
    seen: set[str] = set()
    for h in f.objs(name):
        t = h.choice("type", ("Exact", "RegularExpression"), "Exact")
        n = h.str("name", required=True)
        key = n.lower() if name == "headers" else n
        if key in seen:
            continue  # the spec: the first match of a name counts, later ones are ignored
        seen.add(key)
        v = h.str("value", required=True)
        if t == "RegularExpression":
            try:
                re.compile(v)
            except re.error as e:
                h.fail("value", f"{v!r} is not a valid regular expression ({e})")
        out.append(HeaderMatch(t, n, v))
    return tuple(out)


def _http_match(m: Fields) -> HTTPRouteMatch:
    p = m.obj("path")
    path_type = p.choice("type", ("Exact", "PathPrefix", "RegularExpression"), "PathPrefix")
    value = p.str("value", "/")
    if path_type != "RegularExpression":
        if not value.startswith("/"):
            p.fail("value", f"{value!r} must begin with '/'")
        if "//" in value or "/./" in value or "/../" in value or value.endswith(("/.", "/..")):
            p.fail("value", f"{value!r} must not contain '//', '/./' or '/../'")
        if "%2f" in value.lower() or "#" in value:
            p.fail("value", f"{value!r} must not contain '%2f' or '#'")
    else:
        try:
            re.compile(value)
        except re.error as e:
            p.fail("value", f"{value!r} is not a valid regular expression ({e})")
    method = m.str("method")
    if method and method not in (
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ):  # fmt: skip
        m.fail("method", f"unsupported value {method!r}")
    return HTTPRouteMatch(
        path_type, value, _header_matches(m, "headers"), _header_matches(m, "queryParams"), method
    )


def _route_parts(f: Fields, spec: Fields, ns: str) -> tuple[tuple[ParentRef, ...], tuple[str, ...]]:
    """What every route kind has before its rules: parentRefs and hostnames."""
    hostnames = tuple(
        _hostname(spec, f"hostnames[{i}]", h) for i, h in enumerate(spec.strs("hostnames"))
    )
    return _parent_refs(spec, ns), hostnames


def _versioned(f: Fields) -> tuple[int, Any]:
    """metadata.generation and the raw status, the last two fields of the status-bearing kinds."""
    return _generation(f), _status(f)


def parse_http_route(f: Fields) -> HTTPRoute:
    meta = parse_meta(f, HTTP_ROUTE)
    spec = f.obj("spec")
    ns = meta.namespace
    rules = []
    for r in spec.objs("rules"):
        matches = tuple(_http_match(m) for m in r.objs("matches")) or (HTTPRouteMatch(),)
        filters = tuple(_filter(x, ns) for x in r.objs("filters"))
        _check_filters(r, filters)
        backends = tuple(
            _backend_ref(b, ns, weighted=True, grpc=False) for b in r.objs("backendRefs")
        )
        for i, b in enumerate(backends):
            _check_filters(r.objs("backendRefs")[i], b.filters)
        for x in filters:
            if x.type == "RequestRedirect" and backends:
                r.fail("backendRefs", "must be empty with a RequestRedirect filter")
            mod = x.redirect or x.rewrite
            prefix_mod = (
                mod is not None and mod.path is not None and mod.path.type == "ReplacePrefixMatch"
            )
            if prefix_mod and (len(matches) != 1 or matches[0].path_type != "PathPrefix"):
                r.fail(
                    "filters",
                    "ReplacePrefixMatch needs exactly one match, and its path a PathPrefix",
                )
        t = r.obj("timeouts")
        request = parse_duration(t, "request")
        backend = parse_duration(t, "backendRequest")
        if request and backend and backend > request:
            t.fail("backendRequest", "must not be longer than request")
        rules.append(HTTPRouteRule(matches, filters, backends, request, backend, r.str("name")))
    if not rules:
        rules.append(HTTPRouteRule((HTTPRouteMatch(),)))
    return HTTPRoute(
        ObjectKey(HTTP_ROUTE, ns, meta.name), meta, *_route_parts(f, spec, ns), tuple(rules),
        *_versioned(f),
    )  # fmt: skip


def parse_grpc_route(f: Fields) -> GRPCRoute:
    meta = parse_meta(f, GRPC_ROUTE)
    spec = f.obj("spec")
    ns = meta.namespace
    rules = []
    for r in spec.objs("rules"):
        matches = []
        for m in r.objs("matches"):
            method = None
            mf = m.opt_obj("method")
            if mf is not None:
                t = mf.choice("type", ("Exact", "RegularExpression"), "Exact")
                service, name = mf.str("service"), mf.str("method")
                if not service and not name:
                    mf.fail(None, "one or both of service and method must be set")
                if t == "RegularExpression":
                    for k, v in (("service", service), ("method", name)):
                        try:
                            re.compile(v)
                        except re.error as e:
                            mf.fail(k, f"{v!r} is not a valid regular expression ({e})")
                elif "/" in service or "/" in name:
                    mf.fail(None, "an Exact service or method must not contain '/'")
                method = GRPCMethodMatch(t, service, name)
            matches.append(GRPCRouteMatch(method, _header_matches(m, "headers")))
        filters = tuple(_filter(x, ns, grpc=True) for x in r.objs("filters"))
        _check_filters(r, filters)
        backends = tuple(
            _backend_ref(b, ns, weighted=True, grpc=True) for b in r.objs("backendRefs")
        )
        rules.append(
            GRPCRouteRule(tuple(matches) or (GRPCRouteMatch(),), filters, backends, r.str("name"))
        )
    if not rules:
        rules.append(GRPCRouteRule((GRPCRouteMatch(),)))
    return GRPCRoute(
        ObjectKey(GRPC_ROUTE, ns, meta.name), meta, *_route_parts(f, spec, ns), tuple(rules),
        *_versioned(f),
    )  # fmt: skip


def parse_reference_grant(f: Fields) -> ReferenceGrant:
    meta = parse_meta(f, REFERENCE_GRANT)
    spec = f.obj("spec", required=True)
    sources = tuple(
        GrantFrom(s.str("group"), s.str("kind", required=True), s.str("namespace", required=True))
        for s in spec.objs("from")
    )
    targets = tuple(
        GrantTo(t.str("group"), t.str("kind", required=True), t.str("name"))
        for t in spec.objs("to")
    )
    if not sources:
        spec.fail("from", "at least one entry is required")
    if not targets:
        spec.fail("to", "at least one entry is required")
    return ReferenceGrant(
        ObjectKey(REFERENCE_GRANT, meta.namespace, meta.name), meta, sources, targets
    )


def parse_namespace(f: Fields) -> Namespace:
    meta = parse_meta(f, NAMESPACE)
    return Namespace(ObjectKey(NAMESPACE, "", meta.name), meta)
