"""ClusterState: the one typed view of the cluster that every data plane reads.

``apply(event)`` stores or removes one object keyed by kind/namespace/name,
keeps the secondary indexes (slices by service, ingresses by class, pods by
namespace), and records the key as changed for every subscriber. Events
older than the held resourceVersion and events that change nothing are
dropped, so a flap or a replayed watch costs nothing downstream.

Subscribers get coalesced change sets, the keys changed since they last
looked, never the whole world (kube-proxy's change trackers are the model).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal, overload

from netplane.allocations import Allocations
from netplane.errors import ModelError
from netplane.events import EventType, WatchEvent
from netplane.model import (
    Endpoints,
    EndpointSlice,
    Gateway,
    GatewayClass,
    GRPCRoute,
    HTTPRoute,
    Ingress,
    IngressClass,
    K8sObject,
    Namespace,
    Node,
    ObjectKey,
    Pod,
    ReferenceGrant,
    Secret,
    Service,
)

log = logging.getLogger("netplane.state")


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What ``apply`` did: ``changed`` (subscribers told), ``stale`` or ``error``."""

    changed: bool
    stale: bool = False
    error: ModelError | None = None


UNCHANGED = ApplyResult(False)
CHANGED = ApplyResult(True)
STALE = ApplyResult(False, stale=True)


def _rv(obj: K8sObject | None) -> int | None:
    """resourceVersion as a number, or None where it is absent or opaque.

    The API treats it as opaque; every real server issues integers, so
    comparing them is how a replayed or reordered event is recognised.
    """
    if obj is None:
        return None
    rv = obj.meta.resource_version
    return int(rv) if rv.isdigit() else None


class Subscription:
    """Keys changed since the last ``take``, coalesced; ``wait`` blocks for some."""

    def __init__(self, state: ClusterState) -> None:
        self._state = state
        self._pending: set[ObjectKey] = set()
        self._wakeup = asyncio.Event()
        self.closed = False

    def _notify(self, key: ObjectKey) -> None:
        self._pending.add(key)
        self._wakeup.set()

    def take(self) -> frozenset[ObjectKey]:
        out = frozenset(self._pending)
        self._pending.clear()
        self._wakeup.clear()
        return out

    async def wait(self) -> frozenset[ObjectKey]:
        while not self._pending and not self.closed:
            await self._wakeup.wait()
            self._wakeup.clear()
        return self.take()

    def close(self) -> None:
        self.closed = True
        self._wakeup.set()
        self._state._subs.discard(self)


class ClusterState:
    """Typed objects by key, with the secondary indexes the planes need."""

    def __init__(
        self, allocations: Allocations | None = None, *, log_rejections: bool = True
    ) -> None:
        self.allocations = allocations or Allocations()
        # Each rejection is logged once per reason, unless the owner reports it
        # itself with file and line (`netplane check`, the Dataplane's problems).
        self.log_rejections = log_rejections
        self._objects: dict[ObjectKey, K8sObject] = {}
        self._by_kind: dict[str, dict[ObjectKey, K8sObject]] = {}
        # (namespace, service name) -> keys of EndpointSlices and Endpoints, sorted
        # (a tuple: nearly every service has one slice, and there are 10k of them)
        self._slices_by_service: dict[tuple[str, str], tuple[ObjectKey, ...]] = {}
        self._pods_by_namespace: dict[str, set[ObjectKey]] = {}
        self._rejected: dict[ObjectKey, ModelError] = {}
        #: moves whenever ``rejected()`` may have changed, so a reader can skip looking
        self.rejections_version = 0
        # Rejected Services, retried when a Service releases what they wanted.
        self._rejected_services: dict[ObjectKey, Service] = {}
        self._retrying = False
        self._subs: set[Subscription] = set()

    # -- reading -----------------------------------------------------------

    def get(self, key: ObjectKey) -> K8sObject | None:
        return self._objects.get(key)

    # Typed by the kind's name, so that callers passing a literal kind get its class.
    @overload
    def objects(self, kind: Literal["Service"]) -> Iterable[Service]: ...
    @overload
    def objects(self, kind: Literal["EndpointSlice"]) -> Iterable[EndpointSlice]: ...
    @overload
    def objects(self, kind: Literal["Endpoints"]) -> Iterable[Endpoints]: ...
    @overload
    def objects(self, kind: Literal["Ingress"]) -> Iterable[Ingress]: ...
    @overload
    def objects(self, kind: Literal["IngressClass"]) -> Iterable[IngressClass]: ...
    @overload
    def objects(self, kind: Literal["Secret"]) -> Iterable[Secret]: ...
    @overload
    def objects(self, kind: Literal["Node"]) -> Iterable[Node]: ...
    @overload
    def objects(self, kind: Literal["Pod"]) -> Iterable[Pod]: ...
    @overload
    def objects(self, kind: Literal["Namespace"]) -> Iterable[Namespace]: ...
    @overload
    def objects(self, kind: Literal["GatewayClass"]) -> Iterable[GatewayClass]: ...
    @overload
    def objects(self, kind: Literal["Gateway"]) -> Iterable[Gateway]: ...
    @overload
    def objects(self, kind: Literal["HTTPRoute"]) -> Iterable[HTTPRoute]: ...
    @overload
    def objects(self, kind: Literal["GRPCRoute"]) -> Iterable[GRPCRoute]: ...
    @overload
    def objects(self, kind: Literal["ReferenceGrant"]) -> Iterable[ReferenceGrant]: ...
    @overload
    def objects(self, kind: str) -> Iterable[K8sObject]: ...
    def objects(self, kind: str) -> Iterable[K8sObject]:
        """The objects of one kind, in no particular order."""
        return self._by_kind.get(kind, {}).values()

    def __len__(self) -> int:
        return len(self._objects)

    def __iter__(self) -> Iterator[K8sObject]:
        return iter(self._objects.values())

    def counts(self) -> dict[str, int]:
        return {kind: len(objs) for kind, objs in sorted(self._by_kind.items()) if objs}

    def service(self, namespace: str, name: str) -> Service | None:
        return self._objects.get(ObjectKey("Service", namespace, name))  # type: ignore[return-value]  # a Service key holds a Service

    def slices_for_service(self, namespace: str, name: str) -> list[EndpointSlice]:
        """EndpointSlices labelled for the service, plus those mirrored from v1 Endpoints."""
        out: list[EndpointSlice] = []
        for key in self._slices_by_service.get((namespace, name), ()):
            obj = self._objects[key]
            if isinstance(obj, Endpoints):
                out.extend(obj.slices)
            else:
                out.append(obj)  # type: ignore[arg-type]  # the index holds only slices and Endpoints
        return out

    def secret(self, namespace: str, name: str) -> Secret | None:
        return self._objects.get(ObjectKey("Secret", namespace, name))  # type: ignore[return-value]  # a Secret key holds a Secret

    def pods_in(self, namespace: str) -> list[Pod]:
        return [self._objects[k] for k in self._pods_by_namespace.get(namespace, ())]  # type: ignore[misc]  # Pod keys only

    def rejected(self) -> dict[ObjectKey, ModelError]:
        """Objects whose latest version was refused (the previous one, if any, is kept)."""
        return dict(self._rejected)

    # -- writing -----------------------------------------------------------

    def subscribe(self) -> Subscription:
        sub = Subscription(self)
        self._subs.add(sub)
        return sub

    def apply(self, event: WatchEvent) -> ApplyResult:
        """Apply one event; a rejected object is logged and changes nothing."""
        key = event.key
        old = self._objects.get(key)
        if event.type is EventType.DELETED:
            self._unreject(key)
            self._rejected_services.pop(key, None)
            if old is None:
                return UNCHANGED
            self._remove(key, old)
            self._notify(key)
            if isinstance(old, Service):
                self._retry_rejected()
            return CHANGED
        new = event.obj
        assert new is not None, "ADDED/MODIFIED events carry an object"
        old_rv, new_rv = _rv(old), _rv(new)
        if old_rv is not None and new_rv is not None and new_rv < old_rv:
            return STALE
        if isinstance(new, Service):
            try:
                new = self.allocations.admit(new)
            except ModelError as err:
                said = self._rejected.get(key)
                self._rejected[key] = err
                self.rejections_version += 1
                self._rejected_services[key] = new
                # Once per reason: a retry (another Service freed something) is silent.
                if self.log_rejections and (said is None or str(said) != str(err)):
                    log.warning("rejected %s", err)
                return ApplyResult(False, error=err)
            self._rejected_services.pop(key, None)
        self._unreject(key)
        if old == new:
            # Nothing a data plane sees changed (Meta ignores resourceVersion);
            # keep the newer object so its resourceVersion guards against replays.
            if old is not new:
                self._objects[key] = new
                self._by_kind[key.kind][key] = new
            return UNCHANGED
        if old is not None:
            self._remove(key, old, release=False)
        self._add(key, new)
        self._notify(key)
        if isinstance(new, Service) and self._rejected_services:
            self._retry_rejected()
        return CHANGED

    def forget_rejected(self, key: ObjectKey) -> None:
        """Drop a refused version so it is not admitted later on its own.

        For callers that were told "refused" and own the retry (the
        embedding API); watch sources leave it, so a Service waiting for a
        taken clusterIP comes in when the holder goes.
        """
        self._unreject(key)
        self._rejected_services.pop(key, None)

    def _unreject(self, key: ObjectKey) -> None:
        if self._rejected.pop(key, None) is not None:
            self.rejections_version += 1

    def _retry_rejected(self) -> None:
        """Admit rejected Services whose clusterIP or nodePort has just been freed.

        The API server would never hold two Services on one address, but two
        manifests can; when the first goes, the second takes over.
        """
        if self._retrying:
            return
        self._retrying = True
        try:
            for key, svc in list(self._rejected_services.items()):
                if key in self._rejected_services:
                    self.apply(WatchEvent(EventType.MODIFIED, key, svc))
        finally:
            self._retrying = False

    def _add(self, key: ObjectKey, obj: K8sObject) -> None:
        self._objects[key] = obj
        self._by_kind.setdefault(key.kind, {})[key] = obj
        svc = _service_of(obj)
        if svc is not None:
            bucket = (key.namespace, svc)
            have = self._slices_by_service.get(bucket, ())
            if key not in have:
                self._slices_by_service[bucket] = tuple(sorted((*have, key)))
        elif isinstance(obj, Pod):
            self._pods_by_namespace.setdefault(key.namespace, set()).add(key)

    def _remove(self, key: ObjectKey, obj: K8sObject, *, release: bool = True) -> None:
        del self._objects[key]
        del self._by_kind[key.kind][key]
        svc = _service_of(obj)
        if svc is not None:
            bucket = (key.namespace, svc)
            left = tuple(k for k in self._slices_by_service.get(bucket, ()) if k != key)
            if left:
                self._slices_by_service[bucket] = left
            else:
                self._slices_by_service.pop(bucket, None)
        elif isinstance(obj, Pod):
            _discard(self._pods_by_namespace, key.namespace, key)
        elif isinstance(obj, Service) and release:
            self.allocations.release(key)

    def _notify(self, key: ObjectKey) -> None:
        for sub in self._subs:
            sub._notify(key)


def _service_of(obj: K8sObject) -> str | None:
    if isinstance(obj, EndpointSlice):
        return obj.service_name or None
    if isinstance(obj, Endpoints):
        return obj.meta.name
    return None


def _discard(index: dict, bucket: object, key: ObjectKey) -> None:
    keys = index.get(bucket)
    if keys is not None:
        keys.discard(key)
        if not keys:
            del index[bucket]
