"""The document behind the dashboard (``GET /ui/data``): a pure function of the state.

:func:`build` turns what the admin server already has (the summary of
``/debug/state``, with the workers' planes merged in; the service table;
the metric families that ``/metrics`` would render; the current problems)
into one JSON-ready dict with five parts: ``summary``, ``services``,
``routes``, ``dns`` and ``problems``. It does no I/O and reads no clock:
``uptime`` and ``now`` come in as arguments, so tests feed it plain data.
:mod:`netplane.ui` is the thin adapter that gathers those inputs and serves
the result.

The document stays bounded whatever the cluster's size. Every list that
grows with the cluster (services, ports, endpoints, frontends, routes,
listeners, problems) is cut at a limit of :class:`Limits`, and each part says
how many there were (``total``), how many matched the filter (``matched``)
and how many it holds (``len(rows)``). A filter (``filters``: a substring per
table, case-insensitive) is applied before the cut, so with 10k services
the dashboard's filter box still reaches every one of them: the page
filters and paginates what it holds at once, and asks the server with the
same text on its next refresh. Rows are in a stable order (namespace/name,
host/path), so pages do not shuffle between refreshes.

Counters come from the metric families, not from the planes' objects, so
one code path serves one process and ``--workers N`` (whose owner sums the
workers' series before a scrape). The families used:

- per service port (``namespace, service, port, protocol``):
  ``netplane_l4_connections``, ``_connections_active``, ``_connect_failures``,
  ``_no_endpoint``, ``_bytes{direction}`` and ``netplane_l4_datapath``;
- per route: ``netplane_http_requests`` and the histogram
  ``netplane_http_request_duration_seconds`` (labels ``ingress, host,
  service, code``), whence p50 and p99, interpolated within the histogram's
  buckets as Prometheus' ``histogram_quantile`` does, over the whole run;
- DNS: ``netplane_dns_requests{type,rcode}``, ``_cache_hits``,
  ``_cache_misses``, ``netplane_dns_request_duration_seconds``;
- sources: ``netplane_watch_lists`` and ``netplane_watch_reconnects``.

A route row is one (route object, host, backend Service): the labels of the
request series, so its counts are exact; the paths that share that backend
are listed in the row. Requests the ingress answered without a backend (a
redirect, no endpoint) are a row of their own with backend ``""``, and
requests that matched no route are the row whose route is ``""``.

Nothing secret is read: the state's summary has no Secret data, the
certificate parts are subjects, names and expiry dates, and this module
copies named fields only, never a whole sub-document.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from netplane.service_table import ServiceEntry

#: bumped when a field changes meaning or goes away (adding one does not)
SCHEMA = 1
#: a problem's message is cut here (one line; a path and a field path fit)
MAX_MESSAGE = 400


@dataclass(frozen=True, slots=True)
class Limits:
    """How much of each table the document holds (the rest is counted, not sent)."""

    services: int = 200
    ports_per_service: int = 16
    endpoints_per_port: int = 12
    frontends_per_port: int = 8
    routes: int = 300
    paths_per_route: int = 16
    problems: int = 200
    listeners: int = 40
    dns_rows: int = 64
    sources: int = 32
    workers: int = 256


LIMITS = Limits()


def build(
    state: Mapping[str, Any],
    services: Iterable[ServiceEntry],
    families: Iterable[Any],
    problems: Iterable[Mapping[str, Any]] | None = None,
    *,
    uptime: float = 0.0,
    now: float = 0.0,
    filters: Mapping[str, str] | None = None,
    limits: Limits = LIMITS,
) -> dict[str, Any]:
    """The ``/ui/data`` document (see the module docstring).

    ``state`` is ``Dataplane.debug_state(summary=True)`` with the workers'
    planes merged; ``services`` the service table; ``families`` metric
    families (prometheus-client ``Metric`` objects); ``problems`` the
    ``to_dict()`` of each current problem (None: read ``state["problems"]``
    if it is a list, else ``state["rejected"]`` if it is a mapping);
    ``uptime`` seconds since start; ``now`` seconds since the epoch (for a
    certificate's days left); ``filters`` maps ``services``, ``routes`` and
    ``problems`` to a substring each row must contain.
    """
    filters = filters or {}
    samples = _Samples(families)
    planes = state.get("planes") or {}
    if not isinstance(planes, Mapping):
        planes = {}
    if problems is None:
        problems = _problems_from_state(state)
    return {
        "schema": SCHEMA,
        "version": str(state.get("version", "")),
        "ready": bool(state.get("ready", False)),
        "uptime": round(max(uptime, 0.0), 1),
        "summary": _summary(state, planes, samples, limits),
        "services": _services(services, planes, samples, _query(filters, "services"), limits),
        "routes": _routes(planes, samples, now, _query(filters, "routes"), limits),
        "dns": _dns(planes, samples, limits),
        "problems": _problems(
            problems, state, planes, samples, _query(filters, "problems"), limits
        ),
    }


# -- the metric families, indexed ----------------------------------------------------


class _Samples:
    """The samples of the families this document reads, by sample name."""

    WANTED = frozenset(
        {
            "netplane_l4_connections_total",
            "netplane_l4_connections_active",
            "netplane_l4_connect_failures_total",
            "netplane_l4_no_endpoint_total",
            "netplane_l4_bytes_total",
            "netplane_l4_datapath",
            "netplane_http_requests_total",
            "netplane_http_request_duration_seconds_bucket",
            "netplane_ingress_tls_handshakes_total",
            "netplane_dns_requests_total",
            "netplane_dns_cache_hits_total",
            "netplane_dns_cache_misses_total",
            "netplane_dns_request_duration_seconds_bucket",
            "netplane_watch_lists_total",
            "netplane_watch_reconnects_total",
        }
    )

    def __init__(self, families: Iterable[Any]) -> None:
        self.by_name: dict[str, list[tuple[Mapping[str, str], float]]] = {}
        wanted = self.WANTED
        for family in families:
            name = getattr(family, "name", "")
            if not any(w.startswith(name) for w in wanted):
                continue  # a family this document does not read
            for sample in family.samples:
                if sample.name in wanted:
                    self.by_name.setdefault(sample.name, []).append((sample.labels, sample.value))

    def get(self, name: str) -> list[tuple[Mapping[str, str], float]]:
        return self.by_name.get(name, [])

    def total(self, name: str) -> float:
        return sum(v for _, v in self.get(name))


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The ``q`` quantile of a histogram given as upper bound -> cumulative count.

    Prometheus' ``histogram_quantile``: linear within the bucket the rank
    falls in (the first bucket starts at 0); a rank in the ``+Inf`` bucket
    gives the highest finite bound. None when the histogram is empty.
    """
    bounds = sorted(buckets)
    if not bounds:
        return None
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _le(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return math.inf


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


# -- summary ---------------------------------------------------------------------------


def _summary(
    state: Mapping[str, Any], planes: Mapping[str, Any], samples: _Samples, limits: Limits
) -> dict[str, Any]:
    resources: dict[str, list[dict[str, Any]]] = {}
    lists = {
        (lb.get("source", ""), lb.get("resource", "")): v
        for lb, v in samples.get("netplane_watch_lists_total")
    }
    reconnects = {
        (lb.get("source", ""), lb.get("resource", "")): v
        for lb, v in samples.get("netplane_watch_reconnects_total")
    }
    for source, resource in sorted({*lists, *reconnects}):
        resources.setdefault(source, []).append(
            {
                "resource": resource,
                "lists": _int(lists.get((source, resource))),
                "reconnects": _int(reconnects.get((source, resource))),
            }
        )
    raw_sources = state.get("sources") or {}
    sources = [
        {"name": str(name), "synced": bool(synced), "resources": resources.get(name, [])}
        for name, synced in sorted(raw_sources.items())
    ]
    counts = state.get("counts") or {}
    listeners = _listeners(planes)
    workers_raw = planes.get("workers")
    workers = None
    if isinstance(workers_raw, list):
        workers = [
            {
                "index": _int(w.get("index")),
                "pid": w.get("pid"),
                "ready": bool(w.get("ready")),
                "restarts": _int(w.get("restarts")),
            }
            for w in workers_raw[: limits.workers]
            if isinstance(w, Mapping)
        ]
    proxy = planes.get("proxy") if isinstance(planes.get("proxy"), Mapping) else None
    return {
        "sources": sources[: limits.sources],
        "sourcesTotal": len(sources),
        "counts": {str(k): _int(v) for k, v in sorted(counts.items())},
        "listeners": listeners[: limits.listeners],
        "listenersTotal": len(listeners),
        "workers": workers,
        "planes": sorted(str(name) for name in planes),
        "rejected": _count(state.get("rejected")),
        "problems": _count(state.get("problems")),
        "l4": {
            "connections": _int(samples.total("netplane_l4_connections_total")),
            "active": _int(samples.total("netplane_l4_connections_active")),
            "bytes": _int(samples.total("netplane_l4_bytes_total")),
            "noEndpoint": _int(samples.total("netplane_l4_no_endpoint_total")),
            "tcpRelay": proxy.get("tcp_relay") if proxy else None,
        },
        "http": {
            "requests": _int(samples.total("netplane_http_requests_total")),
            "tlsHandshakes": {
                lb.get("result", ""): _int(v)
                for lb, v in samples.get("netplane_ingress_tls_handshakes_total")
            },
        },
    }


def _count(value: Any) -> int:
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, list | dict):
        return len(value)
    return 0


def _listeners(planes: Mapping[str, Any]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    ingress = planes.get("ingress")
    if isinstance(ingress, Mapping):
        out += [{"plane": "ingress", "address": str(a)} for a in ingress.get("listeners") or ()]
    dns = planes.get("dns")
    if isinstance(dns, Mapping) and dns.get("listen"):
        out.append({"plane": "dns", "address": f"{dns['listen']} (UDP, TCP)"})
    proxy = planes.get("proxy")
    if isinstance(proxy, Mapping):
        out += [{"plane": "proxy", "address": str(a)} for a in proxy.get("listeners") or ()]
    return out


# -- services ----------------------------------------------------------------------------


_L4_COUNTERS = (
    ("connections", "netplane_l4_connections_total"),
    ("active", "netplane_l4_connections_active"),
    ("connectFailures", "netplane_l4_connect_failures_total"),
    ("noEndpoint", "netplane_l4_no_endpoint_total"),
)


def _port_counters(
    samples: _Samples, wanted: set[tuple[str, str]]
) -> dict[tuple[str, str, str, str], dict[str, Any]]:
    """(namespace, service, port label, protocol) -> its live counters and datapath,
    for the services in ``wanted`` (the rows sent; the rest are not looked at)."""
    out: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    spare: dict[str, Any] = {}

    def slot(lb: Mapping[str, str]) -> dict[str, Any]:
        ns, name = lb.get("namespace", ""), lb.get("service", "")
        if (ns, name) not in wanted:
            return spare
        key = (ns, name, lb.get("port", ""), lb.get("protocol", ""))
        got = out.get(key)
        if got is None:
            got = out[key] = {
                "connections": 0,
                "active": 0,
                "connectFailures": 0,
                "noEndpoint": 0,
                "bytesIn": 0,
                "bytesOut": 0,
            }
        return got

    for field, name in _L4_COUNTERS:
        for lb, v in samples.get(name):
            got = slot(lb)
            if got is not spare:
                got[field] += _int(v)
    for lb, v in samples.get("netplane_l4_bytes_total"):
        got = slot(lb)
        direction = lb.get("direction")
        if got is spare:
            continue
        if direction == "to_endpoint":
            got["bytesIn"] += _int(v)
        elif direction == "to_client":
            got["bytesOut"] += _int(v)
    for lb, v in samples.get("netplane_l4_datapath"):
        got = slot(lb)
        if v and got is not spare:
            got["datapath"] = lb.get("datapath", "")
    return out


def _services(
    entries: Iterable[ServiceEntry],
    planes: Mapping[str, Any],
    samples: _Samples,
    query: str,
    limits: Limits,
) -> dict[str, Any]:
    total = 0
    matched: list[ServiceEntry] = []
    for entry in entries:
        total += 1
        if not query or query in _service_text(entry):
            matched.append(entry)
    matched.sort(key=lambda e: e.key)
    page = matched[: limits.services]
    counters = _port_counters(samples, {e.key for e in page})
    # Without a kernel datapath plane, the asyncio proxy serves every port it has.
    default_path = "userspace" if "proxy" in planes else None
    rows = [_service_row(e, counters, default_path, limits) for e in page]
    return {
        "total": total,
        "matched": len(matched),
        "limit": limits.services,
        "filter": query,
        "rows": rows,
    }


def _service_text(entry: ServiceEntry) -> str:
    svc = entry.service
    return " ".join(
        (
            f"{svc.key.namespace}/{svc.key.name}",
            svc.type,
            *svc.cluster_ips,
            *svc.external_ips,
            svc.external_name,
        )
    ).lower()


def _service_row(
    entry: ServiceEntry,
    counters: Mapping[tuple[str, str, str, str], dict[str, Any]],
    default_path: str | None,
    limits: Limits,
) -> dict[str, Any]:
    svc = entry.service
    ns, name = entry.key
    ports = []
    for p in entry.ports[: limits.ports_per_service]:
        label = p.name or str(p.port)
        live = counters.get((ns, name, label, p.protocol))
        backends = p.backends
        ports.append(
            {
                "name": p.name,
                "port": p.port,
                "protocol": p.protocol,
                "targetPort": p.target_port,
                "nodePort": p.node_port,
                "frontends": [
                    {"address": _frontend(f.ip, f.port), "kind": f.kind}
                    for f in p.frontends[: limits.frontends_per_port]
                ],
                "frontendsTotal": len(p.frontends),
                "endpoints": {
                    "total": len(backends),
                    "ready": sum(1 for b in backends if b.ready),
                    "serving": sum(1 for b in backends if b.serving),
                    "terminating": sum(1 for b in backends if b.terminating),
                    "list": [
                        {
                            "address": _frontend(b.address, b.port),
                            "ready": b.ready,
                            "serving": b.serving,
                            "terminating": b.terminating,
                            "node": b.node_name,
                            "zone": b.zone,
                        }
                        for b in backends[: limits.endpoints_per_port]
                    ],
                },
                # no frontend (headless): no datapath serves it, DNS names the endpoints
                "datapath": (
                    (live or {}).get("datapath", default_path if live else None)
                    if p.frontends
                    else None
                ),
                "counters": (
                    {k: v for k, v in live.items() if k != "datapath"} if live is not None else None
                ),
            }
        )
    return {
        "namespace": ns,
        "name": name,
        "type": svc.type,
        "clusterIPs": list(svc.cluster_ips),
        "externalIPs": list(svc.external_ips[: limits.frontends_per_port]),
        "headless": svc.headless,
        "externalName": svc.external_name or None,
        "ports": ports,
        "portsTotal": len(entry.ports),
    }


def _frontend(ip: str | None, port: int) -> str:
    if ip is None:
        return f"*:{port}"
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


# -- routes ------------------------------------------------------------------------------


def _route_label(ref: str) -> tuple[str, str]:
    """``Ingress ns/name`` (as /debug/state writes a key) -> (kind, metrics label).

    The metrics label is ``ns/name`` for an Ingress and ``kind/ns/name`` for
    a Gateway API route (:func:`netplane.ingress.stats.route_name`).
    """
    kind, _, name = ref.partition(" ")
    if not name:
        return "", ref
    return kind, name if kind == "Ingress" else f"{kind.lower()}/{name}"


class _RouteStats:
    """Request series by (route label, host, service), read once."""

    def __init__(self, samples: _Samples) -> None:
        self.series: dict[tuple[str, str, str], dict[str, Any]] = {}
        for lb, v in samples.get("netplane_http_requests_total"):
            s = self._slot(lb)
            code = lb.get("code", "") or "other"
            s["classes"][code] = s["classes"].get(code, 0) + _int(v)
            s["requests"] += _int(v)
        for lb, v in samples.get("netplane_http_request_duration_seconds_bucket"):
            buckets = self._slot(lb)["buckets"]
            le = _le(lb.get("le", "+Inf"))
            buckets[le] = buckets.get(le, 0.0) + v
        self.used: set[tuple[str, str, str]] = set()

    def _slot(self, lb: Mapping[str, str]) -> dict[str, Any]:
        key = (lb.get("ingress", ""), lb.get("host", ""), lb.get("service", ""))
        got = self.series.get(key)
        if got is None:
            got = self.series[key] = {"requests": 0, "classes": {}, "buckets": {}}
        return got

    def take(self, keys: Iterable[tuple[str, str, str]]) -> dict[str, Any]:
        """The sum of these series, as a row's figures; they count as shown."""
        requests = 0
        classes: dict[str, int] = {}
        buckets: dict[float, float] = {}
        for key in keys:
            s = self.series.get(key)
            self.used.add(key)
            if s is None:
                continue
            requests += s["requests"]
            for c, n in s["classes"].items():
                classes[c] = classes.get(c, 0) + n
            for le, n in s["buckets"].items():
                buckets[le] = buckets.get(le, 0.0) + n
        return {
            "requests": requests,
            "classes": dict(sorted(classes.items())),
            "p50": _ms(quantile(0.5, buckets)),
            "p99": _ms(quantile(0.99, buckets)),
        }

    def services_of(self, label: str, host: str) -> list[str]:
        return sorted({s for (r, h, s) in self.series if r == label and h == host and s})

    def left(self) -> list[tuple[str, str, str]]:
        return sorted(k for k in self.series if k not in self.used)


def _certificates(planes: Mapping[str, Any], now: float) -> tuple[dict[str, Any], Any]:
    """(host -> its certificate summary, the default one) from the ingress plane's state."""
    ingress = planes.get("ingress")
    certs = ingress.get("certificates") if isinstance(ingress, Mapping) else None
    if not isinstance(certs, Mapping):
        return {}, None
    out: dict[str, Any] = {}
    for host, info in (certs.get("hosts") or {}).items():
        if not isinstance(info, Mapping):
            continue
        cert = info.get("certificate")
        if isinstance(cert, Mapping):
            out[host] = _cert(cert, f"Secret {info.get('secret', '')}", now)
        else:  # the Secret is missing or rejected: the default serves
            out[host] = {"problem": str(cert), "source": f"Secret {info.get('secret', '')}"}
    default = certs.get("default")
    default_cert = (
        _cert(default, f"default ({default.get('source', '')})", now)
        if isinstance(default, Mapping)
        else None
    )
    return out, default_cert


def _cert(cert: Mapping[str, Any], source: str, now: float) -> dict[str, Any]:
    not_after = str(cert.get("notAfter", ""))
    days: float | None = None
    with contextlib.suppress(ValueError):
        days = round((datetime.fromisoformat(not_after).timestamp() - now) / 86400, 1)
    return {
        "subject": str(cert.get("subject", "")),
        "notAfter": not_after,
        "daysLeft": days if now else None,
        "source": source,
    }


def _cert_for(host: str, certs: Mapping[str, Any], default: Any, https: bool) -> Any:
    """What a TLS client naming ``host`` gets: the host's Secret, a wildcard's, else the default."""
    if host in certs:
        got = certs[host]
        return {**default, "problem": got["problem"]} if "problem" in got and default else got
    if "." in host:
        wild = "*." + host.split(".", 1)[1]
        if wild in certs:
            return certs[wild]
    return default if https else None


def _routes(
    planes: Mapping[str, Any], samples: _Samples, now: float, query: str, limits: Limits
) -> dict[str, Any]:
    stats = _RouteStats(samples)
    ingress = planes.get("ingress")
    ingress = ingress if isinstance(ingress, Mapping) else {}
    gateway = ingress.get("gateway")
    sockets = gateway.get("sockets") if isinstance(gateway, Mapping) else None
    # The Ingress's own listeners: the plane's, less the Gateways' sockets.
    https = any(
        str(a).startswith("https://") and str(a)[len("https://") :] not in (sockets or {})
        for a in ingress.get("listeners") or ()
    )
    listener = "Ingress HTTP, HTTPS" if https else "Ingress HTTP"
    certs, default_cert = _certificates(planes, now)
    rows: list[dict[str, Any]] = []

    # Ingress: host -> path -> location; grouped by (Ingress, host, backend Service)
    table = ingress.get("routes")
    hosts = table.get("hosts") if isinstance(table, Mapping) else None
    for host, h in sorted((hosts or {}).items()):
        if not isinstance(h, Mapping):
            continue
        groups: dict[tuple[str, str], dict[str, Any]] = {}
        locations = [(p, loc) for p, loc in (h.get("paths") or {}).items()]
        if isinstance(h.get("defaultBackend"), Mapping):
            locations.append(("(default backend)", h["defaultBackend"]))
        for path, loc in locations:
            if not isinstance(loc, Mapping):
                continue
            kind, label = _route_label(str(loc.get("ingress", "")))
            service = str(loc.get("service", ""))
            group = groups.get((label, service))
            if group is None:
                backend = f"{service}:{loc.get('port')}" if service else str(loc.get("backend", ""))
                group = groups[(label, service)] = {
                    "kind": kind or "Ingress",
                    "route": label,
                    "host": host,
                    "paths": [],
                    "backends": [backend],
                    "services": [service] if service else [],
                    "endpoints": _int(loc.get("endpoints")),
                    "tls": bool(h.get("tls")),
                }
            group["paths"].append({"path": path, "type": str(loc.get("pathType", ""))})
            canary = loc.get("canary")
            if isinstance(canary, Mapping) and canary.get("service"):
                text = f"{canary['service']} (canary, weight {canary.get('weight')})"
                if text not in group["backends"]:
                    group["backends"].append(text)
                    group["services"].append(str(canary["service"]))
        metric_host = "" if host == "*" else host
        for group in groups.values():
            group["listener"] = listener
            group["certificate"] = _cert_for(host, certs, default_cert, https)
            group["stats"] = stats.take(
                (group["route"], metric_host, s) for s in group.pop("services") or [""]
            )
            rows.append(group)

    # Gateway API: socket -> host -> "PathType /path" -> [route keys]
    for address, sock in sorted((sockets or {}).items()):
        if not isinstance(sock, Mapping):
            continue
        by_route: dict[tuple[str, str], dict[str, Any]] = {}
        for host, matches in sorted((sock.get("routes") or {}).items()):
            for match, refs in sorted((matches or {}).items()):
                path_type, _, path = str(match).partition(" ")
                for ref in refs or ():
                    kind, label = _route_label(str(ref))
                    row = by_route.get((label, host))
                    if row is None:
                        row = by_route[(label, host)] = {
                            "kind": kind,
                            "route": label.split("/", 1)[1] if "/" in label else label,
                            "host": host,
                            "paths": [],
                            "listener": f"{sock.get('protocol', '')} {address}".strip(),
                            "tls": sock.get("protocol") == "HTTPS",
                            "certificate": None,
                            "endpoints": None,
                            "_label": label,
                        }
                    row["paths"].append({"path": path, "type": path_type})
        for (label, host), row in by_route.items():
            metric_host = "" if host == "*" else host
            services = stats.services_of(label, metric_host)
            row["backends"] = services
            row["stats"] = stats.take((label, metric_host, s) for s in [*services, ""])
            del row["_label"]
            rows.append(row)

    # What no row above holds: answered without a backend, or matched no route.
    for label, host, service in stats.left():
        rows.append(
            {
                "kind": "",
                "route": label,
                "host": host or "*",
                "paths": [],
                "backends": [service] if service else [],
                "endpoints": None,
                "tls": False,
                "listener": "",
                "certificate": None,
                "stats": stats.take([(label, host, service)]),
                "note": (
                    "matched no route"
                    if not label
                    else "answered without a backend (a redirect, no endpoint, an error)"
                    if not service
                    else "a route or backend no longer served"
                ),
            }
        )

    for row in rows:
        row["paths"] = row["paths"][: limits.paths_per_route]
    total = len(rows)
    if query:
        rows = [r for r in rows if query in _route_text(r)]
    # by host and first path; the rows that no route holds last
    rows.sort(
        key=lambda r: (
            "note" in r,
            r["host"],
            r["paths"][0]["path"] if r["paths"] else "",
            r["route"],
        )
    )
    return {
        "total": total,
        "matched": len(rows),
        "limit": limits.routes,
        "filter": query,
        "rows": rows[: limits.routes],
    }


def _route_text(row: Mapping[str, Any]) -> str:
    parts = [row["kind"], row["route"], row["host"], *row["backends"]]
    parts += [p["path"] for p in row["paths"]]
    return " ".join(str(p) for p in parts).lower()


# -- DNS ---------------------------------------------------------------------------------


def _dns(planes: Mapping[str, Any], samples: _Samples, limits: Limits) -> dict[str, Any] | None:
    dns = planes.get("dns")
    if not isinstance(dns, Mapping):
        return None
    by_type: dict[str, int] = {}
    by_rcode: dict[str, int] = {}
    for lb, v in samples.get("netplane_dns_requests_total"):
        t, r = lb.get("type", "other"), lb.get("rcode", "other")
        by_type[t] = by_type.get(t, 0) + _int(v)
        by_rcode[r] = by_rcode.get(r, 0) + _int(v)
    hits = _int(samples.total("netplane_dns_cache_hits_total"))
    misses = _int(samples.total("netplane_dns_cache_misses_total"))
    buckets: dict[float, float] = {}
    for lb, v in samples.get("netplane_dns_request_duration_seconds_bucket"):
        le = _le(lb.get("le", "+Inf"))
        buckets[le] = buckets.get(le, 0.0) + v
    upstreams = [str(u) for u in dns.get("upstreams") or ()]
    failures = _int(dns.get("upstream_failures"))
    forwarded = _int(dns.get("forwarded"))
    dropped = dns.get("upstream_replies_dropped")
    if not upstreams:
        health = "none"
    elif failures == 0:
        health = "ok"
    elif forwarded and failures * 2 < forwarded:
        health = "degraded"
    else:
        health = "failing"

    def top(d: dict[str, int]) -> list[dict[str, Any]]:
        items = sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))
        return [{"name": k, "count": n} for k, n in items[: limits.dns_rows]]

    return {
        "listen": str(dns.get("listen", "")),
        "ready": bool(dns.get("ready")),
        "queries": hits + misses,
        "byType": top(by_type),
        "byRcode": top(by_rcode),
        "cache": {
            "hits": hits,
            "misses": misses,
            "ratio": round(hits / (hits + misses), 4) if hits + misses else None,
            "entries": _int(dns.get("answer_cache_entries")),
        },
        "p50": _ms(quantile(0.5, buckets)),
        "p99": _ms(quantile(0.99, buckets)),
        "upstreams": {
            "addresses": upstreams[: limits.dns_rows],
            "health": health,
            "forwarded": forwarded,
            "failures": failures,
            "inFlight": _int(dns.get("forwards_in_flight")),
            "repliesDropped": sum(_int(v) for v in dropped.values())
            if isinstance(dropped, Mapping)
            else 0,
        },
        "zone": {
            "domain": str((dns.get("zone") or {}).get("domain", "")),
            "names": _int((dns.get("zone") or {}).get("names")),
            "services": _int((dns.get("zone") or {}).get("services")),
        },
    }


# -- problems ----------------------------------------------------------------------------


def _problems_from_state(state: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The problems of a full ``/debug/state``: its ``problems`` list, else ``rejected``."""
    listed = state.get("problems")
    if isinstance(listed, list):
        return [p for p in listed if isinstance(p, Mapping)]
    rejected = state.get("rejected")
    if isinstance(rejected, Mapping):
        out: list[Mapping[str, Any]] = []
        for ref, why in rejected.items():
            kind, _, name = str(ref).partition(" ")
            ns, _, short = name.rpartition("/")
            out.append(
                {"kind": kind, "namespace": ns, "name": short, "reason": "rejected",
                 "message": f"{ref}: {why}"}
            )  # fmt: skip
        return out
    return []


def _problems(
    problems: Iterable[Mapping[str, Any]],
    state: Mapping[str, Any],
    planes: Mapping[str, Any],
    samples: _Samples,
    query: str,
    limits: Limits,
) -> dict[str, Any]:
    total = 0
    rows: list[dict[str, Any]] = []
    matched = 0
    for p in problems:
        total += 1
        ns, name = str(p.get("namespace") or ""), str(p.get("name") or "")
        row = {
            "kind": str(p.get("kind") or ""),
            "object": f"{ns}/{name}" if ns else name,
            "reason": str(p.get("reason") or ""),
            "message": " ".join(str(p.get("message") or "").split())[:MAX_MESSAGE],
            "where": f"{p['path']}:{p.get('line', 0)}" if p.get("path") else "",
        }
        if query and query not in " ".join(row.values()).lower():
            continue
        matched += 1
        if len(rows) < limits.problems:
            rows.append(row)
    return {
        "total": total,
        "matched": matched,
        "limit": limits.problems,
        "filter": query,
        "rows": rows,
        "failedSyncs": _failed_syncs(state, planes, samples)[: limits.problems],
    }


def _failed_syncs(
    state: Mapping[str, Any], planes: Mapping[str, Any], samples: _Samples
) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for name, synced in sorted((state.get("sources") or {}).items()):
        if not synced:
            out.append({"what": f"source {name}", "detail": "initial list not complete yet"})
    for lb, v in sorted(
        samples.get("netplane_watch_reconnects_total"),
        key=lambda s: (s[0].get("source", ""), s[0].get("resource", "")),
    ):
        if v:
            out.append(
                {
                    "what": f"source {lb.get('source', '')}: {lb.get('resource', '')}",
                    "detail": f"{_int(v)} failed list(s) or watch(es), each followed by a reconnect",
                }
            )
    nft = planes.get("nftables")
    if isinstance(nft, Mapping) and _int(nft.get("failures")):
        detail = f"{_int(nft.get('failures'))} failed transaction(s)"
        if nft.get("last_error"):
            detail += f"; last: {' '.join(str(nft['last_error']).split())[:MAX_MESSAGE]}"
        out.append({"what": "nftables datapath", "detail": detail})
    workers = planes.get("workers")
    if isinstance(workers, list):
        for w in workers:
            if isinstance(w, Mapping) and _int(w.get("restarts")):
                out.append(
                    {
                        "what": f"worker {_int(w.get('index'))}",
                        "detail": f"restarted {_int(w.get('restarts'))} time(s)",
                    }
                )
    return out


def _query(filters: Mapping[str, str], name: str) -> str:
    return " ".join(str(filters.get(name) or "").split()).lower()[:200]
