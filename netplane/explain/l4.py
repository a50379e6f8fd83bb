"""Explaining a service address: the service port, its frontends, datapath, policy, endpoints.

The frontend is found as the proxy finds it: :func:`~netplane.l4.routes.frontends_of`
builds the Service's routes and pickers, :func:`~netplane.l4.routes.route_at`
picks the route of the address (a NodePort through its wildcard). The
candidates are that :class:`~netplane.l4.picker.Picker`'s, and each
endpoint's reason comes from :func:`~netplane.l4.picker.explain_endpoints`,
which runs the picker's own categorisation. The datapath is
:func:`~netplane.l4.datapath.choose`, and what the kernel has is the
running :class:`~netplane.l4.kernel.KernelDatapath`'s, or, offline,
:func:`~netplane.l4.nft_ruleset.plan_service`'s.
"""

from __future__ import annotations

import heapq
from typing import Any

from netplane.addresses import hostport
from netplane.explain.common import NEAREST, endpoint
from netplane.explain.target import L4Target
from netplane.explain.views import Views
from netplane.service_table import PortEntry, ServiceEntry


def explain_l4(views: Views, t: L4Target) -> dict[str, Any]:
    from netplane.l4.routes import frontends_of, route_at

    doc: dict[str, Any] = {"kind": "l4", "target": t.text}
    if not views.ready:
        doc["found"] = False
        doc["answer"] = "not ready: the sources have not delivered their initial state yet"
        return doc
    cfg = views.config
    node = views.node()
    node_ips = cfg.effective_nodeport_addresses
    entries = _entries_at(views, t)
    found = []
    for entry in entries:
        routes, _problems = frontends_of(entry, {}, node, node_ips, default_policy=cfg.lb_policy)
        for proto in t.protocols:
            route = route_at(routes, t.address, t.port, proto)
            if route is not None:
                found.append((entry, route, routes))
    if not found:
        doc["found"] = False
        listener = _own_listener(views, t)
        if listener:
            doc["answer"] = listener
        else:
            doc["answer"] = f"no service port has the frontend {t.text}"
        doc["candidates"] = _nearest_frontends(views, t, node_ips)
        return doc
    doc["found"] = True
    doc["ports"] = [_port(views, t, entry, route, routes, node) for entry, route, routes in found]
    doc["answer"] = "; ".join(p["answer"] for p in doc["ports"])
    if not cfg.proxy:
        doc["answer"] = "the L4 proxy is off (--proxy off): nothing serves it"
    return doc


def _entries_at(views: Views, t: L4Target) -> list[ServiceEntry]:
    """Services with a frontend on the port: on the address, or a NodePort (every node address)."""
    index = views.frontends()
    keys: set[tuple[str, str]] = set()
    for proto in t.protocols:
        keys |= index.services(t.address, t.port, proto)
    entries = (views.table.get(*sk) for sk in sorted(keys))
    return [e for e in entries if e is not None]


def _port(
    views: Views, t: L4Target, entry: ServiceEntry, route: Any, routes: dict, node: Any
) -> dict[str, Any]:
    from netplane.l4.picker import explain_endpoints

    svc = entry.service
    picker = route.picker
    port = _port_of(entry, picker, routes)
    kind = next(
        (fe.kind for fe in port.frontends if fe.port == t.port and fe.ip == t.address),
        "NodePort",
    )
    external = route.external
    policy_name = "externalTrafficPolicy" if external else "internalTrafficPolicy"
    policy_value = svc.external_traffic_policy if external else svc.internal_traffic_policy
    verdicts = explain_endpoints(entry, port, node, external=external)
    order = [hostport(c.address, c.port) for c in picker.candidates(external=external)]
    affinity = (
        f"ClientIP, {svc.affinity_timeout} s" if svc.session_affinity == "ClientIP" else "None"
    )
    out: dict[str, Any] = {
        "service": f"{svc.key.namespace}/{svc.key.name}",
        "type": svc.type,
        "port": {
            "name": port.name or None,
            "port": port.port,
            "protocol": port.protocol,
            "targetPort": port.target_port,
            "nodePort": port.node_port,
        },
        "frontend": {
            "address": f"{hostport(t.address, t.port)}/{port.protocol}",
            "kind": kind,
            "traffic": "external" if external else "cluster (internal)",
        },
        "frontends": _frontends(routes, picker),
        "datapath": _datapath(views, entry, port),
        "policy": {
            "balancing": picker.policy,
            "problem": picker.policy_problem,
            "affinity": affinity,
            "traffic_policy": f"{policy_name} {policy_value}",
            "proxy_protocol": route.proxy_protocol,
        },
        "node": {"name": node.name or None, "zone": node.zone or None},
        "endpoints": [endpoint(v.backend, used=v.used, why=v.reason) for v in verdicts],
        "order": order,
    }
    label = f"{out['service']} port {port.name or port.port}/{port.protocol}"
    if order:
        n = len(order)
        out["answer"] = (
            f"{label}: {picker.policy} over {n} endpoint{'s' if n != 1 else ''}"
            f" ({out['datapath']['name'] or 'not served'})"
        )
    else:
        kernel = out["datapath"]["name"] == "nftables"
        out["answer"] = f"{label}: no endpoint for this traffic: " + (
            "the kernel rejects it (TCP reset, ICMP unreachable)"
            if kernel
            else "the proxy resets TCP connections and drops UDP datagrams"
        )
    return out


def _port_of(entry: ServiceEntry, picker: Any, routes: dict) -> PortEntry:
    """The service port a picker serves (each port has its own picker)."""
    mine = {(k[1], k[2]) for k, r in routes.items() if r.picker is picker}
    return next(p for p in entry.ports if any((fe.port, fe.protocol) in mine for fe in p.frontends))


def _frontends(routes: dict, picker: Any) -> list[str]:
    out = []
    for (ip, port, proto), r in sorted(routes.items()):
        if r.picker is picker:
            out.append(f"{hostport(ip, port)}/{proto} ({'external' if r.external else 'cluster'})")
    return out


def _datapath(views: Views, entry: ServiceEntry, port: PortEntry) -> dict[str, Any]:
    from netplane.l4.datapath import KERNEL, choose

    cfg = views.config
    if not cfg.proxy:
        return {"name": None, "reason": "the L4 proxy is off (--proxy off)"}
    ns, name = entry.key
    label = port.name or str(port.port)
    kernel = views.plane("nftables")
    if kernel is not None:
        now, reason = choose(entry, port, kernel.mode, default_policy=cfg.lb_policy)
        out: dict[str, Any] = {"name": now, "reason": reason}
        for p in kernel.ports():
            if (p.namespace, p.name, p.port) == (ns, name, label):
                out["programmed"] = {
                    "datapath": p.datapath,
                    "reason": p.reason,
                    "endpoints": p.endpoints,
                    "external_endpoints": p.external_endpoints,
                }
        return out
    if cfg.mode != "node":
        return {
            "name": "userspace",
            "reason": "local mode: the nftables datapath runs in node mode only",
        }
    now, reason = choose(entry, port, cfg.l4_datapath, default_policy=cfg.lb_policy)
    out = {"name": now, "reason": reason}
    if now == KERNEL:
        from netplane.l4.nft_ruleset import Settings, plan_service

        plan = plan_service(
            entry,
            Settings(
                node=views.node(),
                nodeport_addresses=cfg.effective_nodeport_addresses,
                service_cidrs=tuple(cfg.effective_service_cidrs),
                mode=cfg.l4_datapath,
                default_policy=cfg.lb_policy,
            ),
        )
        for p in plan.ports:
            if p.port == label:
                out["programmed"] = {
                    "datapath": p.datapath,
                    "reason": "as netplane run would program it (nft not asked)",
                    "endpoints": p.endpoints,
                    "external_endpoints": p.external_endpoints,
                }
    return out


def _own_listener(views: Views, t: L4Target) -> str | None:
    """When the address is one of netplane's own listeners: what it is, and what to ask instead."""
    cfg = views.config
    mine = []
    for host, port, https in views.ingress_listeners():
        mine.append(((host, port, "TCP"), f"the ingress {'HTTPS' if https else 'HTTP'} listener;"
                     " explain a URL instead (netplane explain http://HOST/PATH)"))  # fmt: skip
    if cfg.dns is not None:
        for proto in ("UDP", "TCP"):
            mine.append(((cfg.dns.host, cfg.dns.port, proto),
                         "netplane's DNS listener; explain a name instead (netplane explain NAME)"))  # fmt: skip
    if cfg.admin is not None:
        mine.append(((cfg.admin.host, cfg.admin.port, "TCP"), "netplane's admin server"))
    routes, _world, _certs = views.gateway() if views.ingress_on else (None, None, None)
    if routes is not None:
        for host, port in routes.ports:
            mine.append(((host, port, "TCP"), "a Gateway listener; explain a URL instead"))
    for (host, port, proto), what in mine:
        if port == t.port and proto in t.protocols and host in (t.address, "0.0.0.0", "::"):
            return f"{t.text} is {what}"
    return None


def _nearest_frontends(views: Views, t: L4Target, node_ips: tuple[str, ...]) -> list[str]:
    """Frontends near the target: the closest addresses by number, the same port first,
    as ``ip:port/proto (namespace/name kind)``."""
    from netplane.explain.views import address_number

    index = views.frontends()
    fam, want = address_number(t.address)
    keys = list(index.by_key)
    nums = index.numbers
    node = {ip: address_number(ip) for ip in node_ips}
    scored: list[tuple[int, int, int, str, int]] = []
    for i, (fip, port, _proto) in enumerate(keys):
        if fip is not None:
            f, n = nums[fip]
            scored.append((f != fam, abs(n - want), port != t.port, fip, i))
        else:
            for ip, (f, n) in node.items():
                scored.append((f != fam, abs(n - want), port != t.port, ip, i))
    out = []
    for *_score, ip, i in heapq.nsmallest(NEAREST, scored):
        key = keys[i]
        for sk in sorted(index.by_key.get(key, ())):
            text = f"{hostport(ip, key[1])}/{key[2].lower()}"
            out.append(f"{text} ({sk[0]}/{sk[1]} {_kind(views, sk, key)})")
    return out[:NEAREST]


def _kind(views: Views, sk: tuple[str, str], key: tuple[str | None, int, str]) -> str:
    entry = views.table.get(*sk)
    for p in entry.ports if entry is not None else ():
        for fe in p.frontends:
            if (fe.ip, fe.port, fe.protocol) == key:
                return fe.kind
    return "frontend"
