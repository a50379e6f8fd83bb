"""Which Gateway listeners serve, which routes attach to them, and the status of each (sans-IO).

:func:`attach` reads the cluster state and returns a :class:`GatewayWorld`:
the sockets to open (one per address and port), the listeners each one
serves with the routes attached to them, and the status netplane reports for
every object it owns (GatewayClasses whose ``controllerName`` is ours, their
Gateways, and the parents of routes that name those Gateways). The route
table compiles the sockets into matchers; the status writer and
``/debug/state`` read the statuses. Both call this one function, so what is
served and what is reported cannot differ.

Rules, from the Gateway API specification:

- A listener is served when its protocol is HTTP or HTTPS (TLS mode
  Terminate). Other protocols are ``Accepted: False, UnsupportedProtocol``.
- Listeners on one port share a socket. A listener whose protocol differs
  from the port's first listener (the oldest Gateway's, then spec order) is
  ``Conflicted: ProtocolConflict``; one whose hostname another listener on
  the port already has is ``Conflicted: HostnameConflict``. Neither is served.
- An HTTPS listener serves the certificates of its ``certificateRefs`` that
  resolve: a kubernetes.io/tls Secret, in another namespace only with a
  ReferenceGrant. Any that does not makes ``ResolvedRefs: False``; with none
  left the listener is not programmed.
- A route attaches to a parent's listeners that its ``sectionName`` and
  ``port`` select, whose ``allowedRoutes`` admit its kind and namespace, and
  whose hostname intersects the route's ``hostnames``; the reason it attaches
  to none is, in that order, ``NoMatchingParent``, ``NotAllowedByListeners``
  or ``NoMatchingListenerHostname``.
- A backendRef that is not a core Service is ``InvalidKind``, one in another
  namespace without a ReferenceGrant ``RefNotPermitted``, a missing Service
  ``BackendNotFound``; the route still attaches, and that share of its
  traffic is answered 500 (503 on a GRPCRoute, which gRPC clients see as
  UNAVAILABLE, as the specification asks).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from netplane.model import ObjectKey, Secret
from netplane.model.gateway import (
    CONTROLLER,
    GATEWAY,
    GROUP,
    GRPC_ROUTE,
    HTTP_ROUTE,
    BackendRef,
    Gateway,
    GatewayClass,
    GRPCRoute,
    GRPCRouteRule,
    HTTPRoute,
    HTTPRouteRule,
    Listener,
    ParentRef,
    ReferenceGrant,
    Route,
    RouteKind,
)
from netplane.state import ClusterState

SUPPORTED_PROTOCOLS = ("HTTP", "HTTPS")
ROUTE_KINDS = (HTTP_ROUTE, GRPC_ROUTE)
#: filter types netplane serves; a rule with another one is answered 500
SERVED_FILTERS = frozenset(
    (
        "RequestHeaderModifier",
        "ResponseHeaderModifier",
        "RequestRedirect",
        "URLRewrite",
        "RequestMirror",
    )
)


def condition(type_: str, ok: bool, reason: str, message: str, generation: int) -> dict[str, Any]:
    """One status condition (``lastTransitionTime`` is the writer's to set)."""
    return {
        "type": type_,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


def _age(obj: Any) -> tuple[str, str, str]:
    return (obj.meta.creation_timestamp, obj.key.namespace, obj.key.name)


# -- hostnames -----------------------------------------------------------------------


def within(pattern: str, host: str) -> bool:
    """``host`` (a name or a ``*.`` wildcard) is covered by ``pattern`` ("" covers all)."""
    if not pattern or pattern == host:
        return True
    if pattern.startswith("*."):
        suffix = pattern[1:]  # ".example.com"
        if host.startswith("*."):
            return len(host) > len(pattern) and host[1:].endswith(suffix)
        return len(host) > len(suffix) and host.endswith(suffix)
    return False


def intersect(listener: str, route: tuple[str, ...]) -> tuple[str, ...]:
    """The hostnames a route serves on a listener ("" for any); () when they do not meet."""
    if not route:
        return (listener,)
    if not listener:
        return route
    out: list[str] = []
    for h in route:
        if within(listener, h):
            out.append(h)
        elif within(h, listener):
            out.append(listener)
    return tuple(dict.fromkeys(out))


# -- results -------------------------------------------------------------------------


@dataclass(slots=True)
class Attachment:
    """A route on one listener: the hostnames it serves there."""

    route: HTTPRoute | GRPCRoute
    hostnames: tuple[str, ...]


@dataclass(slots=True)
class ServedListener:
    """A listener that serves, with its certificates (HTTPS) and attached routes."""

    gateway: Gateway
    listener: Listener
    certificates: tuple[Secret, ...] = ()
    routes: list[Attachment] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.gateway.key.namespace}/{self.gateway.key.name}/{self.listener.name}"


@dataclass(slots=True)
class Socket:
    """One address and port: its protocol and the listeners sharing it."""

    address: str
    port: int
    protocol: str
    listeners: list[ServedListener] = field(default_factory=list)


@dataclass(slots=True)
class GatewayWorld:
    """The result of :func:`attach`."""

    sockets: dict[tuple[str, int], Socket] = field(default_factory=dict)
    #: the status netplane owns, per object: GatewayClass and Gateway ``status``
    #: (conditions, listeners, addresses); routes ``{"parents": [ours]}``
    statuses: dict[ObjectKey, dict[str, Any]] = field(default_factory=dict)
    #: the resolution of each route's backendRefs: (route, rule, backend) -> reason or ""
    backend_errors: dict[tuple[ObjectKey, int, int], str] = field(default_factory=dict)
    #: mirror backendRefs that resolve: (route, rule, filter index) -> reason or ""
    mirror_errors: dict[tuple[ObjectKey, int, int], str] = field(default_factory=dict)
    #: one line per thing ignored or refused, for the log and /debug/state
    problems: list[str] = field(default_factory=list)
    #: the Services any route names (namespace, name), so a change to others can be skipped
    services: set[tuple[str, str]] = field(default_factory=set)

    def listeners(self) -> Iterable[ServedListener]:
        for s in self.sockets.values():
            yield from s.listeners


@dataclass(slots=True)
class _ListenerState:
    """What :func:`attach` learns about one listener on its way to the listener's status."""

    accepted: tuple[str, str] = ("Accepted", "")  # (reason, why not; "" when accepted)
    resolved: tuple[str, str] = ("ResolvedRefs", "")  # (reason, why not)
    conflicted: tuple[str, str] | None = None  # (reason, why)
    kinds: list[str] = field(default_factory=list)  # the route kinds it admits
    attached: int = 0  # routes attached (the status's attachedRoutes)
    served: ServedListener | None = None  # set once it is given a socket
    certs: tuple[Secret, ...] = ()  # the certificates that resolved (HTTPS)


# -- references ----------------------------------------------------------------------


class _Grants:
    def __init__(self, grants: Iterable[ReferenceGrant]) -> None:
        self._by_ns: dict[str, list[ReferenceGrant]] = {}
        for g in grants:
            self._by_ns.setdefault(g.key.namespace, []).append(g)

    def allowed(
        self, kind: str, namespace: str, to_group: str, to_kind: str, to_ns: str, to_name: str
    ) -> bool:
        if namespace == to_ns:
            return True
        return any(
            g.allows(GROUP, kind, namespace, to_group, to_kind, to_name)
            for g in self._by_ns.get(to_ns, ())
        )


def _core(group: str) -> bool:
    return group in ("", "core")


def backend_error(state: ClusterState, grants: _Grants, route: Route, ref: BackendRef) -> str:
    """Why a backendRef does not resolve ("" when it does), as a ResolvedRefs reason."""
    if not _core(ref.group) or ref.kind != "Service":
        return "InvalidKind"
    if not grants.allowed(route.kind, route.key.namespace, "", "Service", ref.namespace, ref.name):
        return "RefNotPermitted"
    svc = state.service(ref.namespace, ref.name)
    if svc is None:
        return "BackendNotFound"
    if ref.port is not None and not any(p.port == ref.port for p in svc.ports):
        return "BackendNotFound"
    return ""


_MESSAGES = {
    "InvalidKind": "a backendRef names a kind other than a core Service",
    "RefNotPermitted": "a backendRef in another namespace has no ReferenceGrant allowing it",
    "BackendNotFound": "a backendRef names a Service or port that does not exist",
}


# -- the build -----------------------------------------------------------------------


def attach(
    state: ClusterState,
    *,
    controller: str = CONTROLLER,
    default_addresses: tuple[str, ...] = ("127.0.0.1",),
    unavailable: Mapping[tuple[str, int], str] | None = None,
    check_certificate: Callable[[Secret], str] | None = None,
) -> GatewayWorld:
    """Listeners, attachments and statuses from ``state`` (see the module docstring).

    ``unavailable``: sockets that could not be opened, (address, port) ->
    why; their listeners report it. ``check_certificate``: "" when a Secret's
    pair can serve, else why not (the plane passes the certificate loader).
    """
    world = GatewayWorld()
    unavailable = unavailable or {}
    grants = _Grants(state.objects("ReferenceGrant"))
    namespaces = {n.meta.name: n.meta.labels for n in state.objects("Namespace")}

    classes: dict[str, GatewayClass] = {}
    for gc in state.objects("GatewayClass"):
        if gc.controller != controller:
            continue
        classes[gc.meta.name] = gc
        g = gc.generation
        world.statuses[gc.key] = {
            "conditions": [
                condition("Accepted", True, "Accepted", "netplane serves this class", g),
                condition(
                    "SupportedVersion",
                    True,
                    "SupportedVersion",
                    "the standard channel of gateway.networking.k8s.io/v1",
                    g,
                ),
            ]
        }

    gateways = sorted((g for g in state.objects("Gateway") if g.class_name in classes), key=_age)
    by_key = {g.key: g for g in gateways}
    lstate: dict[tuple[ObjectKey, str], _ListenerState] = {}
    ports: dict[tuple[str, int], list[tuple[Gateway, Listener]]] = {}
    gw_addresses: dict[ObjectKey, tuple[str, ...]] = {}

    for gw in gateways:
        addresses, bad = _addresses(gw, default_addresses)
        gw_addresses[gw.key] = addresses
        for li in gw.listeners:
            st = _ListenerState()
            lstate[(gw.key, li.name)] = st
            if bad:
                st.accepted = ("UnsupportedAddress", bad)
                continue
            if li.protocol not in SUPPORTED_PROTOCOLS or li.tls_mode == "Passthrough":
                what = f"TLS mode {li.tls_mode}" if li.tls_mode == "Passthrough" else li.protocol
                st.accepted = (
                    "UnsupportedProtocol",
                    f"{what} listeners are not supported; netplane serves HTTP and HTTPS",
                )
                continue
            st.kinds, invalid = _kinds(li)
            if invalid:
                st.resolved = (
                    "InvalidRouteKinds",
                    f"unsupported route kinds: {', '.join(invalid)}",
                )
            if li.protocol == "HTTPS":
                certs, why = _certificates(state, grants, gw, li, check_certificate)
                st.certs = certs
                if why and st.resolved[0] == "ResolvedRefs":
                    st.resolved = why
            for addr in addresses:
                ports.setdefault((addr, li.port), []).append((gw, li))

    # Sockets, conflicts (first come, first served: the oldest Gateway, then spec order).
    for (addr, port), entries in ports.items():
        why_down = unavailable.get((addr, port))
        sock: Socket | None = None
        hostnames: set[str] = set()
        for gw, li in entries:
            st = lstate[(gw.key, li.name)]
            if st.accepted[1] or (st.conflicted and st.conflicted[0]):
                continue
            if why_down:
                st.accepted = ("PortUnavailable", why_down)
                continue
            if sock is None:
                sock = Socket(addr, port, li.protocol)
            if li.protocol != sock.protocol:
                st.conflicted = (
                    "ProtocolConflict",
                    f"port {port} serves {sock.protocol}; this listener asks for {li.protocol}",
                )
                continue
            if li.hostname in hostnames:
                st.conflicted = (
                    "HostnameConflict",
                    f"another listener on port {port} has hostname {li.hostname or '(any)'}",
                )
                continue
            if li.protocol == "HTTPS" and not st.certs:
                continue  # not programmed: no usable certificate (ResolvedRefs says why)
            hostnames.add(li.hostname)
            served = st.served
            if served is None:
                served = st.served = ServedListener(gw, li, st.certs)
            sock.listeners.append(served)
        if sock is not None and sock.listeners:
            world.sockets[(addr, port)] = sock

    # Routes.
    routes: list[Route] = sorted(
        [*state.objects("HTTPRoute"), *state.objects("GRPCRoute")], key=lambda r: (r.kind, _age(r))
    )
    for route in routes:
        parents: list[dict[str, Any]] = []
        resolved = _resolve_backends(state, grants, route, world)
        for ref in route.parents:
            if ref.group != GROUP or ref.kind != GATEWAY:
                continue
            parent = by_key.get(ObjectKey(GATEWAY, ref.namespace, ref.name))
            if parent is None:
                continue  # not ours, or not there: another controller's to report
            accepted = _attach_route(route, ref, parent, lstate, namespaces)
            parents.append(
                {
                    "parentRef": _ref_dict(ref),
                    "controllerName": controller,
                    "conditions": [
                        condition("Accepted", not accepted[1], *accepted, route.generation)
                        if accepted[1]
                        else condition("Accepted", True, "Accepted", "attached", route.generation),
                        condition(
                            "ResolvedRefs",
                            not resolved[1],
                            resolved[0],
                            resolved[1] or "every backendRef resolves",
                            route.generation,
                        ),
                    ],
                }
            )
            if accepted[1]:
                world.problems.append(f"{route.key}: not attached to {parent.key}: {accepted[1]}")
        if parents:
            world.statuses[route.key] = {"parents": parents}

    # Listener and Gateway statuses.
    for gw in gateways:
        g = gw.generation
        listeners = []
        programmed_any = False
        invalid_any = False
        for li in gw.listeners:
            st = lstate[(gw.key, li.name)]
            reason, msg = st.accepted
            listener_ok = not msg
            conflicted = st.conflicted
            served = st.served
            programmed = served is not None and any(
                served in s.listeners for s in world.sockets.values()
            )
            programmed_any = programmed_any or programmed
            invalid_any = invalid_any or not programmed
            r_reason, r_msg = st.resolved
            if not programmed:
                cause = msg or (conflicted[1] if conflicted else "") or r_msg or "not served"
                world.problems.append(f"{gw.key}: listener {li.name} is not served: {cause}")
            listeners.append(
                {
                    "name": li.name,
                    "supportedKinds": [{"group": GROUP, "kind": k} for k in st.kinds],
                    "attachedRoutes": st.attached,
                    "conditions": [
                        condition("Accepted", listener_ok, reason, msg or "accepted", g),
                        condition(
                            "Programmed",
                            programmed,
                            "Programmed" if programmed else "Invalid",
                            "serving" if programmed else "not served",
                            g,
                        ),
                        condition("ResolvedRefs", not r_msg, r_reason, r_msg or "resolved", g),
                        condition(
                            "Conflicted",
                            conflicted is not None,
                            conflicted[0] if conflicted else "NoConflicts",
                            conflicted[1] if conflicted else "no conflicts",
                            g,
                        ),
                    ],
                }
            )
        addr_bad = any(
            lstate[(gw.key, li.name)].accepted[0] == "UnsupportedAddress" for li in gw.listeners
        )
        if addr_bad:
            accepted_c = condition(
                "Accepted",
                False,
                "UnsupportedAddress",
                "spec.addresses may only hold IPAddress entries with valid IPs",
                g,
            )
        elif invalid_any:
            accepted_c = condition(
                "Accepted",
                programmed_any,
                "ListenersNotValid",
                "some listeners are not served; see their conditions",
                g,
            )
        else:
            accepted_c = condition("Accepted", True, "Accepted", "accepted", g)
        status: dict[str, Any] = {
            "conditions": [
                accepted_c,
                condition(
                    "Programmed",
                    programmed_any,
                    "Programmed" if programmed_any else "Invalid",
                    "serving" if programmed_any else "no listener is served",
                    g,
                ),
            ],
            "listeners": listeners,
        }
        if programmed_any:
            status["addresses"] = [{"type": "IPAddress", "value": a} for a in gw_addresses[gw.key]]
        world.statuses[gw.key] = status
    return world


def _addresses(gw: Gateway, default: tuple[str, ...]) -> tuple[tuple[str, ...], str]:
    """The addresses to bind, and why they are refused ("" when they are not)."""
    out = []
    for type_, value in gw.addresses:
        if type_ != "IPAddress":
            return (), f"address type {type_} is not supported (only IPAddress)"
        try:
            out.append(str(ipaddress.ip_address(value)))
        except ValueError:
            return (), f"{value!r} is not an IP address"
    return tuple(dict.fromkeys(out)) or default, ""


def _kinds(li: Listener) -> tuple[list[str], list[str]]:
    """The route kinds a listener admits, and the ones it names that netplane does not serve."""
    if not li.kinds:
        return list(ROUTE_KINDS), []
    ok: list[str] = []
    bad: list[str] = []
    for k in li.kinds:
        if k.group == GROUP and k.kind in ROUTE_KINDS:
            if k.kind not in ok:
                ok.append(k.kind)
        else:
            bad.append(_kind_text(k))
    return ok, bad


def _kind_text(k: RouteKind) -> str:
    return f"{k.group}/{k.kind}" if k.group else k.kind


def _certificates(
    state: ClusterState,
    grants: _Grants,
    gw: Gateway,
    li: Listener,
    check: Callable[[Secret], str] | None,
) -> tuple[tuple[Secret, ...], tuple[str, str]]:
    """The Secrets an HTTPS listener serves, and the first reason one did not resolve."""
    out: list[Secret] = []
    why: tuple[str, str] = ("", "")
    if not li.certificate_refs:
        why = ("InvalidCertificateRef", "an HTTPS listener needs a certificateRef")
    for ref in li.certificate_refs:
        name = f"{ref.namespace}/{ref.name}"
        reason, msg = "", ""
        if not _core(ref.group) or ref.kind != "Secret":
            reason, msg = "InvalidCertificateRef", f"{ref.kind} {name} is not a Secret"
        elif not grants.allowed(GATEWAY, gw.key.namespace, "", "Secret", ref.namespace, ref.name):
            reason, msg = "RefNotPermitted", f"no ReferenceGrant lets it use Secret {name}"
        else:
            secret = state.secret(ref.namespace, ref.name)
            if secret is None:
                reason = "InvalidCertificateRef"
                msg = f"Secret {name} does not exist or is not a valid kubernetes.io/tls Secret"
            else:
                bad = check(secret) if check is not None else ""
                if bad:
                    reason, msg = "InvalidCertificateRef", f"Secret {name}: {bad}"
                else:
                    out.append(secret)
        if reason and not why[0]:
            why = (reason, msg)
    return tuple(out), why


def _namespace_allowed(
    li: Listener, gw: Gateway, route: Route, namespaces: Mapping[str, Mapping[str, str]]
) -> bool:
    if li.namespaces_from == "All":
        return True
    if li.namespaces_from == "Same":
        return route.key.namespace == gw.key.namespace
    sel = li.namespace_selector
    labels = namespaces.get(route.key.namespace)
    # A namespace netplane has not been told about has no labels to match. The API server
    # gives every Namespace the label kubernetes.io/metadata.name (its name); Namespaces
    # from manifests or the embedding API may lack it, so it is added here.
    if sel is None or labels is None:
        return False
    return sel.matches({**labels, "kubernetes.io/metadata.name": route.key.namespace})


def _attach_route(
    route: Route,
    ref: ParentRef,
    gw: Gateway,
    lstate: dict[tuple[ObjectKey, str], _ListenerState],
    namespaces: Mapping[str, Mapping[str, str]],
) -> tuple[str, str]:
    """Attach ``route`` to the listeners ``ref`` selects; ("", "") or (reason, why not)."""
    candidates = [
        li
        for li in gw.listeners
        if (not ref.section_name or li.name == ref.section_name)
        and (ref.port is None or li.port == ref.port)
    ]
    if not candidates:
        what = []
        if ref.section_name:
            what.append(f"sectionName {ref.section_name}")
        if ref.port is not None:
            what.append(f"port {ref.port}")
        return "NoMatchingParent", f"{gw.key} has no listener with {' and '.join(what)}"
    allowed = [
        li
        for li in candidates
        if route.kind in lstate[(gw.key, li.name)].kinds
        and _namespace_allowed(li, gw, route, namespaces)
    ]
    if not allowed:
        return (
            "NotAllowedByListeners",
            f"no listener of {gw.key} allows a {route.kind} from namespace {route.key.namespace}",
        )
    attached = 0
    for li in allowed:
        hosts = intersect(li.hostname, route.hostnames)
        if not hosts:
            continue
        st = lstate[(gw.key, li.name)]
        st.attached += 1
        attached += 1
        served = st.served
        if served is not None:
            served.routes.append(Attachment(route, hosts))
    if not attached:
        return (
            "NoMatchingListenerHostname",
            "no listener hostname intersects the route's hostnames",
        )
    return "", ""


def _resolve_backends(
    state: ClusterState, grants: _Grants, route: Route, world: GatewayWorld
) -> tuple[str, str]:
    """Record each backendRef's resolution; the route's ResolvedRefs (reason, message)."""
    first = ("ResolvedRefs", "")
    rules: tuple[HTTPRouteRule | GRPCRouteRule, ...] = route.rules
    for ri, rule in enumerate(rules):
        for bi, ref in enumerate(rule.backends):
            err = backend_error(state, grants, route, ref)
            world.backend_errors[(route.key, ri, bi)] = err
            if _core(ref.group) and ref.kind == "Service":
                world.services.add((ref.namespace, ref.name))
            if err and not first[1]:
                first = (err, f"{_MESSAGES[err]}: {ref.namespace}/{ref.name}")
        for fi, flt in enumerate(rule.filters):
            if flt.mirror is not None:
                ref = flt.mirror.backend
                err = backend_error(state, grants, route, ref)
                world.mirror_errors[(route.key, ri, fi)] = err
                world.services.add((ref.namespace, ref.name))
                if err and not first[1]:
                    first = (err, f"{_MESSAGES[err]} (mirror): {ref.namespace}/{ref.name}")
    return first


def _ref_dict(ref: ParentRef) -> dict[str, Any]:
    d: dict[str, Any] = {
        "group": ref.group,
        "kind": ref.kind,
        "namespace": ref.namespace,
        "name": ref.name,
    }
    if ref.section_name:
        d["sectionName"] = ref.section_name
    if ref.port is not None:
        d["port"] = ref.port
    return d
