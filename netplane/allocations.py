"""Cluster-wide Service checks and allocation: cluster IPs and node ports.

The API server refuses a Service whose clusterIP lies outside the service
CIDR or is already held by another Service, and one whose nodePort is out of
range or taken. netplane applies the same rules to whatever its sources
deliver: the later object is rejected and the first keeps serving.

Manifests written by hand usually leave clusterIP and nodePort empty, and
nobody else would fill them in, so missing ones are allocated here. The
choice is a hash of namespace/name probed linearly, so the same manifests
give the same addresses on every start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
from collections.abc import Sequence

from netplane.addresses import IPNetwork
from netplane.errors import ModelError
from netplane.model import ObjectKey, Service

DEFAULT_NODE_PORT_RANGE = (30000, 32767)
# Probing a large CIDR address by address is pointless; this bounds the work
# for a nearly full range (the API server's allocator is a bitmap instead).
_MAX_PROBES = 65536


def _hash(key: ObjectKey, salt: str = "") -> int:
    return int.from_bytes(
        hashlib.blake2b(f"{salt}{key.namespace}/{key.name}".encode(), digest_size=8).digest()
    )


class Allocations:
    """Which Service holds each cluster IP and node port; admits or rejects Services."""

    def __init__(
        self,
        service_cidrs: Sequence[IPNetwork] = (),
        node_port_range: tuple[int, int] = DEFAULT_NODE_PORT_RANGE,
        *,
        allocate_missing: bool = True,
    ) -> None:
        self.service_cidrs = tuple(service_cidrs)
        self.node_port_range = node_port_range
        self.allocate_missing = allocate_missing
        self._ips: dict[str, ObjectKey] = {}
        self._ports: dict[tuple[int, str], ObjectKey] = {}
        self._held: dict[ObjectKey, tuple[tuple[str, ...], tuple[tuple[int, str], ...]]] = {}
        # Node port held per (service port, protocol), so that an update of a
        # Service whose node ports were allocated here keeps them.
        self._node_port_of: dict[ObjectKey, dict[tuple[int, str], int]] = {}

    def admit(self, svc: Service) -> Service:
        """Check ``svc`` against the others; return it with allocations filled in.

        Raises ModelError naming the field when a rule is broken; nothing is
        recorded then. On success the previous holdings of the same Service
        are replaced by the new ones.
        """
        ref = str(svc.key)
        if svc.needs_cluster_ip and not svc.cluster_ips and self.allocate_missing:
            # An update keeps the address it holds: probing again could land
            # on an earlier slot freed since, moving a live service.
            held = self._held.get(svc.key, ((), ()))[0]
            svc = dataclasses.replace(svc, cluster_ips=held or (self._pick_ip(svc.key),))
        for i, ip in enumerate(svc.cluster_ips):
            field = f"spec.clusterIPs[{i}]" if len(svc.cluster_ips) > 1 else "spec.clusterIP"
            addr = ipaddress.ip_address(ip)
            if self.service_cidrs and not any(addr in net for net in self.service_cidrs):
                cidrs = ", ".join(str(n) for n in self.service_cidrs)
                raise ModelError(ref, field, f"{ip} is not in the service CIDR ({cidrs})")
            owner = self._ips.get(ip)
            if owner is not None and owner != svc.key:
                raise ModelError(ref, field, f"{ip} is already allocated to {owner}")
        if svc.type in ("NodePort", "LoadBalancer") and self.allocate_missing:
            svc = self._fill_node_ports(svc)
        lo, hi = self.node_port_range
        wanted = self._node_ports(svc)
        seen: dict[tuple[int, str], str] = {}
        for field, port, proto in wanted:
            if not lo <= port <= hi:
                raise ModelError(ref, field, f"{port} is outside the node port range {lo}-{hi}")
            if (port, proto) in seen:
                raise ModelError(
                    ref, field, f"port {port}/{proto} is already used by {seen[port, proto]}"
                )
            seen[port, proto] = field
            owner = self._ports.get((port, proto))
            if owner is not None and owner != svc.key:
                raise ModelError(ref, field, f"port {port}/{proto} is already allocated to {owner}")
        self.release(svc.key)
        for ip in svc.cluster_ips:
            self._ips[ip] = svc.key
        ports = tuple((p, proto) for _, p, proto in wanted)
        for p in ports:
            self._ports[p] = svc.key
        self._held[svc.key] = (svc.cluster_ips, ports)
        self._node_port_of[svc.key] = {
            (p.port, p.protocol): p.node_port for p in svc.ports if p.node_port is not None
        }
        return svc

    def release(self, key: ObjectKey) -> None:
        ips, ports = self._held.pop(key, ((), ()))
        self._node_port_of.pop(key, None)
        for ip in ips:
            if self._ips.get(ip) == key:
                del self._ips[ip]
        for p in ports:
            if self._ports.get(p) == key:
                del self._ports[p]

    @staticmethod
    def _node_ports(svc: Service) -> list[tuple[str, int, str]]:
        out = [
            (f"spec.ports[{i}].nodePort", p.node_port, p.protocol)
            for i, p in enumerate(svc.ports)
            if p.node_port is not None
        ]
        if svc.health_check_node_port is not None:
            out.append(("spec.healthCheckNodePort", svc.health_check_node_port, "TCP"))
        return out

    def _pick_ip(self, key: ObjectKey) -> str:
        if not self.service_cidrs:
            raise ModelError(
                str(key), "spec.clusterIP", "empty, and no service CIDR to allocate from"
            )
        net = self.service_cidrs[0]
        # Skip the network address and the first host (.1 is usually the
        # kubernetes service); the broadcast address too on IPv4.
        first = int(net.network_address) + 2
        size = net.num_addresses - 2 - (1 if net.version == 4 else 0)
        if size <= 0:
            raise ModelError(str(key), "spec.clusterIP", f"service CIDR {net} is too small")
        start = _hash(key) % size
        for i in range(min(size, _MAX_PROBES)):
            ip = str(ipaddress.ip_address(first + (start + i) % size))
            if self._ips.get(ip, key) == key:
                return ip
        raise ModelError(str(key), "spec.clusterIP", f"no free address in {net}")

    def _fill_node_ports(self, svc: Service) -> Service:
        lo, hi = self.node_port_range
        size = hi - lo + 1
        taken = {(p.node_port, p.protocol) for p in svc.ports if p.node_port is not None}
        previous = self._node_port_of.get(svc.key, {})
        ports = []
        for i, p in enumerate(svc.ports):
            prev = previous.get((p.port, p.protocol))
            if p.node_port is None and prev is not None and (prev, p.protocol) not in taken:
                p = dataclasses.replace(p, node_port=prev)
                taken.add((prev, p.protocol))
            if p.node_port is None:
                start = _hash(svc.key, f"{i}:") % size
                for j in range(size):
                    cand = lo + (start + j) % size
                    if (cand, p.protocol) not in taken and self._ports.get(
                        (cand, p.protocol), svc.key
                    ) == svc.key:
                        p = dataclasses.replace(p, node_port=cand)
                        taken.add((cand, p.protocol))
                        break
                else:
                    raise ModelError(str(svc.key), f"spec.ports[{i}].nodePort", "no free node port")
            ports.append(p)
        return dataclasses.replace(svc, ports=tuple(ports))
