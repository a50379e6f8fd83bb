"""Builders for Ingress test objects and a World that drives RouteTable as the Dataplane does."""

from __future__ import annotations

import ipaddress
from typing import Any

from netplane.ingress.routes import Decision, Forward, RouteTable

from netplane.allocations import Allocations
from netplane.dataplane import Change
from netplane.events import WatchEvent
from netplane.model import ObjectKey, parse_object
from netplane.service_table import ServiceTable
from netplane.state import ClusterState

CIDR = ipaddress.ip_network("10.96.0.0/16")
CLASS = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "IngressClass",
    "metadata": {"name": "netplane"},
    "spec": {"controller": "netplane.io/ingress"},
}


def ingress_class(
    name: str, controller: str = "netplane.io/ingress", default: bool = False
) -> dict:
    md: dict[str, Any] = {"name": name}
    if default:
        md["annotations"] = {"ingressclass.kubernetes.io/is-default-class": "true"}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": md,
        "spec": {"controller": controller},
    }


def backend(service: str, port: int | str = 80) -> dict:
    p = {"number": port} if isinstance(port, int) else {"name": port}
    return {"service": {"name": service, "port": p}}


def path(p: str, service: str, kind: str = "Prefix", port: int | str = 80) -> dict:
    return {"path": p, "pathType": kind, "backend": backend(service, port)}


def ingress(
    name: str,
    rules: list[tuple[str, list[dict]]] = (),  # type: ignore[assignment]
    *,
    annotations: dict[str, str] | None = None,
    default: dict | None = None,
    tls: list[dict] | None = None,
    created: str = "2024-01-01T00:00:00Z",
    cls: str | None = "netplane",
    namespace: str = "default",
) -> dict:
    spec: dict[str, Any] = {}
    if cls is not None:
        spec["ingressClassName"] = cls
    if rules:
        spec["rules"] = [
            ({"host": h} if h else {}) | {"http": {"paths": paths}} for h, paths in rules
        ]
    if default is not None:
        spec["defaultBackend"] = default
    if tls is not None:
        spec["tls"] = tls
    md: dict[str, Any] = {"name": name, "namespace": namespace, "creationTimestamp": created}
    if annotations:
        md["annotations"] = annotations
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": md, "spec": spec}


def service(name: str, ports: list[tuple[str, int]] = (("http", 80),), ip: str = "") -> dict:  # type: ignore[assignment]
    spec: dict[str, Any] = {"ports": [{"name": n, "port": p} for n, p in ports]}
    if ip:
        spec["clusterIP"] = ip
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


def endpoints(
    service: str,
    addresses: list[str],
    ports: list[tuple[str, int]] = (("http", 8080),),
    **cond: bool,  # type: ignore[assignment]
) -> dict:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-1",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": n, "port": p} for n, p in ports],
        "endpoints": [{"addresses": [a], "conditions": dict(cond)} for a in addresses],
    }


def secret(name: str, cert: bytes, key: bytes, namespace: str = "default") -> dict:
    import base64

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": namespace},
        "data": {
            "tls.crt": base64.b64encode(cert).decode(),
            "tls.key": base64.b64encode(key).decode(),
        },
    }


class World:
    """A state, a service table and a route table, updated the way the Dataplane does."""

    def __init__(self, *raws: dict, routes: RouteTable | None = None) -> None:
        self.state = ClusterState(Allocations([CIDR]))
        self.sub = self.state.subscribe()
        self.table = ServiceTable()
        self.routes = routes or RouteTable()
        self.routes.rebuild(self.state, self.table)
        self.apply(CLASS, *raws)

    def apply(self, *raws: dict) -> None:
        for raw in raws:
            obj = parse_object(raw)
            assert obj is not None
            r = self.state.apply(WatchEvent.upsert(obj))
            assert r.error is None, r.error
        self._propagate()

    def delete(self, kind: str, name: str, namespace: str = "default") -> None:
        self.state.apply(WatchEvent.delete(ObjectKey(kind, namespace, name)))
        self._propagate()

    def _propagate(self) -> None:
        keys = self.sub.take()
        services = self.table.apply(self.state, keys)
        self.routes.apply(self.state, self.table, Change(frozenset(keys), frozenset(services)))

    def route(
        self,
        host: str,
        target: str = "/",
        *,
        https: bool = False,
        client_ip: str = "192.0.2.1",
        headers: dict[bytes, bytes] | None = None,
    ) -> Decision:
        return self.routes.route(
            host, target, https=https, client_ip=client_ip, headers=headers or {}
        )

    def service_for(self, host: str, target: str = "/", **kw: Any) -> str | int:
        """The service name a request goes to, else the status code of the answer."""
        d = self.route(host, target, **kw)
        if isinstance(d, Forward):
            return d.service[1]
        return d.status

    def assert_matches_rebuild(self) -> None:
        fresh = RouteTable(
            ingress_class=self.routes.ingress_class, controller=self.routes.controller
        )
        fresh.rebuild(self.state, self.table)
        mine, theirs = self.routes.debug_state(), fresh.debug_state()
        del mine["cachedLookups"], theirs["cachedLookups"]
        assert mine == theirs


def backends(*names: str) -> list[dict]:
    """A Service with one ready endpoint for each name (10.1.0.N:8080)."""
    out: list[dict] = []
    for i, n in enumerate(names, start=1):
        out.append(service(n))
        out.append(endpoints(n, [f"10.1.0.{i}"]))
    return out
