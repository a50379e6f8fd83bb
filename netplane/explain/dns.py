"""Explaining a DNS name: the records, the answer as dig prints it, and why.

The answer is :func:`netplane.dns.answer.answer` over the zone that serves
(or one built like it), packed by :func:`netplane.dns.wire.pack_reply` as
the server packs it; dnslib prints the reply in dig's layout. The reasons
read the zone's owners of the name (:meth:`Zone.owners`) and the Service
entries behind them: headless or not, ExternalName, which endpoints are
published (:func:`netplane.dns.zone.published`, the rule the zone uses).
"""

from __future__ import annotations

from typing import Any

from netplane.explain.common import nearest
from netplane.explain.target import DnsTarget
from netplane.explain.views import Views

_STATUS_NAMES = {0: "NOERROR", 2: "SERVFAIL", 3: "NXDOMAIN"}


def explain_dns(views: Views, t: DnsTarget) -> dict[str, Any]:
    from dnslib import QTYPE, DNSRecord

    from netplane.dns.answer import answer
    from netplane.dns.wire import pack_reply, parse_query

    zone = views.zone()
    qtype = getattr(QTYPE, t.qtype)
    lname = t.name.lower()
    doc: dict[str, Any] = {"kind": "dns", "target": t.address or t.name, "name": t.name,
                           "type": t.qtype}  # fmt: skip
    ans = answer(zone, t.name, qtype)
    if ans is None:
        doc["found"] = False
        doc["status"] = "not ours"
        doc["answer"] = (
            f"{t.name} is outside {zone.domain} and the reverse zones: netplane forwards it"
            " to its upstreams for clients in --dns-allow, and refuses others"
        )
        if t.address:
            doc["why"] = _ptr_miss(views, zone, t.address, outside=True)
            return doc
        doc["why"] = []
        doc["candidates"] = _nearest_names(zone, lname) if "." in lname else []
        return doc
    q = DNSRecord.question(t.name, t.qtype)
    q.header.id = 1  # a fixed id: the same question prints the same answer
    wire = pack_reply(parse_query(q.pack()), ans, max_size=65535, udp_cap=65535)
    reply = DNSRecord.parse(wire)
    doc["dig"] = str(reply).splitlines()
    status = _STATUS_NAMES.get(ans.rcode, str(ans.rcode))
    if status == "NOERROR" and not any(rr.rtype == qtype for rr in ans.answer):
        status = "NODATA" if not ans.answer else "NOERROR"
    doc["status"] = status
    doc["records"] = [f"{rr.rname} {rr.ttl} {QTYPE.get(rr.rtype)} {rr.rdata}" for rr in reply.rr]
    why: list[str] = []
    doc["why"] = why
    if status == "SERVFAIL":
        doc["found"] = False
        doc["answer"] = "SERVFAIL: the zone is not ready (the sources have not synced)"
        return doc
    names = [lname] + [str(rr.rdata).rstrip(".").lower() for rr in ans.answer
                       if rr.rtype == QTYPE.CNAME]  # fmt: skip
    seen: set[tuple[str, str]] = set()
    for name in names:
        for sk in zone.owners(name):
            if sk not in seen:
                seen.add(sk)
                why.extend(_service_reasons(views, zone, sk, name))
    if status == "NXDOMAIN":
        doc["found"] = False
        why.extend(_nxdomain(views, zone, lname, t))
        doc["candidates"] = _nearest_names(zone, lname)
        doc["answer"] = f"NXDOMAIN: {t.name} does not exist"
        return doc
    doc["found"] = True
    if status == "NODATA":
        records = zone.lookup(lname)
        if records:
            have = ", ".join(sorted(QTYPE.get(k) for k in records))
            first = (f"{t.name} has {have} records but no {t.qtype}: NODATA (NOERROR, no"
                     " answer; the SOA in the authority section says how long to cache it)")  # fmt: skip
        else:
            first = f"{t.name} has no records, but names exist below it: NODATA, not NXDOMAIN"
        why.insert(0, first)
        if t.qtype == "SRV":
            srv = [n for sk in zone.owners(lname) for n in _srv_names(views, sk, lname)]
            if srv:
                why.insert(1, f"SRV records are on the named ports' names: {', '.join(srv)}")
        doc["answer"] = f"NODATA: no {t.qtype} record for {t.name}"
        return doc
    n = len(reply.rr)
    doc["answer"] = f"NOERROR: {n} record{'s' if n != 1 else ''}" + (
        f" ({', '.join(str(rr.rdata) for rr in reply.rr[:4])}{', ...' if n > 4 else ''})"
        if n
        else ""
    )
    return doc


def _service_reasons(views: Views, zone: Any, sk: tuple[str, str], name: str) -> list[str]:
    """Why a service's records look as they do."""
    from netplane.dns.zone import published

    entry = views.table.get(*sk)
    if entry is None:
        return []
    svc = entry.service
    ref = f"{sk[0]}/{sk[1]}"
    if svc.type == "ExternalName":
        target = svc.external_name.rstrip(".").lower()
        inside = zone.apex_of(target) == zone.domain
        follow = (
            f"followed, since it is inside {zone.domain}"
            if inside
            else f"not followed: it is outside {zone.domain}, the client's resolver asks for it"
        )
        return [f"{ref} is an ExternalName Service: {name} is a CNAME to {target}, {follow}"]
    if not svc.headless:
        ips = ", ".join(svc.cluster_ips) or "none"
        return [f"{ref} is a {svc.type} Service: its name has its cluster IPs ({ips})"]
    pna = svc.publish_not_ready_addresses
    out = [
        f"{ref} is headless (clusterIP: None): its name has the endpoints' own addresses"
        + (", ready or not (publishNotReadyAddresses)" if pna else ", the ready ones")
    ]
    for a in entry.addresses:
        host = f" ({a.hostname})" if a.hostname else ""
        if published(a, pna):
            out.append(f"  {a.address}{host}: in, {'ready' if a.ready else 'not ready'}")
        else:
            out.append(f"  {a.address}{host}: out, not ready")
    return out


def _srv_names(views: Views, sk: tuple[str, str], base: str) -> list[str]:
    entry = views.table.get(*sk)
    if entry is None:
        return []
    return [f"_{p.name}._{p.protocol.lower()}.{base}" for p in entry.ports if p.name]


def _nxdomain(views: Views, zone: Any, lname: str, t: DnsTarget) -> list[str]:
    """Why the name does not exist, by its shape."""
    from netplane.dns.zone import published

    if t.address:
        return _ptr_miss(views, zone, t.address)
    domain = zone.domain
    if not lname.endswith("." + domain):
        return [f"{t.name} is in a reverse zone, and no cluster IP or endpoint with a hostname"
                " maps to it"]  # fmt: skip
    labels = lname[: -len(domain) - 1].split(".")
    if labels[-1:] == ["pod"]:
        return [f"pod names: --dns-pods is {zone.pods}" + (
            "" if zone.pods != "verified" else "; verified answers only addresses of pods in"
            " that namespace")]  # fmt: skip
    if len(labels) < 3 or labels[-1] != "svc":
        return [f"names in {domain} have the shape SERVICE.NAMESPACE.svc.{domain}"]
    if labels[0].startswith("_") and len(labels) == 5:
        port, proto, svc_name, ns = labels[0][1:], labels[1][1:], labels[2], labels[3]
        entry = views.table.get(ns, svc_name)
        if entry is None:
            return [f"no Service {ns}/{svc_name}"]
        named = [f"{p.name}/{p.protocol.lower()}" for p in entry.ports if p.name]
        return [f"SRV names exist for named ports only; {ns}/{svc_name} has "
                + (", ".join(named) if named else "none") + f", not {port}/{proto}"]  # fmt: skip
    if len(labels) == 4:
        host, svc_name, ns = labels[0], labels[1], labels[2]
        entry = views.table.get(ns, svc_name)
        if entry is None:
            return [f"no Service {ns}/{svc_name}"]
        if not entry.service.headless:
            return [f"{ns}/{svc_name} is not headless: only headless Services name endpoints"]
        return [f"no published endpoint of {ns}/{svc_name} is named {host} (a hostname, or"
                " the dashed address)"]  # fmt: skip
    if len(labels) != 3:
        return [f"names in {domain} have the shape SERVICE.NAMESPACE.svc.{domain}"]
    svc_name, ns = labels[0], labels[1]
    entry = views.table.get(ns, svc_name)
    if entry is None:
        return [f"no Service {ns}/{svc_name}"]
    svc = entry.service
    if svc.headless:
        pna = svc.publish_not_ready_addresses
        left = sum(1 for a in entry.addresses if not published(a, pna))
        return [f"{ns}/{svc_name} is headless and has no ready endpoint ({left} not ready,"
                " publishNotReadyAddresses is false): its name does not exist, as the DNS"
                " specification says"]  # fmt: skip
    return [f"{ns}/{svc_name} has no cluster IP"]


def _ptr_miss(views: Views, zone: Any, address: str, *, outside: bool = False) -> list[str]:
    """What the address is in the cluster, and why it has no PTR record here."""
    zones = ", ".join(sorted(zone.reverse_apexes)[:3]) + (", ..." if len(zone.reverse_apexes) > 3
                                                         else "")  # fmt: skip
    where = (
        f"the reverse zones netplane answers are those of the service and pod CIDRs"
        f" ({zones or 'none'}; --service-cidr, --pod-cidr)"
    )
    for entry in views.table:
        ref = f"{entry.service.key.namespace}/{entry.service.key.name}"
        if address in entry.service.cluster_ips:
            return [f"{address} is a cluster IP of {ref}, outside them: {where}"]
        for a in entry.addresses:
            if a.address != address:
                continue
            what = f"{address} is an endpoint of {ref}"
            if outside:
                return [f"{what}; {where}"]
            if not entry.service.headless:
                return [f"{what}, which is not headless: no PTR record"]
            if not a.hostname:
                return [f"{what} (headless) without a hostname: only endpoints with a"
                        " hostname get a PTR record"]  # fmt: skip
    if outside:
        return [f"no Service has {address}; {where}"]
    return [f"no cluster IP and no headless endpoint with a hostname is {address}"]


def _nearest_names(zone: Any, lname: str) -> list[str]:
    """Known names near ``lname``: among its siblings first, then one level up, and so on."""
    names = list(zone.known_names())
    labels = lname.split(".")
    depth = len(labels)
    for k in range(1, depth):
        # The names of the same depth under the longest suffix that has any, compared
        # by the labels that differ (a shared suffix would make every name look close).
        suffix = "." + ".".join(labels[k:])
        pool = {n[: -len(suffix)]: n for n in names
                if n.endswith(suffix) and n.count(".") + 1 == depth}  # fmt: skip
        if pool:
            return [pool[p] for p in nearest(lname[: -len(suffix)], pool)]
    return nearest(lname, names)
