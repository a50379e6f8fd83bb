"""The API resources netplane watches, and how to address each one.

Strategy: a :class:`Resource` is plain data (kind, group/version, plural,
scope, a fixed field selector); :meth:`Resource.path` builds the collection
URL for one namespace or all of them. Secrets are watched with
``fieldSelector=type=kubernetes.io/tls`` so the API server never sends the
other Secrets (service-account tokens, registry credentials) at all.

The Gateway API kinds come from CRDs that a cluster may not have installed.
Their :attr:`Resource.needs_crds` names the bundle, and the reflector reads
a 404 on their list as "none of these, yet" rather than as a failure, so a
cluster without Gateway API still syncs and serves everything else.
ReferenceGrant is read as ``v1beta1``: every standard-channel release
serves it, while ``v1`` only exists from Gateway API v1.3 on.

:func:`watch_plan` picks the kinds a daemon config needs, and no more: a
service account may lack the right to read what a plane that is off would
use (Secrets, above all), and a watch it may not open would hold back the
first sync for ever.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    from netplane.config import Config


@dataclass(frozen=True, slots=True)
class Resource:
    kind: str
    group_version: str  # "v1" for the core group
    plural: str
    namespaced: bool = True
    field_selector: str = ""
    # The CRD bundle that serves this resource ("Gateway API"); "" for built-in
    # types. Such a resource may be absent: a 404 on its list means "none yet".
    needs_crds: str = ""

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
NAMESPACE = Resource("Namespace", "v1", "namespaces", namespaced=False)

GATEWAY_API = "Gateway API"
_GATEWAY_V1 = "gateway.networking.k8s.io/v1"
GATEWAY_CLASS = Resource(
    "GatewayClass", _GATEWAY_V1, "gatewayclasses", namespaced=False, needs_crds=GATEWAY_API
)
GATEWAY = Resource("Gateway", _GATEWAY_V1, "gateways", needs_crds=GATEWAY_API)
HTTP_ROUTE = Resource("HTTPRoute", _GATEWAY_V1, "httproutes", needs_crds=GATEWAY_API)
GRPC_ROUTE = Resource("GRPCRoute", _GATEWAY_V1, "grpcroutes", needs_crds=GATEWAY_API)
REFERENCE_GRANT = Resource(
    "ReferenceGrant",
    "gateway.networking.k8s.io/v1beta1",
    "referencegrants",
    needs_crds=GATEWAY_API,
)

RESOURCES: dict[str, Resource] = {
    r.kind: r
    for r in (
        SERVICE,
        ENDPOINT_SLICE,
        INGRESS,
        INGRESS_CLASS,
        SECRET,
        NODE,
        POD,
        NAMESPACE,
        GATEWAY_CLASS,
        GATEWAY,
        HTTP_ROUTE,
        GRPC_ROUTE,
        REFERENCE_GRANT,
    )
}

# The kinds the Gateway API CRDs serve, and with them what a Gateway needs
# from core: Namespaces, whose labels pick the routes a listener admits.
GATEWAY_API_KINDS: tuple[str, ...] = (
    "GatewayClass",
    "Gateway",
    "HTTPRoute",
    "GRPCRoute",
    "ReferenceGrant",
)
GATEWAY_KINDS: tuple[str, ...] = (*GATEWAY_API_KINDS, "Namespace")

# What the three planes need by default; Node and Pod only when asked for.
DEFAULT_KINDS: tuple[str, ...] = (
    "Service",
    "EndpointSlice",
    "Ingress",
    "IngressClass",
    "Secret",
    *GATEWAY_KINDS,
)


def node_resource(node_name: str) -> Resource:
    """Node, narrowed to one node (``metadata.name=<node>``) as a DaemonSet pod wants."""
    return Resource(
        "Node", "v1", "nodes", namespaced=False, field_selector=f"metadata.name={node_name}"
    )


# What the ingress plane reads: Ingress v1 and the Gateway API (with Secrets for TLS).
INGRESS_KINDS: tuple[str, ...] = ("Ingress", "IngressClass", "Secret", *GATEWAY_KINDS)


@dataclass(frozen=True, slots=True)
class WatchPlan:
    """The kinds to watch for a config, and why the others are left out."""

    kinds: tuple[str, ...]
    # (kinds, why not): each group of kinds not watched and the reason.
    skipped: tuple[tuple[tuple[str, ...], str], ...] = ()
    # Why a kind beyond Service and EndpointSlice is watched.
    reasons: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        """One line for the log: what is watched, and why the rest is not."""
        why = dict(self.reasons)
        shown = ", ".join(f"{k} ({why[k]})" if k in why else k for k in self.kinds)
        text = f"watching {shown}"
        if self.skipped:
            text += "; not watching " + "; ".join(
                f"{', '.join(kinds)} ({reason})" for kinds, reason in self.skipped
            )
        return text


def watch_plan(cfg: Config) -> WatchPlan:
    """The kinds the enabled planes of ``cfg`` read from the API server.

    Service and EndpointSlice always (the L4 proxy and DNS, and the ingress's
    backends); the Ingress and Gateway API kinds and TLS Secrets only with the
    ingress on; Node only with ``node_name`` (its zone picks topology hints);
    Pod only when endpoints come from pods or DNS verifies pod records.
    """
    kinds: list[str] = ["Service", "EndpointSlice"]
    skipped: list[tuple[tuple[str, ...], str]] = []
    reasons: list[tuple[str, str]] = []
    if cfg.ingress_http is not None or cfg.ingress_https is not None:
        kinds.extend(INGRESS_KINDS)
    else:
        skipped.append((INGRESS_KINDS, "the ingress is off"))
    if cfg.node_name:
        kinds.append("Node")
        reasons.append(("Node", f"only {cfg.node_name}"))
    else:
        skipped.append((("Node",), "no node name"))
    dns_verifies_pods = cfg.dns is not None and cfg.dns_pods == "verified"
    if cfg.pods_make_endpoints or dns_verifies_pods:
        kinds.append("Pod")
        reasons.append(
            (
                "Pod",
                "endpoints from pods" if cfg.pods_make_endpoints else "verified DNS pod records",
            )
        )
    else:
        skipped.append((("Pod",), "endpoints come from EndpointSlices; no verified pod records"))
    return WatchPlan(tuple(kinds), tuple(skipped), tuple(reasons))
