"""The cluster model: frozen dataclasses parsed once at the source boundary.

:func:`parse_object` turns one raw API object (a dict from YAML, JSON or a
watch event) into its model class, raising :class:`ModelError` naming the
object and field, or returning None for a kind or Secret type netplane does
not use. Downstream code reads only these classes, never raw dicts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from netplane.errors import ModelError
from netplane.model.core import (
    Node,
    NodeAddress,
    Pod,
    Redacted,
    Secret,
    parse_node,
    parse_pod,
    parse_secret,
)
from netplane.model.endpoints import (
    SERVICE_NAME_LABEL,
    Endpoint,
    EndpointPort,
    Endpoints,
    EndpointSlice,
    parse_endpoint_slice,
    parse_endpoints,
)
from netplane.model.gateway import (
    V1,
    V1BETA1,
    Gateway,
    GatewayClass,
    GRPCRoute,
    HTTPRoute,
    Namespace,
    ReferenceGrant,
    parse_gateway,
    parse_gateway_class,
    parse_grpc_route,
    parse_http_route,
    parse_namespace,
    parse_reference_grant,
)
from netplane.model.ingress import (
    Ingress,
    IngressBackend,
    IngressClass,
    IngressPath,
    IngressRule,
    IngressTLS,
    parse_ingress,
    parse_ingress_class,
)
from netplane.model.meta import CLUSTER_SCOPED, Fields, Meta, ObjectKey, ref_of
from netplane.model.service import Service, ServicePort, parse_service

K8sObject = (
    Service | EndpointSlice | Endpoints | Ingress | IngressClass | Secret | Node | Pod
    | GatewayClass | Gateway | HTTPRoute | GRPCRoute | ReferenceGrant | Namespace
)  # fmt: skip

# kind -> (the apiVersions accepted, the first one preferred; parser)
KINDS: dict[str, tuple[tuple[str, ...], Callable[[Fields], Any]]] = {
    "Service": (("v1",), parse_service),
    "EndpointSlice": (("discovery.k8s.io/v1",), parse_endpoint_slice),
    "Endpoints": (("v1",), parse_endpoints),
    "Ingress": (("networking.k8s.io/v1",), parse_ingress),
    "IngressClass": (("networking.k8s.io/v1",), parse_ingress_class),
    "Secret": (("v1",), parse_secret),
    "Node": (("v1",), parse_node),
    "Pod": (("v1",), parse_pod),
    "Namespace": (("v1",), parse_namespace),
    "GatewayClass": ((V1,), parse_gateway_class),
    "Gateway": ((V1,), parse_gateway),
    "HTTPRoute": ((V1,), parse_http_route),
    "GRPCRoute": ((V1,), parse_grpc_route),
    "ReferenceGrant": ((V1BETA1, V1), parse_reference_grant),
}


def is_known_kind(raw: Any) -> bool:
    return isinstance(raw, dict) and raw.get("kind") in KINDS


def parse_object(raw: Any, *, kind: str | None = None) -> K8sObject | None:
    """Parse one raw object; None when netplane does not use its kind or type.

    ``kind`` fills in a missing ``kind`` field (watch events and list items
    from the API server often leave it out).
    """
    if not isinstance(raw, dict):
        raise ModelError("object", "", "expected a mapping")
    k = raw.get("kind") or kind
    if not isinstance(k, str) or k not in KINDS:
        return None
    versions, parser = KINDS[k]
    api_version = raw.get("apiVersion")
    if (kind is None or api_version is not None) and api_version not in versions:
        raise ModelError(
            ref_of({**raw, "kind": k}),
            "apiVersion",
            f"{api_version!r} is not supported for {k} (use {' or '.join(versions)})",
        )
    return parser(Fields(raw, ref_of({**raw, "kind": k})))


__all__ = [
    "CLUSTER_SCOPED",
    "KINDS",
    "SERVICE_NAME_LABEL",
    "Endpoint",
    "EndpointPort",
    "EndpointSlice",
    "Endpoints",
    "GRPCRoute",
    "Gateway",
    "GatewayClass",
    "HTTPRoute",
    "Ingress",
    "IngressBackend",
    "IngressClass",
    "IngressPath",
    "IngressRule",
    "IngressTLS",
    "K8sObject",
    "Meta",
    "ModelError",
    "Namespace",
    "Node",
    "NodeAddress",
    "ObjectKey",
    "Pod",
    "Redacted",
    "ReferenceGrant",
    "Secret",
    "Service",
    "ServicePort",
    "is_known_kind",
    "parse_object",
    "ref_of",
]
