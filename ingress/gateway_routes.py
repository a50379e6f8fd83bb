"""Routing by Gateway API: HTTPRoute and GRPCRoute rules compiled per socket (sans-IO).

:class:`GatewayRoutes` turns a :class:`~netplane.ingress.gateway_attach.GatewayWorld`
into one :class:`PortRoutes` per socket. A ``PortRoutes`` has the same
``route()`` as the Ingress :class:`~netplane.ingress.routes.RouteTable`, so
the listeners, exchanges, upstream pools, access log and metrics are the
ones Ingress traffic uses; only the decision differs.

A request is matched in three steps, each as the specification orders it:

1. The listener: the Host header's name (port stripped) against the
   listeners sharing the socket, an exact hostname before the longest
   wildcard before a listener without one.
2. The hostname the routes serve there: exact, then the longest wildcard,
   then routes without hostnames. A hostname that matches but whose rules
   do not is a 404; it does not fall through to a wildcard (as one Envoy
   virtual host, or one nginx ``server``).
3. The rule: the candidates whose path matches, in precedence order (an
   Exact path, then the longest PathPrefix, then RegularExpression paths by
   pattern length; on the same path a method match, then more header
   matches, then more query matches, then the older route, then
   namespace/name, then rule and match order); the first whose method,
   headers and query parameters match wins.

Regular expressions (paths, headers, query values, gRPC service and method)
are Python ``re`` patterns matched against the whole value (``fullmatch``),
as Envoy matches RE2 ones. They differ from RE2 where Python's syntax does:
backreferences and lookarounds are accepted, ``\\C`` and RE2's Unicode
class names are not, and matching is not linear-time (netplane bounds the
inputs: header values by the header size limit).

Path candidates per (Host, target) are cached like the Ingress table's
lookups; the method, header and query checks run per request.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from netplane.ingress.gateway_attach import GatewayWorld, Socket
from netplane.ingress.gateway_filters import (
    GatewayExtras,
    HeaderOps,
    redirect_location,
    rewrite_path,
    split_target,
)
from netplane.ingress.paths import prefix_key, request_paths, split_host
from netplane.ingress.routes import (
    BAD_PATH,
    Decision,
    Forward,
    ProxyOptions,
    Redirect,
    Respond,
    _Pool,
)

from netplane.model import ObjectKey
from netplane.model.gateway import (
    BackendRef,
    Filter,
    GRPCRoute,
    GRPCRouteRule,
    HTTPRoute,
    HTTPRouteRule,
)
from netplane.model.meta import fast_constructor
from netplane.service_table import ServiceKey, ServiceTable

log = logging.getLogger("netplane.ingress.gateway")

_forward = fast_constructor(Forward)

NO_ROUTE = Respond(404, b"404 Not Found: no route matches this host and path\n")
_CACHE_MAX_ENTRIES = 8192
_CACHE_MAX_TARGET = 256
_MISS: Any = object()
_REFUSED: Any = object()


def _age(obj: Any) -> tuple[str, str, str]:
    return (obj.meta.creation_timestamp, obj.key.namespace, obj.key.name)


# -- compiled rules ------------------------------------------------------------------


class _Backend:
    __slots__ = ("current", "error", "extras", "h2", "pool", "weight")

    def __init__(self) -> None:
        self.pool: _Pool | None = None
        self.weight = 1
        self.current = 0
        self.error: Respond | None = None
        self.extras: GatewayExtras | None = None
        self.h2 = False


class _Mirror:
    __slots__ = ("acc", "every", "of", "pool")

    def __init__(self, pool: _Pool, every: int, of: int) -> None:
        self.pool = pool
        self.every = every  # mirror `every` out of each `of` requests
        self.of = of
        self.acc = 0

    def wanted(self) -> bool:
        if self.every >= self.of:
            return True
        self.acc += self.every
        if self.acc >= self.of:
            self.acc -= self.of
            return True
        return False


class _Rule:
    """One rule of one route, with everything its decisions need."""

    __slots__ = (
        "backends", "error", "host", "key", "mirrors", "options", "redirect", "rewrite", "total",
    )  # fmt: skip

    def __init__(self, key: ObjectKey, host: str) -> None:
        self.key = key
        self.host = host  # the hostname its matches serve under, for /metrics
        self.backends: list[_Backend] = []
        self.total = 0
        self.error: Respond | None = None  # the whole rule answers this (no backend, bad filter)
        self.redirect: Any = None  # model RequestRedirect
        self.rewrite: Any = None  # model URLRewrite
        self.mirrors: list[_Mirror] = []
        self.options = ProxyOptions(body_limit=None, hsts=None)

    def pick(self) -> _Backend | None:
        """Smooth weighted round-robin (nginx's): exact shares, spread evenly."""
        backends = self.backends
        if len(backends) == 1:
            b = backends[0]
            return b if b.weight else None
        if not self.total:
            return None
        best = None
        for b in backends:
            if b.weight:
                b.current += b.weight
                if best is None or b.current > best.current:
                    best = b
        assert best is not None
        best.current -= self.total
        return best


class _Match:
    """One match of one rule: its conditions beyond the path, and its precedence."""

    __slots__ = ("headers", "method", "order", "path", "path_type", "query", "rule")

    def __init__(self, rule: _Rule, path_type: str, path: str) -> None:
        self.rule = rule
        self.path_type = path_type
        self.path = path
        self.method: bytes | None = None
        self.headers: tuple[tuple[bytes, bytes | None, re.Pattern[str] | None], ...] = ()
        self.query: tuple[tuple[str, str | None, re.Pattern[str] | None], ...] = ()
        self.order: tuple = ()

    def conditions(self, method: bytes, headers: Mapping[bytes, bytes], query: str) -> bool:
        if self.method is not None and method != self.method:
            return False
        for name, value, rx in self.headers:
            got = headers.get(name)
            if got is None:
                return False
            if rx is None:
                if got != value:
                    return False
            elif rx.fullmatch(got.decode("latin-1")) is None:
                return False
        if self.query:
            params = _query(query)
            for qname, qvalue, qrx in self.query:
                v = params.get(qname)
                if v is None:
                    return False
                if qrx is None:
                    if v != qvalue:
                        return False
                elif qrx.fullmatch(v) is None:
                    return False
        return True


def _first(
    found: tuple[_Match, ...], method: bytes, headers: Mapping[bytes, bytes], query: str
) -> _Match | None:
    """The first path candidate whose method, headers and query match: the one that serves."""
    for m in found:
        if m.conditions(method, headers, query):
            return m
    return None


def unmet(m: _Match, method: bytes, headers: Mapping[bytes, bytes], query: str) -> list[str]:
    """The conditions of ``m`` a request fails, each tested alone by ``_Match.conditions``:
    ``"method"``, ``"header NAME"``, ``"query NAME"``."""
    out: list[str] = []
    alone = _Match(m.rule, m.path_type, m.path)
    alone.method = m.method
    if not alone.conditions(method, headers, query):
        out.append("method")
    alone.method = None
    for h in m.headers:
        alone.headers = (h,)
        if not alone.conditions(method, headers, query):
            out.append(f"header {h[0].decode('latin-1')}")
    alone.headers = ()
    for qp in m.query:
        alone.query = (qp,)
        if not alone.conditions(method, headers, query):
            out.append(f"query {qp[0]}")
    return out


def _query(query: str) -> dict[str, str]:
    """The first value of each query parameter (names and values percent-decoded)."""
    from urllib.parse import unquote

    out: dict[str, str] = {}
    for part in query.lstrip("?").split("&"):
        if not part:
            continue
        k, _, v = part.partition("=")
        out.setdefault(unquote(k.replace("+", " ")), unquote(v.replace("+", " ")))
    return out


class _VHost:
    """The rules of the routes serving one hostname on one listener."""

    __slots__ = ("exact", "name", "prefix", "scan")

    def __init__(self, name: str) -> None:
        self.name = name
        self.exact: dict[str, list[_Match]] = {}
        self.prefix: dict[str, list[_Match]] = {}
        #: with regex matches: every prefix and regex entry, longest first; else ()
        self.scan: tuple[tuple[str | None, re.Pattern[str] | None, list[_Match]], ...] = ()

    def candidates(self, p: str) -> tuple[_Match, ...]:
        out: list[_Match] = []
        ex = self.exact.get(p)
        if ex:
            out.extend(ex)
        if self.scan:
            for key, rx, items in self.scan:
                if key is not None:
                    if not key or p == key or p.startswith(key + "/"):
                        out.extend(items)
                elif rx is not None and rx.fullmatch(p):
                    out.extend(items)
            return tuple(out)
        prefix = self.prefix
        k = p.rstrip("/")
        while True:
            found = prefix.get(k)
            if found:
                out.extend(found)
            if not k:
                break
            k = k[: k.rfind("/")]
        return tuple(out)


class _Names:
    """Hostname lookup: exact, then the longest ``*.`` wildcard, then the catch-all."""

    __slots__ = ("any", "exact", "wild")

    def __init__(self) -> None:
        self.exact: dict[str, Any] = {}
        self.wild: dict[str, Any] = {}  # by the suffix after "*."
        self.any: Any = None

    def put(self, name: str, value: Any) -> None:
        if not name:
            self.any = value
        elif name.startswith("*."):
            self.wild[name[2:]] = value
        else:
            self.exact[name] = value

    def get(self, name: str) -> Any:
        v = self.exact.get(name)
        if v is not None:
            return v
        if self.wild:
            dot = name.find(".")
            while dot >= 0:
                v = self.wild.get(name[dot + 1 :])
                if v is not None:
                    return v
                dot = name.find(".", dot + 1)
        return self.any

    def which(self, name: str) -> tuple[str, Any] | None:
        """``get(name)`` with the key that served it ("*.x" for a wildcard, "" for the catch-all)."""
        v = self.get(name)
        if v is None:
            return None
        if self.exact.get(name) is v:
            return name, v
        for suffix, w in self.wild.items():
            if w is v:
                return "*." + suffix, v
        return "", v

    def values(self) -> list[Any]:
        out = list(self.exact.values()) + list(self.wild.values())
        if self.any is not None:
            out.append(self.any)
        return out


@dataclass(frozen=True, slots=True)
class GatewayTrace:
    """What ``PortRoutes.trace`` found (see there)."""

    listener: str | None  # the listener hostname that took the Host ("" none set; None: none)
    hostname: str | None  # the route hostname serving it there
    refused: bool  # the path reads in ways that match differently: 400
    selected: tuple[_Match, ...]  # the matches whose path fits, in precedence order
    others: tuple[_Match, ...]  # the hostname's other matches (the path does not fit)
    winner: _Match | None
    unmet: dict[int, list[str]]  # per selected match (by id): the conditions the request fails


def match_index(m: _Match) -> tuple[int, int]:
    """(rule index, match index) of a compiled match in its route."""
    return m.order[-2], m.order[-1]


# -- a socket's routes ----------------------------------------------------------------


class PortRoutes:
    """The routes of one Gateway socket; what its listener asks for every request."""

    def __init__(self, port: int, https: bool) -> None:
        self.port = port
        self.https = https
        self.listeners = _Names()  # hostname -> _Names of _VHost
        self._cache: dict[str, dict[str, Any]] = {}
        self._cached = 0
        self.rules = 0

    def route(
        self,
        host: str,
        path: str,
        *,
        https: bool,
        client_ip: str,
        headers: Mapping[bytes, bytes],
        method: bytes = b"GET",
    ) -> Decision:
        by_path = self._cache.get(host)
        found = by_path.get(path, _MISS) if by_path is not None else _MISS
        if found is _MISS:
            found = self._find(host, path)
            self._remember(host, path, found)
        if found is _REFUSED:
            return BAD_PATH
        if not found:
            return NO_ROUTE
        q = path.find("?")
        m = _first(found, method, headers, path[q:] if q >= 0 else "")
        if m is None:
            return NO_ROUTE
        return self._decide(m, host, path, https)

    def _find(self, host: str, target: str) -> Any:
        paths = request_paths(target)
        if paths is None:
            return _REFUSED
        name = split_host(host)
        vhosts = self.listeners.get(name)
        if vhosts is None:
            return ()
        vh = vhosts.get(name)
        if vh is None:
            return ()
        found = vh.candidates(paths[0])
        for p in paths[1:]:
            if vh.candidates(p) != found:
                return _REFUSED
        return found

    # -- explaining (netplane explain) -----------------------------------------

    def trace(
        self, host: str, target: str, method: bytes, headers: Mapping[bytes, bytes]
    ) -> GatewayTrace:
        """How ``route()`` picks the rule: the listener and hostname, every match of
        that hostname, which ones the path selects (``_find``), the winner (``_first``)."""
        name = split_host(host)
        found = self._find(host, target)
        listener = self.listeners.which(name)
        vhost = listener[1].which(name) if listener is not None else None
        q = target.find("?")
        query = target[q:] if q >= 0 else ""
        refused = found is _REFUSED
        selected: tuple[_Match, ...] = () if refused else found
        winner = _first(selected, method, headers, query)
        everything: list[_Match] = []
        if vhost is not None:
            vh: _VHost = vhost[1]
            seen: set[int] = set()
            for ms in [*vh.exact.values(), *vh.prefix.values(), *(e[2] for e in vh.scan)]:
                for m in ms:
                    if id(m) not in seen:
                        seen.add(id(m))
                        everything.append(m)
        return GatewayTrace(
            listener=listener[0] if listener is not None else None,
            hostname=vhost[0] if vhost is not None else None,
            refused=refused,
            selected=selected,
            others=tuple(m for m in everything if m not in selected),
            winner=winner,
            unmet={id(m): unmet(m, method, headers, query) for m in selected},
        )

    def preview(
        self,
        host: str,
        path: str,
        *,
        https: bool,
        client_ip: str,
        headers: Mapping[bytes, bytes],
        method: bytes = b"GET",
    ) -> Decision:
        """``route()``'s decision, its weighted round-robin, cursors and mirror counters left as they were."""
        found = self._find(host, path)
        keep: list[tuple[Any, str, Any]] = []
        if found and found is not _REFUSED:
            for m in found:
                rule = m.rule
                for b in rule.backends:
                    keep.append((b, "current", b.current))
                    if b.pool is not None:
                        keep.append((b.pool, "cursor", b.pool.cursor))
                for mirror in rule.mirrors:
                    keep.append((mirror, "acc", mirror.acc))
                    keep.append((mirror.pool, "cursor", mirror.pool.cursor))
        try:
            return self.route(
                host, path, https=https, client_ip=client_ip, headers=headers, method=method
            )
        finally:
            for obj, attr, value in reversed(keep):
                setattr(obj, attr, value)

    def _remember(self, host: str, target: str, found: Any) -> None:
        if len(target) > _CACHE_MAX_TARGET or len(host) > _CACHE_MAX_TARGET:
            return
        if self._cached >= _CACHE_MAX_ENTRIES:
            self._cache = {}
            self._cached = 0
        self._cache.setdefault(host, {})[target] = found
        self._cached += 1

    def _decide(self, m: _Match, host: str, target: str, https: bool) -> Decision:
        rule = m.rule
        if rule.error is not None:
            return rule.error
        if rule.redirect is not None:
            return self._redirect(m, host, target, https)
        b = rule.pick()
        if b is None:
            return Respond(
                500, b"500 Internal Server Error: this rule has no backend with weight\n",
                rule.key, rule.host,
            )  # fmt: skip
        if b.error is not None:
            return b.error
        pool = b.pool
        assert pool is not None
        rotations = pool.rotations
        if not rotations:
            return Respond(503, pool.unavailable, rule.key, rule.host)
        i = pool.cursor
        pool.cursor = i + 1 if i + 1 < len(rotations) else 0
        path = target
        if rule.rewrite is not None and rule.rewrite.path is not None:
            raw, query = split_target(target)
            p = _normal(raw)
            path = rewrite_path(
                rule.rewrite.path, p, m.path if m.path_type == "PathPrefix" else None
            )
            path += query
        extras = b.extras
        if rule.mirrors:
            to = []
            for mirror in rule.mirrors:
                if mirror.wanted():
                    j = mirror.pool.next()
                    if j >= 0:
                        to.append(mirror.pool.rotations[j][0])
            if to:
                extras = GatewayExtras(
                    *(extras.request_headers, extras.response_headers, extras.host,
                      extras.request_timeout) if extras is not None else ((), (), None, 0.0),
                    tuple(to),
                )  # fmt: skip
        return _forward(
            rule.key, pool.service, rotations[i], path, False, rule.options, None, rule.host,
            b.h2 or pool.h2, extras,
        )  # fmt: skip

    def _redirect(self, m: _Match, host: str, target: str, https: bool) -> Redirect:
        r = m.rule.redirect
        raw, query = split_target(target)
        path = raw
        if r.path is not None:
            path = rewrite_path(
                r.path, _normal(raw), m.path if m.path_type == "PathPrefix" else None
            )
        scheme = r.scheme or ("https" if https else "http")
        name = r.hostname or split_host(host) or "localhost"
        location = redirect_location(
            scheme=scheme, host=name, port=r.port, path=path, query=query,
            listener_port=self.port, scheme_set=bool(r.scheme),
        )  # fmt: skip
        return Redirect(r.status_code, location, m.rule.key, m.rule.host)

    def debug_state(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for vhosts in self.listeners.values():
            for vh in vhosts.values():
                paths: dict[str, list[str]] = {}
                for ms in [*vh.exact.values(), *vh.prefix.values()]:
                    for mm in ms:
                        paths.setdefault(f"{mm.path_type} {mm.path}", []).append(str(mm.rule.key))
                for key, rx, ms in vh.scan:
                    if key is None and rx is not None:
                        for mm in ms:
                            paths.setdefault(f"{mm.path_type} {mm.path}", []).append(
                                str(mm.rule.key)
                            )
                out[vh.name or "*"] = {k: sorted(set(v)) for k, v in sorted(paths.items())}
        return out


def _normal(raw: str) -> str:
    ps = request_paths(raw)
    return ps[0] if ps else raw


# -- building ------------------------------------------------------------------------


class GatewayRoutes:
    """Every Gateway socket's routes, and the endpoint pools they share."""

    def __init__(self) -> None:
        self.ports: dict[tuple[str, int], PortRoutes] = {}
        self._pools: dict[tuple[str, str, int | None, str], _Pool] = {}
        self._by_service: dict[ServiceKey, list[_Pool]] = {}
        self.world = GatewayWorld()

    def rebuild(self, world: GatewayWorld, table: ServiceTable) -> None:
        """Compile ``world``; the PortRoutes of a socket that stays are updated in place."""
        old_pools = self._pools
        self._pools = {}
        self._by_service = {}
        ports: dict[tuple[str, int], PortRoutes] = {}
        for key, sock in world.sockets.items():
            pr = self.ports.get(key) or PortRoutes(sock.port, sock.protocol == "HTTPS")
            self._load(pr, sock, world, table, old_pools)
            ports[key] = pr
        self.ports = ports
        self.world = world

    def update_services(self, services: set[ServiceKey], table: ServiceTable) -> None:
        """Endpoints changed: refresh the pools of those services."""
        for sk in services:
            for pool in self._by_service.get(sk, ()):
                pool.update(table)

    def _pool(self, ref: BackendRef, table: ServiceTable, old: dict) -> _Pool:
        key = (ref.namespace, ref.name, ref.port, "")
        pool = self._pools.get(key)
        if pool is None:
            pool = old.get(key)
            if pool is None:
                pool = _Pool(key)
            pool.update(table)
            self._pools[key] = pool
            self._by_service.setdefault(pool.service, []).append(pool)
        return pool

    def _load(
        self, pr: PortRoutes, sock: Socket, world: GatewayWorld, table: ServiceTable, old: dict
    ) -> None:
        listeners = _Names()
        count = 0
        for served in sock.listeners:
            vhosts: dict[str, _VHost] = {}
            entries: dict[str, list[_Match]] = {}
            for att in served.routes:
                route = att.route
                rules: tuple[HTTPRouteRule | GRPCRouteRule, ...] = route.rules
                for host in att.hostnames:
                    for ri, rule in enumerate(rules):
                        compiled = self._rule(route, ri, rule, host, world, table, old)
                        for mi, m in enumerate(_matches(route, rule, compiled)):
                            m.order = (*m.order, _age(route), ri, mi)
                            entries.setdefault(host, []).append(m)
                            count += 1
            names = _Names()
            for host, ms in entries.items():
                vh = vhosts[host] = _VHost(host)
                _index(vh, ms)
                names.put(host, vh)
            listeners.put(served.listener.hostname, names)
        pr.listeners = listeners
        pr.rules = count
        pr._cache = {}
        pr._cached = 0

    def _rule(
        self,
        route: HTTPRoute | GRPCRoute,
        ri: int,
        rule: HTTPRouteRule | GRPCRouteRule,
        host: str,
        world: GatewayWorld,
        table: ServiceTable,
        old: dict,
    ) -> _Rule:
        r = _Rule(route.key, host)
        grpc = isinstance(route, GRPCRoute)
        req_ops: list[HeaderOps] = []
        resp_ops: list[HeaderOps] = []
        for fi, f in enumerate(rule.filters):
            if f.type == "RequestHeaderModifier" and f.header_modifier is not None:
                req_ops.append(HeaderOps.of(f.header_modifier))
            elif f.type == "ResponseHeaderModifier" and f.header_modifier is not None:
                resp_ops.append(HeaderOps.of(f.header_modifier))
            elif f.type == "RequestRedirect":
                r.redirect = f.redirect
            elif f.type == "URLRewrite":
                r.rewrite = f.rewrite
            elif f.type == "RequestMirror" and f.mirror is not None:
                if world.mirror_errors.get((route.key, ri, fi)):
                    continue
                every, of = 100, 100
                if f.mirror.fraction is not None:
                    every, of = f.mirror.fraction
                elif f.mirror.percent is not None:
                    every = f.mirror.percent
                if every:
                    r.mirrors.append(_Mirror(self._pool(f.mirror.backend, table, old), every, of))
            else:
                r.error = Respond(
                    500, f"500 Internal Server Error: filter {f.type} is not supported\n".encode(),
                    route.key, host,
                )  # fmt: skip
        timeout = getattr(rule, "request_timeout", None) or 0.0
        backend_timeout = getattr(rule, "backend_timeout", None)
        if backend_timeout is not None:
            # "0s" turns the timeout off; unset keeps the proxy's default (60 s, as Ingress)
            wait = backend_timeout or float("inf")
            r.options = ProxyOptions(body_limit=None, read_timeout=wait, hsts=None)
        if r.redirect is not None:
            return r
        for bi, ref in enumerate(rule.backends):
            b = _Backend()
            b.weight = ref.weight
            err = world.backend_errors.get((route.key, ri, bi), "")
            if err:
                # HTTPRoute: 500. GRPCRoute: the call MUST end UNAVAILABLE, which is what
                # gRPC clients make of an HTTP 503 (a 500 would be UNKNOWN).
                code, text = (
                    (503, "Service Unavailable") if grpc else (500, "Internal Server Error")
                )
                b.error = Respond(
                    code, f"{code} {text}: backendRef {ref.namespace}/{ref.name}"
                    f" does not resolve ({err})\n".encode(), route.key, host,
                )  # fmt: skip
            else:
                b.pool = self._pool(ref, table, old)
            b.h2 = grpc
            breq = [HeaderOps.of(x.header_modifier) for x in ref.filters
                    if x.type == "RequestHeaderModifier" and x.header_modifier is not None]  # fmt: skip
            bresp = [HeaderOps.of(x.header_modifier) for x in ref.filters
                     if x.type == "ResponseHeaderModifier" and x.header_modifier is not None]  # fmt: skip
            host_rw = r.rewrite.hostname.encode() if r.rewrite and r.rewrite.hostname else None
            if req_ops or resp_ops or breq or bresp or host_rw or timeout:
                b.extras = GatewayExtras(
                    (*req_ops, *breq), (*resp_ops, *bresp), host_rw, timeout, ()
                )
            elif r.mirrors:
                b.extras = GatewayExtras()
            r.backends.append(b)
        r.total = sum(b.weight for b in r.backends)
        if not r.backends and r.error is None:
            r.error = Respond(
                500, b"500 Internal Server Error: this rule has no backendRefs\n", route.key, host
            )
        return r


def _matches(route: HTTPRoute | GRPCRoute, rule: Any, compiled: _Rule) -> list[_Match]:
    out = []
    if isinstance(route, GRPCRoute):
        for gm in rule.matches:
            mm = gm.method
            if mm is None:
                m = _Match(compiled, "PathPrefix", "/")
                slen, mlen = 0, 0
            elif mm.type == "Exact" and mm.service and mm.method:
                m = _Match(compiled, "Exact", f"/{mm.service}/{mm.method}")
                slen, mlen = len(mm.service), len(mm.method)
            elif mm.type == "Exact" and mm.service:
                m = _Match(compiled, "PathPrefix", f"/{mm.service}")
                slen, mlen = len(mm.service), 0
            else:
                svc = (re.escape(mm.service) if mm.type == "Exact" else mm.service) or "[^/]+"
                meth = (re.escape(mm.method) if mm.type == "Exact" else mm.method) or "[^/]+"
                m = _Match(compiled, "RegularExpression", f"/(?:{svc})/(?:{meth})")
                slen, mlen = len(mm.service), len(mm.method)
            m.method = b"POST"
            m.headers = _headers(gm.headers)
            # gRPC precedence: longer service, then longer method, then more headers.
            m.order = (-slen, -mlen, -len(m.headers))
            out.append(m)
        return out
    for hm in rule.matches:
        m = _Match(compiled, hm.path_type, hm.path)
        m.method = hm.method.encode() if hm.method else None
        m.headers = _headers(hm.headers)
        m.query = tuple(
            (q.name, q.value if q.type == "Exact" else None,
             re.compile(q.value) if q.type == "RegularExpression" else None)
            for q in hm.query
        )  # fmt: skip
        m.order = (0 if m.method else 1, -len(m.headers), -len(m.query))
        out.append(m)
    return out


def _headers(hs: tuple) -> tuple[tuple[bytes, bytes | None, re.Pattern[str] | None], ...]:
    return tuple(
        (h.name.lower().encode(), h.value.encode() if h.type == "Exact" else None,
         re.compile(h.value) if h.type == "RegularExpression" else None)
        for h in hs
    )  # fmt: skip


def _index(vh: _VHost, ms: list[_Match]) -> None:
    """File each match under its path, each list in precedence order."""
    has_regex = False
    for m in sorted(ms, key=lambda m: m.order):
        if m.path_type == "Exact":
            vh.exact.setdefault(m.path, []).append(m)
        elif m.path_type == "PathPrefix":
            vh.prefix.setdefault(prefix_key(m.path), []).append(m)
        else:
            has_regex = True
    if has_regex:
        scan: list[tuple[int, int, str, tuple]] = []
        for key, items in vh.prefix.items():
            scan.append((len(key), 1, key, (key, None, items)))
        regexes: dict[str, list[_Match]] = {}
        for m in sorted(ms, key=lambda m: m.order):
            if m.path_type == "RegularExpression":
                regexes.setdefault(m.path, []).append(m)
        for pattern, items in regexes.items():
            scan.append((len(pattern), 0, pattern, (None, re.compile(pattern), items)))
        scan.sort(key=lambda s: (-s[0], -s[1], s[2]))
        vh.scan = tuple(s[3] for s in scan)


__all__ = ["NO_ROUTE", "Filter", "GatewayRoutes", "PortRoutes"]
