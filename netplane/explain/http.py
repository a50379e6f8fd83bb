"""Explaining an HTTP request: listener, matched rule, the rules that lost, policy, endpoints, TLS.

Every decision is the serving code's own: ``RouteTable.trace`` and
``RouteTable.preview`` (Ingress), ``PortRoutes.trace`` and ``preview``
(Gateway API, in :mod:`netplane.explain.gateway`), ``CertStore.lookup``,
``pool_port`` and ``pool_endpoints`` for the endpoints a backend uses. What
this module adds is words: why each loser lost, read from the comparison
keys the tables sort by (``scan_order`` for Ingress paths, ``_Match.order``
for Gateway API rules).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from netplane.addresses import hostport
from netplane.explain.common import endpoint, nearest
from netplane.explain.target import HttpTarget
from netplane.explain.views import Views


def explain_http(
    views: Views,
    t: HttpTarget,
    *,
    method: str = "GET",
    headers: list[tuple[str, str]] | tuple[()] = (),
    client_ip: str = "127.0.0.1",
) -> dict[str, Any]:
    method = method.upper()
    doc: dict[str, Any] = {
        "kind": "http",
        "target": t.url,
        "request": {
            "method": method,
            "scheme": "https" if t.https else "http",
            "host": t.host,
            "port": t.port,
            "target": t.target,
            "headers": [f"{k}: {v}" for k, v in headers],
            "client": client_ip,
        },
    }
    if not views.ready:
        return _unready(doc)
    if not views.ingress_on:
        doc["found"] = False
        doc["answer"] = "nothing serves HTTP: the ingress is off (--ingress-http/--ingress-https)"
        return doc
    hdrs = _header_map(t.host, headers)
    from netplane.explain.gateway import explain_gateway, gateway_socket

    gateway = gateway_socket(views, t)
    if gateway is not None:
        return explain_gateway(views, doc, t, gateway, method.encode(), hdrs, client_ip)
    return _ingress(views, doc, t, method.encode(), hdrs, client_ip)


def _unready(doc: dict[str, Any]) -> dict[str, Any]:
    doc["found"] = False
    doc["answer"] = "not ready: the sources have not delivered their initial state yet"
    return doc


def _header_map(host: str, headers: Any) -> dict[bytes, bytes]:
    """The request's fields as the HTTP/1.1 parser hands them to ``route()``."""
    out: dict[bytes, bytes] = {b"host": host.encode("latin-1")}
    for name, value in headers:
        lname = name.strip().lower().encode("latin-1")
        v = value.strip().encode("latin-1")
        if lname == b"host":
            out[b"host"] = v
        elif lname in out:
            out[lname] = out[lname] + (b"; " if lname == b"cookie" else b", ") + v
        else:
            out[lname] = v
    return out


# -- Ingress ------------------------------------------------------------------------


def _ingress(
    views: Views,
    doc: dict[str, Any],
    t: HttpTarget,
    method: bytes,
    hdrs: dict[bytes, bytes],
    client_ip: str,
) -> dict[str, Any]:
    from netplane.ingress.paths import prefix_key
    from netplane.ingress.routes import scan_order

    doc["listener"] = _ingress_listener(views, t)
    if t.https:  # the handshake comes before routing: it is explained even for a 404
        doc["tls"] = _ingress_tls(views, t)
    table = views.routes()
    host = hdrs[b"host"].decode("latin-1")
    tr = table.trace(host, t.target)
    decision = table.preview(host, t.target, https=t.https, client_ip=client_ip, headers=hdrs,
                             method=method)  # fmt: skip
    doc["decision"] = decision_dict(decision)
    doc["host"] = {
        "name": tr.name,
        "rule_host": None if tr.host is None else (tr.host or "*"),
        "how": tr.how,
        "tls": tr.tls,
        "others": [{"host": h or "*", "why": _host_lost(how, tr.how)} for h, how in tr.also],
    }
    w = tr.winner
    if tr.refused:
        doc["found"] = True
        doc["match"] = None
        doc["lost"] = []
        doc["answer"] = (
            "400: the path reads in ways that would match different rules "
            f"({', '.join(tr.paths or ('unreadable',))})"
        )
        return doc
    lost: list[dict[str, Any]] = []
    p = tr.paths[0] if tr.paths else t.target

    def key_of(loc: Any) -> tuple[int, int, str]:
        key = prefix_key(loc.path) if loc.kind == "Prefix" else loc.path
        return scan_order(len(key), loc.kind == "Prefix", loc)

    winner_c = None
    for c in tr.candidates:
        if c.location is w:
            winner_c = c
            continue
        loc = c.location
        item = _ingress_loc(loc, c.rule, c.scope)
        item["matches"] = c.matches
        if c.scope == "path":
            if not c.matches:
                item["why"] = _no_path_match(loc.kind, loc.path, p)
            elif w is not None and w.kind == "Exact":
                item["why"] = "matches too, but an Exact path wins"
            elif w is not None and w.kind in ("Prefix", "Regex"):
                kw, kl = key_of(w), key_of(loc)
                if kw[0] != kl[0]:
                    item["why"] = f"matches too, but the longer path {w.path} wins"
                elif kw[1] != kl[1]:
                    item["why"] = "matches too, but a Prefix path beats a regex of the same length"
                else:
                    item["why"] = f"matches too, but {w.path} sorts first (same length and kind)"
            else:
                item["why"] = "matches too, but comes later"
        elif c.scope == "host":
            item["why"] = "the host's defaultBackend serves only when no path matches"
        elif w is not None and winner_c is not None and winner_c.scope == "host":
            item["why"] = "the host's own defaultBackend comes first"
        else:
            item["why"] = "serves only requests that no rule takes"
        lost.append(item)
    for s in tr.shadowed:
        if s.owner is not w and not any(c.location is s.owner and c.matches for c in tr.candidates):
            continue
        item = {
            "source": "Ingress",
            "object": ref(s.ingress),
            "rule": s.rule[0],
            "path_index": s.rule[1],
            "path": s.path,
            "pathType": s.path_type,
            "matches": True,
        }
        if s.canary:
            item["why"] = f"a canary of {ref(s.owner.ingress)}'s path (see policy)"
        else:
            item["why"] = f"same path as {ref(s.owner.ingress)}, which is older: ignored here"
        lost.append(item)
    doc["lost"] = lost
    if w is None:
        doc["found"] = False
        doc["match"] = None
        if tr.host is None:
            hosts = [h for h in table.hosts() if h]
            doc["candidates"] = nearest(tr.name, hosts)
            doc["answer"] = f"404: no Ingress rule host takes {tr.name!r}"
        else:
            doc["candidates"] = nearest(p, table.paths_of(tr.host))
            doc["answer"] = (
                f"404: no path of host {tr.host or '*'} matches {p} (a host whose paths"
                " do not match does not fall through to a wildcard or to rules without a host)"
            )
        return doc
    doc["found"] = True
    doc["match"] = _ingress_loc(w, winner_c.rule if winner_c else None,
                                winner_c.scope if winner_c else "path")  # fmt: skip
    got = table.ingress(w.ingress)
    ann = got[1] if got is not None else None
    doc["policy"] = _ingress_policy(w, ann, decision)
    pool = w.pool
    if w.canary is not None and getattr(decision, "ingress", None) == w.canary.ingress:
        pool = w.canary.pool
    doc["backend"] = backend_of(views, pool) if pool is not None else None
    doc["answer"] = answer_line(doc)
    return doc


def _ingress_listener(views: Views, t: HttpTarget) -> dict[str, Any]:
    listeners = views.ingress_listeners()
    mine = [(h, p) for h, p, https in listeners if https == t.https]
    proto = "HTTPS" if t.https else "HTTP"
    if not mine:
        flag = "--ingress-https" if t.https else "--ingress-http"
        return {"kind": "Ingress", "protocol": proto, "address": None,
                "note": f"no ingress {proto} listener ({flag} off); routing as it would be"}  # fmt: skip
    host, port = mine[0]
    out: dict[str, Any] = {"kind": "Ingress", "protocol": proto, "address": hostport(host, port)}
    if port != t.port:
        out["note"] = (
            f"the URL names port {t.port}; Ingress rules are the same on every ingress"
            f" listener, here {hostport(host, port)}"
        )
    return out


def _host_lost(how: str, chosen: str) -> str:
    if how == "wildcard":
        return "covers the name too, but an exact rule host wins"
    if chosen == "exact":
        return "rules without a host serve only names no rule host takes"
    return "rules without a host serve only names no exact or wildcard host takes"


def _no_path_match(kind: str, path: str, p: str) -> str:
    if kind == "Exact":
        return f"{p} is not exactly {path}"
    if kind == "Prefix":
        return f"{p} is not under {path}"
    return f"the regex {path} does not match {p}"


def _ingress_loc(loc: Any, rule: tuple[int, int] | None, scope: str) -> dict[str, Any]:
    out: dict[str, Any] = {"source": "Ingress", "object": ref(loc.ingress)}
    if scope == "path":
        out.update(host=loc.host or "*", path=loc.path, pathType=loc.kind)
        if rule is not None:
            out.update(rule=rule[0], path_index=rule[1])
    else:
        out["pathType"] = "defaultBackend"
        out["host"] = (loc.host or "*") if scope == "host" else None
    return out


def _ingress_policy(loc: Any, ann: Any, decision: Any) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []

    def add(name: str, detail: str) -> None:
        out.append({"name": name, "detail": detail})

    if loc.allow is not None:
        nets = ", ".join(str(n) for n in loc.allow)
        add("allowlist", f"whitelist-source-range {nets}; other clients get 403")
    if loc.redirect is not None:
        add("redirect", f"{loc.redirect.status} to {loc.redirect.location.decode('latin-1')}")
    if loc.app_root is not None:
        add("app-root", f"/ redirects (302) to {loc.app_root.decode('latin-1')}")
    if loc.ssl_redirect:
        why = "force-ssl-redirect" if ann is not None and ann.force_ssl_redirect else (
            "the host is in spec.tls")  # fmt: skip
        add("ssl-redirect", f"plain HTTP gets 308 to HTTPS ({why})")
    if loc.rewrite is not None and ann is not None:
        add("rewrite-target", f"{ann.rewrite_target}: the upstream is asked for"
            f" {getattr(decision, 'path', '?')}")  # fmt: skip
    if loc.canary is not None:
        c = loc.canary
        rules = []
        if c.header is not None:
            h = c.header.decode("latin-1")
            value = c.header_value.decode("latin-1") if c.header_value is not None else None
            rules.append(f"header {h}: {value}" if value else f"header {h}: always|never")
        rules.append(f"weight {c.weight}%")
        chosen = getattr(decision, "ingress", None) == c.ingress
        add("canary", f"{ref(c.ingress)} ({', '.join(rules)}); this request goes to the "
            + ("canary" if chosen else "main backend"))  # fmt: skip
    if loc.affinity is not None:
        a = loc.affinity
        add("affinity", f"cookie {a.name}: a client keeps its endpoint while it is a candidate")
    if loc.upstream_tls or loc.upstream_h2:
        add("backend-protocol", ("HTTPS" if loc.upstream_tls else "HTTP")
            + (", HTTP/2" if loc.upstream_h2 else ""))  # fmt: skip
    if loc.unsupported is not None:
        add("backend.resource", "not supported: answered 503")
    return out


# -- both ---------------------------------------------------------------------------


def decision_dict(d: Any) -> dict[str, Any]:
    from netplane.ingress.routes import Forward, Redirect

    if isinstance(d, Forward):
        upstream = "https" if d.upstream_tls else "http"
        if d.upstream_h2:
            upstream += " (HTTP/2)"
        out: dict[str, Any] = {
            "action": "forward",
            "service": "/".join(d.service),
            "route": ref(d.ingress),
            "targets": [hostport(a, p) for a, p in d.targets],
            "path": d.path,
            "upstream": upstream,
        }
        if d.set_cookie is not None:
            out["set_cookie"] = d.set_cookie.decode("latin-1")
        return out
    if isinstance(d, Redirect):
        return {"action": "redirect", "status": d.status, "location": d.location.decode("latin-1")}
    return {"action": "respond", "status": d.status, "body": d.body.decode("latin-1").strip()}


def backend_of(views: Views, pool: Any) -> dict[str, Any]:
    """The Service port behind a backend's pool and the endpoints it uses, as ``_Pool.update``."""
    from netplane.ingress.routes import pool_endpoints, pool_port

    ns, name, number, pname = pool.key
    out: dict[str, Any] = {
        "service": f"{ns}/{name}",
        "port": number if number is not None else pname,
    }
    entry = views.table.get(ns, name)
    port = pool_port(entry, number, pname) if entry is not None else None
    if entry is None or port is None:
        out["endpoints"] = []
        out["if_none_ready"] = pool.unavailable.decode("latin-1").strip()
        out["problem"] = out["if_none_ready"]
        return out
    out["port"] = f"{port.name or port.port} ({port.port}/{port.protocol}" + (
        f" -> {port.target_port})" if port.target_port != port.port else ")"
    )
    pna = entry.service.publish_not_ready_addresses
    chosen, fallback = pool_endpoints(port.backends, pna)
    used = {id(b) for b in chosen}
    eps = []
    for b in port.backends:
        if id(b) in used:
            why = "serving, terminating: no endpoint is ready" if fallback else (
                "ready" if b.ready else "not ready; publishNotReadyAddresses")  # fmt: skip
        elif b.serving and b.terminating:
            why = "terminating: used only when no endpoint is ready"
        elif b.terminating:
            why = "terminating, no longer serving"
        else:
            why = "not ready"
        eps.append(endpoint(b, used=id(b) in used, why=why))
    out["endpoints"] = eps
    if pna:
        out["if_none_ready"] = "publishNotReadyAddresses: every endpoint is used, ready or not"
    else:
        spare, _ = pool_endpoints([b for b in port.backends if not b.ready], pna)
        if spare:
            addrs = ", ".join(hostport(b.address, b.port) for b in spare)
            out["if_none_ready"] = f"the serving, terminating ones take it: {addrs}"
        else:
            out["if_none_ready"] = (
                f"503 Service Unavailable: no ready endpoint for service {ns}/{name}"
                f" port {number if number is not None else repr(pname)}"
            )
    return out


def _ingress_tls(views: Views, t: HttpTarget) -> dict[str, Any]:
    from netplane.ingress.paths import wildcard_parent

    certs = views.certs()
    sni = None if is_ip(t.name) else t.name
    cert = certs.lookup(sni)
    default = certs.lookup(None)
    info = certs.debug_state()
    hosts = info["hosts"]
    out: dict[str, Any] = {"sni": sni}
    parent = wildcard_parent(sni) if sni else None
    entries = [(sni, "exact")] if sni else []
    if parent is not None:
        entries.append((f"*.{parent}", "wildcard"))
    why = None
    for name, how in entries:
        h = hosts.get(name)
        if h is None:
            continue
        if isinstance(h["certificate"], dict):  # usable: lookup() returns it for the name
            why = f"{how} spec.tls host {name} of Ingress {h['ingress']}: Secret {h['secret']}"
            break
        if why is None:
            why = (
                f"spec.tls host {name} of Ingress {h['ingress']} names Secret {h['secret']},"
                " which is missing or rejected: the default certificate serves"
            )
    if why is None:
        why = (
            "no SNI (an IP address): the default certificate serves"
            if sni is None
            else f"no Ingress spec.tls host covers {sni}: the default certificate serves"
        )
    out["why"] = why
    out["certificate"] = cert_dict(cert)
    if cert is default:
        out["certificate"]["source"] = info["default"]["source"]
    if sni and not covers(cert.names, sni):
        out["warning"] = f"the certificate does not name {sni}: clients that verify will refuse it"
    return out


def cert_dict(cert: Any) -> dict[str, Any]:
    return {"subject": cert.subject, "dnsNames": list(cert.names), "notAfter": cert.not_after}


def covers(names: tuple[str, ...], host: str) -> bool:
    from netplane.ingress.paths import wildcard_parent

    parent = wildcard_parent(host)
    return any(n.lower() == host or (parent and n.lower() == f"*.{parent}") for n in names)


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def ref(key: Any) -> str:
    return f"{key.namespace}/{key.name}" if key.namespace else key.name


def answer_line(doc: dict[str, Any]) -> str:
    """One line: what the request gets."""
    d = doc["decision"]
    m = doc["match"]
    where = f"{m['source']} {m['object']}"
    if "rule" in m:
        where += f" rule {m['rule']}"
    if d["action"] == "forward":
        b = doc.get("backend") or {}
        used = sum(1 for e in b.get("endpoints", ()) if e.get("used"))
        return (f"{d['service']} ({where}): {used} endpoint{'s' if used != 1 else ''},"
                f" first {d['targets'][0]}")  # fmt: skip
    if d["action"] == "redirect":
        return f"{d['status']} redirect to {d['location']} ({where})"
    return f"{d['status']}: {d['body']} ({where})"
