"""Explaining a request to a Gateway API listener: the listener, the HTTPRoute or
GRPCRoute rule, why the others lost, the filters, the endpoints, the certificate.

The decisions are ``PortRoutes.trace`` and ``PortRoutes.preview`` (beside
``route()`` in :mod:`netplane.ingress.gateway_routes`) and the socket's own SNI
choice (``_SniContext.choose``); why a rule lost is read from the precedence
key the routes are sorted by (``_Match.order``).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from netplane.addresses import hostport
from netplane.explain.common import nearest
from netplane.explain.http import (
    answer_line,
    backend_of,
    cert_dict,
    covers,
    decision_dict,
    is_ip,
    ref,
)
from netplane.explain.target import HttpTarget
from netplane.explain.views import Views

#: Gateway API rule precedence on one path, as ``_Match.order`` holds it
_HTTP_ORDER = (
    "it matches on the method",
    "it has more header matches",
    "it has more query matches",
    "its route is older (then namespace/name first)",
    "its rule comes first in the route",
    "its match comes first in the rule",
)
_GRPC_ORDER = (
    "its gRPC service name is longer",
    "its gRPC method name is longer",
    "it has more header matches",
    "its route is older (then namespace/name first)",
    "its rule comes first in the route",
    "its match comes first in the rule",
)


# -- Gateway API --------------------------------------------------------------------


def gateway_socket(views: Views, t: HttpTarget) -> tuple[str, int] | None:
    """The Gateway socket a request to the URL's host and port reaches, if any."""
    routes, _world, _certs = views.gateway()
    ports = [key for key in routes.ports if key[1] == t.port]
    if not ports:
        return None
    try:
        ip = ipaddress.ip_address(t.name.strip("[]"))
    except ValueError:
        return sorted(ports)[0]
    for key in sorted(ports):
        if key[0] == str(ip) or ipaddress.ip_address(key[0]).is_unspecified:
            return key
    return None


def explain_gateway(
    views: Views,
    doc: dict[str, Any],
    t: HttpTarget,
    key: tuple[str, int],
    method: bytes,
    hdrs: dict[bytes, bytes],
    client_ip: str,
) -> dict[str, Any]:
    from netplane.ingress.gateway_routes import match_index

    routes, world, certs = views.gateway()
    pr = routes.ports[key]
    sock = world.sockets[key]
    host = hdrs[b"host"].decode("latin-1")
    tr = pr.trace(host, t.target, method, hdrs)
    decision = pr.preview(host, t.target, https=t.https, client_ip=client_ip, headers=hdrs,
                          method=method)  # fmt: skip
    doc["decision"] = decision_dict(decision)
    chosen = [s.label for s in sock.listeners if s.listener.hostname == tr.listener]
    doc["listener"] = {
        "kind": "Gateway",
        "protocol": sock.protocol,
        "address": hostport(*key),
        "listeners": [s.label for s in sock.listeners],
        "chosen": chosen[0] if chosen else None,
    }
    if t.https != (sock.protocol == "HTTPS"):
        doc["listener"]["note"] = f"this port speaks {sock.protocol}, not what the URL says"
    doc["host"] = {"name": t.name, "listener_hostname": tr.listener, "rule_host": tr.hostname}
    if t.https and sock.protocol == "HTTPS":
        doc["tls"] = _gateway_tls(sock, certs, t)
    w = tr.winner
    q = t.target.find("?")
    p = t.target[:q] if q >= 0 else t.target
    lost: list[dict[str, Any]] = []
    passed = True
    for m in tr.selected:
        if m is w:
            passed = False
            continue
        item = _gateway_match(views, m, match_index(m))
        item["matches"] = True
        if passed:
            item["why"] = "fails " + "; ".join(_unmet(m, u, method, hdrs) for u in tr.unmet[id(m)])
        else:
            assert w is not None
            item["why"] = _gateway_lost(m, w)
        lost.append(item)
    for m in tr.others:
        item = _gateway_match(views, m, match_index(m))
        item["matches"] = False
        item["why"] = f"the path {m.path_type} {m.path} does not match {p}"
        lost.append(item)
    doc["lost"] = lost
    if tr.refused:
        doc["found"] = True
        doc["match"] = None
        doc["answer"] = "400: the path reads in ways that would match different rules"
        return doc
    if w is None:
        doc["found"] = False
        doc["match"] = None
        if tr.hostname is None:
            names = [vh.name for names in pr.listeners.values() for vh in names.values()]
            doc["candidates"] = nearest(t.name, [n for n in names if n])
            doc["answer"] = f"404: no route on {hostport(*key)} serves the host {t.name!r}"
        else:
            doc["candidates"] = nearest(p, [m.path for m in tr.others])
            doc["answer"] = (
                f"404: no rule of host {tr.hostname or '*'} matches {method.decode()} {p}"
            )
        return doc
    doc["found"] = True
    doc["match"] = _gateway_match(views, w, match_index(w))
    route = views.state.get(w.rule.key)
    ri = match_index(w)[0]
    rules: tuple[Any, ...] = getattr(route, "rules", ())
    rule = rules[ri] if ri < len(rules) else None
    doc["policy"] = _gateway_policy(rule, decision)
    doc["backend"] = None
    if rule is not None and getattr(decision, "service", None) is not None:
        for ref in rule.backends:
            if (ref.namespace, ref.name) == tuple(decision.service):
                pool = next((b.pool for b in w.rule.backends if b.pool is not None
                             and b.pool.service == (ref.namespace, ref.name)), None)  # fmt: skip
                if pool is not None:
                    doc["backend"] = backend_of(views, pool)
                break
    doc["answer"] = answer_line(doc)
    return doc


def _gateway_match(views: Views, m: Any, index: tuple[int, int]) -> dict[str, Any]:
    key = m.rule.key
    out: dict[str, Any] = {
        "source": key.kind,
        "object": ref(key),
        "rule": index[0],
        "match": index[1],
        "host": m.rule.host or "*",
        "path": m.path,
        "pathType": m.path_type,
    }
    conds = []
    if m.method is not None:
        conds.append(f"method {m.method.decode()}")
    for name, value, rx in m.headers:
        want = value.decode("latin-1") if value is not None else f"~{rx.pattern if rx else ''}"
        conds.append(f"header {name.decode('latin-1')}: {want}")
    for name, value, rx in m.query:
        conds.append(
            f"query {name}={value if value is not None else '~' + (rx.pattern if rx else '')}"
        )
    if conds:
        out["conditions"] = conds
    return out


def _unmet(m: Any, what: str, method: bytes, hdrs: dict[bytes, bytes]) -> str:
    if what == "method":
        return f"method {m.method.decode()} (the request is {method.decode()})"
    kind, _, name = what.partition(" ")
    if kind == "header":
        got = hdrs.get(name.encode("latin-1"))
        sent = f"sent {got.decode('latin-1')!r}" if got is not None else "not sent"
        return f"header {name} ({sent})"
    return f"query parameter {name}"


def _gateway_lost(m: Any, w: Any) -> str:
    if (m.path_type, m.path) != (w.path_type, w.path):
        return f"matches too, but the more specific path {w.path_type} {w.path} wins"
    labels = _GRPC_ORDER if m.rule.key.kind == "GRPCRoute" else _HTTP_ORDER
    for i, (a, b) in enumerate(zip(w.order, m.order, strict=False)):
        if a != b:
            return f"matches too, but {ref(w.rule.key)} wins: {labels[min(i, len(labels) - 1)]}"
    return "matches too, but comes later"


def _gateway_policy(rule: Any, decision: Any) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    if rule is None:
        return out

    def add(name: str, detail: str) -> None:
        out.append({"name": name, "detail": detail})

    for f in rule.filters:
        if f.type == "RequestRedirect" and f.redirect is not None:
            where = getattr(decision, "location", b"").decode("latin-1")
            add("RequestRedirect", f"{f.redirect.status_code} to {where}")
        elif f.type == "URLRewrite" and f.rewrite is not None:
            parts = []
            if f.rewrite.path is not None:
                parts.append(f"path ({f.rewrite.path.type}) -> {getattr(decision, 'path', '?')}")
            if f.rewrite.hostname:
                parts.append(f"Host -> {f.rewrite.hostname}")
            add("URLRewrite", ", ".join(parts))
        elif f.header_modifier is not None:
            hm = f.header_modifier
            ops = [f"set {k}: {v}" for k, v in hm.set] + [f"add {k}: {v}" for k, v in hm.add]
            ops += [f"remove {k}" for k in hm.remove]
            add(f.type, ", ".join(ops))
        elif f.type == "RequestMirror" and f.mirror is not None:
            b = f.mirror.backend
            share = f"{f.mirror.percent}%" if f.mirror.percent is not None else "every request"
            add("RequestMirror", f"to {b.namespace}/{b.name}:{b.port} ({share})")
        else:
            add(f.type, "not supported: answered 500")
    if len(rule.backends) > 1:
        weights = ", ".join(f"{b.namespace}/{b.name}:{b.port} {b.weight}" for b in rule.backends)
        add("weights", f"{weights} (smooth weighted round-robin)")
    if getattr(rule, "request_timeout", None):
        add("timeout", f"request {rule.request_timeout:g} s")
    return out


def _gateway_tls(sock: Any, certs: Any, t: HttpTarget) -> dict[str, Any]:
    from netplane.ingress.gateway_plane import _SniContext

    sni = None if is_ip(t.name) else t.name
    ctx = _SniContext()
    ctx.load(sock, certs)
    hostname, cert = ctx.choose(sni)
    out: dict[str, Any] = {"sni": sni}
    if cert is None:
        out["why"] = "no listener on this socket has a usable certificate: handshakes fail"
        out["certificate"] = None
        return out
    secret = None
    for served in sock.listeners:
        for s in served.certificates:
            if certs.get(s) is cert:
                secret = f"{s.key.namespace}/{s.key.name}"
                break
        if secret:
            break
    if hostname is None:
        out["why"] = (
            f"no listener hostname covers {sni or 'an empty SNI'}: the first certificate serves"
        )
    else:
        out["why"] = f"listener hostname {hostname or '(none)'}: Secret {secret}"
    out["certificate"] = cert_dict(cert)
    if sni and not covers(cert.names, sni):
        out["warning"] = f"the certificate does not name {sni}: clients that verify will refuse it"
    return out
