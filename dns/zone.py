"""The cluster zone: every DNS name netplane answers for, derived from the ServiceTable.

Strategy: each service contributes a small map ``{name: {qtype: rdata tuple}}``
(:func:`service_names`), computed from its :class:`ServiceEntry` alone, so a
change to one EndpointSlice re-derives that service's names only.
:class:`Zone` keeps only which services own each name, and derives a name's
records from its owners' table entries when asked (a miss of the answer
cache, which holds the finished replies): at 10k services a stored record
map per name cost more than the rest of the DNS plane. It merges the
contributions (two headless services may share a pod's PTR name), keeps a
count of descendants per empty non-terminal (so ``demo.svc.cluster.local``
is NODATA, not NXDOMAIN, while a service lives in ``demo``), and reports
which names changed so the answer cache can drop exactly those.

Names are lower-case strings without the trailing dot. Record data is plain
Python (an address string, an SRV tuple ...); :mod:`netplane.dns.wire` turns
it into wire format. Names follow the Kubernetes DNS-Based Service Discovery
specification (schema 1.1.0) and CoreDNS's kubernetes plugin where the
specification leaves a choice.

Sans-IO: no sockets, no clock.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from dnslib import QTYPE

from netplane.addresses import IPNetwork
from netplane.model import ObjectKey, Pod
from netplane.service_table import EndpointAddress, ServiceEntry, ServiceKey

# Record types, from dnslib's table, bound once: each ``QTYPE.X`` is a Bimap
# lookup, too dear for a per-query comparison.
A, NS, CNAME, SOA, PTR = QTYPE.A, QTYPE.NS, QTYPE.CNAME, QTYPE.SOA, QTYPE.PTR
HINFO, TXT, AAAA, SRV = QTYPE.HINFO, QTYPE.TXT, QTYPE.AAAA, QTYPE.SRV
OPT, IXFR, AXFR, ANY = QTYPE.OPT, QTYPE.IXFR, QTYPE.AXFR, QTYPE.ANY

SCHEMA_VERSION = "1.1.0"
POD_MODES = ("disabled", "insecure", "verified")

Records = dict[int, tuple[Any, ...]]
# How many services' derived names the zone keeps between lookups.
_DERIVED_KEPT = 64


@dataclass(frozen=True, slots=True)
class Srv:
    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True, slots=True)
class Soa:
    mname: str
    rname: str
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int


def dashed(ip: str) -> str:
    """``10.0.0.1`` -> ``10-0-0-1``, ``fd00::1`` -> ``fd00--1`` (pod and endpoint names)."""
    return ip.replace(".", "-").replace(":", "-")


def undashed(label: str) -> str | None:
    """The address a dashed label names, canonical; None when it names none."""
    if "." in label or ":" in label:
        return None
    for candidate in (label.replace("-", "."), label.replace("-", ":")):
        try:
            addr = ipaddress.ip_address(candidate)
        except ValueError:
            continue
        return str(addr)
    return None


def _family_type(ip: str) -> int:
    return AAAA if ":" in ip else A


def reverse_zones(cidrs: Iterable[IPNetwork]) -> list[str]:
    """The reverse zone apexes that cover ``cidrs``.

    A CIDR not on a label boundary (octets for in-addr.arpa, nibbles for
    ip6.arpa) becomes every zone of the next boundary inside it, so
    10.96.0.0/12 gives 96.10.in-addr.arpa ... 111.10.in-addr.arpa (at most
    128 zones for IPv4, 8 for IPv6).
    """
    out: list[str] = []
    for net in cidrs:
        step, bits = (8, 32) if net.version == 4 else (4, 128)
        boundary = -(-net.prefixlen // step) * step
        subnets: list[IPNetwork] = (
            [net] if boundary == net.prefixlen else list(net.subnets(new_prefix=boundary))
        )
        for sub in subnets:
            labels = sub.network_address.reverse_pointer.split(".")
            drop = (bits - boundary) // step
            name = ".".join(labels[drop:])
            if name not in out:
                out.append(name)
    return out


def service_names(
    entry: ServiceEntry, domain: str, reverse: Sequence[IPNetwork]
) -> dict[str, Records]:
    """Every name one service owns, with its records.

    - ClusterIP/NodePort/LoadBalancer: ``<svc>.<ns>.svc.<domain>`` A/AAAA of
      the cluster IPs; SRV per named port pointing at that name; PTR for
      each cluster IP inside a reverse CIDR.
    - Headless: A/AAAA of every ready endpoint (every endpoint with
      publishNotReadyAddresses); ``<hostname>.<svc>...`` (or the dashed
      address without a hostname) per endpoint; SRV per named port, one per
      endpoint; PTR for endpoints with a hostname.
    - ExternalName: CNAME to the external name (and SRV per named port).
    """
    svc = entry.service
    base = f"{svc.key.name}.{svc.key.namespace}.svc.{domain}"
    out: dict[str, Records] = {}
    if svc.type == "ExternalName":
        target = svc.external_name.rstrip(".").lower()
        out[base] = {CNAME: (target,)}
        for p in entry.ports:
            if p.name:
                srv_name = f"_{p.name}._{p.protocol.lower()}.{base}"
                out[srv_name] = {SRV: (Srv(0, 100, p.port, target),)}
        return out
    if not svc.headless:
        rec: Records = {}
        for ip in svc.cluster_ips:
            t = _family_type(ip)
            rec[t] = (*rec.get(t, ()), ip)
            if _in(ip, reverse):
                out[ipaddress.ip_address(ip).reverse_pointer] = {PTR: (base,)}
        if rec:
            out[base] = rec
            for p in entry.ports:
                if p.name:
                    srv_name = f"_{p.name}._{p.protocol.lower()}.{base}"
                    out[srv_name] = {SRV: (Srv(0, 100, p.port, base),)}
        return out

    publish = svc.publish_not_ready_addresses
    ready = [a for a in entry.addresses if published(a, publish)]
    if not ready:
        return out  # no ready endpoint: the name does not exist (the spec's NXDOMAIN)
    rec = {}
    host_of: dict[str, str] = {}
    for a in ready:
        t = _family_type(a.address)
        rec[t] = (*rec.get(t, ()), a.address)
        host = f"{a.hostname or dashed(a.address)}.{base}"
        host_of[a.address] = host
        hrec = out.setdefault(host, {})
        hrec[t] = (*hrec.get(t, ()), a.address)
        if a.hostname and _in(a.address, reverse):
            out.setdefault(ipaddress.ip_address(a.address).reverse_pointer, {PTR: (host,)})
    out[base] = rec
    for p in entry.ports:
        if not p.name:
            continue
        targets = [(host_of[b.address], b.port) for b in p.backends if b.address in host_of]
        if not targets:
            continue
        weight = max(1, 100 // len(targets))
        srv_name = f"_{p.name}._{p.protocol.lower()}.{base}"
        out[srv_name] = {SRV: tuple(Srv(0, weight, port, host) for host, port in targets)}
    return out


def published(a: EndpointAddress, publish_not_ready: bool) -> bool:
    """A headless service's endpoint is in DNS: ready, or publishNotReadyAddresses."""
    return a.ready or publish_not_ready


def _in(ip: str, nets: Sequence[IPNetwork]) -> bool:
    if not nets:
        return False
    addr = ipaddress.ip_address(ip)
    return any(addr in n for n in nets)


def _merge(parts: Iterable[Records]) -> Records:
    out: Records = {}
    for part in parts:
        for t, values in part.items():
            have = out.get(t, ())
            out[t] = have + tuple(v for v in values if v not in have)
    return out


class Zone:
    """The names of the cluster domain and the reverse zones, kept per service."""

    def __init__(
        self,
        domain: str = "cluster.local",
        *,
        ttl: int = 5,
        reverse_cidrs: Sequence[IPNetwork] = (),
        pods: str = "disabled",
        ns_addresses: Sequence[str] = (),
        serial: int = 1,
    ) -> None:
        if pods not in POD_MODES:
            raise ValueError(f"pods: {pods!r} is not one of {', '.join(POD_MODES)}")
        self.domain = domain.strip(".").lower()
        self.ttl = ttl
        self.reverse_cidrs = tuple(reverse_cidrs)
        self.reverse_apexes = frozenset(reverse_zones(self.reverse_cidrs))
        self.pods = pods
        self.ns_addresses = tuple(ns_addresses)
        self.serial = serial
        self.ready = False
        # name -> the service that owns it, or a list when several do
        self._names: dict[str, ServiceKey | list[ServiceKey]] = {}
        # the table entry each service's names were derived from
        self._by_service: dict[ServiceKey, ServiceEntry] = {}
        # the names of a few services derived lately: (entry, names) by service
        self._derived: dict[ServiceKey, tuple[ServiceEntry, dict[str, Records]]] = {}
        self._ent: dict[str, int] = {}  # empty non-terminal -> number of names below it
        self._pod_ips: dict[ObjectKey, tuple[str, ...]] = {}
        self._pods_at: dict[tuple[str, str], int] = {}  # (namespace, ip) -> pods holding it
        self._pod_namespaces: dict[str, int] = {}
        self.apex_names = frozenset({self.domain, *self.reverse_apexes})

    # -- reading -------------------------------------------------------------

    @property
    def names(self) -> int:
        return len(self._names)

    def apex_of(self, name: str) -> str | None:
        """The zone (cluster domain or a reverse zone) that holds ``name``; None if none."""
        domain = self.domain
        if name == domain or name.endswith("." + domain):
            return domain
        if name.endswith(".arpa"):
            labels = name.split(".")
            for i in range(len(labels) - 1):
                suffix = ".".join(labels[i:])
                if suffix in self.reverse_apexes:
                    return suffix
        return None

    def exists(self, name: str) -> bool:
        """True for a name with records or with names below it (NODATA, not NXDOMAIN)."""
        if name in self._names or name in self._ent or name in self.apex_names:
            return True
        return name == f"dns.{self.domain}"  # above ns.dns.<domain>, the NS host

    def soa(self, apex: str) -> Soa:
        return Soa(
            mname=f"ns.dns.{self.domain}",
            rname=f"hostmaster.{self.domain}",
            serial=self.serial,
            refresh=7200,
            retry=1800,
            expire=86400,
            minimum=self.ttl,
        )

    def lookup(self, name: str) -> Records | None:
        """The records of ``name`` (lower-case, no trailing dot), derived or synthesized."""
        owners = self._names.get(name)
        if owners is not None:
            if owners.__class__ is list:
                return _merge(self._derive(o, self._by_service[o])[name] for o in owners)
            # A single ServiceKey here. mypy narrows on `__class__ is list` only
            # where it holds; isinstance() would narrow both ways, at a cost per query.
            return self._derive(owners, self._by_service[owners])[name]  # type: ignore[arg-type, index]  # not a list (above)
        if name in self.apex_names:
            return {SOA: (self.soa(name),), NS: (f"ns.dns.{self.domain}",)}
        domain = self.domain
        if name == f"dns-version.{domain}":
            return {TXT: (SCHEMA_VERSION,)}
        if name == f"ns.dns.{domain}":
            return self._ns_records()
        if self.pods != "disabled" and name.endswith(f".pod.{domain}"):
            return self._pod_records(name[: -len(f".pod.{domain}")])
        return None

    def owners(self, name: str) -> tuple[ServiceKey, ...]:
        """The services whose records make up ``name`` (explain reads this)."""
        owners = self._names.get(name)
        if owners is None:
            return ()
        return tuple(owners) if isinstance(owners, list) else (owners,)

    def known_names(self) -> Iterable[str]:
        """Every name with records, and every empty non-terminal (for nearest-name hints)."""
        yield from self._names
        yield from self._ent

    def _ns_records(self) -> Records | None:
        """This server's addresses: the kube-dns Service's cluster IPs, else the configured ones."""
        kube_dns = f"kube-dns.kube-system.svc.{self.domain}"
        own = self.lookup(kube_dns) if kube_dns in self._names else None
        addrs = tuple(ip for t in (A, AAAA) for ip in (own or {}).get(t, ())) or self.ns_addresses
        rec: Records = {}
        for ip in addrs:
            t = _family_type(ip)
            rec[t] = (*rec.get(t, ()), ip)
        return rec or None

    def _pod_records(self, rest: str) -> Records | None:
        label, _, namespace = rest.partition(".")
        if not namespace or "." in namespace:
            return None
        ip = undashed(label)
        if ip is None:
            return None
        if self.pods == "verified" and (namespace, ip) not in self._pods_at:
            return None
        return {_family_type(ip): (ip,)}

    def pod_namespace_exists(self, name: str) -> bool:
        """``<ns>.pod.<domain>`` and ``pod.<domain>`` as empty non-terminals."""
        if self.pods == "disabled":
            return False
        suffix = f"pod.{self.domain}"
        if name == suffix:
            return True
        ns, _, rest = name.partition(".")
        if rest != suffix:
            return False
        return self.pods == "insecure" or ns in self._pod_namespaces

    def dependency_names(self) -> tuple[str, ...]:
        """Names whose answers read other names (NS glue reads the kube-dns Service)."""
        return (f"ns.dns.{self.domain}", self.domain, *self.reverse_apexes)

    # -- writing ---------------------------------------------------------------

    def _derive(self, sk: ServiceKey, entry: ServiceEntry) -> dict[str, Records]:
        """The names of one service from its table entry, kept for a few services.

        A lookup usually reads one service's names more than once in a row
        (an SRV answer and the addresses of its targets), and a change reads
        the names of the entry it replaces.
        """
        kept = self._derived.get(sk)
        if kept is not None and kept[0] is entry:
            return kept[1]
        names = service_names(entry, self.domain, self.reverse_cidrs)
        if len(self._derived) >= _DERIVED_KEPT:
            del self._derived[next(iter(self._derived))]
        self._derived[sk] = (entry, names)
        return names

    def update_service(self, sk: ServiceKey, entry: ServiceEntry | None) -> set[str]:
        """Re-derive one service's names; return every name whose answer may have changed."""
        before_entry = self._by_service.pop(sk, None)
        old = self._derive(sk, before_entry) if before_entry is not None else {}
        new = self._derive(sk, entry) if entry is not None else {}
        if new:
            assert entry is not None
            self._by_service[sk] = entry
        else:
            self._derived.pop(sk, None)
        names = self._names
        changed: set[str] = set()
        for name in old.keys() | new.keys():
            if old.get(name) == new.get(name):
                continue
            changed.add(name)
            owners = names.get(name)
            if name not in new:
                if owners is None:
                    continue
                if isinstance(owners, list):
                    if sk in owners:
                        owners.remove(sk)
                    if len(owners) == 1:
                        names[name] = owners[0]
                    continue
                if owners != sk:
                    continue
                del names[name]
                self._count_ancestors(name, -1, changed)
            elif owners is None:
                names[name] = sk
                self._count_ancestors(name, +1, changed)
            # Owners in key order, so that a shared name answers the same
            # whatever order its services came in.
            elif isinstance(owners, list):
                if sk not in owners:
                    bisect.insort(owners, sk)
            elif owners != sk:
                names[name] = sorted([owners, sk])
        if changed:
            self.serial += 1
            changed.update(self.dependency_names())
        return changed

    def update_pod(self, key: ObjectKey, pod: Pod | None) -> set[str]:
        """Track pod IPs for ``verified`` pod records; return the pod names that changed."""
        old = self._pod_ips.pop(key, ())
        new = tuple(pod.pod_ips) if pod is not None else ()
        if new:
            self._pod_ips[key] = new
        if old == new:
            return set()
        ns = key.namespace
        for ip in old:
            left = self._pods_at.get((ns, ip), 0) - 1
            if left > 0:
                self._pods_at[(ns, ip)] = left
            else:
                self._pods_at.pop((ns, ip), None)
        for ip in new:
            self._pods_at[(ns, ip)] = self._pods_at.get((ns, ip), 0) + 1
        count = self._pod_namespaces.get(ns, 0) + (1 if new else 0) - (1 if old else 0)
        if count > 0:
            self._pod_namespaces[ns] = count
        else:
            self._pod_namespaces.pop(ns, None)
        suffix = f"{ns}.pod.{self.domain}"
        return {suffix, *(f"{dashed(ip)}.{suffix}" for ip in (*old, *new))}

    def _count_ancestors(self, name: str, delta: int, changed: set[str]) -> None:
        apex = self.apex_of(name)
        if apex is None:
            return
        ent = self._ent
        labels = name.split(".")
        stop = len(labels) - apex.count(".") - 1
        for i in range(1, stop):
            parent = ".".join(labels[i:])
            count = ent.get(parent, 0) + delta
            if count > 0:
                ent[parent] = count
                if count == 1 and delta > 0:
                    changed.add(parent)
            else:
                ent.pop(parent, None)
                changed.add(parent)

    def debug_state(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "reverse_zones": sorted(self.reverse_apexes),
            "names": len(self._names),
            "empty_non_terminals": len(self._ent),
            "services": len(self._by_service),
            "serial": self.serial,
            "pods": self.pods,
        }
