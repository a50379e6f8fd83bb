"""The API resources netplane watches, and how to address each one.

Strategy: a :class:`Resource` is plain data (kind, group/version, plural,
scope, a fixed field selector); :meth:`Resource.path` builds the collection
URL for one namespace or all of them. Secrets are watched with
``fieldSelector=type=kubernetes.io/tls`` so the API server never sends the
other Secrets (service-account tokens, registry credentials) at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote


@dataclass(frozen=True, slots=True)
class Resource:
    kind: str
    group_version: str  # "v1" for the core group
    plural: str
    namespaced: bool = True
    field_selector: str = ""

    def path(self, namespace: str | None = None) -> str:
        base = "/api/v1" if self.group_version == "v1" else f"/apis/{self.group_version}"
        if self.namespaced and namespace:
            return f"{base}/namespaces/{quote(namespace, safe='')}/{self.plural}"
        return f"{base}/{self.plural}"


SERVICE = Resource("Service", "v1", "services")
ENDPOINT_SLICE = Resource("EndpointSlice", "discovery.k8s.io/v1", "endpointslices")
INGRESS = Resource("Ingress", "networking.k8s.io/v1", "ingresses")
INGRESS_CLASS = Resource("IngressClass", "networking.k8s.io/v1", "ingressclasses", namespaced=False)
SECRET = Resource("Secret", "v1", "secrets", field_selector="type=kubernetes.io/tls")
NODE = Resource("Node", "v1", "nodes", namespaced=False)
POD = Resource("Pod", "v1", "pods")

RESOURCES: dict[str, Resource] = {
    r.kind: r for r in (SERVICE, ENDPOINT_SLICE, INGRESS, INGRESS_CLASS, SECRET, NODE, POD)
}

# What the three planes need by default; Node and Pod only when asked for.
DEFAULT_KINDS: tuple[str, ...] = ("Service", "EndpointSlice", "Ingress", "IngressClass", "Secret")


def node_resource(node_name: str) -> Resource:
    """Node, narrowed to one node (``metadata.name=<node>``) as a DaemonSet pod wants."""
    return Resource(
        "Node", "v1", "nodes", namespaced=False, field_selector=f"metadata.name={node_name}"
    )
