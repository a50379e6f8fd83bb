"""RouteTable: Ingress v1 host/path routing with ingress-nginx annotations (sans-IO).

Interface extensions (compatible, all keyword arguments with defaults):
``RouteTable(hsts=..., https_port=...)`` sets the HSTS value and the port
that ssl-redirect sends clients to; ``CertStore(ingress_class=...,
controller=..., default_secret=...)`` in ``certs.py`` selects Ingresses the
same way and can serve ``--default-certificate NAMESPACE/NAME`` from the
cluster.

Strategy: everything a request needs is computed when the table is built.
Per host a :class:`_Host` holds a dict of Exact paths and a tuple of
Prefix/regex locations, longest path first; per (service, port) a
:class:`_Pool` holds the candidate endpoints as precomputed rotations, one
per starting endpoint, so round-robin is an index bump and the Forward is
the only object a plain request allocates. A location carries two flags
saying whether it needs any per-request policy (allowlist, redirects,
canary, affinity, rewrite) for HTTP and for HTTPS; when not, ``route()``
is a host dict lookup, a path dict lookup, a short prefix scan and one
constructor call.

Rules follow the Ingress v1 specification and ingress-nginx where the
specification leaves room:

- Exact beats Prefix on the same path; otherwise the longest path wins.
  Regex locations (ImplementationSpecific under use-regex) sit in the scan
  by the length of their pattern, as ingress-nginx orders its locations.
- An exact host beats a wildcard, which beats rules without a host; a host
  that matches but has no matching path does not fall through to a less
  specific host (each host is one nginx ``server``). Then the host's
  ``spec.defaultBackend`` (from the oldest of its Ingresses that has one),
  then the oldest Ingress-wide default backend, then 404.
- Several Ingresses merge per host; when two define the same path (same
  kind), the oldest (creationTimestamp, then namespace/name) serves it and
  the other is logged once each time the host is rebuilt.
- A canary Ingress (``canary: "true"``) adds no locations of its own: each
  of its paths attaches to the main location with the same host and path.
- rewrite-target replaces the whole path, as nginx's ``rewrite`` does;
  ``$1``.. refer to the regex's groups under use-regex. The query string
  is kept.
- A path that backends read in more than one way (``;`` parameters, ``\\``,
  ``%2F``, double escapes; see ``paths.py``) is routed only when all its
  readings reach the same location, else answered 400, as is a path with a
  control byte or invalid UTF-8.
- Policy order per request: allowlist (403), permanent/temporal redirect,
  app-root, ssl-redirect, then forward.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from netplane.config import DEFAULTS
from netplane.dataplane import Change
from netplane.model import Ingress, IngressBackend, IngressPath, ObjectKey
from netplane.model.meta import fast_constructor
from netplane.service_table import Backend, PortEntry, ServiceEntry, ServiceKey, ServiceTable
from netplane.state import ClusterState

from .annotations import Affinity, Annotations, Canary, parse_annotations
from .classes import ClassSelector
from .paths import (
    compile_regex,
    normalize,
    prefix_key,
    request_paths,
    split_host,
    wildcard_parent,
)

log = logging.getLogger("netplane.ingress.routes")

# Config holds the default (--ingress-hsts); a RouteTable built without one gets the same.
DEFAULT_HSTS = (DEFAULTS.ingress_hsts or "").encode() or None
# Endpoints in Forward.targets: the choice plus connect-failure retries
# (ingress-nginx's proxy-next-upstream-tries default is 3).
MAX_TARGETS = 3


# -- decisions -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProxyOptions:
    """Per-location proxy settings, from annotations and defaults."""

    body_limit: int | None = 1024 * 1024  # proxy-body-size (None: unlimited) -> 413
    connect_timeout: float = 5.0  # proxy-connect-timeout
    read_timeout: float = 60.0  # proxy-read-timeout -> 504
    send_timeout: float = 60.0  # proxy-send-timeout
    hsts: bytes | None = None  # Strict-Transport-Security value on HTTPS replies


@dataclass(frozen=True, slots=True)
class Forward:
    """Proxy the request to ``targets[0]``; the rest are connect-failure retries."""

    ingress: ObjectKey
    service: ServiceKey
    targets: tuple[tuple[str, int], ...]
    path: str  # the request target to send upstream (after rewrite-target)
    upstream_tls: bool  # backend-protocol HTTPS (or GRPCS)
    options: ProxyOptions
    set_cookie: bytes | None = None  # a Set-Cookie value to add to the response (affinity)
    host: str = ""  # the matched rule's host ("" for a rule without one), for /metrics
    #: HTTP/2 to the endpoint: backend-protocol GRPC/GRPCS, or the Service port's
    #: appProtocol kubernetes.io/h2c or grpc
    upstream_h2: bool = False
    #: a Gateway API rule's filters, timeout and mirrors
    #: (:class:`netplane.ingress.gateway_filters.GatewayExtras`); None for Ingress
    gateway: Any = None


@dataclass(frozen=True, slots=True)
class Respond:
    """Answer without an upstream (403, 404, 503) with a short plain-text body."""

    status: int
    body: bytes
    ingress: ObjectKey | None = None
    host: str = ""  # the matched rule's host, for /metrics


@dataclass(frozen=True, slots=True)
class Redirect:
    """Answer with a redirect (ssl-redirect 308, permanent 301, temporal 302, app-root)."""

    status: int
    location: bytes
    ingress: ObjectKey | None = None
    host: str = ""  # the matched rule's host, for /metrics


Decision = Forward | Respond | Redirect


_forward = fast_constructor(Forward)

# The lookup cache: Host header -> request target -> location (None: 404).
# Repeated requests (the same pages, health checks, a benchmark) skip the
# host and path matching; its size is bounded, and long targets are not kept.
# Its "not cached" sentinel, _MISS, is defined with _Location below.
_CACHE_MAX_ENTRIES = 8192
_CACHE_MAX_TARGET = 256

NOT_FOUND = Respond(404, b"404 Not Found: no Ingress rule matches this host and path\n")
BAD_PATH = Respond(
    400,
    b"400 Bad Request: servers read this request path in ways that match different"
    b" rules, or it has a control byte or invalid UTF-8\n",
)


def _age(ing: Ingress) -> tuple[str, str, str]:
    return (ing.meta.creation_timestamp, ing.key.namespace, ing.key.name)


def _path_key(ip: IngressPath, use_regex: bool) -> tuple[str, str]:
    """(kind, key) of one Ingress path: the location it defines on its host.

    ImplementationSpecific is a regex under use-regex, else a prefix; a
    prefix's key is its path without a trailing slash.
    """
    kind = ip.path_type
    if kind == "ImplementationSpecific":
        kind = "Regex" if use_regex else "Prefix"
    return kind, prefix_key(ip.path) if kind == "Prefix" else ip.path


def scan_order(length: int, prefix: bool, loc: _Location) -> tuple[int, int, str]:
    """The precedence of a Prefix or regex location: longest first; on equal length
    a Prefix before a regex, then by path (the host's scan is sorted by this)."""
    return (-length, -int(prefix), loc.path)


# -- endpoints -------------------------------------------------------------------


#: Service port appProtocols whose endpoints are spoken to in HTTP/2 (without TLS).
H2_APP_PROTOCOLS = frozenset(("kubernetes.io/h2c", "grpc"))


def pool_port(entry: ServiceEntry, number: int | None, name: str) -> PortEntry | None:
    """The TCP port of a Service that a backend names, by number or else by name."""
    for p in entry.ports:
        if p.protocol == "TCP" and (p.port == number if number is not None else p.name == name):
            return p
    return None


def pool_endpoints(
    backends: Sequence[Backend], publish_not_ready: bool
) -> tuple[list[Backend], bool]:
    """The endpoints a backend uses: the ready ones, else the serving and terminating ones.

    Returns them and whether they are that fallback. (publishNotReadyAddresses:
    every endpoint counts as ready.)
    """
    chosen = [b for b in backends if publish_not_ready or b.ready]
    if chosen:
        return chosen, False
    return [b for b in backends if b.serving and b.terminating], True


class _Pool:
    """The candidate endpoints of one Ingress backend (service and port), round-robin."""

    __slots__ = (
        "by_token",
        "cursor",
        "h2",
        "key",
        "rotations",
        "service",
        "tokens",
        "unavailable",
    )

    def __init__(self, key: tuple[str, str, int | None, str]) -> None:
        self.key = key  # (namespace, service, port number, port name)
        self.service: ServiceKey = (key[0], key[1])
        self.rotations: tuple[tuple[tuple[str, int], ...], ...] = ()
        self.tokens: tuple[bytes, ...] = ()
        self.by_token: dict[bytes, int] = {}
        self.cursor = 0
        self.unavailable = b""
        #: the Service port's appProtocol asks for HTTP/2 (kubernetes.io/h2c, grpc)
        self.h2 = False

    def update(self, table: ServiceTable) -> None:
        """Take the current endpoints: ready ones, else serving and terminating ones."""
        ns, name, number, pname = self.key
        port_text = str(number) if number is not None else repr(pname)
        entry = table.get(ns, name)
        candidates: list[tuple[str, int]] = []
        if entry is None:
            self.unavailable = f"503 Service Unavailable: service {ns}/{name} not found\n".encode()
        else:
            port = pool_port(entry, number, pname)
            if port is None:
                self.unavailable = (
                    f"503 Service Unavailable: service {ns}/{name} has no TCP port {port_text}\n"
                ).encode()
            else:
                self.h2 = port.app_protocol.lower() in H2_APP_PROTOCOLS
                chosen, _ = pool_endpoints(port.backends, entry.service.publish_not_ready_addresses)
                candidates = sorted({(b.address, b.port) for b in chosen})
                self.unavailable = (
                    f"503 Service Unavailable: no ready endpoint for service {ns}/{name}"
                    f" port {port_text}\n"
                ).encode()
        n = len(candidates)
        k = min(n, MAX_TARGETS)
        self.rotations = tuple(tuple(candidates[(i + j) % n] for j in range(k)) for i in range(n))
        self.tokens = tuple(
            hashlib.sha256(f"{a}|{p}".encode()).hexdigest()[:16].encode() for a, p in candidates
        )
        self.by_token = {t: i for i, t in enumerate(self.tokens)}
        if self.cursor >= n:
            self.cursor = 0

    def next(self) -> int:
        """The index of the next endpoint in round-robin order (-1: none)."""
        n = len(self.rotations)
        if not n:
            return -1
        i = self.cursor
        self.cursor = i + 1 if i + 1 < n else 0
        return i


# -- locations -------------------------------------------------------------------


class _Canary:
    """A canary Ingress attached to a main location."""

    __slots__ = (
        "acc", "header", "header_value", "ingress", "pool", "upstream_h2", "upstream_tls", "weight",
    )  # fmt: skip

    def __init__(
        self, ingress: ObjectKey, pool: _Pool, upstream_tls: bool, upstream_h2: bool, c: Canary
    ) -> None:
        self.ingress = ingress
        self.pool = pool
        self.upstream_tls = upstream_tls
        self.upstream_h2 = upstream_h2
        self.weight = c.weight
        self.header = c.header
        self.header_value = c.header_value
        self.acc = 0

    def wanted(self, headers: Mapping[bytes, bytes]) -> bool:
        if self.header is not None:
            v = headers.get(self.header)
            if v is not None:
                if self.header_value is not None:
                    if v == self.header_value:
                        return True
                elif v == b"always":
                    return True
                elif v == b"never":
                    return False
        if not self.weight:
            return False
        # Deterministic weighting: exactly weight out of every 100 requests.
        self.acc += self.weight
        if self.acc >= 100:
            self.acc -= 100
            return True
        return False


class _Location:
    """One path of one host (or a default backend), with everything route() needs."""

    __slots__ = (
        "affinity",
        "allow",
        "app_root",
        "canary",
        "cookie_tail",
        "host",
        "ingress",
        "kind",
        "options",
        "path",
        "plain_http",
        "plain_https",
        "pool",
        "redirect",
        "regex",
        "rewrite",
        "ssl_redirect",
        "unsupported",
        "upstream_h2",
        "upstream_tls",
    )

    def __init__(self) -> None:
        self.ingress: ObjectKey
        self.host = ""  # the rule's host, or "" (no host, a default backend)
        self.kind = ""  # "Exact" | "Prefix" | "Regex" | "Default"
        self.path = ""
        self.pool: _Pool | None = None
        self.unsupported: bytes | None = None  # backend.resource: 503 with this body
        self.upstream_tls = False
        self.upstream_h2 = False
        self.options = ProxyOptions()
        self.regex: re.Pattern[str] | None = None
        self.rewrite: str | None = None
        self.allow: tuple | None = None
        self.redirect: Redirect | None = None
        self.app_root: bytes | None = None
        self.ssl_redirect = False
        self.affinity: Affinity | None = None
        self.cookie_tail = b""
        self.canary: _Canary | None = None
        self.plain_http = True
        self.plain_https = True

    def finish(self) -> None:
        """Set the fast-path flags once every field is final."""
        common = (
            self.allow is None
            and self.redirect is None
            and self.app_root is None
            and self.affinity is None
            and self.canary is None
            and self.rewrite is None
            and self.unsupported is None
        )
        self.plain_https = common
        self.plain_http = common and not self.ssl_redirect


# A Prefix location as (key, key + "/", location), a regex one as (None, pattern, location).
_ScanEntry = tuple[str, str, _Location] | tuple[None, re.Pattern[str], _Location]


class _Host:
    """The locations of one rule host."""

    __slots__ = ("default", "exact", "name", "scan", "tls")

    def __init__(self, name: str) -> None:
        self.name = name
        self.exact: dict[str, _Location] = {}
        # Prefix locations as (key, key + "/", location) and regex ones as
        # (None, pattern, location), longest first.
        self.scan: tuple[_ScanEntry, ...] = ()
        self.default: _Location | None = None
        self.tls = False


@dataclass(frozen=True, slots=True)
class PathCandidate:
    """A location of the chosen host, in the order routing tries them (``RouteTable.trace``)."""

    location: _Location
    matches: bool  # the request path alone would take this location
    rule: tuple[int, int] | None  # (rule, path) index in its Ingress; None for a default backend
    scope: str = "path"  # "path" | "host" (the host's defaultBackend) | "default" (controller-wide)


@dataclass(frozen=True, slots=True)
class Shadowed:
    """An Ingress path that another Ingress's location serves (an older duplicate, or a canary's main)."""

    ingress: ObjectKey
    rule: tuple[int, int]
    path: str
    path_type: str
    owner: _Location
    canary: bool


@dataclass(frozen=True, slots=True)
class RouteTrace:
    """What ``RouteTable.trace`` found: the host, the candidates, the winner (see there)."""

    name: str  # the Host header's name
    paths: tuple[str, ...] | None  # the readings of the path (None: refused outright)
    refused: bool  # answered 400 (BAD_PATH)
    host: str | None  # the rule host chosen ("" rules without a host; None: none)
    how: str  # "exact" | "wildcard" | "any" | "none"
    also: tuple[tuple[str, str], ...]  # other rule hosts that cover the name, and how
    candidates: tuple[PathCandidate, ...]
    shadowed: tuple[Shadowed, ...]
    winner: _Location | None
    tls: bool  # the chosen host is in some Ingress's spec.tls


# The "location" of a path that is refused (see paths.readings): cached like
# any other lookup; never plain, so route() takes it to _policy(), which
# answers BAD_PATH first.
_REFUSED = _Location()
_REFUSED.plain_http = _REFUSED.plain_https = False

# The lookup cache's "not cached": a _Location of its own, never stored nor
# returned, so that route()'s `loc` has one type without a check per request.
_MISS = _Location()


# -- the table -------------------------------------------------------------------


class RouteTable:
    """Ingress v1 host/path routing with ingress-nginx annotations; sans-IO."""

    def __init__(
        self,
        *,
        ingress_class: str = "netplane",
        controller: str = "netplane.io/ingress",
        hsts: bytes | None = DEFAULT_HSTS,
        https_port: int = 443,
    ) -> None:
        self.ingress_class = ingress_class
        self.controller = controller
        self.hsts = hsts
        self.https_port = https_port
        self._selector = ClassSelector(ingress_class, controller, frozenset(), False)
        self._ingresses: dict[ObjectKey, Ingress] = {}
        self._annotations: dict[ObjectKey, Annotations] = {}
        self._host_ingresses: dict[str, set[ObjectKey]] = {}
        self._tls_patterns: frozenset[str] = frozenset()
        self._hosts: dict[str, _Host] = {}  # every rule host, by its rule text
        self._exact: dict[str, _Host] = {}
        self._wild: dict[str, _Host] = {}
        self._any: _Host | None = None
        self._default: _Location | None = None
        self._pools: dict[tuple[str, str, int | None, str], _Pool] = {}
        self._by_service: dict[ServiceKey, list[_Pool]] = {}
        self._options: dict[tuple, ProxyOptions] = {}
        self._table: ServiceTable | None = None
        # Problems found at the last build, for /debug/state: by host ("" for
        # Ingress-wide ones), each a logged line.
        self._problems: dict[str, list[str]] = {}
        self._cache: dict[str, dict[str, _Location | None]] = {}
        self._cached = 0
        self._ingress_problems: dict[ObjectKey, list[str]] = {}

    # -- building ------------------------------------------------------------

    def rebuild(self, state: ClusterState, table: ServiceTable) -> None:
        """Recompute everything from ``state`` (start-up, or after an IngressClass change)."""
        self._table = table
        self._selector = ClassSelector.from_state(
            state, ingress_class=self.ingress_class, controller=self.controller
        )
        self._ingresses = {}
        self._annotations = {}
        self._ingress_problems = {}
        self._host_ingresses = {}
        for obj in state.objects("Ingress"):
            if self._selector.selects(obj):
                self._add_ingress(obj)
        self._tls_patterns = self._compute_tls()
        self._hosts = {}
        self._forget()
        self._exact, self._wild, self._any = {}, {}, None
        self._problems = {}
        old_pools = self._pools
        self._pools = {}
        self._by_service = {}
        for host in list(self._host_ingresses):
            self._build_host(host, old_pools)
        self._build_default(old_pools)
        for key, pool in self._pools.items():
            if key in old_pools:
                pool.update(table)

    def apply(self, state: ClusterState, table: ServiceTable, change: Change) -> None:
        """Incremental update for one coalesced dataplane Change.

        Only hosts whose Ingresses changed are rebuilt; an endpoint change
        only refreshes the pools of the services it touched.
        """
        self._table = table
        objects = change.objects
        if any(k.kind == "IngressClass" for k in objects):
            self.rebuild(state, table)
            return
        touched: set[str] = set()
        defaults_changed = False
        ingresses_changed = False
        for key in objects:
            if key.kind != "Ingress":
                continue
            old = self._ingresses.get(key)
            obj = state.get(key)
            new = obj if isinstance(obj, Ingress) and self._selector.selects(obj) else None
            if old is None and new is None:
                continue
            ingresses_changed = True
            for ing in (old, new):
                if ing is not None:
                    touched.update(r.host for r in ing.rules)
                    if ing.default_backend is not None:
                        defaults_changed = True
            if old is not None:
                self._remove_ingress(old)
            if new is not None:
                self._add_ingress(new)
        if ingresses_changed:
            self._forget()
            tls = self._compute_tls()
            if tls != self._tls_patterns:
                self._tls_patterns = tls
                touched.update(n for n, h in self._hosts.items() if h.tls != self._has_tls(n))
            pools = self._pools
            for host in touched:
                self._build_host(host, pools)
            if defaults_changed:
                self._build_default(pools)
            self._sweep_pools()
        services = set(change.services)
        services.update((k.namespace, k.name) for k in objects if k.kind == "Service")
        by_service = self._by_service
        for sk in services:
            for pool in by_service.get(sk, ()):
                pool.update(table)

    def _add_ingress(self, ing: Ingress) -> None:
        self._ingresses[ing.key] = ing
        ann = parse_annotations(ing.meta.annotations)
        self._annotations[ing.key] = ann
        problems = list(ann.problems)
        if ann.canary is not None and ing.default_backend is not None and not ing.rules:
            problems.append("a canary Ingress with only a defaultBackend is ignored")
        for p in problems:
            log.warning("%s: %s; the rest of it still serves", ing.key, p)
        if problems:
            self._ingress_problems[ing.key] = problems
        for r in ing.rules:
            self._host_ingresses.setdefault(r.host, set()).add(ing.key)

    def _remove_ingress(self, ing: Ingress) -> None:
        del self._ingresses[ing.key]
        self._annotations.pop(ing.key, None)
        self._ingress_problems.pop(ing.key, None)
        for r in ing.rules:
            keys = self._host_ingresses.get(r.host)
            if keys is not None:
                keys.discard(ing.key)
                if not keys:
                    del self._host_ingresses[r.host]

    def _compute_tls(self) -> frozenset[str]:
        return frozenset(h for ing in self._ingresses.values() for t in ing.tls for h in t.hosts)

    def _has_tls(self, host: str) -> bool:
        if not host:
            return False
        tls = self._tls_patterns
        if host in tls:
            return True
        if host.startswith("*."):
            return False
        parent = wildcard_parent(host)
        return parent is not None and "*." + parent in tls

    def _pool(
        self, ns: str, backend: IngressBackend, old: dict[tuple[str, str, int | None, str], _Pool]
    ) -> _Pool:
        key = (ns, backend.service_name, backend.port_number, backend.port_name)
        pool = self._pools.get(key)
        if pool is None:
            pool = old.get(key)
            if pool is None:
                pool = _Pool(key)
                if self._table is not None:
                    pool.update(self._table)
            self._pools[key] = pool
            self._by_service.setdefault(pool.service, []).append(pool)
        return pool

    def _sweep_pools(self) -> None:
        live: set[int] = set()
        locs: list[_Location] = [h.default for h in self._hosts.values() if h.default]
        for h in self._hosts.values():
            locs.extend(h.exact.values())
            locs.extend(entry[2] for entry in h.scan)
        if self._default is not None:
            locs.append(self._default)
        for loc in locs:
            if loc.pool is not None:
                live.add(id(loc.pool))
            if loc.canary is not None:
                live.add(id(loc.canary.pool))
        self._pools = {k: p for k, p in self._pools.items() if id(p) in live}
        self._by_service = {}
        for p in self._pools.values():
            self._by_service.setdefault(p.service, []).append(p)

    def _proxy_options(self, ann: Annotations) -> ProxyOptions:
        key = (ann.body_limit, ann.connect_timeout, ann.read_timeout, ann.send_timeout)
        opts = self._options.get(key)
        if opts is None:
            opts = self._options[key] = ProxyOptions(*key, self.hsts)
        return opts

    def _location(
        self,
        ing: Ingress,
        backend: IngressBackend,
        kind: str,
        path: str,
        host_tls: bool,
        old: dict,
        host: str = "",
    ) -> _Location:
        ann = self._annotations[ing.key]
        loc = _Location()
        loc.ingress = ing.key
        loc.host = host
        loc.kind = kind
        loc.path = path
        if backend.resource is not None:
            r = backend.resource
            loc.unsupported = (
                f"503 Service Unavailable: backend resource {r.kind} {r.name} is not supported\n"
            ).encode()
        else:
            loc.pool = self._pool(ing.key.namespace, backend, old)
        loc.upstream_tls = ann.backend_https
        loc.upstream_h2 = ann.backend_h2
        loc.options = self._proxy_options(ann)
        loc.rewrite = _rewrite_template(ann.rewrite_target) if ann.rewrite_target else None
        loc.allow = ann.allow
        if ann.permanent_redirect:
            loc.redirect = Redirect(301, ann.permanent_redirect.encode(), ing.key, host)
        elif ann.temporal_redirect:
            loc.redirect = Redirect(302, ann.temporal_redirect.encode(), ing.key, host)
        loc.app_root = ann.app_root.encode() if ann.app_root else None
        loc.ssl_redirect = ann.force_ssl_redirect or (ann.ssl_redirect and host_tls)
        if ann.affinity is not None:
            a = ann.affinity
            cookie_path = a.path or (path if kind in ("Exact", "Prefix") else "/")
            tail = f"; Path={cookie_path}"
            if a.max_age is not None:
                tail += f"; Max-Age={a.max_age}"
            loc.affinity = a
            loc.cookie_tail = (tail + "; HttpOnly").encode()
        return loc

    def _build_host(self, host: str, old: dict) -> None:
        """(Re)build one rule host from the Ingresses that name it."""
        prev = self._hosts.pop(host, None)
        if prev is not None:
            self._unindex(prev)
        keys = self._host_ingresses.get(host)
        problems: list[str] = []
        self._problems.pop(host, None)
        if not keys:
            return
        ingresses = sorted((self._ingresses[k] for k in keys), key=_age)
        h = _Host(host)
        h.tls = self._has_tls(host)
        owners: dict[tuple[str, str], tuple[_Location, Ingress]] = {}
        canaries: list[tuple[Ingress, tuple[str, str], IngressBackend]] = []
        label = host or "*"
        for ing in ingresses:
            ann = self._annotations[ing.key]
            for rule in ing.rules:
                if rule.host != host:
                    continue
                for ip in rule.paths:
                    mkey = _path_key(ip, ann.use_regex)
                    kind = mkey[0]
                    if ann.canary is not None:
                        canaries.append((ing, mkey, ip.backend))
                        continue
                    if ip.backend.resource is not None:
                        problems.append(
                            f"{ing.key}: host {label} path {ip.path}: backend.resource"
                            " is not supported; answering 503"
                        )
                    if mkey in owners:
                        winner = owners[mkey][1]
                        problems.append(
                            f"{ing.key}: host {label} {kind} path {ip.path} is already"
                            f" defined by {winner.key}, which is older; ignoring it here"
                        )
                        continue
                    regex = None
                    if kind == "Regex":
                        try:
                            regex = compile_regex(ip.path)
                        except re.error as e:
                            problems.append(
                                f"{ing.key}: host {label} path {ip.path!r} is not a valid"
                                f" regular expression ({e}); ignoring the path"
                            )
                            continue
                    loc = self._location(ing, ip.backend, kind, ip.path, h.tls, old, host)
                    loc.regex = regex
                    owners[mkey] = (loc, ing)
            if h.default is None and ing.default_backend is not None and ann.canary is None:
                h.default = self._location(
                    ing, ing.default_backend, "Default", "", h.tls, old, host
                )
        for ing, mkey, backend in canaries:
            main = owners.get(mkey)
            ann = self._annotations[ing.key]
            if main is None:
                problems.append(
                    f"{ing.key}: canary for host {label} path {mkey[1] or '/'} has no main"
                    " Ingress with that host and path; ignoring it"
                )
                continue
            loc = main[0]
            if loc.canary is not None:
                problems.append(
                    f"{ing.key}: host {label} path {mkey[1] or '/'} already has the canary"
                    f" {loc.canary.ingress}; ignoring this one"
                )
                continue
            if backend.resource is not None:
                problems.append(f"{ing.key}: canary backend.resource is not supported; ignoring it")
                continue
            assert ann.canary is not None
            loc.canary = _Canary(
                ing.key,
                self._pool(ing.key.namespace, backend, old),
                ann.backend_https,
                ann.backend_h2,
                ann.canary,
            )
        scan: list[tuple[tuple[int, int, str], _ScanEntry]] = []
        for (kind, key), (loc, _) in owners.items():
            loc.finish()
            if kind == "Exact":
                h.exact[key] = loc
            elif kind == "Prefix":
                scan.append((scan_order(len(key), True, loc), (key, key + "/", loc)))
            else:
                assert loc.regex is not None  # a Regex location: compiled, or skipped above
                scan.append((scan_order(len(key), False, loc), (None, loc.regex, loc)))
        scan.sort(key=lambda s: s[0])
        h.scan = tuple(s[1] for s in scan)
        if h.default is not None:
            h.default.finish()
        for p in problems:
            log.warning("%s", p)
        if problems:
            self._problems[host] = problems
        self._hosts[host] = h
        if not host:
            self._any = h
        elif host.startswith("*."):
            self._wild[host[2:]] = h
        else:
            self._exact[host] = h

    def _unindex(self, h: _Host) -> None:
        if not h.name:
            self._any = None
        elif h.name.startswith("*."):
            self._wild.pop(h.name[2:], None)
        else:
            self._exact.pop(h.name, None)

    def _build_default(self, old: dict) -> None:
        """The controller-wide default backend: the oldest Ingress's spec.defaultBackend."""
        with_default = sorted(
            (
                i
                for i in self._ingresses.values()
                if i.default_backend is not None and self._annotations[i.key].canary is None
            ),
            key=_age,
        )
        self._default = None
        problems = []
        if with_default:
            first = with_default[0]
            assert first.default_backend is not None
            self._default = self._location(first, first.default_backend, "Default", "", False, old)
            self._default.finish()
            for other in with_default[1:]:
                if not other.rules:
                    problems.append(
                        f"{other.key}: spec.defaultBackend conflicts with {first.key}, which is"
                        " older and serves requests no rule matches"
                    )
        self._problems.pop("<default>", None)
        for p in problems:
            log.warning("%s", p)
        if problems:
            self._problems["<default>"] = problems

    # -- the hot path --------------------------------------------------------

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
        """The decision for one request; ``host`` is the raw Host header, ``path`` the target.

        (``method`` is for routers that match on it, as Gateway API rules do.)
        """
        by_path = self._cache.get(host)
        loc = by_path.get(path, _MISS) if by_path is not None else _MISS
        if loc is _MISS:
            loc = self._find(host, path)
            self._remember(host, path, loc)
        if loc is None:
            return NOT_FOUND
        if loc.plain_https if https else loc.plain_http:
            pool: _Pool = loc.pool  # type: ignore[assignment]  # plain: it has a pool
            rotations = pool.rotations
            if rotations:  # _Pool.next(), inlined
                i = pool.cursor
                pool.cursor = i + 1 if i + 1 < len(rotations) else 0
                return _forward(
                    loc.ingress,
                    pool.service,
                    rotations[i],
                    path,
                    loc.upstream_tls,
                    loc.options,
                    None,
                    loc.host,
                    loc.upstream_h2 or pool.h2,
                    None,
                )
            return Respond(503, pool.unavailable, loc.ingress, loc.host)
        return self._policy(loc, host, path, https, client_ip, headers)

    def _find(self, host: str, target: str) -> _Location | None:
        """The location for a Host header and request target (see the module docstring).

        A path that servers read in more than one way (``paths.readings``) is
        routed only when every reading reaches the same location; otherwise,
        or when no reading is safe, the answer is :data:`_REFUSED`.
        """
        paths = request_paths(target)
        if paths is None:
            return _REFUSED
        h = self._host_for(split_host(host))
        if h is None:
            return self._default
        loc = self._match(h, paths[0])
        for p in paths[1:]:
            if self._match(h, p) is not loc:
                return _REFUSED
        return loc

    def _host_for(self, name: str) -> _Host | None:
        """The rule host serving a Host name: exact, then a wildcard one label up, then none."""
        h = self._exact.get(name)
        if h is None:
            parent = wildcard_parent(name)
            if parent is not None:
                h = self._wild.get(parent)
            if h is None:
                h = self._any
        return h

    def _match(self, h: _Host, p: str) -> _Location | None:
        """The location of host ``h`` for the normalized path ``p``."""
        loc = h.exact.get(p)
        if loc is not None:
            return loc
        # A _ScanEntry's key and pattern go together; unpacked, mypy no longer
        # ties the pattern's type to the key's test (indexing would cost more).
        for key, pattern, candidate in h.scan:
            if key is not None:
                if p == key or p.startswith(pattern):  # type: ignore[arg-type]  # str when key is
                    return candidate
            elif pattern.match(p):  # type: ignore[union-attr]  # Pattern when key is None
                return candidate
        return h.default or self._default

    def _remember(self, host: str, target: str, loc: _Location | None) -> None:
        """Cache a lookup; bounded in entries and key length, emptied when routes change."""
        if len(target) > _CACHE_MAX_TARGET or len(host) > _CACHE_MAX_TARGET:
            return
        if self._cached >= _CACHE_MAX_ENTRIES:
            self._forget()
        by_path = self._cache.get(host)
        if by_path is None:
            by_path = self._cache[host] = {}
        by_path[target] = loc
        self._cached += 1

    def _forget(self) -> None:
        self._cache = {}
        self._cached = 0

    def _policy(
        self,
        loc: _Location,
        host: str,
        target: str,
        https: bool,
        client_ip: str,
        headers: Mapping[bytes, bytes],
    ) -> Decision:
        """The slow path: everything a location's annotations ask for, in order."""
        if loc is _REFUSED:
            return BAD_PATH
        if loc.allow is not None and not _allowed(client_ip, loc.allow):
            return Respond(
                403,
                b"403 Forbidden: the client address is not allowed here\n",
                loc.ingress,
                loc.host,
            )
        if loc.redirect is not None:
            return loc.redirect
        if loc.app_root is not None and _path_only(target) == "/":
            scheme = "https" if https else "http"
            return Redirect(
                302, f"{scheme}://{host}".encode() + loc.app_root, loc.ingress, loc.host
            )
        if loc.ssl_redirect and not https:
            port = "" if self.https_port == 443 else f":{self.https_port}"
            hostname = split_host(host) or "localhost"
            if not target.startswith("/"):  # absolute-form: keep its path and query
                colon = target.find("://")
                slash = target.find("/", colon + 3) if colon >= 0 else -1
                target = target[slash:] if slash >= 0 else "/"
            return Redirect(
                308, f"https://{hostname}{port}{target}".encode(), loc.ingress, loc.host
            )
        if loc.unsupported is not None:
            return Respond(503, loc.unsupported, loc.ingress, loc.host)
        pool = loc.pool
        assert pool is not None
        ingress = loc.ingress
        upstream_tls = loc.upstream_tls
        upstream_h2 = loc.upstream_h2
        canary = loc.canary
        if canary is not None and canary.pool.rotations and canary.wanted(headers):
            pool, ingress = canary.pool, canary.ingress
            upstream_tls, upstream_h2 = canary.upstream_tls, canary.upstream_h2
        path = target
        if loc.rewrite is not None:
            path = self._rewritten(loc, target)
        set_cookie = None
        i = -1
        if loc.affinity is not None:
            cookie = headers.get(b"cookie")
            if cookie is not None:
                token = _cookie_value(cookie, loc.affinity.name.encode())
                if token is not None:
                    i = pool.by_token.get(token, -1)
            if i < 0:
                i = pool.next()
                if i >= 0:
                    set_cookie = (
                        loc.affinity.name.encode() + b"=" + pool.tokens[i] + loc.cookie_tail
                    )
        else:
            i = pool.next()
        if i < 0:
            return Respond(503, pool.unavailable, ingress, loc.host)
        return _forward(
            ingress,
            pool.service,
            pool.rotations[i],
            path,
            upstream_tls,
            loc.options,
            set_cookie,
            loc.host,
            upstream_h2 or pool.h2,
            None,
        )

    def _rewritten(self, loc: _Location, target: str) -> str:
        q = target.find("?")
        query = "" if q < 0 else target[q:]
        p = normalize(target[:q] if q >= 0 else target)
        template = loc.rewrite
        assert template is not None
        m = loc.regex.match(p) if loc.regex is not None else None
        if m is not None:
            try:
                new = m.expand(template)
            except re.error:
                # A $N beyond the regex's groups: empty, as nginx makes an unset capture.
                n = m.re.groups
                new = m.expand(
                    _NO_GROUPS.sub(lambda g: g[0] if int(g[0][3:-1]) <= n else "", template)
                )
        else:
            new = _NO_GROUPS.sub("", template).replace("\\\\", "\\")
        if not new.startswith("/") and "://" not in new:
            new = "/" + new
        if query and "?" in new:
            # An explicit query in the target replaces the original one (nginx's rule).
            return new
        return new + query

    # -- explaining (netplane explain) -----------------------------------------

    def trace(self, host: str, target: str) -> RouteTrace:
        """How ``route()`` finds the location of a request, with the candidates it passed over.

        The winner is :meth:`_find`'s; the host comes from :meth:`_host_for`,
        and whether a path alone would match is asked of :meth:`_match` with a
        host holding only that location, so this cannot disagree with routing.
        """
        winner = self._find(host, target)
        paths = request_paths(target)
        name = split_host(host)
        h = self._host_for(name)
        also: list[tuple[str, str]] = []  # other rule hosts that cover the name
        parent = wildcard_parent(name)
        for other, how in (
            (self._exact.get(name), "exact"),
            (self._wild.get(parent) if parent is not None else None, "wildcard"),
            (self._any, "any"),
        ):
            if other is not None and other is not h:
                also.append((other.name, how))
        how = "none" if h is None else ("any" if not h.name else
                                        "wildcard" if h.name.startswith("*.") else "exact")  # fmt: skip
        candidates: list[PathCandidate] = []
        shadowed: list[Shadowed] = []
        if h is not None and paths:
            p = paths[0]
            for key, loc in h.exact.items():
                candidates.append(PathCandidate(loc, p == key, self._rule_of(loc)))
            probe = _Host(h.name)
            for entry in h.scan:
                probe.scan = (entry,)
                candidates.append(
                    PathCandidate(
                        entry[2], self._match(probe, p) is entry[2], self._rule_of(entry[2])
                    )
                )
            if h.default is not None:
                candidates.append(PathCandidate(h.default, True, None, "host"))
            shadowed = self._shadowed(h)
        if self._default is not None:
            candidates.append(PathCandidate(self._default, True, None, "default"))
        return RouteTrace(
            name=name,
            paths=tuple(paths) if paths is not None else None,
            refused=winner is _REFUSED,
            host=h.name if h is not None else None,
            how=how,
            also=tuple(also),
            candidates=tuple(candidates),
            shadowed=tuple(shadowed),
            winner=winner if winner is not _REFUSED else None,
            tls=h.tls if h is not None else False,
        )

    def _rule_of(self, loc: _Location) -> tuple[int, int] | None:
        """(rule index, path index) in its Ingress of a path location."""
        ing = self._ingresses.get(loc.ingress)
        if ing is None or loc.kind == "Default":
            return None
        ann = self._annotations[ing.key]
        want = (loc.kind, prefix_key(loc.path) if loc.kind == "Prefix" else loc.path)
        for ri, rule in enumerate(ing.rules):
            if rule.host == loc.host:
                for pi, ip in enumerate(rule.paths):
                    if _path_key(ip, ann.use_regex) == want:
                        return ri, pi
        return None

    def _shadowed(self, h: _Host) -> list[Shadowed]:
        """Paths of this host that serve through another Ingress's location:
        a duplicate of an older Ingress's path, or a canary attached to it."""
        owner: dict[tuple[str, str], _Location] = {("Exact", k): loc for k, loc in h.exact.items()}
        for key, _pattern, loc in h.scan:
            owner[(loc.kind, key if key is not None else loc.path)] = loc
        out: list[Shadowed] = []
        keys = self._host_ingresses.get(h.name, ())
        for ing in sorted((self._ingresses[k] for k in keys), key=_age):
            ann = self._annotations[ing.key]
            for ri, rule in enumerate(ing.rules):
                if rule.host != h.name:
                    continue
                for pi, ip in enumerate(rule.paths):
                    served = owner.get(_path_key(ip, ann.use_regex))
                    if served is not None and served.ingress != ing.key:
                        canary = served.canary is not None and served.canary.ingress == ing.key
                        out.append(
                            Shadowed(ing.key, (ri, pi), ip.path, ip.path_type, served, canary)
                        )
        return out

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
        """``route()``'s decision for this request, its round-robin and canary counters left as they were."""
        loc = self._find(host, path)
        pools: list[_Pool] = []
        canary = None
        if loc is not None and loc is not _REFUSED:
            if loc.pool is not None:
                pools.append(loc.pool)
            canary = loc.canary
            if canary is not None:
                pools.append(canary.pool)
        cursors = [pool.cursor for pool in pools]
        acc = canary.acc if canary is not None else 0
        try:
            return self.route(
                host, path, https=https, client_ip=client_ip, headers=headers, method=method
            )
        finally:
            for pool, cursor in zip(pools, cursors, strict=True):
                pool.cursor = cursor
            if canary is not None:
                canary.acc = acc

    def ingress(self, key: ObjectKey) -> tuple[Ingress, Annotations] | None:
        """One Ingress this table serves, with its parsed annotations."""
        ing = self._ingresses.get(key)
        return (ing, self._annotations[key]) if ing is not None else None

    def hosts(self) -> list[str]:
        """Every rule host ("" for rules without one)."""
        return list(self._hosts)

    def paths_of(self, host: str) -> list[str]:
        """The paths of one rule host's locations."""
        h = self._hosts.get(host)
        if h is None:
            return []
        return [*h.exact, *(loc.path for _k, _p, loc in h.scan)]

    # -- introspection -------------------------------------------------------

    def debug_state(self) -> dict:
        """Hosts, their locations and endpoint counts, and the problems logged at build."""

        def loc_dict(loc: _Location) -> dict:
            d: dict = {"ingress": str(loc.ingress), "pathType": loc.kind}
            if loc.pool is not None:
                ns, svc, number, pname = loc.pool.key
                d["service"] = f"{ns}/{svc}"
                d["port"] = number if number is not None else pname
                d["endpoints"] = len(loc.pool.rotations)
            else:
                d["backend"] = "resource (unsupported)"
            if loc.canary is not None:
                d["canary"] = {
                    "ingress": str(loc.canary.ingress),
                    "service": "/".join(loc.canary.pool.service),
                    "weight": loc.canary.weight,
                    "header": loc.canary.header.decode() if loc.canary.header else None,
                }
            return d

        hosts = {}
        for name, h in sorted(self._hosts.items()):
            locs = {p: loc_dict(loc) for p, loc in sorted(h.exact.items())}
            for _key, _pattern, loc in h.scan:
                locs.setdefault(loc.path, loc_dict(loc))
            hosts[name or "*"] = {
                "tls": h.tls,
                "paths": locs,
                "defaultBackend": loc_dict(h.default) if h.default else None,
            }
        return {
            "ingressClass": self.ingress_class,
            "controller": self.controller,
            "ingresses": len(self._ingresses),
            "hosts": hosts,
            "defaultBackend": loc_dict(self._default) if self._default else None,
            "pools": len(self._pools),
            "cachedLookups": self._cached,
            "problems": sorted(
                [p for ps in self._problems.values() for p in ps]
                + [f"{k}: {p}" for k, ps in self._ingress_problems.items() for p in ps]
            ),
        }

    def ingresses(self) -> Iterable[Ingress]:
        """The Ingresses this table serves (those of our class)."""
        return self._ingresses.values()


# -- helpers ---------------------------------------------------------------------

_GROUP_REF = re.compile(r"\$(\d)")
_NO_GROUPS = re.compile(r"\\g<\d>")


def _rewrite_template(target: str) -> str:
    """nginx ``$1`` references as a ``re.Match.expand`` template."""
    return _GROUP_REF.sub(r"\\g<\1>", target.replace("\\", "\\\\"))


def _path_only(target: str) -> str:
    q = target.find("?")
    return target if q < 0 else target[:q]


def _allowed(client_ip: str, nets: tuple) -> bool:
    try:
        addr = ipaddress.ip_address(client_ip.partition("%")[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in n for n in nets)


def _cookie_value(header: bytes, name: bytes) -> bytes | None:
    """The value of cookie ``name`` in a Cookie header (RFC 6265 section 5.4)."""
    for part in header.split(b";"):
        k, eq, v = part.strip().partition(b"=")
        if eq and k == name:
            return v.strip().strip(b'"')
    return None
