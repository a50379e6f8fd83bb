"""ServiceTable: per service port, its frontends and its endpoints.

This is the derived table that the L4 proxy and DNS both read. It is a pure
function of :class:`ClusterState`, rebuilt per changed service: ``apply``
maps each changed key (Service, EndpointSlice, Endpoints, Pod) to the
services it touches and rebuilds only those, so one EndpointSlice change
costs work in proportion to its service, not to the cluster.

Endpoint ports come from the slice port whose name and protocol match the
service port, as kube-proxy reads them; a hand-written slice with no ports
at all falls back to a numeric targetPort. Only an endpoint's first address
is used, as kube-proxy does. FQDN slices are ignored.

With ``derive_from_pods`` (manifest and embedding mode, where no
EndpointSlice controller runs), a Service with a selector and no slices gets
its endpoints from matching Pods that have an IP, the way the EndpointSlice
controller would build them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from netplane.model import Endpoint, EndpointSlice, ObjectKey, Pod, Service, ServicePort
from netplane.model.meta import fast_constructor
from netplane.state import ClusterState

ServiceKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True, slots=True)
class Frontend:
    """An address the service answers on; ``ip`` None means every node address (NodePort)."""

    ip: str | None
    port: int
    protocol: str
    kind: str  # "ClusterIP" | "ExternalIP" | "LoadBalancer" | "NodePort"


@dataclass(frozen=True, slots=True)
class Backend:
    """One endpoint of one service port, with what endpoint selection needs.

    It holds the slice's own :class:`Endpoint` rather than a copy of its
    fields: at 100k endpoints a copy per endpoint and port is most of the
    table's memory.
    """

    endpoint: Endpoint
    port: int

    @property
    def address(self) -> str:
        return self.endpoint.addresses[0]

    @property
    def ready(self) -> bool:
        return self.endpoint.ready

    @property
    def serving(self) -> bool:
        return self.endpoint.serving

    @property
    def terminating(self) -> bool:
        return self.endpoint.terminating

    @property
    def node_name(self) -> str:
        return self.endpoint.node_name

    @property
    def zone(self) -> str:
        return self.endpoint.zone

    @property
    def hints_for_zones(self) -> tuple[str, ...]:
        return self.endpoint.hints_for_zones


# One endpoint address of a service, regardless of port (what DNS reads): the
# slice's Endpoint itself, whose ``address`` is its first address.
EndpointAddress = Endpoint


@dataclass(frozen=True, slots=True)
class PortEntry:
    name: str
    protocol: str
    port: int
    target_port: int | str
    node_port: int | None
    app_protocol: str
    frontends: tuple[Frontend, ...]
    backends: tuple[Backend, ...]


@dataclass(frozen=True, slots=True)
class ServiceEntry:
    service: Service
    ports: tuple[PortEntry, ...]
    addresses: tuple[EndpointAddress, ...]

    @property
    def key(self) -> ServiceKey:
        return (self.service.key.namespace, self.service.key.name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (for /debug/state)."""
        svc = self.service
        return {
            "namespace": svc.key.namespace,
            "name": svc.key.name,
            "type": svc.type,
            "clusterIPs": list(svc.cluster_ips),
            "headless": svc.headless,
            "externalName": svc.external_name or None,
            "ports": [
                {
                    "name": p.name,
                    "protocol": p.protocol,
                    "port": p.port,
                    "targetPort": p.target_port,
                    "nodePort": p.node_port,
                    "frontends": [
                        {"ip": f.ip, "port": f.port, "kind": f.kind} for f in p.frontends
                    ],
                    "endpoints": [
                        {
                            "address": b.address,
                            "port": b.port,
                            "ready": b.ready,
                            "serving": b.serving,
                            "terminating": b.terminating,
                            "nodeName": b.node_name or None,
                            "zone": b.zone or None,
                        }
                        for b in p.backends
                    ],
                }
                for p in self.ports
            ],
            "addresses": [
                {"address": a.address, "hostname": a.hostname or None, "ready": a.ready}
                for a in self.addresses
            ],
        }


_make_backend = fast_constructor(Backend)


def _frontends(svc: Service, p: ServicePort) -> tuple[Frontend, ...]:
    out = [Frontend(ip, p.port, p.protocol, "ClusterIP") for ip in svc.cluster_ips]
    out += [Frontend(ip, p.port, p.protocol, "ExternalIP") for ip in svc.external_ips]
    if svc.type == "LoadBalancer":
        # A status left over from an earlier type is not served (kube-proxy
        # reads loadBalancer ingress IPs only for type LoadBalancer).
        out += [Frontend(ip, p.port, p.protocol, "LoadBalancer") for ip in svc.load_balancer_ips]
    if p.node_port is not None and svc.type in ("NodePort", "LoadBalancer"):
        out.append(Frontend(None, p.node_port, p.protocol, "NodePort"))
    return tuple(out)


def _slice_port(sl: EndpointSlice, p: ServicePort) -> int | None:
    if not sl.ports:
        return p.target_port if isinstance(p.target_port, int) else None
    for sp in sl.ports:
        if sp.name == p.name and sp.protocol == p.protocol:
            return sp.port
    return None


def _pod_port(pod: Pod, p: ServicePort) -> int | None:
    if isinstance(p.target_port, int):
        return p.target_port
    for name, number, proto in pod.container_ports:
        if name == p.target_port and proto == p.protocol:
            return number
    return None


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _families(svc: Service) -> set[int] | None:
    """The IP versions the service serves; None when nothing says (take every pod IP)."""
    if svc.ip_families:
        return {4 if f == "IPv4" else 6 for f in svc.ip_families}
    if svc.cluster_ips:
        return {6 if ":" in ip else 4 for ip in svc.cluster_ips}
    return None


def pod_endpoint_slice(svc: Service, pods: Iterable[Pod]) -> list[tuple[Pod, EndpointAddress]]:
    """The endpoints the EndpointSlice controller would make for ``svc`` from ``pods``.

    As the controller does: pods that have finished or have no IP are left
    out; ``ready`` is the pod's Ready condition, false while terminating,
    and true regardless with publishNotReadyAddresses; ``serving`` is the
    Ready condition; a pod's IPs are kept only for the service's families.
    """
    out: list[tuple[Pod, EndpointAddress]] = []
    if not svc.selector:  # an empty selector selects nothing for a Service
        return out
    families = _families(svc)
    for pod in sorted(pods, key=lambda p: p.key.name):
        if not pod.pod_ips or pod.phase in ("Succeeded", "Failed"):
            continue
        if not _selects(svc.selector, pod.meta.labels):
            continue
        ready = svc.publish_not_ready_addresses or (pod.ready and not pod.terminating)
        hostname = pod.hostname if pod.hostname and pod.subdomain == svc.key.name else ""
        for ip in pod.pod_ips:
            if families is not None and (6 if ":" in ip else 4) not in families:
                continue
            out.append(
                (
                    pod,
                    Endpoint(
                        addresses=(ip,),
                        ready=ready,
                        serving=pod.ready,
                        terminating=pod.terminating,
                        hostname=hostname,
                        node_name=pod.node_name,
                    ),
                )
            )
    return out


def build_entry(
    svc: Service, slices: list[EndpointSlice], pods: Iterable[Pod] | None = None
) -> ServiceEntry:
    """The table entry for one service, from its slices (or its pods when it has none)."""
    ip_slices = [s for s in slices if s.address_type != "FQDN"]
    pod_eps = pod_endpoint_slice(svc, pods) if pods is not None and not ip_slices else None
    return _build(svc, ip_slices, pod_eps)


def _build(
    svc: Service,
    ip_slices: list[EndpointSlice],
    pod_eps: list[tuple[Pod, EndpointAddress]] | None,
) -> ServiceEntry:
    addresses: dict[str, EndpointAddress] = {}
    per_port: list[list[Backend]] = [[] for _ in svc.ports]
    if pod_eps is None:
        # The hot loop of a rebuild (every endpoint of every slice): locals
        # only, the fast constructors, and no (address, port) keys unless an
        # address repeats. A backend's address is always in ``addresses``
        # first, so an address not seen before cannot be a duplicate.
        service_ports = svc.ports
        make_backend = _make_backend
        seen: list[set[tuple[str, int]] | None] = [None] * len(service_ports)
        for sl in ip_slices:
            ports = []
            for i, p in enumerate(service_ports):
                port = _slice_port(sl, p)
                if port is not None:
                    ports.append((i, port))
            for ep in sl.endpoints:
                addr = ep.addresses[0]
                new = addr not in addresses
                if new:
                    addresses[addr] = ep
                for i, port in ports:
                    keys = seen[i]
                    if not new:
                        if keys is None:
                            keys = seen[i] = {
                                (b.endpoint.addresses[0], b.port) for b in per_port[i]
                            }
                        if (addr, port) in keys:
                            continue  # the first slice (by name) wins, as in kube-proxy
                    if keys is not None:
                        keys.add((addr, port))
                    per_port[i].append(make_backend(ep, port))
    else:
        by_key: list[dict[tuple[str, int], Backend]] = [{} for _ in svc.ports]
        for pod, ea in pod_eps:
            addresses.setdefault(ea.address, ea)
            for i, p in enumerate(svc.ports):
                port = _pod_port(pod, p)
                if port is not None:
                    by_key[i].setdefault((ea.address, port), Backend(ea, port))
        per_port = [list(d.values()) for d in by_key]
    port_entries = tuple(
        PortEntry(
            name=p.name,
            protocol=p.protocol,
            port=p.port,
            target_port=p.target_port,
            node_port=p.node_port,
            app_protocol=p.app_protocol,
            frontends=_frontends(svc, p),
            backends=tuple(per_port[i]),
        )
        for i, p in enumerate(svc.ports)
    )
    return ServiceEntry(svc, port_entries, tuple(addresses.values()))


class ServiceTable:
    """Service entries by (namespace, name), kept current from ClusterState changes."""

    def __init__(self, *, derive_from_pods: bool = False) -> None:
        self.derive_from_pods = derive_from_pods
        self._entries: dict[ServiceKey, ServiceEntry] = {}
        # Which service each slice counted for last time: a slice whose label
        # changed, or that was deleted, must also rebuild its old service.
        self._slice_owner: dict[ObjectKey, ServiceKey] = {}
        # Pod-derived endpoints: which services each pod fed, and the reverse.
        self._pod_owners: dict[ObjectKey, set[ServiceKey]] = {}
        self._service_pods: dict[ServiceKey, set[ObjectKey]] = {}

    def get(self, namespace: str, name: str) -> ServiceEntry | None:
        return self._entries.get((namespace, name))

    def __iter__(self) -> Iterator[ServiceEntry]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def rebuild(self, state: ClusterState) -> set[ServiceKey]:
        """Recompute every entry (start-up, or after a failed incremental apply)."""
        old = set(self._entries)
        self._entries.clear()
        self._slice_owner.clear()
        self._pod_owners.clear()
        self._service_pods.clear()
        keys = {(s.key.namespace, s.key.name) for s in state.objects("Service")}
        for sk in keys:
            self._rebuild_one(state, sk)
        return keys | old

    def apply(self, state: ClusterState, changed: Iterable[ObjectKey]) -> set[ServiceKey]:
        """Rebuild the services that ``changed`` keys touch; return their keys."""
        touched: set[ServiceKey] = set()
        for key in changed:
            kind = key.kind
            if kind in ("Service", "Endpoints"):
                touched.add((key.namespace, key.name))
            elif kind == "EndpointSlice":
                owner = self._slice_owner.pop(key, None)
                if owner is not None:
                    touched.add(owner)
                obj = state.get(key)
                if isinstance(obj, EndpointSlice) and obj.service_name:
                    touched.add((key.namespace, obj.service_name))
            elif kind == "Pod" and self.derive_from_pods:
                touched |= self._pod_owners.get(key, set())
                pod = state.get(key)
                if isinstance(pod, Pod):
                    for svc in state.objects("Service"):
                        if (
                            svc.key.namespace == key.namespace
                            and svc.selector
                            and _selects(svc.selector, pod.meta.labels)
                        ):
                            touched.add((svc.key.namespace, svc.key.name))
        for sk in touched:
            self._rebuild_one(state, sk)
        return touched

    def _rebuild_one(self, state: ClusterState, sk: ServiceKey) -> None:
        ns, name = sk
        self._entries.pop(sk, None)
        for pk in self._service_pods.pop(sk, ()):
            owners = self._pod_owners.get(pk)
            if owners is not None:
                owners.discard(sk)
                if not owners:
                    del self._pod_owners[pk]
        svc = state.service(ns, name)
        if svc is None:
            return
        slices = state.slices_for_service(ns, name)
        for sl in slices:
            self._slice_owner[sl.key] = sk
        ip_slices = [s for s in slices if s.address_type != "FQDN"]
        pod_eps = None
        if self.derive_from_pods and not ip_slices and svc.selector:
            pod_eps = pod_endpoint_slice(svc, state.pods_in(ns))
        entry = _build(svc, ip_slices, pod_eps)
        if pod_eps is not None:
            # Every selected pod, also one whose address another pod already
            # gave (hostNetwork): its ports may still be in the entry.
            fed = {pod.key for pod, _ in pod_eps}
            self._service_pods[sk] = fed
            for pk in fed:
                self._pod_owners.setdefault(pk, set()).add(sk)
        self._entries[sk] = entry
