"""The Kubernetes API source: kubeconfig/in-cluster auth, list+watch, one event stream.

Layers, each its own module: :mod:`.kubeconfig` (where and who, read once),
:mod:`.auth` (tokens, exec plugins, TLS contexts that change at run time),
:mod:`.watchstream` (sans-IO decoder of watch bodies), :mod:`.client`
(h11 over asyncio: GET JSON, stream watches), :mod:`.reflector` (one
resource's list-then-watch loop), :mod:`.source` (:class:`KubeSource`, all
reflectors merged, with the Synced gate).

Use::

    source = KubeSource.from_kubeconfig(path=None, context=None)   # or KubeSource.in_cluster()
    async for event in source.run():
        ...
"""

from __future__ import annotations

from netplane.sources.kube.auth import AuthError, Credentials
from netplane.sources.kube.client import ApiError, KubeClient
from netplane.sources.kube.kubeconfig import (
    ClusterConfig,
    ExecConfig,
    in_cluster_config,
    kubeconfig_paths,
    load_kubeconfig,
)
from netplane.sources.kube.reflector import Backoff, CrdPresence, ListDone, Reflector
from netplane.sources.kube.resources import (
    DEFAULT_KINDS,
    GATEWAY_API_KINDS,
    GATEWAY_KINDS,
    INGRESS_KINDS,
    RESOURCES,
    Resource,
    WatchPlan,
    node_resource,
    watch_plan,
)
from netplane.sources.kube.source import KubeSource
from netplane.sources.kube.watchstream import BadLine, RawEvent, WatchDecoder

__all__ = [
    "DEFAULT_KINDS",
    "GATEWAY_API_KINDS",
    "GATEWAY_KINDS",
    "INGRESS_KINDS",
    "RESOURCES",
    "ApiError",
    "AuthError",
    "Backoff",
    "BadLine",
    "ClusterConfig",
    "CrdPresence",
    "Credentials",
    "ExecConfig",
    "KubeClient",
    "KubeSource",
    "ListDone",
    "RawEvent",
    "Reflector",
    "Resource",
    "WatchDecoder",
    "WatchPlan",
    "in_cluster_config",
    "kubeconfig_paths",
    "load_kubeconfig",
    "node_resource",
    "watch_plan",
]
